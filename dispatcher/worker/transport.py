"""kombu's Redis transport, hardened against a crash seen when Redis restarts.

On connection loss Celery closes the channel, and the channel tries to put its
unacked messages back through a connection object that is already released
(``'NoneType' object has no attribute 'hostname'`` in ``_connparams``). That
AttributeError escapes kombu's connection-error handling and stops the whole
worker ("Unrecoverable error"). Raising a connection error instead lets kombu
and Celery do what they do for any lost connection: reconnect. The unacked
messages are safe: they stay in Redis' unacked hash (redelivered after the
visibility timeout) and their jobs in our waiting set.
"""

from __future__ import annotations

from typing import Any

import redis as redis_py
from kombu.transport import redis


class Channel(redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise redis_py.ConnectionError("broker connection already closed")
        return super()._connparams(asynchronous)


class Transport(redis.Transport):
    Channel = Channel
