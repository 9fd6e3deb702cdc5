"""``dispatcher gateway``: an HTTP API over the client, for apps in any language.

``POST /v1/jobs``, ``POST /v1/jobs/batch``, ``GET /v1/jobs/{id}[?wait=S]``,
``POST /v1/jobs/{id}/cancel``, ``GET /v1/stats``, ``GET /healthz``, ``GET /openapi.json``
(``app.py``; the document in ``openapi.py``). aiohttp, which the emulator already uses:
one dependency, its own server, measured in bench/README.md against Starlette + uvicorn.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from collections.abc import Callable

from dispatcher.config import Settings

# A token shorter than this is refused: it is the only thing between the API and the
# network.
MIN_TOKEN = 16

log = logging.getLogger("dispatcher.gateway")


class GatewayRefused(Exception):
    """The gateway will not start as asked; the message says why and what to do."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_for(settings: Settings, host: str, no_auth: bool) -> str | None:
    """The token the gateway requires, or None for ``--no-auth`` on loopback."""
    if no_auth:
        if not is_loopback(host):
            raise GatewayRefused(f"--no-auth: only on a loopback address (127.0.0.1, ::1), "
                                 f"not {host!r}: anyone who reaches it could submit jobs")
        return None
    token = settings.gateway_token
    if not token:
        raise GatewayRefused("DISPATCHER_GATEWAY_TOKEN is not set: the gateway requires a "
                             "Bearer token (or --no-auth, on a loopback address only)")
    if len(token) < MIN_TOKEN:
        raise GatewayRefused(f"DISPATCHER_GATEWAY_TOKEN: must be at least {MIN_TOKEN} "
                             "characters (e.g. `openssl rand -hex 32`); the value is not shown")
    return token


async def serve(settings: Settings, host: str, port: int, token: str | None,
                ready: Callable[[str], None] = print) -> None:
    """Run until SIGINT/SIGTERM; ``ready`` gets the URL once it listens."""
    from aiohttp import web

    from dispatcher.aio import AsyncClient
    from dispatcher.gateway.app import make_app

    client = AsyncClient(settings)
    app = make_app(client, token)
    # An abandoned long-poll is cancelled with its connection: its Redis block ends too.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0] if runner.addresses else (host, port)
    shown = f"[{bound[0]}]" if ":" in str(bound[0]) else bound[0]
    ready(f"dispatcher gateway on http://{shown}:{bound[1]} "
          f"({'Bearer token required' if token else 'NO AUTH, loopback only'})")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run(settings: Settings, host: str, port: int, no_auth: bool = False) -> None:
    """``dispatcher gateway``: raises ``GatewayRefused`` before listening when unsafe."""
    token = token_for(settings, host, no_auth)
    asyncio.run(serve(settings, host, port, token, lambda url: print(url, flush=True)))
