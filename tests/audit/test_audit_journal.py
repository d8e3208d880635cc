"""The write-ahead journal: entries chained in batches, fail closed, recovered after a crash."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pivault.audit import AuditError, AuditEvent, AuditLog, VerifierKey, WriterKeys, entries, verify
from pivault.crypto import Keyring
from pivault.policy.context import AccessContext
from pivault.store import Database


def _ev(ctx: AccessContext, i: int) -> AuditEvent:
    return AuditEvent.of(ctx, "find", "ok", [f"r_{i:026d}"])


def test_recorded_entries_are_chained(db: Database, keyring: Keyring, writer: WriterKeys,
                                      verifier: VerifierKey, ctx: AccessContext, tmp_path: Path) -> None:
    log = AuditLog(db, keyring, writer, journal_dir=tmp_path / "journal")
    for i in range(300):
        log.record(_ev(ctx, i))
    assert log.flush(10)
    got = list(entries(db))
    assert [e.record_ids[0] for e in got] == [f"r_{i:026d}" for i in range(300)]
    assert verify(db, verifier, keyring=keyring).ok
    # everything chained: the journal file is empty again
    files = list((tmp_path / "journal").glob("*.journal"))
    assert len(files) == 1 and files[0].stat().st_size == 0


def test_inside_a_transaction_entries_are_appended_at_once(db: Database, keyring: Keyring,
                                                          writer: WriterKeys, ctx: AccessContext,
                                                          tmp_path: Path) -> None:
    log = AuditLog(db, keyring, writer, journal_dir=tmp_path / "journal")
    with db.transaction():
        log.record(AuditEvent.of(ctx, "put", "ok", ["r_" + "a" * 26]))
        assert db.query_one("SELECT COUNT(*) FROM audit_entries") == (1,)


def test_chain_failure_refuses_further_requests(sqlite_url: str, keyring: Keyring, writer: WriterKeys,
                                                ctx: AccessContext, tmp_path: Path) -> None:
    from pivault.store import migrate

    db = Database(sqlite_url)
    migrate(db)
    log = AuditLog(db, keyring, writer, journal_dir=tmp_path / "journal")
    log.record(_ev(ctx, 0))
    assert log.flush(5)
    db.execute("ALTER TABLE audit_entries RENAME TO audit_entries_gone")
    log.record(_ev(ctx, 1))  # journaled; its chaining will fail
    assert not log.flush(0.5)
    with pytest.raises(AuditError) as info:
        log.record(_ev(ctx, 2))
    assert info.value.code == "audit.unavailable"
    db.execute("ALTER TABLE audit_entries_gone RENAME TO audit_entries")
    assert log.flush(10)  # the thread retries: the waiting entry is chained, requests pass again
    log.record(_ev(ctx, 3))
    assert log.flush(5)
    assert [e.record_ids[0][-1] for e in entries(db)] == ["0", "1", "3"]
    db.close()


def _crashing_writer(url: str, keyring: Keyring, writer: WriterKeys, journal: str, n: int) -> None:
    db = Database(url)
    log = AuditLog(db, keyring, writer, journal_dir=journal)
    assert log.journal is not None
    log.journal.max_delay = 3600.0  # nothing gets chained before the "crash"
    log.journal.max_batch = 10**6
    ctx = AccessContext(principal="worker-crash", role="officer", purpose="case_investigation")
    for i in range(n):
        log.record(_ev(ctx, i))
    os._exit(0)  # no atexit, no flush: a crash


def test_a_crashed_process_journal_is_recovered_once(store_url: str, db: Database, keyring: Keyring,
                                                     writer: WriterKeys, verifier: VerifierKey,
                                                     tmp_path: Path, ctx: AccessContext) -> None:
    journal = tmp_path / "journal"
    fork = mp.get_context("fork")
    p = fork.Process(target=_crashing_writer, args=(store_url, keyring, writer, str(journal), 40))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert db.query_one("SELECT COUNT(*) FROM audit_entries") == (0,)
    log = AuditLog(db, keyring, writer, journal_dir=journal)
    log.record(_ev(ctx, 999))  # the first write of a process recovers dead journals
    assert log.flush(10)
    got = list(entries(db, principal="worker-crash"))
    assert len(got) == 40 and [e.record_ids[0] for e in got] == [f"r_{i:026d}" for i in range(40)]
    assert verify(db, verifier, keyring=keyring).ok
    assert log.journal is not None and log.journal.recover() == 0  # nothing twice


def _recording_worker(url: str, keyring: Keyring, writer: WriterKeys, journal: str, n: int) -> None:
    db = Database(url)
    log = AuditLog(db, keyring, writer, journal_dir=journal)
    ctx = AccessContext(principal=f"worker-{os.getpid()}", role="officer", purpose="case_investigation")
    for i in range(n):
        log.record(_ev(ctx, i))
    assert log.flush(30)
    db.close()


def test_several_recording_processes_one_chain(store_url: str, db: Database, keyring: Keyring,
                                               writer: WriterKeys, verifier: VerifierKey,
                                               tmp_path: Path) -> None:
    fork = mp.get_context("fork")
    args = (store_url, keyring, writer, str(tmp_path / "j"), 150)
    procs = [fork.Process(target=_recording_worker, args=args) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    report = verify(db, verifier, keyring=keyring)
    assert report.ok and report.checked == 450
    assert not list((tmp_path / "j").glob("*.journal"))  # each removed its journal at exit


def _inherited_writer(log: AuditLog, n: int) -> None:
    ctx = AccessContext(principal=f"child-{os.getpid()}", role="officer", purpose="case_investigation")
    for i in range(n):
        log.record(_ev(ctx, 1000 + i))
    assert log.flush(30)


def test_a_forked_child_opens_its_own_journal(store_url: str, db: Database, keyring: Keyring,
                                              writer: WriterKeys, verifier: VerifierKey,
                                              ctx: AccessContext, tmp_path: Path) -> None:
    """The parent's journal object, inherited by a forked child, is not written by the child."""
    log = AuditLog(db, keyring, writer, journal_dir=tmp_path / "j")
    for i in range(20):
        log.record(_ev(ctx, i))
    parent_journal = log.journal.journal_id
    fork = mp.get_context("fork")
    p = fork.Process(target=_inherited_writer, args=(log, 30))
    p.start()
    p.join(120)
    assert p.exitcode == 0
    for i in range(20, 40):
        log.record(_ev(ctx, i))
    assert log.flush(30)
    assert log.journal.journal_id == parent_journal
    report = verify(db, verifier, keyring=keyring)
    assert report.ok and report.checked == 70
    got = [e for e in entries(db) if e.principal == ctx.principal]
    assert [e.record_ids[0] for e in got] == [f"r_{i:026d}" for i in range(40)]


