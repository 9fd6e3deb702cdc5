"""The gateway's submit route on Starlette + uvicorn, for the server-library comparison
in bench/web.py only (the gateway itself is aiohttp: dispatcher/gateway/).

Same client, same checks, same answer as ``POST /v1/jobs``; run with
``uvicorn bench.gateway_starlette:app --http httptools --loop asyncio``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dispatcher.aio import AsyncClient
from dispatcher.errors import InvalidJob
from dispatcher.submission import job_from_mapping

state: dict[str, Any] = {}


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    state["client"] = AsyncClient()
    yield
    await state["client"].aclose()


async def post_job(request: Request) -> JSONResponse:
    client: AsyncClient = state["client"]
    try:
        body = json.loads(await request.body())
    except ValueError as e:
        return JSONResponse({"error": f"body: not valid JSON: {e}", "field": "body"}, 400)
    try:
        job = job_from_mapping(client.settings, body)
    except InvalidJob as e:
        return JSONResponse({"error": str(e), "field": e.field}, 422)
    if await client.submit_checked(job):
        return JSONResponse({"id": job.id, "status": "queued"}, 201)
    return JSONResponse({"id": job.id, "status": (await client.get_job(job.id)).status})


app = Starlette(routes=[Route("/v1/jobs", post_job, methods=["POST"])], lifespan=lifespan)
