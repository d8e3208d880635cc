"""An insider with a valid token, or one no longer valid, against the real server over TLS: what each
refusal leaves in the audit trail, which is kept for years and cannot be edited — the principal, the
operation and the record tried, and never a value the caller typed."""

from __future__ import annotations

import json
import time

import httpx
from api_support import Live, audited


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
        trail = audited(live.store_url, r.headers["x-request-id"])
        assert [(e.principal, e.outcome, e.purpose) for e in trail] == [(principal, "denied", "?")]
        assert resident["id_number"][:17] not in repr(trail)
    trail = audited(live.store_url, other.headers["x-request-id"])
    assert [(e.outcome, e.purpose) for e in trail] == [("denied", "data_subject_request")]


def test_a_refusal_on_a_record_route_names_the_record_tried(live: Live) -> None:
    """An officer trying to correct or erase a resident, a DPO copying one for an audit, a role copying
    without the reveals a copy needs: each refused at the route, and recorded without the record, so
    that "who tried to touch this resident?" missed them (a refusal at the Vault's door names it).
    The copy was recorded as an ``export``, its reveal refusal not at all; the Vault records copies
    as ``rights.copy``. A path that is no record id (an ID number typed there) still names nothing."""
    rid = live.record_ids[12]
    typed = live.residents[12]["id_number"]
    copier = live.token_store().create("test-copier", "copier", ["training"], ttl_seconds=600)[1]
    with live.client(role="officer") as c:
        patch = c.patch(f"/v1/residents/{rid}", json={"notes": "x"})
        erase = c.delete(f"/v1/residents/{rid}")
        typo = c.delete(f"/v1/residents/{typed}")
    with live.client(live.tokens["dpo"], purpose="audit") as c:
        copy = c.post(f"/v1/rights/{rid}/copy")
    with live.client(copier, purpose="training") as c:
        masked = c.post(f"/v1/rights/{rid}/copy")
    expected = [(patch, "update", (rid,)), (erase, "erase", (rid,)), (typo, "erase", ()),
                (copy, "rights.copy", (rid,)), (masked, "rights.copy", (rid,))]
    for r, operation, records in expected:
        assert r.status_code == 403, r.text
        trail = audited(live.store_url, r.headers["x-request-id"])
        assert [(e.operation, e.outcome, e.record_ids) for e in trail] == [(operation, "denied", records)]
    assert masked.json()["code"] == "policy.reveal"
    assert typed not in repr(audited(live.store_url, typo.headers["x-request-id"]))


def test_a_revoked_expired_or_suspended_token_still_used_is_in_the_audit_trail(live: Live) -> None:
    """A token is revoked or suspended because it may have leaked; whoever still sends it is the one
    to find. Its requests were answered 401 and left no entry, and the access log said "-" for
    who sent them. Now each is recorded under the token's principal (``token.use``, ``denied``),
    and the access log names the principal and the token. A token with a wrong secret is nobody's:
    it is refused as before and recorded under no principal."""
    store = live.token_store()
    revoked, revoked_token = store.create("test-leaked", "officer", ["identity_verification"],
                                          ttl_seconds=600)
    suspended, suspended_token = store.create("test-suspended", "officer", ["identity_verification"],
                                              ttl_seconds=600)
    expired, expired_token = store.create("test-expired", "officer", ["identity_verification"],
                                          ttl_seconds=1)
    store.revoke(revoked.token_id)
    store.suspend(suspended.token_id, "test")
    forged = revoked_token[:-4] + ("aaaa" if not revoked_token.endswith("aaaa") else "bbbb")
    time.sleep(1.2)
    body = {"id_number": live.residents[13]["id_number"]}
    answers = []
    for info, token, code in ((revoked, revoked_token, "auth.revoked"),
                              (suspended, suspended_token, "auth.suspended"),
                              (expired, expired_token, "auth.expired"), (None, forged, "auth.invalid")):
        with live.client(token, purpose="identity_verification") as c:
            r = c.post("/v1/residents/lookup", json=body)
        assert r.status_code == 401 and r.json()["code"] == code, r.text
        answers.append((info, r))
    time.sleep(0.5)
    log = [json.loads(line) for line in (live.home / "logs" / "access.log").read_text().splitlines()]
    by_request = {e["request_id"]: e for e in log}
    for info, r in answers[:3]:
        assert info is not None
        rid = r.headers["x-request-id"]
        trail = audited(live.store_url, rid)
        assert [(e.principal, e.role, e.token_id, e.operation, e.outcome) for e in trail] == [
            (info.principal, "officer", info.token_id, "token.use", "denied")]
        assert trail[0].detail == {"subjects": [info.token_id]}
        line = by_request[rid]
        assert (line["principal"], line["token_id"], line["status"]) == (info.principal, info.token_id, 401)
    # sent before the entries above were found, by then chained too
    forged_rid = answers[3][1].headers["x-request-id"]
    assert audited(live.store_url, forged_rid, at_least=0) == []
    assert by_request[forged_rid]["principal"] == "-"
    for token in (revoked_token, forged):
        assert token not in (live.home / "logs" / "access.log").read_text()
        assert token not in live.stderr.read_text() + live.stdout.read_text()


