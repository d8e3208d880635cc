"""Which keyring a store belongs to, and how new a keyring it has seen.

A store encrypted under one keyring is noise under any other: opening it with
the wrong keyring would make every read fail with an integrity error, and
every write would mix two vaults in one table. The store therefore remembers
the keyring's vault id, and the Vault refuses to open with a different one.
It also remembers the newest keyring generation it has seen
(:mod:`pivault.keys.seen`), and the Vault refuses an older copy of the keyring.
"""

from __future__ import annotations

import time

from pivault.crypto import Keyring
from pivault.errors import ConfigError
from pivault.keys import seen
from pivault.store.db import Database
from pivault.store.migrations import Migration, register, require_current

__all__ = ["VaultMismatch", "bind", "bound_vault_id", "check", "count_erasure", "erasures_since_scrub",
           "scrubbed"]

register(Migration(
    "vault", 1, "vault metadata: the keyring this store belongs to",
    "CREATE TABLE vault_meta (key TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL,"
    " updated_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE vault_meta (key TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL,"
    " updated_at DOUBLE PRECISION NOT NULL)",
))


class VaultMismatch(ConfigError):
    """The store and the keyring belong to different vaults."""

    code = "vault.mismatch"


def bound_vault_id(db: Database) -> str | None:
    if not db.table_exists("vault_meta"):
        return None
    row = db.query_one("SELECT value FROM vault_meta WHERE key = 'vault_id'")
    return str(row[0]) if row else None


def bind(db: Database, keyring: Keyring) -> None:
    """Record the keyring's vault id (and generation) in a new store; idempotent for the same keyring."""
    with db.transaction():
        current = bound_vault_id(db)
        if current is None:
            db.execute("INSERT INTO vault_meta (key, value, updated_at) VALUES ('vault_id', ?, ?)",
                       (keyring.vault_id, time.time()))
    if current is not None and current != keyring.vault_id:
        _mismatch(current)
    seen.check(db, keyring)


def _mismatch(current: str) -> None:
    raise VaultMismatch(
        f"this store belongs to vault {current}, but the keyring is of another vault",
        hint="open the store with its own keyring (see keyring.path in pivault.toml)")


def check(db: Database, keyring: Keyring) -> None:
    """Refuse a store that is out of date, unbound, bound to another keyring, or that has seen a
    newer copy of this keyring (``keyring.rollback``); note a newer keyring than it has seen."""
    require_current(db)
    current = bound_vault_id(db)
    if current is None:
        raise ConfigError("the store is not bound to a keyring (not initialised)",
                          code="vault.unbound", hint="create the vault with `pivault init`")
    if current != keyring.vault_id:
        _mismatch(current)
    seen.check(db, keyring)


# -- erasures and scrubs: how much an erase still leaves to `pivault scrub` ----------------------

def count_erasure(db: Database, n: int = 1) -> None:
    """Count ``n`` erasures since the last scrub (inside the erase's own transaction).

    One statement adds to the stored count (or makes it), so erasures committed at once by
    several processes are all counted.
    """
    db.execute("INSERT INTO vault_meta (key, value, updated_at) VALUES ('erased_since_scrub', ?, ?)"
               " ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(vault_meta.value AS INTEGER) + ? AS TEXT),"
               " updated_at = excluded.updated_at",
               (str(n), time.time(), n))


def erasures_since_scrub(db: Database) -> tuple[int, float | None]:
    """(records erased since the last scrub, when the last scrub finished or None)."""
    rows = dict(db.query("SELECT key, value FROM vault_meta"
                         " WHERE key IN ('erased_since_scrub', 'scrubbed_at')"))
    scrubbed_at = rows.get("scrubbed_at")
    return int(rows.get("erased_since_scrub", 0)), (float(scrubbed_at) if scrubbed_at is not None else None)


def scrubbed(db: Database, erased_before: int) -> None:
    """A scrub finished: the ``erased_before`` erasures counted when it began are behind it."""
    now = time.time()
    with db.transaction():
        db.execute("UPDATE vault_meta SET value = CAST(CASE WHEN CAST(value AS INTEGER) > ?"
                   " THEN CAST(value AS INTEGER) - ? ELSE 0 END AS TEXT), updated_at = ?"
                   " WHERE key = 'erased_since_scrub'", (erased_before, erased_before, now))
        db.execute("INSERT INTO vault_meta (key, value, updated_at) VALUES ('scrubbed_at', ?, ?)"
                   " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
                   " updated_at = excluded.updated_at", (repr(now), now))
