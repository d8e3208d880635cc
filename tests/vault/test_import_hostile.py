"""Import of hostile and careless files: what a broken or malicious source must not do to the vault.

Every row still ends up in exactly one place (a record, a reject with its
line and code, or the duplicate count), memory stays flat, no traceback
reaches the operator, and no value is left in the clear anywhere.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from pivault.policy import AccessContext
from pivault.synth import generate
from pivault.vault import Vault
from pivault.vault.imports import ImportSummary
from pivault.vault.readers import ROW_LIMIT

MiB = 1 << 20


def _people(n: int, seed: int) -> list[dict[str, str]]:
    """Synthetic adults (every one has a mobile number)."""
    return [{k: str(v) for k, v in r.items()} for r in generate(n * 3, seed) if r["mobile"]][:n]


def _csv_line(p: dict[str, str], notes: str = "") -> str:
    return f"{p['name']},{p['id_number']},{p['mobile']},{notes}\n"


def _import_traced(vault: Vault, path: Path) -> tuple[ImportSummary, int]:
    tracemalloc.start()
    try:
        summary = vault.import_files([path], workers=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return summary, peak


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_huge_line_is_one_reject_read_in_flat_memory(sqlite_vault: Vault, tmp_path: Path,
                                                       ctx: AccessContext, suffix: str) -> None:
    """A 24 MiB line (a broken export, or a file built to exhaust memory) costs a few MiB, not its size."""
    a, b, c = _people(3, seed=71)
    huge = "x" * (6 * ROW_LIMIT)
    src = tmp_path / f"long{suffix}"
    with open(src, "w", encoding="utf-8") as fh:
        if suffix == ".csv":
            fh.write("name,id_number,mobile,notes\n")
            fh.write(_csv_line(a) + _csv_line(b, huge) + _csv_line(c))
        else:
            for p, notes in ((a, ""), (b, huge), (c, "")):
                fh.write(json.dumps({"name": p["name"], "id_number": p["id_number"],
                                     "mobile": p["mobile"], "notes": notes}, ensure_ascii=False) + "\n")
    summary, peak = _import_traced(sqlite_vault, src)
    assert peak < 4 * ROW_LIMIT, f"peak {peak / MiB:.1f} MiB for a {len(huge) / MiB:.0f} MiB line"
    # the reject keeps enough of the row to find it, not the whole of it
    (size,) = sqlite_vault.db.query_one("SELECT LENGTH(raw_row) FROM import_rejects")
    assert size < MiB
    f = summary.files[0]
    assert (f.read, f.imported, f.rejected, f.duplicates) == (3, 2, 1, 0) and f.reconciles
    line = 3 if suffix == ".csv" else 2
    rejects = sqlite_vault.rejects(ctx=ctx)
    assert [(r["line"], r["code"]) for r in rejects] == [(line, "row.size")]
    assert sqlite_vault.find(id_number=c["id_number"], ctx=ctx)


def test_a_row_after_a_huge_line_keeps_its_line_number(sqlite_vault: Vault, tmp_path: Path,
                                                       ctx: AccessContext) -> None:
    """Lines cut short (CRLF endings too) are counted once, so later rejects name the right line."""
    a, b = _people(2, seed=72)
    src = tmp_path / "crlf.csv"
    with open(src, "w", encoding="utf-8", newline="") as fh:
        fh.write("name,id_number,mobile,notes\r\n")
        fh.write(_csv_line(a, "y" * (ROW_LIMIT + 5)).replace("\n", "\r\n"))
        fh.write(f"{b['name']},{b['id_number']},12345,\r\n")  # mobile.length, on line 3
    f = sqlite_vault.import_files([src], workers=0).files[0]
    assert (f.read, f.imported, f.rejected) == (2, 0, 2)
    assert [(r["line"], r["code"]) for r in sqlite_vault.rejects(ctx=ctx)] == [
        (2, "row.size"), (3, "mobile.length")]


def test_chunks_are_cut_by_their_text_too() -> None:
    from pivault.vault.imports import _chunks
    from pivault.vault.readers import RawRow

    rows = (RawRow(i, ["x" * MiB, None], None) for i in range(40))
    sizes = [len(c) for c in _chunks(rows, 10_000, max_chars=8 * MiB)]
    assert sum(sizes) == 40 and max(sizes) == 8


@pytest.mark.parametrize("where", ["first", "late"])
def test_json_nested_too_deep_is_a_reject_not_a_crash(sqlite_vault: Vault, tmp_path: Path,
                                                      ctx: AccessContext, where: str) -> None:
    """Nesting past the parser's depth raised RecursionError: a traceback, a batch never finished."""
    people = _people(3, seed=73)
    deep = '{"name": ' + "[" * 100_000 + "]" * 100_000 + "}"
    good = [json.dumps({"name": p["name"], "id_number": p["id_number"], "mobile": p["mobile"]},
                       ensure_ascii=False) for p in people]
    lines = [deep, *good] if where == "first" else [*good, deep]
    src = tmp_path / "deep.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    f = sqlite_vault.import_files([src], workers=0).files[0]
    assert (f.read, f.imported, f.rejected) == (4, 3, 1) and f.reconciles
    line = 1 if where == "first" else 4
    assert [(r["line"], r["code"]) for r in sqlite_vault.rejects(ctx=ctx)] == [(line, "json.syntax")]


