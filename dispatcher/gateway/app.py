"""The gateway's HTTP API over ``dispatcher.aio``: the same checks, the same jobs.

Every answer is JSON. Errors are ``{"error": <message>, "field": <name>}`` (the field
where one is to blame): 400 for a body that is not JSON or a parameter that is not
valid, 422 for a job that fails its checks, 401 without the right token, 404, 405,
413 over the body limit, 500 (without details: they go to the log).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from dispatcher.aio import AsyncClient
from dispatcher.errors import InvalidJob, JobNotFound, WaitTimeout
from dispatcher.gateway import dashboard
from dispatcher.gateway.openapi import document
from dispatcher.model import Job
from dispatcher.submission import job_from_mapping, new_jobs
from dispatcher.validation import check_job_id

log = logging.getLogger("dispatcher.gateway")

CLIENT: web.AppKey[AsyncClient] = web.AppKey("client", AsyncClient)
TOKEN: web.AppKey[str | None] = web.AppKey("token")
# No token needed: probes and the API's description hold no job data.
OPEN_PATHS = frozenset({"/healthz", "/openapi.json"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, message: str, field: str | None = None,
          headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status, headers=headers)


def job_view(job: Job) -> dict[str, Any]:
    """The job as ``dispatcher status`` prints it, with its result: no payload (it is
    never read), and no other job's data."""
    return job.to_dict()


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer auth (constant-time), and every failure as a JSON answer."""
    token = request.app[TOKEN]
    if token is not None and request.path not in OPEN_PATHS | dashboard.OPEN_PATHS:
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode("utf-8", "replace"), token.encode())
        if not ok and not dashboard.session_ok(request, token):  # a browser's, reads only
            return dashboard.to_login(request) or error(
                401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": 'Bearer realm="dispatcher"'})
    try:
        return await handler(request)
    except InvalidJob as e:
        return error(422, str(e), e.field)
    except BadRequest as e:
        return error(400, str(e), e.field)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[CLIENT].settings.gateway_max_body
        return error(413, f"body: over the limit of {limit} bytes "
                          "(DISPATCHER_GATEWAY_MAX_BODY)", "body")
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error(e.status, e.reason, headers={k: v for k, v in e.headers.items()
                                                  if k.lower() == "allow"})
    except Exception:
        log.exception("gateway: %s %s failed", request.method, request.path)
        return error(500, "internal error (see the gateway's log)")


async def read_json(request: web.Request) -> Any:
    raw = await request.read()  # bounded by the app's client_max_size
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest("body", f"not valid JSON: {e}") from None


class BadRequest(Exception):
    """A 400 naming the field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


def job_id_of(request: web.Request) -> str:
    try:
        return check_job_id(request.match_info["job_id"])
    except InvalidJob as e:
        raise BadRequest("id", e.reason) from None


async def post_job(request: web.Request) -> web.Response:
    client = request.app[CLIENT]
    body = await read_json(request)
    job = job_from_mapping(client.settings, body)
    created = await client.submit_checked(job)
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if created:
        return web.json_response({"id": job.id, "status": "queued"}, status=201,
                                 headers=headers)
    existing = await client.get_job(job.id)  # the same job_id: the job that has it
    return web.json_response({"id": job.id, "status": existing.status}, headers=headers)


async def post_batch(request: web.Request) -> web.Response:
    client = request.app[CLIENT]
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) != {"jobs"}:
        raise InvalidJob("body", 'must be {"jobs": [job, ...]}')
    checked = new_jobs(client.settings, body["jobs"])  # all checked before any is written
    ids = [i async for part in client.submit_checked_many(checked) for i in part]
    return web.json_response({"ids": ids}, status=201)


async def get_job(request: web.Request) -> web.Response:
    client = request.app[CLIENT]
    job_id = job_id_of(request)
    raw = request.query.get("wait")
    if raw is None:
        job = await client.get_job(job_id)
        if not job.known:
            return error(404, f"no job with id {job_id!r}", "id")
        return web.json_response(job_view(job))
    try:
        wait = float(raw)
    except ValueError:
        raise BadRequest("wait", f"must be a number of seconds, got {raw[:40]!r}") from None
    if not 0 <= wait < float("inf"):
        raise BadRequest("wait", f"must be >= 0 seconds, got {raw[:40]!r}")
    wait = min(wait, client.settings.gateway_max_wait)
    try:
        job = await client.wait(job_id, timeout=wait)
    except JobNotFound:
        return error(404, f"no job with id {job_id!r}", "id")
    except WaitTimeout as e:
        job = e.job  # not ended yet: as it is now; ask again
    return web.json_response(job_view(job))


async def stream_job(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events of a job's pieces, from the first, then ``event: end`` with its
    status (``dispatcher.streams``); 404 for an unknown job."""
    client = request.app[CLIENT]
    job_id = job_id_of(request)
    if not (await client.get_job(job_id)).known:
        return error(404, f"no job with id {job_id!r}", "id")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    async for chunk in client.sse(job_id):
        await resp.write(chunk)
    await resp.write_eof()
    return resp


async def cancel_job(request: web.Request) -> web.Response:
    client = request.app[CLIENT]
    job_id = job_id_of(request)
    cancelled = await client.cancel(job_id)
    job = await client.get_job(job_id)
    if not job.known:
        return error(404, f"no job with id {job_id!r}", "id")
    return web.json_response({"id": job_id, "cancelled": cancelled, "status": job.status})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(await request.app[CLIENT].stats())


async def healthz(request: web.Request) -> web.Response:
    try:
        await request.app[CLIENT].ping()
    except Exception as e:
        return web.json_response({"ok": False, "error": f"redis: {type(e).__name__}"},
                                 status=503)
    return web.json_response({"ok": True})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document())


def make_app(client: AsyncClient, token: str | None) -> web.Application:
    """The gateway as an aiohttp app; ``token`` None serves without auth (loopback only:
    ``dispatcher gateway`` checks)."""
    app = web.Application(middlewares=[guard],
                          client_max_size=client.settings.gateway_max_body)
    app[CLIENT] = client
    app[TOKEN] = token
    r = app.router
    r.add_post("/v1/jobs", post_job)
    r.add_post("/v1/jobs/batch", post_batch)
    r.add_get("/v1/jobs/{job_id}", get_job, allow_head=False)
    r.add_get("/v1/jobs/{job_id}/stream", stream_job, allow_head=False)
    r.add_post("/v1/jobs/{job_id}/cancel", cancel_job)
    r.add_get("/v1/stats", stats, allow_head=False)
    r.add_get("/healthz", healthz, allow_head=False)
    r.add_get("/openapi.json", openapi, allow_head=False)
    # GET / is the live dashboard, its data and its login form (dashboard.py).
    dashboard.add_routes(app, client.settings, token)

    async def close_client(app: web.Application) -> None:
        await app[CLIENT].aclose()

    app.on_cleanup.append(close_client)
    return app
