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
    trail = entries(sqlite_db, principal="admin-1")
    got = [(e.operation, e.outcome, e.detail.get("subjects")) for e in trail]
    assert got == [("token.create", "ok", [new_id]), ("token.revoke", "ok", [new_id]),
                   ("policy.change", "ok", [])]
    assert new_id not in str([e.record_ids for e in entries(sqlite_db)])  # subjects, not record ids
