"""Crypto-shredding: per-record data keys kept apart from the data.

Deleting a row does not delete its copies: WAL segments, replicas, snapshots
and every backup taken before keep the ciphertext, and with the keyring it
opens. So each record's fields are encrypted under a data key of its own
(:mod:`pivault.crypto.recordkeys`), and that key, wrapped by the keyring's
field key, lives here: a small database beside the keyring, never in the
data directory and never in a data backup. ``erase`` deletes the record's
key first; every copy of its ciphertext anywhere is noise from then on.

Ordering rules that keep this safe without a transaction spanning two
databases:

* **insert**: the record key commits before the record. A crash between
  leaves an orphan key (no harm; :meth:`RecordKeyStore.collect_garbage`).
* **replace** (update, rewrap): the new key commits first, under a new key
  ref; the old key is dropped only after the record's committed ciphertext
  no longer names it. A rolled-back update keeps the old key.
* **delete** (erase): the key goes first. If the data delete then fails,
  the record is already unreadable, which is what was asked.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pivault.crypto import Keyring
from pivault.crypto.recordkeys import KEY_REF_BYTES, RECORD_KEY_BYTES, key_ref_of
from pivault.errors import ConfigError
from pivault.store.db import Database
from pivault.store.records import NewRecords, RecordStore, StoredRecord

#: the shortest grace ``keys gc`` takes on a vault that may be writing: far longer than any write
#: keeps a committed key waiting for its record (an import chunk, a rewrap batch, an update)
MIN_GC_GRACE_SECONDS = 600.0
#: orphan keys a garbage collection deletes without being told to (``allow_mass``) at most,
#: unless they are also at most :data:`MASS_SHARE` of the store's keys
MASS_ORPHANS = 10
MASS_SHARE = 0.01

__all__ = [
    "RECORD_KEY_STORE_SUFFIX",
    "KeySnapshot",
    "RecordKeyStore",
    "ShreddingRecordStore",
    "keyless_batches",
    "purge_erased",
    "record_key_store_url",
    "store_location",
    "store_missing",
]

#: the record-key store of a keyring ``K`` is the SQLite file ``K.recordkeys``
RECORD_KEY_STORE_SUFFIX = ".recordkeys"
_SCHEMA_VERSION = "1"
_CHUNK = 500
#: PostgreSQL batches of record keys from this size go through binary COPY
_COPY_FROM = 500
#: how many times a read takes a record's row again when an update dropped the key it named
#: (each time a further update committed between its two reads)
_REREADS = 8

_SQLITE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS record_keys (record_id TEXT NOT NULL, key_ref BLOB NOT NULL,"
    " wrapped BLOB NOT NULL, created_at DOUBLE PRECISION NOT NULL,"
    " PRIMARY KEY (record_id, key_ref)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS key_usage (key_id BIGINT NOT NULL PRIMARY KEY,"
    " encryptions BIGINT NOT NULL, updated_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS keystore_meta (key TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS backup_keys (backup_id TEXT NOT NULL PRIMARY KEY, stored BLOB NOT NULL,"
    " created_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS restore_put_back (backup_id TEXT NOT NULL, record_id TEXT NOT NULL,"
    " key_ref BLOB NOT NULL, PRIMARY KEY (backup_id, record_id))",
    "CREATE TABLE IF NOT EXISTS erased_rejects (reject_id TEXT NOT NULL PRIMARY KEY,"
    " erased_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS erasures_pending (record_id TEXT NOT NULL PRIMARY KEY,"
    " asked_by TEXT NOT NULL, asked_at DOUBLE PRECISION NOT NULL)",
)
_PG_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS record_keys (record_id TEXT COLLATE \"C\" NOT NULL,"
    " key_ref BYTEA NOT NULL, wrapped BYTEA NOT NULL, created_at DOUBLE PRECISION NOT NULL,"
    " PRIMARY KEY (record_id, key_ref))",
    "CREATE TABLE IF NOT EXISTS key_usage (key_id BIGINT NOT NULL PRIMARY KEY,"
    " encryptions BIGINT NOT NULL, updated_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS keystore_meta (key TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS backup_keys (backup_id TEXT NOT NULL PRIMARY KEY, stored BYTEA NOT NULL,"
    " created_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS restore_put_back (backup_id TEXT NOT NULL, record_id TEXT COLLATE \"C\""
    " NOT NULL, key_ref BYTEA NOT NULL, PRIMARY KEY (backup_id, record_id))",
    "CREATE TABLE IF NOT EXISTS erased_rejects (reject_id TEXT COLLATE \"C\" NOT NULL PRIMARY KEY,"
    " erased_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS erasures_pending (record_id TEXT COLLATE \"C\" NOT NULL PRIMARY KEY,"
    " asked_by TEXT NOT NULL, asked_at DOUBLE PRECISION NOT NULL)",
)


def record_key_store_url(keyring_path: str | Path) -> str:
    """The default record-key store of a keyring: a SQLite file beside it."""
    p = Path(keyring_path)
    return f"sqlite:///{p.with_name(p.name + RECORD_KEY_STORE_SUFFIX)}"


def store_location(url: str) -> str:
    """How a record-key store is named in a message: its file, or its URL without a password."""
    from pivault.store.db import parse_url

    parsed = parse_url(url)
    return parsed.target if parsed.dialect == "sqlite" else parsed.redacted


def store_missing(where: str, *, sqlite: bool, lost_table: str | None = None) -> ConfigError:
    """The refusal for a record-key store that is not there: what, why, and what to do, in a line.

    Made in one place because every door into a vault (the library, each
    command, ``serve``, the chainer, backups and restores) says the same: a
    store made anew in its place would hold no key, and every record would
    read as erased.
    """
    if lost_table:
        what = f"the record-key store {where} has lost its table {lost_table} (dropped, or a wrong schema)"
    elif sqlite:
        what = (f"the record-key store {where} is not there (moved or deleted, its disk not mounted, or a "
                "wrong [keys] record_key_store in pivault.toml)")
    else:
        what = (f"the record-key store {where} has no record-key tables (dropped, or [keys] record_key_store "
                "names the wrong database or schema)")
    return ConfigError(
        f"{what}: this vault's records cannot be opened without it, so nothing was read, created or "
        "written; put it back (or point [keys] record_key_store at it) and run the command again",
        code="keys.store_missing",
        hint="a new, empty store in its place would make every record read as erased; if the store is "
             "lost, `pivault keys restore FILE` puts back the newest record-key backup")


def _chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


@functools.cache
def _select_keys_sqlite(n: int) -> str:
    """The SQLite query for the keys of ``n`` records (one string per ``n``: a lookup asks for a few)."""
    return f"SELECT record_id, key_ref, wrapped FROM record_keys WHERE record_id IN ({','.join('?' * n)})"


class RecordKeyStore:
    """Wrapped per-record data keys, and the keyring's encryption counters.

    One per vault, bound to its vault id (a store of another vault is
    refused). SQLite by default (beside the keyring); a PostgreSQL URL of a
    database other than the data's works too, for several API nodes.
    """

    def __init__(self, url: str | Database, *, vault_id: str, create: bool = True) -> None:
        """Open the store at ``url``; ``create=False`` refuses one that is not there (``keys.store_missing``).

        A vault opens its store through :mod:`pivault.keys.binding`, which
        decides whether a new one may be made; ``create`` is for a store made
        on purpose (a new vault, a store refilled from its backup, a test).
        """
        if not create and not isinstance(url, Database):
            from pivault.store.db import parse_url

            parsed = parse_url(url)
            p = Path(parsed.target)
            if parsed.dialect == "sqlite" and (not p.is_file() or p.stat().st_size == 0):
                # opening a missing SQLite file makes it: refuse before connecting
                raise store_missing(str(p), sqlite=True)
        self.db = url if isinstance(url, Database) else Database(url)
        self.vault_id = vault_id
        self._pg = self.db.dialect == "postgresql"
        try:
            self._ensure_schema(create)
        except BaseException:
            if not isinstance(url, Database):
                self.db.close()
            raise

    @classmethod
    def beside(cls, keyring: Keyring) -> RecordKeyStore:
        """The default store of ``keyring`` (created empty on first use)."""
        return cls(record_key_store_url(keyring.path), vault_id=keyring.vault_id)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> RecordKeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_schema(self, create: bool = True) -> None:
        db = self.db
        if not create:
            lost = [t for t in ("keystore_meta", "record_keys") if not db.table_exists(t)]
            if lost:
                where = self.db.url.target if not self._pg else self.db.url.redacted
                one = lost[0] if len(lost) == 1 else None
                raise store_missing(where, sqlite=not self._pg, lost_table=one)
        with db.transaction():
            for stmt in (_PG_SCHEMA if self._pg else _SQLITE_SCHEMA):
                db.execute(stmt)
            row = db.query_one("SELECT value FROM keystore_meta WHERE key = 'vault_id'")
            if row is None:
                db.execute("INSERT INTO keystore_meta (key, value) VALUES ('vault_id', ?)", (self.vault_id,))
                db.execute("INSERT INTO keystore_meta (key, value) VALUES ('schema', ?)", (_SCHEMA_VERSION,))
            elif row[0] != self.vault_id:
                where = self.db.url.target if not self._pg else self.db.url.redacted
                raise ConfigError(
                    f"the record-key store {where} belongs to vault {row[0]}, not to this keyring's: its "
                    "keys open none of this vault's records, so nothing was read or written with it",
                    code="keys.store_mismatch",
                    hint="point [keys] record_key_store in pivault.toml at this vault's own record-key store")

    # -- which store this is (pivault.keys.binding) --------------------------------
    @property
    def store_id(self) -> str | None:
        """The id this store was given when a vault's data store was bound to it; None before that."""
        row = self.db.query_one("SELECT value FROM keystore_meta WHERE key = 'store_id'")
        return str(row[0]) if row else None

    def claim_id(self, store_id: str) -> str:
        """Give this store ``store_id`` unless it has one already; returns the id it holds.

        One statement that loses to an id written first, so two processes
        binding the same store at once agree on one id.
        """
        self.db.execute("INSERT INTO keystore_meta (key, value) VALUES ('store_id', ?)"
                        " ON CONFLICT (key) DO NOTHING", (store_id,))
        held = self.store_id
        assert held is not None
        return held

    def holds_keys(self) -> bool:
        """Whether any record key is here (an empty store opens no record)."""
        return self.db.query_one("SELECT 1 FROM record_keys LIMIT 1") is not None

    # -- writing --------------------------------------------------------------
    def put_many(self, items: Iterable[tuple[str, bytes]]) -> int:
        """Store record keys ``(record_id, stored key)``; committed when this returns."""
        now = time.time()
        rows = []
        for rid, stored in items:
            if len(stored) != RECORD_KEY_BYTES:
                raise ValueError("a stored record key has the wrong length")
            rows.append((rid, stored[:KEY_REF_BYTES], stored[KEY_REF_BYTES:], now))
        if not rows:
            return 0
        db = self.db
        with db.transaction():
            if self._pg and len(rows) >= _COPY_FROM:
                # binary COPY: per key ~1.5 µs of client and ~4 µs of server CPU against
                # ~10 and ~10-16 with executemany (measured, 10,000 keys a batch)
                with db.raw.cursor() as cur, cur.copy(
                        "COPY record_keys (record_id, key_ref, wrapped, created_at)"
                        " FROM STDIN (FORMAT BINARY)") as cp:
                    cp.set_types(["text", "bytea", "bytea", "float8"])
                    for row in rows:
                        cp.write_row(row)
            else:
                db.executemany("INSERT INTO record_keys (record_id, key_ref, wrapped, created_at)"
                               " VALUES (?, ?, ?, ?)", rows)
        return len(rows)

    def put_back_versions(self, items: Iterable[tuple[str, bytes]]) -> int:
        """Add keys of earlier versions of records that still hold a key here; returns keys added.

        A restore brings back a record as it was before a correction, and
        the correction dropped that version's key. Erasure is known here
        only as a record with no key at all, so the test for "still holds a
        key" sits in the very statement that inserts, in one transaction
        with the rest: a key of an erased record is never put back, even
        when a key backup still has it.
        """
        now = time.time()
        rows: list[tuple[str, bytes, bytes, float, str, str, bytes]] = []
        for rid, stored in items:
            if len(stored) != RECORD_KEY_BYTES:
                raise ValueError("a stored record key has the wrong length")
            ref = stored[:KEY_REF_BYTES]
            rows.append((rid, ref, stored[KEY_REF_BYTES:], now, rid, rid, ref))
        n = 0
        db = self.db
        with db.transaction():
            for row in rows:
                n += db.execute(
                    "INSERT INTO record_keys (record_id, key_ref, wrapped, created_at) SELECT ?, ?, ?, ?"
                    " WHERE EXISTS (SELECT 1 FROM record_keys WHERE record_id = ?)"
                    " AND NOT EXISTS (SELECT 1 FROM record_keys WHERE record_id = ? AND key_ref = ?)",
                    row).rowcount
        return n

    def rewrap(self, record_id: str, old: bytes, new: bytes) -> bool:
        """Replace a wrapping if it is still ``old`` (compare-and-swap); False if it changed."""
        if old[:KEY_REF_BYTES] != new[:KEY_REF_BYTES]:
            raise ValueError("a rewrap keeps the key ref")
        cur = self.db.execute(
            "UPDATE record_keys SET wrapped = ? WHERE record_id = ? AND key_ref = ? AND wrapped = ?",
            (new[KEY_REF_BYTES:], record_id, old[:KEY_REF_BYTES], old[KEY_REF_BYTES:]))
        return cur.rowcount == 1

    def rewrap_many(self, changes: Sequence[tuple[str, bytes, bytes]]) -> int:
        """Several compare-and-swap rewraps in one transaction; returns how many applied."""
        n = 0
        with self.db.transaction():
            for rid, old, new in changes:
                n += self.rewrap(rid, old, new)
        return n

    def delete_records(self, record_ids: Sequence[str], *, erasure: str | None = None) -> int:
        """Destroy every key of these records (the shred); returns keys deleted.

        ``erasure``: who asked (the caller's principal, role, purpose, request and token ids, as
        the Vault writes them), kept with each record id in the same
        transaction as the shred, until the erasure's own transaction in the data store has
        committed (:meth:`clear_erasures`). The two stores share no transaction: an erasure
        that dies between them has destroyed the key, and its audit entry, written in the
        data store's transaction, is lost with it; this says whose erasure to finish.
        """
        ids = list(dict.fromkeys(record_ids))
        n = 0
        db = self.db
        with db.transaction():
            for chunk in _chunks(ids, _CHUNK):
                if self._pg:
                    n += db.execute("DELETE FROM record_keys WHERE record_id = ANY(?)",
                                    (list(chunk),)).rowcount
                else:
                    n += db.execute("DELETE FROM record_keys WHERE record_id IN"
                                    f" ({','.join('?' * len(chunk))})", chunk).rowcount
            if erasure is not None:
                now = time.time()
                db.executemany("INSERT INTO erasures_pending (record_id, asked_by, asked_at) VALUES (?, ?, ?)"
                               " ON CONFLICT (record_id) DO NOTHING", [(r, erasure, now) for r in ids])
        return n

    def pending_erasures(self, record_ids: Sequence[str] | None = None) -> list[tuple[str, str]]:
        """(record id, who asked) of erasures whose keys are destroyed and whose end is not known."""
        if record_ids is None:
            rows = self.db.query("SELECT record_id, asked_by FROM erasures_pending ORDER BY asked_at")
        else:
            rows = []
            for chunk in _chunks(list(record_ids), _CHUNK):
                rows += self.db.query("SELECT record_id, asked_by FROM erasures_pending WHERE record_id IN"
                                      f" ({','.join('?' * len(chunk))})", chunk)
        return [(str(r), str(a)) for r, a in rows]

    def clear_erasures(self, record_ids: Sequence[str]) -> None:
        """The erasures of these records are over: their data store's transaction committed."""
        with self.db.transaction():
            for chunk in _chunks(list(record_ids), _CHUNK):
                self.db.execute("DELETE FROM erasures_pending WHERE record_id IN"
                                f" ({','.join('?' * len(chunk))})", chunk)

    def note_erased_rejects(self, reject_ids: Sequence[str]) -> None:
        """Remember the ids of rejected import rows an erasure took (opaque ids, no value).

        A rejected row is sealed under the field key, not a record key, so an older data
        backup restored brings it back readable; this store is not in data backups, and
        :func:`purge_erased` deletes those rows again by these ids.
        """
        now = time.time()
        with self.db.transaction():
            self.db.executemany("INSERT INTO erased_rejects (reject_id, erased_at) VALUES (?, ?)"
                                " ON CONFLICT (reject_id) DO NOTHING", [(r, now) for r in reject_ids])

    def erased_rejects(self) -> list[str]:
        return [str(r[0]) for r in self.db.query("SELECT reject_id FROM erased_rejects ORDER BY reject_id")]

    def delete_ref(self, record_id: str, key_ref: bytes) -> bool:
        return self.db.execute("DELETE FROM record_keys WHERE record_id = ? AND key_ref = ?",
                               (record_id, key_ref)).rowcount == 1

    def purge(self) -> bool:
        """Make deleted keys unrecoverable from the store's files (SQLite: checkpoint the WAL).

        ``secure_delete`` zeroes freed cells; the checkpoint removes old page
        images from ``-wal``. On PostgreSQL only the wrapping key's
        retirement reaches the server's WAL and backups (see docs/keys.md).
        """
        db = self.db
        if db.in_transaction:
            return False
        if self._pg:
            db.execute("VACUUM record_keys")
            return True
        return db.truncate_wal()

    def scrub(self) -> bool:
        """Leave no byte of any deleted key in the store's files (SQLite: rewrite it whole)."""
        if self._pg:
            return self.purge()
        return self.db.rewrite_sqlite()

    # -- reading --------------------------------------------------------------
    def get(self, record_id: str, key_ref: bytes) -> bytes | None:
        row = self.db.query_one("SELECT wrapped FROM record_keys WHERE record_id = ? AND key_ref = ?",
                                (record_id, key_ref))
        return key_ref + bytes(row[0]) if row else None

    def get_many(self, wanted: Sequence[tuple[str, bytes]]) -> dict[tuple[str, bytes], bytes]:
        """Stored keys for ``(record_id, key_ref)`` pairs; missing ones are absent."""
        ids = list(dict.fromkeys(rid for rid, _ in wanted))
        want = set(wanted)
        out: dict[tuple[str, bytes], bytes] = {}
        db = self.db
        for chunk in _chunks(ids, _CHUNK):
            if self._pg:
                rows = db.query("SELECT record_id, key_ref, wrapped FROM record_keys"
                                " WHERE record_id = ANY(?)", (list(chunk),))
            else:
                rows = db.query(_select_keys_sqlite(len(chunk)), chunk)
            for rid, ref, wrapped in rows:
                k = (rid, ref if type(ref) is bytes else bytes(ref))
                if k in want:
                    out[k] = k[1] + (wrapped if type(wrapped) is bytes else bytes(wrapped))
        return out

    def any_key_many(self, record_ids: Sequence[str]) -> dict[str, bytes]:
        """One stored key per record that has any (the lowest key ref)."""
        out: dict[str, bytes] = {}
        db = self.db
        for chunk in _chunks(list(dict.fromkeys(record_ids)), _CHUNK):
            if self._pg:
                rows = db.query("SELECT record_id, key_ref, wrapped FROM record_keys"
                                " WHERE record_id = ANY(?) ORDER BY record_id, key_ref", (list(chunk),))
            else:
                rows = db.query("SELECT record_id, key_ref, wrapped FROM record_keys WHERE record_id IN"
                                f" ({','.join('?' * len(chunk))}) ORDER BY record_id, key_ref", chunk)
            for rid, ref, wrapped in rows:
                out.setdefault(rid, bytes(ref) + bytes(wrapped))
        return out

    def refs(self, record_id: str) -> list[bytes]:
        return [bytes(r[0]) for r in self.db.query(
            "SELECT key_ref FROM record_keys WHERE record_id = ? ORDER BY key_ref", (record_id,))]

    def count(self) -> int:
        row = self.db.query_one("SELECT COUNT(*) FROM record_keys")
        return int(row[0]) if row else 0

    def key_ids_in_use(self) -> dict[int, int]:
        """How many record keys each field key wraps (Tink key id -> count)."""
        sub = "substring(wrapped from 2 for 4)" if self._pg else "substr(wrapped, 2, 4)"
        return {int.from_bytes(bytes(k), "big"): int(n) for k, n in self.db.query(
            f"SELECT {sub} AS k, COUNT(*) FROM record_keys GROUP BY k") if k is not None}

    def iter_keys(self, *, after: str = "", batch_size: int = 2000,
                  not_wrapped_by: int | None = None) -> Iterator[tuple[str, bytes]]:
        """``(record_id, stored key)`` in record-id order, in bounded memory."""
        cond = ""
        params: list[Any] = []
        if not_wrapped_by is not None:
            sub = "substring(wrapped from 2 for 4)" if self._pg else "substr(wrapped, 2, 4)"
            cond = f" AND {sub} <> ?"
            params.append(not_wrapped_by.to_bytes(4, "big"))
        last_id, last_ref = after, b""
        while True:
            rows = self.db.query(
                "SELECT record_id, key_ref, wrapped FROM record_keys WHERE"
                " (record_id > ? OR (record_id = ? AND key_ref > ?))" + cond
                + " ORDER BY record_id, key_ref LIMIT ?",
                (last_id, last_id, last_ref, *params, batch_size))
            if not rows:
                return
            for rid, ref, wrapped in rows:
                yield rid, bytes(ref) + bytes(wrapped)
            last_id, last_ref = rows[-1][0], bytes(rows[-1][1])

    def snapshot(self) -> Iterator[tuple[str, bytes]]:
        """Every ``(record_id, stored key)`` as of one instant, on a connection of its own.

        Writers are not blocked (SQLite: a read transaction on the WAL;
        PostgreSQL: ``REPEATABLE READ``): this is what the key backup reads.
        """
        sql = "SELECT record_id, key_ref, wrapped FROM record_keys ORDER BY record_id, key_ref"
        if self._pg:
            import psycopg

            with psycopg.connect(self.db.url.target) as conn:
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                conn.read_only = True
                with conn.transaction(), conn.cursor(name="pivault_rk_snapshot") as cur:
                    cur.itersize = 5000
                    cur.execute(sql)
                    for rid, ref, wrapped in cur:
                        yield rid, bytes(ref) + bytes(wrapped)
            return
        import sqlite3

        lite = sqlite3.connect(self.db.url.target, timeout=30.0, isolation_level=None)
        try:
            lite.execute("BEGIN")
            for rid, ref, wrapped in lite.execute(sql):
                yield rid, bytes(ref) + bytes(wrapped)
            lite.execute("COMMIT")
        finally:
            lite.close()

    def pinned(self) -> KeySnapshot:
        """A read-only view of the store as of now, on a connection of its own (close it after use).

        A data backup takes one before and one just after it pins its own
        snapshot of the data store, to find the key of every version it copies
        while writers go on (:func:`pivault.backup.create_backup`).
        """
        return KeySnapshot(self.db.url.target, pg=self._pg)

    # -- keys that seal a data backup's record keys ----------------------------------
    def put_backup_key(self, backup_id: str, stored: bytes) -> None:
        """Keep the (wrapped) key that seals the record keys inside data backup ``backup_id``.

        It lives here, beside the keyring, and never in the data backup: the
        data shelf alone opens no record, and deleting this key (expiry,
        :meth:`forget_backup_keys`) ends that backup's own copy of the keys.
        """
        self.db.execute("INSERT INTO backup_keys (backup_id, stored, created_at) VALUES (?, ?, ?)",
                        (backup_id, stored, time.time()))

    def backup_key(self, backup_id: str) -> bytes | None:
        row = self.db.query_one("SELECT stored FROM backup_keys WHERE backup_id = ?", (backup_id,))
        return bytes(row[0]) if row else None

    def backups_after(self, backup_id: str, created: float) -> list[tuple[str, float]]:
        """Data backups of this vault taken after ``backup_id`` (taken at ``created``), newest first.

        Every data backup keeps its sealing key here as it is written, so this
        store knows which backups exist, and when each was taken, whatever the
        backup shelf now holds: an older backup given in place of a newer one
        is told apart (those forgotten by ``keys gc`` are not seen).
        """
        own = self.db.query_one("SELECT created_at FROM backup_keys WHERE backup_id = ?", (backup_id,))
        after = float(own[0]) if own else created
        return [(str(b), float(t)) for b, t in self.db.query(
            "SELECT backup_id, created_at FROM backup_keys WHERE created_at > ? AND backup_id <> ?"
            " ORDER BY created_at DESC", (after, backup_id))]

    def forget_backup_keys(self, *, older_than_seconds: float) -> int:
        """Delete the sealing keys of data backups older than this; returns how many.

        From then on those backups restore as a backup without record keys
        does: a record corrected since needs the record-key backup taken with
        it. This is what makes an erasure final for their copies of the keys.
        """
        cutoff = time.time() - older_than_seconds
        n = self.db.execute("DELETE FROM backup_keys WHERE created_at < ?", (cutoff,)).rowcount
        if n:
            self.purge()
        return n

    # -- what a restore put back ---------------------------------------------------------
    def put_back_for_restore(self, backup_id: str, items: Sequence[tuple[str, bytes]]) -> list[str]:
        """:meth:`put_back_versions`, noting in the same transaction which records got their key back.

        A restore stopped after this (a crash, ``kill -9``) and run again finds
        those keys already in place: the note is how it still reports the
        records it puts back at their backed-up version. Returns the record
        ids whose key is now here for the restore (put back now or earlier).
        """
        db = self.db
        with db.transaction():
            self.put_back_versions(items)
            have = self.get_many([(rid, stored[:KEY_REF_BYTES]) for rid, stored in items])
            done = [(rid, stored[:KEY_REF_BYTES]) for rid, stored in items
                    if (rid, stored[:KEY_REF_BYTES]) in have]
            for rid, ref in done:
                db.execute("DELETE FROM restore_put_back WHERE backup_id = ? AND record_id = ?",
                           (backup_id, rid))
                db.execute("INSERT INTO restore_put_back (backup_id, record_id, key_ref) VALUES (?, ?, ?)",
                           (backup_id, rid, ref))
        return sorted(rid for rid, _ in done)

    def put_back_earlier(self, backup_id: str) -> dict[str, bytes]:
        """Record id -> key ref put back by an unfinished restore of ``backup_id`` (see above)."""
        return {str(rid): bytes(ref) for rid, ref in self.db.query(
            "SELECT record_id, key_ref FROM restore_put_back WHERE backup_id = ?", (backup_id,))}

    def restore_done(self, backup_id: str) -> None:
        """The restore of ``backup_id`` is in place and has reported: forget what it put back."""
        self.db.execute("DELETE FROM restore_put_back WHERE backup_id = ?", (backup_id,))

    # -- housekeeping ------------------------------------------------------------
    def collect_garbage(self, data_db: Database, *, grace_seconds: float = 3600.0,
                        writers_stopped: bool = False, allow_mass: bool = False) -> int:
        """Delete keys no committed record uses, older than ``grace_seconds``.

        Orphans come from crashes between a key's commit and its record's, and
        from updates whose old key could not be dropped at once. The grace
        period protects a key whose record is still being written: a key
        commits before its record, so on a vault that is writing, a key taken
        in between leaves its record unreadable for good. A grace shorter than
        :data:`MIN_GC_GRACE_SECONDS` is refused unless the caller states that
        nothing writes to the vault (``writers_stopped``).

        Crashes leave a few orphans; an erasure takes its keys with it. Keys by the
        hundred without a record mean the data store was wiped, replaced by an
        older copy, or is not this store's: deleting them would make those records
        unreadable in every backup that holds them. So more than
        :data:`MASS_ORPHANS` keys that are also more than :data:`MASS_SHARE` of
        the store are refused (``keys.gc_mass``) unless ``allow_mass``.
        """
        if math.isnan(grace_seconds):
            # below nothing, so it would pass the check below; and PostgreSQL sorts NaN above every
            # number, so its cutoff would take every key without a record, those being written too
            raise ConfigError("the grace period is not a number", code="keys.gc_grace",
                              hint=f"give --grace in seconds ({MIN_GC_GRACE_SECONDS:g} or more)")
        if grace_seconds < MIN_GC_GRACE_SECONDS and not writers_stopped:
            raise ConfigError(
                f"a grace period under {MIN_GC_GRACE_SECONDS:g} s could delete the key of a record whose "
                "write has not committed yet, and that record could never be read again",
                code="keys.gc_grace",
                hint=f"keep --grace at {MIN_GC_GRACE_SECONDS:g} or more, or stop every process that "
                     "writes to the vault (serve, import, rewrap) and add --writers-stopped")
        cutoff = time.time() - grace_seconds
        doomed: list[tuple[str, bytes]] = []
        pending: list[tuple[str, bytes]] = []

        def settle() -> None:
            if not pending:
                return
            ids = sorted({rid for rid, _ in pending})
            current = _current_refs(data_db, ids)
            for rid, ref in pending:
                if current.get(rid) != ref:
                    doomed.append((rid, ref))
            pending.clear()

        for rid, ref, _created in self.db.query(
                "SELECT record_id, key_ref, created_at FROM record_keys WHERE created_at < ?"
                " ORDER BY record_id", (cutoff,)):
            pending.append((rid, bytes(ref)))
            if len(pending) >= _CHUNK:
                settle()
        settle()
        if len(doomed) > MASS_ORPHANS and not allow_mass:
            total = self.count()
            if len(doomed) > MASS_SHARE * total:
                raise ConfigError(
                    f"{len(doomed):,} of the {total:,} record keys have no record in the data store: more "
                    "than crashes leave. The data store may have been wiped, replaced by an older copy, or "
                    "not be this store's; deleting the keys would make those records unreadable in every "
                    "backup that holds them, so none was deleted",
                    code="keys.gc_mass",
                    hint="check the data store (restore it from a backup if it was wiped); if those "
                         "records were removed on purpose, add --allow-mass-delete")
        n = 0
        with self.db.transaction():
            for rid, ref in doomed:
                n += self.delete_ref(rid, ref)
        if n:
            self.purge()
        return n

    # -- usage counters ---------------------------------------------------------
    def add_usage(self, counts: dict[int, int]) -> dict[int, int]:
        """Add encryption counts per key id; return the new totals for those keys."""
        now = time.time()
        db = self.db
        out: dict[int, int] = {}
        with db.transaction():
            for key_id, n in counts.items():
                db.execute(
                    "INSERT INTO key_usage (key_id, encryptions, updated_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (key_id) DO UPDATE SET encryptions = key_usage.encryptions"
                    " + excluded.encryptions, updated_at = excluded.updated_at",
                    (int(key_id), int(n), now))
                row = db.query_one("SELECT encryptions FROM key_usage WHERE key_id = ?", (int(key_id),))
                out[int(key_id)] = int(row[0]) if row else int(n)
        return out

    def usage(self) -> dict[int, int]:
        return {int(k): int(n) for k, n in self.db.query("SELECT key_id, encryptions FROM key_usage")}


