"""The firewall responder: backends on the real kernel (inside test namespaces), the ban manager,
the control socket and ``sentinel bans``.

Kernel tests run the backend in the defender namespace of a :class:`~tests.netns.NetnsPair` by
switching one worker thread there (``setns`` is per thread; threads and programs it starts stay
there), and probe with TCP connects from a thread in the attacker namespace.  Nothing touches the
root namespace; deleting the namespaces removes every table, chain and set.  They need root:
under ``CI=true`` a missing prerequisite fails, elsewhere it skips.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import os
import shutil
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

from sentinel.bans_cli import EXIT_NO_DAEMON, bans_command
from sentinel.control import CommandError, ControlServer, ControlUnavailable, Peer, request, socket_path
from sentinel.engine.allowlist import Allowlist
from sentinel.event import Event
from sentinel.responders.firewall import make_backend
from sentinel.responders.firewall.backend import Backend, BackendError, Element, maximal, normalize
from sentinel.responders.firewall.manager import BanManager, BanRequest, refusal_reason
from sentinel.responders.firewall.responder import FirewallResponder
from sentinel.responders.firewall.settings import FirewallSettings
from tests.conftest import wait_until
from tests.netns import NetnsPair, Side, netns_problem

T = TypeVar("T")
BACKENDS = ("nftables", "iptables")
CLONE_NEWNET = 0x40000000

# -- helpers shared with test_bans_e2e ----------------------------------------------------------------


def firewall_problem(backend: str) -> str | None:
    """Why ``backend`` cannot be tested here (None if it can)."""
    problem = netns_problem()
    if problem:
        return problem
    if backend == "nftables":
        return None if shutil.which("nft") else "nft not found (apt-get install nftables)"
    if shutil.which("ipset") is None:
        return "ipset not found (apt-get install ipset)"
    try:
        import iptc  # noqa: F401
        import pyroute2  # noqa: F401
    except Exception as exc:
        return f"python-iptables / pyroute2 unusable: {exc} (apt-get install iptables; pip install -e .)"
    return None


def require_firewall(backend: str) -> None:
    """Skip without the prerequisites; under ``CI=true`` fail instead."""
    problem = firewall_problem(backend)
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI prerequisite missing: {problem}")
    pytest.skip(problem)


def _setns(netns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {netns}: {os.strerror(err)}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def inside(side: Side) -> Iterator[ThreadPoolExecutor]:
    """A one-thread executor whose thread lives in ``side``'s network namespace."""
    ex = ThreadPoolExecutor(1, thread_name_prefix=f"netns-{side.netns}", initializer=_setns, initargs=(side.netns,))
    try:
        yield ex
    finally:
        ex.shutdown(wait=True)


