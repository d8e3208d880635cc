"""RecordStore on both backends: round trips, atomicity, COPY, secure erase, streaming."""

from __future__ import annotations

import os
import random
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from pivault.model.record import new_record_id
from pivault.store import Database, connect, migrate
from pivault.store.db import StoreError
from pivault.store.records import DuplicateRecordId, NewRecords, RecordStore, StoredRecord

INDEXES = ("id_number", "mobile", "name_birth")


@pytest.fixture
def store(store_url: str) -> Iterator[RecordStore]:
    db = connect(store_url)
    migrate(db)
    yield RecordStore(db)
    db.close()


def make(n: int, *, field_len: int = 60, index_len: int = 4, batch_id: str | None = "b1",
         rng: random.Random | None = None) -> list[StoredRecord]:
    """Synthetic records: random bytes stand in for ciphertext and blind indexes."""
    r = rng or random.Random(7)
    out = []
    for i in range(n):
        fields = {f: r.randbytes(field_len) for f in RecordStore.FIELDS}
        if i % 3 == 0:
            del fields["notes"]
        out.append(StoredRecord(new_record_id(), fields,
                                {ix: r.randbytes(index_len) for ix in INDEXES},
                                created_at=1_700_000_000.0 + i, updated_at=1_700_000_000.0 + i,
                                batch_id=batch_id))
    return out


def test_round_trip(store: RecordStore) -> None:
    recs = make(50)
    store.insert(recs)
    assert store.count() == 50
    for rec in recs[:5]:
        assert store.get(rec.record_id) == rec
    assert store.get(new_record_id()) is None

    asked = [recs[7].record_id, new_record_id(), recs[3].record_id, recs[7].record_id]
    assert store.get_many(asked) == [recs[7], recs[3]]
    assert store.get_many([]) == []

    by_mobile = store.candidates("mobile", recs[9].index["mobile"])
    assert recs[9] in by_mobile
    assert store.candidates("mobile", b"\xff" * 9) == []

    values = [r.index["id_number"] for r in recs[:20]] + [b"\x00" * 9]
    got = store.candidate_ids("id_number", values)
    assert b"\x00" * 9 not in got
    for r in recs[:20]:
        assert r.record_id in got[r.index["id_number"]]

    assert list(store.iter_all(batch_size=7)) == sorted(recs, key=lambda r: r.record_id)
    assert list(store.iter_ids(batch_size=7)) == sorted(r.record_id for r in recs)


def test_truncated_index_gives_every_candidate(store: RecordStore) -> None:
    recs = make(10)
    for r in recs[:4]:
        r.index["name_birth"] = b"\x01\x02"
    store.insert(recs)
    ids = sorted(r.record_id for r in recs[:4])
    assert [c.record_id for c in store.candidates("name_birth", b"\x01\x02")] == ids
    assert store.candidate_ids("name_birth", [b"\x01\x02", b"\x01\x02"]) == {b"\x01\x02": ids}
    # an index name is part of the key: the same value under another name is no match
    assert store.candidates("mobile", b"\x01\x02") == []


def test_candidate_ids_chunks_long_lists(store: RecordStore) -> None:
    recs = make(1200, index_len=8)
    store.insert(recs)
    values = [r.index["mobile"] for r in recs] + [os.urandom(8) for _ in range(3000)]
    got = store.candidate_ids("mobile", values)
    assert len(got) == 1200
    assert {rid for ids in got.values() for rid in ids} == {r.record_id for r in recs}
    assert len(store.get_many([r.record_id for r in recs])) == 1200


def test_insert_defaults_timestamps(store: RecordStore) -> None:
    rec = StoredRecord(new_record_id(), {"name": b"c1", "id_number": b"c2"}, {"id_number": b"i"})
    store.insert([rec])
    got = store.get(rec.record_id)
    assert got is not None
    assert got.created_at > 1_600_000_000 and got.updated_at == got.created_at
    assert got.batch_id is None and got.fields == rec.fields


def test_replace(store: RecordStore) -> None:
    recs = make(3)
    store.insert(recs)
    old = recs[1]
    new = StoredRecord(old.record_id, {"name": b"new-name-ct", "id_number": b"new-id-ct"},
                       {"id_number": b"\x09\x09", "name_birth": b"\x08\x08"},
                       updated_at=1_800_000_000.0, batch_id="ignored", created_at=1.0)
    assert store.replace(new)
    got = store.get(old.record_id)
    assert got is not None
    assert got.fields == new.fields and got.index == new.index
    assert got.updated_at == 1_800_000_000.0
    assert got.created_at == old.created_at and got.batch_id == old.batch_id
    assert store.candidates("mobile", old.index["mobile"]) == []
    assert [c.record_id for c in store.candidates("id_number", b"\x09\x09")] == [old.record_id]
    assert store.get(recs[0].record_id) == recs[0]
    assert not store.replace(StoredRecord(new_record_id(), {"name": b"x"}, {}))
    assert store.count() == 3