class KeySnapshot:
    """The record-key store as of one instant, read on a connection of its own.

    SQLite: a read transaction on the WAL; PostgreSQL: ``REPEATABLE READ READ
    ONLY``. The instant is fixed when this is made (a first read), not when
    it is first queried, so several snapshots (of this store and of the data
    store) can be taken within a moment and read at leisure.
    """

    def __init__(self, target: str, *, pg: bool) -> None:
        self._pg = pg
        self._conn: Any
        if pg:
            import psycopg

            self._conn = psycopg.connect(target, autocommit=True)
            self._conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        else:
            import sqlite3

            self._conn = sqlite3.connect(target, timeout=30.0, isolation_level=None)
            self._conn.execute("BEGIN")
        self._conn.execute("SELECT COUNT(*) FROM keystore_meta").fetchall()  # fixes the instant

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> KeySnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rows(self, ids: Sequence[str]) -> list[tuple[Any, ...]]:
        if self._pg:
            return list(self._conn.execute("SELECT record_id, key_ref, wrapped FROM record_keys"
                                           " WHERE record_id = ANY(%s)", (list(ids),)).fetchall())
        return list(self._conn.execute(_select_keys_sqlite(len(ids)), list(ids)).fetchall())

    def keys_of(self, record_ids: Sequence[str]) -> dict[str, dict[bytes, bytes]]:
        """Every stored key of these records: record id -> key ref -> stored key."""
        out: dict[str, dict[bytes, bytes]] = {}
        for chunk in _chunks(list(dict.fromkeys(record_ids)), _CHUNK):
            for rid, ref, wrapped in self._rows(chunk):
                out.setdefault(str(rid), {})[bytes(ref)] = bytes(ref) + bytes(wrapped)
        return out


