"""Whoever holds an export must not be able to find its canaries and strip them.

Each test plays the attacker: it takes an export file, writes the rule a
buyer or a careful insider would write to tell canaries from real residents,
and requires that the rule removes canaries no more often than real rows.
"""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from leak.conftest import World, build_vault, ctx
from pivault.leak import exports as ex
from pivault.leak.canaries import split_name
from pivault.leak.check import check
from pivault.model import Resident, address
from pivault.model.record import new_record_id
from pivault.vault.facade import seal

FIELDS = ["name", "id_number", "mobile", "address", "notes", "birth_date", "gender", "region_code"]
Row = dict[str, str]


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, list[Row], list[Row], Path]]:
    tmp = tmp_path_factory.mktemp("canaries")
    (tmp / "data").mkdir()
    w = build_vault(tmp, f"sqlite:///{tmp / 'data' / 'vault.db'}", count=6000, seed=23)
    v = w.vault
    req = ex.request(v, ex.Selection(born_from=dt.date(1900, 1, 1)), recipient="Institute",
                     purpose="research", fields=FIELDS, ctx=ctx("req"))
    ex.approve(v, req.export_id, ctx=ctx("appr", "approver"))
    out = tmp / "export.csv"
    ex.fetch(v, req.export_id, out, ctx=ctx("req"))
    with open(out, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    in_vault = {r.id_number for r in w.residents}
    real = [r for r in rows if r["id_number"] in in_vault]
    canaries = [r for r in rows if r["id_number"] not in in_vault]
    assert len(real) == 6000 and len(canaries) == ex.canaries_needed(6000)
    yield w, real, canaries, out
    v.close()


def _share(rows: list[Row], rule: Callable[[Row], bool]) -> float:
    return sum(1 for r in rows if rule(r)) / len(rows)


def _assert_blind(real: list[Row], canaries: list[Row], rule: Callable[[Row], bool], why: str) -> None:
    a, b = _share(real, rule), _share(canaries, rule)
    # 426 canaries: three standard deviations of a share near one half is about 0.07
    assert abs(a - b) <= 0.08, f"{why}: real rows {a:.3f}, canaries {b:.3f}"


def test_no_fixed_list_or_template_gives_canaries_away(
        export: tuple[World, list[Row], list[Row], Path]) -> None:
    _, real, canaries, _ = export
    surnames = Counter((split_name(r["name"]) or ("", r["name"], ""))[1] for r in real)
    given = Counter((split_name(r["name"]) or ("", "", r["name"]))[2] for r in real)
    # a canary's name is made of a real surname and a real given name
    for c in canaries:
        parts = split_name(c["name"])
        assert parts is not None and parts[1] in surnames and parts[2] in given, "a made-up name"

    def shape(text: str) -> str:
        return re.sub(r"\d+", "#", text)

    # the street part of every address and every note has a shape some real row has
    def street(text: str) -> str:
        return shape(text[address.parse_prefix(address.normalise(text)).end:]) if text else ""

    real_notes = {shape(r["notes"]) for r in real}
    assert all(shape(c["notes"]) in real_notes for c in canaries)
    real_streets = {street(r["address"]) for r in real}
    assert all(street(c["address"]) in real_streets for c in canaries)
    this_year = dt.date.today().year

    def child_with_mobile(r: Row) -> bool:
        return this_year - int(r["birth_date"][:4]) < 10 and bool(r["mobile"])

    def gender_fits_name(r: Row) -> bool:
        return r["gender"] == ("M" if int(r["id_number"][16]) % 2 else "F")

    _assert_blind(real, canaries, child_with_mobile, "a child with a mobile")
    _assert_blind(real, canaries, lambda r: not r["mobile"], "no mobile")
    _assert_blind(real, canaries, lambda r: not r["notes"], "no notes")
    _assert_blind(real, canaries, lambda r: r["address"].endswith("室"), "a flat")
    _assert_blind(real, canaries, gender_fits_name, "gender and ID number agree")
    _assert_blind(real, canaries, lambda r: r["mobile"][:3] in ("134", "135", "136", "137", "138", "139"),
                  "a China Mobile 13x prefix")
    floors = [int(m[1]) for r in real if (m := re.search(r"(\d+)\d\d室$", r["address"]))]
    top = sorted(floors)[int(len(floors) * 0.99)]
    _assert_blind(real, canaries, lambda r: bool((m := re.search(r"(\d+)\d\d室$", r["address"]))
                                                 and int(m[1]) > top), "a floor higher than real ones")


def test_rows_shared_with_one_other_do_not_give_canaries_away(
        export: tuple[World, list[Row], list[Row], Path]) -> None:
    """A canary modelled on one real row must not share that row's county, birth year or mobile block."""
    _, real, canaries, _ = export
    rows = real + canaries
    keys: dict[str, Callable[[Row], object]] = {
        "county and birth year": lambda r: (r["id_number"][:6], r["birth_date"][:4]),
        "mobile block": lambda r: r["mobile"][:7] or None,
        "notes": lambda r: r["notes"] or None}
    for what, key in keys.items():
        seen = Counter(key(r) for r in rows)
        _assert_blind(real, canaries, lambda r, k=key, s=seen: k(r) is not None and s[k(r)] > 1,  # type: ignore[misc]
                      f"{what} shared with another row")


def test_a_copy_stripped_of_look_alike_canaries_is_still_traced(
        export: tuple[World, list[Row], list[Row], Path], tmp_path: Path) -> None:
    """The rule that used to strip every canary (stock street names and notes) leaves them in."""
    w, _, _, out = export
    stock_streets = "建设路|人民路|解放路|中山路|和平街|新华路|胜利路|文化路|光明街|团结路|幸福路|朝阳路"
    old = re.compile(rf"({stock_streets}|青年路|长江路|黄河路|复兴路)\d+号\d+0[1-9]室$")
    stock_notes = {"户籍信息核对无误", "联系方式已更新", "已办理居住登记", "信息由本人申报"}
    with open(out, encoding="utf-8", newline="") as f:
        kept = [r for r in csv.DictReader(f)
                if not old.search(r["address"]) and r["notes"] not in stock_notes]
    dump = tmp_path / "cleaned.csv"
    with open(dump, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(kept[:400])
    res = check(w.vault, [dump], ctx=ctx("dpo-1", "dpo"), save=False)
    assert res.attribution is not None
    assert [f.strength for f in res.attribution.named] == ["conclusive"]


def test_export_order_tells_nothing_of_import_order(tmp_path: Path, sqlite_url: str) -> None:
    """Residents imported sorted by ID number, a second apart per hundred (their record ids sort
    with them): the export's rows must not come out in that order, or every canary breaks it."""
    w = build_vault(tmp_path, sqlite_url, count=1)
    v = w.vault
    from leak.synthetic import people

    persons = sorted(people(1500, seed=5), key=lambda p: p["id_number"])
    t0 = time.time() - 86400
    residents = [Resident.parse({k: p[k] for k in ("name", "id_number", "mobile", "address")},
                                record_id=new_record_id(t0 + i // 100)) for i, p in enumerate(persons)]
    v.store.insert([seal(v.keyring, r) for r in residents])
    req = ex.request(v, ex.Selection(record_ids=tuple(r.record_id for r in residents)),
                     recipient="R", purpose="p", fields=["name", "id_number", "mobile"], ctx=ctx("req"))
    ex.approve(v, req.export_id, ctx=ctx("appr", "approver"))
    ex.fetch(v, req.export_id, tmp_path / "x.csv", ctx=ctx("req"))
    with open(tmp_path / "x.csv", encoding="utf-8", newline="") as f:
        ids = [r["id_number"] for r in csv.DictReader(f)]
    rising = sum(a < b for a, b in itertools.pairwise(ids)) / (len(ids) - 1)
    assert 0.4 < rising < 0.6  # a shuffled file, not a sorted one with canaries breaking the runs
    v.close()


def test_exports_fetched_at_the_same_moment_share_no_canary(tmp_path: Path) -> None:
    """Four fetches at once (from threads, as the HTTP service serves them), of residents born
    on one day in one county: their canaries come from a few hundred free ID numbers, so canaries checked only
    against those stored before would clash. No value may be the canary of two exports."""
    import threading

    from pivault.model import resident_id

    w = build_vault(tmp_path, f"sqlite:///{tmp_path / 'vault.db'}", count=1)
    v = w.vault
    day = dt.date(1990, 5, 17)
    from leak.synthetic import people

    born = [Resident.parse({"name": p["name"], "id_number": resident_id.make("310115", day, i + 1),
                            "mobile": p["mobile"]}) for i, p in enumerate(people(500, seed=8))]
    v.store.insert([seal(v.keyring, r) for r in born])
    sel = ex.Selection(regions=("310115",), born_from=day, born_to=day)
    ids = []
    for n in range(4):
        req = ex.request(v, sel, recipient=f"R{n}", purpose="p", fields=["name", "id_number"],
                         ctx=ctx(f"req-{n}"))
        ex.approve(v, req.export_id, ctx=ctx("appr", "approver"))
        ids.append(req.export_id)
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def fetch(n: int) -> None:
        start.wait()
        try:
            ex.fetch(v, ids[n], tmp_path / f"x{n}.csv", ctx=ctx(f"req-{n}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fetch, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    owners: dict[str, set[str]] = {}
    for n in range(4):
        with open(tmp_path / f"x{n}.csv", encoding="utf-8", newline="") as f:
            for r in csv.DictReader(f):
                if int(r["id_number"][14:17]) > 500:
                    owners.setdefault(r["id_number"], set()).add(ids[n])
    assert sum(ex.canaries_needed(500) for _ in range(4)) == len(owners)
    assert all(len(o) == 1 for o in owners.values())
    v.close()


def test_a_resident_sharing_one_value_with_a_canary_is_counted(
        export: tuple[World, list[Row], list[Row], Path], tmp_path: Path) -> None:
    """Canary mobiles are drawn, so a real person may hold one (numbers are reissued; at
    population scale most numbers of a block are someone's). That person, leaked with name and
    ID number, is an affected resident, and no evidence against the export."""
    w, _, canaries, _ = export
    v = w.vault
    from leak.synthetic import people

    donors = [c for c in canaries if c["mobile"]][:30]
    newcomers = [Resident.parse({"name": p["name"], "id_number": p["id_number"], "mobile": c["mobile"]})
                 for p, c in zip(people(30, seed=77), donors, strict=True)]
    v.store.insert([seal(v.keyring, r) for r in newcomers])
    dump = tmp_path / "others.csv"
    body = "".join(f"{r.name},{r.id_number},{r.mobile}\n" for r in newcomers)
    dump.write_text("姓名,身份证号,手机\n" + body, encoding="utf-8")
    res = check(v, [dump], ctx=ctx("dpo-1", "dpo"), save=False)
    assert res.residents_matched == 30
    assert all(c["single_key"] == 0 and c["found"] == 0 for c in res.export_canaries.values())
    assert res.attribution is not None and res.attribution.named == []


def test_residents_of_an_exported_region_leaked_elsewhere_blame_no_export(tmp_path: Path) -> None:
    """An officer reads 150 residents of Guangdong and leaks them. Exports of all Guangdong
    residents were fetched too: the dump fits inside each of them, but holds none of their
    canaries, which a copy of any of them would. The officer is named; no export is."""
    import random

    w = build_vault(tmp_path, f"sqlite:///{tmp_path / 'vault.db'}", count=6000, seed=31)
    v = w.vault
    exported = []
    for n in range(2):
        req = ex.request(v, ex.Selection(regions=("44",)), recipient=f"R{n}", purpose="research",
                         fields=["name", "id_number", "mobile"], ctx=ctx(f"req-{n}"))
        ex.approve(v, req.export_id, ctx=ctx("appr", "approver"))
        ex.fetch(v, req.export_id, tmp_path / f"e{n}.csv", ctx=ctx(f"req-{n}"))
        exported.append(req.export_id)
    guangdong = [r for r in w.residents if r.id_number.startswith("44")]
    read = random.Random(4).sample(guangdong, 150)
    for r in read:
        v.get(r.record_id, ctx=ctx("officer-9", "officer"))
    dump = tmp_path / "sale.csv"
    dump.write_text("".join(f"{r.name},{r.id_number},{r.mobile or ''}\n" for r in read), encoding="utf-8")
    res = check(v, [dump], ctx=ctx("dpo-1", "dpo"), save=False)
    assert res.attribution is not None
    assert [(f.kind, f.source_id) for f in res.attribution.named] == [("principal", "officer-9")]
    v.close()
