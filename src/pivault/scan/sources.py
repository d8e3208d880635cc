"""Opening what a path holds: text, spreadsheets, documents, Parquet, SQLite, archives.

The format is told by the first bytes (not the file name), the CSV delimiter
by the name. Archives (.zip, .gz, .bz2, .xz, .tar and their combinations) are
opened as streams and scanned member by member, under three limits:

- nesting: an archive deeper than ``max_depth`` inside others is reported,
  not opened (a nested bomb);
- ratio: a member that expands to more than ``max_ratio`` times its
  compressed size (and past a floor of 8 MiB) is stopped (a flat bomb);
- total: everything one file expands to is capped at
  ``max(max_ratio × its size, 64 MiB)`` and at ``max_expanded``.

Each breach, a corrupt archive or an unreadable member becomes a
:class:`ScanIssue` and the scan goes on with the next member or file.
"""

from __future__ import annotations

import bz2
import gzip
import io
import itertools
import lzma
import operator
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, cast

from pivault.arrowtext import text_lengths
from pivault.scan.engine import Engine, get_engine
from pivault.scan.findings import Finding, ScanOptions, SourceResult
from pivault.scan.stream import (
    Collector,
    Readable,
    header_is_data,
    scan_binary_stream,
    scan_columns,
)

#: the column of a value found in a file's or a member's name
NAME_COLUMN = "file name"
RATIO_FLOOR = 8 * 1024 * 1024
#: decompressed bytes asked of an archive at a time: what came before a damage is kept to this
PIECE = 64 * 1024
TOTAL_FLOOR = 64 * 1024 * 1024
#: archives that need random access (zip, xlsx, Parquet) are read into memory up to this size when nested
NESTED_MEMORY = 64 * 1024 * 1024

