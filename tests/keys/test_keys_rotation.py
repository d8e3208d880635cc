"""Rotation, status, rewrap and retirement of field keys and blind-index keys, on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest
from keys_support import ctx, provider, put_all, residents

from pivault.crypto import IntegrityError, Keyring, KeyringError
from pivault.errors import ValidationError
from pivault.keys.rewrap import index_values, rewrap
from pivault.keys.rotate import resolve_keysets, retire_unused, rotate, status
from pivault.keys.shred import ShreddingRecordStore
from pivault.keys.sites import census, file_sites
from pivault.store.records import RecordStore
from pivault.vault import Vault
from pivault.vault.facade import index_inputs, open_record, seal


def _keys(vault: Vault) -> ShreddingRecordStore:
    assert isinstance(vault.store, ShreddingRecordStore)
    return vault.store


def _all_read(vault: Vault, ids: list[str], people: list[dict[str, str]]) -> None:
    c = ctx()
    for rid, p in zip(ids, people, strict=True):
        got = vault.get(rid, ctx=c)
        assert got["id_number"] == p["id_number"] and got["name"] == p["name"]


def test_rotate_then_rewrap_then_retire_field_key(vault: Vault) -> None:
    kr = vault.keyring
    people = residents(40, seed=1)
    ids = put_all(vault, people[:30])
    old = kr.primary_key_id()
    st = status(vault.db, kr, record_keys=_keys(vault).keys)
    assert st["keysets"][0]["keys"][0]["where"]["record_keys"] == 30

    new = rotate(kr, ["aead"])["aead"]
    assert new != old and kr.primary_key_id() == new
    # new writes use the new key at once; old records keep reading
    ids += put_all(vault, people[30:])
    _all_read(vault, ids, people)
    keys = {k["key_id"]: k for k in status(vault.db, kr, record_keys=_keys(vault).keys)["keysets"][0]["keys"]}
    # 30 record keys and the key of the index's check tags (pivault.vault.checks)
    assert keys[old]["values"] == 31 and not keys[old]["retirable"]
    assert keys[old]["where"] == {"record_keys": 30, "index_check_key.key_ct": 1}
    assert keys[new]["values"] == 10 and keys[new]["primary"]
    assert retire_unused(vault.db, kr, record_keys=_keys(vault).keys) == []  # still in use

    report = rewrap(vault.db, kr, record_keys=_keys(vault).keys, batch_size=7)
    assert report.complete and report.record_keys_rewrapped == 30 and report.conflicts == 0
    c = census(vault.db, kr, record_keys=_keys(vault).keys)
    assert c.total(old) == 0 and c.total(new) == 41
    retired = retire_unused(vault.db, kr, record_keys=_keys(vault).keys)
    assert [(r.keyset, r.key_id) for r in retired] == [("aead", old)]
    assert kr.key_ids() == (new,)
    _all_read(vault, ids, people)
    # and from a fresh open of the rewritten keyring file
    again = Keyring.open(kr.path, provider())
    assert again.key_ids() == (new,) and again.generation == kr.generation


def test_rewrap_upgrades_records_without_record_keys(vault: Vault) -> None:
    """Records written before per-record keys (format 1) get keys of their own."""
    kr = vault.keyring
    people = residents(12, seed=2)
    kr.record_keys = False
    from pivault.model import Resident

    legacy = [seal(kr, Resident.parse(p)) for p in people]
    RecordStore(vault.db).insert(legacy)
    kr.record_keys = True
    assert all(r.record_key is None for r in legacy)
    rotate(kr, ["aead"])
    report = rewrap(vault.db, kr, record_keys=_keys(vault).keys)
    assert report.records_upgraded == 12
    for r in legacy:
        stored = vault.store.get(r.record_id)
        assert stored is not None and stored.record_key is not None
        assert all(ct[0] == 2 for ct in stored.fields.values())
        assert stored.created_at == pytest.approx(vault.store.get(r.record_id).created_at)  # type: ignore[union-attr]
    _all_read(vault, [r.record_id for r in legacy], people)
    assert len(retire_unused(vault.db, kr, record_keys=_keys(vault).keys)) == 1


def test_blind_index_rotation_keeps_lookups_working(vault: Vault) -> None:
    kr = vault.keyring
    people = residents(20, seed=3)
    ids = put_all(vault, people[:15])
    c = ctx()
    old = kr.primary_key_id("prf.id_number")
    rotate(kr, resolve_keysets(kr, field="id_number"))
    assert kr.index_versions("id_number") == 2
    ids += put_all(vault, people[15:])
    # lookups find residents indexed under either key
    for p, rid in zip(people, ids, strict=True):
        assert [r["record_id"] for r in vault.find(id_number=p["id_number"], ctx=c)] == [rid]
    # uniqueness still sees the old entries
    from pivault.vault import DuplicateRecord

    with pytest.raises(DuplicateRecord):
        vault.put(people[0], ctx=c)
    st = status(vault.db, kr, record_keys=_keys(vault).keys)
    prf = next(k for k in st["keysets"] if k["keyset"] == "prf.id_number")
    assert not prf["index_complete"]
    assert retire_unused(vault.db, kr, record_keys=_keys(vault).keys, dry_run=True) == []

    tags_before = dict(((r[0], r[1]), bytes(r[2])) for r in vault.db.query(
        "SELECT record_id, index_name, tag FROM blind_index"))
    report = rewrap(vault.db, kr, record_keys=_keys(vault).keys, batch_size=4)
    assert report.complete and report.indexes_rebuilt == 15
    # the rebuilt entries carry the same check tags: a tag is of the value, not of the index key
    tags_after = dict(((r[0], r[1]), bytes(r[2])) for r in vault.db.query(
        "SELECT record_id, index_name, tag FROM blind_index"))
    assert tags_after == tags_before
    retired = retire_unused(vault.db, kr, record_keys=_keys(vault).keys)
    assert [(r.keyset, r.key_id) for r in retired] == [("prf.id_number", old)]
    assert kr.index_versions("id_number") == 1
    for p, rid in zip(people, ids, strict=True):
        assert [r["record_id"] for r in vault.find(id_number=p["id_number"], ctx=c)] == [rid]
        assert [r["record_id"] for r in vault.find(mobile=p["mobile"], ctx=c)] == [rid]


def test_rewrap_index_matches_seal(vault: Vault) -> None:
    """The rebuild computes exactly the entries the Vault writes."""
    from pivault.model import Resident

    for p in residents(10, seed=4):
        r = Resident.parse(p)
        sealed = seal(vault.keyring, r, checks=vault.checks)
        assert index_values(vault.keyring, r.pi_fields()) == sealed.index
        inputs = index_inputs(vault.keyring, r.pi_fields())
        assert {n: vault.checks.tag(n, r.record_id, v) for n, v in inputs.items()} == sealed.checks


def test_rotate_all_and_field_names(keyring: Keyring) -> None:
    assert resolve_keysets(keyring) == ["aead"]
    assert resolve_keysets(keyring, field="mobile") == ["prf.mobile"]
    assert resolve_keysets(keyring, field="address") == ["aead"]
    assert set(resolve_keysets(keyring, all_keys=True)) == {"aead", "prf.id_number", "prf.mobile",
                                                            "prf.name_birth"}
    with pytest.raises(ValidationError) as bad:
        resolve_keysets(keyring, field="shoe_size")
    assert bad.value.code == "keys.usage"
    before = {ks: keyring.primary_key_id(ks) for ks in keyring.keyset_names()}
    events: list[tuple[str, str, dict[str, object]]] = []
    new = rotate(keyring, resolve_keysets(keyring, all_keys=True),
                 events=lambda op, out, d: events.append((op, out, dict(d))))
    assert all(new[ks] != before[ks] for ks in before)
    assert [e[0] for e in events] == ["keys.rotate"] * 4
    # the events name key ids, never key material
    assert all(set(e[2]) == {"keyset", "old_key_id", "new_key_id", "generation"} for e in events)


def test_retire_refuses_the_primary_and_unknown_keys(keyring: Keyring) -> None:
    with pytest.raises(KeyringError) as info:
        keyring.retire("aead", keyring.primary_key_id())
    assert info.value.code == "keyring.retire"
    with pytest.raises(KeyringError):
        keyring.retire("aead", 12345)


def test_other_sites_and_key_files_are_counted_and_rewrapped(vault: Vault, tmp_path: Path) -> None:
    """Rejects' raw rows, the audit head, signing-key files: all follow the primary key."""
    from pivault.audit import AuditEvent, AuditLog, create_audit_keys, load_writer
    from pivault.backup.signing import load_or_create_signing_key

    kr = vault.keyring
    audit_dir = kr.path.parent / f"{kr.vault_id}.audit"
    create_audit_keys(audit_dir, kr)
    log = AuditLog(vault.db, kr, load_writer(audit_dir, kr))
    log.append(AuditEvent.of(ctx(), "stats", "ok"))
    load_or_create_signing_key(kr)
    vault.db.executemany("INSERT INTO import_rejects (reject_id, batch_id, line, code, field, raw_row,"
                         " created_at) VALUES (?, 'b_1', ?, 'id.checksum', NULL, ?, 0)",
                         [(f"x_{i}", i, kr.encrypt(f"x_{i}", "raw_row", b'{"line":1,"text":"synthetic"}'))
                          for i in range(1, 1201)])  # more than one page
    old = kr.primary_key_id()
    rotate(kr, ["aead"])
    files = file_sites(kr.path, kr.vault_id)
    assert {f.path.name for f in files} == {"audit-signing.key", kr.path.name + ".backup-signing.json"}
    c = census(vault.db, kr, record_keys=_keys(vault).keys, files=files)
    where = set(c.by_key[old])
    assert {"import_rejects.raw_row", "audit_head.key_ct", "file:audit-signing.key"} <= where
    assert retire_unused(vault.db, kr, record_keys=_keys(vault).keys, files=files) == []
    report = rewrap(vault.db, kr, record_keys=_keys(vault).keys, files=files)
    assert report.other_values_rewrapped == 1201 and report.files_rewrapped == 2
    assert census(vault.db, kr, record_keys=_keys(vault).keys, files=files).total(old) == 0
    retire_unused(vault.db, kr, record_keys=_keys(vault).keys, files=files)
    assert old not in kr.key_ids()
    # everything still opens under the remaining key
    log2 = AuditLog(vault.db, kr, load_writer(audit_dir, kr))
    log2.append(AuditEvent.of(ctx(), "stats", "ok"))
    load_or_create_signing_key(kr)
    assert kr.decrypt("x_1", "raw_row", bytes(vault.db.query_one(
        "SELECT raw_row FROM import_rejects WHERE reject_id = 'x_1'")[0])).startswith(b'{"line"')  # type: ignore[index]


