"""The live dashboard at the gateway's ``/``: a page, its JSON and its own static files.

``GET /`` is the page (``static/dashboard.html``, its script and style beside it: no build
step, no CDN, it works offline). The page polls ``GET /dashboard/data`` every few
seconds: stats() as the gateway last sampled it, the history since the page's last poll,
and the newest failures. The gateway keeps that history itself (``Sampler``: a stats()
read every ``SAMPLE_S``, the last 15 minutes, in memory), so a page opened in the middle
of a cold start shows how it got there, and any number of tabs cost one read per sample.
It samples only while someone watches: it stops after ``WINDOW_S`` without a dashboard
request.

Auth, like the API's: a browser cannot send a Bearer header with a page load, so
``/login`` takes the token in a form (a POST: never in a URL, a history or a log) and
sets a cookie holding an HMAC of the token, not the token. That cookie authorizes GET
requests only (the page, its data, a job's JSON, stats): anything that writes, submit or
cancel, still needs the Bearer header, so a cookie can never be made to submit a job
(no CSRF), and it is ``SameSite=Strict`` and ``HttpOnly`` besides. Changing the token
signs every browser out.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from typing import Any

from aiohttp import web

from dispatcher.config import Settings
from dispatcher.model import Job, Status
from dispatcher.ops.jobs import find_jobs
from dispatcher.ops.stats import collect, reader
from dispatcher.ops.views import POINT_FIELDS, History, failures_of, newest_first, order
from dispatcher.store import Store

log = logging.getLogger("dispatcher.gateway")

SAMPLE_S = 2.0
WINDOW_S = 900.0
FAILURES_SHOWN = 10
COOKIE = "dispatcher_dashboard"
COOKIE_MAX_AGE = 12 * 3600
STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
# Served without a token: the login form, and the page's script and style (the same
# for everyone, in the package; no data).
OPEN_PATHS = frozenset({"/login", "/logout",
                        *(f"/dashboard/static/{name}" for name in STATIC)})
# Pages a browser loads: without a session they go to the login form, not a 401.
PAGES = frozenset({"/"})
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _asset(name: str) -> str:
    return (files("dispatcher.gateway") / "static" / name).read_text(encoding="utf-8")


def session_value(token: str) -> str:
    """What the cookie holds: derived from the token, so no server state, the token
    itself never stored in a browser, and a new token ends every session."""
    return hmac.new(token.encode(), b"dispatcher dashboard session v1",
                    hashlib.sha256).hexdigest()


def session_ok(request: web.Request, token: str) -> bool:
    """A dashboard session authorizes reads only (GET, HEAD)."""
    if request.method not in ("GET", "HEAD"):
        return False
    given = request.cookies.get(COOKIE, "")
    return bool(given) and hmac.compare_digest(given.encode("utf-8", "replace"),
                                               session_value(token).encode())


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def to_login(request: web.Request) -> web.Response | None:
    """The answer to a page load without a session: the login form (None: not a page)."""
    if request.method == "GET" and request.path in PAGES:
        return redirect("/login")
    return None


class Sampler:
    """stats() every ``interval`` while the dashboard is watched, and its history.

    It reads through a store of its own that fails fast (``ops.stats.reader``: one retry,
    2 s timeouts), in a thread of its own: with Redis away the page says so at once, and
    the gateway still stops at once, instead of waiting out a job store's retries."""

    def __init__(self, settings: Settings, interval: float = SAMPLE_S,
                 window: float = WINDOW_S) -> None:
        self.settings = settings
        self.interval = interval
        self.window = window
        self.history = History(window)
        self.latest: dict[str, Any] | None = None
        self.failures: list[dict[str, Any]] = []
        self.error: str | None = None
        self._sampled_at = 0.0  # monotonic
        self._watched_at = 0.0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._store: Store | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="dispatcher-dashboard")

    def _read(self) -> tuple[dict[str, Any], list[Job]]:
        if self._store is None:
            self._store = reader(self.settings)
        return collect(self._store), find_jobs(
            self._store, None, [Status.FAILED, Status.EXPIRED], limit=FAILURES_SHOWN)

    async def sample(self, older_than: float = 0.0) -> None:
        """Read stats() and the newest failures, unless a sample is younger than
        ``older_than`` seconds (requests that came together share one)."""
        async with self._lock:
            if self.latest is not None and time.monotonic() - self._sampled_at < older_than:
                return
            try:
                stats, jobs = await asyncio.get_running_loop().run_in_executor(
                    self._thread, self._read)
            except Exception as e:  # Redis away: the page says so and keeps its figures
                error = f"stats unavailable: {type(e).__name__}"
                if error != self.error:  # once, not at every sample
                    log.warning("dashboard: %s: %s", error, e)
                self.error = error
                return
            if self.error:
                log.warning("dashboard: stats readable again")
            self.history.add(stats)
            self.latest = stats
            self.failures = [f.as_dict() | {"error": (f.error or "")[:300] or None}
                             for f in newest_first(failures_of("", jobs))]
            self.error = None
            self._sampled_at = time.monotonic()

    async def _run(self) -> None:
        try:
            while time.monotonic() - self._watched_at < self.window:
                await asyncio.sleep(max(0.0, self._sampled_at + self.interval
                                        - time.monotonic()))
                await self.sample()
                # A Redis that does not answer is not asked again at once.
                await asyncio.sleep(self.interval if self.error else 0)
        finally:
            self._task = None

    async def watched(self) -> None:
        """A dashboard request: sample now if there is no fresh sample, and keep sampling."""
        self._watched_at = time.monotonic()
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        await self.sample(older_than=2 * self.interval)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._thread.shutdown(wait=False, cancel_futures=True)
        if self._store is not None:
            self._store.redis.close()

    def snapshot(self, since: float | None) -> dict[str, Any]:
        stats = self.latest or {"queue": self.settings.queue, "generated_at": None,
                                "endpoints": {}, "webhooks_queued": 0}
        eps = {ep: {k: v for k, v in s.items() if k != "last_failures"}
               for ep, s in stats["endpoints"].items()}
        return {
            "queue": stats["queue"], "generated_at": stats["generated_at"],
            "sample_interval": self.interval, "window": self.window,
            "error": self.error, "webhooks_queued": stats.get("webhooks_queued") or 0,
            "order": order(stats["endpoints"]), "endpoints": eps,
            "history": {"fields": POINT_FIELDS,
                        "points": {ep: [p.as_list() for p in self.history.points(ep, since)]
                                   for ep in eps}},
            "failures": [f | {"href": f"/v1/jobs/{f['id']}"} for f in self.failures],
        }


