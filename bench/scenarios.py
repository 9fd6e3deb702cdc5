"""The five scenarios (scenario 1 with its Vast-client peer). Each starts what it needs
through the harness and returns a Result."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.ceiling import NOOP_TASK, make_app
from bench.harness import (
    API_KEY,
    CpuMeter,
    Harness,
    RssSampler,
    celery_done_check,
    job_done_check,
    pct,
    progress,
    repo_env,
    rss_bytes,
    wait_all,
)
from bench.profile import PySpy, summarise
from bench.report import Result
from dispatcher.client import Client
from dispatcher.config import Settings
from dispatcher.dev.procs import Child, EmulatorProcess
from dispatcher.store import keys
from dispatcher.store.keys import job_key

MB = 1024 * 1024


@dataclass
class Config:
    """Sizes of every scenario; ``smoke()`` gives the tiny CI sizes."""

    throughput_jobs: int = 5000
    repeats: int = 3
    concurrency: int = 64
    latency_jobs: int = 200
    latency_seconds: float = 0.01
    concurrency_jobs: int = 1000
    concurrency_threads: int = 1000
    job_seconds: float = 30.0
    cold_jobs: int = 10000
    cold_start_seconds: float = 60.0
    cold_procs: int = 4
    cold_route_rate: float = 100.0  # the fleet's budget, DISPATCHER_ROUTE_RATE
    cold_vast_limit: float = 120.0  # the emulator answers 429 above this many calls/s
    scale_jobs: int = 5000
    scale_procs: list[int] = field(default_factory=lambda: [1, 2, 4])
    profile: bool = True
    results_dir: Path = Path(__file__).parent / "results"

    @classmethod
    def smoke(cls) -> Config:
        return cls(throughput_jobs=200, repeats=1, latency_jobs=20, concurrency_jobs=100,
                   concurrency_threads=100, job_seconds=2.0, cold_jobs=200,
                   cold_start_seconds=3.0, cold_procs=2, scale_jobs=200, scale_procs=[1, 2],
                   profile=False)


def _endpoint(**overrides: Any) -> dict[str, Any]:
    """An emulator endpoint that never refuses work on queue time."""
    base = {"workers": 4, "max_workers": 4, "cold_start": 0.0, "concurrency": 256,
            "inactivity_timeout": 3600, "latency": {"kind": "fixed", "seconds": 0.0},
            "failure_rate": 0.0, "max_queue_time": 1e6}
    return {**base, **overrides}


def _payload(n: int) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "n": n, "prompt": "bench"}


def _queue() -> str:
    return f"bench-{uuid.uuid4().hex[:8]}"


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _spread(values: Sequence[float]) -> str:
    return f"(runs {', '.join(f'{v:.0f}' for v in values)})" if len(values) > 1 else ""


@dataclass
class Pass:
    """One timed pass of N jobs: submit everything, wait until every result is readable."""

    jobs: int
    submit_s: float
    total_s: float
    cpu_ms_per_job: dict[str, float]

    @property
    def rate(self) -> float:
        return self.jobs / self.total_s

    @property
    def submit_rate(self) -> float:
        return self.jobs / self.submit_s


def _timed_pass(h: Harness, n: int, submit: Callable[[int], str],
                check: Callable[[Sequence[str]], list[bool]], pids: dict[str, int],
                label: str, timeout: float) -> Pass:
    with progress(h.console) as bar, CpuMeter(pids) as cpu:
        sub = bar.add_task(f"{label}: submit", total=n)
        done = bar.add_task(f"{label}: results", total=n)
        t0 = time.time()
        ids = []
        for i in range(n):
            ids.append(submit(i))
            if i % 100 == 0:
                bar.update(sub, completed=i)
        t1 = time.time()
        bar.update(sub, completed=n)
        t2 = wait_all(ids, check, timeout, lambda k: bar.update(done, completed=k))
    used = {k: round(1000 * v / n, 3) for k, v in cpu.used.items()}
    return Pass(n, t1 - t0, t2 - t0, used)


def _pids(h: Harness, workers: Sequence[Child], emu: EmulatorProcess | None) -> dict[str, int]:
    assert h.redis is not None and h.redis.proc is not None
    pids = {f"worker{i}": w.pid for i, w in enumerate(workers)}
    pids["redis"] = h.redis.proc.pid
    if emu is not None:
        pids["emulator"] = emu.pid
    pids["bench (submitter)"] = os.getpid()
    return pids


def _client(env: dict[str, str]) -> Client:
    return Client(Settings.from_env(env))


def _dispatcher_passes(h: Harness, procs: int, n: int, repeats: int, concurrency: int,
                       label: str, profile_to: Path | None = None
                       ) -> tuple[list[Pass], dict[str, Any] | None]:
    """Dispatcher jobs on an instant endpoint: warm-up, then ``repeats`` timed passes."""
    ep = "instant"
    q = _queue()
    profile: dict[str, Any] | None = None
    with h.emulator({ep: _endpoint()}) as emu:
        env = h.worker_env(emu, q, concurrency)
        with h.workers(env, procs, concurrency) as workers:
            client = _client(env)
            try:
                r = h.client_redis()
                check = job_done_check(r)

                def submit(i: int) -> str:
                    return client.submit(ep, _payload(i), path="/v1/completions", cost=1,
                                         max_wait=600, timeout=60)

                warm = [submit(i) for i in range(min(100, n))]
                wait_all(warm, check, 120)
                pids = _pids(h, workers, emu)
                passes = [_timed_pass(h, n, submit, check, pids, f"{label} {k + 1}/{repeats}",
                                      timeout=max(120, n / 10))
                          for k in range(repeats)]
                if profile_to is not None:
                    with PySpy(workers[0].pid, profile_to) as spy:
                        _timed_pass(h, n, submit, check, pids, f"{label} (profiled)",
                                    timeout=max(120, n / 10))
                    profile = {"error": spy.error, "raw": str(profile_to)}
                    if spy.error is None:
                        profile["summary"] = summarise(profile_to)
                stats = emu.stats()
                profile = profile or None
                dup = stats.get("duplicate_executions", 0)
                if dup:
                    raise AssertionError(f"{dup} duplicate executions at the emulator")
            finally:
                client.close()
    return passes, profile


def _ceiling_passes(h: Harness, n: int, repeats: int, concurrency: int,
                    dispatcher_conf: bool = False) -> list[Pass]:
    q = _queue()
    app = make_app(h.redis_url, q, dispatcher_conf, concurrency)
    # The dispatcher publishes with a priority (9 - job priority): so does its twin.
    options = {"priority": 9} if dispatcher_conf else {}
    label = "ceiling, dispatcher's Celery settings" if dispatcher_conf else "ceiling"
    with h.ceiling_workers(q, 1, concurrency, dispatcher_conf) as workers:
        r = h.client_redis()
        check = celery_done_check(r)

        def submit(i: int) -> str:
            return app.send_task(NOOP_TASK, queue=q, **options).id

        wait_all([submit(i) for i in range(min(100, n))], check, 120)
        pids = _pids(h, workers, None)
        return [_timed_pass(h, n, submit, check, pids, f"{label} {k + 1}/{repeats}",
                            timeout=max(120, n / 10)) for k in range(repeats)]


PEER_IN_FLIGHT = 32  # requests Vast's client keeps in flight in scenario 1


def _vast_client_passes(h: Harness, n: int, repeats: int,
                        in_flight: int = PEER_IN_FLIGHT) -> list[Pass]:
    """Vast's official client (``bench/vast_peer.py``), one asyncio process per pass, on
    the same emulator endpoint as the dispatcher's passes; no Redis in its path."""
    ep = "instant"
    passes = []
    env = repo_env()
    with h.emulator({ep: _endpoint()}) as emu:
        for k in range(repeats):
            h.console.print(f"Vast's client {k + 1}/{repeats}: {n} requests, "
                            f"{in_flight} in flight")
            args = [sys.executable, "-m", "bench.vast_peer", "--url", emu.url, "--key", API_KEY,
                    "--endpoint", ep, "--jobs", str(n), "--in-flight", str(in_flight)]
            with subprocess.Popen(args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True) as proc:
                assert proc.stdin is not None and proc.stdout is not None
                try:
                    if proc.stdout.readline().strip() != "ready":
                        raise AssertionError("Vast's client did not finish its warm-up")
                    with CpuMeter({"vast client": proc.pid, "emulator": emu.pid}) as cpu:
                        proc.stdin.write("go\n")
                        proc.stdin.flush()
                        out = json.loads(proc.stdout.readline())
                finally:
                    proc.kill()
            if out["ok"] != n:
                raise AssertionError(f"Vast's client: {n - out['ok']} of {n} requests failed")
            used = {k_: round(1000 * v / n, 3) for k_, v in cpu.used.items()}
            passes.append(Pass(n, out["seconds"], out["seconds"], used))
        if emu.stats().get("duplicate_executions", 0):
            raise AssertionError("duplicate executions at the emulator")
    return passes


