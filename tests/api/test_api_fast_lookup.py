"""The lookup served without FastAPI's machinery answers exactly as the FastAPI route does.

Two apps over one vault home, one with ``fast_lookup`` and one without; the
same requests (valid, refused, invalid, budget-spent) must get the same
status, body, headers and audit entries, and the fast one must really take
its own path for well-formed requests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import PASSPHRASE, TRAINEE, small_home
from fastapi.testclient import TestClient

from pivault.api import schemas
from pivault.api.server import ServeOptions, build_app
from pivault.audit import entries
from pivault.policy import Policy
from pivault.policy.tokens import TokenStore
from pivault.vault import Vault

assert TRAINEE  # the policy_for_tests() policy has a "trainee" role with a 2-a-minute budget


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
         ) -> Iterator[tuple[Path, Path, list[dict[str, Any]]]]:
    yield small_home(tmp_path, monkeypatch, 12, 9090)


def _app(home: Path, policy: Path, *, fast: bool) -> Any:
    app = build_app(ServeOptions(home=str(home), policy=str(policy), log_to_stderr=False))
    app.state.config.fast_lookup = fast
    return app


def _requests(residents: list[dict[str, Any]]) -> list[tuple[str, dict[str, str], bytes]]:
    """(role, headers, body) of each lookup to compare."""
    r0, r1 = residents[0], next(r for r in residents if r["mobile"])
    idn = r1["id_number"]
    birth = f"{idn[6:10]}-{idn[10:12]}-{idn[12:14]}"
    js = {"Content-Type": "application/json"}
    iv = {**js, "X-Purpose": "identity_verification"}
    ci = {**js, "X-Purpose": "case_investigation"}

    def body(obj: Any) -> bytes:
        return json.dumps(obj).encode()

    return [
        ("officer", iv, body({"id_number": r0["id_number"]})),
        ("officer", iv, body({"mobile": r1["mobile"]})),
        ("officer", iv, body({"name": r1["name"], "birth_date": birth})),
        ("officer", iv, body({"id_number": "110101199001019970"})),  # a valid number held by nobody
        ("officer", ci, body({"id_number": idn, "reveal": True})),
        ("officer", iv, body({"id_number": idn, "reveal": True})),  # policy.reveal, from the Vault
        ("officer", {**iv, "Content-Type": "application/json; charset=utf-8"}, body({"id_number": idn})),
        ("officer", {**iv, "Content-Type": "application/vnd.test+json"}, body({"mobile": r1["mobile"]})),
        ("officer", {"X-Purpose": "identity_verification"}, body({"mobile": r1["mobile"]})),  # no type
        ("officer", {**iv, "Content-Type": "text/plain+json"}, body({"mobile": r1["mobile"]})),
        ("officer", js, body({"id_number": idn})),  # no purpose
        ("officer", {**js, "X-Purpose": "Not A Purpose"}, body({"id_number": idn})),
        ("officer", {**js, "X-Purpose": "marketing"}, body({"id_number": idn})),
        ("officer", {**js, "X-Purpose": "p" * 65}, body({"id_number": idn})),
        ("officer", {**js, "X-Purpose": "  identity_verification "}, body({"id_number": idn})),
        ("admin", {**js, "X-Purpose": "administration"}, body({"id_number": idn})),
        ("officer", iv, body({})),
        ("officer", iv, body({"id_number": idn, "mobile": r1["mobile"]})),
        ("officer", iv, body({"id_number": idn, "colour": "blue"})),
        ("officer", iv, body({"name": r1["name"]})),
        ("officer", iv, body({"name": r1["name"], "birth_date": "1.1.1990"})),
        ("officer", iv, body({"id_number": idn, "reveal": "maybe"})),
        ("officer", iv, body([{"id_number": idn}])),
        ("officer", iv, b"{not json"),
        ("officer", iv, b""),
        ("officer", iv, body({"id_number": "110105194912310021"})),  # wrong check character
        ("officer", iv, body({"id_number": ""})),
        ("trainee", {**js, "X-Purpose": "training"}, body({"id_number": r0["id_number"]})),
        ("trainee", {**js, "X-Purpose": "training"}, body({"id_number": idn})),
        ("trainee", {**js, "X-Purpose": "training"}, body({"id_number": r0["id_number"]})),  # 429
        ("trainee", {**js, "X-Purpose": "training"}, body({"id_number": idn})),  # 429
    ]


Answer = tuple[int, Any, dict[str, str], Any]


def _answers(app: Any, tokens: dict[str, str], requests: list[tuple[str, dict[str, str], bytes]]
             ) -> list[Answer]:
    out: list[Answer] = []
    with TestClient(app) as c:
        for role, headers, body in requests:
            r = c.post("/v1/residents/lookup", content=body,
                       headers={"Authorization": f"Bearer {tokens[role]}", **headers})
            doc = r.json()
            rid = r.headers["x-request-id"]
            if isinstance(doc, dict) and doc.get("request_id") == rid:
                doc["request_id"] = "q_*"
            kept = {k: r.headers[k] for k in ("content-type", "retry-after", "www-authenticate",
                                              "cache-control", "x-content-type-options")
                    if k in r.headers}
            # the seconds to wait move with the clock between the two apps' runs: compare the rest
            if "retry-after" in kept:
                assert 1 <= int(kept["retry-after"]) <= 62  # a minute and one 60/59-s bucket at most
                kept["retry-after"] = "N"
            if isinstance(doc, dict) and isinstance(doc.get("detail"), str):
                doc["detail"] = re.sub(r"retry after \d+ s", "retry after N s", doc["detail"])
            out.append((r.status_code, doc, kept, rid))
    app.state.vault.guard.delegate.audit_log.flush()
    return out


def test_fast_lookup_answers_and_audits_as_the_fastapi_route(
        home: tuple[Path, Path, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch) -> None:
    home_dir, policy, residents = home
    requests = _requests(residents)
    answers: dict[bool, list[Answer]] = {}
    original = schemas.LookupIn.model_validate
    for fast in (False, True):
        # a fresh vault home state per app: the same tokens, principals named apart
        app = _app(home_dir, policy, fast=fast)
        store = TokenStore(app.state.vault.db)
        roles = {"officer": "identity_verification", "admin": "administration", "trainee": "training"}
        tokens = {}
        for role in roles:
            purposes = Policy.load(policy).purposes_for(role)
            tokens[role] = store.create(f"{role}-{'fast' if fast else 'slow'}", role, purposes,
                                        ttl_seconds=600)[1]
        taken: list[int] = []

        def spy(obj: Any, *a: Any, _taken: list[int] = taken, **kw: Any) -> Any:
            _taken.append(1)
            return original(obj, *a, **kw)

        with monkeypatch.context() as m:
            m.setattr(schemas.LookupIn, "model_validate", spy)
            answers[fast] = _answers(app, tokens, requests)
        assert bool(taken) is fast  # FastAPI validates by its own adapter, never this method
        trail = []
        for *_, rid in answers[fast]:
            found = [(e.operation, e.outcome, e.record_ids, e.purpose, e.role)
                     for e in entries(app.state.vault.db, request_id=rid)]
            trail.append(found)
        answers[fast] = [(*a[:3], t) for a, t in zip(answers[fast], trail, strict=True)]
        app.state.vault.close()
    slow, fast_answers = answers[False], answers[True]
    statuses = [a[0] for a in slow]
    assert 200 in statuses and 403 in statuses and 422 in statuses and 429 in statuses, statuses
    for (role, headers, body), a, b in zip(requests, slow, fast_answers, strict=True):
        assert a == b, (role, headers, body)


_TRACED = '''
import json, sys
from contextlib import contextmanager
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN_CONTEXT, NonRecordingSpan

started = []

class Tracer(trace.Tracer):
    def start_span(self, name, *args, **kwargs):
        started.append(name)
        return NonRecordingSpan(INVALID_SPAN_CONTEXT)

    @contextmanager
    def start_as_current_span(self, name, *args, **kwargs):
        started.append(name)
        yield NonRecordingSpan(INVALID_SPAN_CONTEXT)

class Provider(trace.TracerProvider):
    def get_tracer(self, *args, **kwargs):
        return Tracer()

trace.set_tracer_provider(Provider())
from fastapi.testclient import TestClient
from pivault.api.server import ServeOptions, build_app

home, policy, token, id_number = sys.argv[1:5]
app = build_app(ServeOptions(home=home, policy=policy, log_to_stderr=False))
with TestClient(app, base_url="https://testserver") as c:
    assert c.get("/healthz").status_code == 200
    r = c.post("/v1/residents/lookup", json={"id_number": id_number},
               headers={"Authorization": "Bearer " + token, "X-Purpose": "identity_verification"})
    assert r.status_code == 200, r.text
app.state.vault.close()
print(json.dumps(started))
'''


def test_no_request_reaches_an_opentelemetry_tracer(home: tuple[Path, Path, list[dict[str, Any]]],
                                                    tmp_path: Path) -> None:
    """A tracer provider installed in the process (as an OTEL_* setup or an agent would) sees no
    request: what the service records leaves only through its access log and audit trail."""
    import os
    import subprocess
    import sys

    h, policy, residents = home
    with Vault.open(h, passphrase=PASSPHRASE) as vault:
        _, token = TokenStore(vault.db).create("otel-officer", "officer", ["identity_verification"],
                                               ttl_seconds=3600)
    script = tmp_path / "traced.py"
    script.write_text(_TRACED, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script), str(h), str(policy), token,
                           residents[0]["id_number"]], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PIVAULT_PASSPHRASE=PASSPHRASE))
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_a_worker_keeps_what_it_built_at_startup_out_of_the_collectors_walks(
        home: tuple[Path, Path, list[dict[str, Any]]]) -> None:
    """uvicorn's factory freezes the worker's startup objects: a full collection then walks only
    what requests made, instead of holding the worker's requests for tens of milliseconds."""
    import os
    import subprocess
    import sys

    from pivault.api.server import OPTIONS_ENV

    h, policy, _ = home
    code = ("import gc; from pivault.api.server import app_factory\n"
            "assert gc.get_freeze_count() == 0\n"
            "app = app_factory()\n"
            "print(gc.get_freeze_count())\n"
            "app.state.vault.close()\n")
    opts = ServeOptions(home=str(h), policy=str(policy), log_to_stderr=False)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PIVAULT_PASSPHRASE=PASSPHRASE, **{OPTIONS_ENV: opts.to_env()}))
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip().splitlines()[-1]) > 10_000  # the app, the vault, the policy, the model
