"""Writers racing through the door, each on its own connection, on both backends.

An ID number is in the vault once, whatever the writers do at the same moment;
a correction never loses another writer's correction of the same record; an
erasure beside a correction leaves nothing of the record behind, and two
erasures of one record erase it once. On PostgreSQL these rest on the ID-number
locks (RecordStore.lock_id_numbers) and the record's row lock; on SQLite on its
one writer at a time.
"""

from __future__ import annotations

import contextlib
import csv
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from vault_support import make_residents

from pivault.errors import NotFoundError
from pivault.policy import AccessContext
from pivault.store.db import Database
from pivault.vault import DuplicateRecord, Vault


def _race(vault: Vault, rounds: int, *actors: Callable[[Vault, int], None]) -> list[BaseException]:
    """Run each actor on its own connection, all starting each round together."""
    start = threading.Barrier(len(actors))
    errors: list[BaseException] = []

    def run(actor: Callable[[Vault, int], None]) -> None:
        own = Vault(Database(vault.db.url.raw), vault.keyring)
        try:
            for i in range(rounds):
                start.wait(timeout=30)
                actor(own, i)
        except BaseException as exc:  # reported to the test, not lost in the thread
            errors.append(exc)
            start.abort()
        finally:
            own.db.close()

    threads = [threading.Thread(target=run, args=(a,)) for a in actors]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a writer never finished"
    return errors


def _holders(vault: Vault, ctx: AccessContext, id_number: str) -> int:
    return len(vault.find(id_number=id_number, ctx=ctx))


def test_simultaneous_puts_of_one_number_store_it_once(vault: Vault, ctx: AccessContext) -> None:
    people = make_residents(40, seed=21)
    won: list[list[str]] = [[], []]
    refused: list[list[str]] = [[], []]

    def putter(k: int) -> Callable[[Vault, int], None]:
        def act(v: Vault, i: int) -> None:
            try:
                won[k].append(v.put(dict(people[i]), ctx=ctx))
            except DuplicateRecord as exc:
                refused[k].append(exc.existing_record_id)
        return act

    assert _race(vault, len(people), putter(0), putter(1)) == []
    assert len(won[0]) + len(won[1]) == len(people)  # one of each pair, never both
    assert sorted(refused[0] + refused[1]) == sorted(won[0] + won[1])  # the refusal names the winner
    assert vault.store.count() == len(people)
    assert all(_holders(vault, ctx, p["id_number"]) == 1 for p in people)


def test_simultaneous_corrections_of_one_record_keep_both(vault: Vault, ctx: AccessContext,
                                                        reveal: AccessContext) -> None:
    rid = vault.put(make_residents(1, seed=22)[0], ctx=ctx)
    rounds = 25

    def mobile(v: Vault, i: int) -> None:
        v.update(rid, {"mobile": f"1390000{i:04d}"}, ctx=ctx)

    def address(v: Vault, i: int) -> None:
        v.update(rid, {"address": f"北京市东城区东华门街道{i + 1}号"}, ctx=ctx)

    assert _race(vault, rounds, mobile, address) == []
    final = vault.get(rid, ctx=reveal)
    # each writer's last correction is there: neither overwrote the other's with a stale read
    assert final["mobile"] == f"1390000{rounds - 1:04d}"
    assert final["address"] == f"北京市东城区东华门街道{rounds}号"


def test_correction_to_a_number_being_created_lets_one_win(vault: Vault, ctx: AccessContext) -> None:
    existing = make_residents(1, seed=23)[0]
    rid = vault.put(existing, ctx=ctx)
    newcomers = [p for p in make_residents(31, seed=24) if p["id_number"] != existing["id_number"]][:30]
    outcomes: list[str] = []

    def creator(v: Vault, i: int) -> None:
        try:
            v.put(dict(newcomers[i]), ctx=ctx)
            outcomes.append("put")
        except DuplicateRecord:
            outcomes.append("put refused")

    def corrector(v: Vault, i: int) -> None:
        try:
            v.update(rid, {"id_number": newcomers[i]["id_number"]}, ctx=ctx)
            outcomes.append("update")
        except DuplicateRecord:
            outcomes.append("update refused")

    assert _race(vault, len(newcomers), creator, corrector) == []
    assert outcomes.count("put") + outcomes.count("update") == len(newcomers)  # one a round
    # whoever won a round, each number has one holder at most
    assert all(_holders(vault, ctx, p["id_number"]) <= 1 for p in newcomers)


def test_import_beside_single_creations_stores_each_number_once(vault: Vault, tmp_path: Path,
                                                                ctx: AccessContext) -> None:
    people = make_residents(1200, seed=25)
    src = tmp_path / "pop.csv"
    with src.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(people[0]))
        w.writeheader()
        w.writerows(people)
    done = threading.Event()
    created: list[str] = []
    failures: list[BaseException] = []

    def creator() -> None:
        own = Vault(Database(vault.db.url.raw), vault.keyring)
        try:
            # the file's residents from its end backwards, while the import reads it forwards
            for p in reversed(people):
                if done.is_set():
                    break
                with contextlib.suppress(DuplicateRecord):
                    created.append(own.put(dict(p), ctx=ctx))
        except BaseException as exc:
            failures.append(exc)
        finally:
            own.db.close()

    t = threading.Thread(target=creator)
    t.start()
    try:
        summary = vault.import_files([src], chunk_size=100, workers=0)
    finally:
        done.set()
        t.join(timeout=120)
    assert failures == []
    f = summary.files[0]
    assert summary.reconciles and f.read == len(people)
    assert created, "the single writer never got a record in: no race was run"
    assert f.imported + len(created) == len(people) == vault.store.count()
    assert all(_holders(vault, ctx, p["id_number"]) == 1 for p in people)


