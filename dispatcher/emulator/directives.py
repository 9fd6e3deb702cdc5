"""Per-payload directives: ``payload["emulate"]`` scripts one job's execution.

They let an end-to-end test make one job slow, failing or hung without reconfiguring
the emulator for every other job. A bad directive is the test author's mistake, so the
worker answers 422 (permanent) naming it, rather than something a dispatcher retries.
"""

from __future__ import annotations

from typing import Any

from dispatcher.emulator.config import ConfigError, check_integer, check_number

DIRECTIVES = ("sleep", "status", "fail_times", "hang", "text", "size")


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
    return out
