"""Helpers for the emulator's own tests: real HTTP over loopback, no mocks."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from dispatcher.emulator import Emulator, EmulatorConfig

KEY = "emu-test-key"
FAST = {"kind": "fixed", "seconds": 0.01}


def make_config(seed: int = 3, **top: Any) -> EmulatorConfig:
    """A config with the test key; ``endpoints=...`` and other top-level fields as given."""
    return EmulatorConfig.from_dict({"api_key": KEY, "seed": seed, **top})


def route(vast: Emulator, body: dict | str, key: str | None = KEY,
          timeout: float = 10) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    kwargs: dict[str, Any] = {"json": body} if isinstance(body, dict) else {"data": body}
    return requests.post(vast.route_url, headers=headers, timeout=timeout, **kwargs)


def assign(vast: Emulator, endpoint: str, **extra: Any) -> dict[str, Any]:
    """A route answer that must be an assignment."""
    r = route(vast, {"endpoint": endpoint, "cost": 1, **extra})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert "url" in answer, answer
    return answer


def call(answer: dict, payload: Any, path: str = "/v1/completions", auth: dict | None = None,
         url: str | None = None, timeout: float | tuple[float, float] = 10,
         stream: bool = False) -> requests.Response:
    """Call a worker the way the official client does (``stream``: read the body later)."""
    body = {"auth_data": answer if auth is None else auth, "payload": payload,
            "session_id": None}
    return requests.post((url or answer["url"]) + path, json=body, timeout=timeout,
                         stream=stream)


@pytest.fixture
def vast() -> Iterator[Emulator]:
    """Two ready workers that take two requests each, fast."""
    cfg = make_config(endpoints={"llm": {"workers": 2, "concurrency": 2, "latency": FAST}})
    with Emulator(cfg) as emulator:
        yield emulator


def send_raw(answer: dict, payload: Any, path: str = "/generate") -> socket.socket:
    """Send a worker call on a socket of the test's own and return it unread, so a test can
    read the answer byte by byte, late, or close the connection mid-work. The request asks
    for ``Connection: close``, so the answer ends with the connection."""
    body = json.dumps({"auth_data": answer, "payload": payload}).encode()
    host, port = answer["url"].removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
                 % (path.encode(), host.encode(), len(body), body))
    return sock


def read_all(sock: socket.socket) -> tuple[bytes, str]:
    """Everything the peer sends, and how the connection ended: "eof" (FIN) or "reset"."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        return data, "reset"
    return data, "eof"


def dechunk(body: bytes) -> tuple[list[bytes], bool]:
    """The chunks of a chunked body, and whether its final (empty) chunk came."""
    chunks: list[bytes] = []
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return chunks, True
        chunks.append(rest[:size])
        body = rest[size + 2:]
    return chunks, False

