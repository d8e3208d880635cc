"""The record table and the blind-index table.

The store keeps, per resident, the AEAD ciphertext of each PI field, the keyed
blind indexes used to find a record without decrypting anything, and non-PI
metadata (timestamps, the import batch). It never sees plaintext or keys: the
Vault layer above encrypts before it calls :meth:`RecordStore.insert` and
decrypts what :meth:`RecordStore.get` returns.

Two tables, with no foreign key between them so that each can be distributed
on its own column (``records`` by ``record_id``, ``blind_index`` by ``value``):
a lookup touches one shard of each and no constraint needs a cross-shard check.
"""

from __future__ import annotations

import os
import sqlite3
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from typing import Any

from pivault.store.db import Database, StoreError
from pivault.store.migrations import Migration, register


class DuplicateRecordId(StoreError):
    """A record id in the batch already exists (or occurs twice in the batch)."""

    code = "store.duplicate_id"

    def __init__(self, record_ids: Sequence[str]) -> None:
        shown = ", ".join(record_ids[:3]) + (" …" if len(record_ids) > 3 else "")
        super().__init__(
            f"{len(record_ids)} record id(s) already exist or repeat in the batch: {shown};"
            " nothing of the batch was written",
            hint="record ids are unique; was this batch imported before?")
        self.record_ids = list(record_ids)


