"""Shared fixtures: real SQLite files, real PostgreSQL schemas, real Redis.

PostgreSQL tests each get a fresh schema in the ``test`` database (dropped
afterwards), so suites can run side by side. Where the server is not
reachable the tests are skipped with the reason, never passed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_BASE = os.environ.get("PIVAULT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("PIVAULT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _pg_reachable() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_BASE, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as exc:
        return f"PostgreSQL not reachable at {PG_BASE} ({type(exc).__name__})"


_PG_SKIP: str | bool | None = False


def pg_skip_reason() -> str | None:
    global _PG_SKIP
    if _PG_SKIP is False:
        _PG_SKIP = _pg_reachable()
    return _PG_SKIP  # type: ignore[return-value]


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a new, empty schema."""
    reason = pg_skip_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have PostgreSQL: {reason}")
        pytest.skip(reason)
    import psycopg

    schema = "pvt_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_BASE else "?"
    try:
        yield f"{PG_BASE}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_BASE, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    d = tmp_path / "data"
    d.mkdir()
    return f"sqlite:///{d / 'vault.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test using this runs on both backends."""
    if request.param == "sqlite":
        d = tmp_path / "data"
        d.mkdir(exist_ok=True)
        yield f"sqlite:///{d / 'vault.db'}"
    else:
        yield request.getfixturevalue("pg_url")


def _redis_reason() -> str | None:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        return None
    except Exception as exc:
        return f"Redis not reachable at {REDIS_URL} ({type(exc).__name__})"


@pytest.fixture
def redis_url() -> str:
    reason = _redis_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have Redis: {reason}")
        pytest.skip(reason)
    return REDIS_URL
