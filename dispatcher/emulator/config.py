"""Emulator configuration: what the fake Vast endpoints and their workers do."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

LATENCY_KINDS = ("fixed", "uniform", "lognormal")


class ConfigError(ValueError):
    pass


def _check_rate(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(f"{name}: must be a number from 0 to 1, got {value!r}")
    return float(value)


def _check_nonneg(name: str, value: Any, kind: type = float) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{name}: must be a number >= 0, got {value!r}")
    return kind(value)


@dataclass(frozen=True)
class EndpointConfig:
    workers: int = 1  # ready at start
    max_workers: int = 1
    cold_start: float = 5.0
    inactivity_timeout: float | None = None
    concurrency: int = 1  # 1 = FIFO, one request at a time (Vast's default)
    queue_depth: int = 1  # assignments per slot before "all busy"
    latency: dict[str, Any] = field(default_factory=lambda: {"kind": "fixed", "seconds": 0.05})
    failure_rate: float = 0.0
    hang_workers: int = 0
    hang_rate: float = 0.0
    max_queue_time: float = 30.0
    warmup_errors: int = 0
    assignment_ttl: float = 30.0

    def __post_init__(self) -> None:
        for name in ("workers", "max_workers", "hang_workers", "warmup_errors"):
            _check_nonneg(name, getattr(self, name), int)
        for name in ("cold_start", "max_queue_time", "assignment_ttl"):
            _check_nonneg(name, getattr(self, name))
        for name in ("failure_rate", "hang_rate"):
            _check_rate(name, getattr(self, name))
        if self.concurrency < 1 or self.queue_depth < 1:
            raise ConfigError("concurrency and queue_depth: must be >= 1")
        if self.workers > self.max_workers:
            object.__setattr__(self, "max_workers", self.workers)
        if self.inactivity_timeout is not None:
            _check_nonneg("inactivity_timeout", self.inactivity_timeout)
        kind = self.latency.get("kind") if isinstance(self.latency, dict) else None
        if kind not in LATENCY_KINDS:
            raise ConfigError(f"latency.kind: must be one of {LATENCY_KINDS}, got {kind!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: EndpointConfig | None = None) -> EndpointConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"endpoint: unknown field(s) {sorted(unknown)}")
        return replace(base, **d) if base else cls(**d)

    def mean_latency(self) -> float:
        lat = self.latency
        if lat["kind"] == "fixed":
            return float(lat.get("seconds", 0.05))
        if lat["kind"] == "uniform":
            return (float(lat["low"]) + float(lat["high"])) / 2
        return float(lat["median"])


@dataclass(frozen=True)
class EmulatorConfig:
    api_key: str = "emulator-key"
    rate_limit: dict[str, float] | None = None  # {"rate": per second, "burst": n}
    route_error_rate: float = 0.0
    route_429_rate: float = 0.0
    route_reset_rate: float = 0.0
    route_latency: float = 0.0
    seed: int | None = None
    endpoints: dict[str, EndpointConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("route_error_rate", "route_429_rate", "route_reset_rate"):
            _check_rate(name, getattr(self, name))
        _check_nonneg("route_latency", self.route_latency)
        if self.rate_limit is not None:
            if not {"rate", "burst"} <= set(self.rate_limit):
                raise ConfigError("rate_limit: needs 'rate' (per second) and 'burst'")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmulatorConfig:
        d = dict(d)
        raw = d.pop("endpoints", {}) or {}
        eps = {name: EndpointConfig.from_dict(e) for name, e in raw.items()}
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"emulator config: unknown field(s) {sorted(unknown)}")
        return cls(endpoints=eps, **d)

    @classmethod
    def from_file(cls, path: str | Path) -> EmulatorConfig:
        text = Path(path).read_text()
        if str(path).endswith((".yml", ".yaml")):
            import yaml

            return cls.from_dict(yaml.safe_load(text) or {})
        return cls.from_dict(json.loads(text))


DEFAULT_CONFIG = {
    "endpoints": {
        "demo": {"workers": 0, "max_workers": 2, "cold_start": 5.0, "inactivity_timeout": 300,
                 "concurrency": 4, "latency": {"kind": "lognormal", "median": 0.3, "sigma": 0.3}},
    }
}
