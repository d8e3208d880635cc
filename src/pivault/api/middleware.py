"""One ASGI middleware for what every request needs: an id, limits, headers, a log line.

It is a plain ASGI callable rather than Starlette's ``BaseHTTPMiddleware``
because it runs on every request (a lookup costs well under a millisecond, so
the per-request overhead of a task and a queue per middleware shows).

- the ``gate`` (authentication, the body's media type) answers first, from the
  request's head alone: a caller without a valid token never gets a body read,
  so it cannot make a worker buffer megabytes on its behalf;
- the request body is read up front, bounded by ``max_body`` (413 beyond), so a
  client cannot hold a worker with a huge or endless upload;
- a body that took longer than ``REGATE_AFTER`` to come has its head passed
  through the gate again: the token checked when the head came may have been
  revoked, suspended or expired while the body trickled in (for up to
  ``timeout`` seconds), and the request reaches the vault only now;
- the whole request is bounded by ``timeout`` seconds (503 if no response has
  started by then);
- security headers on every response (HSTS only over TLS);
- any exception that escapes the app becomes a 500 problem whose body says
  nothing about it; the log line names only the exception's type — its
  message could carry a value (a database error echoing a key, say);
- one access-log line per request: method, route *template* (never the raw
  path or the query string), status, principal, role, token id, latency.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from pivault.api.problems import problem_response
from pivault.policy.context import new_request_id

__all__ = ["AccessLog", "ServiceMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: decides from a request's head alone: None to go on, or the response that refuses it
Gate = Callable[[Scope], Callable[[Scope, Receive, Send], Awaitable[None]] | None]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: seconds a request's body may take to come before its head is checked again: a body sent with its
#: head (nearly all) is not, so the usual request checks its token once
REGATE_AFTER = 0.05


class AccessLog:
    """JSON lines to a file (mode 0600, appended by every worker) and, optionally, stderr.

    Each line is one ``write`` on an ``O_APPEND`` descriptor, so lines from
    several worker processes do not interleave.
    """

    def __init__(self, path: Path | None, *, stderr: bool = True) -> None:
        self.path = path
        self.stderr = stderr
        self._fd: int | None = None
        self._pid = -1
        self._lock = threading.Lock()

    def _file(self) -> int | None:
        if self.path is None:
            return None
        if self._fd is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd

    def write(self, entry: dict[str, Any]) -> None:
        line = (json.dumps(entry, ensure_ascii=True, separators=(",", ":")) + "\n").encode()
        with self._lock:
            fd = self._file()
            if fd is not None:
                os.write(fd, line)
        if self.stderr:
            try:
                sys.stderr.buffer.write(line)
                sys.stderr.flush()
            except (AttributeError, ValueError, OSError):  # pragma: no cover - closed stderr
                pass

    def close(self) -> None:
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = None


def security_headers(tls: bool) -> list[tuple[bytes, bytes]]:
    h = [
        (b"x-content-type-options", b"nosniff"),
        (b"cache-control", b"no-store"),
        (b"pragma", b"no-cache"),
        (b"x-frame-options", b"DENY"),
        (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
        (b"referrer-policy", b"no-referrer"),
        (b"cross-origin-resource-policy", b"same-origin"),
    ]
    if tls:
        h.append((b"strict-transport-security", b"max-age=63072000; includeSubDomains"))
    return h


def _frames(exc: BaseException, n: int = 6) -> list[str]:
    """Where an exception came from (module:line function), without its message or any value."""
    out = []
    for fs in traceback.extract_tb(exc.__traceback__)[-n:]:
        out.append(f"{Path(fs.filename).name}:{fs.lineno} {fs.name}")
    return out


class _TooLarge(Exception):
    pass


async def _no_receive() -> Message:
    # the body has been read: a refusal sent after it has nothing more to take from the client
    return {"type": "http.disconnect"}


class ServiceMiddleware:
    def __init__(self, app: ASGIApp, *, max_body: int = 1024 * 1024, timeout: float = 30.0,
                 tls: bool = False, access_log: AccessLog | None = None, gate: Gate | None = None) -> None:
        self.app = app
        self.gate = gate
        self.max_body = max_body
        self.timeout = timeout
        self.headers = security_headers(tls)
        self.access_log = access_log

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    if int(value) > self.max_body:
                        raise _TooLarge
                except ValueError:
                    raise _TooLarge from None
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                break
            body = msg.get("body", b"")
            size += len(body)
            if size > self.max_body:
                raise _TooLarge
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        return b"".join(chunks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 0
        started = False
        extra = [*self.headers, (b"x-request-id", request_id.encode())]

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                started = True
                headers = [(k, v) for k, v in message.get("headers", ()) if k != b"server"]
                message["headers"] = headers + extra
            await send(message)

        async def reply(status_code: int, code: str, detail: str) -> None:
            resp = problem_response(status_code, code, detail, request_id)
            await resp(scope, receive, send_wrapper)

        error_type = None
        where: list[str] = []
        try:
            async with asyncio.timeout(self.timeout):
                refusal = self.gate(scope) if self.gate is not None else None
                if refusal is not None:
                    await refusal(scope, receive, send_wrapper)
                elif scope.get("method") in _BODY_METHODS:
                    gated = time.perf_counter()
                    try:
                        body = await self._read_body(scope, receive)
                    except _TooLarge:
                        await reply(413, "request.too_large",
                                    f"the request body is larger than {self.max_body} bytes")
                        return
                    if self.gate is not None and time.perf_counter() - gated > REGATE_AFTER:
                        # the token may have been revoked, suspended or expired while the body came
                        refusal = self.gate(scope)
                        if refusal is not None:
                            await refusal(scope, _no_receive, send_wrapper)
                            return
                    sent = False

                    async def replay() -> Message:
                        nonlocal sent
                        if not sent:
                            sent = True
                            return {"type": "http.request", "body": body, "more_body": False}
                        return await receive()

                    await self.app(scope, replay, send_wrapper)
                else:
                    await self.app(scope, receive, send_wrapper)
        except TimeoutError:
            error_type = "timeout"
            if not started:
                await reply(503, "request.timeout", f"the request took longer than {self.timeout:g} s")
        except Exception as exc:
            error_type = type(exc).__name__
            where = _frames(exc)
            if not started:
                await reply(500, "internal", "the request failed inside the service; "
                                             "the request id identifies it in the server's log")
        finally:
            if self.access_log is not None:
                route = scope.get("route")
                template = getattr(route, "path", None) or "-"
                entry: dict[str, Any] = {
                    "ts": round(time.time(), 3),
                    "request_id": request_id,
                    "method": scope.get("method", "-"),
                    "route": template,
                    "status": status,
                    "principal": state.get("principal", "-"),
                    "role": state.get("role", "-"),
                    "token_id": state.get("token_id", "-"),
                    "ms": round((time.perf_counter() - start) * 1000, 2),
                }
                if error_type or state.get("error"):
                    entry["error"] = error_type or state.get("error")
                if where:
                    entry["where"] = where
                self.access_log.write(entry)
