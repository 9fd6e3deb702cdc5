from __future__ import annotations

import math

import pytest

from dispatcher.config import Settings
from dispatcher.validation import InvalidJob, check_job, check_job_id

S = Settings(max_payload_bytes=1000, max_timeout=100)
OK = dict(cost=1.0, path="/v1/x", max_wait=10, timeout=10)


def test_good_job() -> None:
    spec = check_job(S, "ep", {"a": 1}, **OK)
    assert spec.endpoint == "ep" and spec.payload_json == '{"a":1}' and spec.cost == 1.0


@pytest.mark.parametrize(
    ("field", "endpoint", "payload", "overrides"),
    [
        ("endpoint", "", {}, {}),
        ("endpoint", None, {}, {}),
        ("endpoint", "  ", {}, {}),
        ("cost", "ep", {}, {"cost": -1}),
        ("cost", "ep", {}, {"cost": math.nan}),
        ("cost", "ep", {}, {"cost": "12"}),
        ("cost", "ep", {}, {"cost": True}),
        ("payload", "ep", {"x": object()}, {}),
        ("payload", "ep", {"x": math.inf}, {}),
        ("payload", "ep", {"x": "y" * 2000}, {}),
        ("path", "ep", {}, {"path": "v1/x"}),
        ("path", "ep", {}, {"path": "http://evil/v1"}),
        ("path", "ep", {}, {"path": ""}),
        ("max_wait", "ep", {}, {"max_wait": 0}),
        ("max_wait", "ep", {}, {"max_wait": -5}),
        ("timeout", "ep", {}, {"timeout": 0}),
        ("timeout", "ep", {}, {"timeout": 101}),
        ("priority", "ep", {}, {"priority": 10}),
        # Issue 11: inputs that never end, or that could not be stored or sent.
        ("max_wait", "ep", {}, {"max_wait": math.inf}),
        ("max_wait", "ep", {}, {"max_wait": 1e300}),
        ("max_wait", "ep", {}, {"max_wait": 10**400}),
        ("timeout", "ep", {}, {"timeout": 10**400}),
        ("endpoint", "x" * 10_000, {}, {}),
        ("endpoint", "ep\n", {}, {}),
        ("endpoint", "e\x00p", {}, {}),
        ("endpoint", "ep/../x", {}, {}),
        ("path", "ep", {}, {"path": "/v1/\x00"}),
        ("path", "ep", {}, {"path": "/v1/\x7f"}),
        ("path", "ep", {}, {"path": "/" + "a" * 10_000}),
        ("path", "ep", {}, {"path": "/v1/../admin"}),
        ("path", "ep", {}, {"path": "/v1/caf\u00e9"}),
        ("payload", "ep", "deeply nested", {}),
    ],
)
def test_bad_input_names_the_field(field, endpoint, payload, overrides) -> None:
    if payload == "deeply nested":
        payload = []
        for _ in range(100_000):
            payload = [payload]
    with pytest.raises(InvalidJob) as e:
        check_job(S, endpoint, payload, **{**OK, **overrides})
    assert e.value.field == field
    assert str(e.value).startswith(f"{field}: ")
    assert isinstance(e.value, ValueError)


def test_job_id() -> None:
    assert check_job_id("order-42:a.b_c") == "order-42:a.b_c"
    for bad in ["", "a b", "x" * 200, 5, "a/b", "abc\n", "abc\r\nX-Injected: 1"]:
        with pytest.raises(InvalidJob, match="job_id"):
            check_job_id(bad)


def test_a_real_world_endpoint_name_and_path_pass() -> None:
    spec = check_job(S, "vLLM-Qwen3-8B", {}, **{**OK, "path": "/v1/chat/completions?x=1"})
    assert (spec.endpoint, spec.path) == ("vLLM-Qwen3-8B", "/v1/chat/completions?x=1")


def test_max_wait_has_a_configurable_upper_bound() -> None:
    with pytest.raises(InvalidJob, match=r"max_wait: must be <= 60 seconds"):
        check_job(Settings(max_max_wait=60, default_max_wait=30), "ep", {},
                  **{**OK, "max_wait": 61})