def _parquet(path: Path, people: list[dict[str, str]], notes: list[object], **kw: object) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"name": [p["name"] for p in people],
                             "id_number": [p["id_number"] for p in people],
                             "notes": notes}), path, **kw)  # type: ignore[arg-type]


def test_parquet_that_expands_past_its_size_is_refused_before_any_row(sqlite_vault: Vault,
                                                                      tmp_path: Path) -> None:
    """A few KB of zstd that inflate to a 64 MiB value: refused from the file's own figures."""
    from pivault.vault.readers import ReaderError

    people = _people(2, seed=74)
    src = tmp_path / "bomb.parquet"
    _parquet(src, people, ["x" * (64 * MiB), ""], compression="zstd")
    assert src.stat().st_size < 64 * 1024
    with pytest.raises(ReaderError) as info:
        sqlite_vault.import_files([src], workers=0)
    assert info.value.code == "import.format" and "decompression bomb" in info.value.message
    assert sqlite_vault.store.count() == 0
    assert sqlite_vault.db.query_one("SELECT COUNT(*) FROM import_batches")[0] == 0


def test_parquet_that_expands_only_past_its_first_rows_does_not_say_nothing_was_imported(
        sqlite_vault: Vault, tmp_path: Path) -> None:
    """A bomb in a later row group: the chunks before it were committed, yet the refusal was
    the whole-file error (`import.format`, "nothing imported"). It is now the error of an
    unreadable part past the start, which says the rows before it are kept; a rerun stops at
    the same place without importing anything twice."""
    import secrets

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pivault.vault.readers import UnreadableRows

    people = _people(600, seed=76)
    long = secrets.token_hex(128 * 1024)
    head = pa.table({"name": [p["name"] for p in people[:300]],
                     "id_number": [p["id_number"] for p in people[:300]],
                     "notes": pa.array(["" for _ in range(300)])})
    tail = pa.table({"name": [p["name"] for p in people[300:]],
                     "id_number": [p["id_number"] for p in people[300:]],
                     "notes": pa.DictionaryArray.from_arrays(pa.array([0] * 300, pa.int32()),
                                                             pa.array([long])).cast(pa.string())})
    src = tmp_path / "late-bomb.parquet"
    with pq.ParquetWriter(src, head.schema) as w:
        w.write_table(head, row_group_size=100)
        w.write_table(tail, row_group_size=300)
    for _ in range(2):
        with pytest.raises(UnreadableRows) as info:
            sqlite_vault.import_files([src], workers=0, chunk_size=50)
        assert info.value.code == "import.unreadable" and "decompression bomb" in info.value.message
        assert "rows 301-600" in info.value.message and "kept" in (info.value.hint or "")
        assert sqlite_vault.store.count() == 300  # the rows before the bomb, once


