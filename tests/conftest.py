"""Shared fixtures: a real redis-server on a free port, the emulator, a real worker."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from dispatcher.dev.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _no_ambient_vast_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up a developer's real key from the environment."""
    if os.environ.get("VAST_API_KEY"):
        monkeypatch.delenv("VAST_API_KEY")
