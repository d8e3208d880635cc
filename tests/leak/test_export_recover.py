"""`kill -9` of an export fetch: what the dead fetch left goes, a live fetch is left alone.

A fetch writes its rows, PI in full, to a hidden temporary file and holds a lock on it
(and, on PostgreSQL, a session lock) for as long as it lives. A process killed part-way
leaves the file and the export `fetching`; `recover` (and the next fetch of the export)
removes the file, undoes the fetch and says so in the trail; a fetch whose process lives
is never touched, and a file that got its name is never undone. Real processes, a real
SIGKILL, on SQLite and PostgreSQL.

The fetching process is the library's own, run as a child process whose writer (in that
child only) stops after a few rows and waits for a line on its stdin: the test kills it
there, or lets it go on.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from leak.conftest import World, build_vault, ctx
from pivault.audit import entries, load_verifier, verify
from pivault.leak import exports as ex
from pivault.leak.exports import ExportError
from pivault.store.migrations import migrate

TESTS = str(Path(__file__).resolve().parents[1])
SRC = str(Path(__file__).resolve().parents[2] / "src")

#: the child: the library's fetch, its writer stopped after PAUSE rows (or before the file gets
#: its name) until the test writes a line to its stdin or kills it
_CHILD = r"""
import sys
from pathlib import Path

from leak.conftest import CHEAP, AuditingGuard, ctx
from pivault.audit import AuditLog, load_writer
from pivault.crypto import Keyring, PassphraseProvider
from pivault.leak import exports as ex
from pivault.store.db import Database
from pivault.vault import Vault

url, keys, export_id, out, where = sys.argv[1:6]
kr = Keyring.open(Path(keys) / "keyring.json", PassphraseProvider("synthetic leak tests", CHEAP))
db = Database(url)
vault = Vault(db, kr, guard=AuditingGuard(AuditLog(db, kr, load_writer(keys, kr), checkpoint_every=1000)))


def stop() -> None:
    print("paused", flush=True)
    sys.stdin.readline()


if where == "publish":
    real_publish = ex._Writer.publish

    def publish(self: ex._Writer) -> None:
        stop()
        real_publish(self)

    ex._Writer.publish = publish
else:
    real_write = ex._Writer.write
    left = [int(where)]

    def write(self: ex._Writer, row: dict) -> None:
        real_write(self, row)
        left[0] -= 1
        if left[0] == 0:
            self._fh.flush()  # the rows so far on disk, as a slow fetch would have them
            stop()

    ex._Writer.write = write
