"""Several workers, each on its own socket of a SO_REUSEPORT group: connections spread, a dead
worker is replaced, a stopped server leaves no worker behind, a second server cannot share the port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_support import (
    CHEAP,
    PASSPHRASE,
    REDIS_URL,
    free_port,
    redis_available,
    serve_cmd,
    server_env,
    start_server,
    stop,
)

from pivault.api.tls import make_dev_cert
from pivault.api.workers import balanced, listen_group
from pivault.policy.tokens import TokenStore
from pivault.store.db import Database
from pivault.vault import init, load

pytestmark = pytest.mark.skipif(not balanced(), reason="SO_REUSEPORT spreads connections only on Linux")


# -- helpers: the kernel's view of who holds which connection ---------------------------------------

def _kids(pid: int) -> Iterator[tuple[int, str]]:
    """(pid, /proc stat line) of each child process of ``pid``."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                yield int(entry), stat


def children(pid: int) -> list[int]:
    """The worker processes of server ``pid`` (not multiprocessing's resource tracker, nor the chainer)."""
    out = []
    for kid, stat in _kids(pid):
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{kid}/cmdline").read_bytes() and "(pivault-chainer)" not in stat:
                out.append(kid)
    return sorted(out)


def chainer_of(pid: int) -> int | None:
    """The audit chainer process of server ``pid``."""
    return next((kid for kid, stat in _kids(pid) if "(pivault-chainer)" in stat), None)


def tcp_sockets_on(port: int, state: str = "01") -> set[str]:
    """Inodes of the TCP sockets on local ``port`` in ``state`` (01 established, 0A listening)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            next(fh)
            for line in fh:
                f = line.split()
                if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == state:
                    inodes.add(f[9])
    return inodes


def sockets_of(pid: int) -> set[str]:
    mine = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            mine.add(target[8:-1])
    return mine


def connections_per_process(pids: list[int], port: int) -> dict[int, int]:
    est = tcp_sockets_on(port)
    return {pid: len(sockets_of(pid) & est) for pid in pids}


# -- the socket group itself ------------------------------------------------------------------------

def test_a_group_spreads_connections_over_its_sockets() -> None:
    port = free_port()
    socks = listen_group("127.0.0.1", port, 2)
    clients = []
    try:
        for _ in range(32):
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            clients.append(c)
        time.sleep(0.1)
        counts = []
        for s in socks:
            s.setblocking(False)
            n = 0
            while True:
                try:
                    conn, _ = s.accept()
                except BlockingIOError:
                    break
                conn.close()
                n += 1
            counts.append(n)
        assert sum(counts) == 32
        # each connection goes to one socket by a hash of the client's port: all 32 on one
        # socket has odds of 2 in 2^32
        assert min(counts) >= 1, counts
    finally:
        for c in clients:
            c.close()
        for s in socks:
            s.close()


def test_a_taken_port_is_refused_even_to_a_group_of_the_same_user() -> None:
    port = free_port()
    first = listen_group("127.0.0.1", port, 2)
    try:
        with pytest.raises(OSError):
            listen_group("127.0.0.1", port, 2)  # would otherwise join the first group silently
    finally:
        for s in first:
            s.close()
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", port))
        plain.listen()
        with pytest.raises(OSError):
            listen_group("127.0.0.1", port, 2)
    for s in listen_group("127.0.0.1", port, 2):  # free again
        s.close()


def test_a_worker_that_cannot_start_stops_the_service_instead_of_restarting_forever() -> None:
    from pivault.api.workers import serve_workers

    socks = listen_group("127.0.0.1", free_port(), 2)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as exc:  # every worker fails to import its app
        serve_workers({"app": "pivault.no_such_module:app", "log_level": "critical"}, socks, grace=1)
    assert "could not start" in str(exc.value)
    assert time.monotonic() - t0 < 60
    assert all(s.fileno() == -1 for s in socks)  # closed on the way out


async def hello_app(scope: dict[str, object], receive: object, send: object) -> None:
    """A worker app that starts: only the audit chainer beside it fails."""
    return None


def test_an_audit_chainer_that_cannot_start_stops_the_service(tmp_path: Path) -> None:
    from pivault.api.workers import serve_workers

    socks = listen_group("127.0.0.1", free_port(), 1)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as exc:  # no vault there: the chainer fails on every start
        serve_workers({"app": "test_api_workers:hello_app", "log_level": "critical"}, socks, grace=1,
                      chainer_home=str(tmp_path / "no-vault"))
    assert "audit chainer could not start" in str(exc.value)
    assert time.monotonic() - t0 < 60
    assert all(s.fileno() == -1 for s in socks)


# -- a real server with two workers -----------------------------------------------------------------

class Server:
    def __init__(self, tmp: Path) -> None:
        self.home = tmp / "home"
        init(self.home, passphrase=PASSPHRASE, keyring_path=tmp / "keys" / "v.keyring", argon2=CHEAP,
             expected_population=1000)
        TokenStore(Database(load(self.home).store_url)).create(
            "workers-test", "officer", ["identity_verification"], ttl_seconds=600)
        self.tls = make_dev_cert(tmp / "tls")
        self.port = free_port()
        self.out, self.err = tmp / "server.stdout", tmp / "server.stderr"
        self.proc = start_server(self.home, self.tls.certfile, self.tls.keyfile, self.port, self.out,
                                 self.err, "--workers", "2", redis_url=REDIS_URL)
        try:
            self.workers = self.wait_for_workers(2)
            deadline = time.monotonic() + 30
            while (chainer := chainer_of(self.proc.pid)) is None:
                assert time.monotonic() < deadline, "no audit chainer beside the workers"
                time.sleep(0.1)
            self.chainer = chainer
        except BaseException:
            stop(self.proc)
            raise

    def wait_for_workers(self, n: int, gone: int | None = None) -> list[int]:
        """The server's worker pids once there are ``n`` of them (and ``gone`` is not one)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            kids = children(self.proc.pid)
            if len(kids) == n and gone not in kids:
                return kids
            time.sleep(0.2)
        raise AssertionError(f"expected {n} workers, have {children(self.proc.pid)}")

    def client(self) -> httpx.Client:
        import ssl

        return httpx.Client(base_url=f"https://127.0.0.1:{self.port}", timeout=20,
                            verify=ssl.create_default_context(cafile=str(self.tls.certfile)))