def call(ex: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
    return ex.submit(fn, *args).result(timeout=60)


class Listener:
    """A dual-stack TCP listener in the defender namespace that accepts and closes connections."""

    def __init__(self, defender: ThreadPoolExecutor) -> None:
        self.sock = call(defender, self._open)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    @staticmethod
    def _open() -> socket.socket:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", 0))
        s.listen(64)
        return s

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def reachable(attacker: ThreadPoolExecutor, host: str, port: int, timeout: float = 0.4) -> bool:
    """True if a TCP connect from the attacker namespace succeeds (False: dropped or rejected)."""

    def connect() -> bool:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return True
        except OSError:
            return False

    return call(attacker, connect)


def fw_settings(backend: str, **changes: Any) -> FirewallSettings:
    return FirewallSettings.model_validate({"backend": backend, "retry_initial": 0.1, "retry_max": 0.5, **changes})


class Events:
    """Collects the response events a manager emits (its ``emit`` callback)."""

    def __init__(self) -> None:
        self.items: list[Event] = []
        self._lock = threading.Lock()

    def __call__(self, events: list[Event]) -> None:
        with self._lock:
            self.items.extend(events)

    def find(self, action: str, outcome: str | None = None, target: str | None = None) -> list[Event]:
        with self._lock:
            return [
                e
                for e in self.items
                if e["event.action"] == action
                and (outcome is None or e["event.outcome"] == outcome)
                and (target is None or e["sentinel.response"]["target"] == target)
            ]


# -- pure parts ---------------------------------------------------------------------------------------


def test_normalize_and_maximal() -> None:
    assert normalize("198.51.100.7") == "198.51.100.7"
    assert normalize("198.51.100.7/32") == "198.51.100.7"
    assert normalize("198.51.100.7/24") == "198.51.100.0/24"
    assert normalize("2001:db8:a::5/64") == "2001:db8:a::/64"
    assert normalize("2001:DB8::1") == "2001:db8::1"
    for bad in ("", "junk", "1.2.3.4 5", "1.2.3.4/33", "1.2.3.4;rm"):
        with pytest.raises(ValueError):
            normalize(bad)
    elements = [
        Element("10.0.0.0/8", 5),
        Element("10.1.0.0/16", 50),
        Element("10.0.0.1", 5),
        Element("2001:db8::/48"),
        Element("2001:db8:0:1::/64"),
        Element("2001:db8:1::/64"),
    ]
    assert sorted(e.target for e in maximal(elements)) == ["10.0.0.0/8", "10.0.0.1", "2001:db8:1::/64", "2001:db8::/48"]


def test_settings_are_strict() -> None:
    s = FirewallSettings.model_validate({"backend": "iptables", "default_duration": "2h", "retry_max": "1m"})
    assert s.default_duration == 7200 and s.retry_max == 60 and s.max_elements >= 1_048_576
    for bad in ({"backend": "pf"}, {"tabel": "x"}, {"set_prefix": "a b"}, {"max_elements": 10}, {"chain": "-j"}):
        with pytest.raises(ValueError):
            FirewallSettings.model_validate(bad)
    with pytest.raises(ValueError):
        s.backend = "nftables"


def test_refusal_reasons() -> None:
    assert refusal_reason("127.0.0.1") == "loopback address"
    assert refusal_reason("::1") == "loopback address"
    assert refusal_reason("fe80::1") == "link-local address"
    assert "allowlisted" in refusal_reason("192.0.2.0/24")


# -- the manager, on a fake backend -------------------------------------------------------------------


class FakeBackend(Backend):
    """Records what the manager asks; fails while ``error`` is set."""

    name = "fake"
    overlapping_networks: ClassVar[bool] = True
    max_timeout: ClassVar[int | None] = None

    def __init__(self) -> None:
        self.kernel: dict[str, int | None] = {}
        self.calls: list[tuple[str, Any]] = []
        self.error: str | None = None

    def _check(self, what: str, arg: Any) -> None:
        self.calls.append((what, arg))
        if self.error:
            raise BackendError(self.error)

    def describe(self) -> str:
        return "fake: a dict"

    def setup(self) -> None:
        self._check("setup", None)

    def restore(self, elements: Sequence[Element]) -> None:
        self._check("restore", list(elements))
        self.kernel = {e.target: e.timeout for e in elements}

    def add(self, elements: Sequence[Element]) -> None:
        self._check("add", list(elements))
        self.kernel.update({e.target: e.timeout for e in elements})

    def delete(self, targets: Sequence[str]) -> None:
        self._check("delete", list(targets))
        for t in targets:
            self.kernel.pop(t, None)

    def members(self) -> dict[str, int | None]:
        return dict(self.kernel)

    def teardown(self) -> None:
        self.kernel.clear()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Callable[..., tuple[BanManager, FakeBackend, Events]]]:
    """Start managers on fake backends; all are stopped afterwards."""
    started: list[BanManager] = []

    def start(backend: FakeBackend | None = None, **changes: Any) -> tuple[BanManager, FakeBackend, Events]:
        backend = backend or FakeBackend()
        events = Events()
        m = BanManager(
            fw_settings("nftables", **changes), tmp_path / "firewall.db", backend, Allowlist(["192.0.2.0/24"], own=[])
        )
        m.start(events)
        assert m.reconciled.wait(5)
        started.append(m)
        return m, backend, events

    yield start
    for m in started:
        m.stop(5)


def test_bans_go_to_state_and_kernel_and_are_reported(
    fake: Callable[..., tuple[BanManager, FakeBackend, Events]],
) -> None:
    m, backend, events = fake()
    finding = {
        "@timestamp": "2026-03-01T10:00:00Z",
        "event.id": "f1",
        "rule.id": "ssh-brute-force",
        "source.ip": "203.0.113.7",
    }
    m.submit(BanRequest("ban", "203.0.113.7", duration=600, offence=2, origin="rule:ssh-brute-force", finding=finding))
    m.submit(BanRequest("ban", "2001:db8:bad::9/64", duration=60))
    assert m.flush()
    assert backend.kernel["203.0.113.7"] in (599, 600) and backend.kernel["2001:db8:bad::/64"] in (59, 60)
    (ev,) = events.find("ban", "success", "203.0.113.7")
    assert ev["sentinel.finding_id"] == "f1" and ev["rule.id"] == "ssh-brute-force"
    assert ev["sentinel.response"]["offence"] == 2 and ev["sentinel.response"]["duration"] in (599, 600)
    assert ev["event.end"] > ev["event.start"] and ev["sentinel.dry_run"] is False
    assert ev["sentinel.firewall.backend"] == "fake" and ev["event.id"]
    # A shorter request does not shorten a ban; a longer one extends it.
    m.submit(BanRequest("ban", "203.0.113.7", duration=10))
    m.submit(BanRequest("ban", "2001:db8:bad::/64", duration=3600))
    assert m.flush()
    assert backend.kernel["203.0.113.7"] in (599, 600) and backend.kernel["2001:db8:bad::/64"] in (3599, 3600)
    assert events.find("ban", "success", "203.0.113.7")[-1]["event.reason"] == "already banned"
    m.submit(BanRequest("unban", "203.0.113.7", origin="cli:uid=0", user_id=0))
    assert m.flush()
    assert "203.0.113.7" not in backend.kernel
    (unban,) = events.find("unban", "success", "203.0.113.7")
    assert unban["user.id"] == "0" and unban["event.reason"] == "removed"
    assert {b.target for b in m.snapshot()} == {"2001:db8:bad::/64"}


