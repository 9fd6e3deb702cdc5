"""The emulator against the shared Vast facts, over real HTTP: a trustworthy peer."""

from __future__ import annotations

import asyncio
import concurrent.futures
import subprocess
import sys
import time
from collections.abc import Iterator

import aiohttp
import pytest
import requests

from dispatcher.emulator import ConfigError, Emulator, EmulatorConfig

KEY = "emu-test-key"
pytestmark = pytest.mark.timeout(60)


def config(**endpoints: dict) -> EmulatorConfig:
    return EmulatorConfig.from_dict({"api_key": KEY, "seed": 3, "endpoints": endpoints})


def route(vast: Emulator, body: dict | str, key: str = KEY) -> requests.Response:
    kwargs = {"json": body} if isinstance(body, dict) else {"data": body}
    return requests.post(vast.route_url, headers={"Authorization": f"Bearer {key}"},
                         timeout=10, **kwargs)


def call(answer: dict, payload: object, path: str = "/v1/completions",
         auth: dict | None = None, timeout: float = 10) -> requests.Response:
    body = {"auth_data": answer if auth is None else auth, "payload": payload}
    return requests.post(answer["url"] + path, json=body, timeout=timeout)


@pytest.fixture
def vast() -> Iterator[Emulator]:
    cfg = config(llm={"workers": 1, "max_workers": 2, "concurrency": 2,
                      "latency": {"kind": "fixed", "seconds": 0.01}})
    with Emulator(cfg) as emulator:
        yield emulator


def test_assignment_has_every_field_and_the_worker_echoes(vast: Emulator) -> None:
    r = route(vast, {"endpoint": "llm", "cost": 64})
    assert r.status_code == 200
    a = r.json()
    assert set(a) == {"endpoint", "url", "cost", "reqnum", "signature", "request_idx",
                      "__request_id"}
    assert a["url"].startswith("http://127.0.0.1:") and a["cost"] == 64
    w = call(a, {"id": "p1", "prompt": "hi"})
    assert w.status_code == 200
    assert w.json() == {"ok": True, "endpoint": "llm", "path": "/v1/completions",
                        "worker": a["url"], "reqnum": a["reqnum"],
                        "payload": {"id": "p1", "prompt": "hi"}}
    stats = vast.stats()
    assert stats["executions_by_payload"] == {"p1": 1} and stats["route"]["assigned"] == 1


def test_missing_cost_defaults_to_100(vast: Emulator) -> None:
    assert route(vast, {"endpoint": "llm"}).json()["cost"] == 100


def test_route_errors_are_json_with_error(vast: Emulator) -> None:
    r = route(vast, {"endpoint": "llm", "cost": 1}, key="wrong")
    assert r.status_code == 401 and "error" in r.json()
    r = requests.post(vast.route_url, json={"endpoint": "llm", "cost": 1}, timeout=5)
    assert r.status_code == 401
    for body in [{"endpoint": "nope", "cost": 1}, {"cost": 1}, {"endpoint": "llm", "cost": -1},
                 {"endpoint": "llm", "cost": "ten"}, {"endpoint": "llm", "cost": True}]:
        r = route(vast, body)
        assert r.status_code == 400 and isinstance(r.json()["error"], str), body
    r = route(vast, '{"endpoint": "llm", "cost": NaN}')
    assert r.status_code == 400
    assert vast.stats()["route"]["bad_request"] == 6


def test_rate_limit_is_plain_text_without_retry_after() -> None:
    cfg = EmulatorConfig.from_dict({"api_key": KEY, "rate_limit": {"rate": 1, "burst": 3},
                                    "endpoints": {"llm": {"workers": 0, "max_workers": 0}}})
    with Emulator(cfg) as vast:
        codes = [route(vast, {"endpoint": "llm", "cost": 1}) for _ in range(6)]
        assert [r.status_code for r in codes[:3]] == [200, 200, 200]
        limited = codes[-1]
        assert limited.status_code == 429 and limited.text == "API requests too frequent"
        assert "Retry-After" not in limited.headers
        assert "json" not in limited.headers.get("Content-Type", "")


