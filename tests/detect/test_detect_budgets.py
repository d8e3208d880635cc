"""Read budgets over in-process counters, a counters file and the real Redis."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from detect_helpers import FakeClock

from pivault.detect import (
    Budget,
    BudgetExceeded,
    BudgetPolicy,
    Budgets,
    Counters,
    DetectUnavailable,
    FileCounters,
    RedisCounters,
    counters_from_url,
)
from pivault.detect.budgetmap import BudgetMap
from pivault.policy import Policy
from pivault.policy.context import AccessContext

OFFICER = AccessContext(principal="officer-17", role="officer", purpose="case_investigation",
                        token_id="aaaaaaaaaaaaaaaa", source="api")
OTHER = AccessContext(principal="officer-18", role="officer", purpose="case_investigation",
                      token_id="bbbbbbbbbbbbbbbb", source="api")


def _ids(prefix: str, n: int) -> list[str]:
    return [f"r_{prefix}{i:05d}" for i in range(n)]


def _budgets(counters: Counters, **kw: object) -> Budgets:
    per = Budget(records_per_minute=30, records_per_hour=100, records_per_day=1000, misses_per_hour=5,
                 distinct_per_day=500)
    return Budgets(BudgetPolicy(roles={"officer": per}, **kw), counters)  # type: ignore[arg-type]


def test_minute_budget_refuses_and_says_when(counters: Counters, clock: FakeClock) -> None:
    b = _budgets(counters)
    for i in range(30):
        assert b.charge(OFFICER, records=1, record_ids=[f"r_{i}"]).allowed
    c = b.charge(OFFICER, records=1, record_ids=["r_x"])
    assert not c.allowed and c.refusal is not None
    assert c.refusal.rule == "principal.records_per_minute"
    assert (c.refusal.limit, c.refusal.used) == (30, 30)
    # a window of W seconds lets a read go W to W + W/59 seconds after it (its bucket's end)
    assert 0 < c.refusal.retry_after <= 60 + 60 / 59 + 1e-6
    assert c.scope == "principal" and c.breaches == 1
    clock.advance(c.refusal.retry_after + 0.01)
    assert b.charge(OFFICER, records=1, record_ids=["r_x"]).allowed
    # another principal of the same role has its own budget
    assert b.charge(OTHER, records=30, record_ids=_ids("o", 30)).allowed


def test_sliding_window(counters: Counters, clock: FakeClock) -> None:
    b = _budgets(counters)
    assert b.charge(OFFICER, records=20, record_ids=_ids("a", 20)).allowed
    clock.advance(30)
    assert b.charge(OFFICER, records=10, record_ids=_ids("b", 10)).allowed
    clock.advance(20)
    c = b.charge(OFFICER, records=1, record_ids=["r_c"])
    assert not c.allowed and c.refusal is not None
    # the 20 from t=0 leave the window once a whole minute has passed, at the end of their
    # bucket (at most 60/59 s later): 10 s from now, or a little more
    assert 10 <= c.refusal.retry_after <= 10 + 60 / 59 + 1e-6
    clock.advance(c.refusal.retry_after + 0.01)
    assert b.charge(OFFICER, records=20, record_ids=_ids("c", 20)).allowed


def test_refusal_moves_no_counter(counters: Counters) -> None:
    b = _budgets(counters)
    assert b.charge(OFFICER, records=25, record_ids=_ids("a", 25)).allowed
    assert not b.charge(OFFICER, records=10, record_ids=_ids("b", 10)).allowed  # all or nothing
    assert b.charge(OFFICER, records=5, record_ids=_ids("c", 5)).allowed


def test_hour_budget(counters: Counters, clock: FakeClock) -> None:
    b = _budgets(counters)
    for _ in range(3):
        assert b.charge(OFFICER, records=30, record_ids=_ids(uuid.uuid4().hex[:4], 30)).allowed
        clock.advance(62)
    c = b.charge(OFFICER, records=30, record_ids=_ids("z", 30))
    assert c.refusal is not None and c.refusal.rule == "principal.records_per_hour"


def test_misses_per_hour(counters: Counters) -> None:
    b = _budgets(counters)
    for _ in range(5):
        assert b.charge(OFFICER, misses=1).allowed
    c = b.charge(OFFICER, misses=1)
    assert c.refusal is not None and c.refusal.rule == "principal.misses_per_hour"
    assert 3500 < c.refusal.retry_after <= 3600 + 3600 / 59 + 1e-6
    assert b.charge(OFFICER, records=1, record_ids=["r_hit"]).allowed  # hits still pass


def test_distinct_per_day(counters: Counters, clock: FakeClock) -> None:
    per = Budget(distinct_per_day=10)
    b = Budgets(BudgetPolicy(roles={"officer": per}), counters)
    assert b.charge(OFFICER, records=10, record_ids=_ids("a", 10)).allowed
    for _ in range(5):  # the same records again: nothing new
        assert b.charge(OFFICER, records=3, record_ids=_ids("a", 3)).allowed
    c = b.charge(OFFICER, records=1, record_ids=["r_new"])
    assert c.refusal is not None and c.refusal.rule == "principal.distinct_per_day"
    assert 0 < c.refusal.retry_after <= 43200 + 1
    clock.advance(43201)  # next UTC day
    assert b.charge(OFFICER, records=1, record_ids=["r_new"]).allowed


def test_vault_wide_limit_is_not_a_breach(counters: Counters) -> None:
    b = _budgets(counters, vault=Budget(records_per_minute=40))
    assert b.charge(OFFICER, records=25, record_ids=_ids("a", 25)).allowed
    c = b.charge(OTHER, records=20, record_ids=_ids("b", 20))
    assert c.refusal is not None and c.refusal.rule == "vault.records_per_minute"
    assert (c.scope, c.breaches) == ("vault", 0)


def test_a_miss_is_refused_while_the_vault_cannot_take_a_record(counters: Counters, clock: FakeClock) -> None:
    # while the vault-wide records budget is spent, a lookup that finds nothing is refused as a
    # hit is: answered, the miss would tell that the number is not in the vault, and the hit's
    # refusal that it is, without a breach of anyone's own budget
    b = _budgets(counters, vault=Budget(records_per_minute=3, records_per_hour=1000))
    assert b.charge(OFFICER, records=3, record_ids=_ids("a", 3)).allowed
    assert b.charge(OTHER, misses=1).allowed is False
    hit = b.charge(OTHER, records=1, record_ids=_ids("b", 1))
    miss = b.charge(OTHER, misses=1)
    for c in (hit, miss):
        assert c.refusal is not None and c.refusal.rule == "vault.records_per_minute"
        assert (c.scope, c.breaches, c.refusal.used) == ("vault", 0, 3)
    assert hit.refusal is not None and miss.refusal is not None
    assert miss.refusal.retry_after == pytest.approx(hit.refusal.retry_after)
    clock.advance(miss.refusal.retry_after + 0.01)
    # the probes charged nothing: not a record to the vault, not a miss to the caller (5 an hour)
    for _ in range(5):
        assert b.charge(OTHER, misses=1).allowed
    refused = b.charge(OTHER, misses=1)
    assert refused.refusal is not None and refused.refusal.rule == "principal.misses_per_hour"
    assert b.charge(OTHER, records=3, record_ids=_ids("c", 3)).allowed


def test_role_total(counters: Counters) -> None:
    b = _budgets(counters, role_totals={"officer": Budget(records_per_minute=35)})
    assert b.charge(OFFICER, records=20, record_ids=_ids("a", 20)).allowed
    c = b.charge(OTHER, records=20, record_ids=_ids("b", 20))
    assert c.refusal is not None and c.refusal.rule == "role.records_per_minute"


def test_principal_override_and_unbudgeted_roles(counters: Counters) -> None:
    b = _budgets(counters, principals={"officer-18": Budget(records_per_minute=2)})
    assert not b.charge(OTHER, records=3, record_ids=_ids("a", 3)).allowed
    admin = AccessContext(principal="root", role="operator", purpose="administration")
    assert b.charge(admin, records=10_000, record_ids=_ids("z", 100)).allowed


def test_breaches_counted_per_principal(counters: Counters) -> None:
    """Whichever of its tokens asks, a principal's breaches add up."""
    b = _budgets(counters)
    assert b.charge(OFFICER, records=30, record_ids=_ids("a", 30)).allowed
    assert [b.charge(OFFICER, records=1, record_ids=["r_q"]).breaches for _ in range(3)] == [1, 2, 3]
    again = dataclasses.replace(OFFICER, token_id="bbbbbbbbbbbbbbbb")
    assert b.charge(again, records=1, record_ids=["r_q"]).breaches == 4


