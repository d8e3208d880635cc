"""Synthetic residents, cheap keyrings and an auditing guard for the key and backup tests.

Every resident comes from :mod:`pivault.synth`; no real person anywhere.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

from pivault.audit import AuditEvent, AuditLog, create_audit_keys, load_writer
from pivault.audit.keys import VerifierKey
from pivault.crypto import Argon2Params, Keyring, PassphraseProvider
from pivault.policy.context import AccessContext, local_operator
from pivault.store.db import Database
from pivault.synth import generate
from pivault.vault import Vault
from pivault.vault.guard import LocalGuard

PASSPHRASE = "synthetic-keys-test-passphrase"
#: minimum Argon2 cost: the tests check behaviour, not the work factor
CHEAP = Argon2Params(time_cost=1, memory_cost=8, parallelism=1)


def provider(passphrase: str = PASSPHRASE) -> PassphraseProvider:
    return PassphraseProvider(passphrase, CHEAP)


def new_keyring(path: Path, population: int = 10**6) -> Keyring:
    return Keyring.create(path, provider(), expected_population=population)


def residents(n: int, seed: int = 7, skip: int = 0) -> list[dict[str, str]]:
    """``n`` synthetic residents (a mobile on each, so every index is exercised)."""
    out = []
    for row in itertools.islice(generate(n * 3 + skip + 50, seed=seed), skip, None):
        if not row["mobile"]:
            continue
        out.append({k: str(v) for k, v in row.items()})
        if len(out) == n:
            break
    return out


def ctx(purpose: str = "test") -> AccessContext:
    return local_operator(purpose, reveal=True)


class AuditingGuard(LocalGuard):
    """The local guard, writing every access to the audit chain (as the door's guard does)."""

    allowed_roles = frozenset({"operator", "system", "intruder"})

    def __init__(self, log: AuditLog) -> None:
        self.log = log

    def audit(self, ctx: AccessContext, operation: str, record_ids: Sequence[str], outcome: str) -> None:
        self.log.append(AuditEvent.of(ctx, operation, outcome, record_ids))


def audited_vault(db: Database, keyring: Keyring, audit_dir: Path) -> tuple[Vault, VerifierKey]:
    """A bound vault whose door writes an audit trail; its audit keys beside the keyring."""
    verifier = create_audit_keys(audit_dir, keyring) if not (audit_dir / "audit-signing.key").exists() \
        else None
    vault = Vault.initialise(db, keyring)
    vault.guard = AuditingGuard(AuditLog(db, keyring, load_writer(audit_dir, keyring), checkpoint_every=50))
    if verifier is None:
        from pivault.audit import load_verifier

        verifier = load_verifier(audit_dir)
    return vault, verifier


def put_all(vault: Vault, people: Sequence[dict[str, str]]) -> list[str]:
    c = ctx("load")
    return [vault.put(p, ctx=c) for p in people]


def wipe_store(store_url: str) -> None:
    """The data store is lost after the changes (a wipe that left the schema)."""
    with Database(store_url) as wipe:
        for t in ("blind_index", "records", "index_check_key"):
            wipe.execute(f"DELETE FROM {t}")


def open_vault(store_url: str, keyring: Keyring) -> Vault:
    return Vault(Database(store_url), keyring)


def close_vault(v: Vault) -> None:
    getattr(v.store, "close", lambda: None)()
    v.db.close()
