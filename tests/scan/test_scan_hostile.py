"""What a file share can hold to mislead or stop a sweep: links out of it, compressed tables."""

from __future__ import annotations

import codecs
import os
from pathlib import Path

from pivault.scan import ScanOptions, ScanReport, scan_paths
from pivault.synth import generate


def _person(seed: int) -> dict[str, str]:
    return {k: str(v) for k, v in next(r for r in generate(20, seed) if r["mobile"]).items()}


def _scan(*paths: Path) -> ScanReport:
    return scan_paths([str(p) for p in paths], ScanOptions(workers=1))


def test_links_out_of_the_scanned_tree_are_not_followed(tmp_path: Path) -> None:
    """A link planted in a share (to /, to /proc/kmsg, to another team's export) took the sweep out
    of the share: over the whole machine, or into a read that never returns."""
    inside, outside = _person(81), _person(82)
    share, elsewhere = tmp_path / "share", tmp_path / "elsewhere"
    (share / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    (share / "sub" / "export.csv").write_text(f"身份证号\n{inside['id_number']}\n", encoding="utf-8")
    (elsewhere / "other.csv").write_text(f"身份证号\n{outside['id_number']}\n", encoding="utf-8")
    (share / "to_dir").symlink_to(elsewhere)
    (share / "to_file.csv").symlink_to(elsewhere / "other.csv")
    (share / "to_sub").symlink_to(share / "sub")  # a link within the share is followed as before
    r = _scan(share)
    found = {os.path.relpath(f.file or "", share) for f in r if f.kind == "id_number"}
    assert found == {"sub/export.csv", "to_sub/export.csv"}
    issues = {os.path.basename(i.source): i.code for i in r.issues}
    assert issues == {"to_dir": "symlink_outside", "to_file.csv": "symlink_outside"}
    # named on the command line, the other tree is scanned: the operator chose it
    assert {f.file for f in _scan(share, elsewhere) if f.kind == "id_number"} >= {
        str(elsewhere / "other.csv"), str(share / "to_dir" / "other.csv")}


def _parquet_with(path: Path, person: dict[str, str], notes: object, rows: int = 1, **kw: object) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"身份证号": [person["id_number"]] * rows, "备注": notes}),
                   path, **kw)  # type: ignore[arg-type]


