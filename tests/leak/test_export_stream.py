"""An export of any size, a chunk at a time: request, approve and fetch never hold the whole set.

The internal sizes (ids per stored chunk, per audit entry, per part of the file's random
order, per query) are made tiny here, so a few hundred residents take many chunks and many
parts, on both backends: every record counted is handed out once, or counted as left out;
the canaries are registered and placed; the file's order is not the import order, and the
trail's is not the file's; the members and their row keys line up; nothing staged is left.
The order itself is checked for uniformity without the store, on the functions that make it.
"""

from __future__ import annotations

import csv
import datetime as _dt
import math
import os
import secrets
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from leak.conftest import World, build_vault, ctx
from pivault.audit import entries, load_verifier, verify
from pivault.leak import exports as ex
from pivault.leak.columns import fast_mobile, fast_name
from pivault.leak.exports import ExportError
from pivault.synth import generate

#: regions holding about a third of the synthetic population (Beijing, Shanghai, Guangdong, ...)
REGIONS = ("11", "31", "44", "32", "37", "41")
FIELDS = ["name", "id_number", "mobile", "address"]


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every chunk, part, page and entry a few ids long."""
    for name, value in (("_MEMBER_CHUNK", 7), ("_CHUNK", 7), ("_PART_IDS", 7), ("_STAGE_IDS", 7),
                        ("_MIN_STAGE", 3), ("_AUDIT_IDS", 7), ("_CANARY_CHUNK", 5), ("_PAGE", 2),
                        ("_SCAN_PAGE", 7), ("_SEEN_BITS", 4)):
        monkeypatch.setattr(ex, name, value)


@pytest.fixture
def world(tmp_path: Path, store_url: str) -> Iterator[World]:
    w = build_vault(tmp_path, store_url, count=700, seed=21)
    yield w
    w.vault.close()


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _staged(w: World, export_id: str) -> int:
    row = w.vault.db.query_one("SELECT COUNT(*) FROM export_members WHERE export_id = ? AND kind LIKE ?",
                               (export_id, "tmp.%"))
    assert row is not None
    return int(row[0])


def _chunks(w: World, export_id: str, kind: str) -> int:
    row = w.vault.db.query_one("SELECT COUNT(*) FROM export_members WHERE export_id = ? AND kind = ?",
                               (export_id, kind))
    assert row is not None
    return int(row[0])


def _newcomer(w: World, inside: bool, seed: int) -> str:
    """An ID number the vault does not hold, of the selection or outside it."""
    held = {r.id_number for r in w.residents}
    for row in generate(3000, seed):
        idn = str(row["id_number"])
        if idn not in held and idn.startswith(REGIONS) == inside:
            return idn
    raise AssertionError("no newcomer")


def test_an_export_in_many_chunks_hands_out_each_record_once(world: World, tmp_path: Path,
                                                             tiny: None) -> None:
    w, v = world, world.vault
    sel = ex.Selection(regions=REGIONS)
    counted = sorted(r.record_id for r in w.residents if sel.admits(r.id_number or ""))
    assert len(counted) > 150
    req = ex.request(v, sel, recipient="Institute X", purpose="audit", fields=FIELDS,
                     ctx=ctx("carol", "approver"))
    x = req.export_id
    assert req.selected == len(counted)
    assert _chunks(w, x, "selected") == math.ceil(len(counted) / 7)

    # after the request: three erased, one corrected out of the selection, one outsider into it
    op = ctx("officer-1", "operator", "correction")
    by_id = {r.record_id: r for r in w.residents}
    erased = counted[10:13]
    for rid in erased:
        v.erase(rid, ctx=op)
    moved_out = counted[40]
    v.update(moved_out, {"id_number": _newcomer(w, False, 3)}, ctx=op)
    outsider = next(r for r in w.residents if not (r.id_number or "").startswith(REGIONS))
    v.update(outsider.record_id, {"id_number": _newcomer(w, True, 4)}, ctx=op)

    approved = ex.approve(v, x, ctx=ctx("erin", "dpo"))
    assert approved.selected == len(counted)  # what was counted at request, erased ones included
    out = tmp_path / "x.csv"
    info = ex.fetch(v, x, out, ctx=ctx("carol", "approver"))
    kept = [rid for rid in counted if rid not in erased and rid != moved_out]
    assert info.rows == len(kept) and info.left_out == 4
    assert info.canaries == ex.canaries_needed(len(kept))

    # every kept record once, nobody else; the rest are the canaries, unknown to the vault
    rows = _rows(out)
    assert len(rows) == info.rows + info.canaries
    rid_of = {by_id[rid].id_number: rid for rid in kept}
    order = [rid_of.get(r["id_number"]) for r in rows]
    real = [rid for rid in order if rid is not None]
    assert sorted(real) == kept
    assert outsider.record_id not in real
    canary_at = [i for i, rid in enumerate(order) if rid is None]
    assert len(canary_at) == info.canaries
    assert not v.ids_by_id_number({r["id_number"]: v.keyring.blind_index("id_number", r["id_number"])
                                   for i, r in enumerate(rows) if i in set(canary_at)})
    # not the import order (record ids begin with their creation second), and the canaries are
    # not bunched at either end
    assert real != kept
    k = info.canaries
    assert canary_at not in (list(range(k)), list(range(len(rows) - k, len(rows))))

    # the trail lists exactly the records handed out, in entries of seven, in the order they were
    # counted (record-id order), never the file's
    trail = [list(e.record_ids) for e in entries(v.db, operation="export", principal="carol", outcome="ok")]
    assert len(trail) >= math.ceil(len(kept) / 7)
    assert all(len(ids) <= 7 for ids in trail)
    assert [rid for ids in trail for rid in ids] == kept
    report = verify(v.db, load_verifier(w.tmp / "keys"))
    assert report.ok, report

    # the leak check's view: members and canaries registered, row keys aligned with the members
    reg = ex.load_registry(v)
    assert reg.members[x] == {ex.rid_digest(rid) for rid in kept}
    assert reg.canary_counts[x] == info.canaries
    assert _chunks(w, x, "members") == _chunks(w, x, "rowkeys") == math.ceil(len(kept) / 7)
    pairs = reg.rows[("name", "mobile")]
    with_mobile = [by_id[rid] for rid in kept if by_id[rid].mobile]
    assert with_mobile
    for r in with_mobile:
        assert pairs[ex.row_key(fast_name(r.name), fast_mobile(r.mobile or ""))] <= r.record_id
    assert _staged(w, x) == 0


def test_a_fetch_that_fails_part_way_leaves_nothing_of_its_chunks(
        world: World, tmp_path: Path, tiny: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills after several parts and member chunks were written: the file, the members,
    row keys, canaries and everything staged go; the export is approved, and fetched again whole."""
    w, v = world, world.vault
    req = ex.request(v, ex.Selection(regions=REGIONS), recipient="R", purpose="audit", fields=FIELDS,
                     ctx=ctx("carol", "approver"))
    x = req.export_id
    ex.approve(v, x, ctx=ctx("erin", "dpo"))
    real_write = ex._Writer.write
    left = [60]

    def write(self: ex._Writer, row: dict[str, str | None]) -> None:
        left[0] -= 1
        if left[0] == 0:
            assert _chunks(w, x, "members") > 3  # some member chunks were stored already
            raise OSError(28, "No space left on device")
        real_write(self, row)

    monkeypatch.setattr(ex._Writer, "write", write)
    out = tmp_path / "x.csv"
    with pytest.raises(OSError, match="No space"):
        ex.fetch(v, x, out, ctx=ctx("carol", "approver"))
    monkeypatch.setattr(ex._Writer, "write", real_write)
    assert list(tmp_path.glob("*x.csv*")) == []
    assert ex.get_export(v.db, x).status == "approved"
    for kind in ("members", "rowkeys", "canaries"):
        assert _chunks(w, x, kind) == 0
    assert _staged(w, x) == 0
    info = ex.fetch(v, x, out, ctx=ctx("carol", "approver"))
    assert info.rows == req.selected and len(_rows(out)) == info.rows + (info.canaries or 0)
    assert ex.load_registry(v).canary_counts[x] == info.canaries


