"""Drill: `kill -9` of `pivault restore` at random points, on both backends.

Into a store that was emptied (the wipe took the database), and with
``--quarantine`` over a store an intruder damaged (residents erased through
the door, every record deleted in the database, a ransom note left). After
every kill the store is either the old one, untouched, or the backup
restored whole: its rows, erased residents purged, the intruder's audit
entries salvaged, ``backup.restore`` last in its trail. Running the same
command again then finishes the restore, the audit anchor included, so
that `audit verify` passes; no staged copy is left behind.

Some kills land anywhere in the run; others wait until the store visibly
changed (the renamed file, the committed rows), where work that follows a
restore's commit would be cut short.
"""

from __future__ import annotations

import contextlib
import csv
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent.parent / "vault"))

from test_vault_drills import _kill_midway
from vault_support import cheap_cli_env, make_residents
from vault_support import run_cli as run
from vault_support import spawn_cli as _spawn

from pivault.audit import entries
from pivault.backup import Container, load_verify_key, restore
from pivault.cli.main import app as main_app
from pivault.store.db import Database, parse_url

pytestmark = pytest.mark.slow

RESIDENTS = 400
ERASED = 5
KILLS = 5


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return cheap_cli_env(tmp_path, monkeypatch, "")


def _set_up(env: dict[str, str], tmp_path: Path, store: str | None) -> dict[str, Any]:
    home = tmp_path / "home"
    args = ["init", "--home", str(home), "--expected-population", "100000", "--json"]
    info = json.loads(run(env, *args, *(["--store", store] if store else [])).stdout)
    src = tmp_path / "residents.csv"
    people = make_residents(RESIDENTS, seed=97)
    with open(src, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["name", "id_number", "mobile", "address"])
        w.writeheader()
        w.writerows({k: p[k] for k in ("name", "id_number", "mobile", "address")} for p in people)
    run(env, "import", str(src), "--home", str(home))
    backup = tmp_path / "shelf" / "vault.pvb"
    manifest = json.loads(run(env, "backup", "--out", str(backup), "--home", str(home), "--json").stdout)
    assert manifest["counts"]["records"] == RESIDENTS
    with Container.open(backup) as c:
        head = c.manifest["audit_head"]
    victims = [json.loads(run(env, "find", "--home", str(home), "--id-number", p["id_number"],
                              "--json").stdout)[0]["record_id"] for p in people[:ERASED]]
    return {"home": home, "store": info["store"], "backup": backup, "victims": victims,
            "keyring": info["keyring"], "vault_id": info["vault_id"],
            "head_seq": int(head["seq"]) if head else 0}


def _intrude(env: dict[str, str], s: dict[str, Any]) -> None:
    """Erase residents through the door with a stolen login, then wipe the rest in the database."""
    for record_id in s["victims"]:
        run(env, "erase", record_id, "--yes", "--home", str(s["home"]))
    with Database(s["store"]) as db:
        db.execute("DELETE FROM blind_index")
        db.execute("DELETE FROM records")
        db.execute("CREATE TABLE ransom_note (message TEXT)")
        db.execute("INSERT INTO ransom_note (message) VALUES ('your data is gone; pay 10 BTC')")


def _empty(s: dict[str, Any]) -> None:
    """The wipe took the database: the SQLite files are gone, the PostgreSQL schema is bare."""
    url = parse_url(s["store"])
    if url.dialect == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(url.target + suffix).unlink(missing_ok=True)
        return
    with Database(s["store"]) as db:
        schema = db.query_one("SELECT current_schema()")
        assert schema is not None
        db.execute(f'DROP SCHEMA "{schema[0]}" CASCADE')
        db.execute(f'CREATE SCHEMA "{schema[0]}"')


