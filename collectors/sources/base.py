"""The one small interface every source implements.

A source runs in its own thread: it reads raw records, parses them, and hands
:class:`Batch` es to ``emit``.  A batch carries the source's checkpoint *after* its events, so
the consumer commits both in one transaction and a restart resumes exactly there: no record
lost, none read twice.  ``emit`` may block (back-pressure); a source never drops data.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sentinel.collectors.parsers.lines import ParseStats
from sentinel.event import Event

Checkpoint = Mapping[str, Any]


@dataclass(slots=True)
class Batch:
    """Events read by one source, and where that source stands after them."""

    source: str
    events: list[Event]
    checkpoint: Checkpoint


@dataclass(slots=True)
class SourceStatus:
    """What ``sentinel status`` and the metrics show about a source."""

    name: str
    kind: str
    stats: ParseStats = field(default_factory=ParseStats)
    last_error: str | None = None
    last_read: float | None = None


class Source(ABC):
    """A producer of :class:`Batch` es; one thread each."""

    def __init__(self, name: str, checkpoint: Checkpoint | None) -> None:
        self.name = name
        self.checkpoint = checkpoint
        self.status = SourceStatus(name=name, kind=type(self).__name__)

    @abstractmethod
    def run(self, emit: Callable[[Batch], None], stop: threading.Event) -> None:
        """Read until ``stop`` is set, calling ``emit`` for each batch (with its checkpoint)."""
