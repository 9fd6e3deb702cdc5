"""Client for Vast Serverless: ``POST /route/`` to claim a GPU worker, then call it.

``route.py`` asks Vast for a worker, ``forward.py`` sends the job to it,
``protocol.py`` is what they say. Every failure is a typed error (``errors.py``)
that says whether trying again can help, with the server's text but never the key.
Both calls run on ``dispatcher/net.py``: connections we own, each exchange under a
hard deadline.
"""

from __future__ import annotations

from dispatcher.config import Settings
from dispatcher.net import Pool
from dispatcher.vast.forward import WorkerClient
from dispatcher.vast.protocol import Assignment, NoWorker, WorkerResponse, redact
from dispatcher.vast.route import RouteClient

__all__ = ["Assignment", "NoWorker", "VastClient", "WorkerResponse", "redact"]


class VastClient:
    """The route and worker clients over one keep-alive pool, shared by all threads."""

    def __init__(
        self,
        *,
        route_url: str,
        api_key: str | None,
        route_timeout: float = 10.0,
        ca_bundle: str | None = None,
        insecure_worker_tls: bool = False,
        pool_size: int = 64,
        max_result_bytes: int = 10 * 1024 * 1024,
        connect_timeout: float = 5.0,
    ) -> None:
        self.pool = Pool(pool_size)
        self.router = RouteClient(self.pool, route_url, api_key, route_timeout,
                                  connect_timeout)
        self.workers = WorkerClient(self.pool, ca_bundle=ca_bundle,
                                    insecure_worker_tls=insecure_worker_tls,
                                    max_result_bytes=max_result_bytes,
                                    connect_timeout=connect_timeout, secret=api_key)
        self.route = self.router.route
        self.call_worker = self.workers.call_worker

    @classmethod
    def from_settings(cls, settings: Settings) -> VastClient:
        return cls(
            route_url=settings.route_url,
            api_key=settings.vast_api_key,
            route_timeout=settings.route_timeout,
            ca_bundle=settings.ca_bundle,
            insecure_worker_tls=settings.insecure_worker_tls,
            pool_size=settings.concurrency,
            max_result_bytes=settings.max_result_bytes,
        )

    @property
    def route_url(self) -> str:
        return self.router.route_url

    def __repr__(self) -> str:
        return f"VastClient(route_url={self.route_url!r})"

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> VastClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
