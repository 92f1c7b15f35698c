"""Event storage: where every event, finding and response ends up, with the sources' checkpoints.

The embedded store (:class:`~sentinel.store.sqlite.SQLiteStore`) is SQLite, partitioned by
arrival month and hash-chained; :class:`~sentinel.store.maintenance.MaintenanceJob` seals
finished months and enforces retention; :mod:`sentinel.store.verify` proves the chain;
:mod:`sentinel.store.audit` is the query interface every backend offers auditors.
"""

from __future__ import annotations

from sentinel.store.maintenance import MaintenanceJob, maintain
from sentinel.store.sqlite import SQLiteStore, StoreError

__all__ = ["MaintenanceJob", "SQLiteStore", "StoreError", "maintain"]
