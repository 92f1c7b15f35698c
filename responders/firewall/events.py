"""Ban and unban outcomes as ECS response events (stored and shipped like any other event).

A response to a finding starts from :func:`sentinel.responders.dry_run.response_event` (same
shape, linked by ``sentinel.finding_id``); bans from ``sentinel bans`` and unbans by expiry have
no finding and are built here alone.  Fields: ``event.action`` ban | unban, ``event.outcome``
success | failure, ``event.reason`` (why refused, why ended), ``event.start`` / ``event.end`` (when
the ban took effect in the kernel / when it ends; no end: permanent), ``error.message`` on
failure, ``sentinel.response`` {type, target, duration, expires, permanent, offence}, and
``sentinel.firewall`` {backend, origin, pending, latency_ms (queued → in the kernel)}.
"""

from __future__ import annotations

import time
from hashlib import blake2b
from typing import Any

import orjson

from sentinel.collectors.parsers.timestamps import epoch_to_utc
from sentinel.event import Event
from sentinel.responders.dry_run import response_event


def ban_event(
    action: str,
    outcome: str,
    target: str,
    *,
    message: str,
    finding: Event | None = None,
    expires: float | None = None,
    permanent: bool = False,
    duration: float | None = None,
    offence: int | None = None,
    reason: str | None = None,
    error: str | None = None,
    origin: str | None = None,
    backend: str | None = None,
    pending: bool = False,
    user_id: int | None = None,
    latency: float | None = None,
    now: float | None = None,
) -> Event:
    """One ban/unban outcome as an event."""
    t = time.time() if now is None else now
    response: dict[str, Any] = {"type": action, "target": target}
    if action == "ban":
        response.update(
            duration=None if permanent or duration is None else int(duration),
            expires=None if expires is None else epoch_to_utc(expires),
            permanent=permanent,
        )
        if offence is not None:
            response["offence"] = offence
    if finding is not None:
        event = response_event(finding, {**response}, outcome, dry_run=False)
        del event["event.id"]
    else:
        event = {
            "@timestamp": epoch_to_utc(t),
            "event.kind": "event",
            "event.category": ["intrusion_detection"],
            "event.type": ["denied"] if action == "ban" else ["end"],
            "event.action": action,
            "event.outcome": outcome,
            "event.dataset": "sentinel.response",
            "sentinel.response": response,
            "sentinel.dry_run": False,
        }
        if "/" not in target:
            event["source.ip"] = target
    event["message"] = message
    event["event.start"] = epoch_to_utc(t)
    if action == "ban" and expires is not None:
        event["event.end"] = epoch_to_utc(expires)
    if reason:
        event["event.reason"] = reason
    if error:
        event["error.message"] = error
    if user_id is not None:
        event["user.id"] = str(user_id)
    event["related.ip"] = [target.split("/")[0]]
    firewall: dict[str, Any] = {}
    if origin:
        firewall["origin"] = origin
    if backend:
        firewall["backend"] = backend
    if pending:
        firewall["pending"] = True
    if latency is not None:
        firewall["latency_ms"] = round(latency * 1000, 3)
    for name, value in firewall.items():
        event[f"sentinel.firewall.{name}"] = value
    key = (event.get("sentinel.finding_id"), action, outcome, target, reason, time.time_ns())
    event["event.id"] = blake2b(orjson.dumps(key), digest_size=8).hexdigest()
    return event
