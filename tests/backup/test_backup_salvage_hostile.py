"""A ransom restore whose damaged store's audit trail was tampered with by the intruder. Both backends.

`restore --quarantine` salvages the audit entries the damaged store wrote
after the backup, its chain head included, so that the wipe stays on the
record. The damaged store is the intruder's to change: one row planted past
the chain head, or one byte of the head's sealed key, made every salvage
fail, and with it the restore it is part of (``audit.unavailable``,
``audit.head``), however often it was run. Now the salvage takes only what
the head vouches for, only from a head the keyring opens, and a row the
restored trail refuses undoes the salvage, never the restore; the report
and the ``backup.restore`` entry say why nothing was salvaged.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from backup_support import drop_quarantine
from keys_support import audited_vault, ctx, put_all, residents

from pivault.audit import entries, verify
from pivault.backup import create_backup, load_verify_key, restore
from pivault.crypto import Keyring
from pivault.keys.attach import open_record_key_store
from pivault.keys.events import audit_events
from pivault.store.db import Database
from pivault.vault import Vault

sys.path.insert(0, str(Path(__file__).parent.parent / "vault"))

from vault_support import cheap_cli_env, make_residents
from vault_support import run_cli as run


def _plant_past_head(db: Database) -> None:
    """A copy of the newest entry, one past the head: the head does not vouch for it."""
    head = db.query_one("SELECT seq FROM audit_head WHERE id = 1")
    assert head is not None
    cols = ("seq", "ts_us", "principal", "role", "purpose", "operation", "record_ids", "count", "outcome",
            "request_id", "token_id", "source", "detail", "mac")
    listed = ", ".join(cols)
    db.execute(f"INSERT INTO audit_entries ({listed}) SELECT seq + 1, {listed.split(', ', 1)[1]}"
               " FROM audit_entries WHERE seq = ?", (int(head[0]),))


def _alter_head(db: Database) -> None:
    """The head moved on by one, its sealed key replaced: no keyring opens it."""
    db.execute("UPDATE audit_head SET seq = seq + 1, key_ct = ? WHERE id = 1", (bytes(78),))


def _null_a_column(db: Database) -> None:
    """An entry after the backup whose principal the restored schema refuses (the column made nullable)."""
    if db.dialect == "postgresql":
        db.execute("ALTER TABLE audit_entries ALTER COLUMN principal DROP NOT NULL")
    else:
        cols = [str(r[1]) for r in db.query("PRAGMA table_info(audit_entries)")]
        db.execute(f"CREATE TABLE loose ({', '.join(cols)})")
        db.execute("INSERT INTO loose SELECT * FROM audit_entries")
        db.execute("DROP TABLE audit_entries")
        db.execute("ALTER TABLE loose RENAME TO audit_entries")
    head = db.query_one("SELECT seq FROM audit_head WHERE id = 1")
    assert head is not None
    db.execute("UPDATE audit_entries SET principal = NULL WHERE seq = ?", (int(head[0]),))


TAMPERING: dict[str, tuple[Callable[[Database], None], bool]] = {
    # name: (what the intruder does, whether the genuine entries are still salvaged)
    "entry planted past the head": (_plant_past_head, True),
    "head key altered": (_alter_head, False),
    "entry the schema refuses": (_null_a_column, False),
}


@pytest.mark.parametrize("tampering", sorted(TAMPERING))
def test_a_tampered_trail_in_the_damaged_store_does_not_block_the_restore(
        store_url: str, keyring: Keyring, tmp_path: Path, tampering: str) -> None:
    tamper, salvaged = TAMPERING[tampering]
    audit_dir = keyring.path.parent / f"{keyring.vault_id}.audit"
    db = Database(store_url)
    vault, verifier = audited_vault(db, keyring, audit_dir)
    ids = put_all(vault, residents(10, seed=61))
    data = create_backup(db, keyring, tmp_path / "shelf" / "vault.pvb")
    for rid in ids[:3]:  # read after the backup: entries the damaged store holds past it
        vault.get(rid, ctx=ctx("after-backup"))
    after = [e.seq for e in entries(db, after_seq=data.manifest["audit_head"]["seq"])]
    assert len(after) == 3
    db.execute("DELETE FROM blind_index")
    db.execute("DELETE FROM records")
    tamper(db)
    vault.close()

    with open_record_key_store(keyring) as keys:
        report = restore(data.path, store_url, load_verify_key(keyring.path), vault_id=keyring.vault_id,
                         quarantine=True, salvage=True, record_keys=keys, keyring=keyring,
                         events=lambda d: audit_events(d, keyring, ctx("restore"), audit_dir))
    try:
        assert report.quarantined
        assert report.salvaged_audit_entries == (3 if salvaged else 0)
        assert (report.salvage_refused is None) is salvaged
        restored = Database(store_url)
        v = Vault(restored, keyring)
        try:
            assert v.store.count() == 10
            assert v.get(ids[5], ctx=ctx())["name"]
            trail = list(entries(restored, after_seq=data.manifest["audit_head"]["seq"]))
            assert [e.seq for e in trail[:-1]] == (after if salvaged else [])
            assert trail[-1].operation == "backup.restore"
            assert ("salvage_refused" in trail[-1].detail) is not salvaged
            got = verify(restored, verifier, keyring=keyring)
            assert got.ok, got.message
        finally:
            getattr(v.store, "close", lambda: None)()
            restored.close()
    finally:
        drop_quarantine(store_url, report.quarantined)


def test_the_command_line_restores_and_says_why_nothing_was_salvaged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = cheap_cli_env(tmp_path, monkeypatch, "")
    home = tmp_path / "home"
    run(env, "init", "--home", str(home), "--expected-population", "1000")
    people = make_residents(5, seed=62)
    src = tmp_path / "residents.csv"
    src.write_text("name,id_number,mobile,address\n" + "".join(
        f"{p['name']},{p['id_number']},{p['mobile']},{p['address']}\n" for p in people), encoding="utf-8")
    run(env, "import", str(src), "--home", str(home))
    backup = tmp_path / "shelf" / "vault.pvb"
    run(env, "backup", "--out", str(backup), "--home", str(home))
    run(env, "stats", "--home", str(home))
    with Database(f"sqlite:///{home / 'vault.db'}") as db:
        db.execute("DELETE FROM blind_index")
        db.execute("DELETE FROM records")
        _alter_head(db)
    res = run(env, "restore", str(backup), "--quarantine", "--home", str(home))
    assert "were not salvaged" in res.stdout and "does not open under the keyring" in res.stdout
    found = json.loads(run(env, "find", "--id-number", people[0]["id_number"], "--home", str(home),
                           "--json").stdout)
    assert len(found) == 1
    run(env, "audit", "verify", "--home", str(home))