def test_journal_line_and_mac_share_one_encoding(ctx: AccessContext) -> None:
    """The values encoded once for the journal line give the JSON the MAC is computed over."""
    import json

    from pivault.audit.log import encode_fields

    odd = ("officer \"x\" \\ 张三", "officer", "case_investigation", "find", '["r_a","r_b"]', 2, "ok",
           "q_\u2028\x00", None, "api", json.dumps({"k": "é"}, ensure_ascii=False))
    for seq, ts in ((1, 0), (2**40, 1_700_000_000_123_456)):
        assert b"[%d,%d," % (seq, ts) + encode_fields(odd) == json.dumps(
            [seq, ts, *odd], separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(), st.integers(min_value=-2**70, max_value=2**70), st.none(),
                          st.booleans(), st.floats(allow_nan=False)), min_size=1, max_size=12))
def test_the_fast_encoding_is_the_json_encoders_byte_for_byte(values: list[Any]) -> None:
    """Any values, odd ones included (bools and floats take the encoder's own path)."""
    import json

    from pivault.audit.log import encode_fields

    assert b"[7,9," + encode_fields(tuple(values)) == json.dumps(
        [7, 9, *values], separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def test_a_head_moved_while_the_macs_were_computed_ahead_is_chained_again(
        db: Database, keyring: Keyring, writer: WriterKeys, verifier: VerifierKey,
        ctx: AccessContext, store_url: str) -> None:
    """The chaining thread computes a batch's MACs before its transaction; another writer
    appending in between must not leave two entries with one sequence number or a broken chain."""
    other_db = Database(store_url)
    other = AuditLog(other_db, keyring, writer)
    moved = []

    class Racing(AuditLog):
        def _macs_ahead(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
            ahead = super()._macs_ahead(*args, **kwargs)  # type: ignore[arg-type]
            if not moved:  # another process's entry lands between the two
                moved.append(other.append(_ev(ctx, 999)))
            return ahead

    log = Racing(db, keyring, writer)
    log.append_many([_ev(ctx, 0)])  # a head to compute ahead from
    rows = [(1_700_000_000_000_000 + i, log._prepare(_ev(ctx, i))) for i in range(1, 11)]
    seqs = log.append_rows(rows, background=True)
    assert moved == [2] and seqs == list(range(3, 13))
    report = verify(db, verifier, keyring=keyring)
    assert report.ok and report.checked == 12, report
    # and with nobody in between, the MACs computed ahead are the ones stored
    seqs = log.append_rows(rows, background=True)
    assert seqs == list(range(13, 23))
    assert verify(db, verifier, keyring=keyring).ok
    other_db.close()


def test_an_idle_chaining_thread_sleeps_until_the_next_entry_wakes_it(
        db: Database, keyring: Keyring, writer: WriterKeys, ctx: AccessContext, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from pivault.audit import journal as journal_mod

    # an idle thread that would sleep half a minute: only the entry's own wake-up chains it soon
    monkeypatch.setattr(journal_mod, "_IDLE_WAIT", 30.0)
    log = AuditLog(db, keyring, writer, journal_dir=tmp_path / "journal")
    log.record(_ev(ctx, 0))
    assert log.flush(10)
    time.sleep(0.3)  # nothing pending: the thread is in its idle wait
    log.record(_ev(ctx, 1))
    deadline = time.monotonic() + 5
    while len(list(entries(db))) < 2:  # no flush here: that would wake it too
        assert time.monotonic() < deadline, "the entry waited for the idle timeout"
        time.sleep(0.01)
    assert [e.record_ids[0] for e in entries(db)] == [f"r_{i:026d}" for i in range(2)]


def test_a_new_journal_is_locked_before_others_can_take_it_for_dead(
        db: Database, keyring: Keyring, writer: WriterKeys, ctx: AccessContext, tmp_path: Path,
        store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process starting at the same moment looks for dead journals (a free ``flock``).

    It runs here at the worst moment: just before the new journal takes its lock. Its journal
    must not be seen then, or the other would take it for a dead one and remove it.
    """
    import fcntl

    journal_dir = tmp_path / "journal"
    other_db = Database(store_url)
    other = AuditLog(other_db, keyring, writer, journal_dir=journal_dir)
    real_flock = fcntl.flock
    interleaved: list[int] = []

    def flock(fd: int, op: int) -> None:
        if not interleaved:
            interleaved.append(fd)
            other.record(_ev(ctx, 900))  # its first write: its journal, then its recovery
        real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    log = AuditLog(db, keyring, writer, journal_dir=journal_dir)
    log.record(_ev(ctx, 0))
    monkeypatch.setattr(fcntl, "flock", real_flock)
    assert interleaved
    assert log.flush(10) and other.flush(10)
    assert log.journal is not None and other.journal is not None
    mine = journal_dir / f"{log.journal.journal_id}.journal"
    assert mine.exists(), "the other process removed a live journal"
    assert {p.name for p in journal_dir.glob("*.journal")} == {
        mine.name, f"{other.journal.journal_id}.journal"}
    other.journal.close()
    other_db.close()
