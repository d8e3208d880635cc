"""Backup, verify and restore on both backends; tampered, foreign and misdirected backups are refused."""

from __future__ import annotations

import io
import os
import sqlite3
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from keys_support import ctx, new_keyring, put_all, residents

from pivault.backup import (
    BackupError,
    Container,
    backup_record_keys,
    create_backup,
    load_verify_key,
    restore,
    restore_record_keys,
    verify_backup,
)
from pivault.crypto import Keyring
from pivault.keys.shred import ShreddingRecordStore
from pivault.store.db import Database
from pivault.vault import Vault


@pytest.fixture
def empty_url(store_url: str, tmp_path: Path) -> Iterator[str]:
    """Another, empty store of the same backend as ``store_url``."""
    if store_url.startswith("sqlite"):
        d = tmp_path / "restored"
        d.mkdir()
        yield f"sqlite:///{d / 'vault.db'}"
        return
    import psycopg

    schema = "pvt_" + uuid.uuid4().hex[:12]
    base, _, _ = store_url.rpartition("options=")
    url = f"{base}options=-csearch_path%3D{schema}"
    admin = base.rstrip("?&")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _keys(vault: Vault) -> ShreddingRecordStore:
    assert isinstance(vault.store, ShreddingRecordStore)
    return vault.store


def _reads_back(url: str, keyring: Keyring, expected: dict[str, dict[str, str]]) -> None:
    with Database(url) as db:
        v = Vault(db, keyring)
        try:
            assert v.store.count() == len(expected)
            c = ctx()
            for rid, p in expected.items():
                got = v.get(rid, ctx=c)
                want = (p["name"], p["id_number"], p["mobile"])
                assert (got["name"], got["id_number"], got["mobile"]) == want
            first = next(iter(expected.values()))
            assert len(v.find(id_number=first["id_number"], ctx=c)) == 1
        finally:
            getattr(v.store, "close", lambda: None)()


def test_backup_verify_restore_round_trip(vault: Vault, empty_url: str, tmp_path: Path) -> None:
    people = residents(40, seed=31)
    expected = dict(zip(put_all(vault, people), people, strict=True))
    events: list[str] = []
    res = create_backup(vault.db, vault.keyring, tmp_path / "b" / "vault.backup",
                        events=lambda op, out, d: events.append(op))
    assert events == ["backup.create"]
    assert oct(res.path.stat().st_mode & 0o777) == "0o600"
    m = res.manifest
    assert m["counts"]["records"] == 40 and m["vault_id"] == vault.keyring.vault_id
    assert {f["name"] for f in m["files"]} >= {"keyring.json"}
    key = load_verify_key(vault.keyring.path)
    report = verify_backup(res.path, key, vault_id=vault.keyring.vault_id, deep=True)
    assert report["ok"] and report["counts"]["records"] == 40
    # the service kept writing after the backup: the backup is the instant it was taken
    put_all(vault, residents(3, seed=32))
    out = restore(res.path, empty_url, key, vault_id=vault.keyring.vault_id)
    assert out.counts["records"] == 40
    _reads_back(empty_url, vault.keyring, expected)


def test_backup_holds_no_plaintext(vault: Vault, tmp_path: Path) -> None:
    people = residents(30, seed=33)
    put_all(vault, people)
    res = create_backup(vault.db, vault.keyring, tmp_path / "vault.backup")
    data = res.path.read_bytes()
    for p in people:
        for field in ("name", "id_number", "mobile", "address", "notes"):
            value = p[field].encode("utf-8")
            if len(value) >= 6:
                assert value not in data, field
    assert b"synthetic-keys-test-passphrase" not in data


