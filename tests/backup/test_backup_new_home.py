"""`pivault restore FILE --home DIR --new-home`: the data directory (or the whole machine) was lost.

Everything goes through the command line as an operator would type it: init,
import, backup, the loss, the rebuild into a new directory, then find/get,
`audit verify` and the vault id.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

sys.path.insert(0, str(Path(__file__).parent.parent / "vault"))

from vault_support import cheap_cli_env, make_residents
from vault_support import run_cli as run


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return cheap_cli_env(tmp_path, monkeypatch, "")


def _json(res: Result) -> Any:
    return json.loads(res.stdout)


def _setup(env: dict[str, str], tmp_path: Path, home: Path, store: str | None) -> dict[str, Any]:
    """init, import six residents, back up (data and record keys); what the test needs to compare."""
    args = ["init", "--home", str(home), "--expected-population", "1000", "--json"]
    info = _json(run(env, *args, *(["--store", store] if store else [])))
    people = make_residents(6, seed=81)
    src = tmp_path / "residents.csv"
    src.write_text("name,id_number,mobile,address\n" + "".join(
        f"{p['name']},{p['id_number']},{p['mobile']},{p['address']}\n" for p in people), encoding="utf-8")
    assert _json(run(env, "import", str(src), "--home", str(home), "--json"))["imported"] == 6
    before = {}
    for p in people:
        found = _json(run(env, "find", "--home", str(home), "--id-number", p["id_number"], "--reveal",
                          "--json"))
        assert len(found) == 1
        before[p["id_number"]] = found[0]
    backup = tmp_path / "shelf" / "vault.pvb"
    out = _json(run(env, "backup", "--out", str(backup), "--home", str(home), "--json"))
    rk = tmp_path / "keyshelf" / "record-keys.pvb"
    run(env, "keys", "backup", "--out", str(rk), "--home", str(home))
    run(env, "audit", "verify", "--home", str(home))
    keyring = Path(info["keyring"])
    signing = json.loads(keyring.with_name(keyring.name + ".backup-signing.json").read_text())
    return {"info": info, "people": people, "before": before, "backup": backup, "record_keys": rk,
            "public_key": signing["public"], "fingerprint": out["signing_key"], "keyring": keyring}


def _check_restored(env: dict[str, str], home: Path, s: dict[str, Any]) -> None:
    """The same residents, by lookup and by id; the trail verifies; the vault id is the original."""
    for p in s["people"]:
        found = _json(run(env, "find", "--home", str(home), "--id-number", p["id_number"], "--reveal",
                          "--json"))
        assert found == [s["before"][p["id_number"]]]
        assert (found[0]["name"], found[0]["mobile"]) == (p["name"], p["mobile"])
        got = _json(run(env, "get", found[0]["record_id"], "--home", str(home), "--reveal", "--json"))
        assert got == found
    masked = run(env, "find", "--home", str(home), "--mobile", s["people"][0]["mobile"])
    assert s["people"][0]["mobile"] not in masked.stdout
    verified = _json(run(env, "audit", "verify", "--home", str(home), "--json"))
    assert verified["ok"] is True, verified
    cfg = (home / "pivault.toml").read_text()
    assert f'vault_id = "{s["info"]["vault_id"]}"' in cfg and "expected_population = 1000" in cfg
    # the new home limits everyone together from the start, as a new vault does
    assert "[detect.vault]" in cfg and "records_per_minute = 100" in cfg
    assert _json(run(env, "stats", "--home", str(home), "--json"))["vault_id"] == s["info"]["vault_id"]


def _wipe_pg(url: str) -> None:
    """The database lost its tables (a new server, or the schema dropped)."""
    from pivault.store.db import Database

    with Database(url) as db:
        schema = db.query_one("SELECT current_schema()")
        assert schema is not None
        db.execute(f'DROP SCHEMA "{schema[0]}" CASCADE')
        db.execute(f'CREATE SCHEMA "{schema[0]}"')


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_data_directory_lost_rebuilt_from_the_backup(backend: str, env: dict[str, str], tmp_path: Path,
                                                     request: pytest.FixtureRequest) -> None:
    store = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    home = tmp_path / "home"
    s = _setup(env, tmp_path, home, store)
    shutil.rmtree(home)  # the disk with pivault.toml (and the SQLite store) is gone
    if store:
        _wipe_pg(store)
    r = run(env, "restore", str(s["backup"]), "--home", str(home), code=2)
    assert r.stderr.startswith("error[home.missing]") and "--new-home" in r.stderr

    new = tmp_path / "rebuilt"
    args = ["restore", str(s["backup"]), "--home", str(new), "--new-home", "--json"]
    if store:
        # a PostgreSQL backup needs to be told where to go
        r = run(env, *args, code=2)
        assert r.stderr.startswith("error[restore.store]") and "--store" in r.stderr and not new.exists()
        args += ["--store", store]
    out = _json(run(env, *args))
    assert out["vault_id"] == s["info"]["vault_id"] and out["keyring_written"] is False
    assert out["counts"]["records"] == 6 and out["erased_since_backup"] == 0
    assert out["keyring"] == str(s["keyring"])
    _check_restored(env, new, s)
    # the restore is on the record
    shown = _json(run(env, "audit", "show", "--home", str(new), "--json"))
    ops = [e["operation"] for e in shown]
    assert "backup.restore" in ops, ops
    # a second rebuild into the now-made home is refused: it is a vault now
    r = run(env, *args, code=2)
    assert r.stderr.startswith("error[home.exists]") and "without --new-home" in r.stderr


def test_machine_lost_keyring_and_record_keys_come_back_too(env: dict[str, str], tmp_path: Path) -> None:
    home = tmp_path / "home"
    s = _setup(env, tmp_path, home, None)
    vid = s["info"]["vault_id"]
    kdir = s["keyring"].parent
    kept_audit = tmp_path / "kept-apart" / "audit"
    shutil.copytree(kdir / f"{vid}.audit", kept_audit)  # as docs/audit.md says to keep them
    shutil.rmtree(home)
    shutil.rmtree(tmp_path / "xdg")  # the keyring, its record keys, signing and audit keys: all gone

    new = tmp_path / "rebuilt"
    base = ["restore", str(s["backup"]), "--home", str(new), "--new-home"]
    r = run(env, *base, code=1)
    assert r.stderr.startswith("error[backup.key.missing]") and "--public-key" in r.stderr
    r = run(env, *base, "--public-key", s["public_key"], "--record-keys", str(s["backup"]), code=1)
    assert r.stderr.startswith("error[backup.kind]")
    r = run(env, *base, "--public-key", s["public_key"], code=1,
            PIVAULT_PASSPHRASE="not the passphrase of this vault")
    assert r.stderr.startswith("error[keyring.passphrase]")
    # refused before anything was written: no home, no keyring
    assert not new.exists() and not s["keyring"].exists()
    assert not list(kdir.glob("*")) if kdir.exists() else True

    r = run(env, *base, "--public-key", s["public_key"], "--record-keys", str(s["record_keys"]))
    assert "(written from the backup)" in r.stdout and "6 record keys put back" in r.stdout
    assert "no audit keys" in r.stdout and "new backup key" not in r.stdout
    assert s["keyring"].exists() and (new / "pivault.toml").exists()
    shutil.copytree(kept_audit, kdir / f"{vid}.audit")  # brought back by hand, as the note says
    _check_restored(env, new, s)
    # the next backup makes a new signing key; the old backups verify with the key kept apart
    run(env, "backup", "verify", str(s["backup"]), "--public-key", s["public_key"])


def test_refusals_write_nothing(env: dict[str, str], tmp_path: Path) -> None:
    home = tmp_path / "home"
    s = _setup(env, tmp_path, home, None)
    backup = str(s["backup"])
    r = run(env, "restore", backup, "--store", "sqlite:///x.db", "--home", str(home), code=2)
    assert r.stderr.startswith("error[restore.args]")
    r = run(env, "restore", backup, "--new-home", code=2)
    assert r.stderr.startswith("error[restore.home]")
    r = run(env, "restore", backup, "--home", str(home), "--new-home", code=2)
    assert r.stderr.startswith("error[home.exists]")

    # a store of another vault, even empty, even with --quarantine
    other_home = tmp_path / "other"
    other = _json(run(env, "init", "--home", str(other_home), "--expected-population", "1000", "--json"))
    new = tmp_path / "new"
    for extra in ([], ["--quarantine"]):
        r = run(env, "restore", backup, "--home", str(new), "--new-home", "--store",
                f"sqlite:///{other_home / 'vault.db'}", *extra, code=1)
        assert r.stderr.startswith("error[backup.vault]") and other["vault_id"] in r.stderr
    # a keyring path holding another vault's keyring
    r = run(env, "restore", backup, "--home", str(new), "--new-home", "--keyring", other["keyring"], code=1)
    assert r.stderr.startswith("error[backup.vault]")
    # a keyring inside the new home
    r = run(env, "restore", backup, "--home", str(new), "--new-home", "--keyring", str(new / "k"), code=1)
    assert r.stderr.startswith("error[keyring.location]")
    # an altered backup
    bad = tmp_path / "altered.pvb"
    data = bytearray(s["backup"].read_bytes())
    i = data.rfind(b'"vault_id"')  # the manifest's, after the data and the keyring
    data[i + 14] = ord("0") if data[i + 14] != ord("0") else ord("1")  # another vault id, still a UUID
    bad.write_bytes(bytes(data))
    r = run(env, "restore", str(bad), "--home", str(new), "--new-home", "--public-key", s["public_key"],
            code=1)
    assert r.stderr.startswith("error[backup.signature]"), r.stderr
    assert not new.exists()
    assert (other_home / "pivault.toml").exists()


def test_interrupted_rebuild_leaves_no_vault_and_can_be_finished(env: dict[str, str], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    s = _setup(env, tmp_path, home, None)
    shutil.rmtree(home)
    new = tmp_path / "rebuilt"
    from pivault.backup import newhome

    def crash(*a: object, **k: object) -> None:
        raise KeyboardInterrupt  # the power goes after the store is back, before pivault.toml

    with monkeypatch.context() as m:
        m.setattr(newhome, "_after_restore", crash)
        run(env, "restore", str(s["backup"]), "--home", str(new), "--new-home", code=130)
    assert (new / "vault.db").exists() and not (new / "pivault.toml").exists()
    r = run(env, "find", "--home", str(new), "--mobile", s["people"][0]["mobile"], code=2)
    assert r.stderr.startswith("error[home.missing]")
    r = run(env, "restore", str(s["backup"]), "--home", str(new), "--new-home", code=1)
    assert r.stderr.startswith("error[backup.not_empty]") and "--quarantine" in r.stderr
    out = _json(run(env, "restore", str(s["backup"]), "--home", str(new), "--new-home", "--quarantine",
                    "--json"))
    assert out["quarantined"] and Path(out["quarantined"]).exists()
    _check_restored(env, new, s)



def test_a_store_that_survived_its_home_is_not_rolled_back_unasked(env: dict[str, str],
                                                                   tmp_path: Path) -> None:
    # the home is lost, the store (kept elsewhere) is not, and it served after the backup: a
    # rebuild into it must say so, not offer --quarantine as for a half-done restore
    home = tmp_path / "home"
    store = f"sqlite:///{tmp_path / 'db' / 'vault.db'}"
    (tmp_path / "db").mkdir()
    s = _setup(env, tmp_path, home, store)
    p = s["people"][0]
    run(env, "find", "--home", str(home), "--id-number", p["id_number"])  # read after the backup
    shutil.rmtree(home)
    new = tmp_path / "rebuilt"
    r = run(env, "restore", str(s["backup"]), "--home", str(new), "--new-home", "--store", store, code=1)
    assert r.stderr.startswith("error[backup.store_survived]"), r.stderr
    assert "after the backup" in r.stderr and "pivault.toml" in r.stderr
    assert p["id_number"] not in r.stderr and not (new / "pivault.toml").exists()
    # a damaged store is still set aside on purpose, and its later audit entries salvaged
    out = _json(run(env, "restore", str(s["backup"]), "--home", str(new), "--new-home", "--store", store,
                    "--quarantine", "--json"))
    assert out["quarantined"] and out["salvaged_audit_entries"] >= 1
    _check_restored(env, new, s)


def _correct(home: Path, record_id: str, times: int = 1) -> None:
    """A correction through the library's door (the command line has none)."""
    from vault_support import PASSPHRASE

    from pivault.policy.context import local_operator
    from pivault.vault import Vault

    v = Vault.open(home, passphrase=PASSPHRASE)
    try:
        for i in range(times):
            v.update(record_id, {"notes": f"synthetic correction {i}"}, ctx=local_operator("correction"))
    finally:
        v.close()


