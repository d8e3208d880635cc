"""Helpers shared by the detect tests (a settable clock, a webhook receiver)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeClock:
    """A settable clock (seconds since the epoch)."""

    def __init__(self, start: float = 1_900_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Receiver:
    """A webhook receiver on 127.0.0.1 run by the test: checks signatures, records arrival times.

    ``fail_first`` answers 503 to the first N posts, to exercise retries;
    ``answer`` answers every post with that status (a 3xx with a ``Location``
    elsewhere), like a receiver that moved or was misconfigured.
    """

    def __init__(self, secret: bytes, *, fail_first: int = 0, answer: int | None = None) -> None:
        self.secret = secret
        self.fail_first = fail_first
        self.answer = answer
        self.received: list[tuple[float, dict[str, Any]]] = []
        self.bad_signatures = 0
        self.posts = 0
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._cond:
                    receiver.posts += 1
                    if receiver.answer is not None:
                        self.send_response(receiver.answer)
                        if 300 <= receiver.answer < 400:
                            self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                        self.end_headers()
                        return
                    if receiver.posts <= receiver.fail_first:
                        self.send_response(503)
                        self.end_headers()
                        return
                    want = "sha256=" + hmac.new(receiver.secret, body, hashlib.sha256).hexdigest()
                    if not hmac.compare_digest(want, self.headers.get("X-Pivault-Signature", "")):
                        receiver.bad_signatures += 1
                        self.send_response(401)
                        self.end_headers()
                        return
                    receiver.received.append((time.time(), json.loads(body)))
                    receiver._cond.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, rule: str, timeout: float = 5.0) -> tuple[float, dict[str, Any]] | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, alert in self.received:
                    if alert["rule"] == rule:
                        return t, alert
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