def test_a_value_under_a_retired_key_cannot_be_read(keyring: Keyring) -> None:
    ct = keyring.encrypt("r1", "name", b"synthetic")
    old = keyring.primary_key_id()
    keyring.rotate("aead")
    keyring.retire("aead", old)
    with pytest.raises(IntegrityError):
        keyring.decrypt("r1", "name", ct)


def test_update_and_erase_keep_the_record_key_store_exact(vault: Vault) -> None:
    people = residents(3, seed=5)
    ids = put_all(vault, people)
    keys = _keys(vault).keys
    c = ctx()
    before = keys.refs(ids[0])
    vault.update(ids[0], {"address": people[1]["address"]}, ctx=c)
    after = keys.refs(ids[0])
    assert len(before) == len(after) == 1 and before != after  # the old key went with the old value
    assert vault.get(ids[0], ctx=c)["address"] == people[1]["address"]
    stored = vault.store.get(ids[1])
    assert stored is not None
    vault.erase(ids[1], ctx=c)
    assert keys.refs(ids[1]) == []
    # the ciphertext of the erased record, as an old copy still holds it, is noise now
    stored.record_key = None
    with pytest.raises(IntegrityError) as info:
        open_record(vault.keyring, stored)
    assert info.value.code == "crypto.shredded"
    assert keys.count() == 2


