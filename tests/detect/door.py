"""A real Vault with the DetectGuard in its door, for the detect tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pivault.audit import AuditLog, VerifierKey, create_audit_keys, load_writer
from pivault.crypto import Keyring
from pivault.detect import (
    AlertDispatcher,
    Budget,
    BudgetPolicy,
    Budgets,
    CanaryRegistry,
    Counters,
    DetectGuard,
    DetectorConfig,
    GlobalDetector,
    MemoryCounters,
    TableSink,
)
from pivault.policy.context import AccessContext
from pivault.policy.tokens import TokenStore
from pivault.store import Database
from pivault.synth import generate
from pivault.vault import Vault

OPERATOR = AccessContext(principal="local:seeder", role="operator", purpose="administration")


@dataclass
class Door:
    vault: Vault
    guard: DetectGuard
    log: AuditLog
    verifier: VerifierKey
    tokens: TokenStore
    canaries: CanaryRegistry
    ids: list[tuple[str, str]]  # (record id, id number) of the residents put in

    def reader(self, n: int = 1) -> AccessContext:
        info, _ = self.tokens.create(f"reader-{n}", "operator", ["case_investigation"], ttl_seconds=3600)
        return AccessContext(principal=info.principal, role="operator", purpose="case_investigation",
                             token_id=info.token_id, source="api")


def make_door(db: Database, keyring: Keyring, key_dir: Path, *, budget: Budget,
              vault_budget: Budget | None = None, counters: Counters | None = None,
              residents: int = 40, suspend_after: int = 3,
              detector: DetectorConfig | None = None) -> Door:
    verifier = create_audit_keys(key_dir, keyring)
    log = AuditLog(db, keyring, load_writer(key_dir, keyring), checkpoint_every=50)
    counters = counters or MemoryCounters()
    alerts = AlertDispatcher([TableSink(db)], claim=counters.claim)
    tokens = TokenStore(db)
    canaries = CanaryRegistry(db, keyring)
    guard = DetectGuard(
        log, budgets=Budgets(BudgetPolicy(roles={"operator": budget}, vault=vault_budget or Budget(),
                                          suspend_after=suspend_after), counters),
        alerts=alerts, canaries=canaries,
        detector=GlobalDetector(counters, alerts, detector) if detector else None,
        suspend=tokens.suspend)
    vault = Vault.initialise(db, keyring, guard=guard)
    guard.attach(vault)
    ids = []
    for row in generate(residents, 11):
        rid = vault.put({"name": row["name"], "id_number": row["id_number"], "mobile": row["mobile"] or None,
                         "address": row["address"] or None, "notes": row["notes"] or None}, ctx=OPERATOR)
        ids.append((rid, row["id_number"]))
    return Door(vault, guard, log, verifier, tokens, canaries, ids)
