"""Scanning database tables: SQLite files and PostgreSQL, sampled or in full.

Findings name the table and the column; the row is the SQLite ``rowid`` or,
for PostgreSQL, the ordinal of the row in the scan. Each cell is scanned with
its column's name as context, so a ``name`` or ``address`` column is checked
as names and addresses. Connections are read-only.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import sqlite3
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from urllib.parse import quote, urlsplit, urlunsplit

from pivault.scan.engine import Engine, get_engine
from pivault.scan.findings import ScanOptions, ScanReport, SourceResult
from pivault.scan.stream import Collector, scan_columns

#: a sample is read in this many blocks from random places in the table
SAMPLE_BLOCKS = 8
#: rows of a table scanned together (each column's cells as one text)
ROW_BATCH = 2000


def display_url(url: str) -> str:
    """The URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.username:
        netloc = f"{parts.username}:****@{netloc}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _sqlite_path(url: str) -> str:
    """``sqlite:///relative.db``, ``sqlite:////absolute.db`` or a plain path."""
    for prefix in ("sqlite:///", "sqlite://", "file:"):
        if url.startswith(prefix):
            return url[len(prefix) :]
    return url


def _open_ro(path: str) -> sqlite3.Connection:
    """A read-only connection to the SQLite file at ``path``, whatever characters its name holds.

    The path goes into a ``file:`` URI, where ``#`` ends the path, ``?`` starts the
    options and ``%`` escapes: unquoted, ``export#2.db`` opened (and created, read-write)
    the empty ``export`` beside it and reported nothing found. Quoted, the name is the file's.
    """
    return sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True)


def source_name(url: str) -> str:
    """The source a database's own results and issues carry (its tables': ``name#table``)."""
    if url.startswith(("postgresql://", "postgres://")):
        return display_url(url)
    return _sqlite_path(url)


