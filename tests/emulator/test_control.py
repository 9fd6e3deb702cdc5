"""Config, the control API and the stats: what tests and benchmarks rely on."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path

import pytest
import requests

from dispatcher.emulator import ConfigError, Emulator, EmulatorConfig, EndpointConfig
from tests.poll import until

from .conftest import FAST, KEY, assign, call, make_config, route

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("d, field", [
    ({"endpoints": {"e": {"failure_rate": 2}}}, "endpoints.e.failure_rate"),
    ({"endpoints": {"e": {"workers": -1}}}, "endpoints.e.workers"),
    ({"endpoints": {"e": {"workers": 1.5}}}, "endpoints.e.workers"),
    ({"endpoints": {"e": {"concurrency": 0}}}, "endpoints.e.concurrency"),
    ({"endpoints": {"e": {"workers": 3, "max_workers": 2}}}, "endpoints.e.max_workers"),
    ({"endpoints": {"e": {"cold_start": "5"}}}, "endpoints.e.cold_start"),
    ({"endpoints": {"e": {"inactivity_timeout": -1}}}, "endpoints.e.inactivity_timeout"),
    ({"endpoints": {"e": {"latency": {"kind": "gauss"}}}}, "endpoints.e.latency.kind"),
    ({"endpoints": {"e": {"latency": {"kind": "fixed"}}}}, "endpoints.e.latency.seconds"),
    ({"endpoints": {"e": {"latency": {"kind": "uniform", "low": 2, "high": 1}}}},
     "endpoints.e.latency.high"),
    ({"endpoints": {"e": {"wrokers": 1}}}, "endpoints.e: unknown field(s) ['wrokers']"),
    ({"endpoints": {"e": 3}}, "endpoints.e: must be an object"),
    ({"route_429_rate": -0.1}, "route_429_rate"),
    ({"route_latency": float("nan")}, "route_latency"),
    ({"rate_limit": {"rate": 1}}, "rate_limit"),
    ({"rate_limit": {"rate": 0, "burst": 1}}, "rate_limit.rate"),
    ({"api_key": ""}, "api_key"),
    ({"seed": "x"}, "seed"),
    ({"endpiont": {}}, "unknown field(s) ['endpiont']"),
])
def test_config_errors_name_the_field(d: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        EmulatorConfig.from_dict(d)
    assert field in str(err.value)


def test_defaults_and_from_file(tmp_path: Path) -> None:
    cfg = EmulatorConfig()
    assert (cfg.api_key, cfg.rate_limit, cfg.route_latency, cfg.endpoints) == (
        "emulator-key", None, 0.0, {})
    ep = EndpointConfig()
    assert (ep.workers, ep.worker_limit, ep.concurrency, ep.queue_depth, ep.max_queue_time,
            ep.assignment_ttl, ep.inactivity_timeout) == (1, 1, 1, 1, 30.0, 30.0, None)
    assert EndpointConfig(workers=0).worker_limit == 1
    assert EndpointConfig(workers=3).worker_limit == 3
    as_dict = {"api_key": "k", "endpoints": {"e": {"workers": 2, "concurrency": 4}}}
    (tmp_path / "c.json").write_text(json.dumps(as_dict))
    (tmp_path / "c.yaml").write_text("api_key: k\nendpoints:\n  e: {workers: 2, concurrency: 4}\n")
    for name in ("c.json", "c.yaml"):
        loaded = EmulatorConfig.from_file(tmp_path / name)
        assert loaded == EmulatorConfig.from_dict(as_dict)
        assert loaded.endpoints["e"].concurrency == 4
    assert EmulatorConfig.from_dict(loaded.to_dict()) == loaded


def test_emulator_accepts_a_plain_dict() -> None:
    with Emulator({"api_key": KEY, "endpoints": {"e": {"latency": FAST}}}) as vast:
        assert vast.api_key == KEY and "url" in route(vast, {"endpoint": "e"}).json()


def test_config_patch_and_actions_while_running(vast: Emulator) -> None:
    vast.configure({"endpoints": {"new": {"workers": 1, "max_workers": 2,
                                          "latency": {"kind": "fixed", "seconds": 0}}}})
    assert call(assign(vast, "new"), {"id": "n"}).status_code == 200
    vast.configure({"action": "stop_all", "endpoint": "new"})
    assert vast.stats()["endpoints"]["new"]["status"] == "Stopped"
    vast.configure({"action": "cold_start", "endpoint": "new", "seconds": 0.2})
    assert vast.config.endpoints["new"].cold_start == 0.2
    assert route(vast, {"endpoint": "new"}).json()["status"].startswith("1 loading")
    until(vast.stats, lambda s: s["endpoints"]["new"]["ready"] >= 1)  # after its 0.2 s
    assign(vast, "new")
    # A cold start far longer than the test, so the started one is still loading when read.
    vast.configure({"endpoints": {"new": {"cold_start": 60}}})
    vast.configure({"action": "start", "endpoint": "new", "count": 5})  # only 1 is stopped
    assert vast.stats()["endpoints"]["new"]["loading"] == 1
    vast.configure({"endpoints": {"new": {"workers": 2}}})  # raises ready workers now
    assert vast.stats()["endpoints"]["new"]["ready"] == 2
    vast.configure({"endpoints": {"new": {"max_workers": 3, "concurrency": 3}}})
    assert len(vast.worker_urls("new")) == 3
    vast.configure({"api_key": "rotated"})
    assert route(vast, {"endpoint": "new"}).status_code == 401
    assert route(vast, {"endpoint": "new"}, key="rotated").status_code == 200
    assert vast.api_key == "rotated"


def test_shrinking_max_workers_stops_and_releases_the_extra_ones() -> None:
    with Emulator(make_config(endpoints={"e": {"workers": 3, "latency": FAST}})) as vast:
        urls = vast.worker_urls("e")
        vast.configure({"endpoints": {"e": {"workers": 1, "max_workers": 1}}})
        assert vast.worker_urls("e") == urls[:1]
        with pytest.raises(requests.ConnectionError):
            requests.post(urls[2] + "/x", data="{}", timeout=5)


def test_raising_concurrency_lets_queued_requests_run() -> None:
    cfg = make_config(endpoints={"e": {"workers": 1, "concurrency": 1, "queue_depth": 2,
                                       "hang_workers": 1}})
    with Emulator(cfg) as vast:
        answers = [assign(vast, "e"), assign(vast, "e")]
        vast.configure({"endpoints": {"e": {"hang_workers": 0}}})  # no more hangs
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(call, answers[0], {"id": "a", "emulate": {"hang": True}})
            until(vast.stats, lambda s: s["endpoints"]["e"]["running"] == 1)  # it arrived
            second = pool.submit(call, answers[1], {"id": "b"})
            until(vast.stats, lambda s: s["endpoints"]["e"]["queued"] == 1)  # it arrived too
            assert not second.done()  # FIFO, behind the hung one
            vast.configure({"endpoints": {"e": {"concurrency": 2}}})
            assert second.result(timeout=5).status_code == 200
            vast.configure({"action": "stop_all", "endpoint": "e"})
            with pytest.raises(requests.ConnectionError):
                first.result(timeout=5)


def test_bad_patches_change_nothing_and_answer_400(vast: Emulator) -> None:
    before = vast.config
    with pytest.raises(ConfigError, match="endpoints.llm.concurrency"):
        vast.configure({"route_error_rate": 0.5, "endpoints": {"llm": {"concurrency": 0}}})
    assert vast.config == before
    for patch, word in [({"action": "explode"}, "action"),
                        ({"action": "stop_all", "endpoint": "nope"}, "endpoint"),
                        ({"action": "start", "endpoint": "llm", "count": -1}, "count"),
                        ({"action": "cold_start", "endpoint": "llm", "seconds": "x"},
                         "cold_start"),
                        ({"route_error_rate": 3}, "route_error_rate"),
                        ({"nope": 1}, "nope")]:
        r = requests.post(vast.url + "/_emulator/config", json=patch, timeout=5)
        assert r.status_code == 400 and word in r.json()["error"], (patch, r.text)
    r = requests.post(vast.url + "/_emulator/config", data="{bad", timeout=5)
    assert r.status_code == 400 and "error" in r.json()


def test_http_control_endpoints(vast: Emulator) -> None:
    health = requests.get(vast.url + "/_emulator/health", timeout=5).json()
    assert health["ok"] is True
    cfg = requests.get(vast.url + "/_emulator/config", timeout=5).json()
    assert cfg["endpoints"]["llm"]["concurrency"] == 2 and cfg["api_key"] != KEY
    r = requests.post(vast.url + "/_emulator/config", timeout=5,
                      json={"endpoints": {"llm": {"failure_rate": 1.0}}})
    assert r.status_code == 200 and r.json() == {"ok": True}
    assert call(assign(vast, "llm"), {"id": "f"}).status_code == 500
    stats = requests.get(vast.url + "/_emulator/stats", timeout=5).json()
    assert stats["workers"]["failed"] == 1


def test_stats_shape_and_counters(vast: Emulator) -> None:
    a = assign(vast, "llm")
    call(a, {"id": "twice"})
    call(assign(vast, "llm"), {"id": "twice"})
    call(assign(vast, "llm"), {"id": "thrice"})
    call(assign(vast, "llm"), {"id": "thrice"})
    call(assign(vast, "llm"), {"id": "thrice"})
    call(a, {"id": "replayed"})
    route(vast, {"endpoint": "nope"})
    s = vast.stats()
    assert s["route"] == {"calls": 6, "assigned": 5, "no_worker": 0, "bad_request": 1,
                          "unauthorized": 0, "rate_limited": 0, "server_error": 0, "reset": 0,
                          "scripted": 0}
    assert s["assignments"] == 5
    assert s["workers"] == {"executions": 5, "succeeded": 5, "failed": 0, "hung": 0,
                            "cancelled": 0, "cancelled_by_client": 0,
                            "cancelled_while_queued": 0, "rejected_signature": 0,
                            "rejected_replay": 1, "rejected_tampered": 0, "malformed": 0,
                            "admission_rejected": 0, "warmup_rejected": 0, "streams": 0,
                            "streams_completed": 0, "streams_dropped": 0, "stream_pieces": 0,
                            "dripped": 0, "body_dripped": 0, "nested_answers": 0,
                            "huge_answers": 0, "cut_answers": 0,
                            "in_flight": 0, "peak_in_flight": 1}
    assert s["rejected_replay"] == 1 and s["executions"] == 5  # also at the top level
    assert s["executions_by_payload"] == {"twice": 2, "thrice": 3}
    assert s["duplicate_executions"] == 3
    assert set(s["worker_seconds_by_payload"]) == {"twice", "thrice"}
    assert s["cancelled_by_payload"] == {} and s["stream_pieces_by_payload"] == {}
    assert s["route_seconds_total"] > 0
    assert s["endpoints"]["llm"] == {"ready": 2, "loading": 0, "stopped": 0,
                                     "status": "0 loading, 2 idle, 0 busy", "pending": 0,
                                     "outstanding": 0, "queued": 0, "running": 0,
                                     "scripted_left": 0}
    vast.configure({"action": "reset_stats"})
    s = vast.stats()
    assert s["route"]["calls"] == 0 and s["executions_by_payload"] == {}
    assert s["duplicate_executions"] == 0


def test_same_seed_same_faults() -> None:
    def outcomes() -> list[int]:
        cfg = make_config(seed=9, route_error_rate=0.5,
                          endpoints={"e": {"workers": 0, "max_workers": 0}})
        with Emulator(cfg) as vast:
            return [route(vast, {"endpoint": "e"}).status_code for _ in range(20)]

    first = outcomes()
    assert first == outcomes() and len(set(first)) > 1
