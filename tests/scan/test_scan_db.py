"""Database tables: SQLite and PostgreSQL, reported by table and column."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pivault.scan import ScanOptions, scan_database, scan_paths

ID = "11010519491231002X"
MOBILE = "13812345678"


def _rows(n: int) -> list[tuple[int, str, str, str, str]]:
    out = []
    for i in range(n):
        out.append(
            (
                i + 1,
                "王小明" if i % 2 else "李娜",
                ID if i % 10 == 0 else "n/a",
                f"1381234{i % 10000:04d}",
                "北京市朝阳区建国路88号",
            )
        )
    return out


def _sqlite(path: Path, n: int) -> None:
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TABLE customer (id INTEGER PRIMARY KEY, name TEXT, id_no TEXT, phone TEXT, addr TEXT)"
    )
    con.execute("CREATE TABLE audit (id INTEGER PRIMARY KEY, note BLOB)")
    con.executemany("INSERT INTO customer VALUES (?,?,?,?,?)", _rows(n))
    con.execute("INSERT INTO audit (note) VALUES (?)", (f"called {MOBILE}".encode(),))
    con.commit()
    con.close()


def test_sqlite_full_scan_by_table_and_column(tmp_path: Path) -> None:
    db = tmp_path / "crm.db"
    _sqlite(db, 50)
    r = scan_database(f"sqlite:///{db}", full=True)
    cols = {(f.table, f.column, f.kind) for f in r}
    assert cols == {
        ("customer", "name", "name"),
        ("customer", "id_no", "id_number"),
        ("customer", "phone", "mobile"),
        ("customer", "addr", "address"),
        ("audit", "note", "mobile"),
    }
    assert r.totals()["id_number"] == 5 and r.totals()["mobile"] == 51 and r.totals()["name"] == 50
    first = next(f for f in r if f.kind == "id_number")
    assert first.line == 1 and first.masked == "110***********002X" and first.file is None
    assert r.issues == []


def test_sqlite_sample_and_table_filter(tmp_path: Path) -> None:
    db = tmp_path / "big.db"
    _sqlite(db, 5000)
    r = scan_database(str(db), ["customer"], sample=200)
    assert r.totals()["mobile"] == 200
    assert {f.table for f in r} == {"customer"}
    rows = {f.line for f in r if f.kind == "mobile"}
    assert max(rows) > 200  # sampled from across the table, not only its start


def test_sqlite_file_found_in_a_sweep(tmp_path: Path) -> None:
    _sqlite(tmp_path / "app.sqlite", 20)
    r = scan_paths([str(tmp_path)], ScanOptions(workers=1))
    f = next(f for f in r if f.kind == "id_number")
    assert f.file == str(tmp_path / "app.sqlite") and f.table == "customer" and f.column == "id_no"


def test_unreadable_database_is_an_issue(tmp_path: Path) -> None:
    (tmp_path / "x.db").write_bytes(b"not a database at all" * 10)
    r = scan_database(str(tmp_path / "x.db"))
    assert [i.code for i in r.issues] == ["database"]
    r = scan_database("postgresql://nobody@127.0.0.1:1/none")
    assert [i.code for i in r.issues] == ["database"]


def test_postgresql_tables(pg_url: str) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE scan_customer (id int, full_name text, id_card text, mobile text, note text)"
        )
        conn.execute("CREATE TABLE scan_other (id int, payload jsonb)")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO scan_customer VALUES (%s,%s,%s,%s,%s)",
                [(i, "陈静", ID, MOBILE, f"卡号4111111111111111 #{i}") for i in range(300)],
            )
            cur.execute("INSERT INTO scan_other VALUES (1, %s)", ('{"k": "AKIA2E3F4G5H6J7K2L3M"}',))
    full = scan_database(pg_url, full=True)
    got = {(f.table.split(".")[-1], f.column, f.kind) for f in full}  # type: ignore[union-attr]
    assert ("scan_customer", "full_name", "name") in got
    assert ("scan_customer", "id_card", "id_number") in got
    assert ("scan_customer", "mobile", "mobile") in got
    assert ("scan_customer", "note", "bank_card") in got
    assert ("scan_other", "payload", "cloud_key") in got
    assert full.totals()["id_number"] == 300
    sampled = scan_database(pg_url, ["scan_customer"], sample=50)
    assert sampled.totals()["id_number"] == 50
    assert {f.table for f in sampled} == {
        next(iter({f.table for f in full if "customer" in (f.table or "")}))
    }
    assert "****" not in pg_url or all("****" not in i.source for i in full.issues)


def _one_table(path: Path, rows: int = 1) -> None:
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE t (note TEXT)")
        con.executemany("INSERT INTO t VALUES (?)", [(f"身份证号{ID}",)] * rows)
    con.close()


def test_sqlite_files_whose_names_hold_uri_characters_are_read(tmp_path: Path) -> None:
    """The path went into a ``file:`` URI unquoted: ``export#2.db`` opened the empty ``export``
    beside it (creating it, read-write, on the share being swept) and reported nothing found;
    ``?`` and ``%`` in a name made the database unreadable."""
    share = tmp_path / "share"
    share.mkdir()
    names = ["export#2.db", "dump?mode=rwc.db", "copy%41.db"]
    for n in names:
        _one_table(share / n)
    r = scan_paths([str(share)], ScanOptions(workers=1))
    assert {Path(s).name for (s, k) in r.counts if k == "id_number"} == set(names)
    assert r.issues == []
    assert sorted(p.name for p in share.iterdir()) == sorted(names), "the scan wrote to the share"
    for n in names:
        one = scan_database(f"sqlite:///{share / n}", full=True)
        assert one.totals()["id_number"] == 1 and one.issues == []


def test_a_column_called_rowid_neither_fails_nor_hides_rows(tmp_path: Path) -> None:
    """A column named rowid hides SQLite's own: its text values made the sample's range a
    TypeError (a traceback at the command line, the whole database unread)."""
    db = tmp_path / "shadow.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE t (rowid TEXT, v TEXT)")
        con.executemany("INSERT INTO t VALUES (?, ?)", [(f"r{i}", f"身份证号{ID}") for i in range(3000)])
        con.execute("CREATE TABLE every (rowid TEXT, oid TEXT, _rowid_ TEXT, v TEXT)")
        con.execute("INSERT INTO every VALUES ('a', 'b', 'c', ?)", (f"手机{MOBILE}",))
    con.close()
    full = scan_database(f"sqlite:///{db}", full=True)
    assert full.issues == []
    assert full.counts[(f"{db}#t", "id_number")] == 3000
    assert full.counts[(f"{db}#every", "mobile")] == 1
    assert {f.line for f in full if f.table == "t"} == set(range(1, 1001))  # the real rowids
    sampled = scan_database(f"sqlite:///{db}", sample=100)
    assert sampled.issues == [] and sampled.counts[(f"{db}#t", "id_number")] == 100
    swept = scan_paths([str(db)], ScanOptions(workers=1))
    assert swept.issues == [] and swept.totals()["id_number"] > 0


def test_a_full_table_scan_holds_no_list_of_every_row(tmp_path: Path) -> None:
    """The row ids of a whole table were kept in one list: gigabytes for 10^8 rows."""
    import tracemalloc

    db = tmp_path / "big.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE t (v TEXT)")
        con.executemany("INSERT INTO t VALUES (?)", (("x",) for _ in range(400_000)))
    con.close()
    scan_database(f"sqlite:///{db}", full=True)  # warm up: compile the engine
    tracemalloc.start()
    try:
        r = scan_database(f"sqlite:///{db}", full=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.issues == [] and r.sources == 1
    assert peak < 4 << 20, f"peak {peak >> 20} MiB for 400,000 rows"


def test_postgresql_tables_with_hostile_names_are_sampled(pg_url: str) -> None:
    """Table and column names are whoever made the database's: a quote in a table's name broke
    the row estimate of a sample, and the table was reported unreadable, its rows unscanned. No
    name runs as SQL."""
    import psycopg

    names = ['we"ird', "x'); DROP TABLE victim; --", 'a"."b', "客户 表"]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE victim (v text)")
        for n in names:
            q = '"' + n.replace('"', '""') + '"'
            conn.execute(f'CREATE TABLE {q} ("id"" --" int, "手机; DROP TABLE victim" text)')
            conn.execute(f"INSERT INTO {q} VALUES (1, %s), (2, %s)", (MOBILE, f"身份证号{ID}"))
    sampled = scan_database(pg_url, sample=50)
    assert sampled.issues == []
    schema_tables = {s.rsplit("#", 1)[1].split(".", 1)[1] for (s, k) in sampled.counts if k == "mobile"}
    assert schema_tables == set(names)
    assert sampled.totals()["id_number"] == len(names)
    named = scan_database(pg_url, [names[0]], sample=50)
    assert named.issues == [] and named.totals()["mobile"] == 1
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM victim").fetchone() == (0,)


def test_postgresql_materialized_views_are_scanned(pg_url: str) -> None:
    """A materialized view refreshed from a customer table is a copy all the same: the tables
    were listed from information_schema, which leaves materialized views out, and their columns
    too, so neither a sweep nor --table read one."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE staging (v text)")
        conn.execute("INSERT INTO staging VALUES (%s), (%s)", (f"身份证号{ID}", f"手机{MOBILE}"))
        conn.execute("CREATE MATERIALIZED VIEW customer_copy AS SELECT v AS note FROM staging")
        conn.execute("TRUNCATE staging")
    swept = scan_database(pg_url, full=True)
    assert swept.issues == []
    copy = [(s, k, n) for (s, k), n in swept.counts.items() if s.endswith(".customer_copy")]
    assert sorted(k for _, k, _ in copy) == ["id_number", "mobile"]
    named = scan_database(pg_url, ["customer_copy"], sample=10)
    assert named.issues == [] and named.totals() == {"id_number": 1, "mobile": 1}
    assert {f.column for f in named} == {"note"}