def test_too_large_request(counters: Counters) -> None:
    c = _budgets(counters).charge(OFFICER, records=31, record_ids=_ids("a", 31))
    assert c.refusal is not None and c.refusal.retry_after == 60
    # whatever keeps the counters says what was asked: no wait lets this one through, and the
    # refusal says so instead of "retry after 60 s"
    assert (c.refusal.amount, c.refusal.limit) == (31, 30)
    err = BudgetExceeded(c.refusal)
    assert "the request needs 31" in err.message and "no wait" in err.message
    assert "retry after" not in err.message and err.hint is not None and "policy" in err.hint


def test_a_request_larger_than_the_vault_wide_limit_says_who_sets_it(counters: Counters) -> None:
    b = _budgets(counters, vault=Budget(records_per_minute=20))
    c = b.charge(OFFICER, records=25, record_ids=_ids("a", 25))
    assert c.refusal is not None and c.refusal.rule == "vault.records_per_minute"
    err = BudgetExceeded(c.refusal)
    assert "allows 20, the request needs 25" in err.message
    assert err.hint is not None and "[detect.vault]" in err.hint and "operator" in err.hint
    # a charge that fits once the window moves on keeps its wait, and names the same place
    assert b.charge(OFFICER, records=15, record_ids=_ids("b", 15)).allowed
    again = b.charge(OTHER, records=10, record_ids=_ids("c", 10))
    assert again.refusal is not None and again.refusal.amount == 10
    late = BudgetExceeded(again.refusal)
    assert "retry after" in late.message and late.hint is not None and "[detect.vault]" in late.hint


