"""Bounded queues between the daemon's stages: overflow policies, their accounting and their events.

Every queue between two stages has a bound and an explicit policy for when it is full:

``block``
    The producer waits for room (lossless).  Past ``overflow_wait`` seconds of waiting the
    queue is *overflowing*: one warning is logged, ``sentinel_queue_overflows_total`` counts the
    episode, and when it is over one ``queue-overflow`` event records how long it lasted and how
    many batches (or requests) had to wait.
``drop_newest``
    What arrives while the queue is full is dropped, counted per origin (a source, a rule) in
    ``sentinel_queue_dropped_total`` and named in the episode's event: never a silent drop.
``drop_oldest``
    The oldest waiting item makes room (the alert inbox: the newest alert is the most telling);
    the dropped item is reported the same way.

An episode ends once the queue has drained to half its bound with nobody waiting.  Its event
cannot be stored while the store itself is what is stuck, so it is created only then, when
there is room again, and joins the queue like any other batch.  A queue given a ``journal``
file keeps its unfinished episode there (at most once a second): when the process ends first
(systemd's watchdog restarts a daemon whose store stays stuck), the next start stores the
episode's event, marked ``sentinel.queue.interrupted``, from that file (:func:`recover_episode`).

The events use the dataset ``sentinel.health``, ``event.category: ["process"]`` (Sentinel's
own process) and ``event.action: "queue-overflow"``; ``event.outcome`` is ``success`` when
nothing was lost (block) and ``failure`` when something was dropped.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from hashlib import blake2b
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import orjson

from sentinel.collectors.parsers.timestamps import epoch_to_utc
from sentinel.event import Event

if TYPE_CHECKING:
    from prometheus_client.core import Metric

log = logging.getLogger(__name__)

OverflowPolicy = Literal["block", "drop_newest", "drop_oldest"]
#: The dataset of the events Sentinel writes about its own health.
HEALTH_DATASET: Final = "sentinel.health"
OVERFLOW_ACTION: Final = "queue-overflow"


@dataclass
class Episode:
    """One stretch of time during which a queue was full."""

    started: float  # wall clock
    started_mono: float
    waited: int = 0
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)


class QueueStats:
    """What one bounded queue reports: depth, overflow episodes, drops (thread-safe).

    The queue calls :meth:`waited` / :meth:`dropped` when it overflows and :meth:`settle` when
    it may have recovered; :meth:`settle` returns the episode's event once it is over.
    """

    def __init__(
        self,
        name: str,
        capacity: int,
        policy: OverflowPolicy,
        depth: Callable[[], int],
        *,
        unit: str = "events",
        hostname: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        journal: Path | None = None,
    ) -> None:
        self.name = name
        self.capacity = capacity
        self.policy = policy
        self.depth = depth
        self.unit = unit
        self.hostname = hostname or socket.gethostname()
        self.clock = clock
        #: Overflow episodes so far.
        self.overflows = 0
        #: Items dropped so far, by origin (all episodes).
        self.dropped_total: collections.Counter[str] = collections.Counter()
        self._seconds = 0.0  # length of the finished episodes
        self.episode: Episode | None = None
        self.journal = journal
        self._saved = 0.0
        self._lock = threading.Lock()

    def _begin(self) -> tuple[Episode, bool]:
        """The current episode, started now if there is none (then True)."""
        if self.episode is not None:
            return self.episode, False
        episode = self.episode = Episode(time.time(), self.clock())
        self.overflows += 1
        what = "producers wait" if self.policy == "block" else f"{self.policy}: items are dropped"
        log.warning(
            "queue %s is full (%d %s): %s until there is room",
            self.name,
            self.capacity,
            self.unit,
            what,
            extra={"queue": self.name},
        )
        return episode, True

    def _save(self, force: bool = False) -> None:
        """Keep the unfinished episode in the journal file (lock held; at most once a second)."""
        episode = self.episode
        if self.journal is None or episode is None or (not force and self.clock() - self._saved < 1.0):
            return
        self._saved = self.clock()
        doc = {
            "name": self.name,
            "capacity": self.capacity,
            "policy": self.policy,
            "unit": self.unit,
            "started": episode.started,
            "saved": time.time(),
            "waited": episode.waited,
            "dropped": dict(episode.dropped),
        }
        tmp = self.journal.with_name(self.journal.name + ".tmp")
        try:
            tmp.write_bytes(orjson.dumps(doc))
            os.replace(tmp, self.journal)
        except OSError as exc:
            log.debug("cannot keep the overflow episode in %s: %s", self.journal, exc)

    def waited(self, since: float | None = None) -> None:
        """One batch (request) waited past the grace time for room."""
        with self._lock:
            episode, new = self._begin()
            episode.waited += 1
            if since is not None and since < episode.started_mono:
                episode.started = time.time() - (self.clock() - since)
                episode.started_mono = since
            self._save(force=new)

    def dropped(self, origin: str, count: int = 1) -> None:
        """``count`` items from ``origin`` were dropped (0: an empty batch, which still marks the episode)."""
        with self._lock:
            episode, new = self._begin()
            if count:
                episode.dropped[origin] += count
                self.dropped_total[origin] += count
            self._save(force=new)

    @property
    def overflowing(self) -> bool:
        return self.episode is not None

    def seconds(self) -> float:
        """Total time spent overflowing (the current episode included)."""
        with self._lock:
            current = self.clock() - self.episode.started_mono if self.episode is not None else 0.0
            return self._seconds + current

    def settle(self, depth: int, waiting: int) -> Event | None:
        """End the episode if the queue has drained to half its bound with nobody waiting: its event."""
        if waiting or depth > self.capacity // 2:
            return None
        with self._lock:
            episode, self.episode = self.episode, None
            took = 0.0 if episode is None else max(0.0, self.clock() - episode.started_mono)
            self._seconds += took
        if episode is None:
            return None
        if self.journal is not None:
            with contextlib.suppress(OSError):
                self.journal.unlink(missing_ok=True)
        event = overflow_event(self, episode, took)
        level = logging.WARNING if episode.dropped else logging.INFO
        log.log(level, "%s", event["message"], extra={"queue": self.name})
        return event

    def status(self) -> dict[str, object]:
        """For ``sentinel status``."""
        return {
            "name": self.name,
            "depth": self.depth(),
            "capacity": self.capacity,
            "unit": self.unit,
            "policy": self.policy,
            "overflowing": self.overflowing,
            "overflows": self.overflows,
            "dropped": sum(self.dropped_total.values()),
        }


def wait_for_room(cond: threading.Condition, full: Callable[[], bool], stats: QueueStats, grace: float = 1.0) -> None:
    """The ``block`` policy of a responder's queue: wait on ``cond`` (held) while ``full()``; a
    wait longer than ``grace`` seconds is counted once in ``stats``."""
    started = time.monotonic()
    counted = False
    while full():
        cond.wait(grace)
        if not counted and time.monotonic() - started >= grace:
            stats.waited(since=started)
            counted = True


def health_event(
    action: str,
    message: str,
    *,
    failed: bool,
    at: float,
    id_key: str,
    category: str = "process",
    hostname: str | None = None,
    since: float | None = None,
    fields: Mapping[str, object] | None = None,
) -> Event:
    """An event Sentinel writes about its own health (dataset ``sentinel.health``).

    ``failed`` sets the type (error/info) and outcome; ``since`` adds the ECS start, end and
    duration of a period that ended at ``at``; ``id_key`` makes the deterministic ``event.id``.
    """
    event: Event = {
        "@timestamp": epoch_to_utc(at),
        "event.kind": "event",
        "event.category": [category],
        "event.type": ["error"] if failed else ["info"],
        "event.action": action,
        "event.outcome": "failure" if failed else "success",
        "event.dataset": HEALTH_DATASET,
    }
    if since is not None:
        event["event.start"] = epoch_to_utc(since)
        event["event.end"] = epoch_to_utc(at)
        event["event.duration"] = int((at - since) * 1e9)
    if hostname is not None:
        event["host.hostname"] = hostname
    event["message"] = message
    if fields:
        event.update(fields)
    event["event.id"] = blake2b(id_key.encode(), digest_size=8).hexdigest()
    return event


def overflow_event(stats: QueueStats, episode: Episode, took: float) -> Event:
    """The ``queue-overflow`` event of a finished episode."""
    dropped = sum(episode.dropped.values())
    ended = episode.started + took
    if dropped:
        by = ", ".join(f"{n} from {origin}" for origin, n in episode.dropped.most_common())
        what = f"{dropped} {stats.unit} dropped ({by})"
    else:
        what = f"{episode.waited} {'batches' if stats.unit == 'events' else stats.unit} waited, nothing lost"
    bound = f"bound {stats.capacity} {stats.unit}, {stats.policy}"
    message = f"queue {stats.name} was full for {took:.1f}s ({bound}): {what}"
    fields: dict[str, object] = {
        "sentinel.queue.name": stats.name,
        "sentinel.queue.policy": stats.policy,
        "sentinel.queue.capacity": stats.capacity,
        "sentinel.queue.unit": stats.unit,
        "sentinel.queue.waited": episode.waited,
        "sentinel.queue.dropped": dropped,
    }
    if episode.dropped:
        fields["sentinel.queue.dropped_by"] = dict(episode.dropped)
    return health_event(
        OVERFLOW_ACTION,
        message,
        failed=bool(dropped),
        at=ended,
        since=episode.started,
        hostname=stats.hostname,
        id_key=f"{OVERFLOW_ACTION}|{stats.name}|{episode.started}|{stats.hostname}",
        fields=fields,
    )


def recover_episode(journal: Path, hostname: str | None = None) -> Event | None:
    """The event of an episode a previous run left unfinished in ``journal`` (then removed), if any."""
    try:
        doc = orjson.loads(journal.read_bytes())
        stats = QueueStats(
            str(doc["name"]),
            int(doc["capacity"]),
            doc["policy"],
            lambda: 0,
            unit=str(doc.get("unit", "events")),
            hostname=hostname,
        )
        episode = Episode(float(doc["started"]), 0.0, int(doc["waited"]))
        episode.dropped.update({str(k): int(v) for k, v in dict(doc["dropped"]).items()})
        took = max(0.0, float(doc["saved"]) - episode.started)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring an unreadable overflow record %s: %s", journal, exc)
        with contextlib.suppress(OSError):
            journal.unlink()
        return None
    event = overflow_event(stats, episode, took)
    event["sentinel.queue.interrupted"] = True
    event["message"] += "; Sentinel stopped before the queue drained (counted until then)"
    log.warning("%s", event["message"], extra={"queue": stats.name})
    with contextlib.suppress(OSError):
        journal.unlink()
    return event


def queue_metrics(queues: Iterable[QueueStats]) -> Iterator[Metric]:
    """Prometheus families for the daemon's bounded queues."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    depth = GaugeMetricFamily("sentinel_queue_depth", "Items waiting in a bounded queue", labels=["queue"])
    capacity = GaugeMetricFamily("sentinel_queue_capacity", "The bound of a queue", labels=["queue"])
    full = GaugeMetricFamily("sentinel_queue_overflowing", "1 while a queue is full (an episode)", labels=["queue"])
    overflows = CounterMetricFamily("sentinel_queue_overflows", "Episodes of a full queue", labels=["queue"])
    seconds = CounterMetricFamily("sentinel_queue_overflow_seconds", "Time spent full", labels=["queue"])
    dropped = CounterMetricFamily(
        "sentinel_queue_dropped", "Items dropped by a full queue, by origin", labels=["queue", "origin"]
    )
    for q in queues:
        depth.add_metric([q.name], q.depth())
        capacity.add_metric([q.name], q.capacity)
        full.add_metric([q.name], 1 if q.overflowing else 0)
        overflows.add_metric([q.name], q.overflows)
        seconds.add_metric([q.name], q.seconds())
        for origin, n in list(q.dropped_total.items()):
            dropped.add_metric([q.name, origin], n)
    yield from (depth, capacity, full, overflows, seconds, dropped)
