"""Evaluate rules on events and turn what fires into findings.

One :class:`Engine` holds the compiled rules and their bounded state.  ``process(event)``
returns the findings that event completes — each one an event with ``event.kind = "alert"``,
the rule's identity and ATT&CK techniques, the ids of the events that made it fire and, in
``sentinel.actions``, the responses to take (already checked against the allowlist).
"""

from __future__ import annotations

import ipaddress
import json
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from hashlib import blake2b
from typing import Any

from sentinel.engine.allowlist import Allowlist
from sentinel.engine.matcher import Predicate, compile_match
from sentinel.engine.rule import SEVERITY_SCORE, Rule
from sentinel.engine.windows import CountWindows, DistinctWindows, NewValues, ValueIds, pack, unpack_id, untag
from sentinel.event import Event, event_id, event_time


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Engine settings from the configuration."""

    allowlist: tuple[str, ...] = ()
    #: Host addresses never banned (``None``: discover this host's own addresses).
    own_addresses: tuple[str, ...] | None = None
    max_keys: int = 1_000_000
    late_tolerance: float = 60.0
    ban_duration: float = 600.0
    ban_max_duration: float = 7 * 86400.0


@dataclass(slots=True)
class EngineStats:
    events: int = 0
    matched: int = 0
    twins: int = 0
    late: int = 0
    findings: dict[str, int] = field(default_factory=dict)
    suppressed: int = 0
    cooled: int = 0


@lru_cache(maxsize=262144)
def _network_key(ip: str, v4: int, v6: int) -> str:
    """The address itself, or its network when the rule groups by prefix (IPv6 /64)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    prefix = v4 if addr.version == 4 else v6
    if prefix == addr.max_prefixlen:
        return ip
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def _id_int(eid: str) -> int:
    """An event id as the 64-bit int the windows store (ids from outside may not be hex)."""
    try:
        return int(eid[-16:], 16)
    except ValueError:
        return int.from_bytes(blake2b(eid.encode(), digest_size=8).digest(), "big")


def int_id(event: Event) -> int:
    """The event's id as the int :meth:`Engine.process` takes (its ``eid`` argument)."""
    return _id_int(event_id(event))


def _match_key(rule: Rule) -> str:
    return json.dumps({k: v.model_dump(exclude_none=True) for k, v in rule.match.items()}, sort_keys=True)


#: Fields every finding takes from the event that completed it, when present.
_CARRIED = (
    "host.hostname",
    "user.name",
    "source.ip",
    "source.address",
    "source.geo.country_iso_code",
    "source.geo.country_name",
    "source.geo.city_name",
    "source.as.number",
    "source.as.organization.name",
    "sentinel.travel.speed_kmh",
    "sentinel.travel.distance_km",
    "sentinel.travel.previous_country",
    "sentinel.travel.elapsed_s",
)

#: Late events between two sweeps of expired state when event time does not advance.
_LATE_SWEEP_EVERY = 100_000

#: An sshd connection lives at most LoginGraceTime (120 s by default) before authenticating.
_CONNECTION_LIFETIME = 600.0

_ADDRESS_FIELDS = frozenset({"source.ip", "destination.ip", "client.ip"})

#: The rules an event may concern, and the (field, value ids) to tag its entry with.
_Candidates = tuple[list["CompiledRule"], tuple[tuple[str, ValueIds], ...]]


