"""Budget counters in files of the node: shared by every worker process of one node.

Several ``pivault serve`` workers must count against the same budgets, or each
would allow the whole of every budget. Redis does that across nodes; on one
node, files beside the vault do it without a server to run, and without a
network round trip. The read budgets' windows and distinct-record sets, which
every read charges, are in a file that every worker maps
(:mod:`pivault.detect.budgetmap`); the rest (breaches, the detector's buckets
and state, alert claims), written a few times a second, in an SQLite file.
Both are written under one advisory lock. The semantics are those of
:class:`~pivault.detect.counters.MemoryCounters` (the same sliding windows of
:data:`~pivault.detect.counters.BUCKETS` buckets, the same distinct-record sets
per UTC day), so the three backends pass the same tests.

The counters survive a restart of the service (an attacker who got a worker
restarted would not get a fresh budget). Only opaque keys and record ids are
stored (in the budgets map only as digests), never PI. Any error of the
files (locked past the timeout, disk full, unreadable, a full table) raises
:class:`~pivault.detect.counters.DetectUnavailable`: the door refuses the
request, as it does when Redis is down.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pivault.detect.budgetmap import BudgetMap, BudgetMapFull
from pivault.detect.counters import DetectUnavailable, DistinctRule, Refusal, WindowRule

__all__ = ["FileCounters"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vals (key TEXT PRIMARY KEY, expires REAL NOT NULL, value INTEGER NOT NULL)
  WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, expires REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hashes (key TEXT PRIMARY KEY, expires REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fields (
  key TEXT NOT NULL, field TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (key, field)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (
  key TEXT NOT NULL, field TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (key, field)
) WITHOUT ROWID;
"""

_INCR = ("INSERT INTO vals (key, expires, value) VALUES (?1, ?2, 1) ON CONFLICT (key) DO UPDATE SET"
         " value = CASE WHEN vals.expires <= ?3 THEN 1 ELSE vals.value + 1 END,"
         " expires = CASE WHEN vals.expires <= ?3 THEN excluded.expires ELSE vals.expires END"
         " RETURNING value")

_CLAIM = ("INSERT INTO claims (key, expires) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET"
          " expires = excluded.expires WHERE claims.expires <= ?3 RETURNING 1")



class _Local(threading.local):
    conn: sqlite3.Connection | None = None
    lock_fd: int = -1
    pid: int = 0
    writes: int = 0


