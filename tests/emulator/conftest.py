"""Helpers for the emulator's own tests: real HTTP over loopback, no mocks."""

from __future__ import annotations

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
         url: str | None = None, timeout: float = 10) -> requests.Response:
    """Call a worker the way the official client does."""
    body = {"auth_data": answer if auth is None else auth, "payload": payload,
            "session_id": None}
    return requests.post((url or answer["url"]) + path, json=body, timeout=timeout)


@pytest.fixture
def vast() -> Iterator[Emulator]:
    """Two ready workers that take two requests each, fast."""
    cfg = make_config(endpoints={"llm": {"workers": 2, "concurrency": 2, "latency": FAST}})
    with Emulator(cfg) as emulator:
        yield emulator
