"""The ``Emulator``: one asyncio loop in a daemon thread serving the route API, the
PyWorker control plane (``/pubkey/``, ``/worker_status/``, ``/delete_requests/``), the
control API and every simulated worker, with a thread-safe handle for tests.

Control (no auth: it is a local test tool):
``GET /_emulator/stats``, ``GET /_emulator/health``, ``GET /_emulator/config``,
``GET /_emulator/ca.pem`` and ``POST /_emulator/config`` (a partial config, or an ``action``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import resource
import socket
import threading
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from aiohttp import web

from dispatcher.emulator.config import ConfigError, EmulatorConfig, EndpointConfig, check_integer
from dispatcher.emulator.controlplane import ControlPlane
from dispatcher.emulator.fleet import LOADING, READY, STOPPED, Endpoint, Fleet, now
from dispatcher.emulator.router import Router
from dispatcher.emulator.scripts import parse_script
from dispatcher.emulator.signing import give_back, take_key
from dispatcher.emulator.tls import WorkerTLS
from dispatcher.emulator.workers import BACKLOG, MAX_BODY, Workers

log = logging.getLogger("dispatcher.emulator")
T = TypeVar("T")
TICK = 0.05  # housekeeping period: assignment expiry, scale to zero
PENDING_SWEEP = 0.25  # pending demand lives ~60 s: no need to scan it every tick
CALL_TIMEOUT = 30.0
ISSUED_RETENTION = 3600.0  # records of assignments never used are dropped after this
FIXED_AT_START = ("workers_from", "tls")  # endpoint fields a patch cannot change
ACTIONS = ("stop_all", "cold_start", "start", "reset_stats", "rotate_key", "script_route")


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: thousands of open requests need the fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _listen_socket(host: str, port: int) -> socket.socket:
    """Bound in the caller's thread, so "port in use" raises from ``start()`` itself."""
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                flags=socket.AI_PASSIVE)[0][0]
    sock = socket.create_server((host, port), family=family, backlog=BACKLOG,
                                dualstack_ipv6=False)
    sock.setblocking(False)
    return sock