def test_never_bans_protected_addresses(fake: Callable[..., tuple[BanManager, FakeBackend, Events]]) -> None:
    m, backend, events = fake()
    protected = ["127.0.0.1", "::1", "fe80::1", "169.254.1.1", "192.0.2.9", "192.0.0.0/16", "0.0.0.0/0", "::/0", "junk"]
    replies = []
    for target in protected:
        r = BanRequest("ban", target, duration=60, origin="cli:uid=0", reply=Future())
        replies.append(r.reply)
        m.submit(r)
    assert m.flush()
    assert all(f is not None and f.result()["outcome"] == "refused" for f in replies)
    refused = events.find("ban", "failure")
    assert len(refused) == len(protected)
    assert {e["event.reason"] for e in refused} >= {"loopback address", "link-local address", "invalid target"}
    assert not any(c[0] == "add" for c in backend.calls) and backend.kernel == {}
    assert m.snapshot() == []


def test_permanent_bans_by_policy_and_request(fake: Callable[..., tuple[BanManager, FakeBackend, Events]]) -> None:
    m, backend, events = fake(permanent_after=3)
    m.submit(BanRequest("ban", "203.0.113.1", duration=60, offence=2))
    m.submit(BanRequest("ban", "203.0.113.2", duration=60, offence=3))
    m.submit(BanRequest("ban", "203.0.113.3", permanent=True))
    assert m.flush()
    assert backend.kernel["203.0.113.1"] is not None
    assert backend.kernel["203.0.113.2"] is None and backend.kernel["203.0.113.3"] is None
    (ev,) = events.find("ban", "success", "203.0.113.2")
    assert ev["sentinel.response"]["permanent"] is True and "event.end" not in ev


def test_failure_is_reported_retried_with_backoff_and_recovered(
    fake: Callable[..., tuple[BanManager, FakeBackend, Events]],
) -> None:
    backend = FakeBackend()
    backend.error = "nft: Operation not permitted"
    m, _, events = fake(backend)
    assert not m.healthy and m.status()["last_error"] == "nft: Operation not permitted"
    reply = BanRequest("ban", "203.0.113.5", duration=60, reply=Future())
    m.submit(reply)
    assert m.flush()
    assert reply.reply is not None and reply.reply.result()["outcome"] == "pending"
    (failed,) = events.find("ban", "failure", "203.0.113.5")
    assert failed["error.message"] == "nft: Operation not permitted" and failed["sentinel.firewall.pending"] is True
    assert m.status()["pending"] == 1
    wait_until(lambda: m.stats["failures"] >= 4, timeout=5)  # 0.1, 0.2, 0.4, 0.5 s …
    backend.error = None
    wait_until(lambda: bool(events.find("ban", "success", "203.0.113.5")), timeout=5)
    assert backend.kernel["203.0.113.5"] is not None
    assert events.find("ban", "success", "203.0.113.5")[0]["event.reason"] == "applied after retry"
    assert m.status()["healthy"] is True and m.status()["pending"] == 0


def test_overlapping_networks_reload_sets_that_refuse_overlaps(
    fake: Callable[..., tuple[BanManager, FakeBackend, Events]],
) -> None:
    class NoOverlap(FakeBackend):
        overlapping_networks = False

    m, backend, _ = fake(NoOverlap())
    m.submit(BanRequest("ban", "2001:db8:1::/64", duration=60))
    m.submit(BanRequest("ban", "2001:db8:2::/64", duration=60))
    assert m.flush()
    assert [c[0] for c in backend.calls].count("restore") == 1  # the start only: /64s never overlap
    m.submit(BanRequest("ban", "2001:db8::/32", duration=5))
    assert m.flush()
    assert [c[0] for c in backend.calls].count("restore") == 2
    m.submit(BanRequest("unban", "2001:db8::/32"))
    assert m.flush()
    assert [c[0] for c in backend.calls].count("restore") == 3


