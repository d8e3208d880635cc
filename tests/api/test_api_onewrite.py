"""Each small response leaves the server in one TLS record; a slow body does not hold its head."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

import pytest
from api_support import Live, uvicorn_thread

from pivault.api.connection import GuardedProtocol
from pivault.api.onewrite import OneWriteProtocol


def _first_read(live: Live, request: bytes) -> bytes:
    """What one read of the TLS socket returns: the plaintext of the response's first record."""
    ctx = ssl.create_default_context(cafile=str(live.cert))
    host, port = live.base.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(request)
        time.sleep(0.3)  # every record of the response is here before the first read
        return tls.recv(65536)


def test_a_response_is_one_record(live: Live) -> None:
    got = _first_read(live, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(body)["status"] == "ok"  # the whole body came with the head

    resident = live.residents[0]
    payload = json.dumps({"id_number": resident["id_number"]}).encode()
    got = _first_read(live, b"POST /v1/residents/lookup HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            b"Authorization: Bearer " + live.tokens["officer"].encode() + b"\r\n"
                            b"X-Purpose: identity_verification\r\nContent-Type: application/json\r\n"
                            b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert json.loads(body)["count"] == 1


async def _slow_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"4")]})
    await asyncio.sleep(0.6)
    await send({"type": "http.response.body", "body": b"done"})


@pytest.fixture(params=[OneWriteProtocol, GuardedProtocol], ids=["onewrite", "guarded"])
def slow_server(request: pytest.FixtureRequest) -> Iterator[int]:
    with uvicorn_thread(_slow_app, http=request.param, log_level="warning") as port:
        yield port


def test_a_slow_body_does_not_hold_its_head(slow_server: int) -> None:
    with socket.create_connection(("127.0.0.1", slow_server), timeout=5) as s:
        t0 = time.monotonic()
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = s.recv(65536)
        head_at = time.monotonic() - t0
        rest = b""
        while not (first + rest).endswith(b"done"):
            chunk = s.recv(65536)
            assert chunk, "connection closed before the body"
            rest += chunk
        body_at = time.monotonic() - t0
    assert first.startswith(b"HTTP/1.1 200") and first.endswith(b"\r\n\r\n")  # the head alone, at once
    assert head_at < 0.4 <= body_at
