"""`sentinel replay`: parallel and sequential runs agree, enrichment included; rotations given
newest first are replayed oldest first; parallel runs whose output is closed early stop at once."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_geoip import BERLIN, MADRID, write_geo_db

FILLER = "Mar  1 0{h}:{m:02d}:{s:02d} web-01 sshd[{pid}]: Failed password for root from 203.0.113.{o} port 22 ssh2\n"
LOGIN = "Mar  1 0{h}:{m:02d}:00 web-01 sshd[{pid}]: Accepted publickey for alice from {ip} port 5000 ssh2\n"


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~20 MB of failed logins with two successful ones: large enough for the parallel path."""
    log = tmp_path_factory.mktemp("replay") / "auth.log"
    with log.open("w") as fh:
        for i in range(200_000):
            h, rest = divmod(i // 50, 3600)
            fh.write(FILLER.format(h=h, m=rest // 60, s=rest % 60, pid=1000 + i, o=i % 200))
            if i == 1000:
                fh.write(LOGIN.format(h=0, m=1, pid=99, ip=BERLIN))
            if i == 190_000:
                fh.write(LOGIN.format(h=h, m=rest // 60, pid=98, ip=MADRID))
    assert log.stat().st_size > 16 << 20
    return log


def test_parallel_replay_matches_sequential_and_enriches_before_filtering(tmp_path: Path, big_log: Path) -> None:
    db = write_geo_db(tmp_path / "city.mmdb")
    log = big_log
    outputs = []
    for jobs in ("1", "2"):
        proc = subprocess.run(
            [sys.executable, "-m", "sentinel", "replay", "-j", jobs, "--year", "2026", "--geoip-db", str(db), str(log)],
            capture_output=True,
            check=True,
            timeout=300,
        )
        outputs.append(proc.stdout)
    assert outputs[0] == outputs[1]
    findings = [json.loads(line) for line in outputs[0].splitlines()]
    new_country = [f for f in findings if f["rule.id"] == "login-new-country"]
    assert [f["source.geo.country_iso_code"] for f in new_country] == ["ES"]
    assert any(f["rule.id"] == "ssh-brute-force" for f in findings)


GEN = Path(__file__).resolve().parents[2] / "shared" / "tools" / "gen_authlog.py"


def test_rotations_named_newest_first_are_replayed_oldest_first(tmp_path: Path) -> None:
    """`sentinel replay auth.log*` names auth.log, auth.log.1, auth.log.2.gz: newest first."""
    whole = tmp_path / "whole.log"
    gen = [sys.executable, str(GEN), "--lines", "60000", "--seed", "9", "--year", "2026", "--out", str(whole)]
    subprocess.run(gen, check=True, capture_output=True)
    lines = whole.read_bytes().splitlines(keepends=True)
    third = len(lines) // 3
    (tmp_path / "auth.log.2.gz").write_bytes(gzip.compress(b"".join(lines[:third])))
    (tmp_path / "auth.log.1").write_bytes(b"".join(lines[third : 2 * third]))
    (tmp_path / "auth.log").write_bytes(b"".join(lines[2 * third :]))

    def findings(*paths: Path) -> tuple[list[tuple[str, str]], str]:
        args = ["replay", "--year", "2026", *map(str, paths)]
        got = subprocess.run([sys.executable, "-m", "sentinel", *args], capture_output=True, check=True, timeout=120)
        found = [json.loads(line) for line in got.stdout.splitlines()]
        return [(f["@timestamp"], f["rule.id"]) for f in found], got.stderr.decode()

    expected, _ = findings(whole)
    assert len(expected) > 100
    glob = [tmp_path / "auth.log", tmp_path / "auth.log.1", tmp_path / "auth.log.2.gz"]
    got, said = findings(*glob)
    assert got == expected
    assert f"replaying oldest first: {glob[2]}, {glob[1]}, {glob[0]}" in said


@contextlib.contextmanager
def parallel_run(command: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``sentinel COMMAND -j 2 LOG`` in a session of its own, whose workers are all killed at the end
    should the command hang."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sentinel", command, "-j", "2", "--year", "2026", str(log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("command", ["parse", "replay"])
def test_a_parallel_run_whose_output_is_closed_stops_at_once(big_log: Path, command: str) -> None:
    """`sentinel parse big.log | head -1`: every worker stops, the command exits 0 without an error."""
    with parallel_run(command, big_log) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert json.loads(proc.stdout.readline())["@timestamp"].startswith("2026-03-01T")
        proc.stdout.close()  # what head does after its line
        assert proc.wait(timeout=60) == 0
        errors = proc.stderr.read().decode()
    assert "Traceback" not in errors and "sentinel:" not in errors and "Error" not in errors, errors


@pytest.mark.parametrize("command", ["parse", "replay"])
def test_ctrl_c_stops_a_parallel_run_and_all_its_workers_quietly(big_log: Path, command: str) -> None:
    with parallel_run(command, big_log) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.readline()  # running; unread, its output soon fills the pipe and it waits
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        assert proc.wait(timeout=60) == 130
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)  # no worker left behind
        assert "Traceback" not in proc.stderr.read().decode()
