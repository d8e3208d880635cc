"""A read recorded in several entries (an export's fetch): charged once, whole; an entry per batch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from door import OPERATOR, make_door

from pivault.audit import entries, verify
from pivault.crypto import Keyring
from pivault.detect import Budget, BudgetExceeded, list_alerts, seed
from pivault.policy import Policy
from pivault.policy.guard import PolicyGuard
from pivault.store import Database


def _batches(ids: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(ids), size):
        yield ids[i:i + size]


def test_a_read_in_batches_is_charged_whole_and_recorded_per_batch(db: Database, keyring: Keyring,
                                                                   tmp_path: Path) -> None:
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(records_per_minute=25), residents=30)
    canary = seed(door.vault, 1, ctx=OPERATOR, registry=door.canaries)[0]
    who = door.reader()
    ids = [rid for rid, _ in door.ids[:20]] + [canary]
    door.guard.audit_batches(who, "export", lambda: _batches(ids, 4), len(ids), "ok")
    trail = [e for e in entries(db, principal=who.principal) if e.operation == "export"]
    assert [len(e.record_ids) for e in trail] == [4, 4, 4, 4, 4, 1]
    assert [r for e in trail for r in e.record_ids] == ids
    # the canary among them: one alarm, naming it, and the token suspended
    alarms = [a for a in list_alerts(db, severity="critical") if a["rule"] == "canary.read"]
    assert len(alarms) == 1 and alarms[0]["evidence"]["record_ids"] == [canary]
    token = door.tokens.get(who.token_id or "")
    assert token is not None and token.state() == "suspended"
    assert verify(db, door.verifier).ok


def test_a_read_in_batches_larger_than_a_budget_is_refused_whole(db: Database, keyring: Keyring,
                                                                 tmp_path: Path) -> None:
    """25 records a minute: a read of 30 is refused as one, none of its batches charged or recorded
    as read, every batch recorded as refused; a read of 25 afterwards still fits."""
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(records_per_minute=25), residents=40)
    who = door.reader()
    ids = [rid for rid, _ in door.ids[:30]]
    with pytest.raises(BudgetExceeded) as exc:
        door.guard.audit_batches(who, "export", lambda: _batches(ids, 7), len(ids), "ok")
    assert "30" in str(exc.value)
    trail = list(entries(db, principal=who.principal))
    assert {e.outcome for e in trail} == {"refused"}
    assert [r for e in trail for r in e.record_ids] == ids
    alert = next(a for a in list_alerts(db) if a["rule"] == "budget.exceeded")
    assert alert["evidence"]["record_ids"] == ids[:30]
    again = [rid for rid, _ in door.ids[10:35]]
    door.guard.audit_batches(who, "export", lambda: _batches(again, 7), len(again), "ok")
    assert sum(len(e.record_ids) for e in entries(db, principal=who.principal, outcome="ok")) == 25


def test_the_policy_guard_hands_a_read_in_batches_to_its_delegate(db: Database, keyring: Keyring,
                                                                  tmp_path: Path) -> None:
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(records_per_minute=10), residents=12)
    who = door.reader()
    guard = PolicyGuard(Policy.default(), delegate=door.guard)
    ids = [rid for rid, _ in door.ids]
    with pytest.raises(BudgetExceeded):
        guard.audit_batches(who, "export", lambda: _batches(ids, 5), len(ids), "ok")
    assert not list(entries(db, principal=who.principal, outcome="ok"))
