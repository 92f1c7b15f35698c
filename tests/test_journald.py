"""The journald source and journal parsing, on real journal files (no mocks).

Journal files are written by ``systemd-journal-remote`` from export-format text composed here
(it appends when the file exists, and a second file in the same directory stands for a
rotation), then read back through systemd-python exactly as on a server.  Without the tools
the tests skip, except under ``CI=true`` where a missing prerequisite is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from sentinel.collectors.parsers import get_parser, syslog_parser
from sentinel.collectors.parsers.journal import journal_line_parser, parse_journal_entry
from sentinel.collectors.parsers.syslog import SyslogParser
from sentinel.collectors.sources.base import Batch, Checkpoint
from sentinel.collectors.sources.journald import (
    JournaldSource,
    JournalError,
    is_journal_file,
    iter_journal_file_events,
    open_reader,
)
from sentinel.config import JournaldSourceSettings
from sentinel.event import Event

JOURNAL_REMOTE = Path("/lib/systemd/systemd-journal-remote")
FAIL2BAN = Path(__file__).resolve().parents[2] / "shared/corpora/fail2ban"
BOOT_ID = "0123456789abcdef0123456789abcdef"
T0 = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z, in microseconds

FieldValue = str | bytes | int


def _missing(reason: str) -> None:
    """Fail under CI (the install step must provide it), skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI prerequisite missing: {reason} (run .ci/install-journald.sh)")
    pytest.skip(reason)


@pytest.fixture
def tools() -> None:
    """systemd-journal-remote, journalctl and systemd-python must be there."""
    if not JOURNAL_REMOTE.is_file():
        _missing(f"{JOURNAL_REMOTE} not found (apt-get install systemd-journal-remote)")
    if shutil.which("journalctl") is None:
        _missing("journalctl not found (apt-get install systemd)")
    try:
        import systemd.journal  # noqa: F401
    except ImportError:
        _missing("systemd-python not installed (pip install systemd-python)")


# --- writing real journal files -------------------------------------------------------------


def export_entry(fields: Mapping[str, FieldValue]) -> bytes:
    """One entry in journal export format: ``KEY=value`` lines, binary-safe form when needed."""
    out = bytearray()
    for key, value in fields.items():
        data = value if isinstance(value, bytes) else str(value).encode()
        if b"\n" in data or (not data.isascii() and _not_utf8(data)) or b"\x00" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out + b"\n")


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def entry(
    usec: int,
    message: str | bytes,
    *,
    ident: str | None = "sshd",
    pid: int | None = 4242,
    host: str = "web1",
    unit: str | None = "ssh.service",
    **extra: FieldValue,
) -> dict[str, FieldValue]:
    """The fields journald would store for one message (``__REALTIME_TIMESTAMP`` in µs)."""
    fields: dict[str, FieldValue] = {
        "__REALTIME_TIMESTAMP": usec,
        "__MONOTONIC_TIMESTAMP": usec - T0 + 1_000_000,
        "_BOOT_ID": BOOT_ID,
        "_HOSTNAME": host,
        "PRIORITY": 6,
    }
    if ident is not None:
        fields["SYSLOG_IDENTIFIER"] = ident
    if pid is not None:
        fields["_PID"] = pid
    if unit is not None:
        fields["_SYSTEMD_UNIT"] = unit
    fields.update(extra)
    fields["MESSAGE"] = message
    return fields