SAMPLER: web.AppKey[Sampler] = web.AppKey("dashboard_sampler", Sampler)
TOKEN: web.AppKey[str | None] = web.AppKey("dashboard_token")


def _page(name: str, status: int = 200, **values: str) -> web.Response:
    text = _asset(name)
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", html.escape(value))
    return web.Response(text=text, status=status, content_type="text/html",
                        headers=SECURITY_HEADERS)


async def page(request: web.Request) -> web.Response:
    return _page("dashboard.html", auth="" if request.app[TOKEN] else "no-auth")


async def data(request: web.Request) -> web.Response:
    raw = request.query.get("since")
    since = None
    if raw is not None:
        try:
            since = float(raw)
        except ValueError:
            return web.json_response({"error": f"since: must be a time in seconds, got "
                                               f"{raw[:40]!r}", "field": "since"}, status=400)
    sampler = request.app[SAMPLER]
    await sampler.watched()
    return web.json_response(sampler.snapshot(since), headers={"Cache-Control": "no-store"})


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    return web.Response(text=_asset(name), content_type=STATIC[name],
                        headers={"X-Content-Type-Options": "nosniff",
                                 "Cache-Control": "no-cache"})


async def login_form(request: web.Request) -> web.Response:
    if request.app[TOKEN] is None:
        return redirect("/")
    return _page("login.html", message="")


async def login(request: web.Request) -> web.Response:
    token = request.app[TOKEN]
    if token is None:
        return redirect("/")
    form = await request.post()
    given = str(form.get("token", "")).strip()
    if not hmac.compare_digest(given.encode("utf-8", "replace"), token.encode()):
        return _page("login.html", status=401,
                     message="Wrong token: it is not this gateway's DISPATCHER_GATEWAY_TOKEN.")
    resp = redirect("/")
    resp.set_cookie(COOKIE, session_value(token), max_age=COOKIE_MAX_AGE, path="/",
                    httponly=True, samesite="Strict", secure=request.secure)
    return resp


async def logout(request: web.Request) -> web.Response:
    resp = redirect("/login")
    resp.del_cookie(COOKIE, path="/")
    return resp


def add_routes(app: web.Application, settings: Settings, token: str | None,
               interval: float = SAMPLE_S) -> None:
    sampler = Sampler(settings, interval)
    app[SAMPLER] = sampler
    app[TOKEN] = token
    r = app.router
    r.add_get("/", page, allow_head=False)
    r.add_get("/dashboard/data", data, allow_head=False)
    r.add_get("/dashboard/static/{name}", static, allow_head=False)
    r.add_get("/login", login_form, allow_head=False)
    r.add_post("/login", login)
    r.add_post("/logout", logout)

    async def stop(app: web.Application) -> None:
        await sampler.close()

    app.on_cleanup.insert(0, stop)
