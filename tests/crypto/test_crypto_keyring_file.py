"""The keyring file: mode, location, no overwrite, wrong passphrase, damage."""

from __future__ import annotations

import base64
import io
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import tink
import tink.secret_key_access
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tink.proto import tink_pb2

import pivault.crypto.providers as providers_module
from pivault.crypto import (
    Argon2Params,
    Keyring,
    KeyringError,
    PassphraseProvider,
    RootKeyProvider,
    passphrase_from_env_or_prompt,
)


def _snapshot(path: Path) -> tuple[bytes, int, list[str]]:
    return path.read_bytes(), path.stat().st_mtime_ns, sorted(os.listdir(path.parent))


def test_file_mode_is_0600_even_with_umask_000(tmp_path: Path, provider: PassphraseProvider) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "fresh" / "keyring.json"
        Keyring.create(path, provider, expected_population=10**7)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert os.listdir(path.parent) == ["keyring.json"]  # no temp file left behind


def test_header_records_the_parameters(keyring: Keyring, keyring_path: Path) -> None:
    doc = json.loads(keyring_path.read_text())
    header = doc["header"]
    assert header["format"] == "pivault.keyring" and header["version"] == 1
    assert header["vault_id"] == keyring.vault_id
    assert header["expected_population"] == 10**7
    assert header["provider"]["kind"] == "passphrase"
    assert header["provider"]["kdf"] == "argon2id"
    assert {"time_cost", "memory_cost_kib", "parallelism", "salt"} <= set(header["provider"])
    assert {n: v["bits"] for n, v in header["indexes"].items()} == {
        "id_number": 21,
        "mobile": 21,
        "name_birth": 21,
    }
    assert header["created"].endswith("Z")
    assert keyring.describe() == header


def test_default_argon2_parameters(tmp_path: Path) -> None:
    assert Argon2Params() == Argon2Params(time_cost=3, memory_cost=65536, parallelism=1)
    ring = Keyring.create(tmp_path / "k.json", PassphraseProvider("pw-synthetic"), expected_population=100)
    desc = ring.describe()["provider"]
    assert isinstance(desc, dict)
    assert (desc["time_cost"], desc["memory_cost_kib"], desc["parallelism"]) == (3, 65536, 1)
    assert Keyring.open(tmp_path / "k.json", PassphraseProvider("pw-synthetic")).vault_id == ring.vault_id


def test_no_key_material_in_the_file(keyring: Keyring, keyring_path: Path, passphrase: str) -> None:
    text = keyring_path.read_bytes()
    assert passphrase.encode() not in text
    handles = [keyring._aead_handle, *keyring._prf_handles.values()]
    for handle in handles:
        clear = tink.proto_keyset_format.serialize(handle, tink.secret_key_access.TOKEN)
        keyset = tink_pb2.Keyset.FromString(clear)
        for key in keyset.key:
            # the key proto's trailing 32 bytes are the raw key
            raw = key.key_data.value[-32:]
            for form in (
                raw,
                base64.b64encode(raw),
                base64.b64encode(key.key_data.value),
                raw.hex().encode(),
            ):
                assert form not in text
        assert base64.b64encode(clear) not in text


def test_reopen_round_trip(
    keyring: Keyring, keyring_path: Path, passphrase: str, cheap_params: Argon2Params
) -> None:
    ct = keyring.encrypt("rec-1", "name", b"v")
    again = Keyring.open(keyring_path, PassphraseProvider(passphrase, cheap_params))
    assert again.vault_id == keyring.vault_id
    assert again.index_names == keyring.index_names
    assert again.decrypt("rec-1", "name", ct) == b"v"
    assert again.key_info() == keyring.key_info()


def test_open_takes_argon2_parameters_from_the_header(
    keyring: Keyring, keyring_path: Path, passphrase: str
) -> None:
    # a provider built with the (expensive) defaults adopts the file's parameters
    again = Keyring.open(keyring_path, PassphraseProvider(passphrase))
    assert again.vault_id == keyring.vault_id


def test_refuse_overwrite(keyring: Keyring, keyring_path: Path, provider: PassphraseProvider) -> None:
    before = _snapshot(keyring_path)
    with pytest.raises(KeyringError) as info:
        Keyring.create(keyring_path, provider, expected_population=10**7)
    assert info.value.code == "keyring.exists"
    assert _snapshot(keyring_path) == before


