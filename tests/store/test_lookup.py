"""The search paths of find and the import (lookup, candidate_meta, foreign_candidates), both backends."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator

import pytest

from pivault.model.record import new_record_id
from pivault.store import connect, migrate
from pivault.store.records import RecordStore, StoredRecord


@pytest.fixture
def store(store_url: str) -> Iterator[RecordStore]:
    db = connect(store_url)
    migrate(db)
    yield RecordStore(db)
    db.close()


def _records(n: int, shared: bytes) -> list[StoredRecord]:
    r = random.Random(11)
    out = []
    for i in range(n):
        out.append(StoredRecord(new_record_id(), {"name": r.randbytes(40), "id_number": r.randbytes(40)},
                                {"id_number": shared if i % 3 == 0 else r.randbytes(4),
                                 "mobile": r.randbytes(4)},
                                created_at=1_700_000_000.0 + i, batch_id="b_one" if i % 2 else "b_two"))
    return out


def test_lookup_returns_records_without_index_entries(store: RecordStore) -> None:
    shared = b"\x01\x02\x03\x04"
    recs = _records(30, shared)
    store.insert(recs)
    want = sorted((r for r in recs if r.index["id_number"] == shared), key=lambda r: r.record_id)
    got = store.lookup("id_number", [shared])
    assert [g.record_id for g in got] == [w.record_id for w in want]
    assert [g.fields for g in got] == [w.fields for w in want]
    assert all(g.index == {} for g in got)
    assert got[0] == dataclasses.replace(want[0], index={}, updated_at=want[0].created_at)
    # several values (a blind-index rotation), each record once, ordered by id
    other = recs[1].index["id_number"]
    got2 = store.lookup("id_number", [shared, other, shared])
    assert [g.record_id for g in got2] == sorted([w.record_id for w in want] + [recs[1].record_id])
    # the index name is part of the key; nothing found is an empty list
    assert store.lookup("mobile", [shared]) == []
    assert store.lookup("id_number", []) == []
    assert store.lookup("id_number", [b"\xff" * 4]) == []


def test_lookup_chunks_many_values(store: RecordStore) -> None:
    recs = _records(1200, b"\x00\x00\x00\x00")
    store.insert(recs)
    values = [r.index["mobile"] for r in recs]
    assert {g.record_id for g in store.lookup("mobile", values)} == {r.record_id for r in recs}


def test_candidate_meta(store: RecordStore) -> None:
    shared = b"\x05\x06\x07\x08"
    recs = _records(12, shared)
    store.insert(recs)
    changed = next(r for r in recs if r.index["id_number"] == shared)
    store.replace(StoredRecord(changed.record_id, changed.fields, changed.index,
                               updated_at=1_900_000_000.0))
    meta = store.candidate_meta("id_number", [shared, b"\xee" * 4])
    assert list(meta) == [shared]
    expect = sorted((r.record_id, r.batch_id, r.record_id == changed.record_id)
                    for r in recs if r.index["id_number"] == shared)
    assert meta[shared] == expect
    assert store.candidate_meta("id_number", []) == {}
    assert store.candidate_meta("id_number", [new_record_id().encode()]) == {}


def test_foreign_candidates(store: RecordStore) -> None:
    """Per value with records: does one of them belong to another batch, or changed since inserted?"""
    r = random.Random(5)
    mine, others, changed_v, none_v = (bytes([k]) * 4 for k in (0x21, 0x22, 0x23, 0x24))

    def rec(value: bytes, batch: str | None) -> StoredRecord:
        return StoredRecord(new_record_id(), {"name": r.randbytes(40), "id_number": r.randbytes(40)},
                            {"id_number": value}, created_at=1_700_000_000.0, batch_id=batch)

    recs = [rec(mine, "b_me"), rec(mine, "b_me"),          # only this batch's, unchanged
            rec(others, "b_me"), rec(others, "b_other"),    # one from another batch
            rec(others, None),                              # and one made by put (no batch)
            rec(changed_v, "b_me"), rec(changed_v, "b_me")]  # one of these changed below
    store.insert(recs)
    c = recs[5]
    store.replace(StoredRecord(c.record_id, c.fields, c.index, updated_at=1_900_000_000.0))
    got = store.foreign_candidates("id_number", [mine, others, changed_v, none_v, mine], "b_me")
    assert got == {mine: False, others: True, changed_v: True}
    assert store.foreign_candidates("id_number", [mine], "b_other") == {mine: True}
    assert store.foreign_candidates("mobile", [mine], "b_me") == {}
    assert store.foreign_candidates("id_number", [], "b_me") == {}