def test_a_refused_token_creation_or_revocation_is_in_the_audit_trail(live: Live) -> None:
    """An admin minting a token under the name of the vault's operator or its watchman, for a role
    the policy lacks, or with purposes beyond the role's, was refused and left no entry (a reload of
    an invalid policy file does leave one); nor did revoking a token that does not exist."""
    refused = []
    with live.client(role="admin") as c:
        for body in ({"principal": "system:detect", "role": "officer"},
                     {"principal": "local:root", "role": "dpo"},
                     {"principal": "mallory", "role": "superuser"},
                     {"principal": "mallory", "role": "officer", "purposes": ["data_subject_request"]}):
            r = c.post("/v1/admin/tokens", json=body)
            assert r.status_code == 422, r.text
            refused.append(r)
        gone = c.delete("/v1/admin/tokens/0123456789abcdef")
        assert gone.status_code == 404 and gone.json()["code"] == "token.not_found"
    admin_id = live.tokens["admin"].split("_")[1]
    for r in refused:
        trail = audited(live.store_url, r.headers["x-request-id"])
        assert [(e.principal, e.token_id, e.operation, e.outcome, e.detail) for e in trail] == [
            ("test-admin", admin_id, "token.create", "denied", {"subjects": []})]
    trail = audited(live.store_url, gone.headers["x-request-id"])
    assert [(e.principal, e.operation, e.outcome, e.detail) for e in trail] == [
        ("test-admin", "token.revoke", "not_found", {"subjects": ["0123456789abcdef"]})]
    asked = ("system:detect", "local:root", "mallory")
    assert not [t for t in live.token_store().list() if t.principal in asked]


def test_reveal_in_the_query_is_exactly_true_or_false_and_given_once(live: Live) -> None:
    """``?reveal=1``, ``yes`` or ``on`` were read as true, and ``?reveal=false&reveal=true`` as the
    last: a proxy in front filtering on the parameter could read it otherwise than the service.
    Lookups take JSON ``true`` only, and a repeated X-Purpose header is refused for the same reason."""
    rid = live.record_ids[12]
    with live.client(role="officer", purpose="case_investigation") as c:
        full = c.get(f"/v1/residents/{rid}", params={"reveal": "true"})
        masked = c.get(f"/v1/residents/{rid}", params={"reveal": "false"})
        loose = [c.get(f"/v1/residents/{rid}?reveal={v}") for v in ("1", "yes", "on", "True", "")]
        twice = c.get(f"/v1/residents/{rid}?reveal=false&reveal=true")
        other = c.get(f"/v1/residents/{rid}?x=1&x=2")
    assert full.status_code == 200 and full.json()["revealed"] == ["address", "id_number", "mobile"]
    assert masked.status_code == 200 and masked.json()["revealed"] == []
    for r in loose:
        assert r.status_code == 422, (r.request.url, r.text)
        assert live.residents[12]["id_number"] not in r.text
    for r in (twice, other):
        assert r.status_code == 400 and r.json()["code"] == "request.query", r.text