def test_a_set_holding_a_record_twice_is_refused_before_anything_leaves(world: World, tmp_path: Path,
                                                                        tiny: None) -> None:
    """A record written twice into the kept set (by someone holding the keyring) would leave twice:
    both copies fall in one part, and the fetch is refused before its audit entries."""
    w, v = world, world.vault
    req = ex.request(v, ex.Selection(regions=REGIONS), recipient="R", purpose="audit", fields=FIELDS,
                     ctx=ctx("carol", "approver"))
    x = req.export_id
    n = _chunks(w, x, "selected")
    first = next(r.record_id for r in w.residents if (r.id_number or "").startswith(REGIONS))
    v.db.execute("INSERT INTO export_members (export_id, chunk, kind, data) VALUES (?, ?, 'selected', ?)",
                 (x, n, v.keyring.encrypt(f"export:{x}", f"selected.{n}", first.encode("ascii"))))
    ex.approve(v, x, ctx=ctx("erin", "dpo"))
    with pytest.raises(ExportError) as exc:
        ex.fetch(v, x, tmp_path / "x.csv", ctx=ctx("carol", "approver"))
    assert exc.value.code == "export.tampered"
    assert not list(entries(v.db, operation="export", principal="carol"))
    assert any(x in e.record_ids for e in entries(v.db, operation="export.fetch", outcome="denied"))
    assert ex.get_export(v.db, x).status == "approved" and _staged(w, x) == 0


