"""The command line: help on every command, and the `parse` contract."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sentinel.cli import build_parser

FAILED = "Mar  1 10:00:0{i} web-01 sshd[100{i}]: Failed password for root from 203.0.113.{i} port 4{i}22 ssh2\n"


def sentinel(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "sentinel", *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )


def test_every_command_has_help() -> None:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    commands = dict(sub.choices)
    assert {"run", "check-config", "parse"} <= set(commands)
    for name in commands:
        proc = sentinel(name, "--help")
        assert proc.returncode == 0, name
        assert b"usage: sentinel " + name.encode() in proc.stdout


def test_parse_prints_ndjson_with_offsets(tmp_path: Path) -> None:
    log = tmp_path / "auth.log"
    lines = [FAILED.format(i=i) for i in range(3)]
    log.write_text("".join(lines))
    proc = sentinel("parse", "--year", "2026", str(log))
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [e["log.offset"] for e in events] == [0, len(lines[0]), len(lines[0]) + len(lines[1])]
    for i, event in enumerate(events):
        assert event["source.ip"] == f"203.0.113.{i}"
        assert event["event.outcome"] == "failure"
        assert "authentication" in event["event.category"]
        assert event["log.file.path"] == str(log)
        assert event["@timestamp"].startswith("2026-03-01T")


def test_parse_nested_and_stdin() -> None:
    proc = sentinel("parse", "--nested", "--year", "2026", "-", stdin=FAILED.format(i=1).encode())
    assert proc.returncode == 0, proc.stderr
    (event,) = [json.loads(x) for x in proc.stdout.splitlines()]
    assert event["source"]["ip"] == "203.0.113.1"
    assert event["log"]["offset"] == 0


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_parse_parallel_output_matches_sequential(tmp_path: Path, jobs: str) -> None:
    """Large files are split across workers; the output must be identical and in order."""
    log = tmp_path / "big.log"
    line = FAILED.format(i=7).encode()
    expected = []
    offset = 0
    with log.open("wb") as fh:
        for n in range(400_000):
            data = line.replace(b"port 4722", b"port %d" % (n % 60000 + 1))
            fh.write(data)
            expected.append(offset)
            offset += len(data)
    proc = sentinel("parse", "--stats", "-j", jobs, "--year", "2026", str(log))
    assert proc.returncode == 0, proc.stderr
    offsets = [json.loads(x)["log.offset"] for x in proc.stdout.splitlines()]
    assert offsets == expected
    assert b"lines=400000" in proc.stderr


def test_parse_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    proc = sentinel("parse", str(tmp_path / "absent.log"))
    assert proc.returncode == 1
    assert b"No such file or directory" in proc.stderr
    assert b"Traceback" not in proc.stderr
