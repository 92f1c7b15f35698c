"""Per-key rule state on event time, bounded in memory.

Each structure maps a group key to the little it must remember: a count window keeps at most
``threshold - 1`` entries per key, each packed into one int (milliseconds << 64 | event id), so
a million attacking addresses cost about 150 bytes each.  State expires with its window
(:meth:`expire`), and a hard cap on keys evicts the oldest, counting every eviction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_ID_BITS = 64
_ID_MASK = (1 << _ID_BITS) - 1


def pack(t: float, eid: int) -> int:
    """One int for (event time, event id)."""
    return (int(t * 1000) << _ID_BITS) | eid


def unpack_id(entry: int) -> str:
    return f"{entry & _ID_MASK:016x}"


@dataclass(slots=True)
class WindowStats:
    keys: int = 0
    evicted: int = 0
    expired: int = 0


class CountWindows:
    """Fires when ``threshold`` attempts of one key fall within ``window`` seconds."""

    __slots__ = ("_state", "max_keys", "stats", "threshold", "window_ms")

    def __init__(self, threshold: int, window: float, max_keys: int) -> None:
        self.threshold = threshold
        self.window_ms = int(window * 1000)
        self.max_keys = max_keys
        self.stats = WindowStats()
        self._state: dict[Any, int | list[int]] = {}

    def add(self, key: Any, entry: int, n: int = 1) -> list[int] | None:
        """Record ``n`` attempts; return the entries of the window that fired, or ``None``."""
        th = self.threshold
        state = self._state
        cur = state.get(key)
        if cur is None:
            if n >= th:
                return [entry] * th
            if len(state) >= self.max_keys:
                del state[next(iter(state))]
                self.stats.evicted += 1
            state[key] = entry if n == 1 else [entry] * n
            return None
        entries = [cur] if isinstance(cur, int) else cur
        entries.extend([entry] * min(n, th))
        entries.sort()
        win = self.window_ms
        count = len(entries)
        for i in range(count - th + 1):
            if (entries[i + th - 1] >> _ID_BITS) - (entries[i] >> _ID_BITS) <= win:
                del state[key]
                return entries[i : i + th]
        # Keep the newest th-1 entries that can still share a window with a future entry.
        newest = entries[-1] >> _ID_BITS
        kept = [e for e in entries[-(th - 1) :] if newest - (e >> _ID_BITS) <= win]
        del state[key]  # re-insert: active keys move to the young end, away from eviction
        state[key] = kept
        return None

    def expire(self, now: float) -> None:
        """Forget keys whose newest entry can no longer share a window with an event at ``now``."""
        limit = (int(now * 1000) - self.window_ms) << _ID_BITS
        state = self._state
        stale = [k for k, v in state.items() if (v if isinstance(v, int) else v[-1]) < limit]
        for k in stale:
            del state[k]
        self.stats.expired += len(stale)

    def __len__(self) -> int:
        return len(self._state)


class DistinctWindows:
    """Fires when one key shows ``threshold`` distinct values of a field within ``window``.

    Most keys (addresses that try once) hold a single value and entry, packed into one int
    when the value is among the first few thousand distinct values seen (user names, in
    practice): ``(value id + 1) << 112 | entry``.  A key gets a dict of values only once it
    shows a second one.
    """

    __slots__ = ("_ids", "_names", "_state", "max_keys", "stats", "threshold", "window_ms")

    _VALUE_SHIFT = 112  # entries use 64 bits of id and 48 of milliseconds
    _MAX_IDS = 4096

    def __init__(self, threshold: int, window: float, max_keys: int) -> None:
        self.threshold = threshold
        self.window_ms = int(window * 1000)
        self.max_keys = max_keys
        self.stats = WindowStats()
        # key -> packed int | (value, entry) | {value: newest entry with it}
        self._state: dict[Any, int | tuple[Any, int] | dict[Any, int]] = {}
        self._ids: dict[Any, int] = {}
        self._names: list[Any] = []

    def _single(self, value: Any, entry: int) -> int | tuple[Any, int]:
        vid = self._ids.get(value)
        if vid is None:
            if len(self._names) >= self._MAX_IDS:
                return (value, entry)
            vid = self._ids[value] = len(self._names)
            self._names.append(value)
        return ((vid + 1) << self._VALUE_SHIFT) | entry

    def _unpack(self, cur: int | tuple[Any, int]) -> tuple[Any, int]:
        if isinstance(cur, tuple):
            return cur
        return self._names[(cur >> self._VALUE_SHIFT) - 1], cur & ((1 << self._VALUE_SHIFT) - 1)

    def add(self, key: Any, value: Any, entry: int) -> list[int] | None:
        state = self._state
        cur = state.get(key)
        if cur is None:
            if self.threshold <= 1:
                return [entry]
            if len(state) >= self.max_keys:
                del state[next(iter(state))]
                self.stats.evicted += 1
            state[key] = self._single(value, entry)
            return None
        if isinstance(cur, dict):
            values = cur
        else:
            old_value, old_entry = self._unpack(cur)
            if old_value == value:
                state[key] = self._single(value, max(entry, old_entry))
                return None
            values = {old_value: old_entry}
        if entry > values.get(value, 0):
            values[value] = entry
        if len(values) >= self.threshold:
            newest = max(values.values())
            limit = ((newest >> _ID_BITS) - self.window_ms) << _ID_BITS
            for v in [v for v, e in values.items() if e < limit]:
                del values[v]
            if len(values) >= self.threshold:
                del state[key]
                return sorted(values.values())
        state[key] = values
        return None

    def _newest(self, cur: int | tuple[Any, int] | dict[Any, int]) -> int:
        return max(cur.values()) if isinstance(cur, dict) else self._unpack(cur)[1]

    def expire(self, now: float) -> None:
        limit = (int(now * 1000) - self.window_ms) << _ID_BITS
        stale = [k for k, cur in self._state.items() if self._newest(cur) < limit]
        for k in stale:
            del self._state[k]
        self.stats.expired += len(stale)

    def __len__(self) -> int:
        return len(self._state)


class NewValues:
    """Remembers, per key, the values seen and when; a value unseen within ``remember`` is new.

    This is the one piece of rule state worth keeping across restarts (the countries each
    account logs in from): :meth:`dump` and :meth:`load` give it a JSON-able form.
    """

    __slots__ = ("_state", "learn_first", "max_keys", "remember", "stats")

    def __init__(self, remember: float, max_keys: int, learn_first: bool = True) -> None:
        self.remember = remember
        self.max_keys = max_keys
        self.learn_first = learn_first
        self.stats = WindowStats()
        self._state: dict[str, dict[str, float]] = {}

    def add(self, key: str, value: str, t: float) -> tuple[bool, list[str]]:
        """Record ``value`` for ``key`` at ``t``; return (is it new, the values known before)."""
        seen = self._state.get(key)
        if seen is None:
            if len(self._state) >= self.max_keys:
                del self._state[next(iter(self._state))]
                self.stats.evicted += 1
            self._state[key] = {value: t}
            return (not self.learn_first, [])
        known = [v for v, last in seen.items() if t - last <= self.remember]
        last = seen.get(value)
        seen[value] = max(t, last or t)
        return (last is None or t - last > self.remember, known)

    def expire(self, now: float) -> None:
        """Forget values not seen within ``remember``.

        The key itself stays (with no values): an account idle for months whose next login
        comes from a new country is exactly the takeover to report, not one to learn silently.
        """
        for seen in self._state.values():
            stale = [v for v, last in seen.items() if now - last > self.remember]
            for v in stale:
                del seen[v]
            self.stats.expired += len(stale)

    def dump(self) -> dict[str, dict[str, float]]:
        return self._state

    def load(self, state: dict[str, dict[str, float]]) -> None:
        self._state = {str(k): {str(v): float(t) for v, t in vals.items()} for k, vals in state.items()}

    def __len__(self) -> int:
        return len(self._state)
