"""Fixtures for the audit trail: a cheap keyring, audit keys, a migrated store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pivault.audit import AuditLog, VerifierKey, WriterKeys, create_audit_keys, load_writer
from pivault.crypto import Argon2Params, Keyring, PassphraseProvider
from pivault.policy.context import AccessContext
from pivault.store import Database, migrate

CHEAP = Argon2Params(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    provider = PassphraseProvider("synthetic-audit-passphrase", CHEAP)
    return Keyring.create(tmp_path / "keys" / "keyring.json", provider, expected_population=10**6)


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def verifier(key_dir: Path, keyring: Keyring) -> VerifierKey:
    return create_audit_keys(key_dir, keyring)


@pytest.fixture
def writer(key_dir: Path, keyring: Keyring, verifier: VerifierKey) -> WriterKeys:
    return load_writer(key_dir, keyring)


@pytest.fixture
def db(store_url: str) -> Iterator[Database]:
    database = Database(store_url)
    migrate(database)
    yield database
    database.close()


@pytest.fixture
def log(db: Database, keyring: Keyring, writer: WriterKeys) -> AuditLog:
    return AuditLog(db, keyring, writer, checkpoint_every=10)


@pytest.fixture
def ctx() -> AccessContext:
    return AccessContext(principal="officer-17", role="clerk", purpose="case-work",
                         token_id="t_0001", source="api")
