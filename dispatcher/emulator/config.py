"""Emulator configuration: what the fake Vast endpoints and their workers do.

Plain frozen dataclasses, built from dicts (JSON/YAML files, ``POST /_emulator/config``
patches) and validated up front, so a typo fails at once with the field's name rather
than as a strange behaviour minutes into a test.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ANSWER_SHAPES = ("live", "published")
WORKER_KINDS = ("emulator", "pyworker")
LATENCY_FIELDS = {"fixed": ("seconds",), "uniform": ("low", "high"),
                  "lognormal": ("median", "sigma")}


SIMULATED_ONLY = ("workers", "max_workers", "tls", "stream")  # refused on a PyWorker endpoint
# Streamed answers (docs/emulator.md, "Streaming workers"): the endpoint's ``stream`` and the
# ``emulate.stream`` directive take these fields; what either leaves out is the default.
STREAM_FORMATS = ("sse", "ndjson", "raw")
STREAM_DEFAULTS: dict[str, Any] = {"pieces": 8, "interval": 0.05, "format": "sse",
                                   "drop_after": None}


class ConfigError(ValueError):
    """A bad emulator config or patch; the message starts with the field's name."""


def check_number(name: str, value: Any, low: float = 0.0, high: float = math.inf) -> float:
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or not low <= value <= high):
        bounds = f"from {low:g} to {high:g}" if high != math.inf else f">= {low:g}"
        raise ConfigError(f"{name}: must be a number {bounds}, got {value!r}")
    return float(value)


def check_integer(name: str, value: Any, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name}: must be an integer >= {low}, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: must be true or false, got {value!r}")
    return value


def check_latency(value: Any, name: str = "latency") -> dict[str, Any]:
    """A validated copy of a latency distribution, e.g. ``{"kind": "fixed", "seconds": 1}``."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}: must be an object with 'kind', got {value!r}")
    kind = value.get("kind")
    if not isinstance(kind, str) or kind not in LATENCY_FIELDS:
        raise ConfigError(f"{name}.kind: must be one of {sorted(LATENCY_FIELDS)}, got {kind!r}")
    wanted = LATENCY_FIELDS[kind]
    unknown = sorted(set(value) - {"kind", *wanted})
    if unknown:
        raise ConfigError(f"{name}: unknown field(s) {unknown} for kind {kind!r}")
    out: dict[str, Any] = {"kind": kind}
    for key in wanted:
        if key not in value:
            raise ConfigError(f"{name}.{key}: required for kind {kind!r}")
        out[key] = check_number(f"{name}.{key}", value[key])
    if kind == "uniform" and out["low"] > out["high"]:
        raise ConfigError(f"{name}.high: must be >= low ({out['low']:g}), got {out['high']:g}")
    return out


def check_stream_fields(value: Any, name: str) -> dict[str, Any]:
    """The validated fields of a ``stream`` object, without defaults filled in."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}: must be an object, true, false or null, got {value!r}")
    unknown = sorted(set(value) - set(STREAM_DEFAULTS))
    if unknown:
        raise ConfigError(f"{name}: unknown field(s) {unknown}; known: {list(STREAM_DEFAULTS)}")
    out: dict[str, Any] = {}
    if "pieces" in value:
        out["pieces"] = check_integer(f"{name}.pieces", value["pieces"])
    if "interval" in value:
        out["interval"] = check_number(f"{name}.interval", value["interval"])
    if "format" in value:
        fmt = value["format"]
        if not isinstance(fmt, str) or fmt not in STREAM_FORMATS:
            raise ConfigError(f"{name}.format: must be one of {list(STREAM_FORMATS)}, got {fmt!r}")
        out["format"] = fmt
    if "drop_after" in value and value["drop_after"] is not None:
        out["drop_after"] = check_integer(f"{name}.drop_after", value["drop_after"])
    elif "drop_after" in value:
        out["drop_after"] = None
    return out


def check_stream(value: Any, name: str = "stream") -> dict[str, Any] | None:
    """An endpoint's stream settings, defaults filled in; None (or false) for no streaming."""
    if value is None or value is False:
        return None
    return {**STREAM_DEFAULTS, **check_stream_fields({} if value is True else value, name)}


def stream_seconds(stream: Mapping[str, Any] | None) -> float:
    """How long a streamed answer takes after its first piece."""
    if not stream:
        return 0.0
    return max(0, stream["pieces"] - 1) * stream["interval"]


def mean_latency(latency: Mapping[str, Any]) -> float:
    kind = latency["kind"]
    if kind == "fixed":
        return latency["seconds"]
    if kind == "uniform":
        return (latency["low"] + latency["high"]) / 2
    return latency["median"] * math.exp(latency["sigma"] ** 2 / 2)


