"""`sentinel run` as a real process in the defender namespace, banning at the real firewall.

The daemon tails a log file; the test appends five failed logins from the attacker's IPv4
address and five from its IPv6 address; the attacker's TCP connects are then dropped.  Through
the control socket `sentinel bans` lists, refuses protected targets and lifts a ban; a restart
after the kernel lost everything restores the bans from the state.  Without CAP_NET_ADMIN the
daemon keeps running, records the failure and retries.  Root only (CI runs it).
"""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sentinel.bans_cli import bans_command
from sentinel.control import request, socket_path
from sentinel.responders.firewall import make_backend
from tests.conftest import clean_env, wait_until
from tests.netns import NetnsPair
from tests.test_firewall import BACKENDS, bans_args, call, fw_settings, inside, reachable, require_firewall

pytestmark = pytest.mark.root


class NsSentinel:
    """``python -m sentinel run`` in a namespace (killed with the namespaces if still running)."""

    def __init__(self, net: NetnsPair, config: Path, prefix: tuple[str, ...] = ()) -> None:
        self.stderr = config.with_suffix(".stderr")
        with self.stderr.open("ab") as err:
            self.proc = net.popen(
                net.defender,
                [*prefix, sys.executable, "-m", "sentinel", "run", "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=clean_env(),
            )

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 15.0) -> None:
        wait_until(lambda: text in self.log() or self.proc.poll() is not None, timeout)
        assert text in self.log(), f"{text!r} not logged; the daemon said:\n{self.log()}"

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(15)


def write_config(tmp_path: Path, log: Path, backend: str, extra: str = "") -> Path:
    cfg = tmp_path / "sentinel.toml"
    cfg.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n'
        "[collectors]\npoll_interval = 0.1\n"
        "[ports]\nenabled = false\n"
        "[metrics]\nenabled = false\n"
        '[geoip]\ndatabase = "off"\n'
        "[responders]\ndry_run = false\n"
        '[engine]\nallowlist = ["203.0.113.0/24"]\n'
        f'[firewall]\nbackend = "{backend}"\nretry_initial = 0.2\nretry_max = 1\n'
        f'[[sources]]\ntype = "file"\nname = "auth"\npaths = ["{log}"]\nformat = "syslog"\nstart_at = "beginning"\n'
        + extra
    )
    return cfg


def failed_logins(address: str, first_pid: int) -> str:
    return "".join(
        f"Nov 22 10:00:0{i} web-01 sshd[{first_pid + i}]: "
        f"Failed password for root from {address} port {5000 + i} ssh2\n"
        for i in range(5)
    )


