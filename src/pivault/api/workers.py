"""Several worker processes, each with its own listening socket (``SO_REUSEPORT``).

uvicorn's own supervisor binds one socket and hands it to every worker. All
of them then wait on it, and when connections arrive the first worker to
wake accepts every one that is queued: a client that opens a few keep-alive
connections at once (a gateway, a reverse proxy, a batch job) lands them all
on one worker, which saturates its core while the others idle. Measured on 2
cores with 8 connections: half the lookups per second in most runs.

Here the parent binds one socket per worker, all to the same address with
``SO_REUSEPORT``, so the kernel spreads new connections across them (by a
hash of the client's address and port), and each worker serves only its own.
A worker that dies is replaced on the same socket; connections that arrive
meanwhile wait in its queue instead of being refused. Beside the workers runs
the node's audit chainer (:mod:`pivault.audit.chainer`): the workers write
their audit entries ahead to their journals and the chainer chains them, so
no worker spends its requests' time on it. It too is replaced if it dies;
until then the workers' entries wait in their journals, and after a couple of
seconds the workers refuse requests (fail closed). A serving process that
dies takes its workers with it (``PR_SET_PDEATHSIG``).

Linux keeps a ``SO_REUSEPORT`` group to sockets of one user, so no other
account can join it and take connections. Before binding, the parent checks
that nothing listens on the address yet (a second ``pivault serve`` of the
same user would otherwise join the group silently and share the port).
Where ``SO_REUSEPORT`` does not spread connections (it only does on Linux),
uvicorn's supervisor serves instead.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

# uvicorn's exit status for a worker that could not start (bad TLS files, app import)
from uvicorn.config import STARTUP_FAILURE

__all__ = ["CHAINER_NAME", "balanced", "listen_group", "serve_workers"]

log = logging.getLogger("pivault.api")

BACKLOG = 2048
#: the audit chainer's process name (``ps -o comm``, ``/proc/PID/comm``)
CHAINER_NAME = b"pivault-chainer"
#: a worker that stops within QUICK seconds of its start, STRIKES times in a row, is not restarted
QUICK = 5.0
STRIKES = 3


def balanced() -> bool:
    """True where ``SO_REUSEPORT`` spreads connections over the sockets of a group."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def listen_group(host: str, port: int, n: int) -> list[socket.socket]:
    """``n`` listening sockets on ``host:port`` in one ``SO_REUSEPORT`` group.

    Raises ``OSError`` (``EADDRINUSE``) if anything listens there already,
    including another group of the same user.
    """
    host = host.strip("[]")
    fam = _family(host)
    # a plain bind fails if any socket holds the address, with or without SO_REUSEPORT
    with socket.socket(fam, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(fam, socket.SOCK_STREAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((host, port))
            s.listen(BACKLOG)
            s.set_inheritable(True)
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


def _die_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM to this worker when the serving process dies.

    A serving process killed outright (SIGKILL, the OOM killer) would otherwise
    leave its workers answering on the port, headless: nobody restarts or stops
    them, and a new ``pivault serve`` cannot bind. SIGTERM lets each finish the
    requests in flight.
    """
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request above took effect
        sys.exit(0)


def _worker_main(config_kwargs: dict[str, Any], sock: socket.socket, parent: int) -> None:
    """One worker: uvicorn's server on this worker's socket only."""
    import uvicorn

    _die_with_parent(parent)

    server = uvicorn.Server(uvicorn.Config(**config_kwargs))
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def _chainer_main(home: str, parent: int) -> None:
    """The node's audit chainer: chains the workers' journals until SIGTERM."""
    import ctypes

    from pivault.detect.setup import run_node_chainer

    _die_with_parent(parent)
    # named for ps and top (the workers share its command line)
    pr_set_name = 15
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_name, CHAINER_NAME, 0, 0, 0)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the serving process stops us in order
    try:
        from pivault.keys.binding import check_home

        check_home(home)  # never chains beside a record-key store every other door refuses
        run_node_chainer(home, stop)
    except Exception as exc:
        log.error("the audit chainer stopped: %s", getattr(exc, "code", type(exc).__name__))
        sys.exit(STARTUP_FAILURE)


class _Supervisor:
    def __init__(self, config_kwargs: dict[str, Any], socks: list[socket.socket],
                 grace: float, chainer_home: str | None = None) -> None:
        self.config_kwargs = config_kwargs
        self.chainer_home = chainer_home
        self.chainer: Any = None
        self.chainer_started = 0.0
        self.chainer_strikes = 0
        self.socks = socks
        self.grace = grace
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: list[Any] = [None] * len(socks)
        self.started_at = [0.0] * len(socks)
        #: deaths in a row of workers that had run less than QUICK seconds
        self.strikes = 0
        self.stop = threading.Event()
        self.failed: str | None = None

    def start(self, i: int) -> None:
        p = self.ctx.Process(target=_worker_main, args=(self.config_kwargs, self.socks[i], os.getpid()),
                             name=f"pivault-worker-{i}", daemon=False)
        p.start()
        self.procs[i] = p
        self.started_at[i] = time.monotonic()

    def start_chainer(self) -> None:
        p = self.ctx.Process(target=_chainer_main, args=(self.chainer_home, os.getpid()),
                             name="pivault-audit-chainer", daemon=False)
        p.start()
        self.chainer = p
        self.chainer_started = time.monotonic()

    def watch_chainer(self) -> None:
        p = self.chainer
        if p is None or p.is_alive() or self.stop.is_set():
            return
        p.join()
        quick = time.monotonic() - self.chainer_started < QUICK
        self.chainer_strikes = self.chainer_strikes + 1 if quick else 0
        if self.chainer_strikes >= STRIKES:
            self.failed = (f"the audit chainer could not start (exit status {p.exitcode}); "
                           "see the messages above")
            self.stop.set()
            return
        log.warning("the audit chainer stopped (exit status %s); starting a new one", p.exitcode)
        self.start_chainer()

    def watch(self) -> None:
        self.watch_chainer()
        for i, p in enumerate(self.procs):
            if p.is_alive() or self.stop.is_set():
                continue
            p.join()
            quick = time.monotonic() - self.started_at[i] < QUICK
            self.strikes = self.strikes + 1 if quick else 0
            if p.exitcode == STARTUP_FAILURE or self.strikes >= STRIKES:
                # it would fail the same way on every restart (TLS files, the vault, the app)
                self.failed = f"worker {i} could not start (exit status {p.exitcode}); see the messages above"
                self.stop.set()
                return
            log.warning("worker %d stopped (exit status %s); starting a new one", i, p.exitcode)
            self.start(i)

    def shutdown(self) -> None:
        alive = [p for p in self.procs if p is not None and p.is_alive()]
        for p in alive:
            with contextlib.suppress(OSError):
                p.terminate()  # SIGTERM: uvicorn finishes the requests in flight
        deadline = time.monotonic() + self.grace + 5
        for p in alive:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        # the chainer last: the workers' last entries are chained before it goes
        p = self.chainer
        if p is not None and p.is_alive():
            with contextlib.suppress(OSError):
                p.terminate()
            p.join(15)
            if p.is_alive():
                p.kill()
                p.join()


def serve_workers(config_kwargs: dict[str, Any], socks: list[socket.socket], *, grace: float = 10.0,
                  chainer_home: str | None = None) -> None:
    """Run one uvicorn server per socket of ``socks`` (from :func:`listen_group`) until a signal.

    ``config_kwargs`` are :class:`uvicorn.Config`'s (an import string app, so
    each worker builds its own). With ``chainer_home``, the node's audit
    chainer of that vault runs beside them (the workers must then be told to
    leave their journals to it: ``$PIVAULT_AUDIT_CHAIN=node``). Returns when SIGINT or SIGTERM arrives, after
    the workers have stopped; raises ``RuntimeError`` if a worker cannot start.
    The sockets are closed on return.
    """
    sup = _Supervisor(config_kwargs, socks, grace, chainer_home)
    previous = {sig: signal.signal(sig, lambda *_: sup.stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if chainer_home is not None:
            sup.start_chainer()
        for i in range(len(socks)):
            sup.start(i)
        while not sup.stop.wait(0.5):
            sup.watch()
    finally:
        sup.shutdown()
        for s in socks:
            s.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if sup.failed:
        raise RuntimeError(sup.failed)
