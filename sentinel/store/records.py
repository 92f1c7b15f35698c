"""What one stored record is: its indexed columns, its hashes, its tombstone.

Shared by the writer (:mod:`sentinel.store.sqlite`), the verifier (:mod:`sentinel.store.verify`)
and erasure, so that what ``sentinel audit verify`` recomputes is, byte for byte, what was
written.

Hashes (SHA-256; ``‖`` is concatenation)::

    content(r) = H(salt ‖ doc)                  salt: 16 random bytes, doc: the JSON as stored
    hash(r)    = H(hash(r-1) ‖ id ‖ content(r))  id: 8 bytes big-endian; hash(0) = GENESIS

The chain runs over the record ids of the whole store, across partitions.  The salt exists for
erasure: an erased record keeps ``content(r)`` (so the chain still verifies) but loses its salt
and its personal fields, and without the salt nobody can confirm a guess of what the fields
held (an unsalted hash of "Failed password for alice from …" is a dictionary attack away from
the name it was meant to forget).
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from sentinel.event import Event, event_time

#: The chain's starting point: the "previous hash" of record 1.
GENESIS: Final = hashlib.sha256(b"sentinel audit chain v1").digest()
#: Layout version, in ``PRAGMA user_version`` of every partition file.
FORMAT: Final = 2
#: What an erased field holds instead of its value.
TOMBSTONE: Final = "[erased]"
#: ``event.dataset`` of the store's own audit events (retention, erasure): never erased.
AUDIT_DATASET: Final = "sentinel.audit"
#: ``event.action`` of the event recording a partition dropped by retention.
RETENTION_ACTION: Final = "audit-retention-drop"
#: ``event.action`` of the events recording an erasure (one per chunk of tombstoned records).
ERASE_ACTION: Final = "audit-erase"
#: Fields naming a person: what ``--user`` matches, what export and erasure are about.
USER_FIELDS: Final = ("user.name", "user.effective.name", "user.target.name")
RELATED_USER: Final = "related.user"
#: Fields erased from every record of the person, beyond those naming them: free text that
#: usually quotes the name, and identifiers of the account.
PERSONAL_FIELDS: Final = frozenset(
    {
        *USER_FIELDS,
        RELATED_USER,
        "user.id",
        "user.email",
        "user.full_name",
        "user.domain",
        "message",
        "event.original",
        "process.command_line",
        "process.working_directory",
    }
)

# Columns of the ``events`` table shared by the live file and the sealed partitions.
SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,   -- position in the chain, store-wide, never reused
    ts INTEGER NOT NULL,      -- @timestamp in microseconds since the epoch (0: none)
    ip BLOB,                  -- source.ip as 16 bytes (IPv4 mapped: ::ffff:a.b.c.d), sortable
    action TEXT,              -- event.action
    outcome TEXT,             -- event.outcome
    rule TEXT,                -- rule.id
    host TEXT,                -- host.hostname
    doc TEXT NOT NULL,        -- the event as JSON, exactly the bytes hashed
    salt BLOB,                -- hashed with doc; NULL once erased
    digest BLOB,              -- content hash kept by an erased record (NULL otherwise)
    erased_by INTEGER,        -- id of the erasure event that tombstoned this record
    hash BLOB NOT NULL        -- chain hash
);
CREATE TABLE IF NOT EXISTS terms (  -- multi-valued keywords: user:NAME, category:NAME
    b INTEGER NOT NULL,               -- id >> BUCKET_BITS
    term TEXT NOT NULL,
    id INTEGER NOT NULL,
    PRIMARY KEY (b, term, id)
) WITHOUT ROWID;
"""

#: Records per bucket of the address and term indexes, as a power of two.  Those keys arrive in
#: random order: in one big B-tree every commit would dirty (and write to the WAL) pages all over
#: the index, about 6 kB per event stored.  Keyed by (bucket, key) the inserts of a commit land in
#: the current bucket's few hundred pages (under 2 kB per event); a lookup costs one seek per
#: bucket, some 30 per month of a busy host.
BUCKET_BITS: Final = 14

#: The indexes a query can be driven by (a sealed partition builds them after its bulk copy).
#: ``outcome`` and ``host`` have a handful of values each: as the only filter an index on them
#: would still visit most records, so they filter on top of another index (or the time order)
#: instead of costing every insert an index update (bench/store.py).
INDEXES: Final = """
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE INDEX IF NOT EXISTS events_ip ON events (id >> 14, ip, ts) WHERE ip IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_action ON events (action);
CREATE INDEX IF NOT EXISTS events_rule ON events (rule) WHERE rule IS NOT NULL;
"""

