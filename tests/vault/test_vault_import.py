"""Import: formats, encodings, mapping, rejects with labelled codes, duplicates, reruns."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from vault_support import make_residents

from pivault.errors import ValidationError
from pivault.policy import AccessContext
from pivault.synth import write_population
from pivault.vault import Vault
from pivault.vault.mapping import MappingError, parse_mapping
from pivault.vault.readers import ReaderError


def _labels(path: Path) -> list[dict[str, object]]:
    lp = path.with_name(path.name + ".labels.jsonl")
    return [json.loads(line) for line in lp.read_text(encoding="utf-8").splitlines() if line]


@pytest.mark.parametrize(("suffix", "encoding"), [(".csv", "utf-8"), (".csv", "gb18030"),
                                                  (".jsonl", "utf-8"), (".parquet", "utf-8")])
def test_bad_rows_rejected_with_labelled_codes(sqlite_vault: Vault, tmp_path: Path, ctx: AccessContext,
                                               suffix: str, encoding: str) -> None:
    src = tmp_path / f"population{suffix}"
    synth = write_population(src, 6000, seed=21, bad_rate=0.05, encoding=encoding)
    labels = _labels(src)
    assert len(labels) == synth.bad_rows > 200
    summary = sqlite_vault.import_files([src], on_duplicate="reject", chunk_size=700)
    f = summary.files[0]
    assert f.encoding == (None if suffix == ".parquet" else encoding)
    assert summary.reconciles and f.read == 6000
    assert f.rejected == len(labels) and f.duplicates == 0
    assert f.imported == 6000 - len(labels) == sqlite_vault.store.count()
    rejects = sqlite_vault.rejects(ctx=ctx, limit=None)
    key = "row" if suffix == ".parquet" else "line"
    assert sorted((r["line"], r["code"]) for r in rejects) == sorted(
        (int(lb[key]), str(lb["expected_code"])) for lb in labels)  # type: ignore[call-overload]
    assert f.reject_codes == dict(sorted(collections.Counter(
        str(lb["expected_code"]) for lb in labels).items()))


def test_import_on_both_backends_and_rerun(vault: Vault, tmp_path: Path, ctx: AccessContext,
                                           reveal: AccessContext) -> None:
    src = tmp_path / "pop.csv"
    write_population(src, 3000, seed=4, bad_rate=0.02)
    first = vault.import_files([src], chunk_size=500)
    f = first.files[0]
    assert f.status == "imported" and first.reconciles and f.read == 3000
    assert vault.store.count() == f.imported
    assert _untagged(vault) == 0  # every entry carries its check tag
    again = vault.import_files([src], chunk_size=500)
    g = again.files[0]
    assert g.status == "already_imported" and g.batch_id == f.batch_id
    assert (g.read, g.imported, g.rejected, g.duplicates) == (f.read, f.imported, f.rejected, f.duplicates)
    assert vault.store.count() == f.imported
    # what went in comes out
    bad_rows = {int(lb["row"]) for lb in _labels(src)}  # type: ignore[call-overload]
    good = [r for i, r in enumerate(_rows_of(src), start=1) if i not in bad_rows][:20]
    for row in good:
        found = vault.find(id_number=row["id_number"], ctx=reveal)
        assert [x["name"] for x in found] == [row["name"]]


def _untagged(vault: Vault) -> int:
    """Blind-index entries without a check tag (there should be none from this pivault)."""
    n, untagged = vault.db.query_one(
        "SELECT COUNT(*), SUM(CASE WHEN tag IS NULL THEN 1 ELSE 0 END) FROM blind_index") or (0, 0)
    assert n > 0
    return int(untagged or 0)


def _rows_of(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _write_csv(path: Path, header: list[str], rows: list[list[str]], encoding: str = "utf-8",
               delimiter: str = ",") -> None:
    with open(path, "w", encoding=encoding, newline="") as fh:
        fh.write(delimiter.join(header) + "\n")
        for r in rows:
            fh.write(delimiter.join(r) + "\n")


def test_chinese_headers_bom_gb18030_tsv(sqlite_vault: Vault, tmp_path: Path, reveal: AccessContext) -> None:
    people = make_residents(9, seed=31)
    header = ["姓名", "公民身份号码", "手机号码", "家庭住址", "备注", "性别"]
    cells = [[p["name"], p["id_number"], p["mobile"], p["address"], p["notes"], "男"] for p in people]
    _write_csv(tmp_path / "a.csv", header, cells[:3], encoding="utf-8-sig")
    _write_csv(tmp_path / "b.csv", header, cells[3:6], encoding="gb18030")
    _write_csv(tmp_path / "c.tsv", header, cells[6:], delimiter="\t")
    summary = sqlite_vault.import_files([tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.tsv"])
    assert [f.encoding for f in summary.files] == ["utf-8-sig", "gb18030", "utf-8"]
    assert [f.format for f in summary.files] == ["csv", "csv", "tsv"]
    assert summary.imported == 9 and summary.rejected == 0
    assert summary.files[0].ignored_columns == ["性别"]
    for p in people:
        got = sqlite_vault.find(id_number=p["id_number"], ctx=reveal)
        assert got[0]["name"] == p["name"] and got[0]["address"] == p["address"]


def test_explicit_mapping_and_unknown_header(sqlite_vault: Vault, tmp_path: Path) -> None:
    people = make_residents(3, seed=32)
    src = tmp_path / "custom.csv"
    _write_csv(src, ["人员", "证件", "序号"],
               [[p["name"], p["id_number"], str(i)] for i, p in enumerate(people)])
    with pytest.raises(MappingError) as info:
        sqlite_vault.import_files([src])
    assert info.value.code == "import.header"
    # named by position and kind: a header's text may be a resident's data
    assert "#1 (Chinese text), #2 (Chinese text), #3 (Chinese text)" in info.value.message
    assert "人员" not in info.value.message and "--map" in info.value.hint
    assert sqlite_vault.store.count() == 0
    assert sqlite_vault.db.query("SELECT COUNT(*) FROM import_batches")[0][0] == 0
    summary = sqlite_vault.import_files([src], mapping=parse_mapping(["name=人员,id_number=证件"]),
                                        ignore=["序号"])
    assert summary.imported == 3
    with pytest.raises(MappingError):
        parse_mapping(["nickname=昵称"])


def test_header_that_is_data_is_refused_without_echo(sqlite_vault: Vault, tmp_path: Path) -> None:
    p = make_residents(2, seed=33)
    src = tmp_path / "noheader.csv"
    _write_csv(src, [p[0]["name"], p[0]["id_number"]], [[p[1]["name"], p[1]["id_number"]]])
    with pytest.raises(MappingError) as info:
        sqlite_vault.import_files([src])
    assert info.value.code == "import.no_header"
    assert p[0]["id_number"] not in str(info.value) and p[0]["name"] not in str(info.value)


def test_one_bad_file_stops_before_any_import(sqlite_vault: Vault, tmp_path: Path) -> None:
    people = make_residents(2, seed=34)
    good = tmp_path / "good.csv"
    _write_csv(good, ["name", "id_number"], [[p["name"], p["id_number"]] for p in people])
    bad = tmp_path / "bad.csv"
    _write_csv(bad, ["name", "shoe_size"], [["x", "42"]])
    with pytest.raises(MappingError):
        sqlite_vault.import_files([good, bad])
    assert sqlite_vault.store.count() == 0
    with pytest.raises(ReaderError):
        sqlite_vault.import_files([tmp_path / "missing.csv"])
    for workers in (-1, 1000):
        with pytest.raises(ValidationError) as info:
            sqlite_vault.import_files([good], workers=workers)
        assert info.value.code == "import.workers"
    assert sqlite_vault.db.query("SELECT COUNT(*) FROM import_batches")[0][0] == 0


def test_undecodable_bytes_and_structural_errors_are_rejects(sqlite_vault: Vault, tmp_path: Path,
                                                             ctx: AccessContext) -> None:
    people = make_residents(4, seed=35)
    src = tmp_path / "mixed.csv"
    lines = [b"name,id_number,mobile"]
    lines.append(",".join([people[0]["name"], people[0]["id_number"], people[0]["mobile"]]).encode())
    lines.append(",".join([people[1]["name"], people[1]["id_number"]]).encode())           # 2 fields
    lines.append(people[2]["name"].encode() + b"\xff\xfe," + people[2]["id_number"].encode() + b",")
    lines.append(b'"' + people[3]["name"].encode() + b'"x,' + people[3]["id_number"].encode() + b",")
    lines.append(b"")
    src.write_bytes(b"\n".join(lines) + b"\n")
    f = sqlite_vault.import_files([src], encoding="utf-8").files[0]
    assert (f.read, f.imported, f.rejected) == (4, 1, 3)
    assert [(r["line"], r["code"]) for r in sqlite_vault.rejects(ctx=ctx)] == [
        (3, "csv.fields"), (4, "encoding"), (5, "csv.quoting")]


def test_jsonl_and_parquet(sqlite_vault: Vault, tmp_path: Path, reveal: AccessContext) -> None:
    people = make_residents(6, seed=36)
    js = tmp_path / "p.jsonl"
    objs = [{"full_name": p["name"], "sfzh": p["id_number"], "phone": int(p["mobile"])}
            for p in people[:3]]
    del objs[0]["phone"]  # a writer that leaves out empty keys
    js.write_text("\n".join(json.dumps(o, ensure_ascii=False) for o in objs)
                  + "\n[1,2]\n{broken\n", encoding="utf-8")
    pq_path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"name": [p["name"] for p in people[3:]],
                             "id_number": [p["id_number"] for p in people[3:]],
                             "mobile": [p["mobile"] for p in people[3:]]}), pq_path, row_group_size=2)
    summary = sqlite_vault.import_files([js, pq_path])
    assert [(f.format, f.read, f.imported, f.rejected) for f in summary.files] == [
        ("jsonl", 5, 3, 2), ("parquet", 3, 3, 0)]
    assert summary.files[0].reject_codes == {"json.syntax": 1, "json.type": 1}
    for p in people[1:]:
        assert sqlite_vault.find(mobile=p["mobile"], ctx=reveal)[0]["name"] == p["name"]
    assert sqlite_vault.find(id_number=people[0]["id_number"], ctx=reveal)[0]["mobile"] is None


@pytest.mark.parametrize("policy", ["skip", "update", "reject"])
def test_duplicate_policies(vault: Vault, tmp_path: Path, ctx: AccessContext, reveal: AccessContext,
                            policy: str) -> None:
    people = make_residents(4, seed=37)
    existing = vault.put(people[0], ctx=ctx)
    src = tmp_path / "dups.csv"
    rows = [
        [people[0]["name"], people[0]["id_number"], "13911112222"],   # already in the vault
        [people[1]["name"], people[1]["id_number"], people[1]["mobile"]],
        [people[1]["name"], people[1]["id_number"], "13933334444"],   # repeats row 2 of the file
        [people[2]["name"], people[2]["id_number"], people[2]["mobile"]],
    ]
    _write_csv(src, ["name", "id_number", "mobile"], rows)
    f = vault.import_files([src], on_duplicate=policy).files[0]  # type: ignore[arg-type]
    assert f.read == 4 and f.reconciles
    if policy == "skip":
        assert (f.imported, f.duplicates, f.updated, f.rejected) == (2, 2, 0, 0)
        assert vault.get(existing, ctx=reveal)["mobile"] == people[0]["mobile"]
    elif policy == "update":
        assert (f.imported, f.duplicates, f.updated, f.rejected) == (2, 2, 2, 0)
        got = vault.get(existing, ctx=reveal)
        assert got["mobile"] == "13911112222"
        assert got["address"] == people[0]["address"]  # not in the file: kept
        assert vault.find(mobile="13933334444", ctx=reveal)[0]["id_number"] == people[1]["id_number"]
        assert vault.find(mobile=people[0]["mobile"], ctx=ctx) == []
    else:
        assert (f.imported, f.duplicates, f.updated, f.rejected) == (2, 0, 0, 2)
        assert f.reject_codes == {"duplicate": 2}
        assert [r["line"] for r in vault.rejects(ctx=ctx)] == [2, 4]
    assert vault.store.count() == 3
    assert _untagged(vault) == 0  # also the entries an update rewrote


def test_rejects_are_encrypted_and_masked(sqlite_vault: Vault, tmp_path: Path, ctx: AccessContext,
                                          reveal: AccessContext) -> None:
    p = make_residents(1, seed=38)[0]
    src = tmp_path / "r.csv"
    _write_csv(src, ["name", "id_number", "mobile"], [[p["name"], p["id_number"], "12345"]])
    sqlite_vault.import_files([src])
    raw = sqlite_vault.db.query("SELECT raw_row FROM import_rejects")
    assert len(raw) == 1
    blob = bytes(raw[0][0])
    for v in (p["name"], p["id_number"], "12345"):
        assert v.encode() not in blob
    masked = sqlite_vault.rejects(ctx=ctx)[0]
    assert masked["code"] == "mobile.length" and masked["field"] == "mobile" and masked["line"] == 2
    assert masked["cells"]["id_number"] != p["id_number"] and masked["cells"]["name"] != p["name"]
    full = sqlite_vault.rejects(ctx=reveal)[0]
    assert full["cells"] == {"name": p["name"], "id_number": p["id_number"], "mobile": "12345"}


def test_worker_processes_give_the_same_result(sqlite_url: str, tmp_path: Path, ctx: AccessContext) -> None:
    from vault_support import new_keyring

    from pivault.store.db import Database

    src = tmp_path / "w.csv"
    write_population(src, 4000, seed=41, bad_rate=0.03)
    results = []
    for workers in (0, 2):
        d = tmp_path / f"w{workers}"
        d.mkdir()
        db = Database(f"sqlite:///{d / 'vault.db'}")
        v = Vault.initialise(db, new_keyring(tmp_path / "keys" / f"w{workers}.keyring"))
        f = v.import_files([src], workers=workers, chunk_size=300, on_duplicate="reject").files[0]
        assert f.workers == workers
        assert _untagged(v) == 0  # the forked workers computed the tags
        results.append((f.read, f.imported, f.rejected, f.duplicates, f.reject_codes,
                        sorted((r["line"], r["code"]) for r in v.rejects(ctx=ctx, limit=None))))
        db.close()
    assert results[0] == results[1]


def test_second_importer_of_the_same_batch_stops(sqlite_vault: Vault, tmp_path: Path) -> None:
    from pivault.vault.imports import ImportConflict, ImportProgress

    src = tmp_path / "c.csv"
    write_population(src, 900, seed=42)
    db = sqlite_vault.db

    def meddle(p: ImportProgress) -> None:
        # another process commits a chunk of the same batch behind our back
        db.execute("UPDATE import_batches SET rows_consumed = rows_consumed + 1")

    with pytest.raises(ImportConflict):
        sqlite_vault.import_files([src], chunk_size=300, progress=meddle)
    assert sqlite_vault.store.count() == 300  # the first chunk, once


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_readers_stream_in_flat_memory(tmp_path: Path, suffix: str) -> None:
    """Peak memory while reading does not grow with the file."""
    import tracemalloc

    from pivault.vault.imports import _chunks
    from pivault.vault.readers import open_source

    peaks = []
    for n in (2_000, 20_000):
        src = tmp_path / f"m{n}{suffix}"
        write_population(src, n, seed=43)
        source = open_source(src)
        arrow_peak = 0
        tracemalloc.start()
        rows = 0
        for chunk in _chunks(source.rows(), 500):
            rows += len(chunk)
            arrow_peak = max(arrow_peak, pa.total_allocated_bytes())
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert rows == n
        peaks.append(peak + arrow_peak)
    assert peaks[1] < 1.5 * peaks[0] + 512 * 1024, peaks
