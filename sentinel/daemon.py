"""``sentinel run``: sources → (stages) → store, until SIGTERM/SIGINT.

Threads, one direction of flow::

    source thread ─┐
    source thread ─┼─▶ BatchQueue (bounded, in events) ─▶ writer thread: stages, store.commit
    scheduler jobs ┘        ▲ internal lane                      │ findings' actions
                            └── responders' outcome events ◀── responder queues (bounded)

Each source runs under a supervisor that restarts it with exponential backoff when it fails
(a permission problem, a missing journal), so one broken source never stops the others.
A full queue follows ``[collectors] overflow``: ``block`` (back-pressure: sources read on when
there is room; nothing is lost) or ``drop_newest`` (batches dropped and counted); either way a
long overflow is logged, counted and recorded as an event (:mod:`sentinel.queues`).  A batch's
events and its source's checkpoint are committed in one transaction, so a crash at any point
resumes exactly where the store stands.  :data:`Stage` functions run on the writer thread
between parsing and the store: the detection stage (:mod:`sentinel.pipeline`) adds findings
and responses there.

The periodic work — the port audit, store maintenance, firewall reconciliation, the wallet
check and the self-check that sources still advance — runs on one scheduler
(:mod:`sentinel.scheduler`) the daemon owns: started with it, shut down first when it stops.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Final, Literal

from sentinel import __version__
from sentinel.collectors.sources.base import Batch, PolledSource, Source
from sentinel.config import (
    ConfigError,
    FileSourceSettings,
    JournaldSourceSettings,
    Settings,
    SourceSettings,
    load_settings,
)
from sentinel.control import ControlServer, start_control
from sentinel.engine.rule import RuleError
from sentinel.enrich.geoip import GeoIPError
from sentinel.event import Event
from sentinel.logging import setup_logging
from sentinel.pipeline import DetectionStage, build_responders
from sentinel.queues import QueueStats, recover_episode
from sentinel.responders.base import Responder
from sentinel.scheduler import JobSpec, Scheduler
from sentinel.sdnotify import Notifier
from sentinel.selfcheck import SourceWatch
from sentinel.state_lock import lock_state_dir
from sentinel.status import RecentRecords, StatusProvider
from sentinel.store import MaintenanceJob, SQLiteStore
from sentinel.store.base import EventStore, StoreConfigError

log = logging.getLogger(__name__)

#: Transforms a batch on its way to the store (the rules engine will add findings here).
Stage = Callable[[Batch], Batch]

#: Events the writer commits in one transaction at most.
WRITE_BATCH_EVENTS: Final = 5000
#: How long stopping may take: sources first, then draining the queue into the store.
SOURCE_STOP_TIMEOUT: Final = 3.0
WRITER_STOP_TIMEOUT: Final = 5.0
RESPONDER_STOP_TIMEOUT: Final = 5.0
#: The writer counts as stuck when it has not come round its loop for this long.
WRITER_STALL: Final = 30.0
MAX_BACKOFF: Final = 60.0
#: How long stopping waits for scheduled jobs in progress.
SCHEDULER_STOP_TIMEOUT: Final = 2.0
#: The source name of Sentinel's own health events (queue overflows, stalled sources).
HEALTH_SOURCE: Final = "sentinel.health"
#: Where the collectors' queue keeps an unfinished overflow episode (in the state directory).
OVERFLOW_JOURNAL: Final = "queue-overflow.json"


class QueueClosed(Exception):
    """The daemon is stopping: the batch was not queued (its source will re-read it on restart)."""


class BatchQueue:
    """A FIFO of batches bounded by the number of events waiting in it, with an overflow policy.

    Sources call :meth:`put`.  While the queue is full, ``block`` makes them wait (one batch
    larger than the bound still fits in an empty queue; an event-less batch, a checkpoint only,
    counts as one); ``drop_newest`` lets them wait ``overflow_wait`` seconds, then drops their
    batch and, for the rest of the episode, drops at once.  Either way an episode longer than
    ``overflow_wait`` is logged, counted (:attr:`stats`) and reported by an event queued once
    there is room again (:mod:`sentinel.queues`).

    What Sentinel writes about itself (responders' outcomes, health events) goes through
    :meth:`put_internal`: a lane of its own, taken first and never blocking, so a responder or
    a job is never held up by a full queue; it has the same bound, beyond which its batches are
    dropped and counted too.
    """

    def __init__(
        self,
        max_events: int,
        *,
        name: str = "collectors",
        policy: Literal["block", "drop_newest"] = "block",
        overflow_wait: float = 5.0,
        hostname: str | None = None,
        journal: Path | None = None,
    ) -> None:
        self.max_events = max_events
        self.policy = policy
        self.overflow_wait = overflow_wait
        self._items: collections.deque[Batch] = collections.deque()
        self._internal: collections.deque[Batch] = collections.deque()
        self._pending = 0
        self._internal_pending = 0
        self._waiting = 0
        self._closed = False
        self._cond = threading.Condition()
        self.stats = QueueStats(name, max_events, policy, self.events, hostname=hostname, journal=journal)

    def _fits(self, size: int) -> bool:
        return not self._pending or self._pending + size <= self.max_events

    def put(self, batch: Batch) -> bool:
        """Queue ``batch`` as the policy says: True if queued, False if dropped.

        Raises :class:`QueueClosed` once the queue is closed.
        """
        size = max(1, len(batch.events))
        with self._cond:
            if self._closed:
                raise QueueClosed
            if not self._fits(size):
                if self.policy == "drop_newest" and self.stats.overflowing:
                    self.stats.dropped(batch.source, len(batch.events))
                    return False
                if not self._wait_for_room(size, batch):
                    return False
            self._items.append(batch)
            self._pending += size
            self._cond.notify_all()
            return True

    def _wait_for_room(self, size: int, batch: Batch) -> bool:
        """Wait (lock held) until ``size`` fits; False if the batch was dropped instead."""
        started = time.monotonic()
        deadline = started + self.overflow_wait
        late = False
        self._waiting += 1
        try:
            while not self._closed and not self._fits(size):
                if late:
                    self._cond.wait()
                    continue
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                if self.policy == "drop_newest":
                    self.stats.dropped(batch.source, len(batch.events))
                    return False
                self.stats.waited(since=started)
                late = True
        finally:
            self._waiting -= 1
        if self._closed:
            raise QueueClosed
        return True

    def put_internal(self, batch: Batch) -> bool:
        """Queue Sentinel's own events without ever blocking; False if dropped (the lane is full)."""
        size = max(1, len(batch.events))
        with self._cond:
            if self._closed:
                raise QueueClosed
            if self._internal_pending and self._internal_pending + size > self.max_events:
                self.stats.dropped(batch.source, len(batch.events))
                return False
            self._internal.append(batch)
            self._internal_pending += size
            self._cond.notify_all()
            return True

    def get_many(self, max_events: int, timeout: float) -> list[Batch] | None:
        """Up to ``max_events`` worth of batches (at least one if any arrive within ``timeout``).

        Sentinel's own batches come first.  Returns None once the queue is closed and empty.
        """
        with self._cond:
            if not self._items and not self._internal and not self._closed:
                self._cond.wait(timeout)
            out: list[Batch] = []
            taken = 0
            for lane in (self._internal, self._items):
                while lane and (not out or taken + len(lane[0].events) <= max_events):
                    batch = lane.popleft()
                    out.append(batch)
                    taken += len(batch.events)
                    if lane is self._items:
                        self._pending -= max(1, len(batch.events))
                    else:
                        self._internal_pending -= max(1, len(batch.events))
            if out:
                self._cond.notify_all()
            event = self.stats.settle(self._pending, self._waiting)
            if event is not None:  # the episode is over: its event joins the queue now there is room
                if out:
                    self._internal.append(Batch(HEALTH_SOURCE, [event], {}))
                    self._internal_pending += 1
                else:
                    out.append(Batch(HEALTH_SOURCE, [event], {}))
            if not out:
                return None if self._closed else []
            return out

    def close(self) -> None:
        """Refuse further batches; ``get_many`` still returns what is queued."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def events(self) -> int:
        """Events waiting (both lanes; an event-less batch counts as one)."""
        with self._cond:
            return self._pending + self._internal_pending

    def __len__(self) -> int:
        with self._cond:
            return len(self._items) + len(self._internal)


def source_name(spec: SourceSettings) -> str:
    """The configured name, else one derived from what the source reads."""
    if spec.name:
        return spec.name
    if isinstance(spec, FileSourceSettings):
        return "file:" + ",".join(str(p) for p in spec.paths)
    where = spec.directory or (",".join(str(p) for p in spec.files) if spec.files else "")
    return f"journald:{where}" if where else "journald"


class Daemon:
    """Sources, queue, writer and store, started and stopped as one."""

    def __init__(
        self,
        settings: Settings,
        store: EventStore,
        stages: Sequence[Stage] = (),
        after_commit: Sequence[Callable[[], None]] = (),
        responders: Sequence[Responder] = (),
    ) -> None:
        self.settings = settings
        self.store = store
        self.stages = list(stages)
        self.after_commit = list(after_commit)
        self.responders = list(responders)
        self._busy = False  # the writer holds batches it has taken off the queue
        #: When the writer last came round its loop (it does at least every half second).
        self.heartbeat = time.monotonic()
        #: Wall-clock time of the last successful commit.
        self.last_commit: float | None = None
        collectors = settings.collectors
        self.queue = BatchQueue(
            collectors.queue_size,
            policy=collectors.overflow,
            overflow_wait=collectors.overflow_wait,
            hostname=settings.daemon.hostname,
            journal=settings.daemon.state_dir / OVERFLOW_JOURNAL,
        )
        self.sources: list[Source] = []
        #: The periodic jobs (port audit, self-check, responders' and the store's jobs).
        self.scheduler = Scheduler()
        self.watch = SourceWatch(
            lambda: self.sources,
            self._thread_of,
            lambda name: name in self._emitting,
            self.emit_internal,
            checks=collectors.stall_checks,
            interval=collectors.self_check_interval,
            hostname=settings.daemon.hostname,
        )
        self._emitting: dict[str, float] = {}  # source → since when it waits in queue.put
        self._source_threads: dict[str, threading.Thread] = {}
        self._stop = threading.Event()  # sources stop reading
        self._abort = threading.Event()  # the writer gives up retrying a failing commit
        self._threads: list[threading.Thread] = []
        self._writer: threading.Thread | None = None
        #: First wait before restarting a failed source (doubles up to MAX_BACKOFF).
        self.retry_delay = 1.0

    def build_sources(self) -> None:
        """One :class:`Source` per configured source; a source that cannot be built is logged."""
        names = [source_name(spec) for spec in self.settings.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(
                f"two sources share the name {', '.join(map(repr, dupes))}: give them distinct `name`s "
                "(a name keys the source's checkpoint)"
            )
        for spec, name in zip(self.settings.sources, names, strict=True):
            try:
                source = self._make_source(spec, name)
            except Exception as exc:
                log.error("source %s cannot be started: %s", name, exc, extra={"source": name})
                continue
            self.sources.append(source)
        self._add_builtin_sources()

    def _add_builtin_sources(self) -> None:
        """The listening-port audit and the packet sensor, when enabled."""
        hostname = self.settings.daemon.hostname
        ports = self.settings.ports
        metrics = self.settings.metrics
        if ports.enabled and metrics.enabled:  # Sentinel's own metrics endpoint is expected
            own = f"tcp/{metrics.port}@{metrics.address}"
            ports = ports.model_copy(update={"allowed": [*ports.allowed, own]})
        if ports.enabled:
            from sentinel.collectors.sources.ports import PortAuditSource

            log.info("auditing listening ports every %gs", ports.interval, extra={"source": "ports"})
            self.sources.append(PortAuditSource("ports", ports, None, hostname=hostname))
        sensor = self.settings.packet_sensor
        if sensor.enabled:
            from sentinel.collectors.sources.packets import PacketSensor, capability_problem

            problem = capability_problem()
            if problem:
                log.error("packet sensor disabled: %s", problem, extra={"source": "packets"})
                return
            try:
                self.sources.append(
                    PacketSensor("packets", sensor, self.store.checkpoint("packets"), hostname=hostname)
                )
            except ValueError as exc:  # a bad bpf_filter, with libpcap's message
                log.error("packet sensor cannot be started: %s", exc, extra={"source": "packets"})

    def _make_source(self, spec: SourceSettings, name: str) -> Source:
        collectors = self.settings.collectors
        checkpoint = self.store.checkpoint(name)
        if isinstance(spec, FileSourceSettings):
            from sentinel.collectors.sources.file import FileSource

            log.info(
                "watching %s: %s (format %s, %s)",
                name,
                ", ".join(map(str, spec.paths)),
                spec.format,
                "resuming from checkpoint" if checkpoint is not None else f"start at {spec.start_at}",
                extra={"source": name},
            )
            return FileSource(
                name,
                spec,
                checkpoint,
                poll_interval=collectors.poll_interval,
                max_line_bytes=collectors.max_line_bytes,
            )
        assert isinstance(spec, JournaldSourceSettings)
        from sentinel.collectors.sources.journald import JournaldSource

        log.info(
            "watching %s: the journal%s (%s)",
            name,
            f" in {spec.directory}" if spec.directory else "",
            "resuming from checkpoint" if checkpoint is not None else f"start at {spec.start_at}",
            extra={"source": name},
        )
        return JournaldSource(name, spec, checkpoint, collectors.max_line_bytes)

    def _emit_responses(self, events: list[Event]) -> None:
        """Responders' outcome events join the queue's internal lane (no checkpoint; never blocks)."""
        if events:
            self.queue.put_internal(Batch("responders", events, {}))

    def emit_internal(self, events: list[Event]) -> None:
        """Sentinel's own health events (stalled sources…) go to the store through the internal lane."""
        if events:
            self.queue.put_internal(Batch(HEALTH_SOURCE, events, {}))

    def queues(self) -> list[QueueStats]:
        """Every bounded queue between stages: the sources' and the responders'."""
        out = [self.queue.stats]
        for responder in self.responders:
            out.extend(responder.queues())
        return out

    def jobs(self) -> list[JobSpec]:
        """The daemon's own periodic jobs: polled sources and the self-check."""
        collectors = self.settings.collectors
        specs = [
            JobSpec(
                f"source:{s.name}",
                self._poller(s),
                s.interval,
                first_delay=0.0,
                description=f"poll source {s.name} every {s.interval:g}s",
            )
            for s in self.sources
            if isinstance(s, PolledSource)
        ]
        specs.append(
            JobSpec(
                "self-check",
                self.watch.check,
                collectors.self_check_interval,
                description="check that every source still advances",
            )
        )
        return specs

    def _poller(self, source: PolledSource) -> Callable[[], None]:
        emit = self._emitter(source.name)

        def poll() -> None:
            source.poll(emit)

        return poll

    def _emitter(self, name: str) -> Callable[[Batch], None]:
        """``queue.put`` for source ``name``, noting while it waits (the self-check asks)."""

        def emit(batch: Batch) -> None:
            self._emitting[name] = time.monotonic()
            try:
                self.queue.put(batch)
            finally:
                self._emitting.pop(name, None)

        return emit

    def _thread_of(self, name: str) -> threading.Thread | None:
        return self._source_threads.get(name)

    def start(self) -> None:
        """Start the responders and the writer, one supervised thread per source, then the scheduler."""
        if self.queue.stats.journal is not None:  # an episode the previous run could not finish
            recovered = recover_episode(self.queue.stats.journal, self.settings.daemon.hostname)
            if recovered is not None:
                self.emit_internal([recovered])
        for responder in self.responders:
            responder.start(self._emit_responses)
        self._writer = threading.Thread(target=self._write_loop, name="sentinel-writer", daemon=True)
        self._writer.start()
        for source in self.sources:
            if isinstance(source, PolledSource):
                continue  # a scheduled job
            t = threading.Thread(target=self._supervise, args=(source,), name=f"source-{source.name}", daemon=True)
            t.start()
            self._threads.append(t)
            self._source_threads[source.name] = t
        self.scheduler.add_all(self.jobs())
        for responder in self.responders:
            self.scheduler.add_all(responder.jobs())
        self.scheduler.start()

    def stop(self) -> bool:
        """Stop the scheduler and the sources, store what they handed on, close the store.  True if all stopped."""
        clean = self.scheduler.shutdown(SCHEDULER_STOP_TIMEOUT)
        self._stop.set()
        deadline = time.monotonic() + SOURCE_STOP_TIMEOUT
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                log.warning("source thread %s did not stop in time; its unstored lines will be read again", t.name)
                clean = False
        if self.responders:
            # Let the writer hand the last findings to the responders, then let them finish
            # (or persist) their work while their outcome events can still be stored.
            drain = time.monotonic() + WRITER_STOP_TIMEOUT
            while (len(self.queue) or self._busy) and time.monotonic() < drain:
                time.sleep(0.02)
            for responder in self.responders:
                responder.stop(RESPONDER_STOP_TIMEOUT)
        self.queue.close()
        if self._writer is not None:
            self._writer.join(WRITER_STOP_TIMEOUT)
            if self._writer.is_alive():
                self._abort.set()
                self._writer.join(1.0)
                clean = False
        self.store.close()
        return clean

    # -- threads -------------------------------------------------------------------------------

    def _supervise(self, source: Source) -> None:
        """Run ``source`` until the daemon stops, restarting it with backoff when it fails."""
        delay = self.retry_delay
        last_error: str | None = None
        emit = self._emitter(source.name)
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                source.run(emit, self._stop)
                if self._stop.is_set():
                    return
                message = "stopped by itself"
                exc_info = False
            except QueueClosed:
                return
            except Exception as exc:
                message = str(exc) or type(exc).__name__
                # Expected trouble (files, permissions, a missing journal) needs no traceback.
                exc_info = not isinstance(exc, (OSError, RuntimeError, ValueError))
            if message != last_error:
                log.error(
                    "source %s failed: %s; retrying in %gs",
                    source.name,
                    message,
                    delay,
                    extra={"source": source.name},
                    exc_info=exc_info,
                )
            else:
                log.debug("source %s failed again: %s", source.name, message)
            source.status.last_error = last_error = message
            if time.monotonic() - started > MAX_BACKOFF:
                delay = self.retry_delay  # it ran fine for a while: a new problem
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, MAX_BACKOFF)

    def _write_loop(self) -> None:
        """Take batches off the queue, run the stages, commit; retry a failed commit forever."""
        while True:
            self.heartbeat = time.monotonic()
            batches = self.queue.get_many(WRITE_BATCH_EVENTS, timeout=0.5)
            if batches is None:
                return
            if not batches:
                continue
            self._busy = True
            try:
                for stage in self.stages:
                    batches = [stage(b) for b in batches]
                self._commit(batches)
                for hook in self.after_commit:
                    hook()
            finally:
                self._busy = False

    def _commit(self, batches: list[Batch]) -> None:
        delay = 0.5
        while True:
            try:
                self.store.commit_many(batches)
                self.last_commit = time.time()
                return
            except Exception as exc:
                if self._abort.is_set():
                    log.error(
                        "giving up storing %d events at shutdown (%s); they will be read again on restart",
                        sum(len(b.events) for b in batches),
                        exc,
                    )
                    return
                log.error("cannot write to the store (%s); retrying in %.1fs", exc, delay)
                self._abort.wait(delay)
                delay = min(delay * 2, 10.0)


