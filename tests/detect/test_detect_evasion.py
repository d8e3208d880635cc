"""An insider copying the population through the door, trying not to be seen by the detector."""

from __future__ import annotations

import fcntl
import math
import os
from pathlib import Path

import pytest
from detect_helpers import FakeClock
from door import Door, make_door

from pivault.crypto import Keyring
from pivault.detect import (
    AlertDispatcher,
    Budget,
    BudgetExceeded,
    Counters,
    DetectorConfig,
    FileCounters,
    GlobalDetector,
)
from pivault.store import Database

#: five principals reading six records each in five minutes are "enumerating together"
SPREAD = DetectorConfig(evaluate_every=3600, distributed_min_principals=5, distributed_min_each=6,
                        distributed_min_total=30, rate_min_per_minute=10_000)


def test_reads_another_worker_sends_late_are_still_seen(sqlite_db: Database, keyring: Keyring,
                                                        tmp_path: Path, counters: Counters,
                                                        clock: FakeClock) -> None:
    """Two workers share the counters. Six readers each read six records through one worker's
    door (its evaluation thread sends them a moment later, as its round comes), while the
    other worker has already evaluated the bucket they were read in; the host's clock is not
    the counters' (as on a node whose clock is behind Redis's). The other worker must still
    see them all, and raise ``global.distributed``."""
    door = make_door(sqlite_db, keyring, tmp_path / "keys", budget=Budget(records_per_minute=100),
                     counters=counters, detector=SPREAD, residents=36)
    worker = door.guard.detector
    assert worker is not None
    worker.start()  # its rounds are an hour apart: the test plays the thread's part
    other = GlobalDetector(counters, AlertDispatcher(), SPREAD)
    try:
        readers = [door.reader(n) for n in range(6)]
        for i, (_, idn) in enumerate(door.ids):
            assert len(door.vault.find(id_number=idn, ctx=readers[i % 6])) == 1
        clock.advance(10)  # the bucket of those reads is complete on the counters' clock...
        assert other.evaluate() == []  # ...and the other worker has read it: nothing sent yet
        worker._send()  # the worker's round, a moment later
        clock.advance(10)
        raised = other.evaluate()
        assert [a.rule for a in raised] == ["global.distributed"]
        assert raised[0].evidence["principals"] == 6 and raised[0].evidence["records"] == 36
    finally:
        worker.stop()


def test_counts_the_counters_could_not_take_are_sent_later(tmp_path: Path, clock: FakeClock) -> None:
    """While the counters file is locked past its timeout, the detector's round cannot send its
    counts; they are kept and sent by the next round, not lost."""
    from pivault.policy.context import AccessContext

    counters = FileCounters(tmp_path / "run" / "counters.db", clock=clock, timeout=0.05)
    det = GlobalDetector(counters, AlertDispatcher(), SPREAD)
    det.start()
    holder = -1
    try:
        counters.read_fields(["d:0"])  # makes the files
        for n in range(6):
            ctx = AccessContext(principal=f"officer-{n}", role="officer", purpose="case_investigation")
            for _ in range(6):
                det.observe_facts(ctx, [("310104", 1980 + n)])
        holder = os.open(f"{counters.path}.lock", os.O_RDWR)
        fcntl.flock(holder, fcntl.LOCK_EX)  # another process holds the counters
        det._tick()  # logs that it could not send; the reads are not forgotten
        fcntl.flock(holder, fcntl.LOCK_UN)
        det._tick()  # sends them, and evaluates
        sent = counters.read_fields([f"d:{math.floor(clock.t / 10.0)}"])[0]
        assert sent["t"] == 36 and sent["p:officer-5"] == 6
        assert [a.rule for a in det.raised] == ["global.distributed"]
    finally:
        if holder >= 0:
            os.close(holder)
        det.stop()
        counters.close()


def test_no_minute_holds_more_than_the_minutes_limit(sqlite_db: Database, keyring: Keyring,
                                                     tmp_path: Path, counters: Counters,
                                                     clock: FakeClock) -> None:
    """Every quarter second for three minutes, a caller looks up as many residents as the vault's
    limit of five a minute lets it. Whatever the buckets' edges, no 60 seconds may hold more than
    five answers: five spent at the end of one bucket must not come back before a whole minute
    has passed (they came back a bucket sooner: ten answers in 59 seconds)."""
    door = make_door(sqlite_db, keyring, tmp_path / "keys", budget=Budget(records_per_minute=1000),
                     vault_budget=Budget(records_per_minute=5), counters=counters, residents=20)
    who = door.reader()
    clock.advance(0.9)
    answered: list[float] = []
    for step in range(720):
        for n in range(5):
            try:
                door.vault.find(id_number=door.ids[(step + n) % 20][1], ctx=who)
            except BudgetExceeded as exc:
                assert exc.rule == "vault.records_per_minute"
                break
            answered.append(clock.t)
        clock.advance(0.25)
    assert len(answered) >= 10  # the limit comes back, minute after minute
    busiest = max(sum(1 for u in answered if t <= u <= t + 60.0) for t in answered)
    assert busiest == 5


