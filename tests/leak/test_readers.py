"""Dump readers: every format a leak arrives in, streamed, with clear errors."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import random
import resource
import zipfile
import zlib
from pathlib import Path

import pytest

from leak.synthetic import people
from pivault.leak.readers import Batch, DumpError, Table, detect_encoding, read_dump, read_stream

PEOPLE = list(people(300, seed=7))
FIELDS = ["name", "id_number", "mobile", "address"]


def rows_of(batches: list[Batch]) -> dict[str, tuple[Table, list[list[str | None]]]]:
    out: dict[str, tuple[Table, list[list[str | None]]]] = {}
    for b in batches:
        out.setdefault(b.table.source, (b.table, []))[1].extend(b.rows)
    return out


def only_table(path: Path, **kw: int) -> tuple[Table, list[list[str | None]]]:
    tables = rows_of(list(read_dump(path, **kw)))
    assert len(tables) == 1, list(tables)
    return next(iter(tables.values()))


def csv_text(header: list[str] | None, recs: list[dict[str, str]], delim: str = ",") -> str:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delim, lineterminator="\n")
    if header:
        w.writerow(header)
    for r in recs:
        w.writerow([r[f] for f in FIELDS])
    return buf.getvalue()


# ------------------------------------------------------------------ CSV and encodings


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gb18030", "utf-16", "utf-16-le", "utf-16-be"])
def test_csv_encodings_with_chinese_header(tmp_path: Path, encoding: str) -> None:
    p = tmp_path / "dump.csv"
    p.write_bytes(csv_text(["姓名", "身份证号", "手机号码", "住址"], PEOPLE).encode(encoding))
    table, rows = only_table(p)
    assert table.header == ["姓名", "身份证号", "手机号码", "住址"]
    assert len(rows) == len(PEOPLE)
    assert rows[5] == [PEOPLE[5][f] for f in FIELDS]
    assert table.rows == len(PEOPLE) and table.rejected == 0


def test_csv_without_header_and_other_delimiters(tmp_path: Path) -> None:
    for delim in (",", "\t", ";", "|"):
        p = tmp_path / f"d{ord(delim)}.txt"
        p.write_text(csv_text(None, PEOPLE[:50], delim), encoding="utf-8")
        table, rows = only_table(p)
        assert table.header is None
        assert len(rows) == 50 and rows[0] == [PEOPLE[0][f] for f in FIELDS]
        assert table.format == ("tsv" if delim == "\t" else "csv")


def test_english_header_detected_and_single_column(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    p.write_text(csv_text(["full_name", "card", "tel", "home"], PEOPLE[:20]), encoding="utf-8")
    table, rows = only_table(p)
    assert table.header == ["full_name", "card", "tel", "home"] and len(rows) == 20
    p2 = tmp_path / "ids.txt"
    p2.write_text("\n".join(r["id_number"] for r in PEOPLE[:30]) + "\n", encoding="utf-8")
    table, rows = only_table(p2)
    assert table.header is None and len(rows) == 30 and rows[0] == [PEOPLE[0]["id_number"]]


def test_ascii_start_then_gb18030_is_decoded(tmp_path: Path) -> None:
    # the sniffed sample is pure ASCII; Chinese text appears far later
    lines = [f"{i},{PEOPLE[0]['id_number']}" for i in range(40000)]
    lines.append(f"99,{PEOPLE[1]['name']}")
    p = tmp_path / "late.csv"
    p.write_bytes(("\n".join(lines) + "\n").encode("gb18030"))
    _, rows = only_table(p)
    assert rows[-1] == ["99", PEOPLE[1]["name"]]


def test_detect_encoding() -> None:
    text = "姓名,身份证\n张三,11010519491231002X\n"
    assert detect_encoding(text.encode("utf-8")) == "utf-8"
    assert detect_encoding(text.encode("gb18030")) == "gb18030"
    assert detect_encoding(text.encode("utf-16-le")) == "utf-16-le"
    assert detect_encoding(text.encode("utf-16-be")) == "utf-16-be"
    assert detect_encoding(b"\x00" * 4096) == "binary"


def test_quoted_fields_with_newlines(tmp_path: Path) -> None:
    p = tmp_path / "q.csv"
    p.write_text('name,notes\n张三,"第一行\n第二行, 含逗号"\n李四,普通\n', encoding="utf-8")
    table, rows = only_table(p)
    assert table.header == ["name", "notes"]
    assert rows == [["张三", "第一行\n第二行, 含逗号"], ["李四", "普通"]]


# ------------------------------------------------------------------ JSON


def test_jsonl_and_json_array_and_object(tmp_path: Path) -> None:
    recs = [{"xm": r["name"], "zj": {"hm": r["id_number"]}, "sj": r["mobile"]} for r in PEOPLE[:100]]
    p = tmp_path / "a.jsonl"
    p.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\nnot json\n",
                 encoding="utf-8")
    table, rows = only_table(p)
    assert table.header == ["xm", "zj.hm", "sj"]
    assert rows[3] == [PEOPLE[3]["name"], PEOPLE[3]["id_number"], PEOPLE[3]["mobile"]]
    assert table.rows == 100 and table.rejected == 1
    p = tmp_path / "b.json"
    p.write_text(json.dumps(recs, ensure_ascii=False, indent=1), encoding="utf-16")
    table, rows = only_table(p)
    assert len(rows) == 100 and rows[99][0] == PEOPLE[99]["name"]
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"total": 100, "data": recs, "next": None}, ensure_ascii=False),
                 encoding="utf-8")
    table, rows = only_table(p, batch=7)
    assert table.source.endswith("#data") and len(rows) == 100


def test_jsonl_of_api_answers_is_read_record_by_record(tmp_path: Path) -> None:
    """A copy scraped answer by answer: each line an envelope holding a page of records."""
    recs = [{"record_id": f"r_{i:026d}", "name": r["name"], "mobile": r["mobile"]}
            for i, r in enumerate(PEOPLE[:10])]
    p = tmp_path / "answers.jsonl"
    p.write_text("".join(json.dumps({"count": 2, "records": recs[i:i + 2], "revealed": []},
                                    ensure_ascii=False) + "\n" for i in range(0, 10, 2))
                 # a record that holds a list of objects of its own stays one record
                 + json.dumps({"name": PEOPLE[10]["name"], "addresses": [{"city": "x"}, {"city": "y"}]},
                              ensure_ascii=False) + "\n", encoding="utf-8")
    table, rows = only_table(p)
    assert table.rows == 11
    assert table.header is not None and table.header[:3] == ["record_id", "name", "mobile"]
    assert [r[0] for r in rows[:10]] == [r["record_id"] for r in recs]
    assert rows[10][1] == PEOPLE[10]["name"]
    assert any("record by record" in n for n in table.notes)


def test_json_array_streams_across_chunk_boundaries(tmp_path: Path) -> None:
    recs = [{"n": i, "s": "x" * 500} for i in range(5000)]  # ~2.6 MB: several read chunks
    p = tmp_path / "big.json"
    p.write_text(json.dumps(recs), encoding="utf-8")
    _, rows = only_table(p)
    assert [r[0] for r in rows] == [str(i) for i in range(5000)]


def test_json_cut_off_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "cut.json"
    p.write_text(json.dumps([{"a": 1}, {"a": 2}])[:-8], encoding="utf-8")
    with pytest.raises(DumpError, match="cut off"):
        list(read_dump(p))


# ------------------------------------------------------------------ SQL dumps

MYSQL = """-- MySQL dump 10.13  Distrib 8.0.36, for Linux (x86_64)
/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;
/*!40101 SET NAMES utf8mb4 */;
DROP TABLE IF EXISTS `person`;
CREATE TABLE `person` (
  `id` int NOT NULL AUTO_INCREMENT,
  `xm` varchar(32) DEFAULT NULL COMMENT '姓名; (with a semicolon)',
  `sfzh` char(18) DEFAULT NULL,
  `sjhm` varchar(20) DEFAULT NULL,
  `dz` varchar(200) DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `idx_sfzh` (`sfzh`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
LOCK TABLES `person` WRITE;
/*!40000 ALTER TABLE `person` DISABLE KEYS */;
INSERT INTO `person` VALUES {values1};
INSERT INTO `person` VALUES {values2};
/*!40000 ALTER TABLE `person` ENABLE KEYS */;
UNLOCK TABLES;
CREATE TABLE `case_note` (`id` int, `note` text);
INSERT INTO `case_note` (`id`, `note`) VALUES
 (1,'it\\'s a \\"quote\\"\\n; and (parens), commas'),(2,NULL),(3,'a''b');
"""


def _my(v: str) -> str:
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


def test_mysql_dump(tmp_path: Path) -> None:
    def vals(recs: list[dict[str, str]], start: int) -> str:
        return ",".join(f"({start + i},{_my(r['name'])},{_my(r['id_number'])},{_my(r['mobile'])},"
                        f"{_my(r['address'])})" for i, r in enumerate(recs))

    text = MYSQL.format(values1=vals(PEOPLE[:150], 1), values2=vals(PEOPLE[150:], 151))
    p = tmp_path / "dump.sql"
    p.write_text(text, encoding="utf-8")
    tables = rows_of(list(read_dump(p, batch=64)))
    person_t, person_rows = tables["dump.sql#person"]
    assert person_t.header == ["id", "xm", "sfzh", "sjhm", "dz"]
    assert len(person_rows) == 300
    assert person_rows[200] == ["201", PEOPLE[200]["name"], PEOPLE[200]["id_number"],
                                PEOPLE[200]["mobile"], PEOPLE[200]["address"]]
    note_t, note_rows = tables["dump.sql#case_note"]
    assert note_t.header == ["id", "note"]
    assert note_rows == [["1", 'it\'s a "quote"\n; and (parens), commas'], ["2", None], ["3", "a'b"]]


def test_mysql_dump_split_across_read_chunks(tmp_path: Path) -> None:
    many = PEOPLE * 40  # 12,000 tuples in one ~1.5 MB statement
    values = ",".join(f"({i},{_my(r['name'])},{_my(r['id_number'])},NULL,{_my(r['address'])})"
                      for i, r in enumerate(many))
    p = tmp_path / "big.sql"
    p.write_text(MYSQL.format(values1=values, values2="(0,'x','y','z','w')"), encoding="gb18030")
    tables = rows_of(list(read_dump(p)))
    rows = tables["big.sql#person"][1]
    assert len(rows) == len(many) + 1
    assert rows[11999][2] == many[11999]["id_number"] and rows[11999][3] is None


PG = """--
-- PostgreSQL database dump
--
SET standard_conforming_strings = on;
SET client_encoding = 'UTF8';
CREATE TABLE public.residents (
    id integer NOT NULL,
    "姓名" text,
    id_no character varying(18),
    phone text,
    CONSTRAINT residents_pkey PRIMARY KEY (id)
);
COPY public.residents (id, "姓名", id_no, phone) FROM stdin;
{copy}
\\.

INSERT INTO public.residents VALUES (1001, 'C:\\path''s', E'tab\\there', NULL);
INSERT INTO public.residents (id, "姓名", id_no, phone) VALUES (1002, '{n}', '{i}', '{m}');
"""


def test_postgresql_dump_copy_and_inserts(tmp_path: Path) -> None:
    copy = "\n".join(f"{i}\t{r['name']}\t{r['id_number']}\t{r['mobile'] if i % 5 else chr(92) + 'N'}"
                     for i, r in enumerate(PEOPLE[:100]))
    p = tmp_path / "pg.sql"
    p.write_text(PG.format(copy=copy, n=PEOPLE[200]["name"], i=PEOPLE[200]["id_number"],
                           m=PEOPLE[200]["mobile"]), encoding="utf-8")
    table, rows = only_table(p)
    assert table.header == ["id", "姓名", "id_no", "phone"] and table.format == "sql-postgresql"
    assert len(rows) == 102
    assert rows[3] == ["3", PEOPLE[3]["name"], PEOPLE[3]["id_number"], PEOPLE[3]["mobile"]]
    assert rows[5][3] is None
    assert rows[100] == ["1001", "C:\\path's", "tab\there", None]
    assert rows[101] == ["1002", PEOPLE[200]["name"], PEOPLE[200]["id_number"], PEOPLE[200]["mobile"]]


def test_sql_truncated_insert_keeps_rows_before(tmp_path: Path) -> None:
    text = "INSERT INTO t VALUES (1,'a'),(2,'b'),(3,'c"
    p = tmp_path / "t.sql"
    p.write_text(text, encoding="utf-8")
    got: list[list[str | None]] = []
    with pytest.raises(DumpError, match="cut off"):
        for b in read_dump(p):
            got.extend(b.rows)
    assert got == [["1", "a"], ["2", "b"]]


# ------------------------------------------------------------------ Excel and Parquet


def test_xlsx_numbers_kept_whole(tmp_path: Path) -> None:
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "名单"
    ws.append(["姓名", "证件号码", "电话"])
    for r in PEOPLE[:50]:
        ws.append([r["name"], r["id_number"], int(r["mobile"])])
    ws2 = wb.create_sheet("other")
    ws2.append([PEOPLE[60]["name"], PEOPLE[60]["id_number"]])
    ws2.append([PEOPLE[61]["name"], PEOPLE[61]["id_number"]])
    p = tmp_path / "book.xlsx"
    wb.save(p)
    tables = rows_of(list(read_dump(p)))
    t, rows = tables["book.xlsx#名单"]
    assert t.header == ["姓名", "证件号码", "电话"] and len(rows) == 50
    assert rows[0] == [PEOPLE[0]["name"], PEOPLE[0]["id_number"], PEOPLE[0]["mobile"]]
    t2, rows2 = tables["book.xlsx#other"]
    assert t2.header is None and len(rows2) == 2


def test_parquet_by_row_group(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tbl = pa.table({f: [r[f] for r in PEOPLE] for f in FIELDS} | {"n": list(range(len(PEOPLE)))})
    p = tmp_path / "x.parquet"
    pq.write_table(tbl, p, row_group_size=64)
    table, rows = only_table(p, batch=50)
    assert table.header == [*FIELDS, "n"] and len(rows) == 300
    assert rows[299] == [*(PEOPLE[299][f] for f in FIELDS), "299"]


def _string_column(values: list[bytes]) -> object:
    """A Parquet STRING column holding these bytes as they are, UTF-8 or not (Arrow checks nothing
    when an array is made from buffers, as a careless exporter's GBK text gets into a file)."""
    import itertools

    import pyarrow as pa

    offsets = pa.array([0, *itertools.accumulate(map(len, values))], pa.int32())
    return pa.Array.from_buffers(pa.string(), len(values),
                                 [None, offsets.buffers()[1], pa.py_buffer(b"".join(values))])


@pytest.mark.parametrize("dictionary", [False, True])
def test_parquet_text_in_gbk_is_read_as_such(tmp_path: Path, dictionary: bool) -> None:
    """Names in GBK inside a STRING column (the register's own encoding, written by an exporter
    that checked nothing): Arrow's UnicodeDecodeError refused the whole dump ("no row could be
    read"), so the residents in it were never matched. Each cell is read in the first of UTF-8
    and GB18030 that decodes it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [p["name"].encode("utf-8") for p in PEOPLE[:20]]
    for i in (3, 11):
        names[i] = PEOPLE[i]["name"].encode("gbk")
    tbl = pa.table({"name": _string_column(names), "id_number": [p["id_number"] for p in PEOPLE[:20]]})
    path = tmp_path / "gbk.parquet"
    pq.write_table(tbl, path, use_dictionary=dictionary)
    table, rows = only_table(path)
    assert [r[0] for r in rows] == [p["name"] for p in PEOPLE[:20]]
    assert table.rejected == 0


def test_a_damaged_parquet_row_group_costs_its_own_rows_only(tmp_path: Path) -> None:
    """Bytes of one data page changed (a dump cut and patched, a bad disk): Arrow's OSError ended the
    read with "error[io]: OSError", and the residents in the groups after it were never matched.
    The damaged group's rows are counted rejected, with a note that says which group and why
    (not Arrow's message, which may quote a value); the other groups are read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tbl = pa.table({f: [r[f] for r in PEOPLE] for f in FIELDS})
    path = tmp_path / "damaged.parquet"
    pq.write_table(tbl, path, row_group_size=100, compression="snappy")
    start = pq.ParquetFile(path).metadata.row_group(1).column(0).data_page_offset  # rows 101-200
    data = bytearray(path.read_bytes())
    for i in range(start + 8, start + 40):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    table, rows = only_table(path)
    ids = [r[1] for r in rows]
    assert ids[:100] == [p["id_number"] for p in PEOPLE[:100]]
    assert ids[-100:] == [p["id_number"] for p in PEOPLE[200:]]
    assert table.rows + table.rejected == 300 and table.rejected >= 1
    assert any("row group 2" in n and "damaged" in n for n in table.notes), table.notes
    assert not any(p["name"] in n for p in PEOPLE for n in table.notes)


# ------------------------------------------------------------------ archives


def test_gzip_zip_and_nesting(tmp_path: Path) -> None:
    body = csv_text(["姓名", "身份证号", "手机号码", "住址"], PEOPLE).encode("gb18030")
    gz = tmp_path / "leak.csv.gz"
    gz.write_bytes(gzip.compress(body))
    table, rows = only_table(gz)
    assert table.source == "leak.csv" and len(rows) == 300
    zp = tmp_path / "leak.zip"
    with zipfile.ZipFile(zp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("part1.csv", body)
        zf.writestr("dir/", b"")
        zf.writestr("__MACOSX/._part1.csv", b"junk")
        zf.writestr("part2.jsonl.gz", gzip.compress(
            "\n".join(json.dumps(r, ensure_ascii=False) for r in PEOPLE[:10]).encode("utf-8")))
    tables = rows_of(list(read_dump(zp)))
    assert set(tables) == {"leak.zip:part1.csv", "leak.zip:part2.jsonl"}
    assert len(tables["leak.zip:part2.jsonl"][1]) == 10
    outer = tmp_path / "outer.zip.gz"
    outer.write_bytes(gzip.compress(zp.read_bytes()))
    assert len(rows_of(list(read_dump(outer)))) == 2


# ------------------------------------------------------------------ bad input


def test_empty_and_blank_files(tmp_path: Path) -> None:
    p = tmp_path / "empty.csv"
    p.write_bytes(b"")
    with pytest.raises(DumpError, match="empty") as e:
        list(read_dump(p))
    assert e.value.code == "dump.empty"
    p.write_text("\n \n", encoding="utf-8")
    with pytest.raises(DumpError, match="blank"):
        list(read_dump(p))


def test_truncated_gzip_keeps_rows_before(tmp_path: Path) -> None:
    body = csv_text(None, PEOPLE * 100).encode("utf-8")
    data = gzip.compress(body)
    p = tmp_path / "cut.csv.gz"
    p.write_bytes(data[: len(data) * 2 // 3])
    got = 0
    with pytest.raises(DumpError, match="truncated") as e:
        for b in read_dump(p):
            got += len(b.rows)
    assert e.value.code == "dump.truncated"
    assert 0 < got < len(PEOPLE) * 100
    z = tmp_path / "cut.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.csv", body)
    z.write_bytes(buf.getvalue()[:5000])
    with pytest.raises(DumpError, match=r"damaged|truncated"):
        list(read_dump(z))


class _Endless(io.RawIOBase):
    """A stream of ``size`` bytes: a header line, then one line with no newline."""

    def __init__(self, size: int) -> None:
        self.head = b"name,id_number\n"
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        if self.left <= 0:
            return 0
        n = min(len(buf), self.left)
        if self.head:
            take = self.head[:n]
            buf[: len(take)] = take
            self.head = self.head[len(take):]
            self.left -= len(take)
            return len(take)
        buf[:n] = b"a" * n
        self.left -= n
        return n


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_two_gigabyte_line_is_refused_without_reading_it(tmp_path: Path) -> None:
    stream = _Endless(2 * 1024**3)
    before = _peak_rss_mib()
    with pytest.raises(DumpError, match=r"line longer than 4 MiB at line 2") as e:
        for _ in read_stream(stream, "huge.csv", max_line_mib=4):
            pass
    assert e.value.code == "dump.line_too_long"
    assert stream.left > 2 * 1024**3 - 64 * 1024**2  # stopped early
    assert _peak_rss_mib() - before < 200


def test_sparse_two_gigabyte_file(tmp_path: Path) -> None:
    p = tmp_path / "sparse.csv"
    with open(p, "wb") as f:
        f.write(b"name,id_number\n" + b"a" * (300 * 1024))
        f.truncate(2 * 1024**3)
    try:
        with pytest.raises(DumpError) as e:
            list(read_dump(p, max_line_mib=4))
        assert e.value.code in ("dump.line_too_long", "dump.format")
        assert "longer than 4 MiB at line 2" in str(e.value)
    finally:
        os.unlink(p)


def test_binary_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "x.bin"
    p.write_bytes(bytes(range(256)) * 100 + b"\x00" * 5000)
    with pytest.raises(DumpError, match="neither text"):
        list(read_dump(p))


def _noise(n: int, seed: int) -> bytes:
    """Random bytes without NUL (what compressed or encrypted data looks like to a text sniffer)."""
    return random.Random(seed).randbytes(n).replace(b"\x00", b"")


def test_binary_without_nul_bytes_is_not_text() -> None:
    for n in (64, 500, 4096, 300_000):
        assert detect_encoding(_noise(n, n)) == "binary", n
    assert detect_encoding(zlib.compress(_noise(50_000, 1)).replace(b"\x00", b"\x01")) == "binary"
    # text stays text: GB18030, UTF-8, an undeclared 8-bit encoding, tabs, colour codes, Hive's ^A
    text = csv_text(["姓名", "身份证号", "手机号码", "住址"], PEOPLE)
    assert detect_encoding(text.encode("gb18030")) == "gb18030"
    assert detect_encoding(text.encode("utf-8")) == "utf-8"
    assert detect_encoding(("nom,prénom\n" + "Lefèvre,Hélène\n" * 50).encode("latin-1")) != "binary"
    assert detect_encoding(csv_text(None, PEOPLE, "\t").encode("utf-8") + b"\x1a") == "utf-8"
    assert detect_encoding(b"".join(b"\x1b[32mINFO\x1b[0m " + r["mobile"].encode() + b"\n"
                                    for r in PEOPLE)) == "utf-8"
    assert detect_encoding(csv_text(None, PEOPLE, "\x01").encode("utf-8")) == "utf-8"


@pytest.mark.parametrize("content", [
    b"%PDF-1.4\n" + zlib.compress(_noise(100_000, 2)),
    zlib.compress(_noise(100_000, 3)).replace(b"\x00", b"\x01"),
    _noise(100_000, 4),
    b"BZh91AY&SY" + _noise(1000, 5),
], ids=["pdf", "zlib", "noise", "bzip2"])
def test_binary_files_without_nul_bytes_are_refused(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "dump.dat"
    p.write_bytes(content)
    with pytest.raises(DumpError) as e:
        list(read_dump(p))
    assert e.value.code == "dump.format" and e.value.source == "dump.dat"


def test_zip_member_that_is_binary_is_refused_and_the_others_read(tmp_path: Path) -> None:
    zp = tmp_path / "leak.zip"
    with zipfile.ZipFile(zp, "w") as zf:
        zf.writestr("proof.bin", _noise(20_000, 6))
        zf.writestr("people.csv", csv_text(FIELDS, PEOPLE[:40]).encode("utf-8"))
        zf.writestr("scan.pdf", b"%PDF-1.7\n" + _noise(2000, 7))
    got: list[Batch] = []
    with pytest.raises(DumpError) as e:
        for b in read_dump(zp):
            got.append(b)
    assert e.value.code == "dump.format"
    assert "2 zip members not read" in e.value.message
    assert "leak.zip:proof.bin" in e.value.message and "leak.zip:scan.pdf" in e.value.message
    assert {b.table.source for b in got} == {"leak.zip:people.csv"}
    assert sum(len(b.rows) for b in got) == 40
    only = tmp_path / "only.zip"
    with zipfile.ZipFile(only, "w") as zf:
        zf.writestr("data.bin", _noise(20_000, 8))
    with pytest.raises(DumpError) as e:
        list(read_dump(only))
    assert e.value.code == "dump.format" and e.value.source == "only.zip:data.bin"


def test_messages_hold_no_values(tmp_path: Path) -> None:
    secret = PEOPLE[0]["id_number"]
    p = tmp_path / "bad.csv"
    p.write_text(f'a,b\n"{secret}\n', encoding="utf-8")
    try:
        list(read_dump(p, max_line_mib=1))
    except DumpError as exc:
        assert secret not in str(exc)


@pytest.mark.skipif(not Path("/dev/null").exists() or not Path("/dev/fd").exists(), reason="POSIX devices")
def test_devices_are_refused_and_pipes_read(tmp_path: Path) -> None:
    """A device is no dump (a terminal would be read forever); a pipe is read as it comes."""
    import threading

    with pytest.raises(DumpError, match="not a file") as e:
        list(read_dump("/dev/null"))
    assert e.value.code == "dump.open"
    r, w = os.pipe()
    body = csv_text(["姓名", "身份证号", "手机", "地址"], PEOPLE[:20]).encode("utf-8")

    def write() -> None:
        with os.fdopen(w, "wb") as f:
            f.write(body)

    t = threading.Thread(target=write, daemon=True)
    t.start()
    try:
        table, rows = only_table(Path(f"/dev/fd/{r}"))
    finally:
        t.join(10)
        os.close(r)
    assert len(rows) == 20 and table.header == ["姓名", "身份证号", "手机", "地址"]


def test_names_the_dump_chose_are_shown_without_pi_or_control_characters(tmp_path: Path) -> None:
    """A zip member's path, a JSON key, a SQL table and a sheet name are chosen by whoever made the
    dump: one named after a resident put the resident's ID number and name into the case (kept for
    years, printed with --json), and escape sequences in it acted on the terminal printing it."""
    import openpyxl

    who, other = PEOPLE[0], PEOPLE[1]
    body = csv_text(["姓名", "身份证号", "手机号码", "住址"], PEOPLE[:20]).encode("utf-8")
    zp = tmp_path / "leak.zip"
    with zipfile.ZipFile(zp, "w") as zf:
        zf.writestr(f"exports/{who['id_number']}_{who['name']}.csv", body)
        zf.writestr("\x1b]0;owned\x07\x1b[2J\u202egpj.csv", body)
        zf.writestr("keyed.json", json.dumps({other["mobile"]: PEOPLE[:5]}, ensure_ascii=False))
        zf.writestr("dump.sql", f"INSERT INTO `{other['id_number']}` VALUES "
                                + ",".join(f"({_my(r['name'])},{_my(r['id_number'])})" for r in PEOPLE[:5])
                                + ";\n")
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = other["name"]
    for r in PEOPLE[:5]:
        ws.append([r["name"], r["id_number"], r["mobile"]])
    wb.save(tmp_path / "book.xlsx")
    with zipfile.ZipFile(zp, "a") as zf:
        zf.write(tmp_path / "book.xlsx", "book.xlsx")
    tables = rows_of(list(read_dump(zp)))
    assert len(tables) == 5 and all(rows for _t, rows in tables.values())
    names = "\n".join(tables)
    for value in (who["id_number"], who["name"], other["mobile"], other["id_number"], other["name"]):
        assert value not in names, names
    assert not any(c in names for c in ("\x1b", "\x07", "\u202e"))
    assert "leak.zip:exports/" in names and ".csv" in names  # what is no PI is kept