def need_redis() -> None:
    """Two workers need shared budget counters: Redis, which CI must have."""
    if not redis_available():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have Redis at {REDIS_URL}")
        pytest.skip(f"two workers need shared budget counters: no Redis at {REDIS_URL}")


def gone(pids: list[int], within: float) -> bool:
    """True once none of ``pids`` is alive, waiting up to ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.1)
    return not any(Path(f"/proc/{p}").exists() for p in pids)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    need_redis()
    s = Server(tmp_path_factory.mktemp("workers"))
    try:
        yield s
    finally:
        stop(s.proc)


def test_each_worker_listens_on_a_socket_of_its_own(server: Server) -> None:
    listening = tcp_sockets_on(server.port, "0A")
    workers = children(server.proc.pid)
    own = [sockets_of(pid) & listening for pid in workers]
    assert len(listening) == 2 and all(len(s) == 1 for s in own), (listening, own)
    assert own[0] != own[1]  # one socket shared by both is what lets one worker take every connection


def test_keep_alive_connections_are_spread_over_the_workers(server: Server) -> None:
    import ssl

    ctx = ssl.create_default_context(cafile=str(server.tls.certfile))
    # a gateway's burst: every connection is queued before any worker wakes (one shared socket
    # would give them all to the first worker that does)
    for _burst in range(3):
        raw = [socket.create_connection(("127.0.0.1", server.port), timeout=20) for _ in range(16)]
        conns = [ctx.wrap_socket(r, server_hostname="127.0.0.1") for r in raw]
        try:
            for c in conns:
                c.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert c.recv(4096).startswith(b"HTTP/1.1 200")
            per = connections_per_process(children(server.proc.pid), server.port)
            assert sum(per.values()) == 16, per
            # per-worker sockets: the kernel hashes each connection to one (all 16 on one: 2 in 2^16)
            assert min(per.values()) >= 1, per
        finally:
            for c in conns:
                c.close()
        time.sleep(0.2)  # the workers see the closes


def test_a_killed_worker_is_replaced_and_the_service_keeps_answering(server: Server) -> None:
    before = children(server.proc.pid)
    os.kill(before[0], signal.SIGKILL)
    after = server.wait_for_workers(2, gone=before[0])
    assert before[0] not in after and before[1] in after
    # fresh connections hash to both sockets, the replaced worker's included
    for _ in range(20):
        with server.client() as c:
            assert c.get("/healthz").status_code == 200
    assert server.proc.poll() is None


def test_a_second_server_on_the_same_port_refuses(server: Server) -> None:
    r = subprocess.run(serve_cmd(server.home, "--port", str(server.port), "--cert", str(server.tls.certfile),
                                 "--key", str(server.tls.keyfile), "--workers", "2"),
                       env=server_env(server.home, redis_url=REDIS_URL), capture_output=True, timeout=60)
    assert r.returncode != 0
    err = r.stderr.decode()
    assert f"cannot listen on 127.0.0.1:{server.port}" in err and "Traceback" not in err
    with server.client() as c:  # the first server still serves
        assert c.get("/healthz").status_code == 200


def test_stopping_the_server_stops_every_worker(tmp_path: Path) -> None:
    need_redis()
    s = Server(tmp_path)
    stop(s.proc)
    assert s.proc.returncode == 0
    assert gone(s.workers, 20), "a worker outlived its server"
    assert gone([s.chainer], 20), "the audit chainer outlived its server"


def test_workers_do_not_outlive_a_killed_server(tmp_path: Path) -> None:
    need_redis()
    s = Server(tmp_path)
    workers = [*s.workers, s.chainer]
    s.proc.kill()  # SIGKILL, the OOM killer: no chance to stop its workers itself
    s.proc.wait(10)
    try:
        assert gone(workers, 30), "headless workers (or their audit chainer) kept running"
        for sock in listen_group("127.0.0.1", s.port, 2):  # the port is free for a new server
            sock.close()
    finally:
        for p in workers:  # whatever the outcome, no worker is left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
