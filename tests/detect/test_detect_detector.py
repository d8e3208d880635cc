"""The global detector: rate far above baseline, distributed enumeration, sweeps."""

from __future__ import annotations

import random

from detect_helpers import FakeClock

from pivault.detect import (
    AlertDispatcher,
    Counters,
    DetectorConfig,
    GlobalDetector,
    cell_of,
)
from pivault.policy.context import AccessContext

CFG = DetectorConfig(rate_min_per_minute=200, baseline_per_minute=50, rate_factor=4,
                     distributed_min_principals=5, distributed_min_each=10, distributed_min_total=100,
                     sweep_min_reads=60, sweep_share=0.5, ordered_min_run=50, ordered_min_cells=3,
                     evaluate_every=0.0)


def _ctx(i: int) -> AccessContext:
    return AccessContext(principal=f"officer-{i}", role="officer", purpose="case_investigation",
                         token_id=f"{i:016x}")


def _rules(det: GlobalDetector) -> set[str]:
    return {a.rule for a in det.raised}


def _population_cells(rnd: random.Random, n: int) -> list[str | None]:
    provinces = ["11", "31", "32", "33", "44", "51", "61"]
    return [cell_of(rnd.choice(provinces) + "0101", rnd.randint(1925, 2024)) for _ in range(n)]


def test_ordinary_traffic_raises_nothing(counters: Counters, clock: FakeClock) -> None:
    det = GlobalDetector(counters, AlertDispatcher(), CFG)
    rnd = random.Random(5)
    for step in range(300):
        who = _ctx(step % 3)
        det.observe(who, 1, _population_cells(rnd, 1))
        clock.advance(0.5)
    assert det.raised == []


def test_rate_far_above_baseline(counters: Counters, clock: FakeClock) -> None:
    det = GlobalDetector(counters, AlertDispatcher(), CFG)
    for _ in range(30):
        det.observe(_ctx(1), 10)
        clock.advance(1)
    assert "global.rate" in _rules(det)
    alert = next(a for a in det.raised if a.rule == "global.rate")
    assert alert.evidence["records_last_minute"] > alert.evidence["threshold"]


def test_many_principals_under_budget_together(counters: Counters, clock: FakeClock) -> None:
    det = GlobalDetector(counters, AlertDispatcher(), CFG)
    for _round in range(15):
        for i in range(8):
            det.observe(_ctx(i), 1)
        clock.advance(5)
    assert "global.distributed" in _rules(det)
    alert = next(a for a in det.raised if a.rule == "global.distributed")
    assert alert.evidence["principals"] == 8 and alert.severity == "critical"


def test_sweep_of_one_cell(counters: Counters, clock: FakeClock) -> None:
    det = GlobalDetector(counters, AlertDispatcher(), CFG)
    rnd = random.Random(1)
    for i in range(80):
        cells = [cell_of("310104", 1985)] if i % 4 else _population_cells(rnd, 1)
        det.observe(_ctx(3), 0, cells)
        clock.advance(1)
    rules = _rules(det)
    assert "global.sweep" in rules and "sweep.principal" in rules
    alert = next(a for a in det.raised if a.rule == "sweep.principal")
    assert alert.principal == "officer-3" and alert.evidence["cell"] == "31:1985"


def test_ordered_sweep_across_birth_years(counters: Counters, clock: FakeClock) -> None:
    det = GlobalDetector(counters, AlertDispatcher(), CFG)
    for year in range(1980, 1990):
        for _ in range(6):
            det.observe(_ctx(4), 0, [cell_of("440305", year)])
            clock.advance(0.2)
    assert "sweep.ordered" in _rules(det)


def test_alerts_are_not_repeated(counters: Counters, clock: FakeClock) -> None:
    det = GlobalDetector(counters, AlertDispatcher(), CFG)
    for _ in range(60):
        det.observe(_ctx(1), 10)
        clock.advance(1)
    assert [a.rule for a in det.raised].count("global.rate") == 1


def test_baseline_learns_from_quiet_minutes(counters: Counters, clock: FakeClock) -> None:
    det = GlobalDetector(counters, AlertDispatcher(), CFG)
    assert det.baseline() == 50
    for _ in range(10):  # ten quiet minutes at 150 records a minute
        for _ in range(6):
            det.observe(_ctx(1), 25)
            clock.advance(10)
    assert det.baseline() > 60
    assert det.raised == []


def test_cells_are_coarse() -> None:
    assert cell_of("310104", 1985) == "31:1985"
    assert cell_of(None, 1985) is None and cell_of("31", None) is None


def test_incremental_windows_equal_a_full_recount(counters: Counters, clock: FakeClock) -> None:
    import math

    det = GlobalDetector(counters, AlertDispatcher(), DetectorConfig(evaluate_every=3600))
    rnd = random.Random(9)
    spans = {"t": 6, "p:": 30, "c:": 60, "pc": 60}
    for step in range(400):
        det.observe(_ctx(rnd.randrange(4)), 1, _population_cells(rnd, 1))
        clock.advance(rnd.choice([0.5, 3.0, 7.0, 40.0]))
        if step % 7 == 0:
            got = det._windows(clock.t, spans)
            last = math.floor(clock.t / 10.0)
            for kind, n in spans.items():
                want: dict[str, int] = {}
                for h in counters.read_fields([f"d:{b}" for b in range(last - n + 1, last + 1)]):
                    for k, v in h.items():
                        if k[:2] == kind or k == kind:
                            want[k] = want.get(k, 0) + v
                assert got[kind] == want, (step, kind)


