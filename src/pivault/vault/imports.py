"""Bulk import: files in, encrypted records and reject records out.

How it stays correct at population scale:

* **Streams.** Rows are read, validated, encrypted and committed a chunk at a
  time; memory does not grow with the file.
* **Nothing vanishes.** A row that fails validation, that is structurally
  broken, or (with ``on_duplicate="reject"``) that repeats an ID number goes
  to ``import_rejects`` with its line number and error code. The row itself
  is kept there only as ciphertext (field ``raw_row``, bound to the reject
  id), so the reject table is as safe at rest as the records.
  ``read = imported + rejected + duplicates``, always.
* **Crash-safe and resumable.** A batch is named by the file's content hash
  and the import options. Each chunk's records, rejects and the batch's
  progress (rows consumed) commit in one transaction, so after ``kill -9``
  the same command resumes after the last committed chunk: every row ends up
  imported exactly once. A finished batch run again does nothing.
* **Both cores.** Validation and encryption run in forked worker processes
  that inherit the open keyring (it is never pickled or written anywhere);
  the parent reads, checks duplicates and commits in source order.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import multiprocessing
import os
import pickle
import re
import secrets
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pivault.crypto import IntegrityError, Keyring
from pivault.errors import NotFoundError, PivaultError, ValidationError
from pivault.model import PI_FIELDS, Resident
from pivault.policy.context import AccessContext
from pivault.store.db import SQLITE_CACHE_KIB, Database
from pivault.store.migrations import Migration, register
from pivault.store.records import NewRecords, RecordStore, StoredRecord
from pivault.vault import mapping as _mapping
from pivault.vault import meta as _meta  # noqa: F401 - registers the vault_meta step
from pivault.vault.checks import CheckTags
from pivault.vault.facade import open_record, seal, seal_columns, shredded
from pivault.vault.readers import RawRow, Source, check_columns, open_source, stamp

if TYPE_CHECKING:
    from pivault.vault.facade import Vault

__all__ = [
    "DEFAULT_CHUNK",
    "WORKERS_LIMIT",
    "FileSummary",
    "ImportChanged",
    "ImportConflict",
    "ImportProgress",
    "ImportSummary",
    "counts",
    "import_files",
    "list_batches",
    "show_rejects",
]

_SQLITE_V1 = """
CREATE TABLE import_batches (
    batch_id TEXT NOT NULL PRIMARY KEY,
    source_name TEXT NOT NULL,
    content_sha256 TEXT NOT NULL,
    format TEXT NOT NULL,
    options TEXT NOT NULL,
    status TEXT NOT NULL,
    rows_consumed INTEGER NOT NULL,
    imported INTEGER NOT NULL,
    rejected INTEGER NOT NULL,
    duplicates INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION);
CREATE TABLE import_rejects (
    reject_id TEXT NOT NULL PRIMARY KEY,
    batch_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    code TEXT NOT NULL,
    field TEXT,
    raw_row BLOB NOT NULL,
    created_at DOUBLE PRECISION NOT NULL);
CREATE INDEX import_rejects_batch ON import_rejects (batch_id, line)
"""

_PG_V1 = (_SQLITE_V1.replace("INTEGER", "BIGINT").replace("BLOB", "BYTEA")
          .replace("TEXT NOT NULL PRIMARY KEY", 'TEXT COLLATE "C" NOT NULL PRIMARY KEY'))

register(Migration("imports", 1, "import batches and rejected rows", _SQLITE_V1, _PG_V1))

# the ID numbers each rejected row holds, as short keyed tags, so that erasing a resident finds
# and erases the rejected rows that hold their number (:func:`erase_rejects`)
_SQLITE_V2 = """
CREATE TABLE import_reject_numbers (
    tag BLOB NOT NULL,
    reject_id TEXT NOT NULL,
    PRIMARY KEY (tag, reject_id)) WITHOUT ROWID
"""
_PG_V2 = """
CREATE TABLE import_reject_numbers (
    tag BYTEA NOT NULL,
    reject_id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (tag, reject_id))