def keyless_batches(db: Database, keys: RecordKeyStore, *,
                    batch_size: int = 1000) -> Iterator[tuple[list[str], int]]:
    """Walk every record sealed under a record key, in record-id order: per batch, the ids whose
    key ``keys`` lacks and how many of the batch's keys it has.

    What an erasure leaves (the key gone) and what a wrong or emptied record-key store looks like
    (every key gone) are told apart from these counts by the caller.
    """
    last = ""
    while True:
        rows = db.query("SELECT record_id, name FROM records WHERE record_id > ? ORDER BY record_id LIMIT ?",
                        (last, batch_size))
        if not rows:
            return
        last = rows[-1][0]
        sealed = [rid for rid, name in rows if name is not None and key_ref_of(bytes(name)) is not None]
        found = keys.any_key_many(sealed)
        yield [rid for rid in sealed if rid not in found], len(found)


def purge_erased(db: Database, keys: RecordKeyStore, *, batch_size: int = 1000) -> int:
    """Delete records whose record key is gone: erasures made after the copy they came from.

    Run after restoring an older data backup, so that residents erased since
    are not even present as ciphertext (and lookups do not trip over them);
    the rejected import rows those erasures took (:meth:`RecordKeyStore.note_erased_rejects`)
    are deleted again too.
    Refuses, deleting nothing, when *no* record has a key in ``keys``: that
    is the wrong record-key store, or it was not restored yet.
    """
    missing: list[str] = []
    present = 0
    for lacking, found in keyless_batches(db, keys, batch_size=batch_size):
        present += found
        missing.extend(lacking)
        if present == 0 and len(missing) >= 10_000:
            break
    if missing and present == 0:
        raise ConfigError("no record has a key in this record-key store; nothing was deleted",
                          code="keys.store_empty",
                          hint="restore the record keys first (`pivault keys restore`), or point the vault"
                               " at its own record-key store")
    _purge_erased_rejects(db, keys)
    return RecordStore(db).delete_many(missing) if missing else 0


