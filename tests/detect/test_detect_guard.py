"""The DetectGuard in a real Vault's door: audit, budgets, suspension, canaries, fail closed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from detect_helpers import FakeClock
from door import OPERATOR, make_door

from pivault.audit import AuditError, entries, verify
from pivault.crypto import Keyring
from pivault.detect import (
    Budget,
    BudgetExceeded,
    CanaryRegistry,
    Counters,
    DetectUnavailable,
    RedisCounters,
    list_alerts,
    seed,
)
from pivault.errors import NotFoundError, ValidationError
from pivault.model.record import _id_second
from pivault.policy.context import AccessContext
from pivault.store import Database
from pivault.synth import generate
from pivault.vault import DuplicateRecord
from pivault.vault.facade import open_record


def test_reads_are_audited_and_budgeted(db: Database, keyring: Keyring, tmp_path: Path) -> None:
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(records_per_minute=5, misses_per_hour=2))
    who = door.reader()
    for rid, idn in door.ids[:5]:
        got = door.vault.find(id_number=idn, ctx=who)
        assert [r["record_id"] for r in got] == [rid]
    with pytest.raises(BudgetExceeded) as info:
        door.vault.find(id_number=door.ids[5][1], ctx=who)
    assert info.value.code == "budget.exceeded" and 1 <= info.value.retry_after <= 62
    trail = list(entries(db, principal=who.principal))
    assert [e.outcome for e in trail] == ["ok"] * 5 + ["refused"]
    assert trail[0].record_ids == (door.ids[0][0],) and trail[0].operation == "find"
    assert trail[-1].record_ids == (door.ids[5][0],) and trail[-1].count == 0
    assert trail[-1].detail["rule"] == "principal.records_per_minute"
    assert verify(db, door.verifier, keyring=keyring).ok


def test_misses_are_budgeted(db: Database, keyring: Keyring, tmp_path: Path) -> None:
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(misses_per_hour=3), residents=5)
    who = door.reader()
    for _ in range(3):
        assert door.vault.find(id_number="11010519491231002X", ctx=who) == []
    with pytest.raises(BudgetExceeded) as info:
        door.vault.find(id_number="11010519491231002X", ctx=who)
    assert info.value.rule == "principal.misses_per_hour"
    outcomes = [e.outcome for e in entries(db, principal=who.principal)]
    assert outcomes == ["not_found"] * 3 + ["refused"]


def test_repeated_breaches_suspend_the_token(db: Database, keyring: Keyring, tmp_path: Path) -> None:
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(records_per_minute=2), residents=10)
    who = door.reader()
    for rid, _ in door.ids[:2]:
        door.vault.get(rid, ctx=who)
    for rid, _ in door.ids[2:5]:
        with pytest.raises(BudgetExceeded):
            door.vault.get(rid, ctx=who)
    info = door.tokens.get(who.token_id or "")
    assert info is not None and info.state() == "suspended"
    assert "read budget exceeded 3 times" in (info.suspended_reason or "")
    rules = [a["rule"] for a in list_alerts(db)]
    assert "token.suspended" in rules and "budget.exceeded" in rules
    assert [e.operation for e in entries(db, operation="token.suspend")] == ["token.suspend"]
    assert verify(db, door.verifier).ok


def test_canary_read_suspends_at_once(db: Database, keyring: Keyring, tmp_path: Path) -> None:
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(records_per_minute=100), residents=5)
    canaries = seed(door.vault, 3, ctx=OPERATOR, registry=door.canaries)
    assert len(canaries) == 3 and door.canaries.count() == 3
    who = door.reader()
    door.vault.get(door.ids[0][0], ctx=who)  # a real resident: nothing happens
    assert list_alerts(db) == []
    record = door.vault.get(canaries[1], ctx=who)  # answered like any other read
    assert record["record_id"] == canaries[1]
    alerts = list_alerts(db, severity="critical")
    assert {a["rule"] for a in alerts} == {"canary.read", "token.suspended"}
    canary_alert = next(a for a in alerts if a["rule"] == "canary.read")
    assert canary_alert["evidence"]["record_ids"] == [canaries[1]]
    assert canary_alert["principal"] == who.principal
    token = door.tokens.get(who.token_id or "")
    assert token is not None and token.state() == "suspended"


def test_a_subject_copy_is_a_read_for_budgets_and_canaries(db: Database, keyring: Keyring,
                                                           tmp_path: Path) -> None:
    """A rights copy hands a record out of the vault: charged, and a canary's copy trips it."""
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(records_per_minute=2), residents=5)
    canaries = seed(door.vault, 1, ctx=OPERATOR, registry=door.canaries)
    who = door.reader()
    for rid, _ in door.ids[:2]:
        assert door.vault.subject_copy(rid, ctx=who)["record_id"] == rid
    with pytest.raises(BudgetExceeded):
        door.vault.subject_copy(door.ids[2][0], ctx=who)
    trail = list(entries(db, principal=who.principal))
    assert [(e.operation, e.outcome) for e in trail] == [
        ("rights.copy", "ok"), ("rights.copy", "ok"), ("rights.copy", "refused")]
    other = door.reader(2)
    door.vault.subject_copy(canaries[0], ctx=other)
    assert {a["rule"] for a in list_alerts(db, severity="critical")} == {"canary.read", "token.suspended"}
    token = door.tokens.get(other.token_id or "")
    assert token is not None and token.state() == "suspended"
    assert verify(db, door.verifier, keyring=keyring).ok


