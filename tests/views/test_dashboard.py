"""The gateway's live dashboard in a real browser (headless Chromium over WebDriver)
during a cold start: a real gateway process with a token, a worker, Redis and the
emulator. The figures are read from the rendered DOM and checked against stats(); the
page updates itself as the GPU comes; a screenshot is saved (docs/dashboard.png with
DISPATCHER_UPDATE_SCREENSHOT=1).

Chromium missing is a skip, unless DISPATCHER_BROWSER_TESTS=required (.ci/run sets it
once its install worked): then it is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from dispatcher.client import Client
from dispatcher.dev.procs import GatewayProcess
from dispatcher.emulator import Emulator
from dispatcher.gateway.dashboard import COOKIE, FAILURES_SHOWN
from dispatcher.ops.views import seconds

from . import browser

pytestmark = pytest.mark.timeout(240)

WHY = browser.missing()
if WHY and os.environ.get("DISPATCHER_BROWSER_TESTS") == "required":
    raise RuntimeError(f"DISPATCHER_BROWSER_TESTS=required but {WHY}")
if WHY:
    pytestmark = [pytestmark, pytest.mark.skip(reason=WHY)]

TOKEN = "dash-test-token-" + uuid.uuid4().hex
ROOT = Path(__file__).resolve().parents[2]
COLD_JOBS = 60
PLATEAU = 5  # samples of the cold start before its GPU may come
DURATIONS = ("oldest_wait_s", "wait_p50_s", "wait_p95_s", "run_p50_s", "run_p95_s")
COUNTS = ("queued", "waiting", "running", "succeeded", "failed", "expired", "cancelled",
          "route_429s", "route_deferred")

READ_CARD = """
const card = document.querySelector(`article[data-endpoint="${arguments[0]}"]`);
if (!card) return null;
const out = {};
for (const node of card.querySelectorAll("[data-field]")) {
  out[node.dataset.field] = {value: node.dataset.value ?? null,
                             text: (node.querySelector(".value") || node).textContent};
}
const line = (s) => card.querySelector(`polyline[data-series="${s}"]`);
out.chart = {pending: (line("pending")?.getAttribute("points") || "").trim(),
             done: (line("done_per_s")?.getAttribute("points") || "").trim()};
return out;
"""
READ_FAILURES = """
return [...document.querySelectorAll("#failure-rows tr")].map((tr) => ({
  id: tr.dataset.job, href: tr.querySelector("a.job").getAttribute("href"),
  cells: [...tr.cells].map((td) => td.textContent)}));
