"""A job's retry policy at submit (issue 15 section 3): max_reroutes and retry_on, checked
with errors naming the field, and what they write."""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher.config import Settings
from dispatcher.errors import InvalidJob
from dispatcher.submission import job_from_mapping, new_job

S = Settings()


def make(**options: Any) -> dict[str, Any]:
    return new_job(S, "ep", {"p": 1}, path="/x", **options).fields


def test_the_default_policy_writes_nothing() -> None:
    fields = make()
    assert "max_reroutes" not in fields and "retry_on" not in fields


def test_a_job_opts_in_with_its_own_bound() -> None:
    fields = make(max_reroutes=2, retry_on=["worker_timeout", "worker_stream_broken",
                                            "worker_timeout"])
    assert fields["max_reroutes"] == 2
    assert fields["retry_on"] == "worker_timeout,worker_stream_broken"
    assert make(max_reroutes=0)["max_reroutes"] == 0  # never re-routed, not "the default"
    assert "retry_on" not in make(retry_on=[])


@pytest.mark.parametrize(("options", "field", "reason"), [
    ({"max_reroutes": -1}, "max_reroutes", "from 0 to 100, got -1"),
    ({"max_reroutes": 101}, "max_reroutes", "from 0 to 100"),
    ({"max_reroutes": 1.5}, "max_reroutes", "an integer"),
    ({"max_reroutes": True}, "max_reroutes", "an integer"),
    ({"max_reroutes": "3"}, "max_reroutes", "an integer"),
    ({"retry_on": "worker_timeout"}, "retry_on", "must be a list"),
    ({"retry_on": ["worker_failed"]}, "retry_on", "worker_failed is always re-routed"),
    ({"retry_on": ["timeout"]}, "retry_on", "unknown error kind(s) ['timeout']"),
    ({"retry_on": [None]}, "retry_on", "unknown"),
])
def test_bad_policies_are_refused_by_name(options: dict[str, Any], field: str,
                                          reason: str) -> None:
    with pytest.raises(InvalidJob) as e:
        make(**options)
    assert e.value.field == field and reason in e.value.reason


def test_a_batch_item_names_its_index() -> None:
    item = {"endpoint": "ep", "payload": {}, "path": "/x", "retry_on": ["nope"]}
    with pytest.raises(InvalidJob) as e:
        job_from_mapping(S, item, "jobs[4].")
    assert e.value.field == "jobs[4].retry_on"
