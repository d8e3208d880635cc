"""Appending, checkpoints, queries and the fail-closed rule, on both backends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pivault.audit import (
    AuditError,
    AuditEvent,
    AuditLog,
    Checkpoint,
    VerifierKey,
    entries,
    latest_checkpoint,
    verify,
)
from pivault.audit.keys import WriterKeys
from pivault.audit.log import entry_mac, ratchet
from pivault.crypto import Argon2Params, Keyring, PassphraseProvider
from pivault.policy.context import AccessContext
from pivault.store import Database

CHEAP = Argon2Params(time_cost=1, memory_cost=8, parallelism=1)


def _fill(log: AuditLog, ctx: AccessContext, n: int) -> None:
    for i in range(n):
        log.append(AuditEvent.of(ctx, "lookup", "ok" if i % 3 else "miss",
                                 [f"r_{i:06d}"] if i % 3 else [], detail={"index": "id_number"}))


def test_append_then_verify(log: AuditLog, ctx: AccessContext, verifier: VerifierKey,
                            keyring: Keyring) -> None:
    _fill(log, ctx, 25)
    report = verify(log.db, verifier, keyring=keyring)
    assert report.ok, report
    assert (report.first_seq, report.last_seq, report.checked) == (1, 25, 25)
    # checkpoint 0 (genesis) plus one every 10 entries
    assert report.checkpoints == 3


def test_entries_record_who_what_and_outcome(log: AuditLog, ctx: AccessContext) -> None:
    seq = log.append(AuditEvent.of(ctx, "read", "ok", ["r_a", "r_b"]))
    log.append(AuditEvent.of(ctx, "lookup", "miss"))
    other = AccessContext(principal="officer-99", role="auditor", purpose="review")
    log.append(AuditEvent.of(other, "export", "denied", detail={"code": "policy.denied"}))
    got = list(entries(log.db, principal="officer-17"))
    assert [e.seq for e in got] == [seq, seq + 1]
    first = got[0]
    assert (first.operation, first.outcome, first.record_ids, first.count) == ("read", "ok",
                                                                               ("r_a", "r_b"), 2)
    assert (first.role, first.purpose, first.request_id, first.token_id) == (
        "clerk", "case-work", ctx.request_id, "t_0001")
    assert [e.operation for e in entries(log.db, outcome="denied")] == ["export"]
    assert next(iter(entries(log.db, operation="lookup"))).count == 0
    d = got[0].to_dict()
    assert json.loads(json.dumps(d))["record_ids"] == ["r_a", "r_b"]


def test_batch_append_is_one_chain(log: AuditLog, ctx: AccessContext, verifier: VerifierKey) -> None:
    seqs = log.append_many([AuditEvent.of(ctx, "read", "ok", [f"r_{i}"]) for i in range(15)])
    assert seqs == list(range(1, 16))
    assert verify(log.db, verifier).ok


def test_checkpoints_are_signed_and_exportable(log: AuditLog, ctx: AccessContext,
                                               verifier: VerifierKey) -> None:
    _fill(log, ctx, 12)
    cp = log.checkpoint()
    assert cp.seq == 12 and cp.signature_ok(verifier.public)
    again = Checkpoint.from_json(cp.to_json())
    assert again == cp
    assert latest_checkpoint(log.db) == cp
    assert log.checkpoint() == cp  # nothing new: the same checkpoint
    forged = Checkpoint(cp.chain_id, cp.seq, cp.ts_us, bytes(32), cp.sealed_key, cp.signature)
    assert not forged.signature_ok(verifier.public)


def test_external_checkpoint_agrees(log: AuditLog, ctx: AccessContext, verifier: VerifierKey) -> None:
    _fill(log, ctx, 5)
    cp = log.checkpoint()
    _fill(log, ctx, 5)
    assert verify(log.db, verifier, checkpoint=cp).ok


def test_several_logs_on_one_database_share_the_chain(db: Database, keyring: Keyring, writer: WriterKeys,
                                                     ctx: AccessContext, verifier: VerifierKey) -> None:
    a = AuditLog(db, keyring, writer)
    b = AuditLog(db, keyring, writer)
    for i in range(10):
        (a if i % 2 else b).append(AuditEvent.of(ctx, "read", "ok", [f"r_{i}"]))
    assert verify(db, verifier).ok
    assert a.head_seq() == 10


def test_invalid_events_are_refused(log: AuditLog, ctx: AccessContext) -> None:
    with pytest.raises(AuditError):
        log.append(AuditEvent.of(ctx, "Bad Op!", "ok"))
    with pytest.raises(AuditError):
        log.append(AuditEvent.of(ctx, "read", "maybe"))
    with pytest.raises(AuditError):
        log.append(AuditEvent.of(ctx, "read", "ok", detail={"Value": 1}))


def test_unwritable_trail_fails_closed(log: AuditLog, ctx: AccessContext) -> None:
    log.append(AuditEvent.of(ctx, "read", "ok", ["r_1"]))
    log.db.execute("DROP TABLE audit_entries")
    with pytest.raises(AuditError) as info:
        log.append(AuditEvent.of(ctx, "read", "ok", ["r_2"]))
    assert info.value.code == "audit.unavailable"


def test_head_from_another_keyring_is_refused(log: AuditLog, ctx: AccessContext, tmp_path: Path,
                                             writer: WriterKeys) -> None:
    log.append(AuditEvent.of(ctx, "read", "ok", ["r_1"]))
    other = Keyring.create(tmp_path / "other" / "keyring.json",
                           PassphraseProvider("another-synthetic-passphrase", CHEAP),
                           expected_population=10**6)
    with pytest.raises(AuditError) as info:
        AuditLog(log.db, other, writer).append(AuditEvent.of(ctx, "read", "ok", ["r_2"]))
    assert info.value.code == "audit.head"


def test_mac_and_ratchet_are_what_the_docs_say() -> None:
    k1 = bytes(range(32))
    row = (1, 2, "p", "r", "u", "read", "[]", 0, "ok", "q", None, "api", "{}")
    import hashlib
    import hmac

    body = json.dumps(list(row), separators=(",", ":")).encode()
    assert entry_mac(k1, row, bytes(32)) == hmac.new(
        k1, b"pivault.audit.v1\x00" + body + bytes(32), hashlib.sha256).digest()
    assert ratchet(k1) == hmac.new(k1, b"pivault.audit.ratchet", hashlib.sha256).digest()
