"""Per-payload directives: ``payload["emulate"]`` scripts one job's execution.

They let an end-to-end test make one job slow, failing, hung, streaming or hostile without
reconfiguring the emulator for every other job. A bad directive is the test author's
mistake, so the worker answers 422 (permanent) naming it, rather than something a
dispatcher retries.

Hostile answers (``drip``, ``body_drip``, ``nested``, ``huge``, ``cut``) are what a broken
or malicious worker could send; each is an object of settings (``{}`` or ``true`` for the
defaults in ``BEHAVIOURS``, ``false`` for none).
"""

from __future__ import annotations

import json
from typing import Any

from dispatcher.emulator.config import (
    ConfigError,
    check_bool,
    check_integer,
    check_number,
    check_stream_fields,
)

MAX_NESTED_DEPTH = 10_000_000  # a 20 MB body: enough to break any recursive parser
# Each hostile behaviour's settings and their defaults.
BEHAVIOURS: dict[str, dict[str, Any]] = {
    "drip": {"interval": 1.0, "count": 30},  # status line, then a header line per interval
    "body_drip": {"interval": 0.1},  # headers at once, then one body byte per interval
    "nested": {"depth": 100_000},  # [[[...]]]: 2 * depth bytes of JSON
    "huge": {"bytes": 16 * 1024 * 1024, "chunked": False},  # that many bytes, announced or not
    "cut": {"fraction": 0.5},  # a 200 announcing its length; the body stops there, then FIN
}
DIRECTIVES = ("sleep", "status", "json", "status_times", "fail_times", "hang", "text", "size",
              "stream", *BEHAVIOURS)
BODIES = ("text", "size", "stream", "nested", "huge")  # what a success answers: one at most
DELIVERIES = ("drip", "body_drip", "cut")  # how an answer is sent: one at most


def _behaviour(name: str, value: Any) -> dict[str, Any] | None:
    if value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"emulate.{name}: must be an object, true or false, got {value!r}")
    defaults = BEHAVIOURS[name]
    unknown = sorted(set(value) - set(defaults))
    if unknown:
        raise ConfigError(f"emulate.{name}: unknown field(s) {unknown}; known: {list(defaults)}")
    out = dict(defaults)
    for key, v in value.items():
        where = f"emulate.{name}.{key}"
        if key == "interval":
            out[key] = check_number(where, v)
        elif key == "chunked":
            out[key] = check_bool(where, v)
        elif key == "fraction":
            out[key] = check_number(where, v, high=1.0)
            if out[key] >= 1.0:
                raise ConfigError(f"{where}: must be below 1 (1 is the whole body), got {v!r}")
        else:
            out[key] = check_integer(where, v, low=1 if key == "depth" else 0)
    if out.get("depth", 0) > MAX_NESTED_DEPTH:
        raise ConfigError(f"emulate.nested.depth: at most {MAX_NESTED_DEPTH}, got {out['depth']}")
    return out


def parse_directives(payload: Any) -> dict[str, Any]:
    """The validated ``emulate`` directives of a payload ({} if none); ConfigError if bad."""
    if not isinstance(payload, dict) or "emulate" not in payload:
        return {}
    d = payload["emulate"]
    if not isinstance(d, dict):
        raise ConfigError(f"emulate: must be an object, got {d!r}")
    unknown = sorted(set(d) - set(DIRECTIVES))
    if unknown:
        raise ConfigError(f"emulate: unknown directive(s) {unknown}; known: {list(DIRECTIVES)}")
    out: dict[str, Any] = {}
    if "sleep" in d:
        out["sleep"] = check_number("emulate.sleep", d["sleep"])
    if "status" in d:
        status = check_integer("emulate.status", d["status"], low=200)
        if status > 599:
            raise ConfigError(f"emulate.status: must be an HTTP status 200..599, got {status}")
        out["status"] = status
    for name in ("json", "status_times"):
        if name in d and "status" not in d:
            raise ConfigError(f"emulate.{name}: needs emulate.status (the answer it shapes)")
    if "json" in d:
        try:
            out["json"] = json.dumps(d["json"]).encode()
        except (TypeError, ValueError) as e:  # not reachable from JSON, but from Python
            raise ConfigError(f"emulate.json: not JSON ({e})") from None
    if "status_times" in d:
        out["status_times"] = check_integer("emulate.status_times", d["status_times"])
    if "fail_times" in d:
        out["fail_times"] = check_integer("emulate.fail_times", d["fail_times"])
    if "hang" in d:
        if not isinstance(d["hang"], bool):
            raise ConfigError(f"emulate.hang: must be true or false, got {d['hang']!r}")
        out["hang"] = d["hang"]
    if "text" in d:
        if not isinstance(d["text"], str):
            raise ConfigError(f"emulate.text: must be a string, got {d['text']!r}")
        out["text"] = d["text"]
    if "size" in d:
        out["size"] = check_integer("emulate.size", d["size"])
    if "stream" in d:
        s = d["stream"]
        if isinstance(s, bool):
            out["stream"] = s
        elif isinstance(s, dict):
            out["stream"] = check_stream_fields(s, "emulate.stream")
        else:
            raise ConfigError(f"emulate.stream: must be an object, true or false, got {s!r}")
    for name in BEHAVIOURS:
        if name in d:
            settings = _behaviour(name, d[name])
            if settings is not None:
                out[name] = settings
    bodies = [k for k in BODIES if out.get(k) not in (None, False)]
    if len(bodies) > 1:
        raise ConfigError(f"emulate: {bodies} cannot be combined (each is the whole answer)")
    deliveries = [k for k in DELIVERIES if k in out]
    if len(deliveries) > 1:
        raise ConfigError(f"emulate: {deliveries} cannot be combined (one way to send at most)")
    if deliveries and out.get("stream"):
        raise ConfigError(f"emulate: stream cannot be combined with {deliveries[0]} (a stream "
                          f"has its own interval and drop_after)")
    return out
