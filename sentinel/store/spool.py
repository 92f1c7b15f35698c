"""A disk-backed FIFO of documents waiting to be shipped: at-least-once, bounded, crash-safe.

Layout of the spool directory::

    00000000000000000001.ndjson   segments: one document per line, appended and fsynced
    00000000000000000002.ndjson   (a new segment every SEGMENT_BYTES)
    cursor.json                   how far the shipper has been acknowledged (segment and offset),
                                  and how far it has sent documents not yet acknowledged

The writer (the daemon's writer thread) appends a batch and fsyncs before the sources'
checkpoints are committed, so a line whose checkpoint moved on is on disk.  The reader (the
shipper thread) reads from the cursor and moves it only once the receiver has acknowledged the
documents (:meth:`Spool.ack`): a crash before that sends them again — deterministic ids make the
re-send idempotent.  Before each send the reader records how far it sends (:meth:`Spool.mark_sent`),
so that after a crash or a lost answer it knows which documents may already be at the receiver
(:attr:`Spool.resending`) and can check for them first.  A torn last line from a crash during a
write is cut off when the spool is reopened; its batch's checkpoint was not committed, so its
source reads it again.

Bounded: when the unacknowledged segments reach ``max_bytes`` the ``overflow`` policy applies.
``block`` makes :meth:`Spool.append` wait for the shipper (the pipeline slows to the receiver's
pace, then the sources stop reading: nothing is lost, the logs stay on disk).  ``drop_oldest``
deletes the oldest whole segments and returns how many documents went, so the caller records
that loss as an audit event — never a silent drop.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import orjson

SEGMENT_BYTES: Final = 16 * 1024 * 1024
SUFFIX: Final = ".ndjson"
CURSOR: Final = "cursor.json"

Overflow = Literal["block", "drop_oldest"]


class SpoolClosed(Exception):
    """The spool was closed while a writer waited for room."""


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A place in the spool: a segment number and a byte offset in it."""

    segment: int
    offset: int


@dataclass(frozen=True, slots=True)
class Dropped:
    """What ``drop_oldest`` deleted to make room: documents and their byte size."""

    documents: int
    bytes: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _segment_sizes(directory: Path) -> dict[int, int]:
    """Segment number → size in bytes, of the segments in ``directory``."""
    sizes: dict[int, int] = {}
    for path in directory.glob("*" + SUFFIX):
        with contextlib.suppress(ValueError, FileNotFoundError):
            sizes[int(path.name[: -len(SUFFIX)])] = path.stat().st_size
    return sizes


def _read_cursor(directory: Path, sizes: dict[int, int]) -> tuple[Position, Position]:
    """The acknowledged position (the first segment's start when none was saved yet), and how far
    documents were sent (the same position when nothing beyond it was)."""
    try:
        doc = orjson.loads((directory / CURSOR).read_bytes())
        cursor = Position(int(doc["segment"]), int(doc["offset"]))
        sent = doc.get("sent")
        return cursor, cursor if sent is None else max(cursor, Position(int(sent[0]), int(sent[1])))
    except FileNotFoundError:
        start = Position(min(sizes) if sizes else 1, 0)
        return start, start
    except (ValueError, KeyError, TypeError, IndexError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"the spool cursor {directory / CURSOR} is unreadable ({exc})") from None


def _unacked(sizes: dict[int, int], cursor: Position) -> int:
    """Bytes from ``cursor`` to the end of the last segment."""
    total = sum(size for number, size in sizes.items() if number >= cursor.segment)
    return total - (cursor.offset if cursor.segment in sizes else 0)


def document_line(eid: str, body: bytes) -> bytes:
    """How a document is spooled: its id, a tab, its JSON (one line)."""
    return eid.encode() + b"\t" + body


def split_line(line: bytes) -> tuple[str, bytes]:
    """A spooled line's id and JSON body."""
    eid, _, body = line.partition(b"\t")
    return eid.decode(), body


def pending_lines(directory: Path) -> Iterator[bytes]:
    """The complete lines not yet acknowledged in the spool at ``directory``, read without opening it
    (for other processes: ``sentinel audit erase``)."""
    sizes = _segment_sizes(directory)
    cursor, _ = _read_cursor(directory, sizes)
    for number in sorted(n for n in sizes if n >= cursor.segment):
        try:
            with open(directory / f"{number:020d}{SUFFIX}", "rb") as fh:
                fh.seek(cursor.offset if number == cursor.segment else 0)
                data = fh.read()
        except FileNotFoundError:  # acknowledged and deleted meanwhile
            continue
        yield from data[: data.rfind(b"\n") + 1].split(b"\n")[:-1]