class FileCounters:
    """Counters in the files ``path`` (SQLite) and ``path.budgets`` (mapped), for this node.

    ``namespace`` (the vault id) keeps the counters of vaults that share a
    file apart. ``timeout`` bounds the wait for another process's charge;
    past it the charge fails closed. ``capacity`` sizes a new budgets map
    (``windows``, ``sets``, ``members``: see :class:`~pivault.detect.budgetmap.BudgetMap`).

    Each thread of each process has a lock descriptor and an SQLite
    connection of its own (one made before a fork is never used after it);
    the budgets map is one per process. Every write takes an advisory lock on
    ``PATH.lock`` (``flock``) first: SQLite's own wait for a busy file sleeps
    a millisecond and more at a time, which at thousands of charges a second
    would land in every request's tail; a lock held for microseconds is better
    waited for by trying again sooner. A process that dies holding it
    releases it.
    """

    def __init__(self, path: str | os.PathLike[str], *, namespace: str = "default", clock: Any = time.time,
                 timeout: float = 2.0, capacity: Mapping[str, int] | None = None) -> None:
        self.path = Path(path).expanduser().absolute()
        #: several vaults may share one file: every key carries the vault's namespace
        self._ns = namespace + ":"
        self._clock = clock
        self._timeout = timeout
        self._capacity = dict(capacity or {})
        self._local = _Local()
        self._made = False
        self._map: BudgetMap | None = None
        self._map_pid = 0
        self._map_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FileCounters({str(self.path)!r})"

    @property
    def budgets_path(self) -> Path:
        """The mapped file of the read budgets' windows and distinct-record sets."""
        return self.path.with_name(self.path.name + ".budgets")

    # -- files ---------------------------------------------------------------------------
    def _fail(self, exc: BaseException) -> DetectUnavailable:
        if isinstance(exc, BudgetMapFull):
            return DetectUnavailable(
                f"{exc}; requests are refused until there is room",
                hint=f"stop the service, move {self.budgets_path.name} aside and give the counters "
                     "URL larger sizes (sqlite:///PATH?members=N&windows=N&sets=N, powers of two)")
        return DetectUnavailable(
            f"the budget counters file cannot be used ({type(exc).__name__}); requests are refused "
            "until it can", hint="check the counters file, its directory and its disk")

    def _lock_fd(self) -> int:
        """This thread's descriptor of ``PATH.lock`` (made with the directory if need be)."""
        local = self._local
        if local.lock_fd >= 0 and local.pid == os.getpid():
            return local.lock_fd
        parent = self.path.parent
        if not parent.exists():
            parent.mkdir(mode=0o700, parents=True)
        # private from the first byte: budgets name principals and count their reads
        local.lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        local.pid, local.conn, local.writes = os.getpid(), None, 0
        return local.lock_fd

    def _conn(self) -> sqlite3.Connection:
        local = self._local
        conn = local.conn
        if conn is not None and local.pid == os.getpid():
            return conn
        try:
            self._lock_fd()  # makes the directory (0700) if need be
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            # set up under the file's lock: workers (or threads) starting together would
            # otherwise switch a new file to WAL at once, and one of them be refused
            with self._held():
                conn = sqlite3.connect(self.path, isolation_level=None, timeout=self._timeout,
                                       check_same_thread=False)
                # WAL: readers never wait; NORMAL: a commit is not synced, a crash of the
                # machine may forget the last moments' counts but never corrupts the file
                for pragma in ("journal_mode=WAL", "synchronous=NORMAL",
                               f"busy_timeout={int(self._timeout * 1000)}"):
                    conn.execute(f"PRAGMA {pragma}")
                if not self._made:
                    conn.executescript(_SCHEMA)
                    self._made = True
        except (OSError, sqlite3.Error) as exc:
            raise self._fail(exc) from None
        local.conn = conn
        return conn

    def _budget_map(self) -> BudgetMap:
        """This process's mapping of the budgets file; made (under the lock) if it is new."""
        bm = self._map
        if bm is not None and self._map_pid == os.getpid():
            return bm
        with self._map_lock:
            if self._map is not None and self._map_pid == os.getpid():
                return self._map
            with self._held():
                bm = BudgetMap(self.budgets_path, **self._capacity)
            self._map, self._map_pid = bm, os.getpid()
            return bm

    @contextlib.contextmanager
    def _held(self) -> Iterator[None]:
        """This node's lock on the counters, held for the body."""
        fd = self._lock_fd()
        self._lock(fd)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """The lock, then a write transaction of the SQLite file: committed if the body returns.

        Every 1,024th of a thread's transactions is followed by a sweep of what has expired
        there: the writes that fill the file pay for emptying it, not the reads' charges.
        """
        conn = self._conn()
        try:
            with self._held():
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        except (OSError, sqlite3.Error) as exc:
            raise self._fail(exc) from None
        local = self._local
        local.writes += 1
        if not local.writes & 1023:
            self._sweep(self.now())

    def _lock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        deadline = time.monotonic() + self._timeout
        pause = 20e-6
        while True:
            time.sleep(pause)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError("the counters file stayed locked") from None
                pause = min(pause * 2, 1e-3)

    def close(self) -> None:
        local = self._local
        if local.pid == os.getpid():
            if local.conn is not None:
                local.conn.close()
            if local.lock_fd >= 0:
                os.close(local.lock_fd)
        local.conn, local.lock_fd = None, -1
        if self._map is not None and self._map_pid == os.getpid():
            self._map.close()
        self._map = None

    def now(self) -> float:
        return float(self._clock())

    # -- budgets -------------------------------------------------------------------------
    def charge(self, windows: Sequence[WindowRule], distinct: Sequence[DistinctRule]) -> Refusal | None:
        now = self.now()
        try:
            bm = self._budget_map()
            fd = self._lock_fd()
            self._lock(fd)  # as _held(), without a generator on every read's path
            try:
                return bm.charge(now, self._ns, windows, distinct)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except (OSError, ValueError) as exc:
            raise self._fail(exc) from None

    def distinct_count(self, key: str, day: int) -> int:
        """Records counted under the distinct-records rule ``key`` on UTC ``day`` (today or yesterday)."""
        try:
            return self._budget_map().set_size(self._ns, key, day)
        except (OSError, ValueError) as exc:
            raise self._fail(exc) from None

    def _sweep(self, now: float) -> None:
        """Drop what has expired, in its own transaction."""
        with self._writing() as conn:
            conn.execute("DELETE FROM fields WHERE key IN (SELECT key FROM hashes WHERE expires <= ?)",
                         (now,))
            for table in ("vals", "claims", "hashes"):
                conn.execute(f"DELETE FROM {table} WHERE expires <= ?", (now,))

    # -- breaches, detector buckets, alert claims, detector state ------------------------------
    def incr(self, key: str, ttl: float) -> int:
        now = self.now()
        with self._writing() as conn:
            row = conn.execute(_INCR, (self._ns + key, now + ttl, now)).fetchone()
        return int(row[0])

    def add_fields(self, key: str, fields: Mapping[str, int], ttl: float) -> None:
        if not fields:
            return
        now = self.now()
        key = self._ns + key
        with self._writing() as conn:
            row = conn.execute("SELECT expires FROM hashes WHERE key = ?", (key,)).fetchone()
            if row is not None and row[0] <= now:
                conn.execute("DELETE FROM fields WHERE key = ?", (key,))
            conn.execute("INSERT INTO hashes (key, expires) VALUES (?, ?) ON CONFLICT (key) DO UPDATE"
                         " SET expires = excluded.expires", (key, now + ttl))
            conn.executemany("INSERT INTO fields (key, field, n) VALUES (?, ?, ?)"
                             " ON CONFLICT (key, field) DO UPDATE SET n = fields.n + excluded.n",
                             [(key, f, int(n)) for f, n in fields.items()])

    def read_fields(self, keys: Sequence[str]) -> list[dict[str, int]]:
        now = self.now()
        conn = self._conn()
        out: list[dict[str, int]] = []
        try:
            for key in keys:
                rows = conn.execute("SELECT f.field, f.n FROM hashes h JOIN fields f ON f.key = h.key"
                                    " WHERE h.key = ? AND h.expires > ?", (self._ns + key, now)).fetchall()
                out.append({str(f): int(n) for f, n in rows})
        except sqlite3.Error as exc:
            raise self._fail(exc) from None
        return out

    def claim(self, key: str, ttl: float) -> bool:
        now = self.now()
        with self._writing() as conn:
            return conn.execute(_CLAIM, (self._ns + key, now + ttl, now)).fetchone() is not None

    def get_state(self, key: str) -> dict[str, str]:
        try:
            rows = self._conn().execute("SELECT field, value FROM state WHERE key = ?",
                                        (self._ns + key,)).fetchall()
        except sqlite3.Error as exc:
            raise self._fail(exc) from None
        return {str(f): str(v) for f, v in rows}

    def set_state(self, key: str, values: Mapping[str, str]) -> None:
        if not values:
            return
        with self._writing() as conn:
            conn.executemany("INSERT INTO state (key, field, value) VALUES (?, ?, ?)"
                             " ON CONFLICT (key, field) DO UPDATE SET value = excluded.value",
                             [(self._ns + key, str(f), str(v)) for f, v in values.items()])
