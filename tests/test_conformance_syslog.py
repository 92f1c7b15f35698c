"""Conformance: fail2ban's annotated sshd, sshd-journal, pam-generic and dropbear samples.

Each file is read in order by one ``get_parser("syslog")`` parser, as a log would be (sshd
lines that do not name the peer are attributed through earlier lines of the same process).
Then, one test per annotated line:

* ``"match": true`` — the line gives an authentication failure (``event.outcome`` failure,
  ``authentication`` in ``event.category``) from the annotated host: ``source.ip`` equal to it
  when it is an IP address (IPv4-mapped IPv6 collapsed), else ``source.domain`` or
  ``source.address``.  Lines of fail2ban's ``ddos``/``aggressive`` sections too: they are
  pre-authentication attacks, under their own ``ssh_preauth_*`` actions.
* ``"match": false`` — the line gives no such failure.
* an annotated ``time`` (local, no zone) must be the event's time, the parser being told
  the year (as ``sentinel parse --year`` would be) since syslog stamps carry none.

fail2ban's sshd filter is stateful: it holds some lines back and decides later (a PAM
failure only counts once the connection closes without success; a successful login after
failures "for another user" turns into failures; ``Failed publickey`` for an existing
account is ignored).  Sentinel decides each line when it is read, following its own rules
(see ``sentinel.collectors.parsers.ssh``), so the annotations that cannot hold for a parser
that emits one event per line, or that contradict Sentinel's rules, are listed in
:data:`DEVIATIONS` with the reason; they are strict ``xfail`` so that a change of behaviour
shows up.  The corpus lives outside the project (``../shared/corpora``); without it the
tests skip, or fail under ``CI=true``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sentinel.collectors.parsers import get_parser
from sentinel.collectors.parsers.addresses import normalize_ip
from sentinel.collectors.parsers.syslog import SyslogParser
from sentinel.collectors.parsers.timestamps import SyslogClock
from sentinel.event import Event, is_auth_failure
from tests.corpus import Sample, corpus_available, corpus_path, load_corpus, require_corpus

FILES = ("sshd", "sshd-journal", "pam-generic", "dropbear")

_PAM_PENDING = (
    "fail2ban holds a pam_unix(sshd:auth) failure until the connection ends without a login; "
    "Sentinel counts it when logged (a PAM failure through sshd is a failure, and counting at "
    "login time would let a later success hide it)"
)
_SUCCESS = "a successful login is never a failure; fail2ban turns it into one after failures for other users"
_PUBKEY = (
    "Failed publickey for an existing account counts as a failed attempt in Sentinel; fail2ban "
    "ignores it because agents offer several keys (gh-1263)"
)
_INJECTION = (
    "ambiguous text: the user name 'test from 127.0.0.1 port 58946 ssh2:' sent from 10.10.1.2 gives "
    "exactly this line (OpenSSH adds ': info' only for publickey/hostbased/GSSAPI, never for password), "
    "so Sentinel blames 10.10.1.2; fail2ban's expected host is the address inside the user name"
)
_ONCE = "Sentinel counts a connection's end only if the connection had no failure yet (here: 'Invalid user')"
_OLD_PAM = (
    "fail2ban dropped the Linux-PAM < 0.99.2 'prog(pam_unix)[pid]: authentication failure' format; Sentinel reads it"
)
_HOSTS = "the corpus gives the same sshd pid two host names ('test', 'srv'): two different connections for Sentinel"

_SSHD = frozenset({"sshd", "sshd-journal"})
_XX = ":xx" * 14

#: (files, end of the line, reason): the annotations that do not hold for Sentinel, and why.
DEVIATIONS: list[tuple[frozenset[str], str, str]] = [
    (_SSHD, "sshd[2737]: Failed password for invalid user test from 127.0.0.1 port 58946 ssh2: "
            "from 10.10.1.2 port 55555 ssh2", _INJECTION),
    (_SSHD, "sshd[2716]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= "
            "rhost=192.0.2.112  user=root", _PAM_PENDING),
    (_SSHD, "sshd[1556]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= "
            "rhost=192.0.2.113  user=rda", _PAM_PENDING),
    (_SSHD, "sshd[1556]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser=rda "
            "rhost=192.0.2.113 [preauth]", _PAM_PENDING),
    (_SSHD, "sshd[1558]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser=root "
            "rhost=192.0.2.114", _PAM_PENDING),
    (_SSHD, "sshd[1559]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser=root "
            "rhost=192.0.2.116", _PAM_PENDING),  # twice in each file
    (_SSHD, "sshd[1558]: Accepted password for known from 192.0.2.114 port 52100 ssh2", _SUCCESS),
    (_SSHD, "sshd[1559]: Accepted password for known from 192.0.2.116 port 52100 ssh2", _SUCCESS),
    (_SSHD, f"sshd[32307]: Failed publickey for git from 192.0.2.1 port 57904 ssh2: ECDSA 0e:ff{_XX}", _PUBKEY),
    (_SSHD, f"sshd[32307]: Failed publickey for git from 192.0.2.1 port 57904 ssh2: RSA 04:bc{_XX}", _PUBKEY),
    (_SSHD, f"sshd[32310]: Failed publickey for git from 192.0.2.111 port 57910 ssh2: ECDSA 1e:fe{_XX}", _PUBKEY),
    (_SSHD, f"sshd[32310]: Failed publickey for git from 192.0.2.111 port 57910 ssh2: RSA 14:ba{_XX}", _PUBKEY),
    (frozenset({"sshd"}), "sshd[5672]: Disconnected from authenticating user admin 192.0.2.6 port 33553 [preauth]",
     _HOSTS),
    (frozenset({"sshd"}), "sshd[1189074]: Connection closed by invalid user  192.0.2.68 port 34916 [preauth]",
     _ONCE),
    (frozenset({"pam-generic"}), "pop(pam_unix)[4920]: authentication failure; logname= uid=0 euid=0 tty= ruser= "
     "rhost=192.168.10.3 user=mailuser", _OLD_PAM),
]  # fmt: skip


def deviation(sample: Sample) -> str | None:
    """Why ``sample``'s annotation does not hold for Sentinel, or ``None``."""
    for files, tail, reason in DEVIATIONS:
        if sample.file in files and sample.line.endswith(tail):
            return reason
    return None


