"""The interface every live responder implements.

A responder acts on one or more action types (``ban``, ``revoke_tokens``, ``alert``…) that
findings ask for in ``sentinel.actions``.  :meth:`Responder.submit` must return at once: the
detection stage runs on the daemon's writer thread, so network or kernel work happens on the
responder's own thread(s), with retries and backoff.  Every outcome (done, refused, failed,
retrying) is reported as response events through the ``emit`` callback given to
:meth:`Responder.start`; the daemon stores them like any other event.  A responder never drops
a request silently: what it cannot do is reported, retried, and on final failure alerted.

Between the writer and a responder's thread sits a bounded queue with an overflow policy
(:mod:`sentinel.queues`); :meth:`Responder.queues` exposes it for metrics and status.  Periodic
work (the firewall's reconciliation, the wallet check) is offered as :meth:`Responder.jobs` and
run by the daemon's scheduler.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from sentinel.event import Event

if TYPE_CHECKING:
    from sentinel.queues import QueueStats
    from sentinel.scheduler import JobSpec

Emit = Callable[[list[Event]], None]


class Responder(ABC):
    """Acts on findings' actions of the types in :attr:`action_types`."""

    action_types: ClassVar[frozenset[str]]

    def start(self, emit: Emit) -> None:  # noqa: B027 - optional hook
        """Begin working; ``emit`` stores response events (it may block briefly)."""

    @abstractmethod
    def submit(self, finding: Event, action: dict[str, Any]) -> None:
        """Queue ``action`` of ``finding``; never blocks on I/O."""

    def stop(self, timeout: float) -> None:  # noqa: B027 - optional hook
        """Finish or persist queued work within ``timeout`` seconds."""

    def jobs(self) -> list[JobSpec]:
        """Periodic jobs for the daemon's scheduler (registered when the daemon starts)."""
        return []

    def queues(self) -> list[QueueStats]:
        """The responder's bounded queues (for metrics and ``sentinel status``)."""
        return []
