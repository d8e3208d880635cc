"""Files of every format, archives, directories, and bad input that must not stop a sweep."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from pivault.scan import ScanOptions, ScanReport, scan_paths

ID = "11010519491231002X"
MOBILE = "13812345678"
TEXT = f"客户张伟，身份证号{ID}，手机{MOBILE}。\n"


def run(*paths: Path, **kw: object) -> ScanReport:
    kw.setdefault("workers", 1)
    return scan_paths([str(p) for p in paths], ScanOptions(**kw))  # type: ignore[arg-type]


def codes(report: ScanReport) -> dict[str, str]:
    return {os.path.basename(i.source.split("!")[-1]) or i.source: i.code for i in report.issues}


def test_text_csv_json_sql_and_locations(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_text("x\ny\nlogin phone=13812345678 ok\n", encoding="utf-8")
    (tmp_path / "b.csv").write_text(f"id,姓名,身份证号,手机\n1,王小明,{ID},{MOBILE}\n", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text(
        f'{{"user": {{"name": "李娜", "mobile": "{MOBILE}"}}}}\n', encoding="utf-8"
    )
    (tmp_path / "d.sql").write_text(f"INSERT INTO t VALUES (1,'{ID}');\n", encoding="utf-8")
    r = run(tmp_path)
    by = {(os.path.basename(f.file or ""), f.kind): f for f in r}
    log = by[("a.log", "mobile")]
    assert (log.line, log.column, log.masked) == (3, "phone", "138****5678")
    assert by[("b.csv", "id_number")].column == "身份证号" and by[("b.csv", "id_number")].line == 2
    assert by[("b.csv", "name")].column == "姓名"
    assert by[("c.jsonl", "mobile")].column == "mobile"
    assert by[("c.jsonl", "name")].masked == "李*"
    assert ("d.sql", "id_number") in by
    assert r.issues == []
    assert r.totals()["id_number"] == 2


def test_encodings(tmp_path: Path) -> None:
    (tmp_path / "gb.txt").write_bytes(TEXT.encode("gb18030") * 3)
    (tmp_path / "u16.txt").write_bytes(TEXT.encode("utf-16"))
    (tmp_path / "u16le.txt").write_bytes(TEXT.encode("utf-16-le"))
    (tmp_path / "bom.txt").write_bytes(TEXT.encode("utf-8-sig"))
    r = run(tmp_path)
    files = {os.path.basename(f.file or "") for f in r if f.kind == "id_number"}
    assert files == {"gb.txt", "u16.txt", "u16le.txt", "bom.txt"}
    assert r.issues == []
    assert {f.masked for f in r if f.kind == "name"} == {"张*"}


def test_office_parquet_and_archives(tmp_path: Path) -> None:
    import docx
    import openpyxl
    import pyarrow as pa
    import pyarrow.parquet as pq

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "客户"
    ws.append(["姓名", "身份证号", "备注"])
    ws.append(["王小明", ID, f"tel {MOBILE}"])
    wb.save(tmp_path / "book.xlsx")
    d = docx.Document()
    d.add_paragraph(f"身份证号{ID}")
    t = d.add_table(rows=2, cols=2)
    t.cell(0, 0).text, t.cell(0, 1).text = "name", "mobile"
    t.cell(1, 0).text, t.cell(1, 1).text = "李娜", MOBILE
    d.save(str(tmp_path / "memo.docx"))
    pq.write_table(pa.table({"real_name": ["陈静"], "phone": [MOBILE], "n": [1]}), tmp_path / "t.parquet")
    with zipfile.ZipFile(tmp_path / "export.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("inner/a.txt", TEXT)
        z.write(tmp_path / "book.xlsx", "inner/book.xlsx")
    (tmp_path / "log.gz").write_bytes(gzip.compress(TEXT.encode()))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = TEXT.encode()
        info = tarfile.TarInfo("dump/rows.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (tmp_path / "dump.tar.gz").write_bytes(buf.getvalue())
    r = run(tmp_path)
    assert r.issues == []
    got = {(f.file.replace(str(tmp_path) + os.sep, ""), f.table, f.column, f.kind) for f in r if f.file}
    assert ("book.xlsx", "客户", "身份证号", "id_number") in got
    assert ("book.xlsx", "客户", "姓名", "name") in got
    assert ("book.xlsx", "客户", "备注", "mobile") in got
    assert ("memo.docx", None, None, "id_number") in got
    assert ("memo.docx", "table 1", "name", "name") in got
    assert ("t.parquet", None, "real_name", "name") in got
    assert ("t.parquet", None, "phone", "mobile") in got
    assert ("export.zip!inner/a.txt", None, None, "id_number") in got
    assert ("export.zip!inner/book.xlsx", "客户", "身份证号", "id_number") in got
    assert ("log.gz!log", None, None, "id_number") in got
    assert ("dump.tar.gz!dump.tar!dump/rows.txt", None, None, "id_number") in got


def _nested_zip(depth: int) -> bytes:
    data = TEXT.encode()
    name = "leaf.txt"
    for i in range(depth):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(name, data)
        data, name = buf.getvalue(), f"level{i}.zip"
    return data


def test_bad_input_is_reported_and_the_scan_goes_on(tmp_path: Path) -> None:
    (tmp_path / "good.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 64)
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (tmp_path / "latin1.txt").write_bytes("café résumé naïve ".encode("latin-1") * 20 + f" {MOBILE}".encode())
    (tmp_path / "corrupt.zip").write_bytes(b"PK\x03\x04" + os.urandom(300))
    good = io.BytesIO()
    with zipfile.ZipFile(good, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.txt", TEXT * 200)
    raw = bytearray(good.getvalue())
    raw[60:90] = os.urandom(30)  # damage the member's data, keep the directory
    (tmp_path / "damaged.zip").write_bytes(bytes(raw))
    (tmp_path / "nested.zip").write_bytes(_nested_zip(8))
    (tmp_path / "shallow.zip").write_bytes(_nested_zip(3))
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.txt", b"\0" * (24 << 20))
    (tmp_path / "bomb.zip").write_bytes(bomb.getvalue())
    (tmp_path / "bomb.gz").write_bytes(gzip.compress(b"0" * (24 << 20)))
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "loop").symlink_to(tmp_path)
    (tmp_path / "self").symlink_to(tmp_path / "self")
    assert os.path.getsize(tmp_path / "bomb.zip") < 100_000

    r = run(tmp_path, max_ratio=100.0)
    c = codes(r)
    assert c["blob.bin"] == "binary"
    assert c["photo.png"] == "binary"
    assert c["latin1.txt"] == "encoding"
    assert c["corrupt.zip"] == "corrupt"
    assert c["a.txt"] == "corrupt"  # damaged.zip!a.txt
    assert "too_deep" in c.values()
    assert c["bomb.zip"] == "zip_bomb"  # declared sizes give it away before it is opened
    assert c["bomb"] == "zip_bomb"  # bomb.gz!bomb
    assert c["pipe"] == "not_regular"
    assert c["dangling"] == "unreadable"
    assert c["loop"] == "symlink_loop"
    assert c["self"] == "symlink_loop"
    for i in r.issues:  # a clear line, without PI
        assert i.message and ID not in i.message and MOBILE not in i.message
    files = {os.path.basename(f.file or "").split("!")[0] for f in r}
    assert {
        "good.txt",
        "latin1.txt",
        "shallow.zip",
    } <= files  # the scan went on; nesting within the limit is read
    assert "nested.zip" not in files


def test_include_exclude_and_gitignore(tmp_path: Path) -> None:
    for rel in ("keep/a.csv", "keep/b.log", "skip/c.csv", "build/d.csv", "e.csv"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(TEXT, encoding="utf-8")
    (tmp_path / ".gitignore").write_text("build/\n*.log\n!keep/b.log\n", encoding="utf-8")

    def names(r: ScanReport) -> set[str]:
        return {os.path.relpath(f.file or "", tmp_path) for f in r}

    assert names(run(tmp_path, include=("*.csv",))) == {"keep/a.csv", "skip/c.csv", "build/d.csv", "e.csv"}
    assert names(run(tmp_path, include=("*.csv",), exclude=("skip/**",))) == {
        "keep/a.csv",
        "build/d.csv",
        "e.csv",
    }
    assert names(run(tmp_path, include=("keep/*",))) == {"keep/a.csv", "keep/b.log"}
    assert names(run(tmp_path, gitignore=True)) == {
        "keep/a.csv",
        "keep/b.log",
        "skip/c.csv",
        "e.csv",
        ".gitignore",
    } - {".gitignore"}


def test_process_pool_spreads_files(tmp_path: Path) -> None:
    for i in range(30):
        (tmp_path / f"f{i}.txt").write_text(TEXT * (i + 1), encoding="utf-8")
    single = run(tmp_path)
    pooled = run(tmp_path, workers=2)
    key = lambda r: sorted((f.file, f.offset, f.kind) for f in r)  # noqa: E731
    assert key(single) == key(pooled)
    assert pooled.sources == 30


def test_findings_are_capped_but_counted(tmp_path: Path) -> None:
    (tmp_path / "many.txt").write_text(f"{MOBILE}\n" * 500, encoding="utf-8")
    r = run(tmp_path, max_findings_per_source=10)
    assert len(r.findings) == 10 and r.dropped == 490 and r.totals()["mobile"] == 500


@pytest.mark.parametrize("name", ["x.txt", "dir"])
def test_missing_path_is_an_issue(tmp_path: Path, name: str) -> None:
    r = run(tmp_path / name)
    assert [i.code for i in r.issues] == ["unreadable"]


def test_a_worker_that_dies_does_not_end_the_sweep(tmp_path: Path) -> None:
    """A worker killed part-way (the out-of-memory killer, a crash in a native library) broke the
    process pool, and the sweep ended in a traceback with no report. The pool is replaced and the
    files in flight are scanned again."""
    import multiprocessing
    import signal

    from pivault.scan import iter_results

    for i in range(400):
        (tmp_path / f"f{i:03d}.txt").write_text(f"身份证号{ID}\n", encoding="utf-8")
    seen: list[str] = []
    issues = []
    for r in iter_results([str(tmp_path)], ScanOptions(workers=2)):
        if not seen:
            victim = multiprocessing.active_children()[0]
            os.kill(victim.pid or 0, signal.SIGKILL)
        seen.append(r.source)
        issues.extend(r.issues)
        assert r.issues or r.counts["id_number"] == 1, r.source
    assert sorted(seen) == sorted(str(p) for p in tmp_path.iterdir())  # each file once
    assert issues == []