def reload(config_path: Path, current: Settings, detection: DetectionStage, notifier: Notifier) -> Settings:
    """SIGHUP: load the configuration again; apply it whole or keep the old one.

    Rules, the allowlist, engine limits, GeoIP and the log level change in place and rule
    state (windows, remembered countries, offences) carries over.  Changes to sources, the
    store or the state directory need a restart, and are reported as such.
    """
    notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}", "STATUS=reloading")
    try:
        new = load_settings(config_path)
        detection.reload(new)
    except (ConfigError, RuleError, GeoIPError) as exc:
        log.error("configuration reload refused, the running configuration stays: %s", exc)
        notifier.notify("READY=1", "STATUS=reload refused; running the previous configuration")
        return current
    setup_logging(new.daemon.log_level, new.daemon.log_format)
    for section in ("sources", "store", "daemon", "collectors"):
        if getattr(new, section) != getattr(current, section):
            log.warning("[%s] changed: it takes effect at the next restart", section)
    log.info("configuration reloaded from %s", config_path)
    notifier.notify("READY=1", "STATUS=configuration reloaded")
    return new


def start_metrics(settings: Settings, daemon: Daemon, detection: DetectionStage) -> None:
    """Serve Prometheus metrics; a port already taken is logged, not fatal."""
    from sentinel.metrics import MetricsSources, serve

    m = settings.metrics
    try:
        serve(
            MetricsSources(
                sources=lambda: daemon.sources,
                engine=lambda: detection.engine,
                queue_depth=daemon.queue.events,
                last_commit=lambda: daemon.last_commit,
                queues=daemon.queues,
                extra=[
                    daemon.scheduler.metrics,
                    daemon.watch.metrics,
                    *(r.metrics for r in daemon.responders if hasattr(r, "metrics")),
                    *([daemon.store.metrics] if hasattr(daemon.store, "metrics") else []),
                ],
            ),
            m.address,
            m.port,
        )
    except OSError as exc:
        log.error("metrics endpoint %s:%d unavailable: %s", m.address, m.port, exc.strerror or exc)
        return
    log.info("metrics on http://%s:%d/metrics", m.address, m.port)


