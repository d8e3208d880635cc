"""Helpers shared by the detect tests (a settable clock, a webhook receiver)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
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


def signature_ok(secret: bytes, header: str, body: bytes, now: float, tolerance: float = 300) -> bool:
    """The receiver's check as docs/detect.md states it, written apart from pivault's own.

    ``X-Pivault-Signature: t=<unix seconds>,v1=<hex>``: HMAC-SHA256 under the
    secret of the ASCII time, a dot and the raw body; the time within the
    tolerance of the receiver's clock.
    """
    fields = [part.strip().split("=", 1) for part in header.split(",")]
    if any(len(f) != 2 for f in fields):
        return False
    stamps = [v for k, v in fields if k == "t"]
    macs = [v for k, v in fields if k == "v1"]
    if len(stamps) != 1 or not stamps[0].isdigit() or not macs:
        return False
    want = hmac.new(secret, stamps[0].encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(want, m) for m in macs) and abs(now - int(stamps[0])) <= tolerance


class Receiver:
    """A webhook receiver on 127.0.0.1 run by the test: checks signatures, records arrival times.

    Signatures are checked as docs/detect.md says a receiver must (time signed
    with the body, within 300 s of ``clock``). ``fail_first`` answers 503 to the
    first N posts, to exercise retries, calling ``on_fail`` after each;
    ``answer`` answers every post with that status (a 3xx with a ``Location``
    elsewhere), like a receiver that moved or was misconfigured. ``deliveries``
    keeps each accepted post's headers and raw body; ``stamps`` the signed time
    of every post, accepted or not.
    """

    def __init__(self, secret: bytes, *, fail_first: int = 0, answer: int | None = None,
                 clock: Callable[[], float] = time.time, on_fail: Callable[[], None] | None = None) -> None:
        self.secret = secret
        self.fail_first = fail_first
        self.answer = answer
        self.clock = clock
        self.on_fail = on_fail
        self.received: list[tuple[float, dict[str, Any]]] = []
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.stamps: list[int] = []
        self.bad_signatures = 0
        self.posts = 0
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                header = self.headers.get("X-Pivault-Signature", "")
                with receiver._cond:
                    receiver.posts += 1
                    stamp = header.split(",", 1)[0]
                    if stamp.startswith("t=") and stamp[2:].isdigit():
                        receiver.stamps.append(int(stamp[2:]))
                    if receiver.answer is not None:
                        self.send_response(receiver.answer)
                        if 300 <= receiver.answer < 400:
                            self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                        self.end_headers()
                        return
                    if receiver.posts <= receiver.fail_first:
                        if receiver.on_fail is not None:
                            receiver.on_fail()
                        self.send_response(503)
                        self.end_headers()
                        return
                    if not signature_ok(receiver.secret, header, body, receiver.clock()):
                        receiver.bad_signatures += 1
                        self.send_response(401)
                        self.end_headers()
                        return
                    receiver.received.append((time.time(), json.loads(body)))
                    receiver.deliveries.append((dict(self.headers.items()), body))
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
