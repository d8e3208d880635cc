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

import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pivault.detect.counters import (
    BUCKETS,
    DAY,
    DetectUnavailable,
    DistinctRule,
    Refusal,
    WindowRule,
)

__all__ = ["FileCounters"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS windows (
  key TEXT PRIMARY KEY, expires REAL NOT NULL, used INTEGER NOT NULL, buckets TEXT NOT NULL
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

_UPSERT_WINDOW = ("INSERT INTO windows (key, expires, used, buckets) VALUES (?, ?, ?, ?)"
                  " ON CONFLICT (key) DO UPDATE SET expires = excluded.expires, used = excluded.used,"
                  " buckets = excluded.buckets")

_INCR = ("INSERT INTO vals (key, expires, value) VALUES (?1, ?2, 1) ON CONFLICT (key) DO UPDATE SET"
         " value = CASE WHEN vals.expires <= ?3 THEN 1 ELSE vals.value + 1 END,"
         " expires = CASE WHEN vals.expires <= ?3 THEN excluded.expires ELSE vals.expires END"
         " RETURNING value")

_CLAIM = ("INSERT INTO claims (key, expires) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET"
          " expires = excluded.expires WHERE claims.expires <= ?3 RETURNING 1")

#: ids per membership query (SQLite's default limit on parameters is far above this)
_CHUNK = 500


class _Conn(threading.local):
    conn: sqlite3.Connection | None = None
    pid: int = 0
    charges: int = 0


class FileCounters:
    """Counters in the SQLite file ``path``, for every process of this node that opens it.

    Each thread of each process has a connection of its own (one made before
    a fork is never used after it). ``namespace`` (the vault id) keeps the
    counters of vaults that share a file apart. ``timeout`` bounds the wait for another
    process's transaction; past it the charge fails closed.
    """

    def __init__(self, path: str | os.PathLike[str], *, namespace: str = "default", clock: Any = time.time,
                 timeout: float = 2.0) -> None:
        self.path = Path(path).expanduser().absolute()
        #: several vaults may share one file: every key carries the vault's namespace
        self._ns = namespace + ":"
        self._clock = clock
        self._timeout = timeout
        self._local = _Conn()
        self._made = False

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
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=self._timeout)
            # WAL: readers never wait; NORMAL: a commit is not synced, a crash of the machine may
            # forget the last moments' counts but never corrupts the file
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL",
                           f"busy_timeout={int(self._timeout * 1000)}"):
                conn.execute(f"PRAGMA {pragma}")
            if not self._made:
                conn.executescript(_SCHEMA)
                self._made = True
        except (OSError, sqlite3.Error) as exc:
            raise self._fail(exc) from None
        local.conn, local.pid, local.charges = conn, os.getpid(), 0
        return conn

    def close(self) -> None:
        conn = self._local.conn
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None

    def now(self) -> float:
        return float(self._clock())

    # -- budgets -------------------------------------------------------------------------
    def charge(self, windows: Sequence[WindowRule], distinct: Sequence[DistinctRule]) -> Refusal | None:
        now = self.now()
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                refusal = self._charge(conn, now, windows, distinct)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            local = self._local
            local.charges += 1
            if not local.charges & 1023:
                self._sweep(conn, now)
        except sqlite3.Error as exc:
            raise self._fail(exc) from None
        return refusal

    def _charge(self, conn: sqlite3.Connection, now: float, windows: Sequence[WindowRule],
                distinct: Sequence[DistinctRule]) -> Refusal | None:
        floor = math.floor
        states: dict[str, list[Any]] = {}
        ns = self._ns
        keys = list(dict.fromkeys(ns + w.key for w in windows))
        if keys:
            rows = conn.execute(
                f"SELECT key, expires, used, buckets FROM windows WHERE key IN ({','.join('?' * len(keys))})",
                keys).fetchall()
            for key, expires, used, buckets in rows:
                if expires > now:
                    states[key] = [int(used), json.loads(buckets), False]
        plan: list[tuple[str, int, float]] = []
        for rule in windows:
            g = rule.window / BUCKETS
            b = floor(now / g)
            key = ns + rule.key
            st = states.get(key)
            if st is None:
                st = states[key] = [0, [], True]
            used, buckets = st[0], st[1]
            oldest = b - BUCKETS
            drop = 0
            while drop < len(buckets) and buckets[drop][0] <= oldest:
                used -= buckets[drop][1]
                drop += 1
            if drop:
                del buckets[:drop]
                st[0], st[2] = used, True
            amount = rule.amount
            if amount > 0:
                if used + amount > rule.limit:
                    return _refusal(buckets, used, rule, now, g)
                plan.append((key, b, g))
                if buckets and buckets[-1][0] == b:
                    buckets[-1][1] += amount
                else:
                    buckets.append([b, amount])
                st[0] = used + amount
                st[2] = True
        day = floor(now / DAY)
        dplan: list[tuple[str, list[str]]] = []
        for d in distinct:
            key = f"{ns}{d.key}:{day}"
            row = conn.execute("SELECT n, expires FROM sets WHERE key = ?", (key,)).fetchone()
            n = int(row[0]) if row is not None and row[1] > now else 0
            ids = list(dict.fromkeys(d.ids))
            present: set[str] = set()
            if n:
                for i in range(0, len(ids), _CHUNK):
                    part = ids[i:i + _CHUNK]
                    present.update(r[0] for r in conn.execute(
                        f"SELECT id FROM members WHERE key = ? AND id IN ({','.join('?' * len(part))})",
                        (key, *part)))
            new = [i for i in ids if i not in present]
            if new and n + len(new) > d.limit:
                return Refusal(d.name, (day + 1) * DAY - now, n, d.limit)
            dplan.append((key, new))
        # every rule passed: now move the counters
        expiry = {key: (b + BUCKETS + 1) * g for key, b, g in plan}
        conn.executemany(_UPSERT_WINDOW, [
            (key, expiry[key], st[0], json.dumps(st[1], separators=(",", ":")))
            for key, st in states.items() if st[2] and key in expiry])
        for key, new in dplan:
            if not new:
                continue
            conn.executemany("INSERT OR IGNORE INTO members (key, id) VALUES (?, ?)", [(key, i) for i in new])
            conn.execute("INSERT INTO sets (key, expires, n) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET"
                         " n = CASE WHEN sets.expires <= ?4 THEN excluded.n ELSE sets.n + excluded.n END,"
                         " expires = excluded.expires", (key, (day + 1) * DAY, len(new), now))
        return None

    def _sweep(self, conn: sqlite3.Connection, now: float) -> None:
        """Drop what has expired (every 1,024 charges of a connection), in its own transaction."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            for child, parent in (("members", "sets"), ("fields", "hashes")):
                conn.execute(f"DELETE FROM {child} WHERE key IN"
                             f" (SELECT key FROM {parent} WHERE expires <= ?)", (now,))
            for table in ("windows", "sets", "vals", "claims", "hashes"):
                conn.execute(f"DELETE FROM {table} WHERE expires <= ?", (now,))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- breaches, detector buckets, alert claims, detector state ------------------------------
    def incr(self, key: str, ttl: float) -> int:
        now = self.now()
        try:
            row = self._conn().execute(_INCR, (self._ns + key, now + ttl, now)).fetchone()
        except sqlite3.Error as exc:
            raise self._fail(exc) from None
        return int(row[0])

    def add_fields(self, key: str, fields: Mapping[str, int], ttl: float) -> None:
        if not fields:
            return
        now = self.now()
        conn = self._conn()
        key = self._ns + key
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT expires FROM hashes WHERE key = ?", (key,)).fetchone()
                if row is not None and row[0] <= now:
                    conn.execute("DELETE FROM fields WHERE key = ?", (key,))
                conn.execute("INSERT INTO hashes (key, expires) VALUES (?, ?) ON CONFLICT (key) DO UPDATE"
                             " SET expires = excluded.expires", (key, now + ttl))
                conn.executemany("INSERT INTO fields (key, field, n) VALUES (?, ?, ?)"
                                 " ON CONFLICT (key, field) DO UPDATE SET n = fields.n + excluded.n",
                                 [(key, f, int(n)) for f, n in fields.items()])
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._fail(exc) from None

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
        try:
            return self._conn().execute(_CLAIM, (self._ns + key, now + ttl, now)).fetchone() is not None
        except sqlite3.Error as exc:
            raise self._fail(exc) from None

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
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT INTO state (key, field, value) VALUES (?, ?, ?)"
                                 " ON CONFLICT (key, field) DO UPDATE SET value = excluded.value",
                                 [(self._ns + key, str(f), str(v)) for f, v in values.items()])
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._fail(exc) from None


def _refusal(buckets: list[list[int]], used: int, rule: WindowRule, now: float, g: float) -> Refusal:
    """The refusal of ``rule``: the wait until enough of the window's oldest buckets have left."""
    retry = rule.window
    if rule.amount <= rule.limit:
        need, freed = used + rule.amount - rule.limit, 0
        for k, c in buckets:
            freed += c
            if freed >= need:
                retry = (k + BUCKETS) * g - now
                break
    return Refusal(rule.name, max(retry, 0.001), used, rule.limit)
