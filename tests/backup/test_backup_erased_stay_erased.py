"""An erasure the audit trail records is never undone by putting record keys back, unless named.

`pivault keys restore FILE` refills a record-key store from a key backup. A
key backup taken before an erasure still holds the erased resident's key:
put back with the rest, it made the resident readable again as soon as an
older data backup was restored, and neither command said so. The trail
records every erasure made through the door, so a plain `keys restore`
leaves those keys out and says how many; `--only RECORD_ID` (a malicious
erase, the ransom drill) still puts one back, named in the trail.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from backup_support import drop_quarantine
from keys_support import audited_vault, ctx, put_all, residents

from pivault.backup import (
    backup_record_keys,
    create_backup,
    erased_on_record,
    load_verify_key,
    restore,
    restore_record_keys,
)
from pivault.crypto import Keyring
from pivault.errors import NotFoundError
from pivault.keys.attach import open_record_key_store
from pivault.store.db import Database

sys.path.insert(0, str(Path(__file__).parent.parent / "vault"))

from vault_support import cheap_cli_env, make_residents
from vault_support import run_cli as run


def test_a_key_of_an_audited_erasure_is_left_out_unless_named(store_url: str, keyring: Keyring,
                                                               tmp_path: Path) -> None:
    audit_dir = keyring.path.parent / f"{keyring.vault_id}.audit"
    db = Database(store_url)
    vault, _ = audited_vault(db, keyring, audit_dir)
    ids = put_all(vault, residents(12, seed=29))
    data = create_backup(db, keyring, tmp_path / "shelf" / "vault.pvb")
    with open_record_key_store(keyring) as keys:
        key_backup = backup_record_keys(keys, keyring, tmp_path / "keyshelf" / "keys.pvb")
    vault.erase(ids[0], ctx=ctx("erasure"))
    assert erased_on_record(db) == {ids[0]}
    verify_key = load_verify_key(keyring.path)

    told: list[dict[str, object]] = []
    with open_record_key_store(keyring) as keys:
        res = restore_record_keys(key_backup.path, keys, verify_key, erased=erased_on_record(db),
                                  events=lambda op, out, d: told.append(dict(d)))
        assert (res.added, res.left_out_erased) == (0, [ids[0]])
        assert told[-1]["erased_left_out"] == 1
        assert keys.refs(ids[0]) == []
    vault.close()

    # the older data backup restored over the store: the erased resident is removed again
    with open_record_key_store(keyring) as keys:
        report = restore(data.path, store_url, verify_key, vault_id=keyring.vault_id, quarantine=True,
                         record_keys=keys, keyring=keyring)
    drop_quarantine(store_url, report.quarantined)
    assert report.erased_since_backup == 1
    from keys_support import open_vault

    v = open_vault(store_url, keyring)
    try:
        with pytest.raises(NotFoundError):
            v.get(ids[0], ctx=ctx())
        assert v.get(ids[1], ctx=ctx()) is not None
    finally:
        v.close()

    # named, the key goes back: undoing that erasure is asked for, and the trail says which
    with open_record_key_store(keyring) as keys:
        res = restore_record_keys(key_backup.path, keys, verify_key, only_records=[ids[0]],
                                  erased={ids[0]}, events=lambda op, out, d: told.append(dict(d)))
        assert (res.added, res.left_out_erased) == (1, [])
    assert told[-1]["records"] == [ids[0]]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return cheap_cli_env(tmp_path, monkeypatch, "")


def _json(res: Any) -> Any:
    return json.loads(res.stdout)


def test_keys_restore_then_an_older_backup_does_not_bring_an_erased_resident_back(
        env: dict[str, str], tmp_path: Path) -> None:
    home = tmp_path / "home"
    info = _json(run(env, "init", "--home", str(home), "--expected-population", "1000", "--json"))
    people = make_residents(6, seed=33)
    src = tmp_path / "residents.csv"
    src.write_text("name,id_number,mobile,address\n" + "".join(
        f"{p['name']},{p['id_number']},{p['mobile']},{p['address']}\n" for p in people), encoding="utf-8")
    run(env, "import", str(src), "--home", str(home))
    data, keys = tmp_path / "shelf" / "vault.pvb", tmp_path / "keyshelf" / "keys.pvb"
    run(env, "backup", "--out", str(data), "--home", str(home))
    run(env, "keys", "backup", "--out", str(keys), "--home", str(home))
    erased = _json(run(env, "find", "--id-number", people[0]["id_number"], "--home", str(home),
                       "--json"))[0]["record_id"]
    run(env, "erase", erased, "--yes", "--home", str(home))

    # the record-key store is lost: refilled from the key backup, all but the erased resident's key
    store = Path(info["keyring"] + ".recordkeys")
    store.unlink()
    out = _json(run(env, "keys", "restore", str(keys), "--home", str(home), "--json"))
    assert out == {"keys_added": 5, "erased_left_out": 1, "erased_left_out_record_ids": [erased]}
    # run again: nothing new, and the erased resident's key still left out
    res = run(env, "keys", "restore", str(keys), "--home", str(home))
    assert "0 record keys put back" in res.stdout and "1 keys of records whose erasure" in res.stdout
    assert erased in res.stdout and "--only" in res.stdout

    # then the store is wiped and the older data backup restored: the resident stays erased
    with sqlite3.connect(home / "vault.db") as db:
        db.execute("DELETE FROM blind_index")
        db.execute("DELETE FROM records")
    out = _json(run(env, "restore", str(data), "--quarantine", "--home", str(home), "--json"))
    assert out["erased_since_backup"] == 1
    run(env, "get", erased, "--home", str(home), code=1)
    assert _json(run(env, "find", "--id-number", people[0]["id_number"], "--home", str(home), "--json")) == []
    for p in people[1:]:
        assert len(_json(run(env, "find", "--id-number", p["id_number"], "--home", str(home), "--json"))) == 1
    run(env, "audit", "verify", "--home", str(home))


def test_an_older_backup_restored_does_not_bring_back_an_erased_residents_rejected_rows(
        store_url: str, keyring: Keyring, tmp_path: Path) -> None:
    """A resident's row an import rejected is sealed under the field key, not a record key: the
    erasure deletes it from the store, and a data backup taken before must not put it back."""
    import csv

    from keys_support import open_vault

    from pivault.vault import Vault

    a, b, c = make_residents(3, seed=314)
    bad, mended = tmp_path / "bad.csv", tmp_path / "mended.csv"
    rejected = [[p["name"], p["id_number"], "12345"] for p in (a, b)]
    good = [[p["name"], p["id_number"], p["mobile"]] for p in (a, c)]
    for path, rows in ((bad, rejected), (mended, good)):
        with path.open("w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows([["name", "id_number", "mobile"], *rows])
    db = Database(store_url)
    vault = Vault.initialise(db, keyring)
    vault.import_files([bad])
    vault.import_files([mended])
    (rid,) = [r["record_id"] for r in vault.find(id_number=a["id_number"], ctx=ctx())]
    data = create_backup(db, keyring, tmp_path / "shelf" / "vault.pvb")
    vault.erase(rid, ctx=ctx("erasure"))
    assert a["id_number"] not in repr(vault.rejects(ctx=ctx(), limit=None))
    vault.close()

    with open_record_key_store(keyring) as keys:
        report = restore(data.path, store_url, load_verify_key(keyring.path), vault_id=keyring.vault_id,
                         quarantine=True, record_keys=keys, keyring=keyring)
    drop_quarantine(store_url, report.quarantined)
    assert report.erased_since_backup == 1
    v = open_vault(store_url, keyring)
    try:
        shown = repr(v.rejects(ctx=ctx(), limit=None))
        assert a["id_number"] not in shown and a["name"] not in shown
        assert b["id_number"] in shown  # not erased: restored as it was
    finally:
        v.close()
