"""Fault scenarios on real processes: nothing lost, nothing run twice by our fault.

Each scenario records its counts (submitted, succeeded, failed by reason, lost,
wrong results, duplicate GPU executions) in the table printed at the end.
"""

from __future__ import annotations

import signal
import time

import pytest

from .harness import Cluster

pytestmark = pytest.mark.timeout(420)

FAST = {"latency": {"kind": "fixed", "seconds": 0.02}}


def test_sigkill_worker_with_waiting_and_running_jobs() -> None:
    endpoints = {
        "cold": {"workers": 0, "max_workers": 4, "cold_start": 6.0, "concurrency": 64, **FAST},
        "slow": {"workers": 5, "max_workers": 5, "concurrency": 10,
                 "latency": {"kind": "fixed", "seconds": 6.0}},
    }
    # A short visibility timeout (above the longest execution timeout) so that the
    # running jobs of the dead worker come back within the test.
    env = {"DISPATCHER_MAX_TIMEOUT": "20", "DISPATCHER_VISIBILITY_TIMEOUT": "30"}
    with Cluster(endpoints, env=env).start(concurrency=100) as c:
        slow = c.submit_many("slow", 50, timeout=10, max_wait=120)
        waiting = c.submit_many("cold", 1000, timeout=10, max_wait=120)
        c.wait_until(slow, 20, done={"running"})
        assert c.statuses(slow).count("running") == 50
        killed_at = time.time()
        c.workers[0].kill()
        c.add_worker(concurrency=100)
        jobs = c.wait_until(waiting + slow, 150)
        waiting_done = max(jobs[i].finished_at for i in waiting) - killed_at
        running_back = min(jobs[i].assigned_at for i in slow) - killed_at
        report = c.report("1. SIGKILL worker (1000 waiting, 50 running)", jobs,
                          notes=f"waiting jobs all done {waiting_done:.0f}s after the kill; "
                                f"running jobs re-dispatched {running_back:.0f}s after it "
                                "(lease 25s, visibility timeout 30s)")
        assert report.lost == 0 and report.wrong_results == 0, c.diagnose(report)
        assert report.succeeded == 1050, report
        # Waiting jobs live in Redis: they went on as soon as the cold start ended,
        # long before the visibility timeout (30 s) could have brought them back.
        assert waiting_done < 20
        # The running jobs came back only once their lease ended (not early: a live
        # worker could still have been running them), and ran again.
        assert 15 < running_back < 40


def test_redis_restart_mid_run_loses_nothing() -> None:
    endpoints = {"ep": {"workers": 4, "max_workers": 4, "concurrency": 8,
                        "latency": {"kind": "fixed", "seconds": 0.3}}}
    with Cluster(endpoints, aof=True).start(concurrency=32) as c:
        ids = c.submit_many("ep", 500, max_wait=300, timeout=30)
        time.sleep(2.0)
        c.redis.stop()
        time.sleep(2.0)
        c.redis.start()
        jobs = c.wait_until(ids, 180)
        report = c.report("2. Redis restart (AOF) mid-run", jobs)
        assert report.lost == 0 and report.wrong_results == 0, c.diagnose(report)
        assert report.succeeded == 500, report
        assert all(w.alive() for w in c.workers)


def test_flaky_route_api_all_jobs_succeed() -> None:
    endpoints = {"ep": {"workers": 4, "max_workers": 4, "concurrency": 16, **FAST}}
    faults = {"route_error_rate": 0.2, "route_429_rate": 0.1, "route_reset_rate": 0.05}
    with Cluster(endpoints, emulator=faults).start(concurrency=32) as c:
        ids = c.submit_many("ep", 500, max_wait=120)
        jobs = c.wait_until(ids, 120)
        report = c.report("3. route 20% 5xx, 10% 429, 5% resets", jobs)
        assert report.succeeded == 500 and report.lost == 0, c.diagnose(report)
        assert report.route_calls_per_job < 2.5  # ideal ~1/0.65 = 1.54


def test_failing_and_hanging_workers_end_within_bounds() -> None:
    endpoints = {"ep": {"workers": 4, "max_workers": 4, "concurrency": 8, "failure_rate": 0.3,
                        "hang_workers": 1, **FAST}}
    with Cluster(endpoints).start(concurrency=64) as c:
        ids = c.submit_many("ep", 300, max_wait=60, timeout=3)
        jobs = c.wait_until(ids, 120)
        report = c.report("4. workers fail 30% (500), one hangs", jobs,
                          notes="dup GPU runs here are re-runs after a worker answered 500")
        assert report.lost == 0 and report.wrong_results == 0, c.diagnose(report)
        assert report.succeeded > 150
        assert set(report.failed) <= {"worker_timeout", "worker_failed"}
        for job in jobs.values():
            if job.status != "succeeded":
                assert job.error, job


def test_graceful_shutdown_mid_run_loses_nothing() -> None:
    endpoints = {"ep": {"workers": 4, "max_workers": 4, "concurrency": 8,
                        "latency": {"kind": "fixed", "seconds": 1.0}}}
    with Cluster(endpoints).start(concurrency=32) as c:
        ids = c.submit_many("ep", 200, max_wait=120, timeout=20)
        c.wait_until(ids[:1], 20, done={"running", "succeeded"})
        code = c.workers[0].stop(signal.SIGTERM, timeout=60)
        assert code == 0, c.workers[0].log_text()[-2000:]
        c.add_worker(concurrency=32)
        jobs = c.wait_until(ids, 120)
        report = c.report("5. SIGTERM mid-run", jobs)
        assert report.succeeded == 200 and report.lost == 0, c.diagnose(report)
        assert report.duplicate_gpu == 0
