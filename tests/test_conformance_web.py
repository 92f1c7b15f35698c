"""Conformance: fail2ban's annotated nginx-http-auth and apache-auth samples.

Every ``"match": true`` line must give an authentication failure from the annotated host,
and no ``"match": false`` line may give one.  Sections fail2ban only tests in its
non-default modes (``aggressive``, ``fallback``, ``ddos``) are pre-auth noise: there a
``"match": true`` line must give a failure event from the host, under its own action
(TLS handshake garbage, mod_evasive), which need not be in the ``authentication``
category — the apache-auth corpus even annotates the same mod_evasive line as not a
failure in normal mode.  Each line is checked with ``--format auto`` and with the file's
own format (``nginx`` / ``apache``).  The corpus lives outside the project (see
``../shared/corpora/README.md``); without it the tests skip, or fail under ``CI=true``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from sentinel.collectors.parsers import get_parser
from sentinel.collectors.parsers.addresses import normalize_ip
from sentinel.event import Event, is_auth_failure
from tests.corpus import Sample, corpus_available, load_corpus, require_corpus

FILES = {"nginx-http-auth": "nginx", "apache-auth": "apache"}
#: fail2ban filter modes whose sections hold real authentication failures.
AUTH_MODES = frozenset({"normal", "auth"})


def auth_section(sample: Sample) -> bool:
    """False for a section fail2ban tests only in aggressive/fallback/ddos mode."""
    return bool(sample.mode_names & AUTH_MODES)


def _params() -> list[Any]:
    if not corpus_available():
        return [pytest.param(None, id="corpus-missing")]
    return [pytest.param(s, id=s.id) for name in FILES for s in load_corpus(name)]


def _attributed(event: Event, host: str) -> bool:
    ip = normalize_ip(host)
    if ip is not None:
        return bool(event.get("source.ip") == ip)
    return host in (event.get("source.domain"), event.get("source.address"))


def _expected_utc(local: str) -> str:
    return datetime.fromisoformat(local).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def test_corpus_has_samples() -> None:
    require_corpus(*FILES)
    for name in FILES:
        samples = load_corpus(name)
        assert sum(s.match for s in samples) >= 10, name
        assert any(not s.match for s in samples), name


@pytest.mark.parametrize("sample", _params())
def test_sample(sample: Sample | None) -> None:
    require_corpus(*FILES)
    assert sample is not None
    year = int(sample.time[:4]) if sample.time else None
    for fmt in ("auto", FILES[sample.file]):
        event = get_parser(fmt, year)(sample.line)
        where = f"{fmt}: {sample.line}"
        if not sample.match:
            assert event is None or not is_auth_failure(event), where
            continue
        assert event is not None, where
        assert sample.host is not None, where
        assert _attributed(event, sample.host), (where, event)
        if auth_section(sample):
            assert is_auth_failure(event), (where, event)
        else:
            assert event.get("event.outcome") == "failure", (where, event)
            assert event.get("event.action"), (where, event)
        if sample.time is not None:
            assert event["@timestamp"].startswith(_expected_utc(sample.time)), (where, event)
