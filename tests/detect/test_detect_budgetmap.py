"""The node's mapped budget tables: days, full tables, collisions, other files, killed writers."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time
from pathlib import Path

import pytest
from detect_helpers import FakeClock

from pivault.detect import Budget, BudgetPolicy, Budgets, DetectUnavailable, FileCounters, counters_from_url
from pivault.detect.budgetmap import BudgetMap
from pivault.detect.counters import MemoryCounters
from pivault.errors import PivaultError
from pivault.policy.context import AccessContext

DAY = 86400
SMALL = {"windows": 16, "sets": 8, "members": 64}
LARGER = {"windows": 1 << 12, "sets": 1 << 10, "members": 1 << 12}


def _ctx(n: int) -> AccessContext:
    return AccessContext(principal=f"officer-{n}", role="officer", purpose="case_investigation",
                         token_id=f"{n:016x}", source="api")


def _budgets(fc: FileCounters, **limits: int) -> Budgets:
    return Budgets(BudgetPolicy(roles={"officer": Budget(**limits)}), fc)  # type: ignore[arg-type]


def test_a_day_of_distinct_records_is_forgotten_two_days_on(tmp_path: Path, clock: FakeClock) -> None:
    fc = FileCounters(tmp_path / "counters.db", clock=clock)
    b = _budgets(fc, distinct_per_day=3)
    key = f"b:p:{_ctx(1).principal}:distinct"
    day = int(clock() // DAY)
    for i in range(3):
        assert b.charge(_ctx(1), records=1, record_ids=[f"r_{i}"]).allowed
    assert not b.charge(_ctx(1), records=1, record_ids=["r_3"]).allowed
    assert b.charge(_ctx(1), records=1, record_ids=["r_0"]).allowed  # counted already
    clock.advance(DAY)  # the next day: a fresh set, and yesterday's still there
    assert b.charge(_ctx(1), records=1, record_ids=["r_3"]).allowed
    assert fc.distinct_count(key, day) == 3
    assert fc.distinct_count(key, day + 1) == 1
    clock.advance(DAY)  # two days on: the first day's generation is emptied for this one
    assert b.charge(_ctx(1), records=1, record_ids=["r_4"]).allowed
    assert fc.distinct_count(key, day) == 0
    assert fc.distinct_count(key, day + 2) == 1
    assert BudgetMap(fc.budgets_path).member_count(day + 2) == 1
    fc.close()


def test_ids_that_collide_in_a_small_table_are_each_counted(tmp_path: Path, clock: FakeClock) -> None:
    fc = FileCounters(tmp_path / "counters.db", clock=clock, capacity=SMALL)
    b = _budgets(fc, distinct_per_day=40)
    ids = [f"r_{i:03d}" for i in range(40)]
    assert b.charge(_ctx(1), records=40, record_ids=ids).allowed
    day = int(clock() // DAY)
    assert fc.distinct_count(f"b:p:{_ctx(1).principal}:distinct", day) == 40
    assert not b.charge(_ctx(1), records=1, record_ids=["r_999"]).allowed
    for i in ids:  # every one of them is known: a re-read costs no distinct budget
        assert b.charge(_ctx(1), records=1, record_ids=[i]).allowed
    fc.close()


def test_a_refused_charge_leaves_no_member_behind(tmp_path: Path, clock: FakeClock) -> None:
    """Ids of a refused read must not count as already read: else they could be read one by one free."""
    fc = FileCounters(tmp_path / "counters.db", clock=clock)
    b = _budgets(fc, distinct_per_day=5)
    ids = [f"r_{i}" for i in range(20)]
    assert not b.charge(_ctx(1), records=20, record_ids=ids).allowed
    granted = sum(b.charge(_ctx(1), records=1, record_ids=[i]).allowed for i in ids)
    assert granted == 5
    fc.close()


def test_a_full_table_of_distinct_records_fails_closed(tmp_path: Path) -> None:
    # the sizes of a new map, as an operator gives them in the counters URL
    fc = counters_from_url(f"sqlite:///{tmp_path / 'counters.db'}?windows=64&sets=64&members=64")
    assert isinstance(fc, FileCounters)
    b = _budgets(fc, distinct_per_day=1000)
    with pytest.raises(DetectUnavailable) as info:
        for i in range(100):
            b.charge(_ctx(i % 7), records=1, record_ids=[f"r_{i}"])
    assert "full" in str(info.value) and "members=" in info.value.hint
    assert 40 <= i <= 49  # three quarters of 64 members, spread over sets of several callers


@pytest.mark.parametrize("query", ["members=100", "members=0", "members=", "rows=64", "members=1&x"])
def test_a_bad_size_in_the_counters_url_is_refused(tmp_path: Path, query: str) -> None:
    with pytest.raises(PivaultError) as info:
        counters_from_url(f"sqlite:///{tmp_path / 'counters.db'}?{query}")
    assert info.value.code == "detect.config"


def test_expired_windows_make_room_for_new_callers(tmp_path: Path, clock: FakeClock) -> None:
    fc = FileCounters(tmp_path / "counters.db", clock=clock, capacity=SMALL)
    b = _budgets(fc, records_per_minute=5)
    for n in range(16):  # one window each: the table is full
        assert b.charge(_ctx(n), records=1).allowed
    with pytest.raises(DetectUnavailable):
        b.charge(_ctx(99), records=1)
    for n in range(16):  # the callers it has keep their windows
        assert b.charge(_ctx(n), records=4).allowed
        assert not b.charge(_ctx(n), records=1).allowed
    clock.advance(64)  # every window has emptied: new callers take their slots
    for n in range(100, 116):
        assert b.charge(_ctx(n), records=5).allowed
        assert not b.charge(_ctx(n), records=1).allowed
    fc.close()


def test_another_file_at_the_budgets_path_fails_closed(tmp_path: Path) -> None:
    fc = FileCounters(tmp_path / "counters.db")
    fc.budgets_path.write_bytes(b"not a counters file" * 1000)
    with pytest.raises(DetectUnavailable):
        _budgets(fc, records_per_minute=5).charge(_ctx(1), records=1)


def test_a_damaged_or_cut_file_fails_closed(tmp_path: Path, clock: FakeClock) -> None:
    fc = FileCounters(tmp_path / "counters.db", clock=clock, capacity=SMALL)
    assert _budgets(fc, records_per_minute=5).charge(_ctx(1), records=1).allowed
    fc.close()
    good = fc.budgets_path.read_bytes()
    for bad in (good[:8 * 3] + (6).to_bytes(8, "little") + good[8 * 4:],  # sets: not a power of two
                good[:len(good) // 2]):  # shorter than its tables
        fc.budgets_path.write_bytes(bad)
        with pytest.raises(DetectUnavailable):
            _budgets(FileCounters(tmp_path / "counters.db", clock=clock), records_per_minute=5).charge(
                _ctx(1), records=1)


def test_an_existing_file_keeps_its_sizes(tmp_path: Path, clock: FakeClock) -> None:
    small = FileCounters(tmp_path / "counters.db", clock=clock, capacity=SMALL)
    assert _budgets(small, records_per_minute=5).charge(_ctx(1), records=2).allowed
    other = FileCounters(tmp_path / "counters.db", clock=clock, capacity=LARGER)
    b = _budgets(other, records_per_minute=5)
    assert b.charge(_ctx(1), records=3).allowed  # the same window, read through the file's own sizes
    assert not b.charge(_ctx(1), records=1).allowed
    assert os.path.getsize(other.budgets_path) < 64 * 1024
    small.close()
    other.close()


def _charging(path: str, ready: mp.connection.Connection) -> None:
    b = _budgets(FileCounters(path), records_per_hour=10**9)
    ctx = _ctx(1)
    while True:
        b.charge(ctx, records=1)
        ready.send_bytes(b"1")


def test_a_writer_killed_mid_charge_leaves_the_counts_whole(tmp_path: Path) -> None:
    """SIGKILL at a random moment: every charge it was answered is counted, at most one more."""
    path = str(tmp_path / "counters.db")
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_charging, args=(path, send))
    proc.start()
    send.close()
    time.sleep(0.3 + (os.getpid() % 7) / 20)
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    answered = 0
    while recv.poll(0.2):
        try:
            answered += len(recv.recv_bytes())
        except EOFError:
            break
    assert answered > 10
    limit = answered + 50
    fc = FileCounters(path, timeout=1.0)  # the lock died with the writer
    b = _budgets(fc, records_per_hour=limit)
    granted = 0
    while b.charge(_ctx(1), records=1).allowed:
        granted += 1
    assert limit - granted in (answered, answered + 1)
    fc.close()


def test_two_new_windows_on_one_slot_are_kept_apart(tmp_path: Path, clock: FakeClock) -> None:
    """A caller's minute and hour windows whose keys probe from the same slot of a new table."""
    from pivault.detect.budgetmap import _digest

    def home(n: int, name: str) -> int:
        return _digest(f"default:w:p:officer-{n}:{name}")[1] & 15

    n = next(n for n in range(10_000) if home(n, "records_per_minute") == home(n, "records_per_hour"))
    fc = FileCounters(tmp_path / "counters.db", clock=clock, capacity=SMALL)
    b = _budgets(fc, records_per_minute=5, records_per_hour=7)
    assert b.charge(_ctx(n), records=5).allowed
    assert not b.charge(_ctx(n), records=1).allowed  # the minute's
    clock.advance(62)
    assert b.charge(_ctx(n), records=2).allowed
    refused = b.charge(_ctx(n), records=1)
    assert refused.refusal is not None and refused.refusal.rule == "principal.records_per_hour"
    fc.close()