def write_journal(path: Path, entries: list[dict[str, FieldValue]]) -> Path:
    """Append ``entries`` to the journal file ``path`` (created if absent)."""
    data = b"".join(export_entry(e) for e in entries)
    proc = subprocess.run([str(JOURNAL_REMOTE), "-o", str(path), "-"], input=data, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert f"writing {len(entries)} entries".encode() in proc.stderr, proc.stderr
    return path


def failed(i: int, usec: int | None = None) -> dict[str, FieldValue]:
    """A failed password from 203.0.113.<i>, i seconds after T0."""
    return entry(
        usec if usec is not None else T0 + i * 1_000_000,
        f"Failed password for root from 203.0.113.{i} port {40000 + i} ssh2",
        pid=1000 + i,
    )


def cursors(path: Path) -> list[str]:
    """Every cursor of a journal file or directory, oldest first."""
    reader = open_reader(directory=path) if path.is_dir() else open_reader(files=[path])
    with reader:
        return [e["__CURSOR"] for e in reader]


# --- running a source in its thread ---------------------------------------------------------


class Running:
    """A source running in its own thread, as the daemon runs it; stopped on exit."""

    def __init__(self, source: JournaldSource, stop_after: int | None = None) -> None:
        self.source = source
        self.stop_after = stop_after
        self.batches: list[Batch] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.source.run(self._emit, self.stop)
        except BaseException as exc:
            self.error = exc

    def _emit(self, batch: Batch) -> None:
        self.batches.append(batch)
        if self.stop_after is not None and len(self.batches) >= self.stop_after:
            self.stop.set()  # as a daemon shutting down right after this batch

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive(), "source did not honour stop within 5 s"
        if self.error is not None and ev is None:
            raise self.error

    @property
    def events(self) -> list[Event]:
        return [e for b in list(self.batches) for e in b.events]

    @property
    def checkpoint(self) -> Checkpoint | None:
        return self.batches[-1].checkpoint if self.batches else None

    def wait_for(self, cond: Callable[[Running], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond(self):
            if self.error is not None:
                raise self.error
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; batches: {self.batches}")
            time.sleep(0.02)

    def settle(self, seconds: float = 0.6) -> None:
        """Let the source run a little (to show that nothing more arrives)."""
        time.sleep(seconds)
        if self.error is not None:
            raise self.error


def source(
    checkpoint: Checkpoint | None = None,
    *,
    directory: Path | None = None,
    files: list[Path] | None = None,
    start_at: str = "beginning",
    matches: list[str] | None = None,
    **kwargs: Any,
) -> JournaldSource:
    settings: dict[str, Any] = {"start_at": start_at, "files": files or []}
    if directory is not None:
        settings["directory"] = directory
    if matches is not None:
        settings["matches"] = matches
    return JournaldSource("journal", JournaldSourceSettings(**settings), checkpoint, **kwargs)


def read_all(src: JournaldSource, expect: int, timeout: float = 10.0) -> Running:
    """Run ``src`` until it has emitted ``expect`` events and then gone quiet."""
    with Running(src) as run:
        run.wait_for(lambda r: len(r.events) >= expect, timeout)
        run.settle(0.4)
    return run


def ips(events: list[Event]) -> list[str]:
    return [e["source.ip"] for e in events]


# --- parsing entries from real journal files ------------------------------------------------


@pytest.mark.usefixtures("tools")
def test_events_from_real_journal_file(tmp_path: Path) -> None:
    path = write_journal(
        tmp_path / "sshd.journal",
        [
            entry(T0 + 123456, "Failed password for root from 203.0.113.9 port 2222 ssh2"),
            entry(T0 + 1_000_000, "Invalid user admin from 198.51.100.7 port 4444", pid=4243),
            entry(T0 + 1_500_000, "session opened", ident="CRON", unit="cron.service", pid=77),
            entry(
                T0 + 2_000_000,
                "Accepted publickey for alice from 2001:db8::10 port 50000 ssh2: ED25519 SHA256:abc",
                ident="sshd-session",
                pid=None,
                SYSLOG_PID=5150,
            ),
        ],
    )
    assert is_journal_file(path)
    run = read_all(source(files=[path]), 3)
    failed_pw, invalid, accepted = run.events
    assert failed_pw["@timestamp"] == "2023-11-14T22:13:20.123456Z"
    assert failed_pw["event.action"] == "ssh_login_failed"
    assert failed_pw["event.outcome"] == "failure"
    assert failed_pw["event.category"] == ["authentication"]
    assert failed_pw["event.kind"] == "event"
    assert (failed_pw["source.ip"], failed_pw["source.port"]) == ("203.0.113.9", 2222)
    assert failed_pw["user.name"] == "root"
    assert failed_pw["host.hostname"] == "web1"
    assert (failed_pw["process.name"], failed_pw["process.pid"]) == ("sshd", 4242)
    assert failed_pw["message"] == "Failed password for root from 203.0.113.9 port 2222 ssh2"

    assert invalid["@timestamp"] == "2023-11-14T22:13:21Z"
    assert invalid["event.action"] == "ssh_invalid_user"
    assert (invalid["user.name"], invalid["source.ip"], invalid["process.pid"]) == (
        "admin",
        "198.51.100.7",
        4243,
    )

    assert accepted["@timestamp"] == "2023-11-14T22:13:22Z"
    assert accepted["event.outcome"] == "success"
    assert (accepted["user.name"], accepted["source.ip"]) == ("alice", "2001:db8::10")
    assert (accepted["process.name"], accepted["process.pid"]) == ("sshd-session", 5150)

    # The cursor is the checkpoint's business, never the event's.
    (cursor,) = {b.checkpoint["cursor"] for b in run.batches}
    assert cursor == cursors(path)[-1]
    for event in run.events:
        assert not any("cursor" in key.lower() for key in event)
        assert cursor not in map(str, event.values())
    assert run.source.status.stats.events == 3

    # `sentinel parse` on the binary file gives the same events (every entry, unfiltered).
    assert list(iter_journal_file_events(path)) == run.events
    assert not is_journal_file(tmp_path / "missing")


@pytest.mark.usefixtures("tools")
def test_binary_message_and_repeated_fields(tmp_path: Path) -> None:
    """Binary data (invalid UTF-8, NUL) is repaired and noted, as for log lines."""
    path = write_journal(
        tmp_path / "bin.journal",
        [entry(T0, b"Invalid user b\xffd\x00x from 198.51.100.8 port 22", pid=None, SYSLOG_PID=31)],
    )
    (event,) = iter_journal_file_events(path)
    assert event["user.name"] == "b\\xffdx"
    assert event["source.ip"] == "198.51.100.8"
    assert event["process.pid"] == 31
    assert "invalid UTF-8" in event["sentinel.parse_error"]
    assert "NUL" in event["sentinel.parse_error"]
    assert event["event.original"] == "Invalid user b\\xffdx from 198.51.100.8 port 22"


# --- cursor checkpoints ---------------------------------------------------------------------


@pytest.mark.usefixtures("tools")
def test_restart_from_cursor_reads_exactly_what_was_written_while_down(tmp_path: Path) -> None:
    journal_dir = tmp_path / "journal"
    journal_dir.mkdir()
    write_journal(journal_dir / "a.journal", [failed(i) for i in range(1, 6)])

    # Read part of it: stop after the first batch of two.
    with Running(source(directory=journal_dir, batch_size=2), stop_after=1) as run:
        run.wait_for(lambda r: r.stop.is_set())
    read_first = ips(run.events)
    assert read_first == ["203.0.113.1", "203.0.113.2"]
    checkpoint = run.checkpoint
    assert checkpoint == {"cursor": cursors(journal_dir)[1]}

    # While Sentinel is down: more entries in the same file, and a new file (a rotation).
    write_journal(journal_dir / "a.journal", [failed(i) for i in range(6, 8)])
    write_journal(journal_dir / "b.journal", [failed(i) for i in range(8, 10)])

    run2 = read_all(source(checkpoint, directory=journal_dir, batch_size=2), 9 - len(read_first))
    everything = read_first + ips(run2.events)
    assert everything == [f"203.0.113.{i}" for i in range(1, 10)]  # none lost, none twice
    assert run2.checkpoint == {"cursor": cursors(journal_dir)[-1]}

    # A third start from the final checkpoint finds nothing new.
    with Running(source(run2.checkpoint, directory=journal_dir)) as run3:
        run3.settle()
    assert run3.events == []


@pytest.mark.usefixtures("tools")
def test_progress_tells_the_self_check_whether_matching_entries_wait(tmp_path: Path) -> None:
    journal_dir = tmp_path / "journal"
    journal_dir.mkdir()
    write_journal(journal_dir / "a.journal", [failed(i) for i in range(1, 4)])
    assert source(directory=journal_dir).progress() is None, "no cursor yet: nothing to compare"
    first = cursors(journal_dir)
    assert source({"cursor": first[0]}, directory=journal_dir).progress() == (first[0], 1)
    assert source({"cursor": first[-1]}, directory=journal_dir).progress() == (first[-1], 0)
    # Entries the source's matches exclude are not input for it.
    write_journal(journal_dir / "a.journal", [entry(T0 + 9_000_000, "hello", ident="CRON", unit="cron.service")])
    assert source({"cursor": first[-1]}, directory=journal_dir).progress() == (first[-1], 0)
    write_journal(journal_dir / "a.journal", [failed(9)])
    assert source({"cursor": first[-1]}, directory=journal_dir).progress() == (first[-1], 1)


@pytest.mark.usefixtures("tools")
def test_checkpoint_is_the_last_entry_read_even_without_an_event(tmp_path: Path) -> None:
    path = write_journal(
        tmp_path / "x.journal",
        [failed(1), entry(T0 + 2_000_000, "Server listening on 0.0.0.0 port 22.")],
    )
    run = read_all(source(files=[path]), 1)
    assert len(run.events) == 1
    assert run.checkpoint == {"cursor": cursors(path)[-1]}
    with Running(source(run.checkpoint, files=[path])) as again:
        again.settle()
    assert again.batches == []
    # The same source object run again (as after an error) resumes where it stood, too.
    with Running(run.source) as rerun:
        rerun.settle()
    assert rerun.batches == []


@pytest.mark.usefixtures("tools")
def test_cursor_entry_rotated_away_resumes_with_the_next_one(tmp_path: Path) -> None:
    """If the file holding the saved cursor is vacuumed, the first entry found is new."""
    journal_dir = tmp_path / "journal"
    journal_dir.mkdir()
    write_journal(journal_dir / "old.journal", [failed(1), failed(2)])
    run = read_all(source(directory=journal_dir), 2)
    (journal_dir / "old.journal").unlink()
    write_journal(journal_dir / "new.journal", [failed(3), failed(4)])
    run2 = read_all(source(run.checkpoint, directory=journal_dir), 2)
    assert ips(run2.events) == ["203.0.113.3", "203.0.113.4"]


@pytest.mark.usefixtures("tools")
def test_unusable_cursor_falls_back_to_start_at(tmp_path: Path) -> None:
    path = write_journal(tmp_path / "x.journal", [failed(1)])
    run = read_all(source({"cursor": "not a cursor"}, files=[path]), 1)
    assert ips(run.events) == ["203.0.113.1"]
    assert "cursor unusable" in (run.source.status.last_error or "")


# --- start_at end, following live, and downtime after a fresh start -------------------------


@pytest.mark.usefixtures("tools")
def test_start_at_end_follows_new_entries_and_checkpoints_at_once(tmp_path: Path) -> None:
    journal_dir = tmp_path / "journal"
    journal_dir.mkdir()
    write_journal(journal_dir / "a.journal", [failed(1), failed(2)])
    with Running(source(directory=journal_dir, start_at="end")) as run:
        run.wait_for(lambda r: len(r.batches) >= 1)
        # The first batch saves the position at once: a restart will not skip the gap.
        assert run.batches[0].events == []
        assert run.batches[0].checkpoint == {"cursor": cursors(journal_dir)[-1]}
        write_journal(journal_dir / "a.journal", [failed(3)])  # appended to an open file
        run.wait_for(lambda r: len(r.events) >= 1)
        write_journal(journal_dir / "b.journal", [failed(4)])  # a new file appears
        run.wait_for(lambda r: len(r.events) >= 2)
        run.settle(0.3)
    assert ips(run.events) == ["203.0.113.3", "203.0.113.4"]

    # Down, then restarted: CrowdSec would lose what came in between; we must not.
    write_journal(journal_dir / "b.journal", [failed(5)])
    run2 = read_all(source(run.checkpoint, directory=journal_dir, start_at="end"), 1)
    assert ips(run2.events) == ["203.0.113.5"]


@pytest.mark.usefixtures("tools")
def test_fresh_start_at_end_without_matching_entries_keeps_downtime(tmp_path: Path) -> None:
    """Nothing to take a cursor from yet: the checkpoint is the start time instead."""
    journal_dir = tmp_path / "journal"
    journal_dir.mkdir()
    write_journal(journal_dir / "a.journal", [entry(T0, "noise", ident="cron", unit="cron.service")])
    with Running(source(directory=journal_dir, start_at="end")) as run:
        run.wait_for(lambda r: len(r.batches) >= 1)
    checkpoint = run.checkpoint
    assert checkpoint is not None and set(checkpoint) == {"realtime"}
    now = time.time_ns() // 1000
    write_journal(journal_dir / "a.journal", [failed(7, usec=now + 1_000_000)])
    run2 = read_all(source(checkpoint, directory=journal_dir, start_at="end"), 1)
    assert ips(run2.events) == ["203.0.113.7"]


@pytest.mark.usefixtures("tools")
def test_stop_is_prompt_on_a_quiet_journal(tmp_path: Path) -> None:
    path = write_journal(tmp_path / "x.journal", [failed(1)])
    with Running(source(files=[path], start_at="end")) as run:
        run.wait_for(lambda r: len(r.batches) >= 1)
        started = time.monotonic()
        run.stop.set()
        run.thread.join(2)
        assert not run.thread.is_alive()
    assert time.monotonic() - started < 1.0


# --- matches --------------------------------------------------------------------------------


@pytest.mark.usefixtures("tools")
def test_matches_filter_out_other_units(tmp_path: Path) -> None:
    lure = "Failed password for root from 192.0.2.66 port 1 ssh2"
    path = write_journal(
        tmp_path / "x.journal",
        [
            failed(1),
            entry(T0 + 2_000_000, lure, ident="myapp", unit="myapp.service"),
            entry(
                T0 + 3_000_000,
                "pam_unix(cron:session): session opened for user root(uid=0)",
                ident="CRON",
                unit="cron.service",
            ),
            entry(T0 + 4_000_000, lure, ident="sshd", unit="evil.service"),
            failed(5),
        ],
    )
    # The default matches use fields journald sets itself (_SYSTEMD_UNIT, _COMM): the lure from
    # myapp, cron's PAM session and the entry another unit merely tagged "sshd" are not read.
    default = read_all(source(files=[path]), 2)
    assert ips(default.events) == ["203.0.113.1", "203.0.113.5"]
    assert default.source.status.stats.lines == 2

    # Only the ssh unit: what another unit logs under the name sshd is ignored too.
    unit_only = read_all(source(files=[path], matches=["_SYSTEMD_UNIT=ssh.service"]), 2)
    assert ips(unit_only.events) == ["203.0.113.1", "203.0.113.5"]

    # No matches: every entry is read (five); myapp's lure and cron's session make no event.
    everything = read_all(source(files=[path], matches=[]), 3)
    assert ips(everything.events) == ["203.0.113.1", "192.0.2.66", "203.0.113.5"]
    assert everything.source.status.stats.lines == 5


def test_bad_settings_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="FIELD=value"):
        source(files=[tmp_path / "x.journal"], matches=["sshd"])
    with pytest.raises(ValueError, match="either directory or files"):
        source(directory=tmp_path, files=[tmp_path / "x.journal"])


@pytest.mark.usefixtures("tools")
def test_unreadable_journal_is_a_clear_error(tmp_path: Path) -> None:
    for src in (source(files=[tmp_path / "nope.journal"]), source(directory=tmp_path / "nope")):
        with pytest.raises(JournalError, match="not found"), Running(src):
            pass
        assert "not found" in (src.status.last_error or "")
    with pytest.raises(JournalError, match="not found"):
        list(iter_journal_file_events(tmp_path / "nope.journal"))


def test_missing_systemd_python_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "systemd.journal", None)
    monkeypatch.setitem(sys.modules, "systemd", None)
    src = source(directory=tmp_path)
    with pytest.raises(JournalError, match="systemd-python"):
        src.run(lambda b: None, threading.Event())


# --- journalctl text and JSON lines ---------------------------------------------------------


def _syslog() -> SyslogParser:
    parser = syslog_parser()
    assert isinstance(parser, SyslogParser)
    return parser


@pytest.mark.usefixtures("tools")
def test_journalctl_json_lines_parse_like_the_journal(tmp_path: Path) -> None:
    """`journalctl -o json` output (strings, byte arrays, arrays of values) gives the same
    events as reading the journal file itself."""
    path = write_journal(
        tmp_path / "x.journal",
        [
            failed(1),
            entry(T0 + 2_000_000, "Invalid user guest from 198.51.100.2 port 2", pid=None, SYSLOG_PID=7),
            entry(T0 + 3_000_000, b"Invalid user \xfe from 198.51.100.3 port 3"),
            entry(T0 + 4_000_000, "Accepted password for bob from 192.0.2.4 port 4 ssh2"),
        ],
    )
    out = subprocess.run(
        ["journalctl", "--file", str(path), "-o", "json"], capture_output=True, check=True
    ).stdout.decode()
    assert '"MESSAGE":[' in out  # the binary message really is a byte array
    parse = get_parser("journal")
    from_json = [e for line in out.splitlines() if (e := parse(line)) is not None]
    assert from_json == list(iter_journal_file_events(path))
    assert ips(from_json) == ["203.0.113.1", "198.51.100.2", "198.51.100.3", "192.0.2.4"]
    assert [e["process.pid"] for e in from_json] == [1001, 7, 4242, 4242]

    # journalctl's text output goes through the syslog framing.
    short = subprocess.run(
        ["journalctl", "--file", str(path), "-o", "short-iso"],
        capture_output=True,
        check=True,
        env={**os.environ, "TZ": "UTC"},
    ).stdout.decode()
    from_text = [e for line in short.splitlines() if (e := parse(line)) is not None]
    assert [e["@timestamp"] for e in from_text][:2] == ["2023-11-14T22:13:21Z", "2023-11-14T22:13:22Z"]
    assert ips(from_text) == ["203.0.113.1", "198.51.100.2", "192.0.2.4"]  # no blob in text


def test_json_line_shapes() -> None:
    parse = journal_line_parser(syslog_parser())
    base = '"__REALTIME_TIMESTAMP":"1700000000000001","_HOSTNAME":"h","__CURSOR":"s=1;i=2"'
    event = parse(
        '{"SYSLOG_IDENTIFIER":["x","sshd"],"_PID":null,"SYSLOG_PID":"9",'
        + base
        + ',"MESSAGE":"Failed password for root from 192.0.2.1 port 5 ssh2"}'
    )
    assert event is not None
    assert event["@timestamp"] == "2023-11-14T22:13:20.000001Z"
    assert (event["process.name"], event["process.pid"]) == ("sshd", 9)
    assert "s=1;i=2" not in event.values()
    assert parse('{"SYSLOG_IDENTIFIER":"sshd","MESSAGE":null,' + base + "}") is None
    assert parse('{"MESSAGE":"Failed password for root from 192.0.2.1 port 5 ssh2"}') is None
    seq = parse('\x1e{"SYSLOG_IDENTIFIER":"sshd","MESSAGE":"Invalid user a from 192.0.2.3 port 1",' + base + "}")
    assert seq is not None and seq["source.ip"] == "192.0.2.3"  # journalctl -o json-seq
    assert parse("{not json") is None
    assert parse("[1, 2]") is None
    assert parse("-- Boot 0123456789abcdef0123456789abcdef --") is None
    # _COMM stands in for a missing identifier; no realtime stamp means "now".
    event = parse('{"_COMM":"sshd","MESSAGE":"Invalid user a from 192.0.2.9 port 1"}')
    assert event is not None and event["process.name"] == "sshd"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", event["@timestamp"])
    with pytest.raises(TypeError):
        journal_line_parser(lambda line: None)


def test_entry_values_as_systemd_python_and_raw_bytes_give_them() -> None:
    from datetime import UTC, datetime

    syslog = _syslog()
    msg = "Failed password for root from 192.0.2.1 port 5 ssh2"
    as_bytes = {
        "SYSLOG_IDENTIFIER": b"sshd",
        "_PID": b"12",
        "_HOSTNAME": b"h",
        "__REALTIME_TIMESTAMP": b"1700000000500000",
        "MESSAGE": msg.encode(),
    }
    converted = {
        "SYSLOG_IDENTIFIER": "sshd",
        "_PID": 12,
        "_HOSTNAME": "h",
        "__REALTIME_TIMESTAMP": datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC),
        "MESSAGE": msg,
    }
    a, b = parse_journal_entry(as_bytes, syslog), parse_journal_entry(converted, syslog)
    assert a is not None and a == b
    assert a["@timestamp"] == "2023-11-14T22:13:20.500000Z"
    # The filler sits where sshd itself puts free text: the key description of a publickey failure.
    key_msg = "Failed publickey for root from 192.0.2.1 port 5 ssh2: RSA " + "é" * 400
    long = parse_journal_entry({**converted, "MESSAGE": key_msg}, syslog, max_bytes=300)
    assert long is not None and "truncated" in long["sentinel.parse_error"]
    assert len(long["message"].encode()) < 300