def test_expiry_is_purged_and_reported_and_long_bans_are_refreshed(
    fake: Callable[..., tuple[BanManager, FakeBackend, Events]],
) -> None:
    class Capped(FakeBackend):
        max_timeout = 100

    m, backend, events = fake(Capped())
    m.submit(BanRequest("ban", "203.0.113.8", duration=1))
    m.submit(BanRequest("ban", "203.0.113.9", duration=1000))
    assert m.flush()
    assert backend.kernel["203.0.113.9"] == 100  # capped to what the kernel accepts
    wait_until(lambda: bool(events.find("unban", "success", "203.0.113.8")), timeout=5)
    assert events.find("unban", "success", "203.0.113.8")[0]["event.reason"] == "expired"
    assert {b.target for b in m.snapshot()} == {"203.0.113.9"}
    backend.kernel.clear()
    m._maintain(time.time() + 60)  # past half the capped timeout: refreshed
    assert backend.kernel["203.0.113.9"] is not None


def test_state_survives_a_restart_and_expired_bans_are_reported(tmp_path: Path) -> None:
    events = Events()
    settings = fw_settings("nftables")
    m = BanManager(settings, tmp_path / "firewall.db", FakeBackend(), Allowlist([], own=[]))
    m.start(events)
    m.submit(BanRequest("ban", "203.0.113.10", duration=1))
    m.submit(BanRequest("ban", "203.0.113.11", duration=300))
    m.submit(BanRequest("ban", "203.0.113.12", permanent=True))
    assert m.flush()
    m.stop(5)
    time.sleep(1.1)
    backend = FakeBackend()
    again = Events()
    m2 = BanManager(settings, tmp_path / "firewall.db", backend, Allowlist([], own=[]))
    m2.start(again)
    assert m2.reconciled.wait(5)
    m2.stop(5)
    what, elements = backend.calls[0]
    assert what == "restore"
    restored = {e.target: e.timeout for e in elements}
    assert set(restored) == {"203.0.113.11", "203.0.113.12"}
    assert restored["203.0.113.12"] is None and 295 <= (restored["203.0.113.11"] or 0) <= 299
    assert again.find("unban", "success", "203.0.113.10")[0]["event.reason"] == "expired"


# -- the control socket and `sentinel bans` -------------------------------------------------------------


def test_control_socket_dispatches_json_lines(tmp_path: Path) -> None:
    server = ControlServer(socket_path(tmp_path))
    seen: list[Peer] = []

    def echo(args: dict[str, Any], peer: Peer) -> Any:
        seen.append(peer)
        if args.get("fail"):
            raise CommandError("asked to fail")
        return {"echo": args}

    server.register("echo", echo)
    server.start()
    try:
        assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o660
        assert request(server.path, "echo", {"x": 1}) == {"echo": {"x": 1}}
        assert seen[0].uid == os.getuid() and seen[0].pid == os.getpid()
        assert "echo" in request(server.path, "commands")
        with pytest.raises(CommandError, match="asked to fail"):
            request(server.path, "echo", {"fail": True})
        with pytest.raises(CommandError, match="unknown command"):
            request(server.path, "nope")
        with socket.socket(socket.AF_UNIX) as raw:  # several requests on one connection, and garbage
            raw.connect(str(server.path))
            raw.sendall(b'not json\n{"command": "echo", "args": {"y": 2}}\n')
            reader = raw.makefile("rb")
            assert b"not JSON" in reader.readline()
            assert b'"y":2' in reader.readline()
        second = ControlServer(server.path)
        with pytest.raises(OSError, match="another sentinel daemon"):
            second.start()
    finally:
        server.close()
    assert not server.path.exists()
    with pytest.raises(ControlUnavailable):
        request(server.path, "echo")
    # A stale socket file (a killed daemon) is replaced.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(server.path))
    stale.close()
    third = ControlServer(server.path)
    third.register("echo", echo)
    third.start()
    try:
        assert request(third.path, "echo", {}) == {"echo": {}}
    finally:
        third.close()


def bans_args(action: str, target: str | None = None, **extra: Any) -> argparse.Namespace:
    """What ``sentinel bans ACTION`` parses to."""
    values: dict[str, Any] = {"duration": None, "permanent": False, "json": False, "limit": None, **extra}
    return argparse.Namespace(bans_command=action, target=target, **values)