def test_a_file_of_the_version_before_the_sums_keeps_its_counts(tmp_path: Path, clock: FakeClock) -> None:
    """A node's counters file from before the windows' sums: upgraded in place, nothing forgotten."""
    limits = {"records_per_minute": 10, "records_per_hour": 12}
    fc = FileCounters(tmp_path / "counters.db", clock=clock, capacity=SMALL)
    b = _budgets(fc, **limits)
    for _ in range(3):
        assert b.charge(_ctx(1), records=2).allowed
        clock.advance(5)
    fc.close()
    # the file as the version before wrote it: the same tables, no sums after them
    data = bytearray(fc.budgets_path.read_bytes())
    del data[len(data) - 8 * SMALL["windows"]:]
    data[8:16] = (1).to_bytes(8, "little")
    fc.budgets_path.write_bytes(bytes(data))
    again = FileCounters(tmp_path / "counters.db", clock=clock)
    b = _budgets(again, **limits)
    assert b.charge(_ctx(1), records=4).allowed  # 6 read before, 10 in the minute
    refused = b.charge(_ctx(1), records=1)
    assert refused.refusal is not None and refused.refusal.rule == "principal.records_per_minute"
    assert refused.refusal.used == 10
    clock.advance(61)  # the minute is empty, the hour holds 10 of its 12
    assert b.charge(_ctx(1), records=2).allowed
    refused = b.charge(_ctx(1), records=1)
    assert refused.refusal is not None and refused.refusal.rule == "principal.records_per_hour"
    assert int.from_bytes(again.budgets_path.read_bytes()[8:16], "little") == 2
    again.close()


