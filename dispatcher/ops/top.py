"""``dispatcher top`` and ``dispatcher stats``: queue health per endpoint as a rich table."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"


def _route(s: dict[str, Any]) -> str:
    text = f"{s['route_calls_per_s']:.1f}"
    if s.get("route_rate") is not None:
        text += f"/{s['route_rate']:g}"
    if s.get("route_backoff_level"):
        text += f" L{s['route_backoff_level']}"
    return text


def stats_table(stats: dict[str, Any]) -> Table:
    when = datetime.fromtimestamp(stats["generated_at"]).strftime("%H:%M:%S")
    t = Table(title=f"dispatcher queue {stats['queue']!r} at {when}", title_justify="left")
    for name in ("endpoint", "queued", "waiting", "running", "oldest wait", "route/s",
                 "429s", "ok", "failed", "cancelled", "wait p50/p95", "run p50/p95"):
        t.add_column(name, justify="left" if name == "endpoint" else "right")
    t.add_column("last route status", style="dim", max_width=40, no_wrap=True)
    for ep, s in sorted(stats["endpoints"].items()):
        t.add_row(
            ep, str(s["queued"]), str(s["waiting"]), str(s["running"]),
            seconds(s["oldest_wait_s"]), _route(s),
            Text(str(s["route_429s"]), style="red" if s["route_429s"] else ""),
            str(s["succeeded"]), str(s["failed"] + s["expired"]), str(s["cancelled"]),
            f"{seconds(s['wait_p50_s'])}/{seconds(s['wait_p95_s'])}",
            f"{seconds(s['run_p50_s'])}/{seconds(s['run_p95_s'])}",
            s["last_route_status"] or "-",
        )
    if not stats["endpoints"]:
        t.caption = "no jobs submitted yet"
    hooks = stats.get("webhooks_queued") or 0
    if hooks:
        note = (f"{hooks} webhook deliveries not over yet (delivered by `dispatcher worker "
                "--webhooks`)")
        t.caption = f"{t.caption}; {note}" if t.caption else note
    return t


def run_top(stats_fn: Callable[[], dict[str, Any]], interval: float = 1.0,
            iterations: int | None = None, console: Console | None = None) -> int:
    """Refresh until Ctrl-C (or ``iterations``); a Redis error is shown, never fatal."""
    console = console or Console()
    last: Table | None = None

    def view() -> Group:
        nonlocal last
        try:
            last = stats_table(stats_fn())
            return Group(last)
        except Exception as e:
            error = Text(f"stats unavailable: {type(e).__name__}: {e}", style="bold red")
            return Group(*([last] if last else []), error)

    done = 0
    try:
        with Live(view(), console=console, auto_refresh=False) as live:
            done = 1
            while iterations is None or done < iterations:
                time.sleep(interval)
                live.update(view(), refresh=True)
                done += 1
    except KeyboardInterrupt:
        pass
    return 0