def _rewrite_member(path: Path, out: Path, name: str, change: bytes | None, extra: bool = False) -> None:
    with tarfile.open(path) as src, tarfile.open(out, "w:") as dst:
        for m in src.getmembers():
            f = src.extractfile(m)
            assert f is not None
            body = f.read()
            if m.name == name and change is not None:
                body = change if not change.startswith(b"FLIP") else \
                    body[:100] + bytes([body[100] ^ 1]) + body[101:]
                m.size = len(body)
            dst.addfile(m, io.BytesIO(body))
        if extra:
            info = tarfile.TarInfo("data/ransom_note.txt")
            note = b"pay up"
            info.size = len(note)
            dst.addfile(info, io.BytesIO(note))


def test_tampered_backups_are_refused_and_change_nothing(vault: Vault, empty_url: str,
                                                         tmp_path: Path) -> None:
    put_all(vault, residents(10, seed=34))
    res = create_backup(vault.db, vault.keyring, tmp_path / "vault.backup")
    key = load_verify_key(vault.keyring.path)
    data_member = next(f["name"] for f in res.manifest["files"] if f["name"].startswith("data/")
                       and f["bytes"] > 200)
    cases = {
        "flipped byte in the data": (data_member, b"FLIP", False, "backup.checksum"),
        "edited manifest": ("manifest.json", None, False, "backup.signature"),
        "stray member": (data_member, None, True, "backup.format"),
    }
    for label, (member, change, extra, code) in cases.items():
        bad = tmp_path / f"bad-{len(label)}.backup"
        if member == "manifest.json":
            with tarfile.open(res.path) as src:
                f = src.extractfile("manifest.json")
                assert f is not None
                body = f.read().replace(b'"records":10', b'"records":11')
            _rewrite_member(res.path, bad, "manifest.json", body)
        else:
            _rewrite_member(res.path, bad, member, change, extra)
        with pytest.raises(BackupError) as info:
            verify_backup(bad, key)
        assert info.value.code == code, label
        with pytest.raises(BackupError) as info:
            restore(bad, empty_url, key, vault_id=vault.keyring.vault_id)
        assert info.value.code == code, label
    truncated = tmp_path / "truncated.backup"
    truncated.write_bytes(res.path.read_bytes()[: res.path.stat().st_size // 2])
    with pytest.raises(BackupError):
        verify_backup(truncated, key)
    not_a_backup = tmp_path / "note.txt"
    not_a_backup.write_text("your files are encrypted")
    with pytest.raises(BackupError) as info:
        verify_backup(not_a_backup, key)
    assert info.value.code == "backup.format"
    # nothing was restored anywhere
    with Database(empty_url) as db:
        assert not db.table_exists("records")


def test_another_vaults_backup_is_refused(vault: Vault, empty_url: str, tmp_path: Path) -> None:
    put_all(vault, residents(5, seed=35))
    res = create_backup(vault.db, vault.keyring, tmp_path / "vault.backup")
    other = new_keyring(tmp_path / "other-keys" / "vault.keyring")
    with Database(empty_url) as db:
        Vault.initialise(db, other).close()
    from pivault.backup.signing import load_or_create_signing_key

    other_key = load_or_create_signing_key(other).verify_key
    with pytest.raises(BackupError) as info:
        restore(res.path, empty_url, other_key, vault_id=other.vault_id)
    assert info.value.code == "backup.vault" and other.vault_id in info.value.message
    # the right vault id but the other vault's signing key: the signature fails
    with pytest.raises(BackupError) as info:
        verify_backup(res.path, other_key)
    assert info.value.code == "backup.signature"
    # the other vault's (empty) store is bound to it: restoring this vault there is refused too
    with pytest.raises(BackupError) as info:
        restore(res.path, empty_url, load_verify_key(vault.keyring.path), vault_id=vault.keyring.vault_id)
    assert info.value.code == "backup.not_empty" and "another vault" in info.value.message
    with Database(empty_url) as db:
        assert db.query_one("SELECT COUNT(*) FROM records") == (0,)


def test_restore_refuses_a_store_with_data(vault: Vault, store_url: str, tmp_path: Path) -> None:
    put_all(vault, residents(5, seed=36))
    res = create_backup(vault.db, vault.keyring, tmp_path / "vault.backup")
    put_all(vault, residents(2, seed=37))
    with pytest.raises(BackupError) as info:
        restore(res.path, store_url, load_verify_key(vault.keyring.path), vault_id=vault.keyring.vault_id)
    assert info.value.code == "backup.not_empty" and "records" in info.value.message
    assert vault.store.count() == 7


def test_restore_into_a_freshly_initialised_vault(vault: Vault, empty_url: str, tmp_path: Path) -> None:
    """`pivault init` then `pivault restore`: the empty, bound store is filled."""
    people = residents(8, seed=38)
    expected = dict(zip(put_all(vault, people), people, strict=True))
    res = create_backup(vault.db, vault.keyring, tmp_path / "vault.backup")
    with Database(empty_url) as db:
        Vault.initialise(db, vault.keyring).close()
    restore(res.path, empty_url, load_verify_key(vault.keyring.path), vault_id=vault.keyring.vault_id)
    _reads_back(empty_url, vault.keyring, expected)


def test_backup_of_a_lost_keyring_restores_the_envelope(vault: Vault, empty_url: str,
                                                        tmp_path: Path) -> None:
    people = residents(4, seed=39)
    expected = dict(zip(put_all(vault, people), people, strict=True))
    res = create_backup(vault.db, vault.keyring, tmp_path / "vault.backup")
    key = load_verify_key(vault.keyring.path)
    lost = tmp_path / "new-host" / "vault.keyring"
    restore(res.path, empty_url, key, vault_id=vault.keyring.vault_id, keyring_path=lost)
    assert oct(lost.stat().st_mode & 0o777) == "0o600"
    from keys_support import provider

    ring = Keyring.open(lost, provider())
    assert ring.vault_id == vault.keyring.vault_id
    # the record keys live beside the keyring, not in the backup: bring them over
    keys_backup = backup_record_keys(_keys(vault).keys, vault.keyring, tmp_path / "keys.backup")
    from pivault.keys.shred import RecordKeyStore, record_key_store_url

    store = RecordKeyStore(record_key_store_url(lost), vault_id=ring.vault_id)
    assert restore_record_keys(keys_backup.path, store, key).added == 4
    store.close()
    _reads_back(empty_url, ring, expected)


def test_record_key_backup_is_verified_and_kind_checked(vault: Vault, tmp_path: Path) -> None:
    put_all(vault, residents(3, seed=40))
    res = backup_record_keys(_keys(vault).keys, vault.keyring, tmp_path / "keys.backup")
    key = load_verify_key(vault.keyring.path)
    assert verify_backup(res.path, key)["kind"] == "record-keys"
    with pytest.raises(BackupError) as info:
        restore(res.path, "sqlite:///" + str(tmp_path / "x.db"), key)
    assert info.value.code == "backup.kind"
    data = create_backup(vault.db, vault.keyring, tmp_path / "data.backup")
    with pytest.raises(BackupError) as info:
        restore_record_keys(data.path, _keys(vault).keys, key)
    assert info.value.code == "backup.kind"
    with pytest.raises(BackupError) as info:
        create_backup(vault.db, vault.keyring, tmp_path / "data.backup")
    assert info.value.code == "backup.exists"
    with Container.open(res.path) as c:
        assert c.manifest["counts"] == {"record_keys": 3}


def test_sqlite_backup_is_a_single_self_contained_file(sqlite_url: str, tmp_path: Path) -> None:
    kr = new_keyring(tmp_path / "keys" / "vault.keyring")
    with Database(sqlite_url) as db:
        v = Vault.initialise(db, kr)
        put_all(v, residents(5, seed=41))
        res = create_backup(db, kr, tmp_path / "vault.backup")
        v.close()
    with Container.open(res.path) as c:
        c.verify(load_verify_key(kr.path))
        out = c.extract("data/vault.db", tmp_path / "copy.db")
    conn = sqlite3.connect(out)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 5
    conn.close()
    assert not os.path.exists(str(out) + "-wal")