def _events(name: str) -> dict[int, Event | None]:
    """Every line of corpus file ``name`` through one parser, in order: line number → event.

    The clock is given each annotated line's year, as replaying an old log with ``--year``.
    """
    parse = get_parser("syslog")
    assert isinstance(parse, SyslogParser)
    years = {s.lineno: int(s.time[:4]) for s in load_corpus(name) if s.time}
    out: dict[int, Event | None] = {}
    text = corpus_path(name).read_text(encoding="utf-8")
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.startswith("#") or not line.strip():
            continue
        year = years.get(lineno)
        if year is not None and year != parse.clock.year:
            parse.clock = SyslogClock(year)
        out[lineno] = parse(line)
    return out


_CACHE: dict[str, dict[int, Event | None]] = {}


def event_for(sample: Sample) -> Event | None:
    if sample.file not in _CACHE:
        _CACHE[sample.file] = _events(sample.file)
    return _CACHE[sample.file][sample.lineno]


def _params() -> list[object]:
    if not corpus_available(*FILES):
        return [pytest.param(None, id="corpus-missing")]
    params: list[object] = []
    for name in FILES:
        for sample in load_corpus(name):
            reason = deviation(sample)
            marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
            params.append(pytest.param(sample, id=sample.id, marks=marks))
    return params


def attributed(event: Event, host: str) -> bool:
    """The event's source is ``host`` (an address compared normalised, else a name)."""
    ip = normalize_ip(host)
    if ip is not None:
        return bool(event.get("source.ip") == ip)
    return host in (event.get("source.domain"), event.get("source.address"))


def _naive_stamp(line: str) -> bool:
    """The line's own stamp has no zone (RFC 3164, or ISO without offset)."""
    return line[:1].isalpha() and not line.startswith(("srv ", "sshd["))


def test_corpus_files_present() -> None:
    require_corpus(*FILES)
    for name in FILES:
        samples = load_corpus(name)
        assert sum(s.match for s in samples) >= 8, name
    deviating = [s for name in FILES for s in load_corpus(name) if deviation(s) is not None]
    assert len(deviating) == 29, [s.id for s in deviating]


@pytest.mark.parametrize("sample", _params())
def test_sample(sample: Sample | None) -> None:
    require_corpus(*FILES)
    assert sample is not None
    event = event_for(sample)
    where = f"{sample.id}: {sample.line}"
    if not sample.match:
        assert event is None or not is_auth_failure(event), (where, event)
        return
    assert event is not None, where
    assert is_auth_failure(event), (where, event)
    assert event.get("event.action"), (where, event)
    if sample.host is not None:
        assert attributed(event, sample.host), (where, sample.host, event)
    if sample.time is not None and _naive_stamp(sample.line):
        expected = datetime.fromisoformat(sample.time).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
        assert event["@timestamp"].startswith(expected), (where, event["@timestamp"], expected)
