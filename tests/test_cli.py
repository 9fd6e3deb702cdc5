"""The CLI refuses bad input with exit code 2 and a message naming the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str, env_extra: dict | None = None, stdin: str | None = None):
    import os

    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "dispatcher", *args], capture_output=True,
                          text=True, env=env, input=stdin, timeout=60)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["", "--path", "/x"], "endpoint"),
        (["ep", "--path", "x"], "path"),
        (["ep", "--path", "https://h/x"], "path"),
        (["ep", "--path", "/x", "--cost", "-1"], "cost"),
        (["ep", "--path", "/x", "--cost", "nan"], "cost"),
        (["ep", "--path", "/x", "--timeout", "0"], "timeout"),
        (["ep", "--path", "/x", "--max-wait", "-3"], "max_wait"),
        (["ep", "--path", "/x", "--job-id", "a b"], "job_id"),
    ],
)
def test_submit_bad_input_exits_2_naming_the_field(tmp_path: Path, args, field) -> None:
    payload = tmp_path / "p.json"
    payload.write_text(json.dumps({"prompt": "hi"}))
    endpoint, *rest = args
    r = run("submit", endpoint, str(payload), *rest)
    assert r.returncode == 2, r.stderr
    assert f"{field}:" in r.stderr


def test_submit_payload_not_json_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "p.json"
    bad.write_text("{not json")
    r = run("submit", "ep", str(bad), "--path", "/x")
    assert r.returncode == 2 and "payload:" in r.stderr and "not valid JSON" in r.stderr


def test_submit_deeply_nested_payload_exits_2(tmp_path: Path) -> None:
    deep = tmp_path / "p.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    r = run("submit", "ep", str(deep), "--path", "/x")
    assert r.returncode == 2 and "payload:" in r.stderr and "nested too deeply" in r.stderr
    assert "Traceback" not in r.stderr


def test_submit_missing_payload_file_exits_2(tmp_path: Path) -> None:
    r = run("submit", "ep", str(tmp_path / "missing.json"), "--path", "/x")
    assert r.returncode == 2 and "payload: cannot read" in r.stderr


def test_bad_setting_exits_2_naming_the_variable(tmp_path: Path) -> None:
    payload = tmp_path / "p.json"
    payload.write_text("{}")
    r = run("submit", "ep", str(payload), "--path", "/x",
            env_extra={"DISPATCHER_POLL_CAP": "soon"})
    assert r.returncode == 2 and "DISPATCHER_POLL_CAP" in r.stderr