"""
register(Migration("imports", 2, "the ID numbers of rejected rows, as tags, for erasure",
                   _SQLITE_V2, _PG_V2))

#: bytes of a rejected row's number tag. Short on purpose, as a blind index is truncated: a tag
#: does not single out a number (two numbers share a tag once in 65,536, so a vault of many
#: rejects has many numbers under each); the erasure decrypts the few rejects under its tag
#: and keeps only those that hold the number
REJECT_TAG_BYTES = 2
#: the check-tag key's domain for these tags (that key is never rotated, so a tag made before a
#: key rotation still finds its reject)
_REJECT_TAG_INDEX = "reject.id_number"
#: an ID number's shape in a rejected row: 17 digits and a check character, not inside a longer run
_ID_SHAPE = re.compile(r"(?<![0-9])[0-9]{17}[0-9Xx](?![0-9Xx])")
#: what may split a number written by hand ("4201 1119 8609 0239 58")
_ID_SEPARATORS = re.compile(r"[\s\-]+")

#: rows per chunk: one transaction, one unit of work for a worker. Each commit
#: writes every B-tree page the chunk touched; at 10^5 rows and more nearly
#: every chunk touches every index leaf, so fewer, larger commits write far
#: less (measured on SQLite at 10^5: 2,000 -> 10,000 rows cut the parent's CPU
#: per row by 38% and wall time by 3x)
DEFAULT_CHUNK = 10_000
#: SQLite page cache of the importing connection while it imports, KiB (the store's
#: connections keep 32 MiB). An import inserts at random places in B-trees that outgrow any
#: cache; at 10^6 residents 128 MiB cut the importing process's CPU a row by 22 % (120 -> 94
#: us) for 104 MiB more at its peak (269 -> 373 MiB), still under the 512 MiB the import
#: is held to. The cache is fixed in size, so the peak does not grow with the vault.
IMPORT_CACHE_KIB = 131_072
#: below this many bytes (text) or rows (Parquet) one process is as fast: forking
#: the workers costs tens of milliseconds, a small file takes well under a second
PARALLEL_MIN_BYTES = 1 << 20
PARALLEL_MIN_ROWS = 5_000
#: the parent commits every chunk; past this many workers it is the bottleneck
#: (it spends ~40% of a row's CPU time: reading, duplicate checks, inserts)
MAX_WORKERS = 4
#: the most worker processes a caller may ask for (as ``serve --workers``): each is a
#: forked process, and a typo must not fork a thousand
WORKERS_LIMIT = 64
_DUPLICATE_POLICIES = ("skip", "update", "reject")
#: the most text a chunk holds (characters): ~10^4 rows of a resident file are ~2·10^6
CHUNK_CHARS = 16 << 20


class ImportConflict(PivaultError):
    """Another process is importing the same batch."""

    code = "import.conflict"


class ImportChanged(PivaultError):
    """The file was written or replaced while it was being imported.

    A batch is named by the content hashed when it began and resumed by a
    row count: a chunk read from other content must not be committed under
    it, or the rows it stands for would be skipped when the file is
    imported again.
    """

    code = "import.changed"


@dataclass(frozen=True, slots=True)
class ImportProgress:
    """Passed to the progress callback after every committed chunk."""

    file: str
    done: int
    total: int
    unit: str  # "bytes" or "rows"
    read: int
    imported: int
    rejected: int
    duplicates: int


@dataclass
class FileSummary:
    """What became of one file's rows. ``read = imported + rejected + duplicates``."""

    file: str
    batch_id: str
    status: str  # "imported", "resumed", "already_imported"
    format: str
    encoding: str | None
    read: int = 0
    imported: int = 0
    rejected: int = 0
    #: rows whose ID number was already in the vault or earlier in the file
    #: (skipped, or used to update the existing record: see ``updated``)
    duplicates: int = 0
    updated: int = 0
    #: rows a previous, interrupted run had already committed
    resumed_from: int = 0
    reject_codes: dict[str, int] = field(default_factory=dict)
    ignored_columns: list[str] = field(default_factory=list)
    workers: int = 0
    seconds: float = 0.0

    @property
    def reconciles(self) -> bool:
        return self.read == self.imported + self.rejected + self.duplicates

    @property
    def rows_per_second(self) -> float:
        """Rows this run read, per second; 0 for a file already imported (this run read none)."""
        if self.status == "already_imported":
            return 0.0
        done = self.read - self.resumed_from
        return done / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ImportSummary:
    files: list[FileSummary]
    seconds: float = 0.0

    def _sum(self, name: str) -> int:
        """The total over the command's batches, each counted once.

        A file given twice, or a copy of one, is the same batch (the same content and options):
        every entry of it holds the batch's counts, so adding each would count its rows again.
        """
        batches = {f.batch_id: f for f in reversed(self.files)}
        return sum(int(getattr(f, name)) for f in batches.values())

    @property
    def read(self) -> int:
        return self._sum("read")

    @property
    def imported(self) -> int:
        return self._sum("imported")

    @property
    def rejected(self) -> int:
        return self._sum("rejected")

    @property
    def duplicates(self) -> int:
        return self._sum("duplicates")

    @property
    def updated(self) -> int:
        return self._sum("updated")

    @property
    def reconciles(self) -> bool:
        return all(f.reconciles for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "read": self.read, "imported": self.imported, "rejected": self.rejected,
            "duplicates": self.duplicates, "updated": self.updated,
            "reconciles": self.reconciles, "seconds": round(self.seconds, 3),
            "files": [{**asdict(f), "seconds": round(f.seconds, 3),
                       "rows_per_second": round(f.rows_per_second, 1), "reconciles": f.reconciles}
                      for f in self.files],
        }


# -- preparing rows (runs in worker processes) ------------------------------------

#: a rejected row: (line, code, field | None, reject id, encrypted raw row, tags of its ID numbers)
Rejected = tuple[int, str, str | None, str, bytes, list[bytes]]


@dataclass(slots=True)
class Prepared:
    """A chunk validated and encrypted, as a worker hands it to the committing process.

    The good rows column by column (``new``; ``lines[k]`` and ``id_numbers[k]``
    belong to ``new.record_ids[k]``), the bad ones as reject tuples: flat lists
    pickle in a fraction of the time of an object a row (docs/import.md).
    """

    lines: list[int]
    id_numbers: list[str]
    new: NewRecords
    rejects: list[Rejected]
    #: the generation of the keyring it was sealed with (at least): a chunk sealed before a key
    #: change the store has seen is sealed again before it commits (pivault.keys.seen)
    keyring_generation: int = 0


#: (line, cells, error, text): a RawRow as it travels to a worker
RowTuple = tuple[int, list[str | None], str | None, str | None]

#: the keyring a forked worker inherited from its parent (never pickled)
_WORKER_KEYRING: Keyring | None = None
#: and the vault's check tags (their key read before the fork)
_WORKER_CHECKS: CheckTags | None = None


def new_reject_id() -> str:
    return "x_" + secrets.token_hex(13)


def raw_payload(row: RowTuple, labels: Sequence[str]) -> bytes:
    """The row as read, for the encrypted ``raw_row``: cells keyed by field or column."""
    line, cells, _error, text = row
    if text is not None:
        obj: dict[str, Any] = {"line": line, "text": text}
    else:
        out: dict[str, str] = {}
        for i, v in enumerate(cells):
            if v is None:
                continue
            label = labels[i] if i < len(labels) else f"#{i + 1}"
            if label in out:
                label = f"{label}#{i + 1}"
            out[label] = v
        obj = {"line": line, "cells": out}
    # ASCII JSON: lone surrogates from undecodable bytes survive the round trip
    return json.dumps(obj, ensure_ascii=True).encode("ascii")


def id_numbers_in(payload: bytes) -> set[str]:
    """Every ID-number-shaped string of a rejected row's payload, as the vault normalises one.

    A rejected row is whatever the file held, so no column is trusted: every cell (or the
    whole text of a row that did not split) is searched, as written and with spaces and
    hyphens taken out.
    """
    obj = json.loads(payload)
    texts = [obj["text"]] if "text" in obj else list(obj["cells"].values())
    out: set[str] = set()
    for text in texts:
        if not isinstance(text, str):
            continue
        for s in (text, _ID_SEPARATORS.sub("", text)):
            out.update(m.group(0).upper() for m in _ID_SHAPE.finditer(s))
    return out


