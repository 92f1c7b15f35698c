"""The auditor's interface to stored events, whichever backend holds them.

``sentinel audit query|export|erase`` speak only to :class:`AuditBackend`: the embedded SQLite
store implements it in :mod:`sentinel.store.sqlite_audit`; another backend (Elasticsearch)
implements the same four methods and registers a factory::

    from sentinel.store.audit import register_backend
    register_backend("elasticsearch", lambda settings, path: ElasticsearchAudit(settings))

or simply defines ``audit_backend(settings, path)`` in ``sentinel.store.<name>``, which
:func:`open_backend` imports on first use.

Query semantics every backend honours:

* ``since`` inclusive, ``until`` exclusive, on ``@timestamp`` (seconds since the epoch);
* ``network``: ``source.ip`` within the network (a single address is a /32 or /128);
* ``user``: any of ``user.name``, ``user.effective.name``, ``user.target.name``, ``related.user``;
* ``category``: one of the values of ``event.category``; ``action``, ``outcome``, ``rule``
  (``rule.id``), ``host`` (``host.hostname``): equal;
* results in (``@timestamp``, record id) order, at most ``limit``; ``Page.next`` is an opaque
  cursor for the following page, passed back as ``after`` (Elasticsearch: ``search_after``).
"""

from __future__ import annotations

import importlib
import ipaddress
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

from sentinel.engine.durations import parse_duration
from sentinel.event import Event

if TYPE_CHECKING:
    from sentinel.config import Settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Query:
    """Filters of ``sentinel audit query`` (all optional, combined with AND) and paging."""

    since: float | None = None
    until: float | None = None
    network: Network | None = None
    user: str | None = None
    category: str | None = None
    action: str | None = None
    outcome: str | None = None
    rule: str | None = None
    host: str | None = None
    limit: int = 100
    after: str | None = None


class Hit(NamedTuple):
    """One stored event and its id in the backend (SQLite: the record id in the chain)."""

    id: str
    event: Event


@dataclass(frozen=True)
class Page:
    """One page of results; ``next`` is the cursor of the following page, None after the last."""

    hits: list[Hit]
    next: str | None


@dataclass(frozen=True)
class Erasure:
    """What ``erase_user`` did: tombstoned records and the audit events recording it."""

    request: str
    records: int
    events: list[str]
    completed: int = 0  # records of an earlier, interrupted erasure finished on the way


class AuditBackend(Protocol):
    """What the auditor commands need from a backend."""

    def search(self, query: Query) -> Page:
        """One page of events matching ``query``."""
        ...

    def export_user(self, user: str) -> Iterator[Hit]:
        """Every event naming ``user`` (GDPR access request), in time order."""
        ...

    def erase_user(self, user: str, *, actor: str, reason: str) -> Erasure:
        """Remove ``user``'s personal data, recording who did it, when and why (not whose)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


#: Events per page when exporting a person's data.
EXPORT_PAGE = 5000


def export_pages(search: Callable[[Query], Page], user: str) -> Iterator[Hit]:
    """Every event naming ``user``, page after page of ``search`` (how backends export)."""
    query = Query(user=user, limit=EXPORT_PAGE)
    while True:
        page = search(query)
        yield from page.hits
        if page.next is None:
            return
        query = Query(user=user, limit=EXPORT_PAGE, after=page.next)


#: ``factory(settings, store_path)`` per backend name.
BackendFactory = Callable[["Settings", Path | None], AuditBackend]
_FACTORIES: dict[str, BackendFactory] = {}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make ``name`` available to ``sentinel audit --backend``."""
    _FACTORIES[name] = factory


def open_backend(settings: Settings, name: str | None = None, path: Path | None = None) -> AuditBackend:
    """The backend ``name`` (default: ``[store] backend``); ``path`` overrides the SQLite file."""
    name = name or settings.store.backend
    if name == "sqlite":
        from sentinel.store.sqlite_audit import SQLiteAudit

        return SQLiteAudit(path or settings.store.sqlite_path(settings.daemon.state_dir))
    if name not in _FACTORIES:
        try:
            module = importlib.import_module(f"sentinel.store.{name}")
        except ImportError as exc:
            raise ValueError(f"no audit backend {name!r}: {exc}") from None
        factory = getattr(module, "audit_backend", None)
        if not callable(factory):
            raise ValueError(f"sentinel.store.{name} does not provide audit_backend(settings, path)")
        register_backend(name, factory)
    return _FACTORIES[name](settings, path)


def parse_network(text: str) -> Network:
    """An address (as a /32 or /128) or a CIDR network; ValueError if neither."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an address or CIDR network") from None


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_time(text: str, now: float | None = None) -> float:
    """Seconds since the epoch for ``2024-05-01``, ``2024-05-01T10:00:00Z`` (naive: UTC) or ``7d`` (ago)."""
    text = text.strip()
    if _DATE.match(text):
        return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            return (time.time() if now is None else now) - parse_duration(text)
        except ValueError:
            raise ValueError(f"{text!r} is neither a date, a date and time, nor a duration such as 7d") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