def test_bans_cli_through_the_control_socket(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    backend = FakeBackend()
    responder = FirewallResponder(
        fw_settings("nftables"), tmp_path, Allowlist(["192.0.2.0/24"], own=[]), backend=backend
    )
    events = Events()
    responder.start(events)
    server = ControlServer(socket_path(tmp_path))
    for name, handler in responder.control_commands().items():
        server.register(name, handler)
    server.start()
    try:
        out = io.StringIO()
        assert bans_command(bans_args("add", "203.0.113.20", duration="1h"), tmp_path, out) == 0
        assert "banned 203.0.113.20 for 3600 s" in out.getvalue()
        assert bans_command(bans_args("add", "2001:db8:bad::/64", permanent=True), tmp_path, out) == 0
        assert backend.kernel["2001:db8:bad::/64"] is None
        assert bans_command(bans_args("add", "127.0.0.1"), tmp_path, out) == 1
        assert bans_command(bans_args("add", "192.0.2.0/28"), tmp_path, out) == 1
        assert bans_command(bans_args("add", "203.0.113.21", duration="soon"), tmp_path, out) == 1
        err = capsys.readouterr().err
        assert "refused: loopback address" in err and "refused: allowlisted" in err and "invalid duration" in err
        listing = io.StringIO()
        assert bans_command(bans_args("list"), tmp_path, listing) == 0
        text = listing.getvalue()
        assert "fake: a dict" in text and "203.0.113.20" in text and "permanent" in text and "cli:uid=" in text
        assert "2 active bans (1 permanent, 0 not yet in the kernel)" in text
        assert bans_command(bans_args("remove", "203.0.113.20"), tmp_path, out) == 0
        assert bans_command(bans_args("remove", "203.0.113.20"), tmp_path, out) == 1
        assert "not banned" in capsys.readouterr().err
        refused = [e for e in events.find("ban", "failure") if e.get("event.reason")]
        assert {e["sentinel.response"]["target"] for e in refused} == {"127.0.0.1", "192.0.2.0/28"}
        assert all(e["sentinel.firewall.origin"].startswith("cli:uid=") for e in refused)
    finally:
        server.close()
        responder.stop(5)
    # No daemon: changes are refused with a clear message, the list shows the saved state.
    assert bans_command(bans_args("add", "203.0.113.22"), tmp_path, io.StringIO()) == EXIT_NO_DAEMON
    assert "is `sentinel run` running? Nothing was changed." in capsys.readouterr().err
    listing = io.StringIO()
    assert bans_command(bans_args("list"), tmp_path, listing) == 0
    assert "2001:db8:bad::/64" in listing.getvalue() and "daemon not running" in listing.getvalue()
    assert "showing the saved ban state" in capsys.readouterr().err
    assert bans_command(bans_args("list"), tmp_path / "nothing", io.StringIO()) == EXIT_NO_DAEMON


def test_bans_cli_when_the_daemon_has_no_firewall(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = ControlServer(socket_path(tmp_path))
    server.start()
    try:
        assert bans_command(bans_args("list"), tmp_path, io.StringIO()) == 1
        assert "no firewall responder" in capsys.readouterr().err
    finally:
        server.close()


# -- real kernels, inside namespaces ---------------------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[NetnsPair]:
    with NetnsPair() as net:
        yield net


@contextlib.contextmanager
def running_manager(
    net: NetnsPair, settings: FirewallSettings, state: Path, events: Events
) -> Iterator[tuple[BanManager, ThreadPoolExecutor]]:
    """A real manager whose thread (and backend) lives in the defender namespace."""
    with inside(net.defender) as dex:
        backend = call(dex, make_backend, settings)
        own = [net.defender.ipv4, net.defender.ipv6]
        manager = BanManager(settings, state, backend, Allowlist([], own=own))
        call(dex, manager.start, events)
        try:
            assert manager.reconciled.wait(15)
            yield manager, dex
        finally:
            manager.stop(5)


@pytest.mark.root
@pytest.mark.parametrize("backend", BACKENDS)
def test_ban_drops_packets_until_it_expires_or_is_removed(backend: str, netns: NetnsPair, tmp_path: Path) -> None:
    require_firewall(backend)
    net = netns
    events = Events()
    v4, v6 = net.defender.ipv4, net.defender.ipv6
    attacker_net6 = "2001:db8:a::/64"
    with (
        running_manager(net, fw_settings(backend), tmp_path / "fw.db", events) as (manager, dex),
        inside(net.attacker) as aex,
    ):
        assert manager.healthy, manager.last_error
        listener = Listener(dex)
        try:
            assert reachable(aex, v4, listener.port) and reachable(aex, v6, listener.port)
            # Timed bans: dropped now, flowing again once the kernel expires the elements.
            manager.submit_many(
                [BanRequest("ban", net.attacker.ipv4, duration=2), BanRequest("ban", attacker_net6, duration=2)]
            )
            assert manager.flush()
            banned_at = time.monotonic()
            assert not reachable(aex, v4, listener.port)
            assert not reachable(aex, v6, listener.port)
            wait_until(lambda: reachable(aex, v4, listener.port) and reachable(aex, v6, listener.port), timeout=8)
            assert time.monotonic() - banned_at >= 1.5
            # Permanent bans: dropped until removed.
            manager.submit_many(
                [BanRequest("ban", net.attacker.ipv4, permanent=True), BanRequest("ban", attacker_net6, permanent=True)]
            )
            assert manager.flush()
            kernel = call(dex, manager.backend.members)
            assert kernel == {net.attacker.ipv4: None, attacker_net6: None}
            assert not reachable(aex, v4, listener.port) and not reachable(aex, v6, listener.port)
            manager.submit_many([BanRequest("unban", net.attacker.ipv4), BanRequest("unban", attacker_net6)])
            assert manager.flush()
            wait_until(lambda: reachable(aex, v4, listener.port) and reachable(aex, v6, listener.port), timeout=5)
        finally:
            listener.close()
    assert len(events.find("ban", "success")) == 4
    assert len(events.find("unban", "success")) >= 2


@pytest.mark.root
@pytest.mark.parametrize("backend", BACKENDS)
def test_restart_restores_bans_and_removes_stale_members(backend: str, netns: NetnsPair, tmp_path: Path) -> None:
    require_firewall(backend)
    settings = fw_settings(backend)
    state = tmp_path / "fw.db"
    events = Events()
    with running_manager(netns, settings, state, events) as (manager, dex):
        manager.submit_many(
            [
                BanRequest("ban", "203.0.113.30", duration=120),
                BanRequest("ban", "2001:db8:bad::/64", permanent=True),
                BanRequest("ban", "203.0.113.31", duration=1),
            ]
        )
        assert manager.flush()
        # The kernel forgets (a flush, a reboot) and holds something Sentinel never banned.
        call(dex, manager.backend.restore, [Element("198.51.100.99", 600)])
        assert set(call(dex, manager.backend.members)) == {"198.51.100.99"}
    time.sleep(1.2)  # 203.0.113.31 expires while the daemon is down
    again = Events()
    with running_manager(netns, settings, state, again) as (manager, dex):
        kernel = call(dex, manager.backend.members)
        assert set(kernel) == {"203.0.113.30", "2001:db8:bad::/64"}
        assert kernel["2001:db8:bad::/64"] is None
        assert 110 <= (kernel["203.0.113.30"] or 0) <= 120  # the remaining time, not a fresh 120 s
        assert again.find("unban", "success", "203.0.113.31")[0]["event.reason"] == "expired"
        manager.stop(5)  # no retry may race the teardown
        call(dex, manager.backend.teardown)
        assert call(dex, _kernel_objects) == ""


def _kernel_objects() -> str:
    """Sentinel's tables, chains and sets in the current namespace ('' when none)."""
    import subprocess

    out = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=False).stdout
    found = [line for line in out.splitlines() if "sentinel" in line.lower()]
    for tool in ("iptables-legacy-save", "ip6tables-legacy-save"):
        if shutil.which(tool):
            text = subprocess.run([tool], capture_output=True, text=True, check=False).stdout
            found += [line for line in text.splitlines() if "SENTINEL" in line]
    if shutil.which("ipset"):
        text = subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True, check=False).stdout
        found += [line for line in text.splitlines() if line.startswith("sentinel")]
    return "\n".join(found)


