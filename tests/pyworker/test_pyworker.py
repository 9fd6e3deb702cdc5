"""Vast's real PyWorker against the emulator as its control plane (issue 10, section 4):
jobs go emulator -> PyWorker -> model and back, driven by plain HTTP as Vast's client
drives them (a route call, then the worker call with the answer as auth_data)."""

from __future__ import annotations

import time

import pytest
import requests

from dispatcher.emulator import Emulator, EmulatorConfig

from .conftest import KEY, Launcher, assignment, call, pyworker_state, route, wait_for

pytestmark = [pytest.mark.pyworker, pytest.mark.timeout(120)]


def emulator(**endpoint: object) -> Emulator:
    return Emulator(EmulatorConfig.from_dict({
        "api_key": KEY, "endpoints": {"llm": {"workers_from": "pyworker", **endpoint}}}))


def test_jobs_through_a_real_pyworker_cold_start_included(launcher: Launcher) -> None:
    with emulator(concurrency=4) as vast:
        first = route(vast, "llm")
        assert "url" not in first and first["status"] == "Stopped"
        idx = first["request_idx"]
        model = launcher.model(delay=0.5)
        pw = launcher.pyworker(vast, model)
        statuses = set()

        def routed() -> dict | None:
            answer = route(vast, "llm", request_idx=idx)  # one job keeps its place
            if "url" in answer:
                return answer
            statuses.add(answer["status"])
            assert answer["request_idx"] == idx
            return None

        a = wait_for(routed, 60, "the PyWorker to report itself loaded",
                     [pw.proc, model.proc])
        assert a["url"] == pw.url and a["request_idx"] == idx and statuses
        r = call(a, {"prompt": "first", "n": 0})
        assert r.status_code == 200, r.text
        assert r.json()["echo"] == {"prompt": "first", "n": 0}
        assert r.json()["path"] == "/generate"
        for n in range(1, 10):
            b = assignment(vast, "llm")
            r = call(b, {"prompt": f"job {n}", "n": n})
            assert r.status_code == 200 and r.json()["echo"] == {"prompt": f"job {n}", "n": n}
        # PyWorker reports what it finished; the emulator frees the slots.
        wait_for(lambda: vast.stats()["endpoints"]["llm"]["outstanding"] == 0, 15,
                 "the PyWorker's delete_requests", [pw.proc])
        info = vast.stats()["endpoints"]["llm"]["pyworkers"][0]
        assert info["state"] == "ready" and info["finished"]["Success"] == 10
        assert info["loadtime"] > 0 and info["reported"]["version"]
        # What the real PyWorker answers, as the emulated workers mirror it.
        c = assignment(vast, "llm")
        no_idx = requests.post(c["url"] + "/generate", timeout=10, json={
            "auth_data": {k: v for k, v in c.items() if k != "request_idx"}, "payload": {}})
        assert no_idx.status_code == 422
        assert no_idx.json() == {"auth_data": {"request_idx": "missing parameter"}}
        assert call(c, {"n": "once"}).status_code == 200
        assert call(c, {"n": "twice"}).status_code == 200  # a replay: Vast's PyWorker takes it


def test_a_pyworker_holding_another_key_answers_401_empty(launcher: Launcher) -> None:
    with emulator(concurrency=4) as vast, emulator() as other:
        model = launcher.model()
        pw = launcher.pyworker(vast, model)
        wait_for(lambda: pyworker_state(vast, "llm", pw.id) == "ready", 60,
                 "the PyWorker to be ready", [pw.proc, model.proc])
        # Another emulator routes to the same PyWorker (the test reports it there), signing
        # with its own key: the PyWorker holds this emulator's.
        requests.post(other.url + "/worker_status/", timeout=5, json={
            "id": 1, "mtoken": "llm", "url": pw.url, "loadtime": 1.0, "error_msg": ""}
        ).raise_for_status()
        foreign = route(other, "llm")
        assert foreign["url"] == pw.url
        r = call(foreign, {"n": "foreign"})
        assert r.status_code == 401 and r.content == b""
        assert call(assignment(vast, "llm"), {"n": "own"}).status_code == 200
        # The emulator changes its key: the PyWorker keeps the one it fetched at start.
        vast.configure({"action": "rotate_key"})
        stale = call(assignment(vast, "llm"), {"n": "after rotation"})
        assert stale.status_code == 401 and stale.content == b""
        wait_for(lambda: pyworker_state(vast, "llm", pw.id) == "ready" and vast.stats()[
            "endpoints"]["llm"]["pyworkers"][0]["finished"].get("Rejected", 0) >= 1, 15,
                 "the PyWorker to report the rejected request", [pw.proc])


def test_a_killed_pyworker_is_not_routed_to_once_it_stops_reporting(launcher: Launcher) -> None:
    timeout = 3.0
    # Slots free fast (assignment_ttl), so only the silence can keep the dead one out.
    with emulator(concurrency=4, report_timeout=timeout, assignment_ttl=0.5) as vast:
        model = launcher.model()
        doomed, survivor = launcher.pyworker(vast, model), launcher.pyworker(vast, model)
        procs = [doomed.proc, survivor.proc, model.proc]
        for pw in (doomed, survivor):
            wait_for(lambda pw=pw: pyworker_state(vast, "llm", pw.id) == "ready", 60,
                     "both PyWorkers to be ready", procs)
        assigned: list[tuple[float, str]] = []
        refused = 0

        def job(n: int) -> None:
            """One job to the end, re-routed after a dead worker, as a dispatcher would."""
            nonlocal refused
            idx = 0
            for _ in range(200):
                asked = time.monotonic()  # the emulator chose after this
                a = route(vast, "llm", request_idx=idx)
                idx = a.get("request_idx", idx)
                if "url" not in a:
                    time.sleep(0.05)
                    continue
                assigned.append((asked, a["url"]))
                try:
                    r = call(a, {"n": n, "sleep": 0.02}, timeout=10)
                except requests.ConnectionError:
                    refused += 1
                    continue
                assert r.status_code == 200 and r.json()["echo"]["n"] == n
                return
            raise AssertionError(f"job {n} never ended")

        n = 0
        while {url for _, url in assigned} != {doomed.url, survivor.url}:
            job(n := n + 1)
            assert n < 500, "the emulator never routed to both PyWorkers"
        doomed.proc.kill()
        killed = time.monotonic()
        while time.monotonic() < killed + timeout + 3:
            job(n := n + 1)
        late = [url for t, url in assigned if t > killed + timeout + 0.5]
        assert late and set(late) == {survivor.url}
        assert any(url == survivor.url for t, url in assigned if t > killed)
        states = {pw["id"]: pw["state"] for pw in vast.stats()["endpoints"]["llm"]["pyworkers"]}
        assert states == {doomed.id: "stale", survivor.id: "ready"}
