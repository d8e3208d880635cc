"""The global detector: watches the whole vault, not one caller.

Budgets stop one principal; a careful thief spreads the work. The detector
keeps vault-wide counts in the shared counters (so every worker and node
sees the same picture) in buckets of ``bucket_seconds`` and raises:

``global.rate``
    records read in the last minute far above the learned baseline
    (an exponentially weighted average of past quiet minutes, never below
    the configured floor).
``global.distributed``
    many principals, each under its own budget, together reading a lot in
    the window: several tokens enumerating in parallel.
``global.sweep`` / ``sweep.principal``
    reads concentrated in one coarse cell (province code and birth year) —
    someone walking a region's birth-date range — vault-wide or by one
    principal.
``sweep.ordered``
    one principal's reads moving steadily forward through the cells
    (province, then birth year) across several cells: a sequential sweep.

Only coarse cells (two-digit province code, birth year) reach the detector;
they are computed inside the door and are not enough to identify anyone.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from pivault.detect.alerts import Alert, AlertDispatcher
from pivault.detect.counters import Counters
from pivault.errors import PivaultError
from pivault.policy.context import AccessContext

__all__ = ["DetectorConfig", "GlobalDetector", "cell_of"]


def cell_of(region_code: str | None, birth_year: int | None) -> str | None:
    """The coarse cell ``PP:YYYY`` of a record (province code, birth year)."""
    if not region_code or birth_year is None or len(region_code) < 2:
        return None
    return f"{region_code[:2]}:{int(birth_year):04d}"


@dataclass(frozen=True)
class DetectorConfig:
    """Thresholds of the global detector (see docs/detect.md for how to tune them)."""

    bucket_seconds: float = 10.0
    #: global.rate: alert when a minute's reads exceed factor × baseline and min_per_minute
    rate_factor: float = 5.0
    rate_min_per_minute: int = 600
    baseline_per_minute: float = 100.0
    baseline_alpha: float = 0.1
    #: global.distributed
    distributed_window: float = 300.0
    distributed_min_principals: int = 5
    distributed_min_each: int = 20
    distributed_min_total: int = 300
    #: global.sweep and sweep.principal
    sweep_window: float = 600.0
    sweep_min_reads: int = 100
    sweep_share: float = 0.5
    #: sweep.ordered
    ordered_min_run: int = 200
    ordered_min_cells: int = 3
    #: evaluate at most this often per process (seconds)
    evaluate_every: float = 0.5
    repeat_seconds: float = 300.0
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class _Run:
    last: tuple[str, str] | None = None
    length: int = 0
    cells: int = 0


class GlobalDetector:
    """Feed it every read (:meth:`observe`); it raises alerts through the dispatcher."""

    def __init__(self, counters: Counters, alerts: AlertDispatcher,
                 config: DetectorConfig | None = None) -> None:
        self.counters = counters
        self.alerts = alerts
        self.config = config or DetectorConfig()
        self._lock = threading.Lock()
        self._next_eval = 0.0
        self._runs: dict[str, _Run] = {}
        #: alerts raised by this process (rule names), for status and tests
        self.raised: list[Alert] = []

    # -- input -------------------------------------------------------------------
    def observe(self, ctx: AccessContext, records: int, cells: Sequence[str | None] = ()) -> None:
        """Count ``records`` read by ``ctx`` and their coarse cells; evaluate now and then."""
        if records <= 0 and not cells:
            return
        cfg = self.config
        now = self.counters.now()
        bucket = math.floor(now / cfg.bucket_seconds)
        fields: Counter[str] = Counter()
        fields["t"] += records
        fields["p:" + ctx.principal] += records
        for cell in cells:
            if cell:
                fields["c:" + cell] += 1
                fields["pc:" + ctx.principal + "|" + cell] += 1
        ttl = max(cfg.sweep_window, cfg.distributed_window, 120.0) + 2 * cfg.bucket_seconds
        self.counters.add_fields(f"d:{bucket}", fields, ttl)
        self._ordered(ctx, cells)
        if now >= self._next_eval:
            with self._lock:
                if now < self._next_eval:
                    return
                self._next_eval = now + cfg.evaluate_every
            try:
                self.evaluate(now)
            except PivaultError:
                raise
            except Exception:  # a detector bug must not fail reads; budgets still hold
                import logging

                logging.getLogger("pivault.detect").exception("global detector evaluation failed")

    def _ordered(self, ctx: AccessContext, cells: Sequence[str | None]) -> None:
        """Track how long this principal's reads keep moving forward through the cells.

        Kept per process: each worker sees a subsequence of a principal's
        reads, and a subsequence of an ordered sweep is still ordered.
        """
        cfg = self.config
        evidence: dict[str, object] | None = None
        with self._lock:
            run = self._runs.get(ctx.principal)
            if run is None:
                if len(self._runs) > 100_000:
                    self._runs.clear()
                run = self._runs[ctx.principal] = _Run()
            for cell in cells:
                if not cell:
                    continue
                prov, _, year = cell.partition(":")
                key = (prov, year)
                if run.last is None or key < run.last:
                    run.length, run.cells = 1, 1
                else:
                    run.length += 1
                    run.cells += key != run.last
                run.last = key
            if run.length >= cfg.ordered_min_run and run.cells >= cfg.ordered_min_cells:
                evidence = {"reads_in_order": run.length, "cells": run.cells,
                            "last_cell": ":".join(run.last) if run.last else None}
        if evidence is not None:
            self._raise("sweep.ordered", "warning", ctx.principal, ctx.token_id, evidence)

    # -- evaluation -----------------------------------------------------------------
    def baseline(self) -> float:
        state = self.counters.get_state("d:baseline")
        try:
            learned = float(state.get("ewma", "nan"))
        except ValueError:
            learned = math.nan
        return max(self.config.baseline_per_minute, learned if math.isfinite(learned) else 0.0)

    def evaluate(self, now: float | None = None) -> list[Alert]:
        """Run every vault-wide rule once; return the alerts raised."""
        cfg = self.config
        now = self.counters.now() if now is None else now
        raised: list[Alert] = []
        longest = max(cfg.sweep_window, cfg.distributed_window, 60.0)
        buckets = self._buckets(now, longest)

        def window(seconds: float) -> Counter[str]:
            n = max(1, math.ceil(seconds / cfg.bucket_seconds))
            out: Counter[str] = Counter()
            for h in buckets[-n:]:
                out.update(h)
            return out

        minute = window(60.0)
        per_minute = minute.get("t", 0)
        base = self.baseline()
        threshold = max(cfg.rate_min_per_minute, cfg.rate_factor * base)
        if per_minute > threshold:
            raised += self._raise("global.rate", "critical" if per_minute > 2 * threshold else "warning",
                                  None, None, {"records_last_minute": per_minute,
                                               "baseline_per_minute": round(base, 1),
                                               "threshold": round(threshold, 1), "window_seconds": 60})
        else:
            self._learn(now, per_minute)

        dist = window(cfg.distributed_window)
        busy = {k[2:]: v for k, v in dist.items() if k.startswith("p:") and v >= cfg.distributed_min_each}
        total = sum(busy.values())
        if len(busy) >= cfg.distributed_min_principals and total >= cfg.distributed_min_total:
            top = sorted(busy.items(), key=lambda kv: -kv[1])[:20]
            raised += self._raise("global.distributed", "critical", None, None, {
                "principals": len(busy), "records": total, "window_seconds": int(cfg.distributed_window),
                "top": [{"principal": p, "records": n} for p, n in top]})

        sweep = window(cfg.sweep_window)
        cells = {k[2:]: v for k, v in sweep.items() if k.startswith("c:")}
        cell_total = sum(cells.values())
        if cell_total >= cfg.sweep_min_reads:
            cell, n = max(cells.items(), key=lambda kv: kv[1])
            if n / cell_total >= cfg.sweep_share:
                raised += self._raise("global.sweep", "warning", None, None, {
                    "cell": cell, "reads_in_cell": n, "reads": cell_total,
                    "window_seconds": int(cfg.sweep_window)})
        by_principal: dict[str, Counter[str]] = {}
        for k, v in sweep.items():
            if k.startswith("pc:"):
                principal, cell = k[3:].rsplit("|", 1)
                by_principal.setdefault(principal, Counter())[cell] += v
        for principal, pcells in by_principal.items():
            ptotal = sum(pcells.values())
            if ptotal >= cfg.sweep_min_reads:
                cell, n = pcells.most_common(1)[0]
                if n / ptotal >= cfg.sweep_share:
                    raised += self._raise("sweep.principal", "warning", principal, None, {
                        "cell": cell, "reads_in_cell": n, "reads": ptotal,
                        "window_seconds": int(cfg.sweep_window)})
        return raised

    def _buckets(self, now: float, seconds: float) -> list[dict[str, int]]:
        cfg = self.config
        last = math.floor(now / cfg.bucket_seconds)
        n = max(1, math.ceil(seconds / cfg.bucket_seconds))
        return self.counters.read_fields([f"d:{b}" for b in range(last - n + 1, last + 1)])

    def _learn(self, now: float, per_minute: int) -> None:
        """Fold a quiet minute into the baseline, once per minute across all workers."""
        minute = math.floor(now / 60)
        if not self.counters.claim(f"d:learn:{minute}", 120):
            return
        state = self.counters.get_state("d:baseline")
        try:
            ewma = float(state["ewma"])
        except (KeyError, ValueError):
            ewma = self.config.baseline_per_minute
        a = self.config.baseline_alpha
        self.counters.set_state("d:baseline", {"ewma": repr((1 - a) * ewma + a * per_minute),
                                               "minute": str(minute)})

    def _raise(self, rule: str, severity: str, principal: str | None, token_id: str | None,
               evidence: dict[str, object]) -> list[Alert]:
        alert = Alert(rule=rule, severity=severity, principal=principal, token_id=token_id, evidence=evidence)
        key = f"d:alert:{rule}:{principal or '-'}"
        if not self.counters.claim(key, self.config.repeat_seconds):
            return []
        self.alerts.raise_alert(alert)
        self.raised.append(alert)
        return [alert]
