"""An older backup put on the shelf in a newer one's place: the restore says what it is restoring.

Whoever can write the backup shelf cannot forge a backup, but can rename an
older genuine one over the newest. Restored, it rolls the vault further
back than the operator meant, and the restore said nothing but the
backup's id: not when it was taken, nor that the vault had taken newer
backups since. The record-key store keeps the sealing key of every data
backup with the time it was taken, so the restore knows: it names the
backup's time and warns of the newer ones (text, --json, the audit entry).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "vault"))

from vault_support import cheap_cli_env, make_residents
from vault_support import run_cli as run


def _json(res: Any) -> Any:
    return json.loads(res.stdout)


def test_an_older_backup_renamed_over_the_newest_is_named_for_what_it_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = cheap_cli_env(tmp_path, monkeypatch, "")
    home = tmp_path / "home"
    run(env, "init", "--home", str(home), "--expected-population", "1000")
    people = make_residents(8, seed=44)
    for part, rows in (("a", people[:4]), ("b", people[4:])):
        src = tmp_path / f"residents-{part}.csv"
        src.write_text("name,id_number,mobile,address\n" + "".join(
            f"{p['name']},{p['id_number']},{p['mobile']},{p['address']}\n" for p in rows), encoding="utf-8")
        run(env, "import", str(src), "--home", str(home))
        out = _json(run(env, "backup", "--out", str(tmp_path / "shelf" / f"vault-{part}.pvb"),
                        "--home", str(home), "--json"))
        if part == "a":
            older = out["backup_id"]
        else:
            newest = out["backup_id"]
    # the intruder puts the older backup in the newest one's place, then wipes the store
    shelf = tmp_path / "shelf"
    kept_apart = tmp_path / "kept-apart.pvb"  # the operator's own copy of the newest
    shutil.copyfile(shelf / "vault-b.pvb", kept_apart)
    shutil.copyfile(shelf / "vault-a.pvb", shelf / "vault-b.pvb")
    with sqlite3.connect(home / "vault.db") as db:
        db.execute("DELETE FROM blind_index")
        db.execute("DELETE FROM records")

    res = run(env, "restore", str(shelf / "vault-b.pvb"), "--quarantine", "--home", str(home))
    first = res.stdout.splitlines()[0]
    assert first.startswith(f"restored backup {older} (taken 20") and ": 4 records" in first
    warning = f"warning: this vault took 1 data backups after this one (the newest, {newest}, at 20"
    assert warning in res.stdout
    shown = _json(run(env, "audit", "show", "--home", str(home), "--json"))
    entry = [e for e in shown if e["operation"] == "backup.restore"][-1]
    assert entry["detail"]["newer_backups"] == 1 and entry["detail"]["newest_backup"] == newest
    assert entry["detail"]["taken"].startswith("20")

    # the newest backup itself, from the operator's own copy: nothing newer to warn of
    with sqlite3.connect(home / "vault.db") as db:
        db.execute("DELETE FROM records")
    out = _json(run(env, "restore", str(kept_apart), "--quarantine", "--home", str(home), "--json"))
    assert out["backup_id"] == newest and out["newer_backups"] == [] and out["counts"]["records"] == 8
    res = run(env, "restore", str(kept_apart), "--quarantine", "--home", str(home))
    assert "warning: this vault took" not in res.stdout
