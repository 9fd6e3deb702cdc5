"""Fixtures for the web-facing API (asyncio client, batch submit, push, gateway): the
end-to-end ones, real Redis, the emulator over HTTP and a real worker process."""

from __future__ import annotations

from tests.e2e.conftest import add_endpoint, client, e2e_env, vast, worker

__all__ = ["add_endpoint", "client", "e2e_env", "vast", "worker"]
