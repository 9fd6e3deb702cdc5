"""The workers against the shared Vast facts (section 2 and 4): auth, answers, queueing."""

from __future__ import annotations

import concurrent.futures
import time

import pytest
import requests

from dispatcher.emulator import Emulator
from tests.poll import until

from .conftest import FAST, assign, call, make_config

pytestmark = pytest.mark.timeout(60)


def test_success_echoes_the_right_result_for_the_right_job(vast: Emulator) -> None:
    a = assign(vast, "llm")
    r = call(a, {"id": "p1", "prompt": "hi"}, path="/generate")
    assert r.status_code == 200
    assert r.json() == {"ok": True, "endpoint": "llm", "path": "/generate", "worker": a["url"],
                        "reqnum": a["reqnum"], "payload": {"id": "p1", "prompt": "hi"}}
    stats = vast.stats()
    assert stats["executions_by_payload"] == {"p1": 1} and stats["workers"]["succeeded"] == 1


def test_malformed_bodies_are_422_text(vast: Emulator) -> None:
    a = assign(vast, "llm")
    for data in ["{nope", "[1]", '{"payload": {}}', '{"auth_data": 3, "payload": {}}',
                 '{"auth_data": {}}']:
        r = requests.post(a["url"] + "/x", data=data, timeout=5)
        assert r.status_code == 422 and r.text, data
    for field in ("cost", "endpoint", "reqnum", "request_idx", "signature", "url"):
        partial = {k: v for k, v in a.items() if k != field}
        r = call(a, {"id": "p"}, auth=partial)
        assert r.status_code == 422 and field in r.text
    assert vast.stats()["workers"]["malformed"] == 11
    assert call(a, {"id": "p"}).status_code == 200  # the assignment was never spent


def test_bad_signature_other_workers_url_and_replay_are_401(vast: Emulator) -> None:
    a = assign(vast, "llm")
    codes = [call(a, {"id": "f"}, auth={**a, "signature": "0" * 64}).status_code,
             call(a, {"id": "c"}, auth={**a, "cost": 1000}).status_code]  # edited
    other = next(u for u in vast.worker_urls("llm") if u != a["url"])
    wrong = call(a, {"id": "w"}, url=other)  # genuine, but for the other worker
    assert codes == [401, 401] and wrong.status_code == 401
    assert "another worker" in wrong.headers["X-Emulator-Reason"]
    assert call(a, {"id": "ok"}).status_code == 200
    replay = call(a, {"id": "again"})
    assert replay.status_code == 401 and replay.content == b""  # PyWorker's 401: no body
    assert "reqnum" in replay.headers["X-Emulator-Reason"]
    w = vast.stats()["workers"]
    assert (w["rejected_signature"], w["rejected_tampered"], w["rejected_replay"]) == (1, 2, 1)
    assert vast.stats()["executions_by_payload"] == {"ok": 1}


def test_an_assignment_from_another_emulator_is_refused(vast: Emulator) -> None:
    with Emulator(make_config(endpoints={"llm": {"workers": 1, "latency": FAST}})) as other:
        foreign = assign(other, "llm")
    a = assign(vast, "llm")
    forged = {**foreign, "url": a["url"], "reqnum": a["reqnum"] + 1}
    assert call(a, {"id": "x"}, auth=forged).status_code == 401


