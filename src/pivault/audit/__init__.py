"""The audit trail: every access through the door, chained, signed and verifiable.

Writers append :class:`AuditEvent` s through :class:`AuditLog` (a
forward-secure MAC chain whose head lives in the database, so several worker
processes share one chain); :func:`verify` recomputes the chain from the
oldest retained signed :class:`Checkpoint` and names the first bad entry.
"""

from pivault.audit.anchor import Anchor
from pivault.audit.keys import (
    AuditKeyError,
    AuditKeys,
    VerifierKey,
    WriterKeys,
    create_audit_keys,
    load_public,
    load_verifier,
    load_writer,
)
from pivault.audit.log import (
    AuditEntry,
    AuditError,
    AuditEvent,
    AuditLog,
    Checkpoint,
    entries,
    latest_checkpoint,
)
from pivault.audit.retention import MIN_RETENTION_DAYS, PruneResult, RetentionPolicy, prunable, prune
from pivault.audit.verify import VerifyReport, verify

__all__ = [
    "MIN_RETENTION_DAYS",
    "Anchor",
    "AuditEntry",
    "AuditError",
    "AuditEvent",
    "AuditKeyError",
    "AuditKeys",
    "AuditLog",
    "Checkpoint",
    "PruneResult",
    "RetentionPolicy",
    "VerifierKey",
    "VerifyReport",
    "WriterKeys",
    "create_audit_keys",
    "entries",
    "latest_checkpoint",
    "load_public",
    "load_verifier",
    "load_writer",
    "prunable",
    "prune",
    "verify",
]