def test_a_refused_reveal_is_in_the_audit_trail_as_a_reveal(live: Live) -> None:
    """A read or a lookup asking for full values, or a rights copy (always full values), refused at
    the route for its purpose or operation, was recorded as a refusal of a masked access: an auditor
    looking for attempts to see full values missed it. Each is marked ``{"reveal": true}`` now, as
    a refusal at the Vault's door and a revealed read are; the same refusals of masked accesses are
    not."""
    rid, idn = live.record_ids[15], live.residents[15]["id_number"]
    with live.client(role="officer", purpose="data_subject_request") as c:
        read = c.get(f"/v1/residents/{rid}", params={"reveal": "true"})
        found = c.post("/v1/residents/lookup", json={"id_number": idn, "reveal": True})
        masked = [c.get(f"/v1/residents/{rid}"), c.post("/v1/residents/lookup", json={"id_number": idn})]
    with live.client(role="dpo", purpose="audit") as c:
        copy = c.post(f"/v1/rights/{rid}/copy")
    with live.client(role="admin") as c:
        admin = c.post("/v1/residents/lookup", json={"id_number": idn, "reveal": True})
    for r, operation in ((read, "get"), (found, "find"), (copy, "rights.copy"), (admin, "find")):
        assert r.status_code == 403, r.text
        trail = audited(live.store_url, r.headers["x-request-id"])
        assert [(e.operation, e.outcome, e.detail) for e in trail] == [
            (operation, "denied", {"reveal": True})]
    for r in masked:
        assert r.status_code == 403, r.text
        assert [(e.outcome, e.detail) for e in audited(live.store_url, r.headers["x-request-id"])] == [
            ("denied", {})]


def test_a_rejected_request_of_a_valid_token_is_in_the_audit_trail(live: Live) -> None:
    """A request of a valid token that its route rejects as malformed (422) left no entry unless the
    Vault rejected it: a body that is not JSON or does not match the schema, a parameter out of its
    pattern, a correction naming nothing or clearing a required field, a new resident the Vault
    refuses to parse. Each leaves one ``invalid`` entry now, under the caller and the route's
    operation, naming the record its path names and never a value sent; a batch leaves one for all
    of its malformed items. A request without a valid token is refused 401 and leaves none."""
    rid, resident = live.record_ids[16], live.residents[16]
    idn = resident["id_number"]
    wrong = idn[:-1] + ("0" if idn[-1] != "0" else "1")  # a wrong check character
    with live.client(role="registrar") as c:
        create = c.post("/v1/residents", json={"name": resident["name"], "id_number": wrong})
        batch = c.post("/v1/residents/batch", json={"items": [
            {"name": resident["name"], "id_number": wrong}, {"id_number": idn}, {"name": resident["name"]}]})
    with live.client(role="registrar", purpose="correction") as c:
        patch_schema = c.patch(f"/v1/residents/{rid}", json={"mobile": resident["mobile"], "colour": idn})
        patch_empty = c.patch(f"/v1/residents/{rid}", json={})
        patch_clear = c.patch(f"/v1/residents/{rid}", json={"name": None})
        patch_json = c.patch(f"/v1/residents/{rid}", content=f'{{"notes": "{idn}',
                             headers={"Content-Type": "application/json"})
    with live.client(role="officer") as c:
        lookup = c.post("/v1/residents/lookup", json={"id_number": idn, "mobile": resident["mobile"]})
        read = c.get(f"/v1/residents/{rid}?reveal=yes")
    with live.client(role="admin") as c:
        mint = c.post("/v1/admin/tokens", json={"principal": idn + " x", "role": "officer"})
        revoke = c.delete(f"/v1/admin/tokens/{idn[:15]}z")  # not a token id
    with live.client(purpose="identity_verification") as c:
        anonymous = c.post("/v1/residents/lookup", json={"id_number": idn, "mobile": resident["mobile"]})
    assert batch.status_code == 200 and batch.json()["rejected"] == 3, batch.text
    expected = [
        (create, "test-registrar", "put", ()), (batch, "test-registrar", "put", ()),
        (patch_schema, "test-registrar", "update", (rid,)), (patch_empty, "test-registrar", "update", (rid,)),
        (patch_clear, "test-registrar", "update", (rid,)), (patch_json, "test-registrar", "update", (rid,)),
        (lookup, "test-officer", "find", ()), (read, "test-officer", "get", (rid,)),
        (mint, "test-admin", "token.create", ()), (revoke, "test-admin", "token.revoke", ()),
    ]
    for r, principal, operation, records in expected:
        assert r.status_code in (200, 422), r.text
        trail = audited(live.store_url, r.headers["x-request-id"])
        assert [(e.principal, e.operation, e.outcome, e.record_ids, e.count) for e in trail] == [
            (principal, operation, "invalid", records, 0)], r.request.url
        for value in (idn, wrong, resident["name"], resident["mobile"]):
            assert value not in repr(trail)
    assert audited(live.store_url, mint.headers["x-request-id"])[0].detail == {"subjects": []}
    assert anonymous.status_code == 401
    assert audited(live.store_url, anonymous.headers["x-request-id"], at_least=0, timeout=1) == []


