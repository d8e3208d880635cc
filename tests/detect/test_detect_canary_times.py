"""Canaries take the creation times of records drawn from the whole vault, on both backends.

Record ids sort in creation order, so a draw by id order would hand every
canary the time of the oldest records; the draw goes by row number (SQLite)
or a page sample (PostgreSQL) instead.
"""

from __future__ import annotations

import random

from pivault.detect.canary import _creation_draws
from pivault.model.record import new_record_id
from pivault.store import connect, migrate
from pivault.store.records import RecordStore, StoredRecord

T0 = 1_700_000_000.0


def test_times_are_drawn_across_the_vault(store_url: str) -> None:
    db = connect(store_url)
    migrate(db)
    assert _creation_draws(db, 16, random.Random(1)) == []  # an empty vault gives none
    n = 3000
    RecordStore(db).insert([
        StoredRecord(new_record_id(T0 + i), {"name": b"c", "id_number": b"c"},
                     {"id_number": i.to_bytes(4, "big")}, created_at=T0 + i, updated_at=T0 + i)
        for i in range(n)])
    if db.dialect == "postgresql":
        db.execute("ANALYZE records")  # the page sample is sized from the planner's row estimate
    times = [t for t, _ in _creation_draws(db, 16, random.Random(5))]
    db.close()
    assert len(times) == 16
    assert all(T0 <= t < T0 + n and t == int(t) for t in times)  # real records' times
    assert len(set(times)) >= 12
    # not the oldest records first: 16 draws all below the tenth percentile would be a 1e-16 event
    assert max(times) > T0 + n / 10


def test_a_large_vault_is_sampled_by_pages_spread_over_the_table(store_url: str) -> None:
    db = connect(store_url)
    migrate(db)
    n = 2000
    big = b"x" * 1500  # a few records per page: the table spans hundreds of pages
    RecordStore(db).insert([
        StoredRecord(new_record_id(T0 + i), {"name": big, "id_number": b"c"},
                     {"id_number": i.to_bytes(4, "big")}, created_at=T0 + i, updated_at=T0 + i)
        for i in range(n)])
    if db.dialect == "postgresql":
        db.execute("ANALYZE records")
        pages = db.query_one("SELECT relpages FROM pg_class WHERE oid = 'records'::regclass")
        assert pages is not None and pages[0] > 8 * 16  # the page sample is what is drawn from
    times = [t for t, _ in _creation_draws(db, 16, random.Random(9))]
    db.close()
    assert len(times) == 16 and all(T0 <= t < T0 + n for t in times)
    # from all over the table, not a few neighbouring pages: at least 4 of its tenths (16 uniform
    # draws fall in fewer with odds below 1e-6)
    assert len({int((t - T0) * 10 // n) for t in times}) >= 4