def test_duplicate_refusals_are_audited_and_budgeted(db: Database, keyring: Keyring, tmp_path: Path) -> None:
    """"This ID number is already in the vault" answers a lookup: recorded and charged like one."""
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(records_per_minute=3), residents=10)
    who = door.reader()
    for _, idn in door.ids[:3]:
        with pytest.raises(DuplicateRecord):
            door.vault.put({"name": "测试", "id_number": idn}, ctx=who)
    with pytest.raises(BudgetExceeded) as info:
        door.vault.put({"name": "测试", "id_number": door.ids[3][1]}, ctx=who)
    assert info.value.rule == "principal.records_per_minute"
    trail = list(entries(db, principal=who.principal))
    assert [(e.operation, e.outcome) for e in trail] == [("put", "duplicate")] * 3 + [("put", "refused")]
    assert [e.record_ids for e in trail] == [(rid,) for rid, _ in door.ids[:4]]
    assert door.vault.store.count() == 10  # nothing written by any of them
    assert verify(db, door.verifier, keyring=keyring).ok


def test_writes_are_refused_alike_while_the_vault_cannot_take_a_record(
        sqlite_db: Database, keyring: Keyring, tmp_path: Path, counters: Counters, clock: FakeClock) -> None:
    """While the vault-wide records budget was spent, a create of a held ID number was refused (429,
    no breach of anyone's own budget) and one of a new number went through, as did a correction to a
    new number: the answers told which numbers the vault holds, charged to nothing but the changes
    budget. A create or correction now needs room for one record in the vault-wide windows, as a
    lookup that finds nothing does: refused alike either way, and nothing charged by the probe."""
    import datetime

    from pivault.model import resident_id

    door = make_door(sqlite_db, keyring, tmp_path / "keys", budget=Budget(changes_per_day=100),
                     vault_budget=Budget(records_per_minute=2), counters=counters, residents=4)
    who = door.reader()
    (r0, own), (_, held), (r2, _), _ = door.ids
    fresh = [resident_id.make("110101", datetime.date(1990, 1, 1), seq) for seq in (995, 997)]
    assert not set(fresh) & {idn for _, idn in door.ids}
    door.vault.get(r0, ctx=who)
    door.vault.get(r2, ctx=who)  # the vault's budget for this minute is spent
    refusals = []
    for attempt in (lambda: door.vault.put({"name": "测试", "id_number": held}, ctx=who),
                    lambda: door.vault.put({"name": "测试", "id_number": fresh[0]}, ctx=who),
                    lambda: door.vault.update(r0, {"id_number": held}, ctx=who),
                    lambda: door.vault.update(r0, {"id_number": fresh[1]}, ctx=who)):
        with pytest.raises(BudgetExceeded) as info:
            attempt()
        refusals.append(info.value.rule)
    assert refusals == ["vault.records_per_minute"] * 4
    assert door.vault.store.count() == 4  # nothing written
    stored = door.vault.store.get(r0)
    assert stored is not None and open_record(keyring, stored).id_number == own
    token = door.tokens.get(who.token_id or "")
    assert token is not None and token.state() == "active"  # the vault's limit is no breach
    trail = [(e.operation, e.outcome) for e in entries(sqlite_db, principal=who.principal)]
    assert trail == [("get", "ok")] * 2 + [("put", "refused")] * 2 + [("update", "refused")] * 2
    clock.advance(62)
    # the probes charged nothing to the vault: two records fit again, and a create goes through
    door.vault.put({"name": "测试", "id_number": fresh[0]}, ctx=who)
    door.vault.get(r0, ctx=who)
    door.vault.get(r2, ctx=who)
    assert verify(sqlite_db, door.verifier, keyring=keyring).ok


