"""A prune that could not have been made by the retention rule, against an exported checkpoint.

The attacker here holds the whole writer: the database and the keyring (so
the head key and the signing key), not the verifier key, and not the
checkpoint the auditor exported and keeps elsewhere. With that, deleting
recent entries up to a checkpoint and logging an ``audit.prune`` for them
is a call to :func:`prune` with a clock set years ahead (or a host whose
clock is wrong). docs/audit.md: a rewrite cannot reach back past the last
exported checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import replace

from pivault.audit import AuditEvent, AuditLog, Checkpoint, VerifierKey, WriterKeys, prune, verify
from pivault.crypto import Keyring
from pivault.policy.context import AccessContext
from pivault.store import Database

DAY = 86400.0


def _backdate(db: Database, writer: WriterKeys, seq: int, by: float) -> None:
    """What the whole writer can do with the signing key: sign a checkpoint again, dated earlier."""
    row = db.query_one("SELECT seq, chain_id, ts_us, mac, sealed_key, signature FROM audit_checkpoints"
                       " WHERE seq = ?", (seq,))
    assert row is not None
    stored = Checkpoint.from_row(row)
    cp = replace(stored, ts_us=stored.ts_us - int(by * 1_000_000))
    db.execute("UPDATE audit_checkpoints SET ts_us = ?, signature = ? WHERE seq = ?",
               (cp.ts_us, writer.sign(cp.message()), seq))


def _read(log: AuditLog, ctx: AccessContext, n: int, tag: str) -> None:
    for i in range(n):
        log.append(AuditEvent.of(ctx, "read", "ok", [f"r_{tag}_{i}"]))


def test_a_prune_past_a_recent_exported_checkpoint_is_found(db: Database, keyring: Keyring,
                                                            writer: WriterKeys, verifier: VerifierKey,
                                                            ctx: AccessContext) -> None:
    log = AuditLog(db, keyring, writer, checkpoint_every=10, checkpoint_seconds=1e9)
    _read(log, ctx, 25, "before")
    exported = log.checkpoint()  # entry 25: the auditor keeps it on another host
    _read(log, ctx, 15, "insider")  # what the insider wants gone; a checkpoint at entry 35
    result = prune(log, ctx, now=time.time() + 4 * 365 * DAY)
    assert result.through_seq == 35
    r = verify(db, verifier, keyring=keyring)  # the checkpoint the chain starts at is too young ...
    assert (r.ok, r.problem, r.first_bad) == (False, "prune.early", 35), r
    _backdate(db, writer, 35, 4 * 365 * DAY)  # ... until the writer signs it again, dated years back
    assert verify(db, verifier, keyring=keyring).ok  # the store alone cannot tell (docs/audit.md)
    r = verify(db, verifier, checkpoint=exported, keyring=keyring)
    assert (r.ok, r.problem, r.first_bad) == (False, "prune.early", 25), r


def test_a_due_prune_past_an_old_exported_checkpoint_verifies(db: Database, keyring: Keyring,
                                                              writer: WriterKeys, verifier: VerifierKey,
                                                              ctx: AccessContext) -> None:
    clock = [time.time() - 5 * 365 * DAY]
    log = AuditLog(db, keyring, writer, checkpoint_every=10, checkpoint_seconds=1e9,
                   clock=lambda: clock[0])
    _read(log, ctx, 25, "old")
    exported = log.checkpoint()  # five years ago
    _read(log, ctx, 15, "old2")
    clock[0] = time.time()
    _read(log, ctx, 5, "new")
    assert prune(log, ctx).through_seq == 35
    r = verify(db, verifier, checkpoint=exported, keyring=keyring)
    assert r.ok, r
