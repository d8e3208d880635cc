"""Every route, as an attacker would try it: no token, a bad one, an expired, revoked or
suspended one, another role's — against the real server process over TLS."""

from __future__ import annotations

import json
import re
import socket
import time
from typing import Any

import httpx
import pytest
from api_support import ROLE_PURPOSE, Live, audited

FAKE_ID = "r_" + "0" * 26
FAKE_TOKEN_ID = "0123456789abcdef"
LOOKUP_BODY = {"id_number": "11010519491231002X"}

#: (method, path, JSON body, roles allowed by the shipped policy)
ROUTES: list[tuple[str, str, Any, set[str]]] = [
    ("POST", "/v1/residents", {"name": "测试", "id_number": "11010519491231002X"}, {"registrar"}),
    ("POST", "/v1/residents/batch", {"items": [{"name": "测试"}]}, {"registrar"}),
    ("POST", "/v1/residents/lookup", LOOKUP_BODY, {"officer", "registrar", "dpo"}),
    ("GET", f"/v1/residents/{FAKE_ID}", None, {"officer", "registrar", "dpo"}),
    ("PATCH", f"/v1/residents/{FAKE_ID}", {"notes": "x"}, {"registrar", "dpo"}),
    ("DELETE", f"/v1/residents/{FAKE_ID}", None, {"dpo"}),
    ("POST", f"/v1/rights/{FAKE_ID}/copy", None, {"dpo"}),
    ("GET", "/v1/stats", None, {"dpo", "admin"}),
    ("POST", "/v1/admin/tokens", {"principal": "x", "role": "officer"}, {"admin"}),
    ("GET", "/v1/admin/tokens", None, {"admin"}),
    ("DELETE", f"/v1/admin/tokens/{FAKE_TOKEN_ID}", None, {"admin"}),
    ("POST", "/v1/admin/policy/reload", None, {"admin"}),
    ("GET", "/v1/openapi.json", None, {"officer", "registrar", "dpo", "admin"}),
    # not routes at all: an anonymous caller must not learn that either
    ("GET", "/v1/nothing-here", None, set()),
    ("GET", "/docs", None, set()),
    ("GET", "/v1/residents", None, set()),
]


def call(client: httpx.Client, method: str, path: str, body: Any) -> httpx.Response:
    return client.request(method, path, json=body) if body is not None else client.request(method, path)


