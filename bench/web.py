"""Scenarios of the web-facing API (issue 14), numbered after the five in scenarios.py:

6. push wait: how soon a waiter sees a result (``finished_at``, stamped by Redis in the
   script that ends the job, to ``wait()`` returning), and Redis commands per wait(),
   against the polling wait it replaced;
7. batch submit: jobs submitted per second, one at a time vs ``submit_many``, sync and
   asyncio (Redis only: no worker reads the queue, so nothing else competes);
8. gateway: submits/s and p50 through ``dispatcher gateway`` (aiohttp) over HTTP, and the
   same route on Starlette + uvicorn, the other obvious choice.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench.harness import Harness, pct, repo_env
from bench.report import Result
from bench.scenarios import Config, _endpoint, _queue
from dispatcher.aio import AsyncClient
from dispatcher.client import Client
from dispatcher.config import Settings
from dispatcher.dev.procs import Child
from dispatcher.model import Job

GATEWAY_TOKEN = "bench-gateway-token-" + uuid.uuid4().hex
IN_FLIGHT = 32  # concurrent HTTP requests for the gateway's throughput


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


class _Counted:
    """Counts the commands a sync Redis client sends (pipelines count one per command)."""

    def __init__(self, *clients: Any) -> None:
        self.n = 0
        for c in clients:
            original = c.execute_command

            def counted(*args: Any, _orig: Callable[..., Any] = original, **kw: Any) -> Any:
                self.n += 1
                return _orig(*args, **kw)

            c.execute_command = counted


def _polling_wait(client: Client, job_id: str, timeout: float = 60.0) -> Job:
    """The wait() this issue replaced: read the job, sleep 10 ms growing 1.5x to 0.25 s."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        job = client.get_job(job_id)
        if job.done:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(job_id)
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def push_wait(h: Harness, cfg: Config) -> Result:
    res = Result("push_wait", "6. result visible to a waiter")
    n = cfg.latency_jobs
    gpu = 0.05
    ep = "gpu50ms"
    with h.emulator({ep: _endpoint(latency={"kind": "fixed", "seconds": gpu})}) as emu:
        env = h.worker_env(emu, _queue(), cfg.concurrency)
        with h.workers(env, 1, cfg.concurrency):
            client = Client(Settings.from_env(env))
            try:
                counted = _Counted(client.store.redis, client._blocking())
                figures = {}
                for name, wait in (("push", client.wait),
                                   ("poll", lambda i: _polling_wait(client, i))):
                    for _ in range(5):  # warm-up
                        wait(client.submit(ep, {"w": 1}, path="/gen", cost=1))
                    seen, commands = [], []
                    for i in range(n):
                        job_id = client.submit(ep, {"i": i}, path="/gen", cost=1)
                        before = counted.n
                        job = wait(job_id)
                        returned = time.time()
                        commands.append(counted.n - before)
                        assert job.finished_at is not None and job.status == "succeeded"
                        seen.append(returned - job.finished_at)
                    figures[name] = (seen, commands)
            finally:
                client.close()
    (push, push_cmds), (poll, poll_cmds) = figures["push"], figures["poll"]
    res.metrics.update(
        push_p50_ms=pct(push, 0.5) * 1000, push_p95_ms=pct(push, 0.95) * 1000,
        poll_p50_ms=pct(poll, 0.5) * 1000, poll_p95_ms=pct(poll, 0.95) * 1000,
        push_commands_per_wait=statistics.mean(push_cmds),
        poll_commands_per_wait=statistics.mean(poll_cmds))
    note = f"{n} jobs one at a time, GPU {gpu * 1000:.0f} ms; finished_at (Redis) -> return"
    res.row("push wait(): result to waiter p50 / p95",
            f"{_ms(pct(push, 0.5))} / {_ms(pct(push, 0.95))} ms", "a few ms",
            pct(push, 0.5) < 0.005, note)
    res.row("push wait(): Redis commands per wait", f"{statistics.mean(push_cmds):.2f}",
            "", None, "read, block (woken by the end), read")
    res.row("polling wait() it replaced: p50 / p95",
            f"{_ms(pct(poll, 0.5))} / {_ms(pct(poll, 0.95))} ms", "", None,
            "10 ms sleep growing 1.5x to 0.25 s")
    res.row("polling wait(): Redis commands per wait", f"{statistics.mean(poll_cmds):.2f}")
    return res


