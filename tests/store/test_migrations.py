"""Upgrading a live vault: `migrate` killed half-way, two at once, a schema from a newer pivault, a
store whose tables disagree with its record of steps. Real SQLite files, real PostgreSQL schemas,
real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pivault.store import connect
from pivault.store.db import Database, StoreError
from pivault.store.migrations import _REGISTRY, _load_components, migrate, needs_migration


def _recorded(db: Database) -> list[tuple[str, int]]:
    return [(str(c), int(v)) for c, v in db.query(
        "SELECT component, version FROM schema_migrations ORDER BY component, version")]


def _all_steps() -> list[tuple[str, int]]:
    _load_components()
    return sorted((c, s.version) for c, steps in _REGISTRY.items() for s in steps)


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


_MIGRATE = """
import sys
from pivault.store import connect, migrate
db = connect(sys.argv[1])
print(len(migrate(db)))
"""


def _bare_store(url: str) -> Database:
    """A store with an empty record of steps, as a vault made before any step was applied."""
    db = connect(url)
    db.execute("CREATE TABLE schema_migrations (component TEXT NOT NULL, version INTEGER NOT NULL,"
               " description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL,"
               " PRIMARY KEY (component, version))")
    return db


def test_two_migrators_at_once_apply_each_step_once(store_url: str) -> None:
    """Both read the same missing steps, then queue: the second finds them applied, and neither fails."""
    db = _bare_store(store_url)
    blocker = connect(store_url)
    if blocker.dialect == "sqlite":
        blocker.execute("BEGIN IMMEDIATE")      # readers go on (WAL); writers wait
        release = "COMMIT"
    else:
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE schema_migrations IN ACCESS EXCLUSIVE MODE")
        release = "COMMIT"
    procs = [_python(_MIGRATE, store_url) for _ in range(2)]
    try:
        time.sleep(3.0)  # both have started, read the record of steps (or wait to) and queue
    finally:
        blocker.execute(release)
        blocker.close()
    results = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
        assert "Traceback" not in err
    applied = sorted(int(out) for out, _ in results)
    assert applied[0] + applied[1] == len(_all_steps())     # each step applied by one of them
    assert _recorded(db) == _all_steps()
    assert not needs_migration(db)
    db.close()


_SLOW_STEP = """
import sys, time
from pathlib import Path
from pivault.store import connect, migrate
from pivault.store.migrations import Migration, register

def step(db):
    db.execute("CREATE TABLE zz_upgrade (id INTEGER PRIMARY KEY)")
    db.execute("INSERT INTO zz_upgrade (id) VALUES (1)")
    if sys.argv[2] == "slow":
        Path(sys.argv[3]).write_text("in the step")
        time.sleep(120)

register(Migration("zz_upgrade", 1, "a step the operator's kill lands in", step, step))
print(len(migrate(connect(sys.argv[1]))))
"""


def test_migrate_killed_in_a_step_leaves_it_unapplied_and_the_rerun_completes(
        store_url: str, tmp_path: Path) -> None:
    """kill -9 in the middle of a step: nothing of it stays; the next run applies it once."""
    marker = tmp_path / "in-step"
    proc = _python(_SLOW_STEP, store_url, "slow", str(marker))
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    db = connect(store_url)
    assert "zz_upgrade" not in db.tables()               # no half of the step
    assert ("zz_upgrade", 1) not in _recorded(db)
    assert not needs_migration(db)                         # every step before it is whole
    rerun = _python(_SLOW_STEP, store_url, "fast", str(marker))
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert out.strip() == "1"
    assert db.query("SELECT id FROM zz_upgrade") == [(1,)]   # applied once
    assert _recorded(db).count(("zz_upgrade", 1)) == 1
    db.close()


@pytest.mark.parametrize("row", [("records", 99), ("zz_from_the_future", 1)])
def test_a_schema_newer_than_this_pivault_is_refused_and_not_written(
        store_url: str, row: tuple[str, int]) -> None:
    db = connect(store_url)
    migrate(db)
    db.execute("DELETE FROM schema_migrations WHERE component = 'alerts'")   # a step still missing
    db.execute("DROP TABLE alerts")
    db.execute("INSERT INTO schema_migrations (component, version, description, applied_at)"
               " VALUES (?, ?, 'a newer pivault', 0)", row)
    before, tables = _recorded(db), db.tables()
    for call in (migrate, needs_migration):
        with pytest.raises(StoreError) as info:
            call(db)
        assert info.value.code == "store.schema_newer"
        msg = str(info.value)
        assert "\n" not in msg and f"{row[0]} {row[1]}" in msg and "newer than this pivault" in msg
    assert _recorded(db) == before and db.tables() == tables   # alerts 1 not applied to it
    db.close()


def test_a_step_recorded_but_its_table_gone_is_refused(store_url: str) -> None:
    db = connect(store_url)
    migrate(db)
    db.execute("DROP TABLE import_reject_numbers")
    for call in (migrate, needs_migration):
        with pytest.raises(StoreError) as info:
            call(db)
        assert info.value.code == "store.schema_torn"
        assert str(info.value) == ("the store records schema step imports:2 as applied, but its table "
                                   "import_reject_numbers is missing")
    db.close()


def test_a_table_whose_step_is_not_recorded_is_refused(store_url: str) -> None:
    db = connect(store_url)
    migrate(db)
    db.execute("DELETE FROM schema_migrations WHERE component = 'imports' AND version = 2")
    before = _recorded(db)
    with pytest.raises(StoreError) as info:
        migrate(db)
    assert info.value.code == "store.schema_torn"
    assert "table import_reject_numbers of schema step imports:2" in str(info.value)
    assert _recorded(db) == before
    db.close()


def test_migrate_leaves_another_schema_of_the_search_path_alone(pg_url: str) -> None:
    """A vault in a new schema, with another vault's schema further down its search path, gets its
    own record of steps and its own tables."""
    import psycopg

    other = pg_url.rsplit("%3D", 1)[1]
    db = connect(pg_url)
    migrate(db)
    schema = other + "_b"
    base = pg_url.rsplit("?", 1)[0]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        second = connect(f"{base}?options=-csearch_path%3D{schema},{other}")
        assert len(migrate(second)) == len(_all_steps())
        assert "schema_migrations" in second.tables() and "records" in second.tables()
        assert not needs_migration(second)
        second.close()
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    db.close()
