"""Field encryption: round trip, tamper and move detection, worker processes."""

from __future__ import annotations

import multiprocessing
import pickle
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pivault.crypto import IntegrityError, Keyring, KeyringError, PassphraseProvider
from pivault.errors import PivaultError


def test_round_trip(keyring: Keyring) -> None:
    plaintext = "甲乙丙".encode()
    ct = keyring.encrypt("rec-1", "name", plaintext)
    assert plaintext not in ct
    assert keyring.decrypt("rec-1", "name", ct) == plaintext


def test_empty_plaintext_round_trips(keyring: Keyring) -> None:
    ct = keyring.encrypt("rec-1", "notes", b"")
    assert keyring.decrypt("rec-1", "notes", ct) == b""


def test_encryption_is_randomised(keyring: Keyring) -> None:
    a = keyring.encrypt("rec-1", "mobile", b"13800000000")
    b = keyring.encrypt("rec-1", "mobile", b"13800000000")
    assert a != b


def test_ciphertext_layout(keyring: Keyring) -> None:
    ct = keyring.encrypt("rec-1", "name", b"x" * 10)
    # format byte, Tink prefix (5), XChaCha20 nonce (24), plaintext, tag (16)
    assert len(ct) == 1 + 5 + 24 + 10 + 16
    assert ct[0] == 1 and ct[1] == 1


def test_many_round_trip(keyring: Keyring) -> None:
    fields = {"name": "丁戊".encode(), "id_number": b"12345678901234567X", "mobile": b"13912345678"}
    cts = keyring.encrypt_many("rec-9", fields)
    assert set(cts) == set(fields)
    assert keyring.decrypt_many("rec-9", cts) == fields
    # the batch path and the single path produce interchangeable ciphertexts
    assert keyring.decrypt("rec-9", "name", cts["name"]) == fields["name"]
    single = keyring.encrypt("rec-9", "mobile", fields["mobile"])
    assert keyring.decrypt_many("rec-9", {"mobile": single}) == {"mobile": fields["mobile"]}


def test_every_flipped_byte_is_rejected(keyring: Keyring) -> None:
    ct = keyring.encrypt("rec-1", "name", b"synthetic value")
    for i in range(len(ct)):
        for bit in (0x01, 0x80):
            bad = bytearray(ct)
            bad[i] ^= bit
            with pytest.raises(IntegrityError) as info:
                keyring.decrypt("rec-1", "name", bytes(bad))
            assert info.value.field == "name"
            assert isinstance(info.value, PivaultError)


def test_truncated_and_extended_rejected(keyring: Keyring) -> None:
    ct = keyring.encrypt("rec-1", "name", b"synthetic value")
    for cut in range(len(ct)):
        with pytest.raises(IntegrityError):
            keyring.decrypt("rec-1", "name", ct[:cut])
    with pytest.raises(IntegrityError):
        keyring.decrypt("rec-1", "name", ct + b"\x00")


def test_moved_to_other_record_or_field_is_rejected(keyring: Keyring) -> None:
    secret = b"SYNTHETIC-VALUE-42"
    ct = keyring.encrypt("rec-1", "name", secret)
    for record_id, field in [("rec-2", "name"), ("rec-1", "address"), ("rec-10", "name")]:
        with pytest.raises(IntegrityError) as info:
            keyring.decrypt(record_id, field, ct)
        assert info.value.code == "crypto.integrity"
        message = str(info.value)
        assert repr(field) in message
        assert "SYNTHETIC" not in message and "rec-" not in message


def test_associated_data_is_unambiguous(keyring: Keyring) -> None:
    # naive concatenation would make ("12", "3name") and ("123", "name") the same
    ct = keyring.encrypt("12", "3name", b"v")
    with pytest.raises(IntegrityError):
        keyring.decrypt("123", "name", ct)
    ct = keyring.encrypt("a", "b\x00c", b"v")
    with pytest.raises(IntegrityError):
        keyring.decrypt("a\x00b", "c", ct)


def test_other_keyring_cannot_decrypt(tmp_path: Path, keyring: Keyring, provider: PassphraseProvider) -> None:
    other = Keyring.create(tmp_path / "other.json", provider, expected_population=10**7)
    ct = keyring.encrypt("rec-1", "name", b"v")
    with pytest.raises(IntegrityError):
        other.decrypt("rec-1", "name", ct)


def test_unknown_format_byte(keyring: Keyring) -> None:
    ct = keyring.encrypt("rec-1", "name", b"v")
    with pytest.raises(IntegrityError):
        keyring.decrypt("rec-1", "name", b"\x02" + ct[1:])


def test_key_id_of_matches_primary(keyring: Keyring) -> None:
    ct = keyring.encrypt("rec-1", "name", b"v")
    aead_info = next(i for i in keyring.key_info() if i["keyset"] == "aead")
    assert keyring.key_id_of(ct) == aead_info["primary_key_id"]
    assert aead_info["key_ids"] == [aead_info["primary_key_id"]]
    assert aead_info["key_type"] == "XChaCha20Poly1305Key"
    with pytest.raises(IntegrityError):
        keyring.key_id_of(b"\x01\x01")


def test_key_info_lists_every_keyset(keyring: Keyring) -> None:
    info = keyring.key_info()
    assert [i["keyset"] for i in info] == ["aead", "prf.id_number", "prf.mobile", "prf.name_birth"]
    for entry in info[1:]:
        assert entry["key_type"] == "HmacPrfKey"
        assert entry["index_bits"] == 21
    text = repr(info)
    assert "value" not in text.lower()


