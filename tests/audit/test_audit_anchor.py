"""The audit anchor: how far the chain went, kept outside the store, checked by ``verify``.

The attacker here holds the database only (a dump and write access, a rogue
DBA), unless a test says otherwise: they can put back earlier copies of the
audit tables (from a backup, a snapshot), which the store alone cannot tell
from a shorter history. The anchor file is out of their reach.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_audit_prune_forgery import _backdate

from pivault.audit import AuditEvent, AuditLog, VerifierKey, WriterKeys, entries, prune, verify
from pivault.audit.anchor import Anchor, rebase_message, settle
from pivault.audit.chainer import NodeChainer
from pivault.audit.log import latest_checkpoint
from pivault.crypto import Keyring
from pivault.policy.context import AccessContext
from pivault.store import Database

DAY = 86400.0
TABLES = ("audit_entries", "audit_checkpoints", "audit_head")


@pytest.fixture
def anchor(tmp_path: Path) -> Path:
    return tmp_path / "home" / "audit-anchor.jsonl"


def _log(db: Database, keyring: Keyring, writer: WriterKeys, anchor: Path | None, **kw: Any) -> AuditLog:
    return AuditLog(db, keyring, writer, checkpoint_every=10, checkpoint_seconds=1e9, anchor=anchor, **kw)


def _read(log: AuditLog, ctx: AccessContext, n: int, tag: str = "r") -> None:
    for i in range(n):
        log.append(AuditEvent.of(ctx, "lookup", "ok", [f"r_{tag}_{i:04d}"]))


def _copy(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """The audit tables as a backup or a snapshot holds them."""
    return {t: db.query(f"SELECT * FROM {t}") for t in TABLES}


def _put_back(db: Database, copy: dict[str, list[tuple[Any, ...]]]) -> None:
    """What the attacker (or a restore) does: the audit tables exactly as they were."""
    with db.transaction():
        for t in TABLES:
            db.execute(f"DELETE FROM {t}")
        for t, rows in copy.items():
            if rows:
                db.executemany(f"INSERT INTO {t} VALUES ({', '.join('?' * len(rows[0]))})", rows)


def _seqs(anchor: Path) -> list[int]:
    return [m.seq for m in Anchor(anchor).read().marks]


def test_each_checkpoint_is_marked_once_committed(db: Database, keyring: Keyring, writer: WriterKeys,
                                                  verifier: VerifierKey, ctx: AccessContext,
                                                  anchor: Path) -> None:
    log = _log(db, keyring, writer, anchor)
    _read(log, ctx, 25)
    assert _seqs(anchor) == [0, 10, 20]
    assert stat.S_IMODE(anchor.stat().st_mode) == 0o600
    r = verify(db, verifier, keyring=keyring, anchor=anchor)
    assert r.ok and r.anchored_seq == 20 and r.anchor == str(anchor) and not r.notes, r
    # a checkpoint inside a transaction is marked only when that transaction commits ...
    with db.transaction():
        _read(log, ctx, 5, "inner")
        assert _seqs(anchor) == [0, 10, 20]
    assert _seqs(anchor) == [0, 10, 20, 30]
    # ... and never if it rolls back: the mark would accuse a sound chain
    with pytest.raises(RuntimeError), db.transaction():
        _read(log, ctx, 10, "undone")
        raise RuntimeError("the caller's change failed")
    assert _seqs(anchor) == [0, 10, 20, 30]
    _read(log, ctx, 10, "after")
    assert _seqs(anchor) == [0, 10, 20, 30, 40]
    assert verify(db, verifier, keyring=keyring, anchor=anchor).ok


def test_a_rollback_to_a_snapshot_is_found_without_the_keyring(db: Database, keyring: Keyring,
                                                               writer: WriterKeys, verifier: VerifierKey,
                                                               ctx: AccessContext, anchor: Path) -> None:
    log = _log(db, keyring, writer, anchor)
    _read(log, ctx, 14)
    snapshot = _copy(db)
    _read(log, ctx, 9, "taken")  # entries 15..23, a checkpoint at 20
    _put_back(db, snapshot)
    assert verify(db, verifier, keyring=keyring).ok  # the store alone cannot tell
    r = verify(db, verifier, anchor=anchor)
    assert (r.ok, r.problem, r.first_bad) == (False, "tail.rolled_back", 15), r
    assert r.message.startswith("the chain ends at entry 14, but the audit anchor marked entry 20 (")
    assert r.message.endswith(", line 3): entries from 15 were removed and the head put back as it was")


def test_the_whole_trail_deleted_is_found(db: Database, keyring: Keyring, writer: WriterKeys,
                                          verifier: VerifierKey, ctx: AccessContext, anchor: Path) -> None:
    log = _log(db, keyring, writer, anchor)
    _read(log, ctx, 12)
    for t in (*TABLES, "audit_journals"):
        db.execute(f"DELETE FROM {t}")
    assert verify(db, verifier).ok  # an empty trail beside no records: a vault that has not begun
    r = verify(db, verifier, anchor=anchor)
    assert (r.ok, r.problem, r.first_bad) == (False, "tail.rolled_back", 1), r


def test_a_whole_writer_rewrite_behind_the_anchor_is_found(db: Database, keyring: Keyring, writer: WriterKeys,
                                                           verifier: VerifierKey, ctx: AccessContext,
                                                           anchor: Path) -> None:
    """With the keyring too, the tail can be truncated and re-extended past the newest mark: the marked
    entries then carry other MACs."""
    log = _log(db, keyring, writer, anchor)
    _read(log, ctx, 24)
    snapshot = _copy(db)
    _read(log, ctx, 10, "taken")  # checkpoint 30
    _put_back(db, snapshot)
    forger = _log(db, keyring, writer, None)  # the attacker writes no anchor
    _read(forger, ctx, 12, "forged")  # 25..36, a checkpoint at 30 again
    assert verify(db, verifier, keyring=keyring).ok
    r = verify(db, verifier, keyring=keyring, anchor=anchor)
    assert (r.ok, r.problem, r.first_bad) == (False, "anchor.mismatch", 30), r


def test_a_due_prune_still_verifies_against_the_anchor(db: Database, keyring: Keyring, writer: WriterKeys,
                                                       verifier: VerifierKey, ctx: AccessContext,
                                                       anchor: Path) -> None:
    clock = [time.time() - 5 * 365 * DAY]
    log = _log(db, keyring, writer, anchor, clock=lambda: clock[0])
    _read(log, ctx, 25, "old")  # marks 0, 10, 20, five years ago
    clock[0] = time.time()
    _read(log, ctx, 7, "new")  # a mark at 30, now
    assert prune(log, ctx).through_seq == 20
    assert _seqs(anchor) == [0, 10, 20, 30]  # the anchor keeps what the prune removed from the store
    r = verify(db, verifier, keyring=keyring, anchor=anchor)
    assert r.ok and r.anchored_seq == 30, r


def test_a_prune_before_its_time_is_found_by_the_anchor(db: Database, keyring: Keyring, writer: WriterKeys,
                                                        verifier: VerifierKey, ctx: AccessContext,
                                                        anchor: Path) -> None:
    """The whole writer logs a prune of recent entries with its clock set ahead (see
    test_audit_prune_forgery.py): the anchor's marks are the checkpoint the auditor did not export."""
    log = _log(db, keyring, writer, anchor)
    _read(log, ctx, 25)
    assert prune(_log(db, keyring, writer, None), ctx, now=time.time() + 4 * 365 * DAY).through_seq == 20
    _backdate(db, writer, 20, 4 * 365 * DAY)  # the checkpoint it stands on, signed again years back
    assert verify(db, verifier, keyring=keyring).ok
    r = verify(db, verifier, keyring=keyring, anchor=anchor)
    assert (r.ok, r.problem, r.first_bad) == (False, "prune.early", 10), r