def _q(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def _sqlite_rows(
    con: sqlite3.Connection, table: str, full: bool, sample: int
) -> tuple[list[str], Iterator[tuple[int, Sequence[object]]]]:
    cols = [r[1] for r in con.execute(f"PRAGMA table_info({_q(table)})")]
    # a column may be called rowid (or _rowid_, oid) and hide the real one: its values are
    # text, duplicates, NULLs, and a sample by their range fails or misses rows
    taken = {c.lower() for c in cols}
    rowid = next((a for a in ("rowid", "_rowid_", "oid") if a not in taken), None)
    has_rowid, lo, hi = False, None, None
    if rowid is not None:
        with contextlib.suppress(sqlite3.OperationalError):  # a WITHOUT ROWID table has none
            lo, hi = con.execute(f"SELECT min({rowid}), max({rowid}) FROM {_q(table)}").fetchone()
            has_rowid = True

    def gen() -> Iterator[tuple[int, Sequence[object]]]:
        if not has_rowid:
            sql = f"SELECT * FROM {_q(table)}" + ("" if full else f" LIMIT {int(sample)}")
            for i, row in enumerate(con.execute(sql), 1):
                yield i, row
            return
        if lo is None:
            return
        if full or hi - lo + 1 <= sample:
            for row in con.execute(f"SELECT {rowid}, * FROM {_q(table)} ORDER BY {rowid}"):
                yield row[0], row[1:]
            return
        # One block from each of SAMPLE_BLOCKS equal stretches of the rowid
        # range, never overlapping the one before: the sample has as many
        # rows as asked for and spans the whole table.
        rng = random.Random()
        width = (hi - lo + 1) // SAMPLE_BLOCKS
        nxt = lo
        for b in range(SAMPLE_BLOCKS):
            per = sample // SAMPLE_BLOCKS + (1 if b < sample % SAMPLE_BLOCKS else 0)
            if per == 0:
                continue
            start = max(nxt, lo + b * width + rng.randint(0, max(0, width - per)))
            for row in con.execute(
                f"SELECT {rowid}, * FROM {_q(table)} WHERE {rowid} >= ? ORDER BY {rowid} LIMIT ?",
                (start, per),
            ):
                nxt = row[0] + 1
                yield row[0], row[1:]

    return cols, gen()


def _scan_rows(
    rows: Iterable[tuple[int, Sequence[object]]],
    cols: list[str],
    file: str | None,
    table: str,
    engine: Engine,
    out: Collector,
) -> int:
    # only the rows of the batch being scanned need their ids: a list of every id of a
    # table of 10^8 rows held gigabytes
    ids: deque[int] = deque(maxlen=ROW_BATCH)
    read = 0

    def values() -> Iterator[Sequence[object]]:
        nonlocal read
        for rid, row in rows:
            ids.append(rid)
            read += 1
            yield row

    def row_id(o: int) -> int:
        return ids[o - (read - len(ids))]

    return scan_columns(values(), cols, file, table, engine, out, row_ids=row_id, batch=ROW_BATCH)


def sqlite_tables(con: sqlite3.Connection) -> list[str]:
    return [
        r[0]
        for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]


def scan_sqlite_into(
    path: str,
    engine: Engine,
    out: Collector,
    *,
    full: bool,
    sample: int,
    tables: Sequence[str] | None = None,
    file: str | None = None,
) -> int:
    """Scan the tables of an SQLite file into one collector; returns the bytes of cell text read."""
    try:
        con = _open_ro(path)
    except sqlite3.Error as e:
        out.issue("database", f"cannot open SQLite database ({type(e).__name__})")
        return 0
    total = 0
    try:
        names = list(tables) if tables else sqlite_tables(con)
        for t in names:
            try:
                cols, rows = _sqlite_rows(con, t, full, sample)
                total += _scan_rows(rows, cols, file, t, engine, out)
            except sqlite3.Error as e:
                out.issue("database", f"table {t!r} could not be read ({type(e).__name__})")
    except sqlite3.Error as e:
        out.issue("database", f"SQLite database unreadable ({type(e).__name__})")
    finally:
        con.close()
    return total


#: what holds rows to scan: tables, partitioned tables, materialized views
_RELKINDS = "('r', 'p', 'm')"
_SAFE_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(?:\.[A-Za-z_][A-Za-z0-9_$]*)?$")


def _scan_postgres(
    url: str,
    tables: Sequence[str] | None,
    full: bool,
    sample: int,
    engine: Engine,
    report: ScanReport,
    options: ScanOptions,
) -> None:
    import psycopg
    from psycopg import sql

    shown = display_url(url)
    try:
        conn = psycopg.connect(url, connect_timeout=10)
    except psycopg.Error as e:
        res = SourceResult(shown)
        Collector(res, options).issue("database", f"cannot connect to PostgreSQL ({type(e).__name__})")
        report.add(res)
        return
    with conn:
        conn.execute("SET TRANSACTION READ ONLY")
        if tables:
            targets = []
            for t in tables:
                schema, _, name = t.rpartition(".")
                if not schema:
                    row = conn.execute(
                        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        f"WHERE c.relname = %s AND c.relkind IN {_RELKINDS} "
                        "AND n.nspname = ANY(current_schemas(false)) ORDER BY array_position("
                        "current_schemas(false), n.nspname) LIMIT 1",
                        (name,),
                    ).fetchone()
                    schema = row[0] if row else "public"
                targets.append((schema, name))
        else:
            targets = [
                (r[0], r[1])
                for r in conn.execute(
                    # from the catalogue, not information_schema: that leaves out materialized
                    # views (a refreshed copy of a customer table is a copy all the same) and the
                    # tables the scanner's role may not read, which must be reported, not skipped
                    "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
                    f"ON n.oid = c.relnamespace WHERE c.relkind IN {_RELKINDS} "
                    "AND n.nspname = ANY(current_schemas(false)) ORDER BY 1, 2"
                )
            ]
        for schema, name in targets:
            label = f"{schema}.{name}"
            res = SourceResult(f"{shown}#{label}")
            out = Collector(res, options)
            ident = sql.Identifier(schema, name)
            try:
                with conn.transaction():
                    cols = [
                        r[0]
                        for r in conn.execute(
                            "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
                            "AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                            (schema, name),
                        )
                    ]
                    if full:
                        query = sql.SQL("SELECT * FROM {}").format(ident)
                    else:
                        # by name, not a quoted text cast to regclass: a quote in a table's
                        # name broke that text, and the table was reported unreadable, unscanned
                        est = conn.execute(
                            "SELECT c.reltuples FROM pg_class c JOIN pg_namespace n "
                            "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
                            (schema, name),
                        ).fetchone()
                        rows_est = float(est[0]) if est else -1.0
                        if rows_est > 3 * sample:
                            pct = min(100.0, 100.0 * 3 * sample / rows_est)
                            query = sql.SQL("SELECT * FROM {} TABLESAMPLE SYSTEM ({}) LIMIT {}").format(
                                ident, sql.Literal(pct), sql.Literal(int(sample))
                            )
                        else:
                            query = sql.SQL("SELECT * FROM {} LIMIT {}").format(
                                ident, sql.Literal(int(sample))
                            )
                    with conn.cursor(name=f"pivault_scan_{int(time.time() * 1e6) % 10**9}") as cur:
                        cur.itersize = 2000
                        cur.execute(query)
                        res.bytes_scanned += scan_columns(cur, cols, None, label, engine, out)
            except psycopg.Error as e:
                out.issue("database", f"table {label} could not be read ({type(e).__name__})")
            report.add(res)


def scan_database(
    url: str,
    tables: Sequence[str] | None = None,
    *,
    full: bool = False,
    sample: int = 1000,
    options: ScanOptions | None = None,
) -> ScanReport:
    """Scan the tables of a database (``sqlite:///path``, a path, or ``postgresql://…``).

    ``tables`` restricts the scan (``schema.table`` for PostgreSQL); ``full``
    reads every row, otherwise ``sample`` rows per table are read (SQLite: in
    blocks from random rowids; PostgreSQL: ``TABLESAMPLE SYSTEM`` for large
    tables). Findings carry the table, the column and the row. A database
    that cannot be opened is an issue of the report (code ``database``);
    a URL of another kind of database is a ``ValueError``, never a path.
    """
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme not in ("", "sqlite", "file", "postgresql", "postgres"):
        raise ValueError(f"cannot scan a {scheme}:// database: the scanner reads SQLite (sqlite:///file.db "
                         "or a path) and PostgreSQL (postgresql://…)")
    options = options or ScanOptions()
    engine = get_engine(options.kinds, options.engine)
    report = ScanReport()
    t0 = time.perf_counter()
    if url.startswith(("postgresql://", "postgres://")):
        _scan_postgres(url, tables, full, sample, engine, report, options)
    else:
        path = _sqlite_path(url)
        try:
            con = _open_ro(path)
            names = list(tables) if tables else sqlite_tables(con)
            con.close()
        except sqlite3.Error as e:
            res = SourceResult(path)
            Collector(res, options).issue("database", f"cannot open SQLite database ({type(e).__name__})")
            report.add(res)
            names = []
        for t in names:
            res = SourceResult(f"{path}#{t}")
            res.bytes_scanned = scan_sqlite_into(
                path, engine, Collector(res, options), full=full, sample=sample, tables=[t]
            )
            report.add(res)
    report.elapsed = time.perf_counter() - t0
    return report
