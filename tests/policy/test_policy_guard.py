"""The PolicyGuard at the Vault's door: decides by role and purpose, masks by policy,
hands budget and audit to its delegate (which sees every refusal)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from pivault.crypto import Argon2Params, Keyring, PassphraseProvider
from pivault.errors import PivaultError
from pivault.policy import AccessContext, Policy
from pivault.policy.guard import PolicyGuard
from pivault.store.db import Database
from pivault.synth import generate
from pivault.vault import AccessDenied, Vault

CHEAP = Argon2Params(time_cost=1, memory_cost=8, parallelism=1)


class Recorder:
    """A delegate that records what the Vault reports."""

    def __init__(self) -> None:
        self.audits: list[tuple[str, str, str, tuple[str, ...]]] = []
        self.charged: list[tuple[str, int]] = []

    def budget(self, ctx: AccessContext, operation: str, n: int) -> None:
        self.charged.append((operation, n))

    def audit(self, ctx: AccessContext, operation: str, record_ids: Sequence[str], outcome: str) -> None:
        self.audits.append((ctx.principal, operation, outcome, tuple(record_ids)))


Setup = tuple[Vault, Recorder, list[dict[str, str]], list[str]]


@pytest.fixture
def vault(store_url: str, tmp_path: Path) -> Iterator[Setup]:
    db = Database(store_url)
    kr = Keyring.create(tmp_path / "keys" / "k.keyring", PassphraseProvider("synthetic", CHEAP),
                        expected_population=1000)
    v = Vault.initialise(db, kr)
    people = [{k: r[k] for k in ("name", "id_number", "mobile", "address", "notes")}  # type: ignore[literal-required]
              for r in generate(5, 99)]
    ids = [v.put(p, ctx=AccessContext("setup", "operator", "setup")) for p in people]
    rec = Recorder()
    v.guard = PolicyGuard(Policy.default(), delegate=rec, denied=AccessDenied)
    yield v, rec, people, ids
    db.close()


def ctx(role: str, purpose: str, reveal: bool = False) -> AccessContext:
    return AccessContext(principal=f"p-{role}", role=role, purpose=purpose, reveal=reveal, token_id="t1",
                         source="api")


def test_masks_and_hidden_fields(vault: Setup) -> None:
    v, rec, people, ids = vault
    got = v.get(ids[0], ctx=ctx("officer", "identity_verification"))
    assert got["notes"] is None  # not a field the officer sees: never leaves the vault
    assert got["id_number"] != people[0]["id_number"]
    idn = people[0]["id_number"]
    assert got["id_number"] == idn[0] + "*" * 16 + idn[-1]  # the ends only: the sequence stays hidden
    assert got["name"] != people[0]["name"]
    assert rec.audits[-1] == ("p-officer", "get", "ok", (ids[0],))
    assert ("get", 1) in rec.charged
    found = v.find(id_number=people[1]["id_number"], ctx=ctx("officer", "case_investigation", True))
    assert found[0]["address"] == people[1]["address"]  # revealable for this purpose
    assert found[0]["name"] != people[1]["name"]  # not revealable


def test_refusals_are_the_vaults_exception_and_are_audited(
        vault: Setup) -> None:
    v, rec, people, ids = vault
    cases = [
        (lambda: v.erase(ids[0], ctx=ctx("officer", "identity_verification")), "policy.operation"),
        (lambda: v.get(ids[0], ctx=ctx("officer", "registration")), "policy.purpose"),
        (lambda: v.get(ids[0], ctx=ctx("officer", "identity_verification", True)), "policy.reveal"),
        (lambda: v.get(ids[0], ctx=ctx("ghost", "x")), "policy.role"),
        (lambda: v.put(people[0], ctx=ctx("dpo", "data_subject_request")), "policy.operation"),
        (lambda: v.stats(ctx=ctx("officer", "identity_verification")), "policy.operation"),
    ]
    for call, code in cases:
        n = len(rec.audits)
        with pytest.raises(AccessDenied) as exc:
            call()
        assert exc.value.code == code
        assert rec.audits[n][2] == "denied"
    v.stats(ctx=ctx("admin", "administration"), key_usage=False)
    v.stats(ctx=ctx("dpo", "audit"), key_usage=False)


def test_writable_fields_are_enforced(tmp_path: Path,
                                      vault: Setup) -> None:
    v, _, _, ids = vault
    text = Policy.default_text().replace(
        'writable = ["name", "id_number", "mobile", "address", "notes"]', 'writable = ["mobile"]')
    v.guard = PolicyGuard(Policy.loads(text), denied=AccessDenied)
    v.update(ids[2], {"mobile": None}, ctx=ctx("registrar", "correction"))
    with pytest.raises(AccessDenied) as exc:
        v.update(ids[2], {"name": "王五"}, ctx=ctx("registrar", "correction"))
    assert exc.value.code == "policy.field"


def test_default_exception_is_the_policys() -> None:
    g = PolicyGuard(Policy.default())
    with pytest.raises(PivaultError) as exc:
        g.authorise(ctx("officer", "identity_verification"), "erase", ())
    assert isinstance(exc.value, PermissionError) and exc.value.code == "policy.operation"
    with pytest.raises(PivaultError):
        g.authorise(ctx("officer", "identity_verification"), "launch", ())
    assert g.mask(ctx("officer", "x"), "record_id", "r_1") == "r_1"
    assert g.mask(ctx("ghost", "x"), "name", "王五") is None