def open_store(settings: Settings) -> EventStore:
    """The configured backend: the embedded SQLite store, or the spool shipping to Elasticsearch."""
    if settings.store.backend == "elasticsearch":  # imported here: the client takes 0.3 s to import
        from sentinel.store.elasticsearch import connect
        from sentinel.store.shipper import ShippingStore

        return ShippingStore.open(settings, connect(settings.store.elasticsearch, settings))
    return SQLiteStore(settings.store.sqlite_path(settings.daemon.state_dir))


def run_daemon(settings: Settings, config_path: Path) -> int:
    """Run in the foreground until SIGTERM/SIGINT: 0 once stopped, 1 if it cannot start, 2 on a bad config."""
    setup_logging(settings.daemon.log_level, settings.daemon.log_format)
    state_dir = settings.daemon.state_dir
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    except OSError as exc:
        log.error("cannot create the state directory %s: %s", state_dir, exc.strerror or exc)
        return 1
    lock = lock_state_dir(state_dir)
    if lock is None:
        log.error("another sentinel is already running with the state directory %s", state_dir)
        return 1
    try:
        return _run(settings, config_path)
    finally:
        os.close(lock)


def _run(settings: Settings, config_path: Path) -> int:
    """The daemon's life once its state directory is locked."""
    state_dir = settings.daemon.state_dir
    db_path = settings.store.sqlite_path(state_dir)
    try:
        store = open_store(settings)
    except StoreConfigError as exc:
        log.error("%s", exc)
        return 2
    except Exception as exc:
        log.error("cannot open the event store %s: %s", db_path, exc)
        return 1
    where = db_path if settings.store.backend == "sqlite" else ", ".join(settings.store.elasticsearch.hosts)
    log.info("sentinel %s starting (config %s, store %s)", __version__, config_path, where)

    try:
        responders = build_responders(settings)
        detection = DetectionStage(settings, state_dir / "rule-state.json", responders)
    except (RuleError, GeoIPError, ValueError) as exc:
        log.error("%s", exc)
        store.close()
        return 2
    daemon = Daemon(settings, store, [detection], [detection.committed], responders)
    try:
        daemon.build_sources()
    except ValueError as exc:
        log.error("%s", exc)
        store.close()
        return 2
    if not daemon.sources:
        log.warning("no sources configured: nothing to watch (add [[sources]] to %s)", config_path)

    stopping = threading.Event()
    reload_requested = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            reload_requested.set()
            return
        if not stopping.is_set():
            log.info("received %s; stopping", signal.Signals(signum).name)
        stopping.set()

    recent = RecentRecords()
    recent.sentinel_keep = True  # type: ignore[attr-defined]  # survives setup_logging on reload
    logging.getLogger().addHandler(recent)
    notifier = Notifier()
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    control: ControlServer | None = None
    try:
        if isinstance(store, SQLiteStore):
            # Daily: seal last month's records into their partition, drop partitions past retention
            # (each drop an audit event), log the chain head as an anchor for `sentinel audit verify`.
            # (Elasticsearch: its ILM policy does retention.)
            maintenance = MaintenanceJob(db_path, settings.store.retention_days, hostname=settings.daemon.hostname)
            maintenance.schedule(daemon.scheduler)
        daemon.start()
        status_provider = StatusProvider(daemon, detection, recent)
        control = start_control(state_dir, [*responders, status_provider])  # `sentinel status|bans`
        if settings.metrics.enabled:
            start_metrics(settings, daemon, detection)
        status = f"running with {len(daemon.sources)} sources ({len(settings.sources)} configured)"
        log.info("%s", status)
        notifier.ready(status)
        tick = min(1.0, notifier.watchdog_interval or 1.0)
        while not stopping.wait(tick):
            if reload_requested.is_set():
                reload_requested.clear()
                settings = reload(config_path, settings, detection, notifier)
            # The watchdog is fed only while the writer keeps coming round its loop: a stuck
            # store or stage stops the pings and systemd restarts the service.
            # A writer held back by a full spool (overflow = "block") is slowed on purpose, not stuck.
            throttled = bool(getattr(store, "throttled", False))
            notifier.watchdog(time.monotonic() - daemon.heartbeat < WRITER_STALL or throttled)
        notifier.stopping()
        if control is not None:
            control.close()
        clean = daemon.stop()
        detection.close()
    finally:
        if control is not None:
            control.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped%s", "" if clean else " (some threads did not finish in time)")
    return 0
