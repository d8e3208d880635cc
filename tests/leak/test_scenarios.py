"""The leak-response scenarios of the issue, end to end on one synthetic vault."""

from __future__ import annotations

import csv
import gzip
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from leak.conftest import World, build_vault, ctx
from leak.synthetic import people
from pivault.leak import exports as ex
from pivault.leak.check import Checker, affected, check, load_case
from pivault.leak.exports import ExportError
from pivault.vault.facade import open_record

FIELDS = ["name", "id_number", "mobile", "address", "notes"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """12,000 residents; exports A, B, C to three recipients (A and B overlap); an officer
    who read 300 records; 40 vault canaries."""
    from pivault.detect.canary import seed

    tmp = tmp_path_factory.mktemp("scene")
    (tmp / "data").mkdir()
    w = build_vault(tmp, f"sqlite:///{tmp / 'data' / 'vault.db'}")
    v = w.vault
    ids = [r.record_id for r in w.residents]
    plan = {"A": ids[0:3000], "B": ids[2000:6200], "C": ids[7000:10000]}
    files: dict[str, Path] = {}
    export_ids: dict[str, str] = {}
    for name, sel in plan.items():
        req = ex.request(v, ex.Selection(record_ids=tuple(sel)), recipient=f"recipient {name}",
                         purpose="research", fields=FIELDS, ctx=ctx(f"req-{name}"))
        ex.approve(v, req.export_id, ctx=ctx("approver-1", "approver"))
        files[name] = tmp / f"{name}.csv"
        ex.fetch(v, req.export_id, files[name], ctx=ctx(f"req-{name}"))
        export_ids[name] = req.export_id
    officer_reads = ids[10500:10800]
    for rid in officer_reads:
        v.get(rid, ctx=ctx("officer-7", "officer"))
    canaries = seed(v, 40, ctx=ctx("system", "system"), rng_seed=5)
    never_left = ids[10800:]
    yield {"world": w, "files": files, "exports": export_ids, "officer": officer_reads,
           "never_left": never_left, "canaries": canaries, "tmp": tmp}
    v.close()


def _rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _messy_mobile(m: str) -> str:
    return f"+86 {m[:3]}-{m[3:7]}-{m[7:]}" if m else ""


def test_leaked_sample_of_export_b_names_b_and_no_other(scene: dict[str, object], tmp_path: Path) -> None:
    files: dict[str, Path] = scene["files"]  # type: ignore[assignment]
    exports: dict[str, str] = scene["exports"]  # type: ignore[assignment]
    w: World = scene["world"]  # type: ignore[assignment]
    header, rows = _rows(files["B"])
    rng = random.Random(2022)
    sample = rng.sample(rows, len(rows) // 20)  # 5 %, shuffled
    assert len(sample) >= 200
    keep = [header.index(f) for f in ("mobile", "name", "id_number")]  # address, notes dropped
    chinese = {"mobile": "手机号码", "name": "姓名", "id_number": "身份证号"}
    dump = tmp_path / "sale.csv"
    with open(dump, "w", encoding="gb18030", newline="") as f:
        out = csv.writer(f)
        out.writerow([chinese[header[i]] for i in keep])
        for r in sample:
            cells = [r[i] for i in keep]
            cells[0] = _messy_mobile(cells[0])
            cells[2] = cells[2].replace("X", "x")
            out.writerow(cells)
    res = check(w.vault, [dump], ctx=ctx("dpo-1", "dpo"))
    assert res.attribution is not None
    named = res.attribution.named
    assert [(f.kind, f.source_id) for f in named] == [("export", exports["B"])]
    assert named[0].strength == "conclusive"
    assert res.export_canaries[exports["B"]]["found"] >= 1
    assert all(res.export_canaries[exports[x]]["found"] == 0 for x in "AC")
    assert res.tables[0]["encoding"] == "gb18030"
    kinds = {c["kind"] for c in res.tables[0]["columns"]}
    assert kinds == {"mobile", "name", "id_number"}
    assert res.rows_read == len(sample)
    real = len(sample) - res.export_canaries[exports["B"]]["found"]
    assert res.residents_matched >= real - 3  # a few chance-free misses at most
    assert res.fields_exposed == ["id_number", "mobile", "name"]
    # the export's fit: the matched residents are inside B (but for chance pair coincidences)
    ev = named[0].evidence
    assert ev["containment"] >= 0.98 and ev["recipient"] == "recipient B"
    # the case keeps who is affected, for a notifier only
    with pytest.raises(Exception, match="notify"):
        affected(w.vault, res.case_id, ctx=ctx("officer-7", "officer"))
    ids = affected(w.vault, res.case_id, ctx=ctx("dpo-1", "dpo"))
    assert len(ids) == res.residents_matched
    summary = load_case(w.vault, res.case_id)
    assert summary["residents_matched"] == res.residents_matched
    assert not any(r.id_number in str(summary) for r in w.residents[2000:6200])


def test_merged_exports_name_at_least_one(scene: dict[str, object], tmp_path: Path) -> None:
    files: dict[str, Path] = scene["files"]  # type: ignore[assignment]
    exports: dict[str, str] = scene["exports"]  # type: ignore[assignment]
    w: World = scene["world"]  # type: ignore[assignment]
    header, a = _rows(files["A"])
    _, c = _rows(files["C"])
    merged = {r[1]: r for r in a + c}  # de-duplicated by ID number, as a buyer would
    rng = random.Random(7)
    sample = rng.sample(sorted(merged.values()), 400)
    dump = tmp_path / "merged.jsonl"
    import json

    dump.write_text("\n".join(json.dumps(dict(zip(header, r, strict=True)), ensure_ascii=False)
                              for r in sample), encoding="utf-8")
    res = check(w.vault, [dump], ctx=ctx("dpo-1", "dpo"), save=False)
    assert res.attribution is not None
    named = {f.source_id for f in res.attribution.named}
    assert named and named <= {exports["A"], exports["C"]}


def test_store_dump_names_the_store(scene: dict[str, object], tmp_path: Path) -> None:
    """The SQLite file copied out and decrypted by someone with the keys: its plaintext rows."""
    w: World = scene["world"]  # type: ignore[assignment]
    v = w.vault
    dump = tmp_path / "pg_dump.sql.gz"
    with gzip.open(dump, "wt", encoding="utf-8") as f:
        f.write("--\n-- PostgreSQL database dump\n--\nSET standard_conforming_strings = on;\n")
        f.write("CREATE TABLE public.records (\n    record_id text,\n    name text,\n    id_number text,\n"
                "    mobile text,\n    address text\n);\n")
        f.write("COPY public.records (record_id, name, id_number, mobile, address) FROM stdin;\n")
        for stored in v.store.iter_all():
            r = open_record(v.keyring, stored)
            f.write("\t".join([r.record_id, r.name, r.id_number, r.mobile or "\\N", r.address or "\\N"])
                    + "\n")
        f.write("\\.\n")
    res = check(v, [dump], ctx=ctx("dpo-1", "dpo"), save=False)
    assert res.attribution is not None
    named = [(f.kind, f.source_id) for f in res.attribution.named]
    assert named == [("store", "store")], res.attribution.to_dict()
    assert res.vault_canaries["found"] == 40 and res.vault_canaries["never_served"] == 40
    assert res.residents_matched >= 11_900


def test_officer_reads_leaked(scene: dict[str, object], tmp_path: Path) -> None:
    w: World = scene["world"]  # type: ignore[assignment]
    officer: list[str] = scene["officer"]  # type: ignore[assignment]
    by_id = {r.record_id: r for r in w.residents}
    dump = tmp_path / "officer.tsv"
    rows = [by_id[rid] for rid in random.Random(3).sample(officer, 150)]
    dump.write_text("".join(f"{r.id_number}\t{r.name}\n" for r in rows), encoding="utf-16")
    res = check(w.vault, [dump], ctx=ctx("dpo-1", "dpo"), save=False)
    assert res.attribution is not None
    assert [(f.kind, f.source_id) for f in res.attribution.named] == [("principal", "officer-7")]


def test_never_left_and_outsiders_are_never_attributed(scene: dict[str, object], tmp_path: Path) -> None:
    w: World = scene["world"]  # type: ignore[assignment]
    never_left: list[str] = scene["never_left"]  # type: ignore[assignment]
    canaries = set(scene["canaries"])  # type: ignore[call-overload]
    by_id = {r.record_id: r for r in w.residents}
    pool = [by_id[r] for r in never_left if r in by_id and r not in canaries]
    outsiders = list(people(3000, seed=99))
    checker = Checker(w.vault, ctx=ctx("dpo-1", "dpo"))
    rng = random.Random(1000)
    path = tmp_path / "s.csv"
    for i in range(1000):
        n = rng.choice((5, 20, 60, 200, 400))
        if i % 2:
            rows = [(r.name, r.id_number, r.mobile or "") for r in rng.sample(pool, min(n, len(pool)))]
        else:
            rows = [(p["name"], p["id_number"], p["mobile"]) for p in rng.sample(outsiders, n)]
        path.write_text("".join(",".join(r) + "\n" for r in rows), encoding="utf-8")
        res = checker.check([path], save=False)
        assert res.attribution is not None
        assert res.attribution.named == [], (i, res.attribution.to_dict())
        if i % 2 == 0:
            assert res.attribution.verdict in ("not_ours", "none", "weak")
    # outsiders match only by chance coincidence of two truncated indexes, as often as reported
    # (counted once over all of them: the samples above reuse the same outsiders)
    path.write_text("".join(f"{p['name']},{p['id_number']},{p['mobile']}\n" for p in outsiders),
                    encoding="utf-8")
    res = checker.check([path], save=False)
    assert res.residents_matched <= 2 * res.expected_false + 5
    assert res.attribution is not None and res.attribution.named == []


def test_bad_dumps_give_clear_messages(scene: dict[str, object], tmp_path: Path) -> None:
    w: World = scene["world"]  # type: ignore[assignment]
    nopi = tmp_path / "orders.csv"
    nopi.write_text("order,sku,price\n" + "".join(f"{i},SKU-{i},{i * 3.5}\n" for i in range(300)),
                    encoding="utf-8")
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    cut = tmp_path / "cut.csv.gz"
    body = "".join(f"{r.name},{r.id_number}\n" for r in w.residents[:3000]).encode("utf-8")
    data = gzip.compress(body)
    cut.write_bytes(data[: len(data) // 2])
    long = tmp_path / "long.csv"
    with open(long, "wb") as f:
        f.write(b"name,id_number\n" + b"x" * (3 * 1024 * 1024))
    res = check(w.vault, [nopi, empty, cut, long], ctx=ctx("dpo-1", "dpo"), save=False, max_line_mib=2)
    errors = {e["file"]: e for e in res.errors}
    assert errors["empty.csv"]["code"] == "dump.empty"
    assert errors["cut.csv.gz"]["code"] == "dump.truncated"
    assert "line longer than 2 MiB at line 2" in errors["long.csv"]["message"]
    tables = {t["source"]: t for t in res.tables}
    assert tables["orders.csv"]["pi_columns_found"] is False
    assert "no PI columns" in tables["orders.csv"]["message"]
    assert res.residents_matched > 0  # the rows before the truncation were matched
    assert res.attribution is not None and res.attribution.named == []


def test_two_person_rule_and_single_fetch(scene: dict[str, object], tmp_path: Path) -> None:
    w: World = scene["world"]  # type: ignore[assignment]
    v = w.vault
    req = ex.request(v, ex.Selection(regions=("11",)), recipient="R", purpose="audit",
                     fields=["name", "id_number"], ctx=ctx("carol", "approver"))
    with pytest.raises(ExportError, match="two-person"):
        ex.approve(v, req.export_id, ctx=ctx("carol", "approver"))
    with pytest.raises(ExportError, match="approver role"):
        ex.approve(v, req.export_id, ctx=ctx("dave", "analyst"))
    with pytest.raises(ExportError, match="requested"):
        ex.fetch(v, req.export_id, tmp_path / "x.csv", ctx=ctx("carol", "approver"))
    ex.approve(v, req.export_id, ctx=ctx("erin", "dpo"))
    with pytest.raises(ExportError, match="requester"):
        ex.fetch(v, req.export_id, tmp_path / "x.csv", ctx=ctx("erin", "dpo"))
    info = ex.fetch(v, req.export_id, tmp_path / "x.parquet", ctx=ctx("carol", "approver"))
    assert info.status == "fetched" and info.rows and info.canaries == ex.canaries_needed(info.rows)
    import pyarrow.parquet as pq

    t = pq.read_table(tmp_path / "x.parquet")
    assert t.num_rows == info.rows + info.canaries
    assert all(i.startswith("11") for i in t.column("id_number").to_pylist())
    with pytest.raises(ExportError, match="fetched"):
        ex.fetch(v, req.export_id, tmp_path / "y.csv", ctx=ctx("carol", "approver"))
    from pivault.audit import entries

    ops = [e.operation for e in entries(v.db, principal="carol")]
    assert {"export.request", "export"} <= set(ops)
    assert "export.approve" in {e.operation for e in entries(v.db, principal="erin")}


def test_canary_rate() -> None:
    # any 200-row sample holds a canary with probability >= 1 - 1e-6
    for m in (1, 50, 199, 200, 500, 4200, 100_000, 10_000_000):
        k = ex.canaries_needed(m)
        assert ex.miss_probability(m, k) <= 1e-6
        assert k == ex.MIN_CANARIES or ex.miss_probability(m, k - 1) > 1e-6
    k = ex.canaries_needed(10_000_000)
    assert 0.066 < k / (10_000_000 + k) < 0.0668  # tends to 1 - 1e-6 ** (1/200)
    assert ex.canaries_needed(500) < 0.0668 * 500 / (1 - 0.0668)  # fewer without replacement


def test_export_requests_are_validated(scene: dict[str, object]) -> None:
    w: World = scene["world"]  # type: ignore[assignment]
    with pytest.raises(ValueError, match="traced"):
        ex.request(w.vault, ex.Selection(regions=("31",)), recipient="R", purpose="p",
                   fields=["notes"], ctx=ctx("x"))
    with pytest.raises(ValueError, match="selection"):
        ex.request(w.vault, ex.Selection(), recipient="R", purpose="p", fields=["name", "id_number"],
                   ctx=ctx("x"))
    sel = ex.Selection.parse(["region=31,3201", "born=1980-01-01..1989-12-31"])
    assert sel.regions == ("31", "3201") and sel.born_to is not None and sel.born_to.year == 1989


def test_worker_processes_give_the_same_result(scene: dict[str, object], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import pivault.leak.check as check_mod

    w: World = scene["world"]  # type: ignore[assignment]
    files: dict[str, Path] = scene["files"]  # type: ignore[assignment]
    monkeypatch.setattr(check_mod, "PARALLEL_BYTES", 0)
    one = check(w.vault, [files["A"], files["C"]], ctx=ctx("dpo-1", "dpo"), save=False, workers=1)
    two = check(w.vault, [files["A"], files["C"]], ctx=ctx("dpo-1", "dpo"), save=False, workers=2)
    a, b = one.to_dict(), two.to_dict()
    for key in ("case_id", "detected_at", "elapsed_seconds", "timeline"):
        a.pop(key)
        b.pop(key)
    assert a == b
    assert one.attribution is not None and len(one.attribution.named) == 2


def _served_masked(w: World, record_ids: list[str], principal: str) -> list[dict[str, str | None]]:
    """What the door served ``principal`` (masked: an officer sees no full value)."""
    return [w.vault.get(rid, ctx=ctx(principal, "officer")) for rid in record_ids]


def test_masked_copy_of_served_records_is_traced_by_record_id(scene: dict[str, object],
                                                              tmp_path: Path) -> None:
    """An insider scrapes masked lookups (record id and masked values, as the API answers) and
    the copy turns up: the masks leave no value the blind indexes can use, the ids confirm
    each resident, and the audit trail shows the reader as weak evidence only (whoever reads
    the audit trail could have written the same ids)."""
    import json

    w: World = scene["world"]  # type: ignore[assignment]
    officer: list[str] = scene["officer"]  # type: ignore[assignment]
    picked = random.Random(8).sample(officer, 150)
    served = _served_masked(w, picked, "officer-7")
    assert all("*" in (r["id_number"] or "") and "*" in (r["mobile"] or "*") for r in served)
    dump = tmp_path / "scrape.jsonl"
    dump.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in served), encoding="utf-8")
    res = check(w.vault, [dump], ctx=ctx("dpo-1", "dpo"), save=False)
    assert res.residents_matched == 150
    assert res.matched_by == {"record_id": 150}
    assert res.expected_false == 0
    assert res.record_ids_not_held == 0
    assert "record_id" not in res.fields_exposed  # an id is no PI of the resident
    assert res.attribution is not None
    assert res.attribution.named == [] and res.attribution.verdict == "weak"
    reader = [f for f in res.attribution.findings if f.source_id == "officer-7"]
    assert reader and reader[0].evidence["containment"] == 1.0
    assert "record ids" in reader[0].evidence["why_not_named"]

    # the answer saved as the API gave it: {"count": …, "records": […], "revealed": []}
    answer = tmp_path / "answer.json"
    answer.write_text(json.dumps({"count": len(served), "records": served, "revealed": []},
                                 ensure_ascii=False), encoding="utf-8")
    again = check(w.vault, [answer], ctx=ctx("dpo-1", "dpo"), save=False)
    assert again.residents_matched == 150 and again.matched_by == {"record_id": 150}

    # scraped answer by answer, one JSON line each (three records an answer)
    lines = tmp_path / "answers.jsonl"
    lines.write_text("".join(json.dumps({"count": 3, "records": served[i:i + 3], "revealed": []},
                                        ensure_ascii=False) + "\n" for i in range(0, 150, 3)),
                     encoding="utf-8")
    scraped = check(w.vault, [lines], ctx=ctx("dpo-1", "dpo"), save=False)
    assert scraped.rows_read == 150 and scraped.matched_by == {"record_id": 150}
    assert any("record by record" in n for t in scraped.tables for n in t["notes"])

    # the same masked values without their ids: nothing to match them by
    bare = tmp_path / "scrape-no-ids.jsonl"
    bare.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "record_id"},
                                       ensure_ascii=False) + "\n" for r in served), encoding="utf-8")
    assert check(w.vault, [bare], ctx=ctx("dpo-1", "dpo"), save=False).residents_matched == 0


