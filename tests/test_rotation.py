"""Acceptance: a real ``sentinel run`` stores every line exactly once through rotations and crashes.

A writer appends 100,000 numbered sshd lines at full speed (``sshd[SEQ]``: each line is one
event whose ``process.pid`` is its sequence number) while the log is rotated mid-stream, several
times, by rename + create, copytruncate or delete + recreate; and a daemon is SIGKILLed
mid-stream and restarted (with rotations while it is down).  At the end the SQLite store must
hold the sequence numbers 0..99999, each once.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import SentinelProcess, clean_env, sshd_line, wait_until

N = 100_000
#: Lines a rename/delete writer still writes to its old file after the rotation, as a daemon
#: does until logrotate's postrotate script makes it reopen its log.
LATE_LINES = 200


class LogWriter:
    """Appends numbered lines to a log (O_APPEND, one write per line) and rotates it."""

    def __init__(self, path: Path, before_delete: Callable[[], None] | None = None) -> None:
        self.path = path
        self.before_delete = before_delete
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self.late_fd: int | None = None  # the rotated file, still written to for a while
        self.late_left = 0
        self.generation = 0

    def write(self, start: int, stop: int, rotate_every: int = 0, mode: str = "rename") -> None:
        """Write lines ``start`` … ``stop - 1``, rotating every ``rotate_every`` lines."""
        for seq in range(start, stop):
            if rotate_every and seq > start and (seq - start) % rotate_every == 0:
                self.rotate(mode)
            if self.late_fd is not None:
                os.write(self.late_fd, sshd_line(seq))
                self.late_left -= 1
                if self.late_left == 0:
                    os.close(self.late_fd)
                    self.late_fd = None
                continue
            os.write(self.fd, sshd_line(seq))

    def _shift(self) -> Path:
        """Make room for ``.1`` like logrotate (``.1`` → ``.2`` …); return the ``.1`` path."""
        self.generation += 1
        for n in range(self.generation, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.rename(self.path.with_name(f"{self.path.name}.{n + 1}"))
        return self.path.with_name(f"{self.path.name}.1")

    def rotate(self, mode: str) -> None:
        if mode == "copytruncate":
            # logrotate copies, then truncates: whatever a writer appends between the two is
            # lost by logrotate itself, in every tool.  This writer is quiesced meanwhile (it is
            # this thread), as logrotate's copytruncate with a paused writer would be.
            shutil.copyfile(self.path, self._shift())
            os.truncate(self.path, 0)
            return  # O_APPEND: the writer goes on at the new end of the same file
        if mode == "rename":
            self.path.rename(self._shift())
        elif mode == "delete":
            if self.before_delete is not None:
                self.before_delete()
            self.path.unlink()
        else:
            raise ValueError(mode)
        old = self.fd
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        # The old file keeps receiving lines until the writer "reopens" (LATE_LINES later).
        if self.late_fd is not None:
            os.close(self.late_fd)
        self.late_fd, self.late_left = old, LATE_LINES

    def close(self) -> None:
        os.close(self.fd)
        if self.late_fd is not None:
            os.close(self.late_fd)


def wait_until_open(proc: SentinelProcess, path: Path) -> Callable[[], None]:
    """A check that ``proc`` holds the file ``path`` names now open (its /proc/PID/fd).

    A file deleted before any reader opened it is gone for every tool (tail -F, Filebeat…);
    real logs live for hours, not for the milliseconds this writer gives them, so before each
    delete it waits until the daemon has the current file open, as it would have in real life.
    The writes themselves stay at full speed and the reader may be far behind.
    """

    def check() -> None:
        assert proc.proc is not None
        fds = Path(f"/proc/{proc.proc.pid}/fd")

        def holds() -> bool:
            for fd in fds.iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == str(path):
                        return True
            return False

        wait_until(holds, timeout=10, interval=0.001)

    return check


def write_config(tmp_path: Path, log_path: Path) -> tuple[Path, dict[str, str], Path]:
    """A TOML config for one file source, the state dir from the environment; (cfg, env, db)."""
    cfg = tmp_path / "sentinel.toml"
    cfg.write_text(
        "[collectors]\npoll_interval = 0.2\n\n"
        "[[sources]]\n"
        'type = "file"\n'
        'name = "auth"\n'
        f'paths = ["{log_path}"]\n'
        'format = "syslog"\n'
        'start_at = "beginning"\n'
    )
    state = tmp_path / "state"
    env = clean_env(SENTINEL_DAEMON__STATE_DIR=str(state), SENTINEL_DAEMON__LOG_LEVEL="debug")
    return cfg, env, state / "events.db"


#: Events parsed from log lines (they carry log.offset), not the findings and responses the
#: rules add beside them.
LOG_EVENTS = """SELECT $COLUMNS FROM events WHERE json_extract(doc, '$."log.offset"') IS NOT NULL"""


def stored_count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return int(conn.execute(LOG_EVENTS.replace("$COLUMNS", "count(*)")).fetchone()[0])
    except sqlite3.OperationalError:  # the daemon has not created the table yet
        return 0


def assert_exactly_once(db: Path, proc: SentinelProcess) -> None:
    with sqlite3.connect(db) as conn:
        seqs = [
            row[0] for row in conn.execute(LOG_EVENTS.replace("$COLUMNS", """json_extract(doc, '$."process.pid"')"""))
        ]
    counts = collections.Counter(seqs)
    missing = sorted(set(range(N)) - counts.keys())
    duplicated = sorted(s for s, c in counts.items() if c > 1)
    extra = sorted(s for s in counts if not isinstance(s, int) or not 0 <= s < N)
    assert not (missing or duplicated or extra), (
        f"{len(missing)} missing (first {missing[:10]}), {len(duplicated)} duplicated "
        f"(first {duplicated[:10]}), {len(extra)} unexpected; daemon log:\n{proc.log()[-3000:]}"
    )


def finish(db: Path, proc: SentinelProcess) -> None:
    """Wait for all N lines, give duplicates a moment to show up, stop cleanly, check the store."""
    with contextlib.suppress(AssertionError):  # on a timeout, the check below says what is missing
        wait_until(lambda: stored_count(db) >= N, timeout=30, interval=0.05)
    time.sleep(0.5)
    started = time.monotonic()
    assert proc.stop(timeout=10) == 0, proc.log()[-3000:]
    assert time.monotonic() - started < 5
    assert_exactly_once(db, proc)


@pytest.mark.parametrize("mode", ["rename", "copytruncate", "delete"])
def test_rotation_under_full_speed_writes(
    tmp_path: Path, mode: str, sentinel_process: Callable[..., SentinelProcess]
) -> None:
    log_path = tmp_path / "auth.log"
    cfg, env, db = write_config(tmp_path, log_path)
    proc = sentinel_process(cfg, env)
    writer = LogWriter(log_path, before_delete=wait_until_open(proc, log_path))
    proc.wait_log("with inotify")  # the daemon is ready: rotations from now on are seen
    try:
        writer.write(0, N, rotate_every=N // 4, mode=mode)  # three rotations mid-stream
    finally:
        writer.close()
    finish(db, proc)
    assert "rotated" in proc.log() or "truncated" in proc.log()


def test_sigkill_and_restart_with_rotations_while_down(
    tmp_path: Path, sentinel_process: Callable[..., SentinelProcess]
) -> None:
    log_path = tmp_path / "auth.log"
    cfg, env, db = write_config(tmp_path, log_path)
    writer = LogWriter(log_path)
    try:
        # 1. Killed mid-stream while a writer appends at full speed.
        proc = sentinel_process(cfg, env)
        thread = threading.Thread(target=writer.write, args=(0, 40_000))
        thread.start()
        wait_until(lambda: stored_count(db) >= 10_000, timeout=30, interval=0.01)
        proc.kill()
        thread.join()
        # 2. While it is down: more lines, a rename rotation, lines in the new file.
        writer.write(40_000, 55_000)
        writer.rotate("rename")
        writer.write(55_000, 60_000)
        # 3. Restarted, killed again mid-stream; a copytruncate while down.
        proc = sentinel_process(cfg, env)
        thread = threading.Thread(target=writer.write, args=(60_000, 85_000))
        thread.start()
        wait_until(lambda: stored_count(db) >= 45_000, timeout=30, interval=0.01)
        proc.kill()
        thread.join()
        writer.write(85_000, 90_000)
        writer.rotate("copytruncate")
        writer.write(90_000, 95_000)
        # 4. Restarted for good; the last lines arrive while it runs.
        proc = sentinel_process(cfg, env)
        writer.write(95_000, N)
    finally:
        writer.close()
    finish(db, proc)
    # Both restarts found the file they had been reading under its rotated name.
    assert proc.log().count("(rotated while Sentinel was down)") >= 2, proc.log()[-3000:]
