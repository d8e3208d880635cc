"""A client address's share of ``pivault serve`` covers TLS handshakes too: connections still in their
handshake count against their address, and one address cannot start handshakes faster than its rate.

A real ``pivault serve`` with two workers on loopback, over TLS; the crowding client connects from
127.0.0.1 and the other client from 127.0.0.2 (Linux routes all of 127.0.0.0/8 to loopback, so a
client socket bound to 127.0.0.2 reaches a server on 127.0.0.1 from another address).
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from api_support import CHEAP, PASSPHRASE, free_port, start_server, stop

from pivault.api.tls import make_dev_cert
from pivault.policy import Policy
from pivault.policy.context import local_operator
from pivault.policy.tokens import TokenStore
from pivault.synth import generate
from pivault.vault import Vault, init

WORKERS = 2
PER_CLIENT = 4
RATE = 10
#: long enough that a stalled handshake is still held when the test looks (it is cut after this)
HEAD_TIMEOUT = 30.0
CROWD = "127.0.0.1"
OTHER = "127.0.0.2"
#: the first bytes of a TLS ClientHello: a record header and the start of the handshake message
PARTIAL_HELLO = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"


@dataclass
class Guarded:
    port: int
    cert: Path
    token: str
    id_number: str
    stderr: Path

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def lookup(self, source: str) -> int:
        """One lookup on a new connection from ``source``: the response's status."""
        transport = httpx.HTTPTransport(local_address=source, verify=self.tls())
        with httpx.Client(base_url=f"https://127.0.0.1:{self.port}", transport=transport, timeout=10,
                          headers={"Authorization": f"Bearer {self.token}",
                                   "X-Purpose": "identity_verification"}) as c:
            return c.post("/v1/residents/lookup", json={"id_number": self.id_number}).status_code

    def handshake(self, source: str) -> bool:
        """True if a TLS handshake from ``source`` completes (the connection is closed after)."""
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10, source_address=(source, 0))
        try:
            with self.tls().wrap_socket(raw, server_hostname="127.0.0.1"):
                return True
        except OSError:  # closed or reset before the handshake: refused
            return False
        finally:
            raw.close()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    tmp = tmp_path_factory.mktemp("guarded")
    home = tmp / "home"
    init(home, passphrase=PASSPHRASE, keyring_path=tmp / "keys" / "v.keyring", argon2=CHEAP,
         expected_population=1000)
    resident = next(iter(generate(1, 77)))
    with Vault.open(home, passphrase=PASSPHRASE) as vault:
        vault.put({k: resident[k] for k in ("name", "id_number", "mobile", "address")},  # type: ignore[literal-required]
                  ctx=local_operator("test setup"))
        token = TokenStore(vault.db).create("limits-officer", "officer",
                                            Policy.default().purposes_for("officer"), ttl_seconds=3600)[1]
    c = make_dev_cert(tmp / "tls")
    port = free_port()
    err = tmp / "server.stderr"
    proc = start_server(home, c.certfile, c.keyfile, port, tmp / "server.stdout", err,
                        "--workers", str(WORKERS), "--head-timeout", str(HEAD_TIMEOUT),
                        "--max-client-connections", str(PER_CLIENT),
                        "--max-client-handshake-rate", str(RATE))
    try:
        yield Guarded(port, c.certfile, token, resident["id_number"], err)
    finally:
        stop(proc)


def _closed_by_server(s: socket.socket, within: float) -> bool:
    """True if the server closes (or resets) ``s`` within ``within`` seconds."""
    s.settimeout(within)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _closed_within(socks: list[socket.socket], expected: int, within: float) -> list[socket.socket]:
    """The sockets the server closes (or resets) within ``within`` seconds, waiting no longer once
    ``expected`` of them are closed and the others have had a moment more (a loaded machine may
    take a while to close its refusals; a held socket stays open either way)."""
    closed: list[socket.socket] = []
    deadline = time.monotonic() + within
    settle: float | None = None
    while time.monotonic() < deadline:
        open_ = [s for s in socks if s not in closed]
        if not open_:
            break
        # poll, not select: late in a long test run this process's descriptors pass FD_SETSIZE
        poller = select.poll()
        by_fd = {s.fileno(): s for s in open_}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        ready = [by_fd[fd] for fd, _ in poller.poll(100)]
        for s in ready:
            if _closed_by_server(s, 0.05):
                closed.append(s)
        if len(closed) >= expected and settle is None:
            settle = time.monotonic() + 0.3
        if settle is not None and time.monotonic() >= settle:
            break
    return closed


