"""HTTP/1.1 exchanges on connections we own, each with a hard deadline.

Why not a stock client: a peer that drips one byte a second never trips a
per-``recv`` read timeout, so a GPU call, a route call or a webhook could stay
open far past its deadline. Here every exchange is watched by one process-wide
``Watchdog`` thread that shuts the socket at the deadline (or at once, on
``Guard.abort``: a cancelled job), which ends any blocked read in the owner's
thread. Connections are urllib3's (TLS, chunked bodies, decoding), kept alive
in a small pool per origin; no environment (proxies, ``.netrc``) is ever read.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import http.client
import itertools
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.response import HTTPResponse

FailKind = Literal["connect_timeout", "connect", "tls", "deadline", "aborted", "broken"]


class NetError(Exception):
    """An exchange that failed before a full answer. ``sent``: the request left us, so
    the peer may have acted on it. The message holds no URL query and no headers."""

    def __init__(self, kind: FailKind, message: str, *, sent: bool,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.sent = sent
        self.status = status  # set when the failure came after the status line


def _cut(sock: socket.socket | None) -> None:
    # socket.socket.shutdown, not SSLSocket.shutdown: the latter drops the SSL object
    # under a read in progress in the owner's thread; this only wakes that read.
    if sock is not None:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class Guard:
    """One exchange's deadline. Any thread may ``abort`` it; only the owner closes."""

    def __init__(self, deadline: float, watchdog: Watchdog | None = None) -> None:
        self.deadline = deadline
        self._watchdog = watchdog
        self.fired: Literal["deadline", "aborted"] | None = None
        self.reason = ""
        # The socket itself, not the connection: a close-delimited answer takes the
        # socket over from the connection (conn.sock is None then) and must be cut too.
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self.finished = False

    def attach(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            if self.fired:
                _cut(sock)

    def fire(self, why: Literal["deadline", "aborted"], reason: str = "") -> None:
        with self._lock:
            if self.finished or self.fired:
                return
            self.fired, self.reason = why, reason
            _cut(self._sock)

    def abort(self, reason: str) -> None:
        self.fire("aborted", reason)

    def done(self) -> None:
        with self._lock:
            if self.finished:
                return
            self.finished = True
            self._sock = None
        if self._watchdog is not None:
            self._watchdog.finished()

    def left(self) -> float:
        return self.deadline - time.monotonic()


class Watchdog:
    """Fires guards at their deadlines; one daemon thread, started on first use.

    Finished guards leave the heap lazily; it is rebuilt from the live ones whenever it
    holds more than twice as many, so its size follows the calls in flight, not the calls
    made within the longest timeout."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Guard]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._live = 0  # guards pushed and not finished

    def finished(self) -> None:
        with self._cond:
            self._live -= 1

    def guard(self, seconds: float) -> Guard:
        g = Guard(time.monotonic() + seconds, self)
        with self._cond:
            heap = self._heap
            self._live += 1
            if len(heap) > 2 * self._live + 64:
                heap[:] = [e for e in heap if not e[2].finished]
                heapq.heapify(heap)
            heapq.heappush(heap, (g.deadline, next(self._seq), g))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="dispatcher-watchdog",
                                                daemon=True)
                self._thread.start()
            elif heap[0][2] is g:
                self._cond.notify()
        return g

    def __len__(self) -> int:
        return len(self._heap)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][2].finished:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, _, g = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
            g.fire("deadline")
            g.done()  # fired: no longer live either way


WATCHDOG = Watchdog()


@dataclass(frozen=True)
class Target:
    """Where an exchange goes. ``connect_host`` pins the address (the checked one, for
    webhooks) while the URL's host stays the Host header and the TLS name."""

    scheme: str
    host: str
    port: int
    path: str  # path and query
    connect_host: str | None = None

    @classmethod
    def parse(cls, url: str, connect_host: str | None = None) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) URL with a host")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.scheme, parts.hostname, port, path, connect_host)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


