"""Each role reads exactly its fields, masked as the policy says, for its purposes only;
rights requests, corrections, batches and the request limits — on the live server."""

from __future__ import annotations

import time
from datetime import date
from typing import Any

from api_support import ID_PARTS, Live, audited, rebuild_ids
from test_api_auth import assert_clean_problem

from pivault.model import resident_id
from pivault.model.masks import mask_field
from pivault.policy import Policy
from pivault.policy.inference import THRESHOLD
from pivault.policy.policy import Decision, apply_mask

POLICY = Policy.default()


def lookup(live: Live, role: str, body: dict[str, Any], purpose: str | None = None) -> Any:
    with live.client(role=role, purpose=purpose) as c:
        return c.post("/v1/residents/lookup", json=body)


def expected_view(role: str, resident: dict[str, str], purpose: str, reveal: bool = False) -> dict[str, Any]:
    r = POLICY.roles[role]
    # the derived facts from the resident's own number, not from the server's (masked) answer
    facts = resident_id.facts(resident_id.normalise(resident["id_number"]))
    derived = {"gender": facts.gender, "birth_date": facts.birth_date.isoformat(),
               "region_code": facts.region_code}
    out = {}
    for f, mask in r.fields.items():
        value = derived[f] if f in derived else resident.get(f) or None
        if value is None:
            out[f] = None
        elif reveal and purpose in r.reveal.get(f, ()):
            out[f] = value
        elif mask == "mask":
            out[f] = mask_field(f, value)
        elif mask == "full":
            out[f] = "***"
        else:
            out[f] = apply_mask(mask, f, value)
    return out


