"""The control plane for real PyWorkers, driven by plain HTTP reports in PyWorker 1.9.1's
format (``tests/pyworker/`` runs the real thing)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from dispatcher.emulator import ConfigError, Emulator
from tests.poll import until

from .conftest import make_config, route

pytestmark = pytest.mark.timeout(60)


def report(vast: Emulator, wid: int, url: str, mtoken: str = "llm", **fields: Any
           ) -> requests.Response:
    """A worker_status body as PyWorker 1.9.1 sends it."""
    body = {"id": wid, "mtoken": mtoken, "version": "1.1.0", "loadtime": 0.0, "cur_load": 0,
            "rej_load": 0.0, "new_load": 0.0, "error_msg": "", "max_perf": 100.0,
            "cur_perf": 0.0, "cur_capacity": 0, "max_capacity": 0, "num_requests_working": 0,
            "num_requests_recieved": 0, "additional_disk_usage": 0.0, "disk_usage": 20.0,
            "working_request_idxs": [], "url": url, **fields}
    return requests.post(vast.url + "/worker_status/", json=body, timeout=5)


def finished(vast: Emulator, wid: int, idxs: list[int], mtoken: str = "llm",
             status: str = "Success") -> requests.Response:
    reqs = [{"request_idx": i, "success": status == "Success", "status": status,
             "entered_queue_at": 1.0, "work_started_at": 1.0, "work_completed_at": 2.0}
            for i in idxs]
    return requests.post(vast.url + "/delete_requests/", timeout=5,
                         json={"worker_id": wid, "mtoken": mtoken, "requests": reqs})


@pytest.fixture
def plane() -> Emulator:
    cfg = make_config(endpoints={
        "llm": {"workers_from": "pyworker", "concurrency": 2, "report_timeout": 3.0},
        "tok": {"workers_from": "pyworker", "mtoken": "s3cret-token"},
        "sim": {"workers": 1},
    })
    with Emulator(cfg) as vast:
        yield vast


def test_cold_until_a_pyworker_reports_loaded_then_signed_assignments(plane: Emulator) -> None:
    first = route(plane, {"endpoint": "llm", "cost": 3}).json()
    assert "url" not in first and first["status"] == "Stopped"
    assert report(plane, 7, "http://127.0.0.1:40001").json() == {"ok": True}
    loading = route(plane, {"endpoint": "llm", "request_idx": first["request_idx"]}).json()
    assert loading["status"] == "1 loading, 0 idle, 0 busy"
    report(plane, 7, "http://127.0.0.1:40001", loadtime=2.5)
    a = route(plane, {"endpoint": "llm", "cost": 3, "request_idx": first["request_idx"]}).json()
    assert set(a) == {"endpoint", "url", "cost", "reqnum", "signature", "request_idx",
                      "__request_id"}
    assert a["url"] == "http://127.0.0.1:40001" and a["request_idx"] == first["request_idx"]
    key = serialization.load_pem_public_key(
        requests.get(plane.url + "/pubkey/", timeout=5).content)
    key.verify(base64.b64decode(a["signature"]),  # type: ignore[union-attr]
               json.dumps({"url": a["url"]}, indent=4, sort_keys=True).encode(),
               padding.PKCS1v15(), hashes.SHA256())
    pw = plane.stats()["endpoints"]["llm"]["pyworkers"][0]
    assert (pw["id"], pw["state"], pw["outstanding"], pw["reports"]) == (7, "ready", 1, 2)
    assert pw["reported"]["version"] == "1.1.0"


def test_load_follows_assignments_until_reported_finished(plane: Emulator) -> None:
    report(plane, 1, "http://127.0.0.1:40001", loadtime=1.0)
    report(plane, 2, "http://127.0.0.1:40002", loadtime=1.0)
    answers = [route(plane, {"endpoint": "llm"}).json() for _ in range(5)]
    urls = [a.get("url") for a in answers]
    assert sorted(urls[:4]) == ["http://127.0.0.1:40001"] * 2 + ["http://127.0.0.1:40002"] * 2
    assert urls[4] is None and answers[4]["status"] == "0 loading, 0 idle, 2 busy"
    done = [a["request_idx"] for a in answers[:4] if a["url"].endswith("40002")]
    assert finished(plane, 2, done).json() == {"ok": True}
    assert route(plane, {"endpoint": "llm"}).json()["url"].endswith("40002")
    stats = plane.stats()
    assert stats["pyworker"] == {"reports": 2, "reports_rejected": 0, "delete_requests": 1,
                                 "requests_finished": 2}
    by_id = {pw["id"]: pw for pw in stats["endpoints"]["llm"]["pyworkers"]}
    assert by_id[2]["finished"] == {"Success": 2} and by_id[2]["outstanding"] == 1
    assert stats["assignments"] == 5 and stats["endpoints"]["llm"]["outstanding"] == 3


def test_a_silent_or_errored_pyworker_is_not_routed_to(plane: Emulator) -> None:
    report(plane, 1, "http://127.0.0.1:40001", loadtime=1.0)
    report(plane, 2, "http://127.0.0.1:40002", loadtime=1.0, error_msg="CUDA out of memory")
    assert route(plane, {"endpoint": "llm"}).json()["url"].endswith("40001")
    time.sleep(3.3)  # past report_timeout (3 s): both are stale now
    body = route(plane, {"endpoint": "llm"}).json()
    assert "url" not in body and body["status"] == "Stopped, 2 not reporting"
    states = {pw["id"]: pw["state"] for pw in plane.stats()["endpoints"]["llm"]["pyworkers"]}
    assert states == {1: "stale", 2: "stale"}
    report(plane, 2, "http://127.0.0.1:40002", loadtime=1.0, error_msg="CUDA out of memory")
    assert route(plane, {"endpoint": "llm"}).json()["status"] == (
        "Stopped, 1 errored, 1 not reporting")
    report(plane, 1, "http://127.0.0.1:40001", loadtime=1.0)  # back: routable again
    assert route(plane, {"endpoint": "llm"}).json()["url"].endswith("40001")


def test_a_restarted_pyworker_starts_with_no_load(plane: Emulator) -> None:
    report(plane, 1, "http://127.0.0.1:40001", loadtime=1.0)
    route(plane, {"endpoint": "llm"})
    route(plane, {"endpoint": "llm"})
    assert "url" not in route(plane, {"endpoint": "llm"}).json()  # both slots taken
    report(plane, 1, "http://127.0.0.1:40001", loadtime=0.0)  # the process started again
    report(plane, 1, "http://127.0.0.1:40001", loadtime=1.0)
    assert route(plane, {"endpoint": "llm"}).json()["url"].endswith("40001")
    report(plane, 1, "http://127.0.0.1:40009", loadtime=1.0)  # or came back elsewhere
    assert route(plane, {"endpoint": "llm"}).json()["url"].endswith("40009")


def test_unused_assignments_free_their_slot_after_assignment_ttl() -> None:
    cfg = make_config(endpoints={"llm": {"workers_from": "pyworker", "assignment_ttl": 0.3}})
    with Emulator(cfg) as vast:
        report(vast, 1, "http://127.0.0.1:40001", loadtime=1.0)
        taken = time.monotonic()  # before the route: its TTL starts after this
        assert "url" in route(vast, {"endpoint": "llm"}).json()
        assert "url" not in route(vast, {"endpoint": "llm"}).json()
        # Freed by a sweep after the TTL: polled, not guessed.
        until(lambda: route(vast, {"endpoint": "llm"}).json(), lambda a: "url" in a)
        assert time.monotonic() - taken >= 0.25  # not before the TTL


def test_mtoken_maps_reports_to_endpoints(plane: Emulator) -> None:
    assert report(plane, 1, "http://127.0.0.1:40001", mtoken="s3cret-token",
                  loadtime=1.0).status_code == 200
    assert route(plane, {"endpoint": "tok"}).json()["url"].endswith("40001")
    for token in ("tok", "sim", "nope", None):  # an mtoken set: the name is no token
        r = report(plane, 1, "http://127.0.0.1:40001", mtoken=token)
        assert r.status_code == 401 and "mtoken" in r.json()["error"]
        assert "nope" not in r.text
    r = finished(plane, 1, [1], mtoken="wrong")
    assert r.status_code == 401
    cfg = requests.get(plane.url + "/_emulator/config", timeout=5).json()
    assert cfg["endpoints"]["tok"]["mtoken"] == "<redacted>"
    assert "s3cret" not in json.dumps(cfg)
    assert plane.stats()["pyworker"]["reports_rejected"] == 5


@pytest.mark.parametrize("fields, word", [
    ({"id": "7"}, "id: must be an integer"),
    ({"id": True}, "id: must be an integer"),
    ({"url": "127.0.0.1:4000"}, "url: must be an http(s) URL"),
    ({"url": "http://127.0.0.1"}, "url: must be an http(s) URL"),
    ({"url": None}, "url:"),
    ({"loadtime": -1}, "loadtime"),
    ({"loadtime": "1"}, "loadtime"),
    ({"error_msg": 3}, "error_msg"),
])
def test_bad_reports_are_400_naming_the_field(plane: Emulator, fields: dict, word: str) -> None:
    body = {"id": 1, "mtoken": "llm", "url": "http://127.0.0.1:40001", **fields}
    r = requests.post(plane.url + "/worker_status/", json=body, timeout=5)
    assert r.status_code == 400 and word in r.json()["error"]
    assert requests.post(plane.url + "/worker_status/", data="{", timeout=5).status_code == 400
    r = requests.post(plane.url + "/delete_requests/", timeout=5,
                      json={"worker_id": 1, "mtoken": "llm", "requests": "all"})
    assert r.status_code == 400 and "requests" in r.json()["error"]


def test_scripted_assignment_to_a_pyworker(plane: Emulator) -> None:
    report(plane, 1, "http://127.0.0.1:40001", loadtime=1.0)
    plane.script_route("llm", [{"assign": True, "omit": ["request_idx"]}])
    a = route(plane, {"endpoint": "llm"}).json()
    assert a["url"].endswith("40001") and "request_idx" not in a


@pytest.mark.parametrize("ep, word", [
    ({"workers_from": "pyworker", "workers": 2}, "endpoints.e.workers"),
    ({"workers_from": "pyworker", "max_workers": 1}, "endpoints.e.max_workers"),
    ({"workers_from": "gpu"}, "endpoints.e.workers_from"),
    ({"workers_from": "pyworker", "mtoken": ""}, "endpoints.e.mtoken"),
    ({"workers_from": "pyworker", "report_timeout": -1}, "endpoints.e.report_timeout"),
])
def test_pyworker_config_errors(ep: dict, word: str) -> None:
    with pytest.raises(ConfigError, match=word.replace(".", r"\.")):
        make_config(endpoints={"e": ep})


def test_shared_mtoken_and_changing_kind_are_refused(plane: Emulator) -> None:
    with pytest.raises(ConfigError, match="mtoken: the same as"):
        make_config(endpoints={"a": {"workers_from": "pyworker", "mtoken": "t"},
                               "b": {"workers_from": "pyworker", "mtoken": "t"}})
    with pytest.raises(ConfigError, match="endpoints.sim.workers_from: cannot change"):
        plane.configure({"endpoints": {"sim": {"workers_from": "pyworker", "workers": 0}}})
    plane.configure({"endpoints": {"more": {"workers_from": "pyworker"}}})  # added at run time
    assert report(plane, 3, "http://127.0.0.1:40003", mtoken="more").status_code == 200