@pytest.mark.parametrize("values", [[b"\x00\x01\x02\x03"], None])
def test_number_locks_are_taken_inside_the_writing_transaction(vault: Vault,
                                                                values: list[bytes] | None) -> None:
    if vault.db.dialect == "sqlite":
        vault.store.lock_id_numbers(values)  # one writer at a time already: nothing to take
        return
    from pivault.store.db import StoreError

    with pytest.raises(StoreError) as err:
        vault.store.lock_id_numbers(values)
    assert err.value.code == "store.lock"


def _orphan_entries(vault: Vault) -> int:
    row = vault.db.query_one("SELECT COUNT(*) FROM blind_index b"
                             " WHERE NOT EXISTS (SELECT 1 FROM records r WHERE r.record_id = b.record_id)")
    assert row is not None
    return int(row[0])


def test_erase_beside_a_correction_leaves_no_index_entry_behind(vault: Vault, ctx: AccessContext) -> None:
    people = make_residents(40, seed=26)
    rids = [vault.put(dict(p), ctx=ctx) for p in people]
    erased: list[str] = []

    def corrector(v: Vault, i: int) -> None:
        # a new mobile: the record's index entries are replaced
        with contextlib.suppress(NotFoundError):
            v.update(rids[i], {"mobile": f"1370000{i:04d}"}, ctx=ctx)

    def eraser(v: Vault, i: int) -> None:
        v.erase(rids[i], ctx=ctx)
        erased.append(rids[i])

    assert _race(vault, len(rids), corrector, eraser) == []
    assert len(erased) == len(rids) and vault.store.count() == 0
    # an erased resident leaves nothing a leak check or a lookup could still find
    assert _orphan_entries(vault) == 0


def test_simultaneous_erasures_of_one_record_erase_it_once(vault: Vault, ctx: AccessContext) -> None:
    from pivault.vault import meta

    rids = [vault.put(dict(p), ctx=ctx) for p in make_residents(40, seed=27)]
    done: list[list[str]] = [[], []]
    missed: list[list[str]] = [[], []]

    def eraser(k: int) -> Callable[[Vault, int], None]:
        def act(v: Vault, i: int) -> None:
            try:
                v.erase(rids[i], ctx=ctx)
                done[k].append(rids[i])
            except NotFoundError:
                missed[k].append(rids[i])
        return act

    assert _race(vault, len(rids), eraser(0), eraser(1)) == []
    # each record erased by one of the two, the other told it was not there
    assert sorted(done[0] + done[1]) == sorted(rids)
    assert sorted(missed[0] + missed[1]) == sorted(rids)
    assert meta.erasures_since_scrub(vault.db)[0] == len(rids)


def test_two_first_loads_side_by_side_store_each_number_once(vault: Vault, tmp_path: Path,
                                                             ctx: AccessContext) -> None:
    # both start on an empty vault, so both would take the first load's fast duplicate check:
    # each must see the other's chunks and fall back to the general check
    people = make_residents(1600, seed=27)
    files = []
    for name, part in (("a.csv", people[:1000]), ("b.csv", people[600:])):
        path = tmp_path / name
        with path.open("w", encoding="utf-8", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(people[0]))
            w.writeheader()
            w.writerows(part)
        files.append(path)
    summaries: dict[str, object] = {}

    def loader(path: Path) -> Callable[[Vault, int], None]:
        def act(v: Vault, _round: int) -> None:
            summaries[path.name] = v.import_files([path], chunk_size=50, workers=0).files[0]
        return act

    assert _race(vault, 1, loader(files[0]), loader(files[1])) == []
    a, b = summaries["a.csv"], summaries["b.csv"]
    assert a.imported + b.imported == len(people) == vault.store.count()  # type: ignore[attr-defined]
    assert a.duplicates + b.duplicates == 400  # type: ignore[attr-defined]
    assert all(_holders(vault, ctx, p["id_number"]) == 1 for p in people[550:1050])


def test_two_imports_of_one_new_file_at_once_import_it_once(vault: Vault, tmp_path: Path) -> None:
    from pivault.vault.imports import ImportConflict

    people = make_residents(300, seed=29)
    src = tmp_path / "same.csv"
    with src.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(people[0]))
        w.writeheader()
        w.writerows(people)
    outcomes: list[str] = []

    def importer(v: Vault, _round: int) -> None:
        try:
            f = v.import_files([src], chunk_size=50, workers=0).files[0]
            outcomes.append(f.status)
        except ImportConflict:
            outcomes.append("conflict")

    for _ in range(3):  # each round a new batch of the same rows: the first imports, later skip
        assert _race(vault, 1, importer, importer) == []
        src.write_text(src.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    assert vault.store.count() == len(people)
    # the one that found the other's chunks committed resumes after them, or stops on a conflict
    assert all(o in ("imported", "resumed", "already_imported", "conflict") for o in outcomes), outcomes
