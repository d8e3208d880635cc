"""Restores under attack: a backup changed on the shelf after it was verified.

Whoever can write to the backup shelf can also write *while* a restore
runs: the file is verified in one pass and read again to be restored.
Nothing read in the second pass may reach a store unless it is what the
first pass checked.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from keys_support import put_all, residents

from pivault.backup import (
    BackupError,
    Container,
    backup_record_keys,
    create_backup,
    load_verify_key,
    restore,
    restore_record_keys,
)
from pivault.backup.backup import ident
from pivault.keys.shred import ShreddingRecordStore
from pivault.store.db import Database
from pivault.vault import Vault


def _flip(path: Path, member: str, back: int) -> None:
    """Change one byte of ``member`` in place (the same file), ``back`` bytes before its end."""
    with tarfile.open(path) as tar:
        info = tar.getmember(member)
        at = info.offset_data + info.size - back
    with open(path, "r+b") as fh:
        fh.seek(at)
        byte = fh.read(1)
        fh.seek(at)
        fh.write(bytes([byte[0] ^ 0x01]))


@pytest.fixture
def tamper_after_verify(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Path, str, int]]]:
    """Files to change on the shelf the moment a restore has verified them: (path, member, bytes back)."""
    plans: list[tuple[Path, str, int]] = []
    real = Container.verify

    def verify_then_tamper(self: Container, *args: Any, **kwargs: Any) -> None:
        real(self, *args, **kwargs)
        for path, member, back in plans:
            if self.path == path:
                _flip(path, member, back)

    monkeypatch.setattr(Container, "verify", verify_then_tamper)
    yield plans


@pytest.mark.parametrize("back", [3, 1000])
def test_postgresql_rows_changed_after_verify_are_not_restored(pg_url: str, tmp_path: Path,
                                                               tamper_after_verify: list[Any],
                                                               back: int) -> None:
    """3 bytes before the end breaks the stream's framing; 1000 changes a row's data and nothing else."""
    from keys_support import new_keyring

    keyring = new_keyring(tmp_path / "keys" / "vault.keyring")
    v = Vault.initialise(Database(pg_url), keyring)
    put_all(v, residents(30, seed=93))
    res = create_backup(v.db, keyring, tmp_path / "shelf" / "vault.pvb")
    schema = v.db.query_one("SELECT current_schema()")
    assert schema is not None
    v.db.execute(f'DROP SCHEMA "{schema[0]}" CASCADE')  # the wipe
    v.db.execute(f'CREATE SCHEMA "{schema[0]}"')
    v.close()
    tamper_after_verify.append((res.path, "data/records.copy", back))
    with pytest.raises(BackupError) as info:
        restore(res.path, pg_url, load_verify_key(keyring.path), vault_id=keyring.vault_id)
    assert info.value.code == "backup.checksum", info.value.message
    with Database(pg_url) as db:
        assert not db.table_exists("records")


def test_record_keys_changed_after_verify_are_not_put_back(vault: Vault, tmp_path: Path,
                                                           tamper_after_verify: list[Any]) -> None:
    """More keys than one batch: none of them may be committed before the whole stream checked."""
    store = vault.store
    assert isinstance(store, ShreddingRecordStore)
    keys = store.keys
    synthetic = [(f"rec-{i:06d}", os.urandom(81)) for i in range(5000)]
    keys.put_many(synthetic)
    res = backup_record_keys(keys, vault.keyring, tmp_path / "keyshelf" / "record-keys.pvb")
    keys.delete_records([rid for rid, _ in synthetic])
    before = keys.count()
    tamper_after_verify.append((res.path, "data/record_keys.bin", 3))
    with pytest.raises(BackupError) as info:
        restore_record_keys(res.path, keys, load_verify_key(vault.keyring.path))
    assert info.value.code == "backup.checksum"
    assert keys.count() == before


#: a table name made to end the quoted identifier and run SQL of its own
_SQL_NAME = 'note"; DROP TABLE records; --'


def test_tables_and_columns_named_to_break_the_sql(vault: Vault, store_url: str, tmp_path: Path) -> None:
    """An intruder with access to the database names a table, and an audit column, to inject SQL.

    Backups go on, a restore refuses the store naming the table harmlessly,
    and ``--quarantine`` sets it aside, salvaging the audit trail without
    running the intruder's text.
    """
    put_all(vault, residents(6, seed=94))
    clean = create_backup(vault.db, vault.keyring, tmp_path / "shelf" / "clean.pvb")
    quoted = '"' + _SQL_NAME.replace('"', '""') + '"'
    vault.db.execute(f"CREATE TABLE {quoted} (msg TEXT)")
    vault.db.execute(f"INSERT INTO {quoted} (msg) VALUES ('pay 10 BTC')")
    vault.db.execute('ALTER TABLE audit_entries ADD COLUMN "seq) SELECT 1; --" TEXT')
    # the backup itself is not stopped by the planted names
    create_backup(vault.db, vault.keyring, tmp_path / "shelf" / "planted.pvb")
    vault.db.execute("DELETE FROM blind_index")
    vault.db.execute("DELETE FROM records")
    vault.close()
    key = load_verify_key(vault.keyring.path)
    with pytest.raises(BackupError) as info:
        restore(clean.path, store_url, key, vault_id=vault.keyring.vault_id)
    assert info.value.code == "backup.not_empty"
    report = restore(clean.path, store_url, key, vault_id=vault.keyring.vault_id, quarantine=True)
    assert report.quarantined
    from pivault.backup import salvage_quarantined

    with Database(store_url) as db:
        salvage_quarantined(db, store_url, report.quarantined)
        assert db.query_one("SELECT COUNT(*) FROM records") == (6,)
        tables = ("SELECT name FROM sqlite_master WHERE type = 'table'" if db.dialect == "sqlite" else
                  "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
        assert _SQL_NAME not in {r[0] for r in db.query(tables)}
        if db.dialect == "postgresql":  # the quarantine schema is outside the test's own
            db.execute(f"DROP SCHEMA {ident(report.quarantined)} CASCADE")


def test_a_table_outside_pivaults_schema_does_not_make_backups_unrestorable(pg_url: str,
                                                                           tmp_path: Path) -> None:
    """One table added to the vault's PostgreSQL schema (by an operator, or planted by an intruder
    long before a wipe) is in every backup taken since; the restore leaves it out and says so."""
    from keys_support import new_keyring

    keyring = new_keyring(tmp_path / "keys" / "vault.keyring")
    v = Vault.initialise(Database(pg_url), keyring)
    expected = put_all(v, residents(5, seed=95))
    v.db.execute("CREATE TABLE ops_notes (note TEXT)")
    v.db.execute("INSERT INTO ops_notes (note) VALUES ('checked')")
    v.db.execute(f"CREATE TABLE {ident(_SQL_NAME)} (msg TEXT)")
    res = create_backup(v.db, keyring, tmp_path / "shelf" / "vault.pvb")
    assert {"ops_notes", _SQL_NAME} <= set(res.manifest["tables"])
    schema = v.db.query_one("SELECT current_schema()")
    assert schema is not None
    v.db.execute(f'DROP SCHEMA "{schema[0]}" CASCADE')  # the wipe
    v.db.execute(f'CREATE SCHEMA "{schema[0]}"')
    v.close()
    report = restore(res.path, pg_url, load_verify_key(keyring.path), vault_id=keyring.vault_id)
    assert report.not_restored == sorted(["ops_notes", _SQL_NAME])
    with Database(pg_url) as db:
        assert db.query_one("SELECT COUNT(*) FROM records") == (len(expected),)
        assert not db.table_exists("ops_notes")


def _resigned(res: Any, keyring: Any, out: Path, change: Any) -> Path:
    """The backup with its manifest changed by ``change`` and signed again with the vault's own key.

    What a signer that lies would write (a stolen signing key, or a faulty build): the signature
    checks, so only the restore's own checks of what the manifest says stand in the way.
    """
    import base64
    import io
    import json

    from pivault.backup.signing import load_or_create_signing_key

    with tarfile.open(res.path) as tar:
        members = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert f is not None
            members[m.name] = f.read()
    manifest = json.loads(members["manifest.json"])
    change(manifest)
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    signer = load_or_create_signing_key(keyring)
    members["manifest.json"] = body + b"\n"
    members["manifest.sig"] = base64.b64encode(signer.sign(b"pivault.backup.manifest.v1\n" + body)) + b"\n"
    with tarfile.open(out, "w:", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def _lies(backend: str) -> dict[str, Any]:
    def files_without_sizes(m: dict[str, Any]) -> None:
        for f in m["files"]:
            del f["bytes"]

    def files_not_entries(m: dict[str, Any]) -> None:
        m["files"] = ["data/vault.db", "keyring.json"]

    def other_backend(m: dict[str, Any]) -> None:
        m["backend"] = "postgresql" if backend == "sqlite" else "sqlite"

    def no_backend(m: dict[str, Any]) -> None:
        del m["backend"]

    def sql_in_counts(m: dict[str, Any]) -> None:
        m["counts"]['records"; DROP TABLE records; --'] = 0

    def counts_not_numbers(m: dict[str, Any]) -> None:
        m["counts"]["records"] = "many"

    def one_more_record(m: dict[str, Any]) -> None:
        m["counts"]["records"] += 1

    def a_column_more(m: dict[str, Any]) -> None:
        m["tables"]["records"]["columns"].append("extra")

    return {f.__name__: f for f in (files_without_sizes, files_not_entries, other_backend, no_backend,
                                    sql_in_counts, counts_not_numbers, one_more_record, a_column_more)}


def test_a_signed_manifest_that_lies_is_refused_and_changes_nothing(vault: Vault, store_url: str,
                                                                    tmp_path: Path) -> None:
    backend = vault.db.dialect
    put_all(vault, residents(5, seed=96))
    res = create_backup(vault.db, vault.keyring, tmp_path / "shelf" / "vault.pvb")
    vault.db.execute("DELETE FROM blind_index")
    vault.db.execute("DELETE FROM records")
    key = load_verify_key(vault.keyring.path)
    for label, change in _lies(backend).items():
        bad = _resigned(res, vault.keyring, tmp_path / f"{label}.pvb", change)
        with pytest.raises(BackupError) as info:
            restore(bad, store_url, key, vault_id=vault.keyring.vault_id, quarantine=True)
        assert info.value.code.startswith("backup."), label
        assert vault.db.query_one("SELECT COUNT(*) FROM records") == (0,), label
        assert vault.db.table_exists("records"), label


_HOLDER = """
import sys, time
from pivault.store.db import Database
db = Database(sys.argv[1])
db.query_one("SELECT COUNT(*) FROM sqlite_master")
print("open", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("quarantine", [False, True])
def test_an_sqlite_store_open_in_another_process_is_not_restored_under_it(sqlite_url: str, tmp_path: Path,
                                                                          quarantine: bool) -> None:
    """A `pivault serve` left running would go on reading and writing the file set aside (or
    unlinked), unseen: its accesses' audit entries and its writes lost to the restored store."""
    import subprocess
    import sys

    from keys_support import new_keyring

    keyring = new_keyring(tmp_path / "keys" / "vault.keyring")
    v = Vault.initialise(Database(sqlite_url), keyring)
    put_all(v, residents(5, seed=97))
    res = create_backup(v.db, keyring, tmp_path / "shelf" / "vault.pvb")
    v.db.execute("DELETE FROM blind_index")
    v.db.execute("DELETE FROM records")
    if quarantine:
        v.db.execute("CREATE TABLE ransom_note (msg TEXT)")
        v.db.execute("INSERT INTO ransom_note (msg) VALUES ('pay')")
    v.close()
    if not quarantine:  # the wipe took the files; the server still runs, on a new empty one
        for suffix in ("", "-wal", "-shm"):
            Path(sqlite_url[len("sqlite:///"):] + suffix).unlink(missing_ok=True)
    server = subprocess.Popen([sys.executable, "-c", _HOLDER, sqlite_url], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert server.stdout is not None and server.stdout.readline() == "open\n"
        inode = os.stat(sqlite_url[len("sqlite:///"):]).st_ino
        with pytest.raises(BackupError) as info:
            restore(res.path, sqlite_url, load_verify_key(keyring.path), vault_id=keyring.vault_id,
                    quarantine=quarantine)
        assert info.value.code == "restore.store_in_use" and info.value.hint
        assert os.stat(sqlite_url[len("sqlite:///"):]).st_ino == inode
    finally:
        server.kill()
        server.wait()
    report = restore(res.path, sqlite_url, load_verify_key(keyring.path), vault_id=keyring.vault_id,
                     quarantine=quarantine)
    assert report.counts["records"] == 5


@pytest.mark.parametrize("quarantine", [False, True])
def test_an_sqlite_store_reached_through_a_symbolic_link_is_restored_where_it_lives(tmp_path: Path,
                                                                                   quarantine: bool) -> None:
    """``vault.db`` links to the disk that holds the data: the restore lands there, the link stays."""
    from keys_support import new_keyring

    home, disk = tmp_path / "home", tmp_path / "data-disk"
    home.mkdir()
    disk.mkdir()
    (home / "vault.db").symlink_to(disk / "vault.db")
    url = f"sqlite:///{home / 'vault.db'}"
    keyring = new_keyring(tmp_path / "keys" / "vault.keyring")
    v = Vault.initialise(Database(url), keyring)
    put_all(v, residents(5, seed=98))
    res = create_backup(v.db, keyring, tmp_path / "shelf" / "vault.pvb")
    v.db.execute("DELETE FROM blind_index")
    v.db.execute("DELETE FROM records")
    v.db.execute("CREATE TABLE ransom_note (msg TEXT)")
    v.db.execute("INSERT INTO ransom_note (msg) VALUES ('pay')")
    v.close()
    if not quarantine:  # the wipe took the data disk's files, the link is left dangling
        for suffix in ("", "-wal", "-shm"):
            (disk / f"vault.db{suffix}").unlink(missing_ok=True)
    report = restore(res.path, url, load_verify_key(keyring.path), vault_id=keyring.vault_id,
                     quarantine=quarantine)
    assert (home / "vault.db").is_symlink() and (home / "vault.db").resolve() == disk / "vault.db"
    assert sorted(p.name for p in home.iterdir()) == ["vault.db"]
    with Database(f"sqlite:///{disk / 'vault.db'}") as db:
        assert db.query_one("SELECT COUNT(*) FROM records") == (5,)
    if quarantine:
        assert report.quarantined is not None and Path(report.quarantined).parent == disk
        with Database(f"sqlite:///{report.quarantined}") as damaged:
            assert damaged.table_exists("ransom_note")


def test_a_store_encrypted_by_ransomware_is_named_and_left_alone(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The intruder encrypted vault.db in place: what the restore says must be what to do next."""
    import json
    import sys

    from typer.testing import CliRunner

    sys.path.insert(0, str(Path(__file__).parent.parent / "vault"))
    from vault_support import cheap_cli_env

    from pivault.cli.main import app

    env = cheap_cli_env(tmp_path, monkeypatch, "")
    home = tmp_path / "home"
    runner = CliRunner()
    init = runner.invoke(app, ["init", "--home", str(home), "--expected-population", "100"], env=env)
    assert init.exit_code == 0, init.output
    backup = tmp_path / "shelf" / "vault.pvb"
    assert runner.invoke(app, ["backup", "--out", str(backup), "--home", str(home)], env=env).exit_code == 0
    for suffix in ("-wal", "-shm"):
        (home / f"vault.db{suffix}").unlink(missing_ok=True)
    encrypted = os.urandom(64 << 10)
    (home / "vault.db").write_bytes(encrypted)
    for extra in ([], ["--quarantine"]):
        res = runner.invoke(app, ["restore", str(backup), "--home", str(home), *extra], env=env)
        assert res.exit_code == 1, res.output
        lines = res.stderr.splitlines()
        assert lines[0].startswith("error[restore.store_unreadable]: ") and "vault.db" in lines[0], res.stderr
        assert lines[1].startswith("  hint: ") and "aside" in lines[1] and "again" in lines[1], res.stderr
        assert "Traceback" not in res.output
        assert (home / "vault.db").read_bytes() == encrypted
    # moved aside by hand, as the hint says: the same command restores
    (home / "vault.db").rename(home / "vault.db.encrypted")
    res = runner.invoke(app, ["restore", str(backup), "--home", str(home), "--json"], env=env)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["backup_id"]
