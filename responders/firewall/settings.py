"""``[firewall]``: how Sentinel bans at the kernel firewall (used when ``[responders] dry_run = false``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from sentinel.engine.durations import Duration

#: Names of tables, chains and sets: short, plain, and valid for nft, iptables and ipset alike
#: (ipset names hold at most 31 characters, and Sentinel appends ``-v4-new`` to its set names).
Name = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,23}$")]


class FirewallSettings(BaseModel):
    """The firewall responder: backend, verdict, names, sizes, permanent-ban policy, retries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: False: bans are only recorded (as in dry-run), the firewall is left alone.
    enabled: bool = True
    #: "auto" picks nftables when ``nft`` works, else iptables + ipset.
    backend: Literal["auto", "nftables", "iptables"] = "auto"
    #: "drop" silently discards; "reject" answers (ICMP port unreachable), which ends scans faster.
    action: Literal["drop", "reject"] = "drop"
    #: Also filter forwarded traffic (a router, or containers behind this host).
    forward: bool = False
    #: nftables: the table (family inet) Sentinel owns entirely.
    table: Name = "sentinel"
    #: nftables: base-chain priority (``filter`` is 0; lower runs earlier).
    priority: int = Field(default=-10, ge=-400, le=400)
    #: iptables: the chain Sentinel owns in the filter table (IPv4 and IPv6), jumped to from INPUT.
    chain: Name = "SENTINEL"
    #: Set names start with this: ``<prefix>-v4`` / ``<prefix>-v6`` (ipset), ``<prefix>_addr4`` … (nft).
    set_prefix: Name = "sentinel"
    #: Elements each set holds at most (fail2ban's ipset stops at 65,536).
    max_elements: int = Field(default=1_048_576, ge=1024, le=1 << 26)
    #: From this offence on (the engine counts repeats per address) a ban is permanent; 0: never.
    permanent_after: int = Field(default=0, ge=0)
    #: Ban length for `sentinel bans add` without --duration.
    default_duration: Duration = 3600.0
    #: The nft and ipset programs (nft runs for every nftables change; ipset for bulk loads).
    nft_path: str = "nft"
    ipset_path: str = "ipset"
    #: First wait after a failed firewall change, doubling up to ``retry_max``.
    retry_initial: Annotated[Duration, Field(gt=0)] = 1.0
    retry_max: Annotated[Duration, Field(gt=0)] = 60.0
    #: How often the kernel's sets are compared with Sentinel's bans and repaired; 0: never.
    reconcile_interval: Annotated[Duration, Field(ge=0, le=86400)] = 300.0
    #: Ban and unban requests waiting for the firewall thread, at most.
    queue_size: int = Field(default=100_000, ge=100)
    #: When they are that many (the firewall thread is hung): "drop_newest" refuses new requests,
    #: each recorded as a failed ban; "block" makes the detection stage wait (and so the sources).
    overflow: Literal["block", "drop_newest"] = "drop_newest"
