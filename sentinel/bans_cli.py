"""``sentinel bans list|add|remove``: firewall bans, through the running daemon's control socket.

Adding and removing go through the daemon, never around it: the daemon owns the ban state and
the kernel sets, applies the allowlist, records each change as an event and retries what the
kernel refuses — a second writer would break all of that.  So with no daemon running, ``add``
and ``remove`` say so and change nothing (exit status 3); ``list`` then shows the saved state
(read-only), marked as such, since the kernel may since have expired some of it.

Exit status: 0 done; 1 refused, failed, not banned, or not in effect yet (recorded and retried);
2 bad arguments; 3 no daemon answers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import orjson

from sentinel.control import CommandError, ControlUnavailable, request, socket_path

EXIT_NO_DAEMON = 3
_STATE_FILE = "firewall.db"  # responders/firewall/responder.py STATE_FILE (not imported: start-up time)
_NO_FIREWALL = (
    "the running daemon has no firewall responder "
    "([responders] dry_run = true, or [firewall] enabled = false): nothing is banned at the firewall"
)


def bans_command(args: argparse.Namespace, state_dir: Path, out: TextIO | None = None) -> int:
    """Run ``sentinel bans ACTION``; the exit status."""
    stream = out or sys.stdout
    path = socket_path(state_dir)
    action = args.bans_command
    if action == "list":
        return _list(path, state_dir, args, stream)
    if action == "add":
        payload: dict[str, Any] = {"target": args.target, "permanent": bool(args.permanent)}
        if args.duration is not None:
            payload["duration"] = args.duration
        return _change(path, "bans.add", payload, stream)
    if action == "remove":
        return _change(path, "bans.remove", {"target": args.target}, stream)
    print(f"sentinel: unknown bans action {action!r}", file=sys.stderr)
    return 2


def _change(path: Path, command: str, payload: dict[str, Any], stream: TextIO) -> int:
    try:
        reply = request(path, command, payload)
    except ControlUnavailable as exc:
        print(f"sentinel: {exc}: is `sentinel run` running? Nothing was changed.", file=sys.stderr)
        return EXIT_NO_DAEMON
    except CommandError as exc:
        message = _NO_FIREWALL if str(exc).startswith("unknown command") else str(exc)
        print(f"sentinel: {message}", file=sys.stderr)
        return 1
    outcome = reply.get("outcome")
    print(reply.get("message", outcome), file=stream if outcome == "success" else sys.stderr)
    return 0 if outcome == "success" else 1


def _list(path: Path, state_dir: Path, args: argparse.Namespace, stream: TextIO) -> int:
    limit = getattr(args, "limit", None)
    try:
        result = request(path, "bans.list", {"limit": limit} if limit is not None else {})
    except ControlUnavailable as exc:
        print(f"sentinel: {exc}; showing the saved ban state (the kernel was not checked)", file=sys.stderr)
        result = _saved_state(state_dir / _STATE_FILE, limit)
        if result is None:
            print(f"sentinel: no ban state at {state_dir / _STATE_FILE}", file=sys.stderr)
            return EXIT_NO_DAEMON
    except CommandError as exc:
        print(f"sentinel: {_NO_FIREWALL if str(exc).startswith('unknown command') else exc}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        stream.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    _print_table(result, stream)
    return 0


def _saved_state(db: Path, limit: int | None) -> dict[str, Any] | None:
    """The state file read-only, shaped like the daemon's answer (no status)."""
    if not db.exists():
        return None
    import sqlite3

    from sentinel.responders.firewall.state import BanStore

    try:
        store = BanStore(db, readonly=True)
        try:
            now = time.time()
            bans = [b for b in store.load() if b.expires is None or b.expires > now]
            backend = store.get_meta("backend")
        finally:
            store.close()
    except sqlite3.Error as exc:
        print(f"sentinel: cannot read the ban state {db}: {exc}", file=sys.stderr)
        return None
    bans.sort(key=lambda b: (b.expires is not None, b.expires or 0.0, b.target))
    if limit is not None:
        bans = bans[:limit]
    return {
        "status": {"manages": f"{backend or 'unknown'} (daemon not running)", "active": len(bans), "saved": True},
        "bans": [b.summary() for b in bans],
    }


def _print_table(result: dict[str, Any], stream: TextIO) -> None:
    from sentinel.collectors.parsers.timestamps import epoch_to_utc

    status = result.get("status", {})
    stream.write(f"firewall: {status.get('manages', '?')}\n")
    if status.get("last_error"):
        stream.write(f"FIREWALL ERROR: {status['last_error']} (retrying; bans are kept in the state)\n")
    now = time.time()
    rows = []
    for ban in result.get("bans", []):
        expires = ban.get("expires")
        if expires is None:
            until, left = "permanent", "-"
        else:
            until, left = epoch_to_utc(round(expires)), _human(max(0.0, expires - now))
        rows.append(
            (
                ban["target"],
                until,
                left,
                str(ban.get("offence", 1)),
                ban.get("origin", "-"),
                "yes" if ban.get("applied") else "NO",
            )
        )
    header = ("TARGET", "EXPIRES", "LEFT", "OFFENCE", "ORIGIN", "IN KERNEL")
    if rows:
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
        for row in (header, *rows):
            stream.write("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)) + "  " + row[-1] + "\n")
    active = status.get("active", len(rows))
    extra = ""
    if "permanent" in status:
        extra = f" ({status['permanent']} permanent, {status.get('pending', 0)} not yet in the kernel)"
    stream.write(f"{active} active ban{'s' if active != 1 else ''}{extra}\n")


def _human(seconds: float) -> str:
    """``2d03h``, ``1h05m``, ``4m10s``, ``9s``."""
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"