def responses(tmp_path: Path) -> list[dict[str, Any]]:
    try:
        with sqlite3.connect(tmp_path / "state" / "events.db", timeout=5) as conn:
            rows = conn.execute("SELECT doc FROM events").fetchall()
    except sqlite3.OperationalError:
        return []
    docs = [json.loads(r[0]) for r in rows]
    return [d for d in docs if d.get("event.dataset") == "sentinel.response"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sentinel_run_bans_the_attacker_at_the_firewall(backend: str, tmp_path: Path) -> None:
    require_firewall(backend)
    state = tmp_path / "state"
    log = tmp_path / "auth.log"
    log.write_text("")
    cfg = write_config(tmp_path, log, backend)
    with NetnsPair() as net, inside(net.attacker) as aex:
        v4, v6 = net.defender.ipv4, net.defender.ipv6
        listener = net.popen(
            net.defender,
            [sys.executable, "-c", _LISTENER],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert listener.stdout is not None
        port = int(listener.stdout.readline())
        daemon = NsSentinel(net, cfg)
        daemon.wait_log("firewall restored")
        daemon.wait_log("running with")
        assert reachable(aex, v4, port) and reachable(aex, v6, port)

        with log.open("a") as fh:
            fh.write(failed_logins(net.attacker.ipv4, 4000) + failed_logins(net.attacker.ipv6, 4100))
        wait_until(lambda: not reachable(aex, v4, port) and not reachable(aex, v6, port), timeout=15)

        listing = io.StringIO()
        assert bans_command(bans_args("list"), state, listing) == 0
        assert net.attacker.ipv4 in listing.getvalue() and "2001:db8:a::/64" in listing.getvalue()
        assert f"{backend}: Sentinel owns" in listing.getvalue() and "rule:ssh-brute-force" in listing.getvalue()
        # Protected targets are refused, whoever asks.
        assert bans_command(bans_args("add", "127.0.0.1"), state, io.StringIO()) == 1
        assert bans_command(bans_args("add", "203.0.113.0/25"), state, io.StringIO()) == 1
        assert bans_command(bans_args("add", v4), state, io.StringIO()) == 1  # the host's own address
        # A ban lifted by hand: the attacker's IPv4 flows again, its IPv6 /64 stays banned.
        assert bans_command(bans_args("remove", net.attacker.ipv4), state, io.StringIO()) == 0
        wait_until(lambda: reachable(aex, v4, port), timeout=5)
        assert not reachable(aex, v6, port)
        assert daemon.stop() == 0

        # Bans outlive the daemon (the kernel holds them) …
        assert not reachable(aex, v6, port)
        # … and come back from the state when the kernel lost them (a reboot, a flush).
        with inside(net.defender) as dex:
            call(dex, lambda: make_backend(fw_settings(backend)).teardown())
        assert reachable(aex, v6, port)
        again = NsSentinel(net, cfg)
        again.wait_log("firewall restored: 1 bans in the kernel")
        assert not reachable(aex, v6, port)
        assert again.stop() == 0

    done = responses(tmp_path)
    bans = [r for r in done if r["event.action"] == "ban" and r["event.outcome"] == "success"]
    assert {r["sentinel.response"]["target"] for r in bans} == {net.attacker.ipv4, "2001:db8:a::/64"}
    assert all(r["rule.id"] == "ssh-brute-force" and r["sentinel.finding_id"] for r in bans)
    refused = [r for r in done if r["event.action"] == "ban" and r["event.outcome"] == "failure"]
    assert {r["sentinel.response"]["target"] for r in refused} == {"127.0.0.1", "203.0.113.0/25", v4}
    assert all(r.get("event.reason") for r in refused)
    (unban,) = [r for r in done if r["event.action"] == "unban"]
    assert unban["sentinel.response"]["target"] == net.attacker.ipv4 and unban["user.id"] == "0"


def test_without_cap_net_admin_the_daemon_reports_retries_and_keeps_running(tmp_path: Path) -> None:
    require_firewall("nftables")
    state = tmp_path / "state"
    log = tmp_path / "auth.log"
    log.write_text("")
    cfg = write_config(tmp_path, log, "nftables")
    with NetnsPair() as net:
        daemon = NsSentinel(net, cfg, prefix=("setpriv", "--bounding-set=-net_admin", "--"))
        daemon.wait_log("firewall cannot be changed")
        daemon.wait_log("running with")
        with log.open("a") as fh:
            fh.write(failed_logins(net.attacker.ipv4, 4000))
        wait_until(lambda: any(r["event.outcome"] == "failure" for r in responses(tmp_path)), timeout=15)
        (failed,) = [r for r in responses(tmp_path) if r["event.action"] == "ban"]
        assert failed["sentinel.firewall.pending"] is True and "Operation not permitted" in failed["error.message"]
        listing = io.StringIO()
        assert bans_command(bans_args("list"), state, listing) == 0
        assert "FIREWALL ERROR" in listing.getvalue() and "1 not yet in the kernel" in listing.getvalue()
        # Retried with backoff (0.2, 0.4, 0.8, 1, 1 … s), and still running.
        wait_until(lambda: request(socket_path(state), "bans.list")["status"]["failures"] >= 4, timeout=10)
        assert daemon.proc.poll() is None, daemon.log()
        assert daemon.stop() == 0


_LISTENER = """
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 0))
s.listen(64)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    c.close()
"""