#: Column list in table order, for INSERT and SELECT.
COLUMNS: Final = "id, ts, ip, action, outcome, rule, host, doc, salt, digest, erased_by, hash"
INSERT_EVENT: Final = f"INSERT INTO events ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608 (constant)
INSERT_TERM: Final = "INSERT OR IGNORE INTO terms (b, term, id) VALUES (?, ?, ?)"

_MAPPED_V4: Final = b"\x00" * 10 + b"\xff\xff"


#: The columns derived from an event's document: ts, ip, action, outcome, rule, host.
Indexed = tuple[int, bytes | None, str | None, str | None, str | None, str | None]


def pack_ip(text: str) -> bytes | None:
    """16 sortable bytes for an address (IPv4 mapped into IPv6), None if not an address."""
    try:
        return _MAPPED_V4 + socket.inet_pton(socket.AF_INET, text)
    except OSError:
        pass
    try:
        return socket.inet_pton(socket.AF_INET6, text.split("%", 1)[0])
    except OSError:
        return None


def unpack_ip(packed: bytes) -> str:
    """Inverse of :func:`pack_ip`."""
    if packed[:12] == _MAPPED_V4:
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed)


def timestamp_us(value: object) -> int:
    """Microseconds since the epoch of an ECS ``@timestamp``; 0 when absent or unreadable."""
    if not isinstance(value, str):
        return 0
    try:
        return round(event_time(value) * 1_000_000)
    except ValueError:
        return 0


def iso(seconds: float) -> str:
    """An ECS ``@timestamp`` (UTC, ``Z``) for seconds since the epoch."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def indexed(event: Mapping[str, Any]) -> Indexed:
    """The indexed columns of ``event`` (on the ingest hot path: plain tuple, no helpers)."""
    get = event.get
    ip = get("source.ip")
    action, outcome, rule, host = get("event.action"), get("event.outcome"), get("rule.id"), get("host.hostname")
    return (
        timestamp_us(get("@timestamp")),
        pack_ip(ip) if ip.__class__ is str else None,
        action if action.__class__ is str else None,
        outcome if outcome.__class__ is str else None,
        rule if rule.__class__ is str else None,
        host if host.__class__ is str else None,
    )


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def users(event: Mapping[str, Any]) -> list[str]:
    """Every person ``event`` names: user.name, user.effective.name, user.target.name, related.user."""
    names = [v for f in USER_FIELDS if isinstance(v := event.get(f), str)]
    names.extend(_strings(event.get(RELATED_USER)))
    return [n for n in dict.fromkeys(names) if n and n != TOMBSTONE]


def terms(event: Mapping[str, Any]) -> list[str]:
    """The keyword terms indexed for ``event`` (``user:NAME``, ``category:NAME``), without repeats.

    The same as ``users`` and ``event.category`` prefixed, written out for the ingest hot path.
    """
    get = event.get
    out = []
    for name in (get("user.name"), get("user.effective.name"), get("user.target.name")):
        if name.__class__ is str and name and name != TOMBSTONE:
            term = "user:" + name
            if term not in out:
                out.append(term)
    related = get(RELATED_USER)
    if related is not None:
        _add(out, "user:", related)
    category = get("event.category")
    if category is not None:
        _add(out, "category:", category)
    return out


def _add(out: list[str], prefix: str, values: object) -> None:
    for value in (values,) if values.__class__ is str else values if isinstance(values, list) else ():
        if value.__class__ is str and value and value != TOMBSTONE:
            term = prefix + value
            if term not in out:
                out.append(term)


def buckets(first: int, last: int) -> list[int]:
    """The index buckets of records ``first..last``."""
    return list(range(first >> BUCKET_BITS, (last >> BUCKET_BITS) + 1)) if last >= first else []


def content_hash(salt: bytes, doc: bytes) -> bytes:
    """H(salt ‖ doc)."""
    return hashlib.sha256(salt + doc).digest()


def link_hash(prev: bytes, record_id: int, content: bytes) -> bytes:
    """H(prev ‖ id ‖ content): the record's place in the chain."""
    return hashlib.sha256(prev + record_id.to_bytes(8, "big") + content).digest()


def dumps(event: Mapping[str, Any]) -> bytes:
    """The stored (and hashed) bytes of an event."""
    return orjson.dumps(event)


def tombstone(event: Mapping[str, Any], user: str, request: str) -> Event:
    """``event`` with the personal fields, and any text quoting ``user``, replaced by :data:`TOMBSTONE`."""
    out: Event = {}
    for key, value in event.items():
        personal = key in PERSONAL_FIELDS or key.startswith("user.")
        if not personal and user:
            personal = any(user in s for s in _strings(value))
        out[key] = TOMBSTONE if personal else value
    out["sentinel.erasure.request"] = request
    return out


def tombstone_hash(doc: bytes) -> str:
    """What an erasure event records for each tombstone it wrote (hex SHA-256 of the document)."""
    return hashlib.sha256(doc).hexdigest()