def test_refuse_keyring_inside_data_dir(tmp_path: Path, provider: PassphraseProvider) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    for inside in (data / "keyring.json", data / "sub" / "keyring.json", data):
        with pytest.raises(KeyringError) as info:
            Keyring.create(inside, provider, expected_population=10**7, data_dir=data)
        assert info.value.code == "keyring.location"
    # through a symlink that points into the data directory
    (tmp_path / "alias").symlink_to(data)
    with pytest.raises(KeyringError) as info:
        Keyring.create(tmp_path / "alias" / "k.json", provider, expected_population=10**7, data_dir=data)
    assert info.value.code == "keyring.location"
    # relative spellings are resolved too
    with pytest.raises(KeyringError):
        Keyring.create(data / ".." / "data" / "k.json", provider, expected_population=10**7, data_dir=data)
    assert list(data.rglob("*.json")) == []
    # a sibling directory whose name starts the same is fine
    ok = Keyring.create(tmp_path / "data-keys" / "k.json", provider, expected_population=10**7, data_dir=data)
    assert ok.path.parent.name == "data-keys"


def test_wrong_passphrase(keyring: Keyring, keyring_path: Path, cheap_params: Argon2Params) -> None:
    before = _snapshot(keyring_path)
    with pytest.raises(KeyringError) as info:
        Keyring.open(keyring_path, PassphraseProvider("not-the-passphrase", cheap_params))
    assert info.value.code == "keyring.passphrase"
    assert "passphrase" in str(info.value)
    assert "not-the-passphrase" not in str(info.value)
    assert info.value.__cause__ is None
    assert _snapshot(keyring_path) == before


def test_missing_file(tmp_path: Path, provider: PassphraseProvider) -> None:
    with pytest.raises(KeyringError) as info:
        Keyring.open(tmp_path / "nope.json", provider)
    assert info.value.code == "keyring.missing"


def _expect_rejected(path: Path, passphrase: str, params: Argon2Params) -> str:
    before = _snapshot(path)
    with pytest.raises(KeyringError) as info:
        Keyring.open(path, PassphraseProvider(passphrase, params))
    assert info.value.code in {"keyring.corrupt", "keyring.passphrase"}, info.value.code
    assert _snapshot(path) == before
    return info.value.code


def test_every_flipped_byte_is_rejected(
    keyring_path: Path, keyring: Keyring, passphrase: str, cheap_params: Argon2Params
) -> None:
    good = keyring_path.read_bytes()
    codes: set[str] = set()
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 0x01
        keyring_path.write_bytes(bytes(bad))
        codes.add(_expect_rejected(keyring_path, passphrase, cheap_params))
    assert codes == {"keyring.corrupt", "keyring.passphrase"}


def test_truncated_file_is_rejected(
    keyring_path: Path, keyring: Keyring, passphrase: str, cheap_params: Argon2Params
) -> None:
    good = keyring_path.read_bytes()
    content = len(good.rstrip())  # dropping the trailing newline loses nothing
    for cut in [*range(0, content, 7), content - 1]:
        keyring_path.write_bytes(good[:cut])
        assert _expect_rejected(keyring_path, passphrase, cheap_params) == "keyring.corrupt"


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"[]",
        b"null",
        b"{}",
        b"\xff\xfe",
        json.dumps({"header": 1, "verifier": "", "keysets": {}}).encode(),
    ],
)
def test_bad_json_is_rejected(
    keyring_path: Path, keyring: Keyring, passphrase: str, cheap_params: Argon2Params, content: bytes
) -> None:
    keyring_path.write_bytes(content)
    assert _expect_rejected(keyring_path, passphrase, cheap_params) == "keyring.corrupt"


def _edit(path: Path, change: object) -> None:
    doc = json.loads(path.read_text())
    change(doc)  # type: ignore[operator]
    path.write_text(json.dumps(doc))


def test_edited_header_is_rejected(
    keyring_path: Path, keyring: Keyring, passphrase: str, cheap_params: Argon2Params
) -> None:
    good = keyring_path.read_bytes()
    edits = [
        lambda d: d["header"]["indexes"]["id_number"].update(bits=8),
        lambda d: d["header"].update(expected_population=10**3),
        lambda d: d["header"]["provider"].update(memory_cost_kib=1 << 40),
        lambda d: d["header"]["provider"].update(salt="!!"),
        lambda d: d["header"]["indexes"].pop("mobile"),
        lambda d: d["keysets"].pop("prf.mobile"),
        lambda d: d["keysets"].update({"prf.mobile": d["keysets"]["prf.id_number"]}),
        lambda d: d["keysets"]["aead"]["keysetInfo"].update(primaryKeyId=1),
        lambda d: d.update(verifier="AAAA"),
    ]
    for edit in edits:
        keyring_path.write_bytes(good)
        _edit(keyring_path, edit)
        _expect_rejected(keyring_path, passphrase, cheap_params)