def test_each_role_sees_exactly_its_fields_masked(live: Live) -> None:
    resident = live.residents[3]
    for role in ("officer", "registrar", "dpo"):
        r = lookup(live, role, {"id_number": resident["id_number"]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["count"] == 1 and body["revealed"] == []
        rec = body["records"][0]
        assert rec["record_id"] == live.record_ids[3]
        assert set(rec) == {"record_id", *POLICY.roles[role].fields}, role
        # derived facts as the server computed them, PI fields as the policy masks them
        expected = expected_view(role, resident, POLICY.roles[role].purposes[0])
        assert {k: v for k, v in rec.items() if k != "record_id"} == expected
        for f in ("name", "id_number", "address"):
            assert rec[f] != resident[f]
        assert "notes" not in rec or rec["notes"] in (None, "***")


def test_admin_reads_no_pi(live: Live) -> None:
    r = lookup(live, "admin", {"id_number": live.residents[0]["id_number"]})
    assert assert_clean_problem(r, live, 403)["code"] == "policy.operation"
    with live.client(role="admin") as c:
        r = c.get(f"/v1/residents/{live.record_ids[0]}")
        assert assert_clean_problem(r, live, 403)["code"] == "policy.operation"
        stats = c.get("/v1/stats")
        assert stats.status_code == 200
        for value in live.pi_values():
            assert value not in stats.text


def test_purpose_is_required_and_must_be_the_roles(live: Live) -> None:
    idn = live.residents[1]["id_number"]
    with live.client(live.tokens["officer"]) as c:  # no X-Purpose
        r = c.post("/v1/residents/lookup", json={"id_number": idn})
    assert assert_clean_problem(r, live, 400)["code"] == "purpose.missing"
    for purpose in ("registration", "marketing", "data_subject_request"):
        r = lookup(live, "officer", {"id_number": idn}, purpose=purpose)
        assert assert_clean_problem(r, live, 403)["code"] == "policy.purpose"
    r = lookup(live, "officer", {"id_number": idn}, purpose="Not A Purpose!")
    assert assert_clean_problem(r, live, 400)["code"] == "purpose.invalid"
    for path in ("/v1/residents/lookup", f"/v1/residents/{live.record_ids[1]}"):  # also over-long
        with live.client(live.tokens["officer"], purpose="p" * 65) as c:
            r = c.post(path, json={"id_number": idn}) if path.endswith("lookup") else c.get(path)
        assert assert_clean_problem(r, live, 400)["code"] == "purpose.invalid"
    # a token may be narrower than its role
    store = live.token_store()
    _, narrow = store.create("narrow-officer", "officer", ["identity_verification"], ttl_seconds=600)
    with live.client(narrow, purpose="case_investigation") as c:
        r = c.post("/v1/residents/lookup", json={"id_number": idn})
    assert assert_clean_problem(r, live, 403)["code"] == "policy.purpose"


def test_reveal_needs_a_role_allowed_for_the_field_and_purpose(live: Live) -> None:
    i = next(k for k, res in enumerate(live.residents) if res["mobile"])
    resident = live.residents[i]
    r = lookup(live, "officer", {"id_number": resident["id_number"], "reveal": True},
               purpose="identity_verification")
    assert assert_clean_problem(r, live, 403)["code"] == "policy.reveal"
    r = lookup(live, "officer", {"id_number": resident["id_number"], "reveal": True},
               purpose="case_investigation")
    assert r.status_code == 200
    body = r.json()
    assert body["revealed"] == ["address", "id_number", "mobile"]
    rec = body["records"][0]
    assert rec["mobile"] == resident["mobile"] and rec["address"] == resident["address"]
    assert rec["id_number"] == resident["id_number"]  # the address would give it away: revealed with it
    assert rec["name"] == mask_field("name", resident["name"])
    assert rec["region_code"] == apply_mask(POLICY.roles["officer"].fields["region_code"], "region_code",
                                            resident["id_number"][:6])
    with live.client(role="officer", purpose="case_investigation") as c:
        got = c.get(f"/v1/residents/{live.record_ids[i]}", params={"reveal": "true"}).json()
    assert got["record"]["mobile"] == resident["mobile"]
    assert got["revealed"] == ["address", "id_number", "mobile"]


def test_the_old_masks_gave_the_registrar_the_whole_number() -> None:
    # region code and birth date in full, the number's last four: the attack finds one number, the real one
    resident = resident_id.make("130302", date(1972, 5, 17), 353)
    facts = resident_id.facts(resident)
    old = Decision(True, "lookup", "registrar", "registration", fields={
        "id_number": "mask", "region_code": "none", "birth_date": "none", "gender": "none"})
    view = old.apply({"id_number": resident, "region_code": facts.region_code,
                      "birth_date": facts.birth_date.isoformat(), "gender": facts.gender})
    assert rebuild_ids(view, view["birth_date"], old.fields) == [resident]


def test_no_role_rebuilds_a_number_from_a_lookup_by_name_and_birth_date(live: Live) -> None:
    resident = live.residents[5]
    idn = resident_id.normalise(resident["id_number"])
    birth = f"{idn[6:10]}-{idn[10:12]}-{idn[12:14]}"
    for role in ("officer", "registrar", "dpo"):
        r = POLICY.roles[role]
        for purpose in r.purposes:
            if purpose in r.reveal.get("id_number", ()):
                continue
            got = lookup(live, role, {"name": resident["name"], "birth_date": birth}, purpose=purpose)
            assert got.status_code == 200, got.text
            rec = next(x for x in got.json()["records"] if x["record_id"] == live.record_ids[5])
            assert rec["id_number"] != idn
            candidates = rebuild_ids(rec, birth, {f: m for f, m in r.fields.items() if f in ID_PARTS})
            assert idn in candidates  # the attack is sound: the real number is among them
            assert len(candidates) >= THRESHOLD, (role, purpose, len(candidates))


def test_lookup_by_mobile_and_by_name_with_birth_date(live: Live) -> None:
    i = next(k for k, res in enumerate(live.residents) if res["mobile"])
    resident = live.residents[i]
    r = lookup(live, "registrar", {"mobile": resident["mobile"]})
    assert [x["record_id"] for x in r.json()["records"]] == [live.record_ids[i]]
    idn = resident["id_number"]
    birth = f"{idn[6:10]}-{idn[10:12]}-{idn[12:14]}"
    r = lookup(live, "registrar", {"name": resident["name"], "birth_date": birth})
    assert live.record_ids[i] in [x["record_id"] for x in r.json()["records"]]
    for bad in ({}, {"name": resident["name"]}, {"id_number": resident["id_number"], "mobile": "1"},
                {"id_number": resident["id_number"], "colour": "blue"}):
        r = lookup(live, "registrar", bad)
        problem = assert_clean_problem(r, live, 422)
        assert problem["code"] == "request.invalid"
    r = lookup(live, "registrar", {"id_number": "110105194912310021"})  # wrong check character
    assert assert_clean_problem(r, live, 422)["code"].startswith("id.")
    absent = resident_id.make("110101", date(1990, 1, 1), 997)
    assert absent not in {x["id_number"] for x in live.residents}
    assert lookup(live, "registrar", {"id_number": absent}).json()["count"] == 0


def test_registrar_creates_corrects_and_batches(live: Live) -> None:
    from pivault.synth import generate

    fresh = [{k: r[k] for k in ("name", "id_number", "mobile", "address")}  # type: ignore[literal-required]
             for r in generate(4, 777)]
    live.extra_pi.extend(v for r in fresh for v in r.values() if v)
    with live.client(role="registrar") as c:
        r = c.post("/v1/residents", json=fresh[0])
        assert r.status_code == 201, r.text
        rid = r.json()["record_id"]
        dup = c.post("/v1/residents", json=fresh[0])
        assert assert_clean_problem(dup, live, 409)["code"] == "record.duplicate"
        assert rid not in dup.text  # the existing record's id is not disclosed
        batch = c.post("/v1/residents/batch", json={"items": [
            fresh[1], fresh[0], {"name": fresh[2]["name"], "id_number": "123"}, fresh[3]]})
        assert batch.status_code == 200, batch.text
        b = batch.json()
        assert (b["read"], b["accepted"], b["rejected"]) == (4, 2, 2)
        assert [x["status"] for x in b["results"]] == ["created", "rejected", "rejected", "created"]
        assert b["results"][1]["code"] == "record.duplicate" and b["results"][2]["code"].startswith("id.")
        for value in live.pi_values():
            assert value not in batch.text
    new_mobile = "13900001234" if fresh[0]["mobile"] != "13900001234" else "13900005678"
    live.extra_pi.append(new_mobile)
    with live.client(role="registrar", purpose="correction") as c:
        r = c.patch(f"/v1/residents/{rid}", json={"mobile": new_mobile})
        assert r.status_code == 200 and r.json()["updated"] == ["mobile"]
        got = c.get(f"/v1/residents/{rid}", params={"reveal": "true"}).json()["record"]
        assert got["mobile"] == new_mobile
        r = c.patch(f"/v1/residents/{rid}", json={})
        assert assert_clean_problem(r, live, 422)["code"] == "update.empty"
        r = c.patch(f"/v1/residents/{rid}", json={"name": None})
        assert assert_clean_problem(r, live, 422)["code"] == "update.required"
        r = c.patch("/v1/residents/r_" + "1" * 26, json={"notes": "x"})
        assert assert_clean_problem(r, live, 404)["code"] == "record.not_found"


def test_dpo_rights_copy_correct_erase(live: Live) -> None:
    i = 5
    resident, rid = live.residents[i], live.record_ids[i]
    with live.client(role="dpo") as c:
        r = c.post(f"/v1/rights/{rid}/copy")
        assert r.status_code == 200, r.text
        copy = r.json()
        rec = copy["record"]
        for f in ("name", "id_number", "mobile", "address", "notes"):
            assert rec[f] == (resident[f] or None), f
        assert "PIPL" in copy["legal_basis"] and copy["request_id"].startswith("q_")
        assert r.headers["cache-control"] == "no-store"
        copied = r.headers["x-request-id"]
        r = c.patch(f"/v1/residents/{rid}", json={"notes": None})
        assert r.status_code == 200
        assert c.delete(f"/v1/residents/{rid}").status_code == 204
        assert assert_clean_problem(c.get(f"/v1/residents/{rid}"), live, 404)["code"] == "record.not_found"
        assert assert_clean_problem(c.post(f"/v1/rights/{rid}/copy"), live, 404)["code"] == "record.not_found"
        gone = c.post("/v1/residents/lookup", json={"id_number": resident["id_number"]}).json()
        assert gone["count"] == 0
    # the copy is refused for another purpose: the shipped dpo exports only for a subject's request
    with live.client(role="dpo", purpose="audit") as c:
        r = c.post(f"/v1/rights/{live.record_ids[6]}/copy")
        assert assert_clean_problem(r, live, 403)["code"] == "policy.purpose"
    # an auditor finds the full copy that left the vault under its own operation, not among reads
    found = audited(live.store_url, copied)
    assert [(e.operation, e.outcome, e.record_ids, e.count, e.purpose) for e in found] == [
        ("rights.copy", "ok", (rid,), 1, "data_subject_request")]
    assert found[0].detail == {"reveal": True}
    # the refused copy is recorded under the same operation, naming the record, none handed out
    assert [(e.operation, e.outcome, e.record_ids, e.count)
            for e in audited(live.store_url, r.headers["x-request-id"])] == [
        ("rights.copy", "denied", (live.record_ids[6],), 0)]


def test_limits_media_types_and_no_echo(live: Live) -> None:
    secret_value = live.residents[7]["id_number"]
    with live.client(role="officer") as c:
        big = c.post("/v1/residents/lookup", content=b"{" + b" " * (1024 * 1024 + 10) + b"}",
                     headers={"Content-Type": "application/json"})
        assert assert_clean_problem(big, live, 413)["code"] == "request.too_large"
        form = c.post("/v1/residents/lookup", content=f"id_number={secret_value}",
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert assert_clean_problem(form, live, 415)["code"] == "request.media_type"
        # a validation error names the place and the rule, never the submitted values
        r = c.post("/v1/residents/lookup", json={"id_number": secret_value, secret_value: secret_value,
                                                  "birth_date": secret_value})
        problem = assert_clean_problem(r, live, 422)
        assert secret_value not in r.text
        assert any(e["loc"] == ["body", "*"] for e in problem["errors"])
        r = c.post("/v1/residents/lookup", content=b"{not json " + secret_value.encode(),
                   headers={"Content-Type": "application/json"})
        assert_clean_problem(r, live, 422)
        assert secret_value not in r.text
        r = c.get("/v1/residents/" + secret_value)  # PI in a URL: refused, not echoed, not logged
        assert_clean_problem(r, live, 422)
        assert secret_value not in r.text
        r = c.put("/v1/residents/lookup", json={})
        assert assert_clean_problem(r, live, 405)["code"] == "method.not_allowed"


def test_security_headers(live: Live) -> None:
    with live.client(role="officer") as c:
        for r in (c.get("/healthz"), c.post("/v1/residents/lookup", json={"id_number": "x"}),
                  c.get("/v1/stats")):
            h = r.headers
            assert h["strict-transport-security"].startswith("max-age=")
            assert h["x-content-type-options"] == "nosniff"
            assert h["cache-control"] == "no-store"
            assert h["x-frame-options"] == "DENY"
            assert h["content-security-policy"].startswith("default-src 'none'")
            assert h["referrer-policy"] == "no-referrer"
            assert h["x-request-id"].startswith("q_")
            assert "server" not in h


def test_read_budget_refuses_with_429_then_suspends_the_token(live: Live) -> None:
    """The watchman behind the policy: a spent budget is a 429 with Retry-After; repeated
    breaches suspend the token, which every worker then refuses."""
    _, tok = live.token_store().create("trainee-1", "trainee", ["training"], ttl_seconds=600)
    statuses = []
    with live.client(tok, purpose="training") as c:  # one connection: one worker's counters
        for r in live.residents[20:28]:
            resp = c.post("/v1/residents/lookup", json={"id_number": r["id_number"]})
            statuses.append(resp.status_code)
            if resp.status_code == 429:
                problem = assert_clean_problem(resp, live, 429)
                assert problem["code"] == "budget.exceeded"
                assert int(resp.headers["retry-after"]) >= 1
            if resp.status_code == 401:
                assert assert_clean_problem(resp, live, 401)["code"] == "auth.suspended"
                break
    assert statuses[:2] == [200, 200] and 429 in statuses and statuses[-1] == 401, statuses
    info = next(t for t in live.token_store().list() if t.principal == "trainee-1")
    assert info.state() == "suspended" and info.suspended_reason


def test_every_access_and_refusal_is_in_the_audit_trail(live: Live) -> None:

    resident = live.residents[8]
    with live.client(role="officer") as c:
        ok = c.post("/v1/residents/lookup", json={"id_number": resident["id_number"]})
        refused = c.delete(f"/v1/residents/{live.record_ids[8]}")
    assert ok.status_code == 200 and refused.status_code == 403
    found = audited(live.store_url, ok.headers["x-request-id"])
    assert [(e.principal, e.operation, e.outcome, e.record_ids) for e in found] == [
        ("test-officer", "find", "ok", (live.record_ids[8],))]
    assert found[0].purpose == "identity_verification" and found[0].source == "api"
    denied = audited(live.store_url, refused.headers["x-request-id"])
    assert [(e.principal, e.operation, e.outcome) for e in denied] == [("test-officer", "erase", "denied")]


def test_duplicates_are_charged_like_lookups(live: Live) -> None:
    """A create refused as a duplicate tells that the ID number is held: a batch of known numbers
    is audited and stopped by the read budget, like the lookups it amounts to."""
    from pivault.audit import entries
    from pivault.store.db import Database

    _, tok = live.token_store().create("clerk-1", "clerk", ["training"], ttl_seconds=600)
    items = [{"name": r["name"], "id_number": r["id_number"]} for r in live.residents[20:25]]
    with live.client(tok, purpose="training") as c:
        r = c.post("/v1/residents/batch", json={"items": items})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["code"] for x in results] == ["record.duplicate"] * 2 + ["budget.exceeded"] * 3
    assert results[3]["detail"] == results[4]["detail"] == "not tried: a budget of the caller is spent"
    for value in live.pi_values():
        assert value not in r.text
    db = Database(live.store_url)
    deadline = time.monotonic() + 10
    while True:
        found = list(entries(db, request_id=r.headers["x-request-id"]))
        if len(found) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [(e.principal, e.operation, e.outcome) for e in found] == [
        ("clerk-1", "put", "duplicate"), ("clerk-1", "put", "duplicate"), ("clerk-1", "put", "refused")]
    assert [e.record_ids for e in found] == [(rid,) for rid in live.record_ids[20:23]]


def test_a_dpo_erases_only_for_a_data_subjects_request(live: Live) -> None:
    """The purpose stated must be one the operation may be done for, not any of the role's."""
    rid = live.record_ids[12]
    with live.client(role="dpo", purpose="audit") as c:
        r = c.delete(f"/v1/residents/{rid}")
        assert assert_clean_problem(r, live, 403)["code"] == "policy.purpose"
        r = c.patch(f"/v1/residents/{rid}", json={"notes": "x"})
        assert assert_clean_problem(r, live, 403)["code"] == "policy.purpose"
        assert c.get(f"/v1/residents/{rid}").status_code == 200  # an audit still looks, and nothing changed


def test_creates_are_budgeted_changes(live: Live) -> None:
    """Every create answers whether its number was held, and fills the register: six a day here."""
    from pivault.synth import generate

    fresh = [{"name": r["name"], "id_number": r["id_number"]} for r in generate(8, 991)]
    assert not {p["id_number"] for p in fresh} & {r["id_number"] for r in live.residents}
    live.extra_pi.extend(v for p in fresh for v in p.values())
    _, tok = live.token_store().create("clerk-2", "clerk", ["training"], ttl_seconds=600)
    with live.client(tok, purpose="training") as c:
        r = c.post("/v1/residents/batch", json={"items": fresh})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["created"] * 6 + ["rejected"] * 2
    assert [x["code"] for x in results[6:]] == ["budget.exceeded"] * 2
    assert results[7]["detail"] == "not tried: a budget of the caller is spent"