@pytest.mark.root
@pytest.mark.parametrize(("backend", "broken"), [("nftables", "nft_path"), ("iptables", "ipset_path")])
def test_backend_failure_is_reported_retried_and_recovered(
    backend: str, broken: str, netns: NetnsPair, tmp_path: Path
) -> None:
    require_firewall(backend)
    settings = fw_settings(backend, **{broken: str(tmp_path / "missing-program")})
    events = Events()
    with running_manager(netns, settings, tmp_path / "fw.db", events) as (manager, dex):
        assert not manager.healthy and "missing-program: program not found" in (manager.last_error or "")
        manager.submit(BanRequest("ban", netns.attacker.ipv4, duration=60))
        assert manager.flush()
        (failed,) = events.find("ban", "failure", netns.attacker.ipv4)
        assert failed["sentinel.firewall.pending"] is True and "program not found" in failed["error.message"]
        wait_until(lambda: manager.stats["failures"] >= 3, timeout=5)
        # The operator installs the program: the next retry puts the waiting ban in place.
        fixed = fw_settings(backend)
        if backend == "nftables":
            manager.backend.nft = fixed.nft_path  # type: ignore[attr-defined]
        else:
            manager.backend.settings = fixed  # type: ignore[attr-defined]
        wait_until(lambda: bool(events.find("ban", "success", netns.attacker.ipv4)), timeout=5)
        assert netns.attacker.ipv4 in call(dex, manager.backend.members)
        manager.stop(5)  # no retry may race the teardown
        call(dex, manager.backend.teardown)


