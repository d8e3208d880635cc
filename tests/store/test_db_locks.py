"""Several processes on one SQLite store keep seeing each other's commits.

Opening a second connection in a process must not drop the POSIX locks its
first connection holds: without them, another process closing its last
connection deletes the WAL from under the first, and the two stop seeing
each other (a token created by the command line unknown to the server).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pivault.store.db import Database, parse_url


def _in_other_process(url: str, sql: str) -> str:
    code = (
        "import sys\n"
        "from pivault.store.db import Database\n"
        "db = Database(sys.argv[1])\n"
        "if sys.argv[2]:\n"
        "    db.execute(sys.argv[2])\n"
        "print(sorted(r[0] for r in db.query('SELECT k FROM t')))\n"
        "db.close()\n"
    )
    done = subprocess.run([sys.executable, "-c", code, url, sql], capture_output=True, text=True,
                          check=True, timeout=60)
    return done.stdout.strip()


def test_a_second_connection_keeps_the_first_ones_locks(sqlite_url: str) -> None:
    first = Database(sqlite_url)
    first.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    first.execute("INSERT INTO t VALUES (1)")
    second = Database(sqlite_url)  # e.g. the audit journal's own connection
    wal = Path(parse_url(sqlite_url).target + "-wal")
    try:
        # another process opens, writes and closes: it must not think itself the last user
        assert _in_other_process(sqlite_url, "INSERT INTO t VALUES (2)") == "[1, 2]"
        assert wal.exists()
        assert [r[0] for r in first.query("SELECT k FROM t ORDER BY k")] == [1, 2]
        first.execute("INSERT INTO t VALUES (3)")
        assert _in_other_process(sqlite_url, "INSERT INTO t VALUES (4)") == "[1, 2, 3, 4]"
        assert [r[0] for r in second.query("SELECT k FROM t ORDER BY k")] == [1, 2, 3, 4]
    finally:
        second.close()
        first.close()
    assert _in_other_process(sqlite_url, "") == "[1, 2, 3, 4]"


def test_a_new_store_file_is_private(sqlite_url: str) -> None:
    with Database(sqlite_url):
        pass
    assert Path(parse_url(sqlite_url).target).stat().st_mode & 0o077 == 0