def _purge_erased_rejects(db: Database, keys: RecordKeyStore) -> int:
    """Delete the rejected import rows that erasures took since the copy they came from."""
    gone = keys.erased_rejects()
    if not gone or not db.table_exists("import_rejects"):
        return 0
    n = 0
    with db.transaction():
        for chunk in _chunks(gone, _CHUNK):
            marks = ",".join("?" * len(chunk))
            if db.table_exists("import_reject_numbers"):
                db.execute(f"DELETE FROM import_reject_numbers WHERE reject_id IN ({marks})", chunk)
            n += db.execute(f"DELETE FROM import_rejects WHERE reject_id IN ({marks})", chunk).rowcount
    return n


def _current_refs(db: Database, ids: Sequence[str]) -> dict[str, bytes | None]:
    """Key ref of each record's committed ciphertext (its ``name`` field)."""
    out: dict[str, bytes | None] = {}
    for chunk in _chunks(list(ids), _CHUNK):
        if db.dialect == "postgresql":
            rows = db.query("SELECT record_id, name FROM records WHERE record_id = ANY(?)", (list(chunk),))
        else:
            rows = db.query("SELECT record_id, name FROM records WHERE record_id IN"
                            f" ({','.join('?' * len(chunk))})", chunk)
        for rid, name in rows:
            out[rid] = key_ref_of(bytes(name)) if name is not None else None
    return out