def test_surviving_record_keys_are_not_overwritten_by_an_older_backup(env: dict[str, str],
                                                                      tmp_path: Path) -> None:
    # the data directory is lost, the keyring and its record keys are not: the record-key backup
    # still holds the key of a record erased after it was taken, and must not bring it back; it
    # only fills in the key of a version a correction since dropped
    home = tmp_path / "home"
    s = _setup(env, tmp_path, home, None)
    victim = s["before"][s["people"][0]["id_number"]]["record_id"]
    corrected = s["before"][s["people"][1]["id_number"]]["record_id"]
    run(env, "erase", victim, "--yes", "--home", str(home))
    _correct(home, corrected, times=2)
    # the keys the data backup carries are sealed by a key since forgotten: it needs the key backup
    run(env, "keys", "gc", "--backup-keys-older-than", "0", "--home", str(home))
    shutil.rmtree(home)
    new = tmp_path / "rebuilt"
    base = ["restore", str(s["backup"]), "--home", str(new), "--new-home"]
    r = run(env, *base, code=1)  # the corrected record's backed-up version has no key in the store
    assert r.stderr.startswith("error[restore.keys_missing]") and corrected in r.stderr
    assert "--record-keys" in r.stderr and not (new / "pivault.toml").exists()
    out = _json(run(env, *base, "--record-keys", str(s["record_keys"]), "--json"))
    assert out["erased_since_backup"] == 1  # the erasure holds: the backup's copy of it is removed again
    assert out["corrected_since_backup"] == 1 and out["corrected_record_ids"] == [corrected]
    assert out["record_keys_added"] is None and any("survived" in n for n in out["notes"])
    r = run(env, "get", victim, "--home", str(new), code=1)
    assert "record.not_found" in r.stderr
    s["people"] = s["people"][1:]  # every other resident reads back as it was at the backup
    _check_restored(env, new, s)