def test_short_text_lines_from_fail2ban_corpus() -> None:
    corpus = FAIL2BAN / "sshd-journal"
    if not corpus.is_file():
        _missing(f"{corpus} not found")
    parse = get_parser("journal")
    event = parse("srv sshd[31602]: Failed password for invalid user ROOT from 194.117.26.69 port 50273 ssh2")
    assert event is not None
    assert (event["host.hostname"], event["process.pid"], event["source.ip"]) == ("srv", 31602, "194.117.26.69")


# --- the fail2ban corpus through a real journal ---------------------------------------------

_SHORT = re.compile(r"(?P<host>\S+) (?P<prog>sshd)\[(?P<pid>\d+)\]: (?P<msg>.*)")


def _corpus_lines(limit: int) -> Iterator[str]:
    corpus = FAIL2BAN / "sshd-journal"
    if not corpus.is_file():
        _missing(f"{corpus} not found")
    count = 0
    for line in corpus.read_text(errors="replace").splitlines():
        if count < limit and _SHORT.fullmatch(line):
            count += 1
            yield line


@pytest.mark.usefixtures("tools")
def test_fail2ban_journal_lines_through_a_real_journal(tmp_path: Path) -> None:
    """fail2ban's sshd journal corpus, written into a journal file and read by the source,
    gives the same events as its text lines through the line parser."""
    lines = list(_corpus_lines(60))
    entries = []
    for i, line in enumerate(lines):
        m = _SHORT.fullmatch(line)
        assert m is not None
        entries.append(entry(T0 + i * 1000, m["msg"], ident=m["prog"], pid=int(m["pid"]), host=m["host"]))
    path = write_journal(tmp_path / "f2b.journal", entries)
    parse = get_parser("journal")
    expected = [e for line in lines if (e := parse(line)) is not None]
    assert len(expected) >= 20
    run = read_all(source(files=[path]), len(expected))
    assert len(run.events) == len(expected)
    for got, want in zip(run.events, expected, strict=True):
        got, want = dict(got), dict(want)
        got.pop("@timestamp"), want.pop("@timestamp")
        assert got == want
    assert run.source.status.stats.lines == len(lines)