def _ref(record: StoredRecord) -> bytes | None:
    name = record.fields.get("name")
    return key_ref_of(name) if name is not None else None


class ShreddingRecordStore(RecordStore):
    """A :class:`RecordStore` that keeps each record's key in a :class:`RecordKeyStore`.

    Records read from it carry ``record_key``; records written to it with a
    ``record_key`` have it stored first; deleting a record destroys its keys
    before its row. Everything else is the plain record store.
    """

    def __init__(self, db: Database, keys: RecordKeyStore, *, ledger: Any = None) -> None:
        super().__init__(db)
        self.keys = keys
        #: the usage ledger attached with this store (flushed at close)
        self.ledger = ledger
        #: (record id, key ref) replaced inside a caller's transaction, dropped after it commits
        self._superseded: list[tuple[str, bytes]] = []

    def close(self) -> None:
        """Report pending usage counts and close the record-key store."""
        if self.ledger is not None:
            self.ledger.flush()
            self.ledger.detach()
        self.keys.close()

    # -- writing ----------------------------------------------------------------
    def insert(self, records: Sequence[StoredRecord], *, undo_alone: bool = True) -> None:
        self.keys.put_many((r.record_id, r.record_key) for r in records if r.record_key is not None)
        super().insert(records, undo_alone=undo_alone)

    def insert_new(self, new: NewRecords, *, undo_alone: bool = True) -> None:
        self.keys.put_many((rid, key) for rid, key in zip(new.record_ids, new.record_keys, strict=True)
                           if key is not None)
        super().insert_new(new, undo_alone=undo_alone)

    def replace(self, record: StoredRecord) -> bool:
        rid = record.record_id
        row = self.db.query_one("SELECT name FROM records WHERE record_id = ?", (rid,))
        old_ref = key_ref_of(bytes(row[0])) if row and row[0] is not None else None
        new_ref = record.record_key[:KEY_REF_BYTES] if record.record_key is not None else None
        if record.record_key is not None and new_ref != old_ref:
            self.keys.put_many([(rid, record.record_key)])
        ok = super().replace(record)
        if not ok:
            if new_ref is not None and new_ref != old_ref:
                self.keys.delete_ref(rid, new_ref)
            return False
        if old_ref is not None and old_ref != new_ref:
            self._superseded.append((rid, old_ref))
            if not self.db.in_transaction:
                self.drop_superseded()
        return True

    def drop_superseded(self) -> int:
        """Delete replaced keys whose record's committed ciphertext no longer names them."""
        if self.db.in_transaction or not self._superseded:
            return 0
        pending, self._superseded = self._superseded, []
        current = _current_refs(self.db, sorted({rid for rid, _ in pending}))
        n = 0
        for rid, ref in pending:
            if current.get(rid) != ref:
                n += self.keys.delete_ref(rid, ref)
        return n

    def delete_many(self, record_ids: Sequence[str]) -> int:
        return self.erase_records(record_ids)

    def erase_records(self, record_ids: Sequence[str], asked_by: str | None = None) -> int:
        """:meth:`delete_many`, with who asked for the erasure kept beside the shred (``asked_by``,
        see :meth:`RecordKeyStore.delete_records`)."""
        # the keys first: from here on every copy of these records is noise
        self.keys.delete_records(record_ids, erasure=asked_by)
        n = super().delete_many(record_ids)
        if not self.db.in_transaction:
            self.keys.purge()
        return n

    def purge_freed(self) -> bool:
        self.drop_superseded()
        keys_done = self.keys.purge()  # a deleted key left in the files undoes the shred
        return super().purge_freed() and keys_done

    def scrub(self) -> bool:
        self.drop_superseded()
        keys_done = self.keys.scrub()
        return super().scrub() and keys_done

    # -- reading ----------------------------------------------------------------
    def _keys_for(self, records: Sequence[StoredRecord]) -> list[StoredRecord]:
        """Give each record the key its ciphertext names; the records with a ref but no such key."""
        refs = [(r, _ref(r)) for r in records]
        wanted = [(r.record_id, ref) for r, ref in refs if ref is not None]
        found = self.keys.get_many(wanted) if wanted else {}
        missing: list[StoredRecord] = []
        for r, ref in refs:
            if ref is not None:
                key = r.record_key = found.get((r.record_id, ref))
                if key is None:
                    missing.append(r)
        return missing

    def _attach(self, records: list[StoredRecord]) -> list[StoredRecord]:
        missing = self._keys_for(records)
        rounds = _REREADS
        while missing and rounds:
            rounds -= 1
            # The record and its key live in two stores, read one after the other. An update
            # between the two reads commits the new ciphertext (its new key stored first) and
            # then drops the old key: the row read before it names a key that is gone. Read
            # once more, such a record is its new version, whose key is there, unless another
            # update overtook this read too: then again, until row and key agree.
            fresh = {f.record_id: f for f in super().get_many([r.record_id for r in missing])}
            changed = {r.record_id: f for r in missing
                       if (f := fresh.get(r.record_id)) is not None and _ref(f) != _ref(r)}
            if not changed:
                break
            records = [changed.get(r.record_id, r) for r in records]
            missing = [r for r in missing if r.record_id not in changed]
            missing += self._keys_for(list(changed.values()))
        if missing:
            # No key under the ref its name names: erased, unless the record has a key of
            # its own (then the name was moved or altered, and decryption says so).
            others = self.keys.any_key_many([r.record_id for r in missing])
            for r in missing:
                r.record_key = others.get(r.record_id)
        return records

    def get(self, record_id: str, *, for_update: bool = False) -> StoredRecord | None:
        rec = super().get(record_id, for_update=for_update)
        return None if rec is None else self._attach([rec])[0]

    def get_many(self, record_ids: Sequence[str]) -> list[StoredRecord]:
        return self._attach(super().get_many(record_ids))

    def get_records(self, ids: Sequence[str]) -> list[StoredRecord]:
        return self._attach(super().get_records(ids))

    def lookup(self, index_name: str, values: Sequence[bytes],
               check: Callable[[str], bytes] | None = None) -> list[StoredRecord]:
        return self._attach(super().lookup(index_name, values, check))

    def iter_all(self, batch_size: int = 1000) -> Iterator[StoredRecord]:
        batch: list[StoredRecord] = []
        for rec in super().iter_all(batch_size):
            batch.append(rec)
            if len(batch) >= batch_size:
                yield from self._attach(batch)
                batch = []
        if batch:
            yield from self._attach(batch)
