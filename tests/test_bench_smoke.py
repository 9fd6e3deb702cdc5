"""``python -m bench --smoke`` runs every scenario end to end: tiny sizes, no speed asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SCENARIO_KEYS = {
    "throughput": ["dispatcher_jobs_per_s", "ceiling_jobs_per_s", "ratio_to_ceiling",
                   "dispatcher_submit_per_s", "dispatcher_cpu_ms_per_job",
                   "ceiling_cpu_ms_per_job", "vast_client_jobs_per_s", "ratio_to_vast_client",
                   "redis_cpu_ms_per_job"],
    "latency": ["added_ms", "added_seen_by_poller_ms", "parts_p50_ms"],
    "concurrency": ["peak_in_flight", "rss_peak_mb", "total_s", "floor_s", "total_over_floor",
                    "statuses"],
    "cold_start": ["rss_growth_mb", "redis_bytes_per_waiting_job", "route_calls_per_job",
                   "pickup_p50_s", "pickup_p95_s", "drain_after_ready_s",
                   "drain_after_ready_ideal_s", "total_s", "total_ideal_s", "statuses"],
    "scaling": ["jobs_per_s", "speedup", "cores", "redis_cpu_ms_per_job",
                "ceiling_per_redis_jobs_per_s"],
}


@pytest.mark.timeout(240)
def test_bench_smoke_runs_every_scenario_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=230,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    doc = json.loads(out.read_text())
    assert doc["ok"] is True
    assert {"nproc", "ram_gib", "cpu", "python", "celery", "redis_server", "date"} <= set(
        doc["machine"])
    for name, keys in SCENARIO_KEYS.items():
        scenario = doc["scenarios"][name]
        assert scenario["error"] is None, scenario["error"]
        assert [k for k in keys if k not in scenario] == [], name
        assert scenario["rows"], name
