"""Turning the address text a daemon wrote into ECS ``source.*`` fields.

Parsers call :func:`normalize_ip` once per event, so it is cached in a plain dict (cheaper
than ``functools.lru_cache`` on the hot path); the cache is bounded and simply cleared when
full, which costs one re-parse per address.  Canonical dotted quads, most addresses, are
recognised by one regex; anything else goes through :mod:`ipaddress`.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

_CACHE_LIMIT = 65536
_cache: dict[str, str | None] = {}
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
#: A dotted quad already in canonical form (no leading zeros), the common case: no need
#: for the much slower ``ipaddress`` module.
_CANONICAL_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}", re.ASCII)


def _normalize(text: str) -> str | None:
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


def normalize_ip(text: str) -> str | None:
    """``text`` as a canonical IP address string, or ``None`` if it is not an address.

    IPv4-mapped IPv6 (``::ffff:192.0.2.1``) becomes the IPv4 address, so that one attacker
    is one key whichever socket family the daemon used; a zone (``fe80::1%eth0``) is dropped.
    """
    try:
        return _cache[text]
    except KeyError:
        pass
    ip = text if _CANONICAL_IPV4.fullmatch(text) is not None else _normalize(text)
    if len(_cache) >= _CACHE_LIMIT:
        _cache.clear()
    _cache[text] = ip
    return ip


def add_source(event: dict[str, Any], addr: str) -> None:
    """Set ``source.ip`` (an address) or ``source.domain`` (a host name) from ``addr``."""
    ip = normalize_ip(addr)
    if ip is not None:
        event["source.ip"] = ip
    else:
        event["source.domain"] = addr


def source_fields(addr: str, port: str | None = None) -> dict[str, Any]:
    """ECS ``source.address`` / ``source.ip`` / ``source.domain`` / ``source.port``."""
    fields: dict[str, Any] = {"source.address": addr}
    add_source(fields, addr)
    if port:
        fields["source.port"] = int(port)
    return fields
