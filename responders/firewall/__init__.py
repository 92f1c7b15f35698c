"""Bans at the kernel firewall: nftables or iptables + ipset, with kernel-side timeouts.

``settings`` (the ``[firewall]`` section), ``backend`` (the interface and shared helpers),
``nftables`` and ``iptables_ipset`` (the two backends), ``state`` (the ban table), ``manager``
(bookkeeping, reconciliation, retries), ``events`` (outcomes as ECS events) and ``responder``
(the :class:`~sentinel.responders.base.Responder` the daemon runs).  This module stays light:
``sentinel.config`` imports the settings through it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sentinel.responders.firewall.backend import Backend
    from sentinel.responders.firewall.settings import FirewallSettings


def choose_backend(settings: FirewallSettings) -> str:
    """The backend's name: the configured one, or for "auto" nftables if ``nft`` works, else iptables."""
    if settings.backend != "auto":
        return settings.backend
    from sentinel.responders.firewall.backend import tool_works

    return "nftables" if tool_works(settings.nft_path, "list", "tables") else "iptables"


def make_backend(settings: FirewallSettings, name: str | None = None) -> Backend:
    """A backend by name ("nftables" or "iptables"; default: :func:`choose_backend`)."""
    chosen = name or choose_backend(settings)
    if chosen == "nftables":
        from sentinel.responders.firewall.nftables import NftablesBackend

        return NftablesBackend(settings)
    if chosen == "iptables":
        from sentinel.responders.firewall.iptables_ipset import IptablesIpsetBackend

        return IptablesIpsetBackend(settings)
    raise ValueError(f"unknown firewall backend {chosen!r}")
