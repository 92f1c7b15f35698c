"""Erasure and the Elasticsearch spool: documents naming an erased person are never shipped.

``sentinel audit erase`` deletes a person's documents from the data stream, but on the host it
runs on some may still wait in the daemon's spool (Elasticsearch was down, or shipping lags):
shipped afterwards, they would bring the erased data back.  So before its delete-by-query the
erasure lists the ids of those spooled documents in ``<spool>/withheld-ids``
(:func:`withhold`), and waits until a bulk request already under way has been answered
(:func:`wait_for_in_flight`): whatever that request carried is then in Elasticsearch, where the
delete-by-query removes it.  The shipper skips every listed id (:class:`Withheld`) and empties
the file once the spool is empty, as every id listed then has been passed.

The file is locked (``flock``) by whichever side writes it, and owned like the spool, so the
daemon (user ``sentinel``) can empty a file that root's ``audit erase`` created.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Final

import orjson

from sentinel.store.records import users
from sentinel.store.spool import acknowledged, in_flight, pending_lines, split_line

WITHHELD: Final = "withheld-ids"


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[BinaryIO]:
    """The withheld-ids file of the spool at ``directory``, created if needed, exclusively locked."""
    fd = os.open(directory / WITHHELD, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.geteuid() == 0:
            owner = os.stat(directory)
            os.fchown(fd, owner.st_uid, owner.st_gid)
        with os.fdopen(fd, "r+b", closefd=False) as fh:
            yield fh
    finally:
        os.close(fd)


def spooled_naming(directory: Path, user: str) -> list[str]:
    """Ids of the documents not yet shipped from the spool at ``directory`` that name ``user``
    (in the user fields the erasure's delete-by-query matches)."""
    if not directory.is_dir():
        return []
    ids = []
    for line in pending_lines(directory):
        eid, body = split_line(line)
        try:
            event = orjson.loads(body)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict) and user in users(event):
            ids.append(eid)
    return ids


def withhold(directory: Path, user: str) -> int:
    """Keep the spooled documents naming ``user`` from ever being shipped; how many there are."""
    if not directory.is_dir():
        return 0
    with _locked(directory) as fh:
        ids = spooled_naming(directory, user)
        if ids:
            fh.seek(0, os.SEEK_END)
            fh.write("".join(f"{eid}\n" for eid in ids).encode())
            fh.flush()
            os.fsync(fh.fileno())
    return len(ids)


def wait_for_in_flight(directory: Path, daemon_running: bool, timeout: float = 30.0) -> bool:
    """Wait until the bulk request under way (if any) has been acknowledged; False on time-out.

    Without a running daemon nothing is under way, whatever the spool says (a crash left it).
    """
    if not daemon_running:
        return True
    end = in_flight(directory)
    deadline = time.monotonic() + timeout
    while end is not None and acknowledged(directory) < end:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


class Withheld:
    """The shipper's view of the withheld ids: re-read when the file changes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ids: frozenset[str] = frozenset()
        self._seen: tuple[int, int] | None = None

    def refresh(self) -> frozenset[str]:
        """The ids withheld now."""
        try:
            st = os.stat(self.directory / WITHHELD)
        except FileNotFoundError:
            self.ids, self._seen = frozenset(), None
            return self.ids
        if (st.st_size, st.st_mtime_ns) != self._seen:
            with _locked(self.directory) as fh:
                self.ids = frozenset(fh.read().decode().split())
                st = os.fstat(fh.fileno())
                self._seen = (st.st_size, st.st_mtime_ns)
        return self.ids

    def clear(self, spool_empty: Callable[[], bool]) -> None:
        """Empty the file if the spool is empty (``spool_empty()``, asked under the lock, so that
        an erasure listing ids meanwhile is not undone)."""
        if not self.ids:
            return
        with _locked(self.directory) as fh:
            if spool_empty():
                fh.truncate(0)
                self.ids, self._seen = frozenset(), None
