"""An insider with a valid token, or one no longer valid, against the real server over TLS: what each
refusal leaves in the audit trail, which is kept for years and cannot be edited — the principal, the
operation and the record tried, and never a value the caller typed."""

from __future__ import annotations

import time
from typing import Any

from api_support import Live

from pivault.audit import entries
from pivault.store.db import Database


def audited(live: Live, request_id: str, at_least: int = 1) -> list[Any]:
    """The entries of one request: durable before the response, chained a moment later."""
    db = Database(live.store_url)
    try:
        deadline = time.monotonic() + 10
        while True:
            found = list(entries(db, request_id=request_id))
            if len(found) >= at_least or time.monotonic() > deadline:
                return found
            time.sleep(0.1)
    finally:
        db.close()


def test_a_purpose_the_policy_does_not_know_is_not_written_to_the_audit_trail(live: Live) -> None:
    """X-Purpose is refused unless it is one of the caller's purposes, and the refusal is recorded
    with the purpose stated. Any lower-case name passed as one, so an ID number (its check character
    in lower case) typed into the header became an entry of the trail for good. Now a purpose that
    is no purpose of the policy is recorded as ``?``; one the policy knows (another role's) as is."""
    resident = live.residents[11]
    typed = "id-" + resident["id_number"].lower()
    with live.client(live.tokens["officer"], purpose=typed) as c:
        found = c.post("/v1/residents/lookup", json={"id_number": resident["id_number"]})
        read = c.get(f"/v1/residents/{live.record_ids[11]}")
    with live.client(live.tokens["admin"], purpose=typed) as c:
        admin = c.get("/v1/admin/tokens")
    with live.client(live.tokens["officer"], purpose="data_subject_request") as c:
        other = c.get(f"/v1/residents/{live.record_ids[11]}")
    for r in (found, read, admin, other):
        assert r.status_code == 403 and r.json()["code"] == "policy.purpose", r.text
    for r, principal in ((found, "test-officer"), (read, "test-officer"), (admin, "test-admin")):
        trail = audited(live, r.headers["x-request-id"])
        assert [(e.principal, e.outcome, e.purpose) for e in trail] == [(principal, "denied", "?")]
        assert resident["id_number"][:17] not in repr(trail)
    trail = audited(live, other.headers["x-request-id"])
    assert [(e.outcome, e.purpose) for e in trail] == [("denied", "data_subject_request")]
