"""Retention: keep entries at least three years, prune older ones at a checkpoint.

PIPL art. 56 asks that impact-assessment and processing records be kept at
least three years; the audit trail is such a record. :func:`prune` refuses a
cut-off younger than :data:`MIN_RETENTION_DAYS`, removes whole chain
segments only up to a signed checkpoint (so verification restarts there
with the sealed chain key), and logs itself in the chain, so that a prefix
deleted without a logged prune is reported by ``audit verify``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pivault.audit.keys import AuditKeys
from pivault.audit.log import AuditError, AuditEvent, AuditLog, Checkpoint
from pivault.policy.context import AccessContext
from pivault.store.db import Database

__all__ = ["MIN_RETENTION_DAYS", "PruneResult", "RetentionPolicy", "prunable", "prune"]

#: three years and a leap day
MIN_RETENTION_DAYS = 3 * 365 + 1


@dataclass(frozen=True)
class RetentionPolicy:
    """How long entries are kept; never less than :data:`MIN_RETENTION_DAYS`."""

    keep_days: int = MIN_RETENTION_DAYS

    def __post_init__(self) -> None:
        if self.keep_days < MIN_RETENTION_DAYS:
            raise AuditError(f"audit entries must be kept at least {MIN_RETENTION_DAYS} days "
                             "(PIPL art. 56)", code="audit.retention")


@dataclass(frozen=True)
class PruneResult:
    through_seq: int
    deleted: int


def prunable(db: Database, policy: RetentionPolicy = RetentionPolicy(), *,
             now: float | None = None, keys: AuditKeys | None = None) -> PruneResult:
    """What :func:`prune` would delete now (through which entry, how many), deleting nothing.

    The age that counts is the time the checkpoint was *signed* with, never an entry's stored
    time: whoever holds the database can set a recent entry's time back years (its MAC breaks,
    but a prune would delete it, and everything before it, with a logged prune that verifies).
    With ``keys`` the checkpoint's signature is checked, and one that does not check stops the
    prune (``audit.prune``): its time may be a lie, and the trail should be verified first.
    """
    cutoff_us = int(((time.time() if now is None else now) - policy.keep_days * 86400) * 1_000_000)
    row = db.query_one(
        "SELECT c.seq, c.chain_id, c.ts_us, c.mac, c.sealed_key, c.signature FROM audit_checkpoints c"
        " JOIN audit_entries e ON e.seq = c.seq WHERE c.seq > 0 AND c.ts_us < ?"
        " ORDER BY c.seq DESC LIMIT 1", (cutoff_us,))
    if row is None:
        return PruneResult(0, 0)
    cp = Checkpoint.from_row(row)
    if keys is not None:
        head = db.query_one("SELECT chain_id FROM audit_head WHERE id = 1")
        if head is None or cp.chain_id != str(head[0]) or not cp.signature_ok(keys):
            raise AuditError(f"the checkpoint at entry {cp.seq} is not validly signed for this chain: the "
                             "trail was altered in the store; nothing was pruned", code="audit.prune",
                             hint="run `pivault audit verify`")
    through = cp.seq
    count_row = db.query_one("SELECT COUNT(*) FROM audit_entries WHERE seq <= ?", (through,))
    return PruneResult(through, int(count_row[0]) if count_row else 0)


def prune(log: AuditLog, ctx: AccessContext, policy: RetentionPolicy = RetentionPolicy(), *,
          now: float | None = None) -> PruneResult:
    """Delete entries older than ``policy.keep_days``, up to the newest checkpoint that allows it.

    The checkpoint's age is its signed time, its signature checked with the log's keys
    (:func:`prunable`).
    """
    db = log.db
    with db.transaction():
        planned = prunable(db, policy, now=now, keys=log.public_keys)
        through, deleted = planned.through_seq, planned.deleted
        if through == 0:
            return PruneResult(0, 0)
        log.append(AuditEvent.of(ctx, "audit.prune", "ok", count=deleted,
                                 detail={"through": through, "keep_days": policy.keep_days}))
        db.execute("DELETE FROM audit_entries WHERE seq <= ?", (through,))
        db.execute("DELETE FROM audit_checkpoints WHERE seq < ?", (through,))
    return PruneResult(through, deleted)