# --- 1. throughput --------------------------------------------------------------------


def throughput(h: Harness, cfg: Config) -> Result:
    res = Result("throughput", "1. throughput, instant GPU workers")
    n, reps, conc = cfg.throughput_jobs, cfg.repeats, cfg.concurrency
    ceiling = _ceiling_passes(h, n, reps, conc)
    twin = _ceiling_passes(h, n, reps, conc, dispatcher_conf=True)
    prof_path = cfg.results_dir / "profile-throughput.raw.txt" if cfg.profile else None
    disp, profile = _dispatcher_passes(h, 1, n, reps, conc, "dispatcher", prof_path)
    peer = _vast_client_passes(h, n, reps)
    p_rate = _median([p.rate for p in peer])
    c_rate = _median([p.rate for p in ceiling])
    t_rate = _median([p.rate for p in twin])
    d_rate = _median([p.rate for p in disp])
    ratio = d_rate / c_rate
    res.metrics = {
        "jobs": n, "repeats": reps, "concurrency": conc,
        "dispatcher_jobs_per_s": d_rate, "ceiling_jobs_per_s": c_rate,
        "ratio_to_ceiling": ratio,
        "dispatcher_runs_jobs_per_s": [p.rate for p in disp],
        "ceiling_runs_jobs_per_s": [p.rate for p in ceiling],
        "ceiling_dispatcher_conf_jobs_per_s": t_rate,
        "ceiling_dispatcher_conf_runs_jobs_per_s": [p.rate for p in twin],
        "dispatcher_submit_per_s": _median([p.submit_rate for p in disp]),
        "ceiling_submit_per_s": _median([p.submit_rate for p in ceiling]),
        "dispatcher_cpu_ms_per_job": _mid(disp).cpu_ms_per_job,
        "ceiling_cpu_ms_per_job": _mid(ceiling).cpu_ms_per_job,
        "ceiling_dispatcher_conf_cpu_ms_per_job": _mid(twin).cpu_ms_per_job,
        "vast_client_jobs_per_s": p_rate,
        "vast_client_runs_jobs_per_s": [p.rate for p in peer],
        "vast_client_cpu_ms_per_job": _mid(peer).cpu_ms_per_job,
        "ratio_to_vast_client": d_rate / p_rate,
    }
    res.profile = profile
    res.row("dispatcher, submit -> result readable", f"{d_rate:.0f} jobs/s",
            note=f"{n} jobs x {reps}, 1 worker, {conc} threads "
                 f"{_spread(res.metrics['dispatcher_runs_jobs_per_s'])}")
    res.row("ceiling: bare Celery no-op + Redis result", f"{c_rate:.0f} jobs/s",
            note=_spread(res.metrics["ceiling_runs_jobs_per_s"]))
    res.row("dispatcher / ceiling", f"{100 * ratio:.0f}%", ">= 60%", ratio >= 0.6)
    res.row("no-op with the dispatcher's Celery settings", f"{t_rate:.0f} jobs/s",
            note=f"{100 * t_rate / c_rate:.0f}% of the ceiling: acks late, 10 priority lists, "
                 f"prefetch 1 {_spread([p.rate for p in twin])}")
    res.row("submit rate (1 thread): dispatcher / ceiling",
            f"{res.metrics['dispatcher_submit_per_s']:.0f} / "
            f"{res.metrics['ceiling_submit_per_s']:.0f} per s")
    res.row("Vast's official client (vastai 1.9.1), 1 asyncio process", f"{p_rate:.0f} jobs/s",
            note=f"{PEER_IN_FLIGHT} in flight, same emulator endpoint, nothing durable "
                 f"{_spread(res.metrics['vast_client_runs_jobs_per_s'])}")
    res.row("dispatcher / Vast's client", f"{100 * d_rate / p_rate:.0f}%", ">= 100%",
            d_rate >= p_rate)
    d_redis = _mid(disp).cpu_ms_per_job.get("redis", float("nan"))
    c_redis = _mid(ceiling).cpu_ms_per_job.get("redis", float("nan"))
    res.metrics["redis_cpu_ms_per_job"] = {"dispatcher": d_redis, "ceiling": c_redis}
    res.row("Redis CPU per job: dispatcher / no-op", f"{d_redis:.2f} / {c_redis:.2f} ms",
            "<= 0.40 ms", d_redis <= 0.40,
            f"{d_redis / c_redis:.1f}x the no-op; one Redis carries ~{1000 / d_redis:.0f} "
            f"dispatcher jobs/s at most")
    dw = _worker_cpu(_mid(disp))
    cw = _worker_cpu(_mid(ceiling))
    tw = _worker_cpu(_mid(twin))
    res.row("worker CPU per job: dispatcher / twin / ceiling",
            f"{dw:.2f} / {tw:.2f} / {cw:.2f} ms")
    return res


