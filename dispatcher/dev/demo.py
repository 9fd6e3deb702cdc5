"""``dispatcher demo``: the whole system on one machine in under a minute.

An embedded redis-server, the Vast emulator with an endpoint that cold-starts,
one worker process and the gateway with its live dashboard; 200 jobs submitted,
watched, and summarised.

The gateway listens on loopback with ``--no-auth``: the demo's Redis has no password
and listens on loopback too, so a token would protect nothing that is not already open
to this machine's users, and the address printed can be clicked as it is.
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
from dispatcher.dev.procs import EmulatorProcess, GatewayProcess, wait_for_worker, worker_process
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


def run_demo(jobs: int = 200, cold_start: float = 5.0, concurrency: int = 64,
             dashboard: bool = False, port: int = 0) -> int:
    """``dashboard``: open the dashboard in a browser, and keep it up after the summary
    until Ctrl-C."""
    console = Console()
    # Ctrl-C and SIGTERM both unwind the ExitStack, which stops every child.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return _run(console, jobs, cold_start, concurrency, dashboard, port)
    except KeyboardInterrupt:
        console.print("[yellow]Interrupted[/]: stopped the worker, the emulator and Redis.")
        return 130


def start_dashboard(env: dict[str, str], port: int = 0) -> GatewayProcess:
    """The gateway on loopback, its dashboard already sampling (one request starts it),
    so a page opened later still shows the cold start from its first second."""
    import requests

    gateway = GatewayProcess(env, token=None, port=port).start()
    try:
        requests.get(gateway.url + "/dashboard/data", timeout=10).raise_for_status()
    except BaseException:
        gateway.stop()
        raise
    return gateway


def _run(console: Console, jobs: int, cold_start: float, concurrency: int,
         dashboard: bool = False, port: int = 0) -> int:
    from dispatcher.client import Client

    with ExitStack() as stack:
        console.print("[bold]Starting[/] redis-server, the Vast emulator, a worker and the "
                      "gateway...")
        redis_server = stack.enter_context(RedisServer())
        emulator = stack.enter_context(EmulatorProcess(demo_config(cold_start)))
        env = {
            "REDIS_URL": redis_server.url,
            "VAST_API_KEY": DEMO_KEY,
            "VAST_ROUTE_URL": emulator.route_url,
            "DISPATCHER_CONCURRENCY": str(concurrency),
        }
        worker = stack.enter_context(worker_process(env, concurrency=concurrency))
        gateway = start_dashboard(env, port)
        stack.callback(gateway.stop)
        wait_for_worker(redis_server.url, worker)
        url = gateway.url + "/"
        console.print(f"  redis    {redis_server.url}\n  emulator {emulator.route_url}"
                      f"  (endpoint {ENDPOINT!r}: scaled to zero, cold start {cold_start:g}s)\n"
                      f"  worker   pid {worker.pid}, {concurrency} threads\n"
                      f"  gateway  {gateway.url} (loopback, no auth)")
        console.print(f"[bold]Dashboard[/]: [link={url}]{url}[/link]"
                      + ("" if dashboard else "  (dispatcher demo --dashboard opens it)"))
        if dashboard:
            import webbrowser

            if not webbrowser.open(url):
                console.print("  (no browser found here: open the address above)")

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
        if dashboard:
            console.print(f"The dashboard stays up at {url}: Ctrl-C stops everything.")
            try:
                while gateway.alive():
                    time.sleep(0.5)
            except KeyboardInterrupt:
                console.print("Stopped the gateway, the worker, the emulator and Redis.")
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
