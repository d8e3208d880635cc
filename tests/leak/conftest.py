"""A small synthetic vault with an audit trail, principals, and the guard that records them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from pivault.audit import AuditEvent, AuditLog, create_audit_keys, load_writer
from pivault.crypto import Argon2Params, Keyring, PassphraseProvider
from pivault.model import Resident
from pivault.policy.context import AccessContext
from pivault.store.db import Database
from pivault.synth import generate
from pivault.vault import Vault
from pivault.vault.facade import seal
from pivault.vault.guard import LocalGuard

CHEAP = Argon2Params(time_cost=1, memory_cost=8, parallelism=1)
POPULATION = 12_000


class AuditingGuard(LocalGuard):
    """The local guard, with more roles and every access appended to the audit chain."""

    allowed_roles = frozenset({"operator", "system", "approver", "dpo", "officer", "analyst"})

    def __init__(self, log: AuditLog) -> None:
        self.log = log

    def audit(self, ctx: AccessContext, operation: str, record_ids: Sequence[str], outcome: str) -> None:
        outcome = {"not_found": "miss"}.get(outcome, outcome)
        self.log.append(AuditEvent.of(ctx, operation, outcome, record_ids))


def ctx(principal: str, role: str = "analyst", purpose: str = "statistics") -> AccessContext:
    return AccessContext(principal=principal, role=role, purpose=purpose, source="cli")


@dataclass
class World:
    vault: Vault
    residents: list[Resident]
    tmp: Path


def build_vault(tmp: Path, url: str, count: int = POPULATION, seed: int = 11) -> World:
    kr = Keyring.create(tmp / "keys" / "keyring.json", PassphraseProvider("synthetic leak tests", CHEAP),
                        expected_population=10**5)
    create_audit_keys(tmp / "keys", kr)
    writer = load_writer(tmp / "keys", kr)
    db = Database(url)
    log = AuditLog(db, kr, writer, checkpoint_every=1000)
    vault = Vault.initialise(db, kr, guard=AuditingGuard(log))
    residents: list[Resident] = []
    for row in generate(count, seed):
        residents.append(Resident.parse({k: row[k] or None for k in  # type: ignore[literal-required]
                                         ("name", "id_number", "mobile", "address", "notes")}))
    for i in range(0, len(residents), 2000):
        vault.store.insert([seal(kr, r) for r in residents[i:i + 2000]])
    return World(vault, residents, tmp)


@pytest.fixture
def world(tmp_path: Path, sqlite_url: str) -> Iterator[World]:
    w = build_vault(tmp_path, sqlite_url)
    yield w
    w.vault.close()
