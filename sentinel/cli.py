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

from sentinel import __version__

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
        "event, evaluate the rules and respond.  Stops cleanly on SIGTERM or Ctrl-C.",
    )
    _config_arg(p)

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
        "offset of its line in the file.  '-' reads standard input.",
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
    return parser


def _config_path(arg: Path | None) -> Path:
    if arg is not None:
        return arg
    env = os.environ.get("SENTINEL_CONFIG")
    return Path(env) if env else Path("/etc/sentinel/config.toml")


def _cmd_check_config(args: argparse.Namespace) -> int:
    from sentinel.config import ConfigError, load_settings

    path = _config_path(args.config)
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        print(f"sentinel: {exc}", file=sys.stderr)
        return 2
    if args.show:
        print(settings.model_dump_json(indent=2))
    else:
        print(f"{path}: configuration is valid ({len(settings.sources)} sources)")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from sentinel.config import ConfigError, load_settings

    path = _config_path(args.config)
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        print(f"sentinel: {exc}", file=sys.stderr)
        return 2
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


_COMMANDS = {"run": _cmd_run, "check-config": _cmd_check_config, "parse": _cmd_parse}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `sentinel parse … | head`
        sys.stderr.close()
        return 0
