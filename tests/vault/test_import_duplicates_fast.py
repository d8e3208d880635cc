"""The import's duplicate check when blind-index values are crowded: every duplicate still found.

A keyring sized for 16 residents makes dozens of records share each blind
index value, so nearly every row of an import has candidates: records this
run inserted (checked against the run's own set of ID numbers, without
decryption), records from elsewhere (decrypted), and records of this batch
changed since (decrypted).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from vault_support import make_residents, new_keyring

from pivault.policy import AccessContext, local_operator
from pivault.store.db import Database
from pivault.vault import Vault
from pivault.vault.imports import ImportProgress, _SeenIds


@pytest.fixture
def crowded(store_url: str, tmp_path: Path) -> Iterator[Vault]:
    db = Database(store_url)
    v = Vault.initialise(db, new_keyring(tmp_path / "keys" / "vault.keyring", population=16))
    yield v
    db.close()


def _csv(path: Path, people: list[dict[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write("name,id_number,mobile\n")
        for p in people:
            fh.write(f"{p['name']},{p['id_number']},{p['mobile']}\n")


def test_seen_ids_has_no_false_negatives_and_few_false_positives() -> None:
    seen = _SeenIds(1000)  # grows past its first capacity
    added = [f"{i:018d}" for i in range(0, 60_000, 2)]
    for x in added:
        seen.add(x)
    assert all(x in seen for x in added)
    others = [f"{i:018d}" for i in range(1, 60_000, 2)]
    assert sum(x in seen for x in others) / len(others) < 0.03


def test_seen_ids_stop_at_their_memory_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    first = (1 << 14) * 10 // 8  # the bytes of the smallest filter
    monkeypatch.setattr(_SeenIds, "MAX_BYTES", 3 * first)  # room for it and one twice its size
    # an estimate far past the bound starts at the bound, not past it
    assert _SeenIds(10**9)._bytes <= _SeenIds.MAX_BYTES
    seen = _SeenIds(1)
    fit = [f"{i:018d}" for i in range(3 * (1 << 14))]
    for x in fit:
        seen.add(x)
    assert not seen.overflowed and all(x in seen for x in fit)
    seen.add("1" * 18)  # a third filter would pass the bound: the run must stop asking
    assert seen.overflowed and seen._filters == []


def test_import_past_the_filters_bound_still_finds_every_duplicate(
        crowded: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a bound of one filter of 500 numbers: it overflows in the second chunk, whose later numbers
    # it never holds, and the run checks from then on through the blind index; repeats of those
    # numbers in the last chunk are still found
    monkeypatch.setattr(_SeenIds, "MAX_BYTES", 500 * 10 // 8)
    people = make_residents(1500, seed=57)
    rng = random.Random(7)
    src = tmp_path / "big.csv"
    repeats = rng.sample(people[600:800], 30)
    _csv(src, people[:1200] + repeats + people[1200:])
    f = crowded.import_files([src], chunk_size=400).files[0]
    assert f.reconciles and (f.read, f.imported, f.duplicates) == (1530, 1500, 30)
    assert crowded.store.count() == 1500


@pytest.mark.parametrize("workers", [0, 2])
def test_crowded_index_duplicates_across_chunks_and_sources(crowded: Vault, tmp_path: Path,
                                                            ctx: AccessContext, workers: int) -> None:
    people = make_residents(900, seed=53)
    rng = random.Random(5)
    # a first load into an empty vault: later chunks repeat rows of earlier ones, and every
    # candidate is a record this run inserted
    repeats = rng.sample(people[:600], 60)
    src = tmp_path / "crowded.csv"
    _csv(src, people[:600] + repeats)
    f = crowded.import_files([src], chunk_size=97, workers=workers).files[0]
    assert f.reconciles and f.read == 660
    assert (f.imported, f.duplicates) == (600, 60)
    # records from elsewhere, then a file that repeats some of them and some of the first file
    for p in people[600:650]:
        crowded.put(p, ctx=ctx)
    again = tmp_path / "again.csv"
    _csv(again, people[550:900] + rng.sample(people[700:900], 10))
    g = crowded.import_files([again], chunk_size=61, workers=workers).files[0]
    assert g.reconciles and (g.imported, g.duplicates) == (250, 110)
    assert crowded.store.count() == 900


def test_record_changed_since_insert_is_checked_by_decryption(crowded: Vault, tmp_path: Path,
                                                              ctx: AccessContext) -> None:
    people = make_residents(300, seed=59)
    first = tmp_path / "first.csv"
    # a record this run inserted is changed through the door between two chunks
    changed: dict[str, str] = {}

    def meddle(_progress: object) -> None:
        if not changed:
            rid = crowded.find(id_number=people[0]["id_number"], ctx=ctx)[0]["record_id"]
            assert rid is not None
            crowded.update(rid, {"id_number": people[250]["id_number"]}, ctx=ctx)
            changed["rid"] = rid

    rows = [*people[:200], people[250]]   # the last row repeats the changed record's new number
    _csv(first, rows)
    f = crowded.import_files([first], chunk_size=50, progress=meddle).files[0]
    assert f.reconciles and (f.imported, f.duplicates) == (200, 1)
    assert crowded.store.count() == 200


@pytest.mark.parametrize("workers", [0, 2])
def test_first_load_finds_a_record_another_connection_wrote_meanwhile(
        crowded: Vault, store_url: str, tmp_path: Path, ctx: AccessContext, workers: int) -> None:
    # a first load into an empty vault skips the blind index while it is the store's only
    # writer: a record committed by another connection (another process, say) in between must
    # end that, or the file's later row for the same person would become a second record
    people = make_residents(400, seed=61)
    late = people[350]
    other_db = Database(store_url)
    other = Vault(other_db, crowded.keyring)
    wrote: list[str] = []

    def elsewhere(_progress: object) -> None:
        if not wrote:
            wrote.append(other.put({**late, "name": "甲乙"}, ctx=ctx))

    src = tmp_path / "first.csv"
    _csv(src, people)
    try:
        f = crowded.import_files([src], chunk_size=50, workers=workers, progress=elsewhere).files[0]
    finally:
        other_db.close()
    assert f.reconciles and (f.imported, f.duplicates) == (399, 1)
    found = crowded.find(id_number=late["id_number"], ctx=ctx)
    assert [r["record_id"] for r in found] == wrote
    assert crowded.store.count() == 400


@pytest.mark.parametrize("policy", ["update", "reject"])
def test_first_load_repeats_under_each_policy(crowded: Vault, tmp_path: Path, ctx: AccessContext,
                                              policy: str) -> None:
    people = make_residents(500, seed=67)
    rng = random.Random(9)
    repeats = [{**p, "mobile": "139" + p["mobile"][3:]} for p in rng.sample(people[:400], 40)]
    src = tmp_path / "repeats.csv"
    _csv(src, people[:400] + repeats + people[400:])
    f = crowded.import_files([src], chunk_size=53, on_duplicate=policy).files[0]  # type: ignore[arg-type]
    assert f.reconciles and f.read == 540 and f.imported == 500
    if policy == "update":
        assert (f.duplicates, f.updated, f.rejected) == (40, 40, 0)
        for p in repeats[:5]:
            [rec] = crowded.find(id_number=p["id_number"], ctx=local_operator("test", reveal=True))
            assert rec["mobile"] == p["mobile"]
    else:
        assert (f.duplicates, f.rejected) == (0, 40)
    assert crowded.store.count() == 500


def _count_index_reads(v: Vault) -> list[int]:
    """Calls of the store's blind-index read for the duplicate check, counted (it still runs)."""
    reads: list[int] = []
    real = v.store.foreign_candidates

    def counted(*args: object, **kw: object) -> object:
        reads.append(1)
        return real(*args, **kw)  # type: ignore[arg-type]

    v.store.foreign_candidates = counted  # type: ignore[method-assign]
    return reads


