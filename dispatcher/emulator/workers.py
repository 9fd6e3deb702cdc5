"""The emulated GPU workers: their lifecycle and their HTTP side.

Each worker is its own aiohttp site on its own loopback port, bound when the endpoint is
created. A stopped worker keeps the port bound but does not listen, so a client gets
"connection refused", as from a Vast instance that is gone; stopping a worker also
resets every connection it had, so requests in flight die as they do on a real instance.

The request path is a PyWorker's: JSON with ``auth_data`` and ``payload``, and the
``auth_data`` fields it requires (else 422, in PyWorker's JSON shape), the signature (else
401, empty body), admission control on estimated queue time (else 429), then the work
itself, FIFO or in parallel, answered at once or streamed (``answers``). A client that
disconnects cancels its request, queued or running, as Vast's worker does; that is counted as
the client leaving unless the worker's generation moved (it was stopped under the request).

Stricter than Vast (docs/emulator.md), each switchable per endpoint: a ``reqnum`` already
used, or an ``auth_data`` that is not the assignment issued to this worker, verbatim
(compared as canonical JSON, so key order does not count), is a 401 too. The records are
found by the received text itself, so the check costs one ``json.dumps`` and a lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from typing import Any

from aiohttp import web

from dispatcher.emulator import answers
from dispatcher.emulator.answers import Answer, reset
from dispatcher.emulator.config import ConfigError
from dispatcher.emulator.directives import parse_directives
from dispatcher.emulator.fleet import (
    ASSIGNMENT_FIELDS,
    LOADING,
    READY,
    REQUIRED_AUTH,
    STOPPED,
    Endpoint,
    Fleet,
    Issued,
    Worker,
    canonical,
    draw_latency,
    now,
    payload_id,
)
from dispatcher.emulator.streams import resolve

__all__ = ["BACKLOG", "MAX_BODY", "Workers", "bind_port", "reset"]

log = logging.getLogger("dispatcher.emulator")

BACKLOG = 4096
MAX_BODY = 64 * 1024 * 1024
REASON_HEADER = "X-Emulator-Reason"  # why a worker refused: not something Vast sends


def bind_port(port: int = 0) -> socket.socket:
    """A loopback socket bound to ``port`` but not listening: connections are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text)


def _refused(reason: str) -> web.Response:
    """PyWorker's 401: an empty body. The reason goes in a header, for people debugging."""
    return web.Response(status=401, headers={REASON_HEADER: reason})


def _tamper_reason(w: Worker, auth: dict[str, Any], rec: Issued | None, replayed: bool) -> str:
    if replayed:
        return f"an edited copy of an assignment already used (reqnum {auth.get('reqnum')})"
    if rec is None:
        return "not an assignment this emulator issued (or issued over an hour ago)"
    if rec.worker is not w:
        return f"assignment issued to another worker ({rec.worker.url})"
    issued = rec.answer
    added = sorted(set(auth) - set(issued))
    dropped = sorted(set(issued) - set(auth))
    changed = sorted(k for k in set(auth) & set(issued)
                     if canonical(auth[k]) != canonical(issued[k]))
    parts = [f"{what} {names}" for what, names in
             (("added", added), ("dropped", dropped), ("changed", changed)) if names]
    return "auth_data is not the assignment issued, verbatim: " + "; ".join(parts)