@dataclass(frozen=True)
class EndpointConfig:
    """One Vast endpoint: its workers, how they start, stop, queue and misbehave."""

    workers: int = 1  # ready at start; raising it on a running endpoint starts more now
    max_workers: int | None = None  # None: max(workers, 1); ports for all are bound at start
    cold_start: float = 5.0  # seconds from "demand found no capacity" to routable
    inactivity_timeout: float | None = None  # idle seconds before a ready worker stops
    concurrency: int = 1  # requests a worker runs at once; 1 = FIFO (Vast's default)
    queue_depth: int = 1  # a worker takes assignments while outstanding < concurrency * this
    latency: dict[str, Any] = field(default_factory=lambda: {"kind": "fixed", "seconds": 0.05})
    failure_rate: float = 0.0  # chance an execution answers 500
    hang_workers: int = 0  # the first N workers never answer
    hang_rate: float = 0.0  # chance an execution never answers
    max_queue_time: float = 30.0  # admission control: 429 above this estimated wait
    warmup_errors: int = 0  # a just-started worker answers 401/500 to its first N requests
    assignment_ttl: float = 30.0  # an assignment never used frees its slot after this
    # Stricter than Vast, as detectors of dispatcher bugs (docs/emulator.md):
    reject_replay: bool = True  # 401 for a reqnum already used (Vast's PyWorker accepts it)
    reject_tampered: bool = True  # 401 unless auth_data is the assignment issued, verbatim
    answer_shape: str = "live"  # route answers: "live" (Vast's, with request_idx) or "published"
    # "pyworker": no simulated workers; real Vast PyWorkers register by POST /worker_status/
    workers_from: str = "emulator"
    mtoken: str | None = None  # the PyWorkers' MASTER_TOKEN; None: the endpoint's name
    report_timeout: float = 30.0  # a PyWorker silent this long is not routed to
    tls: bool = False  # HTTPS workers under a root CA shaped like Vast's (GET /_emulator/ca.pem)
    # Successful answers stream: {"pieces", "interval", "format", "drop_after"} (STREAM_DEFAULTS)
    stream: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.answer_shape not in ANSWER_SHAPES:
            raise ConfigError(f"answer_shape: must be one of {list(ANSWER_SHAPES)}, "
                              f"got {self.answer_shape!r}")
        if self.workers_from not in WORKER_KINDS:
            raise ConfigError(f"workers_from: must be one of {list(WORKER_KINDS)}, "
                              f"got {self.workers_from!r}")
        if self.mtoken is not None and (not isinstance(self.mtoken, str) or not self.mtoken):
            raise ConfigError("mtoken: must be a non-empty string or null")
        check_number("report_timeout", self.report_timeout)
        for name in ("reject_replay", "reject_tampered", "tls"):
            check_bool(name, getattr(self, name))
        for name in ("workers", "hang_workers", "warmup_errors"):
            check_integer(name, getattr(self, name))
        for name in ("concurrency", "queue_depth"):
            check_integer(name, getattr(self, name), low=1)
        for name in ("cold_start", "max_queue_time", "assignment_ttl"):
            check_number(name, getattr(self, name))
        for name in ("failure_rate", "hang_rate"):
            check_number(name, getattr(self, name), high=1.0)
        if self.inactivity_timeout is not None:
            check_number("inactivity_timeout", self.inactivity_timeout)
        if self.max_workers is not None:
            check_integer("max_workers", self.max_workers)
            if self.max_workers < self.workers:
                raise ConfigError(f"max_workers: must be >= workers ({self.workers}), "
                                  f"got {self.max_workers}")
        object.__setattr__(self, "latency", check_latency(self.latency))
        object.__setattr__(self, "stream", check_stream(self.stream))

    @property
    def worker_limit(self) -> int:
        """How many simulated workers the endpoint has (each with its own port)."""
        if self.workers_from == "pyworker":
            return 0
        return self.max_workers if self.max_workers is not None else max(self.workers, 1)

    @property
    def capacity(self) -> int:
        """Outstanding requests a ready worker takes before it counts as busy."""
        return self.concurrency * self.queue_depth

    @property
    def mean_latency(self) -> float:
        """Seconds an execution holds its slot, on average (a stream holds it to the end)."""
        return mean_latency(self.latency) + stream_seconds(self.stream)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: EndpointConfig | None = None) -> EndpointConfig:
        """A config from a dict; with ``base``, a partial patch over it."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"endpoint: must be an object, got {d!r}")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"endpoint: unknown field(s) {unknown}")
        try:
            cfg = replace(base, **d) if base is not None else cls(**d)
        except TypeError as e:  # a value of a type the checks did not expect
            raise ConfigError(f"endpoint: {e}") from None
        if cfg.workers_from == "pyworker":
            for name in SIMULATED_ONLY:
                if name in d and d[name] not in (None, 0, False):
                    raise ConfigError(f"{name}: an endpoint with workers_from 'pyworker' has "
                                      f"no simulated workers (its PyWorkers register)")
        return cfg


@dataclass(frozen=True)
class EmulatorConfig:
    """The whole emulator: the route API's key and faults, and its endpoints."""

    api_key: str = "emulator-key"
    rate_limit: dict[str, float] | None = None  # token bucket per (endpoint, key)
    route_error_rate: float = 0.0  # chance /route/ answers 500/502/503
    route_429_rate: float = 0.0  # chance /route/ answers 429
    route_reset_rate: float = 0.0  # chance /route/ resets the connection, no HTTP answer
    route_latency: float = 0.0  # seconds added to every /route/ call
    endpoints: dict[str, EndpointConfig] = field(default_factory=dict)
    seed: int | None = None  # for reproducible fault injection and latencies

    def __post_init__(self) -> None:
        if not isinstance(self.api_key, str) or not self.api_key:
            raise ConfigError(f"api_key: must be a non-empty string, got {self.api_key!r}")
        for name in ("route_error_rate", "route_429_rate", "route_reset_rate"):
            check_number(name, getattr(self, name), high=1.0)
        check_number("route_latency", self.route_latency)
        if self.seed is not None and (isinstance(self.seed, bool)
                                      or not isinstance(self.seed, int)):
            raise ConfigError(f"seed: must be an integer or null, got {self.seed!r}")
        if self.rate_limit is not None:
            rl = self.rate_limit
            if not isinstance(rl, Mapping) or set(rl) != {"rate", "burst"}:
                raise ConfigError(f"rate_limit: must be null or {{\"rate\": per_second, "
                                  f"\"burst\": n}}, got {rl!r}")
            rate = check_number("rate_limit.rate", rl["rate"])
            burst = check_number("rate_limit.burst", rl["burst"], low=1.0)
            if rate <= 0:
                raise ConfigError(f"rate_limit.rate: must be > 0, got {rate!r}")
            object.__setattr__(self, "rate_limit", {"rate": rate, "burst": burst})
        if not isinstance(self.endpoints, Mapping):
            raise ConfigError(f"endpoints: must be an object, got {self.endpoints!r}")
        eps: dict[str, EndpointConfig] = {}
        for name, ep in self.endpoints.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"endpoints: names must be non-empty strings, got {name!r}")
            eps[name] = ep if isinstance(ep, EndpointConfig) else _endpoint(name, ep)
        tokens: dict[str, str] = {}
        for name, ep in eps.items():
            if ep.mtoken is not None:
                if ep.mtoken in tokens:
                    raise ConfigError(f"endpoints.{name}.mtoken: the same as "
                                      f"endpoints.{tokens[ep.mtoken]}.mtoken")
                tokens[ep.mtoken] = name
        object.__setattr__(self, "endpoints", eps)

    def pyworker_endpoint(self, mtoken: str) -> str | None:
        """The PyWorker endpoint a MASTER_TOKEN names: by its ``mtoken``, else by name."""
        for name, ep in self.endpoints.items():
            if ep.mtoken == mtoken and ep.workers_from == "pyworker":
                return name
        named = self.endpoints.get(mtoken)
        if named is not None and named.workers_from == "pyworker" and named.mtoken is None:
            return mtoken
        return None

    def redacted(self) -> dict[str, Any]:
        """``to_dict`` without the secrets (the API key, PyWorker tokens)."""
        d = self.to_dict()
        d["api_key"] = "<redacted>"
        for ep in d["endpoints"].values():
            if ep["mtoken"] is not None:
                ep["mtoken"] = "<redacted>"
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EmulatorConfig:
        if not isinstance(d, Mapping):
            raise ConfigError(f"emulator config: must be an object, got {d!r}")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"emulator config: unknown field(s) {unknown}")
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"emulator config: {e}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> EmulatorConfig:
        """JSON, or YAML for ``.yml``/``.yaml`` files."""
        text = Path(path).read_text()
        if str(path).endswith((".yml", ".yaml")):
            import yaml

            return cls.from_dict(yaml.safe_load(text) or {})
        return cls.from_dict(json.loads(text))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def patched(self, patch: Mapping[str, Any]) -> EmulatorConfig:
        """This config with top-level fields replaced and ``endpoints`` merged per field."""
        if not isinstance(patch, Mapping):
            raise ConfigError(f"config patch: must be an object, got {patch!r}")
        patch = dict(patch)
        unknown = sorted(set(patch) - {f.name for f in fields(self)})
        if unknown:
            raise ConfigError(f"config patch: unknown field(s) {unknown}")
        eps = dict(self.endpoints)
        raw = patch.pop("endpoints", None)
        raw = {} if raw is None else raw
        if not isinstance(raw, Mapping):
            raise ConfigError(f"endpoints: must be an object, got {raw!r}")
        for name, ep_patch in raw.items():
            eps[name] = _endpoint(name, ep_patch, self.endpoints.get(name))
        try:
            return replace(self, endpoints=eps, **patch)
        except TypeError as e:
            raise ConfigError(f"config patch: {e}") from None


def _endpoint(name: Any, d: Any, base: EndpointConfig | None = None) -> EndpointConfig:
    try:
        return EndpointConfig.from_dict(d, base)
    except ConfigError as e:
        msg = str(e)
        where = f"endpoints.{name}"
        raise ConfigError(f"{where}: {msg.removeprefix('endpoint: ')}"
                          if msg.startswith("endpoint: ") else f"{where}.{msg}") from None


DEFAULT_CONFIG: dict[str, Any] = {
    "endpoints": {
        "demo": {"workers": 0, "max_workers": 2, "cold_start": 5.0, "inactivity_timeout": 300,
                 "concurrency": 4, "latency": {"kind": "lognormal", "median": 0.3, "sigma": 0.3}},
    }
}