def test_refused_corrections_are_audited(db: Database, keyring: Keyring, tmp_path: Path) -> None:
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(records_per_minute=100), residents=3)
    who = door.reader()
    (first, _), (second, second_idn) = door.ids[:2]
    missing = first[:-4] + ("aaaa" if not first.endswith("aaaa") else "bbbb")
    with pytest.raises(NotFoundError):
        door.vault.update(missing, {"notes": "x"}, ctx=who)
    with pytest.raises(DuplicateRecord):
        door.vault.update(first, {"id_number": second_idn}, ctx=who)
    trail = [(e.operation, e.outcome, e.record_ids) for e in entries(db, principal=who.principal)]
    assert trail == [("update", "not_found", (missing,)), ("update", "duplicate", (first, second))]
    assert open_record(keyring, door.vault.store.get(first)).id_number == door.ids[0][1]  # type: ignore[arg-type]


def test_what_is_not_a_record_id_never_reaches_the_trail(db: Database, keyring: Keyring,
                                                        tmp_path: Path) -> None:
    """An ID number typed where a record id belongs: refused, and the refusal recorded without it."""
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(records_per_minute=100), residents=3)
    who = door.reader()
    typed = door.ids[0][1]  # the resident's ID number, not their record id
    for call in (lambda: door.vault.get(typed, ctx=who), lambda: door.vault.erase(typed, ctx=who),
                 lambda: door.vault.update(typed, {"notes": "x"}, ctx=who)):
        with pytest.raises(ValidationError) as info:
            call()
        assert info.value.code == "record.id"
    trail = list(entries(db, principal=who.principal))
    assert [(e.operation, e.outcome, e.record_ids) for e in trail] == [
        ("get", "invalid", ()), ("erase", "invalid", ()), ("update", "invalid", ())]
    door.log.flush(10)
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert typed.encode() not in f.read_bytes(), f.name
    assert verify(db, door.verifier, keyring=keyring).ok


def test_full_value_reads_are_marked_in_the_trail(db: Database, keyring: Keyring, tmp_path: Path) -> None:
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(records_per_minute=100), residents=2)
    who = door.reader()
    rid, idn = door.ids[0]
    door.vault.get(rid, ctx=who)
    door.vault.find(id_number=idn, ctx=dataclasses.replace(who, reveal=True))
    door.vault.get(rid, ctx=dataclasses.replace(who, reveal=True))
    trail = [(e.operation, e.detail) for e in entries(db, principal=who.principal)]
    assert trail == [("get", {}), ("find", {"reveal": True}), ("get", {"reveal": True})]
    assert verify(db, door.verifier, keyring=keyring).ok


def test_every_import_chunk_is_in_the_trail(db: Database, keyring: Keyring, tmp_path: Path) -> None:
    """A chunk that only rejected rows, or only met numbers already held, still stored or learnt
    something: it is recorded like one that imported records."""
    from pivault.vault.imports import import_files

    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(records_per_minute=100), residents=3)
    (rid0, idn0), (rid1, idn1) = door.ids[:2]
    src = tmp_path / "in.csv"
    src.write_text(f"姓名,身份证号\n测试,{idn0}\n测试,123\n测试,{idn1}\n", encoding="utf-8")
    summary = import_files(door.vault, [src], ctx=OPERATOR, workers=0)
    assert (summary.imported, summary.rejected, summary.duplicates) == (0, 1, 2)
    trail = [(e.operation, e.outcome, e.record_ids) for e in entries(db, operation="import")]
    assert [t[:2] for t in trail] == [("import", "invalid"), ("import", "duplicate")]
    assert trail[1][2] == (rid0, rid1)
    rejects = [r[0] for r in db.query("SELECT reject_id FROM import_rejects")]
    assert trail[0][2] == tuple(rejects) and len(rejects) == 1
    assert verify(db, door.verifier, keyring=keyring).ok