def submit_batch(h: Harness, cfg: Config) -> Result:
    res = Result("submit_batch", "7. submit: one at a time vs batch")
    n = cfg.throughput_jobs
    env = {"REDIS_URL": h.redis_url, "DISPATCHER_QUEUE": _queue()}
    settings = Settings.from_env(env)

    def jobs(tag: str) -> list[dict[str, Any]]:
        return [{"endpoint": "ep", "payload": {"tag": tag, "i": i}, "path": "/gen"}
                for i in range(n)]

    rates: dict[str, float] = {}
    client = Client(settings)
    try:
        client.submit_many(jobs("warm")[:200])
        batch = jobs("one")
        t0 = time.perf_counter()
        for j in batch:
            client.submit(**j)
        rates["sync, one at a time"] = n / (time.perf_counter() - t0)
        batch = jobs("many")
        t0 = time.perf_counter()
        client.submit_many(batch)
        rates["sync, submit_many"] = n / (time.perf_counter() - t0)
    finally:
        client.close()

    async def aio() -> None:
        async with AsyncClient(settings) as c:
            await c.submit_many(jobs("warm")[:200])
            batch = jobs("aone")
            t0 = time.perf_counter()
            for j in batch:
                await c.submit(**j)
            rates["asyncio, one at a time"] = n / (time.perf_counter() - t0)
            batch = jobs("amany")
            t0 = time.perf_counter()
            await c.submit_many(batch)
            rates["asyncio, submit_many"] = n / (time.perf_counter() - t0)

    asyncio.run(aio())
    res.metrics.update({k.replace(", ", "_").replace(" ", "_") + "_per_s": v
                        for k, v in rates.items()})
    for name, rate in rates.items():
        res.row(f"jobs submitted/s, {name}", f"{rate:.0f}", "", None,
                f"{n} jobs, 1 thread, Redis on the same machine")
    res.row("submit_many / one at a time (sync)",
            f"{rates['sync, submit_many'] / rates['sync, one at a time']:.1f}x", "", None,
            "creates: one pipelined round trip per 500 jobs; Celery publishes one by one")
    return res


@contextmanager
def _server(h: Harness, name: str, args: list[str], env: dict[str, str], port: int
            ) -> Iterator[str]:
    child = Child(name, args, {**os.environ, **env}, log_path=h._log(name))
    child.start()
    url = f"http://127.0.0.1:{port}"
    try:
        import requests

        deadline = time.monotonic() + 30
        while True:
            try:
                requests.post(url + "/v1/jobs", json={}, timeout=2,
                              headers={"Authorization": f"Bearer {GATEWAY_TOKEN}"})
                break
            except requests.ConnectionError:
                if not child.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start:\n{child.log_text()[-2000:]}"
                                       ) from None
                time.sleep(0.1)
        yield url
    finally:
        child.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _hammer(url: str, n: int, in_flight: int) -> tuple[float, list[float]]:
    """n POST /v1/jobs: ``in_flight`` at once; returns (jobs/s, latencies)."""
    import aiohttp

    headers = {"Authorization": f"Bearer {GATEWAY_TOKEN}"}
    lat: list[float] = []
    async with aiohttp.ClientSession(headers=headers) as s:
        async def one(i: int) -> None:
            t = time.perf_counter()
            async with s.post(url + "/v1/jobs", json={"endpoint": "ep", "path": "/gen",
                                                      "payload": {"i": i}}) as r:
                assert r.status == 201, await r.text()
                await r.read()
            lat.append(time.perf_counter() - t)

        sem = asyncio.Semaphore(in_flight)

        async def bounded(i: int) -> None:
            async with sem:
                await one(i)

        for i in range(min(100, n)):  # warm-up
            await one(i)
        lat.clear()
        t0 = time.perf_counter()
        await asyncio.gather(*(bounded(i) for i in range(n)))
        return n / (time.perf_counter() - t0), list(lat)


async def _sequential(url: str, n: int) -> list[float]:
    _, lat = await _hammer(url, n, 1)
    return lat


def gateway(h: Harness, cfg: Config) -> Result:
    res = Result("gateway", "8. HTTP gateway: submit")
    n = max(200, cfg.throughput_jobs // 2)
    env = {"REDIS_URL": h.redis_url, "DISPATCHER_QUEUE": _queue(),
           "DISPATCHER_GATEWAY_TOKEN": GATEWAY_TOKEN}
    servers: list[tuple[str, list[str]]] = []
    port = _free_port()
    servers.append(("aiohttp (dispatcher gateway)",
                    [sys.executable, "-m", "dispatcher", "gateway", "--port", str(port)]))
    have_starlette = all(importlib.util.find_spec(m) for m in ("starlette", "uvicorn"))
    if have_starlette:
        servers.append(("Starlette + uvicorn (httptools)", [
            sys.executable, "-m", "uvicorn", "bench.gateway_starlette:app", "--port", "{port}",
            "--log-level", "warning", "--no-access-log", "--loop", "asyncio"]
            + (["--http", "httptools"] if importlib.util.find_spec("httptools") else [])))
    for name, args in servers:
        p = port if "dispatcher" in name else _free_port()
        args = [a.replace("{port}", str(p)) for a in args]
        with _server(h, name.split()[0], args, repo_env(env), p) as url:
            rate, lat = asyncio.run(_hammer(url, n, IN_FLIGHT))
            seq = asyncio.run(_sequential(url, min(n, 500)))
        key = name.split()[0].lower()
        res.metrics.update({f"{key}_submits_per_s": rate, f"{key}_p50_ms": pct(seq, 0.5) * 1000,
                            f"{key}_p50_loaded_ms": pct(lat, 0.5) * 1000})
        res.row(f"{name}: submits/s, {IN_FLIGHT} in flight", f"{rate:.0f}", "", None,
                f"{n} POST /v1/jobs; client in the bench process, same 2 cores")
        res.row(f"{name}: p50 one at a time / p50 at {IN_FLIGHT} in flight",
                f"{_ms(pct(seq, 0.5))} / {_ms(pct(lat, 0.5))} ms")
    if not have_starlette:
        res.row("Starlette + uvicorn", "not measured", "", None,
                "pip install starlette uvicorn httptools to compare")
    return res


SCENARIOS: dict[str, Callable[[Harness, Config], Result]] = {
    "6": push_wait, "7": submit_batch, "8": gateway,
}
