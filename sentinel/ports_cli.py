"""``sentinel ports``: the listening sockets now, checked against the allowlist, on demand.

The same audit the daemon runs every ``[ports] interval``, once, printed as a table for
people or as one JSON object per line (ECS field names, as the daemon stores them) for
scripts.  The exit status makes it a check for scripts and CI: 1 if any socket is listening
that the allowlist does not allow, 0 if none, 2 if the audit could not run.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

import orjson

from sentinel.collectors.parsers.timestamps import now_utc
from sentinel.collectors.sources.ports import (
    DATASET,
    PortAuditError,
    PortAuditSettings,
    list_listeners,
    parse_allow_entry,
    printable,
)

_COLUMNS = ("PORT", "PROTO", "ADDRESS", "PID", "PROCESS", "USER", "EXECUTABLE", "ALLOWED")


def ports_command(allowed: list[str] | None, as_json: bool, out: TextIO | None = None) -> int:
    """Print the listening sockets; 1 if any is unexpected, 0 if none, 2 on an error.

    ``allowed`` is the allowlist (``None``: the default, ``tcp/22`` and ``tcp/443``).
    """
    stream = out or sys.stdout
    try:
        entries = [parse_allow_entry(e) for e in (allowed if allowed is not None else PortAuditSettings().allowed)]
    except ValueError as exc:
        print(f"sentinel: invalid allowlist entry {exc}", file=sys.stderr)
        return 2
    try:
        listeners = list_listeners(entries)
    except PortAuditError as exc:
        print(f"sentinel: {exc}", file=sys.stderr)
        return 2
    unexpected = sum(1 for listener in listeners if not listener.allowed)
    if as_json:
        stamp = now_utc()
        for listener in listeners:
            doc = {
                "@timestamp": stamp,
                "event.kind": "state",
                "event.category": ["network"],
                "event.type": ["info"],
                "event.action": "listening_port",
                "event.dataset": DATASET,
                **listener.fields(),
            }
            stream.write(orjson.dumps(doc).decode() + "\n")
    else:
        rows = [
            (
                str(listener.port),
                listener.transport,
                listener.ip,
                "-" if listener.pid is None else str(listener.pid),
                printable(listener.process_name or "-"),
                printable(listener.user_name or listener.user_id or "-"),
                printable(listener.executable or "-") + (" (deleted)" if listener.executable_deleted else ""),
                f"yes ({listener.allowed_by})" if listener.allowed else "NO",
            )
            for listener in listeners
        ]
        _table(stream, _COLUMNS, rows)
        stream.write(
            f"{len(listeners)} listening socket{'s' if len(listeners) != 1 else ''}, {unexpected} not allowed\n"
        )
    stream.flush()
    return 1 if unexpected else 0


def _table(stream: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns separated by two spaces (the last one unpadded)."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=False)]
        stream.write("  ".join([*cells, row[-1]]) + "\n")