def test_corrections_and_erasures_are_budgeted(db: Database, keyring: Keyring, tmp_path: Path) -> None:
    """One token may not fill, rewrite or empty the register without limit: changes have a budget too."""
    import datetime

    from pivault.detect import BudgetPolicy, Budgets, MemoryCounters
    from pivault.model import resident_id

    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(), residents=4)
    budgets = BudgetPolicy(roles={"operator": Budget(changes_per_day=3)})
    door.guard.budgets = Budgets(budgets, MemoryCounters())  # the residents above are put in
    who = door.reader()
    (r0, _), (r1, _), (r2, _), _ = door.ids
    fresh = resident_id.make("110101", datetime.date(1990, 1, 1), 997)
    assert fresh not in {idn for _, idn in door.ids}
    door.vault.put({"name": "测试", "id_number": fresh}, ctx=who)  # a create is a change
    door.vault.update(r0, {"notes": "x"}, ctx=who)
    door.vault.erase(r1, ctx=who)
    with pytest.raises(BudgetExceeded) as info:
        door.vault.erase(r2, ctx=who)
    assert info.value.rule == "principal.changes_per_day" and "change budget" in str(info.value)
    assert door.vault.store.get(r2) is not None  # refused before anything was removed
    with pytest.raises(BudgetExceeded):
        door.vault.update(r2, {"notes": "y"}, ctx=who)
    trail = [(e.operation, e.outcome) for e in entries(db, principal=who.principal)]
    assert trail == [("put", "ok"), ("update", "ok"), ("erase", "ok"), ("erase", "refused"),
                     ("update", "refused")]
    refusal = next(e for e in entries(db, principal=who.principal) if e.outcome == "refused")
    assert refusal.detail["rule"] == "principal.changes_per_day" and refusal.detail["requested_changes"] == 1
    assert "budget.exceeded" in {a["rule"] for a in list_alerts(db)}
    door.vault.get(r2, ctx=who)  # reads have their own budgets
    assert verify(db, door.verifier, keyring=keyring).ok


def test_registering_a_canarys_number_trips_it(db: Database, keyring: Keyring, tmp_path: Path) -> None:
    """Only someone holding a copy of the vault knows a canary's ID number to try it."""
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(records_per_minute=100), residents=5)
    canary = seed(door.vault, 1, ctx=OPERATOR, registry=door.canaries)[0]
    stored = door.vault.store.get(canary)
    assert stored is not None
    who = door.reader()
    with pytest.raises(DuplicateRecord):
        door.vault.put({"name": "测试", "id_number": open_record(keyring, stored).id_number}, ctx=who)
    alerts = list_alerts(db, severity="critical")
    assert {a["rule"] for a in alerts} == {"canary.read", "token.suspended"}
    token = door.tokens.get(who.token_id or "")
    assert token is not None and token.state() == "suspended"


def test_a_canary_asked_for_past_the_budget_still_trips(db: Database, keyring: Keyring,
                                                        tmp_path: Path) -> None:
    """A lookup refused by a budget had found what it asked for, but the canaries were checked only
    for reads answered: someone holding a copy of the vault could spend its budget first, then try
    its numbers (429 for a held one, an empty answer for the others) with no canary ever tripping.
    Asking for a canary is the sign; it now trips whether or not the budget could answer, for a
    lookup and for a create refused as a duplicate alike."""
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(records_per_minute=1), residents=5,
                     suspend_after=0)
    canaries = [open_record(keyring, s) for s in door.vault.store.get_records(
        seed(door.vault, 2, ctx=OPERATOR, registry=door.canaries))]
    looker, creator = door.reader(1), door.reader(2)
    for who in (looker, creator):
        door.vault.get(door.ids[0][0], ctx=who)  # the minute's budget is spent
    assert list_alerts(db, severity="critical") == []
    with pytest.raises(BudgetExceeded):
        door.vault.find(id_number=canaries[0].id_number, ctx=looker)
    with pytest.raises(BudgetExceeded):
        door.vault.put({"name": "测试", "id_number": canaries[1].id_number}, ctx=creator)
    for who, canary in ((looker, canaries[0]), (creator, canaries[1])):
        token = door.tokens.get(who.token_id or "")
        assert token is not None and token.state() == "suspended"
        alert = next(a for a in list_alerts(db, severity="critical")
                     if a["rule"] == "canary.read" and a["principal"] == who.principal)
        assert alert["evidence"]["record_ids"] == [canary.record_id]
        trail = [(e.operation, e.outcome) for e in entries(db, principal=who.principal)]
        assert trail[-1][1] == "refused"
    assert [e.detail["token"] for e in entries(db, operation="token.suspend")] == [
        looker.token_id, creator.token_id]
    assert verify(db, door.verifier, keyring=keyring).ok