def test_a_request_that_fails_part_way_keeps_no_chunk(world: World, tiny: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    v = world.vault
    real = ex._shown
    calls = [0]

    def failing(vault: object, ids: list[str]) -> int:
        calls[0] += 1
        if calls[0] == 5:
            raise OSError(28, "No space left on device")
        return real(vault, ids)  # type: ignore[arg-type]

    monkeypatch.setattr(ex, "_shown", failing)
    with pytest.raises(OSError):
        ex.request(v, ex.Selection(regions=REGIONS), recipient="R", purpose="audit", fields=FIELDS,
                   ctx=ctx("carol", "approver"))
    assert not v.db.query("SELECT 1 FROM export_members")
    assert not ex.list_exports(v.db)


def test_a_selection_by_record_ids_in_chunks(world: World, tmp_path: Path, tiny: None) -> None:
    """Listed ids are exported in a random order too, each once, repeats and unknown ids aside."""
    w, v = world, world.vault
    ids = [r.record_id for r in w.residents[::3]]
    listed = (*ids, *ids[:10])
    req = ex.request(v, ex.Selection(record_ids=listed, born_from=_dt.date(1900, 1, 1)), recipient="R",
                     purpose="audit", fields=["name", "mobile"], ctx=ctx("carol", "approver"))
    assert req.selected == len(ids)
    ex.approve(v, req.export_id, ctx=ctx("erin", "dpo"), max_records=len(ids))
    out = tmp_path / "x.jsonl"
    info = ex.fetch(v, req.export_id, out, ctx=ctx("carol", "approver"))
    assert info.rows == len(ids) and info.left_out == 0
    assert ex.load_registry(v).members[req.export_id] == {ex.rid_digest(r) for r in ids}
    assert len(out.read_text(encoding="utf-8").splitlines()) == info.rows + (info.canaries or 0)


def test_the_approval_counts_a_set_of_many_chunks(world: World, tiny: None) -> None:
    v = world.vault
    req = ex.request(v, ex.Selection(regions=REGIONS), recipient="R", purpose="audit", fields=FIELDS,
                     ctx=ctx("carol", "approver"))
    assert req.selected is not None
    with pytest.raises(ExportError) as exc:
        ex.approve(v, req.export_id, ctx=ctx("erin", "dpo"), max_records=req.selected - 1)
    assert exc.value.code == "export.count"
    assert ex.approve(v, req.export_id, ctx=ctx("erin", "dpo"), max_records=req.selected).status == "approved"


# ---------------------------------------------------------------- the order, without the store


def _file_order(items: list[str], canaries: int, parts: int,
                rng: secrets.SystemRandom) -> tuple[str | None, ...]:
    """What a fetch writes, as its functions make it: parts by keyed hash, canaries spread, each
    part arranged."""
    plan = ex._Plan("t", os.urandom(32), parts, [0] * parts)
    by_part: list[list[str]] = [[] for _ in range(parts)]
    for rid in items:
        by_part[plan.hash(rid)[0]].append(rid)
    spread = ex._spread(canaries, parts)
    return tuple(x for b in range(parts) for x in ex._arranged(by_part[b], spread[b], rng))


def _chi2(counts: Counter[object], outcomes: int, trials: int) -> float:
    expected = trials / outcomes
    return sum((counts.get(o, 0) - expected) ** 2 / expected for o in counts) + \
        (outcomes - len(counts)) * expected


def test_the_file_order_is_a_uniform_arrangement() -> None:
    """Four rows and two canaries over four parts: each of the 4! x C(6, 2) = 360 files is equally
    likely (chi-square with 359 degrees of freedom, far below its 1e-9 tail)."""
    rng = secrets.SystemRandom()
    items = ["r_a", "r_b", "r_c", "r_d"]
    trials = 36_000
    seen = Counter(_file_order(items, 2, 4, rng) for _ in range(trials))
    outcomes = math.factorial(4) * math.comb(6, 2)
    assert len(seen) == outcomes
    assert _chi2(seen, outcomes, trials) < 359 + 6.5 * math.sqrt(2 * 359)
    # and each row's place alone is uniform over the six, in a run of many parts
    places = Counter((x, i) for _ in range(6000) for i, x in enumerate(_file_order(items, 2, 16, rng))
                     if x is not None)
    for rid in items:
        assert all(abs(places[(rid, i)] - 1000) < 150 for i in range(6))


def test_the_canaries_models_are_a_uniform_sample() -> None:
    """Algorithm L's reservoir: each 3 of 8 items equally likely."""
    rng = secrets.SystemRandom()
    trials = 28_000
    seen: Counter[object] = Counter()
    for _ in range(trials):
        s = ex._Sample(3, rng)
        for i in range(8):
            s.offer(str(i))
        seen[frozenset(s.items)] += 1
    outcomes = math.comb(8, 3)
    assert len(seen) == outcomes
    assert _chi2(seen, outcomes, trials) < 55 + 6.5 * math.sqrt(2 * 55)
    big = ex._Sample(50, rng)
    for i in range(100_000):
        big.offer(str(i))
    assert len(set(big.items)) == 50


def test_the_filter_of_canary_values_never_forgets_one() -> None:
    """No false negatives, whatever its size: a value added is always taken."""
    small = ex._Seen(10)
    added = [{"mobile": f"138{i:08d}", "name_birth": f"张{i}|1980-01-01"} for i in range(20_000)]
    for keys in added:
        small.add(keys)
    assert all(small.holds(k) for k in added)
    roomy = ex._Seen(6 * 1000)
    for keys in added[:1000]:
        roomy.add(keys)
    false = sum(roomy.holds({"mobile": f"139{i:08d}"}) for i in range(20_000))
    assert false < 20  # about 1 in 5,000 at its 16 bits a value


def test_fetch_and_request_hold_no_list_of_the_whole_set(world: World, tmp_path: Path, tiny: None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """No step asks the store for more records at once than one chunk, nor reads a whole kind."""
    v = world.vault
    real_many, real_records = v.store.get_many, v.store.get_records
    asked: list[int] = []

    def get_many(ids: list[str]) -> list[object]:
        asked.append(len(ids))
        return real_many(ids)  # type: ignore[return-value]

    def get_records(ids: list[str]) -> list[object]:
        asked.append(len(ids))
        return real_records(ids)  # type: ignore[return-value]

    monkeypatch.setattr(v.store, "get_many", get_many)
    monkeypatch.setattr(v.store, "get_records", get_records)
    req = ex.request(v, ex.Selection(regions=REGIONS), recipient="R", purpose="audit", fields=FIELDS,
                     ctx=ctx("carol", "approver"))
    ex.approve(v, req.export_id, ctx=ctx("erin", "dpo"))
    info = ex.fetch(v, req.export_id, tmp_path / "x.csv", ctx=ctx("carol", "approver"))
    assert info.rows == req.selected
    # 7 a chunk; the canaries' models (up to 1,000, read once) aside
    assert sorted(asked)[-2] <= 7 and max(asked) <= max(7, min(info.rows or 0, ex._MODELS))


def test_residents_of_many_parts_keep_their_keys(tmp_path: Path, sqlite_url: str, tiny: None) -> None:
    """An export without ID numbers (names and mobiles): each real row's pair key is stored with it,
    aligned chunk by chunk, across parts, so the leak check confirms copied rows as residents."""
    w = build_vault(tmp_path, sqlite_url, count=300, seed=2)
    v = w.vault
    try:
        with_mobile = [r for r in w.residents if r.mobile][:120]
        req = ex.request(v, ex.Selection(record_ids=tuple(r.record_id for r in with_mobile)), recipient="R",
                         purpose="audit", fields=["name", "mobile"], ctx=ctx("carol", "approver"))
        ex.approve(v, req.export_id, ctx=ctx("erin", "dpo"))
        ex.fetch(v, req.export_id, tmp_path / "x.csv", ctx=ctx("carol", "approver"))
        pairs = ex.load_registry(v).rows[("name", "mobile")]
        for r in with_mobile:
            assert pairs[ex.row_key(fast_name(r.name), fast_mobile(r.mobile or ""))] <= r.record_id
    finally:
        v.close()
