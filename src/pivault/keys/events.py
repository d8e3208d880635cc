"""Key events go to the audit trail: who rotated, split, recovered, backed up, restored.

Lifecycle functions take an optional :class:`KeyEvents` callable; the CLI
passes one that appends to the vault's audit chain when its audit keys are
set up (beside the keyring). Details are key ids, counts and file names,
never a key or a share.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from pivault.crypto import Keyring
from pivault.policy.context import AccessContext
from pivault.store.db import Database

__all__ = ["KeyEvents", "audit_events", "noop"]


class KeyEvents(Protocol):
    def __call__(self, operation: str, outcome: str, detail: Mapping[str, Any]) -> None: ...


def noop(operation: str, outcome: str, detail: Mapping[str, Any]) -> None:
    return None


def _detail(detail: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in detail.items():
        out[k] = v if isinstance(v, str | int | bool | type(None) | list | tuple) else str(v)
    return out


def audit_events(db: Database, keyring: Keyring, ctx: AccessContext,
                 audit_dir: Path | None = None, *, anchor: str | Path | None = None) -> KeyEvents | None:
    """Events appended to the vault's audit chain, or None when it has no audit keys.

    ``anchor``: the vault home's audit anchor, to which a checkpoint one of
    these appends makes is added, as the writers' are.
    """
    from pivault.audit import AuditEvent, AuditKeyError, AuditLog, load_writer
    from pivault.keys.sites import default_audit_dir

    directory = audit_dir if audit_dir is not None else default_audit_dir(keyring.path, keyring.vault_id)
    if not (directory / "audit-signing.key").exists() or not db.table_exists("audit_entries"):
        return None
    try:
        writer = load_writer(directory, keyring)
    except AuditKeyError as exc:
        if exc.code == "audit.keys.keyring":
            return None  # the audit keys there belong to another vault
        raise
    log = AuditLog(db, keyring, writer, anchor=anchor)

    def emit(operation: str, outcome: str, detail: Mapping[str, Any]) -> None:
        log.append(AuditEvent.of(ctx, operation, outcome, detail=_detail(detail)))

    return emit
