"""Scripted route answers: the next route calls for an endpoint answer exactly these.

For contract tests of a dispatcher against every answer Vast documents or sends: verbatim
bodies (``{"status": 400, "json": {...}}``, ``{"status": 429, "text": "..."}``, a
connection reset ``{"reset": true}``), or a real assignment to a real worker, or a real
"no worker" answer, with fields left out or added (``{"assign": true, "omit": ["cost"],
"extra": {"zzz": [1]}}``, ``{"no_worker": true, ...}``). An assignment with fields left
out is still one the emulated worker runs: it checks what it issued.

Validated whole when scripted, so a typo fails the test's setup with the field's name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from dispatcher.emulator.config import ConfigError
from dispatcher.emulator.fleet import ASSIGNMENT_FIELDS, NO_WORKER_FIELDS

KINDS = ("assign", "no_worker", "status", "reset")


def parse_script(answers: Any, shape: str) -> list[dict[str, Any]]:
    """Validated copies of ``answers`` for an endpoint whose answers have ``shape``."""
    if not isinstance(answers, list):
        raise ConfigError(f"answers: must be a list, got {answers!r}")
    return [_answer(a, f"answers[{i}]", shape) for i, a in enumerate(answers)]


def _answer(a: Any, where: str, shape: str) -> dict[str, Any]:
    if not isinstance(a, Mapping):
        raise ConfigError(f"{where}: must be an object, got {a!r}")
    kinds = [k for k in KINDS if k in a]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: must have exactly one of {list(KINDS)}, got {sorted(a)}")
    kind = kinds[0]
    if kind == "status":
        return _verbatim(a, where)
    allowed = {kind} | ({"omit", "extra"} if kind != "reset" else set())
    unknown = sorted(set(a) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown} for {kind!r}")
    if a[kind] is not True:
        raise ConfigError(f"{where}.{kind}: must be true, got {a[kind]!r}")
    if kind == "reset":
        return {"reset": True}
    fields = (ASSIGNMENT_FIELDS if kind == "assign" else NO_WORKER_FIELDS)[shape]
    omit = a.get("omit", [])
    if not isinstance(omit, list) or not all(isinstance(f, str) for f in omit):
        raise ConfigError(f"{where}.omit: must be a list of field names, got {omit!r}")
    for f in omit:
        if f not in fields:
            raise ConfigError(f"{where}.omit: {f!r} is not a field of a {shape} "
                              f"{kind} answer {list(fields)}")
    extra = a.get("extra", {})
    if not isinstance(extra, Mapping) or not all(isinstance(k, str) for k in extra):
        raise ConfigError(f"{where}.extra: must be an object, got {extra!r}")
    _check_json(f"{where}.extra", extra)
    return {kind: True, "omit": list(omit), "extra": dict(extra)}


def _verbatim(a: Mapping[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(set(a) - {"status", "json", "text", "headers"})
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown} for a verbatim answer")
    status = a["status"]
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise ConfigError(f"{where}.status: must be an HTTP status 200..599, got {status!r}")
    if "json" in a and "text" in a:
        raise ConfigError(f"{where}: 'json' or 'text', not both")
    if "text" in a and not isinstance(a["text"], str):
        raise ConfigError(f"{where}.text: must be a string, got {a['text']!r}")
    if "json" in a:
        _check_json(f"{where}.json", a["json"])
    headers = a.get("headers", {})
    if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ConfigError(f"{where}.headers: must map names to strings, got {headers!r}")
    out = {"status": status, "headers": dict(headers)}
    if "json" in a:
        out["json"] = a["json"]
    else:
        out["text"] = a.get("text", "")
    return out


def _check_json(where: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: must be plain JSON: {e}") from None