def test_own_restore_puts_back_keys_of_corrected_records_and_counts_them(env: dict[str, str],
                                                                         tmp_path: Path) -> None:
    home = tmp_path / "home"
    s = _setup(env, tmp_path, home, None)
    ids = [s["before"][p["id_number"]]["record_id"] for p in s["people"]]
    _correct(home, ids[1])
    _correct(home, ids[2], times=2)
    _correct(home, ids[3])
    run(env, "erase", ids[3], "--yes", "--home", str(home))  # corrected, then erased
    # the keys the data backup carries are sealed by a key since forgotten: it needs the key backup
    r = run(env, "keys", "gc", "--backup-keys-older-than", "0", "--home", str(home))
    assert "1 data backups' record-key seals forgotten" in r.stdout
    for f in home.iterdir():  # the data store is lost; pivault.toml and the keyring are not
        if f.name.startswith("vault.db"):
            f.unlink()
    r = run(env, "restore", str(s["backup"]), "--home", str(home), code=1)
    assert r.stderr.startswith("error[restore.keys_missing]: 2 records corrected since the backup")
    assert len(r.stderr.splitlines()) == 2 and "hint:" in r.stderr  # one line, and what to do
    assert not any(v in r.stderr for p in s["people"] for v in p.values() if len(v) > 3)
    # asked to, it restores without those keys, and names the records that cannot be opened
    r = run(env, "restore", str(s["backup"]), "--home", str(home), "--keep-unreadable")
    assert "2 records corrected since the backup cannot be opened" in r.stdout
    assert ids[1] in r.stdout and ids[2] in r.stdout
    r = run(env, "get", ids[1], "--home", str(home), code=1)
    assert r.stderr.startswith("error[crypto.integrity]")
    assert _json(run(env, "get", ids[0], "--home", str(home), "--json"))[0]["record_id"] == ids[0]
    for f in home.iterdir():  # and lost again, to be restored with the record-key backup
        if f.name.startswith("vault.db"):
            f.unlink()
    r = run(env, "restore", str(s["backup"]), "--home", str(home), "--record-keys", str(s["record_keys"]))
    assert "1 records erased since the backup were removed again" in r.stdout
    assert "2 records corrected since the backup are back at their backed-up values" in r.stdout
    r = run(env, "get", ids[3], "--home", str(home), code=1)
    assert "record.not_found" in r.stderr
    s["people"] = [p for i, p in enumerate(s["people"]) if i != 3]
    _check_restored(env, home, s)
    shown = _json(run(env, "audit", "show", "--home", str(home), "--json"))
    entry = [e for e in shown if e["operation"] == "backup.restore"][-1]
    assert entry["detail"]["corrected_since_backup"] == 2 and entry["detail"]["erased_since_backup"] == 1
    assert entry["detail"]["unreadable"] == 0


