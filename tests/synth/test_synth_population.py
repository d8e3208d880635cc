"""The synthetic population: realism, uniqueness, labelled bad rows, determinism, memory."""

from __future__ import annotations

import collections
import csv
import datetime as dt
import hashlib
import io
import itertools
import json
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from pivault.cli.synth import synth as synth_command
from pivault.errors import ValidationError
from pivault.model import Resident, address, divisions, resident_id
from pivault.synth import (
    BAD_KINDS,
    COLUMNS,
    CSV_KINDS,
    FIELD_KINDS,
    REFERENCE_DATE,
    capacity,
    generate,
    identity,
    labels_path_for,
    write_population,
)
from pivault.synth.population import CHUNK, chunks

TODAY = dt.date.today()


@pytest.fixture(scope="module")
def population() -> list[dict[str, str]]:
    """200,000 good residents (seed 11)."""
    return [dict(r) for r in generate(200_000, 11)]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- uniqueness and realism

def test_id_numbers_and_mobiles_are_unique(population: list[dict[str, str]]) -> None:
    ids = [r["id_number"] for r in population]
    mobiles = [r["mobile"] for r in population if r["mobile"]]
    assert len(set(ids)) == len(ids) == 200_000
    assert len(set(mobiles)) == len(mobiles) > 170_000


def test_rows_are_consistent(population: list[dict[str, str]]) -> None:
    oldest = REFERENCE_DATE.replace(year=REFERENCE_DATE.year - 100)
    current = set(divisions.current_county_codes())
    for r in population[:20_000]:
        facts = resident_id.facts(r["id_number"])
        assert oldest < facts.birth_date <= REFERENCE_DATE
        born = facts.birth_date
        age = REFERENCE_DATE.year - born.year - ((REFERENCE_DATE.month, REFERENCE_DATE.day)
                                                 < (born.month, born.day))
        assert (r["mobile"] == "") == (age < 10)
        prefix = address.parse_prefix(r["address"])
        assert prefix.region_code == facts.region_code  # the district of the ID's own code
        assert r["address"].startswith(divisions.province_of(facts.region_code) or "?")
        assert facts.region_code in current


def test_every_good_row_parses(population: list[dict[str, str]]) -> None:
    for r in population[:15_000]:
        res = Resident.parse(r, today=TODAY)
        assert res.id_number == r["id_number"]
        assert res.gender == ("M" if int(r["id_number"][16]) % 2 else "F")