def test_record_ids_the_vault_never_issued_confirm_nobody(scene: dict[str, object], tmp_path: Path) -> None:
    """Ids of the vault's form that it does not hold (made up, or of erased residents) are
    counted apart, never as residents, and name no source."""
    w: World = scene["world"]  # type: ignore[assignment]
    rng = random.Random(21)
    alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
    made_up = ["r_" + "".join(rng.choice(alphabet) for _ in range(26)) for _ in range(200)]
    held = w.vault.store.existing(made_up)
    assert not held
    officer: list[str] = scene["officer"]  # type: ignore[assignment]
    real = officer[:5]
    dump = tmp_path / "ids.csv"
    dump.write_text("record_id,gender\n" + "".join(f"{r},M\n" for r in made_up + real), encoding="utf-8")
    res = check(w.vault, [dump], ctx=ctx("dpo-1", "dpo"), save=False)
    assert res.record_ids_not_held == 200
    assert res.residents_matched == 5
    assert res.matched_by == {"record_id": 5}
    assert res.attribution is not None and not res.attribution.named


def test_record_ids_matched_in_worker_processes_give_the_same_result(
        scene: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import pivault.leak.check as check_mod

    w: World = scene["world"]  # type: ignore[assignment]
    officer: list[str] = scene["officer"]  # type: ignore[assignment]
    served = _served_masked(w, officer[:120], "officer-7")
    dump = tmp_path / "scrape.jsonl"
    dump.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in served * 3), encoding="utf-8")
    monkeypatch.setattr(check_mod, "PARALLEL_BYTES", 0)
    one = check(w.vault, [dump], ctx=ctx("dpo-1", "dpo"), save=False, workers=1)
    two = check(w.vault, [dump], ctx=ctx("dpo-1", "dpo"), save=False, workers=2)
    a, b = one.to_dict(), two.to_dict()
    for key in ("case_id", "detected_at", "elapsed_seconds", "timeline"):
        a.pop(key)
        b.pop(key)
    assert a == b
    assert one.residents_matched == 120 and one.rows_matched == 360


