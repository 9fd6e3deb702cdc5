"""The ``dispatcher`` command. Exit codes: 0 ok, 1 job failed or not found, 2 bad input."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE = 0, 1, 2


def _client() -> Any:
    import dispatcher

    return dispatcher.default_client()


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def _load_payload(source: str) -> Any:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as e:
        raise SystemExit(_usage_error(f"payload: cannot read {source!r}: {e.strerror}")) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(_usage_error(f"payload: {source!r} is not valid JSON: {e}")) from None
    except RecursionError:
        raise SystemExit(_usage_error(f"payload: {source!r} is nested too deeply")) from None


class MissingExtra(Exception):
    """A command whose tools live in an extra that is not installed."""


def _needs(extra: str, *modules: str) -> None:
    """Fail with the install command when an optional dependency is missing."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtra(f"this command needs {', '.join(missing)}: "
                           f"pip install 'vast-dispatcher[{extra}]'")


def _usage_error(message: str) -> int:
    print(f"dispatcher: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _job_exit(job: Any) -> int:
    return EXIT_OK if job.status == "succeeded" else EXIT_JOB_FAILED


def cmd_submit(a: argparse.Namespace) -> int:
    from dispatcher.errors import InvalidJob

    if a.jsonl is not None:
        return _submit_jsonl(a)
    if a.payload is None:
        return _usage_error("payload: give a JSON file (or - for stdin), or --jsonl FILE")
    if a.path is None:
        return _usage_error("path: is required (--path), e.g. /v1/completions")
    payload = _load_payload(a.payload)
    try:
        job_id = _client().submit(
            a.endpoint, payload, cost=a.cost, path=a.path, max_wait=a.max_wait,
            timeout=a.timeout, priority=a.priority, job_id=a.job_id, webhook=a.webhook,
            webhook_events=a.webhook_events or ["completed"], stream=a.stream,
            max_reroutes=a.max_reroutes, retry_on=a.retry_on,
        )
    except InvalidJob as e:
        return _usage_error(str(e))
    if not a.wait:
        print(job_id)
        return EXIT_OK
    if a.stream:
        print(job_id, file=sys.stderr)
        return _follow(job_id, a.wait_timeout)
    job = _wait(job_id, a.wait_timeout)
    if job is None:
        return EXIT_JOB_FAILED
    _print_json(job.to_dict())
    return _job_exit(job)


def _wait(job_id: str, timeout: float) -> Any:
    """The ended job, or None (said on stderr) when there is no such job (any more)."""
    from dispatcher.errors import JobNotFound

    try:
        return _client().wait(job_id, timeout=timeout)
    except JobNotFound as e:
        print(f"dispatcher: {e}", file=sys.stderr)
        return None


def _read_jsonl(source: str) -> tuple[list[Any], list[int]]:
    """The objects of a JSON-lines file (blank lines skipped) and their line numbers."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as e:
        raise SystemExit(_usage_error(f"jsonl: cannot read {source!r}: {e.strerror}")) from None
    items, lines = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise SystemExit(_usage_error(f"{source}:{n}: not valid JSON: {e}")) from None
        lines.append(n)
    return items, lines


def _submit_jsonl(a: argparse.Namespace) -> int:
    """One job per line (``{"payload": ..., "cost": ...}``: submit's arguments, the
    command's options as defaults); every line is checked before any job is written."""
    from dispatcher.errors import InvalidJob

    if a.payload is not None:
        return _usage_error("payload: give either a payload file or --jsonl, not both")
    if a.wait:
        return _usage_error("--wait: not with --jsonl (wait for the printed ids instead)")
    items, lines = _read_jsonl(a.jsonl)
    defaults = {k: v for k, v in {
        "endpoint": a.endpoint, "path": a.path, "cost": a.cost, "max_wait": a.max_wait,
        "timeout": a.timeout, "priority": a.priority, "webhook": a.webhook,
        "webhook_events": a.webhook_events, "max_reroutes": a.max_reroutes,
        "retry_on": a.retry_on}.items() if v is not None}
    jobs = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and "endpoint" in item:
            return _usage_error(f"{a.jsonl}:{lines[i]}: jobs[{i}].endpoint: the endpoint is "
                                "the command's ENDPOINT argument")
        if isinstance(item, dict) and "job_id" in item and a.job_id:
            return _usage_error("--job-id: not with --jsonl (give each line a job_id)")
        jobs.append({**defaults, **item} if isinstance(item, dict) else item)
    client = _client()
    try:
        chunks = client.submit_chunks(jobs)
        first: list[str] = next(chunks, [])
    except InvalidJob as e:
        where = e.field.split("]")[0].removeprefix("jobs[")
        line = f"{a.jsonl}:{lines[int(where)]}: " if where.isdigit() else ""
        return _usage_error(f"{line}{e}")
    with _progress(len(jobs)) as advance:
        for part in (first, *chunks):
            for job_id in part:
                print(job_id)
            sys.stdout.flush()
            advance(len(part))
    return EXIT_OK


class _progress:
    """A progress bar on stderr (rich, if installed), else a plain counter."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self._bar: Any = None

    def __enter__(self) -> Any:
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
        except ImportError:
            return self._count
        self._bar = Progress(TextColumn("submitting"), BarColumn(), MofNCompleteColumn(),
                             console=Console(stderr=True), transient=False)
        self._bar.start()
        self._task = self._bar.add_task("submit", total=self.total)
        return self._advance

    def _advance(self, n: int) -> None:
        self._bar.update(self._task, advance=n)

    def _count(self, n: int) -> None:
        self.done += n
        print(f"submitted {self.done}/{self.total}", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


def cmd_status(a: argparse.Namespace) -> int:
    job = _client().get_job(a.job_id)
    view = job.to_dict()
    view.pop("result", None)
    _print_json(view)
    return EXIT_OK if job.known else EXIT_JOB_FAILED


def _follow(job_id: str, timeout: float) -> int:
    """Print a job's pieces as they arrive, one per line; exit by how it ended."""
    from dispatcher.errors import JobFailed, JobNotFound

    try:
        for piece in _client().stream(job_id, timeout=timeout):
            print(piece, flush=True)
    except JobFailed as e:
        print(f"dispatcher: {e}", file=sys.stderr)
        return EXIT_JOB_FAILED
    except JobNotFound as e:
        print(f"dispatcher: {e}", file=sys.stderr)
        return EXIT_JOB_FAILED
    return EXIT_OK


def cmd_result(a: argparse.Namespace) -> int:
    if a.follow:
        return _follow(a.job_id, a.timeout)
    job = _wait(a.job_id, a.timeout) if a.wait else _client().get_job(a.job_id)
    if job is None:
        return EXIT_JOB_FAILED
    if job.status == "succeeded":
        print(job.result if isinstance(job.result, str) else json.dumps(job.result, indent=2))
        return EXIT_OK
    print(f"job {job.id} is {job.status}" + (f": {job.error}" if job.error else ""),
          file=sys.stderr)
    return EXIT_JOB_FAILED


def cmd_cancel(a: argparse.Namespace) -> int:
    ids = list(a.job_ids)
    if a.stdin:
        ids += [line.strip() for line in sys.stdin if line.strip()]
    if not ids:
        return _usage_error("cancel: give job ids, or --stdin with one id per line")
    client = _client()
    cancelled = set(client.cancel_many(ids))
    code = EXIT_OK
    for job_id in ids:
        if job_id in cancelled:
            print(f"{job_id} cancelled")
        else:
            job = client.get_job(job_id)
            print(f"{job_id} not cancelled: it is {job.status}", file=sys.stderr)
            code = EXIT_JOB_FAILED
    return code


def _confirm(question: str, yes: bool, what: str) -> bool | int:
    """True to go on, False if the operator said no; an exit code when it cannot ask."""
    if yes:
        return True
    if not sys.stdin.isatty():
        return _usage_error(f"{what}: confirm with --yes when not on a terminal")
    if input(f"{question} [y/N] ").strip().lower() in ("y", "yes"):
        return True
    return False


def cmd_purge(a: argparse.Namespace) -> int:
    client = _client()
    counts = client.stats()["endpoints"].get(a.endpoint)
    if counts is None:
        return _usage_error(f"endpoint: no jobs were ever submitted for {a.endpoint!r}")
    n = counts["queued"] + counts["waiting"]
    if a.running:
        question = (f"Cancel {n + counts['running']} job(s) of endpoint {a.endpoint!r}: "
                    f"{n} queued/waiting and {counts['running']} running (their GPU calls "
                    "are cut)?")
    else:
        question = (f"Cancel {n} queued/waiting job(s) of endpoint {a.endpoint!r} "
                    f"({counts['running']} running are left alone)?")
    go = _confirm(question, a.yes, "purge")
    if go is not True:
        if go is False:
            print("nothing cancelled")
        return EXIT_OK if go is False else int(go)
    print(f"{client.purge(a.endpoint, running=a.running)} job(s) of {a.endpoint!r} cancelled")
    return EXIT_OK


def parse_duration(text: str) -> float:
    """Seconds of ``90``, ``90s``, ``30m``, ``1h``, ``2d``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    raw = text.strip().lower()
    scale = units.get(raw[-1:], 0)
    try:
        value = float(raw[:-1] if scale else raw) * (scale or 1)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"must be a duration such as 90s, 30m, 1h or 2d, got {text!r}")
    return value


def _ago(now: float, t: float | None) -> str:
    from dispatcher.ops.top import seconds

    return "-" if t is None else seconds(max(0.0, now - t))


def cmd_jobs(a: argparse.Namespace) -> int:
    from dispatcher.errors import InvalidJob

    client = _client()
    try:
        jobs = client.list_jobs(a.endpoint, a.status, limit=a.limit, kind=a.kind,
                                since=a.since)
    except InvalidJob as e:
        return _usage_error(str(e))
    if a.json:
        _print_json([{k: v for k, v in j.to_dict().items() if v is not None}
                     for j in jobs])
        return EXIT_OK
    now = client.store.now()
    rows = [("id", "status", "kind", "age", "ended", "endpoint")]
    rows += [(j.id, j.status, j.error_kind or "-", _ago(now, j.created_at),
              _ago(now, j.finished_at), j.endpoint or "-") for j in jobs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if not jobs:
        print("no jobs", file=sys.stderr)
    return EXIT_OK


def _retry_outcome(job_id: str, outcome: str) -> str:
    from dispatcher.submission import NOT_ENDED, RETRY_REFUSALS

    if outcome == "ok":
        return f"{job_id} queued"
    if outcome in NOT_ENDED:
        return f"{job_id} not retried: it is {outcome} (not ended)"
    reason = RETRY_REFUSALS.get(outcome, outcome)
    if outcome == "succeeded":
        reason = "it succeeded (--force to run it again)"
    return f"{job_id} not retried: {reason}"


def cmd_retry(a: argparse.Namespace) -> int:
    from dispatcher.errors import InvalidJob

    client = _client()
    if a.failed is not None:
        if a.job_ids:
            return _usage_error("retry: give job ids or --failed ENDPOINT, not both")
        try:
            jobs = client.list_jobs(a.failed, a.status or "failed", limit=None,
                                    kind=a.kind, since=a.since)
        except InvalidJob as e:
            return _usage_error(str(e))
        ids = [j.id for j in jobs]
        if not ids:
            print(f"no {'/'.join(a.status or ['failed'])} jobs of {a.failed!r} to retry")
            return EXIT_OK
        which = "/".join(a.status or ["failed"]) + (f" ({', '.join(a.kind)})" if a.kind else "")
        since = f" that ended in the last {a.since:g}s" if a.since else ""
        go = _confirm(f"Run {len(ids)} {which} job(s) of endpoint {a.failed!r}{since} again?",
                      a.yes, "retry --failed")
        if go is not True:
            if go is False:
                print("nothing retried")
            return EXIT_OK if go is False else int(go)
    else:
        if a.status or a.kind or a.since:
            return _usage_error("retry: --status, --kind and --since go with --failed ENDPOINT")
        ids = list(a.job_ids)
        if a.stdin:
            ids += [line.strip() for line in sys.stdin if line.strip()]
        if not ids:
            return _usage_error("retry: give job ids, --stdin, or --failed ENDPOINT")
    from dispatcher.submission import NOT_ENDED

    outcomes = client.retry_many(ids, force=a.force)
    code = EXIT_OK
    for job_id, outcome in outcomes.items():
        # Not ended: it will run anyway (a second retry queues a job once): no error.
        print(_retry_outcome(job_id, outcome),
              file=sys.stdout if outcome == "ok" else sys.stderr)
        if outcome != "ok" and outcome not in NOT_ENDED:
            code = EXIT_JOB_FAILED
    queued = sum(o == "ok" for o in outcomes.values())
    if len(outcomes) > 1:
        print(f"{queued} of {len(outcomes)} job(s) queued again", file=sys.stderr)
    return code


def cmd_stats(a: argparse.Namespace) -> int:
    stats = _client().stats()
    if a.endpoint:
        stats["endpoints"] = {ep: s for ep, s in stats["endpoints"].items()
                              if ep in a.endpoint}
    if a.json:
        _print_json(stats)
        return EXIT_OK
    _needs("ops", "rich")
    from rich.console import Console

    from dispatcher.ops.top import stats_view

    console = Console()
    console.print(stats_view(stats, console.size.width, only=a.endpoint))
    return EXIT_OK


def cmd_top(a: argparse.Namespace) -> int:
    _needs("ops", "rich")
    from dispatcher.ops.top import run_top

    return run_top(_client().stats, interval=a.interval, iterations=a.iterations,
                   only=a.endpoint)


def cmd_metrics(a: argparse.Namespace) -> int:
    import threading

    _needs("ops", "prometheus_client")
    from dispatcher.config import Settings
    from dispatcher.ops.metrics import serve_metrics
    from dispatcher.ops.stats import collect, reader

    store = reader(Settings.from_env())
    serve_metrics(lambda: collect(store), a.host, a.port)
    print(f"Prometheus metrics on http://{a.host}:{a.port}/metrics (Ctrl-C stops)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def cmd_worker(a: argparse.Namespace) -> int:
    import os

    if a.queue:
        # The whole queue, not only what Celery consumes: the waiting set, the movers and
        # every republish follow DISPATCHER_QUEUE. Set before the app reads settings.
        os.environ["DISPATCHER_QUEUE"] = a.queue
    import dispatcher

    s = dispatcher.app.dispatcher_settings
    # --webhooks: webhook deliveries only, on their own queue and small pool, so a slow
    # receiver never holds a thread that dispatches jobs.
    concurrency = a.concurrency or (s.webhook_concurrency if a.webhooks else s.concurrency)
    argv = [
        "worker", "--pool", "threads", "--concurrency", str(concurrency),
        "--loglevel", a.loglevel, "--queues", s.webhook_queue if a.webhooks else s.queue,
        "--without-mingle", "--without-gossip",
    ]
    if a.hostname:
        argv += ["--hostname", a.hostname]
    elif a.webhooks:
        argv += ["--hostname", "webhooks@%h"]
    if a.events:
        argv.append("--task-events")
    dispatcher.app.worker_main(argv)
    return EXIT_OK


def cmd_gateway(a: argparse.Namespace) -> int:
    _needs("gateway", "aiohttp")
    from dispatcher.config import Settings
    from dispatcher.gateway import GatewayRefused, run

    try:
        run(Settings.from_env(), a.host, a.port, a.no_auth)
    except GatewayRefused as e:
        return _usage_error(str(e))
    return EXIT_OK


def cmd_demo(a: argparse.Namespace) -> int:
    _needs("demo", "rich", "aiohttp")
    from dispatcher.dev.demo import run_demo

    return run_demo(jobs=a.jobs, cold_start=a.cold_start, concurrency=a.concurrency,
                    dashboard=a.dashboard, port=a.port)


def cmd_config(a: argparse.Namespace) -> int:
    from dataclasses import fields

    from dispatcher.config import Settings, markdown_table

    if a.markdown:
        print(markdown_table())
        return EXIT_OK
    s = Settings.from_env()
    for f in fields(Settings):
        value = getattr(s, f.name)
        if f.metadata["secret"]:
            value = "(set)" if value else "(not set)"
        print(f"{f.metadata['env']}={value}")
    return EXIT_OK


def _positive(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {raw!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {raw!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dispatcher", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("submit", help="queue a job; prints its id")
    s.add_argument("endpoint")
    s.add_argument("payload", nargs="?", default=None,
                   help="JSON file with the job's payload, or - for stdin")
    s.add_argument("--jsonl", default=None, metavar="FILE",
                   help="many jobs, one JSON object of submit's arguments per line "
                        "(payload, cost, ...; the options below are defaults); prints the ids")
    s.add_argument("--path", default=None, help="worker path, e.g. /v1/completions")
    s.add_argument("--cost", type=float, default=100.0)
    s.add_argument("--max-wait", type=float, default=None)
    s.add_argument("--timeout", type=float, default=None)
    s.add_argument("--priority", type=int, default=0)
    s.add_argument("--job-id", default=None, help="idempotency key")
    s.add_argument("--webhook", default=None, help="URL that gets a signed POST when it ends")
    s.add_argument("--webhook-event", action="append", dest="webhook_events", default=None,
                   help="completed (default), succeeded, failed, expired or cancelled")
    s.add_argument("--stream", action="store_true",
                   help="make the answer's pieces readable as they arrive (with --wait: "
                        "print them, one per line)")
    s.add_argument("--max-reroutes", type=int, default=None, metavar="N",
                   help="this job's bound on re-routes (default DISPATCHER_MAX_REROUTES)")
    s.add_argument("--retry-on", action="append", default=None, metavar="KIND",
                   help="also re-run after worker_timeout or worker_stream_broken (the GPU may "
                        "have done the work: for idempotent jobs); repeatable")
    s.add_argument("--wait", action="store_true", help="wait and print the finished job")
    s.add_argument("--wait-timeout", type=float, default=3600.0)
    s.set_defaults(func=cmd_submit)

    s = sub.add_parser("status", help="print a job's state as JSON")
    s.add_argument("job_id")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("result", help="print a job's result")
    s.add_argument("job_id")
    s.add_argument("--wait", action="store_true")
    s.add_argument("--follow", action="store_true",
                   help="print a streaming job's pieces as they arrive, one per line")
    s.add_argument("--timeout", type=float, default=3600.0)
    s.set_defaults(func=cmd_result)

    s = sub.add_parser("cancel", help="cancel jobs that have not ended")
    s.add_argument("job_ids", nargs="*")
    s.add_argument("--stdin", action="store_true", help="also read job ids, one per line")
    s.set_defaults(func=cmd_cancel)

    s = sub.add_parser("purge", help="cancel all queued/waiting jobs of an endpoint")
    s.add_argument("endpoint")
    s.add_argument("--running", action="store_true",
                   help="also cancel the jobs on a GPU (their calls are cut)")
    s.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    s.set_defaults(func=cmd_purge)

    s = sub.add_parser("jobs", help="list jobs by endpoint and status, the latest first")
    s.add_argument("--endpoint", default=None, help="one endpoint (default: every one)")
    s.add_argument("--status", action="append", default=None,
                   choices=["queued", "waiting", "running", "succeeded", "failed", "expired",
                            "cancelled"], help="repeatable (default: any)")
    s.add_argument("--kind", action="append", default=None, metavar="ERROR_KIND",
                   help="only jobs with this error_kind; repeatable")
    s.add_argument("--since", type=parse_duration, default=None, metavar="DURATION",
                   help="only jobs that entered their status within it (90s, 30m, 1h, 2d)")
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_jobs)

    s = sub.add_parser("retry", help="run ended jobs again with their payload and settings")
    s.add_argument("job_ids", nargs="*")
    s.add_argument("--stdin", action="store_true", help="also read job ids, one per line")
    s.add_argument("--failed", default=None, metavar="ENDPOINT",
                   help="every failed job of ENDPOINT (after a confirmation)")
    s.add_argument("--status", action="append", default=None,
                   choices=["failed", "expired", "cancelled"],
                   help="with --failed: the ends to retry (default failed); repeatable")
    s.add_argument("--kind", action="append", default=None, metavar="ERROR_KIND",
                   help="with --failed: only jobs with this error_kind; repeatable")
    s.add_argument("--since", type=parse_duration, default=None, metavar="DURATION",
                   help="with --failed: only jobs that ended within it (90s, 30m, 1h, 2d)")
    s.add_argument("--force", action="store_true", help="also re-run succeeded jobs")
    s.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    s.set_defaults(func=cmd_retry)

    s = sub.add_parser("stats", help="queue health per endpoint (a block each, or --json)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--endpoint", action="append", default=None, metavar="NAME",
                   help="only this endpoint (repeat for more)")
    s.set_defaults(func=cmd_stats)

    s = sub.add_parser("top", help="live queue health per endpoint, the busiest first")
    s.add_argument("--interval", type=_positive, default=1.0)
    s.add_argument("--endpoint", action="append", default=None, metavar="NAME",
                   help="only this endpoint (repeat for more)")
    s.add_argument("--iterations", type=int, default=None, help="stop after N refreshes")
    s.set_defaults(func=cmd_top)

    s = sub.add_parser("metrics", help="serve queue health as Prometheus metrics")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default %(default)s: it has no auth)")
    s.add_argument("--port", type=int, default=9808)
    s.set_defaults(func=cmd_metrics)

    s = sub.add_parser("gateway", help="serve the HTTP API (POST /v1/jobs, GET /v1/jobs/ID, "
                                       "...) for apps in any language")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--no-auth", action="store_true",
                   help="serve without DISPATCHER_GATEWAY_TOKEN (loopback addresses only)")
    s.set_defaults(func=cmd_gateway)

    s = sub.add_parser("config", help="print the settings in force (secrets hidden)")
    s.add_argument("--markdown", action="store_true",
                   help="print the table of every variable, its default and meaning")
    s.set_defaults(func=cmd_config)

    s = sub.add_parser("worker", help="run a Celery worker (threads pool)")
    s.add_argument("--concurrency", type=int, default=None)
    s.add_argument("--loglevel", default="INFO")
    s.add_argument("--queue", default=None,
                   help="the queue to serve (sets DISPATCHER_QUEUE for this worker)")
    s.add_argument("--hostname", default=None)
    s.add_argument("--events", action="store_true", help="send task events (for Flower)")
    s.add_argument("--webhooks", action="store_true",
                   help="deliver webhooks only (DISPATCHER_WEBHOOK_QUEUE, "
                        "DISPATCHER_WEBHOOK_CONCURRENCY threads); run one beside the workers")
    s.set_defaults(func=cmd_worker)

    # Handled in main(): its own options belong to dispatcher.emulator.cli.
    sub.add_parser("emulator", help="run the local Vast Serverless emulator (--help for options)",
                   add_help=False)

    s = sub.add_parser("demo", help="run 200 jobs end to end on an embedded Redis and emulator, "
                                    "with the live dashboard")
    s.add_argument("--jobs", type=int, default=200)
    s.add_argument("--cold-start", type=float, default=5.0)
    s.add_argument("--concurrency", type=int, default=64)
    s.add_argument("--dashboard", action="store_true",
                   help="open the live dashboard in a browser (and keep it up after the "
                        "summary, until Ctrl-C)")
    s.add_argument("--port", type=int, default=0,
                   help="the dashboard's port on 127.0.0.1 (default: a free one)")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        if argv and argv[0] == "emulator":
            _needs("emulator", "aiohttp")
            from dispatcher.emulator.cli import main as emulator_main

            return emulator_main(argv[1:])
        a = parser.parse_args(argv)
        return int(a.func(a))
    except MissingExtra as e:
        return _usage_error(str(e))
    except ValueError as e:  # settings from the environment
        return _usage_error(str(e))


if __name__ == "__main__":
    sys.exit(main())
