"""Root-key change (passphrase, KMS) rewraps only the keysets; rotation by use; keyring reload."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import tink
from keys_support import ctx, provider, put_all, residents
from tink import aead

from pivault.crypto import Keyring, KeyringError, KmsProvider
from pivault.crypto.providers import provider_for
from pivault.keys.shred import RecordKeyStore, ShreddingRecordStore
from pivault.keys.usage import UsageLedger, UsagePolicy
from pivault.vault import Vault


class _FakeKms(tink.KmsClient):  # type: ignore[misc]
    """A stand-in KMS: one local Tink AEAD per key URI (tests cannot reach a cloud KMS)."""

    def __init__(self) -> None:
        self.keys: dict[str, aead.Aead] = {}
        self.calls = 0

    def does_support(self, key_uri: str) -> bool:
        return key_uri.startswith("fake-kms://")

    def get_aead(self, key_uri: str) -> aead.Aead:
        self.calls += 1
        if key_uri not in self.keys:
            self.keys[key_uri] = tink.new_keyset_handle(
                aead.aead_key_templates.AES256_GCM).primitive(aead.Aead)
        return self.keys[key_uri]


_KMS = _FakeKms()
tink.register_kms_client(_KMS)


def test_change_root_rewraps_only_the_keysets(vault: Vault) -> None:
    kr = vault.keyring
    people = residents(10, seed=21)
    ids = put_all(vault, people)
    data_before = vault.db.query("SELECT record_id, name, id_number FROM records ORDER BY record_id")
    keys_before = sorted(vault.store.keys.iter_keys())  # type: ignore[attr-defined]
    kr.change_root(provider("a new passphrase"))
    assert vault.db.query("SELECT record_id, name, id_number FROM records ORDER BY record_id") == data_before
    assert sorted(vault.store.keys.iter_keys()) == keys_before  # type: ignore[attr-defined]
    with pytest.raises(KeyringError) as info:
        Keyring.open(kr.path, provider())
    assert info.value.code == "keyring.passphrase"
    reopened = Keyring.open(kr.path, provider("a new passphrase"))
    v2 = Vault(vault.db, reopened)
    try:
        for rid, p in zip(ids, people, strict=True):
            assert v2.get(rid, ctx=ctx())["id_number"] == p["id_number"]
    finally:
        getattr(v2.store, "close", lambda: None)()


def test_move_to_a_kms_and_back(keyring: Keyring) -> None:
    ct = keyring.encrypt("r1", "name", b"synthetic")
    kms = KmsProvider("fake-kms://projects/test/keys/root-1")
    keyring.change_root(kms)
    header = Keyring.peek(keyring.path)
    assert header["provider"] == {"kind": "kms", "key_uri": "fake-kms://projects/test/keys/root-1",
                                  "wrap": "KMS AEAD"}
    assert isinstance(provider_for(header["provider"]), KmsProvider)
    ring = Keyring.open(keyring.path, KmsProvider("fake-kms://projects/test/keys/root-1"))
    assert ring.decrypt("r1", "name", ct) == b"synthetic"
    with pytest.raises(KeyringError) as info:
        Keyring.open(keyring.path, provider())
    assert info.value.code == "keyring.provider"
    with pytest.raises(KeyringError) as info:
        Keyring.open(keyring.path, KmsProvider("fake-kms://projects/test/keys/other"))
    assert info.value.code == "keyring.provider"
    ring.change_root(provider("back to a passphrase"))
    assert Keyring.open(keyring.path, provider("back to a passphrase")).decrypt("r1", "name", ct) \
        == b"synthetic"


def test_a_failed_root_change_leaves_the_keyring_as_it_was(keyring: Keyring) -> None:
    before = keyring.path.read_bytes()
    with pytest.raises(KeyringError):
        keyring.change_root(KmsProvider("nothing-registered://key"))
    assert keyring.path.read_bytes() == before
    assert Keyring.open(keyring.path, provider()).key_ids() == keyring.key_ids()


def test_other_processes_pick_up_a_rotation(keyring: Keyring) -> None:
    other = Keyring.open(keyring.path, provider())
    assert other.reload() is False
    new = keyring.rotate("aead")
    ct = keyring.encrypt("r1", "name", b"new key")
    assert other.reload() is True and other.primary_key_id() == new
    assert other.decrypt("r1", "name", ct) == b"new key"
    # a rotation started from the stale copy keeps the other's change
    stale = Keyring.open(keyring.path, provider())
    keyring.rotate("prf.mobile")
    stale.rotate("prf.id_number")
    final = Keyring.open(keyring.path, provider())
    assert len(final.key_ids("prf.mobile")) == 2 and len(final.key_ids("prf.id_number")) == 2


def test_usage_is_counted_and_warned_and_rotated(keyring: Keyring, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    store = RecordKeyStore(f"sqlite:///{tmp_path / 'keys' / 'rk'}", vault_id=keyring.vault_id)
    warnings: list[str] = []
    ledger = UsageLedger(store, keyring, UsagePolicy(limit=400, warn_at=0.25, rotate_at=0.5,
                                                     auto_rotate=True), on_warning=warnings.append)
    ledger.attach(every=10)
    first = keyring.primary_key_id()
    with caplog.at_level(logging.WARNING, logger="pivault.keys"):
        for i in range(99):
            keyring.encrypt(f"r{i}", "name", b"x")
        assert warnings == [] and store.usage() == {first: 90}
        keyring.encrypt("r", "name", b"x")
        assert store.usage() == {first: 100} and len(warnings) == 1
        assert str(first) in warnings[0] and "25%" in warnings[0]
        keyring.encrypt_many("r", {f"f{i}": b"x" for i in range(100)})
    assert ledger.rotations and keyring.primary_key_id() != first
    assert store.usage()[first] == 200
    report = {r["key_id"]: r for r in ledger.report()}
    assert report[first]["state"] == "rotate" and report[keyring.primary_key_id()]["state"] == "ok"
    keyring.encrypt("r", "name", b"x")
    ledger.flush()
    assert store.usage()[keyring.primary_key_id()] == 1
    assert any("rotated" in r.message for r in caplog.records)


def test_the_vault_counts_its_encryptions(vault: Vault) -> None:
    put_all(vault, residents(5, seed=22))
    store = vault.store
    assert isinstance(store, ShreddingRecordStore)
    store.ledger.flush()
    # one field-key encryption (the record key's wrap) per record, and one for the key of the
    # blind index's check tags, made with the vault's first record
    assert store.keys.usage() == {vault.keyring.primary_key_id(): 5 + 1}


@pytest.mark.parametrize("workers", [0, 2])
def test_import_workers_encryptions_are_counted(vault: Vault, tmp_path: Path, workers: int) -> None:
    from pivault.synth import write_population

    src = tmp_path / "people.csv"
    write_population(src, 3000, seed=23)
    store = vault.store
    assert isinstance(store, ShreddingRecordStore)
    store.ledger.flush()
    before = sum(store.keys.usage().values())
    f = vault.import_files([src], workers=workers, chunk_size=400).files[0]
    assert f.workers == workers and f.imported == 3000
    store.ledger.flush()
    # one field-key encryption per record at least (its record key's wrap), from every worker
    added = sum(store.keys.usage().values()) - before
    assert f.imported <= added <= f.imported + 10, added  # and none counted twice


def test_counting_failure_never_stops_encryption(keyring: Keyring, tmp_path: Path) -> None:
    store = RecordKeyStore(f"sqlite:///{tmp_path / 'keys' / 'rk2'}", vault_id=keyring.vault_id)
    UsageLedger(store, keyring).attach(every=1)
    store.close()
    assert keyring.decrypt("r", "name", keyring.encrypt("r", "name", b"x")) == b"x"
    assert os.path.exists(tmp_path / "keys" / "rk2")


def test_vault_opens_with_the_root_key_its_keyring_names(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from keys_support import CHEAP, PASSPHRASE

    from pivault.vault import home as _home

    home = tmp_path / "home"
    cfg = _home.init(home, passphrase=PASSPHRASE, keyring_path=tmp_path / "keys" / "vault.keyring",
                     argon2=CHEAP)
    with Vault.open(home, passphrase=PASSPHRASE) as v:
        rid = v.put(residents(1, seed=23)[0], ctx=ctx())
        v.keyring.change_root(KmsProvider("fake-kms://projects/test/keys/vault-open"))
    monkeypatch.delenv("PIVAULT_PASSPHRASE", raising=False)
    with Vault.open(home) as v:  # no passphrase: the KMS holds the root key
        assert v.get(rid, ctx=ctx())["record_id"] == rid
    assert Keyring.peek(cfg.keyring_path)["provider"]["kind"] == "kms"


_KILLED_WRITER = """
import os, signal, sys
sys.path.insert(0, sys.argv[2])
from keys_support import provider
from pivault.crypto import Keyring
import pivault.crypto._atomic as atomic

