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


def test_publishes_and_acks_share_one_client_per_pool(redis_server) -> None:  # noqa: ANN001
    """kombu made a redis-py client per publish and per ack; ours makes one per pool,
    and a new one when a reconnect brings a new pool."""
    app = make_app(Settings(redis_url=redis_server.url))
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        with channel.conn_or_acquire() as a, channel.conn_or_acquire() as b:
            assert a is b and a.connection_pool is channel.pool
        with channel.QoS(channel).pipe_or_acquire() as pipe:
            assert pipe.connection_pool is channel.pool
        channel.basic_publish(channel.prepare_message("x"), exchange="", routing_key="t-q")
        assert redis.Redis.from_url(redis_server.url).llen("t-q") == 1
        channel._disconnect_pools()  # what a lost connection does
        with channel.conn_or_acquire() as c:
            assert c is not a and c.connection_pool is channel.pool
            assert c.ping()
