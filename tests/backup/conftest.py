"""Fixtures for the backup tests: a keyring and a bound vault on each backend."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "keys"))

from keys_support import new_keyring

from pivault.crypto import Keyring
from pivault.store.db import Database
from pivault.vault import Vault


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return new_keyring(tmp_path / "keys" / "vault.keyring")


@pytest.fixture
def vault(store_url: str, keyring: Keyring) -> Iterator[Vault]:
    db = Database(store_url)
    v = Vault.initialise(db, keyring)
    yield v
    v.close()
