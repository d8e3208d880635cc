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