def test_budget_from_the_policy_file() -> None:
    bp = BudgetPolicy.from_policy(Policy.default(), vault={"records_per_minute": 5000})
    assert bp.for_principal("anyone", "officer").records_per_minute == 30
    assert bp.vault.records_per_minute == 5000
    assert bp.for_principal("x", "admin") == Budget()


def test_exception_carries_retry_after() -> None:
    from pivault.detect.counters import Refusal

    err = BudgetExceeded(Refusal("principal.records_per_minute", 12.2, 30, 30))
    assert err.retry_after == 13 and err.code == "budget.exceeded"
    assert "officer" not in str(err)


def test_redis_unreachable_fails_closed() -> None:
    rc = RedisCounters("redis://127.0.0.1:1/0", timeout=0.2)
    b = Budgets(BudgetPolicy(roles={"officer": Budget(records_per_minute=5)}), rc)
    t0 = time.monotonic()
    with pytest.raises(DetectUnavailable) as info:
        b.charge(OFFICER, records=1, record_ids=["r_1"])
    assert info.value.code == "detect.unavailable"
    assert time.monotonic() - t0 < 2


def _hammer(url: str, ns: str, n: int, out: mp.Queue[int]) -> None:
    policy = BudgetPolicy(roles={"officer": Budget(records_per_minute=100)})
    b = Budgets(policy, counters_from_url(url, namespace=ns))
    ok = sum(b.charge(OFFICER, records=1, record_ids=[f"r_{i}"]).allowed for i in range(n))
    out.put(ok)


def _hammer_distinct(url: str, first: int, out: mp.Queue[int]) -> None:
    policy = BudgetPolicy(roles={"officer": Budget(distinct_per_day=50)})
    b = Budgets(policy, counters_from_url(url))
    # each process reads 40 records; 20 of them are read by another process too
    ok = sum(b.charge(OFFICER, records=1, record_ids=[f"r_{first + i}"]).allowed for i in range(40))
    out.put(ok)


def _run_all(target: Any, args: list[tuple[Any, ...]]) -> list[int]:
    ctx = mp.get_context("fork")
    q: mp.Queue[int] = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, q)) for a in args]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    return [q.get(timeout=5) for _ in procs]


def test_file_budget_holds_across_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'run' / 'counters.db'}"
    assert sum(_run_all(_hammer, [(url, "v", 60)] * 4)) == 100  # 240 attempts, exactly the budget
    # a fifth process, later (a restarted worker): the minute's budget is still spent
    assert _run_all(_hammer, [(url, "v", 5)]) == [0]


