"""A data backup restores on its own: it carries the record keys of the versions it holds.

An update drops the record key of the version it replaces. ``pivault backup``
therefore seals the wrapped keys of every record version it copies into the
backup itself, read consistently with the copied rows, under a key of that
backup kept in the record-key store (beside the keyring, not on the data
shelf). A restore without ``--record-keys`` opens the backed-up version of a
record corrected since; a record erased since stays erased; a backup written
before this (format version 1) still restores as it did.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from keys_support import close_vault as _close
from keys_support import ctx, put_all, residents
from keys_support import open_vault as _open
from keys_support import wipe_store as _wipe

from pivault.backup import BackupError, Container, create_backup, load_verify_key, restore
from pivault.backup.manifest import write_container
from pivault.backup.signing import load_or_create_signing_key
from pivault.crypto import Keyring
from pivault.errors import NotFoundError
from pivault.keys.attach import open_record_key_store
from pivault.store.db import Database
from pivault.vault import Vault


def _restore(path: Path, store_url: str, keyring: Keyring, **kw: object) -> object:
    with open_record_key_store(keyring) as live_keys:
        return restore(path, store_url, load_verify_key(keyring.path), vault_id=keyring.vault_id,
                       record_keys=live_keys, keyring=keyring, **kw)  # type: ignore[arg-type]


def test_a_record_corrected_after_the_backup_opens_from_the_backup_alone(
        store_url: str, keyring: Keyring, tmp_path: Path) -> None:
    db = Database(store_url)
    vault = Vault.initialise(db, keyring)
    people = residents(3, seed=61)
    ids = put_all(vault, people)
    data = create_backup(db, keyring, tmp_path / "vault.backup")
    assert data.manifest["version"] == 2 and data.manifest["record_keys"]["keys"] == 3
    vault.update(ids[0], {"notes": "synthetic correction"}, ctx=ctx())
    vault.close()
    _wipe(store_url)
    report = _restore(data.path, store_url, keyring)  # no record-key backup given
    assert report.corrected_since_backup == 1 and report.corrected_record_ids == [ids[0]]  # type: ignore[attr-defined]
    assert report.unreadable_record_ids == []  # type: ignore[attr-defined]
    v = _open(store_url, keyring)
    try:
        for rid, p in zip(ids, people, strict=True):
            assert v.get(rid, ctx=ctx())["id_number"] == p["id_number"]
        assert v.get(ids[0], ctx=ctx())["notes"] != "synthetic correction"
    finally:
        _close(v)


def test_records_erased_after_the_backup_stay_erased(store_url: str, keyring: Keyring,
                                                     tmp_path: Path) -> None:
    db = Database(store_url)
    vault = Vault.initialise(db, keyring)
    people = residents(4, seed=62)
    ids = put_all(vault, people)
    data = create_backup(db, keyring, tmp_path / "vault.backup")
    c = ctx("corrections and erasure requests")
    vault.update(ids[1], {"notes": "synthetic correction"}, ctx=c)
    vault.erase(ids[1], ctx=c)
    vault.erase(ids[2], ctx=c)
    vault.close()
    _wipe(store_url)
    with open_record_key_store(keyring) as live_keys:
        report = restore(data.path, store_url, load_verify_key(keyring.path), vault_id=keyring.vault_id,
                         record_keys=live_keys, keyring=keyring)
        # the backup holds their keys, sealed: none of them came back
        assert live_keys.refs(ids[1]) == [] and live_keys.refs(ids[2]) == []
    assert report.erased_since_backup == 2 and report.corrected_since_backup == 0
    v = _open(store_url, keyring)
    try:
        for rid, p in zip(ids, people, strict=True):
            if rid in (ids[1], ids[2]):
                with pytest.raises(NotFoundError):
                    v.get(rid, ctx=ctx())
                assert v.find(id_number=p["id_number"], ctx=ctx()) == []
            else:
                assert v.get(rid, ctx=ctx())["id_number"] == p["id_number"]
    finally:
        _close(v)


def test_the_backup_holds_no_key_that_opens_without_the_record_key_store(
        store_url: str, keyring: Keyring, tmp_path: Path) -> None:
    """The keys are sealed under a key kept beside the keyring: the data shelf alone opens nothing."""
    db = Database(store_url)
    vault = Vault.initialise(db, keyring)
    ids = put_all(vault, residents(2, seed=63))
    data = create_backup(db, keyring, tmp_path / "vault.backup")
    vault.update(ids[0], {"notes": "synthetic correction"}, ctx=ctx())
    vault.close()
    with open_record_key_store(keyring) as live_keys:
        # the sealing key gone (record-key store lost, or expired): the backup's keys open nothing
        assert live_keys.forget_backup_keys(older_than_seconds=-1.0) == 1
    _wipe(store_url)
    with pytest.raises(BackupError) as exc:
        _restore(data.path, store_url, keyring)
    assert exc.value.code == "restore.keys_missing" and ids[0] in str(exc.value)


def test_a_correction_and_an_erase_while_the_backup_runs(store_url: str, keyring: Keyring,
                                                         tmp_path: Path) -> None:
    """Changes made after the rows were copied: the copied version's key is kept, an erased one's not."""
    db = Database(store_url)
    vault = Vault.initialise(db, keyring)
    people = residents(3, seed=64)
    ids = put_all(vault, people)

    # the backup's snapshots keep the erase's WAL checkpoints from finishing: do not wait for them
    for conn in (vault.db, vault.store.keys.db):  # type: ignore[attr-defined]
        if conn.dialect == "sqlite":
            conn.execute("PRAGMA busy_timeout = 50")

    def meanwhile() -> None:
        vault.update(ids[0], {"notes": "synthetic correction"}, ctx=ctx())
        vault.erase(ids[1], ctx=ctx())

    data = create_backup(db, keyring, tmp_path / "vault.backup", on_snapshot=meanwhile)
    assert data.manifest["record_keys"]["keys"] == 2  # ids[0]'s copied version and ids[2]; not ids[1]
    vault.close()
    _wipe(store_url)
    report = _restore(data.path, store_url, keyring)
    assert report.corrected_record_ids == [ids[0]] and report.erased_since_backup == 1  # type: ignore[attr-defined]
    v = _open(store_url, keyring)
    try:
        assert v.get(ids[0], ctx=ctx())["id_number"] == people[0]["id_number"]
        with pytest.raises(NotFoundError):
            v.get(ids[1], ctx=ctx())
    finally:
        _close(v)


def _as_version_one(new: Path, old: Path, keyring: Keyring) -> None:
    """The same backup as a pivault before this change wrote it: no record keys, format version 1."""
    work = old.parent / "v1"
    work.mkdir()
    with Container.open(new) as c:
        c.verify(load_verify_key(keyring.path))
        manifest = dict(c.manifest)
        files = []
        for f in manifest.pop("files"):
            if f["name"].startswith("record_keys"):
                continue
            dest = work / f["name"].replace("/", "_")
            c.extract(f["name"], dest)
            files.append((f["name"], dest))
    manifest.pop("signing_key")
    manifest["version"] = 1
    manifest["record_keys"] = ("not included: they are kept beside the keyring and backed up by "
                               "`pivault keys backup`, so an erase reaches this backup too")
    write_container(old, files, manifest, load_or_create_signing_key(keyring))
    shutil.rmtree(work)


def test_a_backup_of_format_version_one_still_restores(store_url: str, keyring: Keyring,
                                                       tmp_path: Path) -> None:
    db = Database(store_url)
    vault = Vault.initialise(db, keyring)
    people = residents(3, seed=65)
    ids = put_all(vault, people)
    new = create_backup(db, keyring, tmp_path / "new.backup")
    old = tmp_path / "old.backup"
    _as_version_one(new.path, old, keyring)
    with Container.open(old) as c:
        assert json.loads(c.manifest_bytes)["version"] == 1
    vault.update(ids[0], {"notes": "synthetic correction"}, ctx=ctx())
    vault.close()
    _wipe(store_url)
    # as before: it lacks the keys, so a record corrected since is named, and nothing restored
    with pytest.raises(BackupError) as exc:
        _restore(old, store_url, keyring)
    assert exc.value.code == "restore.keys_missing"
    report = _restore(old, store_url, keyring, keep_unreadable=True)
    assert report.unreadable_record_ids == [ids[0]]  # type: ignore[attr-defined]
    v = _open(store_url, keyring)
    try:
        for rid, p in zip(ids[1:], people[1:], strict=True):
            assert v.get(rid, ctx=ctx())["id_number"] == p["id_number"]
    finally:
        _close(v)


def test_a_restore_stopped_after_putting_keys_back_reports_them_when_run_again(
        store_url: str, keyring: Keyring, tmp_path: Path) -> None:
    """The keys go back before the rows commit: a run stopped in between leaves them in place."""
    db = Database(store_url)
    vault = Vault.initialise(db, keyring)
    ids = put_all(vault, residents(3, seed=66))
    data = create_backup(db, keyring, tmp_path / "vault.backup")
    vault.update(ids[0], {"notes": "synthetic correction"}, ctx=ctx())
    vault.close()
    _wipe(store_url)

    def stopped(_db: Database) -> None:
        # the restore's last step before its rows take the store's place: it stops here
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _restore(data.path, store_url, keyring, events=stopped)
    with Database(store_url) as check:
        assert check.query_one("SELECT COUNT(*) FROM records") == (0,)  # the rows did not go in
    report = _restore(data.path, store_url, keyring)
    assert report.corrected_since_backup == 1 and report.corrected_record_ids == [ids[0]]  # type: ignore[attr-defined]
    # reported once: a later restore of the same backup has nothing left to say about it
    _wipe(store_url)
    again = _restore(data.path, store_url, keyring)
    assert again.corrected_since_backup == 0  # type: ignore[attr-defined]
