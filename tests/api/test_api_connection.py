"""Before the app sees a request: a head's deadline and size, one client's share of a worker, and the
server's own errors as problems. A real uvicorn server on loopback with the real protocol class."""

from __future__ import annotations

import functools
import json
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from api_support import CHEAP, PASSPHRASE, free_port, start_server, stop, uvicorn_thread

from pivault.api.connection import CLOSE_GRACE, ConnectionLimits, GuardedProtocol
from pivault.api.problems import TITLES
from pivault.api.tls import make_dev_cert
from pivault.policy.tokens import TokenStore
from pivault.store.db import Database
from pivault.vault import init, load

HEAD_TIMEOUT = 0.5
MAX_HEAD = 4096
PER_CLIENT = 3
#: what every problem answered below the app carries, as every response of the service does
SECURITY = {"x-content-type-options": "nosniff", "cache-control": "no-store",
            "content-security-policy": "default-src 'none'; frame-ancestors 'none'"}


#: every path the app was called for, in order
CALLED: list[str] = []


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echoes the path and the size of the body; ``/early`` answers without reading the body."""
    if scope["type"] != "http":
        return
    CALLED.append(scope["path"])
    got = 0
    if scope["path"] != "/early":
        while True:
            msg = await receive()
            got += len(msg.get("body", b""))
            if not msg.get("more_body"):
                break
    body = json.dumps({"path": scope["path"], "got": got}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@contextmanager
def _server(**config: Any) -> Iterator[int]:
    protocol = functools.partial(GuardedProtocol, limits=ConnectionLimits(head_timeout=HEAD_TIMEOUT,
                                                                          per_client=PER_CLIENT))
    with uvicorn_thread(_app, http=protocol, log_level="critical", h11_max_incomplete_event_size=MAX_HEAD,
                        **config) as port:
        yield port


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with _server() as p:
        yield p


class Conn:
    """A raw HTTP/1.1 connection that reads whole responses, pipelined ones included."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the connection was closed")
        self.buf += chunk

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        n = int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            self._fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return int(lines[0].split()[1]), headers, body

    def closed(self) -> bool:
        """True once the server has closed the connection (within the socket's timeout)."""
        try:
            return self.sock.recv(65536) == b""
        except ConnectionResetError:
            return True


def get(path: str = "/") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


def problem(status: int, headers: dict[str, str], body: bytes, code: str) -> dict[str, Any]:
    assert headers["content-type"] == "application/problem+json"
    for name, value in SECURITY.items():
        assert headers[name] == value, name
    assert headers["connection"] == "close"
    doc: dict[str, Any] = json.loads(body)
    assert doc["status"] == status and doc["code"] == code and doc["type"].endswith(code)
    assert doc["title"] == TITLES[status]
    return doc


def test_half_a_head_gets_408_within_the_timeout(port: int) -> None:
    with Conn(port) as c:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: b")
        t0 = time.monotonic()
        status, headers, body = c.response()
        waited = time.monotonic() - t0
        assert status == 408
        problem(408, headers, body, "request.head_timeout")
        assert c.closed()
    assert HEAD_TIMEOUT * 0.8 <= waited < HEAD_TIMEOUT + 1.5


def test_a_trickled_head_has_the_timeout_from_its_first_byte(port: int) -> None:
    with Conn(port) as c:
        t0 = time.monotonic()
        head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"a" * 100
        with pytest.raises(OSError):  # the server closes the connection while bytes still come
            for i in range(len(head)):
                c.send(head[i:i + 1])
                time.sleep(0.05)
        waited = time.monotonic() - t0
    assert waited < HEAD_TIMEOUT + 1.5  # 100+ bytes at 50 ms would take over 5 s


def test_a_connection_that_sends_nothing_gets_408(port: int) -> None:
    with Conn(port) as c:
        t0 = time.monotonic()
        status, headers, body = c.response()
        assert status == 408 and time.monotonic() - t0 < HEAD_TIMEOUT + 1.5
        problem(408, headers, body, "request.head_timeout")
        assert c.closed()