def test_with_its_thread_a_read_is_only_queued(counters: Counters, clock: FakeClock) -> None:
    """Reads queue in the process; the thread counts them (cells, ordered runs) and sends them."""
    import math

    det = GlobalDetector(counters, AlertDispatcher(), DetectorConfig(evaluate_every=3600, ordered_min_run=50,
                                                                     ordered_min_cells=3))
    det.start()  # its first round is an hour away: the test plays the thread's part
    for year in range(1980, 1990):
        for _ in range(6):
            det.observe_facts(_ctx(4), [("440305", year)])
    det.observe(_ctx(5), 3, [cell_of("310104", 1985), None, cell_of("310104", 1985)])
    # sent to the bucket current on the counters' clock when the thread sends them
    buckets = [f"d:{math.floor(clock.t / 10.0)}"]
    assert all(h == {} for h in counters.read_fields(buckets))  # nothing sent on the request path
    assert det.raised == []
    det._send()
    merged: dict[str, int] = {}
    for h in counters.read_fields(buckets):
        for k, v in h.items():
            merged[k] = merged.get(k, 0) + v
    assert merged["t"] == 63 and merged["p:officer-4"] == 60 and merged["p:officer-5"] == 3
    assert merged["c:44:1980"] == 6 and merged["pc:officer-4|44:1989"] == 6
    assert merged["c:31:1985"] == 2
    assert "sweep.ordered" in _rules(det)


def test_without_its_thread_facts_are_counted_at_once(counters: Counters, clock: FakeClock) -> None:
    import math

    det = GlobalDetector(counters, AlertDispatcher(), DetectorConfig(evaluate_every=3600))
    det.observe_facts(_ctx(1), [("310104", 1985), (None, 1990), ("110101", None)])
    got = counters.read_fields([f"d:{math.floor(clock.t / 10.0)}"])[0]
    assert got["t"] == 3 and got["p:officer-1"] == 3 and got == {
        "t": 3, "p:officer-1": 3, "c:31:1985": 1, "pc:officer-1|31:1985": 1}


def test_stop_counts_what_is_queued_and_ends_the_thread(counters: Counters, clock: FakeClock) -> None:
    """A closing vault stops its detector: queued reads still reach the counters, no thread is left
    to evaluate against a closed store, and later reads are counted at once."""
    import math
    import threading

    det = GlobalDetector(counters, AlertDispatcher(), DetectorConfig(evaluate_every=3600))
    others = set(threading.enumerate())
    det.start()
    (thread,) = [t for t in threading.enumerate() if t not in others and t.name == "pivault-detector"]
    det.observe(_ctx(7), 4)
    det.stop()
    assert not thread.is_alive()
    bucket = [f"d:{math.floor(clock.t / 10.0)}"]  # the bucket on the counters' clock
    assert counters.read_fields(bucket)[0]["p:officer-7"] == 4  # sent by the last round
    det.observe(_ctx(7), 1)  # no thread now: counted on the caller's thread, at once
    assert counters.read_fields(bucket)[0]["p:officer-7"] == 5


def test_a_queued_round_counts_and_follows_sweeps_as_reads_one_by_one_do() -> None:
    """The thread sums a whole round of queued reads at once: the same counts and the same
    ordered-sweep verdicts, per principal, as counting each read as it comes."""
    from pivault.detect import MemoryCounters

    rnd = random.Random(11)
    reads: list[tuple[AccessContext, list[tuple[str | None, int | None]]]] = []
    for _ in range(1500):
        who = rnd.randrange(4)
        if who == 0:  # officer-0 sweeps forward through the years, with a few steps back
            year = 1950 + len([r for r in reads if r[0].principal == "officer-0"]) // 8
            year -= 30 if rnd.random() < 0.01 else 0
            facts: list[tuple[str | None, int | None]] = [("440305", year)]
        else:
            facts = [(rnd.choice(["310104", "110101", None]), rnd.choice([None, rnd.randint(1930, 2020)]))
                     for _ in range(rnd.randint(1, 3))]
        reads.append((_ctx(who), facts))
    cfg = DetectorConfig(evaluate_every=3600, ordered_min_run=40, ordered_min_cells=3)
    one_by_one = GlobalDetector(MemoryCounters(), AlertDispatcher(), cfg)
    queued = GlobalDetector(MemoryCounters(), AlertDispatcher(), cfg)
    queued.start()  # its first round is an hour away: the test plays the thread's part
    try:
        for ctx, facts in reads:
            one_by_one.observe_facts(ctx, facts)
            queued.observe_facts(ctx, facts)
        queued._send()
        totals = []
        for det in (one_by_one, queued):
            merged: dict[str, int] = {}
            hashes = det.counters._hashes  # type: ignore[attr-defined]
            for key in [k for k in hashes if k[2:].isdigit()]:  # the buckets (the two may straddle one)
                for field, n in det.counters.read_fields([key])[0].items():
                    merged[field] = merged.get(field, 0) + n
            totals.append(merged)
        assert totals[0] == totals[1] and totals[0]["t"] == sum(len(f) for _, f in reads)
        sweeps = [{a.principal for a in d.raised if a.rule == "sweep.ordered"} for d in (one_by_one, queued)]
        assert sweeps[0] == sweeps[1] and "officer-0" in sweeps[1]
    finally:
        queued.stop()


def test_reads_in_no_order_are_no_sweep(counters: Counters, clock: FakeClock) -> None:
    """An officer reading residents as cases bring them (any province, any year) never looks like
    a sweep at the shipped thresholds, though runs are followed both ways and per province."""
    det = GlobalDetector(counters, AlertDispatcher(), DetectorConfig(evaluate_every=3600))
    rnd = random.Random(21)
    for _ in range(5000):
        det.observe(_ctx(6), 1, _population_cells(rnd, 1))
        clock.advance(0.5)
    assert "sweep.ordered" not in _rules(det)
