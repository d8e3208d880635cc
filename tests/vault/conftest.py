"""Fixtures for the Vault tests: a bound vault on each backend, access contexts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from vault_support import new_keyring

from pivault.policy import AccessContext, local_operator
from pivault.store.db import Database
from pivault.vault import Vault


@pytest.fixture
def ctx() -> AccessContext:
    return local_operator("test")


@pytest.fixture
def reveal() -> AccessContext:
    return local_operator("test", reveal=True)


@pytest.fixture
def vault(store_url: str, tmp_path: Path) -> Iterator[Vault]:
    """A bound vault on SQLite and on PostgreSQL."""
    db = Database(store_url)
    v = Vault.initialise(db, new_keyring(tmp_path / "keys" / "vault.keyring"))
    yield v
    db.close()


@pytest.fixture
def sqlite_vault(sqlite_url: str, tmp_path: Path) -> Iterator[Vault]:
    db = Database(sqlite_url)
    v = Vault.initialise(db, new_keyring(tmp_path / "keys" / "vault.keyring"))
    yield v
    db.close()
