"""Settings from the environment: every bad value is refused naming its variable."""

from __future__ import annotations

import pytest

from dispatcher.config import Settings


def test_fleet_defaults() -> None:
    s = Settings.from_env({})
    assert (s.route_rate, s.route_burst, s.route_recover) == (50.0, 10.0, 10.0)
    assert s.webhook_secret is None and s.webhook_attempts == 8 and not s.task_events
    b = s.route_budget()
    assert (b.rate, b.burst, b.pause_base, b.pause_cap) == (50.0, 10.0, s.poll_base, s.poll_cap)


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
