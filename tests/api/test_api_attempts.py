"""Attempts the audit trail must show, on the app a worker serves (over a real vault home): a reveal
asked for and refused — by the route, by the Vault or by a budget, on the lookup's fast path and on
FastAPI's — and a request of a valid token rejected as malformed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import small_home
from fastapi.testclient import TestClient

from pivault.api.server import ServeOptions, build_app
from pivault.audit import entries
from pivault.policy.tokens import TokenStore

#: a role that may reveal the ID number for training, with a budget of one record a minute
PEEKER = """
[roles.peeker]
description = "test role that may reveal, with a budget of one record a minute"
operations = ["lookup"]
purposes = ["training"]
[roles.peeker.fields]
id_number = "mask"
[roles.peeker.reveal]
id_number = ["training"]
[roles.peeker.budgets]
records_per_minute = 1
misses_per_hour = 100
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
         ) -> Iterator[tuple[Path, Path, list[dict[str, Any]]]]:
    yield small_home(tmp_path, monkeypatch, 6, 5151, PEEKER)


def _trail(app: Any, request_id: str) -> list[Any]:
    app.state.vault.guard.delegate.audit_log.flush()
    return list(entries(app.state.vault.db, request_id=request_id))


@pytest.mark.parametrize("fast", [True, False], ids=["fast-lookup", "fastapi-lookup"])
def test_a_refused_reveal_is_recorded_as_a_reveal(home: tuple[Path, Path, list[dict[str, Any]]],
                                                   fast: bool) -> None:
    """A lookup asking for full values and refused at the route (purpose, operation) or by a budget
    left an entry that did not say so: an auditor looking for attempts to see full values found only
    those the Vault's door refused. Every refusal of a reveal now carries ``{"reveal": true}``, and a
    refusal of a masked lookup does not."""
    home_dir, policy, residents = home
    app = build_app(ServeOptions(home=str(home_dir), policy=str(policy), log_to_stderr=False))
    app.state.config.fast_lookup = fast
    store = TokenStore(app.state.vault.db)
    officer = store.create("officer-1", "officer", ["identity_verification", "case_investigation"],
                           ttl_seconds=600)[1]
    admin = store.create("admin-1", "admin", ["administration"], ttl_seconds=600)[1]
    peeker = store.create("peeker-1", "peeker", ["training"], ttl_seconds=600)[1]
    idn = residents[0]["id_number"]
    asks = {"id_number": idn, "reveal": True}
    cases = [  # token, purpose, body, status, code
        (officer, "data_subject_request", asks, 403, "policy.purpose"),  # refused at the route
        (officer, None, asks, 400, "purpose.missing"),
        (admin, "administration", asks, 403, "policy.operation"),
        (officer, "identity_verification", asks, 403, "policy.reveal"),  # refused at the Vault's door
        (peeker, "training", asks, 200, None),
        (peeker, "training", {"id_number": residents[1]["id_number"], "reveal": True}, 429,
         "budget.exceeded"),
    ]
    with TestClient(app, base_url="https://testserver") as c:
        answers = []
        for token, purpose, body, status, code in cases:
            headers = {"Authorization": f"Bearer {token}", **({"X-Purpose": purpose} if purpose else {})}
            r = c.post("/v1/residents/lookup", json=body, headers=headers)
            assert r.status_code == status, r.text
            assert code is None or r.json()["code"] == code
            answers.append(r)
        masked = c.post("/v1/residents/lookup", json={"id_number": idn},
                        headers={"Authorization": f"Bearer {officer}", "X-Purpose": "data_subject_request"})
        assert masked.status_code == 403
        for r in answers:
            trail = _trail(app, r.headers["x-request-id"])
            assert trail and all(e.detail.get("reveal") is True for e in trail), [
                (e.outcome, e.detail) for e in trail]
        refused = _trail(app, answers[-1].headers["x-request-id"])
        assert [(e.principal, e.operation, e.outcome) for e in refused] == [("peeker-1", "find", "refused")]
        assert refused[0].detail["rule"].endswith("records_per_minute")
        masked_trail = _trail(app, masked.headers["x-request-id"])
        assert [(e.outcome, e.detail) for e in masked_trail] == [("denied", {})]
        assert idn not in repr([_trail(app, r.headers["x-request-id"]) for r in answers])
    app.state.vault.close()


def test_a_malformed_body_of_a_valid_token_is_recorded_as_invalid(
        home: tuple[Path, Path, list[dict[str, Any]]]) -> None:
    """On FastAPI's path (the fast lookup declines what does not parse or validate): a body that is
    no JSON, or does not match the schema, left no entry. Now each leaves one, ``invalid``, under the
    caller and the route's operation, without the values sent; a caller without a valid token still
    leaves none."""
    home_dir, policy, residents = home
    app = build_app(ServeOptions(home=str(home_dir), policy=str(policy), log_to_stderr=False))
    store = TokenStore(app.state.vault.db)
    officer = store.create("officer-2", "officer", ["identity_verification"], ttl_seconds=600)[1]
    idn = residents[2]["id_number"]
    auth = {"Authorization": f"Bearer {officer}", "X-Purpose": "identity_verification",
            "Content-Type": "application/json"}
    with TestClient(app, base_url="https://testserver") as c:
        broken = c.post("/v1/residents/lookup", content=b'{"id_number": "' + idn.encode(), headers=auth)
        extra = c.post("/v1/residents/lookup", content=json.dumps({"id_number": idn, idn: idn}), headers=auth)
        typed = c.post("/v1/residents/lookup", content=b'{"id_number": "x"}',
                       headers={**auth, "X-Purpose": "id-" + idn.lower()})
        anonymous = c.post("/v1/residents/lookup", content=b'{"id_number": "' + idn.encode(),
                           headers={k: v for k, v in auth.items() if k != "Authorization"})
    for r in (broken, extra):
        assert r.status_code == 422 and r.json()["code"] == "request.invalid", r.text
        trail = _trail(app, r.headers["x-request-id"])
        assert [(e.principal, e.role, e.purpose, e.operation, e.outcome, e.record_ids, e.count)
                for e in trail] == [
            ("officer-2", "officer", "identity_verification", "find", "invalid", (), 0)]
        assert idn not in repr(trail)
    # a purpose the caller may not state is refused (and recorded as a refusal, as "?"), not rejected
    assert typed.status_code == 403
    assert [(e.purpose, e.outcome) for e in _trail(app, typed.headers["x-request-id"])] == [("?", "denied")]
    assert anonymous.status_code == 401
    assert _trail(app, anonymous.headers["x-request-id"]) == []
    app.state.vault.close()
