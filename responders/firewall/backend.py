"""What a firewall backend does, and the one value it works on (:class:`Element`).

A backend is stateless apart from the kernel: Sentinel's own table/chain and its sets.  Five
operations, in the spirit of sshguard's one-page backends: :meth:`Backend.setup` (create what is
missing), :meth:`Backend.restore` (make the sets hold exactly these elements, in bulk),
:meth:`Backend.add` / :meth:`Backend.delete` (a batch each, one kernel transaction where the
backend has them) and :meth:`Backend.teardown` (remove everything Sentinel created).  A ban's
timeout lives in the kernel's set element, so bans end on time while the daemon is down.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class BackendError(Exception):
    """The firewall could not be changed (privileges, a missing module or program, a full set)."""


@dataclass(frozen=True, slots=True)
class Element:
    """One set member: an address or network and its kernel timeout (None: permanent)."""

    target: str
    timeout: int | None = None

    @property
    def network(self) -> Network:
        return ipaddress.ip_network(self.target)

    @property
    def version(self) -> int:
        return 6 if ":" in self.target else 4

    @property
    def is_network(self) -> bool:
        """True for a CIDR shorter than a single address (``/32``, ``/128`` are plain addresses)."""
        return "/" in self.target


def normalize(target: str) -> str:
    """The canonical form of an address or CIDR (``10.0.0.7/24`` → ``10.0.0.0/24``, ``/32`` dropped).

    Raises ValueError for anything else.
    """
    text = target.strip()
    if not text or any(c.isspace() for c in text):
        raise ValueError(f"not an address or CIDR network: {target!r}")
    net = ipaddress.ip_network(text, strict=False)
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


def maximal(elements: Iterable[Element]) -> list[Element]:
    """Drop networks that lie inside another given network (for sets that refuse overlaps).

    Addresses are returned as they are (they live in their own sets).  Cost: one hash lookup per
    network and distinct shorter prefix length present, so 100k IPv6 /64s stay fast.
    """
    out: list[Element] = []
    nets: list[tuple[Network, Element]] = []
    for e in elements:
        if e.is_network:
            nets.append((e.network, e))
        else:
            out.append(e)
    nets.sort(key=lambda pair: (pair[0].version, pair[0].prefixlen))
    kept: dict[tuple[int, int], set[int]] = {}
    for net, e in nets:
        covered = False
        for (version, plen), members in kept.items():
            if version != net.version or plen >= net.prefixlen:
                continue
            if int(net.supernet(new_prefix=plen).network_address) in members:
                covered = True
                break
        if not covered:
            kept.setdefault((net.version, net.prefixlen), set()).add(int(net.network_address))
            out.append(e)
    return out


def run_tool(args: Sequence[str], stdin: bytes | None = None, timeout: float = 60.0) -> str:
    """Run a firewall program; its failure (or absence) becomes :class:`BackendError`."""
    try:
        proc = subprocess.run(list(args), input=stdin, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise BackendError(f"{args[0]}: program not found") from None
    except PermissionError:
        raise BackendError(f"{args[0]}: permission denied") from None
    except subprocess.TimeoutExpired:
        raise BackendError(f"{args[0]}: no answer within {timeout:g}s") from None
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace").strip() or f"exit status {proc.returncode}"
        hint = ""
        if "not permitted" in message or "Permission denied" in message:
            hint = " (needs CAP_NET_ADMIN)"
        elif "Too many open files" in message or "is full" in message:  # nft's ENFILE, ipset's "Hash is full"
            hint = " (a set is full: raise [firewall] max_elements)"
        raise BackendError(f"{args[0]}: {_first_lines(message)}{hint}")
    return proc.stdout.decode(errors="replace")


def _first_lines(text: str, n: int = 3) -> str:
    lines = text.splitlines()
    return " / ".join(lines[:n]) + (f" (+{len(lines) - n} lines)" if len(lines) > n else "")


def tool_works(program: str, *args: str) -> bool:
    """True if ``program`` exists and ``program ARGS`` exits 0 (used by backend = "auto")."""
    if shutil.which(program) is None:
        return False
    try:
        run_tool([program, *args], timeout=10)
    except BackendError:
        return False
    return True


class Backend(ABC):
    """A kernel firewall Sentinel owns a table or chain and sets in."""

    name: ClassVar[str]
    #: False when the kernel set refuses overlapping networks (nftables interval sets): the
    #: manager then reloads the sets, where :func:`maximal` drops networks covered by others.
    overlapping_networks: ClassVar[bool] = True
    #: Longest timeout the kernel accepts, in seconds (None: no limit); longer bans are refreshed.
    max_timeout: ClassVar[int | None] = None

    @abstractmethod
    def describe(self) -> str:
        """What Sentinel manages in the kernel, in words, for the log and ``sentinel bans list``."""

    @abstractmethod
    def setup(self) -> None:
        """Create the table/chain, sets and hooks that are missing (idempotent)."""

    @abstractmethod
    def restore(self, elements: Sequence[Element]) -> None:
        """Make Sentinel's sets hold exactly ``elements`` (stale members go), atomically where possible."""

    @abstractmethod
    def add(self, elements: Sequence[Element]) -> None:
        """Add or refresh ``elements`` (the kernel timeout becomes the one given)."""

    @abstractmethod
    def delete(self, targets: Sequence[str]) -> None:
        """Remove ``targets`` from the sets; absent ones are fine."""

    @abstractmethod
    def members(self) -> dict[str, int | None]:
        """The sets' members now, with the seconds left (None: permanent)."""

    @abstractmethod
    def teardown(self) -> None:
        """Remove everything Sentinel created (sets, rules, chains, table)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sockets and handles."""
