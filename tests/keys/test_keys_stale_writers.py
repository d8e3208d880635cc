"""A process that opened the keyring before a rotation keeps writing records others can read.

An API node or an import that runs across `keys rotate`, `keys rewrap` and
`keys retire` (run from another process) must not go on wrapping new record
keys, or making reject rows and audit heads, under the key that was just
destroyed: those records would open nowhere once that process ends.
"""

from __future__ import annotations

import time

import pytest
from keys_support import ctx, provider, put_all, residents

from pivault.crypto import Keyring, KeyringError
from pivault.keys.rewrap import rewrap
from pivault.keys.rotate import retire_unused, rotate
from pivault.keys.shred import ShreddingRecordStore
from pivault.store.db import Database
from pivault.vault import Vault


def _fresh_reader(vault: Vault) -> Vault:
    """The vault as a process started now sees it: the keyring file as it is on disk."""
    return Vault.initialise(Database(vault.db.url), Keyring.open(vault.keyring.path, provider()))


def _operator_retires(vault: Vault) -> int:
    """`keys rotate`, `keys rewrap --retire` from another process; returns the retired key id."""
    kr = Keyring.open(vault.keyring.path, provider())
    kr.record_keys = True
    old = kr.primary_key_id()
    rotate(kr, ["aead"])
    store = vault.store
    assert isinstance(store, ShreddingRecordStore)
    assert rewrap(vault.db, kr, record_keys=store.keys).complete
    retired = retire_unused(vault.db, kr, record_keys=store.keys)
    assert ("aead", old) in [(r.keyset, r.key_id) for r in retired]
    return old


def test_a_long_running_writer_follows_a_rotation_and_retirement(vault: Vault) -> None:
    people = residents(8, seed=21)
    ids = put_all(vault, people[:3])  # the service is running
    _operator_retires(vault)
    time.sleep(0.05)  # the writer looks at the keyring file at most every 10 ms
    ids += put_all(vault, people[3:])  # and keeps writing, never restarted
    reader = _fresh_reader(vault)
    try:
        c = ctx()
        for rid, p in zip(ids, people, strict=True):
            assert reader.get(rid, ctx=c)["id_number"] == p["id_number"]
    finally:
        reader.close()


def test_a_writer_refuses_when_the_keys_changed_under_a_root_key_it_lacks(vault: Vault) -> None:
    people = residents(4, seed=22)
    put_all(vault, people[:1])
    other = Keyring.open(vault.keyring.path, provider())
    other.change_root(provider("another synthetic passphrase"))
    time.sleep(0.05)
    put_all(vault, people[1:2])  # a root change alone leaves the data keys as they were
    other.rotate("aead")
    time.sleep(0.05)  # a process looks at the keyring file at most every 10 ms
    before = vault.db.query_one("SELECT COUNT(*) FROM records")
    with pytest.raises(KeyringError) as exc:
        put_all(vault, people[2:3])
    assert exc.value.code == "keyring.stale"
    assert vault.db.query_one("SELECT COUNT(*) FROM records") == before  # nothing written


def test_an_older_keyring_copy_put_back_is_refused_not_followed(vault: Vault) -> None:
    people = residents(4, seed=23)
    path = vault.keyring.path
    older = path.read_bytes()
    ids = put_all(vault, people[:1])
    rotate(vault.keyring, ["aead"])
    ids += put_all(vault, people[1:2])  # under the new key, which the older copy lacks
    newer = path.read_bytes()
    path.unlink()
    path.write_bytes(older)  # an operator restores last week's keyring file by mistake
    path.chmod(0o600)
    time.sleep(0.05)
    with pytest.raises(KeyringError) as exc:
        put_all(vault, people[2:3])
    assert exc.value.code == "keyring.rollback"
    with pytest.raises(KeyringError):
        vault.keyring.rotate("aead")  # nor is a key change built on the older file
    c = ctx()
    for rid, p in zip(ids, people[:2], strict=True):  # the keys held are kept: everything still reads
        assert vault.get(rid, ctx=c)["name"] == p["name"]
    path.unlink()
    path.write_bytes(newer)
    path.chmod(0o600)
    time.sleep(0.05)
    ids += put_all(vault, people[2:3])
    reader = _fresh_reader(vault)
    try:
        for rid, p in zip(ids, people[:3], strict=True):
            assert reader.get(rid, ctx=c)["name"] == p["name"]
    finally:
        reader.close()
