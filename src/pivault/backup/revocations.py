"""Revocations and suspensions made after a backup survive its restore.

A restore rolls the store back to the backup's moment, and the ``tokens``
table with it. A token revoked after the backup was taken (the stolen
credential the intruder used) or suspended by the detector would be active
again the moment the vault is restored: the usual ransom story (a credential
stolen, found and revoked, then the wipe) would end with the thief's token
working again. Revocation only moves forward, so a restore that sets a
damaged store aside (``quarantine``) carries over what that store knows:

* a token revoked there, or named by a ``token.revoke`` entry of its trail
  past the backup's chain head, is revoked in the restored store;
* a token suspended there, or whose last ``token.suspend`` / ``token.resume``
  entry past the head is a suspension, is suspended (an operator resumes it
  after looking, as for any suspension).

Both sources are read, since the intruder may have changed either: a token
is kept from use if either says so (so an entry planted there can only
revoke or suspend more: new tokens are then issued). Nothing is made less
restrictive: a resumption after the backup does not lift a suspension the
backup holds, and a token created after the backup is not in the restored
store at all.
Without a damaged store (the store was empty) nothing after the backup is
known; :func:`active_tokens` counts what the operator must then review.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from pivault.backup.backup import ident
from pivault.store.db import Database

__all__ = ["Carried", "active_tokens", "carry_over"]

#: the reason shown for a suspension a restore kept (no text is taken from the damaged store)
SUSPENDED_REASON = "suspended after the backup was taken; kept by the restore (see the audit trail)"
_TOKEN_COLUMNS = {"token_id", "revoked_at", "suspended_at"}


@dataclass
class Carried:
    """Tokens whose revocation or suspension after the backup the restore kept."""

    revoked: list[str] = field(default_factory=list)
    suspended: list[str] = field(default_factory=list)


def _when(value: Any) -> float | None:
    """A stored time, or None if it is none (the damaged store's values are not trusted)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        t = float(value)
    except (TypeError, ValueError):
        return None
    return t if math.isfinite(t) else None


def _columns(db: Database, table: str, schema: str | None) -> set[str]:
    if db.dialect == "sqlite":
        return {str(r[1]) for r in db.query(f'PRAGMA table_info("{table}")')}
    return {str(r[0]) for r in db.query(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ?"
        " AND table_schema = COALESCE(?, current_schema())", (table, schema))}


def _from_table(damaged: Database, q: str, schema: str | None) -> tuple[dict[str, float], dict[str, float]]:
    """(revoked, suspended) token id -> when, as the damaged store's tokens table has them."""
    revoked: dict[str, float] = {}
    suspended: dict[str, float] = {}
    if not _columns(damaged, "tokens", schema).issuperset(_TOKEN_COLUMNS):
        return revoked, suspended
    for tid, rev, sus in damaged.query(f"SELECT token_id, revoked_at, suspended_at FROM {q}tokens"
                                       " WHERE revoked_at IS NOT NULL OR suspended_at IS NOT NULL"):
        if not isinstance(tid, str):
            continue
        if (t := _when(rev)) is not None:
            revoked[tid] = t
        elif (t := _when(sus)) is not None:
            suspended[tid] = t
    return revoked, suspended


def _named(record_ids: Any, detail: Any) -> list[str]:
    """The token ids an entry names: its record ids (the API), ``subjects`` (the command line), ``token``."""
    out: list[str] = []
    for text in (record_ids, detail):
        try:
            value = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            continue
        if isinstance(value, list):
            out.extend(v for v in value if isinstance(v, str))
        elif isinstance(value, dict):
            subjects = value.get("subjects")
            if isinstance(subjects, list):
                out.extend(v for v in subjects if isinstance(v, str))
            if isinstance(value.get("token"), str):
                out.append(value["token"])
    return out


def _from_trail(damaged: Database, q: str, schema: str | None,
                after_seq: int) -> tuple[dict[str, float], dict[str, float]]:
    """(revoked, suspended) token id -> when, from the damaged store's entries past ``after_seq``."""
    revoked: dict[str, float] = {}
    last: dict[str, tuple[str, float]] = {}
    if not _columns(damaged, "audit_entries", schema).issuperset(
            {"seq", "ts_us", "operation", "outcome", "record_ids", "detail"}):
        return revoked, {}
    for _seq, ts_us, op, ids, detail in damaged.query(
            f"SELECT seq, ts_us, operation, record_ids, detail FROM {q}audit_entries WHERE seq > ?"
            " AND outcome = 'ok' AND operation IN ('token.revoke', 'token.suspend', 'token.resume')"
            " ORDER BY seq", (after_seq,)):
        stamp = _when(ts_us)
        when = stamp / 1e6 if stamp else time.time()
        for tid in _named(ids, detail):
            if op == "token.revoke":
                revoked.setdefault(tid, when)
            else:
                last[tid] = (str(op), when)
    return revoked, {tid: when for tid, (op, when) in last.items() if op == "token.suspend"}


def carry_over(store: Database, damaged: Database, *, damaged_schema: str | None = None,
               after_seq: int = 0) -> Carried:
    """Keep revoked and suspended in ``store`` (just restored) what ``damaged`` shows so after the backup.

    ``damaged`` is the store the restore set aside (for PostgreSQL the same
    database with ``damaged_schema``); ``after_seq`` the backup's audit chain
    head. Returns the token ids changed; call it inside the restore, before
    the restored rows take effect.
    """
    carried = Carried()
    if not store.table_exists("tokens"):
        return carried
    q = f"{ident(damaged_schema)}." if damaged_schema else ""
    table_revoked, table_suspended = _from_table(damaged, q, damaged_schema)
    trail_revoked, trail_suspended = _from_trail(damaged, q, damaged_schema, after_seq)
    revoked = {**trail_revoked, **table_revoked}
    suspended = {tid: t for tid, t in {**trail_suspended, **table_suspended}.items() if tid not in revoked}
    with store.transaction():
        for tid, when in sorted(revoked.items()):
            if store.execute("UPDATE tokens SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL",
                             (when, tid)).rowcount:
                carried.revoked.append(tid)
        for tid, when in sorted(suspended.items()):
            if store.execute("UPDATE tokens SET suspended_at = ?, suspended_reason = ? WHERE token_id = ?"
                             " AND suspended_at IS NULL AND revoked_at IS NULL",
                             (when, SUSPENDED_REASON, tid)).rowcount:
                carried.suspended.append(tid)
    return carried


def active_tokens(store: Database, *, now: float | None = None) -> int:
    """Tokens active in ``store`` (revoked, suspended and expired ones not counted)."""
    if not store.table_exists("tokens"):
        return 0
    row = store.query_one("SELECT COUNT(*) FROM tokens WHERE revoked_at IS NULL AND suspended_at IS NULL"
                          " AND expires_at > ?", (time.time() if now is None else now,))
    return int(row[0]) if row else 0
