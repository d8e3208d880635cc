"""The write-ahead journal against whoever can write to its directory but does not hold the writer's keys.

The journals live in the vault home (``run/audit-journal``), beside the
anchor: the attacker here holds that directory (a shared disk, a backup
host, an operator account without the passphrase), and for some tests the
database too. What the chainer reads from a journal it MACs into the chain
as genuine, so a line it accepts must be one a writer made: a forged file, a
forged or altered line, a journal chained and removed then put back, lines
taken out of a stopped process's journal.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path

import pytest

from pivault.audit import AuditEvent, AuditLog, VerifierKey, WriterKeys, entries, verify
from pivault.audit.chainer import NodeChainer
from pivault.audit.journal import PROGRESS, PROGRESS_SUFFIX
from pivault.crypto import Keyring
from pivault.policy.context import AccessContext
from pivault.store import Database


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "run" / "audit-journal"


def _ev(ctx: AccessContext, i: int) -> AuditEvent:
    return AuditEvent.of(ctx, "find", "ok", [f"r_{i:026d}"])


def _line(seq: int, principal: str, operation: str, detail: str = "{}") -> bytes:
    """A journal line as the writers wrote them before lines carried a tag."""
    return json.dumps([seq, int(time.time() * 1e6), principal, "officer", "case_review", operation,
                       '["r_' + "a" * 26 + '"]', 1, "ok", f"q_{seq:016x}", None, "api", detail],
                      separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _crashing(url: str, keyring: Keyring, writer: WriterKeys, journal: str, n: int, chain: str) -> None:
    db = Database(url)
    log = AuditLog(db, keyring, writer, journal_dir=journal, journal_chain=chain)
    assert log.journal is not None
    log.journal.max_delay = 3600.0  # nothing chained before the "crash"
    log.journal.max_batch = 10**6
    ctx = AccessContext(principal="worker-crash", role="officer", purpose="case_investigation")
    for i in range(n):
        log.record(_ev(ctx, i))
    os._exit(0)


def _crash(store_url: str, keyring: Keyring, writer: WriterKeys, journal: Path, n: int,
           chain: str = "thread") -> Path:
    p = mp.get_context("fork").Process(target=_crashing, args=(store_url, keyring, writer, str(journal), n,
                                                               chain))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    (left,) = journal.glob("*.journal")
    return left


def _refusals(db: Database) -> list[dict[str, object]]:
    return [e.detail for e in entries(db, operation="audit.journal")]


def test_a_journal_dropped_into_the_directory_is_not_chained(db: Database, keyring: Keyring,
                                                            writer: WriterKeys, verifier: VerifierKey,
                                                            journal: Path, ctx: AccessContext) -> None:
    """A file written by hand, named like a stopped process's journal: a read never made, pinned on
    another officer, and a prune of entries 1..10 that never ran (the insider then deletes them from
    the store, and the logged prune covers it). The next process to start chained both, with valid
    MACs."""
    log = AuditLog(db, keyring, writer, checkpoint_every=10)
    for i in range(12):
        log.append(_ev(ctx, i))
    journal.mkdir(parents=True)
    prune = _line(2, "local:root", "audit.prune", '{"through":10,"keep_days":1096}')
    (journal / "node1-4242-deadbeef.journal").write_bytes(_line(1, "officer-42", "read") + prune)
    cli = AuditLog(db, keyring, writer, journal_dir=journal)
    cli.record(_ev(ctx, 99))  # a process's first entry chains what stopped processes left
    assert cli.flush(10)
    assert not list(entries(db, principal="officer-42")) and not list(entries(db, operation="audit.prune"))
    assert _refusals(db) == [{"journal": "node1-4242-deadbeef", "refused_lines": 2, "missing_lines": 0,
                              "reason": "unknown journal"}]
    assert (journal / "node1-4242-deadbeef.refused").exists()  # kept for the operator to look at
    assert verify(db, verifier, keyring=keyring).ok


def test_lines_forged_or_altered_in_a_stopped_process_journal_are_refused(
        store_url: str, db: Database, keyring: Keyring, writer: WriterKeys, verifier: VerifierKey,
        journal: Path, ctx: AccessContext) -> None:
    """The journal is genuine, its lines are not all: one altered to another principal, one taken
    out, one added. The rest is chained, and what was done to it is in the trail."""
    left = _crash(store_url, keyring, writer, journal, 6)
    lines = left.read_bytes().splitlines(keepends=True)
    assert len(lines) == 6
    lines[1] = lines[1].replace(b'"worker-crash"', b'"officer-00"')
    del lines[3]
    lines.append(_line(7, "worker-crash", "find"))
    left.write_bytes(b"".join(lines))
    cli = AuditLog(db, keyring, writer, journal_dir=journal)
    cli.record(_ev(ctx, 99))
    assert cli.flush(10)
    got = [e.record_ids[0] for e in entries(db, principal="worker-crash")]
    assert got == [f"r_{i:026d}" for i in (0, 2, 4, 5)]
    assert not list(entries(db, principal="officer-00"))
    # two lines that do not check, and two entries (2 and 4) with no line that does
    assert _refusals(db) == [{"journal": left.stem, "refused_lines": 2, "missing_lines": 2,
                              "reason": "lines altered or removed"}]
    assert verify(db, verifier, keyring=keyring).ok


def test_a_journal_chained_and_removed_then_put_back_is_not_chained_twice(
        store_url: str, db: Database, keyring: Keyring, writer: WriterKeys, verifier: VerifierKey,
        journal: Path, ctx: AccessContext, tmp_path: Path) -> None:
    left = _crash(store_url, keyring, writer, journal, 5)
    kept = tmp_path / "copy.journal"
    shutil.copy(left, kept)  # taken while it waited to be recovered
    cli = AuditLog(db, keyring, writer, journal_dir=journal)
    cli.record(_ev(ctx, 99))
    assert cli.flush(10)
    assert len(list(entries(db, principal="worker-crash"))) == 5 and not left.exists()
    shutil.copy(kept, left)  # put back: its row went with it, so its lines count from 0 again
    again = AuditLog(db, keyring, writer, journal_dir=journal)
    again.record(_ev(ctx, 100))
    assert again.flush(10)
    assert len(list(entries(db, principal="worker-crash"))) == 5
    assert [d["refused_lines"] for d in _refusals(db)] == [5]
    assert verify(db, verifier, keyring=keyring).ok


def test_a_forged_line_in_a_live_workers_journal_does_not_blind_the_chainer(
        db: Database, keyring: Keyring, writer: WriterKeys, verifier: VerifierKey, journal: Path,
        ctx: AccessContext) -> None:
    """A line with a high sequence number appended to a worker's journal: the chainer took it as
    chained up to there, told the worker so, and skipped every later entry of that worker."""
    worker = AuditLog(db, keyring, writer, journal_dir=journal, journal_chain="node")
    chainer = NodeChainer(AuditLog(db, keyring, writer), journal)
    assert chainer.acquire()
    try:
        for i in range(3):
            worker.record(_ev(ctx, i))
        assert chainer.run_once() == 3
        assert worker.journal is not None
        (mine,) = journal.glob("*.journal")
        with open(mine, "ab") as fh:
            fh.write(_line(10**9, "officer-00", "find"))
        for i in range(3, 6):
            worker.record(_ev(ctx, i))
        chainer.run_once()
        assert worker.flush(1)
    finally:
        chainer.close()
    got = [e.record_ids[0] for e in entries(db, principal=ctx.principal)]
    assert got == [f"r_{i:026d}" for i in range(6)]
    assert not list(entries(db, principal="officer-00"))
    assert [d["refused_lines"] for d in _refusals(db)] == [1]
    assert verify(db, verifier, keyring=keyring).ok
    worker.journal.close()


def test_the_chainer_refuses_a_journal_the_store_does_not_know(
        store_url: str, db: Database, keyring: Keyring, writer: WriterKeys, verifier: VerifierKey,
        journal: Path, ctx: AccessContext) -> None:
    """A node-mode worker's journal whose row was deleted (the attacker holds the store too) is not
    chained, and its process, told so, refuses requests rather than answer without a trail."""
    left = _crash(store_url, keyring, writer, journal, 4, chain="node")
    db.execute("DELETE FROM audit_journals")
    chainer = NodeChainer(AuditLog(db, keyring, writer), journal)
    assert chainer.acquire()
    try:
        fd = os.open(left, os.O_RDONLY)  # the worker "lives": its lock is held
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            assert chainer.run_once() == 0
            assert PROGRESS.unpack(left.with_suffix(PROGRESS_SUFFIX).read_bytes())[1] != 0  # refuse
        finally:
            os.close(fd)
        chainer.run_once()  # its process is gone: its lines are counted in the trail
    finally:
        chainer.close()
    assert not list(entries(db, principal="worker-crash"))
    assert _refusals(db) == [{"journal": left.stem, "refused_lines": 4, "missing_lines": 0,
                              "reason": "unknown journal"}]
    assert verify(db, verifier, keyring=keyring).ok