def test_payload_directives(vast: Emulator) -> None:
    def run(emulate: dict, pid: str, timeout: float = 10) -> requests.Response:
        return call(assign(vast, "llm"), {"id": pid, "emulate": emulate}, timeout=timeout)

    gone = run({"status": 410}, "s")
    assert gone.status_code == 410 and "410" in gone.text
    assert run({"status": 201}, "s201").status_code == 201
    assert run({"fail_times": 2}, "ft").status_code == 500
    assert run({"fail_times": 2}, "ft").status_code == 500
    assert run({"fail_times": 2}, "ft").status_code == 200
    text = run({"text": "hello"}, "t")
    assert text.text == "hello" and text.headers["Content-Type"].startswith("text/plain")
    big = run({"size": 200_000}, "big")
    assert 199_000 <= len(big.content) <= 201_000 and big.json()["ok"] is True
    t0 = time.monotonic()
    slept = run({"sleep": 0.3}, "sl")
    assert slept.status_code == 200 and time.monotonic() - t0 >= 0.3
    with pytest.raises(requests.ReadTimeout):
        run({"hang": True}, "h", timeout=0.5)
    for bad in [{"sleep": -1}, {"status": 99}, {"slep": 1}, {"hang": "yes"}, {"size": 1.5}]:
        r = run(bad, "bad")
        assert r.status_code == 422 and "emulate" in r.text, bad
    stats = vast.stats()
    assert stats["executions_by_payload"]["ft"] == 3 and stats["duplicate_executions"] == 2
    assert stats["worker_seconds_by_payload"]["sl"] >= 0.3
    assert stats["workers"]["hung"] == 1 and "bad" not in stats["executions_by_payload"]


def test_payload_id_is_the_id_or_a_hash_of_the_payload(vast: Emulator) -> None:
    call(assign(vast, "llm"), {"id": 42, "x": 1})
    call(assign(vast, "llm"), {"b": 1, "a": [1, 2]})
    call(assign(vast, "llm"), {"a": [1, 2], "b": 1})  # same canonical JSON
    call(assign(vast, "llm"), "just text")
    execs = vast.stats()["executions_by_payload"]
    assert execs["42"] == 1 and sorted(execs.values()) == [1, 1, 2]
    assert all(len(k) == 40 for k in execs if k != "42")


def _timed_batch(vast: Emulator, endpoint: str, n: int) -> float:
    answers = [assign(vast, endpoint) for _ in range(n)]
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        codes = list(pool.map(lambda a: call(a, {"n": a["reqnum"]}).status_code, answers))
    assert codes == [200] * n
    return time.monotonic() - t0


def test_fifo_worker_runs_one_at_a_time_parallel_worker_does_not() -> None:
    # Long enough that all four threads reach the worker while the first is still running.
    seconds = 1.0
    lat = {"kind": "fixed", "seconds": seconds}
    cfg = make_config(endpoints={
        "fifo": {"workers": 1, "concurrency": 1, "queue_depth": 4, "latency": lat},
        "par": {"workers": 1, "concurrency": 4, "latency": lat}})
    with Emulator(cfg) as vast:
        serial = _timed_batch(vast, "fifo", 4)
        assert serial >= 4 * seconds and vast.stats()["peak_in_flight"] == 1  # one by one
        parallel = _timed_batch(vast, "par", 4)
        assert vast.stats()["peak_in_flight"] == 4  # all four at once
        # At once: under the serial time of the same work, however loaded the machine.
        assert seconds <= parallel < 4 * seconds


def test_all_busy_means_no_worker_then_admission_control_429() -> None:
    cfg = make_config(endpoints={"ep": {
        "workers": 1, "concurrency": 1, "queue_depth": 3, "max_queue_time": 1.5,
        "latency": {"kind": "fixed", "seconds": 1.0}}})
    with Emulator(cfg) as vast:
        answers = [route_answer for route_answer in
                   (requests.post(vast.route_url, json={"endpoint": "ep"}, timeout=5,
                                  headers={"Authorization": f"Bearer {vast.api_key}"}).json()
                    for _ in range(4))]
        assert ["url" in a for a in answers] == [True, True, True, False]  # capacity 1 * 3
        # max_workers defaults to workers: demand cannot start another one.
        assert answers[3]["status"] == "0 loading, 0 idle, 1 busy"
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            futures = []
            for i, a in enumerate(answers[:3]):
                futures.append(pool.submit(call, a, {"n": i}))
                if i < 2:  # in order, each seen by the worker before the next is sent:
                    # 0 s, 1 s, then 2 s of work ahead, while the first's 1 s runs
                    until(vast.stats, lambda s, n=i + 1: (
                        s["endpoints"]["ep"]["running"] + s["endpoints"]["ep"]["queued"] == n))
            codes = [f.result().status_code for f in futures]
        assert codes == [200, 200, 429]
        assert "queue time" in futures[2].result().text
        assert vast.stats()["workers"]["admission_rejected"] == 1