def test_vault_stats_count_field_keys_through_record_keys(vault: Vault) -> None:
    kr = vault.keyring
    put_all(vault, residents(6, seed=6))
    assert vault.stats(ctx=ctx())["field_key_ids_in_use"] == {str(kr.primary_key_id()): 6}
    old = kr.primary_key_id()
    rotate(kr, ["aead"])
    put_all(vault, residents(2, seed=7))
    assert vault.stats(ctx=ctx())["field_key_ids_in_use"] == {str(old): 6, str(kr.primary_key_id()): 2}


def test_rewrap_tags_entries_written_before_check_tags(vault: Vault) -> None:
    """A vault migrated from before check tags gets them from `keys rewrap`, and lookups use them."""
    people = residents(12, seed=6)
    ids = put_all(vault, people)
    expected = {(r[0], r[1]): bytes(r[2]) for r in vault.db.query(
        "SELECT record_id, index_name, tag FROM blind_index")}
    vault.db.execute("UPDATE blind_index SET tag = NULL")  # as `migrate` leaves older entries
    report = rewrap(vault.db, vault.keyring, record_keys=_keys(vault).keys, batch_size=5)
    assert report.complete and report.records_tagged == 12 and report.indexes_rebuilt == 0
    tags = {(r[0], r[1]): bytes(r[2]) for r in vault.db.query(
        "SELECT record_id, index_name, tag FROM blind_index")}
    assert tags == expected
    for p, rid in zip(people, ids, strict=True):
        assert [r["record_id"] for r in vault.find(mobile=p["mobile"], ctx=ctx())] == [rid]
    # a second run finds nothing left to tag
    again = rewrap(vault.db, vault.keyring, record_keys=_keys(vault).keys, batch_size=5)
    assert again.records_tagged == 0


