"""The column-wise matcher against a row-by-row reference, on messy rows with shared keys.

The reference below is the matcher as it was written first: one row at a time, one
keyed hash at a time. A deliberately short hash (six bits) makes pair keys that several
records share common, so the narrowing through the next pair is exercised.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence

import pytest

from leak.synthetic import people
from pivault.leak.columns import (
    fast_id_number,
    fast_id_numbers,
    fast_mobile,
    fast_mobiles,
    fast_name,
    fast_names,
)
from pivault.leak.exports import ExportRegistry
from pivault.leak.match import KEY_PAIRS, Keys, Matcher, PairIndex, batch_keys, match_columns

COLS = {"name": 0, "id_number": 1, "mobile": 2, "birth_date": 3, "address": 4}
BITS = {"id_number": 6, "mobile": 6, "name_birth": 6}


def _blind(name: str, value: str) -> bytes:
    return bytes([hashlib.sha256(f"{name}\x00{value}".encode()).digest()[0] & 0xFC])


def _blind_old(name: str, value: str) -> bytes:
    """The value under a retired key (a rotation not yet rebuilt)."""
    return bytes([hashlib.sha256(f"old\x00{name}\x00{value}".encode()).digest()[0] & 0xFC])


def _world(n: int = 1500) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    residents = list(people(n, seed=31))
    outsiders = list(people(n // 3, seed=32))
    return residents, outsiders


Store = dict[str, dict[bytes, list[str]]]


def _index(residents: list[dict[str, str]], *, rotated: bool = False) -> tuple[PairIndex, Store]:
    pairs = PairIndex()
    store: Store = {k: {} for k in BITS}
    for i, p in enumerate(residents):
        rid = f"r{i:05d}"
        idn = p["id_number"]
        values = {"id_number": idn, "name_birth": f"{p['name']}|{idn[6:10]}-{idn[10:12]}-{idn[12:14]}"}
        if i % 7:
            values["mobile"] = p["mobile"]
        # during a rotation, a third of the entries are still under the old key
        blind = _blind_old if rotated and i % 3 == 0 else _blind
        index = {k: blind(k, v) for k, v in values.items()}
        pairs._add(rid, index)
        for k, v in index.items():
            store[k].setdefault(v, []).append(rid)
    return pairs, store


def _rows(residents: list[dict[str, str]], outsiders: list[dict[str, str]],
          canaries: list[dict[str, str]], seed: int) -> list[list[str | None]]:
    rng = random.Random(seed)
    rows: list[list[str | None]] = []
    for i in range(2500):
        pick = rng.random()
        p = rng.choice(canaries if pick < 0.04 else outsiders if pick < 0.3 else residents)
        idn = rng.choice([p["id_number"], p["id_number"].lower(), f" {p['id_number']} ", "", None,
                          p["id_number"][:17] + "0", "not an id"])
        mob = rng.choice([p["mobile"], f"+86 {p['mobile'][:3]}-{p['mobile'][3:7]}-{p['mobile'][7:]}",
                          f"0086{p['mobile']}", "", None, "garbage", "１３８００１３８０００"])
        i6 = p["id_number"][6:14]
        born = rng.choice(["", None, f"{i6[:4]}-{i6[4:6]}-{i6[6:]}", "1990年1月2日"])
        name = rng.choice([p["name"], f" {p['name']}", "", None])
        row: list[str | None] = [name, idn, mob, born, rng.choice([p["address"], "", None])]
        rows.append(row[: rng.randrange(2, 6)] if i % 11 == 0 else row)
    return rows


def _registry(canaries: list[dict[str, str]]) -> ExportRegistry:
    c: dict[str, dict[str, tuple[str, int]]] = {k: {} for k in ("id_number", "mobile", "name_birth",
                                                                 "address")}
    for n, p in enumerate(canaries):
        eid = f"exp_{n % 3}"
        idn = p["id_number"]
        c["id_number"][idn] = (eid, n)
        c["mobile"][p["mobile"]] = (eid, n)
        c["name_birth"][f"{p['name']}|{idn[6:10]}-{idn[10:12]}-{idn[12:14]}"] = (eid, n)
        if n % 2:
            c["address"][p["address"]] = (eid, n)
    return ExportRegistry(canaries=c)


# ---------------------------------------------------------------- the reference, row by row


def _reference_cached(m: Matcher, k: Keys) -> tuple[str | None, tuple[str, str] | None, float]:
    assert m.pairs is not None
    blind = m.blind
    pair_in, pair_im, pair_mn = KEY_PAIRS
    p_in, p_im, p_mn = (m.pairs.pairs[p] for p in KEY_PAIRS)
    r_in, r_im, r_mn = (m._rate.get(p, 0.0) for p in KEY_PAIRS)
    shared = m.pairs.shared
    expected = 0.0
    vi = blind("id_number", k.id_number) if k.id_number is not None else None
    nb = k.name_birth
    vn = blind("name_birth", nb) if nb is not None else None
    maybe: set[str] | None = None
    maybe_pair = pair_in
    if vi is not None and vn is not None:
        expected += r_in
        hit = p_in.get(vi + vn)
        if hit:
            return hit, pair_in, expected
        if hit is not None:
            maybe = set(shared[pair_in][vi + vn])
    if k.mobile is not None:
        vm = blind("mobile", k.mobile)
        for pair, d, va, vb, r in ((pair_im, p_im, vi, vm, r_im), (pair_mn, p_mn, vm, vn, r_mn)):
            if va is None or vb is None:
                continue
            expected += r
            hit = d.get(va + vb)
            if hit is None:
                continue
            cands = {hit} if hit else set(shared[pair][va + vb])
            if maybe is not None and cands & maybe:
                maybe, maybe_pair = cands & maybe, pair
                if len(maybe) == 1:
                    break
            elif maybe is None:
                maybe, maybe_pair = cands, pair
                if len(cands) == 1:
                    break
    if maybe:
        return min(maybe), maybe_pair, expected
    return None, None, expected


def _reference_store(m: Matcher, k: Keys, store: dict[str, dict[bytes, list[str]]]
                     ) -> tuple[str | None, tuple[str, str] | None, float]:
    def every(name: str, v: str | None) -> tuple[bytes, ...]:
        if not v:
            return ()
        return m.blind_all(name, v) if m.blind_all else (m.blind(name, v),)

    vals = {"id_number": every("id_number", k.id_number), "mobile": every("mobile", k.mobile),
            "name_birth": every("name_birth", k.name_birth)}
    expected = 0.0
    for pair in KEY_PAIRS:
        a, b = pair
        if not vals[a] or not vals[b]:
            continue
        expected += m._rate.get(pair, 0.0)
        ra = {r for v in vals[a] for r in store[a].get(v, ())}
        common = ra & {r for v in vals[b] for r in store[b].get(v, ())}
        if common:
            return min(common), pair, expected
    return None, None, expected


def _reference_canary(m: Matcher, k: Keys) -> tuple[tuple[str, int], int, bool] | None:
    c = m.registry.canaries
    hits: dict[tuple[str, int], int] = {}
    by_id: tuple[str, int] | None = None
    for kind, value in (("id_number", k.id_number), ("mobile", k.mobile),
                        ("name_birth", k.name_birth), ("address", k.address)):
        if value is None:
            continue
        e = c.get(kind, {}).get(value)
        if e is not None:
            hits[e] = hits.get(e, 0) + 1
            if kind == "id_number":
                by_id = e
    if not hits:
        return None
    best = max(hits.items(), key=lambda kv: kv[1])
    return best[0], best[1], by_id == best[0]


def _reference(m: Matcher, rows: Sequence[Sequence[str | None]],
               store: dict[str, dict[bytes, list[str]]] | None) -> dict[str, object]:
    keys = batch_keys(rows, COLS)
    with_keys = single = 0
    matched_by: dict[str, int] = {}
    firsts: dict[str, tuple[int, str]] = {}
    canaries: list[tuple[str, int, int, bool]] = []
    expected = 0.0
    per_row = []
    for j, k in enumerate(keys):
        if store is None:
            rid, pair, e = _reference_cached(m, k)
        else:
            rid, pair, e = _reference_store(m, k, store)
        expected += e
        can = _reference_canary(m, k)
        per_row.append((rid, pair, can))
        n = k.count()
        with_keys += n > 0
        single += n == 1
        if can is not None and (can[1] >= 2 or rid is None):
            # a canary row; one value shared with a canary does not unmake a confirmed resident
            canaries.append((can[0][0], can[0][1], can[1], can[2]))
            continue
        if rid is None:
            continue
        assert pair is not None
        matched_by["+".join(pair)] = matched_by.get("+".join(pair), 0) + 1
        firsts.setdefault(rid, (j, k.id_number[:6] if k.id_number else ""))
    return {"with_keys": with_keys, "single": single, "matched_by": matched_by, "expected": expected,
            "firsts": firsts, "canaries": canaries, "per_row": per_row}


def _compare(m: Matcher, rows: list[list[str | None]],
             store: dict[str, dict[bytes, list[str]]] | None) -> None:
    ref = _reference(m, rows, store)
    got = m.outcome(match_columns(rows, COLS, m.cells), len(rows))
    assert got.rows == len(rows)
    if m.registry.canaries:
        assert got.canaries  # the rows hold canaries and residents matched by each pair
    assert len(got.matched_by) == 3 and got.firsts
    assert (got.with_keys, got.single_key) == (ref["with_keys"], ref["single"])
    assert got.matched_by == ref["matched_by"]
    assert got.rows_matched == sum(ref["matched_by"].values())  # type: ignore[attr-defined]
    assert {rid: (j, region) for rid, j, region in got.firsts} == ref["firsts"]
    assert len(got.firsts) == len(ref["firsts"])  # type: ignore[arg-type]
    assert got.canaries == ref["canaries"]
    assert math.isclose(got.expected_false, ref["expected"], rel_tol=1e-9)  # type: ignore[arg-type]
    # and the per-row form
    per = m.match(rows, COLS)
    assert [(r.record_id, r.pair) for r in per.rows] == [(a, b) for a, b, _ in ref["per_row"]]  # type: ignore[attr-defined]
    assert [r.export_canary for r in per.rows] == [c[0] if c else None for _, _, c in ref["per_row"]]  # type: ignore[attr-defined]
    assert math.isclose(per.expected_false, ref["expected"], rel_tol=1e-9)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cached_pairs_match_the_reference(seed: int) -> None:
    residents, outsiders = _world()
    canaries = outsiders[-40:]
    pairs, _store = _index(residents)
    assert pairs.collisions > 50  # shared pair keys are common with six-bit hashes
    m = Matcher(_blind, dict(BITS), len(residents), _registry(canaries), pairs)
    rows = _rows(residents, outsiders[:-40], canaries, seed)
    _compare(m, rows, None)
    # the batch hashing path gives the same as one by one
    m.blind_many = lambda name, vs: [_blind(name, v) for v in vs]
    _compare(m, rows, None)
    # and without export canaries
    m.registry = ExportRegistry()
    _compare(m, rows, None)


@pytest.mark.parametrize("rotated", [False, True])
def test_store_lookups_match_the_reference(rotated: bool) -> None:
    residents, outsiders = _world(900)
    canaries = outsiders[-20:]
    _pairs, store = _index(residents, rotated=rotated)

    def candidate_ids(name: str, values: Sequence[bytes]) -> dict[bytes, list[str]]:
        return {v: store[name][v] for v in values if v in store[name]}

    blind_all = (lambda n, v: (_blind(n, v), _blind_old(n, v))) if rotated else None
    m = Matcher(_blind, dict(BITS), len(residents), _registry(canaries), None, candidate_ids, blind_all)
    rows = _rows(residents, outsiders[:-20], canaries, 7)
    _compare(m, rows, store)
    if rotated:
        m.blind_all_many = lambda n, vs: [(_blind(n, v), _blind_old(n, v)) for v in vs]
        _compare(m, rows, store)


def test_batch_normalisers_equal_one_by_one() -> None:
    rng = random.Random(9)
    values: list[str | None] = [None, "", " ", "\t"]
    for p in people(600, seed=40):
        idn, mob = p["id_number"], p["mobile"]
        values += [idn, idn.lower(), f" {idn}\n", idn[:17] + "X", idn[:17] + "x", idn[:16], idn + "1",
                   "１" + idn[1:], idn.replace(idn[8], "a"), "11" + idn[2:], idn[:6] + "20991301" + idn[14:],
                   mob, f"+86 {mob}", f"0086-{mob}", f"86{mob}", f"({mob[:3]}) {mob[3:7]}.{mob[7:]}",
                   "+86" + mob[:10], "１３８００１３８０００", "10" + mob[2:], mob[:3] + "\x1c" + mob[3:],
                   p["name"], f" {p['name']} ", "阿依古丽·买买提", "John Smith", "王" * 7, "x"]
    rng.shuffle(values)
    assert fast_id_numbers(values) == [fast_id_number(v.strip()) if v else None for v in values]
    assert fast_mobiles(values) == [fast_mobile(v.strip()) if v else None for v in values]
    assert fast_names(values) == [fast_name(v.strip()) if v else None for v in values]
    assert any(fast_id_numbers(values)) and any(fast_mobiles(values)) and any(fast_names(values))


def test_match_columns_pads_short_rows() -> None:
    rows: list[list[str | None]] = [["a", "b", "c"], ["d"], [], ["e", None, "f", "g"]]
    assert match_columns(rows, {"name": 0, "mobile": 2}) == {"name": ["a", "d", None, "e"],
                                                              "mobile": ["c", None, None, "f"]}
    assert match_columns(rows[:1] + rows[3:], {"id_number": 1}) == {"id_number": ["b", None]}


def test_columns_sent_to_workers_arrive_as_matching_reads_them() -> None:
    import pivault.leak.check as check_mod

    residents, outsiders = _world(300)
    pairs, _store = _index(residents)
    m = Matcher(_blind, dict(BITS), len(residents), ExportRegistry(), pairs)
    rows = _rows(residents, outsiders, outsiders[:5], 3)
    rows[0][0] = "a\x1eb"  # a cell holding the separator: that column goes as a list
    columns = match_columns(rows, COLS, m.cells)
    packed, n = check_mod._packed((columns, len(rows)))
    assert n == len(rows)
    assert isinstance(packed["name"], list) and isinstance(packed["id_number"], str)
    monkey = check_mod._WORKER_MATCHER
    check_mod._WORKER_MATCHER = m
    try:
        got = check_mod._work((packed, n))
    finally:
        check_mod._WORKER_MATCHER = monkey
    assert got == m.outcome(columns, len(rows))
    # one-row columns and empty cells
    one, _ = check_mod._packed(({"id_number": [""], "mobile": [None]}, 1))
    assert one == {"id_number": "", "mobile": ""}