def test_new_home_is_never_a_link_nor_a_directory_in_use(env: dict[str, str], tmp_path: Path) -> None:
    home = tmp_path / "home"
    s = _setup(env, tmp_path, home, None)
    shutil.rmtree(home)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "someone-elses.txt").write_text("x", encoding="utf-8")
    link = tmp_path / "link"
    link.symlink_to(shared)
    for target in (link, shared):
        r = run(env, "restore", str(s["backup"]), "--home", str(target), "--new-home", code=2)
        assert r.stderr.startswith("error[restore.home]")
    assert (shared.stat().st_mode & 0o7777) == 0o1777 and sorted(os.listdir(shared)) == ["someone-elses.txt"]
    afile = tmp_path / "afile"
    afile.write_text("x", encoding="utf-8")
    for target in (afile, afile / "sub"):
        r = run(env, "restore", str(s["backup"]), "--home", str(target), "--new-home", code=2)
        assert r.stderr.startswith("error[restore.home]")
    dangling = tmp_path / "dangling"
    dangling.mkdir()
    (dangling / "pivault.toml").symlink_to(tmp_path / "elsewhere.toml")
    r = run(env, "restore", str(s["backup"]), "--home", str(dangling), "--new-home", code=2)
    assert r.stderr.startswith("error[home.exists]") and not (tmp_path / "elsewhere.toml").exists()
