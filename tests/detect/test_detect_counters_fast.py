"""The budget charge's own connection to Redis: each charge counted once, whatever goes wrong."""

from __future__ import annotations

import uuid

import redis

from pivault.detect import RedisCounters
from pivault.detect.counters import WindowRule


def test_charge_survives_a_lost_script_and_a_dropped_connection(redis_url: str) -> None:
    rc = RedisCounters(redis_url, namespace="test-" + uuid.uuid4().hex[:8])
    rules = [WindowRule("principal.records_per_minute", "b:p:t:rpm", 5, 60.0, 1)]
    try:
        assert rc.charge(rules, []) is None
        rc._charge.sha = "0" * 40  # as after a restart or SCRIPT FLUSH: the server lacks the script
        assert rc.charge(rules, []) is None
        conn = rc._own.conn
        conn.send_command("CLIENT", "ID")
        client_id = conn.read_response()
        redis.Redis.from_url(redis_url).client_kill_filter(_id=client_id)  # the server drops it
        assert rc.charge(rules, []) is None
        assert rc.charge(rules, []) is None
        assert rc.charge(rules, []) is None
        refusal = rc.charge(rules, [])
        assert refusal is not None and refusal.used == 5  # five charges, each counted once
    finally:
        rc.flush_namespace()


def test_charge_fails_closed_when_redis_is_unreachable() -> None:
    from pivault.detect import DetectUnavailable

    rc = RedisCounters("redis://127.0.0.1:1/0", timeout=0.2)
    rules = [WindowRule("principal.records_per_minute", "b:p:t:rpm", 5, 60.0, 1)]
    for _ in range(2):
        try:
            rc.charge(rules, [])
        except DetectUnavailable as exc:
            assert exc.code == "detect.unavailable"
        else:
            raise AssertionError("a charge without Redis must be refused")


def test_redis_windows_agree_with_in_process_ones_over_time(redis_url: str) -> None:
    """Random charges at random times (bursts, idle minutes, whole idle windows): the script's
    running sums refuse exactly when the in-process sliding windows do, with the same figures."""
    import random

    from detect_helpers import FakeClock

    from pivault.detect import MemoryCounters

    rnd = random.Random(20261129)
    clock = FakeClock(1_900_000_000.0 - 1_900_000_000.0 % 86400 + 3600)
    mem = MemoryCounters(clock)
    rc = RedisCounters(redis_url, namespace="test-" + uuid.uuid4().hex[:8], clock=clock)
    specs = [("p.records_per_minute", "b:p:r:rpm", 12, 60.0), ("p.records_per_hour", "b:p:r:rph", 90, 3600.0),
             ("p.records_per_day", "b:p:r:rpd", 400, 86400.0)]
    try:
        refused = 0
        for _ in range(900):
            clock.advance(rnd.choice((0.0, 0.2, 0.9, 1.0, 3.0, 7.5, 30.0, 61.0, 400.0, 3700.0)))
            amount = rnd.choice((1, 1, 1, 2, 3, 5))
            rules = [WindowRule(n, k, lim, w, amount) for n, k, lim, w in specs]
            if rnd.random() < 0.05:
                # as a script that knows only buckets (an older version) leaves a hash: no sums
                plain = redis.Redis.from_url(redis_url)
                for _, key, _, _ in specs:
                    plain.hdel(rc._k(key), "-1", "-2")
            a, b = mem.charge(rules, []), rc.charge(rules, [])
            assert (a is None) == (b is None), (a, b)
            if a is not None and b is not None:
                refused += 1
                assert (a.rule, a.used, a.limit) == (b.rule, b.used, b.limit)
                assert abs(a.retry_after - b.retry_after) < 1e-6 * max(1.0, a.retry_after)
        assert 50 < refused < 850  # both outcomes were exercised
    finally:
        rc.flush_namespace()


def test_detector_buckets_reach_redis_whole_in_several_commands(redis_url: str) -> None:
    """More fields than one command carries: every field counted, the hash given its lifetime."""
    from pivault.detect.counters import _ADD_FIELDS_CHUNK

    rc = RedisCounters(redis_url, namespace="test-" + uuid.uuid4().hex[:8])
    fields = {f"pc:officer-{i % 7}|{i % 34:02d}:{1930 + i // 34:04d}": 1 + i % 3
              for i in range(2 * _ADD_FIELDS_CHUNK + 500)}
    fields["t"] = 12_345
    fields["pc:警员-甲|31:1985"] = 3  # principals are named by operators, in any script
    try:
        rc.add_fields("d:42", fields, 600.0)
        rc.add_fields("d:42", fields, 600.0)
        (got,) = rc.read_fields(["d:42"])
        assert got == {k: 2 * v for k, v in fields.items()}
        ttl_ms = redis.Redis.from_url(redis_url).pttl(rc._k("d:42"))
        assert 590_000 < ttl_ms <= 600_000
    finally:
        rc.flush_namespace()


def test_detector_buckets_survive_a_lost_script_and_a_dropped_connection(redis_url: str) -> None:
    rc = RedisCounters(redis_url, namespace="test-" + uuid.uuid4().hex[:8])
    try:
        rc.add_fields("d:7", {"t": 1, "p:a": 1}, 60.0)
        rc._add.sha = "0" * 40  # the server lacks the script
        rc.add_fields("d:7", {"t": 1, "p:a": 1}, 60.0)
        conn = rc._own.conn
        conn.send_command("CLIENT", "ID")
        client_id = conn.read_response()
        redis.Redis.from_url(redis_url).client_kill_filter(_id=client_id)  # the server drops it
        rc.add_fields("d:7", {"t": 1, "p:a": 1}, 60.0)
        rc.add_fields("d:7", {"t": 1, "p:a": 1}, 60.0)
        assert rc.read_fields(["d:7"]) == [{"t": 4, "p:a": 4}]  # four sends, each counted once
    finally:
        rc.flush_namespace()


def test_detector_buckets_fail_closed_when_redis_is_unreachable() -> None:
    from pivault.detect import DetectUnavailable

    rc = RedisCounters("redis://127.0.0.1:1/0", timeout=0.2)
    try:
        rc.add_fields("d:1", {"t": 1}, 60.0)
    except DetectUnavailable as exc:
        assert exc.code == "detect.unavailable"
    else:
        raise AssertionError("counts that cannot reach Redis must raise, not vanish")
