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

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sentinel.collectors.parsers import get_parser
from sentinel.collectors.parsers.addresses import normalize_ip
from sentinel.event import Event, is_auth_failure

CORPUS = Path(__file__).resolve().parents[2] / "shared/corpora/fail2ban"
FILES = {"nginx-http-auth": "nginx", "apache-auth": "apache"}
#: fail2ban filter modes whose sections hold real authentication failures.
AUTH_MODES = frozenset({"normal", "auth"})


@dataclass(frozen=True)
class Sample:
    """One annotated corpus line."""

    file: str
    lineno: int
    line: str
    match: bool
    host: str | None
    time: str | None
    auth_section: bool  # False: a section fail2ban tests only in aggressive/fallback/ddos mode


def _modes(options: Any) -> set[str]:
    opts = options if isinstance(options, list) else [options]
    return {str(o.get("mode", "normal")) for o in opts if isinstance(o, dict)} or {"normal"}


def load_samples(path: Path) -> list[Sample]:
    """The ``# failJSON:`` annotated lines of one corpus file, with their section's modes."""
    samples: list[Sample] = []
    pending: dict[str, Any] | None = None
    auth_section = True
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("# filterOptions:"):
            auth_section = bool(_modes(json.loads(line.split(":", 1)[1])) & AUTH_MODES)
        elif line.startswith("# failJSON:"):
            pending = json.loads(line.split(":", 1)[1])
        elif line.startswith("#") or not line.strip():
            continue
        elif pending is not None:
            samples.append(
                Sample(
                    path.name,
                    lineno,
                    line,
                    bool(pending.get("match")),
                    pending.get("host"),
                    pending.get("time"),
                    auth_section,
                )
            )
            pending = None
    return samples


def _params() -> list[Any]:
    if not CORPUS.is_dir():
        return [pytest.param(None, id="corpus-missing")]
    return [
        pytest.param(s, id=f"{s.file}:{s.lineno}")
        for name in FILES
        if (CORPUS / name).is_file()
        for s in load_samples(CORPUS / name)
    ]


def _require_corpus() -> None:
    if not CORPUS.is_dir() or not all((CORPUS / name).is_file() for name in FILES):
        reason = f"fail2ban corpus not found at {CORPUS}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def _attributed(event: Event, host: str) -> bool:
    ip = normalize_ip(host)
    if ip is not None:
        return bool(event.get("source.ip") == ip)
    return host in (event.get("source.domain"), event.get("source.address"))


def _expected_utc(local: str) -> str:
    return datetime.fromisoformat(local).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def test_corpus_has_samples() -> None:
    _require_corpus()
    for name in FILES:
        samples = load_samples(CORPUS / name)
        assert sum(s.match for s in samples) >= 10, name
        assert any(not s.match for s in samples), name


@pytest.mark.parametrize("sample", _params())
def test_sample(sample: Sample | None) -> None:
    _require_corpus()
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
        if sample.auth_section:
            assert is_auth_failure(event), (where, event)
        else:
            assert event.get("event.outcome") == "failure", (where, event)
            assert event.get("event.action"), (where, event)
        if sample.time is not None:
            assert event["@timestamp"].startswith(_expected_utc(sample.time)), (where, event)
