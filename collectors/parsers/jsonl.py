"""JSON-lines application login log → web authentication events.

For the application side of an HTTPS service (its own login form or API), which logs one
JSON object per line.  Accepted schema — for each field the first key present with a value
of the right type wins; ECS names may be dotted (``"source.ip"``) or nested
(``{"source": {"ip": …}}``); a value of the wrong type is ignored, never an error:

==========  ===============================================================  ==================
field       keys                                                             type
==========  ===============================================================  ==================
time        ``@timestamp``, ``timestamp``, ``time``, ``ts``                  ISO 8601 string
                                                                             (no zone = local)
                                                                             or epoch seconds /
                                                                             milliseconds
client      ``source.ip``, ``client.ip``, ``ip``, ``remote_addr``,           string, an IP
            ``client_ip``                                                    address (else
                                                                             ignored)
user        ``user.name``, ``user``, ``username``                            string
action      ``event.action``, ``event``                                      string
outcome     ``event.outcome``                                                ``"success"`` /
                                                                             ``"failure"``
category    ``event.category``                                               string or list
status      ``http.response.status_code``, ``status``                        integer (or digits)
path        ``url.path``, ``path``                                           string
method      ``http.request.method``, ``method``                              string
==========  ===============================================================  ==================

A record is a login attempt when its action is one of :data:`LOGIN_ACTIONS` (``login``,
``login_failed``, ``login_success``…; case, ``-`` and ``.`` do not matter), when its
``event.category`` includes ``authentication``, or when it states an ``event.outcome``.
Anything else (page views, other app events, non-objects, invalid JSON) yields ``None``.

Outcome: ``event.outcome`` if given, else what the action says, else the status (401/403
failure, below 400 success), else ``unknown``.  The event is ``event.category``
``["authentication", "web"]``, ``event.action`` ``login_failed`` / ``login_success`` /
``login``, ``event.dataset`` ``app.login``; a time that is missing or unreadable becomes the
time the line was read.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from sentinel.collectors.parsers.addresses import normalize_ip
from sentinel.collectors.parsers.timestamps import epoch_to_utc, iso_to_utc, now_utc
from sentinel.event import Event

#: Recognised action names (normalised: lower case, ``-``/``.``/space → ``_``) → the outcome
#: they state (``None``: the outcome comes from other fields).
LOGIN_ACTIONS: Final[dict[str, str | None]] = {
    "login": None,
    "log_in": None,
    "signin": None,
    "sign_in": None,
    "login_attempt": None,
    "login_failed": "failure",
    "login_failure": "failure",
    "login_fail": "failure",
    "login_error": "failure",
    "login_denied": "failure",
    "signin_failed": "failure",
    "sign_in_failed": "failure",
    "auth_failed": "failure",
    "authentication_failed": "failure",
    "authentication_failure": "failure",
    "login_success": "success",
    "login_succeeded": "success",
    "login_successful": "success",
    "login_ok": "success",
    "signin_success": "success",
    "sign_in_success": "success",
    "auth_success": "success",
    "authentication_success": "success",
}
_TIME_KEYS: Final = ("@timestamp", "timestamp", "time", "ts")
_IP_KEYS: Final = ("source.ip", "client.ip", "ip", "remote_addr", "client_ip")
_USER_KEYS: Final = ("user.name", "user", "username")
_ACTION_KEYS: Final = ("event.action", "event")
_STATUS_KEYS: Final = ("http.response.status_code", "status")
_PATH_KEYS: Final = ("url.path", "path")
_METHOD_KEYS: Final = ("http.request.method", "method")
_ACTION_OF: Final = {"failure": "login_failed", "success": "login_success", "unknown": "login"}
_MS_THRESHOLD: Final = 100_000_000_000  # epoch numbers above this are milliseconds


def _lookup(obj: dict[str, Any], key: str) -> Any:
    """``key`` in ``obj``, dotted (``"a.b"``) or nested (``{"a": {"b": …}}``); None if absent."""
    value = obj.get(key)
    if value is not None or "." not in key:
        return value
    head, _, rest = key.partition(".")
    node = obj.get(head)
    return _lookup(node, rest) if isinstance(node, dict) else None


def _first_str(obj: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = _lookup(obj, key)
        if isinstance(value, str) and value:
            return value
    return None


def _status(obj: dict[str, Any]) -> int | None:
    for key in _STATUS_KEYS:
        value = _lookup(obj, key)
        if isinstance(value, bool):
            continue
        if isinstance(value, str) and len(value) == 3 and value.isascii() and value.isdigit():
            value = int(value)
        if isinstance(value, int) and 100 <= value <= 599:
            return value
    return None


def _timestamp(obj: dict[str, Any]) -> str:
    for key in _TIME_KEYS:
        value = obj.get(key)
        if isinstance(value, str):
            stamp = iso_to_utc(value.replace(",", ".")) if len(value) <= 64 else None
            if stamp is not None:
                return stamp
        elif isinstance(value, int | float) and not isinstance(value, bool):
            seconds = value / 1000 if value > _MS_THRESHOLD else value
            try:
                return epoch_to_utc(seconds)
            except (OverflowError, OSError, ValueError):
                continue
    return now_utc()


def _categories(obj: dict[str, Any]) -> tuple[str, ...]:
    value = _lookup(obj, "event.category")
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


def parse_app_json(line: str) -> Event | None:
    """One JSON line of an application login log → an authentication event, or ``None``."""
    if line[:1] != "{":
        line = line.lstrip()
        if line[:1] != "{":
            return None
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None

    action = _first_str(obj, _ACTION_KEYS)
    stated: str | None = None
    is_login = False
    if action is not None:
        normal = action.lower().replace("-", "_").replace(".", "_").replace(" ", "_")
        if normal in LOGIN_ACTIONS:
            is_login = True
            stated = LOGIN_ACTIONS[normal]
    outcome = _lookup(obj, "event.outcome")
    if outcome in ("success", "failure"):
        is_login = True
        stated = outcome
    elif not is_login and "authentication" not in _categories(obj):
        return None

    status = _status(obj)
    if stated is None and status is not None:
        if status in (401, 403):
            stated = "failure"
        elif status < 400:
            stated = "success"
    result = stated or "unknown"
    event: Event = {
        "@timestamp": _timestamp(obj),
        "event.kind": "event",
        "event.category": ["authentication", "web"],
        "event.type": ["start"],
        "event.action": _ACTION_OF[result],
        "event.outcome": result,
        "event.dataset": "app.login",
    }
    address = _first_str(obj, _IP_KEYS)
    if address is not None:
        ip = normalize_ip(address) if len(address) <= 64 else None
        if ip is not None:
            event["source.address"] = address
            event["source.ip"] = ip
    user = _first_str(obj, _USER_KEYS)
    if user is not None:
        event["user.name"] = user
    if status is not None:
        event["http.response.status_code"] = status
    path = _first_str(obj, _PATH_KEYS)
    if path is not None:
        event["url.path"] = path
    method = _first_str(obj, _METHOD_KEYS)
    if method is not None:
        event["http.request.method"] = method
    return event