def test_postgresql_tables_the_role_may_not_read_are_reported(pg_url: str) -> None:
    """information_schema lists only the tables a role has a privilege on: a scanner role
    without one on a customer table swept the database and reported it clean."""
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    role = f"pvt_scan_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        schema = conn.execute("SELECT current_schema()").fetchone()[0]  # type: ignore[index]
        conn.execute("CREATE TABLE hidden (v text)")
        conn.execute("CREATE TABLE shared (v text)")
        conn.execute("INSERT INTO hidden VALUES (%s)", (f"手机{MOBILE}",))
        conn.execute("INSERT INTO shared VALUES (%s)", (f"手机{MOBILE}",))
        conn.execute(f"CREATE ROLE {role} LOGIN")
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO {role}')
            conn.execute(f"GRANT SELECT ON shared TO {role}")
        parts = urlsplit(pg_url)
        as_role = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port or 5432}"))
        r = scan_database(as_role, full=True)
        assert r.totals() == {"mobile": 1}
        assert [(i.source.rsplit("#", 1)[1], i.code) for i in r.issues] == [(f"{schema}.hidden", "database")]
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'REVOKE ALL ON ALL TABLES IN SCHEMA "{schema}" FROM {role}')
            conn.execute(f'REVOKE USAGE ON SCHEMA "{schema}" FROM {role}')
            conn.execute(f"DROP ROLE {role}")
