"""Token and policy changes made through the API are written to the audit trail."""

from __future__ import annotations

from pathlib import Path

from door import make_door
from fastapi.testclient import TestClient

from pivault.api.app import create_app
from pivault.audit import entries
from pivault.crypto import Keyring
from pivault.detect import Budget
from pivault.policy import Policy
from pivault.store import Database


def test_token_and_policy_changes_are_audited(sqlite_db: Database, keyring: Keyring, tmp_path: Path) -> None:
    door = make_door(sqlite_db, keyring, tmp_path / "keys", budget=Budget(), residents=1)
    app = create_app(door.vault, Policy.default(), tokens=door.tokens)
    _, admin = door.tokens.create("admin-1", "admin", ["administration"], ttl_seconds=600)
    with TestClient(app) as c:
        c.headers.update({"Authorization": f"Bearer {admin}", "X-Purpose": "administration"})
        r = c.post("/v1/admin/tokens", json={"principal": "officer-9", "role": "officer", "expires": "1d"})
        assert r.status_code == 201, r.text
        new_id = r.json()["info"]["token_id"]
        assert c.delete(f"/v1/admin/tokens/{new_id}").status_code == 204
        assert c.post("/v1/admin/policy/reload").status_code == 200
        listed = [t["token_id"] for t in c.get("/v1/admin/tokens").json()["tokens"]]
    trail = entries(sqlite_db, principal="admin-1")
    got = [(e.operation, e.outcome, e.detail.get("subjects")) for e in trail]
    assert got == [("token.create", "ok", [new_id]), ("token.revoke", "ok", [new_id]),
                   ("policy.change", "ok", []), ("token.list", "ok", listed)]
    assert len(listed) == 2  # the admin's own token and the one it created (revoked, still listed)
    assert new_id not in str([e.record_ids for e in entries(sqlite_db)])  # subjects, not record ids


CLERK = """
[policy]
version = 1
[roles.clerk]
description = "reads, and copies records for a subject's request only"
operations = ["read", "export"]
purposes = ["subject_request", "audit"]
[roles.clerk.operation_purposes]
export = ["subject_request"]
[roles.clerk.fields]
name = "mask"
id_number = "id_number_ends"
[roles.clerk.reveal]
name = ["subject_request", "audit"]
id_number = ["subject_request", "audit"]
"""


def test_a_route_holds_the_purposes_its_own_operation_is_tied_to(sqlite_db: Database, keyring: Keyring,
                                                                 tmp_path: Path) -> None:
    """A rights copy is an export that reads: the Vault checks the read, the route the export."""
    door = make_door(sqlite_db, keyring, tmp_path / "keys", budget=Budget(), residents=2)
    app = create_app(door.vault, Policy.loads(CLERK), tokens=door.tokens)
    _, tok = door.tokens.create("clerk-1", "clerk", ["subject_request", "audit"], ttl_seconds=600)
    rid, idn = door.ids[0]
    with TestClient(app) as c:
        c.headers.update({"Authorization": f"Bearer {tok}", "X-Purpose": "audit"})
        r = c.post(f"/v1/rights/{rid}/copy")
        assert r.status_code == 403 and r.json()["code"] == "policy.purpose", r.text
        assert idn not in r.text
        assert c.get(f"/v1/residents/{rid}").status_code == 200  # reading stays allowed for an audit
        r = c.post(f"/v1/rights/{rid}/copy", headers={"X-Purpose": "subject_request"})
        assert r.status_code == 200 and r.json()["record"]["id_number"] == idn
    refused = [e for e in entries(sqlite_db, principal="clerk-1") if e.outcome == "denied"]
    assert [(e.operation, e.purpose, e.record_ids) for e in refused] == [("rights.copy", "audit", (rid,))]
