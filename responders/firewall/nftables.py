"""The nftables backend: Sentinel's own ``inet`` table, with timeout sets, changed through ``nft -j``.

Layout (``nft list table inet sentinel``)::

    table inet sentinel {
        set sentinel_addr4 { type ipv4_addr; size 1048576; flags timeout; }           # addresses
        set sentinel_addr6 { type ipv6_addr; size 1048576; flags timeout; }
        set sentinel_net4  { type ipv4_addr; size 1048576; flags interval,timeout; }  # CIDRs (/64s)
        set sentinel_net6  { type ipv6_addr; size 1048576; flags interval,timeout; }
        chain input { type filter hook input priority filter - 10; policy accept;
            ip saddr @sentinel_addr4 counter drop  … one rule per set }
        chain forward { … the same, when [firewall] forward = true }
    }

Addresses live in plain hash sets (no overlap checks, constant-time lookups); networks in
interval sets, which refuse overlapping members — :func:`~.backend.maximal` leaves out networks
covered by another.  Every change is one JSON batch through ``nft -j -f -``: one netlink
transaction, all or nothing.  New bans are ``create``d; when one exists already the batch is
redone as "add, delete, add with timeout" so it gets exactly the new timeout (whatever the
kernel version), and deleting is "add, delete" so an absent element is no error.  Only
Sentinel's table is ever touched; the host's own ruleset is left alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sentinel.responders.firewall.backend import Backend, BackendError, Element, maximal, run_tool
from sentinel.responders.firewall.settings import FirewallSettings

Command = dict[str, Any]


class NftablesBackend(Backend):
    """Sentinel's table ``inet <table>`` and its four sets."""

    name = "nftables"
    overlapping_networks = False

    def __init__(self, settings: FirewallSettings) -> None:
        self.settings = settings
        self.nft = settings.nft_path
        self.table = settings.table
        p = settings.set_prefix
        self.sets = {(4, False): f"{p}_addr4", (6, False): f"{p}_addr6", (4, True): f"{p}_net4", (6, True): f"{p}_net6"}

    def describe(self) -> str:
        hooks = "input and forward" if self.settings.forward else "input"
        verdict = "reject" if self.settings.action == "reject" else "drop"
        return (
            f"nftables: Sentinel owns table inet {self.table} (sets {', '.join(self.sets.values())}; "
            f"{verdict} on the {hooks} hook{'s' if self.settings.forward else ''}, priority {self.settings.priority}); "
            f"see `nft list table inet {self.table}`"
        )

    # -- batches --------------------------------------------------------------------------------
    def _run(self, commands: list[Command]) -> None:
        batch = json.dumps({"nftables": commands}, separators=(",", ":")).encode()
        run_tool([self.nft, "-j", "-f", "-"], stdin=batch)

    def _base(self) -> dict[str, str]:
        return {"family": "inet", "table": self.table}

    def _table(self) -> dict[str, str]:
        return {"family": "inet", "name": self.table}

    def _set_of(self, e: Element) -> str:
        return self.sets[(e.version, e.is_network)]

    @staticmethod
    def _value(target: str) -> Any:
        if "/" in target:
            addr, plen = target.split("/")
            return {"prefix": {"addr": addr, "len": int(plen)}}
        return target

    def _elem(self, e: Element) -> Any:
        if e.timeout is not None:
            return {"elem": {"val": self._value(e.target), "timeout": max(1, e.timeout)}}
        return self._value(e.target)

    def _definition(self) -> list[Command]:
        """Commands creating the table, sets, chains and rules (idempotent ``add`` forms)."""
        base = self._base()
        out: list[Command] = [{"add": {"table": self._table()}}]
        for (version, interval), name in self.sets.items():
            flags = ["interval", "timeout"] if interval else ["timeout"]
            kind = "ipv4_addr" if version == 4 else "ipv6_addr"
            out.append(
                {
                    "add": {
                        "set": {**base, "name": name, "type": kind, "flags": flags, "size": self.settings.max_elements}
                    }
                }
            )
        verdict: Command = (
            {"reject": {"type": "icmpx", "expr": "port-unreachable"}}
            if self.settings.action == "reject"
            else {"drop": None}
        )
        hooks = ["input", "forward"] if self.settings.forward else ["input"]
        for hook in ("input", "forward"):
            chain = {**base, "name": hook}
            if hook not in hooks:
                # Remove a forward chain left from an earlier configuration (add first: delete
                # of a missing chain would fail the whole batch).
                out.append({"add": {"chain": chain}})
                out.append({"flush": {"chain": chain}})
                out.append({"delete": {"chain": chain}})
                continue
            out.append(
                {
                    "add": {
                        "chain": {
                            **chain,
                            "type": "filter",
                            "hook": hook,
                            "prio": self.settings.priority,
                            "policy": "accept",
                        }
                    }
                }
            )
            out.append({"flush": {"chain": chain}})
            for (version, _), name in self.sets.items():
                proto = "ip" if version == 4 else "ip6"
                match = {"op": "==", "left": {"payload": {"protocol": proto, "field": "saddr"}}, "right": f"@{name}"}
                out.append(
                    {"add": {"rule": {**base, "chain": hook, "expr": [{"match": match}, {"counter": None}, verdict]}}}
                )
        return out

    # -- operations -----------------------------------------------------------------------------
    def setup(self) -> None:
        self._run(self._definition())

    def restore(self, elements: Sequence[Element]) -> None:
        """Recreate the table with exactly ``elements``, in one transaction (no unprotected moment)."""
        base = self._base()
        table = self._table()
        commands: list[Command] = [{"add": {"table": table}}, {"delete": {"table": table}}, *self._definition()]
        by_set: dict[str, list[Any]] = {}
        for e in maximal(elements):
            by_set.setdefault(self._set_of(e), []).append(self._elem(e))
        for name, elems in by_set.items():
            commands.append({"add": {"element": {**base, "name": name, "elem": elems}}})
        self._run(commands)

    def add(self, elements: Sequence[Element]) -> None:
        """``create`` the elements (the common case: new bans, one cheap transaction); if one
        exists already, redo the batch with "add, delete, add" so it gets the new timeout (a
        transaction with deletions waits for an RCU grace period: about 15 ms more)."""
        if not elements:
            return
        try:
            self._run(self._elements("create", elements))
        except BackendError as exc:
            if "File exists" not in str(exc):
                raise
            plain = [Element(e.target) for e in elements]
            self._run(self._elements("add", plain) + self._elements("delete", plain) + self._elements("add", elements))

    def _elements(self, verb: str, elements: Sequence[Element]) -> list[Command]:
        """One ``verb`` command per set touched."""
        by_set: dict[str, list[Any]] = {}
        for e in elements:
            by_set.setdefault(self._set_of(e), []).append(self._elem(e))
        base = self._base()
        return [{verb: {"element": {**base, "name": name, "elem": elems}}} for name, elems in by_set.items()]

    def delete(self, targets: Sequence[str]) -> None:
        if not targets:
            return
        plain = [Element(t) for t in targets]
        self._run(self._elements("add", plain) + self._elements("delete", plain))

    def members(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for name in self.sets.values():
            text = run_tool([self.nft, "-j", "list", "set", "inet", self.table, name])
            for item in json.loads(text).get("nftables", []):
                for elem in item.get("set", {}).get("elem", []):
                    target, left = _parse_elem(elem)
                    out[target] = left
        return out

    def teardown(self) -> None:
        table = self._table()
        self._run([{"add": {"table": table}}, {"delete": {"table": table}}])


def _parse_elem(elem: Any) -> tuple[str, int | None]:
    """``(target, seconds left)`` of one element of ``nft -j list set``."""
    left: int | None = None
    if isinstance(elem, dict) and "elem" in elem:
        inner = elem["elem"]
        value = inner["val"]
        if "timeout" in inner:
            left = int(inner.get("expires", inner["timeout"]))
    else:
        value = elem
    if isinstance(value, dict) and "prefix" in value:
        return f"{value['prefix']['addr']}/{value['prefix']['len']}", left
    if isinstance(value, str):
        return value, left
    raise BackendError(f"unexpected set element from nft: {elem!r}")
