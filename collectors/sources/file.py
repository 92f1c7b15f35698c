"""Log files followed like ``tail -F``, resumed exactly from a checkpoint.

Each configured path is a :class:`_Tail`: an ordered list of open files, oldest first.  The last
one is the file the path names now; the ones before it were rotated away (renamed, deleted, or
a copytruncate copy) and are still read until they stop growing for ``rotate_wait`` seconds,
because a writer that has not reopened its log yet keeps appending to the old file.  An older
file's lines are always handed on before a newer file's.

Rotation is recognised by identity, never by name:

* rename + create, delete + recreate: the path names a new (dev, inode).  The old file is held
  open, so its tail is still read; the new file is read from 0.  New files are opened as soon as
  inotify reports them (on watchdog's thread, even while this source is blocked on a full
  queue), so a file deleted soon after is not lost.  A rotated file that was never seen at all
  (renamed away again before the reader looked) is found among the siblings: newer than the
  file we held, and not a copy of one we have.
* copytruncate: the same inode shrank below our offset, or its first bytes (the fingerprint)
  changed, i.e. it was truncated and regrew past our offset.  Checked before and after every
  read, so bytes read across a truncation are never taken for the old content.  The unread tail
  is then read from the sibling copy (``auth.log.1``) that starts with our fingerprint (plus any
  newer copies, if the reader was more than one rotation behind), and the file again from 0.

A checkpoint is ``{"paths": {path: [file, …]}}`` with one entry per open file, oldest first:
``{dev, ino, offset, fp, fp_len, skip}``.  ``offset`` is where the first unread line starts,
``fp`` a hash of the file's first ``fp_len`` (≤ 256) bytes.  On restart a file is found again by
(dev, inode) *and* fingerprint (an inode number may have been reused), else by fingerprint
alone among its siblings (rotated or copied while Sentinel was down); its unread tail is read,
then rotations newer than it, then whatever the path names now from 0.  ``start_at`` applies
only to a path that has no checkpoint.  Compressed rotations (``.gz`` …) are never read.

Only complete lines are parsed (by :func:`~sentinel.collectors.parsers.lines.parse_buffer`): a
partial last line waits for its newline; a line longer than ``max_line_bytes`` is cut, parsed,
counted (``stats.truncated``) and the rest of it skipped up to the next newline.

Limits (inherent, as in every follower): lines written to a file that is deleted before the
reader opened it, or written between logrotate's copy and truncate, cannot be read; neither can
a rotated file's growth while Sentinel is down if it was deleted or compressed meanwhile.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import select
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from sentinel.collectors.parsers import LineParser, get_parser
from sentinel.collectors.parsers.lines import parse_buffer
from sentinel.collectors.sources.base import Batch, Checkpoint, Source
from sentinel.config import FileSourceSettings
from sentinel.event import Event

log = logging.getLogger(__name__)

#: Bytes hashed to recognise a file whatever its name (fewer while the file is shorter).
FINGERPRINT_BYTES: Final = 256
#: One read; a batch holds the complete lines of one chunk.
CHUNK_SIZE: Final = 256 * 1024
#: Chunks read from one file in one pass before the other files get their turn.
CHUNKS_PER_PASS: Final = 16
#: Rotated files are not read (nor matched on restart) in these forms.
COMPRESSED_SUFFIXES: Final = (".gz", ".xz", ".bz2", ".zst", ".lz4", ".zip", ".Z", ".lzma")
#: Longest wait for the stop flag, so that shutdown is prompt whatever the poll interval.
_STOP_CHECK: Final = 0.2


def fingerprint(fd: int) -> tuple[str, int]:
    """Hash and length of the first :data:`FINGERPRINT_BYTES` of an open file."""
    head = os.pread(fd, FINGERPRINT_BYTES, 0)
    return hashlib.blake2b(head, digest_size=16).hexdigest(), len(head)


def has_fingerprint(fd: int, fp: str, fp_len: int) -> bool:
    """True if the open file starts with the ``fp_len`` bytes that hash to ``fp``."""
    head = os.pread(fd, fp_len, 0)
    return len(head) == fp_len and hashlib.blake2b(head, digest_size=16).hexdigest() == fp


@dataclass(slots=True, eq=False)
class _File:
    """One open file and how far it has been read."""

    fd: int
    dev: int
    ino: int
    offset: int = 0  # start of the first line not yet handed on
    fp: str = ""
    fp_len: int = 0
    skip: bool = False  # inside an over-long line: drop bytes up to the next newline
    buf: bytes = b""  # bytes after ``offset`` read so far: a partial line
    at_eof: bool = False
    last_data: float = field(default_factory=time.monotonic)
    rotated_at: float | None = None

    @property
    def identity(self) -> tuple[int, int]:
        return self.dev, self.ino

    def state(self) -> dict[str, Any]:
        """This file's checkpoint entry."""
        return {
            "dev": self.dev,
            "ino": self.ino,
            "offset": self.offset,
            "fp": self.fp,
            "fp_len": self.fp_len,
            "skip": self.skip,
        }

    def refresh_fingerprint(self) -> None:
        if self.fp_len < FINGERPRINT_BYTES:
            self.fp, self.fp_len = fingerprint(self.fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _open(path: Path | str) -> tuple[int, os.stat_result]:
    """Open a regular file for reading; its fd and its fstat (the identity we really got)."""
    # O_NONBLOCK: opening a FIFO put in a log's place must not hang the source.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _siblings(path: Path) -> list[tuple[Path, os.stat_result]]:
    """Regular files beside ``path`` whose names extend it (``auth.log.1``, ``auth.log-2024…``),
    newest first, compressed ones left out."""
    base = path.name
    out: list[tuple[Path, os.stat_result]] = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return out
    for entry in entries:
        name = entry.name
        if name == base or not name.startswith(base) or name[len(base)] not in ".-_":
            continue
        if name.endswith(COMPRESSED_SUFFIXES):
            continue
        try:
            st = entry.stat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            out.append((Path(entry.path), st))
    out.sort(key=lambda item: item[1].st_mtime_ns, reverse=True)
    return out


class _Tail:
    """One configured path: the files it named, oldest first (the last is current)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        self.lock = threading.Lock()
        self.files: list[_File] = []
        self.error: str | None = None
        self.retry_at = 0.0
        self.retry_delay = 0.0
        #: No checkpoint and not opened yet although it exists: ``start_at`` still applies.
        self.fresh = False

    def holds(self, identity: tuple[int, int]) -> bool:
        return any(f.identity == identity for f in self.files)

    def state(self) -> list[dict[str, Any]]:
        with self.lock:
            return [f.state() for f in self.files]

    def close(self) -> None:
        with self.lock:
            for f in self.files:
                f.close()
            self.files.clear()


class FileSource(Source):
    """Follow ``settings.paths`` across rotations; see the module docstring."""

    def __init__(
        self,
        name: str,
        settings: FileSourceSettings,
        checkpoint: Checkpoint | None,
        *,
        poll_interval: float = 1.0,
        max_line_bytes: int = 65536,
        rotate_wait: float = 5.0,
        chunk_size: int = CHUNK_SIZE,
        use_inotify: bool = True,
        parser: LineParser | None = None,
    ) -> None:
        super().__init__(name, checkpoint)
        self.settings = settings
        self.poll_interval = poll_interval
        self.max_line_bytes = max_line_bytes
        self.rotate_wait = rotate_wait
        self.chunk_size = chunk_size
        self.use_inotify = use_inotify
        self.parse = parser if parser is not None else get_parser(settings.format, settings.year)
        self._wake = _Waker(tuple(Path(p).name for p in settings.paths))
        self._tails: list[_Tail] = []
        self._last_emitted: dict[str, Any] | None = None

    # -- the thread ----------------------------------------------------------------------------

    def run(self, emit: Callable[[Batch], None], stop: threading.Event) -> None:
        """Follow the paths until ``stop`` is set; resumes from ``self.checkpoint``."""
        watcher: _Watcher | None = None
        try:
            self.open()
            if self.use_inotify:
                watcher = _Watcher(self)
                self._wake.start()
            while not stop.is_set():
                self._wake.clear()
                if watcher is not None:
                    watcher.watch_missing()
                    for directory in watcher.directories:
                        self._wake.watch(directory)
                self.poll_once(emit, stop)
                deadline = time.monotonic() + self.poll_interval
                while not stop.is_set():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._wake.wait(min(remaining, _STOP_CHECK)):
                        break
        finally:
            if watcher is not None:
                watcher.close()
            self._wake.stop()
            self.close()

    def open(self) -> None:
        """Open every path where ``self.checkpoint`` (or ``start_at``) says reading resumes."""
        self.close()
        self._tails = [_Tail(Path(p)) for p in self.settings.paths]
        self._last_emitted = dict(self.checkpoint) if self.checkpoint is not None else None
        self._restore()

    def poll_once(self, emit: Callable[[Batch], None], stop: threading.Event | None = None) -> None:
        """One pass: pick up new files, read every file to its end, retire quiet rotated ones.

        :meth:`run` calls it on every inotify wake-up and poll tick; tests and one-shot
        readers call it directly (after :meth:`open`).
        """
        self._pass(emit, stop if stop is not None else threading.Event())

    def close(self) -> None:
        """Close every file (the checkpoint stays where the last batch put it)."""
        for tail in self._tails:
            tail.close()

    def wakeup(self) -> None:
        """Make the thread look at its files now (inotify callback)."""
        self._wake.set()

    def snapshot(self) -> dict[str, Any]:
        """The checkpoint that matches everything emitted so far."""
        return {"paths": {t.name: t.state() for t in self._tails if not t.fresh}}

    def progress(self) -> tuple[tuple[tuple[int, int, int], ...], int] | None:
        """Read positions of the open files and the bytes written past them (for the self-check).

        A path that now names a file not opened yet (created or rotated in) counts whole, unless
        it cannot be opened (that is an error the source reports itself).  Only ``fstat`` and
        ``stat``: no reading, no lock held for long.
        """
        positions: list[tuple[int, int, int]] = []
        backlog = 0
        for tail in list(self._tails):
            with tail.lock:
                files = [(f.fd, f.dev, f.ino, f.offset + len(f.buf)) for f in tail.files]
            held = set()
            for fd, dev, ino, position in files:
                held.add((dev, ino))
                positions.append((dev, ino, position))
                try:
                    backlog += max(0, os.fstat(fd).st_size - position)
                except OSError:  # closed meanwhile (retired): nothing to say about it
                    continue
            try:
                st = os.stat(tail.path)
            except OSError:
                continue
            unopened = (st.st_dev, st.st_ino) not in held and not tail.fresh and tail.error is None
            if stat.S_ISREG(st.st_mode) and unopened:
                backlog += st.st_size
        return tuple(positions), backlog

    # -- start-up ------------------------------------------------------------------------------

    def _restore(self) -> None:
        """Open every path: from its checkpoint if it has one, else as ``start_at`` says."""
        saved = self.checkpoint.get("paths") if self.checkpoint is not None else None
        saved = saved if isinstance(saved, Mapping) else {}
        for tail in self._tails:
            states = saved.get(tail.name)
            if isinstance(states, list):
                self._restore_tail(tail, [s for s in states if isinstance(s, Mapping)])
            else:
                self._start_tail(tail)

    def _start_tail(self, tail: _Tail) -> None:
        """A path without checkpoint: its current file at the beginning or the end."""
        try:
            fd, st = _open(tail.path)
        except FileNotFoundError:
            log.info("%s: does not exist yet; waiting for it", tail.path, extra={"source": self.name})
            return
        except OSError as exc:
            tail.fresh = True
            self._fail(tail, exc)
            return
        f = _File(fd, st.st_dev, st.st_ino)
        f.refresh_fingerprint()
        if self.settings.start_at == "end":
            f.offset, f.skip = self._line_start_before(fd, st.st_size)
        tail.files.append(f)

    def _line_start_before(self, fd: int, size: int) -> tuple[int, bool]:
        """Where the last (possibly partial) line before ``size`` starts, and whether to skip it."""
        look = min(size, self.max_line_bytes)
        if look == 0:
            return size, False
        nl = os.pread(fd, look, size - look).rfind(b"\n")
        if nl >= 0:
            return size - look + nl + 1, False
        return (0, False) if look == size else (size, True)

    def _restore_tail(self, tail: _Tail, states: list[Mapping[str, Any]]) -> None:
        """Find each checkpointed file again, by identity + fingerprint, else by fingerprint.

        Then, if the path names another file now (rotated while Sentinel was down), rotations
        newer than the last file found are read whole, and the path's file from 0.
        """
        path_id: tuple[int, int] | None = None
        candidates: list[tuple[Path, os.stat_result]] = []
        with contextlib.suppress(OSError):
            st = os.stat(tail.path)
            if stat.S_ISREG(st.st_mode):
                candidates.append((tail.path, st))
                path_id = (st.st_dev, st.st_ino)
        siblings = _siblings(tail.path)
        candidates += siblings
        used: set[tuple[int, int]] = set()
        last: os.stat_result | None = None
        for state in states:
            try:
                dev, ino, offset = int(state["dev"]), int(state["ino"]), int(state["offset"])
                fp, fp_len = str(state.get("fp", "")), int(state.get("fp_len", 0))
            except (KeyError, TypeError, ValueError):
                log.warning("%s: ignoring a malformed checkpoint entry %r", tail.path, state)
                continue
            found = self._find(candidates, used, fp, fp_len, offset, (dev, ino))
            if found is None and fp_len > 0:
                found = self._find(candidates, used, fp, fp_len, offset, None)
            if found is None:
                if offset > 0 or fp_len > 0:
                    log.warning(
                        "%s: the file read up to byte %d before the restart is gone (rotated away and "
                        "deleted or compressed while Sentinel was down?); lines written to it after that "
                        "could not be read",
                        tail.path,
                        offset,
                        extra={"source": self.name},
                    )
                continue
            where, fd, st = found
            used.add((st.st_dev, st.st_ino))
            last = st
            f = _File(fd, st.st_dev, st.st_ino, offset=offset, fp=fp, fp_len=fp_len)
            f.skip = bool(state.get("skip", False))
            f.refresh_fingerprint()
            if where != tail.path:
                log.info(
                    "%s: resuming in %s (rotated while Sentinel was down) at byte %d",
                    tail.path,
                    where,
                    offset,
                    extra={"source": self.name},
                )
            tail.files.append(f)
        if last is not None and path_id not in used:
            for where, fd, st in self._later_rotations(siblings, last, used, tail.files):
                log.info(
                    "%s: reading %s, rotated while Sentinel was down",
                    tail.path,
                    where,
                    extra={"source": self.name},
                )
                f = _File(fd, st.st_dev, st.st_ino)
                f.refresh_fingerprint()
                tail.files.append(f)
        now = time.monotonic()
        for f in tail.files:
            f.rotated_at = now
        # Whatever the path names now, if it is not one of those, is newer: read it from 0.
        self._discover(tail)
        if tail.files:
            tail.files[-1].rotated_at = None

    def _find(
        self,
        candidates: list[tuple[Path, os.stat_result]],
        used: set[tuple[int, int]],
        fp: str,
        fp_len: int,
        offset: int,
        identity: tuple[int, int] | None,
    ) -> tuple[Path, int, os.stat_result] | None:
        """The candidate holding a checkpointed file's content (with ``identity`` if given)."""
        for where, st in candidates:
            key = (st.st_dev, st.st_ino)
            if key in used or (identity is not None and key != identity) or st.st_size < offset:
                continue
            try:
                fd, st = _open(where)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == key and st.st_size >= offset and has_fingerprint(fd, fp, fp_len):
                return where, fd, st
            os.close(fd)
        return None

    # -- discovery (source thread and watchdog thread) -----------------------------------------

    def _discover(self, tail: _Tail) -> bool:
        """Open what the path names now if it is a file we do not hold yet; True if opened."""
        with tail.lock:
            if time.monotonic() < tail.retry_at:
                return False
            try:
                st = os.stat(tail.path)
            except FileNotFoundError:
                return False
            except OSError as exc:
                self._fail(tail, exc)
                return False
            if tail.holds((st.st_dev, st.st_ino)):
                return False
            try:
                fd, st = _open(tail.path)
            except FileNotFoundError:
                return False
            except OSError as exc:
                self._fail(tail, exc)
                return False
            if tail.holds((st.st_dev, st.st_ino)):
                os.close(fd)
                return False
            if tail.error is not None:
                log.info("%s: readable again", tail.path, extra={"source": self.name})
                tail.error, tail.retry_delay, tail.retry_at = None, 0.0, 0.0
            f = _File(fd, st.st_dev, st.st_ino)
            f.refresh_fingerprint()
            if tail.fresh and self.settings.start_at == "end":
                f.offset, f.skip = self._line_start_before(fd, st.st_size)
            tail.fresh = False
            now = time.monotonic()
            log.debug(
                "%s: opened inode %d (%d bytes) on %s",
                tail.path,
                st.st_ino,
                st.st_size,
                threading.current_thread().name,
                extra={"source": self.name},
            )
            if tail.files:
                prev = tail.files[-1]
                prev.rotated_at = now
                log.info(
                    "%s: rotated; reading the new file from the start (old one until it goes quiet)",
                    tail.path,
                    extra={"source": self.name},
                )
                held = {g.identity for g in tail.files} | {f.identity}
                missed = self._later_rotations(_siblings(tail.path), os.fstat(prev.fd), held, [*tail.files, f])
                for where, mfd, mst in missed:
                    log.info(
                        "%s: %s was rotated away before it was seen; reading it whole",
                        tail.path,
                        where,
                        extra={"source": self.name},
                    )
                    g = _File(mfd, mst.st_dev, mst.st_ino, rotated_at=now)
                    g.refresh_fingerprint()
                    tail.files.append(g)
            tail.files.append(f)
            return True

    def discover_path(self, path: str) -> None:
        """inotify saw ``path`` created or moved in: open it now, whatever the reader is doing."""
        for tail in self._tails:
            if tail.name == path:
                self._discover(tail)

    def _fail(self, tail: _Tail, exc: OSError) -> None:
        """Report a path that cannot be read (once per distinct error) and back off."""
        message = f"{tail.path}: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
        if isinstance(exc, PermissionError):
            message = f"{tail.path}: permission denied (is Sentinel in the file's group, e.g. adm?)"
        tail.retry_delay = min(max(tail.retry_delay * 2, self.poll_interval), 60.0)
        tail.retry_at = time.monotonic() + tail.retry_delay
        if message != tail.error:
            log.error("%s; retrying", message, extra={"source": self.name})
            tail.error = message
        self.status.last_error = message

    # -- reading --------------------------------------------------------------------------------

    def _pass(self, emit: Callable[[Batch], None], stop: threading.Event) -> None:
        """Look for new files, read every file to its end, retire quiet rotated files."""
        for tail in self._tails:
            self._discover(tail)
            with tail.lock:
                files = list(tail.files)
            for f in files:
                if stop.is_set():
                    return
                self._read(tail, f, emit, stop)
                if not f.at_eof:
                    break  # an older file's lines go first; the rest on the next pass
            self._retire(tail, emit)
        snapshot = self.snapshot()
        if snapshot != self._last_emitted:
            self._emit(emit, [], snapshot)

    def _emit(self, emit: Callable[[Batch], None], events: list[Event], snapshot: dict[str, Any]) -> None:
        emit(Batch(self.name, events, snapshot))
        self.checkpoint = snapshot
        self._last_emitted = snapshot

    def _read(self, tail: _Tail, f: _File, emit: Callable[[Batch], None], stop: threading.Event) -> None:
        """Read ``f`` from where it stands to its end (or a fair share of it), emitting batches."""
        if self._changed(f):
            self._on_truncate(tail, f, emit, stop)
        for _ in range(CHUNKS_PER_PASS):
            if stop.is_set():
                return
            data = os.pread(f.fd, self.chunk_size, f.offset + len(f.buf))
            if not data:
                f.at_eof = True
                return
            if self._changed(f):
                # Truncated while we read: ``data`` may be the new content at our old offset.
                # Drop it; the copy (if any) holds the old content, ``f`` is read again from 0.
                self._on_truncate(tail, f, emit, stop)
                continue
            f.at_eof = False
            f.last_data = time.monotonic()
            self.status.last_read = time.time()
            before = f.offset
            events = self._consume(tail, f, data)
            if f.offset != before:
                self._emit(emit, events, self.snapshot())
        self._wake.set()  # more to read: come back after the other files had their turn

    def _consume(self, tail: _Tail, f: _File, data: bytes) -> list[Event]:
        """Add ``data`` to ``f``'s partial line; parse the complete lines; cut an over-long one."""
        if f.skip:
            nl = data.find(b"\n")
            if nl < 0:
                f.offset += len(data)
                return []
            f.offset += nl + 1
            data = data[nl + 1 :]
            f.skip = False
        buf = f.buf + data if f.buf else data
        events: list[Event] = []
        end = buf.rfind(b"\n") + 1
        if end:
            events = parse_buffer(
                buf[:end] if end < len(buf) else buf,
                f.offset,
                self.parse,
                tail.name,
                self.status.stats,
                self.max_line_bytes,
            )
            f.offset += end
            buf = buf[end:]
        if len(buf) >= self.max_line_bytes:
            # No newline within max_line_bytes: hand on the cut line now, skip the rest of it.
            events += parse_buffer(
                buf[: self.max_line_bytes] + b"\n",
                f.offset,
                self.parse,
                tail.name,
                self.status.stats,
                self.max_line_bytes,
            )
            f.offset += len(buf)
            buf = b""
            f.skip = True
        f.buf = buf
        return events

    def _changed(self, f: _File) -> bool:
        """True if ``f`` shrank below what we read or its first bytes changed (copytruncate).

        Checked before *and after* each read, so data read across a truncation is never taken
        for the old content.  Extends the fingerprint while the file is shorter than it.
        """
        if os.fstat(f.fd).st_size < f.offset + len(f.buf):
            return True
        head = os.pread(f.fd, FINGERPRINT_BYTES, 0)
        if len(head) < f.fp_len:
            return True
        if f.fp_len and hashlib.blake2b(head[: f.fp_len], digest_size=16).hexdigest() != f.fp:
            return True
        if len(head) > f.fp_len:
            f.fp, f.fp_len = hashlib.blake2b(head, digest_size=16).hexdigest(), len(head)
        return False

    def _on_truncate(self, tail: _Tail, f: _File, emit: Callable[[Batch], None], stop: threading.Event) -> None:
        """Copytruncate: read the unread tail from the copy if there is one, then ``f`` from 0.

        If the reader fell behind by more than one rotation, the copies made after that one
        (newer, never seen) are read whole, oldest first, before ``f``.
        """
        with tail.lock:
            held = {g.identity for g in tail.files}
        siblings = _siblings(tail.path)
        copy = self._find(siblings, held, f.fp, f.fp_len, f.offset, None) if f.fp_len else None
        log.debug(
            "%s: truncated at offset %d (+%d buffered, fingerprint of %d bytes); copy: %s",
            tail.path,
            f.offset,
            len(f.buf),
            f.fp_len,
            copy[0] if copy else None,
            extra={"source": self.name},
        )
        offset, fp, fp_len, skip = f.offset, f.fp, f.fp_len, f.skip
        # From here both the copies (at their offsets) and ``f`` (at 0) are in the checkpoint.
        f.offset, f.buf, f.skip, f.fp, f.fp_len = 0, b"", False, "", 0
        f.refresh_fingerprint()
        if copy is None:
            log.info("%s: truncated; reading it again from the start", tail.path, extra={"source": self.name})
            return
        where, fd, st = copy
        recovered = [_File(fd, st.st_dev, st.st_ino, offset, fp, fp_len, skip)]
        names = [str(where)]
        held.add((st.st_dev, st.st_ino))
        with tail.lock:
            known = [*tail.files, recovered[0]]
        for later, lfd, lst in self._later_rotations(siblings, st, held, known):
            recovered.append(_File(lfd, lst.st_dev, lst.st_ino))
            names.append(f"{later} (whole)")
        log.info(
            "%s: truncated (copytruncate); reading the unread part from %s, then the file from 0",
            tail.path,
            ", ".join(names),
            extra={"source": self.name},
        )
        now = time.monotonic()
        for old in recovered:
            old.rotated_at = now
            old.refresh_fingerprint()
        with tail.lock:
            at = tail.files.index(f)
            tail.files[at:at] = recovered
        for old in recovered:  # the older lines first
            while not old.at_eof and not stop.is_set():
                self._read(tail, old, emit, stop)

    def _later_rotations(
        self,
        siblings: list[tuple[Path, os.stat_result]],
        after: os.stat_result,
        exclude: set[tuple[int, int]],
        known: list[_File],
    ) -> list[tuple[Path, int, os.stat_result]]:
        """Rotated files written after ``after`` that we never saw (oldest first).

        They are the rotations that happened between the file we were reading and the current
        one when several happened before the reader looked (downtime, a reader far behind, a
        file that lived for milliseconds).  A file that starts like one of ``known`` is a copy
        of content we have (``cp auth.log auth.log.bak``, logrotate between copy and truncate)
        and is skipped.
        """
        heads = [h for g in known if g.fd >= 0 and (h := os.pread(g.fd, FINGERPRINT_BYTES, 0))]
        out: list[tuple[Path, int, os.stat_result]] = []
        for where, st in sorted(siblings, key=lambda item: item[1].st_mtime_ns):
            if (st.st_dev, st.st_ino) in exclude or st.st_mtime_ns <= after.st_mtime_ns:
                continue
            try:
                fd, st2 = _open(where)
            except OSError:
                continue
            head = os.pread(fd, FINGERPRINT_BYTES, 0)
            if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino) or head in heads:
                os.close(fd)
                continue
            out.append((where, fd, st2))
        return out

    def _retire(self, tail: _Tail, emit: Callable[[Batch], None]) -> None:
        """Close rotated files that are read to the end and have been quiet for ``rotate_wait``."""
        now = time.monotonic()
        with tail.lock:
            done = [
                f
                for f in tail.files[:-1]
                if f.at_eof and f.rotated_at is not None and now - max(f.last_data, f.rotated_at) >= self.rotate_wait
            ]
        for f in done:
            if f.buf and not f.skip:
                # The writer left a last line without newline and moved on: it is complete.
                events = parse_buffer(
                    f.buf + b"\n", f.offset, self.parse, tail.name, self.status.stats, self.max_line_bytes
                )
                f.offset += len(f.buf)
                f.buf = b""
                with tail.lock:
                    tail.files.remove(f)
                self._emit(emit, events, self.snapshot())
            else:
                with tail.lock:
                    tail.files.remove(f)
            f.close()


