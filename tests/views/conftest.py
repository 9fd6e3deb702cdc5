"""Fixtures for the operator views (dispatcher top in a terminal, the dashboard in a
browser): the end-to-end ones, over a Redis of this directory's own, so that no other
module's endpoints share the screen."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dispatcher.dev.redis_server import RedisServer
from tests.e2e.conftest import add_endpoint, client, e2e_env, vast, worker

__all__ = ["add_endpoint", "client", "e2e_env", "vast", "worker"]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server