def test_newer_format_version(keyring_path: Path, keyring: Keyring, provider: PassphraseProvider) -> None:
    _edit(keyring_path, lambda d: d["header"].update(version=99))
    with pytest.raises(KeyringError) as info:
        Keyring.open(keyring_path, provider)
    assert info.value.code == "keyring.version"


def test_bad_create_arguments(tmp_path: Path, provider: PassphraseProvider) -> None:
    for population in (0, 15, -1, 10**13, 1.5, "1000"):
        with pytest.raises(KeyringError) as info:
            Keyring.create(tmp_path / "k.json", provider, expected_population=population)  # type: ignore[arg-type]
        assert info.value.code == "keyring.population"
    for names in (("Bad Name",), ("a", "a"), "id_number", ("",)):
        with pytest.raises(KeyringError) as info:
            Keyring.create(tmp_path / "k.json", provider, expected_population=100, index_names=names)
        assert info.value.code == "keyring.index"
    assert not (tmp_path / "k.json").exists()


def test_argon2_params_validation() -> None:
    for bad in (
        {"time_cost": 0},
        {"memory_cost": 4},
        {"parallelism": 0},
        {"memory_cost": 1 << 40},
        {"time_cost": 1.5},
    ):
        with pytest.raises(ValueError):
            Argon2Params(**bad)


def test_empty_passphrase_refused() -> None:
    with pytest.raises(KeyringError) as info:
        PassphraseProvider("")
    assert info.value.code == "keyring.passphrase"


def test_passphrase_is_nfc_normalised(tmp_path: Path, cheap_params: Argon2Params) -> None:
    composed, decomposed = "caf\u00e9-pass", "cafe\u0301-pass"
    ring = Keyring.create(
        tmp_path / "k.json", PassphraseProvider(composed, cheap_params), expected_population=100
    )
    assert (
        Keyring.open(tmp_path / "k.json", PassphraseProvider(decomposed, cheap_params)).vault_id
        == ring.vault_id
    )


def test_provider_describe_has_no_secret(provider: PassphraseProvider, passphrase: str) -> None:
    assert passphrase not in json.dumps(provider.describe())
    assert passphrase not in repr(provider)


class _StaticKeyProvider:
    """A stand-in for a KMS: the root key lives elsewhere, the header names it."""

    def __init__(self, key_name: str, key: bytes) -> None:
        self.key_name = key_name
        self._aead = AESGCM(key)

    def describe(self) -> dict[str, object]:
        return {"kind": "test-kms", "key_uri": f"test-kms://{self.key_name}"}

    def restore(self, description: Mapping[str, object]) -> None:
        if description.get("kind") != "test-kms":
            raise KeyringError("not a test-kms keyring", code="keyring.provider")

    def wrap(self, plaintext: bytes, associated_data: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, associated_data)

    def unwrap(self, ciphertext: bytes, associated_data: bytes) -> bytes:
        return self._aead.decrypt(ciphertext[:12], ciphertext[12:], associated_data)


def test_other_root_key_providers_plug_in(tmp_path: Path, provider: PassphraseProvider) -> None:
    key = AESGCM.generate_key(bit_length=256)
    kms = _StaticKeyProvider("k1", key)
    assert isinstance(kms, RootKeyProvider)
    ring = Keyring.create(tmp_path / "k.json", kms, expected_population=10**9)
    ct = ring.encrypt("rec-1", "name", b"v")
    again = Keyring.open(tmp_path / "k.json", _StaticKeyProvider("k1", key))
    assert again.decrypt("rec-1", "name", ct) == b"v"
    assert again.index_bits("id_number") == 27
    # a passphrase cannot open a KMS-protected keyring
    with pytest.raises(KeyringError) as info:
        Keyring.open(tmp_path / "k.json", provider)
    assert info.value.code == "keyring.provider"
    # the wrong KMS key is reported as such, and the cause is kept for the operator
    with pytest.raises(KeyringError) as info:
        Keyring.open(tmp_path / "k.json", _StaticKeyProvider("k1", AESGCM.generate_key(bit_length=256)))
    assert info.value.code == "keyring.unwrap"
    assert isinstance(info.value.__cause__, InvalidTag)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_passphrase_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIVAULT_PASSPHRASE", "from-env-synthetic")
    assert passphrase_from_env_or_prompt() == "from-env-synthetic"


