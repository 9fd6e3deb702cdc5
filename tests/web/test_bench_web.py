"""``python -m bench --smoke --scenarios 6,7,8`` runs end to end: no speed asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

KEYS = {
    "push_wait": ["push_p50_ms", "push_commands_per_wait", "poll_p50_ms",
                  "poll_commands_per_wait"],
    "submit_batch": ["sync_one_at_a_time_per_s", "sync_submit_many_per_s",
                     "asyncio_one_at_a_time_per_s", "asyncio_submit_many_per_s"],
    "gateway": ["aiohttp_submits_per_s", "aiohttp_p50_ms"],
}


@pytest.mark.timeout(240)
def test_bench_web_scenarios_run_and_write_json(tmp_path: Path) -> None:
    out = tmp_path / "web.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--scenarios", "6,7,8", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=230)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    doc = json.loads(out.read_text())
    for name, keys in KEYS.items():
        scenario = doc["scenarios"][name]
        assert scenario["error"] is None, scenario["error"]
        assert [k for k in keys if scenario.get(k) is None] == [], name
    # The push wait is read, block, read: 3 commands (the polling one needs more).
    assert doc["scenarios"]["push_wait"]["push_commands_per_wait"] == 3
