"""`sentinel run` as systemd runs it: sd_notify over a socket the test owns, SIGHUP reloads
(a valid configuration takes effect keeping rule state, a broken one is refused), SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import clean_env, wait_until

SUDO_RULE = """
id = "test-sudo-watch"
name = "Any sudo command"
[match]
"event.action" = "sudo_command"
[condition]
type = "every"
[[responses]]
type = "alert"
[[samples]]
fire = true
lines = ["Mar  1 10:00:00 web-01 sudo[1]:    alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/bin/true"]
[[samples]]
fire = false
lines = ["Mar  1 10:00:00 web-01 sshd[2]: Accepted publickey for alice from 203.0.113.1 port 22 ssh2"]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.2)
    yield sock
    sock.close()


def messages(sock: socket.socket, until: str, timeout: float = 15.0) -> list[str]:
    """Datagrams received until one contains ``until``."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
        if until in got[-1]:
            return got
    raise AssertionError(f"no {until!r} within {timeout}s; got {got}")


def documents(state: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(state / "events.db", timeout=5) as conn:
        return [json.loads(r[0]) for r in conn.execute("SELECT doc FROM events")]


def findings(state: Path) -> list[dict[str, Any]]:
    return [d for d in documents(state) if d.get("event.kind") == "alert"]


def stored(state: Path, ip: str) -> list[dict[str, Any]]:
    """Parsed log events from ``ip``."""
    return [d for d in documents(state) if d.get("source.ip") == ip and d.get("event.kind") == "event"]


def failures(ip: str, start: int, n: int) -> str:
    line = "Nov 22 10:00:{s:02d} web-01 sshd[{pid}]: Failed password for root from {ip} port 1 ssh2\n"
    return "".join(line.format(s=start + i, pid=9000 + start + i, ip=ip) for i in range(n))


def test_notify_reload_and_stop(tmp_path: Path, notify_socket: socket.socket) -> None:
    log, state, rules = tmp_path / "auth.log", tmp_path / "state", tmp_path / "rules.d"
    log.write_text("")
    rules.mkdir()
    port = free_port()
    base = (
        f'[daemon]\nstate_dir = "{state}"\n[collectors]\npoll_interval = 0.1\n[ports]\nenabled = false\n'
        f"[metrics]\nport = {port}\n"
        f'[[sources]]\ntype = "file"\nname = "auth"\npaths = ["{log}"]\nformat = "syslog"\nstart_at = "beginning"\n'
    )
    cfg = tmp_path / "sentinel.toml"
    cfg.write_text(base)
    (tmp_path / "status.toml").write_text(base)  # what `sentinel status` reads: the state dir
    env = {**clean_env(), "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000"}
    err = (tmp_path / "stderr").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "sentinel", "run", "-c", str(cfg)], env=env, stderr=err)
    try:
        got = messages(notify_socket, "READY=1")
        assert any("STATUS=running with 1 sources (1 configured)" in m for m in got)
        messages(notify_socket, "WATCHDOG=1")  # fed by the main loop while the writer moves

        with log.open("a") as fh:
            fh.write(failures("203.0.113.50", 0, 3))
        wait_until(lambda: len(stored(state, "203.0.113.50")) == 3, timeout=10)

        # A valid new configuration: a new rule becomes active, the brute-force window is kept.
        (rules / "sudo.toml").write_text(SUDO_RULE)
        cfg.write_text(base + f'[rules]\ndirectories = ["{rules}"]\n')
        proc.send_signal(signal.SIGHUP)
        messages(notify_socket, "STATUS=configuration reloaded")
        with log.open("a") as fh:
            fh.write(failures("203.0.113.50", 10, 2))
            fh.write(
                "Nov 22 10:00:30 web-01 sudo[77]:    alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; "
                "COMMAND=/usr/bin/id\n"
            )
        wait_until(lambda: {f["rule.id"] for f in findings(state)} >= {"ssh-brute-force", "test-sudo-watch"}, 10)

        # A broken configuration is refused; the running one keeps working.
        cfg.write_text(base + "[rules\n")
        proc.send_signal(signal.SIGHUP)
        messages(notify_socket, "reload refused")
        assert proc.poll() is None
        with log.open("a") as fh:
            fh.write(
                "Nov 22 10:00:40 web-01 sudo[78]:    bob : TTY=pts/1 ; PWD=/home/bob ; USER=root ; "
                "COMMAND=/usr/bin/id\n"
            )
        wait_until(lambda: sum(f["rule.id"] == "test-sudo-watch" for f in findings(state)) == 2, 10)

        status = subprocess.run(
            [sys.executable, "-m", "sentinel", "status", "--json", "-c", str(cfg.with_name("status.toml"))],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            env=clean_env(),
        )
        report = json.loads(status.stdout)
        assert [(s["name"], s["lines"]) for s in report["sources"]] == [("auth", 7)]
        assert report["dry_run"] is True
        assert {f["rule.id"] for f in report["recent_findings"]} >= {"ssh-brute-force", "test-sudo-watch"}
        jobs = {j["id"]: j for j in report["jobs"]}
        assert set(jobs) >= {"self-check", "store-maintenance"}
        assert jobs["store-maintenance"]["interval"] == 86400 and jobs["store-maintenance"]["next_run"]
        assert jobs["self-check"]["last_outcome"] in ("never", "ok", "running")
        (queue,) = report["queues"]
        assert (queue["name"], queue["policy"], queue["capacity"]) == ("collectors", "block", 10000)
        assert queue["overflows"] == 0 and queue["dropped"] == 0
        human = subprocess.run(
            [sys.executable, "-m", "sentinel", "status", "-c", str(cfg.with_name("status.toml"))],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            env=clean_env(),
        ).stdout
        assert "Recent findings:" in human and "ssh-brute-force" in human
        assert "Jobs:" in human and "store-maintenance" in human and "collectors" in human

        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'sentinel_source_lines_total{source="auth"} 7.0' in body
        assert 'sentinel_findings_total{rule="test-sudo-watch"} 2.0' in body
        assert 'sentinel_queue_capacity{queue="collectors"} 10000.0' in body
        assert 'sentinel_queue_overflows_total{queue="collectors"} 0.0' in body
        assert 'sentinel_job_failures_total{job="store-maintenance"} 0.0' in body

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        messages(notify_socket, "STOPPING=1")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err.close()
    stderr = (tmp_path / "stderr").read_text()
    assert "configuration reload refused" in stderr
    assert (state / "rule-state.json").exists()
    with sqlite3.connect(state / "events.db") as conn:
        (checkpoint,) = conn.execute("SELECT state FROM checkpoints WHERE source = 'auth'").fetchone()
    assert json.loads(checkpoint)["paths"][str(log)][-1]["offset"] == log.stat().st_size
    os.remove(state / "rule-state.json")
