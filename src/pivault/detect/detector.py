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

import logging
import math
import os
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pivault.detect.alerts import Alert, AlertDispatcher
from pivault.detect.counters import Counters
from pivault.errors import PivaultError
from pivault.policy.context import AccessContext

__all__ = ["DetectorConfig", "GlobalDetector", "cell_of"]

log = logging.getLogger("pivault.detect")

#: counts (fields) a process keeps while the shared counters cannot take them
_UNSENT_MAX = 100_000


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
    evaluate_every: float = 1.0
    repeat_seconds: float = 300.0
    extra: dict[str, float] = field(default_factory=dict)


def _count_read(into: dict[str, int], principal: str, records: int, cells: Sequence[str | None]) -> None:
    """Add one read to a bucket's fields: ``t`` records in all, ``p:`` by principal, ``c:`` by
    cell, ``pc:`` by principal and cell (the kinds the rules sum)."""
    into["t"] = into.get("t", 0) + records
    key = "p:" + principal
    into[key] = into.get(key, 0) + records
    for cell in cells:
        if cell:
            key = "c:" + cell
            into[key] = into.get(key, 0) + 1
            key = "pc:" + principal + "|" + cell
            into[key] = into.get(key, 0) + 1


def _by_kind(h: dict[str, int], kinds: Iterable[str]) -> dict[str, dict[str, int]]:
    """A bucket's fields split by kind (``t``, ``p:``, ``c:``, ``pc``) in one pass."""
    parts: dict[str, dict[str, int]] = {kind: {} for kind in kinds}
    for k, v in h.items():
        part = parts.get(k if k == "t" else k[:2])
        if part is not None:
            part[k] = v
    return parts


def _fold(into: dict[str, int], part: dict[str, int], sign: int) -> None:
    """Add (or take away) the fields of one kind of a bucket."""
    get = into.get
    for k, v in part.items():
        n = get(k, 0) + sign * v
        if n:
            into[k] = n
        else:
            into.pop(k, None)


@dataclass
class _Run:
    """How long a principal's reads have kept moving one way through a sequence of keys.

    Both ways are followed at once: a sweep walked backwards is as much a sweep.
    """

    last: str | None = None
    #: reads in a row that did not move back (``up``), or forward (``down``), and the
    #: distinct keys each run passed through
    up: int = 0
    up_cells: int = 0
    down: int = 0
    down_cells: int = 0

    def step(self, key: str) -> None:
        last = self.last
        if last is None:
            self.up = self.up_cells = self.down = self.down_cells = 1
        else:
            if key >= last:
                self.up += 1
                self.up_cells += key != last
            else:
                self.up = self.up_cells = 1
            if key <= last:
                self.down += 1
                self.down_cells += key != last
            else:
                self.down = self.down_cells = 1
        self.last = key