def assert_clean_problem(r: httpx.Response, live: Live, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    text = r.text
    assert "Traceback" not in text and "File \"" not in text and ".py" not in text
    for value in live.pi_values():
        assert value not in text
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["type"].startswith("urn:pivault:problem:")
    assert set(body) <= {"type", "title", "status", "detail", "code", "request_id", "errors", "field"}
    return body


@pytest.mark.parametrize(("method", "path", "body", "roles"), ROUTES)
def test_no_token_is_401_everywhere(live: Live, method: str, path: str, body: Any, roles: set[str]) -> None:
    with live.client() as c:
        r = call(c, method, path, body)
    problem = assert_clean_problem(r, live, 401)
    assert problem["code"] == "auth.missing"
    assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("bad", [
    "pv_nonsense", "Basic dXNlcjpwYXNz", "pv_0123456789abcdef_" + "a" * 52, "Bearer",
    "pv_0123456789abcdef_" + "a" * 51 + "'", "x" * 5000,
])
def test_malformed_or_forged_tokens_are_401(live: Live, bad: str) -> None:
    for method, path, body, _ in ROUTES[:4]:
        with httpx.Client(base_url=live.base, verify=live.tls()) as c:
            r = c.request(method, path, json=body, headers={"Authorization": f"Bearer {bad}",
                                                            "X-Purpose": "identity_verification"})
        problem = assert_clean_problem(r, live, 401)
        assert problem["code"] in ("auth.malformed", "auth.invalid", "auth.scheme")
        assert bad[:30] not in r.text or not bad


def test_wrong_scheme_is_401(live: Live) -> None:
    tok = live.tokens["officer"]
    with httpx.Client(base_url=live.base, verify=live.tls()) as c:
        r = c.post("/v1/residents/lookup", json=LOOKUP_BODY,
                   headers={"Authorization": f"Token {tok}", "X-Purpose": "identity_verification"})
    assert assert_clean_problem(r, live, 401)["code"] == "auth.scheme"
    assert tok not in r.text


def _bad_tokens(live: Live) -> dict[str, str]:
    store = live.token_store()
    out = {}
    _, out["expired"] = store.create("t-expired", "officer", ["identity_verification"], ttl_seconds=60,
                                     now=time.time() - 120)
    info, out["revoked"] = store.create("t-revoked", "officer", ["identity_verification"], ttl_seconds=600)
    store.revoke(info.token_id)
    info, out["suspended"] = store.create("t-suspended", "officer", ["identity_verification"],
                                          ttl_seconds=600)
    store.suspend(info.token_id, "test: enumeration suspected")
    return out


@pytest.mark.parametrize(("method", "path", "body", "roles"), ROUTES)
def test_expired_revoked_suspended_are_401(live: Live, method: str, path: str, body: Any,
                                           roles: set[str]) -> None:
    for state, tok in _bad_tokens(live).items():
        with live.client(tok, purpose="identity_verification") as c:
            r = call(c, method, path, body)
        assert assert_clean_problem(r, live, 401)["code"] == f"auth.{state}"


@pytest.mark.parametrize(("method", "path", "body", "roles"), ROUTES)
def test_other_roles_are_403(live: Live, method: str, path: str, body: Any, roles: set[str]) -> None:
    for role in ROLE_PURPOSE:
        # the shipped registrar corrects only for the purpose "correction"
        purpose = "correction" if (role, method) == ("registrar", "PATCH") else None
        with live.client(role=role, purpose=purpose) as c:
            r = call(c, method, path, body)
        if not roles:
            assert_clean_problem(r, live, 404 if r.status_code == 404 else 405)
        elif role not in roles:
            problem = assert_clean_problem(r, live, 403)
            assert problem["code"] == "policy.operation"
        else:
            assert r.status_code not in (401, 403), (role, method, path, r.status_code, r.text)
            assert r.status_code < 500


def test_revocation_reaches_every_worker_at_once(live: Live) -> None:
    with live.client(role="admin") as admin:
        r = admin.post("/v1/admin/tokens", json={"principal": "short-lived", "role": "officer",
                                                 "purposes": ["identity_verification"], "expires": "1h"})
        assert r.status_code == 201, r.text
        created = r.json()
        tok, token_id = created["token"], created["info"]["token_id"]
        assert created["info"]["created_by"] == "test-admin"
        # the token works (on whichever worker takes each new connection)
        for _ in range(6):
            with live.client(tok, purpose="identity_verification") as c:
                assert c.post("/v1/residents/lookup", json=LOOKUP_BODY).status_code == 200
        assert admin.delete(f"/v1/admin/tokens/{token_id}").status_code == 204
        assert admin.delete(f"/v1/admin/tokens/{token_id}").status_code == 404
        listed = {t["token_id"]: t for t in admin.get("/v1/admin/tokens").json()["tokens"]}
        assert listed[token_id]["state"] == "revoked"
        assert all("token" not in t and "token_hash" not in t for t in listed.values())
    # refused at once: every new connection, whichever worker it lands on
    for _ in range(12):
        with live.client(tok, purpose="identity_verification") as c:
            r = c.post("/v1/residents/lookup", json=LOOKUP_BODY)
        assert assert_clean_problem(r, live, 401)["code"] == "auth.revoked"


def test_admin_cannot_mint_tokens_beyond_a_role(live: Live) -> None:
    with live.client(role="admin") as admin:
        r = admin.post("/v1/admin/tokens", json={"principal": "p", "role": "officer",
                                                 "purposes": ["registration"]})
        assert assert_clean_problem(r, live, 422)["code"] == "token.purpose"
        r = admin.post("/v1/admin/tokens", json={"principal": "p", "role": "root"})
        assert assert_clean_problem(r, live, 422)["code"] == "token.role"
        # the role asked for is not repeated in the answer: a name of the pattern can be anything
        # the admin typed, a resident's name in pinyin and birth date among them
        typed = "zhangwei19491231"
        r = admin.post("/v1/admin/tokens", json={"principal": "p", "role": typed})
        problem = assert_clean_problem(r, live, 422)
        assert problem["code"] == "token.role" and typed not in r.text
        assert "officer" in problem["detail"]


def test_docs_are_off_and_openapi_needs_a_token(live: Live) -> None:
    with live.client(role="officer") as c:
        for path in ("/docs", "/redoc", "/openapi.json", "/v1/docs"):
            assert_clean_problem(c.get(path), live, 404)
        spec = c.get("/v1/openapi.json").json()
    assert spec["security"] == [{"bearer": []}]
    assert "/v1/residents/lookup" in spec["paths"]
    # PI never in a URL: lookups are POST bodies, and no operation takes a PI query parameter
    for path, item in spec["paths"].items():
        assert "{id_number}" not in path and "{mobile}" not in path
        for op in item.values():
            for p in op.get("parameters", []):
                assert p["name"] not in ("id_number", "mobile", "name", "birth_date", "address")
    # the spec says what the service does: X-Purpose is required where PI is read or written
    def purpose_required(method: str, path: str) -> bool:
        params = spec["paths"][path][method].get("parameters", [])
        return next(p["required"] for p in params if p["name"] == "X-Purpose")

    assert purpose_required("post", "/v1/residents/lookup")
    assert purpose_required("get", "/v1/residents/{record_id}")
    assert purpose_required("post", "/v1/residents")
    assert not purpose_required("get", "/v1/stats")
    assert "field" in spec["components"]["schemas"]["Problem"]["properties"]


def test_two_authorization_headers_are_refused(live: Live) -> None:
    # a proxy that checks the first header and a service that used the last would disagree on who calls
    officer, admin = live.tokens["officer"], live.tokens["admin"]
    with httpx.Client(base_url=live.base, verify=live.tls()) as c:
        for first, second in ((officer, admin), (admin, officer)):
            r = c.get("/v1/admin/tokens", headers=[("Authorization", f"Bearer {first}"),
                                                   ("Authorization", f"Bearer {second}")])
            assert assert_clean_problem(r, live, 401)["code"] == "auth.malformed"


def test_no_body_is_read_before_the_token_is_checked(live: Live) -> None:
    """An anonymous caller declaring a large body is answered from its head alone, at once."""
    host, port = live.base.removeprefix("https://").split(":")
    head = (f"POST /v1/residents/lookup HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 1000000\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            live.tls().wrap_socket(raw, server_hostname=host) as s:
        s.sendall(head)  # and not one byte of the body: a server waiting for it would time out
        s.settimeout(5)
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:40]
    assert b"application/problem+json" in answer and b"auth.missing" in answer


def test_path_tricks_are_not_served(live: Live) -> None:
    with live.client(role="dpo") as c:
        rid = live.record_ids[0]
        assert c.get(f"/v1/residents/{rid}").status_code == 200
        # an encoded slash: a proxy matching on the raw path would see another route
        for path in (f"/v1/residents%2f{rid}", f"/v1/residents%2F{rid}", "/v1%2Fstats"):
            assert assert_clean_problem(c.get(path), live, 400)["code"] == "request.path"
        # a trailing slash is not redirected (the target would come from the Host header, and a 307
        # would have the client send its body there again)
        r = c.post("/v1/residents/lookup/", json=LOOKUP_BODY, headers={"Host": "attacker.example"})
        assert assert_clean_problem(r, live, 404)["code"] == "route.not_found"
        assert "location" not in r.headers
        for path in ("/v1/stats/", f"/v1/residents/{rid}/"):
            assert assert_clean_problem(c.get(path), live, 404)["code"] == "route.not_found"


def test_deeply_nested_json_is_a_client_error(live: Live) -> None:
    with live.client(role="officer") as c:
        for body in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 5_000 + b"1" + b"}" * 5_000):
            r = c.post("/v1/residents/lookup", content=body, headers={"Content-Type": "application/json"})
            assert 400 <= r.status_code < 500, r.status_code
            assert_clean_problem(r, live, r.status_code)