def test_no_key_is_retired_while_records_have_no_key_in_the_record_key_store(vault: Vault,
                                                                            tmp_path: Path) -> None:
    """The record-key store at hand is empty or not the vault's real one (moved, an unmounted disk,
    a wrong [keys] record_key_store): every record looks erased to the rewrap, and the census finds
    no record key under the old field key. Retiring it would make every record key in the real
    store unreadable for good, and retiring the old index keys would hide the records whose entries
    the walk could not rebuild. So nothing is retired until the store has the records' keys."""
    from pivault.errors import PivaultError
    from pivault.keys.shred import RecordKeyStore

    kr = vault.keyring
    people = residents(12, seed=31)
    ids = put_all(vault, people)
    erased = vault.put(residents(1, seed=32)[0], ctx=ctx())
    _keys(vault).keys.delete_records([erased])  # an erasure that stopped before its row went
    old = kr.primary_key_id()
    old_index = kr.primary_key_id("prf.mobile")
    rotate(kr, ["aead", "prf.mobile"])
    before = {ks: kr.key_ids(ks) for ks in kr.keyset_names()}
    wrong = RecordKeyStore(f"sqlite:///{tmp_path / 'empty.recordkeys'}", vault_id=kr.vault_id)
    try:
        report = rewrap(vault.db, kr, record_keys=wrong)
        assert report.complete and report.unreadable >= 13  # in the walk, and again in the recheck
        for dry_run in (True, False):
            with pytest.raises(PivaultError) as info:
                retire_unused(vault.db, kr, record_keys=wrong, dry_run=dry_run)
            assert info.value.code == "keys.retire_keys_missing" and "\n" not in info.value.message
            assert "13" in info.value.message
        assert {ks: kr.key_ids(ks) for ks in kr.keyset_names()} == before
    finally:
        wrong.close()
    real = _keys(vault).keys
    assert rewrap(vault.db, kr, record_keys=real).complete
    with pytest.raises(PivaultError) as info:  # the one record erased half-way still holds it back
        retire_unused(vault.db, kr, record_keys=real)
    assert info.value.code == "keys.retire_keys_missing" and erased in info.value.message
    vault.erase(erased, ctx=ctx())  # erasing it again finishes the erasure
    retired = {(r.keyset, r.key_id) for r in retire_unused(vault.db, kr, record_keys=real)}
    assert retired == {("aead", old), ("prf.mobile", old_index)}
    _all_read(vault, ids, people)