def test_keep_alive_idles_freely_and_each_head_has_its_own_deadline(port: int) -> None:
    with Conn(port) as c:
        c.send(get("/one"))
        assert c.response()[0] == 200
        time.sleep(HEAD_TIMEOUT * 2)  # idle between requests: the keep-alive timeout's, not the head's
        c.send(get("/two"))
        status, _, body = c.response()
        assert status == 200 and json.loads(body)["path"] == "/two"
        c.send(b"GET /three HTTP/1.1\r\nHo")
        t0 = time.monotonic()
        assert c.response()[0] == 408
        assert time.monotonic() - t0 < HEAD_TIMEOUT + 1.5


def _seconds_until_closed(c: Conn, piece: bytes) -> float:
    """Send ``piece`` every 50 ms until the server drops the connection; how long that took."""
    t0 = time.monotonic()
    with pytest.raises(OSError):
        for _ in range(100):
            c.send(piece)
            time.sleep(0.05)
    return time.monotonic() - t0


def test_empty_lines_between_requests_do_not_hold_a_connection(port: int) -> None:
    with Conn(port) as c:
        c.send(get())
        assert c.response()[0] == 200
        assert _seconds_until_closed(c, b"\r\n") < HEAD_TIMEOUT + 1.5


def test_a_body_trickling_after_its_answer_does_not_hold_a_connection(port: int) -> None:
    with Conn(port) as c:
        c.send(b"POST /early HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10)
        assert c.response()[0] == 200
        assert _seconds_until_closed(c, b"x") < HEAD_TIMEOUT + 1.5


def test_pipelined_requests_and_bodies_larger_than_a_head(port: int) -> None:
    body = b"b" * 100_000  # handed to the parser in pieces of at most MAX_HEAD
    head_near_cap = b"GET /near HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"p" * (MAX_HEAD - 100) + b"\r\n\r\n"
    with Conn(port) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + body
               + get("/after") + head_near_cap + get("/last"))
        answers = [c.response() for _ in range(4)]
    assert [a[0] for a in answers] == [200] * 4
    assert [json.loads(a[2]) for a in answers] == [
        {"path": "/upload", "got": 100_000}, {"path": "/after", "got": 0},
        {"path": "/near", "got": 0}, {"path": "/last", "got": 0}]


