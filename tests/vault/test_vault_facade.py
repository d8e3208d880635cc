"""The Vault door on both backends: put, get, find, update, erase, integrity, guard order."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path

import pytest
from vault_support import make_residents, new_keyring

from pivault.crypto import IntegrityError
from pivault.errors import NotFoundError, ValidationError
from pivault.policy import AccessContext
from pivault.store.db import Database
from pivault.vault import OUTPUT_FIELDS, AccessDenied, DuplicateRecord, LocalGuard, Vault, VaultMismatch, meta


def test_put_get_masked_and_revealed(vault: Vault, ctx: AccessContext, reveal: AccessContext) -> None:
    r = make_residents(1)[0]
    rid = vault.put(r, ctx=ctx)
    masked = vault.get(rid, ctx=ctx)
    assert tuple(masked) == OUTPUT_FIELDS
    assert masked["id_number"] == r["id_number"][:3] + "*" * 11 + r["id_number"][-4:]
    assert masked["mobile"] == r["mobile"][:3] + "****" + r["mobile"][-4:]
    assert masked["name"] == r["name"][0] + "*" * (len(r["name"]) - 1)
    assert str(masked["birth_date"]).endswith("-**-**")
    assert r["address"] not in str(masked)
    full = vault.get(rid, ctx=reveal)
    assert full["name"] == r["name"] and full["id_number"] == r["id_number"]
    assert full["mobile"] == r["mobile"] and full["address"] == r["address"]
    born = _dt.date(int(r["id_number"][6:10]), int(r["id_number"][10:12]), int(r["id_number"][12:14]))
    assert full["birth_date"] == born.isoformat()
    assert full["region_code"] == r["id_number"][:6]
    assert full["gender"] in ("M", "F")


def test_get_unknown_and_duplicate_put(vault: Vault, ctx: AccessContext) -> None:
    with pytest.raises(NotFoundError):
        vault.get("r_" + "0" * 26, ctx=ctx)
    with pytest.raises(ValidationError) as bad:  # refused before it could reach the audit trail
        vault.get("not-an-id", ctx=ctx)
    assert bad.value.code == "record.id"
    r = make_residents(1, seed=3)[0]
    rid = vault.put(r, ctx=ctx)
    with pytest.raises(DuplicateRecord) as info:
        vault.put({**r, "mobile": "13900000000"}, ctx=ctx)
    assert info.value.existing_record_id == rid
    assert r["id_number"] not in str(info.value)


def test_find_by_each_key(vault: Vault, ctx: AccessContext, reveal: AccessContext) -> None:
    people = make_residents(20, seed=5)
    ids = [vault.put(p, ctx=ctx) for p in people]
    for rid, p in zip(ids, people, strict=True):
        born = f"{p['id_number'][6:10]}-{p['id_number'][10:12]}-{p['id_number'][12:14]}"
        assert [x["record_id"] for x in vault.find(id_number=p["id_number"], ctx=ctx)] == [rid]
        # the query is normalised like the data: spaces, full-width digits, +86
        spaced = " ".join(p["id_number"][i:i + 6] for i in range(0, 18, 6))
        assert [x["record_id"] for x in vault.find(id_number=spaced, ctx=ctx)] == [rid]
        assert [x["record_id"] for x in vault.find(mobile="+86 " + p["mobile"], ctx=ctx)] == [rid]
        hits = vault.find(name=p["name"], birth_date=born, ctx=reveal)
        assert [x["record_id"] for x in hits] == [rid]
        assert hits[0]["name"] == p["name"]
        # every criterion must hold
        assert vault.find(id_number=p["id_number"], mobile="13000000000", ctx=ctx) == []
    other = make_residents(30, seed=99)[-1]
    assert vault.find(id_number=other["id_number"], ctx=ctx) == []
    with pytest.raises(ValidationError):
        vault.find(name=people[0]["name"], ctx=ctx)
    with pytest.raises(ValidationError):
        vault.find(ctx=ctx)
    with pytest.raises(ValidationError):
        vault.find(id_number="123", ctx=ctx)


def test_find_exact_despite_index_collisions(store_url: str, tmp_path: Path, ctx: AccessContext) -> None:
    """With a 2-bit index (population 16) most residents share index values."""
    db = Database(store_url)
    kr = new_keyring(tmp_path / "keys" / "tiny.keyring", population=16)
    assert kr.index_bits("id_number") <= 3
    v = Vault.initialise(db, kr)
    people = make_residents(40, seed=11)
    ids = [v.put(p, ctx=ctx) for p in people]
    buckets = {kr.blind_index("id_number", p["id_number"]) for p in people}
    assert len(buckets) < len(people) / 4  # collisions are forced
    for rid, p in zip(ids, people, strict=True):
        assert [x["record_id"] for x in v.find(id_number=p["id_number"], ctx=ctx)] == [rid]
        assert [x["record_id"] for x in v.find(mobile=p["mobile"], ctx=ctx)] == [rid]
    db.close()


def test_update(vault: Vault, ctx: AccessContext, reveal: AccessContext) -> None:
    a, b = make_residents(2, seed=8)
    rid = vault.put(a, ctx=ctx)
    rid_b = vault.put(b, ctx=ctx)
    vault.update(rid, {"mobile": "13912345678", "notes": None}, ctx=ctx)
    got = vault.get(rid, ctx=reveal)
    assert got["mobile"] == "13912345678" and got["notes"] is None and got["name"] == a["name"]
    assert vault.find(mobile=a["mobile"], ctx=ctx) == []
    assert [x["record_id"] for x in vault.find(mobile="13912345678", ctx=ctx)] == [rid]
    with pytest.raises(ValidationError):
        vault.update(rid, {"mobile": "12345"}, ctx=ctx)
    with pytest.raises(ValidationError):
        vault.update(rid, {"gender": "F"}, ctx=ctx)
    with pytest.raises(DuplicateRecord):
        vault.update(rid, {"id_number": b["id_number"]}, ctx=ctx)
    assert vault.get(rid_b, ctx=reveal)["id_number"] == b["id_number"]
    with pytest.raises(NotFoundError):
        vault.update("r_" + "1" * 26, {"notes": "x"}, ctx=ctx)


def test_erase(vault: Vault, ctx: AccessContext) -> None:
    a, b = make_residents(2, seed=9)
    rid = vault.put(a, ctx=ctx)
    keep = vault.put(b, ctx=ctx)
    vault.erase(rid, ctx=ctx)
    with pytest.raises(NotFoundError):
        vault.get(rid, ctx=ctx)
    assert vault.find(id_number=a["id_number"], ctx=ctx) == []
    assert vault.db.query("SELECT COUNT(*) FROM blind_index WHERE record_id = ?", (rid,))[0][0] == 0
    with pytest.raises(NotFoundError):
        vault.erase(rid, ctx=ctx)
    assert vault.get(keep, ctx=ctx)["record_id"] == keep
    # counted for the scrub (the refused second erase is not), on both backends
    assert vault.stats(ctx=ctx, key_usage=False)["erasure"] == {"erased_since_scrub": 1, "last_scrub": None}
    vault.erase(keep, ctx=ctx)
    erased, _ = meta.erasures_since_scrub(vault.db)
    assert erased == 2
    meta.scrubbed(vault.db, 1)  # one more erasure came while that scrub ran: it stays to do
    assert meta.erasures_since_scrub(vault.db)[0] == 1
    assert meta.erasures_since_scrub(vault.db)[1] is not None


def test_moved_ciphertext_fails_with_clear_integrity_error(vault: Vault, ctx: AccessContext) -> None:
    a, b = make_residents(2, seed=12)
    ra = vault.put(a, ctx=ctx)
    rb = vault.put(b, ctx=ctx)
    # an attacker with database access swaps a name between two rows
    vault.db.execute("UPDATE records SET name = (SELECT name FROM records WHERE record_id = ?)"
                     " WHERE record_id = ?", (ra, rb))
    with pytest.raises(IntegrityError) as info:
        vault.get(rb, ctx=ctx)
    err = info.value
    assert err.code == "crypto.integrity"
    assert rb in err.message and "'name'" in err.message
    for value in (*a.values(), *b.values()):
        if value:
            assert value not in err.message
    assert vault.get(ra, ctx=ctx)["record_id"] == ra  # the source row is untouched
    # a find that reaches the damaged row fails the same way rather than skipping it
    with pytest.raises(IntegrityError):
        vault.find(id_number=b["id_number"], ctx=ctx)


def test_store_refuses_another_vaults_keyring(vault: Vault, tmp_path: Path) -> None:
    other = new_keyring(tmp_path / "keys" / "other.keyring")
    with pytest.raises(VaultMismatch) as info:
        Vault(vault.db, other)
    assert info.value.code == "vault.mismatch"
    with pytest.raises(VaultMismatch):
        Vault.initialise(vault.db, other)


class RecordingGuard(LocalGuard):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def authorise(self, ctx: AccessContext, operation: str, fields: Sequence[str]) -> None:
        self.calls.append(("authorise", operation))
        super().authorise(ctx, operation, fields)

    def budget(self, ctx: AccessContext, operation: str, n: int) -> None:
        self.calls.append(("budget", operation))

    def audit(self, ctx: AccessContext, operation: str, record_ids: Sequence[str], outcome: str) -> None:
        self.calls.append(("audit:" + outcome, operation))

    def mask(self, ctx: AccessContext, field: str, value: str | None) -> str | None:
        self.calls.append(("mask", field))
        return super().mask(ctx, field, value)


def test_guard_called_in_order_and_denies_unknown_roles(vault: Vault, ctx: AccessContext) -> None:
    guard = RecordingGuard()
    v = Vault(vault.db, vault.keyring, guard=guard)
    p = make_residents(1, seed=13)[0]
    rid = v.put(p, ctx=ctx)
    assert guard.calls == [("authorise", "put"), ("budget", "put"), ("audit:ok", "put")]
    guard.calls.clear()
    v.get(rid, ctx=ctx)
    assert guard.calls[:3] == [("authorise", "get"), ("budget", "get"), ("audit:ok", "get")]
    assert {c for c, _ in guard.calls[3:]} == {"mask"}
    guard.calls.clear()
    v.find(id_number=p["id_number"], ctx=ctx)
    assert guard.calls[:3] == [("authorise", "find"), ("budget", "find"), ("audit:ok", "find")]
    stranger = AccessContext(principal="api:someone", role="analyst", purpose="curiosity")
    guard.calls.clear()
    with pytest.raises(AccessDenied) as info:
        v.get(rid, ctx=stranger)
    assert info.value.code == "policy.denied"
    assert guard.calls == [("authorise", "get"), ("audit:denied", "get")]


def test_name_birth_value_sliced_as_the_date_gives_it() -> None:
    # the name_birth index value takes the birth date from the number's digits without
    # parsing it: the same text as the date's ISO form, for every day of a leap year and more
    from pivault.model import resident_id as rid
    from pivault.vault.facade import _name_birth_of, name_birth_key

    day = _dt.date(1999, 12, 25)
    while day <= _dt.date(2001, 1, 5):
        number = rid.make("110101", day, 123)
        assert _name_birth_of("张三", number) == name_birth_key("张三", rid.facts(number).birth_date)
        day += _dt.timedelta(days=1)
    # anything but the 18-character form takes the long way
    with pytest.raises(ValueError):
        _name_birth_of("张三", "11010119991325")


def test_seal_columns_seals_as_seal_does(sqlite_vault: Vault) -> None:
    # an import's workers seal a chunk column by column: the same index values and check tags,
    # ciphertext that opens to the same resident under each record's own new key
    from pivault.model import Resident
    from pivault.vault.facade import open_record, seal, seal_columns

    kr = sqlite_vault.keyring
    people = [Resident.parse(p) for p in make_residents(30, seed=3)]
    people[4] = Resident.parse({**make_residents(1, seed=4)[0], "mobile": None})
    cols = seal_columns(kr, people, "b_x", sqlite_vault.checks)
    assert cols.record_ids == [r.record_id for r in people] and cols.batch_id == "b_x"
    assert 4 not in cols.index["mobile"][0]
    for k, r in enumerate(people):
        one, got = seal(kr, r, "b_x", sqlite_vault.checks), cols.record(k)
        assert (got.index, got.checks, got.batch_id) == (one.index, one.checks, "b_x")
        assert got.record_key is not None and got.record_key != one.record_key
        assert open_record(kr, got) == r
