"""Settings from the environment, read once per process.

``Settings`` is the one table of every knob: each field names its environment
variable, its default, its check and its meaning, so that ``from_env``, the
checks and the README's configuration table (``markdown_table()``, printed by
``dispatcher config --markdown``) come from the same place. Operators tune a fleet
from a Procfile or docker compose without touching code.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields, replace
from functools import lru_cache
from typing import Any

from dispatcher.errors import ConfigError
from dispatcher.ssrf import AllowList

DEFAULT_ROUTE_URL = "https://run.vast.ai/route/"
# The smallest default route burst: movers hand due jobs over in 0.1 s batches, so
# at low rates jobs on time for their slots arrive together (see store/lua/lib/gate.lua,
# which gets it from store/keys.py).
ROUTE_MIN_BURST = 3.0


def default_webhook_queue(queue: str) -> str:
    """Webhook deliveries' Celery queue unless DISPATCHER_WEBHOOK_QUEUE names one."""
    return f"{queue}.webhooks"


Check = Callable[[Any], str | None]  # a reason the value is refused, or None


def _positive(value: Any) -> str | None:
    return None if value > 0 else f"must be > 0, got {value!r}"


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else f"must be >= 0, got {value!r}"


def _at_least_one(value: Any) -> str | None:
    return None if value >= 1 else f"must be >= 1, got {value!r}"


def _allow_list(value: Any) -> str | None:
    try:
        AllowList.parse(value)
    except ValueError as e:
        return str(e)
    return None


def setting(default: Any, env: str, doc: str, *, check: Check | None = None,
            shown: str | None = None, secret: bool = False) -> Any:
    """A field of ``Settings``: its variable, check and docs travel with it."""
    meta = {"env": env, "doc": doc, "check": check, "shown": shown, "secret": secret}
    return field(default=default, repr=not secret, metadata=meta)


def _clean_secret(name: str, raw: str) -> str | None:
    """Surrounding whitespace is dropped (mounted secrets and .env files end in a
    newline); one inside is refused. The message never holds the value."""
    value = raw.strip()
    for i, c in enumerate(value):
        if ord(c) < 32 or ord(c) == 127:
            raise ConfigError(f"{name}: holds a control character (code {ord(c)}) at "
                              f"position {i}; the value is not shown")
    return value or None


@dataclass(frozen=True)
class RouteBudget:
    """The fleet's route-call budget per endpoint (see store/lua/lib/gate.lua)."""

    rate: float = 0.0  # calls/s per endpoint; 0 = none configured (learned from 429s)
    burst: float = 1.0
    recover: float = 10.0  # seconds without a 429 to give back one halving
    pause_base: float = 1.0  # first fleet pause after a 429; doubles per level
    pause_cap: float = 5.0