def test_parquet_dictionary_that_repeats_a_long_value_is_refused(sqlite_vault: Vault,
                                                                 tmp_path: Path) -> None:
    """One 256 KiB value stored once and named by 300 rows: 75 MiB of text from a small file."""
    import secrets

    import pyarrow as pa

    from pivault.vault.readers import ReaderError

    people = _people(300, seed=75)
    long = secrets.token_hex(128 * 1024)  # random: it does not compress
    notes = pa.DictionaryArray.from_arrays(pa.array([0] * len(people), pa.int32()), pa.array([long]))
    src = tmp_path / "dict.parquet"
    _parquet(src, people, notes)  # type: ignore[arg-type]
    assert src.stat().st_size < MiB
    with pytest.raises(ReaderError) as info:
        sqlite_vault.import_files([src], workers=0)
    assert info.value.code == "import.format"
    assert sqlite_vault.store.count() == 0
    assert sqlite_vault.db.query_one("SELECT COUNT(*) FROM import_rejects")[0] == 0


def test_parquet_row_over_the_limit_is_a_small_reject(sqlite_vault: Vault, tmp_path: Path,
                                                      ctx: AccessContext) -> None:
    import secrets

    people = _people(3, seed=76)
    src = tmp_path / "long.parquet"
    _parquet(src, people, ["", secrets.token_hex(3 * MiB), ""])  # 6 MiB, incompressible
    summary, peak = _import_traced(sqlite_vault, src)
    assert peak < 4 * ROW_LIMIT, f"peak {peak / MiB:.1f} MiB"
    (size,) = sqlite_vault.db.query_one("SELECT LENGTH(raw_row) FROM import_rejects")
    assert size < MiB
    f = summary.files[0]
    assert (f.read, f.imported, f.rejected) == (3, 2, 1) and f.reconciles
    (reject,) = sqlite_vault.rejects(ctx=ctx)
    assert (reject["line"], reject["code"]) == (2, "row.size")


@pytest.mark.parametrize("kind", ["list", "struct"])
def test_parquet_column_of_lists_or_records_is_refused_before_any_row(sqlite_vault: Vault, tmp_path: Path,
                                                                      ctx: AccessContext, kind: str) -> None:
    """A nested column was imported as Python's repr of it ("['…', '…']") without a word."""
    from pivault.vault.readers import ReaderError

    people = _people(2, seed=77)
    notes: list[object] = ([["合成", "备注"], []] if kind == "list"
                           else [{"text": "合成备注"}, {"text": ""}])
    src = tmp_path / "nested.parquet"
    _parquet(src, people, notes)
    with pytest.raises(ReaderError) as info:
        sqlite_vault.import_files([src], workers=0)
    assert info.value.code == "import.mapping" and "#3" in info.value.message, info.value.message
    assert sqlite_vault.store.count() == 0
    # left out, the file imports
    f = sqlite_vault.import_files([src], workers=0, ignore=["notes"]).files[0]
    assert (f.read, f.imported) == (2, 2)
    assert sqlite_vault.find(id_number=people[0]["id_number"], ctx=ctx)


def test_json_object_naming_a_key_twice_is_a_reject(sqlite_vault: Vault, tmp_path: Path,
                                                    ctx: AccessContext) -> None:
    """{"id_number": A, …, "id_number": B}: other readers take A, json.loads took B without a word."""
    a, b, c = _people(3, seed=78)
    src = tmp_path / "twice.jsonl"
    src.write_text(
        json.dumps({"name": a["name"], "id_number": a["id_number"]}, ensure_ascii=False) + "\n"
        + f'{{"name": "{b["name"]}", "id_number": "{b["id_number"]}", "id_number": "{c["id_number"]}"}}\n',
        encoding="utf-8")
    f = sqlite_vault.import_files([src], workers=0).files[0]
    assert (f.read, f.imported, f.rejected) == (2, 1, 1) and f.reconciles
    assert [(r["line"], r["code"]) for r in sqlite_vault.rejects(ctx=ctx)] == [(2, "json.fields")]
    assert not sqlite_vault.find(id_number=c["id_number"], ctx=ctx)


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_path_that_is_not_a_regular_file_is_named_for_what_it_is(sqlite_vault: Vault, tmp_path: Path,
                                                                   kind: str) -> None:
    """A FIFO is never opened (that would wait for a writer); neither is reported as missing."""
    import os

    from pivault.vault.readers import ReaderError

    src = tmp_path / "people.csv"
    if kind == "directory":
        src.mkdir()
    else:
        os.mkfifo(src)
    with pytest.raises(ReaderError) as info:
        sqlite_vault.import_files([src], workers=0)
    assert info.value.code == "import.file"
    assert "not a regular file" in info.value.message and "no such file" not in info.value.message


