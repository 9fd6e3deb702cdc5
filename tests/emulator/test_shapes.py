"""Answer shapes ("live" and "published") and scripted route answers."""

from __future__ import annotations

import pytest
import requests

from dispatcher.emulator import ConfigError, Emulator

from .conftest import FAST, assign, call, make_config, route

pytestmark = pytest.mark.timeout(60)

PUBLISHED_ASSIGNMENT = {"endpoint", "url", "cost", "reqnum", "signature", "__request_id"}
PUBLISHED_NO_WORKER = {"endpoint", "status", "__request_id"}


@pytest.fixture
def both() -> Emulator:
    cfg = make_config(endpoints={
        "live": {"workers": 1, "concurrency": 4, "latency": FAST},
        "pub": {"workers": 1, "concurrency": 4, "latency": FAST, "answer_shape": "published"},
        "off": {"workers": 0, "max_workers": 0, "answer_shape": "published"},
        "cold": {"workers": 0, "max_workers": 1, "cold_start": 60},
    })
    with Emulator(cfg) as vast:
        yield vast


def test_published_shape_has_exactly_the_documented_fields(both: Emulator) -> None:
    a = assign(both, "pub")
    assert set(a) == PUBLISHED_ASSIGNMENT
    off = route(both, {"endpoint": "off", "cost": 1}).json()
    assert set(off) == PUBLISHED_NO_WORKER and off["status"] == "Stopped"
    assert call(a, {"id": "p"}).status_code == 200  # needs no request_idx
    assert set(assign(both, "live")) == PUBLISHED_ASSIGNMENT | {"request_idx"}


def test_published_worker_requires_the_fields_it_issued(both: Emulator) -> None:
    a = assign(both, "pub")
    r = call(a, {"id": "x"}, auth={k: v for k, v in a.items() if k != "__request_id"})
    assert r.status_code == 422
    assert r.json() == {"auth_data": {"__request_id": "missing parameter"}}
    r = requests.post(a["url"] + "/x", json={"auth_data": {}}, timeout=5)
    assert r.json() == {"auth_data": {f: "missing parameter" for f in PUBLISHED_ASSIGNMENT},
                        "payload": "field missing"}
    live = assign(both, "live")
    r = requests.post(live["url"] + "/x", json={"auth_data": {}, "payload": {}}, timeout=5)
    assert r.json() == {"auth_data": {f: "missing parameter" for f in
                                      ("cost", "endpoint", "reqnum", "request_idx",
                                       "signature", "url")}}
    assert requests.post(live["url"] + "/x", data="{x", timeout=5).json() == {
        "error": "invalid JSON"}


def test_scripted_verbatim_answers_in_order_then_normal_ones(both: Emulator) -> None:
    both.script_route("live", [
        {"status": 400, "json": {"error": "Invalid endpoint or missing required parameters"}},
        {"status": 429, "text": "API requests too frequent"},
        {"status": 200, "json": {"status": 7, "zzz": None}},
        {"status": 200, "json": ["not", "an", "object"]},
        {"status": 503, "text": "", "headers": {"Retry-After": "1"}},
        {"reset": True},
    ])
    assert route(both, {"endpoint": "live"}, key="wrong").status_code == 401  # auth first
    assert both.stats()["endpoints"]["live"]["scripted_left"] == 6
    r = route(both, {"endpoint": "live"})
    assert r.status_code == 400 and r.json() == {
        "error": "Invalid endpoint or missing required parameters"}
    r = route(both, {"endpoint": "live"})
    assert (r.status_code, r.text) == (429, "API requests too frequent")
    assert r.headers["Content-Type"].startswith("text/plain") and "Retry-After" not in r.headers
    assert route(both, {"endpoint": "live"}).json() == {"status": 7, "zzz": None}
    assert route(both, {"endpoint": "live"}).json() == ["not", "an", "object"]
    r = route(both, {"endpoint": "live"})
    assert (r.status_code, r.headers["Retry-After"]) == (503, "1")
    with pytest.raises(requests.ConnectionError):
        route(both, {"endpoint": "live"})
    assert "url" in route(both, {"endpoint": "live"}).json()  # the script is used up
    stats = both.stats()
    assert stats["route"]["scripted"] == 6 and stats["endpoints"]["live"]["scripted_left"] == 0