def test_a_restore_re_bases_the_anchor_and_a_later_rollback_is_still_found(
        db: Database, keyring: Keyring, writer: WriterKeys, verifier: VerifierKey, ctx: AccessContext,
        anchor: Path) -> None:
    log = _log(db, keyring, writer, anchor)
    _read(log, ctx, 25)
    backup = _copy(db)
    _read(log, ctx, 17, "lost")  # marks 30, 40: the store is lost after them
    _put_back(db, backup)  # the restore ...
    r = verify(db, verifier, keyring=keyring, anchor=anchor)
    assert (r.ok, r.problem) == (False, "tail.rolled_back"), r  # ... not recorded yet: a rollback
    # as `pivault restore` does: its audited entry, then the anchor follows in the open
    restorer = AccessContext(principal="local:operator", role="operator", purpose="restore")
    plain = _log(db, keyring, writer, None)
    plain.append(AuditEvent.of(restorer, "backup.restore", "ok", detail={"backup_id": "b_1"}))
    done = settle(plain, writer, Anchor(anchor), restorer)
    assert done.rebased and done.operation == "backup.restore" and done.checkpoint.seq == 26
    assert done.superseded is not None and done.superseded.seq == 40
    r = verify(db, verifier, keyring=keyring, anchor=anchor)
    assert r.ok and r.anchored_seq == 26, r
    assert any("re-based at entry 26 (backup.restore)" in n for n in r.notes), r.notes
    # the vault goes on; a later silent rollback, to after the restore or to before it, is found
    _read(log, ctx, 3, "after")
    after_restore = _copy(db)
    _read(log, ctx, 12, "later")  # a mark at 36 (ten after the re-base's checkpoint)
    assert verify(db, verifier, keyring=keyring, anchor=anchor).ok
    _put_back(db, after_restore)
    r = verify(db, verifier, keyring=keyring, anchor=anchor)
    assert (r.ok, r.problem, r.first_bad) == (False, "tail.rolled_back", 30), r
    _put_back(db, backup)
    r = verify(db, verifier, keyring=keyring, anchor=anchor)
    assert (r.ok, r.problem, r.first_bad) == (False, "tail.rolled_back", 26), r


