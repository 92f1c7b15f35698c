"""Parsers: one raw record (a log line, a journal entry) → zero or one Event.

:func:`get_parser` returns a :data:`LineParser` for a format name; ``auto`` recognises every
supported format line by line.  Parsers are pure functions of their input: attacker-controlled
text is matched by anchored patterns and never decides which field a value lands in.
"""

from __future__ import annotations

from collections.abc import Callable

from sentinel.event import Event

LineParser = Callable[[str], Event | None]

FORMATS = ("auto", "syslog", "journal", "nginx", "apache", "jsonl")


def syslog_parser(year: int | None = None) -> LineParser:
    """Syslog lines from sshd, PAM, sudo, su, dropbear and anything logging through PAM."""
    from sentinel.collectors.parsers.syslog import SyslogParser

    return SyslogParser(*_programs(), year=year)


MessageParser = Callable[[str], Event | None]


def _programs() -> tuple[dict[str, MessageParser], MessageParser]:
    from sentinel.collectors.parsers import dropbear, pam, ssh, sudo, web

    programs: dict[str, MessageParser] = {
        "sshd": ssh.parse,
        "sshd-session": ssh.parse,
        "sshd-auth": ssh.parse,
        "dropbear": dropbear.parse,
        "sudo": sudo.parse_sudo,
        "su": sudo.parse_su,
        # web servers' error logs through syslog / the journal (ErrorLog syslog, error_log syslog:)
        "nginx": web.parse_error_message,
        "apache2": web.parse_error_message,
        "apache": web.parse_error_message,
        "httpd": web.parse_error_message,
    }
    # Tags with a suffix ("httpd/backend1") are not in the table: the fallback tries them too.
    return programs, web.with_error_fallback(pam.parse)


def get_parser(fmt: str = "auto", year: int | None = None) -> LineParser:
    """The line parser for ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "syslog":
        return syslog_parser(year)
    if fmt == "journal":
        from sentinel.collectors.parsers.journal import journal_line_parser

        return journal_line_parser(syslog_parser(year))
    if fmt == "nginx":
        from sentinel.collectors.parsers import web

        return web.nginx_parser(year)
    if fmt == "apache":
        from sentinel.collectors.parsers import web

        return web.apache_parser(year)
    if fmt == "jsonl":
        from sentinel.collectors.parsers.jsonl import parse_app_json

        return parse_app_json
    if fmt == "auto":
        from sentinel.collectors.parsers.auto import AutoParser

        return AutoParser(year)
    raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")
