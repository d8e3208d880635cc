"""An insider with write access to the database, covering their tracks past the plain tamper drills.

The attacker holds the database (not the keyring, not the signing key, not
the verifier key, not the vault home's anchor file) unless a test says
otherwise. test_audit_tamper.py edits the entries themselves; here the
insider works on what the writers and the prune read from the store and
trust: the head row's checkpoint schedule, the entries' times.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from pivault.audit import AuditError, AuditEvent, AuditLog, VerifierKey, WriterKeys, prunable, prune, verify
from pivault.crypto import Keyring
from pivault.policy.context import AccessContext
from pivault.store import Database

DAY = 86400.0


@pytest.fixture
def anchor(tmp_path: Path) -> Path:
    return tmp_path / "home" / "audit-anchor.jsonl"


def _read(log: AuditLog, ctx: AccessContext, n: int, tag: str = "r") -> None:
    for i in range(n):
        log.append(AuditEvent.of(ctx, "lookup", "ok", [f"r_{tag}_{i:04d}"]))


def _years_ago(n: int) -> int:
    return int((time.time() - n * 365 * DAY) * 1_000_000)


def _head(db: Database) -> tuple[Any, ...]:
    row = db.query_one("SELECT seq, mac, key_ct, cp_seq, cp_ts_us FROM audit_head WHERE id = 1")
    assert row is not None
    return tuple(row)


def test_checkpoints_cannot_be_switched_off_through_the_head_row(db: Database, keyring: Keyring,
                                                                 writer: WriterKeys, verifier: VerifierKey,
                                                                 ctx: AccessContext, anchor: Path) -> None:
    """The writers decide from the head row when the next checkpoint is due. Set ahead in the store,
    no checkpoint was ever made again, so the anchor outside the store got no more marks: the insider
    then read at leisure and put the head row back as it was, and verify passed with the keyring and
    the anchor."""
    log = AuditLog(db, keyring, writer, checkpoint_every=10, checkpoint_seconds=1e9, anchor=anchor)
    _read(log, ctx, 12)
    db.execute("UPDATE audit_head SET cp_seq = ?, cp_ts_us = ?", (10**12, 10**17))
    r = verify(db, verifier, keyring=keyring, anchor=anchor)
    assert (r.ok, r.problem, r.first_bad) == (False, "head.mismatch", 12), r
    assert "checkpoint schedule" in r.message
    saved = _head(db)
    _read(log, ctx, 50, "taken")  # what the insider wants gone: checkpoints at 20, 30 ... 60 all the same
    assert [s for (s,) in db.query("SELECT seq FROM audit_checkpoints ORDER BY seq")] == [0, 10, 20, 30, 40,
                                                                                         50, 60]
    db.execute("DELETE FROM audit_entries WHERE seq > ?", (saved[0],))
    db.execute("DELETE FROM audit_checkpoints WHERE seq > ?", (saved[0],))
    db.execute("UPDATE audit_head SET seq = ?, mac = ?, key_ct = ?, cp_seq = ?, cp_ts_us = ?", saved)
    for ring in (keyring, None):
        r = verify(db, verifier, keyring=ring, anchor=anchor)
        assert (r.ok, r.problem, r.first_bad) == (False, "tail.rolled_back", 13), r


def test_a_head_written_before_the_schedule_was_sealed_still_opens(db: Database, keyring: Keyring,
                                                                   writer: WriterKeys, verifier: VerifierKey,
                                                                   ctx: AccessContext) -> None:
    """A vault upgraded in place: its head's key holds the chain key alone, and the next append goes on
    from it (on the checkpoint schedule of the columns, this once) and seals the schedule."""
    from pivault.audit.log import _head_key_id

    log = AuditLog(db, keyring, writer, checkpoint_every=10, checkpoint_seconds=1e9)
    _read(log, ctx, 5)
    chain_id, seq, key_ct = db.query_one("SELECT chain_id, seq, key_ct FROM audit_head") or ()
    plain = keyring.decrypt(_head_key_id(chain_id, seq), "ratchet", bytes(key_ct))
    assert len(plain) == 48
    db.execute("UPDATE audit_head SET key_ct = ?",
               (keyring.encrypt(_head_key_id(chain_id, seq), "ratchet", plain[:32]),))
    assert verify(db, verifier, keyring=keyring).ok
    _read(AuditLog(db, keyring, writer, checkpoint_every=10, checkpoint_seconds=1e9), ctx, 7, "after")
    assert verify(db, verifier, keyring=keyring).ok
    assert [s for (s,) in db.query("SELECT seq FROM audit_checkpoints ORDER BY seq")] == [0, 10]


def test_an_entry_set_back_in_time_does_not_make_the_prune_delete_recent_entries(
        db: Database, keyring: Keyring, writer: WriterKeys, verifier: VerifierKey,
        ctx: AccessContext) -> None:
    """The prune took a checkpoint's age from its entry's stored time. The insider set entry 30 back
    five years (its MAC breaks) and waited for the operator's prune: it deleted entries 1..30 of
    today, the altered one among them, logged itself, and verify passed."""
    log = AuditLog(db, keyring, writer, checkpoint_every=10, checkpoint_seconds=1e9)
    _read(log, ctx, 35)
    db.execute("UPDATE audit_entries SET ts_us = ? WHERE seq = 30", (_years_ago(5),))
    assert prunable(db).through_seq == 0  # the dry run (`audit prune` without --yes) is not deceived either
    assert prune(log, ctx).through_seq == 0
    assert db.query_one("SELECT COUNT(*) FROM audit_entries WHERE seq <= 30") == (30,)
    r = verify(db, verifier, keyring=keyring)
    assert (r.ok, r.problem, r.first_bad) == (False, "entry.mac", 30), r


def test_a_checkpoint_set_back_in_time_stops_the_prune(db: Database, keyring: Keyring, writer: WriterKeys,
                                                       ctx: AccessContext) -> None:
    log = AuditLog(db, keyring, writer, checkpoint_every=10, checkpoint_seconds=1e9)
    _read(log, ctx, 35)
    db.execute("UPDATE audit_checkpoints SET ts_us = ? WHERE seq = 30", (_years_ago(5),))
    with pytest.raises(AuditError) as info:
        prune(log, ctx)
    assert info.value.code == "audit.prune" and "entry 30" in info.value.message
    assert db.query_one("SELECT COUNT(*) FROM audit_entries") == (35,)


def test_a_prune_that_was_deceived_is_found_without_the_anchor(db: Database, keyring: Keyring,
                                                               writer: WriterKeys, verifier: VerifierKey,
                                                               ctx: AccessContext) -> None:
    """What the deceived prune left (entries up to a recent checkpoint gone, a genuine logged prune):
    the checkpoint the chain now starts at was signed less than the retention floor ago."""
    log = AuditLog(db, keyring, writer, checkpoint_every=10, checkpoint_seconds=1e9)
    _read(log, ctx, 35)
    with db.transaction():
        log.append(AuditEvent.of(ctx, "audit.prune", "ok", count=30,
                                 detail={"through": 30, "keep_days": 1096}))
        db.execute("DELETE FROM audit_entries WHERE seq <= 30")
        db.execute("DELETE FROM audit_checkpoints WHERE seq < 30")
    r = verify(db, verifier, keyring=keyring)
    assert (r.ok, r.problem, r.first_bad) == (False, "prune.early", 30), r
    assert "entries up to 30 were pruned, but the checkpoint there was made " in r.message