@pytest.mark.parametrize("workers", [0, 2])
def test_first_load_into_a_new_vault_never_reads_the_blind_index(store_url: str, tmp_path: Path,
                                                                  workers: int) -> None:
    """The fast duplicate check of a first load holds to the end, from the vault's very first write.

    The vault's first index entry also makes the key of its check tags: that write must not look
    like another writer's, or the whole load would fall back to reading the blind index per row.
    """
    db = Database(store_url)
    v = Vault.initialise(db, new_keyring(tmp_path / "keys" / "new.keyring", population=16))
    assert db.query_one("SELECT COUNT(*) FROM index_check_key") == (0,)  # a vault that never wrote
    reads = _count_index_reads(v)
    people = make_residents(500, seed=71)
    src = tmp_path / "first.csv"
    _csv(src, people)
    try:
        f = v.import_files([src], chunk_size=50, workers=workers).files[0]
    finally:
        db.close()
    assert f.reconciles and f.imported == 500
    assert reads == []  # every chunk knew its rows were new without reading the index


@pytest.mark.parametrize("workers", [0, 2])
def test_first_load_of_several_files_never_reads_the_blind_index(store_url: str, tmp_path: Path,
                                                                 workers: int) -> None:
    # a population that comes as several files: while the run is the store's only writer, the
    # fast check goes on from file to file, and a later file's repeats of an earlier file's
    # residents are still found
    db = Database(store_url)
    v = Vault.initialise(db, new_keyring(tmp_path / "keys" / "files.keyring", population=16))
    reads = _count_index_reads(v)
    people = make_residents(600, seed=73)
    repeats = random.Random(11).sample(people[:200], 15)
    paths = []
    for name, rows in (("a.csv", people[:200]), ("b.csv", people[200:400]),
                       ("c.csv", people[400:] + repeats)):
        paths.append(tmp_path / name)
        _csv(paths[-1], rows)
    try:
        summary = v.import_files(paths, chunk_size=50, workers=workers)
        assert v.store.count() == 600
    finally:
        db.close()
    assert [f.status for f in summary.files] == ["imported"] * 3
    assert summary.reconciles and (summary.imported, summary.duplicates) == (600, 15)
    assert reads == []  # no chunk of any file read the index to know its rows were new


@pytest.mark.parametrize("workers", [0, 2])
def test_a_write_between_two_files_ends_the_fast_check(crowded: Vault, store_url: str, tmp_path: Path,
                                                       ctx: AccessContext, workers: int) -> None:
    # another connection stores a resident after the first file's last chunk and before the
    # second file starts: the second file's row for the same person must be found as a duplicate
    people = make_residents(300, seed=79)
    late = people[250]
    other_db = Database(store_url)
    other = Vault(other_db, crowded.keyring)
    wrote: list[str] = []

    def elsewhere(p: ImportProgress) -> None:
        if not wrote and p.file == "a.csv" and p.read == 150:
            wrote.append(other.put({**late, "name": "甲乙"}, ctx=ctx))

    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    _csv(a, people[:150])
    _csv(b, people[150:])
    reads = _count_index_reads(crowded)
    try:
        summary = crowded.import_files([a, b], chunk_size=50, workers=workers, progress=elsewhere)
    finally:
        other_db.close()
    assert wrote
    fa, fb = summary.files
    assert fa.reconciles and fa.imported == 150
    assert fb.reconciles and (fb.imported, fb.duplicates) == (149, 1)
    found = crowded.find(id_number=late["id_number"], ctx=ctx)
    assert [r["record_id"] for r in found] == wrote
    assert crowded.store.count() == 300
    assert reads  # the second file checked through the index