def test_vault_canaries_in_a_copy_are_evidence_not_residents(scene: dict[str, object],
                                                              tmp_path: Path) -> None:
    """Canaries are fictitious: a copy holding them counts them as evidence (found, never served) and
    leaves them out of the residents it affects, their regions and the list to notify, as ``stats``
    leaves them out of its counts."""
    w: World = scene["world"]  # type: ignore[assignment]
    v = w.vault
    canaries: list[str] = list(scene["canaries"])  # type: ignore[call-overload]
    never_left: list[str] = scene["never_left"]  # type: ignore[assignment]
    real = [r for r in never_left if r not in set(canaries)][:200]
    rows = [open_record(v.keyring, s) for s in v.store.get_many(real + canaries)]
    dump = tmp_path / "copy.csv"
    dump.write_text("name,id_number,mobile\n" + "".join(f"{r.name},{r.id_number},{r.mobile or ''}\n"
                                                        for r in rows), encoding="utf-8")
    res = check(v, [dump], ctx=ctx("dpo-1", "dpo"))
    assert res.vault_canaries["found"] == len(canaries) == 40
    assert res.residents_matched == 200
    assert sum(res.residents_by_region.values()) == 200
    assert res.residents_by_field["id_number"] == 200
    assert sorted(affected(v, res.case_id, ctx=ctx("dpo-1", "dpo"))) == sorted(real)


