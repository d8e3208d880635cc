"""An export's fetch refused by a read budget: the refusal stays on record, the export as it was.

An insider with a small budget has an export larger than it approved (the approver sees the
count, not the requester's budget) and fetches it. The fetch is refused; what the refusal
leaves must outlive the fetch it stopped: the ``refused`` entries in the audit trail, the
alert in the ``alerts`` table (``pivault alerts list``), and the token's suspension once the
breaches reach ``suspend_after``. The export itself is left as it was: approved, no file, nothing
staged, fetchable once the budget has room. A real vault with the detect guard in its door, on
SQLite and PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from detect_helpers import FakeClock
from door import OPERATOR, Door, make_door

from pivault.audit import entries, verify
from pivault.crypto import Keyring
from pivault.detect import Budget, BudgetExceeded, DetectorConfig, MemoryCounters, list_alerts, seed
from pivault.leak import exports as ex
from pivault.policy import Policy
from pivault.policy.context import AccessContext
from pivault.policy.guard import PolicyGuard
from pivault.store import Database

DPO = AccessContext(principal="dpo-1", role="dpo", purpose="export_approval", source="cli")

#: the door under the HTTP API's guard: the policy decides, the detect guard charges and records
POLICY = """
[policy]
version = 1

[roles.operator]
operations = ["read", "export"]
purposes = ["case_investigation"]
"""


def _approved(door: Door, who: AccessContext, records: int, extra: tuple[str, ...] = ()) -> str:
    ids = tuple(rid for rid, _ in door.ids[:records]) + extra
    req = ex.request(door.vault, ex.Selection(record_ids=ids), recipient="Institute X", purpose="research",
                     fields=["name", "id_number"], ctx=who)
    assert req.selected == records
    ex.approve(door.vault, req.export_id, ctx=DPO)
    return req.export_id


def _left_as_approved(door: Door, export_id: str, out: Path) -> None:
    """Approved, no file (nor a temporary one) beside the target, nothing of a fetch stored."""
    assert ex.get_export(door.vault.db, export_id).status == "approved"
    assert not out.exists() and list(out.parent.iterdir()) == []
    kinds = [r[0] for r in door.vault.db.query("SELECT DISTINCT kind FROM export_members"
                                               " WHERE export_id = ?", (export_id,))]
    assert not [k for k in kinds if k in ("canaries", "members", "rowkeys") or k.startswith("tmp.")], kinds
    assert not list(entries(door.vault.db, operation="export", outcome="ok"))
    assert not list(entries(door.vault.db, operation="export.publish"))


@pytest.mark.parametrize("door_guard", ["detect", "policy"])
def test_a_fetch_refused_by_a_budget_is_on_record_and_suspends(db: Database, keyring: Keyring,
                                                              tmp_path: Path, door_guard: str) -> None:
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(records_per_minute=25), residents=40,
                     suspend_after=2)
    if door_guard == "policy":
        door.vault.guard = PolicyGuard(Policy.loads(POLICY), delegate=door.guard)
    who = door.reader()
    export_id = _approved(door, who, 30)
    out = tmp_path / "out" / "x.csv"
    out.parent.mkdir()

    with pytest.raises(BudgetExceeded) as exc:
        ex.fetch(door.vault, export_id, out, ctx=who)
    assert exc.value.rule == "principal.records_per_minute"
    door.log.flush()
    # the refusal in the trail: every record the fetch asked for, none handed out
    refused = list(entries(db, principal=who.principal, operation="export", outcome="refused"))
    assert sorted(r for e in refused for r in e.record_ids) == sorted(rid for rid, _ in door.ids[:30])
    assert refused[0].detail["requested_records"] == 30
    # and the export they were asked for, by its id
    named = list(entries(db, principal=who.principal, operation="export.fetch", outcome="refused"))
    assert [tuple(e.record_ids) for e in named] == [(export_id,)]
    # the alert in the table `pivault alerts list` shows
    alerts = [a for a in list_alerts(db) if a["rule"] == "budget.exceeded"]
    assert len(alerts) == 1 and alerts[0]["principal"] == who.principal
    assert alerts[0]["evidence"]["requested_records"] == 30
    token = door.tokens.get(who.token_id or "")
    assert token is not None and token.state() == "active"  # one breach of two
    _left_as_approved(door, export_id, out)
    assert verify(db, door.verifier).ok

    # the second breach suspends the token, and that too stays
    with pytest.raises(BudgetExceeded):
        ex.fetch(door.vault, export_id, out, ctx=who)
    door.log.flush()
    token = door.tokens.get(who.token_id or "")
    assert token is not None and token.state() == "suspended"
    suspended = [a for a in list_alerts(db, severity="critical") if a["rule"] == "token.suspended"]
    assert len(suspended) == 1 and suspended[0]["token_id"] == who.token_id
    assert [e.detail["token"] for e in entries(db, operation="token.suspend")] == [who.token_id]
    assert len(list(entries(db, principal=who.principal, operation="export", outcome="refused"))) == 2
    _left_as_approved(door, export_id, out)
    assert verify(db, door.verifier).ok


def test_a_refused_fetch_is_fetched_once_the_budget_has_room(db: Database, keyring: Keyring,
                                                            tmp_path: Path) -> None:
    """A budget spent by earlier reads refuses the fetch; a minute later the same export is fetched,
    charged once: 20 records of a 25-record minute, so 5 more fit and a sixth does not."""
    clock = FakeClock(1_900_000_000.0 - 1_900_000_000.0 % 86400 + 43200)
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(records_per_minute=25), residents=40,
                     counters=MemoryCounters(clock), suspend_after=0)
    who = door.reader()
    export_id = _approved(door, who, 20)
    out = tmp_path / "out" / "x.csv"
    out.parent.mkdir()
    for rid, _ in door.ids[30:40]:  # 10 records read: the export's 20 do not fit the minute
        door.vault.get(rid, ctx=who)

    with pytest.raises(BudgetExceeded):
        ex.fetch(door.vault, export_id, out, ctx=who)
    door.log.flush()
    assert len(list(entries(db, principal=who.principal, operation="export", outcome="refused"))) == 1
    assert [a["rule"] for a in list_alerts(db)] == ["budget.exceeded"]
    _left_as_approved(door, export_id, out)

    clock.advance(62)  # a minute's charge stays counted up to a minute and one bucket (62 s)
    info = ex.fetch(door.vault, export_id, out, ctx=who)
    assert info.status == "fetched" and info.rows == 20 and out.exists()
    door.log.flush()
    handed = [r for e in entries(db, principal=who.principal, operation="export", outcome="ok")
              for r in e.record_ids]
    assert sorted(handed) == sorted(rid for rid, _ in door.ids[:20])
    # charged once: the minute holds 20, so 5 more reads fit and a sixth is refused
    for rid, _ in door.ids[30:35]:
        door.vault.get(rid, ctx=who)
    with pytest.raises(BudgetExceeded):
        door.vault.get(door.ids[35][0], ctx=who)
    assert verify(db, door.verifier).ok


def test_a_canary_in_a_refused_fetch_still_suspends(db: Database, keyring: Keyring, tmp_path: Path) -> None:
    """A canary resident in the export's set: asking for it is the sign, answered or not. The fetch
    refused by the budget still leaves the critical alarm and the token suspended at once."""
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(records_per_minute=25), residents=40)
    canary = seed(door.vault, 1, ctx=OPERATOR, registry=door.canaries)[0]
    who = door.reader()
    export_id = _approved(door, who, 30, (canary,))
    out = tmp_path / "out" / "x.csv"
    out.parent.mkdir()

    with pytest.raises(BudgetExceeded):
        ex.fetch(door.vault, export_id, out, ctx=who)
    door.log.flush()
    alarms = [a for a in list_alerts(db, severity="critical") if a["rule"] == "canary.read"]
    assert len(alarms) == 1 and alarms[0]["evidence"]["record_ids"] == [canary]
    token = door.tokens.get(who.token_id or "")
    assert token is not None and token.state() == "suspended"
    refused = list(entries(db, principal=who.principal, operation="export", outcome="refused"))
    assert canary in {r for e in refused for r in e.record_ids}
    _left_as_approved(door, export_id, out)
    assert verify(db, door.verifier).ok


def test_an_export_is_counted_by_the_vault_wide_detector(sqlite_db: Database, keyring: Keyring,
                                                         tmp_path: Path, clock: FakeClock) -> None:
    """An approved export is a read like any other to the vault-wide detector: 30 records fetched
    in a minute whose rate rule fires above 20 raise ``global.rate``. Its records are read by the
    export's own path, not the lookups' (whose reads the detector counts with their cells), so the
    detector must be told of them where the fetch is recorded."""
    door = make_door(sqlite_db, keyring, tmp_path / "keys", budget=Budget(records_per_minute=1000),
                     residents=40, counters=MemoryCounters(clock),
                     detector=DetectorConfig(evaluate_every=3600, rate_min_per_minute=20,
                                             baseline_per_minute=1.0))
    detector = door.guard.detector
    assert detector is not None
    who = door.reader()
    export_id = _approved(door, who, 30)
    out = tmp_path / "out" / "x.csv"
    out.parent.mkdir()
    assert detector.evaluate() == []
    info = ex.fetch(door.vault, export_id, out, ctx=who)
    assert info.status == "fetched" and info.rows == 30
    clock.advance(10)  # the bucket of the fetch complete
    detector.evaluate()
    raised = [a for a in list_alerts(sqlite_db) if a["rule"] == "global.rate"]
    assert len(raised) == 1 and raised[0]["evidence"]["records_last_minute"] == 30