def _refill() -> None:
    """Wait until every address's handshake rate has come back whole."""
    time.sleep(1.2)


def test_stalled_handshakes_count_against_their_address(guarded: Guarded) -> None:
    _refill()
    stalled = []
    try:
        # far more than the address's share of every worker: the kernel spreads them over both
        for i in range(WORKERS * PER_CLIENT * 3):
            s = socket.create_connection(("127.0.0.1", guarded.port), timeout=10, source_address=(CROWD, 0))
            if i % 2:
                s.sendall(PARTIAL_HELLO)  # a handshake begun and never finished
            stalled.append(s)
        t0 = time.monotonic()
        refused = _closed_within(stalled, len(stalled) - WORKERS * PER_CLIENT, 5.0)
        held = [s for s in stalled if s not in refused]
        # each worker holds its address's share and closes the rest at once, long before the
        # head timeout that cuts a stalled handshake
        assert time.monotonic() - t0 < HEAD_TIMEOUT / 2
        assert len(held) <= WORKERS * PER_CLIENT, (len(held), len(refused))
        assert len(refused) >= len(stalled) - WORKERS * PER_CLIENT
        # the crowding address gets nothing more ...
        assert not any(guarded.handshake(CROWD) for _ in range(4))
        # ... while another address completes its lookups, on new connections to either worker
        assert [guarded.lookup(OTHER) for _ in range(6)] == [200] * 6
        # the held ones are still open: stalled, not refused
        assert not any(_closed_by_server(s, 0.05) for s in held)
    finally:
        for s in stalled:
            s.close()
    # once its stalled connections are gone the address is served again
    deadline = time.monotonic() + 5
    while not guarded.handshake(CROWD):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert guarded.lookup(CROWD) == 200


def test_a_flood_of_handshakes_from_one_address_does_not_starve_another(guarded: Guarded) -> None:
    _refill()
    done = threading.Event()
    counts = {"ok": 0, "refused": 0}

    def flood() -> None:
        while not done.is_set():
            counts["ok" if guarded.handshake(CROWD) else "refused"] += 1

    threads = [threading.Thread(target=flood) for _ in range(2)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    try:
        statuses = []
        while time.monotonic() - t0 < 2.5:
            statuses.append(guarded.lookup(OTHER))
            time.sleep(0.2)
    finally:
        done.set()
        for t in threads:
            t.join(20)
    elapsed = time.monotonic() - t0
    assert statuses and statuses == [200] * len(statuses)
    # each worker lets the address start RATE handshakes a second, and RATE at once
    assert counts["ok"] <= WORKERS * RATE * (1 + elapsed) + 2, counts
    assert counts["refused"] > counts["ok"], counts


def test_refusals_are_logged_in_one_line_without_the_address(guarded: Guarded) -> None:
    deadline = time.monotonic() + 15  # the workers log refusals at most every few seconds
    lines: list[str] = []
    while time.monotonic() < deadline:
        text = guarded.stderr.read_text(errors="replace")
        lines = [line for line in text.splitlines() if "before their TLS handshake" in line]
        if any("--max-client-handshake-rate" in line for line in lines) and any(
                "--max-client-connections" in line for line in lines):
            break
        time.sleep(0.5)
    assert lines, guarded.stderr.read_text(errors="replace")[-2000:]
    text = guarded.stderr.read_text(errors="replace")
    assert any("--max-client-connections" in line for line in lines)
    assert any("--max-client-handshake-rate" in line for line in lines)
    assert "Traceback" not in text
    for line in lines:
        assert CROWD not in line and OTHER not in line  # the network only: 127.0.0.0/24
        assert "127.0.0.0/24" in line