def test_hang_workers_and_hang_rate_never_answer() -> None:
    cfg = make_config(endpoints={"h": {"workers": 2, "hang_workers": 1, "latency": FAST},
                                 "r": {"workers": 1, "hang_rate": 1.0, "latency": FAST}})
    with Emulator(cfg) as vast:
        hung_url = vast.worker_urls("h")[0]
        results = []
        for a in [assign(vast, "h"), assign(vast, "h")]:  # one each: least loaded first
            try:
                results.append((a["url"], call(a, {"n": a["reqnum"]}, timeout=1.0).status_code))
            except requests.ReadTimeout:
                results.append((a["url"], "timeout"))
        assert (hung_url, "timeout") in results
        assert any(code == 200 for _, code in results)
        with pytest.raises(requests.ReadTimeout):
            call(assign(vast, "r"), {"id": "r"}, timeout=1.0)
        # The client left: wait for the emulator to see it, not a guessed 0.1 s.
        w = until(lambda: vast.stats()["workers"],
                  lambda w: w["in_flight"] == 0 and w["cancelled"] >= 2)
        assert w["hung"] == 2 and w["cancelled"] == 2 and w["in_flight"] == 0


def test_a_client_that_leaves_a_fifo_queue_frees_it() -> None:
    cfg = make_config(endpoints={"f": {"workers": 1, "concurrency": 1, "queue_depth": 3,
                                       "hang_workers": 1}})
    with Emulator(cfg) as vast:
        first, second = assign(vast, "f"), assign(vast, "f")
        with pytest.raises(requests.ReadTimeout):
            call(first, {"id": "1"}, timeout=1.0)
        with pytest.raises(requests.ReadTimeout):
            call(second, {"id": "2"}, timeout=1.0)
        # Both clients left: wait for the emulator to see it, not a guessed 0.1 s.
        stats = until(vast.stats, lambda s: s["endpoints"]["f"]["outstanding"] == 0)
        assert stats["executions_by_payload"] == {"1": 1, "2": 1}  # each ran once, in turn
        assert stats["endpoints"]["f"]["outstanding"] == 0


def test_failure_rate_answers_500() -> None:
    cfg = make_config(endpoints={"e": {"workers": 1, "concurrency": 4, "failure_rate": 1.0,
                                       "latency": FAST}})
    with Emulator(cfg) as vast:
        r = call(assign(vast, "e"), {"id": "x"})
        assert r.status_code == 500 and vast.stats()["workers"]["failed"] == 1


def test_warmup_errors_answer_401_then_500_then_work() -> None:
    cfg = make_config(endpoints={"w": {"workers": 1, "warmup_errors": 3, "latency": FAST}})
    with Emulator(cfg) as vast:
        codes = [call(assign(vast, "w"), {"id": "x"}).status_code for _ in range(4)]
        assert codes == [401, 500, 401, 200]
        stats = vast.stats()
        assert stats["workers"]["warmup_rejected"] == 3 and stats["executions_by_payload"] == {
            "x": 1}
        assert stats["endpoints"]["w"]["outstanding"] == 0  # rejected assignments freed


def test_latency_distributions() -> None:
    cfg = make_config(endpoints={
        "u": {"workers": 1, "concurrency": 8, "latency": {"kind": "uniform", "low": 0.05,
                                                          "high": 0.1}},
        "l": {"workers": 1, "concurrency": 8, "latency": {"kind": "lognormal", "median": 0.05,
                                                          "sigma": 0.2}}})
    with Emulator(cfg) as vast:
        for ep in ("u", "l"):
            for i in range(4):
                call(assign(vast, ep), {"id": f"{ep}{i}"})
        secs = vast.stats()["worker_seconds_by_payload"]
        # Never under the draw; over it by what a loaded machine adds to a sleep.
        assert all(0.05 <= secs[f"u{i}"] < 0.1 + 1.0 for i in range(4))
        assert all(0.015 < secs[f"l{i}"] < 0.3 + 1.0 for i in range(4))
        assert len({round(secs[f"u{i}"], 4) for i in range(4)}) > 1