ring = Keyring.open(sys.argv[1], provider())
# the power goes, or kill -9 lands, once the new file is written and synced, before it replaces the old
atomic.os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)
ring.rotate("aead")
"""


def _opens_with(path: Path, passphrase: str) -> bool:
    try:
        Keyring.open(path, provider(passphrase))
    except KeyringError:
        return False
    return True


def test_a_keyring_rewrite_killed_half_way_leaves_no_copy_behind_after_the_next_change(
        keyring: Keyring, tmp_path: Path) -> None:
    """A rewrite killed after its temporary file was written left a whole copy of the keyring beside it,
    under the passphrase of its time. `keys change-root` (the answer to a leaked passphrase) and `keys
    retire` then left that copy as it was: the leaked passphrase still opened every key, retired ones
    included. The next change of the keyring now removes what a killed rewrite left."""
    import signal
    import subprocess
    import sys

    directory = keyring.path.parent
    before = keyring.path.read_bytes()
    script = tmp_path / "killed_writer.py"
    script.write_text(_KILLED_WRITER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.run([sys.executable, str(script), str(keyring.path), str(Path(__file__).parent)],
                           env=env, capture_output=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    assert keyring.path.read_bytes() == before  # the change did not happen
    left = [p for p in directory.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and _opens_with(left[0], "synthetic-keys-test-passphrase")
    old = keyring.primary_key_id()
    other_file = directory / f".{keyring.path.name}.backup-signing.json.1.0123456789ab.tmp"
    other_file.write_bytes(b"another file's writer")  # not a copy of the keyring: left alone

    keyring.rotate("aead")
    keyring.retire("aead", old)
    keyring.change_root(provider("a-new-synthetic-passphrase"))
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [keyring.path.name, f"{keyring.path.name}.lock", other_file.name])
    for p in directory.iterdir():
        assert not _opens_with(p, "synthetic-keys-test-passphrase"), p.name
    assert Keyring.open(keyring.path, provider("a-new-synthetic-passphrase")).key_ids() == (
        keyring.primary_key_id(),)
