"""Tamper drill: each change made directly to the stored entries is found and named.

The attacker here holds the database (not the keyring, not the verifier
key), as after a stolen dump or a rogue database administrator.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pivault.audit import AuditEvent, AuditLog, Checkpoint, VerifierKey, WriterKeys, verify
from pivault.audit.log import ENTRY_COLUMNS, entry_mac, open_head
from pivault.crypto import Keyring
from pivault.policy.context import AccessContext
from pivault.store import Database

N = 30


@pytest.fixture
def filled(log: AuditLog, ctx: AccessContext) -> AuditLog:
    for i in range(N):
        log.append(AuditEvent.of(ctx, "lookup", "ok", [f"r_{i:04d}"]))
    return log


def _row(db: Database, seq: int) -> tuple[Any, ...]:
    row = db.query_one("SELECT " + ", ".join((*ENTRY_COLUMNS, "mac")) + " FROM audit_entries WHERE seq = ?",
                       (seq,))
    assert row is not None
    return row


def _insert(db: Database, row: tuple[Any, ...]) -> None:
    db.execute("INSERT INTO audit_entries (" + ", ".join((*ENTRY_COLUMNS, "mac")) + ") VALUES ("
               + ", ".join("?" * (len(ENTRY_COLUMNS) + 1)) + ")", row)


def _shift_up(db: Database, from_seq: int) -> None:
    """Renumber entries >= from_seq by +1, highest first (keeps the primary key unique)."""
    for (seq,) in db.query("SELECT seq FROM audit_entries WHERE seq >= ? ORDER BY seq DESC", (from_seq,)):
        db.execute("UPDATE audit_entries SET seq = ? WHERE seq = ?", (seq + 1, seq))


def test_modify(filled: AuditLog, verifier: VerifierKey) -> None:
    filled.db.execute("UPDATE audit_entries SET principal = ? WHERE seq = 12", ("officer-00",))
    r = verify(filled.db, verifier)
    assert (r.ok, r.problem, r.first_bad) == (False, "entry.mac", 12)


def test_modify_record_ids_to_hide_a_read(filled: AuditLog, verifier: VerifierKey) -> None:
    filled.db.execute("UPDATE audit_entries SET record_ids = '[]', count = 0 WHERE seq = 7")
    r = verify(filled.db, verifier)
    assert (r.problem, r.first_bad) == ("entry.mac", 7)


def test_delete(filled: AuditLog, verifier: VerifierKey) -> None:
    filled.db.execute("DELETE FROM audit_entries WHERE seq = 17")
    r = verify(filled.db, verifier)
    assert (r.ok, r.problem, r.first_bad) == (False, "entry.missing", 17)


def test_delete_and_renumber(filled: AuditLog, verifier: VerifierKey) -> None:
    db = filled.db
    db.execute("DELETE FROM audit_entries WHERE seq = 17")
    for seq in range(18, N + 1):
        db.execute("UPDATE audit_entries SET seq = ? WHERE seq = ?", (seq - 1, seq))
    r = verify(db, verifier)
    assert (r.ok, r.problem, r.first_bad) == (False, "entry.mac", 17)


def test_delete_first(filled: AuditLog, verifier: VerifierKey) -> None:
    filled.db.execute("DELETE FROM audit_entries WHERE seq = 1")
    r = verify(filled.db, verifier)
    assert (r.ok, r.problem, r.first_bad) == (False, "entry.missing", 1)


def test_insert(filled: AuditLog, verifier: VerifierKey) -> None:
    db = filled.db
    forged = list(_row(db, 9))
    forged[2] = "officer-00"
    _shift_up(db, 9)
    _insert(db, tuple(forged))
    r = verify(db, verifier)
    assert (r.ok, r.problem, r.first_bad) == (False, "entry.mac", 9)


def test_insert_at_tail(filled: AuditLog, verifier: VerifierKey) -> None:
    db = filled.db
    forged = list(_row(db, N))
    forged[0] = N + 1
    forged[-1] = os.urandom(32)
    _insert(db, tuple(forged))
    r = verify(db, verifier)
    assert (r.ok, r.problem, r.first_bad) == (False, "entry.mac", N + 1)


def test_reorder(filled: AuditLog, verifier: VerifierKey) -> None:
    db = filled.db
    db.execute("UPDATE audit_entries SET seq = -1 WHERE seq = 21")
    db.execute("UPDATE audit_entries SET seq = 21 WHERE seq = 22")
    db.execute("UPDATE audit_entries SET seq = 22 WHERE seq = -1")
    r = verify(db, verifier)
    assert (r.ok, r.problem, r.first_bad) == (False, "entry.mac", 21)


def test_truncate(filled: AuditLog, verifier: VerifierKey) -> None:
    filled.db.execute("DELETE FROM audit_entries WHERE seq > 25")
    r = verify(filled.db, verifier)
    assert (r.ok, r.problem, r.first_bad) == (False, "tail.truncated", 26)


def test_truncate_and_rewrite_head(filled: AuditLog, verifier: VerifierKey, keyring: Keyring) -> None:
    """Head row moved back to the new last entry: the head's sealed key betrays it."""
    db = filled.db
    row = _row(db, 25)
    db.execute("DELETE FROM audit_entries WHERE seq > 25")
    db.execute("DELETE FROM audit_checkpoints WHERE seq > 25")
    db.execute("UPDATE audit_head SET seq = 25, mac = ?, cp_seq = 20", (row[-1],))
    assert verify(db, verifier).ok  # without the keyring nothing in the store disagrees ...
    r = verify(db, verifier, keyring=keyring)  # ... the head's encrypted chain key does
    assert (r.ok, r.problem, r.first_bad) == (False, "tail.truncated", 26)