@dataclass(slots=True)
class StoredRecord:
    """One record as the store holds it: ciphertext, blind indexes, metadata."""

    record_id: str
    #: field name -> AEAD ciphertext, only the fields present
    fields: dict[str, bytes]
    #: index name (``id_number``, ``mobile``, ``name_birth``) -> blind index value
    index: dict[str, bytes] = field(default_factory=dict)
    #: unix seconds; 0.0 on insert means "now"
    created_at: float = 0.0
    #: unix seconds; 0.0 on insert means created_at, on replace "now"
    updated_at: float = 0.0
    #: the import batch that created the record
    batch_id: str | None = None
    #: the record's wrapped data key (per-record keys, see docs/keys.md); never
    #: written to these tables: a record-key store beside the keyring holds it
    record_key: bytes | None = None
    #: index name -> check tag of that entry (``pivault.vault.checks``); written with the
    #: entry, never read back into a record
    checks: dict[str, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class NewRecords:
    """New records column by column: an import's chunk as a worker hands it over.

    Ten thousand :class:`StoredRecord` objects a chunk, each with three dicts,
    cost their worker more to pickle and the importing process more to unpickle
    and turn into table rows than the rows' COPY itself; lists of one entry a
    record pickle as flat runs of bytes, and :meth:`RecordStore.insert_new`
    makes the rows from them with ``zip``. Entry ``k`` of every list belongs
    to record ``record_ids[k]``.
    """

    record_ids: list[str]
    #: field name (every one of :attr:`RecordStore.FIELDS`) -> ciphertext per record, None if absent
    fields: dict[str, list[bytes | None]]
    #: index name -> (the positions of the records that have an entry, their values, their
    #: check tags), positions ascending
    index: dict[str, tuple[list[int], list[bytes], list[bytes | None]]]
    #: the records' wrapped data keys (see :attr:`StoredRecord.record_key`)
    record_keys: list[bytes | None]
    batch_id: str | None = None

    def __len__(self) -> int:
        return len(self.record_ids)

    def record(self, k: int) -> StoredRecord:
        """Record ``k`` as a :class:`StoredRecord` (for the rare record that takes another path)."""
        index: dict[str, bytes] = {}
        checks: dict[str, bytes] = {}
        for name, (positions, values, tags) in self.index.items():
            i = bisect_left(positions, k)
            if i < len(positions) and positions[i] == k:
                index[name] = values[i]
                tag = tags[i]
                if tag is not None:
                    checks[name] = tag
        return StoredRecord(self.record_ids[k],
                            {f: v for f, col in self.fields.items() if (v := col[k]) is not None},
                            index, batch_id=self.batch_id, record_key=self.record_keys[k],
                            checks=checks)

    def take(self, keep: Sequence[int]) -> NewRecords:
        """Only records ``keep`` (ascending positions), in their order."""
        if len(keep) == len(self.record_ids):
            return self
        ids = self.record_ids
        index: dict[str, tuple[list[int], list[bytes], list[bytes | None]]] = {}
        at = {k: i for i, k in enumerate(keep)}
        for name, (positions, values, tags) in self.index.items():
            picked = [(at[k], v, t) for k, v, t in zip(positions, values, tags, strict=True) if k in at]
            index[name] = ([p[0] for p in picked], [p[1] for p in picked], [p[2] for p in picked])
        return NewRecords([ids[k] for k in keep],
                          {f: [col[k] for k in keep] for f, col in self.fields.items()}, index,
                          [self.record_keys[k] for k in keep], self.batch_id)


_SQLITE_V1 = """
CREATE TABLE records (
    record_id TEXT NOT NULL PRIMARY KEY,
    name BLOB, id_number BLOB, mobile BLOB, address BLOB, notes BLOB,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    batch_id TEXT);
CREATE TABLE blind_index (
    index_name TEXT NOT NULL,
    value BLOB NOT NULL,
    record_id TEXT NOT NULL,
    PRIMARY KEY (index_name, value, record_id)) WITHOUT ROWID;
CREATE INDEX blind_index_record ON blind_index (record_id)
"""

# record ids are ASCII: the "C" collation makes ORDER BY a plain byte order,
# the same on every server whatever its locale, and cheaper to compare.
_PG_V1 = """
CREATE TABLE records (
    record_id TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name BYTEA, id_number BYTEA, mobile BYTEA, address BYTEA, notes BYTEA,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    batch_id TEXT);
CREATE TABLE blind_index (
    index_name TEXT COLLATE "C" NOT NULL,
    value BYTEA NOT NULL,
    record_id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (index_name, value, record_id));
CREATE INDEX blind_index_record ON blind_index (record_id)
"""

register(Migration("records", 1, "record and blind-index tables", _SQLITE_V1, _PG_V1))
# v2: a check tag per blind-index entry, and its key (encrypted under the keyring's field
# key), so that a lookup decrypts only the candidates whose tag matches (pivault.vault.checks).
# Entries written before it have no tag and are decrypted as before.
register(Migration(
    "records", 2, "check tags of blind-index entries and their encrypted key",
    "ALTER TABLE blind_index ADD COLUMN tag BLOB;"
    "CREATE TABLE index_check_key (id INTEGER PRIMARY KEY CHECK (id = 1), key_ct BLOB NOT NULL)",
    "ALTER TABLE blind_index ADD COLUMN tag BYTEA;"
    "CREATE TABLE index_check_key (id SMALLINT PRIMARY KEY CHECK (id = 1), key_ct BYTEA NOT NULL)"))

# v3: how many transactions have taken the ID-number locks to write (RecordStore.lock_id_numbers):
# a first load on PostgreSQL tells from it that nobody else added or changed a number meanwhile.
# A sequence, because nextval neither waits nor is undone: writers never queue on it, and a
# writer that rolled back still counts (the importer then checks as if it had written). A
# restore drops or moves the tables only: the sequence stays, and its count goes on.
register(Migration("records", 3, "a count of the writers of ID numbers (PostgreSQL)",
                   lambda db: None, "CREATE SEQUENCE IF NOT EXISTS number_writes"))

_COLS = "record_id, name, id_number, mobile, address, notes, created_at, updated_at, batch_id"
_JOINED_COLS = ", ".join(f"r.{c}" for c in _COLS.split(", "))
_INSERT_RECORD = f"INSERT INTO records ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_INDEX = "INSERT INTO blind_index (index_name, value, record_id, tag) VALUES (?, ?, ?, ?)"
_LOOKUP_ONE_SQLITE = (f"SELECT {_JOINED_COLS} FROM blind_index b"
                      " JOIN records r ON r.record_id = b.record_id"
                      " WHERE b.index_name = ? AND b.value = ? ORDER BY b.record_id")
_ENTRIES_ONE = "SELECT record_id, tag FROM blind_index WHERE index_name = ? AND value = ?"
_RECORD_ONE = f"SELECT {_COLS} FROM records WHERE record_id = ?"
_RECORD_TYPES = ["text", "bytea", "bytea", "bytea", "bytea", "bytea", "float8", "float8", "text"]
_INDEX_TYPES = ["text", "bytea", "text", "bytea"]
#: PostgreSQL batches from this size go through binary COPY
COPY_THRESHOLD = 500
#: values per ``IN (…)`` list on SQLite, per array on PostgreSQL
_CHUNK_SQLITE = 500
#: the PI columns of ``records``, in their order
_FIELD_NAMES: tuple[str, ...] = ("name", "id_number", "mobile", "address", "notes")
_CHUNK_PG = 5000
#: PostgreSQL advisory-lock spaces (the two-``int4`` form): every writer that adds or
#: changes an ID number takes the first shared (an import's chunk takes it exclusive),
#: then the second keyed by the number's blind index value
_LOCK_WRITERS = 0x70760001
_LOCK_NUMBERS = 0x70760002


def _repeats(ids: Sequence[str]) -> set[str]:
    """The ids that occur more than once in ``ids``."""
    seen: set[str] = set()
    repeated: set[str] = set()
    for rid in ids:
        if rid in seen:
            repeated.add(rid)
        seen.add(rid)
    return repeated


def _unique_violation(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.IntegrityError):
        return "UNIQUE" in str(exc) or "PRIMARY KEY" in str(exc)
    sqlstate = getattr(exc, "sqlstate", None)
    return sqlstate == "23505"


def _pg_bytea_array(values: Iterable[bytes]) -> str:
    """A PostgreSQL ``bytea[]`` literal: psycopg adapts a list element by element in Python
    (~4 µs each), which made a 10,000-value query cost more than its execution."""
    return "{" + ",".join(f'"\\\\x{v.hex()}"' for v in values) + "}"


def _pg_text_array(values: Iterable[str]) -> str:
    """A PostgreSQL ``text[]`` literal (see :func:`_pg_bytea_array`)."""
    return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"


def _in_key_order(rows: list[tuple[str, bytes, str, bytes | None]]
                  ) -> list[tuple[str, bytes, str, bytes | None]]:
    """Blind-index rows in the order of the table's primary key (index name, value).

    A bulk insert's entries land at random places in that B-tree, which outgrows
    the server's buffers. Taken in key order, each insert descends next to the
    one before, through pages just touched: measured on PostgreSQL with 10^6
    residents in 10^4-resident batches, the server spent 12.5 µs a resident on
    the blind index against 13.3-14.1 in arrival order, for ~0.5 µs of sorting
    here (a list per index name, each sorted by value alone).
    """
    by_name: dict[str, list[tuple[str, bytes, str, bytes | None]]] = {}
    for row in rows:
        group = by_name.get(row[0])
        if group is None:
            group = by_name[row[0]] = []
        group.append(row)
    out: list[tuple[str, bytes, str, bytes | None]] = []
    for name in sorted(by_name):
        group = by_name[name]
        group.sort(key=_VALUE)
        out += group
    return out


_VALUE = itemgetter(1)


def _chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


class RecordStore:
    """Ciphertext records and their blind indexes, on one :class:`Database`."""

    FIELDS: tuple[str, ...] = _FIELD_NAMES
    _FIELDSET = frozenset(FIELDS)

    def __init__(self, db: Database) -> None:
        self._db = db
        self._pg = db.dialect == "postgresql"

    @property
    def db(self) -> Database:
        return self._db

    # -- writing ------------------------------------------------------------
    def _rows(self, records: Iterable[StoredRecord], now: float
              ) -> tuple[list[tuple[Any, ...]], list[tuple[str, bytes, str, bytes | None]]]:
        rec_rows: list[tuple[Any, ...]] = []
        idx_rows: list[tuple[str, bytes, str, bytes | None]] = []
        fieldset = self._FIELDSET
        add_record, add_entries = rec_rows.append, idx_rows.extend  # a row of an import's 10^4 each
        for r in records:
            f = r.fields
            if not f.keys() <= fieldset:
                unknown = sorted(k for k in f if k not in fieldset)
                raise StoreError(f"unknown record field(s): {', '.join(map(repr, unknown))[:200]}",
                                 code="store.field",
                                 hint=f"the fields are {', '.join(self.FIELDS)}")
            rid = r.record_id
            created = r.created_at or now
            get = f.get
            add_record((rid, get("name"), get("id_number"), get("mobile"), get("address"), get("notes"),
                        created, r.updated_at or created, r.batch_id))
            tag = r.checks.get
            add_entries([(name, value, rid, tag(name)) for name, value in r.index.items()])
        return rec_rows, idx_rows

    def _write(self, rec_rows: list[tuple[Any, ...]],
               idx_rows: list[tuple[str, bytes, str, bytes | None]]) -> None:
        db = self._db
        if self._pg and len(rec_rows) >= COPY_THRESHOLD:
            with db.raw.cursor() as cur:
                with cur.copy(f"COPY records ({_COLS}) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.set_types(_RECORD_TYPES)
                    for row in rec_rows:
                        cp.write_row(row)
                if idx_rows:
                    idx_rows = _in_key_order(idx_rows)
                    with cur.copy("COPY blind_index (index_name, value, record_id, tag)"
                                  " FROM STDIN (FORMAT BINARY)") as cp:
                        cp.set_types(_INDEX_TYPES)
                        for irow in idx_rows:
                            cp.write_row(irow)
        else:
            db.executemany(_INSERT_RECORD, rec_rows)
            db.executemany(_INSERT_INDEX, idx_rows)

    def insert(self, records: Sequence[StoredRecord], *, undo_alone: bool = True) -> None:
        """Add new records, all or none.

        Joins the caller's open transaction if there is one; a failure undoes
        this batch only (a savepoint), so the caller's transaction stays usable.
        Raises :class:`DuplicateRecordId` if a record id exists already or
        repeats in the batch, and ``StoreError`` ``store.field`` for a field
        name outside :attr:`FIELDS`; in both cases nothing is written.

        ``undo_alone=False`` is for a caller whose own transaction is undone
        whole on any failure (the import's chunk): on SQLite, no savepoint.
        SQLite keeps the original of every page a savepoint changes until it
        is released, in memory here (``temp_store=MEMORY``): for a
        10,000-row chunk in a large store that is a page per random B-tree
        insert, about 75 MiB of the import's peak at 3·10^5 residents and
        growing with N. (A PostgreSQL savepoint holds no such copy.)
        """
        if not records:
            return
        self._insert_rows(*self._rows(records, time.time()), undo_alone=undo_alone)

    def insert_new(self, new: NewRecords, *, undo_alone: bool = True) -> None:
        """:meth:`insert` of records given column by column (see :class:`NewRecords`)."""
        if not new.record_ids:
            return
        fields = new.fields
        if fields.keys() != self._FIELDSET:
            raise StoreError("new records carry a column for every record field and no other",
                             code="store.field", hint=f"the fields are {', '.join(self.FIELDS)}")
        now = time.time()
        ids = new.record_ids
        rec_rows = list(zip(ids, *(fields[f] for f in self.FIELDS), repeat(now), repeat(now),
                            repeat(new.batch_id)))
        idx_rows: list[tuple[str, bytes, str, bytes | None]] = []
        for name, (positions, values, tags) in new.index.items():
            idx_rows += zip(repeat(name), values, [ids[k] for k in positions], tags)
        self._insert_rows(rec_rows, idx_rows, undo_alone=undo_alone)

    def _insert_rows(self, rec_rows: list[tuple[Any, ...]],
                     idx_rows: list[tuple[str, bytes, str, bytes | None]], *, undo_alone: bool) -> None:
        db = self._db
        savepoint = undo_alone or self._pg or not db.in_transaction
        try:
            with db.transaction():
                if savepoint:
                    db.execute("SAVEPOINT pivault_records_insert")
                try:
                    self._write(rec_rows, idx_rows)
                except BaseException:
                    if savepoint:
                        db.execute("ROLLBACK TO SAVEPOINT pivault_records_insert")
                        db.execute("RELEASE SAVEPOINT pivault_records_insert")
                    raise
                if savepoint:
                    db.execute("RELEASE SAVEPOINT pivault_records_insert")
        except Exception as exc:
            if _unique_violation(exc):
                ids = [r[0] for r in rec_rows]
                if savepoint:
                    raise DuplicateRecordId(self._duplicates(ids)) from None
                # without a savepoint the rows written before the failure stay until the caller
                # undoes its transaction: which ids existed before cannot be told apart
                raise DuplicateRecordId(sorted(_repeats(ids)) or sorted(set(ids))) from None
            raise

    def _duplicates(self, ids: list[str]) -> list[str]:
        return sorted(_repeats(ids) | self._existing(sorted(set(ids))))

    def existing(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the store holds: ids only, no ciphertext read (the leak check
        confirms a copied record id with it)."""
        return self._existing(ids)

    def _existing(self, ids: Sequence[str]) -> set[str]:
        out: set[str] = set()
        if self._pg:
            for chunk in _chunks(ids, _CHUNK_PG):
                out.update(r[0] for r in self._db.query(
                    "SELECT record_id FROM records WHERE record_id = ANY(?)", (list(chunk),)))
        else:
            for chunk in _chunks(ids, _CHUNK_SQLITE):
                out.update(r[0] for r in self._db.query(
                    "SELECT record_id FROM records WHERE record_id IN"
                    f" ({','.join('?' * len(chunk))})", chunk))
        return out

    def replace(self, record: StoredRecord) -> bool:
        """Replace the fields, index entries and ``updated_at`` of a record, atomically.

        ``created_at`` and ``batch_id`` keep their stored values. Returns False
        (and writes nothing) if the record does not exist.
        """
        (row,), idx_rows = self._rows([record], time.time())
        updated = record.updated_at or time.time()
        db = self._db
        with db.transaction():
            cur = db.execute(
                "UPDATE records SET name = ?, id_number = ?, mobile = ?, address = ?, notes = ?,"
                " updated_at = ? WHERE record_id = ?", (*row[1:6], updated, record.record_id))
            if cur.rowcount == 0:
                return False
            db.execute("DELETE FROM blind_index WHERE record_id = ?", (record.record_id,))
            db.executemany(_INSERT_INDEX, idx_rows)
        return True

    def delete(self, record_id: str) -> bool:
        """Delete a record and its index entries; False if it did not exist.

        Outside a transaction on SQLite, the freed bytes are then purged from
        the files (see :meth:`purge_freed`); inside one, call
        :meth:`purge_freed` after it commits.
        """
        return self.delete_many([record_id]) == 1

    def delete_many(self, record_ids: Sequence[str]) -> int:
        """Delete records and their index entries; returns how many existed."""
        ids = list(dict.fromkeys(record_ids))
        if not ids:
            return 0
        db = self._db
        n = 0
        with db.transaction():
            if self._pg:
                for chunk in _chunks(ids, _CHUNK_PG):
                    arr = (list(chunk),)
                    db.execute("DELETE FROM blind_index WHERE record_id = ANY(?)", arr)
                    n += db.execute("DELETE FROM records WHERE record_id = ANY(?)", arr).rowcount
            else:
                for chunk in _chunks(ids, _CHUNK_SQLITE):
                    marks = ",".join("?" * len(chunk))
                    db.execute(f"DELETE FROM blind_index WHERE record_id IN ({marks})", chunk)
                    n += db.execute(f"DELETE FROM records WHERE record_id IN ({marks})",
                                    chunk).rowcount
        if n and not self._pg and not db.in_transaction:
            self.purge_freed()
        return n

    def purge_freed(self) -> bool:
        """Make the bytes of deleted rows unrecoverable from the database files, where the backend can.

        SQLite (``secure_delete`` is on, so freed cells and pages are zeroed):
        checkpoint the WAL into the main file and truncate it, so no old page
        image survives in ``-wal``. Returns False if a reader kept the
        checkpoint from completing, or if called inside a transaction (it
        then does nothing: call it again after the commit).

        PostgreSQL: a plain ``VACUUM`` of both tables, which lets the space of
        dead tuples be reused; it does not overwrite them, and the server's
        WAL, replicas and backups keep the old bytes. Only crypto-shredding
        (destroying the key) is a real guarantee there.
        """
        db = self._db
        if db.in_transaction:
            return False
        if self._pg:
            db.execute("VACUUM records")
            db.execute("VACUUM blind_index")
            return True
        return db.truncate_wal()

    def scrub(self) -> bool:
        """Leave no byte of any erased record in the files: :meth:`purge_freed`, and more.

        SQLite: the store is rewritten whole (:meth:`Database.rewrite_sqlite`), which also
        removes the copies of cells that page rebuilds leave behind, where ``secure_delete``
        does not reach. It takes as long as copying the store and as much free disk, and
        holds the write lock meanwhile: run it after erasures, not after each one.
        PostgreSQL: :meth:`purge_freed` (no byte guarantee; see docs/store.md).
        """
        if self._pg:
            return self.purge_freed()
        return self._db.rewrite_sqlite()

    # -- reading ------------------------------------------------------------
    @staticmethod
    def _record(row: Sequence[Any], index: dict[str, bytes]) -> StoredRecord:
        fields = {f: v if type(v) is bytes else bytes(v)
                  for f, v in zip(_FIELD_NAMES, row[1:6], strict=True) if v is not None}
        return StoredRecord(row[0], fields, index, float(row[6]), float(row[7]), row[8])

    def lock_id_numbers(self, values: Sequence[bytes] | None) -> int | None:
        """Hold, until the transaction ends, the right to add or change records of these ID numbers.

        The uniqueness of an ID number is a read (is it in the vault?) then a
        write. SQLite serialises every writer of the file already (``BEGIN
        IMMEDIATE``), so this is a no-op there; under PostgreSQL's READ
        COMMITTED two transactions would both read "absent" and both insert.
        So on PostgreSQL the writer takes transaction-scoped advisory locks
        first: one shared by every such writer, then one per blind index value
        (several numbers share a value: they only queue behind each other).
        ``None`` asks for every number at once (the shared lock exclusively),
        for an import's chunk: its thousands of numbers would overflow the
        server's lock table, and it queues single writers for one
        transaction. Call it first in the transaction, before reading what it
        protects.

        Returns, on PostgreSQL, the count of such writers including this one
        (the ``number_writes`` sequence, moved once the lock is held; None on
        SQLite): a run that takes the exclusive lock twice and gets two
        consecutive counts knows that no other transaction wrote an ID number
        between.
        """
        if not self._pg:
            return None
        db = self._db
        if not db.in_transaction:
            raise StoreError("the ID-number locks are taken inside the writing transaction",
                             code="store.lock")
        # the lock first, then the count: a subquery in FROM is evaluated before the select list
        take = "pg_advisory_xact_lock" if values is None else "pg_advisory_xact_lock_shared"
        row = db.query_one(f"SELECT nextval('number_writes') FROM (SELECT {take}(?::int4, 0)) AS held",
                           (_LOCK_WRITERS,))
        if row is None:  # pragma: no cover - the select always has its one row
            raise StoreError("the ID-number lock returned nothing", code="store.lock")
        for key in sorted({int.from_bytes(bytes(v)[:4], "big", signed=True) for v in values or ()}):
            db.execute("SELECT pg_advisory_xact_lock(?::int4, ?::int4)", (_LOCK_NUMBERS, key))
        return int(row[0])

    def get(self, record_id: str, *, for_update: bool = False) -> StoredRecord | None:
        """A record with its index entries, or None.

        ``for_update`` (inside a transaction) also locks the record's row until
        it ends on PostgreSQL, so that a read-modify-write does not lose a
        concurrent writer's change; SQLite's write transaction holds the file.
        """
        lock = " FOR UPDATE" if for_update and self._pg else ""
        row = self._db.query_one(f"SELECT {_COLS} FROM records WHERE record_id = ?{lock}",
                                 (record_id,))
        if row is None:
            return None
        index = {n: bytes(v) for n, v in self._db.query(
            "SELECT index_name, value FROM blind_index WHERE record_id = ?", (record_id,))}
        return self._record(row, index)

    def get_records(self, ids: Sequence[str]) -> list[StoredRecord]:
        """The records of sorted, distinct ``ids`` that exist, in that order, without index entries."""
        db = self._db
        found: list[StoredRecord] = []
        if self._pg:
            for chunk in _chunks(ids, _CHUNK_PG):
                found += [self._record(row, {}) for row in db.query(
                    f"SELECT {_COLS} FROM records WHERE record_id = ANY(?) ORDER BY record_id",
                    (list(chunk),))]
        else:
            for chunk in _chunks(ids, _CHUNK_SQLITE):
                found += [self._record(row, {}) for row in db.query(
                    f"SELECT {_COLS} FROM records WHERE record_id IN ({','.join('?' * len(chunk))})"
                    " ORDER BY record_id", chunk)]
        return found

    def get_many(self, record_ids: Sequence[str]) -> list[StoredRecord]:
        """The records that exist, in the order asked, each once."""
        ids = list(dict.fromkeys(record_ids))
        rows: dict[str, tuple[Any, ...]] = {}
        index: dict[str, dict[str, bytes]] = {}
        db = self._db
        if self._pg:
            for chunk in _chunks(ids, _CHUNK_PG):
                arr = (list(chunk),)
                for row in db.query(f"SELECT {_COLS} FROM records WHERE record_id = ANY(?)", arr):
                    rows[row[0]] = row
                for rid, name, value in db.query(
                        "SELECT record_id, index_name, value FROM blind_index"
                        " WHERE record_id = ANY(?)", arr):
                    index.setdefault(rid, {})[name] = bytes(value)
        else:
            for chunk in _chunks(ids, _CHUNK_SQLITE):
                marks = ",".join("?" * len(chunk))
                for row in db.query(f"SELECT {_COLS} FROM records WHERE record_id IN ({marks})",
                                    chunk):
                    rows[row[0]] = row
                for rid, name, value in db.query(
                        "SELECT record_id, index_name, value FROM blind_index"
                        f" WHERE record_id IN ({marks})", chunk):
                    index.setdefault(rid, {})[name] = bytes(value)
        return [self._record(rows[rid], index.get(rid, {})) for rid in ids if rid in rows]

    def candidates(self, index_name: str, value: bytes) -> list[StoredRecord]:
        """Every record whose ``index_name`` entry equals ``value``, by record id.

        A truncated blind index matches several records; the caller decrypts
        and compares to keep the true match.
        """
        ids = [r[0] for r in self._db.query(
            "SELECT record_id FROM blind_index WHERE index_name = ? AND value = ?"
            " ORDER BY record_id", (index_name, value))]
        return self.get_many(ids) if ids else []

    def lookup(self, index_name: str, values: Sequence[bytes],
               check: Callable[[str], bytes] | None = None) -> list[StoredRecord]:
        """Records whose ``index_name`` entry is one of ``values``: the Vault's search path.

        Like :meth:`candidates` but for several values (a blind-index key
        rotation searches each key's value) and without the index entries
        (``index`` is empty). Ordered by record id, each once.

        ``check(record_id)`` is the check tag that the entry of the resident
        searched for carries (:mod:`pivault.vault.checks`): an entry with
        another tag is left out before its record is read, an entry without one
        (written before tags existed) stays in. With it, the blind index is
        read first and only the records kept are fetched; without it, on
        SQLite one query joins the two tables. On PostgreSQL always two
        queries, each of which Citus routes to the shards of its own
        distribution column.
        """
        vals = list(dict.fromkeys(bytes(v) for v in values))
        if not vals:
            return []
        db = self._db
        rec = self._record
        if check is None and len(vals) == 1 and not self._pg:
            # one value, one query whose rows come in record-id order from the blind index's
            # primary key, each record once (no dict, no sort, no SQL built)
            return [rec(row, {}) for row in db.query(_LOOKUP_ONE_SQLITE, (index_name, vals[0]))]
        if check is not None or self._pg:
            if len(vals) == 1:
                entries = db.query(_ENTRIES_ONE, (index_name, vals[0]))
            else:  # a blind-index key rotation: each key's value
                entries = [(rid, tag) for _v, rid, tag in self.entry_tags(index_name, vals)]
            if check is None:
                ids = {rid for rid, _tag in entries}
            else:
                ids = {rid for rid, tag in entries if tag is None or tag == check(rid)}
            if not ids:
                return []
            if len(ids) == 1:
                row = db.query_one(_RECORD_ONE, (next(iter(ids)),))
                return [] if row is None else [rec(row, {})]
            return RecordStore.get_records(self, sorted(ids))
        out: dict[str, StoredRecord] = {}
        for chunk in _chunks(vals, _CHUNK_SQLITE):
            test = "= ?" if len(chunk) == 1 else f"IN ({','.join('?' * len(chunk))})"
            for row in db.query(f"SELECT {_JOINED_COLS} FROM blind_index b"
                                " JOIN records r ON r.record_id = b.record_id"
                                f" WHERE b.index_name = ? AND b.value {test}", (index_name, *chunk)):
                out.setdefault(row[0], rec(row, {}))
        return [out[k] for k in sorted(out)]

    def candidate_meta(self, index_name: str, values: Sequence[bytes]
                       ) -> dict[bytes, list[tuple[str, str | None, bool]]]:
        """``(record id, batch id, changed since insert)`` per blind-index value; no ciphertext.

        For the import's duplicate check: a record still as its own import
        batch inserted it needs no decryption when that batch knows every ID
        number it inserted. Only values with records appear; ids sorted.
        """
        vals = list(dict.fromkeys(bytes(v) for v in values))
        out: dict[bytes, list[tuple[str, str | None, bool]]] = {}
        db = self._db
        if self._pg:
            by_value = self.candidate_ids(index_name, vals)
            ids = sorted({rid for lst in by_value.values() for rid in lst})
            meta: dict[str, tuple[str | None, bool]] = {}
            for chunk in _chunks(ids, _CHUNK_PG):
                for rid, batch, created, updated in db.query(
                        "SELECT record_id, batch_id, created_at, updated_at FROM records"
                        " WHERE record_id = ANY(?::text[])", (_pg_text_array(chunk),)):
                    meta[rid] = (batch, created != updated)
            for v, rids in by_value.items():
                hits = [(rid, *meta[rid]) for rid in rids if rid in meta]
                if hits:
                    out[v] = hits
            return out
        for chunk in _chunks(vals, _CHUNK_SQLITE):
            for v, rid, batch, created, updated in db.query(
                    "SELECT b.value, b.record_id, r.batch_id, r.created_at, r.updated_at"
                    " FROM blind_index b JOIN records r ON r.record_id = b.record_id"
                    f" WHERE b.index_name = ? AND b.value IN ({','.join('?' * len(chunk))})",
                    (index_name, *chunk)):
                out.setdefault(bytes(v), []).append((rid, batch, created != updated))
        for found in out.values():
            found.sort()
        return out

    def foreign_candidates(self, index_name: str, values: Sequence[bytes], batch_id: str
                           ) -> dict[bytes, bool]:
        """Per blind-index value that has records: whether one of them is not ``batch_id``'s as inserted.

        :meth:`candidate_meta` boiled down to what the import's duplicate check
        asks. On PostgreSQL the test runs in the server, so a first load, whose
        candidates are all its own, gets back record ids only for the first step
        (the index lookup, by value) and nothing for the second (the records, by
        record id): the two steps keep each query on one kind of shard key, as
        Citus needs, and moving 4–8 candidates a row through Python cost the
        importing process a third of its time.
        """
        if not self._pg:
            return {v: any(b != batch_id or changed for _rid, b, changed in cands)
                    for v, cands in self.candidate_meta(index_name, values).items()}
        by_value = self.candidate_ids(index_name, values)
        ids = list({rid for lst in by_value.values() for rid in lst})
        foreign: set[str] = set()
        for chunk in _chunks(ids, _CHUNK_PG):
            foreign.update(rid for (rid,) in self._db.query(
                "SELECT record_id FROM records WHERE record_id = ANY(?::text[])"
                " AND (batch_id IS DISTINCT FROM ? OR created_at <> updated_at)",
                (_pg_text_array(chunk), batch_id)))
        return {v: any(rid in foreign for rid in rids) for v, rids in by_value.items()}

    def entry_tags(self, index_name: str, values: Sequence[bytes]) -> list[tuple[bytes, str, bytes | None]]:
        """``(value, record id, check tag)`` of every entry of ``values``: no ciphertext read.

        For the duplicate checks: with the check tags (``pivault.vault.checks``) the caller
        decrypts only the records whose tag fits the number it looks for.
        """
        vals = list(dict.fromkeys(bytes(v) for v in values))
        out: list[tuple[bytes, str, bytes | None]] = []
        db = self._db
        if self._pg:
            for chunk in _chunks(vals, _CHUNK_PG):
                rows = db.query("SELECT value, record_id, tag FROM blind_index"
                                " WHERE index_name = ? AND value = ANY(?::bytea[])",
                                (index_name, _pg_bytea_array(chunk)))
                out += [(bytes(v), rid, None if tag is None else bytes(tag)) for v, rid, tag in rows]
        else:
            for chunk in _chunks(vals, _CHUNK_SQLITE):
                out += [(bytes(v), rid, tag) for v, rid, tag in db.query(
                    "SELECT value, record_id, tag FROM blind_index WHERE index_name = ?"
                    f" AND value IN ({','.join('?' * len(chunk))})", (index_name, *chunk))]
        return out

    def candidate_ids(self, index_name: str, values: Sequence[bytes]) -> dict[bytes, list[str]]:
        """Record ids per blind-index value, for many values at once.

        Only values with at least one record appear in the result (use
        ``.get(value, [])``); ids are sorted.
        """
        out: dict[bytes, list[str]] = {}
        for v, rid, _tag in self.entry_tags(index_name, values):
            out.setdefault(v, []).append(rid)
        for lst in out.values():
            lst.sort()
        return out

    def count(self) -> int:
        row = self._db.query_one("SELECT COUNT(*) FROM records")
        return int(row[0]) if row else 0

    def iter_ids(self, batch_size: int = 10000) -> Iterator[str]:
        """Every record id in order, in bounded memory."""
        for row in self._db.stream("SELECT record_id FROM records ORDER BY record_id",
                                   size=batch_size):
            yield row[0]

    def iter_all(self, batch_size: int = 1000) -> Iterator[StoredRecord]:
        """Every record with its index entries, ordered by record id, in bounded memory.

        Two ordered streams (records, index entries) merged by record id. On
        PostgreSQL the streams read committed data on their own connections.
        """
        recs = self._db.stream(f"SELECT {_COLS} FROM records ORDER BY record_id", size=batch_size)
        idx = self._db.stream("SELECT record_id, index_name, value FROM blind_index"
                              " ORDER BY record_id", size=batch_size * 3)
        pending = next(idx, None)
        for row in recs:
            rid = row[0]
            index: dict[str, bytes] = {}
            # entries without a record (none are written, but be robust) sort before and are skipped
            while pending is not None and pending[0] < rid:
                pending = next(idx, None)
            while pending is not None and pending[0] == rid:
                index[pending[1]] = bytes(pending[2])
                pending = next(idx, None)
            yield self._record(row, index)

    def stats(self) -> dict[str, object]:
        """Sizes, never contents: rows, index entries per index name, bytes on disk."""
        db = self._db
        entries = {str(n): int(c) for n, c in db.query(
            "SELECT index_name, COUNT(*) FROM blind_index GROUP BY index_name ORDER BY index_name")}
        out: dict[str, object] = {"backend": db.dialect, "rows": self.count(),
                                  "index_entries": entries}
        if self._pg:
            rec_b, idx_b = db.query_one(
                "SELECT pg_total_relation_size('records'::regclass),"
                " pg_total_relation_size('blind_index'::regclass)") or (0, 0)
            out.update(bytes_records=int(rec_b), bytes_blind_index=int(idx_b),
                       bytes_on_disk=int(rec_b) + int(idx_b))
        else:
            pages = db.query_one("PRAGMA page_count")
            size = db.query_one("PRAGMA page_size")
            free = db.query_one("PRAGMA freelist_count")
            main = int(pages[0]) * int(size[0]) if pages and size else 0
            wal_path = db.url.target + "-wal"
            wal = os.path.getsize(wal_path) if os.path.exists(wal_path) else 0
            out.update(bytes_main=main, bytes_wal=wal, bytes_on_disk=main + wal,
                       free_pages=int(free[0]) if free else 0)
        return out