@dataclass(frozen=True)
class Settings:
    redis_url: str = setting("redis://localhost:6379/0", "REDIS_URL",
                             "broker, result backend and job store")
    vast_api_key: str | None = setting(None, "VAST_API_KEY",
                                       "Bearer key for `/route/`; never logged or stored",
                                       shown="(none)", secret=True)
    route_url: str = setting(DEFAULT_ROUTE_URL, "VAST_ROUTE_URL",
                             "the routing API (point it at the emulator)")
    route_timeout: float = setting(10.0, "VAST_ROUTE_TIMEOUT", "seconds for one `/route/` call",
                                   check=_positive)
    ca_bundle: str | None = setting(None, "VAST_CA_BUNDLE",
                                    "CA bundle for the workers' HTTPS, e.g. Vast's "
                                    "`jvastai_root.cer`", shown="(system CAs)")
    insecure_worker_tls: bool = setting(False, "VAST_INSECURE_WORKER_TLS",
                                        "`1` turns off worker certificate checks (logged "
                                        "loudly)", shown="off")
    concurrency: int = setting(64, "DISPATCHER_CONCURRENCY",
                               "threads per worker process (jobs in flight)",
                               check=_at_least_one)
    queue: str = setting("dispatcher", "DISPATCHER_QUEUE", "Celery queue name")
    poll_base: float = setting(1.0, "DISPATCHER_POLL_BASE",
                               "first backoff between route polls, seconds", check=_positive)
    poll_cap: float = setting(5.0, "DISPATCHER_POLL_CAP",
                              "largest backoff between route polls, seconds", check=_positive)
    default_max_wait: float = setting(1800.0, "DISPATCHER_MAX_WAIT", "default `max_wait`",
                                      check=_positive)
    max_max_wait: float = setting(7 * 86400.0, "DISPATCHER_MAX_MAX_WAIT",
                                  "the largest `max_wait` a job may ask for", check=_positive,
                                  shown="`604800` (7 days)")
    default_timeout: float = setting(600.0, "DISPATCHER_TIMEOUT", "default execution `timeout`",
                                     check=_positive)
    max_timeout: float = setting(3600.0, "DISPATCHER_MAX_TIMEOUT",
                                 "the largest `timeout` a job may ask for", check=_positive)
    visibility_timeout: float = setting(
        0.0, "DISPATCHER_VISIBILITY_TIMEOUT",
        "when Redis redelivers an unacked job message; must exceed the max timeout, or a "
        "running job would be delivered twice", shown="max timeout + 300")
    lease: float = setting(
        30.0, "DISPATCHER_LEASE",
        "seconds a worker holds a running job without renewing it (it renews every second "
        "while the GPU call is open): a job whose worker died runs again after this",
        check=lambda v: None if v >= 3 else f"must be >= 3 seconds, got {v!r}")
    stream_maxlen: int = setting(10_000, "DISPATCHER_STREAM_MAXLEN",
                                 "pieces a streaming job's Redis stream keeps (the oldest go "
                                 "first); its full answer is the job's result either way",
                                 check=_at_least_one)
    max_reroutes: int = setting(3, "DISPATCHER_MAX_REROUTES",
                                "re-routes after worker errors before a job fails",
                                check=_non_negative)
    result_ttl: int = setting(86400, "DISPATCHER_RESULT_TTL",
                              "seconds a finished job stays readable", check=_positive)
    max_payload_bytes: int = setting(10 * 1024 * 1024, "DISPATCHER_MAX_PAYLOAD_BYTES",
                                     "the largest payload a job may have", check=_positive,
                                     shown="10 MiB")
    max_result_bytes: int = setting(10 * 1024 * 1024, "DISPATCHER_MAX_RESULT_BYTES",
                                    "the largest worker answer stored", check=_positive,
                                    shown="10 MiB")
    endpoint_idle: float = setting(
        30 * 86400.0, "DISPATCHER_ENDPOINT_IDLE",
        "an endpoint with no job created or ended for this long, and none live, is "
        "forgotten: its counters, gate and samples leave Redis", shown="`2592000` (30 days)",
        check=_positive)
    publish_grace: float = setting(
        15.0, "DISPATCHER_PUBLISH_GRACE",
        "a job published from the waiting set (or submitted) but not yet claimed by a worker "
        "is published again after this: the bound on how long a message lost with a dead "
        "worker's prefetch delays its job", check=_positive)
    mover_interval: float = setting(0.1, "DISPATCHER_MOVER_INTERVAL",
                                    "how often each worker moves due jobs back to the queue",
                                    check=_positive)
    max_backlog: int = setting(
        0, "DISPATCHER_MAX_BACKLOG",
        "movers publish nothing while the Celery queue holds this many messages: due jobs "
        "wait in Redis, in order, instead of piling up as duplicates",
        shown="max(256, 4 x concurrency)")
    route_rate: float = setting(
        0.0, "DISPATCHER_ROUTE_RATE",
        "`0`: no limit until Vast answers 429, then the fleet keeps to the rate Vast let "
        "through and probes above it now and then; `N`: the whole fleet's `/route/` calls "
        "per second, per endpoint, shared through Redis (your key's limit, if you know it)",
        check=_non_negative)
    route_burst: float = setting(0.0, "DISPATCHER_ROUTE_BURST",
                                 "route calls the budget allows at once",
                                 shown="rate / 5, at least 3")
    route_recover: float = setting(10.0, "DISPATCHER_ROUTE_RECOVER",
                                   "seconds without a 429 before one halving of the rate is "
                                   "given back", check=_non_negative)
    webhook_secret: str | None = setting(None, "DISPATCHER_WEBHOOK_SECRET",
                                         "HMAC-SHA256 key for webhook signatures; required to "
                                         "use webhooks", shown="(none)", secret=True)
    webhook_timeout: float = setting(
        10.0, "DISPATCHER_WEBHOOK_TIMEOUT",
        "seconds one delivery attempt may take, lookup, connect and answer together (a "
        "wall-clock deadline; no retry after it once the request was sent)", check=_positive)
    webhook_attempts: int = setting(8, "DISPATCHER_WEBHOOK_ATTEMPTS",
                                    "delivery attempts before `webhook_status` is `failed`",
                                    check=_at_least_one)
    webhook_allow: str = setting(
        "", "DISPATCHER_WEBHOOK_ALLOW",
        "comma-separated CIDRs and host names webhooks may reach although they are "
        "loopback, private, link-local or otherwise not public, e.g. "
        "`10.0.0.0/8,hooks.internal` (refused by default)", shown="(none)",
        check=_allow_list)
    webhook_queue: str = setting("", "DISPATCHER_WEBHOOK_QUEUE",
                                 "Celery queue of webhook deliveries, served by `dispatcher "
                                 "worker --webhooks`", shown="`<DISPATCHER_QUEUE>.webhooks`")
    webhook_concurrency: int = setting(
        8, "DISPATCHER_WEBHOOK_CONCURRENCY",
        "threads of a `dispatcher worker --webhooks` process (deliveries in flight)",
        check=_at_least_one)
    task_log: bool = setting(False, "DISPATCHER_TASK_LOG",
                             "`1` keeps Celery's two INFO lines per task (received, succeeded); "
                             "off, a job that ends well logs nothing: failures and warnings "
                             "still do", shown="off")
    task_events: bool = setting(False, "DISPATCHER_TASK_EVENTS",
                                "`1` sends Celery task events (Flower); the same as "
                                "`dispatcher worker --events`", shown="off")
    max_waiters: int = setting(
        1000, "DISPATCHER_MAX_WAITERS",
        "`wait()` calls blocked at once per client (each holds a Redis connection of its own "
        "pool until the job ends; more queue for one)", check=_at_least_one)
    gateway_token: str | None = setting(
        None, "DISPATCHER_GATEWAY_TOKEN",
        "Bearer token the HTTP gateway requires (`dispatcher gateway` refuses to start "
        "without one, unless bound to loopback with `--no-auth`)", shown="(none)",
        secret=True)
    gateway_max_body: int = setting(16 * 1024 * 1024, "DISPATCHER_GATEWAY_MAX_BODY",
                                    "the largest request body the gateway reads (413 above)",
                                    check=_positive, shown="16 MiB")
    gateway_max_wait: float = setting(60.0, "DISPATCHER_GATEWAY_MAX_WAIT",
                                      "the longest `?wait=` a gateway long-poll may hold, "
                                      "seconds", check=_positive)

    def __post_init__(self) -> None:
        for f in fields(self):
            check = f.metadata.get("check")
            reason = check(getattr(self, f.name)) if check else None
            if reason:
                raise ConfigError(f"{f.metadata['env']}: {reason}")
        derived = {
            "route_burst": max(ROUTE_MIN_BURST, self.route_rate / 5),
            "max_backlog": max(256, 4 * self.concurrency),
            "visibility_timeout": self.max_timeout + 300.0,
        }
        for name, value in derived.items():
            if getattr(self, name) <= 0:
                object.__setattr__(self, name, value)
        if not self.webhook_queue:
            object.__setattr__(self, "webhook_queue", default_webhook_queue(self.queue))
        if self.default_max_wait > self.max_max_wait:
            raise ConfigError("DISPATCHER_MAX_WAIT: must be <= DISPATCHER_MAX_MAX_WAIT")
        if self.poll_cap < self.poll_base:
            raise ConfigError("DISPATCHER_POLL_BASE/DISPATCHER_POLL_CAP: need 0 < base <= cap")
        if self.visibility_timeout <= self.max_timeout:
            raise ConfigError(
                "DISPATCHER_VISIBILITY_TIMEOUT must be above DISPATCHER_MAX_TIMEOUT, "
                "or a running job would be delivered twice"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = e.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = _parse(f, raw)
        return cls(**values)

    def route_budget(self) -> RouteBudget:
        return RouteBudget(self.route_rate, self.route_burst, self.route_recover,
                           self.poll_base, self.poll_cap)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def _parse(f: Field[Any], raw: str) -> Any:
    name = f.metadata["env"]
    if f.metadata["secret"]:
        return _clean_secret(name, raw)
    default = f.default
    if isinstance(default, bool):
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
    if isinstance(default, float):
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise ConfigError(f"{name}: expected a finite number, got {raw!r}")
        return value
    return raw


SETTING_NAMES = [f.name for f in fields(Settings)]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env()


def markdown_table() -> str:
    """The README's configuration table, generated from ``Settings``."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for f in fields(Settings):
        m = f.metadata
        if m["shown"]:
            shown = m["shown"]
        elif isinstance(f.default, float):
            shown = f"`{f.default:g}`"
        else:
            shown = f"`{f.default}`"
        rows.append(f"| `{m['env']}` | {shown} | {m['doc']} |")
    return "\n".join(rows)

