"""Event storage: where every event, finding and response ends up, with the sources' checkpoints.

Only SQLite for now (:class:`~sentinel.store.sqlite.SQLiteStore`); time partitioning, hash
chaining and retention come later behind the same small interface.
"""

from __future__ import annotations

from sentinel.store.sqlite import SQLiteStore

__all__ = ["SQLiteStore"]
