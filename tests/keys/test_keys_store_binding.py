"""A vault opens only with its own record-key store; a missing or foreign one is refused, never made anew.

The store moved aside (or its disk not mounted, or a wrong ``[keys]
record_key_store``) used to be replaced by a new, empty one: every record
then read as erased and new records' keys went where the real store never
saw them. Everything here goes through the command line as an operator
would type it (and ``pivault serve`` as a real process), on real SQLite and
PostgreSQL stores.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

sys.path.insert(0, str(Path(__file__).parent.parent / "vault"))

from vault_support import PASSPHRASE, cheap_cli_env, make_residents
from vault_support import run_cli as run


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return cheap_cli_env(tmp_path, monkeypatch, str(tmp_path / "home"))


def _csv(path: Path, people: list[dict[str, str]]) -> Path:
    path.write_text("name,id_number,mobile,address\n" + "".join(
        f"{p['name']},{p['id_number']},{p['mobile']},{p['address']}\n" for p in people), encoding="utf-8")
    return path


def _make(env: dict[str, str], tmp_path: Path, *init_args: str) -> dict[str, Any]:
    """init, import six residents; the record ids, the keyring and its record-key store."""
    info = json.loads(run(env, "init", "--expected-population", "1000", "--json", *init_args).stdout)
    people = make_residents(6, seed=91)
    run(env, "import", str(_csv(tmp_path / "six.csv", people)))
    ids = []
    for p in people:
        found = json.loads(run(env, "find", "--id-number", p["id_number"], "--json").stdout)
        ids.append(found[0]["record_id"])
    store = Path(info["keyring"] + ".recordkeys")
    return {"info": info, "people": people, "ids": ids, "store": store}


def _move_aside(store: Path, to: Path) -> None:
    """Move the store's files (with any -wal and -shm) aside, as an operator's `mv` would."""
    to.mkdir(exist_ok=True)
    for f in store.parent.glob(store.name + "*"):
        shutil.move(str(f), str(to / f.name))


def _put_back(store: Path, aside: Path) -> None:
    for f in aside.glob(store.name + "*"):
        shutil.move(str(f), str(store.parent / f.name))


def _data_state(home: Path) -> tuple[Any, ...]:
    """What a refused command must leave as it was: records, audit trail, imports, bindings."""
    with sqlite3.connect(home / "vault.db") as raw:
        counts = [raw.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                  for t in ("records", "audit_entries", "import_batches", "blind_index")]
        meta = sorted(raw.execute("SELECT key, value FROM vault_meta WHERE key <> 'keyring_seen'").fetchall())
        return (*counts, meta)


def _refused(res: Result, code: str, *, where: Path | str, pi: list[dict[str, str]]) -> None:
    lines = res.stderr.splitlines()
    assert lines[0].startswith(f"error[{code}]: "), res.stderr
    assert len(lines) <= 2 and (len(lines) == 1 or lines[1].startswith("  hint: ")), res.stderr
    assert str(where) in lines[0] and "nothing was read" in lines[0]
    assert not any(v in res.output for p in pi for k, v in p.items() if k != "notes" and len(v) > 3)


def test_every_command_refuses_a_missing_record_key_store_and_writes_nothing(
        env: dict[str, str], tmp_path: Path) -> None:
    v = _make(env, tmp_path)
    home, store, ids, people = Path(env["PIVAULT_HOME"]), v["store"], v["ids"], v["people"]
    keyring = Path(v["info"]["keyring"])
    aside = tmp_path / "aside"
    _move_aside(store, aside)
    before = _data_state(home)
    ring_before = keyring.read_bytes()
    more = _csv(tmp_path / "more.csv", make_residents(9, seed=92)[6:])
    commands = [
        ["get", ids[0], "--reveal"],
        ["find", "--id-number", people[1]["id_number"]],
        ["import", str(more)],
        ["stats"],
        ["erase", ids[2], "--yes"],
        ["keys", "status"],
        ["keys", "rotate"],
        ["keys", "rewrap"],
        ["keys", "rewrap", "--retire"],
        ["keys", "retire"],
        ["keys", "gc"],
        ["keys", "backup", "--out", str(tmp_path / "rk.pvb")],
        ["backup", "--out", str(tmp_path / "data.pvb")],
    ]
    for args in commands:
        res = run(env, *args, code=2)
        _refused(res, "keys.store_missing", where=store, pi=people)
        assert not store.exists() and not list(store.parent.glob(store.name + "*")), args
    assert _data_state(home) == before
    assert keyring.read_bytes() == ring_before  # no key rotated, none retired
    assert not (tmp_path / "rk.pvb").exists() and not (tmp_path / "data.pvb").exists()

    _put_back(store, aside)  # the disk is mounted again: everything works as before
    got = json.loads(run(env, "get", ids[0], "--reveal", "--json").stdout)
    assert got[0]["name"] == people[0]["name"]
    assert len(json.loads(run(env, "find", "--id-number", people[1]["id_number"], "--json").stdout)) == 1
    assert json.loads(run(env, "import", str(more), "--json").stdout)["imported"] == 3
    run(env, "keys", "rotate")
    out = json.loads(run(env, "keys", "rewrap", "--retire", "--json").stdout)
    assert out["complete"] and out["unreadable"] == 0 and out["record_keys_rewrapped"] == 9
    for rid, p in zip(ids, people, strict=True):
        assert json.loads(run(env, "get", rid, "--reveal", "--json").stdout)[0]["mobile"] == p["mobile"]


def test_serve_does_not_start_without_its_record_key_store(env: dict[str, str], tmp_path: Path) -> None:
    v = _make(env, tmp_path)
    home, store = Path(env["PIVAULT_HOME"]), v["store"]
    run(env, "token", "create", "--principal", "clerk-1", "--role", "registrar", "--purpose", "registration")
    _move_aside(store, tmp_path / "aside")
    proc_env = {k: val for k, val in os.environ.items() if not k.startswith("PIVAULT_")}
    proc_env.update({"PIVAULT_PASSPHRASE": PASSPHRASE, "PIVAULT_HOME": str(home),
                     "XDG_CONFIG_HOME": env["XDG_CONFIG_HOME"]})
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([sys.executable, "-m", "pivault.cli.serve_cmds", "serve", "--home", str(home),
                        "--port", str(port)], env=proc_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "serving" not in r.stdout
    assert r.stderr.startswith("error[keys.store_missing]: ") and str(store) in r.stderr, r.stderr
    assert not store.exists()


def test_a_store_that_is_not_the_vaults_own_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    v = _make(env, tmp_path)
    home, ids, people = Path(env["PIVAULT_HOME"]), v["ids"], v["people"]
    config = home / "pivault.toml"
    written = config.read_text(encoding="utf-8")
    # another vault's store
    other_env = {**env, "PIVAULT_HOME": str(tmp_path / "other")}
    other = json.loads(run(other_env, "init", "--expected-population", "1000", "--json").stdout)
    other_store = Path(other["keyring"] + ".recordkeys")
    before = _data_state(home)
    config.write_text(written + f'\n[keys]\nrecord_key_store = "sqlite:///{other_store}"\n', encoding="utf-8")
    res = run(env, "get", ids[0], code=2)
    assert res.stderr.startswith("error[keys.store_mismatch]: ") and other["vault_id"] in res.stderr
    # a new, empty store of this vault's id in the real one's place (as an earlier pivault made)
    from pivault.keys.shred import RecordKeyStore

    empty = tmp_path / "elsewhere" / "empty.recordkeys"
    empty.parent.mkdir()
    RecordKeyStore(f"sqlite:///{empty}", vault_id=v["info"]["vault_id"]).close()
    config.write_text(written + f'\n[keys]\nrecord_key_store = "sqlite:///{empty}"\n', encoding="utf-8")
    for args in (["get", ids[0]], ["find", "--id-number", people[0]["id_number"]], ["keys", "rewrap"]):
        _refused(run(env, *args, code=2), "keys.store_empty", where=empty, pi=people)
    # a copy of the vault's own store, made into another store (its id changed): not the one bound
    copy = tmp_path / "elsewhere" / "copy.recordkeys"
    with sqlite3.connect(v["store"]) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    with sqlite3.connect(copy) as raw:
        raw.execute("UPDATE keystore_meta SET value = ? WHERE key = 'store_id'", (uuid.uuid4().hex,))
    config.write_text(written + f'\n[keys]\nrecord_key_store = "sqlite:///{copy}"\n', encoding="utf-8")
    _refused(run(env, "get", ids[0], code=2), "keys.store_mismatch", where=copy, pi=people)
    # a path where nothing is
    nowhere = tmp_path / "unmounted" / "v.recordkeys"
    config.write_text(written + f'\n[keys]\nrecord_key_store = "sqlite:///{nowhere}"\n', encoding="utf-8")
    _refused(run(env, "find", "--id-number", people[0]["id_number"], code=2), "keys.store_missing",
             where=nowhere, pi=people)
    assert not nowhere.parent.exists()
    assert _data_state(home) == before
    with sqlite3.connect(empty) as raw:
        assert raw.execute("SELECT COUNT(*) FROM record_keys").fetchone()[0] == 0
        assert raw.execute("SELECT value FROM keystore_meta WHERE key = 'store_id'").fetchone() is None
    config.write_text(written, encoding="utf-8")
    assert json.loads(run(env, "get", ids[0], "--reveal", "--json").stdout)[0]["name"] == people[0]["name"]


def _unbind(home: Path, store: Path) -> None:
    """Make the vault look like one made before the binding: neither side names the other."""
    with sqlite3.connect(home / "vault.db") as raw:
        raw.execute("DELETE FROM vault_meta WHERE key = 'record_key_store'")
    with sqlite3.connect(store) as raw:
        raw.execute("DELETE FROM keystore_meta WHERE key = 'store_id'")


def _ids(home: Path, store: Path) -> tuple[Any, Any]:
    with sqlite3.connect(home / "vault.db") as raw:
        data = raw.execute("SELECT value FROM vault_meta WHERE key = 'record_key_store'").fetchone()
    with sqlite3.connect(store) as raw:
        keys = raw.execute("SELECT value FROM keystore_meta WHERE key = 'store_id'").fetchone()
    return data, keys


def test_a_vault_from_before_the_binding_opens_and_is_bound(env: dict[str, str], tmp_path: Path) -> None:
    v = _make(env, tmp_path)
    home, store, ids, people = Path(env["PIVAULT_HOME"]), v["store"], v["ids"], v["people"]
    data_id, store_id = _ids(home, store)
    assert data_id is not None and data_id == store_id  # `init` bound the two
    _unbind(home, store)
    # its store moved aside: refused as well, since its records are sealed under record keys
    aside = tmp_path / "aside"
    _move_aside(store, aside)
    _refused(run(env, "get", ids[0], code=2), "keys.store_missing", where=store, pi=people)
    assert not store.exists() and _ids_data(home) is None
    # an empty store in its place, as an earlier pivault made: refused, and not bound to it
    from pivault.keys.shred import RecordKeyStore

    RecordKeyStore(f"sqlite:///{store}", vault_id=v["info"]["vault_id"]).close()
    _refused(run(env, "get", ids[0], code=2), "keys.store_empty", where=store, pi=people)
    assert _ids(home, store) == (None, None)
    for f in store.parent.glob(store.name + "*"):
        f.unlink()
    _put_back(store, aside)
    # its own store: opens, and both sides are bound on that first open
    assert json.loads(run(env, "get", ids[0], "--reveal", "--json").stdout)[0]["name"] == people[0]["name"]
    data_id, store_id = _ids(home, store)
    assert data_id is not None and data_id == store_id
    run(env, "keys", "status")


def _ids_data(home: Path) -> Any:
    with sqlite3.connect(home / "vault.db") as raw:
        return raw.execute("SELECT value FROM vault_meta WHERE key = 'record_key_store'").fetchone()


def test_a_new_vault_makes_and_binds_its_store(env: dict[str, str], tmp_path: Path) -> None:
    info = json.loads(run(env, "init", "--expected-population", "1000", "--json").stdout)
    home, store = Path(env["PIVAULT_HOME"]), Path(info["keyring"] + ".recordkeys")
    assert store.exists()
    data_id, store_id = _ids(home, store)
    assert data_id is not None and data_id == store_id
    stats = json.loads(run(env, "stats", "--json").stdout)
    assert stats["store"]["rows"] == 0
    # from then on the vault is bound: an empty vault's store is not replaced either
    _move_aside(store, tmp_path / "aside")
    _refused(run(env, "stats", code=2), "keys.store_missing", where=store, pi=[])
    assert not store.exists()


def test_keys_restore_refills_a_lost_store_and_binds_it(env: dict[str, str], tmp_path: Path) -> None:
    v = _make(env, tmp_path)
    store, ids, people = v["store"], v["ids"], v["people"]
    rk = tmp_path / "keyshelf" / "rk.pvb"
    run(env, "keys", "backup", "--out", str(rk))
    for f in store.parent.glob(store.name + "*"):
        f.unlink()  # the disk that held it failed
    _refused(run(env, "get", ids[0], code=2), "keys.store_missing", where=store, pi=people)
    out = run(env, "keys", "restore", str(rk))
    assert "6 record keys put back" in out.stdout
    for rid, p in zip(ids, people, strict=True):
        assert json.loads(run(env, "get", rid, "--reveal", "--json").stdout)[0]["mobile"] == p["mobile"]
    data_id, store_id = _ids(Path(env["PIVAULT_HOME"]), store)
    assert data_id is not None and data_id == store_id


@pytest.fixture
def pg_keys_url(pg_url: str) -> Iterator[str]:
    """A second schema in the test database, for the record-key store apart from the data's."""
    import psycopg

    base, _schema = pg_url.split("options=-csearch_path%3D")
    schema = "pvk_" + uuid.uuid4().hex[:12]
    with psycopg.connect(base.rstrip("?&"), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{base}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(base.rstrip("?&"), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _pg_tables(url: str) -> set[str]:
    from pivault.store.db import Database

    with Database(url) as db:
        return {str(r[0]) for r in db.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")}


def test_postgresql_record_key_store_dropped_or_wrong_schema(env: dict[str, str], tmp_path: Path,
                                                             pg_url: str, pg_keys_url: str) -> None:
    v = _make(env, tmp_path, "--store", pg_url, "--record-key-store", pg_keys_url)
    home, ids, people = Path(env["PIVAULT_HOME"]), v["ids"], v["people"]
    assert not v["store"].exists()  # the record keys are in PostgreSQL, not beside the keyring
    assert {"record_keys", "keystore_meta"} <= _pg_tables(pg_keys_url)
    assert "record_keys" not in _pg_tables(pg_url)
    config = home / "pivault.toml"
    written = config.read_text(encoding="utf-8")
    # a wrong schema: nothing of the store is there, and nothing is made there
    wrong = pg_keys_url.rsplit("%3D", 1)[0] + "%3D" + pg_url.rsplit("%3D", 1)[1]
    config.write_text(written.replace(pg_keys_url, wrong), encoding="utf-8")
    res = run(env, "get", ids[0], code=2)
    assert res.stderr.startswith("error[keys.store_missing]: "), res.stderr
    assert "nothing was read" in res.stderr and "record_keys" not in _pg_tables(pg_url)
    config.write_text(written, encoding="utf-8")
    assert json.loads(run(env, "get", ids[0], "--reveal", "--json").stdout)[0]["name"] == people[0]["name"]
    # its table dropped: refused, and the table is not made again empty
    from pivault.store.db import Database

    with Database(pg_keys_url) as db:
        db.execute("ALTER TABLE record_keys RENAME TO record_keys_aside")
    for args in (["get", ids[0]], ["keys", "rewrap", "--retire"], ["import", str(tmp_path / "six.csv")]):
        res = run(env, *args, code=2)
        assert res.stderr.startswith("error[keys.store_missing]: ") and "record_keys" in res.stderr
    assert "record_keys" not in _pg_tables(pg_keys_url)
    with Database(pg_keys_url) as db:
        db.execute("ALTER TABLE record_keys_aside RENAME TO record_keys")
    for rid, p in zip(ids, people, strict=True):
        assert json.loads(run(env, "get", rid, "--reveal", "--json").stdout)[0]["mobile"] == p["mobile"]


def test_failed_init_leaves_no_tables_in_postgresql(env: dict[str, str], tmp_path: Path, pg_url: str,
                                                   pg_keys_url: str) -> None:
    """An init stopped by an unreachable record-key store used to leave the data schema's tables bound
    to the keyring it deleted: the next init was refused as another vault's store."""
    from pivault.store.db import Database

    with Database(pg_url) as db:  # the operator's own table in the schema stays whatever happens
        db.execute("CREATE TABLE operator_notes (note TEXT)")
    with Database(pg_keys_url) as db:
        db.execute("CREATE TABLE keys_notes (note TEXT)")
    unreachable = "postgresql://postgres@127.0.0.1:1/test"
    res = run(env, "init", "--expected-population", "1000", "--store", pg_url,
              "--record-key-store", unreachable, code=1)
    assert res.stderr.startswith("error[store.connect]: "), res.stderr
    assert _pg_tables(pg_url) == {"operator_notes"}
    with Database(pg_url) as db:
        assert db.query("SELECT proname FROM pg_proc"
                        " WHERE pronamespace = current_schema()::regnamespace") == []
        assert db.query("SELECT sequence_name FROM information_schema.sequences"
                        " WHERE sequence_schema = current_schema()") == []
    assert not (Path(env["PIVAULT_HOME"]) / "pivault.toml").exists()
    # the same init with the right store goes through, and the vault works
    v = _make(env, tmp_path, "--store", pg_url, "--record-key-store", pg_keys_url)
    assert {"operator_notes", "records", "vault_meta"} <= _pg_tables(pg_url)
    assert {"keys_notes", "record_keys"} <= _pg_tables(pg_keys_url)
    got = json.loads(run(env, "get", v["ids"][0], "--reveal", "--json").stdout)
    assert got[0]["name"] == v["people"][0]["name"]


def test_keys_gc_with_a_short_grace_needs_the_writers_stopped(env: dict[str, str], tmp_path: Path) -> None:
    """A record key commits before its record: `keys gc --grace 0` on a vault that writes could take
    the key of a record in the middle of its write, which then committed unreadable for good."""
    from pivault.keys.shred import ShreddingRecordStore
    from pivault.model.record import Resident
    from pivault.store.records import RecordStore
    from pivault.vault import Vault
    from pivault.vault.facade import seal

    v = _make(env, tmp_path)
    home = Path(env["PIVAULT_HOME"])
    newcomer = make_residents(7, seed=93)[6]
    vault = Vault.open(home, passphrase=PASSPHRASE)
    try:
        sealed = seal(vault.keyring, Resident.parse(newcomer), checks=vault.checks)
        assert isinstance(vault.store, ShreddingRecordStore)
        vault.store.keys.put_many([(sealed.record_id, sealed.record_key)])  # the first half of a put: its key
        for grace in ("0", "599"):
            res = run(env, "keys", "gc", "--grace", grace, code=2)
            assert res.stderr.startswith("error[keys.gc_grace]: ") and "--writers-stopped" in res.stderr
        assert json.loads(run(env, "keys", "gc", "--json").stdout)["deleted"] == 0
        RecordStore.insert(vault.store, [sealed])  # the record's own commit, after the key's
    finally:
        vault.close()
    got = json.loads(run(env, "get", sealed.record_id, "--reveal", "--json").stdout)
    assert got[0]["id_number"] == newcomer["id_number"]
    # with every writer stopped, a crash's orphan key goes at once; no record's key goes with it
    orphan = make_residents(8, seed=93)[7]
    vault = Vault.open(home, passphrase=PASSPHRASE)
    try:
        lost = seal(vault.keyring, Resident.parse(orphan), checks=vault.checks)
        assert isinstance(vault.store, ShreddingRecordStore)
        vault.store.keys.put_many([(lost.record_id, lost.record_key)])
    finally:
        vault.close()
    out = json.loads(run(env, "keys", "gc", "--grace", "0", "--writers-stopped", "--json").stdout)
    assert out["deleted"] == 1
    for rid in [*v["ids"], sealed.record_id]:
        assert json.loads(run(env, "get", rid, "--json").stdout)[0]["record_id"] == rid


def test_a_rebuilt_home_without_record_keys_refuses_until_they_are_put_back(env: dict[str, str],
                                                                            tmp_path: Path) -> None:
    v = _make(env, tmp_path)
    home, store, ids, people = Path(env["PIVAULT_HOME"]), v["store"], v["ids"], v["people"]
    data = tmp_path / "shelf" / "vault.pvb"
    run(env, "backup", "--out", str(data))
    rk = tmp_path / "keyshelf" / "rk.pvb"
    run(env, "keys", "backup", "--out", str(rk))
    shutil.rmtree(home)
    for f in store.parent.glob(store.name + "*"):
        f.unlink()  # the record keys were on the same lost disk; the keyring was not
    new = tmp_path / "rebuilt"
    new_env = {**env, "PIVAULT_HOME": str(new)}
    out = json.loads(run(new_env, "restore", str(data), "--home", str(new), "--new-home", "--json").stdout)
    assert out["counts"]["records"] == 6
    assert any("keys restore" in n for n in out["notes"]) and not store.exists()
    _refused(run(new_env, "get", ids[0], code=2), "keys.store_missing", where=store, pi=people)
    assert not store.exists()
    assert "6 record keys put back" in run(new_env, "keys", "restore", str(rk)).stdout
    for rid, p in zip(ids, people, strict=True):
        assert json.loads(run(new_env, "get", rid, "--reveal", "--json").stdout)[0]["name"] == p["name"]


def test_a_restore_needs_the_vaults_own_record_key_store(env: dict[str, str], tmp_path: Path) -> None:
    v = _make(env, tmp_path)
    home, store, ids, people = Path(env["PIVAULT_HOME"]), v["store"], v["ids"], v["people"]
    data = tmp_path / "shelf" / "vault.pvb"
    run(env, "backup", "--out", str(data))
    aside = tmp_path / "aside"
    _move_aside(store, aside)
    # the data store is lost as well; the restore does not make an empty record-key store
    for f in home.iterdir():
        if f.name.startswith("vault.db"):
            f.unlink()
    res = run(env, "restore", str(data), code=2)
    assert res.stderr.startswith("error[keys.store_missing]: ") and not store.exists()
    assert not (home / "vault.db").exists()
    # another store of this vault (a copy given an id of its own): the restored rows are not bound
    # to it, and the restore does not take effect
    _put_back(store, aside)
    copy = tmp_path / "elsewhere" / "copy.recordkeys"
    copy.parent.mkdir()
    with sqlite3.connect(store) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    with sqlite3.connect(copy) as raw:
        raw.execute("UPDATE keystore_meta SET value = ? WHERE key = 'store_id'", (uuid.uuid4().hex,))
    config = home / "pivault.toml"
    written = config.read_text(encoding="utf-8")
    config.write_text(written + f'\n[keys]\nrecord_key_store = "sqlite:///{copy}"\n', encoding="utf-8")
    res = run(env, "restore", str(data), code=2)
    assert res.stderr.startswith("error[keys.store_mismatch]: ") and str(copy) in res.stderr
    # the target the refused restore opened is not left behind as an empty store
    assert not (home / "vault.db").exists() and not (home / "vault.db-wal").exists()
    config.write_text(written, encoding="utf-8")
    run(env, "restore", str(data))
    for rid, p in zip(ids, people, strict=True):
        assert json.loads(run(env, "get", rid, "--reveal", "--json").stdout)[0]["name"] == p["name"]


def test_the_library_door_and_the_node_chainer_refuse_too(env: dict[str, str], tmp_path: Path) -> None:
    from pivault.errors import ConfigError
    from pivault.keys.binding import check_home
    from pivault.vault import Vault

    v = _make(env, tmp_path)
    home, store = Path(env["PIVAULT_HOME"]), v["store"]
    check_home(home)  # bound and there
    aside = tmp_path / "aside"
    _move_aside(store, aside)
    for attempt in (lambda: Vault.open(home, passphrase=PASSPHRASE), lambda: check_home(home)):
        with pytest.raises(ConfigError) as info:
            attempt()
        assert info.value.code == "keys.store_missing" and str(store) in info.value.message
        assert "\n" not in info.value.message and not store.exists()
    _put_back(store, aside)
    with Vault.open(home, passphrase=PASSPHRASE) as vault:
        assert vault.store.count() == 6


def test_keys_gc_refuses_to_take_the_keys_of_a_wiped_data_store(env: dict[str, str], tmp_path: Path) -> None:
    """An intruder (or a wrong restore) deletes the records' rows: every record key is then an
    orphan, and `keys gc` took them all, so the data backups that still hold those records could
    never be read again. Keys by the dozen without a record are refused unless the operator says
    the records went on purpose; the gc that goes through is in the audit trail."""
    v = _make(env, tmp_path)
    run(env, "import", str(_csv(tmp_path / "more.csv", make_residents(40, seed=95)[6:])))
    home = Path(env["PIVAULT_HOME"])
    with sqlite3.connect(home / "vault.db") as con:  # the wipe, straight in the data file
        wiped = con.execute("DELETE FROM records WHERE record_id <> ?", (v["ids"][0],)).rowcount
    assert wiped == 39
    res = run(env, "keys", "gc", "--grace", "0", "--writers-stopped", code=2)
    assert res.stderr.startswith("error[keys.gc_mass]: 39 of the 40 record keys"), res.stderr
    with sqlite3.connect(v["store"]) as con:
        assert con.execute("SELECT COUNT(*) FROM record_keys").fetchone()[0] == 40  # none deleted
    out = json.loads(run(env, "keys", "gc", "--grace", "0", "--writers-stopped", "--allow-mass-delete",
                         "--json").stdout)
    assert out["deleted"] == 39
    got = json.loads(run(env, "get", v["ids"][0], "--reveal", "--json").stdout)
    assert got[0]["id_number"] == v["people"][0]["id_number"]
    trail = json.loads(run(env, "audit", "show", "--operation", "keys.gc", "--json").stdout)
    assert [(e["outcome"], e["detail"]["deleted"]) for e in trail] == [("ok", 39)]