"""


@pytest.fixture(scope="module")
def gateway(e2e_env: dict[str, str], worker: Any) -> Iterator[str]:
    child = GatewayProcess(e2e_env, token=TOKEN).start()
    try:
        yield child.url
    finally:
        child.stop()
        assert TOKEN not in child.log_text()


@pytest.fixture
def chrome() -> Iterator[browser.Browser]:
    b = browser.Browser(1280, 1100)
    try:
        yield b
    finally:
        b.close()


def _bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def test_dashboard_auth_over_http(gateway: str) -> None:
    """The page and its data need the token: a Bearer header, or the cookie the login
    form sets, which allows reads only."""
    r = requests.get(gateway + "/", allow_redirects=False, timeout=10)
    assert r.status_code == 303 and r.headers["Location"] == "/login"
    r = requests.get(gateway + "/dashboard/data", timeout=10)
    assert r.status_code == 401 and "bearer" in r.json()["error"]
    assert requests.get(gateway + "/login", timeout=10).status_code == 200
    for name in ("dashboard.js", "dashboard.css"):  # the same for everyone: no data
        assert requests.get(f"{gateway}/dashboard/static/{name}", timeout=10).ok
    assert requests.get(gateway + "/dashboard/static/x.py", timeout=10).status_code == 401

    wrong = requests.post(gateway + "/login", data={"token": "nope" * 8},
                          allow_redirects=False, timeout=10)
    assert wrong.status_code == 401 and COOKIE not in wrong.cookies
    assert "Wrong token" in wrong.text and TOKEN not in wrong.text
    ok = requests.post(gateway + "/login", data={"token": TOKEN}, allow_redirects=False,
                       timeout=10)
    assert ok.status_code == 303 and ok.headers["Location"] == "/"
    set_cookie = ok.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    session = ok.cookies[COOKIE]
    assert TOKEN not in session  # an HMAC of the token, not the token
    jar = {COOKIE: session}
    page = requests.get(gateway + "/", cookies=jar, timeout=10)
    assert page.status_code == 200 and "dashboard.js" in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    data = requests.get(gateway + "/dashboard/data", cookies=jar, timeout=10)
    assert data.status_code == 200 and data.json()["window"] == 900
    bad = requests.get(gateway + "/dashboard/data?since=x", cookies=jar, timeout=10)
    assert bad.status_code == 400 and bad.json()["field"] == "since"
    # Reads only: the cookie alone never submits or cancels (no cross-site request can).
    post = requests.post(gateway + "/v1/jobs", cookies=jar, timeout=10,
                         json={"endpoint": "x", "path": "/x", "payload": {}})
    assert post.status_code == 401
    # One hex digit changed (never to itself: the old "+ '0'" kept a cookie ending in 0 valid).
    forged = session[:-1] + ("1" if session[-1] == "0" else "0")
    assert forged != session
    assert requests.get(gateway + "/dashboard/data", cookies={COOKIE: forged},
                        timeout=10).status_code == 401
    out = requests.post(gateway + "/logout", cookies=jar, allow_redirects=False, timeout=10)
    assert out.status_code == 303 and f"{COOKIE}=\"\"" in out.headers["Set-Cookie"]
    # The Bearer header works on the data as on the API.
    assert requests.get(gateway + "/dashboard/data", headers=_bearer(), timeout=10).ok


def _number(raw: str | None) -> float | None:
    return None if raw in (None, "") else float(raw)


def _check_card(card: dict[str, Any], s: dict[str, Any], fields: tuple[str, ...]) -> None:
    """The card's figures equal stats()' and are written as `dispatcher top` writes them."""
    for field in fields:
        got = card[field]
        assert _number(got["value"]) == s[field], (field, got, s[field])
        want = seconds(s[field]) if field.endswith("_s") else str(s[field])
        assert got["text"] == want, (field, got, want)


def _points(raw: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in (p.split(",") for p in raw.split())]


class Trickle:
    """Jobs submitted to a warm endpoint at a steady pace from a thread, every
    ``fail_every``-th one failing (worker_rejected), until stopped."""

    def __init__(self, client: Client, ep: str, per_s: float = 4.0, fail_every: int = 6):
        self.client, self.ep, self.per_s, self.fail_every = client, ep, per_s, fail_every
        self.ids: list[str] = []
        self.bad: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(1 / self.per_s):
            n += 1
            payload: dict[str, Any] = {"n": n, "emulate": {"sleep": 0.3}}
            if n % self.fail_every == 0:
                payload["emulate"] = {"status": 422}
            job_id = self.client.submit(self.ep, payload, path="/generate")
            (self.bad if n % self.fail_every == 0 else self.ids).append(job_id)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for job_id in self.ids + self.bad:
            assert self.client.wait(job_id, timeout=60).done


def named(vast: Emulator, prefix: str, **config: Any) -> str:
    """add_endpoint's, under a readable name (it is on the README's screenshot)."""
    name = f"{prefix}-{uuid.uuid4().hex[:4]}"
    defaults = {"workers": 2, "max_workers": 2, "cold_start": 0.5, "concurrency": 4,
                "latency": {"kind": "fixed", "seconds": 0.01}}
    vast.configure({"endpoints": {name: {**defaults, **config}}})
    return name


def _history(gateway: str, ep: str) -> list[list[Any]]:
    doc = requests.get(gateway + "/dashboard/data", headers=_bearer(), timeout=10).json()
    return list(doc["history"]["points"].get(ep, []))


def test_dashboard_in_a_browser_during_a_cold_start(
        gateway: str, client: Client, vast: Emulator, chrome: browser.Browser,
        tmp_path: Path) -> None:
    # The gateway samples from the first dashboard request on: from before the jobs.
    assert requests.get(gateway + "/dashboard/data", headers=_bearer(), timeout=10).ok
    warm = named(vast, "whisper-v3", concurrency=4)
    trickle = Trickle(client, warm)
    try:
        _cold_start(gateway, client, vast, chrome, tmp_path, warm, trickle)
    finally:
        trickle.stop()
    # The warm endpoint once its last job ended: the page catches up within a sample.
    w = client.stats()["endpoints"][warm]
    assert (w["succeeded"], w["failed"]) == (len(trickle.ids), len(trickle.bad))
    chrome.get(gateway + "/")
    chrome.until(f"""const c = document.querySelector('article[data-endpoint="{warm}"]');
        return c && c.querySelector('[data-field="succeeded"]').dataset.value
                    === '{w["succeeded"]}'""", timeout=30)
    _check_card(chrome.run(READ_CARD, warm), client.stats()["endpoints"][warm],
                COUNTS + DURATIONS[1:])

    # The newest failures: each failed job, its error kind, a link to its JSON.
    rows = {r["id"]: r for r in chrome.until(
        "const r = arguments[0]; return [...document.querySelectorAll('#failure-rows tr')]"
        ".some((tr) => tr.dataset.job === r) && " + READ_FAILURES.strip()[len("return "):],
        trickle.bad[-1])}
    newest = trickle.bad[-min(len(trickle.bad), FAILURES_SHOWN):]
    assert set(newest) <= set(rows), (newest, rows)
    for job_id in newest:
        job = client.get_job(job_id)
        assert rows[job_id]["href"] == f"/v1/jobs/{job_id}"
        assert job.error_kind == "worker_rejected", job
        assert job.error_kind in rows[job_id]["cells"] and warm in rows[job_id]["cells"]
    shot = chrome.screenshot(tmp_path / "dashboard.png")
    assert shot.stat().st_size > 10_000
    if os.environ.get("DISPATCHER_UPDATE_SCREENSHOT") == "1":
        shutil.copy(shot, ROOT / "docs" / "dashboard.png")

    # A failure's link opens its JSON with the same session (a GET).
    some = newest[-1]
    chrome.get(f"{gateway}/v1/jobs/{some}")
    shown = json.loads(chrome.run("return document.body.innerText"))
    assert (shown["id"], shown["status"], shown["error_kind"]) == (
        some, "failed", "worker_rejected")


def _cold_start(gateway: str, client: Client, vast: Emulator, chrome: browser.Browser,
                tmp_path: Path, warm: str, trickle: Trickle) -> None:
    # The cold start: an endpoint scaled to zero that cannot start a GPU yet.
    cold = named(vast, "qwen3-8b", workers=0, max_workers=0, concurrency=4, cold_start=3,
                 latency={"kind": "fixed", "seconds": 0.3})
    waiting = [client.submit(cold, {"n": n}, path="/generate", max_wait=600)
               for n in range(COLD_JOBS)]
    deadline = time.monotonic() + 30
    while not (client.stats()["endpoints"][cold]["last_route_status"] or "").startswith(
            "no worker"):
        assert time.monotonic() < deadline, client.stats()["endpoints"][cold]
        time.sleep(0.2)

    # A browser opens the dashboard: the login form first, then the page.
    chrome.get(gateway + "/")
    assert chrome.url.endswith("/login")
    chrome.type("#token", TOKEN)
    chrome.click("button[type=submit]")
    chrome.until("return location.pathname === '/' && document.body.dataset.generatedAt")
    assert [c["name"] for c in chrome.cookies()] == [COOKIE]
    assert chrome.until(
        "return document.getElementById('conn').dataset.state === 'live'") is True
    # Works offline: everything the page loaded came from the gateway itself.
    loaded = chrome.run("return performance.getEntriesByType('resource').map((e) => e.name)"
                        ".concat([location.href])")
    assert loaded and all(u.startswith(gateway + "/") for u in loaded), loaded
    # A few samples of the cold start on the chart (the page draws what it polled).
    deadline = time.monotonic() + 60
    while len([p for p in _history(gateway, cold) if p[1] == COLD_JOBS]) < PLATEAU:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    chrome.until(f"""const c = document.querySelector('article[data-endpoint="{cold}"]');
        const line = c && c.querySelector('polyline[data-series="pending"]');
        return line && line.getAttribute('points').trim().split(' ').length >= {PLATEAU}""")

    card = chrome.run(READ_CARD, cold)
    s = client.stats()["endpoints"][cold]
    # Jobs move between the Celery queue and the waiting set at each poll: their sum
    # stays put while no GPU comes.
    assert _number(card["queued"]["value"]) + _number(card["waiting"]["value"]) == COLD_JOBS
    _check_card(card, s, ("running", "succeeded", "failed", "expired", "cancelled",
                          "wait_p50_s", "run_p50_s"))
    assert s["queued"] + s["waiting"] == COLD_JOBS and s["succeeded"] == 0
    assert card["wait_p50_s"]["text"] == "-"  # no job of it reached a GPU yet
    shown_wait = _number(card["oldest_wait_s"]["value"])
    assert shown_wait is not None and 0 < shown_wait <= s["oldest_wait_s"]
    assert card["oldest_wait_s"]["text"] == seconds(shown_wait)
    assert card["last_route_status"]["value"].startswith("no worker")
    assert _number(card["route_calls_per_s"]["value"]) is not None
    chrome.screenshot(tmp_path / "dashboard-cold-start.png")

    # The GPU comes: the page follows on its own, without a reload.
    vast.configure({"endpoints": {cold: {"max_workers": 1}}})
    chrome.until(f"""const c = document.querySelector('article[data-endpoint="{cold}"]');
        return c && c.querySelector('[data-field="succeeded"]').dataset.value === '{COLD_JOBS}'
        && c.querySelector('[data-field="waiting"]').dataset.value === '0'""", timeout=90)
    for job_id in waiting:
        assert client.get_job(job_id).status == "succeeded"
    card = chrome.run(READ_CARD, cold)
    _check_card(card, client.stats()["endpoints"][cold], COUNTS + DURATIONS[1:])
    assert card["oldest_wait_s"]["text"] == "-"

    # The chart: the cold start's plateau of pending jobs, then their drop to zero, and
    # jobs finishing; as many points as the gateway's history holds.
    history = _history(gateway, cold)
    pending_line = _points(card["chart"]["pending"])
    assert len(pending_line) >= PLATEAU + 1 and len(history) >= len(pending_line) - 1
    top_y = min(y for _, y in pending_line)
    assert pending_line[-1][1] > top_y  # the last point is lower on screen than the top
    assert history[-1][1] == 0 and any((p[3] or 0) > 0 for p in history)
    assert len(_points(card["chart"]["done"])) >= 2
