"""The ban state: one small SQLite table in the state directory (``firewall.db``).

Why a table of its own rather than the event store: the event store is an append-only history
(every ban and unban is an event there), committed in the writer thread's batches; this is the
*current* state — one row per active ban, updated in place, read whole at start to reconcile the
kernel — and it is written by the firewall's own thread, so neither waits for the other.  The
kernel is a cache of this table: on start the sets are reloaded from it, so a ban the kernel
forgot (a flushed set, a reboot) comes back with its remaining time, and a member the table does
not know is removed.  Rows of bans that have expired are purged (and reported as unbans).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bans (
    target     TEXT PRIMARY KEY,   -- an address or CIDR network, canonical form
    expires    REAL,               -- seconds since the epoch; NULL: permanent
    created    REAL NOT NULL,      -- when first banned
    offence    INTEGER NOT NULL,   -- the engine's repeat count (1: first offence)
    origin     TEXT NOT NULL,      -- "rule:<id>", "cli:uid=<n>", "api"
    finding_id TEXT,               -- the finding that asked for it, if any
    applied    INTEGER NOT NULL    -- 1 once the kernel set holds it
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(slots=True)
class Ban:
    """One active ban, as kept in the table."""

    target: str
    expires: float | None
    created: float
    offence: int = 1
    origin: str = "api"
    finding_id: str | None = None
    applied: bool = False

    @property
    def permanent(self) -> bool:
        return self.expires is None

    def remaining(self, now: float) -> float | None:
        """Seconds left (None: permanent)."""
        return None if self.expires is None else self.expires - now

    def summary(self) -> dict[str, Any]:
        """What ``sentinel bans list`` shows of the ban (the control socket's answer, or the saved state's)."""
        return {
            "target": self.target,
            "expires": self.expires,
            "created": self.created,
            "offence": self.offence,
            "origin": self.origin,
            "applied": self.applied,
        }


class BanStore:
    """The ``bans`` table; used by the firewall thread only (or read-only by ``sentinel bans list``)."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5, check_same_thread=False)
        else:
            self.db = sqlite3.connect(path, timeout=5, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a power cut may lose the last commits, never corrupt the table;
            # the kernel holds those bans anyway until their timeout.
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            path.chmod(0o600)

    def load(self) -> list[Ban]:
        rows = self.db.execute(
            "SELECT target, expires, created, offence, origin, finding_id, applied FROM bans"
        ).fetchall()
        return [Ban(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6])) for r in rows]

    def save(self, bans: Iterable[Ban] = (), removed: Sequence[str] = ()) -> None:
        """Upsert ``bans`` and delete ``removed`` in one transaction."""
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO bans (target, expires, created, offence, origin, finding_id, applied) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(b.target, b.expires, b.created, b.offence, b.origin, b.finding_id, int(b.applied)) for b in bans],
            )
            if removed:
                self.db.executemany("DELETE FROM bans WHERE target = ?", [(t,) for t in removed])

    def mark_applied(self, targets: Sequence[str] | None = None) -> None:
        """Record that the kernel holds ``targets`` (None: every ban)."""
        with self.db:
            if targets is None:
                self.db.execute("UPDATE bans SET applied = 1 WHERE applied = 0")
            else:
                self.db.executemany("UPDATE bans SET applied = 1 WHERE target = ?", [(t,) for t in targets])

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self.db.close()