def test_a_vault_canary_met_again_in_a_later_batch_is_no_resident(scene: dict[str, object],
                                                                    tmp_path: Path) -> None:
    """A canary is set apart where it is first met; a second file (or a duplicated row in a later
    batch) holding it again must not count it among the residents affected."""
    w: World = scene["world"]  # type: ignore[assignment]
    v = w.vault
    canaries: list[str] = list(scene["canaries"])  # type: ignore[call-overload]
    never_left: list[str] = scene["never_left"]  # type: ignore[assignment]
    real = [r for r in never_left if r not in set(canaries)][:100]
    records = {s.record_id: open_record(v.keyring, s) for s in v.store.get_many(real + canaries)}

    def write(path: Path, ids: list[str]) -> Path:
        path.write_text("name,id_number,mobile\n" + "".join(
            f"{records[i].name},{records[i].id_number},{records[i].mobile or ''}\n" for i in ids),
            encoding="utf-8")
        return path

    first = write(tmp_path / "part1.csv", real + canaries)
    again = write(tmp_path / "part2.csv", canaries[:10] + real[:5])
    res = check(v, [first, again], ctx=ctx("dpo-1", "dpo"))
    assert res.vault_canaries["found"] == 40
    assert res.residents_matched == 100
    assert sum(res.residents_by_region.values()) == 100
    assert res.residents_by_field["id_number"] == 100
    assert sorted(affected(v, res.case_id, ctx=ctx("dpo-1", "dpo"))) == sorted(real)