def test_canaries_look_like_residents(db: Database, keyring: Keyring, tmp_path: Path) -> None:
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(), residents=20)
    canaries = seed(door.vault, 4, ctx=OPERATOR, registry=door.canaries)
    pg_cols = ("SELECT column_name FROM information_schema.columns WHERE table_name = 'records'"
               " AND table_schema = current_schema() ORDER BY ordinal_position")
    cols = [r[1] for r in db.query("PRAGMA table_info(records)")] if db.dialect == "sqlite" else [
        r[0] for r in db.query(pg_cols)]
    rows = {r[0]: r for r in db.query("SELECT " + ", ".join(cols) + " FROM records")}
    real = [rows[rid] for rid, _ in door.ids]
    for rid in canaries:
        row = rows[rid]
        for i, col in enumerate(cols):
            if col in ("created_at", "updated_at"):
                times = [float(r[i]) for r in real]
                assert min(times) - 10 <= float(row[i]) <= max(times) + 10  # blended into real times
                # and the id, whose first characters are the creation second, tells the same time
                assert _id_second(rid) == int(float(row[i]))
                real_seconds = [_id_second(r) for r, _ in door.ids]
                assert min(real_seconds) - 10 <= _id_second(rid) <= max(real_seconds) + 10
            elif col == "batch_id":
                assert row[i] is None and all(r[i] is None for r in real)
    # the registry holds keyed tags only: no record id, and another key recognises nothing
    tags = [bytes(r[0]) for r in db.query("SELECT tag FROM canary_registry")]
    assert len(tags) == 4 and all(len(t) == 16 for t in tags)
    assert not any(rid.encode() in t for rid in canaries for t in tags)
    stranger = CanaryRegistry(db, keyring)
    stranger._key = b"\x00" * 32
    assert stranger.which(canaries) == []
    assert set(door.canaries.which([rid for rid, _ in door.ids] + canaries)) == set(canaries)


def test_unwritable_audit_fails_closed(sqlite_db: Database, keyring: Keyring, tmp_path: Path) -> None:
    door = make_door(sqlite_db, keyring, tmp_path / "keys", budget=Budget(), residents=3)
    who = door.reader()
    sqlite_db.execute("DROP TABLE audit_entries")
    with pytest.raises(AuditError):
        door.vault.get(door.ids[0][0], ctx=who)


def test_unreachable_counters_fail_closed(sqlite_db: Database, keyring: Keyring, tmp_path: Path) -> None:
    door = make_door(sqlite_db, keyring, tmp_path / "keys", budget=Budget(records_per_minute=10),
                     residents=3)
    assert door.guard.budgets is not None
    door.guard.budgets.counters = RedisCounters("redis://127.0.0.1:1/0", timeout=0.2)
    who = door.reader()
    with pytest.raises(DetectUnavailable):
        door.vault.get(door.ids[0][0], ctx=who)
    last = list(entries(sqlite_db, principal=who.principal))[-1]
    assert (last.outcome, last.detail["code"]) == ("error", "detect.unavailable")


def test_stats_leave_canaries_out(db: Database, keyring: Keyring, tmp_path: Path) -> None:
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(), residents=6)
    seed(door.vault, 2, ctx=OPERATOR, registry=door.canaries)
    store = door.vault.stats(ctx=OPERATOR, key_usage=False)["store"]
    assert store["rows"] == 6
    assert store["index_entries"]["id_number"] == 6 and store["index_entries"]["name_birth"] == 6


def test_detector_sees_coarse_cells_of_reads(db: Database, keyring: Keyring, tmp_path: Path) -> None:
    from pivault.detect import DetectorConfig

    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(), residents=8,
                     detector=DetectorConfig(evaluate_every=3600))
    who = door.reader()
    for rid, _ in door.ids:
        door.vault.get(rid, ctx=who)
    detector = door.guard.detector
    assert detector is not None
    seen = detector.counters.read_fields([k for k in _bucket_keys(detector)])
    merged: dict[str, int] = {}
    for h in seen:
        for k, v in h.items():
            merged[k] = merged.get(k, 0) + v
    assert merged["t"] == 8 and merged["p:" + who.principal] == 8
    cells = {k: v for k, v in merged.items() if k.startswith("c:")}
    assert sum(cells.values()) == 8
    assert all(len(k) == len("c:31:1985") for k in cells)  # province and year only


def _bucket_keys(detector: object) -> list[str]:
    import math

    from pivault.detect import GlobalDetector

    assert isinstance(detector, GlobalDetector)
    now = detector.counters.now()
    b = math.floor(now / detector.config.bucket_seconds)
    return [f"d:{i}" for i in range(b - 5, b + 1)]


