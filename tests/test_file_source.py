"""The file source on real files: rotations, partial and long lines, checkpoints, restarts.

Most tests drive the source one pass at a time (``open`` / ``poll_once``) so that the order of
writes and reads is exact; a few run it on its thread to check inotify and polling.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sentinel.collectors.sources.base import Batch, Checkpoint
from sentinel.collectors.sources.file import FINGERPRINT_BYTES, FileSource
from sentinel.config import FileSourceSettings
from sentinel.event import Event
from tests.conftest import wait_until


def as_message(line: str) -> Event:
    """A parser that makes every line an event, so tests see exactly what was read."""
    return {"message": line}


class Sink:
    """Collects emitted batches (thread-safe), like the daemon's queue."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.lock = threading.Lock()

    def __call__(self, batch: Batch) -> None:
        with self.lock:
            self.batches.append(batch)

    @property
    def lines(self) -> list[str]:
        with self.lock:
            return [e["message"] for b in self.batches for e in b.events]

    @property
    def events(self) -> list[Event]:
        with self.lock:
            return [e for b in self.batches for e in b.events]

    @property
    def checkpoint(self) -> Checkpoint | None:
        with self.lock:
            return self.batches[-1].checkpoint if self.batches else None


def make_source(
    paths: list[Path], checkpoint: Checkpoint | None = None, start_at: str = "beginning", **kw: Any
) -> FileSource:
    settings = FileSourceSettings(paths=paths, start_at=start_at)  # type: ignore[arg-type]
    kw.setdefault("poll_interval", 0.05)
    kw.setdefault("rotate_wait", 0.2)
    return FileSource("test", settings, checkpoint, parser=as_message, **kw)


def append(path: Path, *lines: str, newline: bool = True) -> None:
    with path.open("a") as fh:
        for line in lines:
            fh.write(line + ("\n" if newline else ""))


def drain(source: FileSource, sink: Sink) -> None:
    """Poll until a pass reads nothing more (one pass reads a bounded share of each file)."""
    while True:
        before = len(sink.batches)
        source.poll_once(sink)
        if len(sink.batches) == before:
            return


