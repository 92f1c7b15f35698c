"""Reading fail2ban's annotated sample logs (``../shared/corpora/fail2ban``) for conformance tests.

The corpus lives outside the project (GPL test data, see ``../shared/corpora/README.md``).
:func:`load_corpus` returns one :class:`Sample` per annotated line; :func:`require_corpus`
skips a test when the corpus is missing, or fails it under ``CI=true``.

Annotation format: ``# failJSON: {...}`` describes the next non-comment line (``match``,
``host``, ``user``, ``time``, …); ``# filterOptions: [...]`` gives the fail2ban filter modes
the following section is tested under; ``# fileOptions: {...}`` applies to the whole file
(``{"logtype": "journal"}``: lines without a syslog stamp).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CORPUS = Path(__file__).resolve().parents[2] / "shared/corpora/fail2ban"


@dataclass(frozen=True)
class Sample:
    """One annotated corpus line."""

    file: str
    lineno: int
    line: str
    match: bool
    host: str | None
    user: str | None
    time: str | None
    #: The whole ``failJSON`` annotation (``desc``, ``constraint``, ``attempts``…).
    options: dict[str, Any] = field(default_factory=dict)
    #: The section's ``filterOptions``, one dict per mode (``{}`` is the normal mode).
    modes: tuple[dict[str, Any], ...] = ({},)
    #: The file's ``fileOptions``.
    file_options: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """``file:line``, for test ids."""
        return f"{self.file}:{self.lineno}"

    @property
    def mode_names(self) -> frozenset[str]:
        """The section's modes by name (``normal`` for ``{}``)."""
        return frozenset(str(m.get("mode", "normal")) for m in self.modes)


def _as_modes(value: Any) -> tuple[dict[str, Any], ...]:
    values = value if isinstance(value, list) else [value]
    return tuple(v for v in values if isinstance(v, dict)) or ({},)


def corpus_path(name: str) -> Path:
    """The path of corpus file ``name`` (whether or not it exists)."""
    return CORPUS / name


def corpus_available(*names: str) -> bool:
    """True if the corpus directory (and each named file) is there."""
    return CORPUS.is_dir() and all((CORPUS / n).is_file() for n in names)


def require_corpus(*names: str) -> None:
    """Skip the calling test without the corpus, or fail it when ``CI=true``."""
    if not corpus_available(*names):
        reason = f"fail2ban corpus not found at {CORPUS} (files: {', '.join(names) or 'any'})"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def load_corpus(name: str) -> list[Sample]:
    """The annotated lines of corpus file ``name``, in file order (``[]`` if it is missing)."""
    path = CORPUS / name
    if not path.is_file():
        return []
    samples: list[Sample] = []
    pending: dict[str, Any] | None = None
    modes: tuple[dict[str, Any], ...] = ({},)
    file_options: dict[str, Any] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("# fileOptions:"):
            file_options = json.loads(line.split(":", 1)[1])
        elif line.startswith("# filterOptions:"):
            modes = _as_modes(json.loads(line.split(":", 1)[1]))
        elif line.startswith("# failJSON:"):
            pending = json.loads(line.split(":", 1)[1])
        elif line.startswith("#") or not line.strip():
            continue
        elif pending is not None:
            host = pending.get("host") or pending.get("ip4") or pending.get("ip6")
            samples.append(
                Sample(
                    file=name,
                    lineno=lineno,
                    line=line,
                    match=bool(pending.get("match")),
                    host=host,
                    user=pending.get("user"),
                    time=pending.get("time"),
                    options=pending,
                    modes=modes,
                    file_options=dict(file_options),
                )
            )
            pending = None
    return samples