def test_a_canary_replaced_by_another_process_is_caught(db: Database, keyring: Keyring) -> None:
    """A worker's registry learns of canaries seeded and erased elsewhere, even when they balance."""
    worker = CanaryRegistry(db, keyring, refresh_seconds=0.0)
    other = CanaryRegistry(Database(db.url.raw), keyring)  # another process, its own connection
    try:
        other.add(["r_canary_old_1", "r_canary_old_2", "r_canary_old_3"])
        assert worker.which(["r_canary_old_3", "r_someone"]) == ["r_canary_old_3"]
        # the operator replaces one canary: one erased, one seeded, the count is as before
        other.remove(["r_canary_old_3"])
        other.add(["r_canary_new_1"])
        assert worker.which(["r_canary_new_1", "r_canary_old_3"]) == ["r_canary_new_1"]
        assert worker.count() == 3
    finally:
        other.db.close()


def _mobile_entries(db: Database, record_ids: list[str]) -> int:
    return sum(1 for rid in record_ids if db.query_one(
        "SELECT 1 FROM blind_index WHERE index_name = 'mobile' AND record_id = ?", (rid,)) is not None)


def test_a_seeding_stopped_half_way_leaves_its_canaries_blended_and_counted(
        db: Database, keyring: Keyring, tmp_path: Path) -> None:
    """`canary seed` stopped part-way (here the change budget, as a kill or a crash would) must not
    leave canaries that the records table singles out by their creation time, nor stats that count
    them as residents."""
    from pivault.detect import BudgetPolicy, Budgets, MemoryCounters

    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(), residents=20)
    real_times = [float(r[0]) for r in db.query("SELECT created_at FROM records")]
    door.guard.budgets = Budgets(BudgetPolicy(roles={"operator": Budget(changes_per_day=3)}),
                                 MemoryCounters())
    with pytest.raises(BudgetExceeded):
        seed(door.vault, 6, ctx=OPERATOR, registry=door.canaries)
    real = {rid for rid, _ in door.ids}
    made = [str(r[0]) for r in db.query("SELECT record_id FROM records") if r[0] not in real]
    assert len(made) == 3 and sorted(door.canaries.which(made)) == sorted(made)
    for rid in made:
        row = db.query_one("SELECT created_at, updated_at FROM records WHERE record_id = ?", (rid,))
        assert row is not None
        assert min(real_times) - 10 <= float(row[0]) <= max(real_times) + 10
        assert float(row[1]) == float(row[0]) and _id_second(rid) == int(float(row[0]))
    store = door.vault.stats(ctx=OPERATOR, key_usage=False)["store"]
    assert store["rows"] == 20
    assert store["index_entries"].get("mobile", 0) == _mobile_entries(db, sorted(real))


def test_erasing_a_canary_keeps_the_mobile_count_exact(db: Database, keyring: Keyring,
                                                       tmp_path: Path) -> None:
    """stats must count the residents' mobiles after a canary with a mobile is erased, not fewer."""
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(), residents=10)
    canaries = seed(door.vault, 6, ctx=OPERATOR, registry=door.canaries)
    with_mobile = [rid for rid in canaries if _mobile_entries(db, [rid])]
    assert with_mobile  # the generator gives most residents a mobile
    door.vault.erase(with_mobile[0], ctx=OPERATOR)
    real = sorted(rid for rid, _ in door.ids)
    store = door.vault.stats(ctx=OPERATOR, key_usage=False)["store"]
    assert store["rows"] == 10
    assert store["index_entries"].get("mobile", 0) == _mobile_entries(db, real)


