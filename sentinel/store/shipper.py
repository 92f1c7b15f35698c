"""Shipping to Elasticsearch: the daemon's event store when ``[store] backend = "elasticsearch"``.

::

    writer thread ─ commit_many ─▶ spool (fsync) ─▶ checkpoints (events.db) ─┐
                                      │                                        └ the commit
                                      └──▶ shipper thread ─ bulk create ─▶ data stream

The writer appends each batch's documents to the disk :class:`~sentinel.store.spool.Spool` and
only then commits the sources' checkpoints (to the local SQLite file, which then holds nothing
else): whatever a checkpoint covers is on disk.  The shipper thread bulk-indexes the spool with
``create`` and the event's deterministic id as ``_id`` and moves the spool's cursor only for
documents Elasticsearch acknowledged, so delivery is at-least-once and a re-send (after a crash,
a timeout, an outage) answers 409 for documents already there: each event is held once.

Per document, a bulk answer is: created (201); already there (409, counted as a duplicate);
worth retrying (429, 5xx: the rest of the batch is retried with backoff); or refused for good
(a 4xx such as a mapping conflict).  A refused document is not dropped: it is indexed again as
an ``event.kind: pipeline_error`` event holding the original JSON in ``event.original`` and the
reason in ``error.message``.  Until Elasticsearch is reachable the spool grows (bounded; its
overflow policy applies) and the shipper retries with backoff up to a minute.

``create`` with the same ``_id`` is refused only within one backing index: a re-send after the
data stream rolled over would land in the new write index beside the first copy.  So documents
that may have been sent already (the spool records how far each send went before it starts:
after a crash, a timeout or a lost answer) are first looked up by id across the whole data stream
(after a refresh), and those found count as duplicates without being sent again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, cast

import orjson
from elasticsearch import ApiError, Elasticsearch, TransportError
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from sentinel.collectors.sources.base import Batch
from sentinel.config import ElasticsearchSettings, Settings
from sentinel.event import Event, event_time
from sentinel.store import es_schema
from sentinel.store.elasticsearch import document
from sentinel.store.maintenance import audit_event
from sentinel.store.records import iso
from sentinel.store.spool import Dropped, Spool, SpoolClosed, document_line, split_line
from sentinel.store.sqlite import SQLiteStore
from sentinel.store.withhold import Withheld

log = logging.getLogger(__name__)

MAX_BACKOFF: Final = 60.0
#: How long one wait for documents lasts while the spool is empty (seconds; bounds stop latency).
LINGER: Final = 0.5
OVERFLOW_ACTION: Final = "spool-overflow"
RETRYABLE: Final = frozenset({429, 500, 502, 503, 504})
#: Ids looked up per search when checking a re-send (within the default max_result_window).
ID_LOOKUP_CHUNK: Final = 10_000


@dataclass
class ShipperStats:
    """Counters for ``sentinel status`` and the metrics endpoint."""

    shipped: int = 0
    duplicates: int = 0
    rejected: int = 0  # refused for good, re-indexed as pipeline_error events
    withheld: int = 0  # naming a person erased while they waited in the spool: never sent
    lost: int = 0  # even the pipeline_error form was refused (logged with its id)
    requests_failed: int = 0
    dropped: int = 0  # documents dropped by the drop_oldest policy
    overflows: int = 0  # times it dropped (each recorded as an audit event)
    last_success: float | None = None
    last_error: str | None = None


class Shipper:
    """The thread that empties the spool into the data stream."""

    def __init__(
        self, client: Elasticsearch, settings: ElasticsearchSettings, retention_days: float, spool: Spool
    ) -> None:
        self.client = client
        self.settings = settings
        self.retention_days = retention_days
        self.spool = spool
        self.stats = ShipperStats()
        self._stop = threading.Event()
        self._ready = False  # policy, template and data stream are in place
        self.withheld = Withheld(spool.directory)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sentinel-shipper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Stop after the request in flight; what is unacknowledged stays in the spool."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def setup(self) -> None:
        """Create or update the ILM policy, index template and data stream."""
        es = self.settings
        policy = es_schema.ilm_policy(self.retention_days, es.rollover_max_age, es.rollover_max_primary_shard_size)
        changed = es_schema.ensure(self.client, es.data_stream, es.ilm_policy, policy)
        if changed:
            log.info("Elasticsearch: created or updated %s", ", ".join(changed))
        self._ready = True

    def _run(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                if not self._ready:
                    self.setup()
                if self.ship_once(LINGER) and delay > 1.0:
                    log.info("Elasticsearch reachable again; shipping the spool")
                delay = 1.0
            except SpoolClosed:
                return
            except Exception as exc:  # an outage, a timeout, an authorisation problem
                self._failed(exc, delay)
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, MAX_BACKOFF)

    def _failed(self, exc: Exception, delay: float) -> None:
        self.stats.requests_failed += 1
        if isinstance(exc, ApiError):
            message = f"{exc.meta.status} {exc.message}"
        elif isinstance(exc, TransportError):
            message = f"{type(exc).__name__}: {exc.message}"
        else:
            message = f"{type(exc).__name__}: {exc}"
        if message != self.stats.last_error:
            log.error("cannot ship to Elasticsearch (%s); retrying, the spool keeps the events", message)
        else:
            log.debug("shipping failed again (%s); next try in %gs", message, delay)
        self.stats.last_error = message
        if isinstance(exc, ApiError) and exc.meta.status in (401, 403, 404):
            self._ready = False  # set up again: credentials or the data stream may have changed

    def ship_once(self, timeout: float) -> int:
        """Send one batch from the spool (waiting up to ``timeout`` for one); documents acknowledged."""
        es = self.settings
        resending = self.spool.resending
        lines, end = self.spool.read(es.bulk_max_docs, es.bulk_max_bytes, timeout)
        if not lines:
            self.withheld.clear(lambda: self.spool.pending_bytes == 0)
            return 0
        self.spool.mark_sent(end)
        self._deliver(lines, resending)
        self.spool.ack(end)
        self.stats.last_success = time.time()
        self.stats.last_error = None
        return len(lines)

    def _deliver(self, lines: Sequence[bytes], resending: bool = False) -> None:
        """Bulk-create ``lines`` until each is created, a duplicate, or re-indexed as an error event.

        ``resending``: some may be in the data stream already, maybe in an older backing index.
        """
        pending = [split_line(line) for line in lines]
        if resending:
            present = self._present([eid for eid, _ in pending])
            if present:
                self.stats.duplicates += len(present)
                pending = [(eid, body) for eid, body in pending if eid not in present]
        delay = 0.5
        while pending:
            # Read after the spool recorded this send: an erasure either sees it in flight and
            # waits for its answer, or has listed its ids by now.
            withheld = self.withheld.refresh()
            if withheld:
                kept = [(eid, body) for eid, body in pending if eid not in withheld]
                self.stats.withheld += len(pending) - len(kept)
                pending = kept
                if not pending:
                    break
            retry: list[tuple[str, bytes]] = []
            refused: list[tuple[str, bytes, str]] = []
            for (eid, body), item in zip(pending, self._bulk(pending), strict=True):
                result = item["create"]
                status = int(result.get("status", 500))
                if status in (200, 201):
                    self.stats.shipped += 1
                elif status == 409:
                    self.stats.duplicates += 1
                elif status in RETRYABLE:
                    retry.append((eid, body))
                elif status in (401, 403):  # missing privileges: the operator must act; keep everything
                    error = result.get("error") or {}
                    raise PermissionError(f"{status} {error.get('type', '')}: {error.get('reason', '')}")
                else:
                    error = result.get("error") or {}
                    refused.append((eid, body, f"{error.get('type', status)}: {error.get('reason', '')}"))
            if refused:
                self._refused(refused)
            pending = retry
            if pending:
                if self._stop.wait(delay):
                    raise SpoolClosed  # stopping: the unacknowledged rest stays spooled
                delay = min(delay * 2, MAX_BACKOFF)

    def _present(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` the data stream holds, in any of its backing indices."""
        stream = self.settings.data_stream
        self.client.indices.refresh(index=stream, ignore_unavailable=True)  # earlier writes become searchable
        found: set[str] = set()
        for i in range(0, len(ids), ID_LOOKUP_CHUNK):
            chunk = ids[i : i + ID_LOOKUP_CHUNK]
            response = self.client.search(
                index=stream,
                query={"ids": {"values": chunk}},
                source=False,
                size=len(chunk),
                track_total_hits=False,
                ignore_unavailable=True,
            )
            found.update(hit["_id"] for hit in response["hits"]["hits"])
        return found

    def _bulk(self, docs: Sequence[tuple[str, bytes]]) -> list[dict[str, Any]]:
        ops: list[bytes] = []
        for eid, body in docs:
            ops.append(b'{"create":{"_id":' + orjson.dumps(eid) + b"}}")
            ops.append(body)
        response = self.client.bulk(index=self.settings.data_stream, operations=cast(Any, ops))
        items: list[dict[str, Any]] = response["items"]
        if len(items) != len(docs):
            raise RuntimeError(f"bulk answered {len(items)} items for {len(docs)} documents")
        return items

    def _refused(self, refused: list[tuple[str, bytes, str]]) -> None:
        """Index refused documents as pipeline_error events carrying the original JSON."""
        wrapped: list[tuple[str, bytes]] = []
        for eid, body, reason in refused:
            log.warning("Elasticsearch refused event %s (%s); indexing it as a pipeline_error event", eid, reason)
            try:
                stamp = orjson.loads(body).get("@timestamp")
                event_time(stamp)
            except Exception:
                stamp = iso(time.time())
            wrapped.append(
                (
                    eid,
                    orjson.dumps(
                        {
                            "@timestamp": stamp,
                            "event.kind": "pipeline_error",
                            "event.id": eid,
                            "event.original": body.decode(errors="replace"),
                            "event.dataset": "sentinel.shipper",
                            "error.message": reason,
                        }
                    ),
                )
            )
        for (eid, _body), item in zip(wrapped, self._bulk(wrapped), strict=True):
            status = int(item["create"].get("status", 500))
            if status in (200, 201, 409):
                self.stats.rejected += 1
            else:
                self.stats.lost += 1
                log.error("Elasticsearch refused event %s even as a pipeline_error event; it is not stored", eid)

    def lag(self) -> float | None:
        """Age in seconds of the oldest event not yet acknowledged (None: all shipped)."""
        line = self.spool.oldest_unacked()
        if line is None:
            return None
        try:
            stamp = orjson.loads(split_line(line)[1]).get("@timestamp")
            return max(0.0, time.time() - event_time(stamp))
        except Exception:
            return None