def test_distributions_look_like_the_population(population: list[dict[str, str]]) -> None:
    n = len(population)
    genders = collections.Counter(int(r["id_number"][16]) % 2 for r in population)
    assert 0.47 < genders[1] / n < 0.53
    ages = collections.Counter(
        (REFERENCE_DATE - resident_id.facts(r["id_number"]).birth_date).days // 3653 for r in population)
    # 2020 census shape: about 18% under 15 is ~ 12% under 10; 80+ about 3%
    assert 0.09 < ages[0] / n < 0.16
    assert ages[3] > ages[8] > ages[9] > 0  # 30s outnumber 80s outnumber 90s
    provinces = collections.Counter(r["id_number"][:2] for r in population)
    assert 0.06 < provinces["44"] / n < 0.12       # Guangdong, 8.9% in 2020
    assert provinces["54"] / n < 0.01               # Tibet, 0.26%
    assert len(provinces) == 31
    surnames = collections.Counter(r["name"][0] for r in population)
    assert {s for s, _ in surnames.most_common(5)} >= {"王", "李", "张"}
    compound = sum(1 for r in population if r["name"][:2] in ("欧阳", "司马", "上官", "诸葛"))
    assert compound > 20
    dotted = [r for r in population if "·" in r["name"]]
    assert dotted and all(r["id_number"][:2] == "65" for r in dotted)
    carriers = collections.Counter(r["mobile"][:3] for r in population if r["mobile"])
    mobile_share = sum(v for p, v in carriers.items() if p in ("134", "135", "136", "137", "138", "139",
                                                                "147", "148", "150", "151", "152", "157",
                                                                "158", "159", "172", "178", "182", "183",
                                                                "184", "187", "188", "195", "197", "198"))
    assert 0.5 < mobile_share / sum(carriers.values()) < 0.65     # China Mobile ~ 56%
    assert sum(1 for r in population if "\n" in r["notes"]) > 500
    assert 0.2 < sum(1 for r in population if not r["notes"]) / n < 0.3


def test_identity_is_the_row_computed_alone(population: list[dict[str, str]]) -> None:
    for i in [0, 1, 2, CHUNK - 1, CHUNK, 123_456, 199_999]:
        idn, mob = identity(i, 11)
        assert population[i]["id_number"] == idn
        assert population[i]["mobile"] in ("", mob)


def test_a_shorter_population_is_a_prefix(population: list[dict[str, str]]) -> None:
    assert [dict(r) for r in generate(70_000, 11)] == population[:70_000]


def test_capacity_is_population_scale() -> None:
    assert capacity() > 1_400_000_000
    with pytest.raises(ValueError):
        next(generate(capacity() + 1, 0))
    with pytest.raises(ValueError):
        next(generate(10, 0, bad_rate=1.5))
    with pytest.raises(ValueError):
        next(generate(10, 0, bad_rate=0.1, kinds=["no_such_kind"]))


# -- bad rows

def test_every_bad_row_is_rejected_with_its_code() -> None:
    seen: collections.Counter[str] = collections.Counter()
    good = bad = 0
    earlier: dict[str, int] = {}
    for row_no, r in enumerate(generate(25_000, 5, bad_rate=0.08), start=1):
        kind = r.get("label")
        if kind is None:
            good += 1
            Resident.parse(r, today=TODAY)
            earlier[r["id_number"]] = row_no
            continue
        bad += 1
        seen[kind] += 1
        assert r["expected_code"] == BAD_KINDS[kind]
        if kind == "duplicate":
            Resident.parse(r, today=TODAY)  # valid, but its ID was seen before
            assert earlier[r["id_number"]] == r["duplicate_of"] < row_no
            continue
        with pytest.raises(ValidationError) as info:
            Resident.parse(r, today=TODAY)
        assert info.value.code == r["expected_code"], kind
    assert good + bad == 25_000
    assert set(seen) == set(FIELD_KINDS)
    assert 0.07 < bad / 25_000 < 0.09


def test_bad_rate_leaves_good_rows_unchanged() -> None:
    clean = list(generate(20_000, 9))
    for a, b in zip(generate(20_000, 9, bad_rate=0.2), clean, strict=True):
        if "label" not in a:
            assert a == b


def test_csv_file_labels_and_structure(tmp_path: Path) -> None:
    out = tmp_path / "pop.csv"
    summary = write_population(out, 30_000, 21, bad_rate=0.05)
    rows = list(generate(30_000, 21, bad_rate=0.05, kinds=FIELD_KINDS + CSV_KINDS))
    labels = [json.loads(line) for line in labels_path_for(out).read_text("utf-8").splitlines()]
    assert summary.rows == 30_000 and summary.bad_rows == len(labels)
    assert summary.good_rows + summary.bad_rows == 30_000
    assert sum(summary.kinds.values()) == len(labels)
    assert {lb["kind"] for lb in labels} == set(BAD_KINDS)
    assert [lb["row"] for lb in labels] == sorted({lb["row"] for lb in labels})
    by_row = {lb["row"]: lb for lb in labels}
    assert all(set(lb) <= {"row", "line", "kind", "expected_code", "duplicate_of"} for lb in labels)

    # read back record by record with a strict reader; each record's first line is known
    with out.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, strict=True)
        assert next(reader) == list(COLUMNS)
        for row_no, expected in enumerate(rows, start=1):
            first_line = reader.line_num + 1
            lb = by_row.get(row_no)
            if lb is not None:
                assert lb["line"] == first_line and lb["kind"] == expected.get("label")
            try:
                record = next(reader)
            except csv.Error:
                assert lb is not None and lb["kind"] == "csv_quote"
                continue
            if lb is not None and lb["kind"] == "csv_fields":
                assert len(record) in (4, 6)
                continue
            assert lb is None or lb["kind"] != "csv_quote"
            assert record == [expected[c] for c in COLUMNS]
        with pytest.raises(StopIteration):
            next(reader)

    # a lenient reader reads the stray-quote rows as a 19-character ID number
    lenient = list(csv.reader(io.StringIO(out.read_text("utf-8"), newline="")))
    quote_rows = [lb["row"] for lb in labels if lb["kind"] == "csv_quote"]
    for row_no in quote_rows:
        record = lenient[row_no]
        with pytest.raises(ValidationError) as info:
            Resident.parse(dict(zip(COLUMNS, record, strict=True)), today=TODAY)
        assert info.value.code == "id.length"


