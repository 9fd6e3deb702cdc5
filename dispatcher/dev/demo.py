"""``dispatcher demo``: the whole system on one machine in under a minute.

An embedded redis-server, the Vast emulator with an endpoint that cold-starts,
and one worker process; 200 jobs submitted, watched, and summarised.
"""

from __future__ import annotations

import signal
import statistics
import time
import uuid
from contextlib import ExitStack
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dispatcher.config import Settings
from dispatcher.dev.procs import EmulatorProcess, wait_for_worker, worker_process
from dispatcher.dev.redis_server import RedisServer
from dispatcher.model import TERMINAL
from dispatcher.store.keys import job_key

DEMO_KEY = "demo-key-not-a-secret"
ENDPOINT = "demo-llm"


def demo_config(cold_start: float) -> dict[str, Any]:
    return {
        "api_key": DEMO_KEY,
        "seed": 1,
        "endpoints": {
            ENDPOINT: {
                "workers": 0,
                "max_workers": 4,
                "cold_start": cold_start,
                "concurrency": 8,
                "inactivity_timeout": 120,
                "latency": {"kind": "lognormal", "median": 0.25, "sigma": 0.4},
                "failure_rate": 0.02,
            }
        },
    }


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_demo(jobs: int = 200, cold_start: float = 5.0, concurrency: int = 64) -> int:
    console = Console()
    # Ctrl-C and SIGTERM both unwind the ExitStack, which stops every child.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return _run(console, jobs, cold_start, concurrency)
    except KeyboardInterrupt:
        console.print("[yellow]Interrupted[/]: stopped the worker, the emulator and Redis.")
        return 130


def _run(console: Console, jobs: int, cold_start: float, concurrency: int) -> int:
    from dispatcher.client import Client

    with ExitStack() as stack:
        console.print("[bold]Starting[/] redis-server, the Vast emulator and a worker...")
        redis_server = stack.enter_context(RedisServer())
        emulator = stack.enter_context(EmulatorProcess(demo_config(cold_start)))
        env = {
            "REDIS_URL": redis_server.url,
            "VAST_API_KEY": DEMO_KEY,
            "VAST_ROUTE_URL": emulator.route_url,
            "DISPATCHER_CONCURRENCY": str(concurrency),
        }
        worker = stack.enter_context(worker_process(env, concurrency=concurrency))
        wait_for_worker(redis_server.url, worker)
        console.print(f"  redis   {redis_server.url}\n  emulator {emulator.route_url}"
                      f"  (endpoint {ENDPOINT!r}: scaled to zero, cold start {cold_start:g}s)\n"
                      f"  worker  pid {worker.pid}, {concurrency} threads")

        client = Client(Settings(redis_url=redis_server.url))
        stack.callback(client.close)
        started = time.time()
        ids = [
            client.submit(ENDPOINT, {"id": uuid.uuid4().hex, "prompt": f"job {n}",
                                     "max_tokens": 32}, cost=32, path="/v1/completions",
                          max_wait=120, timeout=60)
            for n in range(jobs)
        ]
        records = watch(client, ids, console)
        summarise(console, records, time.time() - started, emulator.stats())
        bad = sum(1 for r in records if r.get("status") != "succeeded")
        return 0 if bad == 0 else 1


def watch(client: Any, ids: list[str], console: Console) -> list[dict[str, str]]:
    fields = ["status", "created_at", "assigned_at", "finished_at", "route_calls"]
    columns = [TextColumn("[progress.description]{task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("waiting for a GPU", total=len(ids))
        while True:
            pipe = client.store.redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(job_key(job_id), fields)
            records = [dict(zip(fields, row, strict=True)) for row in pipe.execute()]
            done = sum(1 for r in records if r["status"] in TERMINAL)
            running = sum(1 for r in records if r["status"] == "running")
            phase = "running on GPUs" if running or done else "waiting for a GPU (cold start)"
            progress.update(task, completed=done, description=phase)
            if done == len(ids):
                return records
            time.sleep(0.2)


def summarise(console: Console, records: list[dict[str, str]], wall: float,
              vast_stats: dict[str, Any]) -> None:
    def f(r: dict[str, str], k: str) -> float:
        return float(r[k]) if r.get(k) else float("nan")

    counts = {s: sum(1 for r in records if r["status"] == s)
              for s in ("succeeded", "failed", "expired", "cancelled")}
    ok = [r for r in records if r["status"] == "succeeded"]
    latency = [f(r, "finished_at") - f(r, "created_at") for r in ok]
    waiting = [f(r, "assigned_at") - f(r, "created_at") for r in ok]
    route_calls = [int(r["route_calls"] or 0) for r in records]

    table = Table(title=f"{len(records)} jobs in {wall:.1f}s")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for status, n in counts.items():
        table.add_row(status, str(n))
    table.add_row("latency p50 / p95", f"{pct(latency, .5):.2f}s / {pct(latency, .95):.2f}s")
    table.add_row("waiting for a worker p50 / p95",
                  f"{pct(waiting, .5):.2f}s / {pct(waiting, .95):.2f}s")
    table.add_row("route calls per job (mean / max)",
                  f"{statistics.fmean(route_calls):.1f} / {max(route_calls)}")
    dup = vast_stats.get("duplicate_executions", 0)
    table.add_row("GPU executions (re-runs after errors)",
                  f"{sum(vast_stats.get('executions_by_payload', {}).values())} ({dup})")
    console.print(table)
