"""Queue health as Prometheus metrics: ``dispatcher metrics --port 9808``.

A custom collector reads ``stats()`` on every scrape, so the figures are as fresh as
the scrape and the endpoint keeps no state of its own. If Redis cannot be read, the
scrape still answers, with ``dispatcher_up 0``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("dispatcher.metrics")

StatsFn = Callable[[], dict[str, Any]]

GAUGES = {  # stats field -> (metric, help)
    "oldest_wait_s": ("dispatcher_oldest_wait_seconds", "Age of the oldest job not on a GPU"),
    "route_calls_per_s": ("dispatcher_route_calls_per_second",
                          "Route calls per second over the last 10 s"),
    "route_rate": ("dispatcher_route_rate_limit", "The fleet's route budget now, calls/s"),
    "route_backoff_level": ("dispatcher_route_backoff_level",
                            "Halvings of the route budget after 429s"),
    "last_route_at": ("dispatcher_last_route_timestamp_seconds",
                      "When the last route status was recorded"),
}
COUNTERS = {
    "route_calls": ("dispatcher_route_calls", "Route calls made by the fleet"),
    "route_429s": ("dispatcher_route_429", "429 answers from the route API"),
    "route_noise_holds": ("dispatcher_route_noise_holds",
                          "Cuts of a learned route rate given back: their 429s were noise"),
}


class StatsCollector(Collector):
    def __init__(self, stats_fn: StatsFn) -> None:
        self.stats_fn = stats_fn

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("dispatcher_up", "1 if Redis could be read for this scrape")
        try:
            stats = self.stats_fn()
        except Exception as e:
            log.warning("metrics: stats unavailable: %s: %s", type(e).__name__, e)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        eps = stats.get("endpoints", {})
        jobs = GaugeMetricFamily("dispatcher_jobs", "Jobs now in each live state",
                                 labels=["endpoint", "state"])
        ended = CounterMetricFamily("dispatcher_jobs_finished", "Jobs that ended, by status",
                                    labels=["endpoint", "status"])
        for ep, s in eps.items():
            for state in ("queued", "waiting", "running"):
                jobs.add_metric([ep, state], s.get(state, 0))
            for status in ("succeeded", "failed", "expired", "cancelled"):
                ended.add_metric([ep, status], s.get(status, 0))
        yield jobs
        yield ended
        for field, (name, doc) in GAUGES.items():
            g = GaugeMetricFamily(name, doc, labels=["endpoint"])
            for ep, s in eps.items():
                if s.get(field) is not None:
                    g.add_metric([ep], s[field])
            yield g
        for field, (name, doc) in COUNTERS.items():
            c = CounterMetricFamily(name, doc, labels=["endpoint"])
            for ep, s in eps.items():
                c.add_metric([ep], s.get(field, 0))
            yield c
        for kind, doc in (("wait", "Submit to GPU assignment, recent jobs"),
                          ("run", "GPU assignment to end, recent jobs")):
            g = GaugeMetricFamily(f"dispatcher_{kind}_seconds", doc,
                                  labels=["endpoint", "quantile"])
            for ep, s in eps.items():
                for q, field in (("0.5", f"{kind}_p50_s"), ("0.95", f"{kind}_p95_s")):
                    if s.get(field) is not None:
                        g.add_metric([ep, q], s[field])
            yield g


def make_registry(stats_fn: StatsFn) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats_fn))
    return registry


def render(stats_fn: StatsFn) -> str:
    return generate_latest(make_registry(stats_fn)).decode()


def serve_metrics(stats_fn: StatsFn, host: str = "127.0.0.1", port: int = 9808) -> Any:
    """Serve ``/metrics`` from a daemon thread; returns (server, thread)."""
    return start_http_server(port, host, registry=make_registry(stats_fn))