class _Watcher:
    """inotify via watchdog on the paths' directories, for creations, renames and deletions.

    A new file is opened on watchdog's thread within milliseconds, even while the source
    thread is blocked on a full queue, so a file that is created and soon deleted or renamed
    again is not missed.  Only these (rare) events go through watchdog: its cost per event is
    high (~0.1 ms of CPU), so data written to the logs wakes the reader through the bare
    inotify descriptor of :class:`_Waker` instead, where the kernel merges a burst of writes.
    A directory that does not exist yet is waited for by watching its nearest existing
    ancestor.  Polling every ``poll_interval`` remains the safety net: if inotify is unavailable
    (no watches left, a filesystem without it) or misses something, nothing is lost, only latency.
    """

    _EVENTS: Final = [FileCreatedEvent, FileMovedEvent, FileDeletedEvent, DirCreatedEvent, DirMovedEvent]

    def __init__(self, source: FileSource) -> None:
        self.source = source
        self.watched: set[str] = set()
        self.prefixes = tuple(str(p) for p in source.settings.paths)
        self.directories = _unique(str(Path(p).parent) for p in source.settings.paths)
        self.observer: Any = None
        try:
            from watchdog.observers import Observer

            self.observer = Observer()
            self.observer.daemon = True
            self.observer.start()
        except Exception as exc:
            log.warning(
                "inotify unavailable (%s); polling every %ss",
                exc,
                source.poll_interval,
                extra={"source": source.name},
            )
            self.observer = None

    def watch_missing(self) -> None:
        """Watch each path's directory (or, while it is missing, its nearest existing ancestor)."""
        if self.observer is None:
            return
        for directory in self.directories:
            if directory in self.watched:
                continue
            target = Path(directory)
            while not target.is_dir() and target != target.parent:
                target = target.parent
            if str(target) in self.watched:
                continue
            try:
                self.observer.schedule(_Handler(self), str(target), recursive=False, event_filter=self._EVENTS)
                log.debug("watching %s with inotify", target, extra={"source": self.source.name})
            except Exception as exc:
                log.warning(
                    "cannot watch %s with inotify (%s); polling it every %ss",
                    target,
                    exc,
                    self.source.poll_interval,
                    extra={"source": self.source.name},
                )
            self.watched.add(str(target))

    def on_event(self, src: str, dest: str, created: bool) -> None:
        """An inotify event in a watched directory: ours if it names a path or a missing parent."""
        if src.startswith(self.prefixes) or dest.startswith(self.prefixes):
            if created:
                self.source.discover_path(dest or src)
            self.source.wakeup()
        elif any(d == p or d.startswith(p + os.sep) for d in self.directories for p in (src, dest) if p):
            self.source.wakeup()  # a directory on the way to a path appeared

    def close(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=2.0)
            self.observer = None