def test_correcting_a_canarys_mobile_keeps_the_mobile_count_exact(db: Database, keyring: Keyring,
                                                                   tmp_path: Path) -> None:
    """stats must count the residents' mobiles after a canary's mobile is cleared or given back.

    The count of canaries with a mobile is kept, not recomputed (the registry cannot be joined to
    the index without the key): a correction that changes it must move it, in either direction.
    """
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(), residents=10)
    canaries = seed(door.vault, 6, ctx=OPERATOR, registry=door.canaries)
    real = sorted(rid for rid, _ in door.ids)

    def mobiles_shown() -> int:
        store = door.vault.stats(ctx=OPERATOR, key_usage=False)["store"]
        assert store["rows"] == 10
        return int(store["index_entries"].get("mobile", 0))

    with_mobile = [rid for rid in canaries if _mobile_entries(db, [rid])]
    assert with_mobile  # the generator gives most residents a mobile
    target = with_mobile[0]
    assert mobiles_shown() == _mobile_entries(db, real)
    door.vault.update(target, {"mobile": None}, ctx=OPERATOR)
    assert _mobile_entries(db, [target]) == 0
    assert mobiles_shown() == _mobile_entries(db, real)
    # a correction that leaves the mobile as it was (absent) does not move the count
    door.vault.update(target, {"address": "上海市黄浦区南京东路1号"}, ctx=OPERATOR)
    assert mobiles_shown() == _mobile_entries(db, real)
    fresh = next(row["mobile"] for row in generate(50, 97) if row["mobile"])
    door.vault.update(target, {"mobile": fresh}, ctx=OPERATOR)
    assert _mobile_entries(db, [target]) == 1
    assert mobiles_shown() == _mobile_entries(db, real)
    # changing one mobile for another, and a resident's (not a canary's) mobile, move nothing
    other = next(row["mobile"] for row in generate(60, 98) if row["mobile"])
    door.vault.update(target, {"mobile": other}, ctx=OPERATOR)
    assert mobiles_shown() == _mobile_entries(db, real)
    someone = next(rid for rid in real if _mobile_entries(db, [rid]))
    door.vault.update(someone, {"mobile": None}, ctx=OPERATOR)
    assert mobiles_shown() == _mobile_entries(db, real)
    # erasing the canary afterwards still leaves the residents' count exact
    door.vault.erase(target, ctx=OPERATOR)
    assert mobiles_shown() == _mobile_entries(db, real)


def test_an_import_that_updates_a_canarys_mobile_keeps_the_mobile_count_exact(
        db: Database, keyring: Keyring, tmp_path: Path) -> None:
    """An import with ``on_duplicate="update"`` corrects records too: a row holding a canary's ID
    number with an empty mobile clears the canary's mobile, and one with a mobile gives it back."""
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(), residents=10)
    canaries = seed(door.vault, 6, ctx=OPERATOR, registry=door.canaries)
    real = sorted(rid for rid, _ in door.ids)
    target = next(rid for rid in canaries if _mobile_entries(db, [rid]))
    stored = door.vault.store.get(target)
    assert stored is not None
    was = open_record(keyring, stored)

    def load(mobile: str) -> None:
        src = tmp_path / "correction.csv"
        src.write_text(f"name,id_number,mobile\n{was.name},{was.id_number},{mobile}\n", encoding="utf-8")
        f = door.vault.import_files([src], ctx=OPERATOR, on_duplicate="update").files[0]
        assert f.updated == 1

    def mobiles_shown() -> int:
        return int(door.vault.stats(ctx=OPERATOR, key_usage=False)["store"]["index_entries"]
                   .get("mobile", 0))

    load("")
    assert _mobile_entries(db, [target]) == 0
    assert mobiles_shown() == _mobile_entries(db, real)
    load(str(was.mobile))
    assert _mobile_entries(db, [target]) == 1
    assert mobiles_shown() == _mobile_entries(db, real)


def test_a_correction_through_the_policy_guard_keeps_the_mobile_count_exact(
        db: Database, keyring: Keyring, tmp_path: Path) -> None:
    """Under the HTTP API the door's guard is the policy, with the watchman as its delegate: a
    registrar's correction of a canary's mobile must still reach the count."""
    from pivault.policy import Policy
    from pivault.policy.guard import PolicyGuard

    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(), residents=10)
    canaries = seed(door.vault, 6, ctx=OPERATOR, registry=door.canaries)
    real = sorted(rid for rid, _ in door.ids)
    target = next(rid for rid in canaries if _mobile_entries(db, [rid]))
    clerk = AccessContext(principal="registrar-3", role="registrar", purpose="correction",
                          token_id="cccccccccccccccc", source="api")
    door.vault.guard = PolicyGuard(Policy.default(), delegate=door.guard)
    door.vault.update(target, {"mobile": None}, ctx=clerk)
    door.vault.guard = door.guard
    store = door.vault.stats(ctx=OPERATOR, key_usage=False)["store"]
    assert store["index_entries"].get("mobile", 0) == _mobile_entries(db, real)


