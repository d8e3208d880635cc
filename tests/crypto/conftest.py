"""Fixtures for the keyring tests: cheap Argon2 parameters, a fresh keyring."""

from __future__ import annotations

from pathlib import Path

import pytest

from pivault.crypto import Argon2Params, Keyring, PassphraseProvider


@pytest.fixture
def cheap_params() -> Argon2Params:
    # Minimum Argon2 cost: the tests check behaviour, not the work factor.
    return Argon2Params(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture
def passphrase() -> str:
    return "synthetic-test-passphrase-7f3a"


@pytest.fixture
def provider(passphrase: str, cheap_params: Argon2Params) -> PassphraseProvider:
    return PassphraseProvider(passphrase, cheap_params)


@pytest.fixture
def keyring_path(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "keyring.json"


@pytest.fixture
def keyring(keyring_path: Path, provider: PassphraseProvider) -> Keyring:
    return Keyring.create(keyring_path, provider, expected_population=10**7)