def test_a_head_over_the_cap_gets_431_and_is_not_read_further(port: int) -> None:
    with Conn(port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (MAX_HEAD * 2) + b"\r\n\r\n")
        status, headers, body = c.response()
        assert status == 431
        problem(431, headers, body, "request.head_too_large")
        assert c.closed()
    with Conn(port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X-Url: /" + b"u" * (MAX_HEAD * 2))
        assert c.response()[0] == 431
    # 64 MB of one header: the server stops reading at the cap, so the client cannot send it all
    # (a server that read on would take it all, and keep it, the header being unfinished)
    with Conn(port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: ")
        chunk = b"a" * 65536
        sent = 0
        with pytest.raises(OSError):
            while sent < 64 * 1024 * 1024:
                c.send(chunk)
                sent += len(chunk)
        assert sent < 32 * 1024 * 1024


def test_a_client_over_its_share_gets_503_and_its_connections_still_work(port: int) -> None:
    conns = [Conn(port) for _ in range(PER_CLIENT)]
    try:
        for c in conns:
            c.send(get())
            assert c.response()[0] == 200
        with Conn(port) as extra:
            status, headers, body = extra.response()  # answered before it sends anything
            assert status == 503
            problem(503, headers, body, "connection.limit")
            assert extra.closed()
        conns[0].send(get("/still"))
        assert conns[0].response()[0] == 200
        conns.pop().sock.close()
        deadline = time.monotonic() + 5
        while True:  # the server counts the closed one out as soon as it sees it go
            with Conn(port) as again:
                again.send(get("/again"))
                try:
                    if again.response()[0] == 200:
                        break
                except (EOFError, ConnectionResetError):
                    pass
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        for c in conns:
            c.sock.close()


@pytest.mark.parametrize("request_bytes", [
    b"NOT HTTP AT ALL\r\n\r\n",
    b"BREW / HTTP/1.1\r\nHost: t\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
], ids=["garbage", "unknown-method", "length-and-chunked"])
def test_what_is_not_http_gets_a_problem_400(port: int, request_bytes: bytes) -> None:
    with Conn(port) as c:
        c.send(request_bytes)
        status, headers, body = c.response()
        assert status == 400
        doc = problem(400, headers, body, "request.malformed")
        assert b"HTTP AT ALL" not in body and "BREW" not in doc["detail"]
        assert c.closed()


@pytest.mark.parametrize("request_bytes", [
    b"GET /path HTTP/2.0\r\nHost: t\r\n\r\n",
    b"GET /path HTTP/0.9\r\n\r\n",
    b"GET /path\r\n\r\n",
], ids=["http-2.0", "http-0.9", "no-version"])
def test_a_request_line_of_another_version_is_refused_505(port: int, request_bytes: bytes) -> None:
    CALLED.clear()
    with Conn(port) as c:
        c.send(request_bytes)
        status, headers, body = c.response()
        assert status == 505
        problem(505, headers, body, "request.http_version")
        assert c.closed()
    assert CALLED == []  # the app never saw it
    with Conn(port) as c:  # HTTP/1.0 is still served
        c.send(b"GET /ten HTTP/1.0\r\nHost: t\r\n\r\n")
        assert c.response()[0] == 200
    assert CALLED == ["/ten"]


def test_over_the_concurrency_limit_a_503_problem() -> None:
    with _server(limit_concurrency=2) as p, Conn(p) as first:
        first.send(get())
        assert first.response()[0] == 200
        with Conn(p) as second:
            second.send(get())
            status, headers, body = second.response()
            assert status == 503
            problem(503, headers, body, "server.busy")
            assert second.closed()
        first.send(get())
        assert first.response()[0] == 200


# -- through `pivault serve`, over TLS ------------------------------------------------------------
SERVE_HEAD_TIMEOUT = 1.0
SERVE_PER_CLIENT = 4


@dataclass
class Served:
    port: int
    cert: Path
    pid: int


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One worker (so every connection of the test reaches the same one) with short limits."""
    tmp = tmp_path_factory.mktemp("served")
    home = tmp / "home"
    init(home, passphrase=PASSPHRASE, keyring_path=tmp / "keys" / "v.keyring", argon2=CHEAP,
         expected_population=1000)
    TokenStore(Database(load(home).store_url)).create("limits-check", "admin", ["administration"],
                                                       ttl_seconds=600)
    c = make_dev_cert(tmp / "tls")
    p = free_port()
    proc = start_server(home, c.certfile, c.keyfile, p, tmp / "out", tmp / "err",
                        "--head-timeout", str(SERVE_HEAD_TIMEOUT),
                        "--max-client-connections", str(SERVE_PER_CLIENT))
    try:
        yield Served(p, c.certfile, proc.pid)
    finally:
        stop(proc)


class TlsConn(Conn):
    def __init__(self, s: Served) -> None:
        ctx = ssl.create_default_context(cafile=str(s.cert))
        raw = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        self.sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        self.buf = b""

    def closed(self) -> bool:
        try:
            return self.sock.recv(65536) == b""
        except (ConnectionResetError, ssl.SSLError):
            return True


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_serve_answers_a_stalled_head_408_over_tls(served: Served) -> None:
    with TlsConn(served) as c:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: b")
        t0 = time.monotonic()
        status, headers, body = c.response()
        assert status == 408 and time.monotonic() - t0 < SERVE_HEAD_TIMEOUT + 2
        problem(408, headers, body, "request.head_timeout")
        assert headers["strict-transport-security"].startswith("max-age=")
        assert c.closed()


def test_serve_cuts_a_tls_handshake_that_never_ends(served: Served) -> None:
    # a connection that never completes its TLS handshake used to hold a descriptor and a TLS
    # object of the worker for the event loop's minute: it now has the head's deadline
    for hello in (b"", b"\x16\x03\x01\x00\xa5\x01"):  # nothing; the first bytes of a ClientHello
        with socket.create_connection(("127.0.0.1", served.port), timeout=SERVE_HEAD_TIMEOUT + 5) as raw:
            if hello:
                raw.sendall(hello)
            t0 = time.monotonic()
            try:
                data = raw.recv(1)  # until the server closes (a timeout here fails the test)
            except ConnectionResetError:
                data = b""
            assert data == b""
            assert time.monotonic() - t0 < SERVE_HEAD_TIMEOUT + 3
    with TlsConn(served) as c:  # a client that completes its handshake is served as before
        c.send(get("/healthz"))
        assert c.response()[0] == 200


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's size in /proc")
def test_serve_stops_reading_a_huge_header(served: Served) -> None:
    with TlsConn(served) as c:  # the worker's first connection of this size: what it costs by itself
        c.send(get("/healthz"))
        assert c.response()[0] == 200
    before = _rss(served.pid)
    with TlsConn(served) as c:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        chunk = b"a" * 65536
        t0 = time.monotonic()
        # over TLS the server decrypts and drops what comes until its close is done (CLOSE_GRACE),
        # so what the client manages to send depends on the machine's speed; the time does not
        with pytest.raises(OSError):
            while time.monotonic() - t0 < 15:
                c.send(chunk)
        assert time.monotonic() - t0 < CLOSE_GRACE + 4
    assert _rss(served.pid) - before < 8 * 1024 * 1024
    with TlsConn(served) as c:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        status, headers, body = c.response()
        assert status == 431
        problem(431, headers, body, "request.head_too_large")


def test_serve_answers_garbage_with_a_problem_400_over_tls(served: Served) -> None:
    with TlsConn(served) as c:
        c.send(b"NOT HTTP AT ALL\r\n\r\n")
        status, headers, body = c.response()
        assert status == 400
        problem(400, headers, body, "request.malformed")
        assert headers["strict-transport-security"].startswith("max-age=")


def test_serve_caps_one_address_and_keeps_its_connections(served: Served) -> None:
    conns = [TlsConn(served) for _ in range(SERVE_PER_CLIENT)]
    try:
        for c in conns:
            c.send(get("/healthz"))
            assert c.response()[0] == 200
        # over TLS one more is closed before its handshake (a 503 would cost the handshake it refuses)
        with pytest.raises(OSError):
            TlsConn(served)
        conns[0].send(get("/healthz"))
        assert conns[0].response()[0] == 200
    finally:
        for c in conns:
            c.sock.close()


def test_a_refused_tls_connection_runs_nothing_it_sent(tmp_path: Path) -> None:
    """Over TLS, asyncio's SSL protocol hands on data it had buffered while it closes: a request that
    came with the handshake's last message must not run on a connection refused at its start."""
    cert = make_dev_cert(tmp_path / "tls")
    ctx = ssl.create_default_context(cafile=str(cert.certfile))
    with _server(loop="asyncio", ssl_certfile=str(cert.certfile), ssl_keyfile=str(cert.keyfile)) as port:
        held = []
        for i in range(PER_CLIENT):  # the address's share, each used once
            s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                                server_hostname="localhost")
            s.sendall(f"GET /held{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert s.recv(200).startswith(b"HTTP/1.1 200")
            held.append(s)
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                incoming.write(raw.recv(65536))
        tls.write(b"DELETE /refused HTTP/1.1\r\nHost: x\r\n\r\n")
        raw.sendall(outgoing.read())  # the handshake's last message and the request, in one segment
        answer = b""
        deadline = time.monotonic() + 5
        while b"connection.limit" not in answer and time.monotonic() < deadline:
            chunk = raw.recv(65536)
            if not chunk:
                break
            incoming.write(chunk)
            with suppress(ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                answer += tls.read(65536)
        time.sleep(CLOSE_GRACE + 0.5)
        assert answer.startswith(b"HTTP/1.1 503") and b"connection.limit" in answer, answer[:80]
        assert "/refused" not in CALLED
        raw.close()
        for s in held:
            s.close()