def test_a_damaged_key_file_is_named_by_the_rewrap_and_left_as_it_is(vault: Vault) -> None:
    """A key file whose ciphertext no key opens (damaged, or another keyring's) was skipped in silence:
    the operator learnt of it only when the signing key it held failed."""
    import base64
    import json

    from pivault.audit import create_audit_keys
    from pivault.backup.signing import load_or_create_signing_key

    kr = vault.keyring
    create_audit_keys(kr.path.parent / f"{kr.vault_id}.audit", kr)
    load_or_create_signing_key(kr)
    rotate(kr, ["aead"])
    files = file_sites(kr.path, kr.vault_id)
    damaged = next(f for f in files if f.path.name == "audit-signing.key")
    doc = json.loads(damaged.path.read_bytes())
    ct = bytearray(base64.b64decode(doc[damaged.member]))
    ct[-1] ^= 0x01
    doc[damaged.member] = base64.b64encode(bytes(ct)).decode("ascii")
    damaged.path.write_text(json.dumps(doc), encoding="utf-8")
    before = damaged.path.read_bytes()
    report = rewrap(vault.db, kr, record_keys=_keys(vault).keys, files=files)
    assert report.files_unreadable == ["audit-signing.key"]
    assert report.files_rewrapped == 1  # the backup signing key, intact
    assert damaged.path.read_bytes() == before


def test_a_record_key_moved_to_another_record_is_named_and_holds_only_its_key_back(vault: Vault) -> None:
    """An insider swaps two records' wrapped keys in the record-key store (or a disk damages one).

    The rewrap stopped at the first such key with a bare ``crypto.integrity``, naming no record,
    every time it was run: a rotation after a key compromise could never finish, and the old key
    never be retired. Now it walks on, names those records, rewraps every other key, and the old
    key stays (the census still finds the moved keys under it) until they are dealt with."""
    kr = vault.keyring
    people = residents(14, seed=33)
    ids = put_all(vault, people)
    keys = _keys(vault).keys
    a, b = ids[3], ids[9]
    (wrapped_a,), = keys.db.query("SELECT wrapped FROM record_keys WHERE record_id = ?", (a,))
    (wrapped_b,), = keys.db.query("SELECT wrapped FROM record_keys WHERE record_id = ?", (b,))
    keys.db.execute("UPDATE record_keys SET wrapped = ? WHERE record_id = ?", (bytes(wrapped_b), a))
    keys.db.execute("UPDATE record_keys SET wrapped = ? WHERE record_id = ?", (bytes(wrapped_a), b))
    for rid in (a, b):  # a moved key opens nothing: its record fails integrity
        with pytest.raises(IntegrityError):
            vault.get(rid, ctx=ctx())
    old = kr.primary_key_id()
    new = rotate(kr, ["aead"])["aead"]

    report = rewrap(vault.db, kr, record_keys=keys, batch_size=4)
    assert report.complete and report.damaged_record_ids == sorted([a, b])
    assert report.record_keys_rewrapped == len(ids) - 2
    c = census(vault.db, kr, record_keys=keys)
    assert c.total(old) == 2 and c.total(new) == len(ids) - 2 + 1  # and the check tags' key
    assert retire_unused(vault.db, kr, record_keys=keys) == []  # the moved keys still name it
    assert old in kr.key_ids()
    good = [(rid, p) for rid, p in zip(ids, people, strict=True) if rid not in (a, b)]
    _all_read(vault, [rid for rid, _ in good], [p for _, p in good])