def test_wrong_types_never_echo_the_value(keyring: Keyring) -> None:
    with pytest.raises(TypeError) as info:
        keyring.encrypt("rec-1", "name", "SYNTHETIC-PLAINTEXT")  # type: ignore[arg-type]
    assert "SYNTHETIC" not in str(info.value)
    with pytest.raises(TypeError) as info:
        keyring.decrypt("rec-1", "name", "SYNTHETIC-CIPHERTEXT")  # type: ignore[arg-type]
    assert "SYNTHETIC" not in str(info.value)
    with pytest.raises(TypeError):
        keyring.encrypt_many("rec-1", {"name": "SYNTHETIC"})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        keyring.encrypt(1, "name", b"v")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        keyring.encrypt("", "name", b"v")
    # bytes-like values are accepted
    ct = keyring.encrypt("rec-1", "name", bytearray(b"abc"))  # type: ignore[arg-type]
    assert keyring.decrypt("rec-1", "name", memoryview(ct)) == b"abc"  # type: ignore[arg-type]


def test_keyring_and_provider_refuse_pickling(keyring: Keyring, provider: PassphraseProvider) -> None:
    with pytest.raises(TypeError):
        pickle.dumps(keyring)
    with pytest.raises(TypeError):
        pickle.dumps(provider)


def test_reopen_with_same_provider_skips_argon2(
    keyring: Keyring, keyring_path: Path, provider: PassphraseProvider
) -> None:
    before = provider.derivations
    again = Keyring.open(keyring_path, provider)
    assert provider.derivations == before
    ct = keyring.encrypt("rec-1", "name", b"v")
    assert again.decrypt("rec-1", "name", ct) == b"v"


_INHERITED: Keyring | None = None


def _worker(args: tuple[str, bytes]) -> bytes:
    assert _INHERITED is not None
    record_id, ct = args
    return _INHERITED.decrypt(record_id, "name", ct)


def _worker_reopen(path: str) -> tuple[int, bytes]:
    assert _INHERITED is not None
    provider = _INHERITED._provider
    ring = Keyring.open(path, provider)
    derivations = provider.derivations  # type: ignore[attr-defined]
    return derivations, ring.decrypt("rec-0", "name", ring.encrypt("rec-0", "name", b"w"))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_forked_workers_inherit_the_keyring(keyring: Keyring, keyring_path: Path) -> None:
    global _INHERITED
    _INHERITED = keyring
    try:
        jobs = [(f"rec-{i}", keyring.encrypt(f"rec-{i}", "name", f"v{i}".encode())) for i in range(20)]
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(2) as pool:
            assert pool.map(_worker, jobs) == [f"v{i}".encode() for i in range(20)]
            derivations, value = pool.apply(_worker_reopen, (str(keyring_path),))
        assert value == b"w"
        assert derivations == 1  # the root key came with the fork, Argon2 did not run again
    finally:
        _INHERITED = None


def test_integrity_error_is_not_a_keyring_error(keyring: Keyring) -> None:
    with pytest.raises(IntegrityError) as info:
        keyring.decrypt("rec-1", "name", b"\x01garbage-garbage")
    assert not isinstance(info.value, KeyringError)


ids = st.text(min_size=1, max_size=40)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(record_id=ids, field=ids, plaintext=st.binary(max_size=2048))
def test_round_trip_property(keyring: Keyring, record_id: str, field: str, plaintext: bytes) -> None:
    ct = keyring.encrypt(record_id, field, plaintext)
    assert keyring.decrypt(record_id, field, ct) == plaintext
    assert keyring.decrypt_many(record_id, keyring.encrypt_many(record_id, {field: plaintext})) == {
        field: plaintext
    }


def test_direct_encrypt_is_tinks_own(keyring: Keyring) -> None:
    # the import's record keys are wrapped through Tink's C++ AEAD without its Python wrapper:
    # the same prefix, and Tink's wrapper decrypts what it makes
    import pivault.crypto.keyring as kr_mod

    aead = keyring._aead  # type: ignore[attr-defined]
    direct = kr_mod._direct_encrypt(aead)
    assert direct != aead.encrypt
    ct = direct(b"a record key", b"ad")
    assert ct[:5] == aead.encrypt(b"x", b"ad")[:5]
    assert aead.decrypt(ct, b"ad") == b"a record key"
    assert direct(b"a record key", b"ad") != ct  # a fresh nonce each time


def test_direct_encrypt_falls_back_to_tink(keyring: Keyring) -> None:
    import pivault.crypto.keyring as kr_mod

    aead = keyring._aead  # type: ignore[attr-defined]

    class Monitored:
        _encryption_monitor = object()
        encrypt = aead.encrypt

    assert kr_mod._direct_encrypt(Monitored()) == aead.encrypt

    class Odd:  # no primitive set to pick from: Tink's own wrapper
        encrypt = aead.encrypt

    assert kr_mod._direct_encrypt(Odd()) == aead.encrypt
    direct = kr_mod._direct_encrypt(aead)
    # a call the C++ primitive refuses goes through Tink's wrapper, whose error it raises
    with pytest.raises(Exception) as caught:
        direct("not bytes", b"ad")  # type: ignore[arg-type]
    with pytest.raises(type(caught.value)):
        aead.encrypt("not bytes", b"ad")
