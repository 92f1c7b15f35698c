"""The ``sentinel`` command line.

Imports are deferred to the command that needs them: ``sentinel parse`` is a hot command
whose start-up time counts in every benchmark.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sentinel import __version__

if TYPE_CHECKING:
    from sentinel.config import Settings

_FORMATS = ("auto", "syslog", "journal", "nginx", "apache", "jsonl")

_DESCRIPTION = """\
Sentinel watches a Linux server's authentication and web logs, detects attacks
(brute force, password spraying, unexpected open ports, logins from new countries),
responds (firewall bans, OAuth token revocation, alerts) and keeps a tamper-evident
record for auditors.
"""

_EPILOG = """\
configuration: a TOML file (default /etc/sentinel/config.toml, see config.example.toml);
any key can be overridden from the environment as SENTINEL_<SECTION>__<KEY>,
e.g. SENTINEL_DAEMON__STATE_DIR=/tmp/sentinel.
"""


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="configuration file (default: $SENTINEL_CONFIG or /etc/sentinel/config.toml)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sentinel",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sentinel {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "run",
        help="run the daemon in the foreground",
        description="Run the daemon in the foreground: follow the configured sources, store every "
        "event, evaluate the rules and respond.  Stops cleanly on SIGTERM or Ctrl-C; SIGHUP reloads "
        "the configuration.",
    )
    _config_arg(p)
    p.add_argument(
        "--wallet-password-fd",
        type=int,
        default=None,
        metavar="N",
        help="read the wallet password from inherited file descriptor N "
        "(else the systemd credential wallet-password, else a prompt on a terminal)",
    )

    p = sub.add_parser(
        "check-config",
        help="validate a configuration file and exit",
        description="Load the configuration (file plus SENTINEL_* environment) and report the first "
        "problems found, naming the key and where it came from.  Exit status 0 when valid.",
    )
    _config_arg(p)
    p.add_argument("--show", action="store_true", help="print the effective configuration as JSON")

    p = sub.add_parser(
        "parse",
        help="parse log files and print one JSON event per line",
        description="Parse log files and print each recognised event as one JSON object per line "
        "(NDJSON, Elastic Common Schema field names).  Each event carries log.offset, the byte "
        "offset of its line in the file.  '-' reads standard input.  Binary journal files and "
        "directories are read through libsystemd; gzip, bzip2 and xz rotations are decompressed "
        "(log.offset then counts decompressed bytes).",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="log files to parse ('-' for stdin)")
    p.add_argument(
        "-f",
        "--format",
        choices=_FORMATS,
        default="auto",
        help="input format; 'auto' recognises each line's format (default: auto)",
    )
    p.add_argument(
        "--year",
        type=int,
        default=None,
        help="year for syslog stamps that carry none (default: the most recent past year)",
    )
    p.add_argument("--nested", action="store_true", help="print nested objects instead of dotted field names")
    p.add_argument("--stats", action="store_true", help="print line, event and error counts to stderr at the end")
    p.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=0,
        metavar="N",
        help="parallel workers for large files (default: one per CPU core; 1 disables)",
    )
    p = sub.add_parser(
        "replay",
        help="evaluate the rules over log files (no response is taken)",
        description="Parse log files and evaluate the rules on event time, as a live run would have; "
        "print each finding as one JSON object per line, with the responses it would take in "
        "sentinel.actions.  Nothing is banned, revoked or sent.  It reads what parse reads; several "
        "files are replayed oldest first, by their first event (a shell glob such as auth.log* names "
        "rotations newest first).",
    )
    _config_arg(p)
    p.add_argument("files", nargs="+", metavar="FILE", help="log files to replay ('-' for stdin)")
    p.add_argument(
        "--rules", action="append", type=Path, default=[], metavar="DIR", help="extra rule directory (repeatable)"
    )
    p.add_argument("-f", "--format", choices=_FORMATS, default="auto", help="input format (default: auto)")
    p.add_argument("--year", type=int, default=None, help="year for syslog stamps that carry none")
    p.add_argument("--stats", action="store_true", help="print counts to stderr at the end")
    p.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=0,
        metavar="N",
        help="parallel parsing workers for large files (default: one per CPU core; 1 disables)",
    )
    p.add_argument(
        "--geoip-db", type=Path, default=None, metavar="PATH", help="City or Country .mmdb instead of [geoip] database"
    )

    p = sub.add_parser(
        "ports",
        help="list listening sockets and flag those the allowlist does not allow",
        description="Audit the listening sockets now (TCP in LISTEN, bound UDP) with their process, checked "
        "against the [ports] allowlist.  Exit status 1 if any socket is not allowed, 0 if none, 2 on an error.",
    )
    _config_arg(p)
    p.add_argument(
        "--allow",
        action="append",
        default=None,
        metavar="ENTRY",
        help="allowlist entry such as tcp/22, udp/53, tcp/8080@127.0.0.1 (repeatable; replaces the configured list)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per socket (ECS field names)")

    rules = sub.add_parser(
        "rules",
        help="list and test detection rules",
        description="Work with detection rules: the built-in ones, plus the configured directories.",
    )
    rsub = rules.add_subparsers(dest="rules_command", metavar="ACTION", required=True)
    for action, text in (
        ("list", "list the active rules"),
        ("test", "run every rule's samples; fails if a sample does not hold or a rule has none"),
    ):
        p = rsub.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        _config_arg(p)
        p.add_argument(
            "--rules", action="append", type=Path, default=[], metavar="DIR", help="extra rule directory (repeatable)"
        )
        p.add_argument("--no-builtin", action="store_true", help="only the rules from --rules directories")
    bans = sub.add_parser(
        "bans",
        help="list, add and remove firewall bans (through the running daemon)",
        description="Firewall bans, through the running daemon's control socket (<state_dir>/control.sock): "
        "the daemon applies the allowlist, keeps the ban state and the kernel consistent and records every "
        "change as an event.  Exit status: 0 done, 1 refused or not in effect yet, 3 no daemon answers.",
    )
    bsub = bans.add_subparsers(dest="bans_command", metavar="ACTION", required=True)
    p = bsub.add_parser("list", help="the active bans, and what Sentinel manages in the firewall")
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="at most N bans (soonest to end first)")
    p = bsub.add_parser("add", help="ban an address or CIDR network now")
    _config_arg(p)
    p.add_argument("target", metavar="ADDR", help="an IPv4/IPv6 address or CIDR network, e.g. 2001:db8::/64")
    how_long = p.add_mutually_exclusive_group()
    how_long.add_argument(
        "--duration",
        default=None,
        metavar="DURATION",
        help="e.g. 90, 30m, 1h, 7d (default: [firewall] default_duration)",
    )
    how_long.add_argument("--permanent", action="store_true", help="until removed")
    p = bsub.add_parser("remove", help="lift a ban now")
    _config_arg(p)
    p.add_argument("target", metavar="ADDR", help="the banned address or network")

    p = sub.add_parser(
        "status",
        help="what the running daemon is doing",
        description="Ask the running daemon (over <state_dir>/control.sock; root or the sentinel group) for its "
        "sources and their lag, queue, findings, recent findings, bans and last errors.  Exit status 3 when "
        "no daemon answers.",
    )
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")

    from sentinel.wallet_cli import add_wallet_parser

    add_wallet_parser(sub)
    from sentinel.audit_cli import add_audit_parser

    add_audit_parser(sub, _config_arg)
    return parser


def _config_path(arg: Path | None) -> Path:
    if arg is not None:
        return arg
    env = os.environ.get("SENTINEL_CONFIG")
    return Path(env) if env else Path("/etc/sentinel/config.toml")


def _settings(arg: Path | None, *, required: bool = False) -> Settings | None:
    """The configuration from ``-c``, $SENTINEL_CONFIG or the default file; ``None`` (after saying
    why) when it is bad.  Unless ``required``, a missing default file means the built-in defaults
    (for commands that merely read the configuration)."""
    from sentinel.config import ConfigError, load_settings

    path = _config_path(arg)
    try:
        return load_settings(path if required or arg is not None or path.exists() else None)
    except ConfigError as exc:
        print(f"sentinel: {exc}", file=sys.stderr)
        return None


def _cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(args.config, required=True)
    if settings is None:
        return 2
    if args.show:
        print(settings.model_dump_json(indent=2))
    else:
        print(f"{_config_path(args.config)}: configuration is valid ({len(settings.sources)} sources)")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args.config, required=True)
    if settings is None:
        return 2
    path = _config_path(args.config)
    if args.wallet_password_fd is not None:
        os.environ["SENTINEL_WALLET_PASSWORD_FD"] = str(args.wallet_password_fd)
    from sentinel.daemon import run_daemon

    return run_daemon(settings, config_path=path)


def _cmd_parse(args: argparse.Namespace) -> int:
    from sentinel.collectors.parse_files import parse_files

    return parse_files(
        args.files,
        fmt=args.format,
        year=args.year,
        nested=args.nested,
        show_stats=args.stats,
        jobs=args.jobs,
    )


def _cmd_replay(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    if settings is None:
        return 2
    from sentinel.engine.rule import RuleError
    from sentinel.replay import replay

    try:
        return replay(
            args.files,
            settings,
            args.rules,
            fmt=args.format,
            year=args.year,
            show_stats=args.stats,
            jobs=args.jobs,
            geoip_db=args.geoip_db,
        )
    except RuleError as exc:
        print(f"sentinel: {exc}", file=sys.stderr)
        return 2


def _cmd_rules(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    if settings is None:
        return 2
    from sentinel.engine.rule import RuleError, load_rules

    try:
        rules = load_rules(
            [*settings.rules.directories, *args.rules], settings.rules.disabled, builtin=not args.no_builtin
        )
    except RuleError as exc:
        print(f"sentinel: {exc}", file=sys.stderr)
        return 2
    if args.rules_command == "list":
        for rule in rules:
            techniques = ",".join(rule.techniques) or "-"
            print(f"{rule.id:28} {rule.severity:8} {techniques:20} {rule.name}  [{rule.source}]")
        return 0
    from sentinel.engine.samples import test_rules

    results = test_rules(rules)
    failed = [r for r in results if not r.ok]
    for r in results:
        where = f"sample {r.index}" if r.index >= 0 else "samples"
        print(f"{'ok  ' if r.ok else 'FAIL'} {r.rule_id} {where}: {r.detail}")
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed or not results else 0


def _cmd_ports(args: argparse.Namespace) -> int:
    allowed = args.allow
    if allowed is None:
        settings = _settings(args.config)
        if settings is None:
            return 2
        allowed = settings.ports.allowed
    from sentinel.ports_cli import ports_command

    return ports_command(allowed, args.json)


def _cmd_bans(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    if settings is None:
        return 2
    from sentinel.bans_cli import bans_command

    return bans_command(args, settings.daemon.state_dir)


def _cmd_status(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    if settings is None:
        return 2
    import json

    from sentinel.control import ControlUnavailable, request, socket_path
    from sentinel.status import print_status

    try:
        result = request(socket_path(settings.daemon.state_dir), "status")
    except ControlUnavailable as exc:
        print(f"sentinel: {exc}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_status(result)
    return 0


def _cmd_wallet(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    if settings is None:
        return 2
    from sentinel.wallet_cli import run_wallet

    return run_wallet(args, settings.wallet.file(settings.daemon.state_dir))


def _cmd_audit(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    if settings is None:
        return 2
    from sentinel.audit_cli import audit_command

    return audit_command(args, settings)


_COMMANDS = {
    "audit": _cmd_audit,
    "bans": _cmd_bans,
    "status": _cmd_status,
    "wallet": _cmd_wallet,
    "ports": _cmd_ports,
    "run": _cmd_run,
    "check-config": _cmd_check_config,
    "parse": _cmd_parse,
    "replay": _cmd_replay,
    "rules": _cmd_rules,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `sentinel parse … | head`
        sys.stderr.close()
        return 0