_IN_MODIFY: Final = 0x00000002
_IN_Q_OVERFLOW: Final = 0x00004000
_EVENT_HEADER: Final = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)


class _Waker:
    """What the source thread sleeps on: a flag other threads set, and inotify on data.

    While :meth:`start` is in effect the flag is backed by a self-pipe and the thread sleeps in
    ``select`` on it and on a bare inotify descriptor watching IN_MODIFY in the paths'
    directories.  That descriptor is read only when the source thread sleeps, so while it is
    busy reading, the kernel merges consecutive writes to a file into one event: a burst of
    100,000 lines costs a handful of wake-ups, not 100,000 (as it would through watchdog).
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = tuple(n.encode() for n in names)
        self._flag = threading.Event()
        self._lock = threading.Lock()
        self._pipe: tuple[int, int] | None = None
        self._inotify = -1
        self._watched: set[str] = set()
        self._add_watch: Any = None

    def start(self) -> None:
        """Open the self-pipe and the inotify descriptor (libc's inotify_init1) if possible."""
        with self._lock:
            self._pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = int(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
            if fd < 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        except (OSError, AttributeError) as exc:
            log.warning("inotify unavailable for data wake-ups (%s); polling", exc)
            return
        self._inotify, self._add_watch = fd, libc.inotify_add_watch

    def watch(self, directory: str) -> None:
        """Wake on writes to our files in ``directory`` (once it exists)."""
        if self._inotify < 0 or directory in self._watched:
            return
        if int(self._add_watch(self._inotify, os.fsencode(directory), _IN_MODIFY)) >= 0:
            self._watched.add(directory)

    def stop(self) -> None:
        """Close the descriptors; the flag keeps working (for :meth:`FileSource.poll_once`)."""
        with self._lock:
            fds = [*self._pipe] if self._pipe is not None else []
            self._pipe = None
        if self._inotify >= 0:
            fds.append(self._inotify)
            self._inotify = -1
            self._watched.clear()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def set(self) -> None:
        self._flag.set()
        with self._lock:
            if self._pipe is not None:
                with contextlib.suppress(BlockingIOError):
                    os.write(self._pipe[1], b"\0")

    def clear(self) -> None:
        self._flag.clear()
        with self._lock:
            if self._pipe is not None:
                _drain(self._pipe[0])

    def wait(self, timeout: float) -> bool:
        """Sleep until woken or ``timeout``; True if woken (by a thread or a write to our files)."""
        if self._flag.is_set():
            return True
        pipe = self._pipe
        if pipe is None:
            return self._flag.wait(timeout)
        fds = [pipe[0]] if self._inotify < 0 else [pipe[0], self._inotify]
        ready, _, _ = select.select(fds, [], [], timeout)
        woke = self._flag.is_set() or pipe[0] in ready  # (the byte is drained by clear())
        if self._inotify >= 0 and self._inotify in ready:
            with contextlib.suppress(BlockingIOError):
                while data := os.read(self._inotify, 65536):
                    woke = self._ours(data) or woke
        return woke

    def _ours(self, data: bytes) -> bool:
        """True if the inotify events in ``data`` name one of our files (or overflowed)."""
        pos = 0
        while pos + _EVENT_HEADER.size <= len(data):
            _wd, mask, _cookie, size = _EVENT_HEADER.unpack_from(data, pos)
            name = data[pos + _EVENT_HEADER.size : pos + _EVENT_HEADER.size + size].rstrip(b"\0")
            pos += _EVENT_HEADER.size + size
            if mask & _IN_Q_OVERFLOW or name.startswith(self.names):
                return True
        return False


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


class _Handler(FileSystemEventHandler):
    """watchdog callback (its thread): never raises, never blocks for long."""

    def __init__(self, watcher: _Watcher) -> None:
        super().__init__()
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            src = os.fsdecode(event.src_path)
            dest = os.fsdecode(event.dest_path or "")
            created = event.event_type in ("created", "moved")
            self.watcher.on_event(src, dest, created)
        except Exception:  # a bug here must not stop inotify delivery
            log.exception("inotify event handling failed")