def test_delete(store: RecordStore) -> None:
    recs = make(10)
    store.insert(recs)
    assert store.delete(recs[0].record_id)
    assert not store.delete(recs[0].record_id)
    assert store.get(recs[0].record_id) is None
    assert store.candidates("id_number", recs[0].index["id_number"]) == []
    assert store.delete_many([r.record_id for r in recs[1:4]] + [new_record_id()]) == 3
    assert store.count() == 6
    assert store.stats()["index_entries"] == {ix: 6 for ix in INDEXES}
    assert store.delete_many([]) == 0


def test_unknown_field_writes_nothing(store: RecordStore) -> None:
    recs = make(5)
    recs[4].fields["birthplace"] = b"ct"
    with pytest.raises(StoreError) as err:
        store.insert(recs)
    assert err.value.code == "store.field"
    assert store.count() == 0
    with pytest.raises(StoreError):
        store.replace(recs[4])


@pytest.mark.parametrize("size", [10, 800])  # executemany and, on PostgreSQL, COPY
def test_duplicate_in_batch_rolls_back_whole_batch(store: RecordStore, size: int) -> None:
    recs = make(size)
    recs[-1].record_id = recs[size // 2].record_id
    with pytest.raises(DuplicateRecordId) as err:
        store.insert(recs)
    assert err.value.code == "store.duplicate_id"
    assert err.value.record_ids == [recs[-1].record_id]
    assert store.count() == 0
    assert store.stats()["index_entries"] == {}


@pytest.mark.parametrize("size", [10, 800])
def test_duplicate_of_stored_record(store: RecordStore, size: int) -> None:
    first = make(3)
    store.insert(first)
    batch = make(size, rng=random.Random(99))
    batch[size - 1] = StoredRecord(first[1].record_id, {"name": b"other"}, {"mobile": b"zz"})
    with pytest.raises(DuplicateRecordId) as err:
        store.insert(batch)
    assert err.value.record_ids == [first[1].record_id]
    # no ciphertext or index value in the message, only opaque ids
    assert "other" not in str(err.value)
    assert store.count() == 3
    assert store.get(first[1].record_id) == first[1]


def test_insert_joins_outer_transaction(store: RecordStore) -> None:
    db = store.db
    with pytest.raises(RuntimeError), db.transaction():
        store.insert(make(20))
        store.insert(make(600, rng=random.Random(3)))
        assert store.count() == 620  # visible inside the transaction
        raise RuntimeError("caller fails after the insert")
    assert store.count() == 0
    assert store.stats()["index_entries"] == {}


def test_failed_insert_inside_transaction_keeps_outer_usable(store: RecordStore) -> None:
    db = store.db
    good = make(5)
    bad = make(700, rng=random.Random(5))
    bad[10].record_id = good[0].record_id
    with db.transaction():
        store.insert(good)
        with pytest.raises(DuplicateRecordId):
            store.insert(bad)
        store.insert(make(2, rng=random.Random(11)))
    assert store.count() == 7


def test_insert_without_savepoint_is_undone_with_its_transaction(store: RecordStore) -> None:
    # the import's chunk: a failure undoes the caller's whole transaction, never a part of it
    db = store.db
    first = make(3)
    store.insert(first)
    batch = make(700, rng=random.Random(13))
    batch[-1] = StoredRecord(first[0].record_id, {"name": b"other"}, {"mobile": b"zz"})
    with pytest.raises(DuplicateRecordId) as err, db.transaction():
        store.insert(make(4, rng=random.Random(17)), undo_alone=False)
        store.insert(batch, undo_alone=False)
    assert first[0].record_id in err.value.record_ids
    assert "other" not in str(err.value)
    assert store.count() == 3
    assert store.get(first[0].record_id) == first[0]
    assert sum(store.stats()["index_entries"].values()) == 3 * len(INDEXES)


def test_large_batch_uses_copy_on_postgres(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    statements: list[str] = []
    real_copy = psycopg.Cursor.copy

    def spy(self: psycopg.Cursor, statement: str, *a: object, **k: object):  # type: ignore[no-untyped-def]
        statements.append(str(statement))
        return real_copy(self, statement, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(psycopg.Cursor, "copy", spy)
    db = connect(pg_url)
    migrate(db)
    store = RecordStore(db)
    recs = make(5000, field_len=90, index_len=5)
    recs[0].fields["notes"] = bytes(range(256)) * 3  # every byte value, incl. NUL
    store.insert(recs)
    assert len(statements) == 2
    assert all("FORMAT BINARY" in s for s in statements)
    assert store.count() == 5000
    assert list(store.iter_all(batch_size=512)) == sorted(recs, key=lambda r: r.record_id)
    statements.clear()
    store.insert(make(10, rng=random.Random(1)))
    assert statements == []  # small batches take executemany
    db.close()


def _windows(ct: bytes, size: int = 16) -> list[bytes]:
    return [ct[i:i + size] for i in range(0, len(ct) - size + 1, size)]


def _in_unallocated_space(data: bytes, at: int, page_size: int = 4096) -> bool:
    """Whether byte ``at`` of an SQLite file lies in its B-tree page's unallocated space."""
    start = at - at % page_size
    head = start + (100 if start == 0 else 0)
    kind = data[head]
    if kind not in (2, 5, 10, 13):
        return False
    cells = int.from_bytes(data[head + 3:head + 5], "big")
    content = int.from_bytes(data[head + 5:head + 7], "big") or 65536
    pointers_end = head + (12 if kind in (2, 5) else 8) + 2 * cells
    return pointers_end <= at and at + 16 <= start + content


def test_sqlite_delete_leaves_no_ciphertext_in_files(sqlite_url: str) -> None:
    db = connect(sqlite_url)
    migrate(db)
    store = RecordStore(db)
    recs = make(1000, field_len=64, index_len=16, rng=random.Random(2024))
    store.insert(recs[:500])
    store.insert(recs[500:])
    rng = random.Random(1)
    gone = rng.sample(recs, 500)
    gone_ids = {r.record_id for r in gone}
    kept = [r for r in recs if r.record_id not in gone_ids]
    # half through single deletes inside one transaction, half through delete_many
    with db.transaction():
        for r in gone[:250]:
            assert store.delete(r.record_id)
    assert store.delete_many([r.record_id for r in gone[250:]]) == 250
    assert store.purge_freed()
    assert store.count() == 500

    path = Path(db.url.target)

    def read() -> dict[str, bytes]:
        return {s: (Path(str(path) + s).read_bytes() if Path(str(path) + s).exists() else b"")
                for s in ("", "-wal", "-shm")}

    # After the purge: nothing in the WAL or its index, and in the file nothing but what a
    # page rebuild left in a page's unallocated space (between its cell pointers and its
    # cells): the deletes rebalanced pages, and a record that moved then and was deleted
    # later leaves its old copy there, beyond secure_delete (about one run in twenty-five)
    files = read()
    for r in gone:
        for ct in r.fields.values():
            for w in _windows(ct):
                assert w not in files["-wal"] and w not in files["-shm"]
                at = files[""].find(w)
                while at >= 0:
                    assert _in_unallocated_space(files[""], at), "deleted ciphertext in a cell"
                    at = files[""].find(w, at + 1)
    # the scrub rewrites the file: not even those copies are left
    assert store.scrub()
    files = read()
    assert files[""]
    for r in gone:
        for ct in r.fields.values():
            for w in _windows(ct):
                for name, data in files.items():
                    assert w not in data, f"deleted ciphertext remains in vault.db{name}"
        # The index entries are gone from every leaf. A copy of a key may live on as a
        # divider in an interior page of the blind_index B-tree (SQLite, like any B-tree,
        # keeps dividers until the page is rebalanced): a truncated keyed hash shared by
        # several residents, never ciphertext. So the entries are checked through SQL.
        for ix, value in r.index.items():
            assert db.query("SELECT record_id FROM blind_index WHERE index_name = ? AND value = ?"
                            " AND record_id = ?", (ix, value, r.record_id)) == []
    for r in kept:
        for ct in r.fields.values():
            assert ct in files[""]
    db.close()


def test_sqlite_replace_leaves_no_old_ciphertext_in_files(sqlite_url: str) -> None:
    db = connect(sqlite_url)
    migrate(db)
    store = RecordStore(db)
    recs = make(200, field_len=64, index_len=16, rng=random.Random(8))
    store.insert(recs)
    old = recs[:50]
    for r in old:
        store.replace(StoredRecord(r.record_id, {f: os.urandom(64) for f in r.fields},
                                   {ix: os.urandom(16) for ix in INDEXES}))
    assert store.purge_freed()
    path = Path(db.url.target)
    data = b"".join(Path(str(path) + s).read_bytes() for s in ("", "-wal", "-shm")
                    if Path(str(path) + s).exists())
    for r in old:
        for ct in r.fields.values():  # index keys may survive as B-tree dividers: see above
            assert not any(w in data for w in _windows(ct)), "replaced ciphertext remains"
    db.close()


def test_purge_inside_transaction_is_deferred(store: RecordStore) -> None:
    store.insert(make(3))
    with store.db.transaction():
        assert store.purge_freed() is False
    assert store.purge_freed() is True


def test_stats(store: RecordStore) -> None:
    empty = store.stats()
    assert empty["rows"] == 0 and empty["index_entries"] == {}
    recs = make(300)
    store.insert(recs)
    s = store.stats()
    assert s["backend"] == store.db.dialect
    assert s["rows"] == 300
    assert s["index_entries"] == {ix: 300 for ix in INDEXES}
    on_disk = s["bytes_on_disk"]
    assert isinstance(on_disk, int)
    # at least the ciphertext itself, and not absurdly more
    assert 300 * 4 * 60 < on_disk < 300 * 4 * 60 * 100
    text = repr(s)
    assert all(r.fields["name"].hex() not in text for r in recs)


def test_iter_all_streams_in_bounded_memory(store: RecordStore) -> None:
    n, field_len = 6000, 400
    rng = random.Random(4)
    expected = 0
    for _ in range(3):
        recs = make(n // 3, field_len=field_len, rng=rng)
        expected += sum(len(r.fields) for r in recs)
        store.insert(recs)
    del recs
    total = n * 4.67 * field_len  # about 11 MB of ciphertext
    tracemalloc.start()
    try:
        seen = 0
        for rec in store.iter_all(batch_size=200):
            seen += len(rec.fields)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == expected
    assert peak < total / 5, f"peak {peak} bytes while streaming {total:.0f}"


def test_schema_is_plain(store: RecordStore) -> None:
    db: Database = store.db
    assert db.table_exists("records") and db.table_exists("blind_index")
    assert migrate(db) == []


def test_bulk_index_rows_go_in_key_order() -> None:
    # the COPY of a large batch sends blind-index entries in the primary key's order
    from pivault.store.records import _in_key_order

    rng = random.Random(5)
    rows = [(name, rng.randbytes(2), f"r_{i:04d}", rng.randbytes(4))
            for i in range(300) for name in ("mobile", "id_number", "name_birth")]
    rows.append(("mobile", rows[0][1], "r_9999", None))  # a value shared with an earlier entry
    out = _in_key_order(rows)
    assert sorted(out) == sorted(rows)
    assert [(r[0], r[1]) for r in out] == sorted((r[0], r[1]) for r in rows)
    shared = [r[2] for r in out if r[:2] == rows[0][:2]]
    assert shared.index("r_0000") < shared.index("r_9999")  # ties keep their order


def _columns(recs: list[StoredRecord]) -> NewRecords:
    """The records column by column, as an import's worker hands them over."""
    index: dict[str, tuple[list[int], list[bytes], list[bytes | None]]] = {}
    for name in INDEXES:
        at = [k for k, r in enumerate(recs) if name in r.index]
        index[name] = (at, [recs[k].index[name] for k in at], [recs[k].checks.get(name) for k in at])
    return NewRecords([r.record_id for r in recs],
                      {f: [r.fields.get(f) for r in recs] for f in RecordStore.FIELDS}, index,
                      [r.record_key for r in recs], batch_id=recs[0].batch_id)


@pytest.mark.parametrize("n", [40, 600])  # executemany, and on PostgreSQL the COPY
def test_insert_new_stores_what_insert_stores(store: RecordStore, n: int) -> None:
    recs = make(n, rng=random.Random(n))
    for k, r in enumerate(recs):
        if k % 4 == 1:
            del r.index["mobile"]  # a resident without a mobile number has no entry
        if k % 5 == 2:
            r.checks = {name: bytes([k % 256]) * 4 for name in r.index}
    cols = _columns(recs)
    assert [cols.record(k) for k in range(n)] == [
        StoredRecord(r.record_id, r.fields, r.index, batch_id=r.batch_id, checks=r.checks) for r in recs]
    keep = [k for k in range(n) if k % 7]
    store.insert_new(cols.take(keep))
    assert store.count() == len(keep)
    for k in keep[:30]:
        got = store.get(recs[k].record_id)
        assert got is not None
        assert (got.fields, got.index, got.batch_id) == (recs[k].fields, recs[k].index, "b1")
        assert got.created_at == got.updated_at > 0
    tags = dict(((v, rid), t) for v, rid, t in store.entry_tags("id_number", [recs[k].index["id_number"]
                                                                              for k in keep]))
    for k in keep:
        assert tags[(recs[k].index["id_number"], recs[k].record_id)] == recs[k].checks.get("id_number")
    with pytest.raises(DuplicateRecordId):
        store.insert_new(cols.take(keep[:3]))
    assert store.count() == len(keep)
    with pytest.raises(StoreError) as err:
        store.insert_new(NewRecords(["r_x"], {"name": [b"x"]}, {}, [None]))
    assert err.value.code == "store.field"
