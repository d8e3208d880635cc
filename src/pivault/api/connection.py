"""What a connection may do before the app sees a request: the head's time and size, one client's share.

uvicorn bounds nothing that arrives before a request's head is complete: its
keep-alive timeout runs only between requests and the service's own timeout
(``--timeout``) only once the app is called, so a client that sends half a
head, or none, holds its connection for ever; a few hundred such connections
fill ``limit_concurrency`` and every other client is turned away. Its
httptools protocol has no bound on a head's size either (httptools keeps an
unfinished header in memory, whatever its length).
:class:`GuardedProtocol` is :class:`~pivault.api.onewrite.OneWriteProtocol`
with those bounds:

- a request's head must arrive whole within ``head_timeout`` seconds of its
  first byte, and a new connection must send its first byte within as long;
  a late head is answered ``408`` and the connection closed. A head that comes
  while the previous response is still being written waits until it is out.
  A body that still trickles in after its response was sent must end within
  as long too (the connection is then closed without a word: it was answered);
- a head (request line and headers) over ``max_head`` bytes — uvicorn's
  ``h11_max_incomplete_event_size``, the same limit its h11 protocol keeps —
  is answered ``431`` and the connection closed, without reading further
  (over TLS, what arrives until the close is done, at most ``CLOSE_GRACE``
  seconds, is decrypted and dropped). Data is handed to the parser at most
  ``max_head`` bytes at a time, so the parser never holds more than twice
  ``max_head`` of an unfinished head;
- one client address holds at most ``per_client`` connections to a worker; one
  more is answered ``503`` at once and closed, before anything is read or
  parsed. Over TLS this protocol only sees a connection once its handshake is
  done, so ``pivault serve`` counts TLS connections from their accept, before
  the handshake, in its event loop (:mod:`pivault.api.admission`); this count
  then never reaches the cap and holds for plain HTTP.

No task and no timer is made for a request whose head arrives in one read
(nearly all): the head timer is armed only when a read ends inside a head, or
leaves a connection with no response pending.

The answers uvicorn gives itself — ``400`` for what is not HTTP/1.1, ``503``
over ``limit_concurrency`` — and those above have the shape of every other
error of the service: ``application/problem+json``, with the security headers.
"""

from __future__ import annotations

import asyncio
import http
import json
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from pivault.api.admission import client_key
from pivault.api.middleware import security_headers
from pivault.api.onewrite import OneWriteProtocol
from pivault.api.problems import MEDIA_TYPE, problem_body

__all__ = ["DEFAULT_MAX_HEAD", "ConnectionLimits", "GuardedProtocol"]

#: a head's largest size when uvicorn's ``h11_max_incomplete_event_size`` is not set (h11's own default)
DEFAULT_MAX_HEAD = 16 * 1024

#: seconds a refused connection has to take its answer before it is cut: closing waits, without a
#: limit of its own, for a plain client to read what is written and for a TLS client's reply to the
#: close, and reads (and decrypts) whatever the client sends meanwhile
CLOSE_GRACE = 1.0

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits uvicorn's configuration has no field for (given with ``functools.partial``)."""

    #: seconds for a request's head to arrive whole from its first byte, and for a new connection's first byte
    head_timeout: float = 10.0
    #: connections one client address may hold open to one worker
    per_client: int = 256


#: per server (one per worker process): open connections by client address
_CLIENTS: weakref.WeakKeyDictionary[ServerState, dict[str, int]] = weakref.WeakKeyDictionary()


@lru_cache(maxsize=64)
def _problem(status: int, code: str, detail: str, tls: bool) -> tuple[Headers, bytes]:
    """A problem's headers and body; a handful of fixed ones, so built once each."""
    body = json.dumps(problem_body(status, code, detail), ensure_ascii=False, separators=(",", ":")).encode()
    headers: Headers = [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode()),
                        *security_headers(tls), (b"connection", b"close")]
    return headers, body


def _response(status: int, code: str, detail: str, tls: bool, default_headers: Headers) -> bytes:
    headers, body = _problem(status, code, detail, tls)
    out = [b"HTTP/1.1 %d %s\r\n" % (status, http.HTTPStatus(status).phrase.encode())]
    out += [name + b": " + value + b"\r\n" for name, value in (*default_headers, *headers)]
    out += [b"\r\n", body]
    return b"".join(out)


_BUSY = (503, "server.busy", "the server is at its limit of concurrent connections and requests; "
                             "retry later")


async def _busy(scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]],
                send: Callable[[MutableMapping[str, Any]], Awaitable[None]]) -> None:
    """uvicorn's answer over ``limit_concurrency``, as a problem (its own is text/plain)."""
    headers, body = _problem(*_BUSY, scope.get("scheme") == "https")
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


_VERSION = (505, "request.http_version", "this server speaks HTTP/1.1 and HTTP/1.0 only; the request line "
                                        "named another version (HTTP/2 is not served, nor HTTP/0.9)")

#: the versions of a request line served; httptools also parses 0.9 (no version at all) and 2.0
SERVED_VERSIONS = frozenset({"1.0", "1.1"})


