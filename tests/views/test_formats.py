"""top and the dashboard write every figure the same way: the dashboard's JavaScript
formatters (run by node) against dispatcher.ops.views on values full of halves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dispatcher.ops.views import rate, seconds

JS = Path(__file__).resolve().parents[2] / "dispatcher" / "gateway" / "static" / "dashboard.js"

VALUES = sorted({
    *(k / 2000 for k in range(0, 2000)),  # 0.0005 steps under a second: every ms half
    *(k / 20 + 0.05 for k in range(0, 1200)),  # 0.05 halves of the 0.1 s steps
    0.0525, 4.05, 4.15, 59.95, 99.95, 100.5, 101.5, 2.5e-4, 123.456, 3599.9, 7261.0,
})


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_top_and_the_dashboard_format_alike() -> None:
    src = JS.read_text()
    body = re.search(r"\n(\s*function (?:fixed|seconds)\(.*?)\n\s*function clock\(", src, re.S)
    assert body, "dashboard.js: fixed(), seconds() and rate() not found before clock()"
    script = body.group(1) + f"""
const vs = {json.dumps(VALUES)};
console.log(JSON.stringify(vs.map((v) => [seconds(v), rate(v)])));
"""
    out = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    js = json.loads(out)
    py = [[seconds(v), rate(v)] for v in VALUES]
    differ = [(v, j, p) for v, j, p in zip(VALUES, js, py, strict=True) if j != p]
    assert differ == [], differ[:10]
    assert seconds(0.0525) == "53ms" and rate(4.05) == "4.1"  # halves go up, as in JS