@pytest.mark.root
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_full_set_is_reported_and_the_bans_are_kept(backend: str, netns: NetnsPair, tmp_path: Path) -> None:
    require_firewall(backend)
    state = tmp_path / "fw.db"
    with running_manager(netns, fw_settings(backend), state, Events()) as (manager, _):
        assert manager.healthy  # sets created with the default size
    small = fw_settings(backend, max_elements=1024)
    events = Events()
    with running_manager(netns, small, state, events) as (manager, dex):
        assert manager.healthy, manager.last_error  # a changed size is no reason to fail
        manager.submit_many([BanRequest("ban", f"10.9.{i // 250}.{i % 250 + 1}", duration=60) for i in range(1000)])
        assert manager.flush() and manager.healthy
        manager.submit_many([BanRequest("ban", f"10.8.0.{i + 1}", duration=60) for i in range(30)])
        assert manager.flush()
        assert manager.status()["healthy"] is False
        assert "raise [firewall] max_elements" in (manager.last_error or "")
        assert len(events.find("ban", "failure")) == 30 and manager.status()["pending"] == 30
        assert len(call(dex, manager.backend.members)) >= 1000  # what was in stays in
        manager.stop(5)  # no retry may race the teardown
        call(dex, manager.backend.teardown)


def test_metrics_families(tmp_path: Path) -> None:
    responder = FirewallResponder(fw_settings("nftables"), tmp_path, Allowlist([], own=[]), backend=FakeBackend())
    responder.start(Events())
    try:
        responder.manager.submit(BanRequest("ban", "127.0.0.1"))
        responder.manager.submit(BanRequest("ban", "203.0.113.40", duration=60))
        assert responder.manager.flush()
        values = {(s.name, tuple(s.labels.values())): s.value for m in responder.metrics() for s in m.samples}
    finally:
        responder.stop(5)
    assert values[("sentinel_firewall_up", ())] == 1 and values[("sentinel_firewall_bans", ())] == 1
    assert values[("sentinel_firewall_changes_total", ("refused",))] == 1
    assert values[("sentinel_firewall_changes_total", ("bans",))] == 1


# -- reconciliation and the bounded request queue ----------------------------------------------------


def test_reconciliation_repairs_drift_and_records_it(
    fake: Callable[..., tuple[BanManager, FakeBackend, Events]],
) -> None:
    m, backend, events = fake()
    m.submit_many(
        [BanRequest("ban", "203.0.113.20", duration=600), BanRequest("ban", "2001:db8:bad::/64", permanent=True)]
    )
    assert m.flush()
    assert m.verify()["outcome"] == "ok"
    assert not events.find("firewall-repaired")
    # Someone flushed a set, added a member by hand and made a permanent ban expire.
    del backend.kernel["203.0.113.20"]
    backend.kernel["198.51.100.7"] = 300
    backend.kernel["2001:db8:bad::/64"] = 60
    reply = m.verify()
    assert reply["outcome"] == "repaired"
    assert (reply["missing"], reply["unexpected"], reply["weakened"]) == (
        ["203.0.113.20"],
        ["198.51.100.7"],
        ["2001:db8:bad::/64"],
    )
    assert set(backend.kernel) == {"203.0.113.20", "2001:db8:bad::/64"}
    assert backend.kernel["2001:db8:bad::/64"] is None and 590 <= (backend.kernel["203.0.113.20"] or 0) <= 600
    (event,) = events.find("firewall-repaired", "success")
    assert event["sentinel.firewall.drift"] == {"missing": 1, "unexpected": 1, "weakened": 1}
    assert event["sentinel.firewall.missing"] == ["203.0.113.20"] and event["event.category"] == ["configuration"]
    assert m.stats["repairs"] == 1 and m.stats["drift"] == 3
    assert m.verify()["outcome"] == "ok"