info = ex.fetch(vault, export_id, out, ctx=ctx("carol", "approver"))
print("done", info.status, info.rows, flush=True)
"""


@pytest.fixture
def small(tmp_path: Path, store_url: str) -> Iterator[tuple[World, str]]:
    """A vault on each backend."""
    w = build_vault(tmp_path, store_url, count=1500, seed=5)
    yield w, store_url
    w.vault.close()


@pytest.fixture
def lite(tmp_path: Path, sqlite_url: str) -> Iterator[tuple[World, str]]:
    """A vault on SQLite, for what does not depend on the backend."""
    w = build_vault(tmp_path, sqlite_url, count=1500, seed=5)
    yield w, sqlite_url
    w.vault.close()


_STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_fetcher_outlives_its_test() -> Iterator[None]:
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def _approved(w: World, region: str = "11") -> str:
    req = ex.request(w.vault, ex.Selection(regions=(region,)), recipient="Institute X", purpose="audit",
                     fields=["name", "id_number", "mobile"], ctx=ctx("carol", "approver"))
    ex.approve(w.vault, req.export_id, ctx=ctx("erin", "dpo"))
    return req.export_id


class Fetcher:
    """A fetch in a process of its own, stopped part-way."""

    def __init__(self, w: World, url: str, export_id: str, out: Path, where: str = "5") -> None:
        self.db, self.export_id = w.vault.db, export_id
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, TESTS])}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, url, str(w.tmp / "keys"), export_id, str(out), where],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        _STARTED.append(self.proc)
        assert self._line() == "paused", self._failure()

    def _line(self, timeout: float = 120.0) -> str:
        assert self.proc.stdout is not None
        # poll, not select: late in a long test run this process's descriptors pass FD_SETSIZE
        poller = select.poll()
        poller.register(self.proc.stdout, select.POLLIN)
        if not poller.poll(timeout * 1000):
            self.proc.kill()
            pytest.fail("the fetching process said nothing")
        return self.proc.stdout.readline().strip()

    def _failure(self) -> str:
        self.proc.kill()
        _, err = self.proc.communicate(timeout=30)
        return err[-3000:]

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL
        self.proc.communicate(timeout=30)
        if self.db.dialect == "postgresql":
            # the server ends the dead process's session (and its locks) when it reads the closed
            # connection: a moment after the kill, not at it; until then the fetch counts as running
            deadline = time.monotonic() + 30
            while not ex._hold(self.db, self.export_id):
                assert time.monotonic() < deadline, "the killed fetch's session outlived it"
                time.sleep(0.05)
            ex._let_go(self.db, self.export_id)

    def go_on(self) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        out, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, err[-3000:]
        return out.strip()


def _part(w: World, export_id: str) -> Path:
    row = w.vault.db.query_one("SELECT fetch_part FROM exports WHERE export_id = ?", (export_id,))
    assert row is not None and row[0]
    return Path(row[0])


def _verified(w: World) -> None:
    report = verify(w.vault.db, load_verifier(w.tmp / "keys"))
    assert report.ok, report


def _named(w: World, export_id: str, operation: str, outcome: str, principal: str | None = None) -> int:
    return sum(1 for e in entries(w.vault.db, operation=operation, outcome=outcome, principal=principal)
               if export_id in e.record_ids)


def test_a_killed_fetch_is_recovered_and_the_export_fetched_once(
        small: tuple[World, str], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    w, url = small
    v = w.vault
    x = _approved(w)
    out = tmp_path / "out" / "x.csv"
    out.parent.mkdir()
    fetcher = Fetcher(w, url, x, out)
    part = _part(w, x)
    # the row says where the fetch writes, in the transaction that set it fetching
    info = ex.get_export(v.db, x)
    assert info.status == "fetching" and info.fetch_host == socket.gethostname()
    assert part.parent == out.parent and part.name.startswith(".x.csv.") and part.name.endswith(".part")
    assert stat.S_IMODE(part.stat().st_mode) == 0o600 and part.stat().st_size > 0
    assert _named(w, x, "export.fetch", "ok", "carol") == 1
    fetcher.kill()
    # killed: nothing cleaned up after it
    assert part.exists() and ex.get_export(v.db, x).status == "fetching"

    caplog.set_level(logging.INFO, logger="pivault")
    done = ex.recover(v, ctx=ctx("erin", "dpo"))
    assert [(r.export_id, r.outcome, r.status, r.file) for r in done] == [
        (x, "recovered", "approved", "removed")]
    assert "interrupted" in done[0].message
    assert not part.exists() and list(out.parent.iterdir()) == []
    info = ex.get_export(v.db, x)
    assert info.status == "approved" and info.fetch_part is None and info.fetch_host is None
    assert not v.db.query("SELECT kind FROM export_members WHERE export_id = ?"
                          " AND kind IN ('canaries', 'members', 'rowkeys')", (x,))
    # the trail says the fetch was undone, by whom, and that it was interrupted
    assert _named(w, x, "export.fetch", "error", "erin") == 1
    assert _named(w, x, "export.recover", "ok", "erin") == 1
    _verified(w)
    # log lines carry ids, never the file's path
    assert x in caplog.text and str(part) not in caplog.text and "x.csv" not in caplog.text
    assert ex.recover(v, ctx=ctx("erin", "dpo")) == []  # nothing left to do

    # fetched once, as if the killed attempt had never been
    info = ex.fetch(v, x, out, ctx=ctx("carol", "approver"))
    assert info.status == "fetched" and info.fetch_part is None
    assert [p.name for p in out.parent.iterdir()] == ["x.csv"]
    assert len(out.read_text(encoding="utf-8").splitlines()) == 1 + (info.rows or 0) + (info.canaries or 0)
    assert ex.load_registry(v).canary_counts[x] == info.canaries
    with pytest.raises(ExportError) as exc:
        ex.fetch(v, x, tmp_path / "again.csv", ctx=ctx("carol", "approver"))
    assert exc.value.code == "export.state"
    _verified(w)


def test_the_next_fetch_recovers_a_killed_one_first(lite: tuple[World, str], tmp_path: Path) -> None:
    w, url = lite
    v = w.vault
    x = _approved(w)
    out = tmp_path / "x.jsonl"
    fetcher = Fetcher(w, url, x, out)
    part = _part(w, x)
    fetcher.kill()
    info = ex.fetch(v, x, out, ctx=ctx("carol", "approver"))
    assert info.status == "fetched" and not part.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if "x.jsonl" in p.name) == ["x.jsonl"]
    assert _named(w, x, "export.recover", "ok", "carol") == 1
    assert _named(w, x, "export.fetch", "ok", "carol") == 2  # the killed attempt and this one
    _verified(w)


def test_recovery_never_touches_a_live_fetch(small: tuple[World, str], tmp_path: Path) -> None:
    """Two fetches stopped part-way: one killed, one alive. Recovery (of all, and of the live
    one by name, and its requester's next fetch) undoes the dead one only; the live one
    then finishes as if nothing had happened."""
    w, url = small
    v = w.vault
    dead, live = _approved(w, "11"), _approved(w, "31")
    (tmp_path / "out").mkdir()
    killed = Fetcher(w, url, dead, tmp_path / "out" / "dead.csv")
    running = Fetcher(w, url, live, tmp_path / "out" / "live.csv")
    live_part = _part(w, live)
    size = live_part.stat().st_size
    killed.kill()
    try:
        done = {r.export_id: r for r in ex.recover(v, ctx=ctx("erin", "dpo"))}
        assert done[dead].outcome == "recovered"
        assert (done[live].outcome, done[live].status, done[live].file) == ("running", "fetching", "kept")
        assert [r.outcome for r in ex.recover(v, live, ctx=ctx("carol", "approver"))] == ["running"]
        with pytest.raises(ExportError) as exc:
            ex.fetch(v, live, tmp_path / "second.csv", ctx=ctx("carol", "approver"))
        assert exc.value.code == "export.state" and "running" in exc.value.message
        assert live_part.exists() and live_part.stat().st_size == size
        assert ex.get_export(v.db, live).status == "fetching"
        assert not _named(w, live, "export.recover", "ok") and not _named(w, live, "export.fetch", "error")
    finally:
        said = running.go_on()
    assert said.startswith("done fetched")
    info = ex.get_export(v.db, live)
    assert info.status == "fetched" and info.fetch_part is None and not live_part.exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["live.csv"]
    assert ex.get_export(v.db, dead).status == "approved"
    _verified(w)


def test_a_fetch_killed_before_its_file_got_its_name_stays_fetched(
        small: tuple[World, str], tmp_path: Path) -> None:
    """Killed after the export was recorded as fetched, before the link: the export is spent
    (its canaries registered, the trail says the file was finished); recovery removes the
    temporary file and undoes nothing."""
    w, url = small
    v = w.vault
    x = _approved(w)
    out = tmp_path / "x.csv"
    fetcher = Fetcher(w, url, x, out, where="publish")
    part = _part(w, x)
    assert ex.get_export(v.db, x).status == "fetched" and part.exists()
    fetcher.kill()
    done = ex.recover(v, x, ctx=ctx("erin", "dpo"))
    assert [(r.outcome, r.status, r.file) for r in done] == [("cleaned", "fetched", "removed")]
    assert not part.exists() and not out.exists()
    assert ex.get_export(v.db, x).fetch_part is None
    assert not _named(w, x, "export.fetch", "error")
    with pytest.raises(ExportError) as exc:
        ex.fetch(v, x, out, ctx=ctx("carol", "approver"))
    assert exc.value.code == "export.state"
    _verified(w)


def test_a_temporary_name_left_beside_a_published_file_is_removed(
        lite: tuple[World, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file got its name but its temporary name could not be removed: the row keeps that
    name, and recovery removes it; the file and the fetch stay."""
    w, _ = lite
    v = w.vault
    x = _approved(w)
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self.name.endswith(".part"):
            raise PermissionError(13, "Permission denied")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    out = tmp_path / "x.csv"
    ex.fetch(v, x, out, ctx=ctx("carol", "approver"))
    monkeypatch.setattr(Path, "unlink", real_unlink)
    part = _part(w, x)
    assert part.exists() and part.stat().st_ino == out.stat().st_ino
    [r] = ex.recover(v, ctx=ctx("erin", "dpo"))
    assert (r.outcome, r.status, r.file) == ("cleaned", "fetched", "removed")
    assert "has its name" in r.message
    assert not part.exists() and out.exists() and ex.get_export(v.db, x).fetch_part is None
    assert ex.recover(v, ctx=ctx("erin", "dpo")) == []
    _verified(w)


def test_a_published_fetch_set_back_to_fetching_is_not_undone(lite: tuple[World, str],
                                                               tmp_path: Path) -> None:
    """Someone with write access to the database marks a fetched export `fetching` again,
    naming a temporary file: recovery would approve it again for a second copy. The trail
    records that the attempt's file was finished; recovery refuses, and says so."""
    w, _ = lite
    v = w.vault
    x = _approved(w)
    out = tmp_path / "x.csv"
    ex.fetch(v, x, out, ctx=ctx("carol", "approver"))
    attempt = next(r for e in entries(v.db, operation="export.publish") for r in e.record_ids
                   if r.startswith("xf_"))
    fake = tmp_path / f".x.csv.{attempt[3:]}.part"
    v.db.execute("UPDATE exports SET status = 'fetching', fetch_part = ?, fetch_host = ? WHERE export_id = ?",
                 (str(fake), socket.gethostname(), x))
    done = ex.recover(v, ctx=ctx("erin", "dpo"))
    assert [(r.outcome, r.status) for r in done] == [("refused", "fetching")]
    assert _named(w, x, "export.recover", "denied", "erin") == 1
    assert ex.load_registry(v).canary_counts[x] > 0  # the canaries of the copy that is out stay
    # and a made-up attempt, never in the trail, is undone without making the export fetchable
    v.db.execute("UPDATE exports SET fetch_part = ? WHERE export_id = ?",
                 (str(tmp_path / ".x.csv.0123456789abcdef.part"), x))
    v.db.execute("DELETE FROM export_members WHERE export_id = ? AND kind = 'canaries'", (x,))
    assert [r.outcome for r in ex.recover(v, x, ctx=ctx("erin", "dpo"))] == ["recovered"]
    with pytest.raises(ExportError) as exc:
        ex.fetch(v, x, tmp_path / "again.csv", ctx=ctx("carol", "approver"))
    assert exc.value.code == "export.state" and "audit trail" in exc.value.message
    _verified(w)


def test_only_the_requester_or_a_dpo_recovers(lite: tuple[World, str], tmp_path: Path) -> None:
    w, url = lite
    v = w.vault
    x = _approved(w)
    fetcher = Fetcher(w, url, x, tmp_path / "x.csv")
    part = _part(w, x)
    fetcher.kill()
    for who in (ctx("mallory", "analyst"), ctx("erin", "approver")):
        with pytest.raises(ExportError) as exc:
            ex.recover(v, ctx=who)
        assert exc.value.code == "export.not_recoverer"
        with pytest.raises(ExportError) as exc:
            ex.recover(v, x, ctx=who)
        assert exc.value.code == "export.not_recoverer"
    assert _named(w, x, "export.recover", "denied", "mallory") == 1
    assert part.exists() and ex.get_export(v.db, x).status == "fetching"
    assert [r.outcome for r in ex.recover(v, x, ctx=ctx("carol", "approver"))] == ["recovered"]
    assert not part.exists()


def test_a_file_another_host_wrote_is_said_not_guessed(small: tuple[World, str], tmp_path: Path) -> None:
    """The row names a file this host does not have, written on another host. PostgreSQL
    knows whether the fetching session lives: a running fetch is left alone, a dead one undone
    and its file named for whoever removes it there. SQLite has no session to ask: nothing is
    undone, either way."""
    w, url = small
    pg = url.startswith("postgres")
    v = w.vault
    x = _approved(w)
    fetcher = Fetcher(w, url, x, tmp_path / "x.csv")
    part = _part(w, x)
    there = tmp_path / "node-7"
    there.mkdir()
    part.rename(there / part.name)  # as if the file were on another machine's disk
    v.db.execute("UPDATE exports SET fetch_host = 'node-7' WHERE export_id = ?", (x,))
    try:
        [r] = ex.recover(v, ctx=ctx("erin", "dpo"))
        assert (r.outcome, r.status, r.file) == ("running" if pg else "left", "fetching", "kept")
    finally:
        fetcher.kill()
    [r] = ex.recover(v, ctx=ctx("erin", "dpo"))
    assert (r.part, r.host, r.file) == (str(part), "node-7", "not_found" if pg else "kept")
    if pg:
        assert (r.outcome, r.status) == ("recovered", "approved")
        assert "could not be found on this host; remove it where the fetch ran" in r.message
    else:
        assert (r.outcome, r.status) == ("left", "fetching") and "another host" in r.message
    assert (there / part.name).exists()  # never looked for beyond the path it was written to


def test_migrate_brings_an_older_vault_to_recovery(store_url: str, tmp_path: Path) -> None:
    """A vault from before fetches recorded their file: `migrate` adds the columns; a fetch left
    `fetching` by an older pivault has none, and is reported, not guessed at."""
    w = build_vault(tmp_path, store_url, count=600, seed=3)
    v = w.vault
    try:
        x = _approved(w)
        db = v.db
        db.execute("ALTER TABLE exports DROP COLUMN fetch_part")
        db.execute("ALTER TABLE exports DROP COLUMN fetch_host")
        db.execute("DELETE FROM schema_migrations WHERE component = 'exports' AND version = 4")
        db.execute("UPDATE exports SET status = 'fetching' WHERE export_id = ?", (x,))
        assert migrate(db) == ["exports:4"]
        assert migrate(db) == []
        info = ex.get_export(db, x)
        assert (info.status, info.fetch_part, info.fetch_host) == ("fetching", None, None)
        [r] = ex.recover(v, ctx=ctx("erin", "dpo"))
        assert (r.outcome, r.status, r.file) == ("left", "fetching", "kept")
        assert "cannot be told" in r.message
    finally:
        v.close()


def test_export_recover_at_the_command_line(lite: tuple[World, str], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`pivault export list` points at an interrupted fetch; `pivault export recover` acts and
    exits 0, or 1 when a fetch could not be recovered from here."""
    import typer
    from typer.testing import CliRunner

    from pivault.cli import leak_cmds

    w, url = lite
    v = w.vault
    x = _approved(w)
    fetcher = Fetcher(w, url, x, tmp_path / "x.csv")
    part = _part(w, x)
    fetcher.kill()
    monkeypatch.setattr(leak_cmds, "_open", lambda home: _Shared(v))
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """pivault (test root)."""

    leak_cmds.register(app)
    runner = CliRunner()
    r = runner.invoke(app, ["export", "list"])
    assert r.exit_code == 0 and f"pivault export recover {x}" in r.output
    r = runner.invoke(app, ["export", "recover", "--json"])
    assert r.exit_code == 0, r.output
    [got] = json.loads(r.output)
    assert (got["export_id"], got["outcome"], got["status"], got["file"]) == (x, "recovered", "approved",
                                                                               "removed")
    assert not part.exists()
    r = runner.invoke(app, ["export", "recover"])
    assert r.exit_code == 0 and "no export fetch to recover" in r.output
    # a row naming something that is not a fetch's temporary file: left, and the exit says so
    v.db.execute("UPDATE exports SET status = 'fetching', fetch_part = ? WHERE export_id = ?",
                 (str(tmp_path / "notes.txt"), x))
    r = runner.invoke(app, ["export", "recover", x])
    assert r.exit_code == 1 and "left" in r.output and "temporary file:" in r.output


class _Shared:
    """The test's vault handed to a command, which closes what it opens: this one stays open."""

    def __init__(self, vault: object) -> None:
        self.vault = vault

    def __enter__(self) -> object:
        return self.vault

    def __exit__(self, *exc: object) -> None:
        return None
