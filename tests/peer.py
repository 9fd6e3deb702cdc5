"""A real HTTP peer on loopback that plays scripted answers, hostile ones included.

Tests point a route URL, a worker URL or a webhook at ``peer.url`` and script what it
says: a status and a body, a slow drip of headers or body bytes, a reset before any
answer, a body cut short, a huge or deeply nested answer. It records every request.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: bytes | str | Any = b""  # bytes/str as is; anything else is sent as JSON
    content_type: str | None = None  # default: JSON for non-bytes bodies, else none
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False
    length: int | None = None  # a Content-Length to announce (default: the body's)
    delay: float = 0.0  # before the status line
    header_drip: float = 0.0  # one header line per this many seconds, 30 lines
    drip: float = 0.0  # seconds between body bytes
    reset: bool = False  # a TCP reset and no answer
    cut_after: int | None = None  # send this many body bytes, then close

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()

    def ctype(self) -> str | None:
        if self.content_type is not None:
            return self.content_type
        return None if isinstance(self.body, bytes | str) else "application/json"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    port: int

    def json(self) -> Any:
        return json.loads(self.body)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    peer: Peer

    def do_POST(self) -> None:  # noqa: N802
        self._serve()

    def do_GET(self) -> None:  # noqa: N802
        self._serve()

    def _serve(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        peer = self.peer
        with peer.lock:
            peer.seen.append(Seen(self.command, self.path, dict(self.headers), body,
                                  self.client_address[1]))
            reply = peer.replies.pop(0) if peer.replies else peer.default
        if reply.delay:
            time.sleep(reply.delay)
        if reply.reset:
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.connection.close()
            return
        data = reply.payload()
        lines = [f"HTTP/1.1 {reply.status} X\r\n"]
        if reply.ctype():
            lines.append(f"Content-Type: {reply.ctype()}\r\n")
        for k, v in reply.headers.items():
            lines.append(f"{k}: {v}\r\n")
        if reply.chunked:
            lines.append("Transfer-Encoding: chunked\r\n")
        else:
            length = reply.length if reply.length is not None else len(data)
            lines.append(f"Content-Length: {length}\r\n")
        try:
            if reply.header_drip:
                self._write(lines[0].encode())
                for i in range(30):
                    self._write(f"X-Drip-{i}: {'d' * 10}\r\n".encode())
                    time.sleep(reply.header_drip)
                lines = lines[1:]
            self._write("".join(lines).encode() + b"\r\n")
            if reply.cut_after is not None:
                self._write(data[: reply.cut_after])
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            if reply.chunked:
                for i in range(0, len(data), 1000):
                    piece = data[i:i + 1000]
                    self._write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self._write(b"0\r\n\r\n")
            elif reply.drip:
                for i in range(len(data)):
                    self._write(data[i:i + 1])
                    time.sleep(reply.drip)
            else:
                self._write(data)
        except OSError:
            self.close_connection = True

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # resets and cut connections are what these peers are for


class Peer:
    def __init__(self, tls_context: Any = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self.replies: list[Reply] = []
        self.default = Reply(body={})
        handler = type("Handler", (_Handler,), {"peer": self})
        self.server = _Server((host, port), handler)
        scheme = "http"
        if tls_context is not None:
            self.server.socket = tls_context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.port = self.server.server_port
        self.url = f"{scheme}://{host}:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def reply(self, **kw: Any) -> Peer:
        """The answer to every request from now on (``Reply`` fields)."""
        with self.lock:
            self.default = Reply(**kw)
            self.replies.clear()
        return self

    def then(self, *replies: Reply) -> Peer:
        """Answers for the next requests, in order, before the default one."""
        with self.lock:
            self.replies.extend(replies)
        return self

    def clear(self) -> None:
        with self.lock:
            self.seen.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def peer(tls_context: Any = None, host: str = "127.0.0.1", port: int = 0) -> Iterator[Peer]:
    p = Peer(tls_context, host, port)
    try:
        yield p
    finally:
        p.close()
