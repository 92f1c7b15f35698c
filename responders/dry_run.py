"""The dry-run responder: says what would be done, records it as an event, changes nothing.

It is the default (``[responders] dry_run = true``) so an operator can watch what Sentinel
would ban or revoke before letting it act.  Every action becomes a response event
(``event.action`` = the action, ``sentinel.dry_run = true``), stored beside its finding.
"""

from __future__ import annotations

import logging
from typing import Any

from sentinel.event import Event, event_id

log = logging.getLogger(__name__)


def response_event(finding: Event, action: dict[str, Any], outcome: str, dry_run: bool) -> Event:
    """A response as an ECS event, linked to its finding."""
    event: Event = {
        "@timestamp": finding["@timestamp"],
        "event.kind": "event",
        "event.category": ["intrusion_detection"],
        "event.type": ["denied"] if action["type"] == "ban" else ["info"],
        "event.action": action["type"],
        "event.outcome": outcome,
        "event.dataset": "sentinel.response",
        "rule.id": finding.get("rule.id"),
        "sentinel.finding_id": finding.get("event.id"),
        "sentinel.response": action,
        "sentinel.dry_run": dry_run,
    }
    for name in ("host.hostname", "source.ip", "user.name"):
        if name in finding:
            event[name] = finding[name]
    what = action["type"] if action["type"] != "ban" else f"ban {action.get('target')} for {action.get('duration')} s"
    event["message"] = f"{'would ' if dry_run else ''}{what} ({finding.get('rule.id')})"
    event["event.id"] = event_id(event)
    return event


class DryRunResponder:
    """Logs each action a finding asks for and returns the response events."""

    def respond_one(self, finding: Event, action: dict[str, Any]) -> list[Event]:
        if action["type"] == "record":
            return []
        event = response_event(finding, action, "unknown", dry_run=True)
        log.info("dry-run: %s", event["message"], extra={"rule": finding.get("rule.id")})
        return [event]