def test_a_file_rewritten_during_its_import_stops_it_before_rows_of_the_new_content(
        sqlite_vault: Vault, tmp_path: Path, ctx: AccessContext) -> None:
    """The batch is named by the content hashed at the start, and resumes by a row count: a chunk
    read from other content, committed under it, would be skipped when the file itself is imported
    again (its rows never imported, the summary reconciling all the same)."""
    from pivault.errors import PivaultError
    from pivault.vault.imports import ImportProgress

    people = _people(2400, seed=79)
    header = "name,id_number,mobile,notes\n"
    src = tmp_path / "moving.csv"
    src.write_text(header + "".join(_csv_line(p) for p in people[:1200]), encoding="utf-8")
    original = src.read_bytes()

    def rewrite(p: ImportProgress) -> None:
        if p.read == 300:  # another program writes the file while pivault reads it
            src.write_text(header + "".join(_csv_line(q) for q in people[1200:]), encoding="utf-8")

    with pytest.raises(PivaultError) as info:
        sqlite_vault.import_files([src], workers=0, chunk_size=300, progress=rewrite)
    assert info.value.code == "import.changed"
    assert sqlite_vault.db.query("SELECT status, rows_consumed FROM import_batches") == [("running", 300)]
    src.write_bytes(original)  # the file as it was when the import began: the same batch, resumed
    f = sqlite_vault.import_files([src], workers=0, chunk_size=300).files[0]
    assert (f.status, f.read, f.imported, f.duplicates) == ("resumed", 1200, 1200, 0) and f.reconciles
    missing = [p for p in people[:1200] if not sqlite_vault.find(id_number=p["id_number"], ctx=ctx)]
    assert not missing, f"{len(missing)} rows of the file were never imported"
    assert not sqlite_vault.find(id_number=people[1200]["id_number"], ctx=ctx)


def test_rejects_show_masks_cells_under_columns_that_are_not_fields(sqlite_vault: Vault, tmp_path: Path,
                                                                    ctx: AccessContext) -> None:
    """A row shifted by one field puts a mobile number under 'gender', a column left out because the
    ID number gives it: the masked listing showed it whole, as a gender is shown."""
    p = _people(1, seed=80)[0]
    src = tmp_path / "shifted.csv"
    row = f"1,{p['name']},{p['id_number']},{p['mobile']},{p['id_number'][:6]},男\n"
    src.write_text("name,id_number,mobile,gender,region_code\n" + row, encoding="utf-8")
    f = sqlite_vault.import_files([src], workers=0).files[0]
    assert (f.rejected, f.reject_codes) == (1, {"csv.fields": 1})
    (reject,) = sqlite_vault.rejects(ctx=ctx)
    shown = json.dumps(reject, ensure_ascii=False)
    for value in (p["name"], p["id_number"], p["mobile"], p["id_number"][:6]):
        assert value not in shown, f"{reject['cells']}"


def test_json_escape_of_a_lone_surrogate_is_a_reject_not_a_crash(sqlite_vault: Vault, tmp_path: Path,
                                                                  ctx: AccessContext) -> None:
    """JSON may write half of a UTF-16 pair ("\\ud800") on its own: that is no character, and
    sealing the notes or address that held it failed with a traceback, on every rerun of the batch."""
    people = _people(4, seed=81)
    objs = [{"name": p["name"], "id_number": p["id_number"], "mobile": p["mobile"], "address": "",
             "notes": ""} for p in people]
    objs[1]["notes"] = "合成\ud800"
    objs[2]["address"] = "北京市东城区\udc80"
    src = tmp_path / "surrogates.jsonl"
    # ensure_ascii writes each lone surrogate as a \uXXXX escape, as a careless writer would
    src.write_text("".join(json.dumps(o) + "\n" for o in objs), encoding="utf-8")
    f = sqlite_vault.import_files([src], workers=0).files[0]
    assert (f.read, f.imported, f.rejected) == (4, 2, 2) and f.reconciles
    assert [(r["line"], r["code"]) for r in sqlite_vault.rejects(ctx=ctx)] == [
        (2, "notes.chars"), (3, "address.chars")]
    assert sqlite_vault.find(id_number=people[3]["id_number"], ctx=ctx)


