"""A leak case counts affected residents by province, also those the dump names without an ID number.

A row matched by mobile and name with birth date carries no region of its own;
the vault knows the resident's record, so the case places it in its record's
province. Only counts per province leave the vault: no value of any record.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from leak.conftest import World, build_vault, ctx
from pivault.leak.check import _province, check, load_case
from pivault.model import resident_id


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("regions")
    (tmp / "data").mkdir()
    w = build_vault(tmp, f"sqlite:///{tmp / 'data' / 'vault.db'}", count=3000, seed=23)
    yield w
    w.vault.close()


def _write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def _born(idn: str) -> str:
    return resident_id.facts(idn).birth_date.isoformat()


def test_residents_matched_without_an_id_number_are_counted_in_their_records_province(
        world: World, tmp_path: Path) -> None:
    with_mobile = [r for r in world.residents if r.mobile]
    no_id, with_id = with_mobile[:400], with_mobile[400:700]
    # one file without ID numbers (name, birth date, mobile), one with them
    a = _write(tmp_path / "contacts.csv", ["姓名", "出生日期", "手机号"],
               [[r.name, _born(r.id_number), r.mobile or ""] for r in no_id])
    b = _write(tmp_path / "ids.csv", ["姓名", "身份证号", "手机号"],
               [[r.name, r.id_number, r.mobile or ""] for r in with_id])
    res = check(world.vault, [a, b], ctx=ctx("dpo-1", "dpo"))
    assert res.residents_matched == 700
    assert res.matched_by.get("mobile+name_birth", 0) >= 400
    expected = Counter(_province(r.id_number[:6]) for r in no_id + with_id)
    assert "unknown" not in res.residents_by_region
    assert res.residents_by_region == dict(expected)
    # the saved case holds counts per province and nothing of any record
    summary = json.dumps(load_case(world.vault, res.case_id), ensure_ascii=False)
    for r in no_id + with_id:
        for value in (r.name, r.id_number, r.mobile, r.id_number[:6], r.record_id):
            assert value not in summary


def test_a_resident_seen_first_without_and_then_with_an_id_number_is_counted_once(
        world: World, tmp_path: Path) -> None:
    people = [r for r in world.residents if r.mobile][1000:1100]
    rows = [[r.name, _born(r.id_number), r.mobile or "", ""] for r in people]
    rows += [[r.name, _born(r.id_number), r.mobile or "", r.id_number] for r in people]
    dump = _write(tmp_path / "twice.csv", ["name", "birth_date", "mobile", "id_number"], rows)
    res = check(world.vault, [dump], ctx=ctx("dpo-1", "dpo"), save=False)
    assert res.residents_matched == 100
    assert res.residents_by_region == dict(Counter(_province(r.id_number[:6]) for r in people))


def test_residents_matched_by_record_id_are_counted_in_their_records_province(
        world: World, tmp_path: Path) -> None:
    people = world.residents[2000:2060]
    dump = tmp_path / "ids.csv"
    dump.write_text("record_id,gender\n" + "".join(f"{r.record_id},M\n" for r in people), encoding="utf-8")
    res = check(world.vault, [dump], ctx=ctx("dpo-1", "dpo"), save=False)
    assert res.matched_by == {"record_id": 60}
    assert res.residents_by_region == dict(Counter(_province(r.id_number[:6]) for r in people))
