"""The e2e fixtures (real Redis, the emulator over HTTP, a real worker process)."""

from tests.e2e.conftest import client, e2e_env, vast, worker  # noqa: F401