def test_a_rewrap_meets_a_record_key_wrapped_under_a_key_another_process_added(vault: Vault) -> None:
    """Another process rotates and writes while the rewrap's keyring has not yet looked at the file
    (the 10 ms between two looks): that record's key is wrapped under a key the rewrap lacks. It looks
    at the file again and goes on, rather than calling the new record damaged."""
    import time

    people = residents(8, seed=34)
    ids = put_all(vault, people[:4])
    operator = Keyring.open(vault.keyring.path, provider())
    operator.record_keys = True
    operator.primary_key_id()
    operator._fresh_at = time.monotonic() + 3600  # it does not look at its file now
    rotate(vault.keyring, ["aead"])
    ids += put_all(vault, people[4:])  # under the key the operator's keyring does not hold yet
    report = rewrap(vault.db, operator, record_keys=_keys(vault).keys, batch_size=3)
    assert report.complete and report.damaged == 0 and report.damaged_record_ids == []
    assert operator.primary_key_id() == vault.keyring.primary_key_id()
    _all_read(vault, ids, people)


def test_keys_gc_refuses_a_grace_that_is_not_a_number(vault: Vault, store_url: str) -> None:
    """``--grace nan`` passed the check that keeps short grace periods for stopped writers (NaN is
    below nothing), and on PostgreSQL, where NaN sorts above every number, it then deleted every key
    without a committed record: the key of a record in the middle of its write too, which committed
    unreadable for good. It is refused now, as a short grace is."""
    from pivault.errors import PivaultError
    from pivault.keys.shred import RecordKeyStore
    from pivault.model import Resident

    kr = vault.keyring
    put_all(vault, residents(3, seed=35))
    # a record-key store on the test's backend (PostgreSQL keeps the keys of several API nodes)
    with RecordKeyStore(store_url, vault_id=kr.vault_id) as keys:
        sealed = seal(kr, Resident.parse(residents(1, seed=36)[0]))
        assert sealed.record_key is not None
        keys.put_many([(sealed.record_id, sealed.record_key)])  # the first half of a put: its key
        for writers_stopped in (False, True):
            with pytest.raises(PivaultError) as info:
                keys.collect_garbage(vault.db, grace_seconds=float("nan"), writers_stopped=writers_stopped)
            assert info.value.code == "keys.gc_grace" and "\n" not in info.value.message
        assert keys.collect_garbage(vault.db) == 0
        assert keys.get(sealed.record_id, sealed.record_key[:4]) == sealed.record_key


def test_a_record_with_an_empty_or_truncated_field_is_named_not_a_traceback(vault: Vault) -> None:
    """A field cell emptied (x'') or cut to its first byte, by hand or by damage, stopped every
    rewrap with an IndexError traceback (or a bare integrity error), so the rotation never finished.
    Such a record is now named as damaged and the walk goes on."""
    kr = vault.keyring
    people = residents(9, seed=37)
    ids = put_all(vault, people)
    emptied, cut = ids[2], ids[6]
    vault.db.execute("UPDATE records SET notes = ? WHERE record_id = ?", (b"", emptied))
    vault.db.execute("UPDATE records SET address = ? WHERE record_id = ?", (b"\x01", cut))
    rotate(kr, ["aead", "prf.id_number"])
    report = rewrap(vault.db, kr, record_keys=_keys(vault).keys, batch_size=4)
    assert report.complete and report.damaged_record_ids == sorted([emptied, cut])
    good = [(rid, p) for rid, p in zip(ids, people, strict=True) if rid not in (emptied, cut)]
    _all_read(vault, [rid for rid, _ in good], [p for _, p in good])
    for rid, p in good:
        assert [r["record_id"] for r in vault.find(id_number=p["id_number"], ctx=ctx())] == [rid]