def test_a_first_row_taken_for_a_header_keeps_no_pi_in_the_case(scene: dict[str, object],
                                                                 tmp_path: Path) -> None:
    """The first resident of a dump lacks an ID number and a mobile: their row is data, and
    nothing of it may reach the case (printed with ``--json``) as a column name."""
    w: World = scene["world"]  # type: ignore[assignment]
    never_left: list[str] = scene["never_left"]  # type: ignore[assignment]
    canaries = set(scene["canaries"])  # type: ignore[call-overload]
    by_id = {r.record_id: r for r in w.residents}
    rows = [by_id[r] for r in never_left if r in by_id and r not in canaries][:120]
    first = rows[0]
    assert first.address
    dump = tmp_path / "d.csv"
    dump.write_text(f"{first.name},,,{first.address}\n" + "".join(
        f"{r.name},{r.id_number},{r.mobile or ''},{r.address or ''}\n" for r in rows[1:]), encoding="utf-8")
    res = check(w.vault, [dump], ctx=ctx("dpo-1", "dpo"))
    assert res.rows_read == 120 and res.tables[0]["header"] is False
    saved = json.dumps(load_case(w.vault, res.case_id), ensure_ascii=False)
    assert first.name not in saved and first.address not in saved

    # notes using a header word still pass the row for a header: its values are masked
    noted = tmp_path / "noted.csv"
    noted.write_text(f"{first.name},,,{first.address},户籍迁入本市\n" + "".join(
        f"{r.name},{r.id_number},{r.mobile or ''},{r.address or ''},无\n" for r in rows[1:]),
        encoding="utf-8")
    res = check(w.vault, [noted], ctx=ctx("dpo-1", "dpo"))
    assert res.tables[0]["header"] is True
    headers = [c["header"] for c in res.tables[0]["columns"]]
    assert headers[0] == first.name[0] + "*" * (len(first.name) - 1) and headers[3].endswith("***")
    saved = json.dumps(load_case(w.vault, res.case_id), ensure_ascii=False)
    assert first.name not in saved and first.address not in saved


def test_a_fifo_as_dump_does_not_hang_the_check(scene: dict[str, object], tmp_path: Path) -> None:
    """A named pipe no one writes to (extracted from a hostile archive, or named by mistake)
    reads as an empty file at once: opening it must not wait for a writer forever."""
    import contextlib
    import os
    import threading

    from pivault.leak.readers import DumpError

    w: World = scene["world"]  # type: ignore[assignment]
    fifo = tmp_path / "dump.csv"
    os.mkfifo(fifo)
    got: list[BaseException] = []

    def run() -> None:
        try:
            check(w.vault, [fifo], ctx=ctx("dpo-1", "dpo"), save=False)
        except BaseException as exc:  # handed to the test's thread
            got.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():
        while t.is_alive():  # let each stuck open() return, so that the thread ends
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            t.join(0.2)
        pytest.fail("leak check waited for a writer of the FIFO")
    assert len(got) == 1 and isinstance(got[0], DumpError), got
    assert got[0].code == "dump.unread" and "empty" in got[0].message
