"""The self-check: every source must keep advancing while it has input.

A scheduled job (``[collectors] self_check_interval``, 60 s by default) looks at every
followed source:

- its supervising thread died (a bug let an exception through): the source is **stalled** at once;
- input waits past its position (a file grew, the journal has new matching entries) and the
  position has not moved for ``[collectors] stall_checks`` checks in a row: **stalled** (a parser
  stuck in a pathological line, a hung read, a lost inotify wake-up the poll did not make up for).

A source waiting for room in the daemon's queue is not stalled (that is the queue's overflow,
reported on its own).  A stalled source is logged as an error (so Sentry hears of it), counted in
``sentinel_source_stalls_total`` and flagged in ``sentinel_source_stalled``, and a
``source-stalled`` event (dataset ``sentinel.health``, ``event.category: ["process"]``) goes to the
store; when it moves again, a ``source-resumed`` event says for how long it was stuck.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from sentinel.collectors.sources.base import PolledSource, Source
from sentinel.event import Event
from sentinel.queues import health_event

if TYPE_CHECKING:
    from prometheus_client.core import Metric

log = logging.getLogger(__name__)

STALLED: Final = "source-stalled"
RESUMED: Final = "source-resumed"


@dataclass
class _Track:
    position: Hashable | None = None
    still: int = 0  # checks in a row without progress while input waited
    stalled: str | None = None  # why, while flagged
    since: float = 0.0  # when flagged (wall clock)


class SourceWatch:
    """Flags followed sources that stopped advancing (see the module docstring)."""

    def __init__(
        self,
        sources: Callable[[], list[Source]],
        thread_of: Callable[[str], threading.Thread | None],
        waiting_on_queue: Callable[[str], bool],
        emit: Callable[[list[Event]], None],
        *,
        checks: int = 3,
        interval: float = 60.0,
        hostname: str | None = None,
    ) -> None:
        self.sources = sources
        self.thread_of = thread_of
        self.waiting_on_queue = waiting_on_queue
        self.emit = emit
        self.checks = checks
        self.interval = interval
        self.hostname = hostname or socket.gethostname()
        self.stalls: collections.Counter[str] = collections.Counter()
        self._tracks: dict[str, _Track] = {}
        self._lock = threading.Lock()

    def check(self) -> None:
        """One self-check of every followed source (the scheduled job)."""
        events: list[Event] = []
        with self._lock:
            for source in self.sources():
                if isinstance(source, PolledSource):  # run by the scheduler: its job reports failures
                    continue
                event = self._check_one(source)
                if event is not None:
                    events.append(event)
        if events:
            self.emit(events)

    def _check_one(self, source: Source) -> Event | None:
        track = self._tracks.setdefault(source.name, _Track())
        thread = self.thread_of(source.name)
        reason: str | None = None
        backlog = 0
        if thread is not None and not thread.is_alive():
            reason = "its thread died"
        elif self.waiting_on_queue(source.name):
            track.still, track.position = 0, None  # it has something to hand on: not stuck itself
        else:
            try:
                progress = source.progress()
            except Exception as exc:  # the check must not fail because of one source
                log.debug("self-check: progress of %s unknown: %s", source.name, exc)
                progress = None
            if progress is None:
                track.still, track.position = 0, None
            else:
                position, backlog = progress
                if backlog > 0 and track.position is not None and position == track.position:
                    track.still += 1
                else:
                    track.still = 0
                track.position = position
                if track.still >= self.checks:
                    reason = (
                        f"input is waiting past its position (backlog {backlog}) but it has not advanced "
                        f"for {track.still} checks (~{track.still * self.interval:g}s)"
                    )
        if reason is not None and track.stalled is None:
            track.stalled, track.since = reason, time.time()
            self.stalls[source.name] += 1
            log.error("source %s is stalled: %s", source.name, reason, extra={"source": source.name})
            return self._event(source, STALLED, reason, backlog)
        if reason is None and track.stalled is not None and track.still == 0:
            took = time.time() - track.since
            why = track.stalled
            track.stalled = None
            log.info("source %s advances again (stalled for %.0fs)", source.name, took, extra={"source": source.name})
            return self._event(source, RESUMED, f"advances again after {took:.0f}s ({why})", backlog, since=track.since)
        return None

    def _event(self, source: Source, action: str, reason: str, backlog: int, since: float | None = None) -> Event:
        now = time.time()
        stalled = action == STALLED
        return health_event(
            action,
            f"source {source.name} {'is stalled' if stalled else 'resumed'}: {reason}",
            failed=stalled,
            at=now,
            since=since,
            hostname=self.hostname,
            id_key=f"{action}|{source.name}|{now}",
            fields={
                "event.reason": reason,
                "sentinel.source.name": source.name,
                "sentinel.source.kind": source.status.kind,
                "sentinel.source.backlog": backlog,
            },
        )

    def stalled(self) -> dict[str, str]:
        """Sources flagged now, with the reason."""
        with self._lock:
            return {name: t.stalled for name, t in self._tracks.items() if t.stalled is not None}

    def metrics(self) -> Iterator[Metric]:
        """Prometheus families (for ``MetricsSources.extra``)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self._lock:
            tracks = {name: t.stalled is not None for name, t in self._tracks.items()}
            stalls = dict(self.stalls)
        flag = GaugeMetricFamily("sentinel_source_stalled", "1 while the self-check flags a source", labels=["source"])
        count = CounterMetricFamily("sentinel_source_stalls", "Times a source was found stalled", labels=["source"])
        for name, stalled in tracks.items():
            flag.add_metric([name], 1 if stalled else 0)
            count.add_metric([name], stalls.get(name, 0))
        yield flag
        yield count