class Workers:
    """Starts and stops workers, and answers their requests."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- lifecycle -------------------------------------------------------------------

    async def resize(self, ep: Endpoint) -> None:
        """Give the endpoint exactly ``worker_limit`` workers, each with a bound port."""
        limit = ep.config.worker_limit
        while len(ep.workers) < limit:
            sock = bind_port()
            index = len(ep.workers)
            ctx = (self.fleet.worker_tls().server_context(f"{ep.name} worker {index}")
                   if ep.config.tls else None)
            w = Worker(ep, index, sock, sock.getsockname()[1], ssl_context=ctx)
            app = web.Application(client_max_size=MAX_BODY)

            async def handler(request: web.Request, w: Worker = w) -> web.StreamResponse:
                return await self.handle(request, w)

            app.router.add_route("*", "/{tail:.*}", handler)
            w.runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     handler_cancellation=True, shutdown_timeout=1.0)
            await w.runner.setup()
            ep.workers.append(w)
        while len(ep.workers) > limit:
            await self.discard(ep.workers.pop())

    def start_cold(self, w: Worker, seconds: float) -> None:
        """Begin loading a stopped worker; it becomes routable after ``seconds``."""
        if w.state != STOPPED:
            return
        w.state = LOADING
        w.generation += 1
        loop = asyncio.get_running_loop()
        w.timer = loop.call_later(max(0.0, seconds), self._open_later, w, w.generation)

    async def start_now(self, w: Worker) -> None:
        """Make a stopped or loading worker ready at once."""
        if w.state == READY:
            return
        if w.timer is not None:
            w.timer.cancel()
        if w.state == STOPPED:
            w.state = LOADING
            w.generation += 1
        await self.open(w, w.generation)

    async def open(self, w: Worker, generation: int) -> None:
        """LOADING -> READY: listen on the worker's port (unless it was stopped meanwhile)."""
        if w.state != LOADING or w.generation != generation or w.opening:
            return
        w.timer = None
        w.opening = True
        try:
            if w.sock is None:
                w.sock = bind_port(w.port)
            site = web.SockSite(w.runner, w.sock, backlog=BACKLOG,  # type: ignore[arg-type]
                                ssl_context=w.ssl_context)
            await site.start()
        except OSError as e:
            log.warning("emulator: worker %s cannot listen on port %d: %s", w.url, w.port, e)
            w.state = STOPPED
            w.generation += 1
            return
        finally:
            w.opening = False
        w.sock = None  # the site owns it now
        if w.state != LOADING or w.generation != generation:  # stopped while opening
            with contextlib.suppress(RuntimeError):  # already unregistered by a discard
                await site.stop()
            if not w.gone:
                w.sock = self._rebind(w)
            return
        w.site = site
        w.state = READY
        w.generation += 1
        w.last_active = now()
        w.warmup_left = w.endpoint.config.warmup_errors

    async def stop(self, w: Worker) -> None:
        """Any state -> STOPPED: refuse new connections, reset the open ones."""
        if w.timer is not None:
            w.timer.cancel()
            w.timer = None
        w.state = STOPPED
        w.generation += 1
        w.expected.clear()
        server = w.runner.server if w.runner is not None else None
        for conn in server.connections if server is not None else ():
            reset(conn.transport)  # in-flight handlers are cancelled when it is lost
        if w.site is not None:
            site, w.site = w.site, None
            await site.stop()  # closes the listening socket
            if not w.gone:
                w.sock = self._rebind(w)

    async def discard(self, w: Worker) -> None:
        """Stop a worker for good and release its port."""
        w.gone = True
        await self.stop(w)
        if w.runner is not None:
            await w.runner.cleanup()
            w.runner = None
        if w.sock is not None:
            w.sock.close()
            w.sock = None

    def _rebind(self, w: Worker) -> socket.socket | None:
        try:
            return bind_port(w.port)
        except OSError as e:  # someone took the port meanwhile; the next start retries
            log.warning("emulator: cannot re-reserve port %d of %s: %s", w.port, w.url, e)
            return None

    def _open_later(self, w: Worker, generation: int) -> None:
        task = asyncio.get_running_loop().create_task(self.open(w, generation))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- requests --------------------------------------------------------------------

    async def handle(self, request: web.Request, w: Worker) -> web.StreamResponse:
        if w.state != READY:  # a kept-alive connection to a worker stopped since
            reset(request.transport)
            return _text(503, "worker stopped")
        st = self.fleet.stats
        ep = w.endpoint
        cfg = ep.config
        try:
            body = await request.json()
        except ValueError:
            st.worker["malformed"] += 1
            return web.json_response({"error": "invalid JSON"}, status=422)
        errors: dict[str, Any] = {}
        directives: dict[str, Any] = {}
        auth = body.get("auth_data") if isinstance(body, dict) else None
        if not isinstance(body, dict):
            errors["error"] = "request body must be a JSON object"
        elif "auth_data" not in body:
            errors["auth_data"] = "field missing"
        elif not isinstance(auth, dict):
            errors["auth_data"] = "must be an object"
        text = canonical(auth) if isinstance(auth, dict) else ""
        exact = ep.issued.get(text) if auth is not None else None  # as issued, verbatim
        rec = exact
        reqnum = auth.get("reqnum") if isinstance(auth, dict) else None
        if not isinstance(reqnum, int) or isinstance(reqnum, bool):
            reqnum = None
        exact_replay = exact is None and hash(text) in ep.spent_texts
        replayed = exact_replay or (exact is None and reqnum in ep.spent_reqnums)
        if rec is None and reqnum is not None:
            rec = ep.issued_by_reqnum.get(reqnum)  # the same assignment, edited
        if isinstance(auth, dict):
            if rec is not None:
                required = rec.required
            elif exact_replay:  # a copy of one it accepted: what was missing then was issued so
                required = ()
            else:
                required = (REQUIRED_AUTH if cfg.answer_shape == "live"
                            else ASSIGNMENT_FIELDS["published"])
            missing = {f: "missing parameter" for f in required if f not in auth}
            if missing:
                errors["auth_data"] = missing
        if isinstance(body, dict):
            if "payload" not in body:
                errors["payload"] = "field missing"
            else:
                try:
                    directives = parse_directives(body["payload"])
                except ConfigError as e:
                    errors["payload"] = {"emulate": str(e)}
        if errors:
            st.worker["malformed"] += 1
            if exact is not None:
                self._release_slot(exact)
            return web.json_response(errors, status=422)
        assert isinstance(auth, dict)
        if w.warmup_left > 0:  # just started: the key or the model is not loaded yet
            w.warmup_left -= 1
            st.worker["warmup_rejected"] += 1
            if exact is not None:
                self._release_slot(exact)
            if (cfg.warmup_errors - w.warmup_left) % 2:
                return _refused("public key not loaded yet")
            return _text(500, "model not loaded yet")
        signed = rec is None or "signature" in rec.answer
        if signed and not self.fleet.key.verify(auth.get("url"), auth.get("signature")):
            st.worker["rejected_signature"] += 1
            return _refused("signature verification failed")
        if replayed and cfg.reject_replay:
            st.worker["rejected_replay"] += 1
            return _refused(f"reqnum {reqnum} already used")
        if cfg.reject_tampered and not exact_replay and (exact is None or exact.worker is not w):
            st.worker["rejected_tampered"] += 1
            return _refused(_tamper_reason(w, auth, rec, replayed))
        if exact is not None:
            ep.spend(exact)
            exact.worker.expected.pop(exact.reqnum, None)
        elif reqnum is not None:
            ep.spent_reqnums.add(reqnum)
        w.last_active = now()
        gate = w.gate
        # Vast's worker: the work already here (queued and running) over its parallelism.
        if (gate.queued + gate.running) * cfg.mean_latency / cfg.concurrency > cfg.max_queue_time:
            st.worker["admission_rejected"] += 1
            return _text(429, "estimated queue time exceeds max_queue_time")
        return await self._execute(request, w, body["payload"], directives, reqnum)

    def _release_slot(self, rec: Issued) -> None:
        """A genuine assignment that arrived but was refused frees its slot at once."""
        rec.worker.expected.pop(rec.reqnum, None)

    async def _execute(self, request: web.Request, w: Worker, payload: Any,
                       directives: dict[str, Any], reqnum: Any) -> web.StreamResponse:
        st = self.fleet.stats
        pid = payload_id(payload)
        generation = w.generation  # bumped if the worker stops: then the client did not leave
        try:
            await w.gate.acquire()  # FIFO; cancelled here if the client leaves while queued
        except asyncio.CancelledError:
            if w.generation == generation:
                st.client_left(pid, queued=True)
            raise
        started = time.perf_counter()
        n_exec = st.execution_started(pid)
        try:
            return await self._answer(request, w, payload, directives, n_exec, reqnum, pid)
        except (asyncio.CancelledError, ConnectionError) as e:
            # The connection is gone: the client left (cancelled, or gone mid-write), or the
            # worker stopped and reset it. Either way the simulated work ends here.
            st.worker["cancelled"] += 1
            if w.generation == generation:
                st.client_left(pid, queued=False)
            if isinstance(e, asyncio.CancelledError):
                raise
            return web.Response()  # never sent: nobody is listening
        finally:
            w.gate.release()
            st.execution_ended(pid, time.perf_counter() - started)
            w.last_active = now()

    async def _answer(self, request: web.Request, w: Worker, payload: Any, d: dict[str, Any],
                      n_exec: int, reqnum: Any, pid: str) -> web.StreamResponse:
        st, cfg, rng = self.fleet.stats, w.endpoint.config, self.fleet.rng
        if w.hangs or d.get("hang") or (cfg.hang_rate and rng.random() < cfg.hang_rate):
            st.worker["hung"] += 1
            await asyncio.get_running_loop().create_future()  # ends only by cancellation
        await asyncio.sleep(d["sleep"] if "sleep" in d else draw_latency(cfg.latency, rng))
        ans: Answer | None = None
        if "status" in d and n_exec <= d.get("status_times", n_exec):
            status = d["status"]
            if "json" in d:
                ans = Answer(status, "application/json", d["json"])
            elif status in (204, 304):
                ans = Answer(status, None)
            else:
                ans = Answer(status, "text/plain", f"emulated status {status}".encode())
        elif n_exec <= d.get("fail_times", 0) or (
                cfg.failure_rate and rng.random() < cfg.failure_rate):
            ans = Answer(500, "text/plain", b"Internal Server Error (emulated)")
        elif not d:  # the common case, kept short: the echo, or the endpoint's stream
            if cfg.stream is None:
                st.worker["succeeded"] += 1
                return web.json_response(self._echo(request, w, payload, reqnum))
        elif "text" in d:
            ans = Answer(200, "text/plain", d["text"].encode())
        elif "nested" in d:
            st.worker["nested_answers"] += 1
            depth = d["nested"]["depth"]
            ans = Answer(200, "application/json", b"[" * depth + b"]" * depth)
        elif "huge" in d:
            st.worker["huge_answers"] += 1
            ans = Answer(200, "text/plain", huge=d["huge"]["bytes"],
                         chunked=d["huge"]["chunked"])
        elif "size" in d:
            answer = self._echo(request, w, payload, reqnum)
            pad = d["size"] - len(json.dumps(answer)) - len(',"padding":""')
            answer["padding"] = "x" * max(0, pad)
            ans = Answer(200, "application/json", json.dumps(answer).encode())
        if ans is None:  # a success: streamed, unless a directive says how to answer instead
            settings = None if any(k in d for k in ("drip", "body_drip", "cut")) else resolve(
                cfg.stream, d.get("stream"))
            if settings is not None:
                st.worker["streams"] += 1
                resp, dropped = await answers.send_stream(request, pid, settings, st.piece_sent)
                st.worker["streams_dropped" if dropped else "streams_completed"] += 1
                if not dropped:
                    st.worker["succeeded"] += 1
                return resp
            body = json.dumps(self._echo(request, w, payload, reqnum)).encode()
            ans = Answer(200, "application/json", body)
        return await self._send(request, ans, d)

    async def _send(self, request: web.Request, ans: Answer,
                    d: dict[str, Any]) -> web.StreamResponse:
        """Send as the directives say, counting the outcome once the last byte is out."""
        st = self.fleet.stats
        if "cut" in d:
            st.worker["cut_answers"] += 1
            return await answers.send_cut(request, ans, d["cut"]["fraction"])
        if "drip" in d:
            st.worker["dripped"] += 1
            resp = await answers.send_drip(request, ans, d["drip"]["interval"],
                                           d["drip"]["count"])
        elif "body_drip" in d:
            st.worker["body_dripped"] += 1
            resp = await answers.send_body_drip(request, ans, d["body_drip"]["interval"])
        else:
            resp = await answers.send(request, ans)
        st.worker["succeeded" if ans.status < 400 else "failed"] += 1
        return resp

    @staticmethod
    def _echo(request: web.Request, w: Worker, payload: Any, reqnum: Any) -> dict[str, Any]:
        return {"ok": True, "endpoint": w.endpoint.name, "path": request.path,
                "worker": w.url, "reqnum": reqnum, "payload": payload}
