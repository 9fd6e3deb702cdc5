"""Configuration from the environment, read once per process.

Every knob has an environment variable so operators can tune a fleet from a
Procfile or docker compose without touching code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache

DEFAULT_ROUTE_URL = "https://run.vast.ai/route/"
# The smallest default route burst: movers hand due jobs over in 0.1 s batches, so
# at low rates jobs on time for their slots arrive together (see lua/_gate.lua).
ROUTE_MIN_BURST = 3.0


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}: expected a number, got {raw!r}") from None


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}: expected an integer, got {raw!r}") from None


def _bool(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class RouteBudget:
    """The fleet's route-call budget per endpoint (see lua/_gate.lua)."""

    rate: float = 0.0  # calls/s per endpoint; 0 = no limit (429s still pause the fleet)
    burst: float = 1.0
    recover: float = 10.0  # seconds without a 429 to give back one halving
    pause_base: float = 1.0  # first fleet pause after a 429; doubles per level
    pause_cap: float = 5.0


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://localhost:6379/0"
    # repr=False: the key must never reach a log line through a repr of Settings.
    vast_api_key: str | None = field(default=None, repr=False)
    route_url: str = DEFAULT_ROUTE_URL
    route_timeout: float = 10.0
    ca_bundle: str | None = None
    insecure_worker_tls: bool = False
    queue: str = "dispatcher"
    concurrency: int = 64
    poll_base: float = 1.0
    poll_cap: float = 5.0
    default_max_wait: float = 1800.0
    default_timeout: float = 600.0
    max_timeout: float = 3600.0
    max_reroutes: int = 3
    result_ttl: int = 86400
    max_payload_bytes: int = 10 * 1024 * 1024
    max_result_bytes: int = 10 * 1024 * 1024
    # Unacked messages come back after this long; must exceed max_timeout so a
    # job still running on a live worker is never handed to a second one.
    visibility_timeout: float = 0.0
    # A claimed-but-unpublished waiting job is retried after this long.
    publish_grace: float = 15.0
    mover_interval: float = 0.1
    # Movers publish nothing while the Celery queue holds this many messages.
    max_backlog: int = 0
    # The fleet's /route/ budget per endpoint, shared through Redis; 0 = no limit.
    route_rate: float = 50.0
    route_burst: float = 0.0  # 0: a fifth of a second's worth, at least ROUTE_MIN_BURST
    route_recover: float = 10.0
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_timeout: float = 10.0
    webhook_attempts: int = 8
    task_events: bool = False

    def __post_init__(self) -> None:
        if self.route_rate < 0:
            raise ValueError("DISPATCHER_ROUTE_RATE: must be >= 0 (0 turns the limit off)")
        if self.route_burst <= 0:
            object.__setattr__(self, "route_burst", max(ROUTE_MIN_BURST, self.route_rate / 5))
        if self.webhook_attempts < 1:
            raise ValueError("DISPATCHER_WEBHOOK_ATTEMPTS: must be >= 1")
        if self.max_backlog <= 0:
            object.__setattr__(self, "max_backlog", max(256, 4 * self.concurrency))
        if self.visibility_timeout <= 0:
            object.__setattr__(self, "visibility_timeout", self.max_timeout + 300.0)
        if self.poll_base <= 0 or self.poll_cap < self.poll_base:
            raise ValueError("DISPATCHER_POLL_BASE/DISPATCHER_POLL_CAP: need 0 < base <= cap")
        if self.visibility_timeout <= self.max_timeout:
            raise ValueError(
                "DISPATCHER_VISIBILITY_TIMEOUT must be above DISPATCHER_MAX_TIMEOUT, "
                "or a running job would be delivered twice"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        return cls(
            redis_url=e.get("REDIS_URL") or cls.redis_url,
            vast_api_key=e.get("VAST_API_KEY") or None,
            route_url=e.get("VAST_ROUTE_URL") or DEFAULT_ROUTE_URL,
            route_timeout=_float(e, "VAST_ROUTE_TIMEOUT", cls.route_timeout),
            ca_bundle=e.get("VAST_CA_BUNDLE") or None,
            insecure_worker_tls=_bool(e, "VAST_INSECURE_WORKER_TLS"),
            queue=e.get("DISPATCHER_QUEUE") or cls.queue,
            concurrency=_int(e, "DISPATCHER_CONCURRENCY", cls.concurrency),
            poll_base=_float(e, "DISPATCHER_POLL_BASE", cls.poll_base),
            poll_cap=_float(e, "DISPATCHER_POLL_CAP", cls.poll_cap),
            default_max_wait=_float(e, "DISPATCHER_MAX_WAIT", cls.default_max_wait),
            default_timeout=_float(e, "DISPATCHER_TIMEOUT", cls.default_timeout),
            max_timeout=_float(e, "DISPATCHER_MAX_TIMEOUT", cls.max_timeout),
            max_reroutes=_int(e, "DISPATCHER_MAX_REROUTES", cls.max_reroutes),
            result_ttl=_int(e, "DISPATCHER_RESULT_TTL", cls.result_ttl),
            max_payload_bytes=_int(e, "DISPATCHER_MAX_PAYLOAD_BYTES", cls.max_payload_bytes),
            max_result_bytes=_int(e, "DISPATCHER_MAX_RESULT_BYTES", cls.max_result_bytes),
            visibility_timeout=_float(e, "DISPATCHER_VISIBILITY_TIMEOUT", 0.0),
            publish_grace=_float(e, "DISPATCHER_PUBLISH_GRACE", cls.publish_grace),
            mover_interval=_float(e, "DISPATCHER_MOVER_INTERVAL", cls.mover_interval),
            max_backlog=_int(e, "DISPATCHER_MAX_BACKLOG", 0),
            route_rate=_float(e, "DISPATCHER_ROUTE_RATE", cls.route_rate),
            route_burst=_float(e, "DISPATCHER_ROUTE_BURST", 0.0),
            route_recover=_float(e, "DISPATCHER_ROUTE_RECOVER", cls.route_recover),
            webhook_secret=e.get("DISPATCHER_WEBHOOK_SECRET") or None,
            webhook_timeout=_float(e, "DISPATCHER_WEBHOOK_TIMEOUT", cls.webhook_timeout),
            webhook_attempts=_int(e, "DISPATCHER_WEBHOOK_ATTEMPTS", cls.webhook_attempts),
            task_events=_bool(e, "DISPATCHER_TASK_EVENTS"),
        )

    def route_budget(self) -> RouteBudget:
        return RouteBudget(self.route_rate, self.route_burst, self.route_recover,
                           self.poll_base, self.poll_cap)

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)


SETTING_NAMES = [f.name for f in fields(Settings)]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env()