def _mid(passes: Sequence[Pass]) -> Pass:
    """The pass with the median rate (the upper one of an even count)."""
    return sorted(passes, key=lambda p: p.rate)[len(passes) // 2]


def _worker_cpu(p: Pass) -> float:
    return sum(v for k, v in p.cpu_ms_per_job.items() if k.startswith("worker"))


# --- 2. added latency -----------------------------------------------------------------


def latency(h: Harness, cfg: Config) -> Result:
    res = Result("latency", "2. added latency, one job at a time")
    ep = "light"
    q = _queue()
    gpu = cfg.latency_seconds
    added: list[float] = []
    seen_added: list[float] = []
    parts: dict[str, list[float]] = {"submit_to_created": [], "created_to_assigned": [],
                                     "assigned_to_finished": [], "route_s": [], "worker_s": []}
    endpoint = _endpoint(workers=1, max_workers=1, concurrency=4,
                         latency={"kind": "fixed", "seconds": gpu})
    with h.emulator({ep: endpoint}) as emu:
        env = h.worker_env(emu, q, cfg.concurrency)
        with h.workers(env, 1, cfg.concurrency):
            client = _client(env)
            r = h.client_redis()
            try:
                for i in range(5):  # warm-up: connections, scripts, imports
                    client.wait(client.submit(ep, _payload(i), path="/x"), timeout=30)
                with progress(h.console) as bar:
                    task = bar.add_task("one job at a time", total=cfg.latency_jobs)
                    for i in range(cfg.latency_jobs):
                        before = emu.stats()
                        p = _payload(i)
                        t_submit = time.time()
                        job_id = client.submit(ep, p, path="/x", cost=1)
                        key = job_key(job_id)
                        while r.hget(key, "status") not in ("succeeded", "failed", "expired"):
                            time.sleep(0.0005)
                        t_seen = time.time()
                        after = emu.stats()
                        h_ = r.hmget(key, "status", "created_at", "assigned_at", "finished_at")
                        if h_[0] != "succeeded":
                            raise AssertionError(f"job {job_id} ended {h_[0]}")
                        created, assigned, finished = (float(x) for x in h_[1:])
                        route_s = _route_seconds(after) - _route_seconds(before)
                        worker_s = float(after["worker_seconds_by_payload"][p["id"]])
                        emulator_s = route_s + worker_s
                        added.append(finished - t_submit - emulator_s)
                        seen_added.append(t_seen - t_submit - emulator_s)
                        parts["submit_to_created"].append(created - t_submit)
                        parts["created_to_assigned"].append(assigned - created)
                        parts["assigned_to_finished"].append(finished - assigned)
                        parts["route_s"].append(route_s)
                        parts["worker_s"].append(worker_s)
                        bar.update(task, completed=i + 1)
            finally:
                client.close()
    floor = _celery_round_trips(h, cfg.latency_jobs, cfg.concurrency)
    ms = {q_: 1000 * pct(added, v) for q_, v in (("p50", .5), ("p95", .95), ("p99", .99))}
    res.metrics = {
        "jobs": cfg.latency_jobs, "gpu_seconds": gpu,
        "added_ms": ms,
        "added_seen_by_poller_ms": {k: 1000 * pct(seen_added, v)
                                    for k, v in (("p50", .5), ("p95", .95), ("p99", .99))},
        "parts_p50_ms": {k: 1000 * pct(v, .5) for k, v in parts.items()},
        "celery_noop_round_trip_ms": {k: 1000 * pct(floor, v)
                                      for k, v in (("p50", .5), ("p95", .95), ("p99", .99))},
    }
    res.row("added latency p50", f"{ms['p50']:.1f} ms", "<= 5 ms", ms["p50"] <= 5.0,
            f"{cfg.latency_jobs} jobs, GPU {1000 * gpu:g} ms; result time = finished_at")
    res.row("added latency p95 / p99", f"{ms['p95']:.1f} / {ms['p99']:.1f} ms")
    pp = res.metrics["parts_p50_ms"]
    res.row("p50 parts: submit / queue+claim+route / GPU call+store",
            f"{pp['submit_to_created']:.1f} / {pp['created_to_assigned']:.1f} / "
            f"{pp['assigned_to_finished']:.1f} ms",
            note=f"emulator route {pp['route_s']:.1f} ms, worker {pp['worker_s']:.1f} ms")
    fl = res.metrics["celery_noop_round_trip_ms"]
    res.row("for scale: bare Celery no-op, submit -> result p50 / p95",
            f"{fl['p50']:.1f} / {fl['p95']:.1f} ms", note="same Redis, polled the same way")
    return res


def _celery_round_trips(h: Harness, n: int, concurrency: int) -> list[float]:
    """Submit -> result readable of the bare Celery no-op, one at a time."""
    q = _queue()
    app = make_app(h.redis_url, q)
    r = h.client_redis()
    out: list[float] = []
    with h.ceiling_workers(q, 1, concurrency), progress(h.console) as bar:
        task = bar.add_task("bare Celery no-op, one at a time", total=n)
        for i in range(n + 5):
            t0 = time.time()
            key = f"celery-task-meta-{app.send_task(NOOP_TASK, queue=q).id}"
            while not r.exists(key):
                time.sleep(0.0005)
            if i >= 5:  # after a warm-up
                out.append(time.time() - t0)
                bar.update(task, completed=i - 4)
    return out


def _route_seconds(stats: dict[str, Any]) -> float:
    return float(stats.get("route_seconds_total", 0.0))


# --- 3. concurrency -------------------------------------------------------------------


def concurrency(h: Harness, cfg: Config) -> Result:
    res = Result("concurrency", "3. concurrency, slow GPU jobs, one worker process")
    ep = "slow"
    q = _queue()
    n, secs, threads = cfg.concurrency_jobs, cfg.job_seconds, cfg.concurrency_threads
    slots_per_worker = 100
    gpu_workers = max(1, -(-n // slots_per_worker))
    endpoint = _endpoint(workers=gpu_workers, max_workers=gpu_workers,
                         concurrency=slots_per_worker,
                         latency={"kind": "fixed", "seconds": secs})
    with h.emulator({ep: endpoint}) as emu:
        env = h.worker_env(emu, q, threads)
        with h.workers(env, 1, threads) as workers:
            client = _client(env)
            r = h.client_redis()
            pid = workers[0].pid
            rss_ready = rss_bytes(pid)
            running_peak = 0
            try:
                with RssSampler([pid]) as rss, progress(h.console) as bar:
                    sub = bar.add_task("submit", total=n)
                    done = bar.add_task(f"{secs:g}s GPU jobs", total=n)
                    t0 = time.time()
                    ids = []
                    for i in range(n):
                        ids.append(client.submit(ep, _payload(i), path="/x", cost=1,
                                                 timeout=secs + 60, max_wait=secs + 600))
                        bar.update(sub, completed=i + 1)
                    counts = keys.COUNTS(ep)

                    def on_progress(k: int) -> None:
                        nonlocal running_peak
                        running_peak = max(running_peak, int(r.hget(counts, "running") or 0))
                        bar.update(done, completed=k)

                    t_end = wait_all(ids, job_done_check(r), secs * 3 + 120, on_progress)
                stats = emu.stats()
                statuses = _statuses(r, ids)
            finally:
                client.close()
    peak = _peak_in_flight(stats)
    total = t_end - t0
    res.metrics = {
        "jobs": n, "job_seconds": secs, "threads": threads, "gpu_slots": gpu_workers * 100,
        "peak_in_flight": peak, "peak_running_in_redis": running_peak,
        "rss_ready_mb": rss_ready / MB, "rss_peak_mb": rss.peak / MB,
        "total_s": total, "floor_s": secs, "total_over_floor": total / secs,
        "statuses": statuses, "duplicate_executions": stats.get("duplicate_executions", 0),
    }
    res.row("peak in flight at the emulator", f"{peak}", f">= {n}", peak >= n,
            f"{n} jobs x {secs:g}s, 1 worker process, {threads} threads")
    res.row("worker RSS: ready -> peak", f"{rss_ready / MB:.0f} -> {rss.peak / MB:.0f} MB",
            "<= 300 MB", rss.peak <= 300 * MB)
    res.row("total time / floor", f"{total:.1f}s / {secs:g}s = {total / secs:.2f}x",
            note=f"statuses {statuses}")
    return res


def _peak_in_flight(stats: dict[str, Any]) -> int:
    workers = stats.get("workers", {})
    if isinstance(workers, dict) and "peak_in_flight" in workers:
        return int(workers["peak_in_flight"])
    return int(stats.get("peak_in_flight", 0))


def _statuses(r: redis.Redis, ids: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for chunk in range(0, len(ids), 1000):
        pipe = r.pipeline(transaction=False)
        for job_id in ids[chunk:chunk + 1000]:
            pipe.hget(job_key(job_id), "status")
        for s in pipe.execute():
            out[s] = out.get(s, 0) + 1
    return out


def _fields(r: redis.Redis, ids: Sequence[str], names: Sequence[str]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for chunk in range(0, len(ids), 1000):
        pipe = r.pipeline(transaction=False)
        for job_id in ids[chunk:chunk + 1000]:
            pipe.hmget(job_key(job_id), list(names))
        rows.extend(pipe.execute())
    return rows


# --- 4. cold start --------------------------------------------------------------------


def cold_start(h: Harness, cfg: Config) -> Result:
    res = Result("cold_start", "4. cold start, scaled to zero")
    ep = "cold"
    q = _queue()
    n, cold = cfg.cold_jobs, cfg.cold_start_seconds
    gpu_s, gpu_workers, slots = 0.05, 10, 100
    endpoint = _endpoint(workers=0, max_workers=gpu_workers, concurrency=slots,
                         cold_start=cold, latency={"kind": "fixed", "seconds": gpu_s})
    settings = Settings()
    rate, limit = cfg.cold_route_rate, cfg.cold_vast_limit
    vast_limit = {"rate": limit, "burst": max(1.0, limit / 4)}
    with h.emulator({ep: endpoint}, rate_limit=vast_limit) as emu:
        env = h.worker_env(emu, q, cfg.concurrency, {"DISPATCHER_ROUTE_RATE": str(rate)})
        with h.workers(env, cfg.cold_procs, cfg.concurrency) as workers:
            client = _client(env)
            r = h.client_redis()
            pids = [w.pid for w in workers]
            rss_ready = sum(rss_bytes(pid) for pid in pids)
            mem_base = int(r.info("memory")["used_memory"])
            mem_waiting: list[int] = []
            mem_submitting: list[float] = []  # bytes per job while jobs are still coming
            try:
                with RssSampler(pids) as rss, ReadyWatch(emu, ep) as watch, \
                        progress(h.console) as bar:
                    sub = bar.add_task("submit", total=n)
                    t0 = time.time()
                    ids = []
                    for i in range(n):
                        ids.append(client.submit(ep, _payload(i), path="/x", cost=1,
                                                 max_wait=cold + 900, timeout=60))
                        if i % 100 == 0:
                            bar.update(sub, completed=i)
                            if i and watch.ready_at is None:  # a slow submit outlasts it
                                mem_submitting.append(
                                    (int(r.info("memory")["used_memory"]) - mem_base) / i)
                    bar.update(sub, completed=n)
                    t_submitted = time.time()
                    counts_key = keys.COUNTS(ep)
                    done = bar.add_task("waiting for the GPU (cold start)", total=n)
                    deadline = time.monotonic() + cold + max(300, n / 10)
                    while True:
                        c = {k: int(v) for k, v in r.hgetall(counts_key).items()}
                        finished = sum(c.get(s, 0) for s in
                                       ("succeeded", "failed", "expired", "cancelled"))
                        if not c.get("running") and not finished:
                            mem_waiting.append(int(r.info("memory")["used_memory"]))
                        phase = ("waiting for the GPU (cold start)" if not finished and
                                 not c.get("running") else "draining")
                        bar.update(done, completed=finished,
                                   description=f"{phase}: {c.get('waiting', 0)} waiting")
                        if finished >= n:
                            break
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"cold start: {finished}/{n} done, counts {c}")
                        time.sleep(0.5)
                stats = emu.stats()
                rows = _fields(r, ids, ["status", "assigned_at", "finished_at", "route_calls"])
            finally:
                client.close()
    if watch.ready_at is None:
        raise AssertionError("the emulator never reported a ready worker")
    ready = watch.ready_at
    ok_rows = [x for x in rows if x[0] == "succeeded"]
    pickup = [float(x[1]) - ready for x in ok_rows]
    first_pickup = min(pickup) if pickup else float("nan")
    route = stats.get("route", {})
    rate_limited = int(route.get("rate_limited", 0))
    calls_at_vast = _route_calls_total(stats)
    last = max(float(x[2]) for x in ok_rows) if ok_rows else float("nan")
    route_calls = [int(x[3] or 0) for x in rows]
    # Each job needs its own route call: the budget bounds the drain, not the GPUs.
    drain_ideal = max(n * gpu_s / (gpu_workers * slots), n / rate if rate else 0.0)
    # Bytes per waiting job: with all n waiting, or (a submit slower than the cold start)
    # the last reading while they were still being submitted and none had a GPU.
    per_job = ((_median(mem_waiting[len(mem_waiting) // 2:]) - mem_base) / n if mem_waiting
               else mem_submitting[-1] if mem_submitting else float("nan"))
    cap = settings.poll_cap
    p95 = pct(pickup, .95)
    rss_growth = (rss.peak - rss_ready) / MB
    res.metrics = {
        "jobs": n, "cold_start_s": cold, "poll_cap_s": cap, "gpu_seconds": gpu_s,
        "gpu_slots": gpu_workers * slots, "submit_s": t_submitted - t0,
        "ready_after_first_submit_s": ready - t0,
        "rss_ready_mb": rss_ready / MB, "rss_peak_mb": rss.peak / MB,
        "rss_growth_mb": rss_growth, "worker_procs": cfg.cold_procs,
        "route_rate": rate, "vast_rate_limit": limit, "route_429s": rate_limited,
        "route_calls_per_s": calls_at_vast / max(1e-9, last - t0),
        "first_pickup_after_ready_s": first_pickup,
        "redis_bytes_per_waiting_job": per_job,
        "route_calls_per_job": statistics.fmean(route_calls) if route_calls else float("nan"),
        "route_calls_at_emulator": _route_calls_total(stats),
        "pickup_p50_s": pct(pickup, .5), "pickup_p95_s": p95,
        "drain_after_ready_s": last - ready, "drain_after_ready_ideal_s": drain_ideal,
        "total_s": last - t0, "total_ideal_s": cold + drain_ideal,
        "statuses": _count(x[0] for x in rows),
        "duplicate_executions": stats.get("duplicate_executions", 0),
    }
    m = res.metrics
    procs = cfg.cold_procs
    res.row("worker RSS growth", f"{rss_growth:+.1f} MB", f"<= {50 * procs} MB",
            rss_growth <= 50 * procs,
            f"{n} jobs, cold start {cold:g}s, {procs} workers x {cfg.concurrency} threads "
            f"(sum over processes)")
    res.row("route 429s (Vast limit / our budget)", f"{rate_limited} of {calls_at_vast}",
            "<= 1% of calls", rate_limited <= 0.01 * max(1, calls_at_vast),
            f"emulator 429s above {limit:g}/s; DISPATCHER_ROUTE_RATE={rate:g}; "
            f"{m['route_calls_per_s']:.1f} calls/s overall")
    res.row("first pickup after ready", f"{first_pickup:.2f} s", f"<= {cap:g} s (poll cap)",
            first_pickup <= cap)
    res.row("Redis memory per waiting job", f"{m['redis_bytes_per_waiting_job']:.0f} B")
    res.row("route calls per job (mean)", f"{m['route_calls_per_job']:.1f}",
            note=f"{m['route_calls_at_emulator']} at the emulator")
    res.row("pickup after ready p50 / p95", f"{m['pickup_p50_s']:.2f} / {p95:.2f} s",
            f"p95 <= {cap + 1:g} s", p95 <= cap + 1,
            f"ready {ready - t0:.1f}s after the first submit (stats poll, +-0.1s); "
            f"bounded below by jobs / budget = {n / rate if rate else 0:.0f} s")
    res.row("drain after ready: measured / ideal",
            f"{m['drain_after_ready_s']:.1f} / {drain_ideal:.1f} s",
            note=f"ideal = max(jobs x {gpu_s:g}s / {gpu_workers * slots} GPU slots, "
                 f"jobs / route budget)")
    res.row("total: measured / ideal", f"{m['total_s']:.1f} / {m['total_ideal_s']:.1f} s",
            note=f"statuses {m['statuses']}")
    return res


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _route_calls_total(stats: dict[str, Any]) -> int:
    route = stats.get("route", {})
    if isinstance(route, dict):
        return int(route.get("total", route.get("calls", sum(
            v for v in route.values() if isinstance(v, int)))))
    return int(route)


class ReadyWatch:
    """Polls the emulator's stats until an endpoint has a ready worker; notes the wall time."""

    INTERVAL = 0.1

    def __init__(self, emu: EmulatorProcess, endpoint: str) -> None:
        self.emu = emu
        self.endpoint = endpoint
        self.ready_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ready-watch", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                ep = self.emu.stats()["endpoints"][self.endpoint]
            except Exception:  # the emulator is busy: try again
                ep = {}
            if ep.get("ready", 0) > 0:
                self.ready_at = time.time()
                return
            self._stop.wait(self.INTERVAL)

    def __enter__(self) -> ReadyWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# --- 5. scaling -----------------------------------------------------------------------


def scaling(h: Harness, cfg: Config) -> Result:
    """Worker processes against one Redis, until Redis or the machine is the limit.

    Redis is single-threaded: the fleet's ceiling per Redis is one core's worth of its
    CPU per job. Where Redis ran near a full core, that was measured; where the machine
    ran out of cores first, it is extrapolated from the CPU per job, and says so."""
    res = Result("scaling", "5. scaling, worker processes, and the ceiling per Redis")
    cores = os.cpu_count() or 1
    rates: dict[str, float] = {}
    runs: dict[str, list[float]] = {}
    redis_ms: dict[str, float] = {}
    for procs in cfg.scale_procs:
        passes, _ = _dispatcher_passes(h, procs, cfg.scale_jobs, cfg.repeats, cfg.concurrency,
                                       f"{procs} worker(s)")
        runs[str(procs)] = [p.rate for p in passes]
        rates[str(procs)] = _median(runs[str(procs)])
        redis_ms[str(procs)] = _mid(passes).cpu_ms_per_job.get("redis", float("nan"))
    base = rates[str(cfg.scale_procs[0])]
    busy = {k: redis_ms[k] * rates[k] / 1000 for k in rates}  # cores Redis used
    top = max(rates, key=lambda k: busy[k])
    ceiling = 1000 / redis_ms[top]
    measured = busy[top] >= 0.9
    res.metrics = {"jobs": cfg.scale_jobs, "cores": cores, "jobs_per_s": rates, "runs": runs,
                   "speedup": {k: v / base for k, v in rates.items()},
                   "redis_cpu_ms_per_job": redis_ms, "redis_cores_busy": busy,
                   "ceiling_per_redis_jobs_per_s": ceiling,
                   "ceiling_measured": measured}
    for k, v in rates.items():
        res.row(f"{k} worker process(es) x {cfg.concurrency} threads", f"{v:.0f} jobs/s",
                note=f"x{v / base:.2f}; Redis {redis_ms[k]:.2f} ms CPU/job, "
                     f"{100 * busy[k]:.0f}% of a core {_spread(runs[k])}")
    how = ("measured: Redis ran at a full core" if measured else
           f"extrapolated: the {cores}-core machine (workers, emulator, submitter and Redis "
           f"on it) ran out first, with Redis at {100 * busy[top]:.0f}% of a core")
    res.row("fleet ceiling per Redis: 1 core / Redis CPU per job", f"{ceiling:.0f} jobs/s",
            note=f"{how}; at {top} process(es), {redis_ms[top]:.2f} ms/job")
    return res


SCENARIOS: dict[str, Callable[[Harness, Config], Result]] = {
    "1": throughput, "2": latency, "3": concurrency, "4": cold_start, "5": scaling,
}