@dataclass
class Exchange:
    """A request sent and its status line and headers read; the body is read in pieces."""

    status: int
    headers: Mapping[str, str]
    _resp: HTTPResponse
    _conn: HTTPConnection
    _sock: socket.socket | None
    _guard: Guard
    _pool: Pool
    _key: tuple[object, ...]
    _read_timeout: float
    _ended: bool = field(default=False)

    def read1(self, amt: int) -> bytes:
        """What has arrived, at most ``amt`` bytes (b"" at the end). Raises NetError."""
        left = self._guard.left()
        if left <= 0:
            self._guard.fire("deadline")
        elif self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.settimeout(min(self._read_timeout, left))
        try:
            chunk = self._resp.read1(amt)
        except (OSError, urllib3.exceptions.HTTPError, http.client.HTTPException) as e:
            raise self._failed(e) from None
        if self._guard.fired:
            raise self._failed(None)
        if not chunk:
            self._ended = True
        return chunk

    def _failed(self, e: BaseException | None) -> NetError:
        g = self._guard
        if g.fired == "aborted":
            return NetError("aborted", f"aborted: {g.reason}", sent=True, status=self.status)
        if g.fired == "deadline" or isinstance(e, TimeoutError
                                               | urllib3.exceptions.ReadTimeoutError):
            return NetError("deadline", "no full answer in time", sent=True, status=self.status)
        return NetError("broken", f"connection broke mid-answer ({describe(e)})", sent=True,
                        status=self.status)

    def close(self) -> None:
        """Return the connection for reuse if the answer was read to its end, else drop it."""
        self._guard.done()
        # A close-delimited answer took the socket over: conn.sock is None then.
        if self._ended and not self._guard.fired and self._conn.sock is not None:
            self._pool._put(self._key, self._conn)
        else:
            self._resp.close()
            self._conn.close()

    def __enter__(self) -> Exchange:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def describe(e: BaseException | None) -> str:
    """A short reason for a connection-level error: its innermost OS error if any."""
    if e is None:
        return "no answer"
    seen: set[int] = set()
    todo: list[BaseException] = [e]
    chain: list[BaseException] = []
    while todo:
        cur = todo.pop(0)
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        chain.append(cur)
        todo += [x for x in (getattr(cur, "reason", None), cur.__cause__, cur.__context__,
                             *cur.args) if isinstance(x, BaseException)]
    for cls, text in ((ConnectionRefusedError, "connection refused"),
                      (socket.gaierror, "DNS lookup failed"),
                      (http.client.RemoteDisconnected, "closed without answering"),
                      (ConnectionResetError, "connection reset"),
                      (ssl.SSLCertVerificationError, "certificate verification failed"),
                      (ssl.SSLError, "TLS error")):
        hit = next((x for x in chain if isinstance(x, cls)), None)
        if hit is not None:
            detail = getattr(hit, "verify_message", None) or (
                hit.strerror if isinstance(hit, OSError) and hit.strerror else "")
            return f"{text}: {detail}" if detail and cls in (
                ssl.SSLCertVerificationError, ssl.SSLError) else text
    for x in reversed(chain):
        if isinstance(x, OSError) and x.strerror:
            return x.strerror[:120]
    return type(chain[-1]).__name__


