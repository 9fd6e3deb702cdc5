"""``dispatcher emulator``: run the Vast emulator as a process until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from dispatcher.emulator.config import DEFAULT_CONFIG, ConfigError, EmulatorConfig
from dispatcher.emulator.server import Emulator


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dispatcher emulator",
                                description="A local Vast Serverless for development and tests.")
    p.add_argument("--config", help="JSON or YAML file (default: one endpoint 'demo')")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    p.add_argument("--api-key", default=None, help="override the config's api_key")
    a = p.parse_args(argv)
    try:
        config = (EmulatorConfig.from_file(a.config) if a.config
                  else EmulatorConfig.from_dict(DEFAULT_CONFIG))
    except (OSError, ConfigError, ValueError) as e:
        print(f"dispatcher emulator: error: {e}", file=sys.stderr)
        return 2
    if a.api_key:
        config = EmulatorConfig.from_dict({**_as_dict(config), "api_key": a.api_key})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with Emulator(config, host=a.host, port=a.port) as vast:
        print(f"Vast emulator listening: route {vast.route_url} "
              f"(endpoints: {', '.join(config.endpoints) or 'none'})", flush=True)
        stop.wait()
    return 0


def _as_dict(config: EmulatorConfig) -> dict:
    from dataclasses import asdict

    d = asdict(config)
    return d


if __name__ == "__main__":
    sys.exit(main())
