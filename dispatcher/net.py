"""HTTP/1.1 exchanges on connections we own, each with a hard deadline.

Why not a stock client: a peer that drips one byte a second never trips a
per-``recv`` read timeout, so a GPU call, a route call or a webhook could stay
open far past its deadline. Here every exchange is watched by one process-wide
``Watchdog`` thread that shuts the socket at the deadline (or at once, on
``Guard.abort``: a cancelled job), which ends any blocked read in the owner's
thread. The HTTP/1.1 framing is ours too, small and strict (one send per request;
Content-Length, chunked or close-delimited answers; a connection is reused only when
an answer ended exactly where its framing said): a stock client cost twice the CPU
per call on the hot path (measured in bench/). Connections are kept alive in a small
pool per origin; no environment (proxies, ``.netrc``) is ever read.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import select
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

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


class Headers(Mapping[str, str]):
    """An answer's headers, looked up without regard to case; repeats joined by ", "."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._d: dict[str, str] = {}
        for name, value in items:
            k = name.lower()
            self._d[k] = f"{self._d[k]}, {value}" if k in self._d else value

    def __getitem__(self, name: str) -> str:
        return self._d[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._d

    def get(self, name: str, default: str = "") -> str:  # type: ignore[override]
        """The value, or ``default`` ("" unless given): absent reads as empty."""
        return self._d.get(name.lower(), default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)


class Broken(Exception):
    """An answer that does not parse as HTTP/1.1 (or ended mid-way)."""


MAX_LINE = 16 * 1024  # a status, header or chunk-size line
MAX_HEAD = 64 * 1024  # all of an answer's headers
MAX_HEADERS = 200


class Conn:
    """One HTTP/1.1 connection: its socket and the bytes read ahead of the parser (kept
    here, not in a BufferedReader, so that a connection is reused only when nothing is
    left over: an answer must end where its framing says)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.closed = False

    def idle_ok(self) -> bool:
        """Still usable: the peer has neither closed it nor sent anything unasked."""
        if self.closed or self.buf:
            return False
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.close()

    def _fill(self) -> bool:
        data = self.sock.recv(64 * 1024)
        if not data:
            return False
        self.buf += data
        return True

    def readline(self) -> bytes:
        """A line with its end (b"" if the peer closed first); Broken if over MAX_LINE."""
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                line = bytes(self.buf[: i + 1])
                del self.buf[: i + 1]
                return line
            if len(self.buf) > MAX_LINE:
                raise Broken("a line of the answer is over 16 KiB")
            start = len(self.buf)
            if not self._fill():
                line = bytes(self.buf)
                self.buf.clear()
                return line

    def read1(self, amt: int) -> bytes:
        """What is buffered, or one receive: at most ``amt`` bytes, b"" at EOF."""
        if not self.buf and not self._fill():
            return b""
        data = bytes(self.buf[:amt])
        del self.buf[:amt]
        return data


def _read_head(conn: Conn) -> tuple[int, bool, Headers]:
    """The status, whether the connection may be kept, and the headers (1xx skipped)."""
    while True:
        line = conn.readline()
        if not line:
            raise Broken("closed without answering")
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 \
                or not parts[1].isdigit():
            raise Broken(f"not an HTTP/1.x status line: {line[:60]!r}")
        version, status = parts[0], int(parts[1])
        items: list[tuple[str, str]] = []
        size = 0
        while True:
            h = conn.readline()
            if not h:
                raise Broken("closed in the middle of the headers")
            if h in (b"\r\n", b"\n"):
                break
            size += len(h)
            if size > MAX_HEAD or len(items) >= MAX_HEADERS:
                raise Broken("the answer's headers are too large")
            if h[:1] in (b" ", b"\t"):
                raise Broken("folded header lines are not allowed")
            name, sep, value = h.decode("latin-1").partition(":")
            if not sep or not name or name != name.strip():
                raise Broken(f"a malformed header line: {h[:60]!r}")
            items.append((name, value.strip()))
        if 100 <= status < 200 and status != 101:
            continue  # 100 Continue and other informational answers: the real one follows
        headers = Headers(items)
        tokens = {t.strip().lower() for t in (headers.get("connection") or "").split(",")}
        keep = ("keep-alive" in tokens) if version == b"HTTP/1.0" else ("close" not in tokens)
        return status, keep, headers


class _Body:
    """Reads one answer's body as its framing says: Content-Length, chunked, or until the
    connection closes; decodes gzip/deflate if the peer sent it although asked not to."""

    def __init__(self, conn: Conn, method: str, status: int, headers: Headers) -> None:
        self.conn = conn
        self.left = 0
        self.chunked = False
        self.until_close = False
        self.done = False
        te = headers.get("transfer-encoding")
        length = headers.get("content-length")
        if method == "HEAD" or status in (204, 304):
            self.done = True
        elif te:
            codings = [c.strip().lower() for c in te.split(",")]
            if codings[-1] == "chunked":
                self.chunked = True
            else:
                self.until_close = True
        elif "content-length" in headers:
            values = {v.strip() for v in length.split(",")}
            if len(values) != 1 or not next(iter(values)).isdigit():
                raise Broken(f"a bad Content-Length: {length[:40]!r}")
            self.left = int(values.pop())
            self.done = self.left == 0
        else:
            self.until_close = True
        coding = (headers.get("content-encoding") or "identity").strip().lower()
        if coding in ("gzip", "x-gzip", "deflate"):
            self.decoder: Any = zlib.decompressobj(47 if coding != "deflate" else zlib.MAX_WBITS)
        elif coding == "identity":
            self.decoder = None
        else:
            raise Broken(f"an answer in {coding[:20]!r} encoding (identity was asked for)")

    def reusable(self) -> bool:
        return self.done and not self.until_close

    def read1(self, amt: int) -> bytes:
        if self.decoder is None:
            return self._raw(amt)
        d = self.decoder
        while True:
            if d.unconsumed_tail:
                out = d.decompress(d.unconsumed_tail, amt)
            else:
                data = self._raw(64 * 1024)
                out = d.decompress(data, amt) if data else d.flush()
                if not data and not out:
                    return b""
            if out:
                return bytes(out)

    def _raw(self, amt: int) -> bytes:
        if self.done:
            return b""
        r = self.conn
        if self.until_close:
            data = r.read1(amt)
            if not data:
                self.done = True
            return data
        if self.chunked:
            if self.left == 0:
                line = self.conn.readline()
                size = line.split(b";", 1)[0].strip()
                if not size or any(c not in b"0123456789abcdefABCDEF" for c in size):
                    raise Broken(f"a bad chunk size line: {line[:40]!r}")
                self.left = int(size, 16)
                if self.left == 0:  # the last chunk: trailers, then the blank line
                    while self.conn.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    self.done = True
                    return b""
            data = r.read1(min(amt, self.left))
            if not data:
                raise Broken("closed in the middle of a chunk")
            self.left -= len(data)
            if self.left == 0 and self.conn.readline() not in (b"\r\n", b"\n"):
                raise Broken("a chunk does not end with CRLF")
            return data
        data = r.read1(min(amt, self.left))
        if not data:
            raise Broken(f"closed with {self.left} bytes of the answer missing")
        self.left -= len(data)
        self.done = self.left == 0
        return data


@dataclass
class Exchange:
    """A request sent and its status line and headers read; the body is read in pieces."""

    status: int
    headers: Headers
    _body: _Body
    _keep: bool
    _conn: Conn
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
        else:
            with contextlib.suppress(OSError):
                self._conn.sock.settimeout(min(self._read_timeout, left))
        try:
            chunk = self._body.read1(amt)
        except (OSError, ValueError, Broken, zlib.error) as e:
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
        if g.fired == "deadline" or isinstance(e, TimeoutError):
            return NetError("deadline", "no full answer in time", sent=True, status=self.status)
        return NetError("broken", f"connection broke mid-answer ({describe(e)})", sent=True,
                        status=self.status)

    def close(self) -> None:
        """Return the connection for reuse if the answer was read to its end, else drop it."""
        self._guard.done()
        if self._ended and self._keep and self._body.reusable() and not self._guard.fired:
            self._pool._put(self._key, self._conn)
        else:
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
                      (ConnectionResetError, "connection reset"),
                      (ssl.SSLCertVerificationError, "certificate verification failed"),
                      (ssl.SSLError, "TLS error")):
        hit = next((x for x in chain if isinstance(x, cls)), None)
        if hit is not None:
            detail = getattr(hit, "verify_message", None) or (
                hit.strerror if isinstance(hit, OSError) and hit.strerror else "")
            return f"{text}: {detail}" if detail and cls in (
                ssl.SSLCertVerificationError, ssl.SSLError) else text
    if isinstance(e, Broken):
        return str(e)
    for x in reversed(chain):
        if isinstance(x, OSError) and x.strerror:
            return x.strerror[:120]
    return type(chain[-1]).__name__


def _request(method: str, target: Target, headers: Mapping[str, str], body: bytes | None
             ) -> bytes:
    """The request's bytes, sent with one sendall (head and body in one segment)."""
    lines = [f"{method} {target.path} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    if any(c in line for line in lines for c in "\r\n\0"):
        raise ValueError("a header or the path holds a line break")  # never sent
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


class Pool:
    """Keep-alive connections per origin (and TLS context), shared by all threads."""

    def __init__(self, per_origin: int = 64, user_agent: str = "vast-dispatcher") -> None:
        self.per_origin = max(1, per_origin)
        self.user_agent = user_agent
        self._idle: dict[tuple[object, ...], list[Conn]] = {}
        self._lock = threading.Lock()

    def _take(self, key: tuple[object, ...]) -> Conn | None:
        with self._lock:
            idle = self._idle.get(key)
            while idle:
                conn = idle.pop()
                if conn.idle_ok():  # not closed by the peer while idle
                    return conn
                conn.close()
        return None

    def _put(self, key: tuple[object, ...], conn: Conn) -> None:
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

    @staticmethod
    def _connect(t: Target, tls: ssl.SSLContext | None, timeout: float) -> Conn:
        sock = socket.create_connection((t.connect_host or t.host, t.port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if t.scheme == "https":
                # The TLS name is the URL's host, also when connecting to a pinned address.
                sock = (tls or default_tls()).wrap_socket(sock, server_hostname=t.host)
        except BaseException:
            sock.close()
            raise
        return Conn(sock)

    def exchange(self, method: str, target: Target, *, body: bytes | None,
                 headers: Mapping[str, str], guard: Guard, connect_timeout: float,
                 read_timeout: float, tls: ssl.SSLContext | None = None) -> Exchange:
        """Send the request and read the status line and headers, within ``guard``."""
        key = (target.scheme, target.host, target.port, target.connect_host, id(tls))
        all_headers = {"Host": target.host_header, "User-Agent": self.user_agent,
                       "Accept-Encoding": "identity", **headers}
        request = _request(method, target, all_headers, body)
        conn = self._take(key)
        sent = False
        try:
            if conn is None:
                try:
                    conn = self._connect(target, tls,
                                         max(0.001, min(connect_timeout, guard.left())))
                except TimeoutError as e:
                    raise NetError("connect_timeout", f"connect timed out ({describe(e)})",
                                   sent=False) from None
                except ssl.SSLError as e:
                    raise NetError("tls", describe(e), sent=False) from None
                except OSError as e:  # refused, DNS, no route
                    raise NetError("connect", describe(e), sent=False) from None
            guard.attach(conn.sock)
            conn.sock.settimeout(max(0.001, min(read_timeout, guard.left())))
            try:
                conn.sock.sendall(request)
                sent = True
                status, keep, answer_headers = _read_head(conn)
                answer = _Body(conn, method, status, answer_headers)
            except (OSError, ValueError, Broken) as e:
                if guard.fired == "aborted":
                    raise NetError("aborted", f"aborted: {guard.reason}", sent=sent) from None
                if guard.fired or isinstance(e, TimeoutError):
                    raise NetError("deadline", "no answer in time", sent=sent) from None
                raise NetError("connect" if not sent else "broken", describe(e),
                               sent=sent) from None
            if guard.fired:  # cut just as the headers ended: no answer either
                raise NetError("aborted" if guard.fired == "aborted" else "deadline",
                               f"aborted: {guard.reason}" if guard.fired == "aborted"
                               else "no answer in time", sent=True)
        except BaseException:
            guard.done()
            if conn is not None:
                conn.close()
            raise
        return Exchange(status, answer_headers, answer, keep, conn, guard, self, key,
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
