"""nginx and Apache access and error logs → web events.

Access logs (``common``, ``combined``, Apache ``vhost_combined``): one ``web``/``access``
event per request.  A 401 or 403 is also an ``authentication`` failure
(``http_auth_failed``); the rules engine decides which paths are login endpoints.

Error logs: the messages that report an authentication failure (unknown user, password
mismatch, digest errors, access denied by configuration…) become ``authentication``
failures; a few other attack signals (TLS handshake garbage, rate limiting, mod_evasive)
become failures under their own ``event.action`` without the ``authentication`` category.
Everything else in an error log yields no event.

Attribution is structural and never decided by attacker-controlled text:

* access logs: the client is the first field (the second after a ``vhost:port`` prefix);
  quoted fields honour the servers' escaping (``\\"`` in Apache, ``\\x22`` in nginx), so a
  request line, referrer or user agent cannot shift the fields after it;
* Apache error logs: the client is the ``[client …]`` (or ``[remote …]``) block right after
  the fixed header, and the message is matched from its start, so a ``[client …]`` inside a
  logged path is text, not an address;
* nginx error logs: nginx writes user names and request headers unescaped, so the
  ``, client: ADDR, server: NAME`` context is taken at the position after which the rest of
  the line is nginx's own context grammar (``request: "…"``, ``host: "…"``, ``referrer:
  "…"`` without quotes inside).  This defeats user-name injection (fail2ban's corpus);
  a client who also puts quotes *and* a forged context into its ``Referer`` header can
  still make the line ambiguous, an inherent limit of nginx's format.

Stamps become ISO 8601 UTC with ``Z``; conversions are cached per minute (and zone), since
an offset is whole minutes and the seconds carry over unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from sentinel.collectors.parsers import LineParser
from sentinel.collectors.parsers.addresses import normalize_ip, source_fields
from sentinel.collectors.parsers.syslog import SyslogParser
from sentinel.collectors.parsers.timestamps import MONTHS
from sentinel.event import Event

MessageParser = Callable[[str], Event | None]

_CACHE_LIMIT = 100_000
#: nginx writes at most 2048 bytes per error line, Apache about 8 KiB: longer lines are not
#: theirs, and the caps bound the regex work an attacker can cause.
MAX_NGINX_LINE = 4096
MAX_ERROR_LINE = 16_384
#: How many ", client: " positions not followed by a well-formed context are classified.
_MAX_CANDIDATES = 16

# --------------------------------------------------------------------------- timestamps

_access_minutes: dict[str, str] = {}
_access_seconds: dict[str, str] = {}  # whole stamps: consecutive lines share their second
_local_minutes: dict[str, str] = {}


def access_stamp_to_utc(stamp: str) -> str | None:
    """``10/Oct/2000:13:55:36 -0700`` → ``2000-10-10T20:55:36Z`` (cached per minute and zone)."""
    key = stamp[:17] + stamp[20:]
    prefix = _access_minutes.get(key)
    if prefix is None:
        try:
            sign = -1 if stamp[21] == "-" else 1
            offset = timedelta(hours=int(stamp[22:24]), minutes=int(stamp[24:26]))
            value = datetime(
                int(stamp[7:11]),
                MONTHS[stamp[3:6]],
                int(stamp[0:2]),
                int(stamp[12:14]),
                int(stamp[15:17]),
                tzinfo=timezone(sign * offset),
            )
            prefix = f"{value.astimezone(UTC):%Y-%m-%dT%H:%M}:"
        except (ValueError, KeyError, OverflowError, IndexError):
            return None
        if len(_access_minutes) >= _CACHE_LIMIT:
            _access_minutes.clear()
        _access_minutes[key] = prefix
    return f"{prefix}{stamp[18:20]}Z"


def _local_prefix(key: str, year: int, month: int, day: int, hour: int, minute: int) -> str | None:
    """``YYYY-MM-DDTHH:MM:`` in UTC for a local wall-clock minute (error logs carry no zone)."""
    prefix = _local_minutes.get(key)
    if prefix is None:
        try:
            value = datetime(year, month, day, hour, minute).astimezone(UTC)
        except (ValueError, OverflowError):
            return None
        prefix = f"{value:%Y-%m-%dT%H:%M}:"
        if len(_local_minutes) >= _CACHE_LIMIT:
            _local_minutes.clear()
        _local_minutes[key] = prefix
    return prefix


def nginx_stamp_to_utc(stamp: str) -> str | None:
    """nginx error-log local time ``2012/04/09 11:53:29`` → ISO UTC."""
    key = stamp[:16]
    prefix = _local_minutes.get(key)
    if prefix is None:
        try:
            parts = (int(stamp[0:4]), int(stamp[5:7]), int(stamp[8:10]), int(stamp[11:13]), int(stamp[14:16]))
        except ValueError:
            return None
        prefix = _local_prefix(key, *parts)
        if prefix is None:
            return None
    return f"{prefix}{stamp[17:19]}Z"


def _apache_stamp_to_utc(mon: str, day: str, hm: str, sec: str, frac: str | None, year: str) -> str | None:
    """Apache error-log local time (``Jun 01 02:17:42[.123456] 2013``) → ISO UTC."""
    key = f"{year} {mon} {day} {hm}"
    prefix = _local_minutes.get(key)
    if prefix is None:
        month = MONTHS.get(mon)
        if month is None:
            return None
        prefix = _local_prefix(key, int(year), month, int(day), int(hm[:2]), int(hm[3:5]))
        if prefix is None:
            return None
    return f"{prefix}{sec}{frac or ''}Z"


# --------------------------------------------------------------------------- access logs

# A quoted field as Apache (\" and \\) and nginx (\xHH) escape it: no raw quote inside.
# (Unrolled "normal* (escape normal*)*" form: three times faster than an alternation.)
_QUOTED = r'"([^"\\]*+(?:\\.[^"\\]*+)*+)"'
_ACCESS_HEAD = (
    r"(?:([\w.-]++):(\d++) )?"  # Apache vhost_combined "%v:%p " (never an IPv6 client)
    r'([^\s"]++) [^\s"]++ ([^"]*?) '  # client, ident, remote user (may hold spaces)
    r"\[(\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\] "
)


def _access_pattern(quoted: str) -> re.Pattern[str]:
    return re.compile(_ACCESS_HEAD + quoted + r" (\d{3}|-) (\d++|-)(?: " + quoted + " " + quoted + ")?")


_ACCESS = _access_pattern(_QUOTED)
# Without a backslash in the line there is no escape, and the plain form is equivalent (and
# twice as fast): the common case.
_ACCESS_PLAIN = _access_pattern(r'"([^"]*+)"')
# The same for servers that wrote a raw quote inside a quoted field (no escaping): fields
# end at the first quote followed by what the format puts there.  Only the client (first
# field) is as trustworthy as in the strict form; such events carry sentinel.parse_error.
_ACCESS_LOOSE = re.compile(
    r"(?:([\w.-]+):(\d+) )?"
    r'([^\s"]+) [^\s"]+ ([^"]*?) '
    r"\[(\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\] "
    r'"(.*?)" (\d{3}|-) (\d+|-)(?: "(.*?)" "(.*)")?'
)
_UNESCAPE = re.compile(r'\\(["\\])')
_METHOD = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")


def _unescape(text: str) -> str:
    """Undo Apache's ``\\"`` and ``\\\\`` (``\\xHH`` escapes stay: they stand for raw bytes)."""
    return _UNESCAPE.sub(r"\1", text) if "\\" in text else text


