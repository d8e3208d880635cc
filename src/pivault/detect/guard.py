"""The door's watchman: audit trail, read budgets, canaries and the global detector.

:class:`DetectGuard` is a Vault guard (``authorise``, ``budget``, ``audit``,
``mask``). Under the HTTP API it is the delegate of the
:class:`~pivault.policy.guard.PolicyGuard`, which decides and masks; from the
command line it wraps the local guard. Its ``audit`` hook runs where the
Vault knows which records are about to leave and before any of them is
decrypted for the caller, and does, in order:

1. for reads (``get``, ``find``, ``export``): charge the read budgets with
   the records found (and one miss for a lookup that found nothing); a create
   or a correction refused as a duplicate is charged as a read of the record
   holding the number, since the refusal tells the caller it exists. If a
   budget is spent: write an audit entry with outcome ``refused``, raise an
   alert, count a breach (and suspend the token after ``suspend_after``),
   and raise :class:`~pivault.detect.budgets.BudgetExceeded` (HTTP 429 with
   ``Retry-After``). If the shared counters are down: audit ``error`` and
   raise ``DetectUnavailable`` — fail closed;
2. append the audit entry — if it cannot be written, the exception stops the
   request (fail closed);
3. if any record is a canary (read, or holding the ID number of a refused
   duplicate): critical alert, token suspended at once (the read itself is
   answered, so the caller cannot tell). A read refused by a budget is
   checked too: asking for a canary is the sign, not being answered;
4. feed the global detector.

A read too large for one entry (an export's fetch) comes through
``audit_batches``: charged once, whole, then an entry per batch of its
record ids, so that neither this guard nor the trail holds them all. A caller
that records such a read inside a transaction of its own charges it first with
``charge_batches``, outside that transaction, so that a refusal's entries,
alert and suspension are kept rather than rolled back with it.

Budgets are charged here rather than in ``budget`` because only here does
the Vault pass the record ids (needed for distinct-record budgets and
canaries); the position in the request is the same: after the lookup, before
audit and decryption.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, overload

from pivault.audit.log import AuditEvent, AuditLog
from pivault.detect.alerts import Alert, AlertDispatcher
from pivault.detect.budgets import BudgetExceeded, Budgets, Charge
from pivault.detect.canary import CanaryRegistry
from pivault.detect.counters import DetectUnavailable
from pivault.detect.detector import GlobalDetector
from pivault.policy.context import AccessContext

__all__ = ["READ_OPERATIONS", "DetectGuard"]

log = logging.getLogger("pivault.detect")

#: Vault operations that hand records to the caller, and so spend budget
READ_OPERATIONS = frozenset({"get", "find", "export", "read", "lookup", "rights.copy"})

#: reads by a search: how many records they found is itself something the caller asked
LOOKUP_OPERATIONS = frozenset({"find", "lookup"})

#: writes whose refusal as a duplicate answers "is this ID number in the vault?", and so are
#: charged to the read budgets as a lookup that found one record would be
WRITE_PROBES = frozenset({"put", "update", "create"})

#: operations that write, change or remove records, charged to the ``changes_per_day`` budgets: a
#: create is a change too, and each one refused or not answers "is this ID number held?"
CHANGE_OPERATIONS = frozenset({"put", "update", "erase"})

#: operations about tokens and the policy rather than records
SUBJECT_PREFIXES = ("token.", "policy.")

SuspendFn = Callable[[str, str], object]


class _Streamed(Sequence[str]):
    """The record ids of a read given in batches, as one sequence read afresh from ``batches`` each
    time it is iterated (never held whole here)."""

    def __init__(self, batches: Callable[[], Iterable[Sequence[str]]], count: int) -> None:
        self._batches, self._count = batches, count

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        for batch in self._batches():
            yield from batch

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...

    def __getitem__(self, i: int | slice) -> str | Sequence[str]:
        if isinstance(i, slice):
            return list(itertools.islice(self, *i.indices(self._count)))
        at = i + self._count if i < 0 else i
        if not 0 <= at < self._count:
            raise IndexError(i)
        return next(itertools.islice(self, at, None))


class DetectGuard:
    """Audit, budgets, canaries and detection at the Vault's fixed points.

    ``inner`` answers ``authorise`` and ``mask`` when this guard is the
    Vault's only guard (the CLI); under the API the PolicyGuard answers them
    and calls this guard only for ``budget`` and ``audit``. ``suspend`` is
    the token store's ``suspend(token_id, reason)``.
    """

    def __init__(self, audit_log: AuditLog, *, budgets: Budgets | None = None,
                 alerts: AlertDispatcher | None = None, canaries: CanaryRegistry | None = None,
                 detector: GlobalDetector | None = None, suspend: SuspendFn | None = None,
                 inner: Any = None) -> None:
        self.audit_log = audit_log
        self.budgets = budgets
        self.alerts = alerts or AlertDispatcher()
        self.canaries = canaries
        self.detector = detector
        self.suspend = suspend
        #: set once the Vault reports reads to :meth:`observe_records` (then the detector
        #: counts records there, with their cells, and not in :meth:`audit`)
        self._cells_wired = False
        if inner is None:
            from pivault.vault.guard import LocalGuard

            inner = LocalGuard()
        self.inner = inner
        # the Vault calls mask once per field of every record: hand it the inner guard's own method
        self.mask = inner.mask  # type: ignore[method-assign]

    # -- the Guard protocol ---------------------------------------------------------
    def authorise(self, ctx: AccessContext, operation: str, fields: Sequence[str]) -> None:
        self.inner.authorise(ctx, operation, fields)

    def budget(self, ctx: AccessContext, operation: str, n: int) -> None:
        """Changes (creates, corrections, erasures) are charged here, before their transaction, so that a
        refusal's entry and alert are not undone with it; reads are charged in :meth:`audit`,
        where the record ids are known. A create or a correction also needs room for one record
        in the vault-wide record windows (a probe, as for a miss)."""
        if operation not in CHANGE_OPERATIONS or n <= 0 or self.budgets is None:
            return
        try:
            # a create or a correction that goes through tells that its ID number is not held, as a
            # lookup that finds nothing does: it too needs room for a record in the vault-wide
            # windows, or while they are spent a duplicate would be refused and a new number taken
            charge = self.budgets.charge(ctx, changes=n, probe=operation in WRITE_PROBES)
        except DetectUnavailable as exc:
            self.audit_log.record(AuditEvent.of(ctx, operation, "error", count=0, detail={"code": exc.code}))
            raise
        if not charge.allowed:
            self._refuse(ctx, operation, [], 0, 0, charge, changes=n)

    def mask(self, ctx: AccessContext, field: str, value: str | None) -> str | None:
        result: str | None = self.inner.mask(ctx, field, value)
        return result

    def audit(self, ctx: AccessContext, operation: str, record_ids: Sequence[str], outcome: str) -> None:
        ids = list(record_ids)
        probe = outcome == "duplicate" and operation in WRITE_PROBES
        if self.budgets is not None and (
                probe or (operation in READ_OPERATIONS and outcome in ("ok", "not_found"))):
            found = outcome != "not_found"
            # a duplicate refusal tells that its ID number is held: one record found, the last id
            charged = ids[-1:] if probe else ids
            records = len(charged) if found else 0
            misses = 0 if found else 1
            try:
                charge = self.budgets.charge(ctx, records=records, misses=misses,
                                             record_ids=charged if found else ())
            except DetectUnavailable as exc:
                self.audit_log.record(AuditEvent.of(ctx, operation, "error", ids, count=0,
                                                    detail={"code": exc.code}))
                raise
            if not charge.allowed:
                try:
                    self._refuse(ctx, operation, ids, records, misses, charge)
                finally:
                    # a refused read still asked for what it found: a canary among it was asked for
                    # by someone holding its ID number, mobile or name and birth date (from a copy of
                    # the vault), whether or not a budget had room to answer
                    if found:
                        self._trip(ctx, operation, charged)
        if operation.startswith(SUBJECT_PREFIXES):
            # token and policy changes: their subjects are token ids or file names, not records
            self.audit_log.record(AuditEvent.of(ctx, operation, outcome, count=len(ids),
                                                detail={"subjects": ids}))
            return
        self.audit_log.record_access(ctx, operation, outcome, ids, len(ids) if outcome == "ok" else 0)
        if operation == "erase" and outcome == "ok" and self.canaries is not None:
            gone = self.canaries.which(ids)
            if gone:
                self.canaries.remove(gone)
        if probe:
            # only someone holding a canary's ID number (from a copy of the vault) can try to
            # register it again
            self._trip(ctx, operation, ids[-1:])
        if operation in READ_OPERATIONS and outcome == "ok" and ids:
            self._trip(ctx, operation, ids)
            if self.detector is not None and not self._cells_wired:
                try:
                    self.detector.observe(ctx, len(ids))
                except DetectUnavailable:
                    log.warning("global detector could not count a read: counters unavailable")

    def audit_batches(self, ctx: AccessContext, operation: str,
                      batches: Callable[[], Iterable[Sequence[str]]], count: int, outcome: str, *,
                      charged: bool = False) -> None:
        """:meth:`audit` for one read too large for one entry: an export of millions of records.

        ``batches`` gives the read's record ids a batch at a time, afresh at each call, and
        ``count`` says how many there are. The read is charged once, whole, as :meth:`audit`
        charges a read of ``count`` records: a budget refuses all of it or lets all of it
        through, never the first batches and not the rest. Then one entry per batch, the
        canary check over every batch (one alert, naming every canary read), the detector
        fed once. Nothing here holds every id at once, but a budget of distinct records,
        which counts the ids themselves (a read larger than that budget is refused by it).
        Any other operation or outcome is audited a batch at a time, as :meth:`audit` does.

        ``charged``: the caller charged the read with :meth:`charge_batches` already, before the
        transaction this runs in, and it was allowed; it is not charged again.
        """
        reads = operation in READ_OPERATIONS and outcome == "ok"
        if not reads:
            for batch in batches():
                self.audit(ctx, operation, batch, outcome)
            return
        if not charged:
            self.charge_batches(ctx, operation, batches, count)
        self._trip_batches(ctx, operation, batches, record=True)
        # counted here whether or not the vault reports its reads: a read this large (an export)
        # is made by its own path, which does not pass the vault's read observers
        if count and self.detector is not None:
            try:
                self.detector.observe(ctx, count)
            except DetectUnavailable:
                log.warning("global detector could not count a read: counters unavailable")

    def charge_batches(self, ctx: AccessContext, operation: str,
                       batches: Callable[[], Iterable[Sequence[str]]], count: int) -> bool:
        """Charge a read given in batches, whole, as :meth:`audit_batches` does, but on its own.

        For a caller that records the read in a transaction of its own (an export's fetch): called
        before that transaction opens, so that a refusal's consequences (the ``refused`` entries,
        the alert, a suspension after ``suspend_after`` breaches, the canary alarm) are written
        and kept, not undone with the transaction the refusal stops. Raises
        :class:`BudgetExceeded` when a budget refuses; if it returns, the read fits, and the caller
        records it with ``audit_batches(..., charged=True)`` (True: there was a charge to make).
        """
        if self.budgets is None or operation not in READ_OPERATIONS:
            return True
        try:
            charge = self.budgets.charge(ctx, records=count, record_ids=_Streamed(batches, count))
        except DetectUnavailable as exc:
            for batch in batches():
                self.audit_log.record(AuditEvent.of(ctx, operation, "error", batch, count=0,
                                                    detail={"code": exc.code}))
            raise
        if not charge.allowed:
            try:
                self._refuse(ctx, operation, [], count, 0, charge, batches=batches)
            finally:
                self._trip_batches(ctx, operation, batches, record=False)
        return True

    def _trip_batches(self, ctx: AccessContext, operation: str,
                      batches: Callable[[], Iterable[Sequence[str]]], *, record: bool) -> None:
        """Each batch's entry (``record``), and one canary alarm for every canary among them."""
        hit: list[str] = []
        for batch in batches():
            ids = list(batch)
            if record:
                self.audit_log.record_access(ctx, operation, "ok", ids, len(ids))
            if self.canaries is not None:
                hit += self.canaries.which(ids)
        if hit:
            self._canary(ctx, operation, hit)

    def changed(self, ctx: AccessContext,
                changes: Sequence[tuple[str, frozenset[str], frozenset[str]]]) -> None:
        """Records changed in place: a canary that gained or lost its mobile moves the count
        ``stats`` subtracts, in the write's transaction (an erasure does so in :meth:`audit`)."""
        if self.canaries is None:
            return
        moved = {rid: ("mobile" in after) - ("mobile" in before) for rid, before, after in changes}
        moved = {rid: d for rid, d in moved.items() if d}
        if moved:
            delta = sum(moved[rid] for rid in self.canaries.which(list(moved)))
            if delta:
                self.canaries.mobiles_changed(delta)

    def held_numbers(self, ctx: AccessContext, operation: str, record_ids: Sequence[str]) -> None:
        """Records whose ID number a bulk write named (an import's rows that were already held).

        A canary's ID number exists nowhere but in the vault: a file that holds one was made
        from a copy of the vault, whoever brings it in. So a canary among them raises the same
        critical alert (and suspension, for a token) as a canary read.
        """
        if record_ids:
            self._trip(ctx, operation, list(record_ids))

    # -- reads seen by the Vault after decryption (coarse cells only) ------------------
    def close(self) -> None:
        """The vault is closing: the detector counts what it holds and stops, before the store goes.

        Left running, its thread would evaluate against a closed store: an alert it raised then
        would miss the alerts table.
        """
        if self.detector is not None:
            self.detector.stop()
        self.audit_log.flush(10)
        self.audit_log.close()

    def attach(self, vault: Any) -> None:
        """Have ``vault`` report every read's coarse cells here (the detector then counts reads there)."""
        vault.read_observers.append(self.observe_records)
        self._cells_wired = True

    def observe_records(self, ctx: AccessContext, cells: Sequence[tuple[str | None, int | None]]) -> None:
        """Coarse facts of records read: (region code, birth year) → the detector's cells."""
        if self.detector is not None and cells:
            try:
                self.detector.observe_facts(ctx, cells)
            except DetectUnavailable:
                log.warning("global detector could not count a read: counters unavailable")

    # -- reactions ------------------------------------------------------------------------
    def _system_ctx(self, ctx: AccessContext) -> AccessContext:
        return AccessContext(principal="system:detect", role="system", purpose="protection",
                             request_id=ctx.request_id, token_id=ctx.token_id, source="system")

    def _refuse(self, ctx: AccessContext, operation: str, ids: list[str], records: int, misses: int,
                charge: Charge, *, changes: int = 0,
                batches: Callable[[], Iterable[Sequence[str]]] | None = None) -> None:
        """Refuse a charge: the entry (one per batch of a read given in ``batches``), the alert,
        a suspension after too many breaches, and :class:`BudgetExceeded` raised."""
        refusal = charge.refusal
        assert refusal is not None
        # a lookup refused for its size is not told how many residents it found
        err = BudgetExceeded(refusal, show_amount=operation not in LOOKUP_OPERATIONS)
        asked = {"requested_records": records, "requested_misses": misses,
                 **({"requested_changes": changes} if changes else {})}
        detail = {"rule": refusal.rule, "limit": refusal.limit, "used": refusal.used, **asked,
                  "retry_after": err.retry_after}
        for batch in ([ids] if batches is None else batches()):
            if batches is not None and len(ids) < 50:
                ids = ids + list(batch)[:50 - len(ids)]
            self.audit_log.record(AuditEvent.of(ctx, operation, "refused", batch, count=0, detail=detail))
        evidence: dict[str, Any] = {
            "budget_rule": refusal.rule, "limit": refusal.limit, "used": refusal.used, **asked,
            "retry_after_seconds": err.retry_after, "breaches_today": charge.breaches,
            "record_ids": ids[:50]}
        if charge.scope == "vault":
            self.alerts.raise_alert(Alert("budget.vault", "critical", None, None, evidence))
            raise err
        self.alerts.raise_alert(Alert("budget.exceeded", "warning", ctx.principal, ctx.token_id, evidence))
        assert self.budgets is not None
        limit = self.budgets.policy.suspend_after
        if ctx.token_id and limit > 0 and charge.breaches >= limit:
            self._suspend(ctx, f"read budget exceeded {charge.breaches} times today ({refusal.rule})",
                          "budget.breaches", {"breaches_today": charge.breaches, "budget_rule": refusal.rule,
                                              "suspend_after": limit})
        raise err

    def _trip(self, ctx: AccessContext, operation: str, ids: list[str]) -> None:
        """The canary alarm, if any of ``ids`` is a canary (asked for, read, or named by a write)."""
        if self.canaries is not None:
            hit = self.canaries.which(ids)
            if hit:
                self._canary(ctx, operation, hit)

    def _canary(self, ctx: AccessContext, operation: str, hit: list[str]) -> None:
        self.alerts.raise_alert(Alert("canary.read", "critical", ctx.principal, ctx.token_id, {
            "operation": operation, "record_ids": hit, "request_id": ctx.request_id}))
        if ctx.token_id:
            self._suspend(ctx, "read a canary record", "canary.read", {"records": len(hit)})

    def _suspend(self, ctx: AccessContext, reason: str, rule: str, evidence: dict[str, Any]) -> None:
        if self.suspend is None or not ctx.token_id:
            return
        try:
            changed = self.suspend(ctx.token_id, reason)
        except Exception as exc:  # the alert still goes out; the operator must act by hand
            log.error("could not suspend token %s: %s", ctx.token_id, type(exc).__name__)
            changed = False
        if changed is False:
            return
        self.audit_log.record(AuditEvent.of(self._system_ctx(ctx), "token.suspend", "ok", count=0,
                                            detail={"token": ctx.token_id, "rule": rule,
                                                    "principal": ctx.principal}))
        self.alerts.raise_alert(Alert("token.suspended", "critical", ctx.principal, ctx.token_id,
                                      {"cause": rule, **evidence}))
