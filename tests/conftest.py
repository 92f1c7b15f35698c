"""Shared test helpers: waiting for a condition, sshd lines, running ``sentinel run`` for real.

Keep this small and generic; a helper used by one test file belongs in that file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def require_root(why: str) -> None:
    """Skip the calling test unless it runs as root; under ``CI=true`` (which runs as root) fail instead."""
    if os.geteuid() == 0:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI prerequisite missing: root ({why})")
    pytest.skip(f"needs root: {why}")


def sshd_line(seq: int) -> bytes:
    """A failed-password syslog line that parses to one event whose ``process.pid`` is ``seq``."""
    return (
        f"Nov 22 10:00:00 web1 sshd[{seq}]: Failed password for root from 203.0.113.{seq % 256} "
        f"port {1024 + seq % 60000} ssh2\n"
    ).encode()


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any inherited ``SENTINEL_*`` override, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    env.update(extra)
    return env


class SentinelProcess:
    """A real ``python -m sentinel run -c CONFIG`` child; stderr goes to a file for inspection."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.stderr_path = config.with_suffix(".stderr")
        self.env = env if env is not None else clean_env()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SentinelProcess:
        with self.stderr_path.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sentinel", "run", "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=self.env,
            )
        return self

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        wait_until(lambda: text in self.log(), timeout)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; the exit status."""
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def sentinel_process() -> Iterator[Callable[..., SentinelProcess]]:
    """Start ``sentinel run`` children (``start(config)``); any still running are killed after."""
    started: list[SentinelProcess] = []

    def start(config: Path, env: dict[str, str] | None = None) -> SentinelProcess:
        proc = SentinelProcess(config, env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.alive():
            proc.kill()


@pytest.fixture(scope="session")
def elasticsearch_server() -> Iterator[Any]:
    """The real Elasticsearch node (tests/es_server.py), started once for the whole run."""
    from tests.es_server import launch

    server = launch()
    yield server
    server.cleanup()
