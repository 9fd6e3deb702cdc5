"""``POST /route/`` against the shared Vast facts (section 1)."""

from __future__ import annotations

import math
import time

import pytest
import requests

from dispatcher.emulator import Emulator
from tests.poll import until

from .conftest import FAST, KEY, assign, make_config, route

pytestmark = pytest.mark.timeout(60)


def test_assignment_has_exactly_vasts_fields(vast: Emulator) -> None:
    r = route(vast, {"endpoint": "llm", "cost": 64})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    a = r.json()
    assert set(a) == {"endpoint", "url", "cost", "reqnum", "signature", "request_idx",
                      "__request_id"}
    assert a["endpoint"] == "llm" and a["cost"] == 64
    assert a["url"] in vast.worker_urls("llm") and a["url"].startswith("http://127.0.0.1:")
    assert isinstance(a["reqnum"], int) and isinstance(a["request_idx"], int)
    assert a["request_idx"] > 0 and isinstance(a["signature"], str) and a["__request_id"]


def test_missing_cost_is_100_and_route_without_slash_works(vast: Emulator) -> None:
    assert route(vast, {"endpoint": "llm"}).json()["cost"] == 100
    r = requests.post(vast.url + "/route", json={"endpoint": "llm", "cost": 0},
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    assert r.status_code == 200 and r.json()["cost"] == 0


def test_reqnums_are_unique_and_increasing_per_endpoint() -> None:
    cfg = make_config(endpoints={"a": {"workers": 1, "concurrency": 50, "latency": FAST},
                                 "b": {"workers": 1, "concurrency": 50, "latency": FAST}})
    with Emulator(cfg) as vast:
        nums = [assign(vast, "a")["reqnum"] for _ in range(10)]
        assert nums == sorted(nums) and len(set(nums)) == 10
        assert assign(vast, "b")["reqnum"] < nums[-1]  # b counts on its own
        assert vast.stats()["assignments"] == 11


def test_no_worker_answer_shape_and_status() -> None:
    cfg = make_config(endpoints={"off": {"workers": 0, "max_workers": 0}})
    with Emulator(cfg) as vast:
        r = route(vast, {"endpoint": "off", "cost": 5})
        assert r.status_code == 200
        body = r.json()
        assert set(body) == {"endpoint", "status", "request_idx", "__request_id"}
        assert body["endpoint"] == "off" and body["status"] == "Stopped"
        assert vast.stats()["route"]["no_worker"] == 1


def test_request_idx_is_kept_per_job_and_new_otherwise() -> None:
    cfg = make_config(endpoints={"off": {"workers": 0, "max_workers": 0}})
    with Emulator(cfg) as vast:
        first = route(vast, {"endpoint": "off", "cost": 1}).json()["request_idx"]
        again = route(vast, {"endpoint": "off", "cost": 1, "request_idx": first}).json()
        assert again["request_idx"] == first
        other = route(vast, {"endpoint": "off", "cost": 1, "request_idx": 0}).json()
        assert other["request_idx"] not in (0, first)
        assert vast.stats()["endpoints"]["off"]["pending"] == 2  # one entry per job
        # A number a client already holds is never handed out to another job.
        held = route(vast, {"endpoint": "off", "request_idx": 500}).json()["request_idx"]
        assert held == 500 and route(vast, {"endpoint": "off"}).json()["request_idx"] > 500


def test_pending_demand_expires_after_replay_timeout() -> None:
    cfg = make_config(endpoints={"off": {"workers": 0, "max_workers": 0}})
    with Emulator(cfg) as vast:
        route(vast, {"endpoint": "off", "cost": 1, "replay_timeout": 0.2})
        route(vast, {"endpoint": "off", "cost": 1})  # the default 60 s
        assert vast.stats()["endpoints"]["off"]["pending"] == 2
        until(vast.stats, lambda s: s["endpoints"]["off"]["pending"] == 1)  # swept every 0.25 s
        time.sleep(0.5)  # two sweeps more: the one with 60 s stays
        assert vast.stats()["endpoints"]["off"]["pending"] == 1


@pytest.mark.parametrize("body", [
    {"endpoint": "nope", "cost": 1}, {"cost": 1}, {"endpoint": "", "cost": 1},
    {"endpoint": 7, "cost": 1}, {"endpoint": "llm", "cost": -1},
    {"endpoint": "llm", "cost": "ten"}, {"endpoint": "llm", "cost": True},
    {"endpoint": "llm", "cost": None}, '{"endpoint": "llm", "cost": NaN}',
    '{"endpoint": "llm", "cost": Infinity}', "not json", "[1, 2]",
])
def test_bad_requests_are_400_json_with_error(vast: Emulator, body: dict | str) -> None:
    r = route(vast, body)
    assert r.status_code == 400
    assert isinstance(r.json()["error"], str) and r.json()["error"]
    assert vast.stats()["route"]["bad_request"] == 1


@pytest.mark.parametrize("key", [None, "wrong", ""])
def test_bad_key_is_401_json_with_error(vast: Emulator, key: str | None) -> None:
    r = route(vast, {"endpoint": "llm", "cost": 1}, key=key)
    assert r.status_code == 401 and isinstance(r.json()["error"], str)
    r = requests.post(vast.route_url, json={"endpoint": "llm"}, timeout=5,
                      headers={"Authorization": f"Basic {KEY}"})
    assert r.status_code == 401
    assert vast.stats()["route"]["unauthorized"] == 2


def test_rate_limit_is_a_token_bucket_per_endpoint_and_key() -> None:
    # One token per 2 s: the five calls below take far less on any machine.
    cfg = make_config(rate_limit={"rate": 0.5, "burst": 3},
                      endpoints={"a": {"workers": 0, "max_workers": 0},
                                 "b": {"workers": 0, "max_workers": 0}})
    with Emulator(cfg) as vast:
        codes = [route(vast, {"endpoint": "a", "cost": 1}).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        assert route(vast, {"endpoint": "b", "cost": 1}).status_code == 200  # its own bucket
        limited = route(vast, {"endpoint": "a", "cost": 1})
        assert limited.status_code == 429 and limited.text == "API requests too frequent"
        assert "Retry-After" not in limited.headers
        assert limited.headers["Content-Type"].startswith("text/plain")
        time.sleep(2.1)  # one token back
        assert route(vast, {"endpoint": "a", "cost": 1}).status_code == 200
        assert vast.stats()["route"]["rate_limited"] == 3


def test_injected_5xx_429_and_resets() -> None:
    cfg = make_config(seed=5, route_error_rate=0.25, route_429_rate=0.25, route_reset_rate=0.2,
                      endpoints={"ep": {"workers": 0, "max_workers": 0}})
    with Emulator(cfg) as vast:
        seen = {"5xx": 0, "429": 0, "reset": 0, "200": 0}
        for _ in range(120):
            try:
                r = route(vast, {"endpoint": "ep", "cost": 1})
            except requests.ConnectionError:
                seen["reset"] += 1
                continue
            if r.status_code >= 500:
                seen["5xx"] += 1
            elif r.status_code == 429:
                assert r.text == "API requests too frequent" and "Retry-After" not in r.headers
                seen["429"] += 1
            else:
                assert r.status_code == 200
                seen["200"] += 1
        assert all(seen.values()), seen
        stats = vast.stats()["route"]
        assert stats["reset"] == seen["reset"] and stats["server_error"] == seen["5xx"]
        assert stats["rate_limited"] == seen["429"] and stats["calls"] == 120


def test_route_latency_is_added_and_timed() -> None:
    cfg = make_config(route_latency=0.2, endpoints={"ep": {"workers": 1, "latency": FAST}})
    with Emulator(cfg) as vast:
        t0 = time.monotonic()
        assign(vast, "ep")
        assert time.monotonic() - t0 >= 0.2
        assert 0.2 <= vast.stats()["route_seconds_total"] < 1.0


def test_faults_can_be_switched_off_while_running(vast: Emulator) -> None:
    vast.configure({"route_error_rate": 1.0})
    assert route(vast, {"endpoint": "llm"}).status_code in (500, 502, 503)
    vast.configure({"route_error_rate": 0.0, "route_reset_rate": 1.0})
    with pytest.raises(requests.ConnectionError):
        route(vast, {"endpoint": "llm"})
    vast.configure({"route_reset_rate": 0.0})
    assert math.isclose(route(vast, {"endpoint": "llm"}).json()["cost"], 100)
