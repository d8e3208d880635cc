"""The command line: keys rotate/rewrap/status/split/recover, backup, backup verify, restore; audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from keys_support import CHEAP, PASSPHRASE, ctx, residents
from typer.testing import CliRunner

from pivault.audit import create_audit_keys, entries, load_verifier, verify
from pivault.cli.keys_cmds import register
from pivault.crypto import Keyring
from pivault.detect.setup import audit_key_dir
from pivault.store.db import Database
from pivault.vault import Vault
from pivault.vault import home as _home


@pytest.fixture
def app() -> typer.Typer:
    a = typer.Typer()
    register(a)
    return a


def _run(app: typer.Typer, args: list[str], passphrase: str = PASSPHRASE, new: str | None = None,
         ok: bool = True) -> str:
    env = {"PIVAULT_PASSPHRASE": passphrase}
    if new is not None:
        env["PIVAULT_NEW_PASSPHRASE"] = new
    res = CliRunner().invoke(app, args, env=env)
    if ok:
        assert res.exit_code == 0, (args, res.output)
    else:
        assert res.exit_code != 0, (args, res.output)
    return res.output


def test_cli_lifecycle(app: typer.Typer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    cfg = _home.init(home, passphrase=PASSPHRASE, keyring_path=tmp_path / "keys" / "vault.keyring",
                     argon2=CHEAP)
    kr = Keyring.open(cfg.keyring_path, __import__("keys_support").provider())
    verifier = create_audit_keys(audit_key_dir(cfg.keyring_path, cfg.vault_id), kr)
    people = residents(12, seed=61)
    with Vault.open(home, passphrase=PASSPHRASE) as v:
        ids = [v.put(p, ctx=ctx()) for p in people]
    h = ["--home", str(home)]

    st = json.loads(_run(app, ["keys", "status", *h, "--json"]))
    aead = st["keysets"][0]
    assert aead["keys"][0]["where"]["record_keys"] == 12 and st["recovery_fingerprint"] is None
    assert aead["keys"][0]["where"]["file:audit-signing.key"] == 1, aead["keys"][0]["where"]
    assert aead["keys"][0]["where"]["index_check_key.key_ct"] == 1  # the check tags' key
    assert aead["keys"][0]["values"] == 15  # and the audit chain head
    out = _run(app, ["keys", "rotate", "--field", "name", *h])
    assert "aead: new primary key" in out
    _run(app, ["keys", "rotate", "--field", "mobile", *h])
    rw = json.loads(_run(app, ["keys", "rewrap", "--retire", "--batch", "5", *h, "--json"]))
    assert rw["complete"] and rw["record_keys_rewrapped"] == 12 and rw["indexes_rebuilt"] == 12
    assert {r["keyset"] for r in rw["retired"]} == {"aead", "prf.mobile"}
    human = _run(app, ["keys", "status", *h])
    assert "primary" in human and "record_keys 12" in human

    # custodians: 2 of 3; one share alone is refused and changes nothing
    shares_dir = tmp_path / "custodians"
    _run(app, ["keys", "split", "--shares", "3", "--threshold", "2", "--out", str(shares_dir), *h])
    files = sorted(shares_dir.iterdir())
    before = cfg.keyring_path.read_bytes()
    err = _run(app, ["keys", "recover", str(files[0]), *h], new="a-new-passphrase", ok=False)
    assert "error[keys.shares.too_few]" in err and "2 shares are needed, 1 given" in err
    # the shares are judged before the new passphrase is asked for (or read)
    res = CliRunner().invoke(app, ["keys", "recover", str(files[0]), *h],
                             env={"PIVAULT_NEW_PASSPHRASE": None})
    assert res.exit_code == 1 and res.stderr.startswith("error[keys.shares.too_few]"), res.output
    err = _run(app, ["keys", "recover", str(files[0]), *h], new="x", ok=False)
    assert "error[keys.shares.too_few]" in err
    err = _run(app, ["keys", "recover", str(files[0]), str(files[2]), *h], new="x", ok=False)
    assert "error[keyring.passphrase_weak]" in err
    assert cfg.keyring_path.read_bytes() == before
    _run(app, ["keys", "recover", str(files[0]), str(files[2]), *h], passphrase="forgotten",
         new="a-new-passphrase")
    new_pass = "a-new-passphrase"
    err = _run(app, ["keys", "status", *h], ok=False)
    assert "error[keyring.passphrase]" in err

    # backups: data, record keys; verify; a wipe; restore over the damage
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    out = _run(app, ["backup", "--out", str(shelf / "vault.backup"), *h], passphrase=new_pass)
    assert "12 records" in out and "keys backup" in out
    _run(app, ["keys", "backup", "--out", str(tmp_path / "record-keys.backup"), *h], passphrase=new_pass)
    out = _run(app, ["backup", "verify", str(shelf / "vault.backup"), *h, "--deep"], passphrase=new_pass)
    assert "signature and" in out and "checksums OK" in out
    with Database(cfg.store_url) as db:
        db.execute("DELETE FROM records")
        db.execute("CREATE TABLE ransom_note (message TEXT)")
        db.execute("INSERT INTO ransom_note VALUES ('pay up')")
    err = _run(app, ["restore", str(shelf / "vault.backup"), *h], passphrase=new_pass, ok=False)
    assert "error[backup.not_empty]" in err
    out = _run(app, ["restore", str(shelf / "vault.backup"), "--quarantine", *h], passphrase=new_pass)
    assert "restored backup" in out and "kept as" in out
    with Vault.open(home, passphrase=new_pass) as v:
        for rid, p in zip(ids, people, strict=True):
            assert v.get(rid, ctx=ctx())["id_number"] == p["id_number"]
    # every step is on the audit trail, and the trail verifies
    with Database(cfg.store_url) as db:
        ops = [e.operation for e in entries(db)]
        for op in ("keys.rotate", "keys.rewrap", "keys.retire", "keys.split", "keys.recover",
                   "backup.create", "keys.backup", "backup.restore"):
            assert op in ops, op
        assert verify(db, load_verifier(audit_key_dir(cfg.keyring_path, cfg.vault_id))).ok
    assert verifier is not None


def test_cli_backup_needs_out_and_refuses_bad_files(app: typer.Typer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    _home.init(home, passphrase=PASSPHRASE, keyring_path=tmp_path / "keys" / "vault.keyring", argon2=CHEAP)
    h = ["--home", str(home)]
    res = CliRunner().invoke(app, ["backup", *h], env={"PIVAULT_PASSPHRASE": PASSPHRASE})
    assert res.exit_code != 0 and "--out" in res.output
    junk = tmp_path / "junk.backup"
    junk.write_bytes(b"\x00" * 1024)
    _run(app, ["backup", "--out", str(tmp_path / "ok.backup"), *h])
    err = _run(app, ["backup", "verify", str(junk), *h], ok=False)
    assert "error[backup." in err
    for bad in (["--field", "shoe_size"], ["--field", "name", "--all"]):
        res = CliRunner().invoke(app, ["keys", "rotate", *bad, *h], env={"PIVAULT_PASSPHRASE": PASSPHRASE})
        assert res.exit_code == 2 and res.stderr.startswith("error[keys.usage]"), res.output
    # a rewrap's batch is held in memory whole: one past the cap is refused before anything is read
    res = CliRunner().invoke(app, ["keys", "rewrap", "--batch", "100001", *h],
                             env={"PIVAULT_PASSPHRASE": PASSPHRASE})
    assert res.exit_code == 2 and "--batch" in res.output, res.output


def test_a_second_split_needs_force_and_says_what_it_invalidates(app: typer.Typer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    _home.init(home, passphrase=PASSPHRASE, keyring_path=tmp_path / "keys" / "vault.keyring", argon2=CHEAP)
    h = ["--home", str(home)]
    first, second = tmp_path / "first", tmp_path / "second"
    _run(app, ["keys", "split", "--shares", "3", "--threshold", "2", "--out", str(first), *h])
    fp = json.loads(_run(app, ["keys", "status", *h, "--json"]))["recovery_fingerprint"]
    assert fp
    # run again by mistake: refused before anything changes, naming the split it would invalidate
    res = CliRunner().invoke(app, ["keys", "split", "--out", str(second), *h],
                             env={"PIVAULT_PASSPHRASE": PASSPHRASE})
    assert res.exit_code != 0 and "error[keys.shares.split]" in res.stderr and fp in res.stderr
    assert "--force" in res.stderr
    assert not second.exists()
    assert json.loads(_run(app, ["keys", "status", *h, "--json"]))["recovery_fingerprint"] == fp
    # with --force it says so first, then replaces the key
    res = CliRunner().invoke(app, ["keys", "split", "--out", str(second), "--force", *h],
                             env={"PIVAULT_PASSPHRASE": PASSPHRASE})
    assert res.exit_code == 0, res.output
    assert f"replacing recovery key {fp}: every share of it stops working" in res.stderr
    assert len(list(second.iterdir())) == 5
    assert json.loads(_run(app, ["keys", "status", *h, "--json"]))["recovery_fingerprint"] != fp
    # an --out that is a file is refused before the split
    res = CliRunner().invoke(app, ["keys", "split", "--out", str(next(second.iterdir())), "--force", *h],
                             env={"PIVAULT_PASSPHRASE": PASSPHRASE})
    assert res.exit_code != 0 and "error[keys.shares.out]" in res.stderr


def test_change_root_refuses_the_current_passphrase_and_a_weak_one(app: typer.Typer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    _home.init(home, passphrase=PASSPHRASE, keyring_path=tmp_path / "keys" / "vault.keyring", argon2=CHEAP)
    h = ["--home", str(home)]
    err = _run(app, ["keys", "change-root", *h], new=PASSPHRASE, ok=False)
    assert "error[keyring.passphrase_same]" in err
    err = _run(app, ["keys", "change-root", *h], new="short", ok=False)
    assert "error[keyring.passphrase_weak]" in err
    _run(app, ["keys", "status", *h])  # nothing changed: the old passphrase still opens it
    _run(app, ["keys", "change-root", *h], new="another synthetic passphrase")
    _run(app, ["keys", "status", *h], passphrase="another synthetic passphrase")


def test_kms_is_refused_by_the_command_line(app: typer.Typer, tmp_path: Path) -> None:
    """No KMS client is registered by any command: --kms says so first, and changes nothing."""
    from pivault.crypto import KeyringError, check_new_passphrase

    home = tmp_path / "home"
    cfg = _home.init(home, passphrase=PASSPHRASE, keyring_path=tmp_path / "keys" / "vault.keyring",
                     argon2=CHEAP)
    before = cfg.keyring_path.read_bytes()
    uri = "gcp-kms://projects/p/locations/l/keyRings/r/cryptoKeys/pivault-root"
    for args in (["keys", "change-root", "--kms", uri, "--home", str(home)],
                 ["keys", "recover", str(tmp_path / "no-share.json"), "--kms", uri, "--home", str(home)]):
        # no passphrase in the environment: a command that asked for one would fail otherwise
        res = CliRunner().invoke(app, args, env={"PIVAULT_PASSPHRASE": "", "PIVAULT_NEW_PASSPHRASE": ""})
        assert res.exit_code == 2, res.output
        assert res.stderr.startswith("error[keyring.kms_cli]: a KMS root key is a library feature")
        assert "hint:" in res.stderr and "Traceback" not in res.output
        assert len(res.stderr.strip().splitlines()) == 2
    assert cfg.keyring_path.read_bytes() == before
    assert "--kms" not in CliRunner().invoke(app, ["keys", "change-root", "--help"]).stdout
    with pytest.raises(KeyringError) as info:
        check_new_passphrase("short")
    assert info.value.hint is not None and "kms" not in info.value.hint.lower()


def test_cli_rewrap_names_a_key_file_it_cannot_open(app: typer.Typer, tmp_path: Path) -> None:
    import base64

    home = tmp_path / "home"
    cfg = _home.init(home, passphrase=PASSPHRASE, keyring_path=tmp_path / "keys" / "vault.keyring",
                     argon2=CHEAP)
    kr = Keyring.open(cfg.keyring_path, __import__("keys_support").provider())
    key_dir = audit_key_dir(cfg.keyring_path, cfg.vault_id)
    create_audit_keys(key_dir, kr)
    h = ["--home", str(home)]
    _run(app, ["keys", "rotate", *h])
    sealed = key_dir / "audit-signing.key"
    doc = json.loads(sealed.read_bytes())
    from pivault.keys.sites import file_sites

    member = next(f.member for f in file_sites(cfg.keyring_path, cfg.vault_id, audit_dir=key_dir)
                  if f.path == sealed)
    ct = bytearray(base64.b64decode(doc[member]))
    ct[-1] ^= 0x01
    doc[member] = base64.b64encode(bytes(ct)).decode("ascii")
    sealed.write_text(json.dumps(doc), encoding="utf-8")
    res = CliRunner().invoke(app, ["keys", "rewrap", *h], env={"PIVAULT_PASSPHRASE": PASSPHRASE})
    assert "1 key file(s) beside the keyring could not be opened" in res.output, res.output
    assert "audit-signing.key" in res.output


def test_shares_of_a_replaced_recovery_key_are_refused_before_the_new_passphrase(app: typer.Typer,
                                                                               tmp_path: Path) -> None:
    """Shares of a split that `keys split --force` replaced (or relabelled with this vault's id) passed
    every check made before the new passphrase was asked for, which was asked for twice at the prompt,
    and only then failed. They are refused first now, naming both recovery keys."""
    home = tmp_path / "home"
    cfg = _home.init(home, passphrase=PASSPHRASE, keyring_path=tmp_path / "keys" / "vault.keyring",
                     argon2=CHEAP)
    h = ["--home", str(home)]
    first, second = tmp_path / "first", tmp_path / "second"
    _run(app, ["keys", "split", "--shares", "3", "--threshold", "2", "--out", str(first), *h])
    old_fp = json.loads(_run(app, ["keys", "status", *h, "--json"]))["recovery_fingerprint"]
    _run(app, ["keys", "split", "--shares", "3", "--threshold", "2", "--out", str(second), "--force", *h])
    new_fp = json.loads(_run(app, ["keys", "status", *h, "--json"]))["recovery_fingerprint"]
    before = cfg.keyring_path.read_bytes()
    old = [str(p) for p in sorted(first.iterdir())[:2]]
    res = CliRunner().invoke(app, ["keys", "recover", *old, *h], env={"PIVAULT_NEW_PASSPHRASE": None})
    assert res.exit_code == 1 and res.stderr.startswith("error[keys.shares.wrong]: "), res.output
    assert old_fp in res.stderr and new_fp in res.stderr and "Traceback" not in res.output
    assert cfg.keyring_path.read_bytes() == before
    # the current shares still work
    _run(app, ["keys", "recover", *[str(p) for p in sorted(second.iterdir())[:2]], *h],
         passphrase="forgotten", new="a-recovered-passphrase")


def test_cli_rewrap_names_records_whose_key_was_moved_and_goes_on(app: typer.Typer, tmp_path: Path) -> None:
    """Two records' keys swapped in the record-key store: `keys rewrap` finishes, says which records
    fail authentication and what to do, on stderr, and the old field key is not retired."""
    from pivault.keys.shred import record_key_store_url

    home = tmp_path / "home"
    cfg = _home.init(home, passphrase=PASSPHRASE, keyring_path=tmp_path / "keys" / "vault.keyring",
                     argon2=CHEAP)
    with Vault.open(home, passphrase=PASSPHRASE) as v:
        ids = [v.put(p, ctx=ctx()) for p in residents(6, seed=62)]
    with Database(record_key_store_url(cfg.keyring_path)) as keys:
        a, b = ids[1], ids[4]
        (wa,), = keys.query("SELECT wrapped FROM record_keys WHERE record_id = ?", (a,))
        (wb,), = keys.query("SELECT wrapped FROM record_keys WHERE record_id = ?", (b,))
        keys.execute("UPDATE record_keys SET wrapped = ? WHERE record_id = ?", (bytes(wb), a))
        keys.execute("UPDATE record_keys SET wrapped = ? WHERE record_id = ?", (bytes(wa), b))
    h = ["--home", str(home)]
    _run(app, ["keys", "rotate", *h])
    res = CliRunner().invoke(app, ["keys", "rewrap", "--retire", *h], env={"PIVAULT_PASSPHRASE": PASSPHRASE})
    assert res.exit_code == 0, res.output
    assert "rewrap complete" in res.stdout and "retired" not in res.stdout
    assert res.stderr.startswith("warning: 2 records fail authentication")
    assert a in res.stderr and b in res.stderr
    assert "restore each from a backup (or erase it)" in res.stderr and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["keys", "rewrap", *h, "--json"], env={"PIVAULT_PASSPHRASE": PASSPHRASE})
    out = json.loads(res.stdout)
    assert out["complete"] and out["damaged_record_ids"] == sorted([a, b])
