"""``dispatcher emulator`` / ``python -m dispatcher.emulator``: the emulator as a process.

Prints one line with the route URL once listening (parents wait for it), then runs
until SIGINT or SIGTERM and exits 0. Exit 2: bad config; 1: cannot listen.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from dataclasses import replace

from dispatcher.emulator.config import DEFAULT_CONFIG, ConfigError, EmulatorConfig
from dispatcher.emulator.server import Emulator

DEFAULT_PORT = 8081


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dispatcher emulator",
                                description="A local Vast Serverless for development and tests.")
    p.add_argument("--config", help="JSON or YAML file (default: one endpoint 'demo', "
                                    "scaled to zero, 5 s cold start)")
    p.add_argument("--host", default="127.0.0.1", help="route API address (default %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help="route API port (default %(default)s; 0 picks a free one)")
    p.add_argument("--api-key", default=None, help="override the config's api_key")
    a = p.parse_args(argv)
    try:
        config = (EmulatorConfig.from_file(a.config) if a.config
                  else EmulatorConfig.from_dict(DEFAULT_CONFIG))
        if a.api_key is not None:
            config = replace(config, api_key=a.api_key)
    except (OSError, ValueError) as e:  # ValueError covers ConfigError and bad JSON
        print(f"dispatcher emulator: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # e.g. a YAML syntax error
        print(f"dispatcher emulator: error: {a.config}: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    vast = Emulator(config, host=a.host, port=a.port)
    try:
        try:
            vast.start()
        except (OSError, ConfigError) as e:
            print(f"dispatcher emulator: error: cannot start on {a.host}:{a.port}: {e}",
                  file=sys.stderr)
            return 1
        print(f"Vast emulator listening: route {vast.route_url} "
              f"(endpoints: {', '.join(config.endpoints) or 'none'})", flush=True)
        real = [n for n, ep in config.endpoints.items() if ep.workers_from == "pyworker"]
        if real:
            print(f"PyWorkers: REPORT_ADDR={vast.url}, MASTER_TOKEN=<endpoint name, or its "
                  f"mtoken> (endpoints: {', '.join(real)}; see docs/emulator.md)", flush=True)
        while not stop.wait(0.5):
            pass
        return 0
    finally:
        vast.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
