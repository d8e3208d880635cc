"""The audit anchor from the command line: ``audit verify [--anchor]``, ``audit rebase-anchor``,
``restore``; the settings ``[audit] anchor`` and ``anchor_required``. A real vault home (SQLite)."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from pivault.audit import AuditEvent
from pivault.audit.anchor import Anchor
from pivault.cli import audit_cmds, keys_cmds
from pivault.crypto import Argon2Params, Keyring, PassphraseProvider
from pivault.detect.setup import build_guard
from pivault.policy.context import AccessContext, local_operator
from pivault.store import Database
from pivault.synth import generate
from pivault.vault import Vault
from pivault.vault.home import init, load

PASS = "synthetic-anchor-passphrase"
TABLES = ("audit_entries", "audit_checkpoints", "audit_head")


def _make_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, audit: str = "") -> Path:
    h = tmp_path / "home"
    init(h, passphrase=PASS, keyring_path=tmp_path / "keys" / "keyring.json",
         argon2=Argon2Params(time_cost=1, memory_cost=8, parallelism=1), expected_population=10**6)
    with open(h / "pivault.toml", "a", encoding="utf-8") as fh:
        fh.write("\n[audit]\ncheckpoint_every = 5\n" + audit)
    monkeypatch.setenv("PIVAULT_PASSPHRASE", PASS)
    monkeypatch.setenv("PIVAULT_HOME", str(h))
    monkeypatch.delenv("PIVAULT_REDIS_URL", raising=False)
    return h


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return _make_home(tmp_path, monkeypatch)


@pytest.fixture
def app() -> typer.Typer:
    a = typer.Typer()
    audit_cmds.register(a)
    keys_cmds.register(a)
    return a


def _run(app: typer.Typer, *args: str, code: int = 0) -> str:
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == code, r.output
    return r.output


def _fill(home: Path, n: int, start: int = 0) -> None:
    cfg = load(home)
    keyring = Keyring.open(cfg.keyring_path, PassphraseProvider(PASS))
    with Database(cfg.store_url) as db:
        guard = build_guard(db, keyring, keyring_path=cfg.keyring_path, home=home)
        ctx = AccessContext(principal="officer-17", role="officer", purpose="case_investigation")
        for i in range(start, start + n):
            guard.audit_log.append(AuditEvent.of(ctx, "get", "ok", [f"r_{i:026d}"]))
        guard.close()


def _copy(home: Path) -> dict[str, list[tuple[Any, ...]]]:
    with Database(load(home).store_url) as db:
        return {t: db.query(f"SELECT * FROM {t}") for t in TABLES}


def _put_back(home: Path, copy: dict[str, list[tuple[Any, ...]]]) -> None:
    with Database(load(home).store_url) as db, db.transaction():
        for t in TABLES:
            db.execute(f"DELETE FROM {t}")
        for t, rows in copy.items():
            if rows:
                db.executemany(f"INSERT INTO {t} VALUES ({', '.join('?' * len(rows[0]))})", rows)


def test_verify_finds_a_rollback_also_with_a_copy_kept_elsewhere_and_a_re_base_is_named(
        home: Path, app: typer.Typer, tmp_path: Path) -> None:
    _fill(home, 7)
    anchor = home / "audit-anchor.jsonl"
    assert [m.seq for m in Anchor(anchor).read().marks] == [0, 5]
    out = _run(app, "audit", "verify")
    assert "audit chain intact: 7 entries (1..7)" in out
    assert "reaches the anchor's newest mark (entry 5)" in out
    snapshot = _copy(home)
    _fill(home, 8, start=7)  # marks 10 and 15
    elsewhere = tmp_path / "other-host" / "anchor-copy.jsonl"
    elsewhere.parent.mkdir()
    shutil.copy(anchor, elsewhere)
    _put_back(home, snapshot)
    for extra in ((), ("--no-keyring",), ("--anchor", str(elsewhere))):
        out = _run(app, "audit", "verify", *extra, code=1)
        assert "AUDIT CHAIN BROKEN at entry 8 [tail.rolled_back]: the chain ends at entry 7, but the audit " \
               "anchor marked entry 15" in out, out
    # the home's own anchor lost too: the copy on the other host still tells
    anchor.unlink()
    out = _run(app, "audit", "verify")
    assert "audit chain intact" in out and "note: the tail was not checked: no audit anchor" in out
    _run(app, "audit", "verify", "--anchor", str(elsewhere), code=1)
    r = CliRunner().invoke(app, ["audit", "verify", "--anchor", str(tmp_path / "nowhere.jsonl")])
    assert r.exit_code == 1 and "error[anchor.missing]" in r.output and len(r.output.splitlines()) == 1

    # the store was put back on purpose (say, a point-in-time recovery): recorded, then verified
    shutil.copy(elsewhere, anchor)
    out = _run(app, "audit", "rebase-anchor")
    assert "the anchor marked entry 15, which the store's chain no longer holds" in out
    _run(app, "audit", "verify", code=1)  # asking changed nothing
    out = _run(app, "audit", "rebase-anchor", "--yes")
    assert "re-based at entry 8 (audit.rebase): it had marked entry 15" in out
    out = _run(app, "audit", "verify")
    assert "audit chain intact: 8 entries" in out
    assert "note: the audit anchor was re-based at entry 8 (audit.rebase); 4 earlier mark(s)" in out
    assert "no re-base is needed" in _run(app, "audit", "rebase-anchor")
    # and a silent rollback after it is found again
    after = _copy(home)
    _fill(home, 6, start=15)  # a mark at 13
    _put_back(home, after)
    assert "[tail.rolled_back]" in _run(app, "audit", "verify", code=1)


def test_export_checkpoint_starts_a_missing_anchor_and_a_required_one_must_be_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, app: typer.Typer) -> None:
    home = _make_home(tmp_path, monkeypatch,
                      'anchor = "../anchor-disk/pivault.anchor"\nanchor_required = true\n')
    anchor = (home / "../anchor-disk/pivault.anchor").resolve()
    _fill(home, 3)
    assert anchor.exists()  # a relative path is the home's
    anchor.unlink()
    out = _run(app, "audit", "verify", code=1)
    assert f"[anchor.missing]: no audit anchor at {home / '../anchor-disk/pivault.anchor'}" in out
    assert "entry 3" in _run(app, "audit", "export-checkpoint", "--out", str(tmp_path / "cp.json"))
    assert [m.seq for m in Anchor(anchor).read().marks] == [3]
    assert "reaches the anchor's newest mark (entry 3)" in _run(app, "audit", "verify")


def _residents(n: int) -> list[dict[str, str]]:
    got = (r for r in generate(n * 3 + 20, seed=83) if r["mobile"])
    return [{k: str(v) for k, v in r.items()} for r in itertools.islice(got, n)]


def test_restore_re_bases_the_anchor_in_the_open_and_a_later_rollback_is_found(
        home: Path, app: typer.Typer, tmp_path: Path) -> None:
    people = _residents(14)
    operator = local_operator("registration")
    with Vault.open(home, passphrase=PASS) as v:
        for p in people[:6]:
            v.put(p, ctx=operator)
    backup = tmp_path / "shelf" / "vault.backup"
    backup.parent.mkdir()
    _run(app, "backup", "--out", str(backup))
    with Vault.open(home, passphrase=PASS) as v:
        for p in people[6:]:
            v.put(p, ctx=operator)
    anchor = Anchor(home / "audit-anchor.jsonl")
    newest = max(m.seq for m in anchor.read().marks)
    # the data directory's store is lost; the backup goes back in
    store = Path(load(home).store_url.removeprefix("sqlite:///"))
    for f in store.parent.glob(store.name + "*"):
        f.unlink()
    out = _run(app, "restore", str(backup))
    assert f"the audit anchor had marked entry {newest}, past the restored chain: it was re-based at entry" \
           in out and "(backup.restore), signed" in out, out
    read = anchor.read()
    assert read.rebase is not None and read.rebase.operation == "backup.restore"
    out = _run(app, "audit", "verify")
    assert "audit chain intact" in out and "re-based at entry" in out and "(backup.restore)" in out
    after = _copy(home)
    with Vault.open(home, passphrase=PASS) as v:
        for p in people[6:]:
            v.put(p, ctx=operator)
    _put_back(home, after)
    assert "[tail.rolled_back]" in _run(app, "audit", "verify", code=1)
    # the data directory lost whole: the new home's anchor starts at the restored chain's checkpoint
    new_home = tmp_path / "new-home"
    out = _run(app, "restore", str(backup), "--home", str(new_home), "--new-home",
               "--keyring", str(load(home).keyring_path))
    assert "the audit anchor starts at entry" in out, out
    out = _run(app, "audit", "verify", "--home", str(new_home))
    assert "audit chain intact" in out and "reaches the anchor's newest mark" in out, out


def test_the_node_chainer_of_pivault_serve_marks_the_homes_anchor(
        home: Path, app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `pivault serve --workers N` the workers only write ahead; the chainer process checkpoints,
    so it is the one that marks the anchor (here in a thread, with the same entry point)."""
    import threading

    from pivault.detect.setup import run_node_chainer

    stop = threading.Event()
    chainer = threading.Thread(target=run_node_chainer, args=(home, stop), daemon=True)
    chainer.start()
    try:
        monkeypatch.setenv("PIVAULT_AUDIT_CHAIN", "node")  # what serve gives its workers
        cfg = load(home)
        keyring = Keyring.open(cfg.keyring_path, PassphraseProvider(PASS))
        with Database(cfg.store_url) as db:
            guard = build_guard(db, keyring, keyring_path=cfg.keyring_path, home=home)
            assert guard.audit_log.journal.chain == "node"
            ctx = AccessContext(principal="officer-17", role="officer", purpose="case_investigation")
            for i in range(12):
                guard.audit_log.record(AuditEvent.of(ctx, "get", "ok", [f"r_{i:026d}"]))
            assert guard.audit_log.flush(10)
            guard.close()
    finally:
        stop.set()
        chainer.join(30)
    assert not chainer.is_alive()
    marks = [m.seq for m in Anchor(home / "audit-anchor.jsonl").read().marks]
    assert marks[0] == 0 and marks[-1] >= 5, marks
    assert f"reaches the anchor's newest mark (entry {marks[-1]})" in _run(app, "audit", "verify")