def test_file_distinct_budget_holds_across_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'counters.db'}"
    # ids 0-39, 20-59, 40-79: 80 distinct ids asked for, at most 50 granted in all
    granted = _run_all(_hammer_distinct, [(url, 0), (url, 20), (url, 40)])
    fc = FileCounters(tmp_path / "counters.db")
    day = int(time.time() // 86400)
    members = BudgetMap(fc.budgets_path).member_count(day)
    assert fc.distinct_count(f"b:p:{OFFICER.principal}:distinct", day) == members == 50  # counted once each
    assert sum(granted) >= 50  # a re-read of an id already counted is granted


def test_file_counters_fail_closed(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("")
    b = Budgets(BudgetPolicy(roles={"officer": Budget(records_per_minute=5)}),
                FileCounters(tmp_path / "not-a-dir" / "counters.db"))
    with pytest.raises(DetectUnavailable) as info:
        b.charge(OFFICER, records=1, record_ids=["r_1"])
    assert info.value.code == "detect.unavailable"

    # another process holds the file's write lock past the timeout: refused, not waited on forever
    path = tmp_path / "counters.db"
    fc = FileCounters(path, timeout=0.2)
    b = Budgets(BudgetPolicy(roles={"officer": Budget(records_per_minute=5)}), fc)
    assert b.charge(OFFICER, records=1, record_ids=["r_1"]).allowed
    holder = _lock_holder(Path(f"{path}.lock"))
    try:
        t0 = time.monotonic()
        with pytest.raises(DetectUnavailable):
            b.charge(OFFICER, records=1, record_ids=["r_2"])
        assert time.monotonic() - t0 < 2
    finally:
        holder.kill()  # a process that dies holding the lock lets it go
        holder.wait(10)
    assert b.charge(OFFICER, records=1, record_ids=["r_2"]).allowed  # and works again after


def _lock_holder(path: Path) -> subprocess.Popen[str]:
    """Another process that takes the counters' lock and keeps it."""
    code = ("import fcntl, sys, time\nf = open(sys.argv[1], 'a')\nfcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_file_counters_are_private_and_hold_no_names_or_ids(tmp_path: Path) -> None:
    path = tmp_path / "run" / "counters.db"
    counters = counters_from_url(f"sqlite:///{path}")
    b = Budgets(BudgetPolicy(roles={"officer": Budget(records_per_minute=5, distinct_per_day=9)}), counters)
    assert b.charge(OFFICER, records=1, record_ids=["r_0123456789abcdefghijklmnop"]).allowed
    assert counters.incr("breach:aaaaaaaaaaaaaaaa:1", 60) == 1  # the SQLite file is made too
    files = sorted(p.name for p in path.parent.iterdir())
    assert {"counters.db", "counters.db.budgets", "counters.db.lock"} <= set(files)
    for f in path.parent.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # the budgets map holds digests: neither the principal nor the record id, in any form
    raw = (path.parent / "counters.db.budgets").read_bytes()
    for needle in (OFFICER.principal, "r_0123456789abcdefghijklmnop", "0123456789abcdefghijklmnop"):
        assert needle.encode() not in raw
        assert needle.encode("utf-16-le") not in raw


def test_redis_budget_holds_across_processes(redis_url: str) -> None:
    ns = "test-" + uuid.uuid4().hex[:8]
    ctx = mp.get_context("fork")
    q: mp.Queue[int] = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(redis_url, ns, 60, q)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    total = sum(q.get(timeout=5) for _ in procs)
    RedisCounters(redis_url, namespace=ns).flush_namespace()
    assert total == 100  # 240 attempts, exactly the budget granted


def test_a_clock_stepping_back_keeps_the_window(counters: Counters, clock: FakeClock) -> None:
    """A node's clock set back a few seconds (NTP) must not forget the newer buckets' reads."""
    b = Budgets(BudgetPolicy(roles={"officer": Budget(records_per_minute=10)}), counters)
    for i in range(6):
        assert b.charge(OFFICER, records=1, record_ids=[f"r_{i}"]).allowed
    clock.advance(-3)
    for i in range(6, 10):
        assert b.charge(OFFICER, records=1, record_ids=[f"r_{i}"]).allowed
    clock.advance(5)
    assert not b.charge(OFFICER, records=1, record_ids=["r_10"]).allowed  # all ten still count


def test_file_budget_holds_across_threads(tmp_path: Path) -> None:
    """A worker's thread pool charges too: threads of one process get exactly the budget."""
    import threading

    b = Budgets(BudgetPolicy(roles={"officer": Budget(records_per_minute=100, distinct_per_day=150)}),
                FileCounters(tmp_path / "counters.db"))
    granted: list[int] = []

    def hammer(k: int) -> None:
        ok = sum(b.charge(OFFICER, records=1, record_ids=[f"r_{k}_{i}"]).allowed for i in range(30))
        granted.append(ok)

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(granted) == 8  # no thread was refused its counters (8 opening a new file at once)
    assert sum(granted) == 100  # 240 attempts from 8 threads