async def _version_unsupported(scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]],
                               send: Callable[[MutableMapping[str, Any]], Awaitable[None]]) -> None:
    """The answer to a request line of a version not served, as a problem (and the connection closed)."""
    headers, body = _problem(*_VERSION, scope.get("scheme") == "https")
    await send({"type": "http.response.start", "status": 505, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class GuardedProtocol(OneWriteProtocol):
    """uvicorn's httptools protocol (one write per small response) with a deadline and a size for each head,
    and a share of the worker for each client address."""

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None, *,
                 limits: ConnectionLimits | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        lim = limits or ConnectionLimits()
        self.head_timeout = lim.head_timeout
        self.per_client = lim.per_client
        self.max_head = config.h11_max_incomplete_event_size or DEFAULT_MAX_HEAD
        # checked in on_headers_complete, so that the answer is a problem rather than uvicorn's text
        self.concurrency = self.limit_concurrency
        self.limit_concurrency = None
        clients = _CLIENTS.get(server_state)
        if clients is None:
            clients = _CLIENTS[server_state] = {}
        self._clients = clients
        #: the address this connection is counted under (None: not counted)
        self._host: str | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        #: no byte has come yet: the timer running is the first byte's
        self._fresh = True
        #: between the first byte of a request and the end of its head
        self._in_head = False
        #: between the end of a head and the end of its body
        self._in_body = False
        #: bytes the head being read may still take (max_head while a body is read)
        self._room = self.max_head
        self._lost = False
        #: answered by this protocol itself and closing: nothing more is read
        self._answered = False

    # -- the connection --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # an IPv6 client counted by its /64, which one host can draw new addresses from at will
        host = client_key(self.client[0]) if self.client else None
        if host is not None:
            n = self._clients.get(host, 0)
            if n >= self.per_client:
                self._answer(503, "connection.limit",
                             f"this address holds {self.per_client} connections to the server already; "
                             "reuse one of them (keep-alive) or close some")
                return
            self._clients[host] = n + 1
            self._host = host
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._stop_timer()
        self._release()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # the websocket protocol owns the connection from here, and counts nothing
        self._stop_timer()
        self._release()
        super().handle_websocket_upgrade()

    def _release(self) -> None:
        host = self._host
        if host is not None:
            self._host = None
            n = self._clients.get(host, 1) - 1
            if n > 0:
                self._clients[host] = n
            else:
                self._clients.pop(host, None)

    def _stop_timer(self) -> None:
        timer = self._head_timer
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def _answer(self, status: int, code: str, detail: str) -> None:
        """Answer with a problem and close: for what is refused before any app is called."""
        self._stop_timer()
        self._answered = True
        if not self.transport.is_closing():
            self.transport.write(_response(status, code, detail, self.scheme == "https",
                                           self.server_state.default_headers))
            self._close()

    def _close(self) -> None:
        self.transport.close()
        self.loop.call_later(CLOSE_GRACE, self._cut)

    def _cut(self) -> None:
        if not self._lost:
            self.transport.abort()

    # -- reading ---------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._answered:
            # refused (503, 408, 431) and closing: over TLS, asyncio's SSL protocol still hands on
            # what it had buffered while it flushes; none of it may reach the parser, or the app
            return
        if self._fresh:
            # the first byte: from here the head has head_timeout seconds of its own
            self._fresh = False
            self._stop_timer()
        if len(data) <= self._room:
            if not self._in_body:
                self._room -= len(data)
            super().data_received(data)
        else:
            self._feed_bounded(data)
        if self._head_timer is None:
            cycle = self.cycle
            # inside a head, or no response pending (a client that owes us the rest of a request)
            owed = self._in_head or cycle is None or cycle.response_complete
            if owed and not self.transport.is_closing():
                self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _feed_bounded(self, data: bytes) -> None:
        """Feed the parser at most ``_room`` bytes at a time; answer 431 when a head has none left."""
        view = memoryview(data)
        while view:
            room = self._room
            if room <= 0:  # only ever inside a head: a body keeps max_head
                self._answer(431, "request.head_too_large",
                             f"the request line and headers are larger than {self.max_head} bytes")
                return
            piece, view = view[:room], view[room:]
            if not self._in_body:
                self._room = room - len(piece)
            super().data_received(piece)  # type: ignore[arg-type]
            if self.transport.is_closing() or self.parser.should_upgrade():
                return

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # a response is being written: the next head is not late while it waits for it
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)
        elif self._in_body:
            self._answered = True
            self._close()  # the rest of a body whose request was answered already
        else:
            self._answer(408, "request.head_timeout",
                         f"the request line and headers did not arrive within {self.head_timeout:g} s")

    # -- parser callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_head = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        self._room = self.max_head
        if self._head_timer is not None:
            self._stop_timer()
        limit = self.concurrency
        if self.parser.get_http_version() not in SERVED_VERSIONS:
            # a proxy in front and this server would read such a request differently (an HTTP/2
            # line on a connection that is not HTTP/2, a bare 0.9 line with no headers at all):
            # refused before any app sees it, as a head too large is
            self._swapped(_version_unsupported)
        elif limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            self.logger.warning("Exceeded concurrency limit.")
            self._swapped(_busy)
        else:
            super().on_headers_complete()

    def _swapped(self, answer: Any) -> None:
        """This request answered by ``answer`` instead of the app."""
        app = self.app
        self.app = answer
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        # msg is uvicorn's fixed text; the problem says as much, and nothing of what was received
        self._answer(400, "request.malformed", "the request is not valid HTTP/1.1")
