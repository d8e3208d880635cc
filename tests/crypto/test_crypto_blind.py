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


# ---------------------------------------------------------------- batches

_VALUES = ["11010119900307891X", "13800000000", "甲乙|1990-03-07", "a", "x" * 300, "é\u0301", "𠀀|2001"]


def test_many_equals_one_by_one(keyring: Keyring) -> None:
    for name in keyring.index_names:
        assert keyring.blind_index_many(name, _VALUES) == [keyring.blind_index(name, v) for v in _VALUES]
    assert keyring.blind_index_many("mobile", []) == []
    assert keyring.blind_index_many("mobile", tuple(_VALUES)) == keyring.blind_index_many("mobile", _VALUES)


@given(st.lists(st.text(min_size=1).filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)),
                max_size=20))
def test_many_equals_one_by_one_for_any_text(values: list[str]) -> None:
    ring = _hypothesis_ring()
    for name in ring.index_names:
        assert ring.blind_index_many(name, values) == [ring.blind_index(name, v) for v in values]
        assert ring.blind_index_all_many(name, values) == [ring.blind_index_all(name, v) for v in values]


_RING: list[Keyring] = []


def _hypothesis_ring() -> Keyring:
    # one keyring for every example (hypothesis and function-scoped fixtures do not mix)
    if not _RING:
        import tempfile

        from pivault.crypto import Argon2Params

        d = Path(tempfile.mkdtemp())
        _RING.append(Keyring.create(d / "k.json", PassphraseProvider("synthetic", Argon2Params(1, 8, 1)),
                                    expected_population=1000))
    return _RING[0]


def test_many_during_rotation(keyring: Keyring, keyring_path: Path, provider: PassphraseProvider) -> None:
    before = keyring.blind_index_many("mobile", _VALUES)
    keyring.rotate("prf.mobile")
    keyring.rotate("prf.mobile")
    assert keyring.index_versions("mobile") == 3
    for ring in (keyring, Keyring.open(keyring_path, provider)):
        for name in ring.index_names:
            assert ring.blind_index_many(name, _VALUES) == [ring.blind_index(name, v) for v in _VALUES]
            assert ring.blind_index_all_many(name, _VALUES) == [ring.blind_index_all(name, v)
                                                                for v in _VALUES]
        every = ring.blind_index_all_many("mobile", _VALUES)
        assert all(len(t) == 3 for t in every)
        # the old primary's values are still among every key's (the rebuild finds old entries)
        assert all(old in t[1:] for old, t in zip(before, every, strict=True))
        primary = ring.blind_index_many("id_number", _VALUES)
        assert ring.blind_index_all_many("id_number", _VALUES) == [(v,) for v in primary]


def test_many_rejects_what_one_rejects(keyring: Keyring) -> None:
    class Sub(str):
        pass

    bad: list[object] = ["", b"SYNTHETIC", "SYNTHETIC\ud800", None, 7, Sub("SYNTHETIC")]
    for value in bad:
        with pytest.raises(Exception) as one:
            keyring.blind_index("id_number", value)  # type: ignore[arg-type]
        for many in (keyring.blind_index_many, keyring.blind_index_all_many):
            with pytest.raises(type(one.value)) as info:
                many("id_number", ["11010119900307891X", value, "13800000000"])  # type: ignore[list-item]
            assert str(info.value) == str(one.value)
            assert "SYNTHETIC" not in str(info.value)
    for many in (keyring.blind_index_many, keyring.blind_index_all_many):
        with pytest.raises(KeyringError) as info2:
            many("email", ["someone@example.invalid"])
        assert info2.value.code == "keyring.index"


def test_many_without_the_direct_call(keyring: Keyring, monkeypatch: pytest.MonkeyPatch) -> None:
    from pivault.crypto import keyring as kr_mod

    expected = [keyring.blind_index("id_number", v) for v in _VALUES]

    def broken(d: bytes, n: int) -> bytes:
        raise RuntimeError("direct call broke")

    class Inner:
        def __init__(self, compute: object) -> None:
            self.compute = compute

    class Wrapper:
        def __init__(self, public: object, inner: object | None) -> None:
            self.compute = public
            if inner is not None:
                self._cc_primitive = Inner(inner)

    public = keyring._prf["id_number"][0]  # type: ignore[attr-defined]
    # a direct call that is missing, disagrees on the probe, or fails, is not used
    assert kr_mod._direct_compute(Wrapper(public, None), 3) is public
    assert kr_mod._direct_compute(Wrapper(public, lambda d, n: b"\x00" * n), 3) is public
    assert kr_mod._direct_compute(Wrapper(public, broken), 3) is public

    def agrees(d: bytes, n: int) -> bytes:
        return public(d, n)  # type: ignore[no-any-return]

    assert kr_mod._direct_compute(Wrapper(public, agrees), 3) is agrees
    direct = keyring._prf_direct  # type: ignore[attr-defined]
    monkeypatch.setitem(direct, "id_number", (broken,))
    assert keyring.blind_index_many("id_number", _VALUES) == expected
