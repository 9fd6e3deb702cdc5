"""``python -m bench``: run the scenarios, print the table, write ``bench/results/latest.json``.

Exit 0 when every selected scenario ran to the end (whatever the speed), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import redis
from rich.console import Console

from bench.harness import Harness, machine_info
from bench.report import Result, markdown, render, write_json
from bench.scenarios import SCENARIOS, Config
from bench.streaming import SCENARIOS as STREAM_SCENARIOS
from bench.web import SCENARIOS as WEB_SCENARIOS

RESULTS = Path(__file__).parent / "results"
ALL_SCENARIOS = {**SCENARIOS, **WEB_SCENARIOS, **STREAM_SCENARIOS}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for CI (< 2 minutes)")
    p.add_argument("--scenarios", default="1,2,3,4,5",
                   help="which to run, e.g. 1,4; 6-8 (bench/web.py) and 9 (streaming) on "
                        "request")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default bench/results/latest.json, smoke.json with --smoke)")
    p.add_argument("--throughput-jobs", type=int, help="jobs per pass in scenario 1")
    p.add_argument("--repeats", type=int, help="timed passes per figure in 1 and 5 (median)")
    p.add_argument("--concurrency", type=int, help="threads per worker in 1, 2, 4, 5")
    p.add_argument("--latency-jobs", type=int, help="jobs in scenario 2")
    p.add_argument("--concurrency-jobs", type=int, help="jobs (and threads) in scenario 3")
    p.add_argument("--job-seconds", type=float, help="GPU seconds per job in scenario 3")
    p.add_argument("--jobs", type=int, help="jobs in the cold-start scenario 4")
    p.add_argument("--cold-start-seconds", type=float, help="cold start in scenario 4")
    p.add_argument("--cold-route-rate", type=float,
                   help="DISPATCHER_ROUTE_RATE in scenario 4 (default 100; 0 = no budget)")
    p.add_argument("--cold-procs", type=int, help="worker processes in scenario 4 (default 4)")
    p.add_argument("--scale-jobs", type=int, help="jobs per pass in scenario 5")
    p.add_argument("--scale-procs", help="worker process counts in scenario 5, e.g. 1,2,4")
    p.add_argument("--no-profile", action="store_true", help="skip py-spy in scenario 1")
    p.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for every dispatcher worker (repeatable)")
    p.add_argument("--markdown", type=Path, metavar="JSON",
                   help="print the table of a results file as Markdown and exit")
    p.add_argument("--loglevel", default="INFO", help="workers' log level (default INFO, "
                   "as `dispatcher worker` runs)")
    return p


def config_from(a: argparse.Namespace) -> Config:
    cfg = Config.smoke() if a.smoke else Config()
    for name in ("throughput_jobs", "repeats", "concurrency", "latency_jobs", "job_seconds",
                 "cold_start_seconds", "scale_jobs", "cold_route_rate", "cold_procs"):
        if getattr(a, name) is not None:
            setattr(cfg, name, getattr(a, name))
    if a.concurrency_jobs is not None:
        cfg.concurrency_jobs = cfg.concurrency_threads = a.concurrency_jobs
    if a.jobs is not None:
        cfg.cold_jobs = a.jobs
    if a.scale_procs:
        cfg.scale_procs = [int(x) for x in a.scale_procs.split(",")]
    if a.no_profile:
        cfg.profile = False
    return cfg


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.markdown:
        print(markdown(json.loads(a.markdown.read_text())), end="")
        return 0
    cfg = config_from(a)
    out = a.out or RESULTS / ("smoke.json" if a.smoke else "latest.json")
    selected = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    unknown = [s for s in selected if s not in ALL_SCENARIOS]
    if unknown:
        print(f"bench: unknown scenario(s) {unknown}; choose from {list(ALL_SCENARIOS)}",
              file=sys.stderr)
        return 2
    console = Console()
    if not console.is_terminal:  # logs and CI: wide enough for the table
        console = Console(width=150)
    # SIGTERM unwinds like Ctrl-C, so the harness stops every process it started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    results: list[Result] = []
    started = time.monotonic()
    try:
        extra_env = dict(kv.split("=", 1) for kv in a.worker_env)
    except ValueError:
        print("bench: --worker-env takes NAME=VALUE", file=sys.stderr)
        return 2
    with Harness(console, log_dir, a.loglevel, extra_env) as h:
        machine = machine_info(h.redis_url)
        console.print(f"[bold]bench[/] {machine['nproc']} cores, {machine['cpu']}, "
                      f"Redis {machine['redis_server']} at {h.redis_url}; logs in {log_dir}")
        for key in selected:
            fn = ALL_SCENARIOS[key]
            redis.Redis.from_url(h.redis_url).flushdb()
            t0 = time.monotonic()
            try:
                res = fn(h, cfg)
            except Exception as e:  # report it, run the rest
                res = Result(fn.__name__, f"{key}. {fn.__name__}", error=f"{type(e).__name__}: {e}")
                console.print(f"[red]scenario {key} failed[/]:\n{traceback.format_exc()}")
            res.seconds = time.monotonic() - t0
            results.append(res)
            console.print(f"[bold]{res.title}[/]: {'failed' if res.error else 'done'} "
                          f"in {res.seconds:.0f}s")
    profile = next((r.profile for r in results if r.profile), None)
    render(console, machine, results, profile)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()}
    config.update(smoke=a.smoke, scenarios=selected, loglevel=a.loglevel, worker_env=extra_env,
                  wall_s=round(time.monotonic() - started, 1))
    write_json(out, machine, config, results, profile)
    console.print(f"wrote {out}")
    ok = all(r.error is None for r in results)
    if ok:
        shutil.rmtree(log_dir, ignore_errors=True)
    else:
        console.print(f"[red]some scenarios did not complete[/]; process logs kept in {log_dir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
