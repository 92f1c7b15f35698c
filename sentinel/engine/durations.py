"""Human durations in rule and config files: ``90`` (seconds), ``"10m"``, ``"1h30m"``, ``"2w"``."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(value: object) -> float:
    """Seconds in ``value`` (a number of seconds or a string such as ``"1h30m"``)."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '10m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        parts = _PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"invalid duration {value!r}: use e.g. 30s, 10m, 1h30m, 7d, 2w")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise ValueError("a duration must be a number of seconds or a string like '10m'")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


#: A pydantic field type accepting either form and holding seconds.
Duration = Annotated[float, BeforeValidator(parse_duration)]
