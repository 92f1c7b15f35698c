"""Compile a rule's ``match`` table into one fast predicate over events."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from sentinel.engine.rule import FieldCondition
from sentinel.event import Event

Predicate = Callable[[Event], bool]

#: ECS fields whose value is a list; a condition on them holds if it holds for any element.
LIST_FIELDS = frozenset({"event.category", "event.type", "related.ip", "related.user", "threat.technique.id", "tags"})


def _values_check(name: str, cond: FieldCondition) -> list[Callable[[Any], bool]]:
    checks: list[Callable[[Any], bool]] = []
    if cond.equals is not None:
        wanted = frozenset(cond.equals)
        checks.append(wanted.__contains__)
    if cond.not_equals is not None:
        unwanted = frozenset(cond.not_equals)
        checks.append(lambda v: v not in unwanted)
    if cond.prefix is not None:
        prefixes = tuple(cond.prefix)
        checks.append(lambda v: isinstance(v, str) and v.startswith(prefixes))
    if cond.not_prefix is not None:
        excluded = tuple(cond.not_prefix)
        checks.append(lambda v: not (isinstance(v, str) and v.startswith(excluded)))
    if cond.regex is not None:
        search = re.compile(cond.regex).search
        checks.append(lambda v: isinstance(v, str) and search(v) is not None)
    if cond.cidr is not None:
        nets = [ipaddress.ip_network(c, strict=False) for c in cond.cidr]

        def in_nets(v: Any) -> bool:
            try:
                addr = ipaddress.ip_address(v)
            except (ValueError, TypeError):
                return False
            return any(addr in n for n in nets)

        checks.append(in_nets)
    if cond.gte is not None or cond.lte is not None:
        lo = cond.gte if cond.gte is not None else float("-inf")
        hi = cond.lte if cond.lte is not None else float("inf")
        checks.append(lambda v: isinstance(v, int | float) and not isinstance(v, bool) and lo <= v <= hi)
    return checks


def compile_field(name: str, cond: FieldCondition) -> Predicate:
    """A predicate for one field's condition."""
    checks = _values_check(name, cond)
    exists = cond.exists
    is_list = name in LIST_FIELDS
    optional = cond.optional

    if len(checks) == 1 and cond.equals is not None and exists is None and not optional:
        wanted = frozenset(cond.equals)
        if is_list:
            return lambda e: not wanted.isdisjoint(e.get(name) or ())
        return lambda e: e.get(name) in wanted

    def pred(e: Event) -> bool:
        value = e.get(name)
        if exists is not None and (value is not None) != exists:
            return False
        if not checks:
            return True
        if value is None:
            return optional
        if is_list and isinstance(value, list):
            return all(any(c(v) for v in value) for c in checks)
        return all(c(value) for c in checks)

    return pred


def compile_match(match: dict[str, FieldCondition]) -> Predicate:
    """All of the rule's field conditions as one generated expression, cheapest-to-reject first.

    Plain equality and existence conditions become inline dict look-ups (no call per field);
    the others call their compiled closure.  Only constants and field names (as ``repr``)
    enter the generated source.
    """
    # Equality on event.outcome / event.kind rejects most events in one dict lookup.
    order = sorted(match.items(), key=lambda kv: (kv[0] not in ("event.outcome", "event.kind"), kv[0]))
    namespace: dict[str, Any] = {}
    terms = []
    for i, (name, cond) in enumerate(order):
        simple = cond.model_dump(exclude_none=True)
        if not cond.optional:  # always dumped (a bool, never None); only its True needs the closure
            del simple["optional"]
        if set(simple) == {"equals"}:
            namespace[f"c{i}"] = frozenset(cond.equals or ())
            if name in LIST_FIELDS:
                terms.append(f"not c{i}.isdisjoint(e.get({name!r}) or ())")
            else:
                terms.append(f"e.get({name!r}) in c{i}")
        elif set(simple) == {"exists"}:
            terms.append(f"e.get({name!r}) is {'not ' if cond.exists else ''}None")
        elif set(simple) in ({"prefix"}, {"not_prefix"}) and name not in LIST_FIELDS:
            # As compile_field: an absent field fails both; a value that is not a string has no prefix.
            namespace[f"c{i}"] = tuple(cond.prefix or cond.not_prefix or ())
            value = f"(v{i} := e.get({name!r}))"
            if cond.prefix:
                terms.append(f"(isinstance({value}, str) and v{i}.startswith(c{i}))")
            else:
                terms.append(f"({value} is not None and not (isinstance(v{i}, str) and v{i}.startswith(c{i})))")
        else:
            namespace[f"p{i}"] = compile_field(name, cond)
            terms.append(f"p{i}(e)")
    source = "lambda e: " + " and ".join(terms)
    predicate: Predicate = eval(source, namespace)  # noqa: S307 - built from constants and repr()s only
    return predicate
