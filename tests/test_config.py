"""Settings from the environment: every bad value is refused naming its variable."""

from __future__ import annotations

import pytest

from dispatcher.config import Settings


def test_fleet_defaults() -> None:
    # No hidden throttle: no configured route rate (the fleet learns one from 429s).
    s = Settings.from_env({})
    assert (s.route_rate, s.route_burst, s.route_recover) == (0.0, 3.0, 10.0)
    assert s.webhook_secret is None and s.webhook_attempts == 8 and not s.task_events
    b = s.route_budget()
    assert (b.rate, b.burst, b.pause_base, b.pause_cap) == (0.0, 3.0, s.poll_base, s.poll_cap)
    s = Settings.from_env({"DISPATCHER_ROUTE_RATE": "50"})
    assert (s.route_rate, s.route_burst) == (50.0, 10.0)


def test_fleet_values_from_the_environment() -> None:
    s = Settings.from_env({"DISPATCHER_ROUTE_RATE": "0", "DISPATCHER_WEBHOOK_SECRET": "k",
                           "DISPATCHER_TASK_EVENTS": "yes", "DISPATCHER_ROUTE_BURST": "3"})
    assert s.route_rate == 0 and s.route_burst == 3 and s.task_events
    assert "webhook_secret" not in repr(s)  # never in a log line through repr


@pytest.mark.parametrize(("env", "name"), [
    ({"DISPATCHER_ROUTE_RATE": "-1"}, "DISPATCHER_ROUTE_RATE"),
    ({"DISPATCHER_ROUTE_RATE": "fast"}, "DISPATCHER_ROUTE_RATE"),
    ({"DISPATCHER_WEBHOOK_ATTEMPTS": "0"}, "DISPATCHER_WEBHOOK_ATTEMPTS"),
    ({"DISPATCHER_ROUTE_RECOVER": "x"}, "DISPATCHER_ROUTE_RECOVER"),
])
def test_bad_values_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Settings.from_env(env)


def test_the_readme_table_is_the_generated_one() -> None:
    from pathlib import Path

    from dispatcher.config import markdown_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert markdown_table() in readme


def test_every_setting_names_its_variable_and_meaning() -> None:
    from dataclasses import fields

    envs = [f.metadata["env"] for f in fields(Settings)]
    assert len(envs) == len(set(envs))
    assert all(f.metadata["doc"] for f in fields(Settings))


@pytest.mark.parametrize("raw", ["key\n", "  key  ", "\tkey\r\n"])
def test_a_secret_loses_surrounding_whitespace(raw: str) -> None:
    assert Settings.from_env({"VAST_API_KEY": raw}).vast_api_key == "key"


def test_a_secret_with_a_control_character_inside_is_refused_without_showing_it() -> None:
    with pytest.raises(ValueError, match="VAST_API_KEY: holds a control character") as e:
        Settings.from_env({"VAST_API_KEY": "sk-abc\ndef"})
    assert "sk-abc" not in str(e.value)


@pytest.mark.parametrize("name", ["DISPATCHER_RESULT_TTL", "DISPATCHER_CONCURRENCY",
                                  "VAST_ROUTE_TIMEOUT", "DISPATCHER_MAX_TIMEOUT"])
def test_values_that_must_be_positive_are_refused_at_zero(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: "0"})


def test_a_non_finite_number_is_refused() -> None:
    with pytest.raises(ValueError, match="DISPATCHER_POLL_CAP: expected a finite number"):
        Settings.from_env({"DISPATCHER_POLL_CAP": "inf"})