def test_cold_start_answers_no_worker_then_assigns() -> None:
    cfg = config(cold={"workers": 0, "max_workers": 1, "cold_start": 0.6})
    with Emulator(cfg) as vast:
        assert vast.stats()["endpoints"]["cold"]["status"] == "Stopped"
        first = route(vast, {"endpoint": "cold", "cost": 1}).json()
        assert "url" not in first and first["status"].startswith("1 loading")  # demand
        assert first["request_idx"] > 0 and "__request_id" in first
        second = route(vast, {"endpoint": "cold", "cost": 1,
                              "request_idx": first["request_idx"]}).json()
        assert "url" not in second and "1 loading" in second["status"]
        assert second["request_idx"] == first["request_idx"]
        time.sleep(0.8)
        third = route(vast, {"endpoint": "cold", "cost": 1,
                             "request_idx": first["request_idx"]}).json()
        assert "url" in third and third["request_idx"] == first["request_idx"]


def test_scale_to_zero_after_inactivity() -> None:
    cfg = config(ep={"workers": 1, "max_workers": 1, "inactivity_timeout": 0.3,
                     "latency": {"kind": "fixed", "seconds": 0.0}})
    with Emulator(cfg) as vast:
        a = route(vast, {"endpoint": "ep", "cost": 1}).json()
        assert call(a, {"id": "x"}).status_code == 200
        time.sleep(0.6)
        assert vast.stats()["endpoints"]["ep"]["stopped"] == 1
        assert "url" not in route(vast, {"endpoint": "ep", "cost": 1}).json()
        with pytest.raises(requests.ConnectionError):  # a stopped worker refuses
            call(a, {"id": "y"})


def test_worker_checks_auth_data_like_a_real_worker(vast: Emulator) -> None:
    a = route(vast, {"endpoint": "llm", "cost": 1}).json()
    forged = {**a, "signature": "0" * 64}
    assert call(a, {"id": "f"}, auth=forged).status_code == 401
    moved = {**a, "url": "http://127.0.0.1:1"}
    assert call(a, {"id": "m"}, auth=moved).status_code == 401
    partial = {k: v for k, v in a.items() if k != "reqnum"}
    r = call(a, {"id": "p"}, auth=partial)
    assert r.status_code == 422 and "reqnum" in r.text
    bad_json = requests.post(a["url"] + "/x", data="{nope", timeout=5)
    assert bad_json.status_code == 422
    assert call(a, {"id": "ok"}).status_code == 200
    replay = call(a, {"id": "again"})
    assert replay.status_code == 401 and "reqnum" in replay.text
    w = vast.stats()["workers"]
    assert w["rejected_signature"] == 2 and w["malformed"] == 2 and w["rejected_replay"] == 1
    assert vast.stats()["executions_by_payload"] == {"ok": 1}


def test_payload_directives(vast: Emulator) -> None:
    def run(emulate: dict, pid: str, timeout: float = 10) -> requests.Response:
        a = route(vast, {"endpoint": "llm", "cost": 1}).json()
        return call(a, {"id": pid, "emulate": emulate}, timeout=timeout)

    assert run({"status": 410}, "s").status_code == 410
    assert run({"fail_times": 1}, "ft").status_code == 500
    assert run({"fail_times": 1}, "ft").status_code == 200
    text = run({"text": "hello"}, "t")
    assert text.text == "hello" and text.headers["Content-Type"].startswith("text/plain")
    assert len(run({"size": 200_000}, "big").content) > 200_000
    t0 = time.monotonic()
    assert run({"sleep": 0.3}, "sl").status_code == 200 and time.monotonic() - t0 >= 0.3
    with pytest.raises(requests.ReadTimeout):
        run({"hang": True}, "h", timeout=0.5)
    stats = vast.stats()
    assert stats["executions_by_payload"]["ft"] == 2 and stats["duplicate_executions"] == 1
    assert stats["workers"]["hung"] == 1


def test_fifo_worker_runs_one_at_a_time_parallel_worker_does_not() -> None:
    lat = {"kind": "fixed", "seconds": 0.3}
    cfg = config(fifo={"workers": 1, "concurrency": 1, "queue_depth": 4, "latency": lat},
                 par={"workers": 1, "concurrency": 4, "latency": lat})
    with Emulator(cfg) as vast:
        for name, floor in [("fifo", 1.2), ("par", 0.3)]:
            answers = [route(vast, {"endpoint": name, "cost": 1}).json() for _ in range(4)]
            t0 = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                codes = list(pool.map(lambda a: call(a, {"n": a["reqnum"]}).status_code,
                                      answers))
            took = time.monotonic() - t0
            assert codes == [200] * 4
            assert floor <= took < floor + 0.25, (name, took)


