"""kombu's Redis transport, hardened against a crash seen when Redis restarts, and
without its per-message client.

On connection loss Celery closes the channel, and the channel tries to put its
unacked messages back through a connection object that is already released
(``'NoneType' object has no attribute 'hostname'`` in ``_connparams``). That
AttributeError escapes kombu's connection-error handling and stops the whole
worker ("Unrecoverable error"). Raising a connection error instead lets kombu
and Celery do what they do for any lost connection: reconnect. The unacked
messages are safe: they stay in Redis' unacked hash (redelivered after the
visibility timeout) and their jobs in our waiting set.

kombu builds a new redis-py client (over the channel's shared pool) for every publish
and every ack: 9% of a worker's GIL time in the throughput benchmark, mostly redis-py
filling each new client's table of response callbacks. A client over a pool is
thread-safe, so one per pool serves them all; a new pool (after a reconnect) gets a
new one.
"""

from __future__ import annotations

from typing import Any

import redis as redis_py
from kombu.transport import redis


class Channel(redis.Channel):
    _shared_client: tuple[Any, Any] | None = None  # (the pool, its client)

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise redis_py.ConnectionError("broker connection already closed")
        return super()._connparams(asynchronous)

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the BRPOP client: kombu caches it itself
            return super()._create_client(asynchronous=True)
        pool = self.pool
        cached = self._shared_client
        if cached is None or cached[0] is not pool:
            cached = self._shared_client = (pool, super()._create_client())
        return cached[1]


class Transport(redis.Transport):
    Channel = Channel
