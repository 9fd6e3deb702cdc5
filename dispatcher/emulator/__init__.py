"""A local Vast Serverless ("LocalStack for Vast") for tests, demos, benchmarks and offline
work, documented in full in ``docs/emulator.md``. The dispatcher itself never imports it.

    with Emulator({"endpoints": {"llm": {"workers": 1}}}) as vast:
        requests.post(vast.route_url, json={"endpoint": "llm", "cost": 10},
                      headers={"Authorization": f"Bearer {vast.api_key}"})

Or as a process: ``python -m dispatcher.emulator [--config FILE] [--port 8081]``.

Router, as Vast's ``POST /route/``: 401 ``{"error"}`` for a bad Bearer key; 400
``{"error"}`` for a missing/unknown endpoint or a cost that is not a number >= 0 (a
missing cost is 100); 429 plain text "API requests too frequent" without Retry-After
(``rate_limit`` per endpoint and key, or ``route_429_rate``); injected 5xx and connection
resets. HTTP 200 answers, by the endpoint's ``answer_shape``: "live" (default, what Vast
sends) an assignment ``{"endpoint", "url", "cost", "reqnum", "signature", "request_idx",
"__request_id"}`` or "no worker" ``{"endpoint", "status", "__request_id", "request_idx"}``;
"published" the same without ``request_idx`` (Vast's API reference). Demand that finds no
capacity cold-starts workers. ``script_route`` makes the next answers for an endpoint
whatever a test needs (verbatim bodies, or real assignments with fields left out or added).

Signing, as Vast's: RSA PKCS#1 v1.5 over SHA-256 of ``json.dumps({"url": url}, indent=4,
sort_keys=True)``, base64; the public key (PEM) at ``GET /pubkey/``.

Simulated workers each listen on their own loopback port (refusing connections while
stopped), HTTPS under a root CA shaped like Vast's with ``tls`` (``GET /_emulator/ca.pem``).
They check ``auth_data`` as Vast's PyWorker does (422 in its JSON shape for a missing field,
401 with an empty body for a bad signature, 429 above ``max_queue_time``) and, stricter than
Vast as detectors of dispatcher bugs, refuse a replayed ``reqnum`` and anything but the
assignment issued, verbatim (401; ``reject_replay`` / ``reject_tampered`` turn them off). They
answer ``{"ok": true, "endpoint", "path", "worker", "reqnum", "payload"}``, or a stream (the
endpoint's ``stream``: ``pieces``, ``interval``, ``format`` sse/ndjson/raw, ``drop_after``),
or what a payload's ``"emulate": {...}`` directives say: ``sleep``, ``status`` (with ``json``
and ``status_times``), ``fail_times``, ``hang``, ``text``, ``size``, ``stream``, and hostile
answers ``drip``, ``body_drip``, ``nested``, ``huge``, ``cut``. ``expected_stream(payload)``
is what a payload streams (its pieces are a function of its id). A client that closes its
connection stops the work, counted as ``cancelled_by_client`` (and ``cancelled_by_payload``).

Real PyWorkers: an endpoint with ``workers_from: "pyworker"`` has no simulated workers; Vast's
own PyWorker processes register as on Vast (``REPORT_ADDR`` at the emulator, ``POST
/worker_status/`` and ``/delete_requests/``, ``MASTER_TOKEN`` naming the endpoint) and are
routed to by their reported readiness and load.

Truth and control: ``GET /_emulator/stats`` (also ``Emulator.stats()``),
``POST /_emulator/config`` (also ``Emulator.configure()``) with a partial config
(``{"route_error_rate": 0.5, "endpoints": {"llm": {"concurrency": 4}}}``, a new endpoint
name adds one) or an action: ``stop_all``, ``cold_start`` (``seconds``), ``start``
(``count``), ``reset_stats``, ``rotate_key``, ``script_route`` (``answers``);
``GET /_emulator/health``; ``GET /_emulator/config`` (secrets redacted).
"""

from dispatcher.emulator.config import ConfigError, EmulatorConfig, EndpointConfig
from dispatcher.emulator.server import Emulator
from dispatcher.emulator.streams import ExpectedStream, expected_stream

__all__ = ["ConfigError", "Emulator", "EmulatorConfig", "EndpointConfig", "ExpectedStream",
           "expected_stream"]
