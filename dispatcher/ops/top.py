"""``dispatcher top`` and ``dispatcher stats``: queue health per endpoint, one block each.

A block is label/value cells laid out in as many columns as the terminal holds (4 at 80
columns, 8 from about 170), so no figure is ever squeezed out, with the newest failures
(``stats()``' ``last_failures``); ``top`` adds the last minute of pending jobs and of jobs
done per second (from its own successive reads), and shows the busiest endpoints that fit
the screen.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from dispatcher.ops.views import (
    Failure,
    History,
    failures_in,
    order,
    rate,
    route,
    seconds,
    sparkline,
)

__all__ = ["seconds", "stats_view", "endpoint_block", "run_top", "failures_in"]

Cell = tuple[str, str, str]  # label, value, style of the value
INDENT = 2
GAP = 3
TOP_WINDOW = 60.0  # seconds of history in top's sparklines
TOP_FAILURES = 3  # per endpoint
SPARK_LABEL = 8


def _count(s: Mapping[str, Any], field: str, alarm: bool = False) -> Cell:
    n = int(s.get(field) or 0)
    return (field, str(n), "bold red" if alarm and n else "bold")


def cells(s: Mapping[str, Any]) -> list[Cell]:
    """The figures of one endpoint, in reading order: 4 rows of 4 at 80 columns."""
    return [
        _count(s, "queued"), _count(s, "waiting"), _count(s, "running"),
        ("oldest wait", seconds(s.get("oldest_wait_s")), "bold"),
        ("ok", str(int(s.get("succeeded") or 0)), "bold green"),
        _count(s, "failed", alarm=True), _count(s, "expired", alarm=True),
        _count(s, "cancelled"),
        ("route/s", route(s), "bold"),
        ("429s", str(int(s.get("route_429s") or 0)),
         "bold red" if s.get("route_429s") else "bold"),
        ("deferred", str(int(s.get("route_deferred") or 0)), "bold"),
        ("route calls", str(int(s.get("route_calls") or 0)), "bold"),
        ("wait p50", seconds(s.get("wait_p50_s")), "bold"),
        ("wait p95", seconds(s.get("wait_p95_s")), "bold"),
        ("run p50", seconds(s.get("run_p50_s")), "bold"),
        ("run p95", seconds(s.get("run_p95_s")), "bold"),
    ]


def _widths(items: list[Cell], per_line: int) -> list[tuple[int, int]]:
    """(label, value) widths of each column when ``per_line`` cells share a line."""
    cols = [items[j::per_line] for j in range(per_line)]
    return [(max(len(c[0]) for c in col), max(6, *(len(c[1]) for c in col))) for col in cols]


def _grid(items: list[Cell], width: int) -> list[Text]:
    per_line, widths = 1, _widths(items, 1)
    for n in (16, 8, 4, 2):  # divisors of 16: every row full, columns aligned
        w = _widths(items, n)
        if INDENT + sum(lw + 1 + vw for lw, vw in w) + (n - 1) * GAP <= width:
            per_line, widths = n, w
            break
    lines = []
    for i in range(0, len(items), per_line):
        line = Text(" " * INDENT, no_wrap=True)
        for j, (label, value, style) in enumerate(items[i:i + per_line]):
            label_w, value_w = widths[j]
            if j:
                line.append(" " * GAP)
            line.append(label.ljust(label_w) + " ", style="dim")
            line.append(value.rjust(value_w), style=style)
        lines.append(line)
    return lines


def _header(ep: str, s: Mapping[str, Any], now: float, width: int) -> Text:
    line = Text(ep, style="bold cyan", no_wrap=True, overflow="ellipsis")
    status = s.get("last_route_status")
    if status:
        when = s.get("last_route_at")
        ago = f" ({seconds(max(0.0, now - when))} ago)" if when else ""
        line.append(f"  route: {status}{ago}", style="dim")
    line.truncate(width, overflow="ellipsis")
    return line


def _history(points: list[Any], width: int) -> list[Text]:
    """Pending jobs and jobs done/s, one sparkline each (side by side when wide)."""
    series = [("pending", [p.pending for p in points],
               str(points[-1].pending) if points else "-"),
              ("done/s", [p.done_per_s for p in points],
               rate(points[-1].done_per_s) if points else "-")]
    value_w = max(6, *(len(v) for _, _, v in series))
    fixed = SPARK_LABEL + 1 + 1 + value_w
    both = (width - INDENT - GAP) // 2 - fixed  # spark width when side by side
    if both >= 30:
        spark_w, per_line = min(int(TOP_WINDOW), both), 2
    else:
        spark_w, per_line = max(0, min(int(TOP_WINDOW), width - INDENT - fixed)), 1
    parts = []
    for label, values, now in series:
        t = Text()
        t.append(label.ljust(SPARK_LABEL) + " ", style="dim")
        t.append(sparkline(values, spark_w), style="magenta" if label == "pending" else "green")
        t.append(" " + now.rjust(value_w), style="bold")
        parts.append(t)
    lines = []
    for i in range(0, len(parts), per_line):
        line = Text(" " * INDENT, no_wrap=True)
        for j, part in enumerate(parts[i:i + per_line]):
            if j:
                line.append(" " * GAP)
            line.append_text(part)
        lines.append(line)
    return lines


FAILURES_LABEL = "last failures"


def _failure_line(f: Failure, now: float, width: int, first: bool) -> Text:
    line = Text(" " * INDENT, no_wrap=True, overflow="ellipsis")
    line.append((FAILURES_LABEL if first else "").ljust(len(FAILURES_LABEL)) + "  ",
                style="dim")
    ago = seconds(max(0.0, now - f.finished_at)) if f.finished_at else "-"
    line.append(ago.rjust(6) + "  ", style="dim")
    line.append(f.id + "  ")
    line.append(f.error_kind or f.status, style="bold red")
    if f.error:
        line.append("  " + " ".join(f.error.split()), style="dim")
    line.truncate(width, overflow="ellipsis")
    return line


def endpoint_block(ep: str, s: Mapping[str, Any], width: int, now: float,
                   points: list[Any] | None = None,
                   failures: list[Failure] | None = None) -> list[Text]:
    """One endpoint: a header line, its figures, then (top) its history and failures."""
    lines = [_header(ep, s, now, width), *_grid(cells(s), width)]
    if points is not None:
        lines += _history(points, width)
    for i, f in enumerate((failures or [])[:TOP_FAILURES]):
        lines.append(_failure_line(f, now, width, first=i == 0))
    return lines


def _title(stats: Mapping[str, Any], shown: int, live: str = "") -> Text:
    when = datetime.fromtimestamp(stats["generated_at"]).strftime("%H:%M:%S")
    n = len(stats["endpoints"])
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append("dispatcher", style="bold")
    t.append(f"  queue {stats['queue']!r} at {when}  {n} endpoint{'s' * (n != 1)}")
    if shown < n:
        t.append(f" ({shown} busiest shown)", style="yellow")
    if live:
        t.append(f"  {live}", style="dim")
    return t


def stats_view(stats: Mapping[str, Any], width: int, height: int | None = None, *,
               history: History | None = None,
               failures: Mapping[str, list[Failure]] | None = None,
               only: list[str] | None = None, live: str = "",
               notes: list[Text] | None = None) -> Group:
    """Every endpoint's block, busiest first; with ``height``, the blocks that fit (the
    first always) and a line naming how many were left out. ``failures``: the newest per
    endpoint (default: those ``stats`` carries)."""
    if failures is None:
        failures = failures_in(stats)
    eps: Mapping[str, Mapping[str, Any]] = stats["endpoints"]
    names = [ep for ep in order(eps) if not only or ep in only]
    now = float(stats["generated_at"])
    footer = list(notes or [])
    hooks = stats.get("webhooks_queued") or 0
    if hooks:
        footer.append(Text(f"{hooks} webhook deliveries not over yet (delivered by "
                           "`dispatcher worker --webhooks`)", style="yellow"))
    if only and not names:
        footer.append(Text(f"no jobs were ever submitted for {', '.join(only)}", style="dim"))
    elif not eps:
        footer.append(Text("no jobs submitted yet", style="dim"))
    blocks = [endpoint_block(ep, eps[ep], width, now,
                             history.points(ep) if history is not None else None,
                             (failures or {}).get(ep)) for ep in names]
    room = None if height is None else height - 1 - len(footer) - 1  # title, "more"
    body: list[Text] = []
    shown = 0
    for block in blocks:
        need = len(block) + (1 if body else 0)
        if room is not None and shown and need > room - len(body):
            break
        if body:
            body.append(Text())
        body += block
        shown += 1
    if shown < len(blocks):
        footer.insert(0, Text(f"+{len(blocks) - shown} more endpoint(s): a taller terminal, "
                              "--endpoint NAME, or dispatcher stats", style="yellow"))
    return Group(_title(stats, shown if names else len(eps), live), *body, *footer)


def run_top(stats_fn: Callable[[], dict[str, Any]], interval: float = 1.0,
            iterations: int | None = None, console: Console | None = None,
            only: list[str] | None = None) -> int:
    """Refresh until Ctrl-C (or ``iterations``); a Redis error is shown, never fatal."""
    console = console or Console()
    history = History(TOP_WINDOW + interval)
    last: dict[str, Any] | None = None

    def view() -> Group:
        nonlocal last
        notes = []
        try:
            last = stats_fn()
            history.add(last)
        except Exception as e:
            notes.append(Text(f"stats unavailable: {type(e).__name__}: {e}",
                              style="bold red"))
        if last is None:
            return Group(*notes)
        width, height = console.size
        # Piped: every endpoint; on a screen, the busiest that fit it.
        return stats_view(last, width, height if console.is_terminal else None,
                          history=history, only=only,
                          live=f"every {interval:g}s, Ctrl-C quits", notes=notes)

    done = 0
    try:
        with Live(view(), console=console, auto_refresh=False,
                  vertical_overflow="crop") as live:
            done = 1
            while iterations is None or done < iterations:
                time.sleep(interval)
                live.update(view(), refresh=True)
                done += 1
    except KeyboardInterrupt:
        pass
    return 0