def test_passphrase_without_env_or_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIVAULT_PASSPHRASE", raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(KeyringError) as info:
        passphrase_from_env_or_prompt()
    assert info.value.code == "keyring.passphrase"
    assert "PIVAULT_PASSPHRASE" in str(info.value)


def test_passphrase_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIVAULT_PASSPHRASE", raising=False)
    monkeypatch.setattr(sys, "stdin", _Tty(""))
    answers = iter(["typed-synthetic", "typed-synthetic", "typed-synthetic", "different"])
    monkeypatch.setattr(providers_module, "getpass", lambda prompt="": next(answers))
    assert passphrase_from_env_or_prompt(confirm=True) == "typed-synthetic"
    with pytest.raises(KeyringError):
        passphrase_from_env_or_prompt(confirm=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_damage_never_escapes_as_another_error(
    keyring_path: Path, keyring: Keyring, passphrase: str, cheap_params: Argon2Params, data: st.DataObject
) -> None:
    good = keyring_path.read_bytes()
    bad = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(bad) - 1))
        action = data.draw(st.sampled_from(["replace", "delete", "insert"]))
        byte = data.draw(st.integers(0, 255))
        if action == "replace":
            bad[pos] = byte
        elif action == "delete":
            del bad[pos]
        else:
            bad.insert(pos, byte)
    keyring_path.write_bytes(bytes(bad))
    try:
        try:
            again = Keyring.open(keyring_path, PassphraseProvider(passphrase, cheap_params))
        except KeyringError:
            return
        # only changes that leave the JSON meaning intact (e.g. added whitespace) may open
        assert json.loads(bad) == json.loads(good)
        assert again.vault_id == keyring.vault_id
    finally:
        keyring_path.write_bytes(good)


def test_deeply_nested_json_is_corrupt(
    keyring_path: Path, keyring: Keyring, provider: PassphraseProvider
) -> None:
    keyring_path.write_bytes(b"[" * 200_000 + b"]" * 200_000)
    with pytest.raises(KeyringError) as info:
        Keyring.open(keyring_path, provider)
    assert info.value.code == "keyring.corrupt"


@pytest.mark.parametrize("weak", ["short", " " * 20, "  eleven-ch  ", "\t" * 3])
def test_a_new_passphrase_must_be_long_enough(monkeypatch: pytest.MonkeyPatch, weak: str) -> None:
    """Only a new keyring's passphrase is judged: an existing keyring opens with the one it has."""
    monkeypatch.setenv("PIVAULT_PASSPHRASE", weak)
    with pytest.raises(KeyringError) as info:
        passphrase_from_env_or_prompt(confirm=True)
    assert info.value.code == "keyring.passphrase_weak"
    assert passphrase_from_env_or_prompt() == weak
    monkeypatch.delenv("PIVAULT_PASSPHRASE")
    monkeypatch.setattr(sys, "stdin", _Tty(""))
    monkeypatch.setattr(providers_module, "getpass", lambda prompt="": weak)
    with pytest.raises(KeyringError):
        passphrase_from_env_or_prompt(confirm=True)
    monkeypatch.setenv("PIVAULT_PASSPHRASE", "twelve chars")
    assert passphrase_from_env_or_prompt(confirm=True) == "twelve chars"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o666])
def test_a_keyring_other_users_can_read_or_write_is_refused(
    keyring: Keyring, keyring_path: Path, provider: PassphraseProvider, mode: int,
) -> None:
    """A keyring copied into place by hand (a download, an editor, `cat >` under umask 022) could be
    readable by every local user: with a copy, the passphrase alone opened every key, and guessing
    it needs no access to the vault. It opened in silence. It is refused now, as `serve` refuses a
    TLS key file others can read, in one line that says what to do; nothing is read or changed."""
    keyring_path.chmod(mode)
    before = _snapshot(keyring_path)
    with pytest.raises(KeyringError) as info:
        Keyring.open(keyring_path, provider)
    assert info.value.code == "keyring.mode" and "\n" not in info.value.message
    assert f"{mode:o}" in info.value.message and "chmod 600" in (info.value.hint or "")
    assert _snapshot(keyring_path) == before and keyring_path.stat().st_mode & 0o777 == mode
    keyring_path.chmod(0o600)
    assert Keyring.open(keyring_path, provider).vault_id == keyring.vault_id