def reject_tag(checks: CheckTags, id_number: str) -> bytes:
    """The tag under which a rejected row holding ``id_number`` is found (:func:`erase_rejects`)."""
    return checks.tag(_REJECT_TAG_INDEX, "", id_number)[:REJECT_TAG_BYTES]


def reject_tags(checks: CheckTags | None, payload: bytes) -> list[bytes]:
    if checks is None:
        return []
    return sorted({reject_tag(checks, n) for n in id_numbers_in(payload)})


def _reject(keyring: Keyring, row: RowTuple, code: str, field_name: str | None,
            labels: Sequence[str], checks: CheckTags | None) -> Rejected:
    rid = new_reject_id()
    payload = raw_payload(row, labels)
    return (row[0], code, field_name, rid, keyring.encrypt(rid, "raw_row", payload),
            reject_tags(checks, payload))


def prepare(keyring: Keyring, rows: Sequence[RowTuple], positions: Mapping[int, str],
            labels: Sequence[str], checks: CheckTags | None = None) -> Prepared:
    """Validate and encrypt a chunk; a bad row becomes an encrypted reject."""
    generation = keyring.write_generation()
    rejects: list[Rejected] = []
    good: list[Resident] = []
    lines: list[int] = []
    items = tuple(positions.items())
    # one date for the chunk (a second's work): "born in the future" is judged against it
    today = _dt.date.today()
    parse = Resident.parse
    for row in rows:
        line, cells, error, _text = row
        if error is not None:
            rejects.append(_reject(keyring, row, error, None, labels, checks))
            continue
        n = len(cells)
        raw = {f: (cells[i] if i < n else None) for i, f in items}
        try:
            r = parse(raw, today=today)
        except ValidationError as exc:
            rejects.append(_reject(keyring, row, exc.code, exc.field, labels, checks))
            continue
        good.append(r)
        lines.append(line)
    return Prepared(lines, [r.id_number for r in good], seal_columns(keyring, good, checks=checks),
                    rejects, generation)


def _worker_start() -> None:
    """In a new worker: count only its own encryptions, and report them to the parent.

    The fork copied the parent's counts not yet reported (the parent reports
    them itself) and its report sink; the worker's counts go back with each
    chunk instead (:func:`_work`), which a pool's workers, terminated at the
    end, would otherwise lose.
    """
    keyring = _WORKER_KEYRING
    if keyring is not None:
        keyring.set_usage_sink(None)
        keyring.take_usage()


def _work(task: tuple[list[RowTuple], dict[int, str], list[str]]) -> bytes:
    """Prepare one chunk in a worker; with it, the encryptions it made per field key (:func:`_loads`).

    Pickled here without the pickler's memo, which would otherwise record each
    of the chunk's ~10^5 ciphertexts, values and ids in case it recurs; none
    does (each is a new object), so the pool then sends a single bytes object.
    """
    keyring = _WORKER_KEYRING
    if keyring is None:  # pragma: no cover - only if started without fork
        raise RuntimeError("import worker has no keyring (workers must be forked)")
    prepared = prepare(keyring, *task, _WORKER_CHECKS)
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.fast = True  # no memo: nothing in a chunk refers to itself
    pickler.dump((prepared, keyring.take_usage()))
    return out.getvalue()


def _loads(data: bytes) -> tuple[Prepared, dict[int, int]]:
    """What :func:`_work` pickled."""
    prepared, used = pickle.loads(data)  # from our own forked worker, over its pipe
    return prepared, used


# -- batches -------------------------------------------------------------------------

