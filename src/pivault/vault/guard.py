"""The checks every call through the door passes, in a fixed order.

The :class:`~pivault.vault.Vault` calls one :class:`Guard` at fixed points:
``authorise`` → ``budget`` → ``audit`` (before any data leaves, and inside the
write transaction for changes) → decrypt → ``mask`` → return. Policy, read
budgets, the audit chain and canaries plug in by providing another guard;
the Vault and its callers do not change.

A guard may also have ``changed(ctx, changes)``: the Vault calls it inside
the write transaction after records were changed in place (a correction, an
import's update), with a :data:`Change` per record. Counts kept beside the
records (how many canaries hold a mobile) move there, in the same
transaction as the change. And ``held_numbers(ctx, operation, record_ids)``:
an import calls it, after each chunk commits, with the records whose ID
numbers the chunk's rows named (a canary among them means the file came
from a copy of the vault). And ``audit_batches(ctx, operation, batches,
count, outcome)``: one access too large for one entry (an export's
fetch, of millions of records), its record ids given by ``batches()`` a
batch at a time; such a guard charges it once, whole, and writes an entry
per batch. An export asks a guard without it for one ``audit`` per batch.
And ``charge_batches(ctx, operation, batches, count)`` (True if it charged): such a read charged
on its own, before the transaction that records it, so that a refusal's
entries, alert and suspension are not rolled back with that transaction; an
export's fetch then records it with ``audit_batches(..., charged=True)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from pivault.errors import PivaultError
from pivault.model import masks as _masks
from pivault.policy.context import AccessContext

__all__ = [
    "OPERATIONS",
    "AccessDenied",
    "Change",
    "Guard",
    "LocalGuard",
    "Outcome",
]

#: operations the Vault reports to its guard
OPERATIONS: tuple[str, ...] = (
    "put", "get", "find", "update", "erase", "import", "rejects.show", "stats", "rights.copy",
)

Outcome = str  # "ok", "denied", "not_found", "invalid", "duplicate", "error"

#: a record changed in place: (record id, names of the index entries it had, names it has now).
#: Names only (``mobile``, ``id_number``, ``name_birth``), never a value
Change = tuple[str, frozenset[str], frozenset[str]]


class AccessDenied(PivaultError, PermissionError):
    """The caller may not perform this operation (role, purpose or budget)."""

    code = "policy.denied"


@runtime_checkable
class Guard(Protocol):
    """What the Vault asks before, while and after it touches PI."""

    def authorise(self, ctx: AccessContext, operation: str, fields: Sequence[str]) -> None:
        """Raise :class:`AccessDenied` unless ``ctx`` may do ``operation`` on ``fields``."""
        ...

    def budget(self, ctx: AccessContext, operation: str, n: int) -> None:
        """Charge ``n`` records to the caller's budget; raise :class:`AccessDenied` if spent."""
        ...

    def audit(self, ctx: AccessContext, operation: str, record_ids: Sequence[str],
              outcome: Outcome) -> None:
        """Record the access durably; raising stops the operation before data leaves."""
        ...

    def mask(self, ctx: AccessContext, field: str, value: str | None) -> str | None:
        """The form of ``value`` that ``ctx`` may see."""
        ...


class LocalGuard:
    """The guard of a vault used from its own command line.

    Allows the local operator (role ``operator``) and the system itself;
    refuses every other role, since no policy is loaded to say what they
    may do. Records nothing (the audit log plugs in here). Masks with the
    default masks unless the context asks to reveal.
    """

    allowed_roles: frozenset[str] = frozenset({"operator", "system"})

    def authorise(self, ctx: AccessContext, operation: str, fields: Sequence[str]) -> None:
        if ctx.role not in self.allowed_roles:
            raise AccessDenied(
                f"role {ctx.role!r} may not {operation}: no policy grants it",
                hint="load a policy that defines the role, or use the local operator")

    def budget(self, ctx: AccessContext, operation: str, n: int) -> None:
        return None

    def audit(self, ctx: AccessContext, operation: str, record_ids: Sequence[str],
              outcome: Outcome) -> None:
        return None

    def mask(self, ctx: AccessContext, field: str, value: str | None) -> str | None:
        if ctx.reveal or value is None:
            return value
        if field == "gender":
            return value
        if field == "region_code":
            # no more than the masked ID number shows: with the full county
            # code, the birth year and the last four, only the day is unknown
            return value[:3] + "*" * (len(value) - 3)
        return _masks.mask_field(field, value)