def test_a_store_put_back_outside_a_restore_is_re_based_on_an_audited_entry(
        db: Database, keyring: Keyring, writer: WriterKeys, verifier: VerifierKey, ctx: AccessContext,
        anchor: Path) -> None:
    log = _log(db, keyring, writer, anchor)
    _read(log, ctx, 15)
    pitr = _copy(db)
    _read(log, ctx, 10, "lost")
    _put_back(db, pitr)  # a point-in-time recovery by the DBA
    operator = AccessContext(principal="local:operator", role="operator", purpose="audit")
    done = settle(_log(db, keyring, writer, None), writer, Anchor(anchor), operator)
    assert done.rebased and done.operation == "audit.rebase" and done.checkpoint.seq == 16
    last = list(entries(db))[-1]
    assert (last.seq, last.operation, last.detail["anchor_seq"]) == (16, "audit.rebase", 20)
    assert verify(db, verifier, keyring=keyring, anchor=anchor).ok
    # nothing ahead: a settle only marks
    again = settle(_log(db, keyring, writer, None), writer, Anchor(anchor), operator)
    assert not again.rebased and again.checkpoint.seq == 16


def test_forged_anchor_lines_are_named(db: Database, keyring: Keyring, writer: WriterKeys,
                                       verifier: VerifierKey, ctx: AccessContext, anchor: Path) -> None:
    log = _log(db, keyring, writer, anchor)
    _read(log, ctx, 15)
    good = anchor.read_bytes()
    # a re-base nobody with the writer's key made (to hide a rollback behind)
    cp = latest_checkpoint(db)
    assert cp is not None
    Anchor(anchor).rebase(cp, "backup.restore", bytes(64), superseded=None)
    r = verify(db, verifier, anchor=anchor)
    assert (r.ok, r.problem) == (False, "anchor.signature"), r
    # a re-base signed by the writer, but standing on no restore
    anchor.write_bytes(good)
    Anchor(anchor).rebase(cp, "backup.restore", writer.sign(rebase_message(cp, "backup.restore", None, None)),
                          superseded=None)
    r = verify(db, verifier, anchor=anchor)
    assert (r.ok, r.problem, r.first_bad) == (False, "anchor.rebase", 10), r
    # a mark moved ahead to accuse the store: its signature no longer holds
    anchor.write_bytes(good)
    last = json.loads(good.splitlines()[-1])
    last["seq"] = 99
    with open(anchor, "ab") as fh:
        fh.write(json.dumps(last).encode() + b"\n")
    r = verify(db, verifier, anchor=anchor)
    assert (r.ok, r.problem, r.first_bad) == (False, "anchor.signature", 99), r


def test_a_torn_last_line_is_skipped_and_the_next_mark_starts_a_line_of_its_own(
        db: Database, keyring: Keyring, writer: WriterKeys, verifier: VerifierKey, ctx: AccessContext,
        anchor: Path) -> None:
    log = _log(db, keyring, writer, anchor)
    _read(log, ctx, 12)
    with open(anchor, "ab") as fh:  # a crash while a mark was written
        fh.write(b'{"chain":"' + b"f" * 32 + b'","format":"pivault.audit.anch')
    r = verify(db, verifier, keyring=keyring, anchor=anchor)
    assert r.ok and r.anchored_seq == 10, r
    assert r.notes == ("1 torn or damaged line(s) of the audit anchor skipped",)
    snapshot = _copy(db)
    _read(log, ctx, 10)  # a mark at 20, after the torn line
    read = Anchor(anchor).read()
    assert [m.seq for m in read.marks] == [0, 10, 20] and read.torn == 1
    assert verify(db, verifier, keyring=keyring, anchor=anchor).ok
    _put_back(db, snapshot)
    r = verify(db, verifier, anchor=anchor)
    assert (r.ok, r.problem, r.first_bad) == (False, "tail.rolled_back", 13), r


