"""docker-compose.yml cannot run here (no Docker engine): it parses and matches the Procfile."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def command_of(service: dict) -> str:
    cmd = service["command"]
    return cmd[-1] if isinstance(cmd, list) else cmd


def test_compose_has_redis_with_aof_a_worker_and_the_emulator() -> None:
    services = compose()["services"]
    assert set(services) >= {"redis", "worker", "emulator"}
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    env = services["worker"]["environment"]
    assert env["REDIS_URL"].startswith("redis://:") and "@redis:6379" in env["REDIS_URL"]
    assert env["VAST_ROUTE_URL"].endswith("/route/")


def test_compose_publishes_nothing_beyond_loopback_and_redis_has_a_password() -> None:
    """Issue 11 item 9: password-less Redis, the emulator's control API and Flower were
    published on every interface."""
    services = compose()["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--requirepass") + 1].startswith("${REDIS_PASSWORD")
    assert redis_cmd[redis_cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert redis_cmd[redis_cmd.index("--appendfsync") + 1] == "always"
    assert "${REDIS_PASSWORD" in services["worker"]["environment"]["REDIS_URL"]


def test_metrics_listen_on_loopback_by_default() -> None:
    from dispatcher.cli import build_parser

    assert build_parser().parse_args(["metrics"]).host == "127.0.0.1"


def test_compose_commands_match_the_procfile() -> None:
    services = compose()["services"]
    procs = procfile()
    assert procs["worker"] == "dispatcher worker"
    assert command_of(services["worker"]).endswith("exec " + procs["worker"])
    emulator_cmd = command_of(services["emulator"])
    assert "exec dispatcher emulator" in emulator_cmd
    assert procs["emulator"].startswith("dispatcher emulator")
    assert "--port 8081" in emulator_cmd and "--port 8081" in procs["emulator"]


def test_procfile_commands_exist_in_the_cli() -> None:
    from dispatcher.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for command in procfile().values():
        assert command.split()[1] in sub.choices


def test_compose_serves_metrics_like_the_procfile_and_flower_sees_events() -> None:
    services = compose()["services"]
    # The same command; in a container it listens on all of its interfaces (published on
    # the host's loopback only), where the Procfile's default is loopback.
    assert command_of(services["metrics"]).replace("--host 0.0.0.0 ", "").endswith(
        "exec " + procfile()["metrics"])
    assert services["worker"]["environment"]["DISPATCHER_TASK_EVENTS"] == "1"
    assert "flower" in command_of(services["flower"])


def test_webhooks_run_in_their_own_process() -> None:
    """Issue 11 item 4: deliveries shared threads with dispatch, so one slow receiver
    stalled every tenant. They have their own queue and process, in both files."""
    from dispatcher.cli import build_parser

    procs = procfile()
    assert procs["webhooks"] == "dispatcher worker --webhooks"
    services = compose()["services"]
    assert command_of(services["webhooks"]).endswith("exec " + procs["webhooks"])
    env = services["webhooks"]["environment"]
    assert "${REDIS_PASSWORD" in env["REDIS_URL"] and "@redis:6379" in env["REDIS_URL"]
    assert "DISPATCHER_WEBHOOK_SECRET" in env and "DISPATCHER_WEBHOOK_ALLOW" in env
    assert "--webhooks" not in command_of(services["worker"])
    args = build_parser().parse_args(procs["webhooks"].split()[1:])
    assert args.webhooks and args.func.__name__ == "cmd_worker"


def test_the_supported_pythons_are_declared() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
    versions = {c.rsplit(" ", 1)[1] for c in project["classifiers"]
                if c.startswith("Programming Language :: Python :: 3.")}
    assert versions == {"3.11", "3.12", "3.13", "3.14"}