def _request(event: Event, request: str) -> None:
    """Split ``METHOD URL HTTP/x.y`` into ECS fields; garbage sets nothing."""
    method, sep, rest = request.partition(" ")
    if not sep or not ((method.isalpha() and method.isascii()) or _METHOD.fullmatch(method)):
        return
    url, sep, proto = rest.rpartition(" ")
    if sep and proto[:5] == "HTTP/":
        event["http.version"] = proto[5:]
    else:
        url = rest  # HTTP/0.9 style, or a URL with spaces and no version
    if not url:
        return
    if "\\" in url:
        url = _unescape(url)
    event["http.request.method"] = method
    event["url.original"] = url
    if url[0] != "/" and "://" in url:  # absolute form (proxy requests)
        domain, slash, tail = url.partition("://")[2].partition("/")
        url = slash + tail
        domain = domain.partition("?")[0].rpartition("@")[2]
        if domain:
            event["url.domain"] = domain
    if "?" in url:
        path, _, query = url.partition("?")
        if query:
            event["url.query"] = query
    else:
        path = url
    if path:
        event["url.path"] = path


def make_access_parser(dataset: str = "web.access") -> LineParser:
    """An access-log line parser whose events carry ``event.dataset`` = ``dataset``."""
    strict = _ACCESS.match
    plain = _ACCESS_PLAIN.match
    loose = _ACCESS_LOOSE.match
    to_utc = access_stamp_to_utc
    seconds = _access_seconds
    norm = normalize_ip
    service = dataset.partition(".")[0] if dataset != "web.access" else None

    def parse(line: str) -> Event | None:
        escaped = "\\" in line
        m = strict(line) if escaped else plain(line)
        problem = None
        if m is None or (m.group(9) is None and line.startswith(' "', m.end())):
            m = loose(line)
            if m is None:
                return None
            problem = "raw quote inside a quoted field; fields after the client may be shifted"
        vhost, _port, addr, user, stamp, request, status, size, referrer, agent = m.groups()
        timestamp = seconds.get(stamp)
        if timestamp is None:
            timestamp = to_utc(stamp)
            if timestamp is None:
                return None
            if len(seconds) >= _CACHE_LIMIT:
                seconds.clear()
            seconds[stamp] = timestamp
        event: Event = {
            "@timestamp": timestamp,
            "event.kind": "event",
            "event.category": ["web"],
            "event.type": ["access"],
            "event.dataset": dataset,
        }
        if addr != "-":
            event["source.address"] = addr
            ip = norm(addr)
            if ip is not None:
                event["source.ip"] = ip
            else:
                event["source.domain"] = addr
        if user != "-" and user:
            event["user.name"] = _unescape(user) if escaped else user
        if request != "-":
            _request(event, request)
        if status != "-":
            code = int(status)
            event["http.response.status_code"] = code
            if code < 400:
                event["event.outcome"] = "success"
            else:
                event["event.outcome"] = "failure"
                if code == 401 or code == 403:
                    event["event.category"] = ["authentication", "web"]
                    event["event.action"] = "http_auth_failed"
        else:
            event["event.outcome"] = "unknown"
        if size != "-":
            event["http.response.body.bytes"] = int(size)
        if referrer is not None:
            if referrer != "-":
                event["http.request.referrer"] = _unescape(referrer) if escaped else referrer
            if agent != "-":
                event["user_agent.original"] = _unescape(agent) if escaped else agent
        if vhost is not None:
            event["url.domain"] = vhost
        if service is not None:
            event["service.name"] = service
        if problem is not None:
            event["sentinel.parse_error"] = problem
            event["event.original"] = line
        return event

    return parse


