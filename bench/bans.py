#!/usr/bin/env python3
"""Firewall bans, measured on the real kernel inside a network namespace (root only):

* latency: from the write of the deciding (5th) failed-login line to the ban being in the kernel
  set, through a real ``sentinel run`` tailing a log file, p50/p99 over N bans (default 1,000),
  one deciding line every 20 ms; "in the kernel" is the response event's ``event.start``,
  stamped when the backend's change returned (target p99 ≤ 50 ms);
* insertion: one batch of 10,000 bans through the ban manager (state + kernel + events), and
  the backend's bulk add alone (target ≥ 10k bans/s);
* restore: 100,000 active bans in the state, reloaded into emptied kernel sets when the manager
  starts (target ≤ 2 s).

Usage:  .venv/bin/python bench/bans.py [--bans N] [--restore N] [--backends nftables,iptables]
Writes bench/out/bans.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))

from sentinel.engine.allowlist import Allowlist  # noqa: E402
from sentinel.responders.firewall import make_backend  # noqa: E402
from sentinel.responders.firewall.backend import Element  # noqa: E402
from sentinel.responders.firewall.manager import BanManager, BanRequest  # noqa: E402
from sentinel.responders.firewall.settings import FirewallSettings  # noqa: E402
from sentinel.responders.firewall.state import Ban, BanStore  # noqa: E402
from tests.netns import NetnsPair  # noqa: E402

T = TypeVar("T")


def _setns(netns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def inside(netns: str) -> Iterator[ThreadPoolExecutor]:
    """A thread in ``netns`` (threads and programs it starts stay there)."""
    ex = ThreadPoolExecutor(1, initializer=_setns, initargs=(netns,))
    try:
        yield ex
    finally:
        ex.shutdown(wait=True)


def call(ex: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
    return ex.submit(fn, *args).result(timeout=600)


def address(i: int) -> str:
    return f"10.77.{i // 250}.{i % 250 + 1}"


def line(i: int, attempt: int) -> str:
    pid = 100_000 + i * 5 + attempt
    return (
        f"Nov 22 10:00:{attempt:02d} web-01 sshd[{pid}]: Failed password for invalid user u{i} "
        f"from {address(i)} port {20000 + attempt} ssh2\n"
    )


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def latency(net: NetnsPair, backend: str, n: int, work: Path) -> dict[str, float]:
    """Deciding-line write → kernel, through `sentinel run` in the defender namespace."""
    log = work / "auth.log"
    state = work / "state"
    cfg = work / "sentinel.toml"
    cfg.write_text(
        f'[daemon]\nstate_dir = "{state}"\n'
        "[collectors]\npoll_interval = 0.1\n[ports]\nenabled = false\n[metrics]\nenabled = false\n"
        '[geoip]\ndatabase = "off"\n[responders]\ndry_run = false\n'
        f'[firewall]\nbackend = "{backend}"\n'
        f'[[sources]]\ntype = "file"\nname = "auth"\npaths = ["{log}"]\nformat = "syslog"\nstart_at = "beginning"\n'
    )
    log.write_text("".join(line(i, a) for i in range(n) for a in range(4)))
    err = (work / "sentinel.stderr").open("wb")
    daemon = net.popen(
        net.defender,
        [sys.executable, "-m", "sentinel", "run", "-c", str(cfg)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    db = state / "events.db"

    def stored(sql: str) -> list[Any]:
        try:
            with sqlite3.connect(db, timeout=5) as conn:
                return conn.execute(sql).fetchall()
        except sqlite3.OperationalError:
            return []

    def wait(predicate: Callable[[], bool], what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{what}: gave up; daemon log:\n{(work / 'sentinel.stderr').read_text()[-3000:]}")
            time.sleep(0.05)

    wait(lambda: "firewall restored" in (work / "sentinel.stderr").read_text(), "the firewall set-up")
    wait(lambda: len(stored("SELECT 1 FROM events")) >= 4 * n, "the first 4 lines per address")
    written: dict[str, float] = {}
    with log.open("a") as fh:
        for i in range(n):
            fh.write(line(i, 4))
            fh.flush()
            written[address(i)] = time.time()
            time.sleep(0.02)
    query = (
        "SELECT doc FROM events WHERE json_extract(doc, '$.\"event.dataset\"') = 'sentinel.response' "
        "AND json_extract(doc, '$.\"event.action\"') = 'ban'"
    )
    wait(lambda: len(stored(query)) >= n, "all bans")
    took: list[float] = []
    inner: list[float] = []
    for (doc,) in stored(query):
        event = json.loads(doc)
        if event["event.outcome"] != "success":
            raise SystemExit(f"a ban failed: {event.get('message')}")
        target = event["sentinel.response"]["target"]
        took.append((_epoch(event["event.start"]) - written[target]) * 1000)
        inner.append(event["sentinel.firewall.latency_ms"])
    daemon.terminate()
    daemon.wait(30)
    err.close()
    with inside(net.defender.netns) as dex:
        kernel = call(dex, lambda: make_backend(FirewallSettings.model_validate({"backend": backend})).members())
        missing = [a for a in written if a not in kernel]
        if missing:
            raise SystemExit(f"{len(missing)} bans not in the kernel, e.g. {missing[:3]}")
        call(dex, lambda: make_backend(FirewallSettings.model_validate({"backend": backend})).teardown())
    took.sort()
    inner.sort()
    return {
        "p50_ms": statistics.median(took),
        "p99_ms": _p99(took),
        "max_ms": took[-1],
        "responder_p50_ms": statistics.median(inner),
        "responder_p99_ms": _p99(inner),
        "bans": len(took),
    }


def _p99(values: list[float]) -> float:
    return values[max(0, int(len(values) * 0.99) - 1)]


def insertion(net: NetnsPair, backend: str, n: int, work: Path) -> dict[str, float]:
    """One batch of ``n`` bans through the manager, then the backend's bulk add alone."""
    settings = FirewallSettings.model_validate({"backend": backend})
    with inside(net.defender.netns) as dex:
        be = call(dex, make_backend, settings)
        manager = BanManager(settings, work / "insert.db", be, Allowlist([], own=[]))
        call(dex, manager.start, lambda events: None)
        manager.reconciled.wait(60)
        requests = [
            BanRequest("ban", f"10.{88 + i // 65536}.{i // 256 % 256}.{i % 256}", duration=3600) for i in range(n)
        ]
        start = time.perf_counter()
        manager.submit_many(requests)
        manager.flush(120)
        managed = time.perf_counter() - start
        assert manager.status()["active"] == n and manager.status()["pending"] == 0, manager.status()
        manager.stop(10)
        elements = [Element(f"10.{99 + i // 65536}.{i // 256 % 256}.{i % 256}", 3600) for i in range(n)]
        start = time.perf_counter()
        call(dex, be.add, elements)
        raw = time.perf_counter() - start
        call(dex, be.teardown)
    return {"manager_per_s": n / managed, "backend_per_s": n / raw, "batch": n}


