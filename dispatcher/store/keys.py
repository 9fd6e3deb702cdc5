"""The Redis schema: every key name, status set and constant shared by Python and Lua.

This module is the one place they are spelled. The Lua scripts get them from
``lua_prelude()``, which ``store/scripts.py`` puts in front of every script, so a
change here changes both languages at once. The README documents the job hash
(``dispatcher:job:<id>``) as a stable interface; the other keys are internal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

from dispatcher.model import (
    LIVE,
    PENDING,
    TERMINAL,
    ClaimOutcome,
    FinishOutcome,
    HookOutcome,
    HookResult,
    RetryOutcome,
    ScheduleOutcome,
    Status,
    WebhookStatus,
)

PREFIX = "dispatcher:"


@dataclass(frozen=True)
class Key:
    """A key template: ``PREFIX`` + parts, with ``{name}`` parts filled in per call."""

    name: str  # the Python function name; the Lua function is ``<name>_key``
    template: str  # e.g. "pending:{queue}:{endpoint}"
    doc: str

    @property
    def params(self) -> list[str]:
        return [p[1:-1] for p in self._parts() if p.startswith("{")]

    def _parts(self) -> list[str]:
        out, rest = [], self.template
        while rest:
            i = rest.find("{")
            if i < 0:
                out.append(rest)
                break
            if i:
                out.append(rest[:i])
            j = rest.index("}", i)
            out.append(rest[i:j + 1])
            rest = rest[j + 1:]
        return out

    def __call__(self, *args: object) -> str:
        values = dict(zip(self.params, args, strict=True))
        return PREFIX + self.template.format(**{k: str(v) for k, v in values.items()})

    def lua(self) -> str:
        pieces = ["PREFIX"] + [p[1:-1] if p.startswith("{") else repr(p) for p in self._parts()]
        return (f"local function {self.name}_key({', '.join(self.params)})\n"
                f"  return {' .. '.join(pieces)}\nend")


JOB = Key("job", "job:{id}", "the job hash: the public, stable record of a job")
WAITING = Key("waiting", "waiting:{queue}",
              "ZSET of jobs not ended, scored by when each is next due (Redis clock)")
HOOKS = Key("hooks", "hooks:{queue}", "ZSET of webhook deliveries, scored by due time")
PENDING_INDEX = Key("pending", "pending:{queue}:{endpoint}",
                    "ZSET of an endpoint's jobs not on a GPU yet, most urgent first")
HELD = Key("held", "held:{endpoint}",
           "ZSET of woken jobs holding a freed GPU slot, scored by priority")
GATE = Key("gate", "gate:{endpoint}", "HASH: the endpoint's route budget and last route status")
CALLS = Key("calls", "calls:{endpoint}:{sec}", "route calls the fleet made in one second")
R429 = Key("r429", "r429:{endpoint}:{sec}", "429 answers the fleet got in one second")
COUNTS = Key("counts", "counts:{endpoint}", "HASH: jobs per live state, totals per end state")
SAMPLES = Key("samples", "samples:{endpoint}",
              "LIST of recent jobs' '<wait seconds> <run seconds>', newest first")
ENDPOINTS = Key("endpoints", "endpoints",
                "ZSET of the endpoints jobs were submitted for, scored by their last create "
                "or end (idle ones are forgotten)")
DONE = Key("done", "done:{id}",
           "LIST of the job's end status, pushed by its terminal write and kept NOTIFY_TTL "
           "seconds: waiters BLMOVE it onto itself, so every waiter wakes and none takes it")
EVENTS = Key("events", "events:{id}",
             "pub/sub channel: the job's new status at each change, for watchers")

STREAM = Key("stream", "stream:{id}",
             "STREAM of a streaming job's pieces as they arrive ({data}), then one {end: "
             "<status>} after its terminal write; it expires with the job")

JOB_INDEX = Key("jobs", "jobs:{endpoint}:{status}",
                "ZSET of an endpoint's jobs in one status, scored by when each entered it "
                "(lib/index.lua): an ended job's entry lives as long as the job, and at most "
                "JOB_INDEX_MAX of them per endpoint and status")

KEYS = (JOB, WAITING, HOOKS, PENDING_INDEX, HELD, GATE, CALLS, R429, COUNTS, SAMPLES,
        ENDPOINTS, DONE, EVENTS, STREAM, JOB_INDEX)

JOB_PREFIX = JOB("")  # scripts that get ids from a set build job keys from it

# Pending index score: (9 - priority) * PRIORITY_BAND + created_at, so priority wins,
# then age. Lua encodes it (lib/index.lua); Python reads it back (``decode_pending``).
PRIORITY_BAND = 1e10
MAX_PRIORITY = 9

# Route budget: the smallest burst of a learned rate (config.ROUTE_MIN_BURST for a
# configured one): movers hand due jobs over in 0.1 s batches.
MIN_BURST = 3
# A woken job holds the freed GPU slot at most this long (lib/hold.lua).
HOLD_SECONDS = 2.0
# finish writes webhook_seq = 1 when it queues a delivery: the first message's number.
FIRST_WEBHOOK_SEQ = 1
# Recent wait/run samples kept per endpoint for the percentiles in stats.
SAMPLES_KEPT = 1000
# Per-second route counters live this long (stats reads the last 10 s).
COUNTER_TTL = 60
# A job's end notice (DONE) lives this long: far more than the gap between a waiter's
# read of the status and its blocking call. Later waiters read the ended job itself.
NOTIFY_TTL = 60
# The webhook event of a job that got a GPU (opt-in in webhook_events); the end events
# are the terminal statuses.
STARTED_EVENT = "started"

# Ended jobs the job index keeps per endpoint and status, at most (the newest): a bound
# under the result TTL's, for an endpoint that ends more jobs per TTL than this.
JOB_INDEX_MAX = 100_000

# kombu's Redis priority queues: "<queue>" for step 0, "<queue>:<n>" for the others.
PRIORITY_STEPS = list(range(MAX_PRIORITY + 1))
PRIORITY_SEP = ":"


def broker_lists(queue: str) -> list[str]:
    """The Redis lists kombu keeps for one queue, one per priority step."""
    return [queue] + [f"{queue}{PRIORITY_SEP}{n}" for n in PRIORITY_STEPS[1:]]


def pending_band(priority: int) -> tuple[float, float]:
    """The score range of one priority in the pending index."""
    band = MAX_PRIORITY - priority
    return band * PRIORITY_BAND, (band + 1) * PRIORITY_BAND


def decode_pending(score: float) -> tuple[int, float]:
    """(priority, created_at) of a pending-index score."""
    band = int(score // PRIORITY_BAND)
    return MAX_PRIORITY - band, score - band * PRIORITY_BAND


def job_key(job_id: str) -> str:
    return JOB(job_id)


def _lua_set(name: str, members: frozenset[Status] | tuple[Status, ...]) -> str:
    items = ", ".join(f"{s} = true" for s in sorted(str(m) for m in members))
    return f"local {name} = {{{items}}}"


def _lua_names(name: str, *literals: Any) -> str:
    """A Lua table name -> name of every value of some Literal types."""
    values = sorted({v for lit in literals for v in get_args(lit)})
    return f"local {name} = {{{', '.join(f'{v} = {v!r}' for v in values)}}}"


def lua_prelude() -> str:
    """The schema as Lua: what every script is given first."""
    status = ", ".join(f"{s.name} = {str(s)!r}" for s in Status if s is not Status.UNKNOWN)
    lines = [
        "-- Generated from dispatcher/store/keys.py: the Redis schema. Do not spell keys,",
        "-- statuses or these constants anywhere else.",
        f"local PREFIX = {PREFIX!r}",
        f"local ST = {{{status}}}",
        _lua_set("TERMINAL", TERMINAL),
        _lua_set("PENDING", PENDING),
        _lua_set("LIVE", LIVE),
        _lua_names("OUT", ClaimOutcome, ScheduleOutcome, FinishOutcome, HookOutcome,
                   RetryOutcome),
        _lua_names("HOOK", HookResult),
        _lua_names("WEBHOOK", WebhookStatus),
        f"local PRIORITY_BAND = {PRIORITY_BAND:.0f}",
        f"local MAX_PRIORITY = {MAX_PRIORITY}",
        f"local MIN_BURST = {MIN_BURST}",
        f"local HOLD = {HOLD_SECONDS!r}",
        f"local FIRST_WEBHOOK_SEQ = '{FIRST_WEBHOOK_SEQ}'",
        f"local SAMPLES_KEPT = {SAMPLES_KEPT}",
        f"local COUNTER_TTL = {COUNTER_TTL}",
        f"local NOTIFY_TTL = {NOTIFY_TTL}",
        f"local STARTED_EVENT = {STARTED_EVENT!r}",
        f"local JOB_INDEX_MAX = {JOB_INDEX_MAX}",
    ]
    lines += [k.lua() for k in KEYS]
    return "\n".join(lines) + "\n"
