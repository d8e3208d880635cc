"""Restoring a data backup with the live record-key store: residents corrected or erased since.

An update drops the record key of the version it replaces, so the version
in an older data backup has no key in the live record-key store. The
restore puts that key back from the record-key backup taken with the data
backup, and only for records that still hold a key (an erased record holds
none, and stays erased). Where no copy of the key exists the restore is
refused, touching nothing, or with ``keep_unreadable`` keeps the rows and
names them: a restore never leaves a record that silently cannot be opened.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from backup_support import drop_quarantine
from keys_support import close_vault as _close
from keys_support import ctx, put_all, residents
from keys_support import open_vault as _open
from keys_support import wipe_store as _wipe

from pivault.backup import BackupError, backup_record_keys, create_backup, load_verify_key, restore
from pivault.crypto import Keyring
from pivault.crypto.errors import IntegrityError
from pivault.errors import NotFoundError
from pivault.keys.attach import open_record_key_store
from pivault.keys.events import KeyEvents
from pivault.store.db import Database
from pivault.vault import Vault
from pivault.vault.facade import open_record


def test_a_record_corrected_after_the_backup_still_opens_after_the_restore(
        store_url: str, keyring: Keyring, tmp_path: Path) -> None:
    db = Database(store_url)
    vault = Vault.initialise(db, keyring)
    people = residents(3, seed=53)
    ids = put_all(vault, people)
    data = create_backup(db, keyring, tmp_path / "vault.backup")
    with open_record_key_store(keyring) as live_keys:
        keys = backup_record_keys(live_keys, keyring, tmp_path / "keyshelf" / "record-keys.backup")
    vault.update(ids[0], {"notes": "synthetic correction"}, ctx=ctx())
    vault.close()
    _wipe(store_url)
    with open_record_key_store(keyring) as live_keys:
        report = restore(data.path, store_url, load_verify_key(keyring.path), vault_id=keyring.vault_id,
                         record_keys=live_keys, record_keys_backup=keys.path, keyring=keyring)
    assert report.corrected_since_backup == 1 and report.corrected_record_ids == [ids[0]]
    assert report.unreadable_record_ids == [] and report.erased_since_backup == 0
    v = _open(store_url, keyring)
    try:
        for rid, p in zip(ids, people, strict=True):
            got = v.get(rid, ctx=ctx())
            assert got["id_number"] == p["id_number"]
        # back at its backed-up version: the correction made since is undone, and the report says so
        assert v.get(ids[0], ctx=ctx())["notes"] != "synthetic correction"
    finally:
        _close(v)


def test_corrected_twice_erased_and_corrected_then_erased_are_each_restored_as_they_must_be(
        store_url: str, keyring: Keyring, tmp_path: Path) -> None:
    db = Database(store_url)
    vault = Vault.initialise(db, keyring)
    people = residents(6, seed=54)
    ids = put_all(vault, people)
    once, twice, corrected_erased, erased = ids[0], ids[1], ids[2], ids[3]
    data = create_backup(db, keyring, tmp_path / "vault.backup")
    with open_record_key_store(keyring) as live_keys:
        keys = backup_record_keys(live_keys, keyring, tmp_path / "keyshelf" / "record-keys.backup")
    c = ctx("corrections and erasure requests")
    vault.update(once, {"notes": "synthetic correction"}, ctx=c)
    vault.update(twice, {"notes": "synthetic correction 1"}, ctx=c)
    vault.update(twice, {"notes": "synthetic correction 2"}, ctx=c)
    vault.update(corrected_erased, {"notes": "synthetic correction"}, ctx=c)
    vault.erase(corrected_erased, ctx=c)
    vault.erase(erased, ctx=c)
    vault.close()
    _wipe(store_url)
    entry: dict[str, Any] = {}

    def events(_db: Database) -> KeyEvents:
        def sink(operation: str, outcome: str, detail: Mapping[str, Any]) -> None:
            entry.update(detail)
        return sink

    with open_record_key_store(keyring) as live_keys:
        report = restore(data.path, store_url, load_verify_key(keyring.path), vault_id=keyring.vault_id,
                         record_keys=live_keys, record_keys_backup=keys.path,
                         events=events)
        # the key backup still holds the erased records' keys: none of them came back
        assert live_keys.refs(corrected_erased) == [] and live_keys.refs(erased) == []
    assert report.corrected_since_backup == 2
    assert report.corrected_record_ids == sorted([once, twice])
    assert report.erased_since_backup == 2 and report.unreadable_record_ids == []
    assert report.to_dict()["corrected_since_backup"] == 2 and report.to_dict()["unreadable"] == 0
    assert entry["corrected_since_backup"] == 2 and entry["erased_since_backup"] == 2
    assert entry["unreadable"] == 0
    v = _open(store_url, keyring)
    try:
        assert v.store.count() == 4
        for rid, p in zip(ids, people, strict=True):
            if rid in (corrected_erased, erased):
                with pytest.raises(NotFoundError):
                    v.get(rid, ctx=ctx())
                assert v.find(id_number=p["id_number"], ctx=ctx()) == []
            else:
                assert v.get(rid, ctx=ctx())["id_number"] == p["id_number"]
    finally:
        _close(v)


def test_kept_erased_rows_stay_shredded_even_with_the_key_backup(store_url: str, keyring: Keyring,
                                                                 tmp_path: Path) -> None:
    db = Database(store_url)
    vault = Vault.initialise(db, keyring)
    people = residents(3, seed=55)
    ids = put_all(vault, people)
    data = create_backup(db, keyring, tmp_path / "vault.backup")
    with open_record_key_store(keyring) as live_keys:
        keys = backup_record_keys(live_keys, keyring, tmp_path / "keyshelf" / "record-keys.backup")
    vault.update(ids[0], {"notes": "synthetic correction"}, ctx=ctx())
    vault.erase(ids[0], ctx=ctx())
    vault.close()
    _wipe(store_url)
    with open_record_key_store(keyring) as live_keys:
        report = restore(data.path, store_url, load_verify_key(keyring.path), vault_id=keyring.vault_id,
                         record_keys=live_keys, record_keys_backup=keys.path, keep_erased=True)
        assert live_keys.refs(ids[0]) == []
    assert report.erased_since_backup is None and report.corrected_since_backup == 0
    v = _open(store_url, keyring)
    try:
        assert v.store.count() == 3  # the row is back as ciphertext, and it is noise
        stored = v.store.get(ids[0])
        assert stored is not None
        with pytest.raises(IntegrityError) as info:
            open_record(keyring, stored)
        assert info.value.code == "crypto.shredded"
        with pytest.raises(NotFoundError):  # through the door the resident stays erased
            v.get(ids[0], ctx=ctx())
        assert v.get(ids[1], ctx=ctx())["id_number"] == people[1]["id_number"]
    finally:
        _close(v)


def _ransom_note(store_url: str) -> None:
    with Database(store_url) as db:
        db.execute("CREATE TABLE ransom_note (msg TEXT)")
        db.execute("INSERT INTO ransom_note VALUES ('pay')")


def test_a_version_with_no_key_anywhere_refuses_the_restore_or_is_kept_and_named(
        store_url: str, keyring: Keyring, tmp_path: Path) -> None:
    db = Database(store_url)
    vault = Vault.initialise(db, keyring)
    people = residents(3, seed=56)
    ids = put_all(vault, people)
    data = create_backup(db, keyring, tmp_path / "vault.backup")
    vault.update(ids[1], {"notes": "synthetic correction"}, ctx=ctx())
    with open_record_key_store(keyring) as live_keys:  # too late: it holds the corrected version only
        late = backup_record_keys(live_keys, keyring, tmp_path / "keyshelf" / "record-keys.backup")
    vault.close()
    _wipe(store_url)
    _ransom_note(store_url)
    verify_key = load_verify_key(keyring.path)
    with open_record_key_store(keyring) as live_keys:
        held = live_keys.count()
        for given in (None, late.path):
            with pytest.raises(BackupError) as info:
                restore(data.path, store_url, verify_key, vault_id=keyring.vault_id, quarantine=True,
                        record_keys=live_keys, record_keys_backup=given)
            err = info.value
            assert err.code == "restore.keys_missing" and "\n" not in err.message
            assert err.message.startswith("1 records corrected since the backup") and ids[1] in err.message
            assert "--record-keys" in err.hint and "--keep-unreadable" in err.hint
            assert not any(v in err.message for p in people for v in p.values() if len(v) > 3)
        assert live_keys.count() == held
    with Database(store_url) as untouched:  # nothing was restored, nothing set aside
        assert untouched.query_one("SELECT COUNT(*) FROM records") == (0,)
        assert untouched.query_one("SELECT COUNT(*) FROM ransom_note") == (1,)

    with open_record_key_store(keyring) as live_keys:
        report = restore(data.path, store_url, verify_key, vault_id=keyring.vault_id, quarantine=True,
                         record_keys=live_keys, record_keys_backup=late.path, keep_unreadable=True)
    assert report.unreadable_record_ids == [ids[1]] and report.to_dict()["unreadable"] == 1
    assert report.corrected_since_backup == 0 and report.erased_since_backup == 0
    assert report.audit_detail()["unreadable_records"] == [ids[1]]
    v = _open(store_url, keyring)
    try:
        assert v.store.count() == 3
        with pytest.raises(IntegrityError):
            v.get(ids[1], ctx=ctx())
        for i in (0, 2):
            assert v.get(ids[i], ctx=ctx())["id_number"] == people[i]["id_number"]
    finally:
        _close(v)
    drop_quarantine(store_url, report.quarantined)


def test_a_key_wrapped_by_a_field_key_retired_since_is_not_put_back(store_url: str, keyring: Keyring,
                                                                    tmp_path: Path) -> None:
    # the field key rotated, every live record key rewrapped, the old field key retired: the key
    # backup's copy of the corrected version's key can no longer be opened, and the restore says so
    from pivault.keys.rewrap import rewrap
    from pivault.keys.rotate import retire_unused, rotate

    db = Database(store_url)
    vault = Vault.initialise(db, keyring)
    people = residents(3, seed=57)
    ids = put_all(vault, people)
    data = create_backup(db, keyring, tmp_path / "vault.backup")
    with open_record_key_store(keyring) as live_keys:
        keys = backup_record_keys(live_keys, keyring, tmp_path / "keyshelf" / "record-keys.backup")
        vault.update(ids[0], {"notes": "synthetic correction"}, ctx=ctx())
        old = keyring.primary_key_id("aead")
        rotate(keyring, ["aead"])
        assert rewrap(db, keyring, record_keys=live_keys).complete
        assert any(r.keyset == "aead" and r.key_id == old
                   for r in retire_unused(db, keyring, record_keys=live_keys))
    vault.close()
    _wipe(store_url)
    with Database(store_url) as wipe:
        wipe.execute("DELETE FROM key_jobs")
    verify_key = load_verify_key(keyring.path)
    with open_record_key_store(keyring) as live_keys:
        with pytest.raises(BackupError) as info:
            restore(data.path, store_url, verify_key, vault_id=keyring.vault_id, record_keys=live_keys,
                    record_keys_backup=keys.path, keyring=keyring)
        assert info.value.code == "restore.keys_missing", info.value.message
        assert ids[0] in info.value.message
        report = restore(data.path, store_url, verify_key, vault_id=keyring.vault_id, record_keys=live_keys,
                         record_keys_backup=keys.path, keyring=keyring, keep_unreadable=True)
        assert len(live_keys.refs(ids[0])) == 1  # the corrected version's key; the useless copy stayed out
    assert report.unreadable_record_ids == [ids[0]] and report.corrected_since_backup == 0
    v = _open(store_url, keyring)
    try:
        for i in (1, 2):
            assert v.get(ids[i], ctx=ctx())["id_number"] == people[i]["id_number"]
    finally:
        _close(v)