def restore(net: NetnsPair, backend: str, n: int, work: Path) -> dict[str, float]:
    """``n`` active bans in the state (90% IPv4 addresses, 10% IPv6 /64s) → emptied kernel → start."""
    settings = FirewallSettings.model_validate({"backend": backend})
    path = work / "restore.db"
    now = time.time()
    store = BanStore(path)
    bans = [
        Ban(
            f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}"
            if i % 10
            else f"2001:db8:{i // 65536:x}:{i % 65536:x}::/64",
            now + 3600,
            now,
            applied=True,
        )
        for i in range(n)
    ]
    store.save(bans)
    store.close()
    with inside(net.defender.netns) as dex:
        be = call(dex, make_backend, settings)
        call(dex, be.restore, [])  # the kernel forgot everything (a reboot)
        manager = BanManager(settings, path, be, Allowlist([], own=[]))
        start = time.perf_counter()
        call(dex, manager.start, lambda events: None)
        manager.reconciled.wait(120)
        took = time.perf_counter() - start
        count = len(call(dex, be.members))
        manager.stop(10)
        call(dex, be.teardown)
    if count != n:
        raise SystemExit(f"restore: {count} of {n} bans in the kernel")
    return {"seconds": took, "bans": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bans", type=int, default=1000, help="bans for the latency run (default 1000)")
    parser.add_argument("--insert", type=int, default=10_000, help="batch size for the insertion rate")
    parser.add_argument("--restore", type=int, default=100_000, help="bans to restore (default 100000)")
    parser.add_argument("--backends", default="nftables,iptables")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/bans.py: needs root (network namespaces, the kernel firewall); skipped", file=sys.stderr)
        return
    results: dict[str, dict[str, Any]] = {}
    for backend in args.backends.split(","):
        with NetnsPair() as net, tempfile.TemporaryDirectory(prefix="sentinel-bans-") as tmp:
            work = Path(tmp)
            print(f"{backend}: latency over {args.bans} bans …", file=sys.stderr)
            lat = latency(net, backend, args.bans, work)
            print(f"{backend}: insertion of {args.insert} bans …", file=sys.stderr)
            ins = insertion(net, backend, args.insert, work)
            print(f"{backend}: restore of {args.restore} bans …", file=sys.stderr)
            res = restore(net, backend, args.restore, work)
            results[backend] = {"latency": lat, "insertion": ins, "restore": res}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bans.json").write_text(json.dumps(results, indent=2))
    print("\nFirewall bans (real kernel, in a network namespace)\n")
    print(
        "| backend | line → kernel p50 ms | p99 ms | max ms | bans/s, batch of "
        f"{args.insert:,} (manager) | bans/s (backend alone) | restore {args.restore:,} bans, s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for backend, r in results.items():
        lat, ins, res = r["latency"], r["insertion"], r["restore"]
        print(
            f"| {backend} | {lat['p50_ms']:.1f} | {lat['p99_ms']:.1f} | {lat['max_ms']:.1f} | "
            f"{ins['manager_per_s']:,.0f} | {ins['backend_per_s']:,.0f} | {res['seconds']:.2f} |"
        )
    print("\ntargets: p99 ≤ 50 ms, ≥ 10,000 bans/s, 100k restored ≤ 2 s")


if __name__ == "__main__":
    main()