def poll_until(source: FileSource, sink: Sink, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll (as the thread would) until ``predicate`` holds, e.g. a rotated file is retired."""

    def polled() -> bool:
        source.poll_once(sink)
        return predicate()

    wait_until(polled, timeout)


def reopen(source: FileSource, sink: Sink) -> FileSource:
    """A new source resuming from the old one's last emitted checkpoint (a daemon restart)."""
    source.close()
    new = make_source(list(source.settings.paths), sink.checkpoint, source.settings.start_at)
    new.open()
    return new


@contextlib.contextmanager
def running(source: FileSource, sink: Sink) -> Iterator[threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(sink, stop), daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(5)
        assert not thread.is_alive()


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "auth.log"


# -- reading -----------------------------------------------------------------------------------


def test_reads_from_beginning_with_offsets_and_matching_checkpoint(log_path: Path) -> None:
    append(log_path, "one", "two", "three")
    source, sink = make_source([log_path]), Sink()
    source.open()
    source.poll_once(sink)
    assert sink.lines == ["one", "two", "three"]
    assert [e["log.offset"] for e in sink.events] == [0, 4, 8]
    assert {e["log.file.path"] for e in sink.events} == {str(log_path)}
    (state,) = sink.checkpoint["paths"][str(log_path)]  # type: ignore[index]
    st = log_path.stat()
    assert (state["dev"], state["ino"], state["offset"]) == (st.st_dev, st.st_ino, 14)
    assert state["fp_len"] == 14  # shorter than FINGERPRINT_BYTES: the whole file
    append(log_path, "x" * FINGERPRINT_BYTES)
    source.poll_once(sink)
    assert sink.checkpoint["paths"][str(log_path)][0]["fp_len"] == FINGERPRINT_BYTES  # type: ignore[index]


def test_every_batch_checkpoint_ends_after_its_last_line(log_path: Path) -> None:
    append(log_path, *(f"line {i}" for i in range(20000)))
    source, sink = make_source([log_path], chunk_size=4096), Sink()
    source.open()
    drain(source, sink)
    assert len(sink.lines) == 20000
    for batch in sink.batches:
        if batch.events:
            last = batch.events[-1]
            end = last["log.offset"] + len(last["message"]) + 1
            assert batch.checkpoint["paths"][str(log_path)][0]["offset"] == end


def test_start_at_end_skips_history_but_waits_for_a_partial_last_line(log_path: Path) -> None:
    log_path.write_text("old 1\nold 2\npar")
    source, sink = make_source([log_path], start_at="end"), Sink()
    source.open()
    source.poll_once(sink)
    assert sink.lines == []
    assert sink.checkpoint is not None  # where it started is saved at once
    append(log_path, "tial", "new")
    source.poll_once(sink)
    assert sink.lines == ["partial", "new"]


def test_partial_line_waits_for_its_newline(log_path: Path) -> None:
    source, sink = make_source([log_path]), Sink()
    log_path.write_text("first\nsec")
    source.open()
    source.poll_once(sink)
    assert sink.lines == ["first"]
    append(log_path, "ond", newline=False)
    source.poll_once(sink)
    assert sink.lines == ["first"]
    append(log_path, "", "third")
    source.poll_once(sink)
    assert sink.lines == ["first", "second", "third"]


def test_long_line_is_cut_counted_and_its_rest_skipped(log_path: Path) -> None:
    source, sink = make_source([log_path], max_line_bytes=256, chunk_size=100), Sink()
    log_path.write_text("before\n" + "x" * 1000)  # no newline yet: must not block
    source.open()
    source.poll_once(sink)
    assert sink.lines[0] == "before"
    assert sink.lines[1] == "x" * 255
    assert sink.events[1]["sentinel.parse_error"].startswith("line longer than 256 bytes")
    assert source.status.stats.truncated == 1
    assert sink.checkpoint["paths"][str(log_path)][0]["skip"] is True  # type: ignore[index]
    # A restart in the middle of the long line still skips its rest.
    source = reopen(source, sink)
    append(log_path, "y" * 500, "after")
    source.poll_once(sink)
    assert sink.lines[2:] == ["after"]
    assert sink.events[2]["log.offset"] == 7 + 1000 + 501


def test_multiple_paths_in_one_source(tmp_path: Path) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    append(a, "a1")
    append(b, "b1")
    source, sink = make_source([a, b]), Sink()
    source.open()
    source.poll_once(sink)
    assert sorted(sink.lines) == ["a1", "b1"]
    assert set(sink.checkpoint["paths"]) == {str(a), str(b)}  # type: ignore[index]


# -- rotation while running ----------------------------------------------------------------------


def test_rename_and_create_reads_old_tail_then_new_file(log_path: Path) -> None:
    append(log_path, "old 0")
    source, sink = make_source([log_path]), Sink()
    source.open()
    source.poll_once(sink)
    with log_path.open("a") as old:
        old.write("old 1\n")
        old.flush()
        log_path.rename(log_path.with_name("auth.log.1"))
        append(log_path, "new 0")
        old.write("old 2\n")  # the writer has not reopened its log yet
    source.poll_once(sink)
    assert sink.lines == ["old 0", "old 1", "old 2", "new 0"]
    assert len(sink.checkpoint["paths"][str(log_path)]) == 2  # type: ignore[index]
    poll_until(source, sink, lambda: len(sink.checkpoint["paths"][str(log_path)]) == 1)  # type: ignore[index]
    append(log_path, "new 1")
    source.poll_once(sink)
    assert sink.lines == ["old 0", "old 1", "old 2", "new 0", "new 1"]


def test_rotations_never_seen_are_read_whole_but_copies_are_not(log_path: Path) -> None:
    append(log_path, "a0")
    source, sink = make_source([log_path]), Sink()
    source.open()
    source.poll_once(sink)
    one, two = log_path.with_name("auth.log.1"), log_path.with_name("auth.log.2")
    append(log_path, "a1" * 200)
    shutil.copyfile(log_path, log_path.with_name("auth.log.bak"))  # a copy: must not be read
    log_path.rename(one)
    append(log_path, "b0" * 200)  # rotated away again before the reader looked
    one.rename(two)
    log_path.rename(one)
    append(log_path, "c0")
    source.poll_once(sink)
    assert sink.lines == ["a0", "a1" * 200, "b0" * 200, "c0"]


def test_rotated_file_last_line_without_newline_is_kept(log_path: Path) -> None:
    log_path.write_text("a\nlast words")
    source, sink = make_source([log_path]), Sink()
    source.open()
    source.poll_once(sink)
    log_path.rename(log_path.with_name("auth.log.1"))
    append(log_path, "b")
    poll_until(source, sink, lambda: "last words" in sink.lines)
    assert sink.lines == ["a", "b", "last words"]


def test_delete_and_recreate(log_path: Path) -> None:
    append(log_path, "old 0")
    source, sink = make_source([log_path]), Sink()
    source.open()
    source.poll_once(sink)
    with log_path.open("a") as old:
        old.write("old 1\n")
        old.flush()
        log_path.unlink()
        append(log_path, "new 0", "new 1")
    source.poll_once(sink)
    assert sink.lines == ["old 0", "old 1", "new 0", "new 1"]


def test_copytruncate_recovers_unread_tail_from_the_copy(log_path: Path) -> None:
    append(log_path, "l0", "l1")
    source, sink = make_source([log_path]), Sink()
    source.open()
    source.poll_once(sink)
    append(log_path, "l2", "l3")  # not read yet when logrotate copies and truncates
    shutil.copyfile(log_path, log_path.with_name("auth.log.1"))
    os.truncate(log_path, 0)
    append(log_path, "n0")
    source.poll_once(sink)
    assert sink.lines == ["l0", "l1", "l2", "l3", "n0"]


def test_copytruncate_without_copy_restarts_at_zero(log_path: Path) -> None:
    append(log_path, "l0", "l1")
    source, sink = make_source([log_path]), Sink()
    source.open()
    source.poll_once(sink)
    os.truncate(log_path, 0)
    append(log_path, "n0")
    source.poll_once(sink)
    assert sink.lines == ["l0", "l1", "n0"]


def test_truncated_and_regrown_past_offset_is_caught_by_fingerprint(log_path: Path) -> None:
    append(log_path, "a0", "a1")
    source, sink = make_source([log_path]), Sink()
    source.open()
    source.poll_once(sink)
    ino = log_path.stat().st_ino
    with log_path.open("r+") as fh:  # truncate and regrow before the reader looks again
        fh.truncate(0)
        fh.write("".join(f"regrown {i}\n" for i in range(10)))
    assert log_path.stat().st_ino == ino and log_path.stat().st_size > 6
    source.poll_once(sink)
    assert sink.lines == ["a0", "a1", *(f"regrown {i}" for i in range(10))]


# -- files that do not exist, cannot be read -----------------------------------------------------


def test_missing_file_and_directory_appear_later(tmp_path: Path) -> None:
    path = tmp_path / "later" / "auth.log"
    source, sink = make_source([path], start_at="end", poll_interval=30.0), Sink()
    with running(source, sink):
        wait_until(lambda: sink.checkpoint is not None)
        path.parent.mkdir()
        append(path, "first")  # a file that appears is read from its start, even with start_at end
        wait_until(lambda: sink.lines == ["first"], timeout=45)


def test_inotify_wakes_the_reader_long_before_the_poll_interval(log_path: Path) -> None:
    append(log_path, "a")
    source, sink = make_source([log_path], poll_interval=30.0), Sink()
    with running(source, sink):
        wait_until(lambda: sink.lines == ["a"], timeout=5)
        append(log_path, "b")
        wait_until(lambda: sink.lines == ["a", "b"], timeout=5)
        log_path.rename(log_path.with_name("auth.log.1"))
        append(log_path, "c")
        wait_until(lambda: sink.lines == ["a", "b", "c"], timeout=5)


def test_polling_fallback_without_inotify(log_path: Path) -> None:
    append(log_path, "a")
    source, sink = make_source([log_path], use_inotify=False), Sink()
    with running(source, sink):
        wait_until(lambda: sink.lines == ["a"], timeout=5)
        log_path.unlink()
        append(log_path, "b")
        wait_until(lambda: sink.lines == ["a", "b"], timeout=5)


def test_unreadable_path_is_reported_once_and_retried(log_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log_path.mkdir()  # not a regular file (as root, a chmod 000 file would still be readable)
    source, sink = make_source([log_path]), Sink()
    with caplog.at_level(logging.INFO):
        source.open()
        for _ in range(3):
            source.poll_once(sink)
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and str(log_path) in errors[0].getMessage()
        assert source.status.last_error is not None
        log_path.rmdir()
        append(log_path, "readable")
        poll_until(source, sink, lambda: sink.lines == ["readable"])
        assert any("readable again" in r.getMessage() for r in caplog.records)


# -- restarts ------------------------------------------------------------------------------------


def test_checkpoint_resume_reads_each_line_once(log_path: Path) -> None:
    append(log_path, "l0", "l1")
    log_path.write_text(log_path.read_text() + "part")
    source, sink = make_source([log_path]), Sink()
    source.open()
    source.poll_once(sink)
    source = reopen(source, sink)
    append(log_path, "ial", "l3")
    source.poll_once(sink)
    assert sink.lines == ["l0", "l1", "partial", "l3"]


def test_start_at_end_only_without_checkpoint(log_path: Path) -> None:
    append(log_path, "history")
    source, sink = make_source([log_path], start_at="end"), Sink()
    source.open()
    source.poll_once(sink)
    source.close()
    append(log_path, "written while down")
    source = reopen(source, sink)
    source.poll_once(sink)
    assert sink.lines == ["written while down"]


def test_renamed_while_down_tail_then_new_file(log_path: Path) -> None:
    append(log_path, "l0")
    source, sink = make_source([log_path]), Sink()
    source.open()
    source.poll_once(sink)
    source.close()
    append(log_path, "l1", "l2")
    log_path.rename(log_path.with_name("auth.log.1"))
    log_path.with_name("auth.log.1").rename(log_path.with_name("auth.log.2"))  # shifted again
    append(log_path, "n0")
    source = reopen(source, sink)
    source.poll_once(sink)
    assert sink.lines == ["l0", "l1", "l2", "n0"]


def test_copytruncated_while_down_tail_from_copy_then_file(log_path: Path) -> None:
    append(log_path, "l0")
    source, sink = make_source([log_path]), Sink()
    source.open()
    source.poll_once(sink)
    source.close()
    append(log_path, "l1")
    shutil.copyfile(log_path, log_path.with_name("auth.log.1"))
    os.truncate(log_path, 0)
    append(log_path, "n0", "n1 is long enough to regrow past the old offset")
    source = reopen(source, sink)
    source.poll_once(sink)
    assert sink.lines == ["l0", "l1", "n0", "n1 is long enough to regrow past the old offset"]


def test_deleted_and_recreated_while_down_reads_new_file_from_start(
    log_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    append(log_path, "l0")
    source, sink = make_source([log_path]), Sink()
    source.open()
    source.poll_once(sink)
    source.close()
    log_path.unlink()
    append(log_path, "new file, longer than the old offset")  # the inode number may be reused
    with caplog.at_level(logging.WARNING):
        source = reopen(source, sink)
    source.poll_once(sink)
    assert sink.lines == ["l0", "new file, longer than the old offset"]
    assert any("is gone" in r.getMessage() for r in caplog.records)


def test_compressed_rotation_is_not_mistaken_for_the_file(log_path: Path) -> None:
    append(log_path, "l0")
    source, sink = make_source([log_path]), Sink()
    source.open()
    source.poll_once(sink)
    source.close()
    append(log_path, "l1")
    log_path.rename(log_path.with_name("auth.log.1.gz"))  # as if compressed right away
    append(log_path, "n0")
    source = reopen(source, sink)
    source.poll_once(sink)
    assert sink.lines == ["l0", "n0"]