# --------------------------------------------------------------------------- error events


def _error_event(action: str, dataset: str, timestamp: str | None, source: dict[str, Any], message: str) -> Event:
    category, kind = _ACTIONS[action]
    event: Event = {} if timestamp is None else {"@timestamp": timestamp}
    event |= {
        "event.kind": "event",
        "event.category": list(category),
        "event.type": list(kind),
        "event.action": action,
        "event.outcome": "failure",
        "event.dataset": dataset,
        "service.name": dataset.partition(".")[0],
        "message": message,
    }
    event.update(source)
    return event


_AUTH = ("authentication", "web")
_AUTH_TYPE = ("start",)
#: event.action → (event.category, event.type).  Authentication failures first; the others
#: are attack signals the brute-force rules must not count as failed logins.
_ACTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "http_auth_failed": (_AUTH, _AUTH_TYPE),
    "http_auth_missing": (_AUTH, _AUTH_TYPE),
    "http_auth_invalid": (_AUTH, _AUTH_TYPE),
    "http_authz_failed": (_AUTH, _AUTH_TYPE),
    "http_access_denied": (_AUTH, _AUTH_TYPE),
    "http_sni_mismatch": (_AUTH, _AUTH_TYPE),
    "tls_handshake_failed": (("network", "web"), ("connection", "error")),
    "http_rate_limited": (("network", "web"), ("denied",)),
    "http_dos_blocked": (("intrusion_detection", "web"), ("denied",)),
}


