"""Two network namespaces joined by a veth pair, for end-to-end tests with real packets.

``with NetnsPair() as net:`` creates ``net.attacker`` and ``net.defender``, each a namespace with
``lo`` up and one end of a veth pair carrying an IPv4 and an IPv6 address, and removes both
namespaces on exit, whatever happened (removing a namespace destroys its veth end, and the pair
goes with it).  The veth pair is created directly inside the namespaces, so nothing ever exists in
the root namespace, and names are unique per run (``snt-<pid>-<random>-a``): concurrent test runs
do not collide, and :func:`sweep_stale` removes what a killed run (SIGKILL: no ``finally``) left.

Addresses are documentation ranges, harmless even if they leaked: IPv4 ``198.51.100.1`` (defender)
and ``.2`` (attacker) on one /24; IPv6 ``2001:db8:d::1`` and ``2001:db8:a::1`` in *different* /64s
joined by on-link routes, because the engine groups and bans IPv6 per /64: with one shared /64 a
ban of the attacker's network would cover the defender's own address, which is never banned.

Commands run in a namespace with ``ip netns exec``; :meth:`NetnsPair.popen` tracks what it starts
and kills it on exit, so no process keeps a deleted namespace alive.  Needs root (CAP_SYS_ADMIN and
CAP_NET_ADMIN) and ``ip`` from iproute2; :func:`netns_problem` says why not, and
:func:`require_netns` skips — or fails under ``CI=true``, where a missing prerequisite is a bug.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import pytest

PREFIX: Final = "snt-"
NETNS_DIR: Final = Path("/run/netns")


@dataclass(frozen=True, slots=True)
class Side:
    """One namespace of the pair: its name, its veth end and the addresses on it."""

    netns: str
    ifname: str
    ipv4: str
    ipv6: str
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64

    def cmd(self, *args: str) -> list[str]:
        """``args`` prefixed to run inside this namespace."""
        return ["ip", "netns", "exec", self.netns, *args]


def _ip(*args: str) -> None:
    """Run ``ip ARGS``; a failure raises with ip's own message."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")


def netns_problem() -> str | None:
    """Why namespaces cannot be created here (``None`` if they can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and veth pairs)"
    if shutil.which("ip") is None:
        return "ip not found (apt-get install iproute2)"
    return None


def require_netns() -> None:
    """Skip the calling test without namespaces; under ``CI=true`` fail instead."""
    problem = netns_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI prerequisite missing: {problem}")
    pytest.skip(problem)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Delete namespaces left by test runs whose process is gone; return their names."""
    if not NETNS_DIR.is_dir():
        return []
    removed = []
    for entry in NETNS_DIR.iterdir():
        parts = entry.name.split("-")
        if not entry.name.startswith(PREFIX) or len(parts) != 4 or not parts[1].isdigit():
            continue
        if _pid_alive(int(parts[1])):
            continue
        try:
            _ip("netns", "del", entry.name)
            removed.append(entry.name)
        except RuntimeError:
            continue
    return removed


class NetnsPair:
    """An attacker and a defender namespace joined by veth; a context manager that cleans up."""

    def __init__(self) -> None:
        token = f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.attacker = Side(f"{token}-a", "veth-att", "198.51.100.2", "2001:db8:a::1")
        self.defender = Side(f"{token}-d", "veth-def", "198.51.100.1", "2001:db8:d::1")
        self._procs: list[subprocess.Popen[Any]] = []
        self._created: list[str] = []

    # -- lifecycle ---------------------------------------------------------------------------
    def create(self) -> NetnsPair:
        """Create both namespaces, the veth pair and the addresses; undo everything on failure."""
        sweep_stale()
        try:
            for side in (self.attacker, self.defender):
                _ip("netns", "add", side.netns)
                self._created.append(side.netns)
            a, d = self.attacker, self.defender
            _ip("link", "add", a.ifname, "netns", a.netns, "type", "veth", "peer", "name", d.ifname, "netns", d.netns)
            for side, peer in ((a, d), (d, a)):
                n = side.netns
                _ip("-n", n, "link", "set", "lo", "up")
                _ip("-n", n, "addr", "add", f"{side.ipv4}/{side.ipv4_prefix}", "dev", side.ifname)
                # nodad: usable at once, rather than "tentative" for a second or two.
                _ip("-n", n, "addr", "add", f"{side.ipv6}/{side.ipv6_prefix}", "dev", side.ifname, "nodad")
                _ip("-n", n, "link", "set", side.ifname, "up")
                peer_net = ipaddress.ip_network(f"{peer.ipv6}/{peer.ipv6_prefix}", strict=False)
                _ip("-n", n, "-6", "route", "add", str(peer_net), "dev", side.ifname)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Kill the processes started here, then delete the namespaces (idempotent)."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self._procs.clear()
        errors = []
        for name in reversed(self._created):
            try:
                _ip("netns", "del", name)
            except RuntimeError as exc:
                errors.append(str(exc))
        self._created.clear()
        if errors:
            raise RuntimeError("; ".join(errors))

    def __enter__(self) -> NetnsPair:
        return self.create()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.close()
        except RuntimeError as cleanup:
            if exc is None:
                raise
            exc.add_note(f"and cleaning up the namespaces failed: {cleanup}")  # keep the test's own error

    # -- running things inside -----------------------------------------------------------------
    def run(
        self, side: Side, args: Sequence[str], *, timeout: float = 30.0, check: bool = True, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` in ``side``'s namespace to completion (text output captured)."""
        return subprocess.run(side.cmd(*args), capture_output=True, text=True, timeout=timeout, check=check, **kwargs)

    def popen(self, side: Side, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``args`` in ``side``'s namespace; it is killed when the pair is closed."""
        proc: subprocess.Popen[Any] = subprocess.Popen(side.cmd(*args), **kwargs)
        self._procs.append(proc)
        return proc

    def exists(self) -> bool:
        """True while either namespace exists (for tests of the cleanup itself)."""
        return any((NETNS_DIR / s.netns).exists() for s in (self.attacker, self.defender))