class CompiledRule:
    """A rule with its predicate, key function and state."""

    def __init__(self, rule: Rule, options: EngineOptions, matches: Predicate, ids: ValueIds | None = None) -> None:
        self.rule = rule
        self.matches = matches
        cond = rule.condition
        self.state: CountWindows | DistinctWindows | NewValues | None
        if cond.type == "count":
            self.state = CountWindows(cond.threshold, cond.window, options.max_keys)
        elif cond.type == "distinct":
            self.state = DistinctWindows(cond.threshold, cond.window, options.max_keys, ids)
        elif cond.type == "new_value":
            self.state = NewValues(cond.remember, options.max_keys, cond.learn_first)
        else:
            self.state = None
        self.by = tuple(rule.group.by)
        self.v4, self.v6 = rule.group.ipv4_prefix, rule.group.ipv6_prefix
        #: The grouping field when there is one (the common case, a fast path in :meth:`key`).
        self.one = self.by[0] if len(self.by) == 1 else None
        self.one_is_address = self.one in _ADDRESS_FIELDS
        self.cooldown = rule.cooldown
        self.max_keys = options.max_keys
        self.last_fired: dict[Any, float] = {}

    def quiet(self, key: Any, t: float) -> bool:
        """True while ``key`` is in its cooldown after a finding (then the finding is dropped)."""
        if not self.cooldown:
            return False
        last = self.last_fired.get(key)
        if last is not None and 0 <= t - last < self.cooldown:
            return True
        if len(self.last_fired) >= self.max_keys:
            del self.last_fired[next(iter(self.last_fired))]
        self.last_fired[key] = t
        return False

    def key(self, event: Event) -> Any:
        """The group key of ``event`` (``None`` when a grouping field is missing)."""
        if self.one is not None:
            value = event.get(self.one)
            if value is not None and self.one_is_address and (self.v4 != 32 or ":" in value):
                value = _network_key(value, self.v4, self.v6)
            return value
        parts = []
        for name in self.by:
            value = event.get(name)
            if value is None:
                return None
            if name in _ADDRESS_FIELDS and (self.v4 != 32 or ":" in value):
                value = _network_key(value, self.v4, self.v6)
            parts.append(value)
        if len(parts) == 1:
            return parts[0]
        return tuple(parts)


