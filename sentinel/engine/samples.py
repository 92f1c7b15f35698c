"""``sentinel rules test``: every rule's own samples, replayed through that rule alone.

Content is tested like code: a rule with no sample that must fire, or none that must not,
fails — as fail2ban refuses a filter without sample logs.
"""

from __future__ import annotations

from dataclasses import dataclass

from sentinel.collectors.parsers import get_parser
from sentinel.engine.engine import Engine, EngineOptions
from sentinel.engine.rule import Rule, Sample
from sentinel.event import Event, flatten


@dataclass(frozen=True, slots=True)
class SampleResult:
    rule_id: str
    index: int
    ok: bool
    detail: str


def _events(sample: Sample) -> tuple[list[Event], list[str]]:
    parse = get_parser(sample.format, sample.year)
    events: list[Event] = [flatten(e) for e in sample.events]
    unparsed = []
    for line in sample.lines:
        event = parse(line)
        if event is None:
            unparsed.append(line)
        else:
            events.append(event)
    return events, unparsed


def run_sample(rule: Rule, index: int, sample: Sample, options: EngineOptions) -> SampleResult:
    """Replay one sample; describe the first thing that does not hold."""
    events, unparsed = _events(sample)
    if unparsed and sample.fire:
        return SampleResult(rule.id, index, False, f"lines not recognised by the parser: {unparsed[:3]}")
    engine = Engine([rule], options)
    findings = [f for e in events for f in engine.process(e)]
    if not sample.fire:
        if findings:
            return SampleResult(
                rule.id, index, False, f"must not fire, fired {len(findings)}: {findings[0]['message']}"
            )
        return SampleResult(rule.id, index, True, "did not fire")
    if not findings:
        return SampleResult(rule.id, index, False, "must fire, did not")
    if sample.count is not None and len(findings) != sample.count:
        return SampleResult(rule.id, index, False, f"expected {sample.count} findings, got {len(findings)}")
    first = findings[0]
    for name, want in sample.expect.items():
        if first.get(name) != want:
            return SampleResult(rule.id, index, False, f"{name}: expected {want!r}, got {first.get(name)!r}")
    return SampleResult(rule.id, index, True, f"fired {len(findings)}")


def test_rules(rules: list[Rule], options: EngineOptions | None = None) -> list[SampleResult]:
    """Results for every sample of every rule, plus a failure for each rule lacking samples."""
    # Samples are about the rule, not this host: only the built-in local ranges are allowlisted.
    opts = options or EngineOptions(own_addresses=())
    results = []
    for rule in rules:
        if not rule.has_samples:
            results.append(SampleResult(rule.id, -1, False, "needs samples that must fire and samples that must not"))
        for i, sample in enumerate(rule.samples):
            results.append(run_sample(rule, i, sample, opts))
    return results