def test_the_files_windows_refuse_as_the_memory_counters_do(tmp_path: Path, clock: FakeClock) -> None:
    """Random charges over hours of a fake clock: the file's running sums never drift from the buckets."""
    limits = {"records_per_minute": 8, "records_per_hour": 40, "misses_per_hour": 3}
    policy = BudgetPolicy(roles={"officer": Budget(**limits)},  # type: ignore[arg-type]
                          role_totals={"officer": Budget(records_per_hour=70)})
    fc = FileCounters(tmp_path / "counters.db", clock=clock, capacity=LARGER)
    in_file, in_memory = Budgets(policy, fc), Budgets(policy, MemoryCounters(clock=clock))
    rng = random.Random(2022)
    refusals = 0
    for _ in range(4000):
        clock.advance(rng.choice((0.0, 0.4, 1.0, 2.5, 7.0, 30.0, 65.0, 900.0)))
        who = _ctx(rng.randrange(3))
        records, misses = rng.randrange(0, 7), int(rng.random() < 0.2)
        a = in_file.charge(who, records=records, misses=misses)
        m = in_memory.charge(who, records=records, misses=misses)
        assert (a.refusal is None) == (m.refusal is None)
        if a.refusal is not None and m.refusal is not None:
            refusals += 1
            assert (a.refusal.rule, a.refusal.used) == (m.refusal.rule, m.refusal.used)
            assert a.refusal.retry_after == pytest.approx(m.refusal.retry_after)
    assert 200 < refusals < 3800  # both refused often, and allowed often
    fc.close()
