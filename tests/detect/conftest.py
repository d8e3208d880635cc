"""Fixtures for budgets, detection, canaries and alerts: real stores, real Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from detect_helpers import FakeClock

from pivault.crypto import Argon2Params, Keyring, PassphraseProvider
from pivault.detect import Counters, FileCounters, MemoryCounters, RedisCounters
from pivault.store import Database, migrate

CHEAP = Argon2Params(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture
def clock() -> FakeClock:
    # mid-day, so day-based budgets do not roll over during a test
    return FakeClock(1_900_000_000.0 - 1_900_000_000.0 % 86400 + 43200)


@pytest.fixture(params=["memory", "file", "redis"])
def counters(request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path) -> Iterator[Counters]:
    """Each test using this runs on in-process counters, on a counters file and on the real Redis."""
    if request.param == "memory":
        yield MemoryCounters(clock)
        return
    if request.param == "file":
        fc = FileCounters(tmp_path / "run" / "counters.db", clock=clock)
        yield fc
        fc.close()
        return
    url = request.getfixturevalue("redis_url")
    rc = RedisCounters(url, namespace="test-" + uuid.uuid4().hex[:8], clock=clock)
    try:
        yield rc
    finally:
        rc.flush_namespace()


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    provider = PassphraseProvider("synthetic-detect-passphrase", CHEAP)
    return Keyring.create(tmp_path / "keys" / "keyring.json", provider, expected_population=10**6)


@pytest.fixture
def db(store_url: str) -> Iterator[Database]:
    database = Database(store_url)
    migrate(database)
    yield database
    database.close()


@pytest.fixture
def sqlite_db(sqlite_url: str) -> Iterator[Database]:
    database = Database(sqlite_url)
    migrate(database)
    yield database
    database.close()
