"""The hardened transport turns kombu's closed-connection AttributeError into a connection error."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import redis

from dispatcher.config import Settings
from dispatcher.worker.app import make_app
from dispatcher.worker.transport import Channel, Transport


def test_a_released_connection_is_a_connection_error() -> None:
    channel = Channel.__new__(Channel)
    channel.connection = SimpleNamespace(client=None)
    with pytest.raises(redis.ConnectionError):
        channel._connparams()
    assert redis.ConnectionError in Transport.connection_errors  # kombu handles it


def test_the_app_uses_it() -> None:
    app = make_app(Settings(redis_url="redis://127.0.0.1:1/0"))
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, Transport)
