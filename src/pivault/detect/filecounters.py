"""Budget counters in an SQLite file: shared by every worker process of one node.

Several ``pivault serve`` workers must count against the same budgets, or each
would allow the whole of every budget. Redis does that across nodes; on one
node, a file beside the vault does it without a server to run, and without a
network round trip: one short write transaction per charge, which SQLite
serialises across processes. The semantics are those of
:class:`~pivault.detect.counters.MemoryCounters` (the same sliding windows of
:data:`~pivault.detect.counters.BUCKETS` buckets, the same distinct-record sets
per UTC day), so the three backends pass the same tests.

The counters survive a restart of the service (an attacker who got a worker
restarted would not get a fresh budget). Only opaque keys and record ids are
stored, never PI. Any error of the file (locked past the timeout, disk full,
unreadable) raises :class:`~pivault.detect.counters.DetectUnavailable`: the
door refuses the request, as it does when Redis is down.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import sqlite3
import threading
import time
from array import array
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pivault.detect.counters import (
    BUCKETS,
    DAY,
    DetectUnavailable,
    DistinctRule,
    Refusal,
    WindowRule,
    window_refusal,
)

__all__ = ["FileCounters"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS windows (
  key TEXT PRIMARY KEY, expires REAL NOT NULL, used INTEGER NOT NULL, newest INTEGER NOT NULL,
  counts BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sets (key TEXT PRIMARY KEY, expires REAL NOT NULL, n INTEGER NOT NULL)
  WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (key TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (key, id))
  WITHOUT ROWID;
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

_UPSERT_WINDOW = ("INSERT INTO windows (key, expires, used, newest, counts) VALUES (?, ?, ?, ?, ?)"
                  " ON CONFLICT (key) DO UPDATE SET expires = excluded.expires, used = excluded.used,"
                  " newest = excluded.newest, counts = excluded.counts")

_UPSERT_SET = ("INSERT INTO sets (key, expires, n) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET"
               " n = excluded.n, expires = excluded.expires")

_INCR = ("INSERT INTO vals (key, expires, value) VALUES (?1, ?2, 1) ON CONFLICT (key) DO UPDATE SET"
         " value = CASE WHEN vals.expires <= ?3 THEN 1 ELSE vals.value + 1 END,"
         " expires = CASE WHEN vals.expires <= ?3 THEN excluded.expires ELSE vals.expires END"
         " RETURNING value")

_CLAIM = ("INSERT INTO claims (key, expires) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET"
          " expires = excluded.expires WHERE claims.expires <= ?3 RETURNING 1")

#: ids per membership test in the charge's one query; a read of more ids tests the rest apart
_CHUNK = 500


class _Local(threading.local):
    conn: sqlite3.Connection | None = None
    lock_fd: int = -1
    pid: int = 0
    charges: int = 0


class FileCounters:
    """Counters in the SQLite file ``path``, for every process of this node that opens it.

    Each thread of each process has a connection of its own (one made before
    a fork is never used after it). ``namespace`` (the vault id) keeps the
    counters of vaults that share a file apart. ``timeout`` bounds the wait
    for another process's charge; past it the charge fails closed.

    Writers take an advisory lock on ``PATH.lock`` (``flock``) before their
    transaction: SQLite's own wait for a busy file sleeps a millisecond and
    more at a time, which at thousands of charges a second would land in
    every request's tail; a lock held for tens of microseconds is better
    waited for by trying again sooner. A process that dies holding it
    releases it.
    """

    def __init__(self, path: str | os.PathLike[str], *, namespace: str = "default", clock: Any = time.time,
                 timeout: float = 2.0) -> None:
        self.path = Path(path).expanduser().absolute()
        #: several vaults may share one file: every key carries the vault's namespace
        self._ns = namespace + ":"
        self._clock = clock
        self._timeout = timeout
        self._local = _Local()
        self._made = False
        #: the charge's query per shape (windows, sets, ids tested)
        self._sql: dict[tuple[int, int, int], str] = {}

    def __repr__(self) -> str:
        return f"FileCounters({str(self.path)!r})"

    # -- connections ---------------------------------------------------------------------
    def _fail(self, exc: BaseException) -> DetectUnavailable:
        return DetectUnavailable(
            f"the budget counters file cannot be used ({type(exc).__name__}); requests are refused "
            "until it can", hint="check the counters file, its directory and its disk")

    def _conn(self) -> sqlite3.Connection:
        local = self._local
        conn = local.conn
        if conn is not None and local.pid == os.getpid():
            return conn
        try:
            parent = self.path.parent
            if not parent.exists():
                parent.mkdir(mode=0o700, parents=True)
            # private from the first byte: budgets name principals and count their reads
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                # set up under the file's lock: workers (or threads) starting together would
                # otherwise switch a new file to WAL at once, and one of them be refused
                self._lock(fd)
                try:
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
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            except BaseException:
                os.close(fd)
                raise
        except (OSError, sqlite3.Error) as exc:
            raise self._fail(exc) from None
        local.conn, local.lock_fd, local.pid, local.charges = conn, fd, os.getpid(), 0
        return conn

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """The file's lock, then a write transaction: committed if the body returns."""
        conn = self._conn()
        fd = self._local.lock_fd
        try:
            self._lock(fd)
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except (OSError, sqlite3.Error) as exc:
            raise self._fail(exc) from None

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
        if local.conn is not None and local.pid == os.getpid():
            local.conn.close()
            os.close(local.lock_fd)
        local.conn, local.lock_fd = None, -1

    def now(self) -> float:
        return float(self._clock())

    # -- budgets -------------------------------------------------------------------------
    def charge(self, windows: Sequence[WindowRule], distinct: Sequence[DistinctRule]) -> Refusal | None:
        now = self.now()
        with self._writing() as conn:
            refusal = self._charge(conn, now, windows, distinct)
        local = self._local
        local.charges += 1
        if not local.charges & 1023:
            self._sweep(now)
        return refusal

    def _query(self, nw: int, nd: int, nids: int) -> str:
        sql = self._sql.get((nw, nd, nids))
        if sql is None:
            def marks(n: int) -> str:
                return ",".join("?" * n)

            parts = []
            if nw:
                parts.append("SELECT 0, key, expires, used, newest, counts FROM windows"
                             f" WHERE key IN ({marks(nw)})")
            if nd:
                parts.append(f"SELECT 1, key, expires, n, 0, NULL FROM sets WHERE key IN ({marks(nd)})")
            if nids:
                parts.append("SELECT 2, key, 0, 0, 0, id FROM members"
                             f" WHERE key = ? AND id IN ({marks(nids)})")
            sql = " UNION ALL ".join(parts)
            if len(self._sql) < 256:
                self._sql[(nw, nd, nids)] = sql
        return sql

    def _charge(self, conn: sqlite3.Connection, now: float, windows: Sequence[WindowRule],
                distinct: Sequence[DistinctRule]) -> Refusal | None:
        """Check every rule against the file, then move every counter: one read, two writes."""
        floor = math.floor
        ns = self._ns
        day = floor(now / DAY)
        wkeys = list(dict.fromkeys(ns + w.key for w in windows))
        dkeys = [f"{ns}{d.key}:{day}" for d in distinct]
        # one query reads every window, every set's size and, for one set, which ids it has
        tested: tuple[str, ...] = ()
        if len(distinct) == 1 and len(distinct[0].ids) <= _CHUNK:
            tested = tuple(dict.fromkeys(distinct[0].ids))
        params: list[Any] = [*wkeys, *dkeys]
        if tested:
            params += [dkeys[0], *tested]
        #: per window: [used, newest bucket, counts by bucket % BUCKETS]
        states: dict[str, list[Any]] = {}
        sizes: dict[str, int] = {}
        present: set[str] = set()
        sql = self._query(len(wkeys), len(dkeys), len(tested))
        if sql:
            for kind, key, expires, used, newest, extra in conn.execute(sql, params):
                if kind == 0:
                    if expires > now:
                        states[key] = [int(used), int(newest), array("q", extra)]
                elif kind == 1:
                    if expires > now:
                        sizes[key] = int(used)
                else:
                    present.add(extra)
        writes: list[tuple[str, float, int, int, bytes]] = []
        for rule in windows:
            g = rule.window / BUCKETS
            b = floor(now / g)
            key = ns + rule.key
            st = states.get(key)
            if st is None:
                st = states[key] = [0, b, array("q", bytes(8 * BUCKETS))]
            used, newest, counts = st
            if b > newest:
                # the buckets after the newest up to this one take the slots of buckets that left
                if b - newest >= BUCKETS:
                    counts = st[2] = array("q", bytes(8 * BUCKETS))
                    used = 0
                else:
                    for k in range(newest + 1, b + 1):
                        slot = k % BUCKETS
                        used -= counts[slot]
                        counts[slot] = 0
                st[0], st[1] = used, b
            amount = rule.amount
            if amount <= 0:
                continue
            if used + amount > rule.limit:
                # the live buckets, oldest first: the slots of buckets b - BUCKETS + 1 .. b
                live = ((k, counts[k % BUCKETS]) for k in range(b - BUCKETS + 1, b + 1))
                return window_refusal(live, used, rule, now, g)
            counts[b % BUCKETS] += amount
            st[0] = used + amount
            # a clock that stepped back charges its own, still live, bucket; the newest stays
            newest = st[1]
            writes.append((key, (newest + BUCKETS + 1) * g, st[0], newest, counts.tobytes()))
        new_members: list[tuple[str, str]] = []
        set_writes: list[tuple[str, float, int]] = []
        for d, key in zip(distinct, dkeys, strict=True):
            n = sizes.get(key, 0)
            ids = tested or tuple(dict.fromkeys(d.ids))  # deduplicated once
            if not tested:  # several sets, or a read of many ids: each tested apart
                present = set()
                for i in range(0, len(ids), _CHUNK) if n else ():
                    part = ids[i:i + _CHUNK]
                    present.update(r[0] for r in conn.execute(
                        f"SELECT id FROM members WHERE key = ? AND id IN ({','.join('?' * len(part))})",
                        (key, *part)))
            new = [i for i in ids if i not in present]
            if new and n + len(new) > d.limit:
                return Refusal(d.name, (day + 1) * DAY - now, n, d.limit)
            if new:
                new_members += [(key, i) for i in new]
                set_writes.append((key, (day + 1) * DAY, n + len(new)))
        # every rule passed: now move the counters
        if writes:
            conn.executemany(_UPSERT_WINDOW, writes)
        if new_members:
            conn.executemany("INSERT OR IGNORE INTO members (key, id) VALUES (?, ?)", new_members)
            conn.executemany(_UPSERT_SET, set_writes)
        return None

    def _sweep(self, now: float) -> None:
        """Drop what has expired (every 1,024 charges of a connection), in its own transaction."""
        with self._writing() as conn:
            for child, parent in (("members", "sets"), ("fields", "hashes")):
                conn.execute(f"DELETE FROM {child} WHERE key IN"
                             f" (SELECT key FROM {parent} WHERE expires <= ?)", (now,))
            for table in ("windows", "sets", "vals", "claims", "hashes"):
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