# --------------------------------------------------------------------------- nginx error log

_NGINX_HEAD = re.compile(
    r"(?:\S+ nginx: )?(?:(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) )?"
    r"\[([a-z]+)\] (\d+)#\d+: (?:\*\d+ )?"
)
# nginx's own context after the message: no quote inside the quoted values, up to the end.
_NGINX_CONTEXT = re.compile(
    r', client: ([^\s,"]+), server: [^\s,"]*'
    r'(?:, request: "[^"]*")?(?:, subrequest: "[^"]*")?(?:, upstream: "[^"]*")?'
    r'(?:, host: "[^"]*")?(?:, referrer: "[^"]*")?\s*$'
)
_NGINX_CLIENT = re.compile(r", client: ([^\s,]+)")
_NGINX_MESSAGES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r'user "(?P<user>.*)":? was not found in "[^"]*"'), "http_auth_failed"),
    (re.compile(r'user "(?P<user>.*)":? password mismatch'), "http_auth_failed"),
    (re.compile(r"PAM: user '(?P<user>.*)' - not authenticated: .*"), "http_auth_failed"),
    (re.compile(r"no user/password was provided for basic authentication"), "http_auth_missing"),
    (re.compile(r"access forbidden by rule"), "http_access_denied"),
    (re.compile(r"SSL_(?:do_handshake|read)\(\) failed \(SSL: .*\)(?: while .*)?"), "tls_handshake_failed"),
    (
        re.compile(
            r'(?:limiting requests, excess: \S+|delaying request, excess: \S+,) by zone "[^"]*"'
            r'|limiting connections by zone "[^"]*"'
        ),
        "http_rate_limited",
    ),
)


def _nginx_classify(text: str) -> tuple[str, str | None] | None:
    for pattern, action in _NGINX_MESSAGES:
        m = pattern.fullmatch(text)
        if m is not None:
            return action, (m.group("user") if "user" in pattern.groupindex else None)
    return None


def parse_nginx_error(line: str, require_stamp: bool = True) -> Event | None:
    """One nginx error-log line (or syslog message) → an event if it reports an attack."""
    if len(line) > MAX_NGINX_LINE:
        return None
    head = _NGINX_HEAD.match(line)
    if head is None:
        return None
    stamp, _level, pid = head.groups()
    if stamp is None and require_stamp:
        return None
    msg = line[head.end() :]
    # The real context is the first ", client: " from which the rest of the line is nginx's
    # context grammar; one inside an injected user name never is, since the rest of nginx's
    # own message (with spaces and quotes) follows it.  Without any (a quote in a header,
    # a truncated line), the first position whose preceding text is a known message wins.
    found: tuple[str, str | None, str, str] | None = None  # action, user, address, text
    fallback = found
    loose_tries = 0
    start = 0
    while True:
        at = msg.find(", client: ", start)
        if at < 0:
            break
        start = at + 10
        context = _NGINX_CONTEXT.match(msg, at)
        if context is None:
            if fallback is not None or loose_tries >= _MAX_CANDIDATES:
                continue
            loose_tries += 1
        kind = _nginx_classify(msg[:at])
        if kind is None:
            continue
        if context is not None:
            found = (*kind, context.group(1), msg[:at])
            break
        client = _NGINX_CLIENT.match(msg, at)
        if client is not None:
            fallback = (*kind, client.group(1), msg[:at])
    if found is None:
        found = fallback
        if found is None:
            return None
    action, user, addr, text = found
    timestamp = None
    if stamp is not None:
        timestamp = nginx_stamp_to_utc(stamp)
        if timestamp is None:
            return None
    event = _error_event(action, "nginx.error", timestamp, source_fields(addr), text)
    if user:
        event["user.name"] = user
    event["process.pid"] = int(pid)
    return event


