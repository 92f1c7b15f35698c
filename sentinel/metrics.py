"""Prometheus metrics, read from the daemon's own counters when scraped.

Nothing is counted twice: the collectors, the engine and the queue already keep counters
for ``sentinel status`` and the logs; this collector turns them into metric families at scrape
time, so the hot path pays nothing for metrics.  Served on 127.0.0.1 by default.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from sentinel.collectors.sources.base import Source
from sentinel.engine.engine import Engine
from sentinel.queues import QueueStats, queue_metrics


@dataclass
class MetricsSources:
    """What the collector reads: callables, so it always sees the current objects."""

    sources: Callable[[], list[Source]]
    engine: Callable[[], Engine | None]
    queue_depth: Callable[[], int]
    last_commit: Callable[[], float | None]
    #: The bounded queues between stages (depth, overflows, drops).
    queues: Callable[[], list[QueueStats]] = list
    extra: list[Callable[[], Iterator[Metric]]] = field(default_factory=list)


class DaemonCollector(Collector):
    """Metric families describing the running daemon."""

    def __init__(self, src: MetricsSources) -> None:
        self.src = src

    def collect(self) -> Iterator[Metric]:
        lines = CounterMetricFamily("sentinel_source_lines", "Lines (or entries) read", labels=["source"])
        events = CounterMetricFamily("sentinel_source_events", "Events parsed", labels=["source"])
        bad = CounterMetricFamily(
            "sentinel_source_bad_input",
            "Lines with invalid UTF-8, NUL bytes, over-long, or a parser error",
            labels=["source", "kind"],
        )
        lag = GaugeMetricFamily(
            "sentinel_source_last_read_age_seconds", "Seconds since the source last read", labels=["source"]
        )
        up = GaugeMetricFamily("sentinel_source_up", "1 unless the source's last attempt failed", labels=["source"])
        now = time.time()
        for source in self.src.sources():
            st = source.status
            name = source.name
            lines.add_metric([name], st.stats.lines)
            events.add_metric([name], st.stats.events)
            for kind in ("invalid_utf8", "nul_bytes", "truncated", "parser_errors"):
                bad.add_metric([name, kind], getattr(st.stats, kind))
            if st.last_read is not None:
                lag.add_metric([name], max(0.0, now - st.last_read))
            up.add_metric([name], 0 if st.last_error else 1)
        yield from (lines, events, bad, lag, up)

        engine = self.src.engine()
        if engine is not None:
            s = engine.stats
            yield CounterMetricFamily("sentinel_engine_events", "Events evaluated by the rules", value=s.events)
            findings = CounterMetricFamily("sentinel_findings", "Findings per rule", labels=["rule"])
            for rule, count in s.findings.items():
                findings.add_metric([rule], count)
            yield findings
            yield CounterMetricFamily(
                "sentinel_engine_attempt_twins", "PAM/sshd twin lines counted once", value=s.twins
            )
            yield CounterMetricFamily("sentinel_engine_late_events", "Events later than the tolerance", value=s.late)
            yield CounterMetricFamily(
                "sentinel_responses_suppressed", "Responses refused (allowlist)", value=s.suppressed
            )
            keys = GaugeMetricFamily("sentinel_engine_keys", "Group keys held per rule", labels=["rule"])
            evicted = CounterMetricFamily("sentinel_engine_evicted", "Keys evicted by the cap", labels=["rule"])
            for cr in engine.rules:
                if cr.state is not None:
                    keys.add_metric([cr.rule.id], len(cr.state))
                    evicted.add_metric([cr.rule.id], cr.state.stats.evicted)
            yield keys
            yield evicted

        yield GaugeMetricFamily("sentinel_queue_events", "Events waiting for the writer", value=self.src.queue_depth())
        last = self.src.last_commit()
        if last is not None:
            yield GaugeMetricFamily(
                "sentinel_last_commit_age_seconds",
                "Seconds since the last store commit (events and checkpoints)",
                value=max(0.0, time.time() - last),
            )
        yield from queue_metrics(self.src.queues())
        for extra in self.src.extra:
            yield from extra()


def serve(src: MetricsSources, address: str, port: int) -> CollectorRegistry:
    """Start the HTTP endpoint (a daemon thread) and return its registry."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry()
    registry.register(DaemonCollector(src))
    start_http_server(port, addr=address, registry=registry)
    return registry