def test_two_purposes_a_websocket_and_a_loose_reveal_are_refused(live: Live) -> None:
    idn = live.residents[3]["id_number"]
    with httpx.Client(base_url=live.base, verify=live.tls()) as c:
        r = c.post("/v1/residents/lookup", json={"id_number": idn},
                   headers=[("Authorization", f"Bearer {live.tokens['officer']}"),
                            ("X-Purpose", "identity_verification"), ("X-Purpose", "case_investigation")])
        assert assert_clean_problem(r, live, 400)["code"] == "purpose.invalid"
    with live.client(role="officer", purpose="case_investigation") as c:
        for loose in ("yes", 1, "true"):  # only true asks for full values
            r = c.post("/v1/residents/lookup", json={"id_number": idn, "reveal": loose})
            assert assert_clean_problem(r, live, 422)["code"] == "request.invalid", loose
    # no WebSocket upgrade: an ordinary answer, with the service's headers
    host, port = live.base.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            live.tls().wrap_socket(raw, server_hostname=host) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200") and b"x-content-type-options: nosniff" in answer.lower()


def _send_head_then_body(live: Live, token: str, body: bytes, meanwhile: Any) -> bytes:
    """A lookup whose head (with its token) arrives at once and whose body arrives after ``meanwhile()``."""
    host, port = live.base.removeprefix("https://").split(":")
    head = (f"POST /v1/residents/lookup HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"X-Purpose: identity_verification\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            live.tls().wrap_socket(raw, server_hostname=host) as s:
        s.sendall(head + body[:3])
        time.sleep(0.3)  # the head is read and its token checked
        meanwhile()
        s.sendall(body[3:])
        s.settimeout(10)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def test_a_token_revoked_or_expired_while_its_body_arrives_is_refused(live: Live) -> None:
    """The token was checked from the request's head alone, and the request then served with that
    check however long its body took (up to --timeout, 30 s): a token revoked, suspended or expired
    meanwhile read a resident after it was no longer valid, on as many connections as its holder had
    opened beforehand. A request whose body is slow to come is checked again once it has come."""
    store = live.token_store()
    body = json.dumps({"id_number": live.residents[5]["id_number"]}).encode()
    revoked, revoked_token = store.create("test-in-flight", "officer", ["identity_verification"],
                                          ttl_seconds=600)
    # expires a second after the head has been checked
    expiring = store.create("test-in-flight-expiry", "officer", ["identity_verification"],
                            ttl_seconds=600, now=time.time() - 598.7)[1]
    cases = ((revoked_token, lambda: store.revoke(revoked.token_id), "auth.revoked"),
             (expiring, lambda: time.sleep(1.2), "auth.expired"))
    for token, meanwhile, code in cases:
        answer = _send_head_then_body(live, token, body, meanwhile)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert code.encode() in answer and live.residents[5]["name"].encode() not in answer
    # the refusal is recorded under the token's principal, as any use of a revoked token is
    rid = re.search(rb"x-request-id: (q_[0-9a-f]+)", answer, re.IGNORECASE)
    assert rid is not None
    trail = audited(live.store_url, rid.group(1).decode())
    assert [(e.principal, e.operation, e.outcome) for e in trail] == [
        ("test-in-flight-expiry", "token.use", "denied")]
    # a body that comes with its head is served as before
    with live.client(live.token_store().create("test-in-time", "officer", ["identity_verification"],
                                               ttl_seconds=600)[1], purpose="identity_verification") as c:
        assert c.post("/v1/residents/lookup", content=body,
                      headers={"Content-Type": "application/json"}).status_code == 200


def test_a_body_is_read_one_way_only(live: Live) -> None:
    """A JSON object naming a key twice was read by its last value, and a UTF-16 or UTF-32 body was
    decoded as such: a proxy or gateway in front that reads the first value (many parsers do), or
    reads JSON as the UTF-8 it must be, saw another resident, or no reveal, than the one the service
    served (``{"reveal": false, "reveal": true}`` got the full values). The service refuses both, as
    it refuses a second X-Purpose header or a repeated query parameter, and records the attempt."""
    first, second = live.residents[6]["id_number"], live.residents[7]["id_number"]
    rid = live.record_ids[6]
    json_type = {"Content-Type": "application/json"}
    with live.client(role="officer", purpose="case_investigation") as c:
        two_numbers = c.post("/v1/residents/lookup", headers=json_type,
                             content=f'{{"id_number": "{first}", "id_number": "{second}"}}')
        two_reveals = c.post("/v1/residents/lookup", headers=json_type,
                             content=f'{{"id_number": "{first}", "reveal": false, "reveal": true}}')
        utf16 = c.post("/v1/residents/lookup", headers=json_type,
                       content=json.dumps({"id_number": first}).encode("utf-16"))
        utf32 = c.post("/v1/residents/lookup", headers=json_type,
                       content=json.dumps({"id_number": first}).encode("utf-32"))
        long_number = c.post("/v1/residents/lookup", headers=json_type,
                             content=b'{"id_number": 1' + b"0" * 5000 + b"}")
        # a UTF-8 body, with or without the byte order mark some tools write, is read as before
        plain = c.post("/v1/residents/lookup", headers=json_type, content=json.dumps({"id_number": first}))
        marked = c.post("/v1/residents/lookup", headers=json_type,
                        content=b"\xef\xbb\xbf" + json.dumps({"id_number": first}).encode())
    with live.client(role="registrar", purpose="correction") as c:
        two_notes = c.patch(f"/v1/residents/{rid}", headers=json_type,
                            content='{"notes": "first", "notes": "second"}')
    for r in (two_numbers, two_reveals, long_number, two_notes):
        assert assert_clean_problem(r, live, 422)["code"] == "request.invalid", r.text
        assert [e["type"] for e in r.json()["errors"]] == ["json_invalid"]
    for r in (utf16, utf32):
        problem = assert_clean_problem(r, live, 400)
        assert problem["code"] == "http.error" and "UTF-8" in problem["detail"], r.text
    for r in (plain, marked):
        assert r.status_code == 200 and r.json()["count"] == 1, r.text
    # each refusal is the caller's attempt, recorded as any malformed request of a valid token is
    expected = [(two_numbers, "find", (), {}), (two_reveals, "find", (), {"reveal": True}),
                (utf16, "find", (), {}), (two_notes, "update", (rid,), {})]
    for r, operation, records, detail in expected:
        trail = audited(live.store_url, r.headers["x-request-id"])
        assert [(e.operation, e.outcome, e.record_ids, e.detail) for e in trail] == [
            (operation, "invalid", records, detail)]
        assert first not in repr(trail) and second not in repr(trail)
