"""After a session of lookups, no PI value used is in the access log or the server's output."""

from __future__ import annotations

import json

from api_support import Live
from test_api_auth import ROUTES


def test_no_pi_in_access_log_stdout_or_stderr(live: Live) -> None:
    residents = live.residents[10:30]
    # a session as an officer, a registrar and a dpo would run it, with hits, misses and errors
    with live.client(role="officer", purpose="case_investigation") as c:
        for r in residents:
            assert c.post("/v1/residents/lookup", json={"id_number": r["id_number"]}).status_code == 200
            if r["mobile"]:
                c.post("/v1/residents/lookup", json={"mobile": r["mobile"], "reveal": True})
            idn = r["id_number"]
            birth = f"{idn[6:10]}-{idn[10:12]}-{idn[12:14]}"
            c.post("/v1/residents/lookup", json={"name": r["name"], "birth_date": birth})
            # mistakes an attacker or a clumsy client makes: PI in the URL, bad JSON, wrong fields
            c.get(f"/v1/residents/{r['id_number']}", params={"q": r["name"], "mobile": r["mobile"]})
            c.post("/v1/residents/lookup", json={r["name"]: r["address"]})
            c.post("/v1/residents/lookup", content=("{" + r["notes"]).encode(),
                   headers={"Content-Type": "application/json"})
    with live.client(role="dpo") as c:
        for rid in live.record_ids[10:15]:
            c.post(f"/v1/rights/{rid}/copy")
    with live.client() as anonymous:
        anonymous.post("/v1/residents/lookup", json={"id_number": residents[0]["id_number"]})

    access_log = live.home / "logs" / "access.log"
    logs = {"access log": access_log.read_text(encoding="utf-8"),
            "stdout": live.stdout.read_text(encoding="utf-8", errors="replace"),
            "stderr": live.stderr.read_text(encoding="utf-8", errors="replace")}
    # the access log has one JSON line per request, with only the documented keys
    lines = [json.loads(x) for x in logs["access log"].splitlines() if x.strip()]
    assert len(lines) > 100
    allowed = {"ts", "request_id", "method", "route", "status", "principal", "role", "token_id", "ms",
               "error", "where"}
    for entry in lines:
        assert set(entry) <= allowed
        assert entry["route"] == "-" or entry["route"].startswith(("/v1/", "/healthz"))
    assert any(e["route"] == "/v1/residents/lookup" and e["principal"] == "test-officer" for e in lines)
    values = [v for v in live.pi_values() if len(v) >= 2]
    # the synthetic values the route matrix sends (it creates a resident as the registrar)
    values += [v for _, _, body, _ in ROUTES if isinstance(body, dict)
               for k, v in body.items() if k in ("name", "id_number", "mobile", "address") and len(v) >= 2]
    hits = [(where, v) for where, text in logs.items() for v in values if v in text]
    assert hits == [], f"{len(hits)} PI values found in {sorted({w for w, _ in hits})}"
    # tokens are not logged either, only their ids
    for tok in live.tokens.values():
        for text in logs.values():
            assert tok not in text and tok.rsplit("_", 1)[1] not in text