# --------------------------------------------------------------------------- Apache error log

_APACHE_STAMP = re.compile(r"\[[A-Z][a-z]{2} ([A-Z][a-z]{2}) ([ \d]\d) (\d\d:\d\d):(\d\d)(\.\d{1,9})? (\d{4})\] ")
_APACHE_HEAD = re.compile(
    r"\[(?:([^\s:\]]*):)?([a-z]+\d?)\] "  # [module:level] (2.4) or [level] (2.2)
    r"(?:\[pid (\d+)(?::tid \d+)?\] )?"
    r"(?:[\w.-]+\(\d+\): )?"  # %F: source file (debug builds)
    r"(?:\(-?\d+\)[^\[]*?: )?"  # %E: APR status "(13)Permission denied: "
    r"\[(?:client|remote) (\[[^\]\s]+\](?::\d+)?|[^\]\s]+)\] "
    r"(?:AH\d{5}: )?(?:Digest: )?"
)
_APACHE_MESSAGES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"user `(?P<user>.*)' in realm `.*' not found(?:: (?P<path>.*))?"), "http_auth_failed"),
    (re.compile(r"user (?P<user>.*?) not found(?:: (?P<path>.*))?"), "http_auth_failed"),
    (
        re.compile(r'user (?P<user>.*?): authentication failure for "(?P<path>.*?)": .*'),
        "http_auth_failed",
    ),
    (re.compile(r"user (?P<user>.*?): password mismatch: (?P<path>.*)"), "http_auth_failed"),
    (
        re.compile(r'user (?P<user>.*?): authorization failure for "(?P<path>.*?)":.*'),
        "http_authz_failed",
    ),
    (
        re.compile(r"Authorization of user (?P<user>.*?) to access (?P<path>.*?) failed, reason: .*"),
        "http_authz_failed",
    ),
    (re.compile(r"client denied by server configuration: (?P<path>.*)"), "http_access_denied"),
    (re.compile(r"client used wrong authentication scheme: (?P<path>.*)"), "http_auth_failed"),
    (re.compile(r"realm mismatch - got `.*' but expected `.*'"), "http_auth_failed"),
    (re.compile(r"invalid qop `.*' received: (?P<path>.*)"), "http_auth_invalid"),
    (re.compile(r"unknown algorithm `.*' received: (?P<path>.*)"), "http_auth_invalid"),
    # "hash is not …" is left out on purpose: a stale nonce from a legitimate client.
    (
        re.compile(r"invalid nonce \S+ received - (?:length is not \d+|user attempted time travel)"),
        "http_auth_invalid",
    ),
    (
        re.compile(
            r"Hostname \S+ provided via SNI(?:, but no hostname provided in HTTP request"
            r"| and hostname \S+ provided via HTTP (?:are different|have no compatible SSL setup))"
            r"|No hostname was provided via SNI for a name based virtual host"
        ),
        "http_sni_mismatch",
    ),
)