@dataclass
class _Batch:
    batch_id: str
    status: str
    read: int
    imported: int
    rejected: int
    duplicates: int
    updated: int


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _canonical(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _begin(db: Database, batch_id: str, name: str, digest: str, fmt: str,
           options: dict[str, Any], run: _Run | None = None) -> _Batch:
    sel = ("SELECT batch_id, status, rows_consumed, imported, rejected, duplicates, updated"
           " FROM import_batches WHERE batch_id = ?")
    with db.transaction():
        alone = run.alone_at_start() if run is not None else False
        row = db.query_one(sel, (batch_id,))
        if row is None:
            now = time.time()
            db.execute(
                "INSERT INTO import_batches (batch_id, source_name, content_sha256, format, options,"
                " status, rows_consumed, imported, rejected, duplicates, updated, started_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, 'running', 0, 0, 0, 0, 0, ?, ?)"
                # another process starting the same batch at this moment made the row first: both
                # go on, and the chunks' compare-and-set lets one of them import
                " ON CONFLICT (batch_id) DO NOTHING",
                (batch_id, name, digest, fmt, _canonical(options), now, now))
            row = db.query_one(sel, (batch_id,))
        if run is not None:
            run.alone_at_end(alone)
    assert row is not None
    return _Batch(str(row[0]), str(row[1]), *(int(v) for v in row[2:7]))


def _finish(db: Database, batch_id: str, run: _Run | None = None) -> None:
    now = time.time()
    with db.transaction():
        alone = run.alone_at_start() if run is not None else False
        db.execute("UPDATE import_batches SET status = 'done', finished_at = ?, updated_at = ?"
                   " WHERE batch_id = ? AND status <> 'done'", (now, now, batch_id))
        if run is not None:
            run.alone_at_end(alone)


def _reject_codes(db: Database, batch_id: str) -> dict[str, int]:
    return {str(c): int(n) for c, n in db.query(
        "SELECT code, COUNT(*) FROM import_rejects WHERE batch_id = ? GROUP BY code ORDER BY code",
        (batch_id,))}


# -- the import ------------------------------------------------------------------------

def _auto_workers(source: Source) -> int:
    cpus = os.cpu_count() or 1
    if cpus < 2:
        return 0
    small = (source.size < PARALLEL_MIN_ROWS if source.format == "parquet"
             else source.size < PARALLEL_MIN_BYTES)
    return 0 if small else min(cpus, MAX_WORKERS)


def _expected_rows(source: Source) -> int:
    """A generous guess of a file's rows (the Bloom filter grows if it is short)."""
    if source.format == "parquet":
        return source.size
    return min(source.size // 64, 1 << 24)


def _chunks(rows: Iterator[RawRow], size: int, max_chars: int = CHUNK_CHARS) -> Iterator[list[RowTuple]]:
    """Chunks of ``size`` rows, or fewer when their text passes ``max_chars``.

    A row may be up to 4 MiB (``readers.ROW_LIMIT``): counted in rows alone,
    a chunk of such rows would hold gigabytes, once per worker.
    """
    chunk: list[RowTuple] = []
    chars = 0
    for r in rows:
        chunk.append((r.line, r.cells, r.error, r.text))
        chars += len(r.text) if r.text is not None else sum(map(len, filter(None, r.cells)))
        if len(chunk) >= size or chars >= max_chars:
            yield chunk
            chunk = []
            chars = 0
    if chunk:
        yield chunk


class _SeenIds:
    """The ID numbers one run of a batch inserted, as a Bloom filter kept in memory only.

    "Not seen" is exact; "seen" is wrong for about 1% of the numbers never
    added (10 bits and 7 keyed hashes per number). Grows by adding filters of
    twice the capacity, so memory stays near 1.25 bytes per number (12.5 MB
    for 10^7) whatever the estimate was.
    """

    _K = 7
    _BITS_PER_ITEM = 10
    #: the filters' memory at most (~5·10^7 numbers): past it the run stops using them
    #: (:attr:`overflowed`), so that memory stays bounded for a file of any size
    MAX_BYTES = 64 << 20

    def __init__(self, capacity: int) -> None:
        self._key = secrets.token_bytes(32)
        self._filters: list[tuple[bytearray, int]] = []
        self._bytes = 0
        #: set once a number could not be added: "not seen" is no longer exact, and the
        #: filter must not be asked again (the committer then drops it)
        self.overflowed = False
        #: hashes of the numbers tested since :meth:`forget`: a chunk tests each number, then
        #: adds the new ones (one hash a number instead of two)
        self._tested: dict[str, tuple[int, ...]] = {}
        self._room = 0
        self._capacity = 0
        self._grow(min(max(1 << 14, capacity), self.MAX_BYTES * 8 // self._BITS_PER_ITEM))

    def _grow(self, capacity: int) -> bool:
        m = capacity * self._BITS_PER_ITEM
        size = (m + 7) // 8
        if self._filters and self._bytes + size > self.MAX_BYTES:
            return False
        self._filters.append((bytearray(size), m))
        self._bytes += size
        self._capacity, self._room = capacity, capacity
        return True

    def _hashes(self, id_number: str) -> tuple[int, ...]:
        digest = hashlib.blake2b(id_number.encode("utf-8"), key=self._key, digest_size=4 * self._K).digest()
        return struct.unpack("<7I", digest)

    def add(self, id_number: str) -> None:
        if self.overflowed:
            return
        if self._room == 0 and not self._grow(2 * self._capacity):
            self.overflowed = True
            self._filters.clear()  # never asked again: give the memory back
            return
        self._room -= 1
        bits, m = self._filters[-1]
        hs = self._tested.pop(id_number, None)
        for h in hs if hs is not None else self._hashes(id_number):
            p = h % m
            bits[p >> 3] |= 1 << (p & 7)

    def forget(self) -> None:
        """Drop the hashes kept from membership tests (end of a chunk)."""
        self._tested.clear()

    def __contains__(self, id_number: str) -> bool:
        hs = self._tested[id_number] = self._hashes(id_number)
        for bits, m in self._filters:
            for h in hs:
                p = h % m
                if not bits[p >> 3] & (1 << (p & 7)):
                    break
            else:
                return True
        return False


class _SoleWriter:
    """Whether this run is still the only writer of a store that was empty when it began.

    A first load of a population into a new vault is the import that must be
    fast, and the one where the duplicate check has least to do: every record
    there is one this run inserted, so an ID number the run has not seen
    (exact, from :class:`_SeenIds`) has no record, and the check need not
    read the blind index at all (about a third of the importing process's
    work at 10^5-10^6 rows; on PostgreSQL also half the server's). Counters
    tell that nobody else wrote, read inside each chunk's write transaction:

    * SQLite: ``data_version`` changes when another connection commits to
      the file, and the connection's ``total_changes`` moves when another
      thread writes through this one between two chunks. The transaction
      holds the file's write lock and the connection's, so nothing can be
      written between the check and the chunk's own insert.
    * PostgreSQL: every writer of an ID number, this run included, counts
      itself once it holds the ID-number lock (``RecordStore.lock_id_numbers``);
      each chunk's transaction holds it exclusively, so when the count it gets
      follows the one of the chunk before, nobody else wrote a number between.

    Once another writer has been seen the run uses the general check for good.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.version = -1
        self.changes = -1

    @classmethod
    def start(cls, db: Database, store: RecordStore) -> _SoleWriter | None:
        sole = cls(db)
        with db.transaction():
            writes = store.lock_id_numbers(None)  # PostgreSQL: nobody writes a number meanwhile
            if db.query_one("SELECT 1 FROM records LIMIT 1") is not None:
                return None
            sole.mark(writes)
        return sole

    def mark(self, writes: int | None) -> None:
        """Take this run's own writes as seen; call last inside each chunk's transaction.

        ``writes``: on PostgreSQL, the count this transaction's ID-number lock returned.
        """
        mark = self.db.change_mark()
        if mark is None:
            mark = (-1 if writes is None else writes, 0)
        self.version, self.changes = mark

    def still(self, rows_changed: int, writes: int | None) -> bool:
        """Nobody else has written since :meth:`mark`; call inside the chunk's transaction.

        ``rows_changed``: the rows this transaction has changed so far (SQLite); ``writes``:
        the count this transaction's ID-number lock returned (PostgreSQL).
        """
        if not self.db.in_transaction:
            return False
        mark = self.db.change_mark()
        if mark is None:
            return writes is not None and writes == self.version + 1
        version, changes = mark
        return version == self.version and changes == self.changes + rows_changed


class _Run:
    """What one import of several files carries from file to file: the first load's fast check.

    A population often comes as many files (one per region, per month of
    registrations). While the run stays the store's only writer, every record
    is one of its own, whichever file it came from: the numbers it inserted
    (:class:`_SeenIds`) go on from file to file, and so does the fast check.
    Each of the run's own transactions between two files (one file's end, the
    next one's start) checks that nobody else wrote since the run's last one,
    then marks its own writes; the first that finds another writer's, or a file
    that resumes a batch another run began, ends the fast check for the rest of
    the run.
    """

    def __init__(self, store: RecordStore) -> None:
        self.store = store
        self.seen: _SeenIds | None = None
        self.sole: _SoleWriter | None = None
        self._writes: int | None = None

    def alone_at_start(self) -> bool:
        """First in a transaction of the run's own between files: nobody else wrote since the last."""
        if self.sole is None:
            return False
        self._writes = self.store.lock_id_numbers(None)
        if self.sole.still(rows_changed=0, writes=self._writes):
            return True
        self.end()
        return False

    def alone_at_end(self, alone: bool) -> None:
        """Last in that transaction: its own writes are the run's."""
        if alone and self.sole is not None:
            self.sole.mark(self._writes)

    def take(self, committer: _Committer) -> None:
        """A file's import ended: what its committer still knows goes on to the next file."""
        self.seen, self.sole = committer.seen, committer.sole
        if self.sole is None:
            self.seen = None

    def end(self) -> None:
        self.seen = self.sole = None


class _Committer:
    """Applies prepared chunks in source order: duplicates, then one transaction each."""

    def __init__(self, vault: Vault, batch: _Batch, ctx: AccessContext, on_duplicate: str,
                 mapped: set[str], labels: list[str], seen: _SeenIds | None,
                 reseal: Callable[[list[RowTuple]], Prepared]) -> None:
        self.vault = vault
        #: prepares a chunk again in this process, for one sealed before a key change (see commit)
        self.reseal = reseal
        self.batch = batch
        self.ctx = ctx
        self.on_duplicate = on_duplicate
        self.mapped = mapped
        self.labels = labels
        #: ID numbers this run inserted; only when the run started the batch (no resume)
        self.seen = seen
        #: set while every record in the store is one this run inserted: see :class:`_SoleWriter`
        self.sole: _SoleWriter | None = None
        #: set once a chunk corrected a record (``--on-duplicate update``): its freed bytes to purge
        self.corrected = False

    def _existing(self, id_numbers: list[str], new: NewRecords) -> dict[str, str]:
        """Existing record id per ID number of the chunk's good rows.

        A candidate (a record sharing the row's blind index value) that this
        run inserted and nobody changed since cannot hold the row's ID number
        when the run never inserted that number: only the other candidates are
        read and decrypted. In a first load that is almost none of them.
        """
        vault = self.vault
        positions, values, _tags = new.index.get("id_number", ([], [], []))
        if len(positions) == len(id_numbers):  # every number has its entry: pair them in C
            wanted: dict[str, bytes] = dict(zip(id_numbers, values, strict=True))
        else:
            wanted = {id_numbers[k]: v for k, v in zip(positions, values, strict=True)}
        seen = self.seen
        if seen is None or not wanted or vault.keyring.index_versions("id_number") > 1:
            return vault.ids_by_id_number(wanted)
        if self.sole is not None:
            # every record in the store is one of this run's, each holding an ID number
            # in `seen`: a number never seen has no record, without reading the index
            maybe = {idn: value for idn, value in wanted.items() if idn in seen}
            return vault.ids_by_id_number(maybe) if maybe else {}
        foreign = vault.store.foreign_candidates("id_number", list(wanted.values()), self.batch.batch_id)
        unsure: dict[str, bytes] = {}
        for idn, value in wanted.items():
            has_foreign = foreign.get(value)
            if has_foreign is None:
                continue  # no record holds this value
            if has_foreign or idn in seen:
                unsure[idn] = value
        return vault.ids_by_id_number(unsure) if unsure else {}

    def _lock_holders(self, existing: dict[str, str]) -> tuple[dict[str, str], dict[str, StoredRecord]]:
        """The holders that the chunk's rows update, each row locked until the chunk commits.

        The chunk's ID-number lock does not keep an erasure out (it adds no number): one that
        commits after the holders were found would leave the update a record that is gone,
        and the row would be lost though counted. Locked (in record-id order, as an erasure
        waits for the chunk and the chunk for an erasure under way) and read again, a holder
        erased meanwhile is not there, or is there without its key, and its number is free:
        the row becomes a new record.
        """
        store = self.vault.store
        bases: dict[str, StoredRecord] = {}
        for rid in sorted(set(existing.values())):
            base = store.get(rid, for_update=True)
            if base is not None and not shredded(base):
                bases[rid] = base
        if len(bases) < len(set(existing.values())):
            existing = {idn: rid for idn, rid in existing.items() if rid in bases}
        return existing, bases

    def _merge(self, base: StoredRecord | None, target_id: str, new: Resident) -> StoredRecord:
        """The record ``target_id`` after an update from ``new``: mapped fields replace."""
        kr = self.vault.keyring
        values = {f: getattr(new, f) for f in PI_FIELDS if f in self.mapped}
        if base is not None and not set(PI_FIELDS) <= self.mapped:
            old = open_record(kr, base)
            for f in PI_FIELDS:
                if f not in self.mapped:
                    values[f] = getattr(old, f)
        merged = Resident(record_id=target_id, name=values["name"], id_number=values["id_number"],
                          mobile=values.get("mobile"), address=values.get("address"),
                          notes=values.get("notes"))
        return seal(kr, merged, base.batch_id if base is not None else self.batch.batch_id,
                    self.vault.checks)

    def commit(self, rows: list[RowTuple], prepared: Prepared) -> None:
        vault, batch, kr = self.vault, self.batch, self.vault.keyring
        db = vault.db
        now = time.time()
        bid = batch.batch_id
        reject_rows: list[tuple[Any, ...]] = []
        reject_tags_rows: list[tuple[bytes, str]] = []
        updates: dict[str, StoredRecord] = {}   # existing record id -> new version
        had: dict[str, frozenset[str]] = {}     # existing record id -> its index names before
        owner: dict[str, str] = {}              # ID number -> record id, within this chunk
        duplicates = updated = 0
        skipped: list[str] = []                 # record ids that already held a row's ID number
        by_line: dict[int, RowTuple] | None = None
        with db.transaction():
            # every ID number, for the chunk's check and writes: see RecordStore.lock_id_numbers
            writes = vault.store.lock_id_numbers(None)
            if prepared.keyring_generation < vault._keyring_mark():
                # sealed before a key change the store has seen (a retirement may have taken its
                # census since): sealed again here, with the keyring brought up to the change
                prepared = self.reseal(rows)
            cur = db.execute(
                "UPDATE import_batches SET rows_consumed = rows_consumed + ?, updated_at = ?"
                " WHERE batch_id = ? AND rows_consumed = ? AND status = 'running'",
                (len(rows), now, bid, batch.read))
            if cur.rowcount != 1:
                raise ImportConflict(
                    "another process is importing the same file with the same options",
                    hint="wait for it to finish; then run the command again to check")
            if self.sole is not None and not self.sole.still(rows_changed=cur.rowcount, writes=writes):
                self.sole = None  # someone else wrote: the general duplicate check from now on
            cols = prepared.new
            cols.batch_id = bid
            ids, lines = cols.record_ids, prepared.lines
            for line, code, fld, reject_id, raw_ct, tags in prepared.rejects:
                reject_rows.append((reject_id, bid, line, code, fld, raw_ct, now))
                reject_tags_rows.extend((tag, reject_id) for tag in tags)
            existing = self._existing(prepared.id_numbers, cols)
            held = set(existing.values())  # checked for canaries once the chunk has committed
            bases: dict[str, StoredRecord] = {}
            if self.on_duplicate == "update" and existing:
                existing, bases = self._lock_holders(existing)
            keep: list[int] = []                    # the rows that make new records, in order
            new_at: dict[str, int] = {}             # their record ids -> their rows
            merged: dict[str, StoredRecord] = {}    # new records that a later row updated
            for k, idn in enumerate(prepared.id_numbers):
                target = owner.get(idn) or existing.get(idn)
                if target is None:
                    rid = ids[k]
                    keep.append(k)
                    new_at[rid] = k
                    owner[idn] = rid
                    continue
                duplicates += 1
                if self.on_duplicate == "skip":
                    skipped.append(target)
                    continue
                if self.on_duplicate == "reject":
                    duplicates -= 1
                    if by_line is None:
                        by_line = {r[0]: r for r in rows}
                    reject_id = new_reject_id()
                    payload = raw_payload(by_line[lines[k]], self.labels)
                    raw_ct = kr.encrypt(reject_id, "raw_row", payload)
                    reject_rows.append((reject_id, bid, lines[k], "duplicate", "id_number", raw_ct, now))
                    reject_tags_rows.extend((tag, reject_id) for tag in reject_tags(vault.checks, payload))
                    continue
                # update: the existing record takes this row's values
                incoming = open_record(kr, cols.record(k))
                if target in new_at:
                    made = merged.get(target) or cols.record(new_at[target])
                    merged[target] = self._merge(made, target, incoming)
                else:
                    base = updates.get(target)
                    if base is None:
                        base = bases[target]
                        had[target] = frozenset(base.index)
                    updates[target] = self._merge(base, target, incoming)
                updated += 1
            new = [ids[k] for k in keep]
            # the chunk's transaction is undone whole on any failure: no savepoint of its own
            if merged:
                vault.store.insert_new(cols.take([k for k in keep if ids[k] not in merged]),
                                       undo_alone=False)
                vault.store.insert(list(merged.values()), undo_alone=False)
            elif keep:
                vault.store.insert_new(cols.take(keep), undo_alone=False)
            for rec in updates.values():
                vault.store.replace(rec)
            # in this transaction: a canary whose mobile the update added or cleared moves its count
            vault.changed(self.ctx, [(rid, had[rid], frozenset(rec.index)) for rid, rec in updates.items()])
            if reject_rows:
                db.executemany(
                    "INSERT INTO import_rejects (reject_id, batch_id, line, code, field, raw_row,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)", reject_rows)
            if reject_tags_rows:
                db.executemany("INSERT INTO import_reject_numbers (tag, reject_id) VALUES (?, ?)",
                               reject_tags_rows)
            db.execute(
                "UPDATE import_batches SET imported = imported + ?, rejected = rejected + ?,"
                " duplicates = duplicates + ?, updated = updated + ? WHERE batch_id = ?",
                (len(new), len(reject_rows), duplicates, updated, bid))
            # every chunk that stored or found anything is in the trail, in its own transaction:
            # records written, rejected rows kept (by reject id), records that held a number
            touched = [*new, *updates]
            if touched:
                vault.guard.audit(self.ctx, "import", touched, "ok")
            if reject_rows:
                vault.guard.audit(self.ctx, "import", [r[0] for r in reject_rows], "invalid")
            if skipped:
                vault.guard.audit(self.ctx, "import", list(dict.fromkeys(skipped)), "duplicate")
            if self.sole is not None:
                self.sole.mark(writes)
        if updates:
            # the corrected records' old keys, now that no committed row names them, as `update`
            # drops them: kept, they would open the versions before the correction in every
            # older data backup. The freed bytes are purged once the file is done
            drop = getattr(vault.store, "drop_superseded", None)
            if drop is not None:
                drop()
            self.corrected = True
        if held:
            # a row holding a canary's ID number came from a copy of the vault: the guard raises
            # the alarm (after the commit, so the chunk's own work stands either way)
            tripwire = getattr(vault.guard, "held_numbers", None)
            if tripwire is not None:
                tripwire(self.ctx, "import", sorted(held))
        if self.seen is not None:
            for idn in owner:
                self.seen.add(idn)
            self.seen.forget()
            if self.seen.overflowed:
                # a file of more numbers than the filter holds: the general check from here on
                self.seen = self.sole = None
        batch.read += len(rows)
        batch.imported += len(new)
        batch.rejected += len(reject_rows)
        batch.duplicates += duplicates
        batch.updated += updated


def _labels(header: Sequence[str], positions: Mapping[int, str]) -> list[str]:
    return [positions.get(i, h or f"#{i + 1}") for i, h in enumerate(header)]


def import_files(
    vault: Vault, paths: Sequence[Path], *, ctx: AccessContext,
    mapping: Mapping[str, str] | None = None, ignore: Sequence[str] = (),
    encoding: str | None = None, on_duplicate: str = "skip", workers: int | None = None,
    progress: Callable[[ImportProgress], None] | None = None, chunk_size: int | None = None,
) -> ImportSummary:
    """Import each file as its own batch; see the module documentation."""
    if on_duplicate not in _DUPLICATE_POLICIES:
        raise ValidationError("import.on_duplicate",
                              "on_duplicate is one of " + ", ".join(_DUPLICATE_POLICIES))
    if workers is not None and not 0 <= workers <= WORKERS_LIMIT:
        raise ValidationError("import.workers", f"--workers is between 0 and {WORKERS_LIMIT} "
                              "(0 = one process)")
    vault._authorise(ctx, "import", PI_FIELDS)
    started = time.monotonic()
    # every header is checked before any row of any file is imported
    plans = []
    for path in paths:
        source = open_source(path, encoding=encoding)
        cmap = _mapping.resolve(source.header, mapping, ignore)
        check_columns(source, cmap.positions)
        plans.append((path, source, cmap))
    run = _Run(vault.store)
    files = [
        _import_file(vault, path, source, cmap, ctx=ctx, on_duplicate=on_duplicate,
                     workers=workers, progress=progress, chunk_size=chunk_size or DEFAULT_CHUNK, run=run)
        for path, source, cmap in plans
    ]
    return ImportSummary(files, time.monotonic() - started)


def _import_file(
    vault: Vault, path: Path, source: Source, cmap: _mapping.ColumnMap, *, ctx: AccessContext,
    on_duplicate: str, workers: int | None, progress: Callable[[ImportProgress], None] | None,
    chunk_size: int, run: _Run,
) -> FileSummary:
    t0 = time.monotonic()
    db = vault.db
    digest = _sha256(path)
    options = {"format": source.format, "encoding": source.encoding, "columns": cmap.to_json(),
               "on_duplicate": on_duplicate}
    batch_id = "b_" + hashlib.sha256(f"{digest}\n{_canonical(options)}".encode()).hexdigest()[:32]
    batch = _begin(db, batch_id, path.name, digest, source.format, options, run)
    summary = FileSummary(file=path.name, batch_id=batch_id, status="imported", format=source.format,
                          encoding=source.encoding, ignored_columns=list(cmap.ignored))

    def fill() -> FileSummary:
        summary.read, summary.imported, summary.rejected = batch.read, batch.imported, batch.rejected
        summary.duplicates, summary.updated = batch.duplicates, batch.updated
        summary.reject_codes = _reject_codes(db, batch_id)
        summary.seconds = time.monotonic() - t0
        return summary

    if batch.status == "done":
        summary.status = "already_imported"
        return fill()
    skip = batch.read
    if skip:
        summary.status = "resumed"
        summary.resumed_from = skip
        run.end()  # the batch holds records of another run: their numbers are not in `seen`
    positions = dict(cmap.positions)
    labels = _labels(cmap.header, positions)
    # a run that starts the batch knows every record the batch has: see _Committer._existing
    seen = None if skip else run.seen if run.sole is not None else _SeenIds(_expected_rows(source))
    # the vault's first index entry makes the check tags' key (a write): before the sole-writer
    # counters start, or that write would end the first load's fast duplicate check at once
    checks = vault.checks

    def reseal(rows: list[RowTuple]) -> Prepared:
        return prepare(vault.keyring, rows, positions, labels, checks)

    committer = _Committer(vault, batch, ctx, on_duplicate, set(positions.values()), labels, seen,
                           reseal)
    if run.sole is not None and seen is not None:
        committer.sole = run.sole  # every record in the store is still one of this run's files'
    elif seen is not None:
        committer.sole = _SoleWriter.start(db, vault.store)
    n_workers = _auto_workers(source) if workers is None else int(workers)
    summary.workers = n_workers
    unit = "rows" if source.format == "parquet" else "bytes"
    chunks = _chunks(source.rows(skip=skip, columns=sorted(positions)), chunk_size)

    def unchanged() -> None:
        # after the chunk was read, before it is committed: a chunk read after a change fails here
        if stamp(path) != source.stamp:
            raise ImportChanged(
                f"{path.name} changed while it was being imported; the rows read before the "
                "change are kept", hint="import it again once nothing writes to it: the same "
                "content resumes where this run stopped, other content is a new batch")

    def step(rows: list[RowTuple], prepared: Prepared) -> None:
        unchanged()
        committer.commit(rows, prepared)
        if progress is not None:
            progress(ImportProgress(path.name, source.position(), source.size, unit, batch.read,
                                    batch.imported, batch.rejected, batch.duplicates))

    with _import_cache(db):
        _run_chunks(vault, checks, chunks, positions, labels, n_workers, step)
    unchanged()
    if seen is not None:
        run.take(committer)
    _finish(db, batch_id, run)
    if committer.corrected:
        vault.store.purge_freed()  # the corrections' old ciphertext and keys out of the files
    return fill()


@contextlib.contextmanager
def _import_cache(db: Database) -> Iterator[None]:
    """The larger page cache (:data:`IMPORT_CACHE_KIB`) for the import, the usual one after it."""
    if db.dialect != "sqlite":
        yield
        return
    db.execute(f"PRAGMA cache_size=-{IMPORT_CACHE_KIB}")
    try:
        yield
    finally:
        db.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")


def _run_chunks(vault: Vault, checks: CheckTags, chunks: Iterator[list[RowTuple]],
                positions: dict[int, str],
                labels: list[str], n_workers: int,
                step: Callable[[list[RowTuple], Prepared], None]) -> None:
    """Prepare each chunk (in worker processes when ``n_workers``) and commit them in file order."""
    global _WORKER_KEYRING, _WORKER_CHECKS
    if n_workers == 0:
        for rows in chunks:
            step(rows, prepare(vault.keyring, rows, positions, labels, checks))
    else:
        _WORKER_KEYRING, _WORKER_CHECKS = vault.keyring, checks
        try:
            mp = multiprocessing.get_context("fork")
            with mp.Pool(n_workers, initializer=_worker_start) as pool:
                pending: deque[tuple[list[RowTuple], Any]] = deque()
                depth = n_workers + 1  # every worker busy, one chunk ready to commit

                def commit_next() -> None:
                    done_rows, res = pending.popleft()
                    prepared, used = _loads(res.get())
                    vault.keyring.add_usage(used)  # the worker's encryptions, counted here
                    step(done_rows, prepared)

                for rows in chunks:
                    pending.append((rows, pool.apply_async(_work, ((rows, positions, labels),))))
                    while len(pending) > depth:
                        commit_next()
                while pending:
                    commit_next()
        finally:
            _WORKER_KEYRING, _WORKER_CHECKS = None, None


# -- reading back --------------------------------------------------------------------------

def show_rejects(vault: Vault, *, ctx: AccessContext, batch_id: str | None = None,
                 limit: int | None = 1000) -> list[dict[str, Any]]:
    """Rejected rows, decrypted in the Vault and masked by its guard."""
    vault._authorise(ctx, "rejects.show", ("raw_row",))
    sql = "SELECT reject_id, batch_id, line, code, field, raw_row FROM import_rejects"
    params: list[Any] = []
    if batch_id is not None:
        if vault.db.query_one("SELECT 1 FROM import_batches WHERE batch_id = ?", (batch_id,)) is None:
            vault.guard.audit(ctx, "rejects.show", [], "not_found")
            raise NotFoundError("no import batch with this id (give the whole id, b_ and 32 characters)",
                                code="import.batch_unknown",
                                hint="`pivault import` prints each file's batch id; `pivault rejects show` "
                                     "without --batch lists every batch's rejects")
        sql += " WHERE batch_id = ?"
        params.append(batch_id)
    sql += " ORDER BY batch_id, line, reject_id"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(int(limit))
    rows = vault.db.query(sql, params)
    ids = [str(r[0]) for r in rows]
    vault._budget(ctx, "rejects.show", len(ids), ids)
    vault.guard.audit(ctx, "rejects.show", ids, "ok")
    out: list[dict[str, Any]] = []
    mask = vault.guard.mask
    for reject_id, bid, line, code, fld, raw_ct in rows:
        try:
            obj = json.loads(vault.keyring.decrypt(reject_id, "raw_row", bytes(raw_ct)))
        except IntegrityError as exc:
            raise IntegrityError(
                f"reject {reject_id}: the stored row failed authentication (altered or moved)",
                field="raw_row", code=exc.code) from None
        if "text" in obj:
            cells = {"text": mask(ctx, "text", obj["text"])}
        else:
            cells = {k: mask(ctx, _mask_as(k, v), v) for k, v in obj["cells"].items()}
        out.append({"reject_id": reject_id, "batch_id": bid, "line": int(line), "code": code,
                    "field": fld, "cells": cells})
    return out


def erase_rejects(vault: Vault, stored: StoredRecord) -> list[str]:
    """Delete the rejected rows that hold the ID number of ``stored``, a record being erased.

    A rejected row is kept whole (encrypted under the keyring, not under a record key), and
    ``rejects show --reveal`` would give an erased resident's name, number and address back
    for as long as the vault lives, from a stolen disk with the passphrase too. So an erasure
    takes every rejected row that holds the resident's ID number with it: a row of theirs
    rejected for a bad mobile and imported again once mended, a duplicate row kept by
    ``--on-duplicate reject``. Called inside the erasure's transaction, before the record's key
    is destroyed (the number is read with it); returns the reject ids deleted, for the trail.
    The batch's counts stay as they were: they count rows read, not rows kept.
    """
    if shredded(stored) or "id_number" not in stored.fields:
        return []
    from pivault.vault.facade import decrypt_fields

    number = decrypt_fields(vault.keyring, stored, ("id_number",)).get("id_number")
    if not number:
        return []
    checks = vault.checks
    db = vault.db
    rows = db.query("SELECT r.reject_id, r.raw_row FROM import_reject_numbers n"
                    " JOIN import_rejects r ON r.reject_id = n.reject_id WHERE n.tag = ?",
                    (reject_tag(checks, number),))
    gone: list[str] = []
    for reject_id, raw_ct in rows:
        try:
            numbers = id_numbers_in(vault.keyring.decrypt(reject_id, "raw_row", bytes(raw_ct)))
        except IntegrityError:
            continue  # altered or moved: not provably this resident's, and `rejects show` says so
        if number not in numbers:
            continue  # another number under the same short tag
        db.executemany("DELETE FROM import_reject_numbers WHERE tag = ? AND reject_id = ?",
                       [(reject_tag(checks, n), reject_id) for n in sorted(numbers)])
        db.execute("DELETE FROM import_rejects WHERE reject_id = ?", (reject_id,))
        gone.append(str(reject_id))
    return gone


#: what a rejected cell must look like to be masked as its field: the masks of numbers keep their
#: first and last characters, made for digits; in a cell where a lost delimiter ran a name on after
#: the number ("…0021张三"), the last characters are the name
_SHAPES = {"id_number": re.compile(r"\s*[0-9Xx]+\s*"), "mobile": re.compile(r"[0-9+\-\s]+")}


def _mask_as(label: str, value: str) -> str:
    """The field whose mask a rejected row's cell gets; ``text`` (hidden whole) unless it is one.

    A cell is masked as a field only under a field's name: the other labels are the file's
    headers ("gender", "region_code", which a shifted row fills with a mobile number), and what
    is under them is hidden whole unless revealed. So is a cell under a number's name that is
    not a number (see :data:`_SHAPES`): the row was rejected, and its cells may be anything.
    """
    f = label.split("#", 1)[0]
    if f not in PI_FIELDS:
        return "text"
    shape = _SHAPES.get(f)
    return f if shape is None or shape.fullmatch(value) else "text"


def list_batches(db: Database) -> list[dict[str, Any]]:
    cols = ("batch_id", "source_name", "format", "status", "rows_consumed", "imported", "rejected",
            "duplicates", "updated", "started_at", "finished_at")
    rows = db.query(f"SELECT {', '.join(cols)} FROM import_batches ORDER BY started_at, batch_id")
    out = []
    for r in rows:
        d = dict(zip(cols, r, strict=True))
        d["read"] = d.pop("rows_consumed")
        out.append(d)
    return out


def counts(db: Database) -> dict[str, int]:
    b = db.query_one("SELECT COUNT(*), SUM(CASE WHEN status = 'done' THEN 1 ELSE 0 END)"
                     " FROM import_batches")
    r = db.query_one("SELECT COUNT(*) FROM import_rejects")
    return {"batches": int(b[0]) if b else 0, "batches_done": int(b[1] or 0) if b else 0,
            "rejects": int(r[0]) if r else 0}

