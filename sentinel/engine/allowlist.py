"""Addresses Sentinel never bans, whatever the logs say: the configured allowlist, loopback,
link-local and unspecified addresses, and the host's own addresses."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_ALWAYS = ("127.0.0.0/8", "::1/128", "169.254.0.0/16", "fe80::/10", "0.0.0.0/32", "::/128", "::ffff:127.0.0.0/104")


def host_addresses() -> list[str]:
    """This host's own addresses (every interface), so Sentinel never locks the host out of itself."""
    try:
        import psutil

        return [
            a.address.split("%")[0]
            for addrs in psutil.net_if_addrs().values()
            for a in addrs
            if a.family in (socket.AF_INET, socket.AF_INET6)
        ]
    except Exception:  # psutil missing or /proc unreadable: fall back to what the resolver knows
        try:
            return [str(i[4][0]) for i in socket.getaddrinfo(socket.gethostname(), None)]
        except OSError:
            return []


class Allowlist:
    """Answers "may this address or network be banned?"."""

    def __init__(self, entries: Iterable[str] = (), own: Iterable[str] | None = None) -> None:
        nets: list[Network] = [ipaddress.ip_network(e, strict=False) for e in (*_ALWAYS, *entries)]
        for addr in host_addresses() if own is None else own:
            try:
                nets.append(ipaddress.ip_network(addr))
            except ValueError:
                continue
        self.networks: tuple[Network, ...] = tuple(nets)
        self.allowed = lru_cache(maxsize=65536)(self._allowed)

    def _allowed(self, target: str) -> bool:
        """True if ``target`` (an address or CIDR) overlaps anything allowlisted."""
        try:
            net = ipaddress.ip_network(target, strict=False)
        except ValueError:
            return True  # not an address: never a firewall target
        return any(net.version == n.version and net.overlaps(n) for n in self.networks)
