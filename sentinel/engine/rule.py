"""Rule files: the schema, validation with precise errors, and loading from disk.

A rule file is one detection with its own test samples; see ``rules/README.md`` for the
format.  Built-in rules ship as package data (``sentinel.rules``); directories from the
configuration add rules or replace a built-in one with the same ``id``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sentinel.engine.durations import Duration

Severity = Literal["low", "medium", "high", "critical"]
SEVERITY_SCORE = {"low": 21, "medium": 47, "high": 73, "critical": 99}  # ECS event.severity scale


class RuleError(Exception):
    """A rule file that cannot be loaded; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldCondition(_Strict):
    """What one event field must satisfy; every given operator must hold."""

    equals: list[Any] | None = None  # any of these (for list fields: any element)
    not_equals: list[Any] | None = None  # none of these
    prefix: list[str] | None = None
    not_prefix: list[str] | None = None
    regex: str | None = None
    exists: bool | None = None
    cidr: list[str] | None = None  # the address lies in one of these networks
    gte: float | None = None
    lte: float | None = None
    #: The condition also holds when the field is absent (e.g. a path condition that must not
    #: exclude error-log events, which carry no path).
    optional: bool = False

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return value

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        """``"x"`` means ``{equals = ["x"]}`` and ``["x", "y"]`` means ``{equals = ["x", "y"]}``."""
        if isinstance(value, dict):
            return {
                k: [v]
                if k in ("equals", "not_equals", "prefix", "not_prefix", "cidr") and not isinstance(v, list)
                else v
                for k, v in value.items()
            }
        return {"equals": value if isinstance(value, list) else [value]}


class Group(_Strict):
    """How matching events are grouped into independent windows."""

    by: list[str] = Field(default_factory=list)
    #: Addresses are grouped by network: IPv6 attackers own whole /64s, so one key per /64.
    ipv6_prefix: int = Field(default=64, ge=1, le=128)
    ipv4_prefix: int = Field(default=32, ge=1, le=32)


class Condition(_Strict):
    """When a group's events become a finding."""

    type: Literal["count", "distinct", "new_value", "every"] = "count"
    threshold: int = Field(default=1, ge=1)
    window: Duration = 600.0
    #: For ``distinct``: the field whose distinct values are counted.  For ``new_value``: the
    #: field whose value is remembered per group (a value not seen within ``remember`` fires).
    field: str | None = None
    remember: Duration = 90 * 86400.0
    #: For ``new_value``: the first value seen for a group is learnt silently.
    learn_first: bool = True

    @model_validator(mode="after")
    def _needs_field(self) -> Condition:
        if self.type in ("distinct", "new_value") and not self.field:
            raise ValueError(f"condition type {self.type!r} needs 'field'")
        return self


class Response(_Strict):
    """What a finding asks responders to do."""

    type: Literal["ban", "alert", "revoke_tokens", "record"]
    duration: Duration | None = None  # ban: seconds (None = the configured default)
    escalate: bool = False  # ban: double the duration for each repeat offence
    escalate_window: Duration = 7 * 86400.0
    max_duration: Duration | None = None  # ban: cap on escalation (None = the configured cap)
    permanent: bool = False
    severity: Severity | None = None  # alert: overrides the rule's severity


class Sample(_Strict):
    """Log lines (or events) that, replayed through this rule alone, must or must not fire."""

    fire: bool
    lines: list[str] = Field(default_factory=list)
    events: list[dict[str, Any]] = Field(default_factory=list)
    format: str = "auto"
    year: int = 2026
    #: Fields the first finding must carry (only for samples that fire).
    expect: dict[str, Any] = Field(default_factory=dict)
    #: Exact number of findings expected (only for samples that fire; default: at least one).
    count: int | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> Sample:
        if not self.lines and not self.events:
            raise ValueError("a sample needs 'lines' or 'events'")
        return self


_TECHNIQUE = re.compile(r"T\d{4}(?:\.\d{3})?")


class Rule(_Strict):
    """One detection: which events, grouped how, firing when, answered by what."""

    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
    name: str
    description: str = ""
    severity: Severity = "medium"
    enabled: bool = True
    #: MITRE ATT&CK technique ids (T1110, T1110.003…), carried by every finding.
    techniques: list[str] = Field(default_factory=list)
    #: Compliance references (e.g. "PCI-DSS-4.0 10.2.1.4"), carried by every finding.
    compliance: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    match: dict[str, FieldCondition] = Field(min_length=1)
    #: Count attempts rather than lines (honour ``sentinel.attempts``, merge sshd/PAM twins).
    attempts: bool = True
    group: Group = Group()
    condition: Condition = Condition()
    #: Fields copied from the event that completed the finding (besides host, user and source).
    carry: list[str] = Field(default_factory=list)
    #: After a finding, the same key stays quiet this long (suppressed findings are counted):
    #: one alert per account per hour rather than one per burst.
    cooldown: Duration = 0.0
    responses: list[Response] = Field(default_factory=lambda: [Response(type="record")])
    samples: list[Sample] = Field(default_factory=list)
    source: str = ""  # the file it came from (set by the loader)

    @field_validator("techniques")
    @classmethod
    def _techniques(cls, value: list[str]) -> list[str]:
        for t in value:
            if not _TECHNIQUE.fullmatch(t):
                raise ValueError(f"{t!r} is not a MITRE ATT&CK technique id (e.g. T1110 or T1110.003)")
        return value

    @property
    def has_samples(self) -> bool:
        """At least one sample that must fire and one that must not."""
        return any(s.fire for s in self.samples) and any(not s.fire for s in self.samples)


def _describe(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{origin}: {key}: {msg}")
    return "\n  ".join(lines)


def parse_rule(text: str, origin: str) -> Rule:
    """Validate one rule file's text; :class:`RuleError` names ``origin`` and the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RuleError(f"{origin}: invalid TOML: {exc}") from None
    try:
        return Rule.model_validate({**data, "source": origin})
    except ValidationError as exc:
        raise RuleError(_describe(exc, origin)) from None


def builtin_rule_files() -> list[tuple[str, str]]:
    """(name, text) of every rule shipped in the package."""
    files = resources.files("sentinel.rules")
    return sorted(
        (f"rules/{f.name}", f.read_text(encoding="utf-8")) for f in files.iterdir() if f.name.endswith(".toml")
    )


def load_rules(directories: Iterable[Path] = (), disabled: Iterable[str] = (), builtin: bool = True) -> list[Rule]:
    """Built-in rules, then each directory's ``*.toml`` (same id replaces), minus disabled ones."""
    by_id: dict[str, Rule] = {}
    texts = builtin_rule_files() if builtin else []
    for directory in directories:
        if not directory.is_dir():
            raise RuleError(f"{directory}: rule directory not found")
        texts.extend((str(p), p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.toml")))
    for origin, text in texts:
        rule = parse_rule(text, origin)
        by_id[rule.id] = rule
    off = set(disabled)
    return [r for r in by_id.values() if r.enabled and r.id not in off]