def _look(store: str) -> tuple[Any, ...]:
    """What the store holds, read without creating it: its tables with their row counts.

    Read again if a restore running meanwhile moved a table between its listing and its count.
    """
    import psycopg

    url = parse_url(store)
    if url.dialect == "sqlite" and not Path(url.target).exists():
        return ()  # as good as an empty file, which opening the store makes
    while True:
        with Database(store) as db:
            if db.dialect == "sqlite":
                tables = [r[0] for r in db.query("SELECT name FROM sqlite_master WHERE type = 'table'"
                                                 " AND name NOT LIKE 'sqlite_%'")]
            else:
                tables = [r[0] for r in db.query("SELECT table_name FROM information_schema.tables"
                                                 " WHERE table_schema = current_schema()")]
            try:
                counts = []
                for t in sorted(tables):
                    row = db.query_one(f'SELECT COUNT(*) FROM "{t}"')
                    counts.append((t, row[0] if row else None))
                return tuple(counts)
            except psycopg.errors.UndefinedTable:
                continue


def _whole(env: dict[str, str], s: dict[str, Any], records: int, salvaged: int, *,
           verified: bool = True) -> str | None:
    """None if the store is the backup restored whole; else what is missing.

    ``verified``: `audit verify` passes too, the home's audit anchor included. The anchor is a file
    outside the store that follows it once it is in place: a kill in between leaves it behind, and
    only running the command again brings it along.
    """
    seen = dict(_look(s["store"]) or ())
    if seen.get("records") != records:
        return f"{seen.get('records')} records, not {records}"
    if "ransom_note" in seen:
        return "the ransom note is still there"
    with Database(s["store"]) as db:
        trail = list(entries(db, after_seq=s["head_seq"]))
    if not trail or trail[-1].operation != "backup.restore":
        return f"the trail ends with {trail[-1].operation if trail else 'the backup'}, not backup.restore"
    if sum(e.operation == "erase" for e in trail) != salvaged:
        return "the intruder's erasures were not salvaged"
    if not verified:
        return None
    verified_ = CliRunner().invoke(main_app, ["audit", "verify", "--home", str(s["home"]), "--json"], env=env)
    if verified_.exit_code != 0 or not json.loads(verified_.stdout)["ok"]:
        return f"audit verify fails: {verified_.output[-500:]}"
    return None


def _await_change(store: str, before: tuple[Any, ...], proc: subprocess.Popen[str]) -> None:
    """Until the store shows the restore's work (or the process ended)."""
    url = parse_url(store)
    deadline = time.monotonic() + 120
    if url.dialect == "sqlite":
        target = Path(url.target)

        def mark() -> Any:
            try:
                st = target.stat()
                return st.st_ino, st.st_size
            except FileNotFoundError:
                return None

        first = mark()
        while proc.poll() is None and mark() == first and time.monotonic() < deadline:
            time.sleep(0.001)
        return
    while proc.poll() is None and time.monotonic() < deadline:
        if _look(store) != before:
            return
        time.sleep(0.005)


def _quarantines(s: dict[str, Any]) -> list[str]:
    """The quarantined copies of this vault's store: files beside it, or PostgreSQL schemas."""
    url = parse_url(s["store"])
    if url.dialect == "sqlite":
        target = Path(url.target)
        return sorted(str(q) for q in target.parent.glob(target.name + ".quarantine-*")
                      if not q.name.endswith(("-wal", "-shm", "-journal")))
    with Database(s["store"]) as db:
        schemas = [r[0] for r in db.query("SELECT nspname FROM pg_namespace WHERE nspname LIKE ?",
                                          ("pivault_quarantine_%",))]
        ours = []
        for q in schemas:  # other tests' quarantines share the database: only this vault's count
            with contextlib.suppress(Exception):
                row = db.query_one(f'SELECT value FROM "{q}".vault_meta WHERE key = \'vault_id\'')
                if row is not None and row[0] == s["vault_id"]:
                    ours.append(q)
        return sorted(ours)