def test_an_ambiguous_or_mistyped_request_of_a_valid_token_is_in_the_audit_trail(live: Live) -> None:
    """Two X-Purpose headers, a query parameter given twice (``?reveal=false&reveal=true``: a proxy
    in front reads the first, a service the last) and a body that is not JSON were refused from the
    request's head and left no entry at all, though a valid token sent them: the very attempts to
    slip a purpose or a reveal past a proxy were the ones the trail never showed. Each leaves one
    ``invalid`` entry now, under the caller and the route's operation, naming the record its path
    names, with no purpose where two were stated, and marked ``{"reveal": true}`` where full values
    were asked for."""
    rid, idn = live.record_ids[17], live.residents[17]["id_number"]
    officer = live.tokens["officer"]
    two_purposes = [("Authorization", f"Bearer {officer}"), ("X-Purpose", "identity_verification"),
                    ("X-Purpose", "case_investigation")]
    with httpx.Client(base_url=live.base, verify=live.tls()) as c:
        lookup = c.post("/v1/residents/lookup", json={"id_number": idn, "reveal": True}, headers=two_purposes)
        read = c.get(f"/v1/residents/{rid}", headers=two_purposes)
    with live.client(role="officer", purpose="case_investigation") as c:
        twice = c.get(f"/v1/residents/{rid}?reveal=false&reveal=true")
        other = c.get(f"/v1/residents/{rid}?x=1&x=2")
        text = c.post("/v1/residents/lookup", content=json.dumps({"id_number": idn}),
                      headers={"Content-Type": "text/plain"})
    with live.client(role="registrar", purpose="correction") as c:
        patch = c.patch(f"/v1/residents/{rid}", content=b"notes=x",
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    with live.client(role="admin") as c:
        admin = c.get("/v1/admin/tokens?x=1&x=1")
    expected = [  # answer, status, code, principal, operation, records, purpose, detail
        (lookup, 400, "purpose.invalid", "test-officer", "find", (), "-", {"reveal": True}),
        (read, 400, "purpose.invalid", "test-officer", "get", (rid,), "-", {}),
        (twice, 400, "request.query", "test-officer", "get", (rid,), "case_investigation", {"reveal": True}),
        (other, 400, "request.query", "test-officer", "get", (rid,), "case_investigation", {}),
        (text, 415, "request.media_type", "test-officer", "find", (), "case_investigation", {}),
        (patch, 415, "request.media_type", "test-registrar", "update", (rid,), "correction", {}),
        (admin, 400, "request.query", "test-admin", "admin", (), "administration", {}),
    ]
    for r, status, code, principal, operation, records, purpose, detail in expected:
        assert r.status_code == status and r.json()["code"] == code, r.text
        trail = audited(live.store_url, r.headers["x-request-id"])
        assert [(e.principal, e.operation, e.outcome, e.record_ids, e.purpose, e.detail) for e in trail] == [
            (principal, operation, "invalid", records, purpose, detail)], r.request.url
        assert idn not in repr(trail)
    # a caller without a valid token still writes nothing, however it phrases its request
    with httpx.Client(base_url=live.base, verify=live.tls()) as c:
        anonymous = c.get(f"/v1/residents/{rid}?reveal=false&reveal=true",
                          headers=[("X-Purpose", "identity_verification"), ("X-Purpose", "audit")])
    assert anonymous.status_code == 401
    assert audited(live.store_url, anonymous.headers["x-request-id"], at_least=0, timeout=1) == []
