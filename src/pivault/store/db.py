"""One thin connection layer over SQLite and PostgreSQL.

Every component that keeps state (records, tokens, audit, alerts, …) writes
its SQL once, with ``?`` placeholders, and runs it on either backend through a
:class:`Database`. Each component owns its tables through versioned
:class:`Migration` steps registered in :mod:`pivault.store.migrations`, so a
vault created by an older pivault is brought forward by ``pivault migrate``.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlparse

from pivault.errors import ConfigError, PivaultError

Dialect = Literal["sqlite", "postgresql"]
Params = Sequence[Any]


class StoreError(PivaultError):
    code = "store.error"


class _Cursor(Protocol):
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchmany(self, size: int = ...) -> list[Any]: ...
    @property
    def rowcount(self) -> int: ...


_QMARK = re.compile(r"\?")
#: SQLite page cache per connection, KiB (pages are only allocated as they are read)
SQLITE_CACHE_KIB = 32768


@dataclass(frozen=True)
class StoreURL:
    dialect: Dialect
    #: file path for SQLite, the libpq connection string for PostgreSQL
    target: str
    raw: str

    @property
    def redacted(self) -> str:
        """The URL with any password removed, for messages and logs."""
        p = urlparse(self.raw)
        if p.password:
            return self.raw.replace(":" + p.password + "@", ":***@")
        return self.raw


def parse_url(url: str) -> StoreURL:
    """``sqlite:///path/to/vault.db`` or ``postgresql://user@host:port/db``."""
    if url.startswith("sqlite:///"):
        # sqlite:////abs/path names /abs/path; sqlite:///rel/path names rel/path
        return StoreURL("sqlite", url[len("sqlite:///"):], url)
    if url.startswith(("postgresql://", "postgres://")):
        return StoreURL("postgresql", url, url)
    raise ConfigError(
        "unknown store URL scheme; use sqlite:///PATH or postgresql://USER@HOST:PORT/DB",
        code="store.url",
    )