def _sweep_door(db: Database, keyring: Keyring, tmp_path: Path,
                counters: Counters) -> tuple[Door, list[tuple[str, int, str]]]:
    """A door whose detector calls eight reads in a row through three cells a sweep, over a
    synthetic population spread over the provinces and birth years; and each resident's
    province and birth year, as its ID number says them."""
    cfg = DetectorConfig(evaluate_every=3600, ordered_min_run=8, ordered_min_cells=3,
                         sweep_min_reads=10_000, rate_min_per_minute=10_000)
    door = make_door(db, keyring, tmp_path / "keys", budget=Budget(records_per_minute=10_000),
                     counters=counters, detector=cfg, residents=240)
    facts = [(idn[:2], int(idn[6:10]), idn) for _, idn in door.ids]
    return door, facts


def _sweeps(door: Door) -> list[dict[str, object]]:
    det = door.guard.detector
    assert det is not None
    return [a.evidence for a in det.raised if a.rule == "sweep.ordered"]


def test_a_sweep_walked_backwards_is_a_sweep(sqlite_db: Database, keyring: Keyring, tmp_path: Path,
                                             counters: Counters) -> None:
    """Residents read from the last province and birth year down to the first."""
    door, facts = _sweep_door(sqlite_db, keyring, tmp_path, counters)
    who = door.reader()
    for _, _, idn in sorted(facts, reverse=True)[:40]:
        door.vault.find(id_number=idn, ctx=who)
    found = _sweeps(door)
    assert found and found[0]["direction"] == "backward"


def test_regions_walked_side_by_side_are_a_sweep(sqlite_db: Database, keyring: Keyring, tmp_path: Path,
                                                 counters: Counters) -> None:
    """Two provinces walked by birth year at once, one resident of each in turn: the cells go
    back and forth, each province's years go forward."""
    door, facts = _sweep_door(sqlite_db, keyring, tmp_path, counters)
    by_province: dict[str, list[tuple[int, str]]] = {}
    for province, year, idn in facts:
        by_province.setdefault(province, []).append((year, idn))
    a, b = sorted(by_province.values(), key=len)[-2:]
    who = door.reader()
    for (_, one), (_, two) in zip(sorted(a), sorted(b), strict=False):
        door.vault.find(id_number=one, ctx=who)
        door.vault.find(id_number=two, ctx=who)
    found = _sweeps(door)
    assert found and str(found[0]["along"]).startswith("years of province ")


def test_the_vault_walked_by_birth_date_is_a_sweep(sqlite_db: Database, keyring: Keyring, tmp_path: Path,
                                                   counters: Counters) -> None:
    """Every province at once, birth date by birth date (the order of a guesser who steps the
    date part of the ID numbers): each province's years go forward."""
    door, facts = _sweep_door(sqlite_db, keyring, tmp_path, counters)
    who = door.reader()
    for _, _, idn in sorted(facts, key=lambda f: (f[2][6:14], f[0])):
        door.vault.find(id_number=idn, ctx=who)
    found = _sweeps(door)
    assert found and str(found[0]["along"]).startswith("years of province ")


def test_a_principal_with_many_tokens_is_suspended_as_one(sqlite_db: Database, keyring: Keyring,
                                                          tmp_path: Path) -> None:
    """One principal given three tokens spends its budget and breaches it once with each: three
    breaches of the principal's budget in a day suspend the token that made the third, and
    every later breach that day suspends the token that makes it. The budget is the
    principal's: the other tokens found none left."""
    door = make_door(sqlite_db, keyring, tmp_path / "keys", budget=Budget(records_per_minute=2),
                     residents=10)
    tokens = [door.reader(7) for _ in range(4)]  # four tokens of the principal "reader-7"
    assert len({t.token_id for t in tokens}) == 4 and len({t.principal for t in tokens}) == 1
    door.vault.find(id_number=door.ids[0][1], ctx=tokens[0])
    door.vault.find(id_number=door.ids[1][1], ctx=tokens[1])
    for n, who in enumerate(tokens):
        with pytest.raises(BudgetExceeded):
            door.vault.find(id_number=door.ids[2 + n][1], ctx=who)
    states = []
    for who in tokens:
        info = door.tokens.get(who.token_id or "")
        assert info is not None
        states.append(info.state())
    assert states == ["active", "active", "suspended", "suspended"]