def test_all_busy_then_admission_control() -> None:
    cfg = config(ep={"workers": 1, "concurrency": 1, "queue_depth": 3, "max_queue_time": 0.5,
                     "latency": {"kind": "fixed", "seconds": 0.4}})
    with Emulator(cfg) as vast:
        answers = [route(vast, {"endpoint": "ep", "cost": 1}).json() for _ in range(4)]
        assert ["url" in a for a in answers] == [True, True, True, False]  # all busy
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(call, a, {"n": i}) for i, a in enumerate(answers[:3])]
            codes = sorted(f.result().status_code for f in futures)
        assert 429 in codes and 200 in codes
        assert vast.stats()["workers"]["admission_rejected"] >= 1


def test_injected_route_faults() -> None:
    cfg = EmulatorConfig.from_dict({"api_key": KEY, "seed": 5, "route_error_rate": 0.3,
                                    "route_reset_rate": 0.2,
                                    "endpoints": {"ep": {"workers": 0, "max_workers": 0}}})
    with Emulator(cfg) as vast:
        outcomes = {"5xx": 0, "reset": 0, "ok": 0}
        for _ in range(60):
            try:
                r = route(vast, {"endpoint": "ep", "cost": 1})
            except requests.ConnectionError:
                outcomes["reset"] += 1
                continue
            outcomes["5xx" if r.status_code >= 500 else "ok"] += 1
        assert all(outcomes.values()), outcomes
        stats = vast.stats()["route"]
        assert stats["reset"] == outcomes["reset"] and stats["server_error"] == outcomes["5xx"]


def test_config_patch_and_actions_while_running(vast: Emulator) -> None:
    vast.configure({"endpoints": {"new": {"workers": 1, "latency": {"kind": "fixed",
                                                                      "seconds": 0}}}})
    assert "url" in route(vast, {"endpoint": "new", "cost": 1}).json()
    vast.configure({"action": "stop_all", "endpoint": "new"})
    assert vast.stats()["endpoints"]["new"]["status"] == "Stopped"
    vast.configure({"action": "cold_start", "endpoint": "new", "seconds": 0.2})
    vast.configure({"action": "start", "endpoint": "new", "count": 1})
    assert "1 loading" in route(vast, {"endpoint": "new", "cost": 1}).json()["status"]
    time.sleep(0.4)
    assert "url" in route(vast, {"endpoint": "new", "cost": 1}).json()
    vast.configure({"api_key": "rotated"})
    assert route(vast, {"endpoint": "new", "cost": 1}).status_code == 401
    assert route(vast, {"endpoint": "new", "cost": 1}, key="rotated").status_code == 200
    r = requests.post(vast.url + "/_emulator/config", json={"action": "explode"}, timeout=5)
    assert r.status_code == 400 and "action" in r.json()["error"]
    vast.configure({"action": "reset_stats"})
    assert vast.stats()["route"]["calls"] == 0


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="failure_rate"):
        EmulatorConfig.from_dict({"endpoints": {"e": {"failure_rate": 2}}})
    with pytest.raises(ConfigError, match="latency.kind"):
        EmulatorConfig.from_dict({"endpoints": {"e": {"latency": {"kind": "gauss"}}}})
    with pytest.raises(ConfigError, match="unknown"):
        EmulatorConfig.from_dict({"endpoints": {"e": {"wrokers": 1}}})


def test_holds_2000_open_slow_requests() -> None:
    cfg = config(big={"workers": 1, "concurrency": 2000, "queue_depth": 1,
                      "latency": {"kind": "fixed", "seconds": 2.0}})
    with Emulator(cfg) as vast:
        answers = [route(vast, {"endpoint": "big", "cost": 1}).json() for _ in range(2000)]
        assert all("url" in a for a in answers)

        async def all_at_once() -> list[int]:
            connector = aiohttp.TCPConnector(limit=0, force_close=True)
            async with aiohttp.ClientSession(connector=connector) as s:
                async def one(a: dict) -> int:
                    body = {"auth_data": a, "payload": {"n": a["reqnum"]}}
                    async with s.post(a["url"] + "/x", json=body, timeout=30) as r:
                        return r.status

                return await asyncio.gather(*(one(a) for a in answers))

        codes = asyncio.run(all_at_once())
        assert codes.count(200) == 2000
        assert vast.stats()["workers"]["peak_in_flight"] >= 1500


def test_cli_process_prints_its_url_answers_and_exits_on_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "dispatcher", "emulator", "--port", "0",
                             "--api-key", KEY], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = line[line.index("http"):].split()[0]
        assert url.endswith("/route/")
        r = requests.post(url, json={"endpoint": "demo", "cost": 1},
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
        assert r.status_code == 200 and r.json()["endpoint"] == "demo"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
