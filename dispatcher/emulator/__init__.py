"""A local Vast Serverless ("LocalStack for Vast") for tests, demos, benchmarks and offline work.

    with Emulator(EmulatorConfig.from_dict({"endpoints": {"llm": {"workers": 1}}})) as vast:
        requests.post(vast.route_url, json={"endpoint": "llm", "cost": 10},
                      headers={"Authorization": f"Bearer {vast.api_key}"})

The router speaks ``POST /route/`` as Vast does (401 bad key, 400 bad input, 429
plain text with no Retry-After, assignments or "no worker" answers with
``request_idx``). Each worker listens on its own loopback port, checks the
router's signature, the url and a once-only ``reqnum`` (401/422 like a real
worker), and echoes ``{"ok", "endpoint", "path", "worker", "reqnum", "payload"}``.

A payload dict may script its own execution with ``"emulate": {...}``:
``sleep`` (seconds of work), ``status`` (answer that HTTP status), ``fail_times``
(500 for the first N executions of this payload id), ``hang`` (never answer),
``text`` (answer plain text), ``size`` (pad the JSON answer to about N bytes).

Truth for tests: ``GET /_emulator/stats``; changes while running:
``POST /_emulator/config`` (a partial config, or ``{"action": "stop_all" |
"cold_start" | "start" | "reset_stats", "endpoint": ..., ...}``).
The dispatcher itself never imports this package.
"""

from dispatcher.emulator.config import ConfigError, EmulatorConfig, EndpointConfig
from dispatcher.emulator.server import Emulator

__all__ = ["ConfigError", "Emulator", "EmulatorConfig", "EndpointConfig"]
