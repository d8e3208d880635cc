"""Check tags on blind-index entries, on both backends: a lookup reads only its match.

The blind index is truncated so that several residents share each value; the
check tag lets a lookup leave the others out before it reads their records,
without telling anything to someone who lacks the vault's keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from vault_support import make_residents, new_keyring

from pivault.errors import PivaultError
from pivault.policy import AccessContext
from pivault.store.db import Database
from pivault.vault import Vault
from pivault.vault.checks import TAG_BYTES, load_check_tags


@pytest.fixture
def crowded(store_url: str, tmp_path: Path) -> Iterator[tuple[Vault, list[dict[str, str]], list[str]]]:
    """A vault whose 2-3 bit index (population 16) puts ~10 residents behind each value."""
    db = Database(store_url)
    kr = new_keyring(tmp_path / "keys" / "tiny.keyring", population=16)
    v = Vault.initialise(db, kr)
    people = make_residents(40, seed=21)
    ctx = AccessContext(principal="local:test", role="operator", purpose="administration")
    ids = [v.put(p, ctx=ctx) for p in people]
    yield v, people, ids
    db.close()


def _op() -> AccessContext:
    return AccessContext(principal="local:test", role="operator", purpose="administration")


def test_lookup_reads_only_the_candidates_whose_tag_matches(crowded: tuple[Vault, list[dict[str, str]],
                                                                           list[str]]) -> None:
    v, people, ids = crowded
    kr = v.keyring
    values = [kr.blind_index("id_number", p["id_number"]) for p in people]
    # the index alone does not single a resident out: 40 residents behind at most 4 values
    assert len(set(values)) <= 2 ** kr.index_bits("id_number") <= 4
    for rid, p, value in zip(ids, people, values, strict=True):
        everyone = v.store.lookup("id_number", (value,))
        assert len(everyone) == values.count(value)  # everyone behind the value, not only this one
        kept = v.store.lookup("id_number", (value,), v.checks.checker("id_number", p["id_number"]))
        assert [r.record_id for r in kept] == [rid]
        assert [x["record_id"] for x in v.find(id_number=p["id_number"], ctx=_op())] == [rid]
        assert [x["record_id"] for x in v.find(mobile=p["mobile"], ctx=_op())] == [rid]
    # a number nobody holds: its index value is shared, but no candidate's tag matches
    absent = make_residents(60, seed=21)[-1]["id_number"]
    value = kr.blind_index("id_number", absent)
    assert v.store.lookup("id_number", (value,))
    assert v.store.lookup("id_number", (value,), v.checks.checker("id_number", absent)) == []
    assert v.find(id_number=absent, ctx=_op()) == []


def test_tags_stored_are_distinct_and_tell_nothing_without_the_key(
        crowded: tuple[Vault, list[dict[str, str]], list[str]]) -> None:
    v, people, ids = crowded
    rows = v.db.query("SELECT index_name, value, record_id, tag FROM blind_index")
    assert len(rows) == 3 * len(people)
    tags = [bytes(r[3]) for r in rows]
    assert all(len(t) == TAG_BYTES for t in tags)
    # bound to the record id: entries that share an index value (or a whole value) differ
    assert len(set(tags)) == len(tags)
    # the tag's key is in the store only as ciphertext under the keyring
    (key_ct,) = v.db.query_one("SELECT key_ct FROM index_check_key WHERE id = 1") or (b"",)
    assert len(bytes(key_ct)) > 32
    # two residents with the same mobile: their mobile entries share an index value, not a tag
    twin = dict(make_residents(41, seed=22)[-1], mobile=people[0]["mobile"])
    twin_id = v.put(twin, ctx=_op())
    pair = v.db.query("SELECT value, tag FROM blind_index WHERE index_name = 'mobile'"
                      " AND record_id IN (?, ?)", (ids[0], twin_id))
    assert len(pair) == 2
    assert bytes(pair[0][0]) == bytes(pair[1][0]) and bytes(pair[0][1]) != bytes(pair[1][1])
    found = {x["record_id"] for x in v.find(mobile=people[0]["mobile"], ctx=_op())}
    assert found == {ids[0], twin_id}


def test_entries_without_tags_are_found_as_before(crowded: tuple[Vault, list[dict[str, str]],
                                                                 list[str]]) -> None:
    """Entries written before tags existed have none: their candidates are decrypted and compared."""
    v, people, ids = crowded
    v.db.execute("UPDATE blind_index SET tag = NULL")
    for rid, p in zip(ids, people, strict=True):
        assert [x["record_id"] for x in v.find(id_number=p["id_number"], ctx=_op())] == [rid]
        born = f"{p['id_number'][6:10]}-{p['id_number'][10:12]}-{p['id_number'][12:14]}"
        assert [x["record_id"] for x in v.find(name=p["name"], birth_date=born, ctx=_op())] == [rid]


def test_an_altered_tag_hides_its_entry_only(crowded: tuple[Vault, list[dict[str, str]],
                                                            list[str]]) -> None:
    """Someone who can write to the store can hide a record from one index, as deleting the entry would."""
    v, people, ids = crowded
    v.db.execute("UPDATE blind_index SET tag = ? WHERE record_id = ? AND index_name = 'id_number'",
                 (b"\x00" * TAG_BYTES, ids[0]))
    assert v.find(id_number=people[0]["id_number"], ctx=_op()) == []
    assert [x["record_id"] for x in v.find(mobile=people[0]["mobile"], ctx=_op())] == [ids[0]]
    # a tag copied from another entry does not make a wrong record match either
    other = v.db.query_one("SELECT tag FROM blind_index WHERE record_id = ? AND index_name = 'id_number'",
                           (ids[1],))
    assert other is not None
    v.db.execute("UPDATE blind_index SET tag = ? WHERE record_id = ? AND index_name = 'id_number'",
                 (bytes(other[0]), ids[2]))
    assert [x["record_id"] for x in v.find(id_number=people[1]["id_number"], ctx=_op())] == [ids[1]]


def test_the_tag_key_opens_only_with_its_own_keyring(crowded: tuple[Vault, list[dict[str, str]], list[str]],
                                                     tmp_path: Path) -> None:
    v, people, ids = crowded
    other = new_keyring(tmp_path / "keys" / "other.keyring")
    with pytest.raises(PivaultError) as info:
        load_check_tags(v.db, other)
    assert info.value.code == "store.check_key"
    # every process of the vault gets the same key
    again = load_check_tags(v.db, v.keyring)
    assert again.tag("id_number", ids[0], people[0]["id_number"]) == \
        v.checks.tag("id_number", ids[0], people[0]["id_number"])


def test_duplicate_checks_decrypt_only_the_record_whose_tag_fits(
        crowded: tuple[Vault, list[dict[str, str]], list[str]]) -> None:
    """put, update and the import ask the same question: which record holds this ID number?"""
    from pivault.vault import DuplicateRecord

    v, people, ids = crowded
    asked: list[list[str]] = []
    real = v.store.get_records

    def counted(record_ids: list[str]) -> object:
        asked.append(list(record_ids))
        return real(record_ids)

    v.store.get_records = counted  # type: ignore[method-assign]
    kr = v.keyring
    wanted = {p["id_number"]: kr.blind_index("id_number", p["id_number"]) for p in people[:5]}
    holders = {p["id_number"]: rid for p, rid in zip(people[:5], ids, strict=False)}
    assert v.ids_by_id_number(wanted) == holders
    assert asked == [sorted(ids[:5])]  # ~10 residents share each value; only the 5 holders were read
    asked.clear()
    newcomer = make_residents(60, seed=21)[-1]
    idn = newcomer["id_number"]
    assert v.ids_by_id_number({idn: kr.blind_index("id_number", idn)}) == {}
    assert asked == []  # a new number: nothing decrypted
    with pytest.raises(DuplicateRecord) as info:
        v.put(people[3], ctx=_op())
    assert info.value.existing_record_id == ids[3]
    # entries written before tags existed: every candidate is read, and the answer is the same
    v.db.execute("UPDATE blind_index SET tag = NULL")
    asked.clear()
    assert v.ids_by_id_number(wanted) == holders
    assert len(asked[0]) > 5
    with pytest.raises(DuplicateRecord):
        v.put(people[7], ctx=_op())