class GlobalDetector:
    """Feed it every read (:meth:`observe`); it raises alerts through the dispatcher."""

    def __init__(self, counters: Counters, alerts: AlertDispatcher,
                 config: DetectorConfig | None = None) -> None:
        self.counters = counters
        self.alerts = alerts
        self.config = config or DetectorConfig()
        self._lock = threading.Lock()
        self._next_eval = 0.0
        #: per principal, its runs: through the cells ("") and through the birth years of each
        #: province (the province code)
        self._runs: dict[str, dict[str, _Run]] = {}
        self._thread_pid = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: reads queued for the evaluation thread: (ctx, records, cells, facts or None)
        self._inbox: deque[tuple[AccessContext, int, Sequence[str | None],
                                 Sequence[tuple[str | None, int | None]] | None]] = deque()
        #: counts of this process not yet in the shared counters (sent to the bucket of the
        #: counters' clock when they are sent)
        self._unsent: dict[str, int] = {}
        # sliding-window sums of completed buckets (see _windows)
        self._eval_lock = threading.Lock()
        self._agg: dict[str, dict[str, int]] = {}
        self._agg_spans: dict[str, int] = {}
        self._agg_last: int | None = None
        self._done: dict[int, dict[str, dict[str, int]]] = {}
        #: alerts raised by this process (rule names), for status and tests
        self.raised: list[Alert] = []

    # -- input -------------------------------------------------------------------
    def observe(self, ctx: AccessContext, records: int, cells: Sequence[str | None] = ()) -> None:
        """Count ``records`` read by ``ctx`` and their coarse cells; evaluate now and then.

        With the evaluation thread running (:meth:`start`), a read is only
        queued here (one append); that thread counts it, follows the ordered
        sweeps and hands the counts to the shared counters before each
        evaluation (no round trip per read). Otherwise the read goes to the
        counters at once.
        """
        if records <= 0 and not cells:
            return
        if self._thread_pid == os.getpid():
            self._inbox.append((ctx, records, cells, None))
            return
        self._count(ctx, records, cells)

    def observe_facts(self, ctx: AccessContext, facts: Sequence[tuple[str | None, int | None]]) -> None:
        """:meth:`observe` of records given by their coarse facts (region code, birth year).

        The door's hook: the cells are made by the evaluation thread when it runs.
        """
        if not facts:
            return
        if self._thread_pid == os.getpid():
            self._inbox.append((ctx, len(facts), (), facts))
            return
        self._count(ctx, len(facts), [cell_of(r, y) for r, y in facts])

    def _count(self, ctx: AccessContext, records: int, cells: Sequence[str | None]) -> None:
        """Without the thread: count one read in the shared counters at once."""
        fields: dict[str, int] = {}
        _count_read(fields, ctx.principal, records, cells)
        if cells:
            self._ordered(ctx, cells)
        now = self.counters.now()
        self.counters.add_fields(f"d:{math.floor(now / self.config.bucket_seconds)}", fields, self._ttl())
        if now >= self._next_eval:
            with self._lock:
                if now < self._next_eval:
                    return
                self._next_eval = now + self.config.evaluate_every
            self._evaluate_safely(now)

    def _drain(self) -> None:
        """The evaluation thread: count the queued reads into this process's unsent counts.

        What is queued is taken at once and summed here, then added to the
        unsent counts under one lock: the thread holds the interpreter for as
        short a time as it can while requests wait for it.
        """
        inbox = self._inbox
        pop = inbox.popleft
        taken = []
        try:
            while True:
                taken.append(pop())
        except IndexError:
            pass
        if not taken:
            return
        sums: dict[str, int] = {}
        runs: list[tuple[AccessContext, Sequence[str | None]]] = []
        for ctx, records, cells, facts in taken:
            if facts is not None:
                cells = [cell_of(r, y) for r, y in facts]
            _count_read(sums, ctx.principal, records, cells)
            if cells:
                runs.append((ctx, cells))
        # the latest evidence of each principal whose reads kept in order, raised once a round
        evidence: dict[str, tuple[AccessContext, dict[str, object]]] = {}
        with self._lock:
            for ctx, cells in runs:
                found = self._advance(ctx.principal, cells)
                if found is not None:
                    evidence[ctx.principal] = (ctx, found)
            into = self._unsent
            for k, v in sums.items():
                into[k] = into.get(k, 0) + v
        for principal, (ctx, found) in evidence.items():
            self._raise("sweep.ordered", "warning", principal, ctx.token_id, found)

    def _ttl(self) -> float:
        cfg = self.config
        return max(cfg.sweep_window, cfg.distributed_window, 120.0) + 2 * cfg.bucket_seconds

    def _send(self) -> None:
        """Hand the counts summed in this process to the shared counters, in the bucket that is
        current on the counters' clock.

        Not the bucket of each read's time on this host: every process evaluates a completed
        bucket once, so counts sent to a bucket after it completed would be seen by no other
        process (a second of each bucket's reads, which a caller timing its reads to the
        buckets' ends could make all of them), and a host whose clock is behind the counters'
        would send every count to buckets already completed. Counts that could not be sent
        are kept for the next round (up to :data:`_UNSENT_MAX` fields).
        """
        self._drain()
        with self._lock:
            unsent, self._unsent = self._unsent, {}
        if not unsent:
            return
        try:
            now = self.counters.now()
            self.counters.add_fields(f"d:{math.floor(now / self.config.bucket_seconds)}", unsent,
                                     self._ttl())
        except BaseException:
            # the counters are down: the reads still happened, and count once they are back
            with self._lock:
                kept = len(self._unsent) + len(unsent) <= _UNSENT_MAX
                if kept:
                    for k, v in self._unsent.items():
                        unsent[k] = unsent.get(k, 0) + v
                    self._unsent = unsent
            if not kept:
                log.warning("global detector dropped %d counts it could not send", len(unsent))
            raise

    def _evaluate_safely(self, now: float | None = None) -> None:
        try:
            self.evaluate(now)
        except PivaultError as exc:
            log.warning("global detector could not evaluate: %s", exc.code)
        except Exception:  # a detector bug must not fail reads; budgets still hold
            log.exception("global detector evaluation failed")

    def start(self) -> None:
        """Evaluate in a background thread of this process, every ``evaluate_every`` seconds.

        Reads then are only queued; counting them and the rules run off the
        request path. Call again after a fork: each process
        needs its own thread.
        """
        if self._thread_pid == os.getpid():
            return
        self._thread_pid = os.getpid()
        self._stop = threading.Event()  # a forked child's own, unset
        period = max(self.config.evaluate_every, 0.05)
        stop = self._stop

        def loop() -> None:
            while not stop.wait(period):
                self._tick()
            self._tick()  # what was read before the stop still counts

        self._thread = threading.Thread(target=loop, name="pivault-detector", daemon=True)
        self._thread.start()

    def _tick(self) -> None:
        try:
            self._send()
        except PivaultError as exc:
            log.warning("global detector could not send its counts: %s", exc.code)
        except Exception:  # a detector bug must not stop the thread
            log.exception("global detector could not count reads")
        self._evaluate_safely()

    def stop(self, timeout: float = 5.0) -> None:
        """Count what is queued, evaluate once more and end the thread (the vault is closing).

        After this, reads are counted on the caller's thread again, as before :meth:`start`.
        """
        thread = self._thread
        if thread is None or self._thread_pid != os.getpid():
            return
        # reads from here on are counted on their own thread; the last round drains the queue
        self._thread_pid = -1
        self._stop.set()
        if thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None

    def _ordered(self, ctx: AccessContext, cells: Sequence[str | None]) -> None:
        """Track how long this principal's reads keep moving forward through the cells.

        Kept per process: each worker sees a subsequence of a principal's
        reads, and a subsequence of an ordered sweep is still ordered.
        """
        with self._lock:
            evidence = self._advance(ctx.principal, cells)
        if evidence is not None:
            self._raise("sweep.ordered", "warning", ctx.principal, ctx.token_id, evidence)

    def _advance(self, principal: str, cells: Sequence[str | None]) -> dict[str, object] | None:
        """:meth:`_ordered`'s step, with the lock held; the evidence once a run is long enough.

        Two kinds of run, each followed both ways: through the cells in (province, birth
        year) order — a region walked year by year, or one year walked region by region —
        and, for each province, through its birth years alone, so that regions walked side
        by side, or the whole vault walked by birth date across every region, keep each
        province's run going however they interleave. Cells compare as text: ``PP:YYYY``
        has fixed widths, so their text order is (province, year) order.
        """
        runs = self._runs.get(principal)
        if runs is None:
            if len(self._runs) > 100_000:
                self._runs.clear()
            runs = self._runs[principal] = {}
        touched: list[tuple[str, _Run]] = []
        last_cell = ""
        for cell in cells:
            if not cell:
                continue
            last_cell = cell
            whole = runs.get("")
            if whole is None:
                whole = runs[""] = _Run()
            whole.step(cell)
            province, year = cell[:2], cell[3:]
            run = runs.get(province)
            if run is None:
                run = runs[province] = _Run()
            run.step(year)
            touched.append(("cells", whole))
            touched.append(("years of province " + province, run))
        cfg = self.config
        for along, run in touched:
            for direction, length, passed in (("forward", run.up, run.up_cells),
                                              ("backward", run.down, run.down_cells)):
                if length >= cfg.ordered_min_run and passed >= cfg.ordered_min_cells:
                    return {"reads_in_order": length, "cells": passed, "last_cell": last_cell,
                            "direction": direction, "along": along}
        return None

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
        size = cfg.bucket_seconds
        n_rate = max(1, math.ceil(60.0 / size))
        n_dist = max(1, math.ceil(cfg.distributed_window / size))
        n_sweep = max(1, math.ceil(cfg.sweep_window / size))
        windows = self._windows(now, {"t": n_rate, "p:": n_dist, "c:": n_sweep, "pc": n_sweep})
        per_minute = windows["t"].get("t", 0)
        principals = {k[2:]: v for k, v in windows["p:"].items()}
        cells = {k[2:]: v for k, v in windows["c:"].items()}
        pcells = {k[3:]: v for k, v in windows["pc"].items()}

        base = self.baseline()
        threshold = max(cfg.rate_min_per_minute, cfg.rate_factor * base)
        if per_minute > threshold:
            raised += self._raise("global.rate", "critical" if per_minute > 2 * threshold else "warning",
                                  None, None, {"records_last_minute": per_minute,
                                               "baseline_per_minute": round(base, 1),
                                               "threshold": round(threshold, 1), "window_seconds": 60})
        else:
            self._learn(now, per_minute)

        busy = {p: v for p, v in principals.items() if v >= cfg.distributed_min_each}
        total = sum(busy.values())
        if len(busy) >= cfg.distributed_min_principals and total >= cfg.distributed_min_total:
            top = sorted(busy.items(), key=lambda kv: -kv[1])[:20]
            raised += self._raise("global.distributed", "critical", None, None, {
                "principals": len(busy), "records": total, "window_seconds": int(cfg.distributed_window),
                "top": [{"principal": p, "records": n} for p, n in top]})

        cell_total = sum(cells.values())
        if cell_total >= cfg.sweep_min_reads:
            cell, n = max(cells.items(), key=lambda kv: kv[1])
            if n / cell_total >= cfg.sweep_share:
                raised += self._raise("global.sweep", "warning", None, None, {
                    "cell": cell, "reads_in_cell": n, "reads": cell_total,
                    "window_seconds": int(cfg.sweep_window)})
        by_principal: dict[str, dict[str, int]] = {}
        for k, v in pcells.items():
            principal, cell = k.rsplit("|", 1)
            by_principal.setdefault(principal, {})[cell] = v
        for principal, pc in by_principal.items():
            ptotal = sum(pc.values())
            if ptotal >= cfg.sweep_min_reads:
                cell, n = max(pc.items(), key=lambda kv: kv[1])
                if n / ptotal >= cfg.sweep_share:
                    raised += self._raise("sweep.principal", "warning", principal, None, {
                        "cell": cell, "reads_in_cell": n, "reads": ptotal,
                        "window_seconds": int(cfg.sweep_window)})
        return raised

    def _windows(self, now: float, spans: dict[str, int]) -> dict[str, dict[str, int]]:
        """Sums over sliding windows, per field kind (``t``, ``p:``, ``c:``, ``pc``).

        ``spans`` gives each kind's window in buckets, the current one
        included. Completed buckets no longer change, so their sums are kept
        and moved along as time passes; each evaluation reads only the
        buckets completed since the last one and the current bucket. The
        cost of an evaluation grows with the traffic of one bucket, not of
        the whole window.
        """
        size = self.config.bucket_seconds
        last = math.floor(now / size)
        longest = max(spans.values())
        with self._eval_lock:
            prev = self._agg_last
            if prev is None or last < prev or last - prev >= longest or spans != self._agg_spans:
                # start over: every completed bucket of the longest window
                self._agg = {kind: {} for kind in spans}
                self._agg_spans = dict(spans)
                new = list(range(last - longest + 1, last))
                leaving: list[tuple[str, int]] = []
            else:
                new = list(range(prev, last))
                # in a kind's sums before (prev - n < b < prev), out of its window now (b <= last - n)
                leaving = [(kind, b) for kind, n in spans.items()
                           for b in range(prev - n + 1, min(prev, last - n + 1))]
            fetched = self.counters.read_fields([f"d:{b}" for b in (*new, last)])
            current = _by_kind(fetched[-1], spans)
            for b, h in zip(new, fetched[:-1], strict=True):
                parts = self._done[b] = _by_kind(h, spans)
                for kind, n in spans.items():
                    if b > last - n:
                        _fold(self._agg[kind], parts[kind], 1)
            for kind, b in leaving:
                gone = self._done.get(b)
                if gone is not None:
                    _fold(self._agg[kind], gone[kind], -1)
            for b in [b for b in self._done if b <= last - longest]:
                del self._done[b]
            self._agg_last = last
            out: dict[str, dict[str, int]] = {}
            for kind in spans:
                total = dict(self._agg[kind])
                _fold(total, current[kind], 1)
                out[kind] = total
            return out

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
