"""Streaming (issue 13), numbered after the web scenarios:

9. time to first piece, one streaming job at a time: the first piece in the reader's hands
   (``dispatcher.stream``) minus submit time, minus what the emulator itself took for it
   (its route calls, and the worker's delay before its first piece); then pieces/s
   through one worker process (many jobs streaming at once, no delay between pieces);
   then 1,000 jobs streaming at once from one worker process: its RSS.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from bench.harness import Harness, RssSampler, pct, rss_bytes
from bench.report import Result
from bench.scenarios import MB, Config, _endpoint, _queue, _route_seconds
from dispatcher.client import Client
from dispatcher.config import Settings


def _stream(pieces: int, interval: float, fmt: str = "sse") -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "prompt": "stream",
            "emulate": {"stream": {"pieces": pieces, "interval": interval, "format": fmt}}}


def streaming(h: Harness, cfg: Config) -> Result:
    res = Result("streaming", "9. streaming")
    first_delay = 0.01  # the worker's latency before its first piece
    ep = "stream"
    endpoint = _endpoint(workers=4, max_workers=4, concurrency=300,
                         latency={"kind": "fixed", "seconds": first_delay})
    with h.emulator({ep: endpoint}) as emu:
        # a) time to first piece, one job at a time
        env = h.worker_env(emu, _queue(), cfg.concurrency)
        added: list[float] = []
        with h.workers(env, 1, cfg.concurrency):
            client = Client(Settings.from_env(env))
            try:
                for _ in range(5):  # warm-up
                    list(client.stream(client.submit(ep, _stream(3, 0.001), path="/gen",
                                                     stream=True), timeout=60))
                for _ in range(cfg.latency_jobs):
                    before = emu.stats()
                    t0 = time.time()
                    job_id = client.submit(ep, _stream(5, 0.02), path="/gen", stream=True)
                    pieces = client.stream(job_id, timeout=60)
                    next(pieces)
                    t_first = time.time()
                    for _ in pieces:
                        pass
                    route_s = _route_seconds(emu.stats()) - _route_seconds(before)
                    added.append(t_first - t0 - route_s - first_delay)
                # b) pieces per second through one worker process
                jobs, per_job = 64, 200
                t0 = time.time()
                ids = [client.submit(ep, _stream(per_job, 0.0, "ndjson"), path="/gen",
                                     stream=True) for _ in range(jobs)]
                counts: list[int] = []

                def read(job_id: str) -> None:
                    counts.append(sum(1 for _ in client.stream(job_id, timeout=120)))

                readers = [threading.Thread(target=read, args=(i,)) for i in ids]
                for t in readers:
                    t.start()
                for t in readers:
                    t.join(180)
                pieces_s = sum(counts) / (time.time() - t0)
            finally:
                client.close()
        # c) 1,000 jobs streaming at once from one worker process
        n, secs, every = cfg.concurrency_jobs, cfg.job_seconds, 0.5
        env = h.worker_env(emu, _queue(), n)
        with h.workers(env, 1, n) as workers:
            client = Client(Settings.from_env(env))
            pid = workers[0].pid
            ready = rss_bytes(pid)
            try:
                with RssSampler([pid]) as rss:
                    ids = [client.submit(ep, _stream(int(secs / every), every), path="/gen",
                                         stream=True, timeout=secs + 120, max_wait=600)
                           for _ in range(n)]
                    ended = [client.wait(i, timeout=secs * 3 + 120) for i in ids]
                peak_streams = emu.stats().get("peak_in_flight", 0)
            finally:
                client.close()
    ok = sum(1 for j in ended if j.status == "succeeded")
    ms = {k: 1000 * pct(added, q) for k, q in (("p50", .5), ("p95", .95))}
    res.metrics = {"added_first_piece_ms": ms, "pieces_per_s": pieces_s,
                   "concurrent_jobs": n, "rss_ready_mb": ready / MB, "rss_peak_mb": rss.peak / MB,
                   "peak_in_flight": peak_streams, "succeeded": ok}
    res.row("added time to first piece p50 / p95", f"{ms['p50']:.1f} / {ms['p95']:.1f} ms",
            "p50 <= 5 ms", ms["p50"] <= 5.0,
            f"{cfg.latency_jobs} jobs one at a time; reader's first piece - submit - "
            f"emulator route time - worker's {first_delay * 1000:g} ms before its first piece")
    res.row("pieces per second, one worker process", f"{pieces_s:.0f}",
            note=f"{jobs} jobs x {per_job} ndjson pieces at once, no delay between pieces")
    res.row(f"{n} streaming jobs at once: worker RSS ready -> peak",
            f"{ready / MB:.0f} -> {rss.peak / MB:.0f} MB", "<= 300 MB", rss.peak <= 300 * MB,
            f"{secs:g} s of pieces each ({every:g} s apart), 1 worker process, {n} threads; "
            f"{ok}/{n} succeeded, peak {peak_streams} at the emulator")
    return res


SCENARIOS = {"9": streaming}
