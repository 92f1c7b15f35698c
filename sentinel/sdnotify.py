"""systemd's notification protocol (sd_notify): READY, STATUS, WATCHDOG, STOPPING, RELOADING.

The protocol is one datagram to the unix socket named in ``$NOTIFY_SOCKET`` (a leading ``@``
means the abstract namespace); outside systemd the variable is unset and every call is a no-op.
Small enough that a dependency would add more than it saves.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    """Sends notifications to systemd, if it is listening."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog = usec.isdigit() and (not pid or pid == str(os.getpid()))
        #: Seconds between watchdog pings (half systemd's timeout), or None without a watchdog.
        self.watchdog_interval = int(usec) / 2e6 if watchdog else None
        self._last_ping = 0.0

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ``"STATUS=…"``); False if nobody listens."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(fields).encode(), self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping")

    def watchdog(self, healthy: bool) -> None:
        """Ping the watchdog when due, but only if the caller vouches the pipeline is moving."""
        if self.watchdog_interval is None or not healthy:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval and self.notify("WATCHDOG=1"):
            self._last_ping = now
