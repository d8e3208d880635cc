"""Drills: a ransom wipe and its restore; an erase that no old backup can undo. Both backends."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from backup_support import drop_quarantine
from keys_support import audited_vault, ctx, put_all, residents

from pivault.audit import entries, verify
from pivault.backup import (
    backup_record_keys,
    create_backup,
    load_verify_key,
    restore,
    restore_record_keys,
    salvage_audit_trail,
)
from pivault.crypto import IntegrityError, Keyring
from pivault.errors import NotFoundError
from pivault.keys.attach import open_record_key_store
from pivault.keys.events import audit_events
from pivault.keys.shred import ShreddingRecordStore
from pivault.policy.context import AccessContext
from pivault.store.db import Database, parse_url
from pivault.vault import Vault
from pivault.vault.facade import open_record


def _import(vault: Vault, people: list[dict[str, str]], tmp_path: Path) -> dict[str, dict[str, str]]:
    path = tmp_path / "residents.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["name", "id_number", "mobile", "address", "notes"])
        w.writeheader()
        w.writerows(people)
    summary = vault.import_files([path], ctx=ctx("import"), workers=0)
    assert summary.imported == len(people) and summary.reconciles
    by_idn = {p["id_number"]: p for p in people}
    out = {}
    for rid in vault.store.iter_ids():
        stored = vault.store.get(rid)
        assert stored is not None
        from pivault.vault.facade import decrypt_fields

        out[rid] = by_idn[decrypt_fields(vault.keyring, stored, ("id_number",))["id_number"]]
    return out


def test_ransom_drill(store_url: str, keyring: Keyring, tmp_path: Path) -> None:
    audit_dir = keyring.path.parent / f"{keyring.vault_id}.audit"
    db = Database(store_url)
    vault, verifier = audited_vault(db, keyring, audit_dir)
    expected = _import(vault, residents(150, seed=51), tmp_path)
    data = create_backup(db, keyring, tmp_path / "shelf" / "vault.backup")
    rk_store = vault.store
    assert isinstance(rk_store, ShreddingRecordStore)
    keys = backup_record_keys(rk_store.keys, keyring, tmp_path / "key-shelf" / "record-keys.backup")
    verify_key = load_verify_key(keyring.path)

    # the intruder, with a stolen operator credential, wipes through the door first ...
    intruder = AccessContext(principal="contractor-7", role="intruder", purpose="maintenance")
    erased_by_intruder = sorted(expected)[:12]
    for rid in erased_by_intruder:
        vault.erase(rid, ctx=intruder)
    # ... then straight in the database, and leaves a note
    db.execute("DELETE FROM blind_index")
    db.execute("DELETE FROM records")
    db.execute("CREATE TABLE ransom_note (message TEXT NOT NULL)")
    db.execute("INSERT INTO ransom_note (message) VALUES ('your data is gone; pay 10 BTC')")
    assert verify(db, verifier, keyring=keyring).ok  # the door's trail itself is intact
    wipe = [e for e in entries(db, principal="contractor-7")]
    assert {e.operation for e in wipe} == {"erase"} and len(wipe) == 12
    vault.close()

    # restore: the damaged store is set aside as evidence, the backup goes in its place
    with pytest.raises(Exception) as refused:
        restore(data.path, store_url, verify_key, vault_id=keyring.vault_id)
    assert getattr(refused.value, "code", "") == "backup.not_empty"
    report = restore(data.path, store_url, verify_key, vault_id=keyring.vault_id, quarantine=True)
    assert report.quarantined
    restored = Database(store_url)
    if parse_url(store_url).dialect == "sqlite":
        damaged = Database("sqlite:///" + report.quarantined)
        salvaged = salvage_audit_trail(restored, damaged)
        damaged.close()
    else:
        salvaged = salvage_audit_trail(restored, restored, source_schema=report.quarantined)
    assert salvaged >= 12
    # the intruder's door erasures destroyed record keys; bring those back from the key shelf
    put_back: list[tuple[str, str, dict[str, object]]] = []
    with open_record_key_store(keyring) as live_keys:
        assert restore_record_keys(keys.path, live_keys, verify_key, only_records=erased_by_intruder,
                                   events=lambda op, out, d: put_back.append((op, out, dict(d)))).added == 12
    # the trail will say which erasures this undid, not only how many
    assert put_back == [("keys.restore", "ok", {"file": keys.path.name, "keys_added": 12,
                                                "records": erased_by_intruder})]
    sink = audit_events(restored, keyring, ctx("restore"), audit_dir)
    assert sink is not None
    sink("backup.restore", "ok", {"backup_id": report.backup_id, "salvaged_entries": salvaged})

    # counts match, every resident reads back, audit verify passes, the wipe is on the record
    v = Vault(restored, keyring)
    try:
        assert v.store.count() == data.manifest["counts"]["records"] == 150
        assert restored.query_one("SELECT COUNT(*) FROM blind_index")[0] \
            == data.manifest["counts"]["blind_index"]  # type: ignore[index]
        assert not restored.table_exists("ransom_note")
        c = ctx()
        for rid, p in expected.items():
            got = v.get(rid, ctx=c)
            want = (p["name"], p["id_number"], p["address"])
            assert (got["name"], got["id_number"], got["address"]) == want
        for p in list(expected.values())[:20]:
            assert len(v.find(mobile=p["mobile"], ctx=c)) == 1
        report_v = verify(restored, verifier, keyring=keyring)
        assert report_v.ok, report_v.message
        trail = list(entries(restored, after_seq=data.manifest["audit_head"]["seq"]))
        assert [e.operation for e in trail if e.principal == "contractor-7"] == ["erase"] * 12
        assert trail[-1].operation == "backup.restore"
    finally:
        getattr(v.store, "close", lambda: None)()
        restored.close()
    drop_quarantine(store_url, report.quarantined)


def test_erase_drill(store_url: str, keyring: Keyring, tmp_path: Path) -> None:
    """Back up, erase a resident, restore the old backup: that resident cannot be decrypted."""
    db = Database(store_url)
    vault = Vault.initialise(db, keyring)
    people = residents(20, seed=52)
    ids = put_all(vault, people)
    data = create_backup(db, keyring, tmp_path / "vault.backup")
    victim = ids[7]
    vault.erase(victim, ctx=ctx("erasure request"))
    vault.close()
    verify_key = load_verify_key(keyring.path)

    # disaster (or a curious insider with the old backup): it all goes back in
    with Database(store_url) as wipe:
        for t in ("blind_index", "records", "index_check_key"):
            wipe.execute(f"DELETE FROM {t}")
    restore(data.path, store_url, verify_key, vault_id=keyring.vault_id)
    with Database(store_url) as restored:
        v = Vault(restored, keyring)
        try:
            assert v.store.count() == 20  # the erased row is back, as ciphertext ...
            stored = v.store.get(victim)
            assert stored is not None
            with pytest.raises(IntegrityError) as info:
                open_record(keyring, stored)
            assert info.value.code == "crypto.shredded"  # ... and it is noise
            assert people[7]["id_number"] not in info.value.message
            # through the door the resident stays erased
            with pytest.raises(NotFoundError):
                v.get(victim, ctx=ctx())
            assert v.find(id_number=people[7]["id_number"], ctx=ctx()) == []
            for rid, p in zip(ids, people, strict=True):
                if rid != victim:
                    assert v.get(rid, ctx=ctx())["id_number"] == p["id_number"]
        finally:
            getattr(v.store, "close", lambda: None)()
    # restoring with the record-key store re-applies the erasure: the row is not even there
    with Database(store_url) as wipe:
        for t in ("blind_index", "records", "index_check_key"):
            wipe.execute(f"DELETE FROM {t}")
    with open_record_key_store(keyring) as live_keys:
        out = restore(data.path, store_url, verify_key, vault_id=keyring.vault_id, record_keys=live_keys)
    assert out.erased_since_backup == 1
    with Database(store_url) as restored:
        v = Vault(restored, keyring)
        try:
            assert v.store.count() == 19
            assert v.find(id_number=people[7]["id_number"], ctx=ctx()) == []
            assert v.find(id_number=people[8]["id_number"], ctx=ctx())[0]["record_id"] == ids[8]
        finally:
            getattr(v.store, "close", lambda: None)()
    # the keyring, the passphrase and the backup together cannot bring it back either
    from keys_support import provider

    from pivault.backup import Container

    again = Keyring.open(keyring.path, provider())
    with Container.open(data.path) as c:
        c.verify(verify_key)
        assert c.manifest["counts"]["records"] == 20
    assert again.vault_id == keyring.vault_id


@pytest.mark.parametrize("quarantine", [False, True])
def test_restore_never_drops_or_moves_another_programs_tables(store_url: str, keyring: Keyring,
                                                              tmp_path: Path, quarantine: bool) -> None:
    # a store URL typed by mistake: another program's database, whose tables happen to be empty
    audit_dir = keyring.path.parent / f"{keyring.vault_id}.audit"
    source = Database(store_url)
    vault, _ = audited_vault(source, keyring, audit_dir)
    _import(vault, residents(20, seed=53), tmp_path)
    data = create_backup(source, keyring, tmp_path / "shelf" / "vault.backup")
    vault.close()
    if parse_url(store_url).dialect == "sqlite":
        target = f"sqlite:///{tmp_path / 'app.db'}"
    else:  # another schema of the same database
        import psycopg

        schema = store_url.rsplit("%3D", 1)[1] + "_app"
        with psycopg.connect(store_url.split("?")[0], autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        target = store_url.rsplit("%3D", 1)[0] + "%3D" + schema
    try:
        with Database(target) as other:
            other.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        with pytest.raises(Exception) as refused:
            restore(data.path, target, load_verify_key(keyring.path), vault_id=keyring.vault_id,
                    quarantine=quarantine)
        assert getattr(refused.value, "code", "") == "backup.foreign_store"
        with Database(target) as after:
            assert after.table_exists("customers") and not after.table_exists("records")
    finally:
        if not target.startswith("sqlite"):
            with psycopg.connect(store_url.split("?")[0], autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")