def _scan_traced(path: Path) -> tuple[ScanReport, int]:
    import tracemalloc

    tracemalloc.start()
    try:
        report = _scan(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return report, peak


def test_parquet_that_inflates_past_the_limits_is_a_bomb_not_read(tmp_path: Path) -> None:
    """30 KB of zstd holding a 64 MiB value: the archives' limits hold for Parquet too."""
    src = tmp_path / "bomb.parquet"
    _parquet_with(src, _person(83), ["x" * (64 << 20)], compression="zstd")
    assert src.stat().st_size < 64 * 1024
    r, peak = _scan_traced(src)
    assert [(os.path.basename(i.source), i.code) for i in r.issues] == [("bomb.parquet", "zip_bomb")]
    assert peak < 16 << 20, f"peak {peak >> 20} MiB"


def test_parquet_dictionary_that_repeats_a_long_value_is_a_bomb(tmp_path: Path) -> None:
    """A 256 KiB value stored once and named by 300 rows: 75 MiB of text from a small file."""
    import secrets

    import pyarrow as pa

    long = secrets.token_hex(128 * 1024)  # random: it does not compress
    notes = pa.DictionaryArray.from_arrays(pa.array([0] * 300, pa.int32()), pa.array([long]))
    src = tmp_path / "dict.parquet"
    _parquet_with(src, _person(84), notes, rows=300)
    assert src.stat().st_size < 1 << 20
    r, peak = _scan_traced(src)
    assert [(os.path.basename(i.source), i.code) for i in r.issues] == [("dict.parquet", "zip_bomb")]
    assert peak < 32 << 20, f"peak {peak >> 20} MiB"


def _first_row_values(p: dict[str, str]) -> list[str]:
    return [p["name"], p["id_number"], p["mobile"], p["address"]]


def test_a_file_without_a_header_does_not_name_columns_by_its_first_row(tmp_path: Path) -> None:
    """Headerless exports are common: the first row, a resident's whole ID number, mobile and address,
    was taken for the header and printed as the column of every finding below it."""
    import json

    from pivault.scan import to_json, to_sarif

    people = [p for p in (dict(r) for r in generate(40, 85)) if p["mobile"]][:5]
    share = tmp_path / "share"
    share.mkdir()
    lines = [",".join(str(p[k]) for k in ("name", "id_number", "mobile", "address")) for p in people]
    (share / "export.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    for p in people:
        ws.append([str(p[k]) for k in ("name", "id_number", "mobile", "address")])
    wb.save(share / "export.xlsx")
    r = _scan(share)
    kinds = {(os.path.basename(f.file or ""), f.kind) for f in r}
    assert {("export.csv", "id_number"), ("export.xlsx", "id_number"), ("export.csv", "mobile")} <= kinds
    report = json.dumps(to_json(r), ensure_ascii=False) + json.dumps(to_sarif(r), ensure_ascii=False)
    for value in _first_row_values({k: str(v) for k, v in people[0].items()}):
        assert value not in report, "a value of the first row is in the report"
    assert {f.column for f in r if f.line and f.line > 1} <= {"#1", "#2", "#3", "#4", "B", "C", "D", None}


def test_column_names_that_are_a_residents_values_are_not_printed(tmp_path: Path) -> None:
    """A headerless CSV read by a tool that takes its first row for names (pandas does), saved as
    Parquet or as an SQLite table: the names are the first resident's values."""
    import json
    import sqlite3

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pivault.scan import scan_database, to_json

    people = [{k: str(v) for k, v in r.items()} for r in generate(40, 86) if r["mobile"]][:4]
    first, rest = people[0], people[1:]
    names = [first["name"], first["id_number"], first["mobile"]]
    columns = {n: [p[k] for p in rest] for n, k in zip(names, ("name", "id_number", "mobile"), strict=True)}
    pq.write_table(pa.table(columns), tmp_path / "export.parquet")
    db = tmp_path / "export.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE t (" + ", ".join(f'"{n}" TEXT' for n in names) + ")")
        con.executemany("INSERT INTO t VALUES (?, ?, ?)",
                        [(p["name"], p["id_number"], p["mobile"]) for p in rest])
    for report in (_scan(tmp_path / "export.parquet"), scan_database(f"sqlite:///{db}", full=True)):
        assert {f.kind for f in report} >= {"id_number", "mobile"}
        text = json.dumps(to_json(report), ensure_ascii=False)
        for value in names[1:]:
            assert value not in text, "a column name that is a resident's value is in the report"


def test_a_name_before_a_colon_is_not_printed_as_the_column(tmp_path: Path) -> None:
    """A contact list ('王伟：138…') is the commonest shape of all: the key before a value was
    reported as its column, so every masked mobile came with its holder's whole name."""
    from pivault.scan import scan_text

    people = [p for p in ({k: str(v) for k, v in r.items()} for r in generate(40, 88)) if p["mobile"]][:4]
    text = "".join(f"{p['name']}：{p['mobile']}\n" for p in people[:3])
    text += f"{people[3]['name']}={people[3]['mobile']}\n"
    text += f"手机：{people[0]['mobile']}\n电话={people[1]['mobile']}\n"
    found = scan_text(text)
    assert sum(f.kind == "mobile" for f in found) == 6
    columns = [f.column for f in found]
    for p in people:
        assert p["name"] not in columns, columns
    assert "手机" in columns and "电话" in columns  # keys are still keys


def _register(people: list[dict[str, str]]) -> str:
    """Chinese-heavy lines (a name, an address, a note) and one ID number at the end."""
    lines = [f"{p['name']}住{p['address']}，备注：{p['notes']}\n" for p in people]
    return "".join(lines) + f"身份证号：{people[0]['id_number']}\n"


def test_utf16_without_a_mark_and_utf32_are_read(tmp_path: Path) -> None:
    """A Chinese register saved as UTF-16 without a BOM has NULs only beside its few ASCII
    characters: it was skipped as binary. UTF-32 with a BOM was read as UTF-16 and nothing in
    it was found, without an issue."""
    people = [{k: str(v) for k, v in r.items()} for r in generate(60, 89)][:40]
    text = _register(people)
    share = tmp_path / "share"
    share.mkdir()
    for enc in ("utf-16-le", "utf-16-be", "utf-32", "utf-32-le"):
        data = text.encode(enc)
        if enc == "utf-32-le":
            data = codecs.BOM_UTF32_LE + data
        (share / f"register.{enc}.txt").write_bytes(data)
    r = _scan(share)
    assert r.issues == []
    for enc in ("utf-16-le", "utf-16-be", "utf-32", "utf-32-le"):
        src = str(share / f"register.{enc}.txt")
        assert r.counts[(src, "id_number")] == 1, enc
        assert r.counts[(src, "address")] == 40, enc
    # data with NULs on one side that does not read as text is still binary
    import random

    rnd = random.Random(89)
    pairs = [(rnd.randrange(1, 32), 0) if i % 10 == 0 else (rnd.randrange(1, 256), 0x4E) for i in range(4096)]
    blob = bytes(b for pair in pairs for b in pair)
    (share / "blob.dat").write_bytes(blob)
    assert [i.code for i in _scan(share / "blob.dat").issues] == ["binary"]


def test_what_a_damaged_archive_holds_before_the_damage_is_found(tmp_path: Path) -> None:
    """A truncated copy (a transfer cut short, a full disk) is the commonest damaged archive: a
    decompressor's read that met the damage dropped everything it had decompressed, and the
    values held back for the next chunk were never scanned, so nothing at all was found."""
    import gzip
    import io
    import lzma
    import zipfile

    people = [{k: str(v) for k, v in r.items()} for r in generate(3000, 90) if r["mobile"]][:2000]
    text = "".join(f"身份证号{p['id_number']} 手机{p['mobile']}\n" for p in people).encode()
    share = tmp_path / "share"
    share.mkdir()
    gz = gzip.compress(text)
    (share / "cut.log.gz").write_bytes(gz[: len(gz) * 3 // 4])
    (share / "padded.log.gz").write_bytes(gz + b"garbage")
    xz = lzma.compress(text)
    (share / "cut.log.xz").write_bytes(xz[: len(xz) * 3 // 4])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("export.log", text)
    damaged = bytearray(buf.getvalue())
    damaged[len(damaged) * 3 // 4 : len(damaged) * 3 // 4 + 64] = b"\xff" * 64
    (share / "damaged.zip").write_bytes(bytes(damaged))
    r = _scan(share)
    assert {(os.path.basename(i.source), i.code) for i in r.issues} == {
        ("cut.log.gz", "corrupt"), ("padded.log.gz", "corrupt"), ("cut.log.xz", "corrupt"),
        ("damaged.zip!export.log", "corrupt")}
    n = len(people)
    assert r.counts[(str(share / "padded.log.gz"), "id_number")] == n
    for name in ("cut.log.gz", "cut.log.xz", "damaged.zip"):
        found = r.counts[(str(share / name), "id_number")]
        assert found > n // 2, f"{name}: {found} of the ID numbers before the damage"


def test_values_in_file_and_member_names_are_found(tmp_path: Path) -> None:
    """Scans of ID cards saved under the holder's ID number, an export per resident named by
    mobile: the name is a copy of the value, but the scanner read contents only, and an image
    or an encrypted member was 'binary' or 'unreadable', nothing found."""
    import io
    import tarfile
    import zipfile

    p = _person(91)
    share = tmp_path / "share"
    share.mkdir()
    (share / f"{p['id_number']}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    (share / f"{p['name']}_{p['mobile']}.txt").write_text("见附件\n", encoding="utf-8")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(f"photos/{p['id_number']}_front.png", b"\x89PNG\r\n\x1a\n" + bytes(64))
    (share / "photos.zip").write_bytes(buf.getvalue())
    tbuf = io.BytesIO()
    with tarfile.open(fileobj=tbuf, mode="w") as t:
        info = tarfile.TarInfo(f"cards/{p['mobile']}.txt")
        info.size = 3
        t.addfile(info, io.BytesIO(b"n/a"))
    (share / "cards.tar").write_bytes(tbuf.getvalue())
    r = _scan(share)
    found = {(os.path.relpath(f.file or "", share), f.kind, f.column) for f in r}
    assert found == {
        (f"{p['id_number']}.jpg", "id_number", "file name"),
        (f"{p['name']}_{p['mobile']}.txt", "mobile", "file name"),
        (f"photos.zip!photos/{p['id_number']}_front.png", "id_number", "file name"),
        (f"cards.tar!cards/{p['mobile']}.txt", "mobile", "file name"),
    }
    assert all(p["id_number"] not in f.masked and p["mobile"] not in f.masked for f in r)


def _sparse_tar(data: bytes, declared: int) -> bytes:
    """A GNU tar whose one member is sparse: ``data``, then a hole up to ``declared`` bytes."""
    import tarfile

    gnu = tarfile.GNU_FORMAT
    info = tarfile.TarInfo("big.log")
    info.size = len(data)
    info.type = tarfile.GNUTYPE_SPARSE
    head = bytearray(info.tobuf(gnu)[:512])
    head[386:398] = tarfile.itn(0, 12, gnu)  # the one stretch of data: at 0, len(data) bytes
    head[398:410] = tarfile.itn(len(data), 12, gnu)
    head[483:495] = tarfile.itn(declared, 12, gnu)  # the size once the holes are read as NULs
    head[148:156] = b" " * 8
    head[148:155] = b"%06o\0" % sum(head)
    pad = -len(data) % 512
    return bytes(head) + data + bytes(pad) + bytes(1024)


def test_a_sparse_tar_member_is_held_to_the_archive_limits(tmp_path: Path) -> None:
    """100 KB of tar can declare a member of a terabyte, mostly a hole that reads back as NULs:
    the scan read it for ever (a sweep that never ends). It is now stopped as a bomb, and what
    came before the hole is still found."""
    import json
    import subprocess
    import sys
    import tarfile

    p = _person(92)
    data = f"身份证号{p['id_number']}\n".encode() * 4000  # more than the 64 KiB that decide the encoding
    src = tmp_path / "sparse.tar"
    src.write_bytes(_sparse_tar(data, 1 << 40))
    with tarfile.open(src, "r|") as t:  # a real sparse member, as tarfile reads it
        (member,) = list(t)
        assert member.issparse() and member.size == 1 << 40
    # in a process of its own, so that a scan that never ends fails the test instead of hanging it
    script = ("import json, sys; from pivault.scan import ScanOptions, scan_paths; "
              "r = scan_paths([sys.argv[1]], ScanOptions(workers=1)); "
              "print(json.dumps([dict(r.totals()), [(i.source, i.code) for i in r.issues]]))")
    try:
        out = subprocess.run([sys.executable, "-c", script, str(src)], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    except subprocess.TimeoutExpired:
        raise AssertionError("the scan of a 100 KB tar did not end within a minute") from None
    totals, issues = json.loads(out)
    assert [(os.path.basename(s), c) for s, c in issues] == [("sparse.tar!big.log", "zip_bomb")]
    assert totals == {"id_number": 4000}


def test_gb18030_after_an_ascii_start_is_read_as_gb18030(tmp_path: Path) -> None:
    """The encoding was decided on the first 64 KiB: a log whose Chinese lines come later, in
    GB18030, was read as UTF-8, and the labels before passports, names and addresses were bytes
    of nothing. Numbers were still found, passports and names never."""
    p = _person(93)
    ascii_start = b"2024-05-01 12:00:00 INFO job started, all good\n" * 2000
    line = f"护照号E12345678，姓名：{p['name']}，地址：{p['address']}，身份证号{p['id_number']}\n"
    src = tmp_path / "app.log"
    src.write_bytes(ascii_start + line.encode("gb18030"))
    r = _scan(src)
    assert r.totals() == {"passport": 1, "name": 1, "address": 1, "id_number": 1}
    assert [i.code for i in r.issues] == ["encoding"]
    assert {f.line for f in r} == {2001}


def test_an_archive_member_that_is_not_read_is_named(tmp_path: Path) -> None:
    """A binary member, or one in an unknown encoding, was reported under the archive's name
    alone: the officer could not tell which of its thousand members went unread."""
    import io
    import zipfile

    p = _person(94)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("export/ok.csv", f"身份证号\n{p['id_number']}\n")
        z.writestr("export/blob.dat", bytes(range(256)) * 16)
        z.writestr("export/latin.txt", b"\xe9t\xe9 " * 3000 + p["mobile"].encode())
    (tmp_path / "share.zip").write_bytes(buf.getvalue())
    r = _scan(tmp_path / "share.zip")
    assert {(os.path.relpath(i.source, tmp_path), i.code) for i in r.issues} == {
        ("share.zip!export/blob.dat", "binary"), ("share.zip!export/latin.txt", "encoding")}
    assert r.totals() == {"id_number": 1, "mobile": 1}