def _string_column(values: list[bytes]) -> Any:
    """A Parquet STRING column holding these bytes as they are, UTF-8 or not (as a careless exporter
    writes GBK text into a UTF-8 column: Arrow checks nothing when a file is written from buffers)."""
    import itertools

    import pyarrow as pa

    offsets = pa.array([0, *itertools.accumulate(map(len, values))], pa.int32())
    return pa.Array.from_buffers(pa.string(), len(values),
                                 [None, offsets.buffers()[1], pa.py_buffer(b"".join(values))])


@pytest.mark.parametrize("kind", ["plain", "dictionary", "long"])
def test_parquet_text_that_is_not_utf8_is_an_encoding_reject(sqlite_vault: Vault, tmp_path: Path,
                                                            ctx: AccessContext, kind: str) -> None:
    """A STRING column is UTF-8 by Parquet's rules, but GBK bytes in one stopped the import with
    Python's UnicodeDecodeError (a traceback) at the same row on every rerun."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    people = _people(4, seed=82)
    names = [p["name"].encode("utf-8") for p in people]
    names[1] = people[1]["name"].encode("gbk")
    if kind == "long":  # a row over the limit, cut to its head in Arrow before it is decoded
        names[2] = people[2]["name"].encode("gbk") + b"x" * (ROW_LIMIT + 1)
    column = _string_column(names)
    if kind == "dictionary":
        column = column.dictionary_encode()
    src = tmp_path / f"gbk_{kind}.parquet"
    pq.write_table(pa.table({"name": column, "id_number": [p["id_number"] for p in people]}), src)
    f = sqlite_vault.import_files([src], workers=0).files[0]
    expected = [(2, "encoding")] + ([(3, "row.size")] if kind == "long" else [])
    assert (f.read, f.imported, f.rejected) == (4, 4 - len(expected), len(expected)) and f.reconciles
    assert [(r["line"], r["code"]) for r in sqlite_vault.rejects(ctx=ctx)] == expected
    assert sqlite_vault.find(id_number=people[3]["id_number"], ctx=ctx)


@pytest.mark.parametrize("damage", ["page", "arrow", "year"])
def test_an_unreadable_parquet_row_group_stops_the_import_with_one_clear_error(
        sqlite_vault: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    """Bytes of a data page changed on the way (a bad disk, a copy cut and patched): Arrow's own
    OSError reached the operator as "error[io]: OSError", and its ArrowInvalid, its IndexError and
    Python's OverflowError (a timestamp past the year 9999) as a traceback. The rows before the
    damage are kept, and the error says where it is."""
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pivault.vault.readers import UnreadableRows

    people = _people(300, seed=83)
    src = tmp_path / "damaged.parquet"
    notes = pa.array([dt.datetime(2020, 1, 1)] * 300, pa.timestamp("s"))
    if damage == "year":
        notes = pa.array([0] * 150 + [1 << 40] + [0] * 149, pa.timestamp("s"))  # row 151
    pq.write_table(pa.table({"name": [p["name"] for p in people],
                             "id_number": [p["id_number"] for p in people], "notes": notes}),
                   src, row_group_size=100, compression="snappy")
    if damage == "page":
        start = pq.ParquetFile(src).metadata.row_group(1).column(0).data_page_offset  # rows 101-200
        data = bytearray(src.read_bytes())
        for i in range(start + 8, start + 40):
            data[i] ^= 0x5A
        src.write_bytes(bytes(data))
    elif damage == "arrow":
        real = pq.ParquetFile.iter_batches

        def failing(self: pq.ParquetFile, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("row_groups") == [1]:
                raise pa.ArrowInvalid("a message that may quote a value")
            return real(self, *args, **kwargs)

        monkeypatch.setattr(pq.ParquetFile, "iter_batches", failing)
    with pytest.raises(UnreadableRows) as info:
        sqlite_vault.import_files([src], workers=0, chunk_size=50)
    assert info.value.code == "import.unreadable" and "quote" not in info.value.message
    assert "damaged" in info.value.message and "rows 101-200" in info.value.message, info.value.message
    assert sqlite_vault.store.count() == 100  # the first row group, committed before the damage
    assert sqlite_vault.db.query("SELECT status, rows_consumed FROM import_batches") == [("running", 100)]
    # run again, it stops at the same place, having imported nothing twice
    with pytest.raises(UnreadableRows):
        sqlite_vault.import_files([src], workers=0, chunk_size=50)
    assert sqlite_vault.store.count() == 100


def test_rejects_show_hides_cells_that_do_not_have_their_fields_shape(sqlite_vault: Vault, tmp_path: Path,
                                                                     ctx: AccessContext) -> None:
    """A delimiter lost between two fields puts a name after an ID number or a mobile number in one
    cell. Their masks keep the last four characters, made for a number's last digits: the masked
    listing showed the name whole ("310**************3冯英娟")."""
    a, b, c = _people(3, seed=84)
    src = tmp_path / "run_together.csv"
    src.write_text("name,id_number,mobile,address\n"
                   f"{a['name']},{a['id_number']}{b['name']},{a['mobile']},\n"
                   f"{b['name']},{b['id_number']},{b['mobile']}{c['name']},\n"
                   f"{c['name']},{c['id_number']}0,{c['mobile']}0,\n", encoding="utf-8")
    f = sqlite_vault.import_files([src], workers=0).files[0]
    assert (f.read, f.rejected) == (3, 3)
    rejects = sqlite_vault.rejects(ctx=ctx)
    shown = json.dumps(rejects, ensure_ascii=False)
    for p in (a, b, c):
        for value in (p["name"], p["id_number"], p["mobile"]):
            assert value not in shown, [r["cells"] for r in rejects]
    # a number that is only wrong (one digit too many) keeps its usual mask
    last = rejects[-1]["cells"]
    assert last["id_number"].startswith(c["id_number"][:3]) and last["mobile"].startswith(c["mobile"][:3])


@pytest.mark.parametrize("closed_by", ["end_of_file", "a_later_quote", "the_field_limit"])
def test_a_quote_never_closed_takes_only_its_own_line(sqlite_vault: Vault, tmp_path: Path,
                                                      ctx: AccessContext, closed_by: str) -> None:
    """One stray quote opening a field ("引用…) made every line after it, to the next quote or the
    end of the file, part of that one field: 1,995 residents became a single csv.quoting reject,
    and the summary reconciled. The line where the quote opened is the reject; the reader goes on
    with the line after it."""
    people = _people(2000 if closed_by != "the_field_limit" else 6000, seed=85)
    # past 1 MiB of lines the field is too large (csv.field_size) before anything closes it
    notes = ["合成备注" * (60 if closed_by == "the_field_limit" else 0)] * len(people)
    notes[4] = '"引用'  # line 6: the quote opens a field and is never closed well
    if closed_by == "a_later_quote":
        notes[1500] = '"合成,备注"'  # line 1502: a good quoted field, whose first quote ends the stray one
    src = tmp_path / "stray_quote.csv"
    with open(src, "w", encoding="utf-8") as fh:
        fh.write("name,id_number,mobile,notes\n")
        for i, p in enumerate(people):
            fh.write(_csv_line(p, notes[i] if i != len(people) - 3 else "12345,"))  # csv.fields
    from pivault.vault.imports import ImportProgress

    class Stop(Exception):
        pass

    def stop(p: ImportProgress) -> None:
        if p.read >= 1000:  # interrupted past the lines read again: the rerun skips them by count
            raise Stop

    with pytest.raises(Stop):
        sqlite_vault.import_files([src], workers=0, chunk_size=500, progress=stop)
    f = sqlite_vault.import_files([src], workers=0, chunk_size=500).files[0]
    n = len(people)
    assert f.status == "resumed" and f.resumed_from == 1000
    assert (f.read, f.imported, f.rejected) == (n, n - 2, 2) and f.reconciles
    assert [(r["line"], r["code"]) for r in sqlite_vault.rejects(ctx=ctx)] == [
        (6, "csv.quoting"), (n - 1, "csv.fields")]
    assert sqlite_vault.find(id_number=people[5]["id_number"], ctx=ctx)
    assert sqlite_vault.find(id_number=people[1500]["id_number"], ctx=ctx)


def test_quotes_built_to_be_read_again_and_again_are_read_in_linear_time(tmp_path: Path) -> None:
    """Each line after a broken row is read again, but a row of fields that each open a quote on
    one line and close it on the next would find another such row in every reading again: at most
    as much is read again as was read, and the rest is one reject, every line of it kept."""
    import time

    from pivault.vault.readers import open_source

    src = tmp_path / "nested.csv"
    with open(src, "w", encoding="utf-8") as fh:
        fh.write('name,id_number,mobile,notes\na,b,c,"start\n')
        fh.write('plain text\nx","\n' * 16_000)
        fh.write('end"x\n')
    t0 = time.monotonic()
    rows = list(open_source(src).rows())
    assert time.monotonic() - t0 < 10  # read again from every such line, it took minutes
    assert [(r.line, r.error) for r in rows] == [(2, "csv.quoting"), (3, "csv.fields"), (4, "csv.quoting")]
    assert rows[-1].text is not None and rows[-1].text.endswith('end"x')
    assert rows[-1].text.count("\n") == 2 * 16_000 - 1  # lines 4 to 32,003: none lost


def test_a_tab_separated_txt_file_is_read_as_tsv(sqlite_vault: Vault, tmp_path: Path) -> None:
    """Excel's "Text (Tab delimited)" and many exports write tab-separated .txt files: read as CSV,
    the header was one column and the error named "#1 (Chinese text)", which no --map could fix
    (there is no option to name the format). A .csv file of tabs is told what it is."""
    from pivault.errors import ConfigError
    from pivault.vault.readers import ReaderError

    people = _people(3, seed=86)
    body = "".join(f"{p['name']}\t{p['id_number']}\t{p['mobile']}\n" for p in people)
    txt = tmp_path / "导出.txt"
    txt.write_text("姓名\t身份证号\t手机号\n" + body, encoding="utf-8")
    f = sqlite_vault.import_files([txt], workers=0).files[0]
    assert (f.format, f.read, f.imported) == ("tsv", 3, 3)
    # without a header it is said to be data, not an unknown column
    bare = tmp_path / "bare.txt"
    bare.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        sqlite_vault.import_files([bare], workers=0)
    assert info.value.code == "import.no_header"
    # a comma-separated .txt is CSV, as before
    commas = tmp_path / "commas.txt"
    commas.write_text(txt.read_text(encoding="utf-8").replace("\t", ","), encoding="utf-8")
    assert sqlite_vault.import_files([commas], workers=0).files[0].format == "csv"
    mislabelled = tmp_path / "tabs.csv"
    mislabelled.write_text(txt.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(ReaderError) as info:
        sqlite_vault.import_files([mislabelled], workers=0)
    assert info.value.code == "import.format" and "tab" in info.value.message
    assert ".tsv" in info.value.hint and people[0]["name"] not in str(info.value)


def test_json_objects_with_a_key_per_value_are_refused_in_flat_memory(sqlite_vault: Vault,
                                                                      tmp_path: Path) -> None:
    """The header of a JSON Lines file is every key of its first 1,000 lines: objects keyed by
    their values (an ID number, a row number) made a header of millions of columns. 300 MB of such
    lines took 12 GB, and the error listed every column (500 MB on the terminal)."""
    from pivault.vault.readers import ReaderError

    src = tmp_path / "keyed.jsonl"
    with open(src, "w", encoding="utf-8") as fh:
        for i in range(40):
            fh.write(json.dumps({f"k{i}_{j:07d}": "" for j in range(20_000)}) + "\n")
    assert src.stat().st_size > 8 * MiB
    tracemalloc.start()
    try:
        with pytest.raises(ReaderError) as info:
            sqlite_vault.import_files([src], workers=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == "import.format" and len(str(info.value)) < 300, str(info.value)[:300]
    assert peak < 4 * ROW_LIMIT, f"peak {peak / MiB:.1f} MiB"


def test_a_header_of_too_many_columns_is_refused_and_errors_list_a_few(sqlite_vault: Vault,
                                                                       tmp_path: Path) -> None:
    from pivault.vault.mapping import MappingError
    from pivault.vault.readers import MAX_COLUMNS, ReaderError

    wide = tmp_path / "wide.csv"
    wide.write_text("name,id_number," + ",".join(f"c{i}" for i in range(MAX_COLUMNS)) + "\n",
                    encoding="utf-8")
    with pytest.raises(ReaderError) as info:
        sqlite_vault.import_files([wide], workers=0)
    assert info.value.code == "import.format" and f"{MAX_COLUMNS:,}" in info.value.message
    # a header of many unknown columns: the error names the first ones and counts the rest
    many = tmp_path / "many.csv"
    many.write_text("name,id_number," + ",".join(f"c{i}" for i in range(100)) + "\n", encoding="utf-8")
    with pytest.raises(MappingError) as mapping:
        sqlite_vault.import_files([many], workers=0)
    assert "#3 (text)" in mapping.value.message and "#102" not in mapping.value.message
    assert "and 80 more" in mapping.value.message, mapping.value.message


def test_one_column_mapped_to_two_fields_is_named_as_such() -> None:
    """--map id_number=证件,notes=证件: the second entry silently replaced the first, and the error
    said the header had no column for id_number, the field the operator had just mapped."""
    from pivault.vault.mapping import MappingError, parse_mapping, resolve

    with pytest.raises(MappingError) as info:
        resolve(["人员", "证件"], parse_mapping(["name=人员", "id_number=证件,notes=证件"]))
    assert info.value.code == "import.mapping"
    assert "id_number" in info.value.message and "notes" in info.value.message
    assert "证件" not in info.value.message and "#2" in info.value.message


def test_a_nul_byte_in_one_cell_is_that_rows_reject_not_a_refused_file(sqlite_vault: Vault, tmp_path: Path,
                                                                       ctx: AccessContext) -> None:
    """A C string's terminator left in one notes cell made the whole file "not a text file" (and the
    hint said to export it as CSV, which it was). A binary file (a spreadsheet, UTF-16 without its
    byte-order mark) is still refused as one."""
    import openpyxl

    from pivault.vault.readers import ReaderError

    people = _people(50, seed=87)
    lines = [_csv_line(p, "合成") for p in people]
    lines[2] = _csv_line(people[2], "合成\x00")
    src = tmp_path / "nul.csv"
    src.write_text("name,id_number,mobile,notes\n" + "".join(lines), encoding="utf-8")
    f = sqlite_vault.import_files([src], workers=0).files[0]
    assert (f.read, f.imported, f.rejected) == (50, 49, 1) and f.reconciles
    assert [(r["line"], r["code"]) for r in sqlite_vault.rejects(ctx=ctx)] == [(4, "notes.chars")]
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["name", "id_number"])
    for p in people:
        sheet.append([p["name"], p["id_number"]])
    xlsx = tmp_path / "people"  # no extension: the first bytes decide
    book.save(xlsx)
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes(src.read_text(encoding="utf-8").replace("\x00", "").encode("utf-16-le"))
    for binary in (xlsx, utf16):
        with pytest.raises(ReaderError) as info:
            sqlite_vault.import_files([binary], workers=0)
        assert "not a text file" in info.value.message, binary.name


def test_a_file_given_twice_is_counted_once_in_the_totals(sqlite_vault: Vault, tmp_path: Path) -> None:
    """A copy of a file is the same batch (the same content and options): the second is "already
    imported", but the command's totals added its counts again, so a glob over a folder that held
    a copy reported twice the records the vault had gained."""
    people = _people(20, seed=88)
    src = tmp_path / "a.csv"
    src.write_text("name,id_number,mobile,notes\n" + "".join(_csv_line(p) for p in people)
                   + f"{people[0]['name']},{people[0]['id_number']},123,\n", encoding="utf-8")
    copy = tmp_path / "copy_of_a.csv"
    copy.write_bytes(src.read_bytes())
    summary = sqlite_vault.import_files([src, copy, src], workers=0)
    assert [f.status for f in summary.files] == ["imported", "already_imported", "already_imported"]
    assert (summary.read, summary.imported, summary.rejected) == (21, 20, 1) and summary.reconciles
    assert summary.imported == sqlite_vault.store.count()
    totals = summary.to_dict()
    assert (totals["read"], totals["imported"]) == (21, 20) and len(totals["files"]) == 3