class Pool:
    """Keep-alive connections per origin (and TLS context), shared by all threads."""

    def __init__(self, per_origin: int = 64, user_agent: str = "vast-dispatcher") -> None:
        self.per_origin = max(1, per_origin)
        self.user_agent = user_agent
        self._idle: dict[tuple[object, ...], list[HTTPConnection]] = {}
        self._lock = threading.Lock()

    def _take(self, key: tuple[object, ...]) -> HTTPConnection | None:
        with self._lock:
            idle = self._idle.get(key)
            while idle:
                conn = idle.pop()
                if conn.is_connected:  # not closed by the peer while idle
                    return conn
                conn.close()
        return None

    def _put(self, key: tuple[object, ...], conn: HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.per_origin:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for c in conns:
                c.close()

    def _new(self, t: Target, tls: ssl.SSLContext | None, connect_timeout: float
             ) -> HTTPConnection:
        host = t.connect_host or t.host
        if t.scheme == "https":
            # The context checks the name (server_hostname); urllib3 would switch a shared
            # context's check_hostname off to do it itself if given assert_hostname.
            return HTTPSConnection(host, t.port, timeout=connect_timeout,
                                   ssl_context=tls or default_tls(), server_hostname=t.host)
        return HTTPConnection(host, t.port, timeout=connect_timeout)

    def exchange(self, method: str, target: Target, *, body: bytes | None,
                 headers: Mapping[str, str], guard: Guard, connect_timeout: float,
                 read_timeout: float, tls: ssl.SSLContext | None = None) -> Exchange:
        """Send the request and read the status line and headers, within ``guard``."""
        key = (target.scheme, target.host, target.port, target.connect_host, id(tls))
        conn = self._take(key)
        fresh = conn is None
        if conn is None:
            conn = self._new(target, tls, min(connect_timeout, max(0.001, guard.left())))
        sent = False
        try:
            if fresh:
                try:
                    conn.connect()
                except urllib3.exceptions.NewConnectionError as e:  # refused, DNS, no route
                    raise NetError("connect", describe(e), sent=False) from None
                except (TimeoutError, urllib3.exceptions.ConnectTimeoutError) as e:
                    raise NetError("connect_timeout", f"connect timed out ({describe(e)})",
                                   sent=False) from None
                except (ssl.SSLError, urllib3.exceptions.SSLError) as e:
                    raise NetError("tls", describe(e), sent=False) from None
                except (OSError, urllib3.exceptions.HTTPError) as e:
                    raise NetError("connect", describe(e), sent=False) from None
            sock = conn.sock
            guard.attach(sock)
            # urllib3 sets the socket to conn.timeout before reading the answer.
            conn.timeout = max(0.001, min(read_timeout, guard.left()))
            if sock is not None:
                sock.settimeout(conn.timeout)
            all_headers = {"Host": target.host_header, "User-Agent": self.user_agent,
                           "Accept-Encoding": "identity", **headers}
            try:
                conn.request(method, target.path, body=body, headers=all_headers,
                             preload_content=False, decode_content=True)
                sent = True
                resp = conn.getresponse()
            except (OSError, urllib3.exceptions.HTTPError, http.client.HTTPException) as e:
                if guard.fired == "aborted":
                    raise NetError("aborted", f"aborted: {guard.reason}", sent=sent) from None
                if guard.fired or isinstance(e, TimeoutError):
                    raise NetError("deadline", "no answer in time", sent=sent) from None
                raise NetError("connect" if not sent else "broken", describe(e),
                               sent=sent) from None
            # A cut in the middle of the headers reads as their end to http.client: an
            # answer whose headers the watchdog ended is no answer.
            if guard.fired == "aborted":
                raise NetError("aborted", f"aborted: {guard.reason}", sent=True)
            if guard.fired:
                raise NetError("deadline", "no answer in time", sent=True)
        except BaseException:
            guard.done()
            conn.close()
            raise
        return Exchange(resp.status, resp.headers, resp, conn, sock, guard, self, key,
                        read_timeout)


@functools.cache
def default_tls() -> ssl.SSLContext:
    """Public CAs (certifi's bundle, as requests uses), Python's own strictness."""
    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:  # pragma: no cover - requests brings certifi
        return ssl.create_default_context()


def worker_tls(ca_bundle: str | None, insecure: bool = False) -> ssl.SSLContext:
    """TLS for GPU workers: Vast's root CA (or the system's), chain and host verified.

    Vast's root certificate has a path length but no keyCertSign key usage, which
    OpenSSL's strict mode (VERIFY_X509_STRICT, the default on Python 3.13+) refuses.
    Only that flag is cleared, and only here: the route call and webhooks keep
    Python's defaults.
    """
    if insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else default_tls()
    ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return ctx


def read_all(ex: Exchange, limit: int, chunk: int = 64 * 1024) -> tuple[bytes, bool]:
    """The body, at most ``limit`` bytes; and whether it was longer (then cut there)."""
    parts: list[bytes] = []
    size = 0
    while True:
        piece = ex.read1(min(chunk, limit + 1 - size))
        if not piece:
            return b"".join(parts), False
        size += len(piece)
        if size > limit:
            parts.append(piece[: len(piece) - (size - limit)])
            return b"".join(parts), True
        parts.append(piece)