_BINARY_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "PDF"),
    (b"\x89PNG", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF8", "GIF image"),
    (b"\x7fELF", "ELF executable"),
    (b"MZ", "Windows executable"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archive"),
    (b"Rar!", "RAR archive"),
    (b"\xd0\xcf\x11\xe0", "legacy Office document"),
    (b"ID3", "MP3 audio"),
    (b"\x00\x00\x00\x18ftyp", "MP4 video"),
    (b"\x00\x00\x00\x20ftyp", "MP4 video"),
    (b"OggS", "Ogg media"),
    (b"RIFF", "RIFF media"),
    (b"\xca\xfe\xba\xbe", "Java class"),
    (b"\x28\xb5\x2f\xfd", "Zstandard stream"),
)


class BombError(Exception):
    """An archive expands past a limit."""


class _Budget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise BombError(f"the file expands to more than {self.limit // (1024 * 1024)} MiB in total")


class _Limited(io.RawIOBase):
    """Counts what a decompressing stream yields; raises :class:`BombError` past its limits."""

    def __init__(self, inner: Readable, member_limit: int, budget: _Budget, ratio: float) -> None:
        self.inner = inner
        self.member_limit = member_limit
        self.budget = budget
        self.ratio = ratio
        self.count = 0
        self.failed: Exception | None = None
        self.read1 = getattr(inner, "read1", None)

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        want = n if n is not None and n >= 0 else 1 << 20
        if self.failed is not None:
            e, self.failed = self.failed, None
            raise e
        if self.read1 is None:
            data = self.inner.read(want)
        else:
            # piece by piece: a decompressor's read(n) that meets the damage of a truncated
            # archive raises and drops everything it had decompressed, whose values went unfound
            parts: list[bytes] = []
            got = 0
            while got < want:
                try:
                    part = self.read1(min(want - got, PIECE))
                except Exception as e:
                    if not parts:
                        raise
                    self.failed = e
                    break
                if not part:
                    break
                parts.append(part)
                got += len(part)
            data = b"".join(parts)
        self.count += len(data)
        if self.count > self.member_limit:
            raise BombError(f"a member expands more than {self.ratio:g} times its compressed size")
        self.budget.take(len(data))
        return data

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


class _Prefixed(io.RawIOBase):
    """``head`` followed by the rest of ``inner``: a stream whose first bytes were read to sniff it."""

    def __init__(self, head: bytes, inner: Readable) -> None:
        self.head = head
        self.inner = inner

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            out = self.head + self.inner.read(-1)
            self.head = b""
            return out
        if self.head:
            out, self.head = self.head[:n], self.head[n:]
            return out
        return self.inner.read(n)

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


@dataclass
class _Ctx:
    engine: Engine
    out: Collector
    options: ScanOptions
    budget: _Budget
    bytes_read: int = 0


def _csv_sep(name: str) -> bytes | None:
    low = name.lower()
    for ext in (".gz", ".bz2", ".xz"):
        if low.endswith(ext):
            low = low[: -len(ext)]
    if low.endswith(".csv"):
        return b","
    if low.endswith(".tsv") or low.endswith(".tab"):
        return b"\t"
    return None


class _Failed(io.RawIOBase):
    """The rest of a stream whose read failed: the failure again, once what came before is scanned."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        raise self.error


def _read_head(f: Readable, n: int) -> tuple[bytes, Readable]:
    """The first ``n`` bytes, and the stream to read the rest from.

    A truncated or damaged archive fails part-way: what it gave before the
    damage is returned (and scanned), the failure is raised by the next read.
    """
    out = b""
    while len(out) < n:
        try:
            b = f.read(n - len(out))
        except Exception as e:
            if not out:
                raise
            return out, _Failed(e)
        if not b:
            break
        out += b
    return out, f


def _seekable_copy(f: Readable, head: bytes, name: str, ctx: _Ctx) -> BinaryIO | None:
    """The whole stream in memory (for formats that need random access), within :data:`NESTED_MEMORY`."""
    buf = io.BytesIO()
    buf.write(head)
    while True:
        b = f.read(1 << 20)
        if not b:
            break
        buf.write(b)
        if buf.tell() > NESTED_MEMORY:
            ctx.out.issue(
                "too_large",
                f"a nested archive or document larger than {NESTED_MEMORY >> 20} MiB "
                "needs random access: not opened",
                name,
            )
            return None
    buf.seek(0)
    return buf


def scan_stream(f: Readable, name: str, size: int | None, ctx: _Ctx, depth: int, *, seekable: bool) -> None:
    """Scan one input (a file or an archive member) of whatever format its first bytes say."""
    head, f = _read_head(f, min(ctx.options.chunk_size, 1 << 20))
    ctx.bytes_read += len(head)
    low = name.lower()
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        src = cast(BinaryIO, f) if seekable else _seekable_copy(f, head, name, ctx)
        if src is None:
            return
        src.seek(0)
        _zip_family(src, name, size, ctx, depth)
        return
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
        _compressed(_Prefixed(head, f), head, name, size, ctx, depth)
        return
    if len(head) > 262 and head[257:262] == b"ustar":
        _tar(_Prefixed(head, f), name, ctx, depth)
        return
    if head[:4] == b"PAR1":
        src = cast(BinaryIO, f) if seekable else _seekable_copy(f, head, name, ctx)
        if src is None:
            return
        src.seek(0)
        _parquet(src, name, ctx)
        return
    if head[:16] == b"SQLite format 3\x00":
        if seekable and depth == 0:
            from pivault.scan.database import scan_sqlite_into

            scan_sqlite_into(
                name, ctx.engine, ctx.out, full=ctx.options.db_full, sample=ctx.options.db_sample, file=name
            )
        else:
            ctx.out.issue(
                "binary", "an SQLite database inside an archive: not opened (extract it and scan it)", name
            )
        return
    for magic, what in _BINARY_MAGIC:
        if head.startswith(magic):
            ctx.out.issue("binary", f"{what}: binary format, not scanned", name)
            return
    if low.endswith((".xls", ".doc", ".ppt")) and head[:4] == b"\xd0\xcf\x11\xe0":
        ctx.out.issue("binary", "legacy Office format: not scanned", name)
        return
    ctx.bytes_read += scan_binary_stream(
        f, name, ctx.engine, ctx.out, ctx.options, csv_sep=_csv_sep(name), head=head
    ) - len(head)


def _name_hits(name: str, source: str, ctx: _Ctx) -> None:
    """Values in a file's or an archive member's own name (its last part), as findings of it.

    Scans of ID cards saved as ``110105194912310021.jpg``, an export per resident named by
    mobile: the name is a copy of the value, whatever the content is (an image, an encrypted
    member, nothing the scanner reads).
    """
    base = name.rstrip("/").rsplit("/", 1)[-1]
    data = base.encode("utf-8", "surrogateescape")
    for h in ctx.engine.scan(data, 0, len(data), ctx.options.min_confidence):
        ctx.out.add(Finding(h.kind, h.masked, h.confidence, file=source, column=NAME_COLUMN,
                            length=h.end - h.start, detail=h.detail))


def _zip_family(f: BinaryIO, name: str, size: int | None, ctx: _Ctx, depth: int) -> None:
    try:
        z = zipfile.ZipFile(f)
        infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        ctx.out.issue("corrupt", f"corrupt zip archive ({type(e).__name__})", name)
        return
    names = {i.filename for i in infos}
    declared = sum(i.file_size for i in infos)
    packed = max(1, sum(i.compress_size for i in infos))
    ratio = ctx.options.max_ratio
    if declared > max(ratio * packed, RATIO_FLOOR):
        ctx.out.issue(
            "zip_bomb",
            f"zip declares {declared / packed:.0f} times its compressed size (limit {ratio:g}): not opened",
            name,
        )
        return
    with z:
        if "xl/workbook.xml" in names:
            _xlsx(f, name, ctx)
            return
        if _DOCX_BODY in names:
            _docx(z, name, ctx)
            return
        if depth >= ctx.options.max_depth:
            ctx.out.issue(
                "too_deep", f"archive nested deeper than {ctx.options.max_depth} levels: not opened", name
            )
            return
        for info in infos:
            if info.is_dir():
                continue
            member = f"{name}!{info.filename}"
            _name_hits(info.filename, member, ctx)
            if info.flag_bits & 0x1:
                ctx.out.issue("unreadable", "encrypted zip member: not scanned", member)
                continue
            try:
                with z.open(info) as m:
                    lim = _Limited(
                        m, int(max(ratio * max(info.compress_size, 1), RATIO_FLOOR)), ctx.budget, ratio
                    )
                    scan_stream(lim, member, info.file_size, ctx, depth + 1, seekable=False)
            except BombError as e:
                ctx.out.issue("zip_bomb", f"{e}: stopped", member)
                if ctx.budget.used > ctx.budget.limit:
                    return
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, ValueError) as e:
                ctx.out.issue("corrupt", f"corrupt or unsupported zip member ({type(e).__name__})", member)


def _inner_name(name: str) -> str:
    base = name.rsplit("!", 1)[-1].rsplit("/", 1)[-1]
    for ext, repl in ((".tgz", ".tar"), (".gz", ""), (".bz2", ""), (".xz", "")):
        if base.lower().endswith(ext):
            return f"{name}!{base[: -len(ext)] + repl}"
    return f"{name}!{base}.out"


def _compressed(f: Readable, head: bytes, name: str, size: int | None, ctx: _Ctx, depth: int) -> None:
    if depth >= ctx.options.max_depth:
        ctx.out.issue(
            "too_deep", f"archive nested deeper than {ctx.options.max_depth} levels: not opened", name
        )
        return
    inner: Readable
    # the decompressors are closed with the stream they wrap, by the caller
    if head[:2] == b"\x1f\x8b":
        inner = gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[call-overload]
    elif head[:3] == b"BZh":
        inner = bz2.BZ2File(f, "rb")  # type: ignore[call-overload]
    else:
        inner = lzma.LZMAFile(f, "rb")  # type: ignore[arg-type]  # noqa: SIM115
    ratio = ctx.options.max_ratio
    limit = int(max(ratio * (size or 0), RATIO_FLOOR)) if size else ctx.budget.limit
    member = _inner_name(name)
    try:
        scan_stream(_Limited(inner, limit, ctx.budget, ratio), member, None, ctx, depth + 1, seekable=False)
    except BombError as e:
        ctx.out.issue("zip_bomb", f"{e}: stopped", member)
    except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as e:
        ctx.out.issue("corrupt", f"corrupt compressed stream ({type(e).__name__})", name)


def _tar(f: Readable, name: str, ctx: _Ctx, depth: int) -> None:
    if depth >= ctx.options.max_depth:
        ctx.out.issue(
            "too_deep", f"archive nested deeper than {ctx.options.max_depth} levels: not opened", name
        )
        return
    try:
        with tarfile.open(fileobj=f, mode="r|") as tar:  # type: ignore[call-overload]
            for m in tar:
                member = f"{name}!{m.name}"
                if not m.isfile():
                    continue
                _name_hits(m.name, member, ctx)
                ef = tar.extractfile(m)
                if ef is None:
                    continue
                if not m.issparse():
                    scan_stream(ef, member, m.size, ctx, depth + 1, seekable=False)
                    continue
                # a sparse member is mostly holes read back as NULs: 100 KB of tar can declare
                # exabytes, and the scan read them for ever. It is held to the archives' limits.
                stored = sum(n for _, n in m.sparse or ())
                ratio = ctx.options.max_ratio
                lim = _Limited(ef, int(max(ratio * max(stored, 1), RATIO_FLOOR)), ctx.budget, ratio)
                try:
                    scan_stream(lim, member, m.size, ctx, depth + 1, seekable=False)
                except BombError as e:
                    ctx.out.issue("zip_bomb", f"{e}: stopped", member)
                    if ctx.budget.used > ctx.budget.limit:
                        return
    except BombError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError) as e:
        ctx.out.issue("corrupt", f"corrupt tar archive ({type(e).__name__})", name)


def _columns(first: Sequence[object] | None, width: int, ctx: _Ctx) -> tuple[list[str], bool]:
    """Column names from a first row that looks like a header, else spreadsheet letters.

    A row of short texts can be a resident's row stored as text; one that
    holds personal information is never a header (:func:`header_is_data`).
    """

    def letter(i: int) -> str:
        s = ""
        i += 1
        while i:
            i, r = divmod(i - 1, 26)
            s = chr(65 + r) + s
        return s

    if (
        first
        and all(isinstance(v, str) and v.strip() and len(v) < 64 for v in first if v is not None)
        and any(v is not None for v in first)
        and not header_is_data([str(v) for v in first if v is not None], ctx.engine,
                               ctx.options.min_confidence)
    ):
        return [str(v).strip() if v is not None else letter(i) for i, v in enumerate(first)] + [
            letter(i) for i in range(len(first), width)
        ], True
    return [letter(i) for i in range(width)], False


def _xlsx(f: BinaryIO, name: str, ctx: _Ctx) -> None:
    try:
        import openpyxl

        f.seek(0)
        wb = openpyxl.load_workbook(f, read_only=True, data_only=True)
    except Exception as e:  # openpyxl raises many types on bad input
        ctx.out.issue("corrupt", f"unreadable spreadsheet ({type(e).__name__})", name)
        return
    try:
        for ws in wb.worksheets:
            rows = ws.iter_rows(values_only=True)
            first = next(rows, None)
            width = max(ws.max_column or 0, len(first) if first else 0)
            cols, is_header = _columns(first, width, ctx)

            body: Iterable[Sequence[object]] = rows
            if first is not None and not is_header:
                body = itertools.chain([first], rows)
            ctx.bytes_read += scan_columns(
                body,
                cols,
                name,
                ws.title,
                ctx.engine,
                ctx.out,
                first_row=2 if is_header else 1,
            )
    except Exception as e:
        ctx.out.issue("corrupt", f"spreadsheet read failed part-way ({type(e).__name__})", name)
    finally:
        wb.close()


_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_DOCX_BODY = "word/document.xml"


def _docx_events(z: zipfile.ZipFile, name: str, ctx: _Ctx) -> Iterator[tuple[int, list[str]]]:
    """The document's body paragraphs as ``(0, [text])``, the rows of its tables as ``(n, cells)``.

    Read as a stream (each element dropped once read), under the archives' limits: a document
    loaded whole (python-docx) held several times its XML in memory, and a 5 MB file that
    inflates 200 times holds a gigabyte of XML.
    """
    from xml.etree import ElementTree as ET

    info = z.getinfo(_DOCX_BODY)
    with z.open(info) as m:
        lim = _Limited(m, int(max(ctx.options.max_ratio * max(info.compress_size, 1), RATIO_FLOOR)),
                       ctx.budget, ctx.options.max_ratio)
        stack: list[ET.Element] = []
        parts: list[str] = []
        cell: list[str] = []
        row: list[str] = []
        tables = 0
        depth = 0  # tables open around the element
        # expat: no external entity is fetched, and entity expansion is capped
        for event, el in ET.iterparse(lim, events=("start", "end")):
            tag = el.tag
            if event == "start":
                stack.append(el)
                if tag == _W + "tbl":
                    depth += 1
                    if depth == 1:
                        tables += 1
                continue
            stack.pop()
            if tag == _W + "t":
                parts.append(el.text or "")
            elif tag == _W + "tab":
                parts.append("\t")
            elif tag in (_W + "br", _W + "cr"):
                parts.append("\n")
            elif tag == _W + "p":
                text = "".join(parts)
                parts.clear()
                if depth == 0:
                    yield 0, [text]
                else:
                    cell.append(text)
            elif tag == _W + "tc" and depth == 1:
                row.append("\n".join(cell))
                cell.clear()
            elif tag == _W + "tr" and depth == 1:
                yield tables, row
                row = []
            elif tag == _W + "tbl":
                depth -= 1
            if tag in (_W + "p", _W + "tr", _W + "tbl") and stack:
                stack[-1].remove(el)  # what was read is dropped: memory stays flat


class _Lines(io.RawIOBase):
    """The body paragraphs of a document as a byte stream, a paragraph a line."""

    def __init__(self, events: Iterator[tuple[int, list[str]]]) -> None:
        self.events = events
        self.buf = b""

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        want = n if n is not None and n >= 0 else 1 << 20
        parts = [self.buf]
        held = len(self.buf)
        while held < want:
            ev = next(self.events, None)
            if ev is None:
                break
            if ev[0] == 0:
                line = ev[1][0].encode("utf-8", "replace") + b"\n"
                parts.append(line)
                held += len(line)
        data = b"".join(parts)
        out, self.buf = data[:want], data[want:]
        return out


def _docx(z: zipfile.ZipFile, name: str, ctx: _Ctx) -> None:
    """Paragraphs as text (a paragraph a line), then each table with its header row, streamed."""
    try:
        ctx.bytes_read += scan_binary_stream(_Lines(_docx_events(z, name, ctx)), name, ctx.engine,
                                             ctx.out, ctx.options)
        rows = ((n, cells) for n, cells in _docx_events(z, name, ctx) if n)
        for i, group in itertools.groupby(rows, key=operator.itemgetter(0)):
            cells_of = map(operator.itemgetter(1), group)
            first = next(cells_of)
            cols, is_header = _columns(first, len(first), ctx)
            body: Iterable[Sequence[object]] = cells_of
            if not is_header:
                body = itertools.chain([first], body)
            ctx.bytes_read += scan_columns(
                _widen(body, cols, ctx), cols, name, f"table {i}", ctx.engine, ctx.out,
                first_row=2 if is_header else 1,
            )
    except BombError:
        raise
    except Exception as e:
        ctx.out.issue("corrupt", f"unreadable document ({type(e).__name__})", name)


def _widen(rows: Iterable[Sequence[object]], cols: list[str], ctx: _Ctx) -> Iterator[Sequence[object]]:
    """Rows as they come; a row wider than the first gets its extra columns named by letter."""
    for r in rows:
        if len(r) > len(cols):
            cols.extend(_columns(None, len(r), ctx)[0][len(cols):])
        yield r


#: text of the rows of a Parquet batch turned into Python values at a time
PARQUET_SLICE_BYTES = 16 * 1024 * 1024


def _parquet(f: BinaryIO, name: str, ctx: _Ctx) -> None:
    """A Parquet file under the archives' limits.

    Parquet compresses and repeats: 30 KB can hold a 300 MB value, and a
    dictionary column one long value named by every row. What the row groups
    declare, then the text of each batch (measured on its Arrow arrays,
    dictionaries included, before any of it is decoded) is taken from the
    file's expansion budget; rows become Python values 16 MiB at a time.
    """
    try:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(f)
        meta = pf.metadata
        declared = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
        if declared > ctx.budget.limit - ctx.budget.used:
            raise BombError(f"the Parquet file declares {declared // (1024 * 1024)} MiB of data, more "
                            f"than {ctx.budget.limit // (1024 * 1024)} MiB")
        done = 0
        for batch in pf.iter_batches(batch_size=8192):
            cols = list(batch.schema.names)
            sizes = _parquet_row_bytes(batch)
            ctx.budget.take(sum(sizes))
            for first, stop in _parquet_slices(sizes):
                part = batch.slice(first, stop - first)
                data = [part.column(i).to_pylist() for i in range(part.num_columns)]
                rows = list(zip(*data, strict=True))
                ctx.bytes_read += scan_columns(rows, cols, name, None, ctx.engine, ctx.out,
                                               first_row=done + 1)
                done += len(rows)
    except BombError:
        raise
    except Exception as e:
        ctx.out.issue("corrupt", f"unreadable Parquet file ({type(e).__name__})", name)


def _parquet_row_bytes(batch: object) -> list[int]:
    """Bytes of text each row of a record batch holds, from the Arrow arrays' lengths alone."""
    import pyarrow as pa
    import pyarrow.compute as pc

    assert isinstance(batch, pa.RecordBatch)
    total = pa.array([8 * batch.num_columns] * batch.num_rows, pa.int64())
    for j in range(batch.num_columns):
        n = text_lengths(batch.column(j))
        if n is not None:
            total = pc.add(total, pc.fill_null(n, 0).cast(pa.int64()))
    return list(total.to_pylist())


def _parquet_slices(sizes: Sequence[int]) -> Iterable[tuple[int, int]]:
    """``(first, stop)`` row ranges of at most :data:`PARQUET_SLICE_BYTES` of text, or one row."""
    if sum(sizes) <= PARQUET_SLICE_BYTES:
        yield 0, len(sizes)
        return
    first, held = 0, 0
    for k, n in enumerate(sizes):
        if k > first and held + n > PARQUET_SLICE_BYTES:
            yield first, k
            first, held = k, 0
        held += n
    if len(sizes) > first:
        yield first, len(sizes)


def scan_file(path: str, options: ScanOptions, engine: Engine | None = None) -> SourceResult:
    """Scan one file (and what it contains); problems become issues of its result."""
    result = SourceResult(path)
    out = Collector(result, options)
    try:
        st = os.stat(path)
    except OSError as e:
        out.issue("unreadable", f"cannot stat: {e.strerror or type(e).__name__}")
        return result
    if not stat.S_ISREG(st.st_mode):
        out.issue("not_regular", "not a regular file (FIFO, socket or device): not opened")
        return result
    eng = engine or get_engine(options.kinds, options.engine)
    budget = _Budget(int(min(options.max_expanded, max(options.max_ratio * st.st_size, TOTAL_FLOOR))))
    ctx = _Ctx(eng, out, options, budget)
    _name_hits(os.path.basename(path), path, ctx)
    try:
        with open(path, "rb") as f:
            scan_stream(f, path, st.st_size, ctx, 0, seekable=True)
    except BombError as e:
        out.issue("zip_bomb", f"{e}: stopped")
    except PermissionError:
        out.issue("unreadable", "permission denied")
    except OSError as e:
        out.issue("unreadable", f"read failed: {e.strerror or type(e).__name__}")
    except MemoryError:
        out.issue("unreadable", "out of memory while reading")
    result.bytes_scanned = max(ctx.bytes_read, 0)
    return result