def test_truncate_caught_by_exported_checkpoint(filled: AuditLog, verifier: VerifierKey,
                                                tmp_path: Path) -> None:
    db = filled.db
    exported = tmp_path / "checkpoint.json"
    exported.write_text(filled.checkpoint().to_json())
    row = _row(db, 22)
    db.execute("DELETE FROM audit_entries WHERE seq > 22")
    db.execute("DELETE FROM audit_checkpoints WHERE seq > 22")
    db.execute("UPDATE audit_head SET seq = 22, mac = ?, cp_seq = 20", (row[-1],))
    r = verify(db, verifier, checkpoint=Checkpoint.from_json(exported.read_text()))
    assert (r.ok, r.problem, r.first_bad) == (False, "tail.truncated", 23)


def test_forged_checkpoint(filled: AuditLog, verifier: VerifierKey) -> None:
    filled.db.execute("UPDATE audit_checkpoints SET mac = ? WHERE seq = 20", (bytes(32),))
    r = verify(filled.db, verifier)
    assert (r.ok, r.problem, r.first_bad) == (False, "checkpoint.signature", 20)


def test_deleting_a_prefix_without_a_logged_prune(filled: AuditLog, verifier: VerifierKey) -> None:
    db = filled.db
    db.execute("DELETE FROM audit_entries WHERE seq <= 10")
    db.execute("DELETE FROM audit_checkpoints WHERE seq < 10")
    r = verify(db, verifier)
    assert (r.ok, r.problem, r.first_bad) == (False, "prune.unlogged", 1)


def test_rewrite_with_the_stolen_writer_state_fails(filled: AuditLog, verifier: VerifierKey,
                                                    keyring: Keyring) -> None:
    """Forward security: the head key (all a writer holds) cannot re-MAC an old entry."""
    db = filled.db
    head = db.query_one("SELECT chain_id, seq, key_ct FROM audit_head")
    assert head is not None
    stolen, _, _ = open_head(keyring.decrypt(f"audit.{head[0]}.{head[1]}", "ratchet", bytes(head[2])))
    row = list(_row(db, 5))
    row[6] = json.dumps([])
    prev = _row(db, 4)[-1]
    row[-1] = entry_mac(stolen, tuple(row[:-1]), bytes(prev))
    db.execute("UPDATE audit_entries SET record_ids = ?, mac = ? WHERE seq = 5", (row[6], row[-1]))
    r = verify(db, verifier, keyring=keyring)
    assert (r.ok, r.problem, r.first_bad) == (False, "entry.mac", 5)


def test_tail_rolled_back_to_an_earlier_copy_of_itself(db: Database, keyring: Keyring, writer: WriterKeys,
                                                       ctx: AccessContext, verifier: VerifierKey,
                                                       tmp_path: Path) -> None:
    """The head row copied at entry 20 (a backup, a snapshot) and put back after 30, with the entries
    and checkpoints after 20 deleted, is a consistent earlier chain: its encrypted head key is the
    one for entry 20. The store alone cannot show it; the anchor the writers keep outside it does."""
    anchor = tmp_path / "home" / "audit-anchor.jsonl"
    log = AuditLog(db, keyring, writer, checkpoint_every=10, anchor=anchor)
    for i in range(20):
        log.append(AuditEvent.of(ctx, "lookup", "ok", [f"r_{i:04d}"]))
    copy = db.query_one("SELECT seq, mac, key_ct, cp_seq, cp_ts_us FROM audit_head")
    assert copy is not None
    for i in range(10):  # what an insider read afterwards
        log.append(AuditEvent.of(ctx, "lookup", "ok", [f"r_taken_{i:04d}"]))
    db.execute("DELETE FROM audit_entries WHERE seq > 20")
    db.execute("DELETE FROM audit_checkpoints WHERE seq > 20")
    db.execute("UPDATE audit_head SET seq = ?, mac = ?, key_ct = ?, cp_seq = ?, cp_ts_us = ?", copy)
    assert verify(db, verifier, keyring=keyring).ok  # the store alone: a consistent, shorter chain
    for ring in (keyring, None):  # the anchor needs no keyring: the database alone cannot fool it
        r = verify(db, verifier, keyring=ring, anchor=anchor)
        assert (r.ok, r.problem, r.first_bad) == (False, "tail.rolled_back", 21), r
        assert "marked entry 30" in r.message


def test_the_whole_trail_deleted_from_a_store_that_holds_records(log: AuditLog, keyring: Keyring,
                                                                 verifier: VerifierKey) -> None:
    """Every record is written with its audit entry in one transaction: a store with records and no
    trail at all lost it. verify said 'audit chain intact: 0 entries'."""
    from collections.abc import Sequence

    from pivault.synth import generate
    from pivault.vault import Vault
    from pivault.vault.guard import LocalGuard

    class Audited(LocalGuard):
        def audit(self, ctx: AccessContext, operation: str, record_ids: Sequence[str],
                  outcome: str) -> None:
            log.append(AuditEvent.of(ctx, operation, outcome, record_ids))

    db = log.db
    vault = Vault.initialise(db, keyring)
    vault = Vault(db, keyring, guard=Audited())
    person = next(r for r in generate(5, 87) if r["mobile"])
    operator = AccessContext(principal="local:synthetic", role="operator", purpose="registration")
    vault.put({k: str(v) for k, v in person.items()}, ctx=operator)
    assert verify(db, verifier, keyring=keyring).ok
    for table in ("audit_entries", "audit_checkpoints", "audit_head", "audit_journals"):
        db.execute(f"DELETE FROM {table}")
    r = verify(db, verifier, keyring=keyring)
    assert (r.ok, r.problem) == (False, "head.missing"), r