def test_jsonl_and_parquet_hold_the_same_rows(tmp_path: Path) -> None:
    expected = list(generate(5_000, 4, bad_rate=0.1))
    plain = [{c: r[c] for c in COLUMNS} for r in expected]
    write_population(tmp_path / "p.jsonl", 5_000, 4, bad_rate=0.1)
    lines = (tmp_path / "p.jsonl").read_text("utf-8").splitlines()
    assert [json.loads(line) for line in lines] == plain
    labels = [json.loads(x) for x in labels_path_for(tmp_path / "p.jsonl").read_text("utf-8").splitlines()]
    assert all(lb["line"] == lb["row"] for lb in labels)
    assert [lb["row"] for lb in labels] == [i for i, r in enumerate(expected, start=1) if "label" in r]
    write_population(tmp_path / "p.parquet", 70_000, 4, bad_rate=0.1)
    table = pq.read_table(tmp_path / "p.parquet")
    assert table.schema.names == list(COLUMNS) and table.num_rows == 70_000
    assert table.slice(0, 5_000).to_pylist() == plain
    assert pq.ParquetFile(tmp_path / "p.parquet").metadata.num_row_groups == -(-70_000 // CHUNK)
    labels = [json.loads(x) for x in labels_path_for(tmp_path / "p.parquet").read_text("utf-8").splitlines()]
    assert all(lb["line"] is None for lb in labels)


def test_gb18030_csv_holds_the_same_text(tmp_path: Path) -> None:
    write_population(tmp_path / "u.csv", 3_000, 8, bad_rate=0.05)
    write_population(tmp_path / "g.csv", 3_000, 8, bad_rate=0.05, encoding="gb18030")
    assert (tmp_path / "g.csv").read_text("gb18030") == (tmp_path / "u.csv").read_text("utf-8")
    assert (tmp_path / "g.csv").read_bytes() != (tmp_path / "u.csv").read_bytes()
    with pytest.raises(ValueError):
        write_population(tmp_path / "g.jsonl", 10, 8, encoding="gb18030")
    with pytest.raises(ValueError):
        write_population(tmp_path / "x.txt", 10, 8)


@pytest.mark.parametrize("ext", ["csv", "jsonl", "parquet"])
def test_same_seed_same_bytes(tmp_path: Path, ext: str) -> None:
    a, b, c = (tmp_path / f"{name}.{ext}" for name in "abc")
    write_population(a, 10_000, 123, bad_rate=0.05)
    write_population(b, 10_000, 123, bad_rate=0.05)
    write_population(c, 10_000, 124, bad_rate=0.05)
    assert _sha(a) == _sha(b) != _sha(c)
    assert _sha(labels_path_for(a)) == _sha(labels_path_for(b))


def test_empty_population(tmp_path: Path) -> None:
    for ext in ("csv", "jsonl", "parquet"):
        s = write_population(tmp_path / f"e.{ext}", 0, 1, bad_rate=0.5)
        assert s.rows == 0 and s.bad_rows == 0
    assert (tmp_path / "e.csv").read_text("utf-8") == ",".join(COLUMNS) + "\n"
    assert pq.read_table(tmp_path / "e.parquet").num_rows == 0


# -- memory

def _peak_python_bytes(rows: object) -> tuple[int, int]:
    """(tracemalloc peak, largest Arrow allocation seen) while consuming ``rows``."""
    capacity()  # the seed-independent tables are built once per process; not counted
    next(iter(chunks(1, 0)))
    tracemalloc.start()
    arrow_peak = 0
    try:
        for k, _ in enumerate(rows):  # type: ignore[call-overload]
            if k % 16384 == 0:
                arrow_peak = max(arrow_peak, pa.total_allocated_bytes())
        return tracemalloc.get_traced_memory()[1], arrow_peak
    finally:
        tracemalloc.stop()


def test_memory_stays_flat() -> None:
    # The row iterator turns 4,096 rows at a time into dicts, so its Python memory is
    # bounded by construction; measure it across chunk boundaries...
    small_py, small_arrow = _peak_python_bytes(generate(2 * CHUNK + 1000, 3))
    # ...and the chunk engine it wraps over 10^6 rows (tracing 6 million dict and str
    # allocations of the iterator itself would take most of the suite's time budget).
    big_py, big_arrow = _peak_python_bytes(itertools.chain.from_iterable(
        [c.batch.num_rows] for c in chunks(1_000_000, 3)))
    assert small_py < 16 * 2**20 and big_py < 16 * 2**20
    assert small_arrow < 128 * 2**20 and big_arrow < 128 * 2**20


# -- command line

def test_cli_writes_and_summarises(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(synth_command)
    out = tmp_path / "cli.csv"
    args = ["--count", "2000", "--seed", "7", "--out", str(out), "--bad-rate", "0.1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2,000" in result.output and "cli.csv" in result.output
    assert out.read_bytes() == _written(tmp_path / "lib.csv", 2000, 7, 0.1)
    result = CliRunner().invoke(app, ["--count", "5", "--out", str(tmp_path / "x.txt")])
    assert result.exit_code == 2


def _written(path: Path, count: int, seed: int, rate: float) -> bytes:
    write_population(path, count, seed, bad_rate=rate)
    return path.read_bytes()


def test_cli_errors_are_one_line_and_leave_no_file(tmp_path: Path) -> None:
    """A missing directory or a bad option: one line, exit 2, nothing written."""
    app = typer.Typer()
    app.command()(synth_command)
    r = CliRunner().invoke(app, ["--count", "3", "--out", str(tmp_path / "missing" / "x.csv")])
    assert r.exit_code == 2 and r.stderr.startswith("error[synth.out]:"), r.output
    assert "Traceback" not in r.output and "hint:" in r.stderr
    r = CliRunner().invoke(app, ["--count", "3", "--out", str(tmp_path / "x.jsonl"),
                                 "--encoding", "gb18030"])
    assert r.exit_code == 2 and r.stderr.startswith("error[synth.options]:"), r.output
    # the output cannot be opened after the labels file was: neither is left behind
    (tmp_path / "taken.csv").mkdir()
    r = CliRunner().invoke(app, ["--count", "3", "--out", str(tmp_path / "taken.csv")])
    assert r.exit_code == 1 and r.stderr.startswith("error[io]:"), r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.csv"]
