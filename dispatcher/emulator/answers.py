"""How an emulated worker sends its answer: at once, streamed piece by piece, or as a
broken or hostile worker would (a drip of header lines, a drip of body bytes, a body cut
short, a huge body).

Everything that takes time is written from inside the handler, so the execution (its
slot, ``in_flight``) lasts until the last byte is handed to the connection. A client that
leaves shows up as a cancellation (aiohttp's ``handler_cancellation``) or, mid-write, as a
``ConnectionError``: callers count both as the client leaving.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web

from dispatcher.emulator.streams import CONTENT_TYPES, SSE_DONE, piece_bytes

CHUNK = 64 * 1024
WRITE_BUFFER_LIMIT = 1024 * 1024  # raw writes wait while more than this is unsent
_LINGER_RESET = struct.pack("ii", 1, 0)


def reset(transport: Any) -> None:
    """Drop a connection with a TCP reset and no HTTP answer."""
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass
    transport.abort()


@dataclass(slots=True)
class Answer:
    """A whole answer: status, content type and body (or a huge body made as it is sent)."""

    status: int
    content_type: str | None  # None: no body (204, 304)
    body: bytes = b""
    huge: int | None = None  # the body is this many b"x", never held in memory whole
    chunked: bool = False  # chunked transfer instead of a Content-Length

    @property
    def length(self) -> int:
        return self.huge if self.huge is not None else len(self.body)

    def chunks(self, stop: int | None = None) -> Iterator[bytes]:
        """The body's first ``stop`` bytes (all by default), at most CHUNK at a time."""
        end = self.length if stop is None else min(stop, self.length)
        if self.huge is None:
            for at in range(0, end, CHUNK):
                yield self.body[at:min(at + CHUNK, end)]
            return
        block = b"x" * CHUNK
        for at in range(0, end, CHUNK):
            yield block[: min(CHUNK, end - at)]

    def response(self) -> web.Response:
        """The answer sent at once, as aiohttp sends a response (a small body only)."""
        if self.content_type is None:
            return web.Response(status=self.status)
        return web.Response(status=self.status, body=self.body, content_type=self.content_type,
                            charset=_charset(self.content_type))

    def stream_response(self) -> web.StreamResponse:
        resp = web.StreamResponse(status=self.status)
        if self.content_type is not None:
            resp.content_type = self.content_type
            resp.charset = _charset(self.content_type)
        if not self.chunked:
            resp.content_length = self.length
        return resp


def _charset(content_type: str) -> str | None:
    return "utf-8" if content_type.startswith(("text/", "application/json")) else None


def _transport(request: web.Request) -> asyncio.Transport:
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the client closed the connection")
    return transport


async def _room(request: web.Request) -> None:
    """Raw writes: wait while the client has not read what was written."""
    while _transport(request).get_write_buffer_size() > WRITE_BUFFER_LIMIT:
        await asyncio.sleep(0.005)


async def _flushed(request: web.Request) -> None:
    """Wait until everything written is in the kernel (on loopback: with the client)."""
    while _transport(request).get_write_buffer_size() > 0:
        await asyncio.sleep(0.001)


async def send(request: web.Request, ans: Answer) -> web.StreamResponse:
    """The answer as it is, a huge body written chunk by chunk as the client reads it."""
    if ans.huge is None:
        return ans.response()
    resp = ans.stream_response()
    await resp.prepare(request)
    for chunk in ans.chunks():
        await resp.write(chunk)
    await resp.write_eof()
    return resp


async def send_body_drip(request: web.Request, ans: Answer,
                         interval: float) -> web.StreamResponse:
    """Status and headers at once, then the body one byte per ``interval``."""
    resp = ans.stream_response()
    await resp.prepare(request)
    for chunk in ans.chunks():
        for at in range(len(chunk)):
            await asyncio.sleep(interval)
            await resp.write(chunk[at:at + 1])
    await resp.write_eof()
    return resp


async def send_cut(request: web.Request, ans: Answer, fraction: float) -> web.StreamResponse:
    """The status and headers (announcing the whole length, or chunked), then the body's
    first ``fraction``, then the connection closes (FIN): no final chunk, a short body."""
    resp = ans.stream_response()
    await resp.prepare(request)
    for chunk in ans.chunks(int(ans.length * fraction)):
        await resp.write(chunk)
    _transport(request).close()  # sends what is buffered, then FIN
    return resp  # aiohttp's end of the answer finds the connection closed and stops


async def send_drip(request: web.Request, ans: Answer, interval: float,
                    count: int) -> web.StreamResponse:
    """The status line, then ``count`` header lines one per ``interval``, then the rest of
    the answer: a per-read timeout never trips. Written raw (aiohttp sends headers in one
    go), so the connection closes after it."""
    try:
        reason = HTTPStatus(ans.status).phrase
    except ValueError:
        reason = "Emulated"
    _transport(request).write(f"HTTP/1.1 {ans.status} {reason}\r\n".encode())
    for i in range(count):
        await asyncio.sleep(interval)
        _transport(request).write(f"X-Emulator-Drip: {i}\r\n".encode())
    head = ""
    if ans.content_type is not None:
        charset = _charset(ans.content_type)
        head += f"Content-Type: {ans.content_type}"
        head += f"; charset={charset}\r\n" if charset else "\r\n"
    head += "Transfer-Encoding: chunked\r\n" if ans.chunked else f"Content-Length: {ans.length}\r\n"
    _transport(request).write(f"{head}Connection: close\r\n\r\n".encode())
    for chunk in ans.chunks():
        data = b"%x\r\n%b\r\n" % (len(chunk), chunk) if ans.chunked else chunk
        _transport(request).write(data)
        await _room(request)
    if ans.chunked:
        _transport(request).write(b"0\r\n\r\n")
    _transport(request).close()
    return web.Response()  # never sent: aiohttp finds the connection closed


async def send_stream(request: web.Request, pid: str, settings: dict[str, Any],
                      on_piece: Any) -> tuple[web.StreamResponse, bool]:
    """A 200 streamed piece by piece (chunked), each written and flushed at its time: the
    first at once, then one per ``interval``; with sse a last ``data: [DONE]``. With
    ``drop_after`` K, the connection is reset when piece K is due (after the last piece if
    K >= pieces): no final chunk. Returns the response and whether it was dropped."""
    fmt, n, drop = settings["format"], settings["pieces"], settings["drop_after"]
    resp = web.StreamResponse(status=200, headers={"Cache-Control": "no-cache"})
    resp.content_type = CONTENT_TYPES[fmt]
    if fmt == "raw":
        resp.charset = "utf-8"
    await resp.prepare(request)
    for i in range(n):
        if i:
            await asyncio.sleep(settings["interval"])
        if i == drop:
            break
        await resp.write(piece_bytes(pid, i, n, fmt))
        on_piece(pid)
    if drop is not None:
        await _flushed(request)  # the pieces before the drop reach the client
        reset(request.transport)
        return resp, True  # nothing more is sent: the connection is gone
    if fmt == "sse":
        await resp.write(SSE_DONE)
    await resp.write_eof()
    return resp, False
