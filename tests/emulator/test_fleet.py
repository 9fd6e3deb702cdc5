"""Workers coming and going: cold starts, scale to zero, capacity, ports (sections 1, 4)."""

from __future__ import annotations

import concurrent.futures
import time

import pytest
import requests

from dispatcher.emulator import Emulator
from tests.poll import until

from .conftest import FAST, assign, call, make_config, route

pytestmark = pytest.mark.timeout(60)

SLACK = 2.0  # what a loaded 2-core machine may add to a wall-clock bound, seconds


def test_cold_start_answers_no_worker_then_assigns() -> None:
    cfg = make_config(endpoints={"cold": {"workers": 0, "max_workers": 1, "cold_start": 0.5,
                                          "latency": FAST}})
    with Emulator(cfg) as vast:
        assert vast.stats()["endpoints"]["cold"] == {
            "ready": 0, "loading": 0, "stopped": 1, "status": "Stopped", "pending": 0,
            "outstanding": 0, "queued": 0, "running": 0, "scripted_left": 0}
        t0 = time.monotonic()
        first = route(vast, {"endpoint": "cold", "cost": 1}).json()
        assert "url" not in first and first["status"] == "1 loading, 0 idle, 0 busy"
        idx = first["request_idx"]
        while "url" not in (answer := route(vast, {"endpoint": "cold", "request_idx": idx})
                            .json()):
            assert answer["request_idx"] == idx and "1 loading" in answer["status"]
            time.sleep(0.05)
        # Not before the cold start; after it within what a loaded machine adds.
        assert 0.45 <= time.monotonic() - t0 < 0.5 + SLACK
        assert answer["request_idx"] == idx
        assert call(answer, {"id": "c"}).status_code == 200
        ep = vast.stats()["endpoints"]["cold"]
        assert (ep["ready"], ep["pending"]) == (1, 0)


def test_demand_cold_starts_roughly_enough_workers() -> None:
    cfg = make_config(endpoints={"e": {"workers": 0, "max_workers": 5, "concurrency": 2,
                                       "cold_start": 30}})
    with Emulator(cfg) as vast:
        for _ in range(3):  # 3 jobs, 2 per worker: 2 workers
            route(vast, {"endpoint": "e"})
        assert vast.stats()["endpoints"]["e"]["loading"] == 2
        for _ in range(20):  # more demand than workers: all of them, no more
            route(vast, {"endpoint": "e"})
        ep = vast.stats()["endpoints"]["e"]
        assert (ep["loading"], ep["pending"]) == (5, 23)


def test_scale_to_zero_after_inactivity_then_refuse_connections() -> None:
    cfg = make_config(endpoints={"ep": {"workers": 1, "max_workers": 1, "cold_start": 0.2,
                                        "inactivity_timeout": 1.5, "latency": FAST}})
    with Emulator(cfg) as vast:
        a = assign(vast, "ep")
        idle_from = time.monotonic()  # before the call: its idle time starts after this
        assert call(a, {"id": "x"}).status_code == 200
        ep = vast.stats()["endpoints"]["ep"]
        if time.monotonic() - idle_from < 1.0:  # read well inside the timeout
            assert ep["ready"] == 1  # not idle long enough yet
        ep = until(lambda: vast.stats()["endpoints"]["ep"], lambda e: e["stopped"] == 1)
        assert time.monotonic() - idle_from >= 1.4  # not before its inactivity timeout
        assert (ep["stopped"], ep["status"]) == (1, "Stopped")
        with pytest.raises(requests.ConnectionError):  # a stopped instance refuses
            call(a, {"id": "y"})
        # The next demand brings it back, on the same port.
        assert "url" not in route(vast, {"endpoint": "ep"}).json()
        until(lambda: vast.stats()["endpoints"]["ep"], lambda e: e["ready"] == 1)
        b = assign(vast, "ep")
        assert b["url"] == a["url"] and call(b, {"id": "z"}).status_code == 200


def test_worker_ports_are_reserved_at_start_and_refuse_while_stopped() -> None:
    cfg = make_config(endpoints={"e": {"workers": 1, "max_workers": 3, "latency": FAST}})
    with Emulator(cfg) as vast:
        urls = vast.worker_urls("e")
        assert len(urls) == len(set(urls)) == 3
        assert requests.post(urls[0] + "/x", data="{}", timeout=5).status_code == 422
        for url in urls[1:]:
            with pytest.raises(requests.ConnectionError):
                requests.post(url + "/x", data="{}", timeout=5)


def test_stopping_a_worker_resets_requests_in_flight() -> None:
    cfg = make_config(endpoints={"e": {"workers": 1, "concurrency": 2, "latency": FAST}})
    with Emulator(cfg) as vast:
        a = assign(vast, "e")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            fut = pool.submit(call, a, {"id": "slow", "emulate": {"sleep": 5}})
            until(vast.stats, lambda s: s["in_flight"] == 1)  # it arrived and runs
            vast.configure({"action": "stop_all", "endpoint": "e"})
            with pytest.raises(requests.ConnectionError):
                fut.result(timeout=5)
        w = until(lambda: vast.stats()["workers"], lambda w: w["in_flight"] == 0)
        assert (w["executions"], w["cancelled"], w["succeeded"], w["in_flight"]) == (1, 1, 0, 0)


def test_all_busy_is_no_worker_and_an_unused_assignment_expires() -> None:
    cfg = make_config(endpoints={"e": {"workers": 1, "assignment_ttl": 0.3, "latency": FAST}})
    with Emulator(cfg) as vast:
        assign(vast, "e")  # never used
        busy = route(vast, {"endpoint": "e"}).json()
        assert "url" not in busy and busy["status"] == "0 loading, 0 idle, 1 busy"
        until(lambda: vast.stats()["endpoints"]["e"], lambda e: e["outstanding"] == 0)
        assert call(assign(vast, "e"), {"id": "after"}).status_code == 200


def test_late_arrival_after_ttl_still_runs() -> None:
    cfg = make_config(endpoints={"e": {"workers": 1, "assignment_ttl": 0.1, "latency": FAST}})
    with Emulator(cfg) as vast:
        a = assign(vast, "e")
        time.sleep(0.25)
        assert call(a, {"id": "late"}).status_code == 200  # the signature is still good


def test_queue_depth_lets_a_worker_take_more_assignments_than_slots() -> None:
    cfg = make_config(endpoints={"e": {"workers": 1, "concurrency": 2, "queue_depth": 3,
                                       "latency": FAST}})
    with Emulator(cfg) as vast:
        answers = [route(vast, {"endpoint": "e"}).json() for _ in range(7)]
        assert sum("url" in a for a in answers) == 6
