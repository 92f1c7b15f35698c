"""What the daemon's writer needs from an event store, whichever backend is configured."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from sentinel.collectors.sources.base import Batch


class StoreConfigError(ValueError):
    """The configured backend cannot be used as configured (a message for the operator, no traceback)."""


class EventStore(Protocol):
    """Durably takes batches of events with their sources' checkpoints, and gives checkpoints back.

    :class:`~sentinel.store.sqlite.SQLiteStore` (embedded) and
    :class:`~sentinel.store.shipper.ShippingStore` (Elasticsearch) implement it.
    """

    def checkpoint(self, source: str) -> dict[str, Any] | None:
        """The last committed checkpoint of ``source``, or None."""
        ...

    def commit_many(self, batches: Sequence[Batch]) -> None:
        """Make the batches' events durable, then their sources' checkpoints; return once both are."""
        ...

    def close(self) -> None:
        """Flush and release files, threads and connections."""
        ...