@pytest.mark.usefixtures("tools")
def test_sentinel_parse_reads_binary_journal_files(tmp_path: Path) -> None:
    """`sentinel parse` recognises a .journal file and reads it through libsystemd."""
    import json
    import subprocess
    import sys

    path = write_journal(tmp_path / "x.journal", [failed(1), failed(2)])
    proc = subprocess.run(
        [sys.executable, "-m", "sentinel", "parse", str(path)], capture_output=True, timeout=60, check=True
    )
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [e["source.ip"] for e in events] == ["203.0.113.1", "203.0.113.2"]
    assert all(e["log.file.path"] == str(path) for e in events)
    # A directory is a journal directory: its files are read; one without any is an error, not silence.
    whole = subprocess.run(
        [sys.executable, "-m", "sentinel", "parse", str(tmp_path)], capture_output=True, timeout=60, check=True
    )
    assert [json.loads(line)["source.ip"] for line in whole.stdout.splitlines()] == ["203.0.113.1", "203.0.113.2"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "auth.log").write_text("not a journal\n")
    none = subprocess.run([sys.executable, "-m", "sentinel", "parse", str(tmp_path / "empty")], capture_output=True)
    assert none.returncode == 1
    assert b"a directory is read as journal files, and it holds none" in none.stderr
    # Replay reads journal files too: six failures from one address within a minute are a brute force.
    brute = write_journal(tmp_path / "y.journal", [failed(7, T0 + i * 1_000_000) for i in range(6)])
    replayed = subprocess.run(
        [sys.executable, "-m", "sentinel", "replay", str(brute)], capture_output=True, timeout=60, check=True
    )
    assert "ssh-brute-force" in {json.loads(line)["rule.id"] for line in replayed.stdout.splitlines()}
