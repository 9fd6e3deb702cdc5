"""The gateway's OpenAPI 3.1 document (``GET /openapi.json``).

Written by hand next to the handlers it describes; ``tests/web/test_gateway.py``
validates every answer the tests get against it, so it cannot drift unnoticed.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from dispatcher.model import STATUSES

NUM = {"type": ["number", "null"]}
INT = {"type": "integer"}
STR = {"type": ["string", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "malformed input (not JSON, a bad parameter); `field` names it",
            401: "missing or wrong bearer token", 404: "no such job",
            413: "body over DISPATCHER_GATEWAY_MAX_BODY",
            422: "a job that fails its checks; `field` names it (`jobs[3].cost`)"}
    return {str(c): _json(_ref("Error"), text[c]) for c in codes}


_JOB_ID = {"name": "job_id", "in": "path", "required": True,
           "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:\\-]{1,128}$"}}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "additionalProperties": False,
              "properties": {"error": {"type": "string"}, "field": {"type": "string"}}},
    "SubmitRequest": {
        "type": "object", "required": ["endpoint", "payload", "path"],
        "additionalProperties": False,
        "properties": {
            "endpoint": {"type": "string", "description": "the Vast endpoint name"},
            "payload": {"description": "any JSON: the body the GPU worker gets"},
            "path": {"type": "string", "description": "worker route, e.g. /v1/completions"},
            "cost": {"type": "number", "minimum": 0, "default": 100},
            "max_wait": {"type": "number", "exclusiveMinimum": 0},
            "timeout": {"type": "number", "exclusiveMinimum": 0},
            "priority": {"type": "integer", "minimum": 0, "maximum": 9, "default": 0},
            "job_id": {"type": "string", "description": "idempotency key"},
            "webhook": {"type": "string", "format": "uri"},
            "webhook_events": {"type": "array", "items": {"enum": [
                "completed", "succeeded", "failed", "expired", "cancelled", "started"]}},
            "stream": {"type": "boolean", "default": False,
                       "description": "keep the answer's pieces as they arrive (Redis "
                                      "stream dispatcher:stream:<id>)"},
            "max_reroutes": {"type": "integer", "minimum": 0, "maximum": 100,
                             "description": "this job's bound on re-routes (default "
                                            "DISPATCHER_MAX_REROUTES)"},
            "retry_on": {"type": "array", "items": {"enum": [
                "worker_timeout", "worker_stream_broken"]},
                "description": "re-run after these too (the GPU may have done the work: "
                               "for idempotent jobs)"},
        },
    },
    "BatchRequest": {"type": "object", "required": ["jobs"], "additionalProperties": False,
                     "properties": {"jobs": {"type": "array",
                                             "items": _ref("SubmitRequest")}}},
    "Submitted": {"type": "object", "required": ["id", "status"],
                  "additionalProperties": False,
                  "properties": {"id": {"type": "string"},
                                 "status": {"enum": list(STATUSES)}}},
    "BatchSubmitted": {"type": "object", "required": ["ids"], "additionalProperties": False,
                       "properties": {"ids": {"type": "array", "items": {"type": "string"}}}},
    "Job": {
        "type": "object", "required": ["id", "status"], "additionalProperties": False,
        "properties": {
            "id": {"type": "string"}, "status": {"enum": list(STATUSES)},
            "endpoint": STR, "cost": NUM, "path": STR,
            "result": {"description": "the worker's answer: JSON, or text"},
            "error": STR, "error_kind": STR, "attempts": INT, "route_calls": INT,
            "worker_attempts": INT, "reroutes": INT, "worker_url": STR,
            "worker_status": {"type": ["integer", "null"]}, "wait_reason": STR,
            "next_poll_at": NUM, "request_idx": {"type": ["integer", "null"]},
            "max_wait": NUM, "timeout": NUM, "priority": INT, "created_at": NUM,
            "assigned_at": NUM, "finished_at": NUM, "webhook": STR, "webhook_status": STR,
            "webhook_attempts": INT, "webhook_last_error": STR, "webhook_delivery_id": STR,
            "stream": {"type": "boolean"},
            "retries": INT, "last_error": STR, "last_error_kind": STR,
        },
    },
    "Cancelled": {"type": "object", "required": ["id", "cancelled", "status"],
                  "additionalProperties": False,
                  "properties": {"id": {"type": "string"}, "cancelled": {"type": "boolean"},
                                 "status": {"enum": list(STATUSES)}}},
    "Stats": {"type": "object", "required": ["endpoints"],
              "properties": {"endpoints": {"type": "object", "additionalProperties": {
                  "type": "object", "required": ["queued", "waiting", "running"]}}}},
    "Health": {"type": "object", "required": ["ok"],
               "properties": {"ok": {"type": "boolean"}, "error": {"type": "string"}}},
}

PATHS: dict[str, Any] = {
    "/v1/jobs": {"post": {
        "summary": "Submit a job (the arguments of dispatcher.submit)",
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": _ref("SubmitRequest")}}},
        "responses": {"201": _json(_ref("Submitted"), "queued"),
                      "200": _json(_ref("Submitted"), "a job with this job_id exists: it"),
                      **_errors(400, 401, 413, 422)}}},
    "/v1/jobs/batch": {"post": {
        "summary": "Submit many jobs; every one is checked before any is written",
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": _ref("BatchRequest")}}},
        "responses": {"201": _json(_ref("BatchSubmitted"), "their ids, in order"),
                      **_errors(400, 401, 413, 422)}}},
    "/v1/jobs/{job_id}": {"get": {
        "summary": "The job (as `dispatcher status` prints it, with its result)",
        "parameters": [_JOB_ID, {
            "name": "wait", "in": "query", "required": False,
            "description": "long-poll: answer when the job ends or after this many seconds "
                           "(at most DISPATCHER_GATEWAY_MAX_WAIT), whichever is first",
            "schema": {"type": "number", "minimum": 0}}],
        "responses": {"200": _json(_ref("Job"), "the job (ended, or as it is now)"),
                      **_errors(400, 401, 404)}}},
    "/v1/jobs/{job_id}/stream": {"get": {
        "summary": "Server-Sent Events of a streaming job's pieces, from the first, then "
                   "`event: end` with {status[, error_kind, error]} (a job submitted without "
                   "stream: its whole result as one event once it ends)",
        "parameters": [_JOB_ID],
        "responses": {"200": {"description": "text/event-stream until the job ends",
                              "content": {"text/event-stream": {"schema": {
                                  "type": "string"}}}},
                      **_errors(400, 401, 404)}}},
    "/v1/jobs/{job_id}/cancel": {"post": {
        "summary": "Cancel a job that has not ended",
        "parameters": [_JOB_ID],
        "responses": {"200": _json(_ref("Cancelled"), "whether this call cancelled it"),
                      **_errors(400, 401, 404)}}},
    "/v1/stats": {"get": {
        "summary": "Queue health per endpoint (dispatcher stats --json)",
        "responses": {"200": _json(_ref("Stats"), "per endpoint"), **_errors(401)}}},
    "/healthz": {"get": {
        "summary": "Liveness: Redis answers (no token needed)", "security": [],
        "responses": {"200": _json(_ref("Health"), "ok"),
                      "503": _json(_ref("Health"), "Redis does not answer")}}},
    "/openapi.json": {"get": {
        "summary": "This document (no token needed)", "security": [],
        "responses": {"200": {"description": "OpenAPI 3.1",
                              "content": {"application/json": {"schema": {
                                  "type": "object"}}}}}}},
}

@cache
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "vast-dispatcher gateway", "version": "1",
                 "description": "Submit inference jobs to Vast.ai Serverless GPUs and read "
                                "their results, from any language."},
        "paths": PATHS,
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "DISPATCHER_GATEWAY_TOKEN"}}},
        "security": [{"bearer": []}],
    }


def document() -> dict[str, Any]:
    """A fresh copy: callers may not change the one served."""
    return copy.deepcopy(_document())
