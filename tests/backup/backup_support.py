"""What several backup tests share."""

from __future__ import annotations

from pivault.store.db import Database, parse_url


def drop_quarantine(store_url: str, quarantined: str | None) -> None:
    """Drop the schema a quarantine restore on PostgreSQL made (the damaged store, moved aside):
    it is not the test's to keep, and the server is shared. On SQLite the quarantine is a file in
    the test's own directory."""
    if quarantined and parse_url(store_url).dialect == "postgresql":
        with Database(store_url) as pg:
            pg.execute(f'DROP SCHEMA "{quarantined}" CASCADE')