class Engine:
    """Rules over a stream of events, on event time."""

    def __init__(self, rules: Iterable[Rule], options: EngineOptions | None = None) -> None:
        self.options = options or EngineOptions()
        # Rules with the same match share one predicate, evaluated once per event (they sit
        # next to each other in evaluation order).
        predicates: dict[str, Predicate] = {}
        # One value-id table per field of the distinct rules, shared with the engine's entry tags.
        self._value_ids: dict[str, ValueIds] = {}
        self.rules = []
        for rule in sorted(rules, key=_match_key):
            key = _match_key(rule)
            if key not in predicates:
                predicates[key] = compile_match(rule.match)
            ids = None
            if rule.condition.type == "distinct":
                ids = self._value_ids.setdefault(rule.condition.field or "", ValueIds())
            self.rules.append(CompiledRule(rule, self.options, predicates[key], ids))
        self.allowlist = Allowlist(self.options.allowlist, self.options.own_addresses)
        self.stats = EngineStats()
        self.watermark = 0.0  # the latest event time seen
        self._next_expiry = 0.0
        # FIFO of recent connections: OrderedDict drops its oldest in O(1), where a plain dict's
        # next(iter()) rescans the deleted slots at its front (~1 µs a call at 4096 entries).
        self._twins: OrderedDict[tuple[Any, ...], list[float]] = OrderedDict()
        self._index: dict[tuple[Any, Any], _Candidates] = {}
        self._since_sweep = 0  # late events since the last sweep
        # Expired keys are swept every half longest window (between a minute and an hour of event
        # time): a stale key lingers at most that long, and a sweep, which visits every key, stays rare.
        windows = [r.condition.window for r in self._rules() if r.condition.type in ("count", "distinct")]
        self._expiry_every = min(3600.0, max(60.0, max(windows, default=600.0) / 2))
        self._offences: dict[str, list[float]] = {}

    def wants(self, event: Event) -> bool:
        """True if any rule's match accepts ``event`` (a cheap prefilter for parallel replay)."""
        last: Predicate | None = None
        for cr in self._candidates(event.get("event.outcome"), event.get("event.dataset"))[0]:
            if cr.matches is not last:
                last = cr.matches
                if last(event):
                    return True
        return False

    # -- attempts -------------------------------------------------------------------------
    def _attempts(self, event: Event, t: float) -> int:
        """How many new attempts ``event`` stands for, counting each attempt once.

        With ``UsePAM yes`` one wrong password leaves two lines: sshd's own ("Failed password")
        and PAM's ("pam_unix(sshd:auth): authentication failure", or at the end of the
        connection "PAM 2 more authentication failures").  Per connection (host, process,
        peer) the daemon's own count and PAM's count are kept apart, and the connection has
        made as many attempts as the larger of the two: a line only adds what it takes that
        maximum beyond where it stood.  Real repeated attempts still count, each once.
        """
        n: int = event.get("sentinel.attempts", 1)
        pid = event.get("process.pid")
        if pid is None:
            return n
        msg = event.get("message", "")
        pam = msg.startswith(("pam_", "PAM ", "error: PAM:", "(pam_")) or "(pam_" in event.get("process.name", "")
        key = (event.get("host.hostname"), pid, event.get("source.ip"))
        twins = self._twins
        counts = twins.get(key)
        if counts is None or t - counts[2] > _CONNECTION_LIFETIME:  # none yet, or the pid was reused
            if len(twins) >= 4096:  # connections are short: a short memory suffices
                twins.popitem(last=False)
            twins[key] = [0, n, t] if pam else [n, 0, t]
            return n
        before = max(counts[0], counts[1])
        counts[1 if pam else 0] += n
        counts[2] = t
        added = int(max(counts[0], counts[1]) - before)
        if added < n:
            self.stats.twins += 1
        return added

    # -- the hot path ---------------------------------------------------------------------
    def _candidates(self, outcome: Any, dataset: Any) -> _Candidates:
        """Rules whose equality conditions on event.outcome and event.dataset admit these values,
        and the (field, value ids) of their distinct rules, with which the event's entry is tagged."""
        key = (outcome, dataset)
        found = self._index.get(key)
        if found is None:
            rules: list[CompiledRule] = []
            for cr in self.rules:
                match = cr.rule.match
                admits = True
                for name, value in (("event.outcome", outcome), ("event.dataset", dataset)):
                    cond = match.get(name)
                    if cond is not None and cond.equals is not None and value not in cond.equals:
                        admits = False
                if admits:
                    rules.append(cr)
            fields = dict.fromkeys(
                cr.rule.condition.field or "" for cr in rules if isinstance(cr.state, DistinctWindows)
            )
            found = (rules, tuple((f, self._value_ids[f]) for f in fields))
            if len(self._index) < 4096:  # both fields come from parsers: a handful of values
                self._index[key] = found
        return found

    def process(self, event: Event, t: float | None = None, eid: int | None = None) -> list[Event]:
        """Feed one event; return the findings it completes (usually none).

        ``t`` and ``eid``, when given, are the event's time and int id, computed ahead (by a
        parallel replay's workers): ``event_time(event["@timestamp"])`` and ``_id_int(event_id(event))``.
        """
        self.stats.events += 1
        findings: list[Event] = []
        get = event.get
        rules, tags = self._candidates(get("event.outcome"), get("event.dataset"))
        entry = -1  # one packed (time, id) for every rule, built at the first match
        now = 0.0  # the event's time, from then on
        n = -1
        last: Predicate | None = None
        ok = False
        for cr in rules:
            if cr.matches is not last:
                last = cr.matches
                ok = last(event)
            if not ok:
                continue
            if entry < 0:
                now = event_time(event["@timestamp"]) if t is None else t
                if now > self.watermark:
                    self.watermark = now
                    if now >= self._next_expiry:
                        self._expire()
                elif now < self.watermark - self.options.late_tolerance:
                    self.stats.late += 1
                    # Event time has stalled behind the watermark (a clock set back, an old file
                    # replayed live): sweep on processed-event count too, so state stays bounded.
                    self._since_sweep += 1
                    if self._since_sweep >= _LATE_SWEEP_EVERY:
                        self._expire()
                entry = pack(now, _id_int(event_id(event)) if eid is None else eid)
                # Tag the entry with a distinct rule's value, so that the windows of one key can
                # share this int (see sentinel.engine.windows).
                for name, ids in tags:
                    value = get(name)
                    if value is not None and (tag := ids.tag(value)):
                        entry |= tag
                        break
            key = cr.key(event)
            if key is None:
                continue
            self.stats.matched += 1
            state = cr.state
            if isinstance(state, CountWindows):
                if cr.rule.attempts:
                    if n < 0:
                        n = self._attempts(event, now)
                    if n == 0:
                        continue
                    fired = state.add(key, entry, n)
                else:
                    fired = state.add(key, entry, 1)
                if fired is not None:
                    self._add(findings, self._finding(cr, key, event, fired, n if n > 0 else 1))
            elif isinstance(state, DistinctWindows):
                value = get(cr.rule.condition.field or "")
                if value is None:
                    continue
                fired = state.add(key, value, entry)
                if fired is not None:
                    self._add(findings, self._finding(cr, key, event, fired, len(fired)))
            elif isinstance(state, NewValues):
                value = get(cr.rule.condition.field or "")
                if value is None:
                    continue
                is_new, known = state.add(str(key), str(value), now)
                if is_new:
                    finding = self._finding(cr, key, event, [untag(entry)], 1)
                    if finding is not None:
                        finding["sentinel.previous_values"] = known
                        findings.append(finding)
            else:
                self._add(findings, self._finding(cr, key, event, [untag(entry)], 1))
        return findings

    def _rules(self) -> list[Rule]:
        return [cr.rule for cr in self.rules]

    @staticmethod
    def _add(findings: list[Event], finding: Event | None) -> None:
        if finding is not None:
            findings.append(finding)

    def _expire(self) -> None:
        self._since_sweep = 0
        now = self.watermark - self.options.late_tolerance
        for cr in self.rules:
            if cr.state is not None:
                cr.state.expire(now)
        self._next_expiry = self.watermark + self._expiry_every

    # -- findings -------------------------------------------------------------------------
    def _finding(self, cr: CompiledRule, key: Any, event: Event, entries: list[int], count: int) -> Event | None:
        rule = cr.rule
        if cr.quiet(key, (entries[-1] >> 64) / 1000):
            self.stats.cooled += 1
            return None
        ids = list(dict.fromkeys(unpack_id(e) for e in entries))
        finding: Event = {
            "@timestamp": event["@timestamp"],
            "event.kind": "alert",
            "event.category": ["intrusion_detection"],
            "event.type": ["indicator"],
            "event.action": rule.id,
            "event.severity": SEVERITY_SCORE[rule.severity],
            "event.dataset": "sentinel.finding",
            "rule.id": rule.id,
            "rule.name": rule.name,
            "rule.description": rule.description,
            "rule.ruleset": "sentinel",
            "threat.framework": "MITRE ATT&CK",
            "threat.technique.id": list(rule.techniques),
            "tags": [*rule.tags, *rule.compliance],
            "sentinel.severity": rule.severity,
            "sentinel.compliance": list(rule.compliance),
            "sentinel.count": max(count, len(entries)),
            "sentinel.trigger_event_ids": ids,
        }
        for name in (*_CARRIED, *rule.carry):
            if name in event:
                finding[name] = event[name]
        if len(cr.by) == 1:
            finding[f"sentinel.group.{cr.by[0]}"] = key
        else:
            for name, value in zip(cr.by, key, strict=True):
                finding[f"sentinel.group.{name}"] = value
        if "source.ip" in cr.by:
            finding["sentinel.group.source.ip"] = key if len(cr.by) == 1 else key[cr.by.index("source.ip")]
        finding["message"] = self._message(cr, key, count, event)
        actions, suppressed = self._actions(cr, key, event)
        finding["sentinel.actions"] = actions
        if suppressed:
            finding["sentinel.suppressed"] = suppressed
            self.stats.suppressed += 1
        finding["event.id"] = event_id(finding)
        self.stats.findings[rule.id] = self.stats.findings.get(rule.id, 0) + 1
        return finding

    @staticmethod
    def _message(cr: CompiledRule, key: Any, count: int, event: Event) -> str:
        cond = cr.rule.condition
        who = ", ".join(str(k) for k in key) if isinstance(key, tuple) else str(key)
        if cond.type == "count":
            return f"{cr.rule.name}: {cond.threshold} or more events from {who} within {cond.window:g} s"
        if cond.type == "distinct":
            return f"{cr.rule.name}: {cond.threshold} distinct {cond.field} for {who} within {cond.window:g} s"
        if cond.type == "new_value":
            return f"{cr.rule.name}: new {cond.field} {event.get(cond.field or '')!r} for {who}"
        return f"{cr.rule.name}: {who}"

    def _actions(self, cr: CompiledRule, key: Any, event: Event) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        actions: list[dict[str, Any]] = []
        suppressed: list[dict[str, Any]] = []
        for resp in cr.rule.responses:
            if resp.type == "ban":
                # The target is the structural address the parser extracted (or its /64),
                # never text from the message.
                target = key if cr.by == ("source.ip",) else event.get("source.ip")
                if not isinstance(target, str):
                    suppressed.append({"type": "ban", "reason": "no source address"})
                    continue
                if self.allowlist.allowed(target):
                    suppressed.append({"type": "ban", "target": target, "reason": "allowlisted"})
                    continue
                actions.append(self._ban(resp, target, event))
            elif resp.type == "alert":
                actions.append({"type": "alert", "severity": resp.severity or cr.rule.severity})
            elif resp.type == "revoke_tokens":
                user = event.get("user.name")
                if user:
                    actions.append({"type": "revoke_tokens", "user": user})
                else:
                    suppressed.append({"type": "revoke_tokens", "reason": "no user"})
            else:
                actions.append({"type": "record"})
        return actions, suppressed

    def _ban(self, resp: Any, target: str, event: Event) -> dict[str, Any]:
        if resp.permanent:
            return {"type": "ban", "target": target, "duration": None, "permanent": True}
        base = resp.duration if resp.duration is not None else self.options.ban_duration
        cap = min(resp.max_duration or self.options.ban_max_duration, self.options.ban_max_duration)
        duration = base
        offence = 1
        if resp.escalate:
            now = event_time(event["@timestamp"])
            past = [t for t in self._offences.get(target, ()) if now - t <= resp.escalate_window]
            offence = len(past) + 1
            duration = min(base * (2 ** len(past)), cap)
            if len(self._offences) >= self.options.max_keys and target not in self._offences:
                del self._offences[next(iter(self._offences))]
            self._offences[target] = [*past[-16:], now]
        return {"type": "ban", "target": target, "duration": int(duration), "offence": offence}

    def adopt(self, old: Engine) -> None:
        """Take over ``old``'s memory (configuration reload): windows of rules whose grouping
        and condition are unchanged, cooldowns, offences and twin tracking."""
        previous = {cr.rule.id: cr for cr in old.rules}
        for cr in self.rules:
            was = previous.get(cr.rule.id)
            if was is not None and was.rule.group == cr.rule.group and was.rule.condition == cr.rule.condition:
                cr.state = was.state
                cr.last_fired = was.last_fired
        self._offences = old._offences
        self._twins = old._twins
        self.watermark = old.watermark
        self._next_expiry = old._next_expiry
        self.stats = old.stats

    # -- state that outlives a restart ----------------------------------------------------
    def dump_state(self) -> dict[str, Any]:
        """Remembered values (countries per account) and offence history, JSON-able."""
        return {
            "new_values": {cr.rule.id: cr.state.dump() for cr in self.rules if isinstance(cr.state, NewValues)},
            "offences": self._offences,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        for cr in self.rules:
            saved = state.get("new_values", {}).get(cr.rule.id)
            if isinstance(cr.state, NewValues) and saved:
                cr.state.load(saved)
        self._offences = {str(k): [float(t) for t in v] for k, v in state.get("offences", {}).items()}

    def state_sizes(self) -> dict[str, int]:
        """Keys held per rule (for metrics and the memory bound)."""
        return {cr.rule.id: len(cr.state) for cr in self.rules if cr.state is not None}
