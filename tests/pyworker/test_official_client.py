"""Vast's official client (``vastai`` 1.9.1's ``CoroutineServerless``) against the emulator
as if it were run.vast.ai (issue 10, section 5): the emulator answers as Vast's own
client expects, cold start included."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest
from vastai.serverless.client.client import CoroutineServerless
from vastai.serverless.client.endpoint import Endpoint

from dispatcher.emulator import Emulator, EmulatorConfig

from .conftest import KEY, Launcher, pyworker_state, wait_for

pytestmark = [pytest.mark.pyworker, pytest.mark.timeout(120)]


async def run_requests(vast: Emulator, endpoint: str, payloads: list[dict[str, Any]],
                       path: str = "/generate") -> list[dict[str, Any]]:
    client = CoroutineServerless(api_key=KEY, autoscaler_url=vast.url)
    # The client would download Vast's root certificate for its TLS context.
    client._ssl_context = ssl.create_default_context()
    ep = Endpoint(client, name=endpoint, id=1, api_key=KEY)  # skips the console API
    try:
        return await asyncio.wait_for(asyncio.gather(*(
            ep.request(path, p, cost=10, timeout=60) for p in payloads)), 90)
    finally:
        await client.close()


def test_official_client_cold_start_and_many_requests() -> None:
    cfg = EmulatorConfig.from_dict({"api_key": KEY, "seed": 4, "endpoints": {"llm": {
        "workers": 0, "max_workers": 2, "cold_start": 1.5, "concurrency": 8,
        "latency": {"kind": "fixed", "seconds": 0.05}}}})
    with Emulator(cfg) as vast:
        assert vast.stats()["endpoints"]["llm"]["ready"] == 0  # scaled to zero
        payloads = [{"id": f"job-{i}", "prompt": f"hello {i}"} for i in range(24)]
        results = asyncio.run(run_requests(vast, "llm", payloads))
        assert [r["ok"] for r in results] == [True] * 24
        assert [r["response"]["payload"] for r in results] == payloads
        assert all(r["response"]["path"] == "/generate" for r in results)
        assert {r["url"] for r in results} <= set(vast.worker_urls("llm"))
        stats = vast.stats()
        assert stats["executions_by_payload"] == {p["id"]: 1 for p in payloads}
        assert stats["route"]["no_worker"] > 0  # it waited through the cold start
        w = stats["workers"]
        assert (w["rejected_signature"], w["rejected_tampered"], w["malformed"]) == (0, 0, 0)


def test_official_client_with_the_published_shape() -> None:
    cfg = EmulatorConfig.from_dict({"api_key": KEY, "endpoints": {"pub": {
        "workers": 1, "concurrency": 4, "answer_shape": "published",
        "latency": {"kind": "fixed", "seconds": 0.01}}}})
    with Emulator(cfg) as vast:
        results = asyncio.run(run_requests(vast, "pub", [{"id": "a"}, {"id": "b"}]))
        assert [r["status"] for r in results] == [200, 200]
        assert "request_idx" not in results[0]["auth_data"]


def test_official_client_through_a_real_pyworker(launcher: Launcher) -> None:
    """The whole of Vast offline: its client, the emulator, its PyWorker, a model."""
    cfg = EmulatorConfig.from_dict({"api_key": KEY, "endpoints": {"llm": {
        "workers_from": "pyworker", "concurrency": 8}}})
    with Emulator(cfg) as vast:
        model = launcher.model(delay=0.5)
        pw = launcher.pyworker(vast, model)
        payloads = [{"prompt": f"p{i}"} for i in range(6)]
        results = asyncio.run(run_requests(vast, "llm", payloads))  # started cold
        assert [r["response"]["echo"] for r in results] == payloads
        assert {r["url"] for r in results} == {pw.url}
        assert pyworker_state(vast, "llm", pw.id) == "ready"
        wait_for(lambda: vast.stats()["endpoints"]["llm"]["pyworkers"][0]["finished"].get(
            "Success", 0) == 6, 15, "the PyWorker's delete_requests", [pw.proc])
