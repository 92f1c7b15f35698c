"""The iptables + ipset backend: Sentinel's chain matching two ipsets, set members with kernel timeouts.

Layout (IPv4 shown; IPv6 is the same in ip6tables with ``sentinel-v6``)::

    ipset sentinel-v4  hash:net family inet maxelem 1048576 timeout 0   # per-member timeouts
    -A INPUT -j SENTINEL                        (position 1; FORWARD too when forward = true)
    -A SENTINEL -m set --match-set sentinel-v4 src -j DROP       (or REJECT)

``hash:net`` holds addresses and networks alike (IPv6 /64 bans), overlapping ones included.
Rules are written with python-iptables, which drives only the *legacy* iptables backend
(libip4tc): on a host whose ``iptables`` is iptables-nft (Debian's default) Sentinel's chain
shows in ``iptables-legacy -S``, not in ``iptables -S`` — both filter packets.
:func:`host_iptables` finds out which one the host uses so that the log and ``sentinel bans
list`` can say so.  Members are changed through pyroute2's netlink IPSet for small batches (no
process start: the live path), and through ``ipset restore`` for large ones; a full reload
builds ``<set>-new`` and swaps it in, so the set is never empty in between.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

from sentinel.responders.firewall.backend import Backend, BackendError, Element, run_tool
from sentinel.responders.firewall.settings import FirewallSettings

#: ipset's longest timeout (2^31-1 ms, in seconds): longer bans are refreshed by the manager.
IPSET_MAX_TIMEOUT = 2_147_483
#: Batches up to this size go through netlink one message each; larger ones through `ipset restore`.
NETLINK_BATCH = 64

HostIptables = Literal["nf_tables", "legacy", "absent"]


def host_iptables(program: str = "iptables") -> HostIptables:
    """Which backend the host's ``iptables`` command uses (``iptables -V`` names it)."""
    try:
        out = run_tool([program, "-V"], timeout=10)
    except BackendError:
        return "absent"
    return "nf_tables" if "nf_tables" in out else "legacy"


