"""``sentinel audit``: what auditors and data-protection requests need from the stored record.

``query``, ``export`` and ``erase`` work on any backend (:mod:`sentinel.store.audit`);
``verify``, ``retention`` and ``backup`` are the embedded store's own.  Heavy imports happen in
the handlers: building the parser must stay cheap for every other command.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from sentinel.config import Settings
    from sentinel.store.audit import Hit

_COLUMNS = (
    "@timestamp",
    "event.kind",
    "event.category",
    "event.action",
    "event.outcome",
    "source.ip",
    "user.name",
    "user.effective.name",
    "host.hostname",
    "rule.id",
    "message",
)
#: Table columns: field, heading, width (the message takes the rest of the line).
_TABLE = (
    ("@timestamp", "time", 20),
    ("host.hostname", "host", 14),
    ("event.action", "action", 22),
    ("event.outcome", "outcome", 8),
    ("source.ip", "source.ip", 16),
    ("user.name", "user", 12),
    ("rule.id", "rule", 18),
)


def add_audit_parser(sub: Any, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``audit`` and its actions to the top-level subparsers ``sub``."""
    audit = sub.add_parser(
        "audit",
        help="query, verify, export, erase and back up the stored events",
        description="The auditor's view of the stored events: search them, prove they were not altered, "
        "answer data-subject requests (export, erasure), enforce retention and take backups.",
    )
    asub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    def action(name: str, text: str, description: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = asub.add_parser(name, help=text, description=description)
        config_arg(p)
        p.add_argument(
            "--store", type=Path, default=None, metavar="FILE", help="the live store file (default: [store] path)"
        )
        return p

    def backend(p: argparse.ArgumentParser) -> None:
        p.add_argument("--backend", default=None, metavar="NAME", help="sqlite or elasticsearch (default: [store])")

    p = action(
        "query",
        "search stored events",
        "Search stored events by time, source address or network, user, category, action, outcome, rule and "
        "host (filters combine with AND), oldest first.  A table on a terminal, else JSON lines; --csv for "
        "spreadsheets.  More results than --limit: the command prints the --after cursor of the next page.",
    )
    backend(p)
    p.add_argument("--since", metavar="TIME", help="from (inclusive): 2024-05-01, 2024-05-01T10:00:00Z, or 7d ago")
    p.add_argument("--until", metavar="TIME", help="to (exclusive), same forms as --since")
    p.add_argument("--ip", metavar="ADDR|CIDR", help="source.ip equal to an address or within a network")
    p.add_argument("--user", help="user.name, user.effective.name, user.target.name or related.user")
    p.add_argument("--category", help="one of event.category")
    p.add_argument("--action", help="event.action")
    p.add_argument("--outcome", choices=("success", "failure", "unknown"), help="event.outcome")
    p.add_argument("--rule", help="rule.id (findings)")
    p.add_argument("--host", help="host.hostname")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", dest="format", action="store_const", const="json", help="JSON lines")
    fmt.add_argument("--csv", dest="format", action="store_const", const="csv", help="CSV with a header")
    fmt.add_argument("--table", dest="format", action="store_const", const="table", help="aligned columns")
    p.add_argument("--limit", type=int, default=100, metavar="N", help="page size (default 100; 0: every match)")
    p.add_argument("--after", metavar="CURSOR", help="continue after this cursor (printed with the previous page)")

    p = action(
        "verify",
        "check the hash chain of every stored record",
        "Recompute every record's hash and the links between records and partitions.  Names each modified, "
        "deleted, inserted or reordered record (partition file and record id).  Exit status 0 when intact, "
        "1 when not, 2 on an error.",
    )
    p.add_argument(
        "--anchor",
        action="append",
        default=[],
        metavar="ID:HASH",
        help="a chain head logged earlier ('audit chain head: record ID hash HASH'); repeatable",
    )
    p.add_argument("-j", "--jobs", type=int, default=0, metavar="N", help="parallel processes (default: CPUs)")

    p = action(
        "export",
        "write everything stored about a person to one JSON file",
        "Data-subject access request: every stored event naming the user (user.name, user.effective.name, "
        "user.target.name, related.user), oldest first, in one JSON document.",
    )
    backend(p)
    p.add_argument("--user", required=True, help="the person's user name")
    p.add_argument("-o", "--output", type=Path, default=None, metavar="FILE", help="file to write (default: stdout)")

    p = action(
        "erase",
        "erase a person's personal data (records stay as tombstones)",
        "Data-subject erasure: in every event naming the user, personal fields (user.*, related.user, message, "
        "event.original, command lines) and any text quoting the name are replaced by '[erased]'.  Records stay, "
        "so the chain still verifies; who erased, when and why is itself recorded (the name is not).  "
        "On Elasticsearch the documents naming the user are deleted, and those still waiting in this host's "
        "spool are withheld from shipping (run it on every host that ships).",
    )
    backend(p)
    p.add_argument("--user", required=True, help="the person's user name")
    p.add_argument("--reason", default="data subject erasure request", help="recorded with the erasure")
    p.add_argument("--actor", default=None, help="who asks (default: $SUDO_USER or the current user)")
    p.add_argument("--yes", action="store_true", help="erase (without it: only count what would be erased)")

    p = action(
        "retention",
        "seal finished months and drop partitions older than the retention period",
        "What the daemon's daily job does: seal each finished arrival month into its own partition file, "
        "drop the partitions older than [store] retention_days (each drop recorded in the chain), and print "
        "the chain head.",
    )
    p.add_argument("--dry-run", action="store_true", help="only list the partitions that would be dropped")
    p.add_argument("--days", type=float, default=None, metavar="N", help="retention (default: [store] retention_days)")

    p = action(
        "backup",
        "copy the store, consistent and online, into a directory",
        "Online backup with SQLite's backup API: every partition and the live file, each a consistent snapshot, "
        "while the daemon keeps writing; plus MANIFEST.json with the chain head.  Restore: stop the daemon and "
        "copy the files back into the store's directory (or point [store] path at DEST/events.db).",
    )
    p.add_argument("dest", type=Path, metavar="DEST", help="directory to create (must be empty)")


def audit_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``sentinel audit ACTION``; the exit status."""
    from sentinel.store.sqlite import StoreError

    live: Path = args.store or settings.store.sqlite_path(settings.daemon.state_dir)
    handlers: dict[str, Callable[[argparse.Namespace, Settings, Path], int]] = {
        "query": _query,
        "verify": _verify,
        "export": _export,
        "erase": _erase,
        "retention": _retention,
        "backup": _backup,
    }
    embedded_only = {"verify": "its ILM policy", "retention": "its ILM policy", "backup": "snapshots"}
    if settings.store.backend != "sqlite" and args.store is None and args.audit_command in embedded_only:
        print(
            f"sentinel audit {args.audit_command}: works on the embedded store; with [store] backend = "
            f"{settings.store.backend!r} use {embedded_only[args.audit_command]} (or pass --store FILE)",
            file=sys.stderr,
        )
        return 2
    try:
        return handlers[args.audit_command](args, settings, live)
    except (StoreError, ValueError, OSError) as exc:
        print(f"sentinel audit {args.audit_command}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the Elasticsearch client's errors: unreachable, refused, unauthorised
        if not type(exc).__module__.startswith(("elasticsearch", "elastic_transport")):
            raise
        print(f"sentinel audit {args.audit_command}: Elasticsearch: {exc!r}", file=sys.stderr)
        return 1


def _need(live: Path) -> None:
    from sentinel.store.sqlite import StoreError

    if not live.exists():
        raise StoreError(f"{live}: no such store (set [store] path or --store)")


def _query(args: argparse.Namespace, settings: Settings, live: Path) -> int:
    from sentinel.store.audit import Query, open_backend, parse_network, parse_time

    query = Query(
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until) if args.until else None,
        network=parse_network(args.ip) if args.ip else None,
        user=args.user,
        category=args.category,
        action=args.action,
        outcome=args.outcome,
        rule=args.rule,
        host=args.host,
        limit=args.limit if args.limit > 0 else 1000,
        after=args.after,
    )
    fmt = args.format or ("table" if sys.stdout.isatty() else "json")
    backend = open_backend(settings, args.backend, args.store)
    writer = _Writer(fmt, sys.stdout)
    try:
        while True:
            page = backend.search(query)
            writer.write(page.hits)
            if page.next is None:
                return 0
            if args.limit > 0:
                sys.stdout.flush()
                print(f"more results: --after {page.next}", file=sys.stderr)
                return 0
            query = Query(**{**query.__dict__, "after": page.next})
    finally:
        backend.close()


class _Writer:
    """Hits as a table, JSON lines or CSV."""

    def __init__(self, fmt: str, out: TextIO) -> None:
        self.fmt = fmt
        self.out = out
        self.header = True
        self.width = shutil.get_terminal_size((160, 24)).columns
        self.csv = csv.writer(out)

    def write(self, hits: Iterable[Hit]) -> None:
        import orjson

        if self.fmt == "json":
            for hit in hits:
                self.out.write(orjson.dumps({**hit.event, "sentinel.record": hit.id}).decode() + "\n")
            return
        if self.fmt == "csv":
            if self.header:
                self.csv.writerow(["id", *_COLUMNS])
            for hit in hits:
                self.csv.writerow([hit.id, *(_cell(hit.event.get(c)) for c in _COLUMNS)])
            self.header = False
            return
        widths = [8, *(w for _, _, w in _TABLE)]
        if self.header:
            self.out.write(self._line(["id", *(h for _, h, _ in _TABLE)], widths, "message") + "\n")
            self.header = False
        for hit in hits:
            cells = [hit.id, *(_cell(hit.event.get(f)) for f, _, _ in _TABLE)]
            self.out.write(self._line(cells, widths, _cell(hit.event.get("message"))) + "\n")

    def _line(self, cells: list[str], widths: list[int], tail: str) -> str:
        text = " ".join(c[:w].ljust(w) for c, w in zip(cells, widths, strict=True))
        room = max(10, self.width - len(text) - 1)
        return f"{text} {tail[:room]}".rstrip()


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _verify(args: argparse.Namespace, settings: Settings, live: Path) -> int:
    from sentinel.store.verify import verify

    anchors: dict[int, bytes] = {}
    for text in args.anchor:
        rid, _, digest = text.partition(":")
        try:
            anchors[int(rid)] = bytes.fromhex(digest)
        except ValueError:
            raise ValueError(f"--anchor {text!r}: expected ID:HASH (hex)") from None
    report = verify(live, anchors=anchors, jobs=args.jobs or None)
    for problem in report.problems:
        print(problem)
    for f in report.files:
        if f.extra_problems:
            print(f"{f.name}: {f.extra_problems} more problems not listed")
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    head = f"head record {report.head[0]} hash {report.head[1].hex()}" if report.head else "no head"
    files = len(report.files)
    if report.ok:
        print(f"ok: {report.records} records in {files} files verified in {report.seconds:.1f}s; {head}")
        return 0
    count = len(report.problems) + sum(f.extra_problems for f in report.files)
    print(f"FAILED: {count} problems in {report.records} records ({files} files); {head}", file=sys.stderr)
    return 1


def _export(args: argparse.Namespace, settings: Settings, live: Path) -> int:
    import orjson

    from sentinel.store.audit import open_backend
    from sentinel.store.records import iso

    backend = open_backend(settings, args.backend, args.store)
    target: Path | None = args.output
    tmp = target.with_name(f".{target.name}.partial") if target else None
    try:
        out: TextIO = sys.stdout
        if tmp is not None:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # personal data
            out = os.fdopen(fd, "w", encoding="utf-8")
        head = {"subject": {"user": args.user}, "exported_at": iso(time.time())}
        out.write(orjson.dumps(head).decode()[:-1] + ',"events":[')
        count = 0
        for hit in backend.export_user(args.user):
            out.write(("," if count else "") + "\n" + orjson.dumps({"id": hit.id, "event": hit.event}).decode())
            count += 1
        out.write(f'\n],"count":{count}}}\n')
        if tmp is not None and target is not None:
            out.flush()
            os.fsync(out.fileno())
            out.close()
            os.replace(tmp, target)
            print(f"{count} events about {args.user} written to {target}", file=sys.stderr)
    finally:
        backend.close()
        if tmp is not None and tmp.exists():
            tmp.unlink()
    return 0


def _erase(args: argparse.Namespace, settings: Settings, live: Path) -> int:
    from sentinel.state_lock import daemon_running
    from sentinel.store.audit import open_backend
    from sentinel.store.withhold import spooled_naming, wait_for_in_flight, withhold

    backend = open_backend(settings, args.backend, args.store)
    # On Elasticsearch, documents still in this host's spool are withheld from shipping first.
    spool = None
    if (args.backend or settings.store.backend) == "elasticsearch":
        spool = settings.store.elasticsearch.spool_path(settings.daemon.state_dir)
    try:
        if not args.yes:
            count = sum(1 for _ in backend.export_user(args.user))
            spooled = ""
            if spool is not None:
                try:
                    spooled = f" (and {len(spooled_naming(spool, args.user))} not yet shipped)"
                except (OSError, ValueError) as exc:
                    spooled = f" (this host's spool could not be read: {exc})"
            print(f"{count} events name {args.user}{spooled}; run again with --yes to erase their personal data")
            return 0
        actor = args.actor or os.environ.get("SUDO_USER") or getpass.getuser()
        withheld = 0
        if spool is not None:
            try:
                withheld = withhold(spool, args.user)
            except (OSError, ValueError) as exc:  # nothing is erased yet: better than data coming back later
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                print(
                    f"sentinel: cannot withhold the spooled events naming {args.user} ({why}); "
                    "run the erasure as root or as the daemon's user",
                    file=sys.stderr,
                )
                return 1
            if withheld and not wait_for_in_flight(spool, daemon_running(settings.daemon.state_dir)):
                print("warning: the daemon's bulk request in flight was not answered within 30 s", file=sys.stderr)
        result = backend.erase_user(args.user, actor=actor, reason=args.reason)
    finally:
        backend.close()
    extra = f" (and finished {result.completed} of an interrupted erasure)" if result.completed else ""
    recorded = f"; recorded as event {', '.join(result.events)}" if result.events else ""
    print(f"erased the personal data of {result.records} events{extra}{recorded} (request {result.request})")
    if withheld:
        print(f"{withheld} events naming {args.user} in this host's spool will never be shipped")
    return 0


def _retention(args: argparse.Namespace, settings: Settings, live: Path) -> int:
    from sentinel.store.maintenance import maintain

    _need(live)
    days = args.days if args.days is not None else settings.store.retention_days
    report = maintain(live, days, dry_run=args.dry_run, hostname=settings.daemon.hostname)
    for month in report.sealed:
        print(f"sealed {month}")
    verb = "would drop" if args.dry_run else "dropped"
    for part in report.dropped:
        print(f"{verb} {part.path.name}: records {part.first_id}..{part.last_id} ({part.count})")
    if not report.dropped:
        print(f"nothing older than {days:g} days")
    if report.head is not None:
        print(f"audit chain head: record {report.head.id} hash {report.head.hash.hex()}")
    return 0


def _backup(args: argparse.Namespace, settings: Settings, live: Path) -> int:
    from sentinel.store.maintenance import backup

    _need(live)
    manifest = backup(live, args.dest)
    head = manifest["head"]
    print(f"backed up {len(manifest['files'])} files to {args.dest}; head record {head['id']} hash {head['hash']}")
    return 0