def _apache_client(text: str) -> dict[str, Any]:
    """``1.2.3.4``, ``1.2.3.4:5678``, ``[2001:db8::1]:5678`` or a bare IPv6 address."""
    port: str | None = None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = rest[1:]
    elif normalize_ip(text) is not None:
        host = text
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not (port.isascii() and port.isdigit()):
            host, port = text, None
    return source_fields(host, port)


def _apache_classify(text: str) -> tuple[re.Match[str], str] | None:
    for pattern, action in _APACHE_MESSAGES:
        m = pattern.fullmatch(text)
        if m is not None:
            return m, action
    return None


def parse_apache_error(line: str, require_stamp: bool = True) -> Event | None:
    """One Apache 2.2/2.4 error-log line (or syslog message) → an event if it reports an attack."""
    if len(line) > MAX_ERROR_LINE:
        return None
    timestamp = None
    pos = 0
    stamp = _APACHE_STAMP.match(line)
    if stamp is not None:
        timestamp = _apache_stamp_to_utc(*stamp.groups())
        if timestamp is None:
            return None
        pos = stamp.end()
    elif require_stamp:
        return None
    head = _APACHE_HEAD.match(line, pos)
    if head is None:
        return None
    module, _level, pid, client = head.groups()
    text = line[head.end() :]
    kind = _apache_classify(text)
    if kind is None:
        return None
    m, action = kind
    if action == "http_access_denied" and module is not None and module.startswith("evasive"):
        action = "http_dos_blocked"  # mod_evasive: a rate limit, not an authentication failure
    event = _error_event(action, "apache.error", timestamp, _apache_client(client), text)
    groups = m.groupdict()
    user = groups.get("user")
    if user:
        event["user.name"] = user
    path = groups.get("path")
    if path:
        path = path.partition(", referer: ")[0]
        if path.startswith("/"):
            event["url.path"] = path
    if pid is not None:
        event["process.pid"] = int(pid)
    return event


# --------------------------------------------------------------------------- entry points


def parse_error_message(msg: str) -> Event | None:
    """A web server's error message as syslog or the journal carries it (no stamp needed).

    Registered for the ``nginx``, ``apache2`` and ``httpd`` programs; the syslog frame then
    adds time, host and process.
    """
    return parse_nginx_error(msg, require_stamp=False) or parse_apache_error(msg, require_stamp=False)


def with_error_fallback(first: MessageParser) -> MessageParser:
    """``first``, then web error messages: the syslog fallback for unregistered program tags.

    Apache's ``ErrorLog syslog:…`` may tag lines ``httpd/backend1``; only messages opening
    like an error-log record (``[`` or an nginx date) pay for the second try.
    """

    def parse(msg: str) -> Event | None:
        event = first(msg)
        if event is None:
            c = msg[:1]
            if c == "[":  # "[module:level] …", not the kernel's "[12345.678] …"
                c = msg[1:2]
                return parse_apache_error(msg, require_stamp=False) if c.isalpha() or c == ":" else None
            if c.isdigit():
                return parse_nginx_error(msg, require_stamp=False)
        return event

    return parse


def _framed(year: int | None) -> LineParser:
    """Web error messages inside syslog / journal-style framing, whatever the program tag."""
    return SyslogParser({}, parse_error_message, year=year)


def nginx_parser(year: int | None = None) -> LineParser:
    """nginx access log (combined/common) or error log, also framed by syslog/the journal."""
    access = make_access_parser("nginx.access")
    framed = _framed(year)

    def parse(line: str) -> Event | None:
        event = access(line)
        if event is None:
            if line[4:5] == "/":
                event = parse_nginx_error(line)
            if event is None:
                event = framed(line)
        return event

    return parse


def apache_parser(year: int | None = None) -> LineParser:
    """Apache access log (combined/common/vhost_combined) or error log, also framed by syslog."""
    access = make_access_parser("apache.access")
    framed = _framed(year)

    def parse(line: str) -> Event | None:
        event = parse_apache_error(line) if line[:1] == "[" else access(line)
        return event if event is not None else framed(line)

    return parse