def test_reconciliation_is_a_scheduled_job_whose_failures_count(tmp_path: Path) -> None:
    class Unlistable(FakeBackend):
        def members(self) -> dict[str, int | None]:
            if self.error:
                raise BackendError(self.error)
            return super().members()

    backend = Unlistable()
    responder = FirewallResponder(fw_settings("nftables"), tmp_path, Allowlist([], own=[]), backend=backend)
    (job,) = responder.jobs()
    assert job.id == "firewall-reconcile" and job.interval == 300
    off = FirewallResponder(fw_settings("nftables", reconcile_interval=0), tmp_path, Allowlist([], own=[]), backend)
    assert off.jobs() == []
    events = Events()
    responder.start(events)
    try:
        assert responder.manager.reconciled.wait(5)
        job.func()  # fine: nothing to repair
        backend.error = "nft: netlink: Operation not permitted"
        with pytest.raises(RuntimeError, match="cannot list the firewall's members"):
            job.func()
    finally:
        responder.stop(5)


def test_a_hung_firewall_thread_refuses_new_bans_and_says_so(
    fake: Callable[..., tuple[BanManager, FakeBackend, Events]],
) -> None:
    class Hung(FakeBackend):
        def __init__(self) -> None:
            super().__init__()
            self.entered = threading.Event()
            self.gate = threading.Event()

        def add(self, elements: Sequence[Element]) -> None:
            self.entered.set()
            assert self.gate.wait(10)
            super().add(elements)

    backend = Hung()
    m, _, events = fake(backend, queue_size=100)
    try:
        m.submit(BanRequest("ban", "203.0.113.1", duration=60))
        assert backend.entered.wait(5)  # the firewall thread now hangs in the kernel call
        m.submit_many([BanRequest("ban", f"198.51.100.{i}", duration=60) for i in range(1, 101)])
        refused = [BanRequest("ban", f"192.0.2.{i}", duration=60, origin="rule:r", reply=Future()) for i in range(5)]
        for r in refused:
            m.submit(r)  # the queue holds 100 requests: refused at once, never silently
        for r in refused:
            assert r.reply is not None and r.reply.result(1)["outcome"] == "failed"
        failed = events.find("ban", "failure")
        assert len(failed) == 5 and {e["event.reason"] for e in failed} == {"queue full"}
        assert m.queue_stats.overflowing and m.queue_stats.dropped_total == {"rule:r": 5}
    finally:
        backend.gate.set()
    assert m.flush()
    assert len(backend.kernel) == 101 and not any(t.startswith("192.0.2.") for t in backend.kernel)
    (overflow,) = [e for e in events.items if e["event.action"] == "queue-overflow"]
    assert overflow["sentinel.queue.name"] == "firewall" and overflow["sentinel.queue.dropped"] == 5
    assert m.stats["dropped"] == 5 and not m.queue_stats.overflowing


@pytest.mark.root
@pytest.mark.parametrize("backend", BACKENDS)
def test_reconciliation_restores_a_wiped_kernel_set(backend: str, netns: NetnsPair, tmp_path: Path) -> None:
    require_firewall(backend)
    events = Events()
    with (
        running_manager(netns, fw_settings(backend), tmp_path / "fw.db", events) as (manager, dex),
        inside(netns.attacker) as aex,
    ):
        listener = Listener(dex)
        try:
            manager.submit_many(
                [
                    BanRequest("ban", netns.attacker.ipv4, duration=120),
                    BanRequest("ban", "2001:db8:bad::/64", permanent=True),
                ]
            )
            assert manager.flush()
            assert manager.verify()["outcome"] == "ok"
            assert not reachable(aex, netns.defender.ipv4, listener.port)
            # The kernel loses the bans (a flush by hand) and gains a member Sentinel never added.
            call(dex, manager.backend.restore, [Element("198.51.100.99", 600)])
            assert reachable(aex, netns.defender.ipv4, listener.port)
            reply = manager.verify()
            assert reply["outcome"] == "repaired", reply
            assert reply["missing"] == sorted([netns.attacker.ipv4, "2001:db8:bad::/64"])
            assert reply["unexpected"] == ["198.51.100.99"]
            kernel = call(dex, manager.backend.members)
            assert set(kernel) == {netns.attacker.ipv4, "2001:db8:bad::/64"}
            assert kernel["2001:db8:bad::/64"] is None
            assert not reachable(aex, netns.defender.ipv4, listener.port)
            assert len(events.find("firewall-repaired", "success")) == 1
        finally:
            listener.close()
        manager.stop(5)
        call(dex, manager.backend.teardown)
