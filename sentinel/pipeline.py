"""The detection stage of ``sentinel run``: enrich → rules → responses, on the writer thread.

Findings and response events join their batch, so the events that caused a finding, the
finding and what was done about it are committed in one transaction with the source's
checkpoint.  Rule memory worth keeping across restarts (the countries each account uses,
repeat offenders, each account's last login place) is saved after commits, at most every
``SAVE_INTERVAL`` seconds, and when the daemon stops.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from sentinel.collectors.sources.base import Batch
from sentinel.config import EngineSettings, Settings
from sentinel.engine.engine import Engine, EngineOptions
from sentinel.engine.rule import load_rules
from sentinel.enrich.geoip import open_enricher
from sentinel.event import Event
from sentinel.responders.base import Responder
from sentinel.responders.dry_run import DryRunResponder
from sentinel.status import summarize

log = logging.getLogger(__name__)

SAVE_INTERVAL = 5.0


def engine_options(settings: EngineSettings) -> EngineOptions:
    return EngineOptions(
        allowlist=tuple(settings.allowlist),
        max_keys=settings.max_keys,
        late_tolerance=settings.late_tolerance,
        ban_duration=settings.ban_duration,
        ban_max_duration=settings.ban_max_duration,
    )


def build_responders(settings: Settings) -> list[Responder]:
    """The live responders the configuration enables (used only when dry_run is off)."""
    responders: list[Responder] = []
    if not settings.responders.dry_run and settings.firewall.enabled:
        from sentinel.engine.allowlist import Allowlist
        from sentinel.responders.firewall.responder import FirewallResponder

        # Built only when live: starting it sets up the kernel tables and reconciles the bans.
        allowlist = Allowlist(settings.engine.allowlist)
        responders.append(FirewallResponder(settings.firewall, settings.daemon.state_dir, allowlist))
    from sentinel.responders.oauth import build_identity_responders  # Sentry, alert channels, OAuth revocation

    responders.extend(build_identity_responders(settings))
    return responders


class DetectionStage:
    """A daemon stage: adds findings and responses to each batch."""

    def __init__(self, settings: Settings, state_path: Path, responders: Sequence[Responder] = ()) -> None:
        rules = load_rules(settings.rules.directories, settings.rules.disabled)
        self.engine = Engine(rules, engine_options(settings.engine))
        self.enricher = open_enricher(settings.geoip)
        self.dry_run = DryRunResponder()
        #: Live responders by action type; actions without one (or all, in dry-run) are logged only.
        self.live: dict[str, Responder] = {}
        if not settings.responders.dry_run:
            for responder in responders:
                for action_type in responder.action_types:
                    self.live[action_type] = responder
        self.state_path = state_path
        #: The last findings, for ``sentinel status``.
        self.recent_findings: collections.deque[dict[str, Any]] = collections.deque(maxlen=20)
        self._lock = threading.Lock()  # the writer thread processes, SIGHUP reloads
        self._dirty = False
        self._saved = time.monotonic()
        self._load()
        log.info("rules engine: %d rules (%s)", len(rules), ", ".join(r.id for r in rules))

    def reload(self, settings: Settings) -> None:
        """Switch to new rules and engine settings, keeping the state of unchanged rules.

        Raises (RuleError, GeoIPError) before anything changes if the new settings are bad.
        """
        rules = load_rules(settings.rules.directories, settings.rules.disabled)
        engine = Engine(rules, engine_options(settings.engine))
        enricher = open_enricher(settings.geoip)
        with self._lock:
            engine.adopt(self.engine)
            old_enricher, self.enricher, self.engine = self.enricher, enricher, engine
            if enricher is not None and old_enricher is not None:
                enricher.load_state(old_enricher.dump_state())
        if old_enricher is not None:
            old_enricher.close()
        log.info("rules engine reloaded: %d rules (%s)", len(rules), ", ".join(r.id for r in rules))

    def __call__(self, batch: Batch) -> Batch:
        with self._lock:
            return self._process(batch)

    def _process(self, batch: Batch) -> Batch:
        if not batch.events:
            return batch
        enrich = self.enricher.enrich if self.enricher is not None else None
        process = self.engine.process
        out: list[Event] = []
        for event in batch.events:
            if enrich is not None:
                enrich(event)
            out.append(event)
            for finding in process(event):
                log.warning("finding: %s", finding["message"], extra={"rule": finding["rule.id"]})
                self.recent_findings.append(summarize(finding))
                out.append(finding)
                out.extend(self._respond(finding))
        self._dirty = True
        return Batch(batch.source, out, batch.checkpoint)

    def _respond(self, finding: Event) -> list[Event]:
        """Hand each action to its live responder; the rest are recorded as dry-run responses."""
        inline = []
        for action in finding.get("sentinel.actions", ()):
            responder = self.live.get(action["type"])
            if responder is not None:
                responder.submit(finding, action)
            else:
                inline.extend(self.dry_run.respond_one(finding, action))
        return inline

    def committed(self) -> None:
        """Called after a commit: save rule memory now and then."""
        if self._dirty and time.monotonic() - self._saved >= SAVE_INTERVAL:
            self.save()

    def _state(self) -> dict[str, Any]:
        return {
            "engine": self.engine.dump_state(),
            "geoip": self.enricher.dump_state() if self.enricher is not None else None,
        }

    def save(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(orjson.dumps(self._state()))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.state_path)
        except OSError as exc:
            log.error("cannot save rule state to %s: %s", self.state_path, exc.strerror or exc)
            return
        self._dirty = False
        self._saved = time.monotonic()

    def _load(self) -> None:
        try:
            state = orjson.loads(self.state_path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, orjson.JSONDecodeError) as exc:
            log.error("ignoring unreadable rule state %s: %s", self.state_path, exc)
            return
        self.engine.load_state(state.get("engine") or {})
        if self.enricher is not None and state.get("geoip"):
            self.enricher.load_state(state["geoip"])

    def close(self) -> None:
        self.save()
        if self.enricher is not None:
            self.enricher.close()
