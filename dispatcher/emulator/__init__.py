"""A local Vast Serverless ("LocalStack for Vast") for tests, demos, benchmarks and offline
work. The dispatcher itself never imports this package.

    with Emulator({"endpoints": {"llm": {"workers": 1}}}) as vast:
        requests.post(vast.route_url, json={"endpoint": "llm", "cost": 10},
                      headers={"Authorization": f"Bearer {vast.api_key}"})

Or as a process: ``python -m dispatcher.emulator [--config FILE] [--port 8081]``.

Router, as Vast's ``POST /route/``: 401 ``{"error"}`` for a bad Bearer key; 400
``{"error"}`` for a missing/unknown endpoint or a cost that is not a number >= 0 (a
missing cost is 100); 429 plain text "API requests too frequent" without Retry-After
(``rate_limit`` per endpoint and key, or ``route_429_rate``); injected 5xx and connection
resets. HTTP 200 answers are an assignment ``{"endpoint", "url", "cost", "reqnum",
"signature", "request_idx", "__request_id"}`` or "no worker" ``{"endpoint", "status",
"request_idx", "__request_id"}``. Demand that finds no capacity cold-starts workers.

Workers each listen on their own loopback port (refusing connections while stopped),
check ``auth_data`` like a real worker (422 malformed, 401 bad signature / other
worker's url / replayed ``reqnum``, 429 estimated queue time over ``max_queue_time``)
and answer ``{"ok": true, "endpoint", "path", "worker", "reqnum", "payload"}``.

Per-payload directives: a payload dict may script its own execution with
``"emulate": {...}`` (a bad directive is a 422):

- ``sleep``: seconds of work, instead of the endpoint's latency distribution;
- ``status``: answer this HTTP status (200..599) with a text body;
- ``fail_times``: answer 500 to the first N executions of this payload id, then succeed;
- ``hang``: true = never answer (until the client disconnects);
- ``text``: answer this text as text/plain instead of JSON;
- ``size``: pad the JSON answer to about this many bytes.

A payload's id (for stats and ``fail_times``) is ``payload["id"]`` if present, else the
sha1 of its canonical JSON.

Truth and control: ``GET /_emulator/stats`` (also ``Emulator.stats()``),
``POST /_emulator/config`` (also ``Emulator.configure()``) with a partial config
(``{"route_error_rate": 0.5, "endpoints": {"llm": {"concurrency": 4}}}``, a new endpoint
name adds one) or an action: ``{"action": "stop_all", "endpoint": e}``,
``{"action": "cold_start", "endpoint": e, "seconds": s}``,
``{"action": "start", "endpoint": e, "count": n}``, ``{"action": "reset_stats"}``;
``GET /_emulator/health``; ``GET /_emulator/config`` (the current config, key redacted).
"""

from dispatcher.emulator.config import ConfigError, EmulatorConfig, EndpointConfig
from dispatcher.emulator.server import Emulator

__all__ = ["ConfigError", "Emulator", "EmulatorConfig", "EndpointConfig"]
