"""An erasure seen from the other side of the door, on both backends.

``erase`` destroys the record's key (in the record-key store, committed at
once) before it deletes the record's row (in the data store): two databases,
no transaction spanning both. Between the two, and for good if the erasing
process dies between them, the row is there and its key is not. The resident
is erased from that moment: every reader is told "not found", as after the
erasure, never handed an integrity error; a lookup is not broken by it; the
ID number can be stored again; and erasing the record once more finishes the
job. An import that updates the holders of its rows' numbers locks them first:
a holder erased meanwhile stays erased, and the row becomes a new record.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from vault_support import PASSPHRASE, make_residents

from pivault.errors import NotFoundError
from pivault.keys.shred import RecordKeyStore, ShreddingRecordStore
from pivault.policy import AccessContext
from pivault.store.db import Database
from pivault.vault import Vault


def _keys(vault: Vault) -> RecordKeyStore:
    assert isinstance(vault.store, ShreddingRecordStore)
    return vault.store.keys


def _assert_erased(vault: Vault, ctx: AccessContext, rid: str, person: dict[str, str]) -> None:
    """What every reader sees of an erased resident: nothing, and no error but "not found"."""
    with pytest.raises(NotFoundError):
        vault.get(rid, ctx=ctx)
    with pytest.raises(NotFoundError):
        vault.subject_copy(rid, ctx=ctx)
    assert vault.find(id_number=person["id_number"], ctx=ctx) == []
    assert vault.find(mobile=person["mobile"], ctx=ctx) == []
    born = f"{person['id_number'][6:10]}-{person['id_number'][10:12]}-{person['id_number'][12:14]}"
    assert vault.find(name=person["name"], birth_date=born, ctx=ctx) == []
    assert vault.region_counts([rid], ctx=ctx) == {}


def test_a_reader_during_an_erasure_is_told_not_found(vault: Vault, ctx: AccessContext) -> None:
    people = make_residents(2, seed=31)
    rid, other = (vault.put(dict(p), ctx=ctx) for p in people)
    shredded, finish = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def erase() -> None:
        own = Vault(Database(vault.db.url.raw), vault.keyring)
        keys = _keys(own)
        delete = keys.delete_records

        def shred_then_wait(ids: Sequence[str], **kw: Any) -> int:
            n = delete(ids, **kw)  # committed: the record is unreadable from here on
            shredded.set()
            assert finish.wait(60)
            return n

        keys.delete_records = shred_then_wait  # type: ignore[method-assign]
        try:
            own.erase(rid, ctx=ctx)
        except BaseException as exc:  # reported to the test
            errors.append(exc)
            shredded.set()
        finally:
            own.close()

    t = threading.Thread(target=erase)
    t.start()
    try:
        assert shredded.wait(60) and not errors
        # the key is gone, the row not yet: another process reads meanwhile
        _assert_erased(vault, ctx, rid, people[0])
        # a resident beside it is unaffected
        assert [r["record_id"] for r in vault.find(id_number=people[1]["id_number"], ctx=ctx)] == [other]
    finally:
        finish.set()
        t.join(60)
    assert not t.is_alive() and errors == []
    _assert_erased(vault, ctx, rid, people[0])
    assert vault.store.count() == 1


_DIE_AFTER_SHRED = textwrap.dedent("""
    import os, signal, sys
    from pivault.crypto import Argon2Params, Keyring, PassphraseProvider
    from pivault.policy import local_operator
    from pivault.store.db import Database
    from pivault.store.records import RecordStore
    from pivault.vault import Vault

    keyring_path, url, passphrase, rid = sys.argv[1:]
    kr = Keyring.open(keyring_path, PassphraseProvider(passphrase, Argon2Params(1, 8, 1)))
    v = Vault(Database(url), kr)

    def die(self, ids):  # the record's key is destroyed and committed; its row is next
        os.kill(os.getpid(), signal.SIGKILL)

    RecordStore.delete_many = die
    v.erase(rid, ctx=local_operator("erase"))
    print("erased")