class IptablesIpsetBackend(Backend):
    """The chain ``SENTINEL`` in the legacy filter tables and the ipsets ``<prefix>-v4/-v6``."""

    name = "iptables"
    overlapping_networks = True
    max_timeout: ClassVar[int | None] = IPSET_MAX_TIMEOUT

    def __init__(self, settings: FirewallSettings) -> None:
        self.settings = settings
        self.chain = settings.chain
        self.sets = {4: f"{settings.set_prefix}-v4", 6: f"{settings.set_prefix}-v6"}
        self.host = host_iptables()
        self._ipset: Any = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        hooks = "INPUT and FORWARD" if self.settings.forward else "INPUT"
        verdict = self.settings.action.upper()
        where = (
            "this host's `iptables` is iptables-nft, so list them with `iptables-legacy -S "
            f"{self.chain}` / `ip6tables-legacy -S {self.chain}` (not `iptables -S`; both filter packets)"
            if self.host == "nf_tables"
            else f"list them with `iptables -S {self.chain}` / `ip6tables -S {self.chain}`"
        )
        return (
            f"iptables: Sentinel owns chain {self.chain} (jumped to from {hooks}, {verdict} sources in ipsets "
            f"{self.sets[4]}, {self.sets[6]}) in the legacy iptables filter tables (IPv4 and IPv6, python-iptables); "
            + where
        )

    # -- helpers ----------------------------------------------------------------------------------
    @contextmanager
    def _netlink(self) -> Iterator[Any]:
        """pyroute2's IPSet socket (opened on first use, reopened after an error)."""
        try:
            if self._ipset is None:
                from pyroute2 import IPSet

                self._ipset = IPSet()
            yield self._ipset
        except BackendError:
            raise
        except Exception as exc:
            self.close()
            raise BackendError(f"ipset (netlink): {_reason(exc)}") from exc

    def _restore(self, lines: list[str]) -> None:
        script = ("\n".join(lines) + "\n").encode()
        run_tool([self.settings.ipset_path, "restore", "-exist"], stdin=script, timeout=120)

    def _create_line(self, name: str, version: int) -> str:
        family = "inet" if version == 4 else "inet6"
        return f"create {name} hash:net family {family} hashsize 65536 maxelem {self.settings.max_elements} timeout 0"

    def _add_line(self, name: str, e: Element) -> str:
        return f"add {name} {e.target} timeout {0 if e.timeout is None else max(1, e.timeout)}"

    # -- operations -------------------------------------------------------------------------------
    def setup(self) -> None:
        with self._netlink() as ipset:
            for version, name in self.sets.items():
                family = socket.AF_INET if version == 4 else socket.AF_INET6
                try:
                    ipset.create(
                        name,
                        stype="hash:net",
                        family=family,
                        exclusive=False,
                        maxelem=self.settings.max_elements,
                        hashsize=65536,
                        timeout=0,
                    )
                except Exception as exc:
                    # The set exists with other parameters (an earlier max_elements): keep it;
                    # restore() swaps in one built with the current parameters.
                    if "already exists" not in str(exc):
                        raise
        self._rules(install=True)

    def restore(self, elements: Sequence[Element]) -> None:
        self.setup()
        self._destroy_new()  # left by a reload that failed (a full set), maybe with other parameters
        lines: list[str] = []
        for version, name in self.sets.items():
            new = f"{name}-new"
            lines += [self._create_line(new, version), f"flush {new}"]
            lines += [self._add_line(new, e) for e in elements if e.version == version]
            lines += [f"swap {new} {name}", f"destroy {new}"]
        self._restore(lines)

    def add(self, elements: Sequence[Element]) -> None:
        if not elements:
            return
        if len(elements) > NETLINK_BATCH:
            self._restore([self._add_line(self.sets[e.version], e) for e in elements])
            return
        with self._lock, self._netlink() as ipset:
            for e in elements:
                family = socket.AF_INET if e.version == 4 else socket.AF_INET6
                ipset.add(
                    self.sets[e.version],
                    e.target,
                    family=family,
                    etype="net",
                    exclusive=False,
                    timeout=0 if e.timeout is None else max(1, e.timeout),
                )

    def delete(self, targets: Sequence[str]) -> None:
        if not targets:
            return
        self._restore([f"del {self.sets[Element(t).version]} {t}" for t in targets])

    def members(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for name in self.sets.values():
            for line in run_tool([self.settings.ipset_path, "save", name]).splitlines():
                m = re.match(r"add \S+ (\S+)(?: timeout (\d+))?", line)
                if m:
                    left = int(m.group(2)) if m.group(2) is not None else None
                    out[m.group(1)] = None if left == 0 else left
        return out

    def teardown(self) -> None:
        self._rules(install=False)
        self._destroy_new()
        with self._netlink() as ipset:
            for name in self.sets.values():
                try:
                    ipset.destroy(name)
                except Exception as exc:
                    if "does not exist" not in str(exc):
                        raise

    def _destroy_new(self) -> None:
        """Remove the ``<set>-new`` sets a failed reload may have left."""
        with self._netlink() as ipset:
            for name in self.sets.values():
                with contextlib.suppress(Exception):  # absent: nothing to do
                    ipset.destroy(f"{name}-new")

    def close(self) -> None:
        if self._ipset is not None:
            with contextlib.suppress(Exception):  # closing a broken socket
                self._ipset.close()
            self._ipset = None

    # -- rules (python-iptables) ------------------------------------------------------------------
    def _rules(self, install: bool) -> None:
        """Install (or remove) the chain, its set rule and the jumps, for IPv4 and IPv6."""
        try:
            import iptc
        except Exception as exc:  # the library or libxtables is missing
            raise BackendError(f"python-iptables unavailable: {_reason(exc)}") from exc
        for version in (4, 6):
            try:
                self._table_rules(iptc, version, install)
            except BackendError:
                raise
            except Exception as exc:
                family = "ip6tables" if version == 6 else "iptables"
                # libiptc talks to the kernel through a raw socket: CAP_NET_RAW as well.
                reason = _reason(exc, "CAP_NET_ADMIN and CAP_NET_RAW")
                raise BackendError(f"{family} (legacy, python-iptables): {reason}") from exc

    def _table_rules(self, iptc: Any, version: int, install: bool) -> None:
        table = iptc.Table6(iptc.Table6.FILTER) if version == 6 else iptc.Table(iptc.Table.FILTER)
        rule_cls: Callable[[], Any] = iptc.Rule6 if version == 6 else iptc.Rule
        table.autocommit = False
        try:
            table.refresh()
            if install:
                if not table.is_chain(self.chain):
                    table.create_chain(self.chain)
                own = iptc.Chain(table, self.chain)
                own.flush()
                rule = rule_cls()
                match = rule.create_match("set")
                match.match_set = [self.sets[version], "src"]
                if self.settings.action == "reject":
                    rule.target = iptc.Target(rule, "REJECT")
                    rule.target.reject_with = "icmp6-port-unreachable" if version == 6 else "icmp-port-unreachable"
                else:
                    rule.target = iptc.Target(rule, "DROP")
                own.append_rule(rule)
            hooks = ("INPUT", "FORWARD") if self.settings.forward else ("INPUT",)
            for builtin in ("INPUT", "FORWARD"):
                chain = iptc.Chain(table, builtin)
                jumps = [r for r in chain.rules if r.target is not None and r.target.name == self.chain]
                keep = install and builtin in hooks
                for extra in jumps[1:] if keep else jumps:
                    chain.delete_rule(extra)
                if keep and not jumps:
                    jump = rule_cls()
                    jump.target = iptc.Target(jump, self.chain)
                    chain.insert_rule(jump)
            if not install and table.is_chain(self.chain):
                table.flush_entries(self.chain)
                table.delete_chain(self.chain)
            table.commit()
        finally:
            table.autocommit = True
            with contextlib.suppress(Exception):  # the original error matters, not this one
                table.refresh()


#: ipset's own netlink error codes (linux/netfilter/ipset/ip_set.h) that pyroute2 leaves unnamed.
_IPSET_ERRORS = {4352: "the set is full (raise [firewall] max_elements)"}


def _reason(exc: BaseException, caps: str = "CAP_NET_ADMIN") -> str:
    code = getattr(exc, "code", None)
    if isinstance(code, int) and code in _IPSET_ERRORS:
        return _IPSET_ERRORS[code]
    text = str(exc) or type(exc).__name__
    if isinstance(exc, PermissionError) or "Permission denied" in text or "Operation not permitted" in text:
        return f"{text} (needs {caps})"
    return text