def in_flight(directory: Path) -> Position | None:
    """Where the documents sent but not yet acknowledged end (None: nothing is in flight)."""
    cursor, sent = _read_cursor(directory, _segment_sizes(directory))
    return sent if sent > cursor else None


def acknowledged(directory: Path) -> Position:
    """The spool's acknowledged position (read by another process)."""
    return _read_cursor(directory, _segment_sizes(directory))[0]


def pending_on_disk(directory: Path) -> int:
    """Bytes not yet acknowledged in the spool at ``directory`` (0 if none), read without opening it.

    For other processes (``sentinel audit erase``) while the daemon owns the spool.
    """
    sizes = _segment_sizes(directory)
    try:
        return _unacked(sizes, _read_cursor(directory, sizes)[0])
    except ValueError:
        return sum(sizes.values())


class Spool:
    """Append-only segment files plus an acknowledged cursor; one writer and one reader thread."""

    def __init__(self, directory: Path, max_bytes: int, overflow: Overflow = "block") -> None:
        if max_bytes < 1024 * 1024:
            raise ValueError("the spool needs at least 1 MiB")
        self.directory = directory
        self.max_bytes = max_bytes
        self.overflow: Overflow = overflow
        self.segment_bytes = min(SEGMENT_BYTES, max(64 * 1024, max_bytes // 8))
        directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._cond = threading.Condition()
        self._closed = False
        #: The writer is waiting for room (``block``): not stuck, throttled on purpose.
        self.blocked_since: float | None = None
        self._sizes = _segment_sizes(directory)
        self.cursor, self._sent = _read_cursor(directory, self._sizes)
        for number in [n for n in self._sizes if n < self.cursor.segment]:
            self._delete(number)  # acknowledged before a crash, not yet deleted
        if not self._sizes:
            self._sizes[self.cursor.segment] = 0
            self._path(self.cursor.segment).touch(mode=0o640)
        self._head = max(self._sizes)
        self._repair_tail()
        self._out = open(self._path(self._head), "ab")  # noqa: SIM115  (held open for appends)

    # -- paths and state --------------------------------------------------------------------------

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:020d}{SUFFIX}"

    def _repair_tail(self) -> None:
        """Cut a torn last line (a crash in the middle of a write) off the head segment."""
        path = self._path(self._head)
        size = self._sizes[self._head]
        if size == 0:
            return
        with open(path, "rb+") as fh:
            keep = size
            while keep > 0:
                step = min(65536, keep)
                fh.seek(keep - step)
                chunk = fh.read(step)
                cut = chunk.rfind(b"\n")
                if cut >= 0:
                    keep = keep - step + cut + 1
                    break
                keep -= step
            if keep != size:
                fh.truncate(keep)
                os.fsync(fh.fileno())
                self._sizes[self._head] = keep

    def _delete(self, number: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(number).unlink()
        self._sizes.pop(number, None)

    @property
    def pending_bytes(self) -> int:
        """Bytes not yet acknowledged (the spool's depth)."""
        with self._cond:
            return self._pending_bytes()

    def _pending_bytes(self) -> int:
        return _unacked(self._sizes, self.cursor)

    # -- writing ------------------------------------------------------------------------------------

    def append(self, lines: Sequence[bytes], on_wait: Callable[[], None] | None = None) -> Dropped | None:
        """Append documents (each one line, without its newline) and fsync.

        Under ``block`` waits while the spool is full (``on_wait`` is called about once a
        second meanwhile); under ``drop_oldest`` makes room and returns what was dropped.
        """
        if not lines:
            return None
        data = b"\n".join(lines) + b"\n"
        dropped: Dropped | None = None
        with self._cond:
            while self._pending_bytes() + len(data) > self.max_bytes and self._pending_bytes() > 0:
                if self._closed:
                    raise SpoolClosed
                if self.overflow == "drop_oldest":
                    gone = self._drop_oldest()
                    if gone is None:
                        break  # only the head segment is left: let it grow past the bound once
                    dropped = (
                        gone
                        if dropped is None
                        else Dropped(dropped.documents + gone.documents, dropped.bytes + gone.bytes)
                    )
                    continue
                if self.blocked_since is None:
                    self.blocked_since = time.monotonic()
                self._cond.wait(1.0)
                if on_wait is not None:
                    on_wait()
            self.blocked_since = None
            if self._closed:
                raise SpoolClosed
            if self._sizes[self._head] >= self.segment_bytes:
                self._roll()
            self._out.write(data)
            self._out.flush()
            os.fsync(self._out.fileno())
            self._sizes[self._head] += len(data)
            self._cond.notify_all()
        return dropped

    def _roll(self) -> None:
        self._out.close()
        self._head += 1
        self._sizes[self._head] = 0
        self._out = open(self._path(self._head), "ab")  # noqa: SIM115
        os.fchmod(self._out.fileno(), 0o640)
        _fsync_dir(self.directory)

    def _drop_oldest(self) -> Dropped | None:
        """Delete the oldest segment (not the one being written); move the cursor past it."""
        oldest = min(self._sizes)
        if oldest == self._head:
            return None
        start = self.cursor.offset if self.cursor.segment == oldest else 0
        with open(self._path(oldest), "rb") as fh:
            fh.seek(start)
            rest = fh.read()
        self._delete(oldest)
        self.cursor = Position(min(self._sizes), 0)
        self._save_cursor()
        return Dropped(rest.count(b"\n"), len(rest))

    # -- reading --------------------------------------------------------------------------------------

    def read(self, max_docs: int, max_bytes: int, timeout: float) -> tuple[list[bytes], Position]:
        """Up to ``max_docs`` complete lines from the cursor (waiting up to ``timeout`` for one).

        Returns the lines and the position just after them, to :meth:`ack` once delivered.
        """
        with self._cond:
            if self._pending_bytes() == 0 and not self._closed:
                self._cond.wait(timeout)
            position = self.cursor
            # A fully read segment that is not the head: continue in the next one.
            while position.segment < self._head and position.offset >= self._sizes.get(position.segment, 0):
                later = [n for n in self._sizes if n > position.segment]
                position = Position(min(later), 0)
            end = self._sizes.get(position.segment, 0)
        if position.offset >= end:
            return [], position
        with open(self._path(position.segment), "rb") as fh:
            fh.seek(position.offset)
            data = fh.read(min(max_bytes, end - position.offset))
        cut = data.rfind(b"\n")
        if cut < 0:  # one document larger than max_bytes: read it whole
            with open(self._path(position.segment), "rb") as fh:
                fh.seek(position.offset)
                data = fh.read(end - position.offset)
            cut = data.find(b"\n")
        lines = data[: cut + 1].split(b"\n")[:-1]
        if len(lines) > max_docs:
            lines = lines[:max_docs]
            used = sum(len(line) + 1 for line in lines)
        else:
            used = cut + 1
        return lines, Position(position.segment, position.offset + used)

    @property
    def resending(self) -> bool:
        """The next documents to read may have been sent already (a crash or a lost answer came
        between sending them and the acknowledgement)."""
        with self._cond:
            return self.cursor < self._sent

    def mark_sent(self, position: Position) -> None:
        """The documents before ``position`` are about to be sent: remember it (on disk) until
        they are acknowledged."""
        with self._cond:
            if position > self._sent:
                self._sent = position
                self._save_cursor()

    def ack(self, position: Position) -> None:
        """The documents before ``position`` are delivered: persist the cursor, free whole segments."""
        with self._cond:
            if position <= self.cursor:
                return  # a drop_oldest moved past it meanwhile
            self.cursor = position
            self._save_cursor()
            for number in [n for n in self._sizes if n < position.segment]:
                self._delete(number)
            self._cond.notify_all()

    def _save_cursor(self) -> None:
        tmp = self.directory / (CURSOR + ".tmp")
        with open(tmp, "wb") as fh:
            doc: dict[str, object] = {"segment": self.cursor.segment, "offset": self.cursor.offset}
            if self._sent > self.cursor:
                doc["sent"] = [self._sent.segment, self._sent.offset]
            fh.write(orjson.dumps(doc))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.directory / CURSOR)

    def oldest_unacked(self) -> bytes | None:
        """The first document not yet acknowledged (for the shipping-lag metric), or None."""
        lines, _ = self.read(1, 1 << 20, timeout=0)
        return lines[0] if lines else None

    def close(self) -> None:
        """Wake a blocked writer (it raises :class:`SpoolClosed`) and close the head segment."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self._out.close()