class Emulator:
    """A local Vast Serverless: ``with Emulator(config) as vast: vast.route_url``."""

    def __init__(self, config: EmulatorConfig | Mapping[str, Any] | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        if config is None:
            config = EmulatorConfig()
        elif not isinstance(config, EmulatorConfig):
            config = EmulatorConfig.from_dict(config)
        self.host = host
        self.port = port
        self.fleet = Fleet(config, random.Random(config.seed), take_key())
        self.workers = Workers(self.fleet)
        self.router = Router(self.fleet, self.workers)
        self.control_plane = ControlPlane(self.fleet)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._apply_lock = asyncio.Lock()  # patches that add endpoints must not interleave
        self._next_pending_sweep = 0.0
        self._key_given_back = False

    # --- public, thread-safe ---------------------------------------------------------

    @property
    def config(self) -> EmulatorConfig:
        return self.fleet.config

    @property
    def url(self) -> str:
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def route_url(self) -> str:
        return self.url + "/route/"

    @property
    def api_key(self) -> str:
        return self.fleet.config.api_key

    @property
    def ca_pem(self) -> str:
        """The root CA of HTTPS workers (``tls: true``), PEM, as at ``GET /_emulator/ca.pem``."""
        return self._tls().ca_pem.decode()

    @property
    def ca_path(self) -> str:
        """A file holding ``ca_pem`` until the emulator stops (for ``VAST_CA_BUNDLE``)."""
        return str(self._tls().ca_path)

    def _tls(self) -> WorkerTLS:
        if self._key_given_back:  # stopped: a new root now would never be cleaned up
            raise RuntimeError("emulator not running")
        return self.fleet.worker_tls()

    @property
    def pubkey_pem(self) -> str:
        """The RSA public key assignments are signed with, as served at ``GET /pubkey/``."""
        return self.fleet.key.public_pem.decode()

    def start(self) -> Emulator:
        """Listen, start the initially ready workers, and return once they answer."""
        if self._loop is not None:
            raise RuntimeError("emulator already started")
        raise_fd_limit()
        if self._key_given_back:  # started again: the old key may be another's by now
            self.fleet.key = take_key()
            self._key_given_back = False
        sock = _listen_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="vast-emulator",
                                        daemon=True)
        self._thread.start()
        try:
            self._call(self._astart(sock))
        except BaseException:
            sock.close()
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close every socket, end the loop and join its thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        try:
            if loop.is_running():
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(self._astop(), loop).result(CALL_TIMEOUT)
                loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join(CALL_TIMEOUT)
        finally:
            if thread is None or not thread.is_alive():
                loop.close()
            self._loop = self._thread = None
            give_back(self.fleet.key)
            self._key_given_back = True
            if self.fleet.tls is not None:
                self.fleet.tls.close()
                self.fleet.tls = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        """The ground truth: see ``dispatcher.emulator.stats`` and the package docstring."""
        return self._call(self._stats())

    def configure(self, patch: Mapping[str, Any]) -> None:
        """Same as ``POST /_emulator/config``; raises ConfigError for a bad patch."""
        self._call(self._apply(patch))

    def script_route(self, endpoint: str, answers: list[dict[str, Any]]) -> None:
        """The next route calls for ``endpoint`` answer these, in order (see ``scripts``);
        replaces any answers left from an earlier script, ``[]`` clears it."""
        self.configure({"action": "script_route", "endpoint": endpoint, "answers": answers})

    def worker_urls(self, endpoint: str) -> list[str]:
        """Every worker's url, stopped ones included (their ports are reserved)."""
        async def urls() -> list[str]:
            ep = self.fleet.endpoints.get(endpoint)
            if ep is None:
                raise ConfigError(f"endpoint: unknown endpoint {endpoint!r}")
            return [w.url for w in ep.workers]

        return self._call(urls())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("emulator not running")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("blocking emulator call from its own loop")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(CALL_TIMEOUT)

    # --- on the loop -------------------------------------------------------------------

    async def _astart(self, sock: socket.socket) -> None:
        for name, cfg in self.fleet.config.endpoints.items():
            await self._add_endpoint(name, cfg)
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/route/", self.router.handle)
        app.router.add_post("/route", self.router.handle)
        app.router.add_get("/pubkey/", self._http_pubkey)
        app.router.add_get("/pubkey", self._http_pubkey)
        for path in ("/worker_status/", "/worker_status"):
            app.router.add_post(path, self.control_plane.worker_status)
        for path in ("/delete_requests/", "/delete_requests"):
            app.router.add_post(path, self.control_plane.delete_requests)
        app.router.add_get("/_emulator/ca.pem", self._http_ca)
        app.router.add_get("/_emulator/stats", self._http_stats)
        app.router.add_get("/_emulator/health", self._http_health)
        app.router.add_get("/_emulator/config", self._http_get_config)
        app.router.add_post("/_emulator/config", self._http_config)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, backlog=BACKLOG).start()
        self._housekeeping = asyncio.get_running_loop().create_task(self._tick())

    async def _astop(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        for ep in self.fleet.endpoints.values():
            for w in ep.workers:
                await self.workers.discard(w)
        if self._runner is not None:
            await self._runner.cleanup()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        loop = asyncio.get_running_loop()
        await loop.shutdown_asyncgens()
        await loop.shutdown_default_executor()

    async def _add_endpoint(self, name: str, cfg: EndpointConfig) -> None:
        ep = Endpoint(name, cfg)
        await self.workers.resize(ep)
        for w in ep.workers[: cfg.workers]:
            await self.workers.start_now(w)
        self.fleet.endpoints[name] = ep  # routable only once its ready workers listen

    async def _tick(self) -> None:
        """Expire unused assignments and stale demand; stop idle workers (scale to zero)."""
        while True:
            await asyncio.sleep(TICK)
            try:
                await self._housekeep(now())
            except Exception:  # keep ticking: a bug here must not freeze the fleet
                log.exception("emulator: housekeeping failed")

    async def _housekeep(self, t: float) -> None:
        sweep = t >= self._next_pending_sweep
        if sweep:
            self._next_pending_sweep = t + PENDING_SWEEP
        for ep in list(self.fleet.endpoints.values()):
            if sweep and ep.pending:
                for idx in [i for i, expiry in ep.pending.items() if expiry <= t]:
                    del ep.pending[idx]
            if sweep:
                ep.forget_issued_before(t - ISSUED_RETENTION)
                for pw in ep.pyworkers.values():
                    if pw.outstanding:
                        pw.expire(t)
            idle_limit = ep.config.inactivity_timeout
            for w in list(ep.workers):
                expected = w.expected
                while expected:  # in assignment order
                    reqnum = next(iter(expected))
                    if expected[reqnum] > t:
                        break
                    del expected[reqnum]
                if (idle_limit is not None and w.state == READY and w.outstanding == 0
                        and t - w.last_active >= idle_limit):
                    await self.workers.stop(w)

    async def _apply(self, patch: Mapping[str, Any]) -> None:
        """A partial config (validated whole before anything changes) or an action."""
        if not isinstance(patch, Mapping):
            raise ConfigError(f"config patch: must be an object, got {patch!r}")
        async with self._apply_lock:
            if "action" in patch:
                await self._action(dict(patch))
            else:
                await self._patch(patch)

    async def _patch(self, patch: Mapping[str, Any]) -> None:
        fleet = self.fleet
        new = fleet.config.patched(patch)
        for name in patch.get("endpoints") or {}:
            old = fleet.config.endpoints.get(name)
            for fixed in FIXED_AT_START:
                if old is not None and getattr(old, fixed) != getattr(new.endpoints[name], fixed):
                    raise ConfigError(f"endpoints.{name}.{fixed}: cannot change on a running "
                                      f"endpoint; add another endpoint instead")
        fleet.config = new
        if "seed" in patch and new.seed is not None:
            fleet.rng.seed(new.seed)
        if "rate_limit" in patch:
            self.router.buckets.clear()
        for name, fields_ in (patch.get("endpoints") or {}).items():
            cfg = new.endpoints[name]
            ep = fleet.endpoints.get(name)
            if ep is None:
                await self._add_endpoint(name, cfg)
                continue
            ep.config = cfg
            await self.workers.resize(ep)
            for w in ep.workers:
                w.gate.wake()  # a raised concurrency lets queued requests run
            if "workers" in fields_:  # at least that many ready, now
                missing = cfg.workers - sum(1 for w in ep.workers if w.state == READY)
                waiting = [w for w in ep.workers if w.state == LOADING]
                waiting += [w for w in ep.workers if w.state == STOPPED]
                for w in waiting[: max(0, missing)]:
                    await self.workers.start_now(w)

    async def _action(self, args: dict[str, Any]) -> None:
        action = args.pop("action")
        if action not in ACTIONS:
            raise ConfigError(f"action: unknown action {action!r}; known: {list(ACTIONS)}")
        if action == "reset_stats":
            self.fleet.stats.reset()
            return
        if action == "rotate_key":  # as if Vast changed its key: PyWorkers holding the old 401
            if args:
                raise ConfigError(f"action rotate_key: unknown field(s) {sorted(args)}")
            self.fleet.key = take_key()  # the old one is dropped: PyWorkers may hold it
            return
        allowed = {"cold_start": {"endpoint", "seconds"}, "start": {"endpoint", "count"},
                   "script_route": {"endpoint", "answers"}}.get(action, {"endpoint"})
        unknown = sorted(set(args) - allowed)
        if unknown:
            raise ConfigError(f"action {action}: unknown field(s) {unknown}")
        name = args.get("endpoint")
        ep = self.fleet.endpoints.get(name) if isinstance(name, str) else None
        if ep is None:
            raise ConfigError(f"endpoint: unknown endpoint {name!r}")
        if action == "script_route":
            if "answers" not in args:
                raise ConfigError("answers: required for script_route")
            ep.script.clear()
            ep.script.extend(parse_script(args["answers"], ep.config.answer_shape))
            return
        if action == "start":
            count = check_integer("count", args.get("count", 1))
            for w in [w for w in ep.workers if w.state == STOPPED][:count]:
                if ep.config.cold_start > 0:
                    self.workers.start_cold(w, ep.config.cold_start)
                else:
                    await self.workers.start_now(w)
            return
        if action == "cold_start":
            seconds = args.get("seconds", ep.config.cold_start)
            self.fleet.config = self.fleet.config.patched(
                {"endpoints": {ep.name: {"cold_start": seconds}}})
            ep.config = self.fleet.config.endpoints[ep.name]
        for w in ep.workers:  # stop_all and cold_start
            await self.workers.stop(w)

    async def _stats(self) -> dict[str, Any]:
        snap = self.fleet.stats.snapshot()
        t = now()
        snap["endpoints"] = {}
        for name, ep in self.fleet.endpoints.items():
            workers: list[Any] = list(ep.pyworkers.values()) if ep.real_workers else ep.workers
            snap["endpoints"][name] = {
                **ep.counts(), "status": ep.status_text(), "pending": len(ep.pending),
                "outstanding": sum(w.outstanding for w in workers),
                "queued": sum(w.gate.queued for w in ep.workers),
                "running": sum(w.gate.running for w in ep.workers),
                "scripted_left": len(ep.script)}
            if ep.real_workers:
                snap["endpoints"][name]["pyworkers"] = [pw.snapshot(t) for pw in workers]
        return snap

    # --- control HTTP ----------------------------------------------------------------

    async def _http_stats(self, request: web.Request) -> web.Response:
        return web.json_response(await self._stats())

    async def _http_ca(self, request: web.Request) -> web.Response:
        return web.Response(body=self.fleet.worker_tls().ca_pem,
                            content_type="application/x-pem-file")

    async def _http_pubkey(self, request: web.Request) -> web.Response:
        return web.Response(body=self.fleet.key.public_pem, content_type="text/plain")

    async def _http_health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "pid": os.getpid()})

    async def _http_get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.fleet.config.redacted())

    async def _http_config(self, request: web.Request) -> web.Response:
        try:
            await self._apply(await request.json())
        except (ValueError, TypeError) as e:  # ConfigError, bad JSON, a value of a wrong type
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response({"ok": True})