def test_without_the_anchor_file_verify_says_it_cannot_check_the_tail(
        db: Database, keyring: Keyring, writer: WriterKeys, verifier: VerifierKey, ctx: AccessContext,
        anchor: Path) -> None:
    log = _log(db, keyring, writer, anchor)
    _read(log, ctx, 12)
    anchor.unlink()
    r = verify(db, verifier, keyring=keyring, anchor=anchor)
    assert r.ok and r.anchored_seq is None, r
    assert len(r.notes) == 1
    assert r.notes[0].startswith(f"the tail was not checked: no audit anchor at {anchor}")
    r = verify(db, verifier, keyring=keyring, anchor=anchor, anchor_required=True)
    assert (r.ok, r.problem) == (False, "anchor.missing"), r
    _read(log, ctx, 10)  # the next checkpoint starts the file again
    assert _seqs(anchor) == [20]
    assert verify(db, verifier, keyring=keyring, anchor=anchor, anchor_required=True).ok
    anchor.unlink()
    anchor.mkdir()
    with pytest.raises(Exception) as err:
        verify(db, verifier, anchor=anchor)
    assert getattr(err.value, "code", "") == "anchor.read"


def test_a_mark_that_cannot_be_written_does_not_fail_the_writer(db: Database, keyring: Keyring,
                                                               writer: WriterKeys, verifier: VerifierKey,
                                                               ctx: AccessContext, anchor: Path) -> None:
    anchor.parent.mkdir(parents=True)
    anchor.mkdir()  # not a file: every append fails
    log = _log(db, keyring, writer, anchor)
    _read(log, ctx, 25)  # the entries and checkpoints are committed all the same
    assert log.anchor is not None and log.anchor.failures == 3
    assert verify(db, verifier, keyring=keyring).ok


def _append_marks(path: str, cp_json: str, n: int) -> None:
    from pivault.audit import Checkpoint

    cp = Checkpoint.from_json(cp_json)
    a = Anchor(path)
    for _ in range(n):
        assert a.mark(cp)


def test_several_processes_append_whole_lines(db: Database, keyring: Keyring, writer: WriterKeys,
                                              ctx: AccessContext, anchor: Path) -> None:
    log = _log(db, keyring, writer, None)
    _read(log, ctx, 3)
    cp = log.checkpoint()
    fork = mp.get_context("fork")
    procs = [fork.Process(target=_append_marks, args=(str(anchor), cp.to_json(), 200)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    read = Anchor(anchor).read()
    assert (len(read.marks), read.torn) == (800, 0)


# -- the processes that chain: the journal's thread, the node's chainer -------------------------

def test_the_journals_chaining_thread_marks_the_anchor(db: Database, keyring: Keyring, writer: WriterKeys,
                                                       verifier: VerifierKey, ctx: AccessContext,
                                                       anchor: Path, tmp_path: Path) -> None:
    log = _log(db, keyring, writer, anchor, journal_dir=tmp_path / "run" / "audit-journal")
    try:
        for i in range(25):
            log.record(AuditEvent.of(ctx, "find", "ok", [f"r_{i:026d}"]))
        assert log.flush(10)
    finally:
        log.journal.close()
    assert _seqs(anchor)[0] == 0 and _seqs(anchor)[-1] >= 20
    assert verify(db, verifier, keyring=keyring, anchor=anchor).ok


class _Chainer:
    """The node's chainer on a connection of its own, in a thread here."""

    def __init__(self, url: str, keyring: Keyring, writer: WriterKeys, journal: Path, anchor: Path) -> None:
        self.db = Database(url)
        self.chainer = NodeChainer(_log(self.db, keyring, writer, anchor), journal)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.chainer.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        self.db.close()


@pytest.fixture
def chainer(store_url: str, db: Database, keyring: Keyring, writer: WriterKeys, tmp_path: Path,
            anchor: Path) -> Iterator[_Chainer]:
    running = _Chainer(store_url, keyring, writer, tmp_path / "run" / "audit-journal", anchor)
    yield running
    running.close()


def test_the_node_chainer_marks_the_anchor_and_a_rollback_is_found(
        db: Database, keyring: Keyring, writer: WriterKeys, verifier: VerifierKey, ctx: AccessContext,
        anchor: Path, tmp_path: Path, chainer: _Chainer) -> None:
    # a worker under `pivault serve --workers N`: it writes ahead, the chainer chains and checkpoints
    worker = AuditLog(db, keyring, writer, journal_dir=tmp_path / "run" / "audit-journal",
                      journal_chain="node")
    try:
        for i in range(14):
            worker.record(AuditEvent.of(ctx, "find", "ok", [f"r_{i:026d}"]))
            time.sleep(0.002)
        assert worker.flush(10)
        snapshot = _copy(db)
        for i in range(14, 30):
            worker.record(AuditEvent.of(ctx, "find", "ok", [f"r_{i:026d}"]))
        assert worker.flush(10)
    finally:
        worker.journal.close()
    assert _seqs(anchor)[-1] >= 20
    assert verify(db, verifier, keyring=keyring, anchor=anchor).ok
    _put_back(db, snapshot)
    r = verify(db, verifier, anchor=anchor)
    assert (r.ok, r.problem) == (False, "tail.rolled_back"), r
    assert r.first_bad == 15
