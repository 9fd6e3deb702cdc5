"""The emulator's HTTP side: the router (``/route/``, control) and one server per worker."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import resource
import secrets
import threading
import time
import uuid
from dataclasses import replace
from typing import Any

from aiohttp import web

from dispatcher.emulator import signing
from dispatcher.emulator.config import ConfigError, EmulatorConfig, EndpointConfig
from dispatcher.emulator.fleet import (
    LOADING,
    READY,
    STOPPED,
    Endpoint,
    Worker,
    draw_latency,
    now,
    payload_id,
)
from dispatcher.emulator.stats import Stats

BACKLOG = 4096
REPLAY_TIMEOUT = 60.0
REQUIRED_AUTH = ("cost", "endpoint", "reqnum", "request_idx", "signature", "url")


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Emulator:
    """A local Vast Serverless: ``with Emulator(config) as vast: vast.route_url``."""

    def __init__(self, config: EmulatorConfig | None = None, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.config = config or EmulatorConfig()
        self.host = host
        self.port = port
        self.stats_data = Stats()
        self.rng = random.Random(self.config.seed)
        self.secret = secrets.token_bytes(32)
        self.endpoints: dict[str, Endpoint] = {}
        self.next_request_idx = 0
        self.buckets: dict[tuple[str, str], tuple[float, float]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task] = set()
        self._hangs: set[asyncio.Future] = set()

    # --- lifecycle -----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host if self.host != '0.0.0.0' else '127.0.0.1'}:{self.port}"

    @property
    def route_url(self) -> str:
        return self.url + "/route/"

    @property
    def api_key(self) -> str:
        return self.config.api_key

    def start(self) -> Emulator:
        raise_fd_limit()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True,
                                        name="vast-emulator")
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self.astart(), self.loop)
        fut.result(30)
        return self

    def _run(self, started: threading.Event) -> None:
        assert self.loop is not None
        asyncio.set_event_loop(self.loop)
        started.set()
        self.loop.run_forever()

    def stop(self) -> None:
        if self.loop is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.astop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread:
            self._thread.join(10)
        self.loop.close()
        self.loop = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def astart(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/route/", self.handle_route)
        app.router.add_post("/route", self.handle_route)
        app.router.add_get("/_emulator/stats", self.handle_stats)
        app.router.add_post("/_emulator/config", self.handle_config)
        app.router.add_get("/_emulator/health", self.handle_health)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=BACKLOG)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        for name, cfg in self.config.endpoints.items():
            await self._add_endpoint(name, cfg)
        self._spawn(self._housekeeping())

    async def astop(self) -> None:
        for fut in self._hangs:
            fut.cancel()
        for task in list(self._tasks):
            task.cancel()
        for ep in self.endpoints.values():
            for w in ep.workers:
                if w.runner is not None:
                    await w.runner.cleanup()
                    w.runner = None
        if self._runner is not None:
            await self._runner.cleanup()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- thread-safe API for tests ---------------------------------------------------

    def _call(self, coro: Any) -> Any:
        assert self.loop is not None, "emulator not started"
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def stats(self) -> dict[str, Any]:
        return self._call(self._stats())

    def configure(self, patch: dict[str, Any]) -> None:
        self._call(self.apply(patch))

    def worker_urls(self, endpoint: str) -> list[str]:
        async def urls() -> list[str]:
            return [w.url for w in self.endpoints[endpoint].workers if w.port]

        return self._call(urls())

    # --- fleet management ----------------------------------------------------------

    async def _add_endpoint(self, name: str, cfg: EndpointConfig) -> None:
        ep = Endpoint(name, cfg)
        self.endpoints[name] = ep
        self._grow(ep)
        for w in ep.workers[: cfg.workers]:
            await self._start_worker(w, cold=0.0)

    def _grow(self, ep: Endpoint) -> None:
        wh = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        while len(ep.workers) < ep.config.max_workers:
            i = len(ep.workers)
            ep.workers.append(Worker(ep.name, i, wh, hang=i < ep.config.hang_workers))

    async def _start_worker(self, w: Worker, cold: float) -> None:
        if w.state != STOPPED:
            return
        w.state = LOADING
        w.ready_at = now() + cold
        if cold <= 0:
            await self._make_ready(w)

    async def _make_ready(self, w: Worker) -> None:
        # Called by a zero-second start and by housekeeping: only one may bring it up.
        if w.state != LOADING or w.starting:
            return
        w.starting = True
        try:
            await self._bring_up(w)
        finally:
            w.starting = False

    async def _bring_up(self, w: Worker) -> None:
        ep = self.endpoints[w.endpoint]
        if w.runner is None:
            app = web.Application(client_max_size=64 * 1024 * 1024)

            async def handler(request: web.Request, w: Worker = w) -> web.StreamResponse:
                return await self.handle_worker(request, w)

            app.router.add_route("*", "/{path:.*}", handler)
            w.runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await w.runner.setup()
        site = web.TCPSite(w.runner, w.host, w.port, backlog=BACKLOG, reuse_address=True)
        await site.start()
        w.site = site
        w.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        w.sem = asyncio.Semaphore(ep.config.concurrency)
        w.state = READY
        w.last_active = now()
        w.warmup_left = ep.config.warmup_errors

    async def _stop_worker(self, w: Worker) -> None:
        if w.state == READY and w.site is not None:
            await w.site.stop()
            w.site = None
        w.state = STOPPED
        w.outstanding = 0
        w.expected.clear()

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            t = now()
            for ep in self.endpoints.values():
                for idx, seen in list(ep.pending.items()):
                    if t - seen > REPLAY_TIMEOUT:
                        del ep.pending[idx]
                for w in ep.workers:
                    if w.state == LOADING and t >= w.ready_at:
                        await self._make_ready(w)
                    for reqnum, deadline in list(w.expected.items()):
                        if t > deadline:  # assigned but never called: free the slot
                            del w.expected[reqnum]
                            w.outstanding -= 1
                    idle_limit = ep.config.inactivity_timeout
                    if (w.state == READY and idle_limit is not None and w.outstanding == 0
                            and t - w.last_active > idle_limit):
                        await self._stop_worker(w)

    async def apply(self, patch: dict[str, Any]) -> None:
        patch = dict(patch)
        action = patch.pop("action", None)
        if action:
            await self._action(action, patch)
            return
        eps = patch.pop("endpoints", {}) or {}
        if patch:
            try:
                self.config = replace(self.config, **patch)
            except TypeError as e:
                raise ConfigError(str(e)) from None
        for name, fields_ in eps.items():
            ep = self.endpoints.get(name)
            if ep is None:
                await self._add_endpoint(name, EndpointConfig.from_dict(fields_))
                continue
            ep.config = EndpointConfig.from_dict(fields_, ep.config)
            self._grow(ep)
            for w in ep.workers:
                w.hang = w.index < ep.config.hang_workers

    async def _action(self, action: str, args: dict[str, Any]) -> None:
        if action == "reset_stats":
            self.stats_data = Stats()
            return
        if action not in ("stop_all", "cold_start", "start"):
            raise ConfigError(f"action: unknown action {action!r}")
        ep = self.endpoints.get(args.get("endpoint", ""))
        if ep is None:
            raise ConfigError(f"endpoint: unknown endpoint {args.get('endpoint')!r}")
        if action == "stop_all":
            for w in ep.workers:
                await self._stop_worker(w)
        elif action == "cold_start":
            ep.config = replace(ep.config, cold_start=float(args.get("seconds",
                                                                     ep.config.cold_start)))
            for w in ep.workers:
                await self._stop_worker(w)
        elif action == "start":
            count = int(args.get("count", 1))
            for w in [w for w in ep.workers if w.state == STOPPED][:count]:
                await self._start_worker(w, ep.config.cold_start)

    # --- router ----------------------------------------------------------------------

    def _rate_limited(self, endpoint: str, key: str) -> bool:
        rl = self.config.rate_limit
        if not rl:
            return False
        t = now()
        tokens, last = self.buckets.get((endpoint, key), (float(rl["burst"]), t))
        tokens = min(float(rl["burst"]), tokens + (t - last) * float(rl["rate"]))
        if tokens < 1:
            self.buckets[(endpoint, key)] = (tokens, t)
            return True
        self.buckets[(endpoint, key)] = (tokens - 1, t)
        return False

    async def handle_route(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            return await self._route(request)
        finally:
            self.stats_data.route_seconds_total += time.perf_counter() - started

    async def _route(self, request: web.Request) -> web.StreamResponse:
        cfg, st = self.config, self.stats_data
        st.route["calls"] += 1
        if cfg.route_latency:
            await asyncio.sleep(cfg.route_latency)
        if cfg.route_reset_rate and self.rng.random() < cfg.route_reset_rate:
            st.route["reset"] += 1
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        auth = request.headers.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else ""
        if not key or not secrets.compare_digest(key, cfg.api_key):
            st.route["unauthorized"] += 1
            return _json_error(401, "Invalid or missing API key")
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            st.route["bad_request"] += 1
            return _json_error(400, "request body must be a JSON object")
        name = body.get("endpoint")
        cost = body.get("cost", 100.0)  # Vast's documented default
        error = None
        if not isinstance(name, str) or not name:
            error = "missing parameter: endpoint"
        elif name not in self.endpoints:
            error = f"endpoint {name!r} not found"
        elif isinstance(cost, bool) or not isinstance(cost, int | float):
            error = "cost must be a number"
        elif math.isnan(cost) or math.isinf(cost) or cost < 0:
            error = "cost must be a finite number >= 0"
        if error:
            st.route["bad_request"] += 1
            return _json_error(400, error)
        if self._rate_limited(name, key):
            st.route["rate_limited"] += 1
            return web.Response(status=429, text="API requests too frequent")
        if cfg.route_error_rate and self.rng.random() < cfg.route_error_rate:
            st.route["server_error"] += 1
            return web.Response(status=self.rng.choice((500, 502, 503)),
                                text="upstream error")
        if cfg.route_429_rate and self.rng.random() < cfg.route_429_rate:
            st.route["rate_limited"] += 1
            return web.Response(status=429, text="API requests too frequent")
        return web.json_response(await self._assign(self.endpoints[name], body, float(cost)))

    async def _assign(self, ep: Endpoint, body: dict[str, Any], cost: float) -> dict[str, Any]:
        st = self.stats_data
        idx = body.get("request_idx")
        if not isinstance(idx, int) or isinstance(idx, bool) or idx <= 0:
            self.next_request_idx += 1
            idx = self.next_request_idx
        request_id = uuid.uuid4().hex
        worker = ep.pick_worker()
        if worker is None:
            ep.pending[idx] = now()
            await self._scale_up(ep)
            st.route["no_worker"] += 1
            return {"endpoint": ep.name, "status": ep.status_text(),
                    "__request_id": request_id, "request_idx": idx}
        ep.pending.pop(idx, None)
        ep.next_reqnum += 1
        reqnum = ep.next_reqnum
        worker.outstanding += 1
        worker.expected[reqnum] = now() + ep.config.assignment_ttl
        answer = {"endpoint": ep.name, "url": worker.url, "cost": cost, "reqnum": reqnum,
                  "request_idx": idx, "__request_id": request_id}
        answer["signature"] = signing.sign(self.secret, answer)
        st.route["assigned"] += 1
        st.assignments += 1
        return answer

    async def _scale_up(self, ep: Endpoint) -> None:
        active = [w for w in ep.workers if w.state != STOPPED]
        for w in [w for w in ep.workers if w.state == STOPPED][: ep.wanted_workers()
                                                                 - len(active)]:
            await self._start_worker(w, ep.config.cold_start)

    # --- workers ---------------------------------------------------------------------

    async def handle_worker(self, request: web.Request, w: Worker) -> web.StreamResponse:
        st = self.stats_data
        if w.state != READY:  # a stopped instance: the connection just dies
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)
        ep = self.endpoints[w.endpoint]
        try:
            body = await request.json()
        except ValueError:
            body = None
        auth = body.get("auth_data") if isinstance(body, dict) else None
        if not isinstance(auth, dict) or "payload" not in body:
            st.worker["malformed"] += 1
            return web.Response(status=422, text="body must be JSON with auth_data and payload")
        missing = [f for f in REQUIRED_AUTH if f not in auth]
        if missing:
            st.worker["malformed"] += 1
            return web.Response(status=422, text=f"auth_data missing: {', '.join(missing)}")
        if not signing.verify(self.secret, auth) or auth.get("url") != w.url:
            st.worker["rejected_signature"] += 1
            return web.Response(status=401, text="invalid signature")
        reqnum = auth["reqnum"]
        if reqnum in ep.used_reqnums:
            st.worker["rejected_replay"] += 1
            return web.Response(status=401, text="reqnum already used")
        ep.used_reqnums.add(reqnum)
        if w.expected.pop(reqnum, None) is None:
            w.outstanding += 1  # its slot had been freed: count it again
        try:
            return await self._work(request, w, ep, body["payload"], reqnum)
        finally:
            w.outstanding -= 1
            w.last_active = now()

    async def _work(self, request: web.Request, w: Worker, ep: Endpoint,
                    payload: Any, reqnum: Any) -> web.StreamResponse:
        st, cfg = self.stats_data, ep.config
        if w.warmup_left > 0:
            w.warmup_left -= 1
            return web.Response(status=401 if w.warmup_left % 2 else 500,
                                text="model still loading")
        # Like a real worker: estimated wait = work ahead of this request / parallelism.
        if (w.queued + w.running) * cfg.mean_latency() / cfg.concurrency > cfg.max_queue_time:
            st.worker["admission_rejected"] += 1
            return web.Response(status=429, text="estimated queue time exceeds max_queue_time")
        directives = payload.get("emulate", {}) if isinstance(payload, dict) else {}
        if not isinstance(directives, dict):
            directives = {}
        pid = payload_id(payload)
        assert w.sem is not None
        w.queued += 1
        acquired = False
        try:
            async with w.sem:
                w.queued -= 1
                w.running += 1
                acquired = True
                st.worker["executions"] += 1
                st.executions_by_payload[pid] += 1
                n_exec = st.executions_by_payload[pid]
                st.enter()
                started = time.perf_counter()
                try:
                    return await self._answer(request, w, ep, payload, directives, n_exec,
                                              reqnum)
                finally:
                    w.running -= 1
                    st.leave()
                    st.worker_seconds_by_payload[pid] = time.perf_counter() - started
        finally:
            if not acquired:  # the caller went away while queued
                w.queued -= 1

    async def _answer(self, request: web.Request, w: Worker, ep: Endpoint, payload: Any,
                      d: dict[str, Any], n_exec: int, reqnum: Any) -> web.StreamResponse:
        st, cfg = self.stats_data, ep.config
        if w.hang or d.get("hang") or (cfg.hang_rate and self.rng.random() < cfg.hang_rate):
            st.worker["hung"] += 1
            fut = asyncio.get_running_loop().create_future()
            self._hangs.add(fut)
            try:
                await fut  # never set: only the emulator's stop ends it
            finally:
                self._hangs.discard(fut)
        await asyncio.sleep(float(d["sleep"]) if "sleep" in d else draw_latency(cfg, self.rng))
        if "status" in d:
            status = int(d["status"])
            st.worker["succeeded" if status < 400 else "failed"] += 1
            return web.Response(status=status, text=f"emulated status {status}")
        if n_exec <= int(d.get("fail_times", 0)) or (
            cfg.failure_rate and self.rng.random() < cfg.failure_rate
        ):
            st.worker["failed"] += 1
            return web.Response(status=500, text="Internal Server Error (emulated)")
        st.worker["succeeded"] += 1
        if "text" in d:
            return web.Response(text=str(d["text"]), content_type="text/plain")
        answer: dict[str, Any] = {"ok": True, "endpoint": ep.name, "path": request.path,
                                  "worker": w.url, "reqnum": reqnum, "payload": payload}
        if "size" in d:
            answer["padding"] = "x" * max(0, int(d["size"]))
        return web.json_response(answer)

    # --- control ---------------------------------------------------------------------

    async def _stats(self) -> dict[str, Any]:
        snap = self.stats_data.snapshot()
        snap["endpoints"] = {
            name: {**ep.counts(), "status": ep.status_text(), "pending": len(ep.pending),
                   "outstanding": sum(w.outstanding for w in ep.workers)}
            for name, ep in self.endpoints.items()
        }
        return snap

    async def handle_stats(self, request: web.Request) -> web.Response:
        return web.json_response(await self._stats())

    async def handle_health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "pid": os.getpid()})

    async def handle_config(self, request: web.Request) -> web.Response:
        try:
            patch = await request.json()
            if not isinstance(patch, dict):
                raise ConfigError("config patch must be a JSON object")
            await self.apply(patch)
        except (ValueError, TypeError) as e:
            return _json_error(400, str(e))
        return web.json_response({"ok": True})
