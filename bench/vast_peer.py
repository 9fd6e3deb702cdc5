"""The peer of scenario 1: Vast's official client (``vastai`` 1.9.1, ``CoroutineServerless``)
in one asyncio process, ``--in-flight`` requests at a time, against the same emulator.

Run by the bench as its own process (so its CPU is its own and it shares no GIL):
warm-up, print ``ready``, wait for a line on stdin, run ``--jobs`` requests, print one
JSON line ``{"jobs", "ok", "seconds", "cpu_s"}``. It keeps nothing: no durability, no
retry after a crash; that is the comparison the issue asks for, not a like-for-like one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
import uuid
from typing import Any

from vastai.serverless.client.client import CoroutineServerless
from vastai.serverless.client.endpoint import Endpoint


async def _run(a: argparse.Namespace) -> dict[str, Any]:
    client = CoroutineServerless(api_key=a.key, autoscaler_url=a.url)
    # The client downloads Vast's root certificate for its TLS context; the bench is
    # offline and the emulator's workers are plain HTTP.
    client._ssl_context = ssl.create_default_context()
    ep = Endpoint(client, name=a.endpoint, id=1, api_key=a.key)  # skips the console API
    gate = asyncio.Semaphore(a.in_flight)

    async def one(n: int) -> bool:
        async with gate:
            r = await ep.request(a.path, {"id": uuid.uuid4().hex, "n": n, "prompt": "bench"},
                                 cost=1, timeout=120)
            return bool(r.get("ok"))

    try:
        await asyncio.gather(*(one(n) for n in range(min(100, a.jobs))))
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        t0, c0 = time.monotonic(), time.process_time()
        ok = await asyncio.gather(*(one(n) for n in range(a.jobs)))
        return {"jobs": a.jobs, "ok": sum(ok), "seconds": time.monotonic() - t0,
                "cpu_s": time.process_time() - c0}
    finally:
        await client.close()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.vast_peer", description=__doc__)
    p.add_argument("--url", required=True, help="the emulator's base URL (run.vast.ai)")
    p.add_argument("--key", required=True)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--path", default="/v1/completions")
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--in-flight", type=int, default=32)
    print(json.dumps(asyncio.run(_run(p.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
