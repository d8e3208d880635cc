"""The node's audit chainer: workers write ahead to their journals, one process chains them all."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pivault.audit import AuditError, AuditEvent, AuditLog, VerifierKey, WriterKeys, entries, verify
from pivault.audit.chainer import NodeChainer
from pivault.crypto import Keyring
from pivault.policy.context import AccessContext
from pivault.store import Database


def _ev(ctx: AccessContext, i: int) -> AuditEvent:
    return AuditEvent.of(ctx, "find", "ok", [f"r_{i:026d}"])


class _Running:
    """A chainer on a connection of its own, in a thread here (the workers are other processes)."""

    def __init__(self, url: str, keyring: Keyring, writer: WriterKeys, journal: Path) -> None:
        self.db = Database(url)
        self.chainer = NodeChainer(AuditLog(self.db, keyring, writer), journal)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.chainer.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        self.db.close()


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "run" / "audit-journal"


@pytest.fixture
def chainer(store_url: str, db: Database, keyring: Keyring, writer: WriterKeys,
            journal: Path) -> Iterator[_Running]:
    running = _Running(store_url, keyring, writer, journal)
    yield running
    running.close()


def _node_log(db: Database, keyring: Keyring, writer: WriterKeys, journal: Path) -> AuditLog:
    return AuditLog(db, keyring, writer, journal_dir=journal, journal_chain="node")


def test_node_mode_journal_is_chained_by_the_chainer_not_a_thread(
        db: Database, keyring: Keyring, writer: WriterKeys, verifier: VerifierKey, journal: Path,
        ctx: AccessContext, chainer: _Running) -> None:
    def chaining_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "pivault-audit-journal"}

    before = chaining_threads()  # other tests' journals may have left theirs
    log = _node_log(db, keyring, writer, journal)
    for i in range(60):
        log.record(_ev(ctx, i))
    assert log.flush(10)
    assert chaining_threads() <= before
    got = [e.record_ids[0] for e in entries(db, principal=ctx.principal)]
    assert got == [f"r_{i:026d}" for i in range(60)]
    report = verify(db, verifier, keyring=keyring)
    assert report.ok and report.checked == 60
    log.journal.close()
    assert not list(journal.glob("*.journal")) and not list(journal.glob("*.chained"))
    deadline = time.monotonic() + 10
    while db.query_one("SELECT COUNT(*) FROM audit_journals") != (0,):  # the chainer forgets its row
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_thread_mode_journal_beside_the_chainer_is_chained_once(
        db: Database, keyring: Keyring, writer: WriterKeys, verifier: VerifierKey, journal: Path,
        ctx: AccessContext, chainer: _Running) -> None:
    # a command run beside the server: its journal, in the same directory, is chained by its thread
    cli = AuditLog(db, keyring, writer, journal_dir=journal)
    for i in range(30):
        cli.record(_ev(ctx, i))
        time.sleep(0.002)
    assert cli.flush(10)
    time.sleep(0.1)
    got = [e.record_ids[0] for e in entries(db, principal=ctx.principal)]
    assert got == [f"r_{i:026d}" for i in range(30)]
    assert verify(db, verifier, keyring=keyring).ok


def _worker(url: str, keyring: Keyring, writer: WriterKeys, journal: str, n: int) -> None:
    db = Database(url)
    log = AuditLog(db, keyring, writer, journal_dir=journal, journal_chain="node")
    ctx = AccessContext(principal=f"worker-{os.getpid()}", role="officer", purpose="case_investigation")
    for i in range(n):
        log.record(_ev(ctx, i))
    assert log.flush(30)
    db.close()


def test_three_worker_processes_one_chainer_one_chain(
        store_url: str, db: Database, keyring: Keyring, writer: WriterKeys, verifier: VerifierKey,
        journal: Path) -> None:
    fork = mp.get_context("fork")
    procs = [fork.Process(target=_worker, args=(store_url, keyring, writer, str(journal), 150))
             for _ in range(3)]
    for p in procs:
        p.start()
    # the chainer's thread only once the workers are forked: a fork while it is inside SQLite
    # would leave the child a copy of SQLite's locks held (serve spawns its processes instead)
    running = _Running(store_url, keyring, writer, journal)
    try:
        for p in procs:
            p.join(120)
            assert p.exitcode == 0
    finally:
        running.close()
    report = verify(db, verifier, keyring=keyring)
    assert report.ok and report.checked == 450
    for p in procs:
        got = [e.record_ids[0] for e in entries(db, principal=f"worker-{p.pid}")]
        assert got == [f"r_{i:026d}" for i in range(150)]  # each worker's entries once, in order
    assert not list(journal.glob("*.journal"))


def test_without_a_chainer_requests_are_refused_then_served_again(
        store_url: str, db: Database, keyring: Keyring, writer: WriterKeys, verifier: VerifierKey,
        journal: Path, ctx: AccessContext) -> None:
    log = _node_log(db, keyring, writer, journal)
    log.journal.stale_after = 0.3
    log.record(_ev(ctx, 0))  # written ahead: nobody chains it
    assert not log.flush(0.1)
    time.sleep(0.4)
    with pytest.raises(AuditError) as info:
        log.record(_ev(ctx, 1))
    assert info.value.code == "audit.unavailable" and "chainer" in str(info.value)
    running = _Running(store_url, keyring, writer, journal)  # the supervisor starts a new one
    try:
        assert log.flush(10)
        log.record(_ev(ctx, 2))
        assert log.flush(10)
    finally:
        running.close()
    assert [e.record_ids[0][-1] for e in entries(db)] == ["0", "2"]  # the refused request left none
    assert verify(db, verifier, keyring=keyring).ok


def test_a_chain_that_cannot_be_written_refuses_at_once(
        sqlite_url: str, keyring: Keyring, writer: WriterKeys, verifier: VerifierKey, journal: Path,
        ctx: AccessContext) -> None:
    from pivault.store import migrate

    db = Database(sqlite_url)
    migrate(db)
    running = _Running(sqlite_url, keyring, writer, journal)
    try:
        log = _node_log(db, keyring, writer, journal)
        log.journal.stale_after = 60  # only the chainer's report may refuse here
        log.record(_ev(ctx, 0))
        assert log.flush(10)
        db.execute("ALTER TABLE audit_entries RENAME TO audit_entries_gone")
        log.record(_ev(ctx, 1))  # journalled; its chaining fails, and the chainer says so
        refused: AuditError | None = None
        deadline = time.monotonic() + 20
        while refused is None and time.monotonic() < deadline:
            try:
                log.record(_ev(ctx, 9))
            except AuditError as exc:
                refused = exc
            time.sleep(0.01)
        # refused because the chainer said so, not because the entries grew stale
        assert refused is not None and refused.code == "audit.unavailable"
        assert "cannot write" in str(refused)
        db.execute("ALTER TABLE audit_entries_gone RENAME TO audit_entries")
        deadline = time.monotonic() + 10
        while True:  # the chainer retries, and says when it works again
            try:
                log.record(_ev(ctx, 2))
                break
            except AuditError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert log.flush(10)
    finally:
        running.close()
    got = [e.record_ids[0][-1] for e in entries(db)]
    assert got[:2] == ["0", "1"] and got[-1] == "2" and set(got[2:-1]) <= {"9"}
    assert verify(db, verifier, keyring=keyring).ok
    db.close()


def _crashing(url: str, keyring: Keyring, writer: WriterKeys, journal: str, n: int) -> None:
    db = Database(url)
    log = AuditLog(db, keyring, writer, journal_dir=journal, journal_chain="node")
    ctx = AccessContext(principal="worker-crash", role="officer", purpose="case_investigation")
    for i in range(n):
        log.record(_ev(ctx, i))
    os._exit(0)  # no flush, no atexit: a crash


def test_a_crashed_worker_journal_is_chained_once_and_removed(
        store_url: str, db: Database, keyring: Keyring, writer: WriterKeys, verifier: VerifierKey,
        journal: Path) -> None:
    p = mp.get_context("fork").Process(target=_crashing, args=(store_url, keyring, writer, str(journal), 40))
    p.start()
    p.join(60)
    assert p.exitcode == 0 and len(list(journal.glob("*.journal"))) == 1
    chainer = NodeChainer(AuditLog(db, keyring, writer), journal)
    assert chainer.acquire()
    try:
        assert chainer.run_once() == 40
        assert chainer.run_once() == 0
    finally:
        chainer.close()
    got = [e.record_ids[0] for e in entries(db, principal="worker-crash")]
    assert got == [f"r_{i:026d}" for i in range(40)]
    assert not list(journal.glob("*.journal")) and not list(journal.glob("*.chained"))
    assert verify(db, verifier, keyring=keyring).ok


def test_with_no_chainer_left_a_command_recovers_a_crashed_workers_journal(
        store_url: str, db: Database, keyring: Keyring, writer: WriterKeys, verifier: VerifierKey,
        journal: Path, ctx: AccessContext) -> None:
    p = mp.get_context("fork").Process(target=_crashing, args=(store_url, keyring, writer, str(journal), 25))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    cli = AuditLog(db, keyring, writer, journal_dir=journal)  # thread mode, as the command line
    cli.record(_ev(ctx, 999))  # its first entry recovers the journals of stopped processes
    assert cli.flush(10)
    assert len(list(entries(db, principal="worker-crash"))) == 25
    assert [p.name for p in journal.iterdir() if p.suffix in (".journal", ".chained")] == [
        f"{cli.journal.journal_id}.journal"]
    assert verify(db, verifier, keyring=keyring).ok


def test_a_journal_started_afresh_past_the_chainers_position_is_read_whole(
        db: Database, keyring: Keyring, writer: WriterKeys, verifier: VerifierKey, journal: Path,
        ctx: AccessContext) -> None:
    log = _node_log(db, keyring, writer, journal)
    log.journal.rotate_bytes = 1  # start afresh whenever everything in the file is chained
    chainer = NodeChainer(AuditLog(db, keyring, writer), journal)
    assert chainer.acquire()
    try:
        for i in range(10):
            log.record(_ev(ctx, i))
        assert chainer.run_once() == 10
        size = next(journal.glob("*.journal")).stat().st_size
        for i in range(10, 40):  # the first of these empties the file; 30 lines outgrow the 10
            log.record(_ev(ctx, i))
        assert next(journal.glob("*.journal")).stat().st_size > size
        assert chainer.run_once() == 30
        log.record(_ev(ctx, 40))
        assert chainer.run_once() == 1
    finally:
        chainer.close()
    got = [e.record_ids[0] for e in entries(db, principal=ctx.principal)]
    assert got == [f"r_{i:026d}" for i in range(41)]
    assert verify(db, verifier, keyring=keyring).ok


def test_a_round_chains_every_journal_in_one_transaction_in_time_order(
        db: Database, keyring: Keyring, writer: WriterKeys, verifier: VerifierKey, journal: Path) -> None:
    # two workers' journals (two logs of this process stand for them)
    a, b = _node_log(db, keyring, writer, journal), _node_log(db, keyring, writer, journal)
    ca = AccessContext(principal="worker-a", role="officer", purpose="case_investigation")
    cb = AccessContext(principal="worker-b", role="officer", purpose="case_investigation")
    for i in range(5):
        a.record(_ev(ca, i))
        time.sleep(0.001)
        b.record(_ev(cb, i))
        time.sleep(0.001)
    chainer = NodeChainer(AuditLog(db, keyring, writer), journal)
    assert chainer.acquire()
    try:
        assert chainer.run_once() == 10
    finally:
        chainer.close()
    order = [(e.principal, e.record_ids[0][-1]) for e in entries(db)]
    assert order == [(w, str(i)) for i in range(5) for w in ("worker-a", "worker-b")]
    # one transaction: both journals' progress stored by the same commit
    rows = db.query("SELECT flushed_seq, ts_us FROM audit_journals")
    assert len(rows) == 2 and {r[0] for r in rows} == {5} and len({r[1] for r in rows}) == 1
    assert verify(db, verifier, keyring=keyring).ok


def test_one_chainer_per_journal_directory(db: Database, keyring: Keyring, writer: WriterKeys,
                                           journal: Path) -> None:
    first = NodeChainer(AuditLog(db, keyring, writer), journal)
    assert first.acquire()
    second = NodeChainer(AuditLog(db, keyring, writer), journal)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    t = time.monotonic()
    assert not second.acquire(stop, poll=0.05)  # waited for the first, then was stopped
    assert time.monotonic() - t >= 0.25
    first.close()
    assert second.acquire(threading.Event())
    second.close()


def test_the_chain_mode_is_checked(db: Database, keyring: Keyring, writer: WriterKeys, journal: Path) -> None:
    with pytest.raises(AuditError) as info:
        AuditLog(db, keyring, writer, journal_dir=journal, journal_chain="cron")
    assert info.value.code == "audit.config"


class _CountingChainer(NodeChainer):
    """The chainer, with its rounds counted (what an idle node pays for it)."""

    rounds = 0

    def run_once(self) -> int:
        self.rounds += 1
        return super().run_once()


def test_an_idle_chainer_wakes_seldom_and_chains_again_when_entries_come(
        store_url: str, db: Database, keyring: Keyring, writer: WriterKeys, journal: Path,
        ctx: AccessContext) -> None:
    own = Database(store_url)
    chainer = _CountingChainer(AuditLog(own, keyring, writer), journal, max_delay=0.02, idle_delay=0.2)
    stop = threading.Event()
    thread = threading.Thread(target=chainer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        log = _node_log(db, keyring, writer, journal)
        time.sleep(1.5)  # idle: rounds 20, 40, 80, 160 ms apart, then every 200 ms
        idle_rounds = chainer.rounds
        # at max_delay it would be 75 rounds; the cap allows at most 1.5 / 0.2 + the ramp's 4
        assert idle_rounds <= 14, idle_rounds
        for i in range(5):
            log.record(_ev(ctx, i))
        assert log.flush(10)  # chained by a later round, at most idle_delay away
        got = [e.record_ids[0] for e in entries(db, principal=ctx.principal)]
        assert got == [f"r_{i:026d}" for i in range(5)]
        log.journal.close()
    finally:
        stop.set()
        thread.join(30)
        own.close()
    assert not thread.is_alive()


def test_a_crashed_workers_journal_recovered_by_two_processes_at_once_is_chained_once(
        store_url: str, db: Database, keyring: Keyring, writer: WriterKeys, verifier: VerifierKey,
        journal: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chainer has listed a stopped worker's journal; a starting process recovers and removes it
    before the chainer takes its lock. The chainer then holds the lock of a removed file whose
    progress row is gone: it must not chain the entries a second time."""
    import fcntl as real_fcntl
    import types

    from pivault.audit import chainer as chainer_module

    p = mp.get_context("fork").Process(target=_crashing, args=(store_url, keyring, writer, str(journal), 30))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    starting = Database(store_url)
    other = AuditLog(starting, keyring, writer, journal_dir=journal)  # a process starting up
    assert other.journal is not None
    recovered: list[int] = []

    def flock(fd: int, op: int) -> None:
        if not recovered:  # between the chainer's listing and its lock, the other process recovers
            recovered.append(other.journal.recover())  # type: ignore[union-attr]
        real_fcntl.flock(fd, op)

    monkeypatch.setattr(chainer_module, "fcntl", types.SimpleNamespace(
        flock=flock, LOCK_EX=real_fcntl.LOCK_EX, LOCK_NB=real_fcntl.LOCK_NB, LOCK_UN=real_fcntl.LOCK_UN))
    chainer = NodeChainer(AuditLog(db, keyring, writer), journal)
    try:
        chainer.run_once()
    finally:
        chainer.close()
        other.journal.close()
        starting.close()
    assert recovered == [30]
    got = [e.record_ids[0] for e in entries(db, principal="worker-crash")]
    assert got == [f"r_{i:026d}" for i in range(30)]  # each access once in the trail
    assert verify(db, verifier, keyring=keyring).ok
