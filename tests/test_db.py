from __future__ import annotations

from pathlib import Path

import pytest

from pivault.store import Database, connect, migrate
from pivault.store.db import StoreError


def test_transaction_rolls_back_on_both_backends(store_url: str) -> None:
    db = connect(store_url)
    migrate(db)
    db.execute(f"CREATE TABLE t (a INTEGER, b {db.blob()})")
    with pytest.raises(RuntimeError), db.transaction():
        db.execute("INSERT INTO t VALUES (?, ?)", (1, b"\x00\x01"))
        raise RuntimeError("boom")
    assert db.query("SELECT COUNT(*) FROM t") == [(0,)]
    with db.transaction():
        db.executemany("INSERT INTO t VALUES (?, ?)", [(i, bytes([i])) for i in range(5)])
    assert [r[0] for r in db.stream("SELECT a FROM t ORDER BY a", size=2)] == [0, 1, 2, 3, 4]
    assert bytes(db.query_one("SELECT b FROM t WHERE a = ?", (3,))[0]) == b"\x03"  # type: ignore[index]
    assert db.table_exists("schema_migrations")
    db.close()


def test_unreachable_postgres_is_one_clear_error() -> None:
    with pytest.raises(StoreError) as err:
        Database("postgresql://nobody:secret@127.0.0.1:1/none?connect_timeout=2")
    assert err.value.code == "store.connect"
    assert "secret" not in str(err.value)


def test_unknown_scheme() -> None:
    with pytest.raises(Exception) as err:
        connect("mysql://x")
    assert getattr(err.value, "code", "") == "store.url"


def test_sqlite_urls_name_their_file() -> None:
    from pivault.store.db import parse_url

    assert parse_url("sqlite:////srv/pivault/vault.db").target == "/srv/pivault/vault.db"
    assert parse_url("sqlite:///data/vault.db").target == "data/vault.db"


def test_a_store_url_naming_no_database_is_one_clear_error(tmp_path: Path) -> None:
    base = tmp_path
    text = base / "people.csv"
    text.write_text("name,id_number\n" * 200, encoding="utf-8")
    for target, code in ((text, "store.open"), (base, "store.open")):
        with pytest.raises(StoreError) as err:
            Database(f"sqlite:///{target}")
        assert err.value.code == code
    assert text.read_text(encoding="utf-8") == "name,id_number\n" * 200  # nothing written into it


def test_a_postgresql_search_path_without_a_schema_is_one_clear_error(pg_url: str) -> None:
    with pytest.raises(StoreError) as err:
        Database(pg_url.rsplit("%3D", 1)[0] + "%3Dno_such_schema_here")
    assert err.value.code == "store.schema"


def test_after_commit_runs_once_the_outermost_transaction_commits(store_url: str) -> None:
    db = connect(store_url)
    db.execute("CREATE TABLE t (x INTEGER)")
    said: list[str] = []
    with db.transaction():
        db.execute("INSERT INTO t VALUES (1)")
        with db.transaction():  # nested: joins the outer one, commits only with it
            db.after_commit(lambda: said.append("inner"))
        assert said == []
        db.after_commit(lambda: said.append("outer"))
    assert said == ["inner", "outer"]
    with pytest.raises(RuntimeError), db.transaction():
        db.after_commit(lambda: said.append("undone"))
        raise RuntimeError("rolled back")
    with db.transaction():  # nothing of the rolled-back one is left over
        pass
    db.after_commit(lambda: said.append("now"))  # outside a transaction: at once
    with db.snapshot():  # a read snapshot commits nothing to wait for
        db.after_commit(lambda: said.append("read"))
        assert said[-1] == "read"
    assert said == ["inner", "outer", "now", "read"]
    db.close()
