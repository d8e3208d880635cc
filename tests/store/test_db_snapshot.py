"""A snapshot reads one state of the database, whatever other writers commit meanwhile."""

from __future__ import annotations

import pytest

from pivault.store.db import Database, StoreError


def test_a_snapshot_does_not_see_later_commits(store_url: str) -> None:
    reader, writer = Database(store_url), Database(store_url)
    try:
        writer.execute("CREATE TABLE snap_t (k INTEGER PRIMARY KEY)")
        writer.executemany("INSERT INTO snap_t (k) VALUES (?)", [(i,) for i in range(5)])
        with reader.snapshot():
            assert reader.query_one("SELECT COUNT(*) FROM snap_t") == (5,)
            writer.executemany("INSERT INTO snap_t (k) VALUES (?)", [(i,) for i in range(5, 3005)])
            # a plain query and a streamed one both still see the first state
            assert reader.query_one("SELECT COUNT(*) FROM snap_t") == (5,)
            assert [r[0] for r in reader.stream("SELECT k FROM snap_t ORDER BY k", size=2)] == list(range(5))
        assert reader.query_one("SELECT COUNT(*) FROM snap_t") == (3005,)
        # the connection is usable for writes again once the snapshot ends
        with reader.transaction():
            reader.execute("DELETE FROM snap_t WHERE k >= 5")
        assert writer.query_one("SELECT COUNT(*) FROM snap_t") == (5,)
    finally:
        reader.close()
        writer.close()


def test_a_snapshot_cannot_start_inside_a_transaction(store_url: str) -> None:
    db = Database(store_url)
    try:
        with db.transaction(), pytest.raises(StoreError, match="snapshot"), db.snapshot():
            pass
    finally:
        db.close()
