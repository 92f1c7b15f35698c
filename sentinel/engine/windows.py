"""Per-key rule state on event time, bounded in memory.

Each structure maps a group key to the little it must remember: a count window keeps at most
``threshold - 1`` entries per key, each packed into one int (milliseconds << 64 | event id).
State expires with its window (:meth:`expire`), and a hard cap on keys evicts the oldest,
counting every eviction.

An entry may also carry a *value tag* above bit 112: ``(value id + 1) << 112``, the id of one
field value in a :class:`ValueIds` table.  :class:`DistinctWindows` stores a key's first
(value, entry) as such a tagged int; :class:`CountWindows` ignores the tag.  The engine tags the
one entry it builds per event, so the count and the distinct window of an address that tried
once hold the *same* int object: a million such addresses then cost about 175 bytes each
(address string, two dict slots, one shared int) rather than 220.  A tag is only ever read
through the table of the structure that stored it, so a tag from another table is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_ID_BITS = 64
_ID_MASK = (1 << _ID_BITS) - 1
_VALUE_SHIFT = 112  # entries use 64 bits of id and 48 of milliseconds; a value tag sits above
_ENTRY_MASK = (1 << _VALUE_SHIFT) - 1


def pack(t: float, eid: int) -> int:
    """One int for (event time, event id)."""
    return (int(t * 1000) << _ID_BITS) | eid


def unpack_id(entry: int) -> str:
    return f"{entry & _ID_MASK:016x}"


def untag(entry: int) -> int:
    """The entry without its value tag (time and id only)."""
    return entry & _ENTRY_MASK


class ValueIds:
    """Small ids for the first ``limit`` distinct values of a field (user names, in practice),
    so that a (value, entry) pair packs into one int.  Shared by the distinct windows of one
    field and by the engine, which tags entries with it."""

    __slots__ = ("_ids", "limit", "names")

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._ids: dict[Any, int] = {}
        self.names: list[Any] = []

    def tag(self, value: Any) -> int:
        """``(id + 1) << 112`` for ``value`` (assigning an id if there is room), or 0."""
        vid = self._ids.get(value)
        if vid is None:
            if len(self.names) >= self.limit:
                return 0
            vid = self._ids[value] = len(self.names)
            self.names.append(value)
        return (vid + 1) << _VALUE_SHIFT


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
        """Record ``n`` attempts; return the (untagged) entries of the window that fired, or ``None``.

        A key's single entry is stored as given, tag and all (the object may be shared with a
        distinct window); lists hold untagged entries, so they sort by time.
        """
        th = self.threshold
        state = self._state
        cur = state.get(key)
        if cur is None:
            if n >= th:
                return [entry & _ENTRY_MASK] * th
            if len(state) >= self.max_keys:
                del state[next(iter(state))]
                self.stats.evicted += 1
            state[key] = entry if n == 1 else [entry & _ENTRY_MASK] * n
            return None
        entries = [cur & _ENTRY_MASK] if isinstance(cur, int) else cur
        entries.extend([entry & _ENTRY_MASK] * min(n, th))
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
        stale = [k for k, v in state.items() if ((v & _ENTRY_MASK) if isinstance(v, int) else v[-1]) < limit]
        for k in stale:
            del state[k]
        self.stats.expired += len(stale)

    def __len__(self) -> int:
        return len(self._state)


class DistinctWindows:
    """Fires when one key shows ``threshold`` distinct values of a field within ``window``.

    Most keys (addresses that try once) hold a single value and entry, packed into one tagged
    int when the value has an id in the field's :class:`ValueIds` (the first few thousand
    distinct values: user names, in practice); otherwise a (value, entry) tuple.  A key gets a
    dict of values only once it shows a second one.
    """

    __slots__ = ("_ids", "_state", "max_keys", "stats", "threshold", "window_ms")

    def __init__(self, threshold: int, window: float, max_keys: int, ids: ValueIds | None = None) -> None:
        self.threshold = threshold
        self.window_ms = int(window * 1000)
        self.max_keys = max_keys
        self.stats = WindowStats()
        # key -> tagged int | (value, entry) | {value: newest entry with it}
        self._state: dict[Any, int | tuple[Any, int] | dict[Any, int]] = {}
        self._ids = ids if ids is not None else ValueIds()

    def _single(self, value: Any, entry: int) -> int | tuple[Any, int]:
        """One (value, entry) as compactly as possible; ``entry`` itself when its tag already
        names ``value`` (the engine tagged it: the int is then shared with other windows)."""
        tag = self._ids.tag(value)
        if not tag:
            return (value, entry & _ENTRY_MASK)
        if entry >> _VALUE_SHIFT == tag >> _VALUE_SHIFT:
            return entry
        return tag | (entry & _ENTRY_MASK)

    def _unpack(self, cur: int | tuple[Any, int]) -> tuple[Any, int]:
        if isinstance(cur, tuple):
            return cur
        return self._ids.names[(cur >> _VALUE_SHIFT) - 1], cur & _ENTRY_MASK

    def add(self, key: Any, value: Any, entry: int) -> list[int] | None:
        """Record ``value`` for ``key``; return the (untagged) entries of the window that fired, or ``None``."""
        state = self._state
        cur = state.get(key)
        if cur is None:
            if self.threshold <= 1:
                return [entry & _ENTRY_MASK]
            if len(state) >= self.max_keys:
                del state[next(iter(state))]
                self.stats.evicted += 1
            state[key] = self._single(value, entry)
            return None
        plain = entry & _ENTRY_MASK
        if isinstance(cur, dict):
            values = cur
        else:
            old_value, old_entry = self._unpack(cur)
            if old_value == value:
                if plain > old_entry:
                    state[key] = self._single(value, entry)
                return None
            values = {old_value: old_entry}
        if plain > values.get(value, 0):
            values[value] = plain
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
        if isinstance(cur, int):
            return cur & _ENTRY_MASK
        return max(cur.values()) if isinstance(cur, dict) else cur[1]

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
