"""The local control socket: ``sentinel bans …`` (and later ``sentinel status``) talk to the daemon.

A unix stream socket in the state directory (``control.sock``, mode 0660: root and the daemon's
group), speaking JSON lines: each request ``{"command": "bans.add", "args": {...}}`` gets one
reply ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.  The server is a
generic dispatcher: parts of the daemon register named handlers (a responder offers them with
``control_commands()``), each called with the request's arguments and the caller's credentials
(SO_PEERCRED), so what a command does can be attributed to a user.  ``commands`` lists what
is registered.  Requests are bounded (64 KiB a line, 8 clients at once).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import orjson

log = logging.getLogger(__name__)

SOCKET_NAME: Final = "control.sock"
MAX_LINE: Final = 65536
MAX_CLIENTS: Final = 8
CLIENT_TIMEOUT: Final = 60.0


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end of a connection (from the kernel, not from the request)."""

    pid: int
    uid: int
    gid: int


Handler = Callable[[dict[str, Any], Peer], Any]


@runtime_checkable
class CommandProvider(Protocol):
    """Anything offering control commands (a responder, the daemon)."""

    def control_commands(self) -> dict[str, Handler]: ...


class CommandError(Exception):
    """A request the handler refuses; the message goes back to the client."""


class ControlUnavailable(Exception):
    """No daemon answers on the socket."""


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


class ControlServer:
    """Accepts connections on a thread; one short thread per client."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handlers: dict[str, Handler] = {"commands": lambda args, peer: sorted(self.handlers)}
        self._sock: socket.socket | None = None
        self._inode: int | None = None
        self._thread: threading.Thread | None = None
        self._clients = threading.BoundedSemaphore(MAX_CLIENTS)
        self._closed = threading.Event()

    def register(self, name: str, handler: Handler) -> None:
        self.handlers[name] = handler

    def start(self) -> None:
        """Bind (replacing a stale socket, refusing if another daemon answers) and serve."""
        if len(os.fsencode(self.path)) >= 108:
            raise OSError(f"control socket path too long for a unix socket: {self.path}")
        if self.path.exists() or self.path.is_symlink():
            try:
                request(self.path, "commands", timeout=1.0)
            except (ControlUnavailable, CommandError, OSError, ValueError):
                self.path.unlink()  # stale: left by a daemon that was killed
            else:
                raise OSError(f"another sentinel daemon answers on {self.path}")
        # Bind under a temporary name, set the mode, then move into place: the socket is never
        # reachable with a wider mode than 0660.
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(tmp))
            os.chmod(tmp, 0o660)
            sock.listen(16)
            os.replace(tmp, self.path)
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        self._inode = self.path.stat().st_ino
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, name="sentinel-control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop accepting and remove the socket file (if it is still ours); idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        try:
            if self._inode is not None and self.path.stat().st_ino == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass
        if self._thread is not None:
            self._thread.join(2.0)

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._closed.is_set():
                    return
                continue
            if not self._clients.acquire(blocking=False):
                with contextlib.suppress(OSError):
                    conn.sendall(_reply_error("too many clients; try again"))
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), name="sentinel-control-client", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(CLIENT_TIMEOUT)
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            peer = Peer(*struct.unpack("3i", creds))
            with conn.makefile("rb") as reader:
                while not self._closed.is_set():
                    line = reader.readline(MAX_LINE + 1)
                    if not line:
                        return
                    if len(line) > MAX_LINE:
                        conn.sendall(_reply_error("request too long"))
                        return
                    conn.sendall(self._dispatch(line, peer))
        except OSError:
            return
        finally:
            conn.close()
            self._clients.release()

    def _dispatch(self, line: bytes, peer: Peer) -> bytes:
        try:
            req = orjson.loads(line)
        except orjson.JSONDecodeError:
            return _reply_error("not JSON")
        if not isinstance(req, dict) or not isinstance(req.get("command"), str):
            return _reply_error('expected {"command": NAME, "args": {...}}')
        name = req["command"]
        args = req.get("args") or {}
        handler = self.handlers.get(name)
        if handler is None:
            return _reply_error(f"unknown command {name!r}; this daemon offers: {', '.join(sorted(self.handlers))}")
        if not isinstance(args, dict):
            return _reply_error("args must be an object")
        try:
            result = handler(args, peer)
        except CommandError as exc:
            return _reply_error(str(exc))
        except Exception as exc:
            log.exception("control command %s failed", name)
            return _reply_error(f"internal error: {exc}")
        log.debug("control: %s by uid %d", name, peer.uid)
        return orjson.dumps({"ok": True, "result": result}, default=str) + b"\n"


def _reply_error(message: str) -> bytes:
    return orjson.dumps({"ok": False, "error": message}) + b"\n"


def request(path: Path, command: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
    """Send one command to the daemon; its result, or :class:`CommandError` / :class:`ControlUnavailable`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlUnavailable(f"no sentinel daemon answers on {path} ({exc.strerror})") from None
        except PermissionError:
            raise ControlUnavailable(f"permission denied on {path} (root or the daemon's group only)") from None
        sock.sendall(orjson.dumps({"command": command, "args": args or {}}) + b"\n")
        with sock.makefile("rb") as reader:
            line = reader.readline()
    except TimeoutError:
        raise ControlUnavailable(f"the daemon did not answer within {timeout:g}s on {path}") from None
    finally:
        sock.close()
    if not line:
        raise ControlUnavailable(f"the daemon closed the connection on {path}")
    reply = orjson.loads(line)
    if not reply.get("ok"):
        raise CommandError(str(reply.get("error")))
    return reply.get("result")


def start_control(state_dir: Path, providers: Iterable[object]) -> ControlServer | None:
    """The daemon's control socket with the commands ``providers`` offer; None if it cannot start."""
    server = ControlServer(socket_path(state_dir))
    for provider in providers:
        if isinstance(provider, CommandProvider):
            for name, handler in provider.control_commands().items():
                server.register(name, handler)
    try:
        server.start()
    except OSError as exc:
        log.error("control socket not started (sentinel bans/status will not reach this daemon): %s", exc)
        return None
    log.info("control socket %s (%s)", server.path, ", ".join(sorted(server.handlers)))
    return server