def test_scripted_assignments_with_changes_still_run(both: Emulator) -> None:
    both.script_route("live", [
        {"assign": True, "omit": ["cost"], "extra": {"zzz_unknown": [1]}},
        {"assign": True, "omit": ["request_idx", "reqnum", "__request_id"]},
        {"assign": True, "extra": {"cost": "12"}},
    ])
    a = route(both, {"endpoint": "live", "cost": 5}).json()
    assert "cost" not in a and a["zzz_unknown"] == [1] and "url" in a
    assert call(a, {"id": "a"}).status_code == 200
    b = route(both, {"endpoint": "live"}).json()
    assert set(b) == {"endpoint", "url", "cost", "signature"}
    assert call(b, {"id": "b"}).status_code == 200
    replay = call(b, {"id": "b2"})
    assert replay.status_code == 401 and both.stats()["workers"]["rejected_replay"] == 1
    c = route(both, {"endpoint": "live"}).json()
    assert c["cost"] == "12"
    assert call(c, {"id": "c"}, auth={**c, "more": 1}).status_code == 401  # still verbatim
    assert call(c, {"id": "c"}).status_code == 200
    assert both.stats()["executions_by_payload"] == {"a": 1, "b": 1, "c": 1}
    assert both.stats()["route"]["assigned"] == 3


def test_scripted_no_worker_and_assignment_without_a_ready_worker(both: Emulator) -> None:
    both.script_route("off", [{"no_worker": True, "omit": ["status"], "extra": {"n": 1}}])
    body = route(both, {"endpoint": "off"}).json()
    assert set(body) == {"endpoint", "__request_id", "n"}
    both.script_route("cold", [{"assign": True}, {"no_worker": True, "omit": ["request_idx"]}])
    first = route(both, {"endpoint": "cold"}).json()
    assert "url" not in first and first["status"].startswith("1 loading")  # demand counted
    assert set(route(both, {"endpoint": "cold"}).json()) == {"endpoint", "status",
                                                             "__request_id"}
    both.script_route("cold", [{"status": 500, "text": "x"}])
    both.script_route("cold", [])  # replaces, and so clears
    assert route(both, {"endpoint": "cold"}).status_code == 200


@pytest.mark.parametrize("answers, word", [
    ("nope", "answers: must be a list"),
    ([3], "answers[0]: must be an object"),
    ([{}], "answers[0]: must have exactly one of"),
    ([{"assign": True, "status": 200}], "exactly one of"),
    ([{"assign": 1}], "answers[0].assign: must be true"),
    ([{"assign": True, "omit": ["nope"]}], "answers[0].omit: 'nope' is not a field"),
    ([{"assign": True, "omit": "cost"}], "answers[0].omit: must be a list"),
    ([{"assign": True, "extra": [1]}], "answers[0].extra: must be an object"),
    ([{"assign": True, "colour": 1}], "unknown field(s) ['colour']"),
    ([{"status": 99}], "answers[0].status"),
    ([{"status": 200, "json": {}, "text": ""}], "not both"),
    ([{"status": 200, "text": 5}], "answers[0].text"),
    ([{"status": 200, "json": float("nan")}], "answers[0].json: must be plain JSON"),
    ([{"status": 200, "headers": {"a": 1}}], "answers[0].headers"),
    ([{"reset": True, "omit": []}], "unknown field(s) ['omit']"),
])
def test_bad_scripts_are_refused_naming_the_field(both: Emulator, answers, word: str) -> None:
    with pytest.raises(ConfigError) as e:
        both.script_route("live", answers)
    assert word in str(e.value)


def test_script_route_over_http_and_its_errors(both: Emulator) -> None:
    url = both.url + "/_emulator/config"
    ok = requests.post(url, json={"action": "script_route", "endpoint": "pub",
                                  "answers": [{"status": 401, "json": {"error": "x"}}]},
                       timeout=5)
    assert ok.status_code == 200
    assert route(both, {"endpoint": "pub"}).status_code == 401
    for body, word in [({"action": "script_route", "endpoint": "pub"}, "answers"),
                       ({"action": "script_route", "endpoint": "nope", "answers": []},
                        "endpoint"),
                       ({"action": "script_route", "endpoint": "pub",
                         "answers": [{"assign": True, "omit": ["request_idx"]}]},
                        "not a field of a published assign answer")]:
        r = requests.post(url, json=body, timeout=5)
        assert r.status_code == 400 and word in r.json()["error"], r.text


def test_answer_shape_is_validated() -> None:
    with pytest.raises(ConfigError, match="endpoints.e.answer_shape"):
        make_config(endpoints={"e": {"answer_shape": "vast"}})
