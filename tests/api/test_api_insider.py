"""An insider with a valid token against the door: what one request may still do once the token
is suspended, and which attempts the audit trail shows — on a live server whose vault holds
canary residents."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from api_support import (
    CHEAP,
    PASSPHRASE,
    POPULATION,
    SEED,
    Live,
    audited,
    free_port,
    policy_for_tests,
    start_server,
    stop,
)

from pivault.api.tls import make_dev_cert
from pivault.detect.canary import seed
from pivault.policy import Policy
from pivault.policy.context import local_operator
from pivault.policy.tokens import TokenStore
from pivault.synth import generate
from pivault.vault import Vault, init


@dataclass
class Insider:
    live: Live
    #: the canaries' full records (the test plays someone holding a copy of the vault)
    canaries: list[dict[str, Any]]

    def token(self, principal: str, role: str) -> str:
        return self.live.token_store().create(principal, role, Policy.default().purposes_for(role),
                                              ttl_seconds=600)[1]

    def audited(self, request_id: str, at_least: int = 1) -> list[Any]:
        return audited(self.live.store_url, request_id, at_least)


@pytest.fixture(scope="module")
def insider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Insider]:
    tmp = tmp_path_factory.mktemp("insider")
    home = tmp / "home"
    url = f"sqlite:///{home / 'vault.db'}"
    init(home, passphrase=PASSPHRASE, store_url=url, keyring_path=tmp / "keys" / "vault.keyring",
         argon2=CHEAP, expected_population=1000)
    residents = [{k: r[k] for k in ("name", "id_number", "mobile", "address", "notes")}  # type: ignore[literal-required]
                 for r in generate(POPULATION, SEED)]
    with Vault.open(home, passphrase=PASSPHRASE) as vault:
        record_ids = [vault.put(r, ctx=local_operator("test setup")) for r in residents]
        canary_ids = seed(vault, 2, ctx=local_operator("test setup"), rng_seed=7)
        canaries = [vault.get(rid, ctx=local_operator("test setup", reveal=True)) for rid in canary_ids]
        TokenStore(vault.db).create("insider-admin", "admin", ["administration"], ttl_seconds=600)
    c = make_dev_cert(tmp / "tls")
    port = free_port()
    out, err = tmp / "server.stdout", tmp / "server.stderr"
    policy_file = tmp / "policy.toml"
    policy_file.write_text(policy_for_tests(), encoding="utf-8")
    proc = start_server(home, c.certfile, c.keyfile, port, out, err, "--workers", "2",
                        "--policy", str(policy_file))
    try:
        live = Live("sqlite", f"https://127.0.0.1:{port}", home, c.certfile, url, {}, residents, record_ids,
                    out, err, proc)
        yield Insider(live, canaries)
    finally:
        stop(proc)


def test_a_batch_stops_at_the_canary_that_suspends_its_token(insider: Insider) -> None:
    """A registrar holding a copy of the vault sends its numbers in one batch: the canary's number
    suspends the token at once, and the rest of the batch asks nothing more (each further
    duplicate would tell that a number is held)."""
    live = insider.live
    tok = insider.token("registrar-batch", "registrar")
    canary = insider.canaries[0]
    items = [{"name": canary["name"], "id_number": canary["id_number"]}]
    items += [{"name": r["name"], "id_number": r["id_number"]} for r in live.residents[:5]]
    with live.client(tok, purpose="registration") as c:
        r = c.post("/v1/residents/batch", json={"items": items})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["read"] == 6 and body["accepted"] + body["rejected"] == 6
        assert [x["code"] for x in body["results"]] == ["record.duplicate"] + ["auth.suspended"] * 5
        assert body["results"][1]["detail"] == "not tried: the token is suspended"
        after = c.post("/v1/residents/lookup", json={"id_number": live.residents[0]["id_number"]})
        assert after.status_code == 401 and after.json()["code"] == "auth.suspended"
    # the trail shows the one attempt and the suspension, and no probe of the numbers after it
    found = insider.audited(r.headers["x-request-id"], at_least=2)
    assert [(e.operation, e.outcome) for e in found] == [("put", "duplicate"), ("token.suspend", "ok")]


def test_a_bad_value_is_refused_and_recorded_alike_for_any_record(insider: Insider) -> None:
    """A correction with a bad value was refused inside the record's transaction, after the record
    was read and decrypted, with no audit entry — and only for a record that exists (404 for one that
    does not). Now the value is checked first: the same 422 and an ``invalid`` entry either way; and
    a lookup with a bad value leaves an entry too."""
    live = insider.live
    tok = insider.token("registrar-probe", "registrar")
    missing = "r_" + "0" * 26
    with live.client(tok, purpose="correction") as c:
        held = c.patch(f"/v1/residents/{live.record_ids[3]}", json={"mobile": "12"})
        absent = c.patch(f"/v1/residents/{missing}", json={"mobile": "12"})
    for r in (held, absent):
        assert r.status_code == 422 and r.json()["code"] == "mobile.length", r.text
    entries_held = insider.audited(held.headers["x-request-id"])
    assert [(e.operation, e.outcome, e.record_ids) for e in entries_held] == [
        ("update", "invalid", (live.record_ids[3],))]
    assert [(e.operation, e.outcome) for e in insider.audited(absent.headers["x-request-id"])] == [
        ("update", "invalid")]
    bad = live.residents[4]["id_number"][:17] + ("0" if live.residents[4]["id_number"][17] != "0" else "1")
    with live.client(tok, purpose="correction") as c:
        r = c.post("/v1/residents/lookup", json={"id_number": bad})
    assert r.status_code == 422 and r.json()["code"] == "id.checksum"
    found = insider.audited(r.headers["x-request-id"])
    assert [(e.operation, e.outcome, e.record_ids) for e in found] == [("find", "invalid", ())]
    assert bad not in (live.home / "logs" / "access.log").read_text(encoding="utf-8")


def test_no_token_is_issued_under_the_names_of_the_operator_or_the_service(insider: Insider) -> None:
    """``local:<account>`` is the vault's own command line and ``system:detect`` the watchman: a token
    under such a name put its reads on their account in the audit trail."""
    live = insider.live
    admin = insider.token("admin-mint", "admin")
    with live.client(admin, purpose="administration") as c:
        for name in ("system:detect", "local:root", "LOCAL:alice"):
            r = c.post("/v1/admin/tokens", json={"principal": name, "role": "officer"})
            assert r.status_code == 422 and r.json()["code"] == "token.invalid", r.text
        ok = c.post("/v1/admin/tokens", json={"principal": "officer-local", "role": "officer"})
        assert ok.status_code == 201
    assert not [t for t in live.token_store().list() if t.principal.lower().startswith(("local:", "system:"))]
