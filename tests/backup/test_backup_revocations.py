"""A token revoked or suspended after the backup does not work again once the backup is restored.

The usual ransom story: a credential is stolen, found and revoked (or the
detector suspends it), then the intruder wipes the store. The backup was
taken before the revocation: restored as it was, the thief's token was
active again. A restore that sets the damaged store aside keeps what that
store shows (its tokens table, its trail past the backup's head: either,
since the intruder may have changed one); one into an empty store, which
cannot know, says how many tokens are active as the backup had them.
Both backends, and through the command line.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest
from backup_support import drop_quarantine
from keys_support import AuditingGuard, audited_vault, ctx, put_all, residents

from pivault.audit import entries
from pivault.backup import create_backup, load_verify_key, restore
from pivault.crypto import Keyring
from pivault.keys.attach import open_record_key_store
from pivault.keys.events import audit_events
from pivault.policy.tokens import AuthError, TokenStore
from pivault.store.db import Database

sys.path.insert(0, str(Path(__file__).parent.parent / "vault"))

from vault_support import cheap_cli_env
from vault_support import run_cli as run


@pytest.mark.parametrize("intruder_clears", ["tokens table", "trail"])
def test_revocations_and_suspensions_after_the_backup_survive_a_quarantine_restore(
        store_url: str, keyring: Keyring, tmp_path: Path, intruder_clears: str) -> None:
    audit_dir = keyring.path.parent / f"{keyring.vault_id}.audit"
    db = Database(store_url)
    vault, _ = audited_vault(db, keyring, audit_dir)
    assert isinstance(vault.guard, AuditingGuard)
    put_all(vault, residents(5, seed=71))
    tokens = TokenStore(db)
    made = {name: tokens.create(name, "officer", ["identity_verification"], ttl_seconds=86400)
            for name in ("stolen", "flagged", "honest")}
    data = create_backup(db, keyring, tmp_path / "shelf" / "vault.pvb")
    head = int(data.manifest["audit_head"]["seq"])

    # after the backup: the stolen token revoked by an operator, the flagged one suspended by the detector
    op = ctx("administration")
    stolen, flagged = made["stolen"][0].token_id, made["flagged"][0].token_id
    assert tokens.revoke(stolen)
    vault.guard.audit(op, "token.revoke", [stolen], "ok")
    assert tokens.suspend(flagged, "read a canary record")
    from pivault.audit import AuditEvent

    vault.guard.log.append(AuditEvent.of(op, "token.suspend", "ok", detail={"token": flagged}))
    later = tokens.create("later", "officer", ["identity_verification"], ttl_seconds=86400)[0].token_id
    # the wipe; and the intruder covers one of the two tracks
    db.execute("DELETE FROM blind_index")
    db.execute("DELETE FROM records")
    if intruder_clears == "tokens table":
        db.execute("UPDATE tokens SET revoked_at = NULL, suspended_at = NULL, suspended_reason = NULL")
    else:
        db.execute("DELETE FROM audit_entries WHERE seq > ?", (head,))
    vault.close()

    with open_record_key_store(keyring) as keys:
        report = restore(data.path, store_url, load_verify_key(keyring.path), vault_id=keyring.vault_id,
                         quarantine=True, salvage=True, record_keys=keys, keyring=keyring,
                         events=lambda d: audit_events(d, keyring, ctx("restore"), audit_dir))
    try:
        assert report.tokens_kept_revoked == [stolen]
        assert report.tokens_kept_suspended == [flagged]
        assert report.tokens_unchecked is None
        with Database(store_url) as restored:
            store = TokenStore(restored)
            for name, code in (("stolen", "auth.revoked"), ("flagged", "auth.suspended")):
                with pytest.raises(AuthError) as refused:
                    store.verify(made[name][1])
                assert refused.value.code == code
            assert store.verify(made["honest"][1]).principal == "honest"
            assert store.get(later) is None
            last = next(iter(entries(restored, limit=1, newest=True)))
            assert last.operation == "backup.restore"
            assert last.detail["tokens_kept_revoked"] == [stolen]
            assert last.detail["tokens_kept_suspended"] == [flagged]
    finally:
        drop_quarantine(store_url, report.quarantined)


def test_a_restore_into_an_empty_store_says_how_many_tokens_it_could_not_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = cheap_cli_env(tmp_path, monkeypatch, "")
    home = tmp_path / "home"
    run(env, "init", "--home", str(home), "--expected-population", "1000")
    token = run(env, "token", "create", "--principal", "alice", "--role", "officer", "--home",
                str(home)).stdout.strip().splitlines()[-1]
    token_id = token.split("_")[1]
    run(env, "token", "create", "--principal", "bob", "--role", "officer", "--home", str(home))
    backup = tmp_path / "shelf" / "vault.pvb"
    run(env, "backup", "--out", str(backup), "--home", str(home))
    run(env, "token", "revoke", token_id, "--home", str(home))

    # the intruder wipes the store and puts the revocation back as it was before, in the table only
    with sqlite3.connect(home / "vault.db") as db:
        db.execute("DELETE FROM records")
        db.execute("UPDATE tokens SET revoked_at = NULL")
    res = run(env, "restore", str(backup), "--quarantine", "--home", str(home))
    assert f"1 tokens revoked after the backup stay revoked: {token_id}" in res.stdout
    listed = run(env, "token", "list", "--all", "--home", str(home)).stdout
    assert "revoked" in listed

    # into a store emptied of everything, nothing after the backup can be seen: said so
    with sqlite3.connect(home / "vault.db") as db:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                          " AND name NOT LIKE 'sqlite_%'")]
        for name in names:
            if name not in ("schema_migrations", "vault_meta", "keyring_seen"):
                db.execute(f'DELETE FROM "{name}"')
    out = json.loads(run(env, "restore", str(backup), "--home", str(home), "--json").stdout)
    assert out["tokens_unchecked"] == 2 and out["tokens_kept_revoked"] == []
    res = run(env, "restore", str(backup), "--quarantine", "--home", str(home))
    assert "tokens revoked after the backup stay revoked" not in res.stdout
