"""Turning the address text a daemon wrote into ECS ``source.*`` fields."""

from __future__ import annotations

from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any


@lru_cache(maxsize=65536)
def normalize_ip(text: str) -> str | None:
    """``text`` as a canonical IP address string, or ``None`` if it is not an address.

    IPv4-mapped IPv6 (``::ffff:192.0.2.1``) becomes the IPv4 address, so that one attacker
    is one key whichever socket family the daemon used; a zone (``fe80::1%eth0``) is dropped.
    """
    if "%" in text:
        text = text.split("%", 1)[0]
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        addr: IPv4Address | IPv6Address = ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


def source_fields(addr: str, port: str | None = None) -> dict[str, Any]:
    """ECS ``source.address`` / ``source.ip`` / ``source.domain`` / ``source.port``."""
    fields: dict[str, Any] = {"source.address": addr}
    ip = normalize_ip(addr)
    if ip is not None:
        fields["source.ip"] = ip
    else:
        fields["source.domain"] = addr
    if port:
        fields["source.port"] = int(port)
    return fields
