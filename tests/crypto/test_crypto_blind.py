"""Blind indexes: determinism, separation, length, sizing rule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pivault.crypto import Keyring, KeyringError, PassphraseProvider, index_bits_for_population

ID_A = "11010119900307891X"  # made-up, shaped like a normalised ID number


def _rule_holds(rows: int, bits: int) -> bool:
    coincidences = rows / (1 << bits)
    return 2 <= coincidences <= math.sqrt(rows)


def test_sizes_for_ten_million_and_one_billion() -> None:
    assert index_bits_for_population(10**7) == 21
    assert index_bits_for_population(10**9) == 27
    for rows in (10**7, 10**9):
        assert _rule_holds(rows, index_bits_for_population(rows))


@given(st.integers(min_value=16, max_value=10**12))
def test_sizing_rule_for_any_population(rows: int) -> None:
    assert _rule_holds(rows, index_bits_for_population(rows))


def test_sizing_rejects_tiny_populations() -> None:
    for rows in (0, 1, 15):
        with pytest.raises(ValueError):
            index_bits_for_population(rows)


def test_equal_input_equal_output(keyring: Keyring) -> None:
    assert keyring.blind_index("id_number", ID_A) == keyring.blind_index("id_number", ID_A)


def test_length_and_padding(keyring: Keyring) -> None:
    assert keyring.index_bits("id_number") == 21
    for i in range(200):
        value = keyring.blind_index("mobile", f"139{i:08d}")
        assert len(value) == 3
        assert value[-1] & 0x07 == 0  # only the leading 21 bits carry information


def test_differs_across_index_names(keyring: Keyring) -> None:
    values = [f"1380000{i:04d}" for i in range(50)]
    same = sum(keyring.blind_index("mobile", v) == keyring.blind_index("id_number", v) for v in values)
    # independent keys: a 17-bit coincidence is possible but rare
    assert same <= 1


def test_differs_across_keyrings(tmp_path: Path, keyring: Keyring, provider: PassphraseProvider) -> None:
    other = Keyring.create(tmp_path / "other.json", provider, expected_population=10**7)
    values = [f"ID{i:016d}" for i in range(50)]
    same = sum(keyring.blind_index("id_number", v) == other.blind_index("id_number", v) for v in values)
    assert same <= 1


def test_survives_reopen(keyring: Keyring, keyring_path: Path, provider: PassphraseProvider) -> None:
    expected = keyring.blind_index("name_birth", "甲乙|19900307")
    assert Keyring.open(keyring_path, provider).blind_index("name_birth", "甲乙|19900307") == expected


def test_truncation_makes_buckets_shared(tmp_path: Path, provider: PassphraseProvider) -> None:
    small = Keyring.create(tmp_path / "small.json", provider, expected_population=1000)
    bits = small.index_bits("id_number")
    assert bits == 7
    seen = {small.blind_index("id_number", f"V{i:06d}") for i in range(5000)}
    assert len(seen) <= 2**bits
    assert len(seen) > 2**bits * 0.9  # and the values spread over the buckets


def test_custom_index_names(tmp_path: Path, provider: PassphraseProvider) -> None:
    ring = Keyring.create(
        tmp_path / "k.json", provider, expected_population=10**9, index_names=("id_number", "email")
    )
    assert ring.index_names == ("id_number", "email")
    assert len(ring.blind_index("email", "someone@example.invalid")) == 4  # 27 bits
    assert Keyring.open(tmp_path / "k.json", provider).index_names == ("id_number", "email")
    with pytest.raises(KeyringError) as info:
        ring.blind_index("mobile", "13800000000")
    assert info.value.code == "keyring.index"
    with pytest.raises(KeyringError):
        ring.index_bits("mobile")


def test_bad_values(keyring: Keyring) -> None:
    with pytest.raises(ValueError):
        keyring.blind_index("id_number", "")
    with pytest.raises(TypeError) as info:
        keyring.blind_index("id_number", b"SYNTHETIC")  # type: ignore[arg-type]
    assert "SYNTHETIC" not in str(info.value)
    with pytest.raises(ValueError) as info2:
        keyring.blind_index("id_number", "SYNTHETIC\ud800")
    assert "SYNTHETIC" not in str(info2.value)