def _holds_ransom_note(s: dict[str, Any], quarantine: str) -> bool:
    if parse_url(s["store"]).dialect == "sqlite":
        with Database(f"sqlite:///{quarantine}") as db:
            return db.table_exists("ransom_note")
    with Database(s["store"]) as db:
        return db.query_one("SELECT to_regclass(?)", (f'"{quarantine}".ransom_note',)) != (None,)


def _reset(env: dict[str, str], s: dict[str, Any], damaged: bool) -> None:
    """Back to the moment before the restore: the store emptied, or damaged by the intruder."""
    for q in _quarantines(s):
        if parse_url(s["store"]).dialect == "sqlite":
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(q + suffix).unlink(missing_ok=True)
        else:
            with Database(s["store"]) as db:
                db.execute(f'DROP SCHEMA "{q}" CASCADE')
    _empty(s)
    if damaged:
        restore(s["backup"], s["store"], load_verify_key(s["keyring"]), vault_id=s["vault_id"])
        _intrude(env, s)


def _staged_leftovers(s: dict[str, Any]) -> list[str]:
    url = parse_url(s["store"])
    if url.dialect != "sqlite":
        return []
    target = Path(url.target)
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.restore-"))


def _drill(env: dict[str, str], s: dict[str, Any], command: list[str], *, damaged: bool,
           rng: random.Random) -> None:
    """From the same starting point each time, kill the restore at a random point, look, run it again.

    After each kill: the old store or the restored one whole. After each rerun: the restore
    finished (into a store the killed run had already filled: said so, the audit anchor brought
    along), `audit verify` passes, no staged copy is left.
    """
    records, salvaged = (RESIDENTS - ERASED, ERASED) if damaged else (RESIDENTS, 0)
    _reset(env, s, damaged)
    t0 = time.monotonic()
    proc = _spawn(env, *command)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    full = time.monotonic() - t0
    assert _whole(env, s, records, salvaged) is None
    outcomes = []
    for attempt in range(KILLS):
        _reset(env, s, damaged)
        before = _look(s["store"])
        proc = _spawn(env, *command)
        if attempt % 2:
            _await_change(s["store"], before, proc)  # the store changed: kill what follows
            _kill_midway(proc, 0, rng.uniform(0.0, 0.05))
        else:
            _kill_midway(proc, 0, rng.uniform(0.0, full))
        restored = _look(s["store"]) != before
        if restored:
            missing = _whole(env, s, records, salvaged, verified=False)
            assert missing is None, f"kill {attempt}: neither the old store nor the restored one: {missing}"
        outcomes.append(restored)
        proc = _spawn(env, *command)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]
        if restored and not damaged:
            # already restored: the same command says so, and brings the audit anchor along
            assert "already holds backup" in out, out
        assert _whole(env, s, records, salvaged) is None, f"after kill {attempt} and a rerun"
        assert _staged_leftovers(s) == []
        if damaged:
            assert any(_holds_ransom_note(s, q) for q in _quarantines(s)), "the damaged store was not kept"
    assert False in outcomes, "no kill left the old store: the kills came too late to test anything"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_restore_into_an_emptied_store_survives_kill_minus_nine(backend: str, env: dict[str, str],
                                                                tmp_path: Path,
                                                                request: pytest.FixtureRequest) -> None:
    store = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    s = _set_up(env, tmp_path, store)
    command = ["restore", str(s["backup"]), "--home", str(s["home"])]
    _drill(env, s, command, damaged=False, rng=random.Random(f"emptied-{backend}"))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_quarantine_restore_survives_kill_minus_nine(backend: str, env: dict[str, str], tmp_path: Path,
                                                     request: pytest.FixtureRequest) -> None:
    store = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    s = _set_up(env, tmp_path, store)
    command = ["restore", str(s["backup"]), "--home", str(s["home"]), "--quarantine"]
    try:
        _drill(env, s, command, damaged=True, rng=random.Random(f"quarantine-{backend}"))
    finally:
        if backend == "postgresql":
            for q in _quarantines(s):
                with Database(s["store"]) as db:
                    db.execute(f'DROP SCHEMA "{q}" CASCADE')