class Database:
    """A connection to one backend, safe to share between threads (one lock).

    Write SQL with ``?`` placeholders; PostgreSQL gets ``%s``. Use
    :meth:`transaction` for anything that must be all-or-nothing.
    """

    def __init__(self, url: str | StoreURL) -> None:
        self.url = url if isinstance(url, StoreURL) else parse_url(url)
        self.dialect: Dialect = self.url.dialect
        self._lock = threading.RLock()
        self._depth = 0
        self._owner: int | None = None
        self._snapshot = False
        #: run once the outermost transaction has committed (see after_commit)
        self._after: list[Callable[[], None]] = []
        self._pid = os.getpid()
        self._conn: Any = self._connect()

    # -- connection -------------------------------------------------------
    def _connect(self) -> Any:
        if self.dialect == "sqlite":
            path = Path(self.url.target)
            if not path.parent.exists():
                raise ConfigError("the directory of the SQLite store does not exist",
                                  code="store.path")
            if path.is_dir():
                raise StoreError(f"the SQLite store {path} is a directory", code="store.open",
                                 hint="the store URL names a file: sqlite:///DIR/vault.db")
            _create_private(path)
            try:
                conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                       timeout=30.0)
                # a 32 MiB page cache (default 2 MB): at 10^6 rows and more, bulk inserts and
                # lookups touch random B-tree pages, and rereading them through the OS costs CPU
                for pragma in ("journal_mode=WAL", "secure_delete=ON", "foreign_keys=ON",
                               "synchronous=NORMAL", "temp_store=MEMORY", "busy_timeout=30000",
                               f"cache_size=-{SQLITE_CACHE_KIB}"):
                    conn.execute(f"PRAGMA {pragma}")
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"the SQLite store {path} cannot be opened: not a database file, or "
                                 f"a damaged one ({type(exc).__name__})", code="store.open",
                                 hint="check the store URL; restore a damaged store from a backup") from None
            return conn
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - dependency is mandatory
            raise ConfigError("psycopg is not installed", code="store.driver") from exc
        try:
            pg = psycopg.connect(self.url.target, autocommit=True)
        except psycopg.OperationalError as exc:
            raise StoreError(
                f"cannot connect to PostgreSQL at {self.url.redacted}: "
                f"{type(exc).__name__}", code="store.connect",
                hint="check that the server runs and the URL is right",
            ) from None
        row = pg.execute("SELECT current_schema()").fetchone()
        if row is None or row[0] is None:
            pg.close()
            raise StoreError(f"the search path of {self.url.redacted} names no schema that exists",
                             code="store.schema",
                             hint="create the schema first (CREATE SCHEMA …), or fix search_path in the URL")
        return pg

    def reopen_after_fork(self) -> None:
        """Give a forked worker process its own connection."""
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._conn = self._connect()

    @property
    def raw(self) -> Any:
        """The driver connection, for backend-specific fast paths (COPY, backup)."""
        return self._conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- SQL --------------------------------------------------------------
    def sql(self, text: str) -> str:
        return text if self.dialect == "sqlite" else _QMARK.sub("%s", text)

    def execute(self, sql: str, params: Params = ()) -> _Cursor:
        with self._lock:
            cur: _Cursor = self._conn.execute(self.sql(sql), params)
            return cur

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        if not rows:
            return
        with self._lock:
            if self.dialect == "sqlite":
                self._conn.executemany(sql, rows)
            else:
                with self._conn.cursor() as cur:
                    cur.executemany(self.sql(sql), rows)

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return [tuple(r) for r in self._conn.execute(self.sql(sql), params).fetchall()]

    def query_one(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        with self._lock:
            row = self._conn.execute(self.sql(sql), params).fetchone()
            return tuple(row) if row is not None else None

    def change_mark(self) -> tuple[int, int] | None:
        """A value that moves whenever anything is committed to this SQLite file; None on PostgreSQL.

        SQLite's ``data_version`` changes when another connection (any process)
        commits, and ``total_changes`` when this connection writes. A reader may
        keep what it read for as long as the mark stays the same. PostgreSQL has
        no such counter.
        """
        if self.dialect != "sqlite":
            return None
        with self._lock:
            row = self._conn.execute("PRAGMA main.data_version").fetchone()
            return (int(row[0]) if row else -1), int(self._conn.total_changes)

    def stream(self, sql: str, params: Params = (), *, size: int = 1000) -> Iterator[tuple[Any, ...]]:
        """Rows in bounded memory: a server-side cursor on PostgreSQL."""
        if self.dialect == "sqlite":
            cur = self._conn.execute(sql, params)
            while True:
                with self._lock:
                    rows = cur.fetchmany(size)
                if not rows:
                    return
                yield from (tuple(r) for r in rows)
        elif self._snapshot and self.in_transaction:
            # inside snapshot(): a cursor of the snapshot's own transaction, so it sees what it sees
            with self._lock, self._conn.cursor(name="pivault_snapshot_stream") as cur:
                cur.itersize = size
                cur.execute(self.sql(sql), params)
                for row in cur:
                    yield tuple(row)
        else:
            import psycopg

            # a separate connection so the named cursor's transaction is ours alone
            with psycopg.connect(self.url.target) as conn, conn.cursor(name="pivault_stream") as cur:
                cur.itersize = size
                cur.execute(self.sql(sql), params)
                for row in cur:
                    yield tuple(row)

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """All-or-nothing; nested calls join the outer transaction.

        SQLite takes the write lock at the start (``BEGIN IMMEDIATE``) so two
        writers queue rather than fail half-way.
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            self._owner = threading.get_ident()
            if self.dialect == "sqlite":
                self._conn.execute("BEGIN IMMEDIATE")
                self._depth = 1
                try:
                    yield self
                except BaseException:
                    self._depth = 0
                    self._after.clear()
                    self._conn.execute("ROLLBACK")
                    raise
                self._depth = 0
                try:
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._after.clear()
                    raise
            else:
                self._depth = 1
                try:
                    with self._conn.transaction():
                        yield self
                except BaseException:
                    self._after.clear()
                    raise
                finally:
                    self._depth = 0
            after, self._after = self._after, []
        for callback in after:
            callback()

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the calling thread's transaction has committed; never if it rolls back.

        For what must not be said before the store holds it: a mark kept
        outside the store (the audit anchor) naming a checkpoint whose
        transaction then rolled back would accuse a sound chain. A write
        nested in a caller's transaction commits only with that transaction,
        so the callback waits for the outermost one. Outside a transaction (or
        inside a read-only snapshot, which writes nothing) it runs at once.
        The callback runs after the connection's lock is released, and must
        not raise.
        """
        if self.in_transaction and not self._snapshot:
            self._after.append(callback)
        else:
            callback()

    @contextmanager
    def snapshot(self) -> Iterator[Database]:
        """Read-only: every query inside sees the database as it was at the first one.

        For readers that compare rows across tables (the audit verifier reads the
        chain head, then the entries): on a live vault, writers commit between two
        plain queries and the reader would see a state that never existed. Other
        threads wait on this connection until the snapshot ends.
        """
        with self._lock:
            if self._depth:
                raise StoreError("a snapshot cannot start inside a transaction",
                                 code="store.snapshot")
            self._owner = threading.get_ident()
            self._depth = 1
            self._snapshot = True
            try:
                if self.dialect == "sqlite":
                    self._conn.execute("BEGIN")  # deferred: a read snapshot, no write lock
                    try:
                        yield self
                    finally:
                        self._conn.execute("COMMIT")
                else:
                    with self._conn.transaction():
                        self._conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                        yield self
            finally:
                self._depth = 0
                self._snapshot = False

    @property
    def in_transaction(self) -> bool:
        """True when the calling thread is inside :meth:`transaction`."""
        return self._depth > 0 and self._owner == threading.get_ident()

    # -- helpers ------------------------------------------------------------
    def table_exists(self, name: str) -> bool:
        if self.dialect == "sqlite":
            return self.query_one(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)) is not None
        return self.query_one("SELECT to_regclass(?)", (name,)) not in (None, (None,))

    def tables(self) -> list[str]:
        """Names of the tables in the store (PostgreSQL: in the URL's schema), sorted."""
        if self.dialect == "sqlite":
            return [str(r[0]) for r in self.query("SELECT name FROM sqlite_master WHERE type = 'table'"
                                                  " AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        return [str(r[0]) for r in self.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
            " AND table_type = 'BASE TABLE' ORDER BY table_name")]

    def blob(self) -> str:
        """The column type for bytes."""
        return "BLOB" if self.dialect == "sqlite" else "BYTEA"

    def truncate_wal(self) -> bool:
        """SQLite: every page of the WAL into the main file, and the WAL cut to zero bytes.

        False if a reader of an older snapshot kept the checkpoint from finishing.
        """
        row = self.query_one("PRAGMA wal_checkpoint(TRUNCATE)")
        return row is not None and row[0] == 0

    def rewrite_sqlite(self) -> bool:
        """SQLite: rewrite the whole file (``VACUUM``), then cut the WAL; False if it could not finish.

        ``secure_delete`` zeroes a deleted cell and a freed page, but not the copies of cells
        that a B-tree page rebuild (rebalancing after inserts and deletes) leaves in the page's
        unallocated space: a record moved that way and erased later leaves its old copy behind.
        A rewrite writes every page afresh, so nothing outside a live cell survives in the file.
        Its temporary copy goes to a file (ciphertext only, deleted at the end), not to memory,
        whatever the store's size.
        """
        if self.dialect != "sqlite":
            raise StoreError("only an SQLite store is rewritten this way", code="store.dialect")
        if self.in_transaction:
            return False
        with self._lock:
            self._conn.execute("PRAGMA temp_store=FILE")
            try:
                self._conn.execute("VACUUM")
            finally:
                self._conn.execute("PRAGMA temp_store=MEMORY")
            return self.truncate_wal()


def _create_private(path: Path) -> None:
    """Create a new SQLite store file readable by its owner only; never open an existing one.

    Closing *any* descriptor of a file drops every POSIX lock the process
    holds on it, among them the SHARED lock that each open WAL-mode SQLite
    connection keeps on the database file. A process that had lost those
    locks looks gone to the others: the next process to close its last
    connection takes the EXCLUSIVE lock, checkpoints and deletes ``-wal`` and
    ``-shm``, and the processes still open go on committing to the unlinked
    files, unseen by everyone else (a token created by one process unknown to
    the server, a suspension or audit entries lost). A file created here with
    ``O_EXCL`` is new, so no connection of this process holds a lock on it.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def connect(url: str) -> Database:
    return Database(url)
