"""A local HTTP server that records every request and answers from a script.

Used as the vendor endpoints (Google, Entra ID, Graph), webhook receivers and Sentry's
envelope endpoint: tests check the exact request shape (method, path, headers, body).
"""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

Reply = tuple[int, dict[str, str], bytes]


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes  # decompressed when Content-Encoding was gzip/deflate (brotli if available)
    raw_body: bytes

    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode(), keep_blank_values=True, strict_parsing=bool(self.body))

    def json(self) -> Any:
        return json.loads(self.body)


def reply(status: int = 200, doc: Any = None, headers: dict[str, str] | None = None) -> Reply:
    body = b"" if doc is None else json.dumps(doc).encode()
    all_headers = {"Content-Type": "application/json"} if doc is not None else {}
    all_headers.update(headers or {})
    return status, all_headers, body


def _decode(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli  # type: ignore[import-not-found,import-untyped,unused-ignore]

        data: bytes = brotli.decompress(body)
        return data
    return body


class Recorder:
    """Answers ``(METHOD, path)`` with queued replies (the last one repeats); 404 otherwise."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._script: dict[tuple[str, str], list[Reply]] = {}
        self._lock = threading.Lock()
        self.event = threading.Condition(self._lock)
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = _decode(raw, self.headers.get("Content-Encoding", ""))
                rec = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body, raw)
                status, headers, data = recorder._take(rec)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def respond(self, method: str, path: str, *replies: Reply) -> None:
        with self._lock:
            self._script[(method, path)] = list(replies)

    def _take(self, rec: Recorded) -> Reply:
        with self._lock:
            self.requests.append(rec)
            self.event.notify_all()
            queue = self._script.get((rec.method, rec.path.split("?")[0]))
            if not queue:
                return 404, {}, b""
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def wait(self, count: int, timeout: float = 10.0) -> list[Recorded]:
        """At least ``count`` requests received (fails after ``timeout``)."""
        with self._lock:
            if not self.event.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"expected {count} requests, got {len(self.requests)}")
            return list(self.requests)

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def recording() -> Iterator[Recorder]:
    with Recorder() as rec:
        yield rec