@pytest.mark.parametrize("on_duplicate", ["skip", "update", "reject"])
def test_an_import_holding_a_canarys_id_number_raises_the_canary_alarm(
        db: Database, keyring: Keyring, tmp_path: Path, on_duplicate: str) -> None:
    """A canary's ID number exists only in the vault: a file that holds one was made from a copy
    of it. Whatever the duplicate policy does with the row, the import raises the canary alarm,
    naming the canary and nothing of the file's other residents."""
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(), residents=10)
    canaries = seed(door.vault, 4, ctx=OPERATOR, registry=door.canaries)
    stored = door.vault.store.get(canaries[2])
    assert stored is not None
    was = open_record(keyring, stored)
    held = door.vault.store.get(door.ids[0][0])
    assert held is not None
    resident = open_record(keyring, held)
    newcomer = next(r for r in generate(40, 4242) if r["mobile"])
    src = tmp_path / "copy.csv"
    src.write_text("name,id_number\n" + "".join(f"{p.name},{p.id_number}\n" for p in (resident, was))
                   + f"{newcomer['name']},{newcomer['id_number']}\n", encoding="utf-8")
    f = door.vault.import_files([src], ctx=OPERATOR, on_duplicate=on_duplicate).files[0]
    assert f.read == 3
    alarms = [a for a in list_alerts(db, severity="critical") if a["rule"] == "canary.read"]
    assert len(alarms) == 1
    assert alarms[0]["evidence"]["operation"] == "import"
    assert alarms[0]["evidence"]["record_ids"] == [canaries[2]]
    # an import of residents only (the file an organisation really has) raises nothing
    clean = tmp_path / "clean.csv"
    clean.write_text(f"name,id_number\n{resident.name},{resident.id_number}\n", encoding="utf-8")
    door.vault.import_files([clean], ctx=OPERATOR, on_duplicate=on_duplicate)
    assert len([a for a in list_alerts(db, severity="critical") if a["rule"] == "canary.read"]) == 1


def test_a_lookup_too_large_for_the_window_is_not_told_how_many_it_found(
        db: Database, keyring: Keyring, tmp_path: Path) -> None:
    """How many residents share a mobile (or a name and a birth date) is an answer too: a lookup
    refused because it found more than a whole window holds must not carry the number in its
    refusal. The audit entry keeps it for the auditor."""
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(records_per_minute=2), residents=3)
    shared = next(r["mobile"] for r in generate(30, 777) if r["mobile"])
    for row in list(generate(40, 778))[:3]:
        door.vault.put({"name": row["name"], "id_number": row["id_number"], "mobile": shared},
                       ctx=OPERATOR)
    who = door.reader()
    with pytest.raises(BudgetExceeded) as caught:
        door.vault.find(mobile=shared, ctx=who)
    message = str(caught.value)
    assert "no wait lets it through" in message and "allows 2" in message
    assert "3" not in message.replace("records_per_minute", "")
    refused = [e for e in entries(db, operation="find") if e.outcome == "refused"]
    assert refused and refused[-1].detail["requested_records"] == 3


def test_canaries_are_not_told_by_row_order_or_by_their_keys_dates(
        db: Database, keyring: Keyring, tmp_path: Path) -> None:
    """Whoever holds the database files tries what tells a row's history: on SQLite the
    implicit rowid gives the order rows were written in, so canaries seeded after the residents
    were the last rows whatever their backdated time; and a canary's record key kept its
    seeding time while its record claimed another, where a real record's key is stored a moment
    before its record. Neither tells a canary now."""
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(), residents=60)
    real = {rid for rid, _ in door.ids}
    canaries = seed(door.vault, 6, ctx=OPERATOR, registry=door.canaries)
    assert len(canaries) == 6
    if db.dialect == "sqlite":
        order = [str(r[0]) for r in db.query("SELECT record_id FROM records ORDER BY rowid")]
        assert len(order) == 66
        assert not set(order[-6:]) & set(canaries)  # the rows written last are residents
        assert set(order[:60]) >= set(canaries)  # each canary sits among the residents' rows
    created = {str(r[0]): float(r[1]) for r in db.query("SELECT record_id, created_at FROM records")}
    keys = door.vault.store.keys.db
    for rid, key_at in keys.query("SELECT record_id, created_at FROM record_keys"):
        # every record's key, a canary's as a resident's, a moment before its record
        assert 0 <= created[str(rid)] - float(key_at) < 1.0, "a key dated apart from its record"
    # the residents moved to the end are the same residents, readable, and the canaries trip
    for rid, idn in door.ids:
        assert [r["record_id"] for r in door.vault.find(id_number=idn, ctx=OPERATOR)] == [rid]
    assert set(door.canaries.which(sorted(real | set(canaries)))) == set(canaries)
    assert verify(db, door.verifier, keyring=keyring).ok
