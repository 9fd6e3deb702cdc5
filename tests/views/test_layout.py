"""The terminal layout and the history, on their own: every figure readable at every
width from 40 to 250 columns, the busiest endpoints kept when the screen is short, and
rates from successive stats() reads."""

from __future__ import annotations

import re
from typing import Any

import pytest
from rich.console import Console

from dispatcher.ops.top import FAILURES_LABEL, stats_view
from dispatcher.ops.views import History, seconds, sparkline

from .test_top_terminal import LABELS, figures


def endpoint(**over: Any) -> dict[str, Any]:
    s = {"queued": 3, "waiting": 120, "running": 8, "succeeded": 1_234_567, "failed": 2,
         "expired": 0, "cancelled": 5, "oldest_wait_s": 4242.5,
         "last_route_status": "no worker: 4 loading, 0 idle, 0 busy",
         "last_route_at": 999.0, "route_calls": 987_654_321, "route_calls_per_s": 38.25,
         "route_429s": 3, "route_deferred": 900, "route_rate": 40.0,
         "route_backoff_level": 2, "wait_p50_s": 0.8, "wait_p95_s": 4.1, "run_p50_s": 61.0,
         "run_p95_s": 7300.0,
         "last_failures": [{"id": "f" * 32, "endpoint": "llm", "status": "failed",
                            "error_kind": "worker_stream_broken",
                            "error": "the worker closed the stream\nmidway", "finished_at": 990.0}]}
    return {**s, **over}


# Figures of an ordinary size (a count of 9 digits takes 2 cells a line at 80 columns).
ORDINARY = {"succeeded": 1000, "route_calls": 5000, "route_backoff_level": 0}


def stats(**eps: dict[str, Any]) -> dict[str, Any]:
    return {"queue": "dispatcher", "generated_at": 1000.0, "endpoints": eps,
            "webhooks_queued": 0}


def render(doc: dict[str, Any], width: int, height: int | None = None,
           history: History | None = None) -> list[str]:
    console = Console(width=width, height=height or 200, force_terminal=False,
                      color_system=None, record=True)
    console.print(stats_view(doc, width, height, history=history))
    return console.export_text().splitlines()


@pytest.mark.parametrize("width", range(40, 251, 7))
def test_every_figure_fits_every_width(width: int) -> None:
    doc = stats(llm=endpoint())
    history = History(60)
    for t in range(30):
        history.add({**doc, "generated_at": 970.0 + t,
                     "endpoints": {"llm": endpoint(waiting=t, succeeded=t * t)}})
    lines = render(doc, width, history=history)
    assert all(len(line) <= width for line in lines), "\n".join(lines)
    block = lines[1:]
    got = figures(block)
    assert set(got) == set(LABELS), (width, "\n".join(lines))
    assert got["ok"] == "1234567" and got["route calls"] == "987654321"
    assert got["route/s"] == "38.3/40 L2" and got["oldest wait"] == "1h10m"
    assert got["run p50"] == "1m01s" and got["run p95"] == "2h01m"
    failure = next(line for line in block if FAILURES_LABEL in line)
    assert "f" * 32 in failure or width < 60
    spark = [line for line in block if re.search("pending|done/s", line)]
    assert spark and all(re.search(r"[▁▂▃▄▅▆▇█]{5}", line) for line in spark), spark
    if width >= 80:
        assert "worker_stream_broken" in failure


def test_rows_per_width() -> None:
    """4 cells a line at 80 columns (4 lines of figures), 8 from about 170 (2 lines), 2 at
    80 when the figures are huge."""
    huge = render(stats(llm=endpoint(last_failures=[])), 80)
    assert len([line for line in huge[2:] if line.startswith("  ")]) == 8, huge
    for width, rows in ((80, 4), (120, 4), (200, 2), (250, 2)):
        lines = render(stats(llm=endpoint(last_failures=[], **ORDINARY)), width)
        grid = [line for line in lines[2:] if line.startswith("  ") and line.strip()]
        assert len(grid) == rows, (width, lines)


def test_a_short_screen_keeps_the_busiest_endpoints() -> None:
    doc = stats(idle=endpoint(queued=0, waiting=0, running=0, **ORDINARY),
                busy=endpoint(queued=0, waiting=500, running=4, **ORDINARY),
                mid=endpoint(queued=1, waiting=2, running=0, **ORDINARY))
    lines = render(doc, 80, 24, history=History(60))
    text = "\n".join(lines)
    assert len(lines) <= 24, text
    assert text.index("busy") < text.index("mid") and "\nidle" not in text, text
    assert "+1 more endpoint(s)" in text and "(2 busiest shown)" in lines[0], text
    tall = render(doc, 80, None)
    assert [line.split()[0] for line in tall if line[:1].isalpha()][1:] == ["busy", "mid",
                                                                              "idle"]


def test_history_rates_and_window() -> None:
    h = History(window=10)
    h.add(stats(a=endpoint(succeeded=0, failed=0, expired=0, cancelled=0)) | {
        "generated_at": 100.0})
    h.add(stats(a=endpoint(succeeded=10, failed=2, expired=1, cancelled=1)) | {
        "generated_at": 102.0})
    p = h.points("a")
    assert p[0].done_per_s is None and p[1].done_per_s == 7.0 and p[1].failed_per_s == 1.5
    assert p[1].pending == 123
    # Totals that drop (the endpoint forgotten, then seen again) read as no jobs ended.
    h.add(stats(a=endpoint(succeeded=0, failed=0, expired=0, cancelled=0)) | {
        "generated_at": 103.0})
    assert h.points("a")[-1].done_per_s == 0.0
    h.add(stats(b=endpoint()) | {"generated_at": 113.5})  # a's points all older than 10 s
    assert h.endpoints() == ["b"] and h.points("a") == []
    assert [p.t for p in h.points("b", since=113.0)] == [113.5]


def test_sparkline_and_seconds() -> None:
    assert sparkline([0, 1, 2, 4, 8], 5) == "▁▂▃▅█"
    assert sparkline([None, 0, 0], 5) == "   ▁▁"
    assert sparkline(range(100), 10) == sparkline(range(90, 100), 10)
    assert [seconds(v) for v in (None, 0.0004, 0.85, 4.12, 125, 3 * 3600 + 600)] == [
        "-", "0ms", "850ms", "4.1s", "2m05s", "3h10m"]
