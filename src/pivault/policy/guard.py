"""The policy as the Vault's guard: authorise and mask by role, purpose and reveal.

The Vault asks its guard at fixed points (authorise → budget → audit →
decrypt → mask). :class:`PolicyGuard` answers ``authorise`` and ``mask``
from the current :class:`~pivault.policy.Policy`, and hands ``budget`` and
``audit`` to a delegate guard (the budget engine and the audit chain), so
each concern stays in its own component and the Vault does not change.

The policy is read through a zero-argument callable on every call, so a
reloaded policy applies from the next request on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from pivault.errors import PivaultError
from pivault.policy.context import AccessContext
from pivault.policy.policy import AccessDenied, Policy, apply_mask

__all__ = ["VAULT_OPERATIONS", "VAULT_OPERATIONS_ALL", "PolicyGuard"]

#: the Vault's operation names -> the policy's operations that permit them
VAULT_OPERATIONS: dict[str, tuple[str, ...]] = {
    "put": ("create",),
    "get": ("read",),
    "find": ("lookup",),
    "update": ("update",),
    "erase": ("erase",),
    "import": ("create",),
    "export": ("export",),
    "rejects.show": ("audit",),
    "stats": ("audit", "admin"),
}

#: Vault operations that need every one of several policy operations
VAULT_OPERATIONS_ALL: dict[str, tuple[str, ...]] = {
    # a data subject's copy reads the record and hands it out of the vault
    "rights.copy": ("read", "export"),
}


class _Delegate(Protocol):
    def budget(self, ctx: AccessContext, operation: str, n: int) -> None: ...

    def audit(self, ctx: AccessContext, operation: str, record_ids: Sequence[str], outcome: str) -> None: ...


class PolicyGuard:
    """Authorise by policy; mask by the role's field masks; delegate budget and audit.

    A field the role does not see is masked to ``None`` (so the Vault never
    returns it, even to a caller that forgets to filter); ``reveal`` shows
    the full value only of fields the role may reveal for the stated purpose.
    """

    def __init__(self, policy: Policy | Callable[[], Policy], *, delegate: _Delegate | None = None,
                 denied: type[PivaultError] = AccessDenied) -> None:
        self._policy: Callable[[], Policy] = policy if callable(policy) else (lambda: policy)
        self.delegate = delegate
        #: the exception to raise on refusal: the Vault audits a refusal when it
        #: recognises the exception, so the layer that builds the Vault passes its class
        self.denied = denied

    @property
    def policy(self) -> Policy:
        return self._policy()

    def authorise(self, ctx: AccessContext, operation: str, fields: Sequence[str]) -> None:
        every = VAULT_OPERATIONS_ALL.get(operation)
        if every is not None:
            policy = self._policy()
            for op in every:
                decision = policy.authorise(ctx, op, None)
                if not decision.allowed:
                    raise self.denied(decision.reason, code=decision.code)
            return
        ops = VAULT_OPERATIONS.get(operation)
        if ops is None:
            raise self.denied(f"operation {operation!r} is not governed by the policy",
                              code="policy.operation")
        policy = self._policy()
        last = None
        for op in ops:
            write = op in ("create", "update")
            decision = policy.authorise(ctx, op, list(fields) if write else None)
            if decision.allowed:
                return
            last = decision
        assert last is not None
        raise self.denied(last.reason, code=last.code)

    def close(self) -> None:
        """Close the delegate (its detector and audit journal) with the vault."""
        getattr(self.delegate, "close", lambda: None)()

    def changed(self, ctx: AccessContext,
                changes: Sequence[tuple[str, frozenset[str], frozenset[str]]]) -> None:
        """Hand records changed in place to the delegate (it keeps the canaries' counts right)."""
        hook = getattr(self.delegate, "changed", None)
        if hook is not None:
            hook(ctx, changes)

    def budget(self, ctx: AccessContext, operation: str, n: int) -> None:
        if self.delegate is not None:
            self.delegate.budget(ctx, operation, n)

    def audit(self, ctx: AccessContext, operation: str, record_ids: Sequence[str], outcome: str) -> None:
        if self.delegate is not None:
            self.delegate.audit(ctx, operation, record_ids, outcome)

    def audit_batches(self, ctx: AccessContext, operation: str,
                      batches: Callable[[], Iterable[Sequence[str]]], count: int, outcome: str, *,
                      charged: bool = False) -> None:
        """One access audited in several entries (an export of millions of records): handed to the
        delegate whole where it takes it so (the detect guard charges it once, unless ``charged``
        by :meth:`charge_batches` already), else a batch at a time."""
        if self.delegate is None:
            return
        many = getattr(self.delegate, "audit_batches", None)
        if many is not None:
            many(ctx, operation, batches, count, outcome, charged=charged)
            return
        for batch in batches():
            self.delegate.audit(ctx, operation, batch, outcome)

    def charge_batches(self, ctx: AccessContext, operation: str,
                       batches: Callable[[], Iterable[Sequence[str]]], count: int) -> bool:
        """The delegate's ``charge_batches``: True if it charged the read (then recorded with
        ``audit_batches(..., charged=True)``), False if it charges only as it records."""
        charge = getattr(self.delegate, "charge_batches", None)
        if charge is None:
            return False
        return bool(charge(ctx, operation, batches, count))

    def mask(self, ctx: AccessContext, field: str, value: str | None) -> str | None:
        if field == "record_id":
            return value
        role = self._policy().role(ctx.role)
        if role is None:
            return None
        mask = role.fields.get(field)
        if mask is None:
            return None
        if value is None or value == "":
            return value
        if ctx.reveal and ctx.purpose in role.reveal.get(field, ()):
            return value
        return apply_mask(mask, field, value)

    def visible_fields(self, ctx: AccessContext) -> tuple[str, ...]:
        """The fields ``ctx``'s role sees, for callers that shape a response."""
        role = self._policy().role(ctx.role)
        return tuple(role.fields) if role else ()
