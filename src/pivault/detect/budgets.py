"""Read budgets: how many records a principal, a role and the whole vault may read.

Budgets come from the policy (``[roles.R.budgets]``: per principal of role
R), optionally overridden per principal, plus optional totals per role (all
its principals together) and for the whole vault. Each budget may set::

    records_per_minute, records_per_hour, records_per_day   records returned
    misses_per_hour                                          lookups that found nothing
    distinct_per_day                                         distinct record ids (UTC day)
    changes_per_day                                          records created, corrected or erased

Changes are budgeted because one token able to erase or rewrite records
without limit could destroy the register as surely as a dump exposes it, and
creates with them because each create, refused as a duplicate or not, tells
whether an ID number is held.

A charge is all-or-nothing across every applicable rule (one Lua script on
Redis): a request that would exceed any budget is refused whole, and the
refusal says which rule and when to retry. Refusals of a principal's own
budgets count as breaches of its token; the vault-wide limit protects the
vault and is not held against any one caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from pivault.detect.counters import DAY, Counters, DistinctRule, Refusal, WindowRule
from pivault.errors import PivaultError
from pivault.policy.context import AccessContext

__all__ = ["BUDGET_KEYS", "Budget", "BudgetExceeded", "BudgetPolicy", "Budgets", "Charge"]

BUDGET_KEYS = ("records_per_minute", "records_per_hour", "records_per_day", "misses_per_hour",
               "distinct_per_day", "changes_per_day")
#: window rules: seconds, and what they count (0 records returned, 1 misses, 2 records changed)
_WINDOWS = {"records_per_minute": (60.0, 0), "records_per_hour": (3600.0, 0), "records_per_day": (DAY, 0),
            "misses_per_hour": (3600.0, 1), "changes_per_day": (DAY, 2)}


class BudgetExceeded(PivaultError, PermissionError):
    """A read (or change) budget is spent (HTTP 429 with ``Retry-After``). Names the rule, never the data."""

    code = "budget.exceeded"

    def __init__(self, refusal: Refusal, *, show_amount: bool = True) -> None:
        """``show_amount``: the message may say how many records the request needs. Not for a
        lookup: how many residents share a mobile, or a name and a birth date, is itself an answer
        the budget refused (the audit entry and the alert keep the number)."""
        self.rule = refusal.rule
        self.limit = refusal.limit
        #: whole seconds to wait (the HTTP ``Retry-After`` value)
        self.retry_after = max(1, math.ceil(refusal.retry_after))
        self.amount = refusal.amount
        what = "change budget" if refusal.rule.endswith("changes_per_day") else "read budget"
        together = refusal.rule.startswith("vault.")
        where = ("the limit on all principals together ([detect.vault] in the vault's pivault.toml), "
                 "which the vault's operator sets" if together else "a larger budget in the policy")
        if refusal.amount > refusal.limit:
            # waiting never helps: the request alone is more than the window holds
            needs = f"the request needs {refusal.amount}" if show_amount else "the request needs more"
            super().__init__(f"{what} too small for this request: {refusal.rule} allows {refusal.limit}, "
                             f"{needs}; no wait lets it through",
                             hint=f"ask for it in smaller parts, or for {where}")
            return
        super().__init__(f"{what} spent: {refusal.rule} (limit {refusal.limit}); "
                         f"retry after {self.retry_after} s",
                         hint=f"wait, or ask for {where}" if together
                         else "wait, or ask for a larger budget in the policy")


@dataclass(frozen=True, slots=True)
class Budget:
    """Limits for one scope; ``None`` means no limit on that measure."""

    records_per_minute: int | None = None
    records_per_hour: int | None = None
    records_per_day: int | None = None
    misses_per_hour: int | None = None
    distinct_per_day: int | None = None
    changes_per_day: int | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Budget:
        unknown = set(values) - set(BUDGET_KEYS)
        if unknown:
            raise PivaultError(f"unknown budget {sorted(unknown)[0]!r}; known: {', '.join(BUDGET_KEYS)}",
                               code="detect.config")
        out: dict[str, int] = {}
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise PivaultError(f"budget {key} must be a non-negative number", code="detect.config")
            out[key] = int(value)
        return cls(**out)

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))

    def to_dict(self) -> dict[str, int]:
        return {f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None}


@dataclass(frozen=True)
class BudgetPolicy:
    """Which budget applies to whom.

    ``roles`` apply to each principal of the role (``principals`` overrides
    one principal's); ``role_totals`` cap all principals of a role together;
    ``vault`` caps everyone together. ``suspend_after`` breaches of a
    principal's own budgets in one UTC day suspend its token.
    """

    roles: Mapping[str, Budget] = field(default_factory=dict)
    principals: Mapping[str, Budget] = field(default_factory=dict)
    role_totals: Mapping[str, Budget] = field(default_factory=dict)
    vault: Budget = field(default_factory=Budget)
    suspend_after: int = 3

    @classmethod
    def from_policy(cls, policy: Any, *, principals: Mapping[str, Mapping[str, Any]] | None = None,
                    role_totals: Mapping[str, Mapping[str, Any]] | None = None,
                    vault: Mapping[str, Any] | None = None, suspend_after: int = 3) -> BudgetPolicy:
        """From a :class:`pivault.policy.Policy` (its ``roles`` and ``budgets_for``)."""
        roles = {name: Budget.from_mapping(policy.budgets_for(name)) for name in policy.roles}
        return cls(
            roles={k: v for k, v in roles.items() if not v.is_empty()},
            principals={k: Budget.from_mapping(v) for k, v in (principals or {}).items()},
            role_totals={k: Budget.from_mapping(v) for k, v in (role_totals or {}).items()},
            vault=Budget.from_mapping(vault or {}), suspend_after=suspend_after)

    def for_principal(self, principal: str, role: str) -> Budget:
        return self.principals.get(principal) or self.roles.get(role) or Budget()


@dataclass(frozen=True, slots=True)
class Charge:
    """The result of :meth:`Budgets.charge`: allowed, or refused with the rule and the breach count."""

    refusal: Refusal | None = None
    #: scope of the refused rule: "principal", "role" or "vault"
    scope: str | None = None
    #: breaches by this principal today (with any of its tokens), counting this one; 0 for
    #: vault-wide refusals
    breaches: int = 0

    @property
    def allowed(self) -> bool:
        return self.refusal is None


class _Plan:
    """One caller's rules, resolved from the policy once: what each read is charged against."""

    __slots__ = ("_by_amount", "distinct", "windows")

    def __init__(self, windows: list[tuple[str, str, int, float, int]],
                 distinct: list[tuple[str, str, int]]) -> None:
        #: (name, key, limit, window seconds, what it counts: 0 records, 1 misses, 2 changes)
        self.windows = windows
        #: (name, key, limit)
        self.distinct = distinct
        #: the window rules of a charge, per amounts (and probe): a lookup charges the same each time
        self._by_amount: dict[tuple[int, int, int, bool], tuple[WindowRule, ...]] = {}

    def window_rules(self, records: int, misses: int, changes: int = 0, *,
                     probe: bool = False) -> tuple[WindowRule, ...]:
        probe = records == 0 and (probe or misses > 0)
        amounts = (records, misses, changes)
        rules = self._by_amount.get((*amounts, probe))
        if rules is None:
            rules = tuple(WindowRule(name, key, limit, seconds, amounts[kind])
                          for name, key, limit, seconds, kind in self.windows if amounts[kind] > 0)
            if probe:
                # a lookup that found nothing, or a create or correction whose success tells that
                # its ID number is not held, must have room for one record in the vault-wide
                # windows (a probe: nothing charged). Else, while the vault's budget is spent, a
                # hit (or a duplicate refusal) would be refused and a miss (or the write)
                # answered, and the answer would tell which numbers the vault holds; a caller's
                # own budgets count breaches for that
                rules += tuple(WindowRule(name, key, limit, seconds, -1)
                               for name, key, limit, seconds, kind in self.windows
                               if kind == 0 and name.startswith("vault."))
            if len(self._by_amount) < 256:
                self._by_amount[(*amounts, probe)] = rules
        return rules


class Budgets:
    """Charges reads to every budget that applies to the caller."""

    def __init__(self, policy: BudgetPolicy | Callable[[], BudgetPolicy], counters: Counters) -> None:
        self._policy: Callable[[], BudgetPolicy] = policy if callable(policy) else (lambda: policy)
        self.counters = counters
        self._plans: dict[tuple[str, str], _Plan] = {}
        self._plans_for: BudgetPolicy | None = None

    @property
    def policy(self) -> BudgetPolicy:
        return self._policy()

    def _plan(self, principal: str, role: str) -> _Plan:
        """The caller's rules (name, key, limit, window, counts misses), cached per policy."""
        policy = self._policy()
        if policy is not self._plans_for:
            self._plans = {}
            self._plans_for = policy
        plan = self._plans.get((principal, role))
        if plan is None:
            scopes = (("principal", f"p:{principal}", policy.for_principal(principal, role)),
                      ("role", f"r:{role}", policy.role_totals.get(role, Budget())),
                      ("vault", "v", policy.vault))
            windows: list[tuple[str, str, int, float, int]] = []
            distinct: list[tuple[str, str, int]] = []
            for scope, key, budget in scopes:
                for name, (seconds, kind) in _WINDOWS.items():
                    limit = getattr(budget, name)
                    if limit is not None:
                        # "w:", not the "b:" of the windows of W/60-second buckets before: a
                        # window's bucket numbers depend on their length, and the old ones'
                        # would never leave a window counted in the new
                        windows.append((f"{scope}.{name}", f"w:{key}:{name}", limit, seconds, kind))
                if budget.distinct_per_day is not None:
                    distinct.append((f"{scope}.distinct_per_day", f"b:{key}:distinct",
                                     budget.distinct_per_day))
            plan = _Plan(windows, distinct)
            if len(self._plans) > 100_000:
                self._plans.clear()
            self._plans[(principal, role)] = plan
        return plan

    def rules(self, ctx: AccessContext, *, records: int, misses: int,
              record_ids: Sequence[str]) -> tuple[list[WindowRule], list[DistinctRule]]:
        plan = self._plan(ctx.principal, ctx.role)
        return list(plan.window_rules(records, misses)), _distinct(plan, record_ids)

    def charge(self, ctx: AccessContext, *, records: int = 0, misses: int = 0, changes: int = 0,
               record_ids: Sequence[str] = (), probe: bool = False) -> Charge:
        """Charge ``records`` returned, ``misses`` and records ``changes``d; raises ``DetectUnavailable``
        if counters are down.

        ``probe``: the request's answer tells whether the vault holds something (a create or a
        correction of an ID number: it succeeds only if the number is not held). Like a miss, it
        must then find room for one record in the vault-wide record windows, without being
        charged to them.
        """
        plan = self._plan(ctx.principal, ctx.role)
        windows = plan.window_rules(records, misses, changes, probe=probe)
        distinct = _distinct(plan, record_ids)
        if not windows and not distinct:
            return _ALLOWED
        refusal = self.counters.charge(windows, distinct)
        if refusal is None:
            return _ALLOWED
        scope = refusal.rule.split(".", 1)[0]
        breaches = 0
        if scope != "vault":
            # per principal, not per token: budgets are the principal's, and a principal given
            # several tokens would otherwise breach them suspend_after times with each
            day = math.floor(self.counters.now() / DAY)
            breaches = self.counters.incr(f"breach:principal:{ctx.principal}:{day}", DAY + 3600)
        return Charge(refusal, scope, breaches)


def _distinct(plan: _Plan, record_ids: Sequence[str]) -> list[DistinctRule]:
    """The distinct-records rules of a read of ``record_ids`` (none for a read of none)."""
    if not record_ids or not plan.distinct:
        return []
    ids = tuple(record_ids)
    return [DistinctRule(name, key, limit, ids) for name, key, limit in plan.distinct]


#: the answer to every allowed charge (frozen: one object serves them all)
_ALLOWED = Charge()