""")


def test_an_erasure_killed_after_the_shred_leaves_the_resident_erased(
        vault: Vault, ctx: AccessContext, reveal: AccessContext, tmp_path: Path) -> None:
    people = make_residents(2, seed=32)
    rid, other = (vault.put(dict(p), ctx=ctx) for p in people)
    script = tmp_path / "erase_child.py"
    script.write_text(_DIE_AFTER_SHRED)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.run([sys.executable, str(script), str(vault.keyring.path), vault.db.url.raw,
                            PASSPHRASE, rid], env=env, capture_output=True, text=True, timeout=120)
    assert child.returncode == -9 and "erased" not in child.stdout, child.stderr[-2000:]
    # what the killed erasure left: the row, without any key
    assert vault.store.count() == 2 and _keys(vault).any_key_many([rid]) == {}
    _assert_erased(vault, ctx, rid, people[0])
    with pytest.raises(NotFoundError):
        vault.update(rid, {"address": "北京市东城区东华门街道1号"}, ctx=ctx)
    # the resident can be stored again, and is then the one holder of the number
    again = vault.put(dict(people[0]), ctx=ctx)
    got: list[dict[str, Any]] = vault.find(id_number=people[0]["id_number"], ctx=reveal)
    assert [r["record_id"] for r in got] == [again] and got[0]["name"] == people[0]["name"]
    # the erasure asked again finishes: the row is gone, nothing else is touched
    vault.erase(rid, ctx=ctx)
    assert vault.store.count() == 2
    assert vault.db.query_one("SELECT COUNT(*) FROM blind_index WHERE record_id = ?", (rid,)) == (0,)
    assert {r["record_id"] for r in (vault.get(other, ctx=ctx), vault.get(again, ctx=ctx))} == {other, again}


# PostgreSQL only: SQLite runs one writer at a time, so there an erasure waits for the chunk
@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_an_import_updating_a_resident_erased_meanwhile_keeps_the_row(
        vault: Vault, ctx: AccessContext, reveal: AccessContext, tmp_path: Path) -> None:
    """``--on-duplicate update``: the chunk finds the holder of a row's ID number, and before it
    writes, another process erases that holder. The row is then a new resident, stored: not an
    update of a record that is gone (lost, though counted), nor an integrity error."""
    import csv

    people = make_residents(3, seed=33)
    held = vault.put(dict(people[0]), ctx=ctx)
    corrected = [dict(people[0], address="北京市东城区东华门街道7号"), *people[1:]]
    src = tmp_path / "update.csv"
    with src.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(people[0]))
        w.writeheader()
        w.writerows(corrected)
    find_holders = vault.ids_by_id_number
    erased: list[bool] = []

    def erase_after_the_check(wanted: Any) -> dict[str, str]:
        found = find_holders(wanted)
        if held in found.values() and not erased:
            # another process erases the holder now, before the chunk writes
            other = Vault(Database(vault.db.url.raw), vault.keyring)
            try:
                other.erase(held, ctx=ctx)
            finally:
                other.close()
            erased.append(True)
        return found

    vault.ids_by_id_number = erase_after_the_check  # type: ignore[method-assign]
    try:
        summary = vault.import_files([src], on_duplicate="update", workers=0)
    finally:
        del vault.ids_by_id_number
    assert erased, "the chunk never looked for the holder: no race was run"
    f = summary.files[0]
    assert summary.reconciles and f.read == 3
    with pytest.raises(NotFoundError):
        vault.get(held, ctx=ctx)
    # the resident of the row is in the vault, with the row's values: it was not lost
    got = vault.find(id_number=people[0]["id_number"], ctx=reveal)
    assert len(got) == 1 and got[0]["record_id"] != held
    assert got[0]["address"] == corrected[0]["address"]
    assert (f.imported, f.updated) == (3, 0)
    assert vault.store.count() == 3


_KILL_AT_SHRED_CLI = textwrap.dedent("""
    import os, signal, sys
    from pivault.store.records import RecordStore

    def die(self, ids):  # the record's key is destroyed and committed; its row is next
        os.kill(os.getpid(), signal.SIGKILL)

    RecordStore.delete_many = die
    from pivault.cli.main import main
    sys.argv = ["pivault", "erase", sys.argv[1], "--yes"]
    main()
""")


def test_an_erasure_killed_after_the_shred_is_audited_and_finished_at_the_next_opening(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``pivault erase`` killed between the shred (committed in the record-key store) and the
    transaction that deletes the row and writes the audit entry: the trail had no word of an
    erasure whose key was gone. The shred keeps who asked; the next opening of the vault
    deletes the row and writes the entry in their name, once."""
    import json
    import sqlite3

    from vault_support import cheap_cli_env, run_cli

    env = cheap_cli_env(tmp_path, monkeypatch, str(tmp_path / "home"))
    run_cli(env, "init", "--expected-population", "1000")
    people = make_residents(2, seed=33)
    src = tmp_path / "in.csv"
    src.write_text("姓名,身份证号,手机\n" + "".join(f"{p['name']},{p['id_number']},{p['mobile']}\n"
                                               for p in people), encoding="utf-8")
    run_cli(env, "import", str(src))
    found = json.loads(run_cli(env, "find", "--id-number", people[0]["id_number"], "--json").stdout)
    rid = found[0]["record_id"]

    full = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.run([sys.executable, "-c", _KILL_AT_SHRED_CLI, rid], env=full, capture_output=True,
                           text=True, timeout=120)
    assert child.returncode == -9, child.stderr[-2000:]
    store = Path(env["PIVAULT_HOME"]) / "vault.db"
    with sqlite3.connect(store) as raw:  # what the killed erasure left, read without opening the vault
        assert raw.execute("SELECT COUNT(*) FROM records WHERE record_id = ?", (rid,)).fetchone() == (1,)
        assert raw.execute("SELECT COUNT(*) FROM audit_entries WHERE operation = 'erase'").fetchone() == (0,)

    # the next command that opens the vault (a lookup of someone else) finishes it: the row
    # gone, the entry in the trail
    other = json.loads(run_cli(env, "find", "--id-number", people[1]["id_number"], "--json").stdout)
    assert len(other) == 1
    trail = json.loads(run_cli(env, "audit", "show", "--operation", "erase", "--json").stdout)
    assert [(e["record_ids"], e["outcome"], e["role"]) for e in trail] == [([rid], "ok", "operator")]
    assert trail[0]["principal"].startswith("local:")
    with sqlite3.connect(store) as raw:
        assert raw.execute("SELECT COUNT(*) FROM records WHERE record_id = ?", (rid,)).fetchone() == (0,)
        assert raw.execute("SELECT COUNT(*) FROM blind_index WHERE record_id = ?", (rid,)).fetchone() == (0,)
    # once: a further opening finds nothing left to finish
    assert json.loads(run_cli(env, "find", "--id-number", people[0]["id_number"], "--json").stdout) == []
    again = json.loads(run_cli(env, "audit", "show", "--operation", "erase", "--json").stdout)
    assert len(again) == 1
    assert run_cli(env, "audit", "verify").stdout.startswith("audit chain intact")