class ShippingStore:
    """The daemon's store for the Elasticsearch backend: spool + shipper + local checkpoints."""

    def __init__(
        self,
        checkpoints: SQLiteStore,
        spool: Spool,
        shipper: Shipper,
        hostname: str | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.checkpoints = checkpoints
        self.spool = spool
        self.shipper = shipper
        self.hostname = hostname
        self.clock = clock

    @classmethod
    def open(cls, settings: Settings, client: Elasticsearch) -> ShippingStore:
        """Open the spool under the state directory and start shipping."""
        es = settings.store.elasticsearch
        state_dir = settings.daemon.state_dir
        spool = Spool(es.spool_path(state_dir), es.spool_max_bytes, es.overflow)
        checkpoints = SQLiteStore(settings.store.sqlite_path(state_dir))
        shipper = Shipper(client, es, settings.store.retention_days, spool)
        shipper.start()
        return cls(checkpoints, spool, shipper, settings.daemon.hostname)

    @property
    def throttled(self) -> bool:
        """The writer waits for the spool to drain (``block`` policy): slowed on purpose, not stuck."""
        return self.spool.blocked_since is not None

    def checkpoint(self, source: str) -> dict[str, Any] | None:
        return self.checkpoints.checkpoint(source)

    def commit_many(self, batches: Sequence[Batch]) -> None:
        """Spool the batches' documents (fsynced), then commit the sources' checkpoints."""
        lines = [document_line(*document(e)) for b in batches for e in b.events]
        dropped = self.spool.append(lines)
        if dropped is not None:
            self._record_drop(dropped)
        self.checkpoints.commit_many([Batch(b.source, [], b.checkpoint) for b in batches])

    def _record_drop(self, dropped: Dropped) -> None:
        self.shipper.stats.dropped += dropped.documents
        self.shipper.stats.overflows += 1
        message = (
            f"the Elasticsearch spool was full: dropped the {dropped.documents} oldest unsent events "
            f"({dropped.bytes} bytes) by the drop_oldest policy"
        )
        log.error("%s", message)
        event: Event = audit_event(
            OVERFLOW_ACTION,
            message,
            self.clock(),
            self.hostname,
            **{
                "event.outcome": "failure",
                "sentinel.spool.dropped": dropped.documents,
                "sentinel.spool.bytes": dropped.bytes,
            },
        )
        event["event.type"] = ["deletion"]
        self.spool.append([document_line(*document(event))])

    def close(self) -> None:
        self.shipper.stop(5.0)
        self.spool.close()
        self.checkpoints.close()

    def metrics(self) -> Iterator[Metric]:
        """Spool depth, shipping lag and the shipper's counters, for the metrics endpoint."""
        s = self.shipper.stats
        yield GaugeMetricFamily(
            "sentinel_spool_bytes", "Bytes in the spool not yet acknowledged", value=self.spool.pending_bytes
        )
        lag = self.shipper.lag()
        yield GaugeMetricFamily(
            "sentinel_shipping_lag_seconds", "Age of the oldest event not yet in Elasticsearch", value=lag or 0.0
        )
        shipped = CounterMetricFamily("sentinel_shipped_events", "Events sent to Elasticsearch", labels=["result"])
        for result, value in (
            ("created", s.shipped),
            ("duplicate", s.duplicates),
            ("pipeline_error", s.rejected),
            ("lost", s.lost),
            ("dropped", s.dropped),
            ("withheld", s.withheld),
        ):
            shipped.add_metric([result], value)
        yield shipped
        yield CounterMetricFamily("sentinel_shipping_failures", "Bulk requests that failed", value=s.requests_failed)

    def status(self) -> dict[str, Any]:
        """For ``sentinel status``."""
        s = self.shipper.stats
        return {
            "spool_bytes": self.spool.pending_bytes,
            "lag_seconds": self.shipper.lag(),
            "shipped": s.shipped,
            "duplicates": s.duplicates,
            "pipeline_errors": s.rejected,
            "dropped": s.dropped,
            "withheld": s.withheld,
            "last_success": datetime.fromtimestamp(s.last_success, UTC).isoformat() if s.last_success else None,
            "last_error": s.last_error,
        }
