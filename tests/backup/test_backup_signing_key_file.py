"""The backup signing key file beside the keyring, replaced by an intruder who has no root key.

Its public half is in clear. Whoever can write the keyring's directory (the
intruder who wiped the store on the same machine) can put a key pair of
their own there and sign a "backup" of their own making: the genuine rows
plus a bearer token they hold the secret of. A restore holds the keyring, so
it checks backups against the key sealed under it, never against the clear
copy, and refuses the altered file before anything is restored. Through the
command line, as an operator runs it after a ransom.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sqlite3
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).parent.parent / "vault"))

from vault_support import cheap_cli_env, make_residents
from vault_support import run_cli as run

#: the intruder's bearer token: its id and secret, planted as a row of the tokens table
_TOKEN_ID, _SECRET = "tok_planted", "the-intruders-own-secret"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return cheap_cli_env(tmp_path, monkeypatch, "")


def _setup(env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    """init, import residents, a data backup and a record-key backup."""
    home = tmp_path / "home"
    info = json.loads(run(env, "init", "--home", str(home), "--expected-population", "1000", "--json").stdout)
    src = tmp_path / "residents.csv"
    src.write_text("name,id_number,mobile,address\n" + "".join(
        f"{p['name']},{p['id_number']},{p['mobile']},{p['address']}\n" for p in make_residents(8, seed=17)),
        encoding="utf-8")
    run(env, "import", str(src), "--home", str(home))
    backup = tmp_path / "shelf" / "vault.pvb"
    run(env, "backup", "--out", str(backup), "--home", str(home))
    keys = tmp_path / "keyshelf" / "record-keys.pvb"
    run(env, "keys", "backup", "--out", str(keys), "--home", str(home))
    keyring = Path(info["keyring"])
    return {"home": home, "keyring": keyring, "backup": backup, "keys": keys,
            "signing": keyring.with_name(keyring.name + ".backup-signing.json"),
            "store": home / "vault.db"}


def _replace_public_key(signing: Path) -> Ed25519PrivateKey:
    """The intruder's key pair in the file beside the keyring: the clear public half only."""
    theirs = Ed25519PrivateKey.generate()
    doc = json.loads(signing.read_text())
    doc["public"] = base64.b64encode(theirs.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode("ascii")
    signing.write_text(json.dumps(doc))
    return theirs


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    f = tar.extractfile(name)
    assert f is not None
    return f.read()


def _forge(genuine: Path, out: Path, signer: Ed25519PrivateKey, tmp_path: Path) -> None:
    """A copy of ``genuine`` with a token row planted (data backups) and the manifest signed by ``signer``."""
    work = tmp_path / "forge"
    work.mkdir(exist_ok=True)
    with tarfile.open(genuine) as tar:
        manifest = json.loads(_member(tar, "manifest.json"))
        files = {}
        for f in manifest["files"]:
            files[f["name"]] = work / f["name"].replace("/", "_")
            files[f["name"]].write_bytes(_member(tar, f["name"]))
    if manifest["kind"] == "data":
        db = sqlite3.connect(files["data/vault.db"])
        digest = hashlib.sha256(b"pivault.token.v1\x00" + _TOKEN_ID.encode() + b"\x00" + _SECRET.encode())
        db.execute("INSERT INTO tokens (token_id, token_hash, principal, role, purposes, created_at,"
                   " expires_at) VALUES (?, ?, 'intruder', 'admin', '[\"administration\"]', ?, ?)",
                   (_TOKEN_ID, digest.digest(), time.time(), time.time() + 365 * 86400))
        db.commit()
        db.close()
        manifest["counts"]["tokens"] += 1
    for f in manifest["files"]:
        data = files[f["name"]].read_bytes()
        f["bytes"], f["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    sig = base64.b64encode(signer.sign(b"pivault.backup.manifest.v1\n" + body)) + b"\n"
    with tarfile.open(out, "w:", format=tarfile.PAX_FORMAT) as tar:
        for name, path in files.items():
            tar.add(str(path), arcname=name)
        for name, data in (("manifest.json", body + b"\n"), ("manifest.sig", sig)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _wipe(store: Path) -> None:
    with sqlite3.connect(store) as db:
        db.execute("DELETE FROM blind_index")
        db.execute("DELETE FROM records")
        db.execute("CREATE TABLE ransom_note (text TEXT)")
        db.execute("INSERT INTO ransom_note VALUES ('pay')")


def _state(s: dict[str, Any]) -> tuple[Any, ...]:
    """What a refused restore must leave as it was: the store's tables and files beside it."""
    with sqlite3.connect(s["store"]) as db:
        tables = sorted(r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
        tokens = db.execute("SELECT COUNT(*) FROM tokens").fetchone()[0]
        records = db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    return tuple(tables), tokens, records, sorted(p.name for p in s["home"].iterdir())


def test_a_backup_signed_by_a_key_planted_beside_the_keyring_is_not_restored(
        env: dict[str, str], tmp_path: Path) -> None:
    s = _setup(env, tmp_path)
    genuine_public = json.loads(s["signing"].read_text())["public"]
    theirs = _replace_public_key(s["signing"])
    forged = tmp_path / "shelf" / "vault-newer.pvb"
    _forge(s["backup"], forged, theirs, tmp_path)
    _wipe(s["store"])
    before = _state(s)

    res = run(env, "restore", str(forged), "--quarantine", "--home", str(s["home"]), code=1)
    assert "backup.key.altered" in res.output and "--public-key" in res.output
    assert _state(s) == before, "a refused restore changed the store"
    # the genuine backup is refused the same way: the altered file vouches for nothing
    run(env, "restore", str(s["backup"]), "--quarantine", "--home", str(s["home"]), code=1)
    assert _state(s) == before

    # with the public key kept apart: the forgery fails its signature, the genuine backup restores
    res = run(env, "restore", str(forged), "--quarantine", "--public-key", genuine_public,
              "--home", str(s["home"]), code=1)
    assert "backup.signature" in res.output
    assert _state(s) == before
    out = json.loads(run(env, "restore", str(s["backup"]), "--quarantine", "--public-key", genuine_public,
                         "--home", str(s["home"]), "--json").stdout)
    assert out["counts"]["records"] == 8
    tables, tokens, records, _ = _state(s)
    assert tokens == 0 and records == 8 and "ransom_note" not in tables
    run(env, "audit", "verify", "--home", str(s["home"]))


def test_keys_restore_checks_against_the_key_sealed_under_the_keyring(env: dict[str, str],
                                                                      tmp_path: Path) -> None:
    s = _setup(env, tmp_path)
    theirs = _replace_public_key(s["signing"])
    forged = tmp_path / "keyshelf" / "record-keys-newer.pvb"
    _forge(s["keys"], forged, theirs, tmp_path)
    res = run(env, "keys", "restore", str(forged), "--home", str(s["home"]), code=1)
    assert "backup.key.altered" in res.output


def test_a_new_home_is_not_made_from_a_backup_the_altered_key_file_vouches_for(
        env: dict[str, str], tmp_path: Path) -> None:
    """The home is lost, the keyring's directory survived with the intruder's key in it."""
    s = _setup(env, tmp_path)
    theirs = _replace_public_key(s["signing"])
    forged = tmp_path / "shelf" / "vault-newer.pvb"
    _forge(s["backup"], forged, theirs, tmp_path)
    new = tmp_path / "rebuilt"
    res = run(env, "restore", str(forged), "--new-home", "--home", str(new), "--keyring", str(s["keyring"]),
              code=1)
    assert "backup.key.altered" in res.output
    assert not new.exists() or not any(new.iterdir()), "a refused rebuild left files behind"
