"""Source files as streams of rows: CSV/TSV, JSON Lines, Parquet.

Every reader holds one row (or one Parquet batch) in memory at a time, so a
file of any size imports in flat memory. A row that cannot be read as a row
(wrong number of fields, bytes that are not text in the file's encoding,
a line that is not a JSON object) is not an exception: it comes out as a
:class:`RawRow` with an ``error`` code, and the import turns it into a reject
record like any other bad row, with its line number. Nothing is dropped.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

from pivault.arrowtext import text_lengths
from pivault.errors import ConfigError, PivaultError

__all__ = [
    "MAX_COLUMNS",
    "Format",
    "RawRow",
    "ReaderError",
    "Source",
    "UnreadableRows",
    "check_columns",
    "detect_encoding",
    "detect_format",
    "open_source",
    "stamp",
]

Format = Literal["csv", "tsv", "jsonl", "parquet"]

#: bytes examined to choose between UTF-8 and GB18030
SNIFF_BYTES = 1 << 20
#: a single CSV field larger than this is a broken file, not a resident
FIELD_LIMIT = 1 << 20
#: a row longer than this (characters of a CSV/TSV row's lines together, bytes of a JSON Lines
#: line) is not a resident either; it is read in pieces and becomes a reject (``row.size``)
#: without ever being held whole: a file that is one 200 MB line must not need 200 MB
ROW_LIMIT = 4 << 20
#: what a ``row.size`` reject keeps of its row: enough to find it in the file
KEPT_CHARS = 64 << 10
#: the most columns a header may have (Excel's widest sheet). More is not a table of residents:
#: JSON objects keyed by their values (an ID number, a row number) make a column of every key
MAX_COLUMNS = 16_384
_SURROGATE = re.compile("[\udc80-\udcff]")


class ReaderError(ConfigError):
    """The file as a whole cannot be read; nothing was imported."""

    code = "import.format"


class UnreadableRows(PivaultError):
    """A part of a file, past its start, cannot be read (a damaged Parquet row group).

    The import stops there; the chunks committed before it stand, and a rerun
    of the same file stops at the same place.
    """

    code = "import.unreadable"


@dataclass(slots=True)
class RawRow:
    """One source row, before validation.

    ``line`` is the 1-based line where the row starts (CSV, JSON Lines; the
    header is line 1 of a CSV) or the 1-based row number (Parquet).
    ``cells`` follow the header's column order. ``error`` is set when the row
    is structurally broken; ``text`` then holds what was read, if the row
    could not be split into cells.
    """

    line: int
    cells: list[str | None]
    error: str | None = None
    text: str | None = None


class Source(Protocol):
    """An opened source file: its header and its rows."""

    path: Path
    format: Format
    encoding: str | None
    header: tuple[str, ...]
    #: the unit of :meth:`position`: total bytes for text files, rows for Parquet
    size: int
    #: the file's :func:`stamp` when it was opened (before its header was read)
    stamp: tuple[int, ...]

    def rows(self, skip: int = 0, columns: Sequence[int] | None = None) -> Iterator[RawRow]:
        """Rows after the first ``skip`` data rows; ``columns`` limits what is read."""
        ...

    def position(self) -> int:
        """How far the reader got, in the unit of :attr:`size`."""
        ...


def stamp(path: Path) -> tuple[int, ...]:
    """What changes when a file is written or replaced: device, inode, size, modification time."""
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


# -- detection ---------------------------------------------------------------

def detect_format(path: Path) -> Format:
    """From the extension, else from the first bytes.

    A ``.txt`` file is CSV or TSV by its first line: Excel's "Text (Tab delimited)"
    and many an export write tab-separated ``.txt`` files.
    """
    ext = path.suffix.lower()
    if ext in (".parquet", ".pq"):
        return "parquet"
    if ext in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if ext in (".tsv", ".tab"):
        return "tsv"
    if ext == ".csv":
        return "csv"
    with open(path, "rb") as fh:
        head = fh.read(64 * 1024)
    if ext != ".txt":
        if head[:4] == b"PAR1":
            return "parquet"
        if head.lstrip(codecs.BOM_UTF8).lstrip()[:1] == b"{":
            return "jsonl"
    return "tsv" if _tabs_first(head) else "csv"


def _tabs_first(head: bytes) -> bool:
    """Whether the first non-blank line has more tabs than commas."""
    body = head.lstrip(codecs.BOM_UTF8).lstrip()
    first = body.split(b"\n", 1)[0]
    return first.count(b"\t") > first.count(b",")


#: bytes no text file holds but by mistake: C0 controls but tab, line ends, form feed and escape
_CONTROL_BYTES = bytes([*range(0x00, 0x09), *range(0x0E, 0x1B), *range(0x1C, 0x20), 0x7F])


def detect_encoding(path: Path) -> str:
    """UTF-8 (with or without BOM) if the first MiB decodes strictly, else GB18030.

    A later byte sequence that does not decode makes a reject (code
    ``encoding``) for its row, not a failed import.
    """
    with open(path, "rb") as fh:
        head = fh.read(SNIFF_BYTES)
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ReaderError("UTF-16 files are not supported", code="import.encoding",
                          hint="convert the file to UTF-8 (iconv -f UTF-16 -t UTF-8)")
    controls = len(head) - len(head.translate(None, _CONTROL_BYTES))
    if controls > max(1, len(head) // 100):
        # a spreadsheet, an archive, UTF-16 without its byte-order mark (every other byte NUL);
        # a NUL or two in a text file (a C string's terminator left in a cell) are bad rows
        # of it, rejects like any other, not a reason to refuse the whole file
        raise ReaderError("the file holds NUL or other control bytes: it is not a text file",
                          hint="export the data as CSV, JSON Lines or Parquet")
    try:
        codecs.getincrementaldecoder("utf-8")("strict").decode(head, final=False)
        return "utf-8"
    except UnicodeDecodeError:
        return "gb18030"


def _check_encoding(name: str) -> str:
    """The codec's name, if the files can be read in it; one clear error otherwise.

    Accepted: text encodings in which every ASCII byte stands for itself (UTF-8,
    GB18030, GBK, Big5, Latin-1 …). There the delimiters, quotes and line ends
    are what the CSV reader looks for, and a byte that does not decode becomes a
    reject of its row. In UTF-16, UTF-32, UTF-7 or the ISO-2022 and escape
    codecs they are not, and a bad byte would stop the import half-way through a
    batch that every rerun would stop in again; ``rot13``, ``base64`` and their
    like do not turn bytes into text at all. All are refused before any batch.
    """
    try:
        info = codecs.lookup(name)
    except LookupError:
        raise ReaderError("unknown text encoding", code="import.encoding",
                          hint="use utf-8, utf-8-sig, gb18030 or gbk") from None
    if not getattr(info, "_is_text_encoding", True):
        raise ReaderError(f"{info.name} is not a text encoding", code="import.encoding",
                          hint="use utf-8, utf-8-sig, gb18030 or gbk") from None
    try:
        ascii_safe = all(bytes([b]).decode(info.name) == chr(b) for b in range(128))
    except UnicodeError:
        ascii_safe = False
    if not ascii_safe:
        raise ReaderError(f"{info.name} files are not supported: pivault reads encodings that keep "
                          "every ASCII byte as it is (utf-8, gb18030, gbk, big5, latin-1 …)",
                          code="import.encoding",
                          hint=f"convert the file to UTF-8 (iconv -f {info.name} -t UTF-8)")
    return info.name


def open_source(path: str | os.PathLike[str], *, encoding: str | None = None,
                format: Format | None = None) -> Source:
    """Open ``path`` and read its header (one clear error if that is impossible)."""
    p = Path(path)
    if not p.is_file():
        if p.exists():  # a directory, a FIFO (opening one waits for a writer), a device
            raise ReaderError(f"not a regular file: {p.name}", code="import.file",
                              hint="give the path of a CSV, TSV, JSON Lines or Parquet file")
        raise ReaderError(f"no such file: {p.name}", code="import.file")
    fmt = format or detect_format(p)
    if fmt == "parquet":
        return ParquetSource(p)
    enc = _check_encoding(encoding) if encoding else detect_encoding(p)
    if fmt == "jsonl":
        return JsonLinesSource(p, enc)
    return DelimitedSource(p, enc, "\t" if fmt == "tsv" else ",")


def _check_width(columns: int) -> None:
    """One clear error for a header of more than :data:`MAX_COLUMNS` columns."""
    if columns > MAX_COLUMNS:
        raise ReaderError(f"the header has more than {MAX_COLUMNS:,} columns: the file is not a "
                          "table of residents", hint="export only the columns of the residents' fields")


def check_columns(source: Source, positions: Mapping[int, str]) -> None:
    """Whether the columns mapped to fields (position -> field) can be read as text; one error if not.

    Only Parquet has column types: a column of lists or records is refused
    here, with the header's other errors, before any row of any file is read.
    """
    if isinstance(source, ParquetSource):
        source.check_columns(positions)


# -- CSV / TSV ---------------------------------------------------------------

csv.field_size_limit(FIELD_LIMIT)


class _RowTooLong(Exception):
    """Raised by :class:`_Lines` in place of a line that would make its row too long."""


class _Lines:
    """The physical lines of a text file for the CSV reader, never more than a row can hold.

    ``readline`` without a limit reads a line whole, however long: a file that
    is one 200 MB line would take gigabytes to read. Here a row's lines
    together are at most :data:`ROW_LIMIT` characters; the line that would
    pass it is read on in pieces to its end, kept only in part
    (:attr:`kept`), and raises :class:`_RowTooLong` instead of reaching the
    CSV reader, which then starts afresh at the next line.
    """

    def __init__(self, text: io.TextIOWrapper) -> None:
        self._readline = text.readline
        #: physical lines read so far
        self.count = 0
        #: the lines of the current row (:meth:`new_row` starts another)
        self.consumed: list[str] = []
        #: what a row that was too long keeps of itself
        self.kept = ""
        self._size = 0
        self._cr = False  # the last piece read ended with a CR whose LF may follow
        #: whole lines handed back by :meth:`read_again`, the next one last
        self._again: list[str] = []

    def new_row(self) -> None:
        self.consumed.clear()
        self._size = 0

    def read_again(self, lines: Sequence[str]) -> None:
        """Give back ``lines`` (whole lines, as :attr:`consumed` holds them) to be read next."""
        self._again.extend(reversed(lines))
        self.count -= len(lines)

    def _read(self, limit: int) -> str:
        """Up to ``limit`` characters of the next line, as ``readline`` reads them."""
        if not self._again:
            return self._readline(limit)
        line = self._again.pop()
        if len(line) > limit:  # the rest is read next, as readline would leave it
            self._again.append(line[limit:])
            line = line[:limit]
        return line

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        limit = ROW_LIMIT - self._size + 1
        line = self._read(limit) if self._again else self._readline(limit)
        if self._cr and line.startswith("\n"):
            line = line[1:] or self._read(ROW_LIMIT - self._size + 1)  # the rest of a CRLF
        self._cr = False
        if not line:
            raise StopIteration
        self.count += 1
        if self._size + len(line) <= ROW_LIMIT:
            self.consumed.append(line)
            self._size += len(line)
            return line
        self.kept = ("".join(self.consumed) + line)[:KEPT_CHARS]
        while not line.endswith(("\n", "\r")):
            line = self._read(1 << 16)
            if not line:
                break
        self._cr = line.endswith("\r")
        self.new_row()
        raise _RowTooLong


class DelimitedSource:
    """CSV or TSV; the first non-blank row is the header."""

    def __init__(self, path: Path, encoding: str, delimiter: str) -> None:
        self.path = path
        self.format: Format = "tsv" if delimiter == "\t" else "csv"
        self.encoding: str | None = encoding
        self.stamp = stamp(path)
        self.size = self.stamp[2]
        self._delimiter = delimiter
        self._fh: BinaryIO | None = None
        with self._open() as text:
            reader = csv.reader(_Lines(text), delimiter=delimiter, strict=True)
            header: list[str] = []
            try:
                for row in reader:
                    if any(c.strip() for c in row):
                        header = row
                        break
            except csv.Error:
                raise ReaderError("the header row is not valid CSV") from None
            except _RowTooLong:
                raise ReaderError(f"the header row is longer than {ROW_LIMIT >> 20} MiB: "
                                  "the file is not a table of residents") from None
        if not header:
            raise ReaderError("the file is empty: no header row", code="import.empty")
        if delimiter == "," and len(header) == 1 and "\t" in header[0]:
            # one column, whose name is the whole line: the file is separated by tabs (and a
            # table of residents has two columns at least). Said before the mapping names
            # column #1 as unknown, which no --map can fix
            raise ReaderError("the first line is separated by tabs, not commas",
                              hint="name the file .tsv (or .txt) to read it as tab-separated")
        if any(_SURROGATE.search(h) for h in header):
            raise ReaderError("the header row is not text in the file's encoding",
                              code="import.encoding", hint="give the encoding with --encoding")
        # every row must have as many fields as the header line, trailing
        # empty header fields (a trailing delimiter on every line) included
        self._width = len(header)
        while header and not header[-1].strip():
            header.pop()
        _check_width(len(header))
        self.header: tuple[str, ...] = tuple(h.strip() for h in header)

    def _open(self) -> io.TextIOWrapper:
        raw = open(self.path, "rb")  # noqa: SIM115 - closed with the wrapper
        self._fh = raw
        return io.TextIOWrapper(raw, encoding=self.encoding or "utf-8", errors="surrogateescape",
                                newline="")

    def position(self) -> int:
        fh = self._fh
        if fh is None or fh.closed:
            return self.size
        return fh.tell()

    def rows(self, skip: int = 0, columns: Sequence[int] | None = None) -> Iterator[RawRow]:
        width = self._width
        with self._open() as text:
            lines = _Lines(text)  # the physical lines of the current row: lines.consumed
            # strict: a quote in the wrong place is an error for that row (code
            # csv.quoting), not a silently different value; the reader goes on
            # with the next line
            reader = csv.reader(lines, delimiter=self._delimiter, strict=True)
            seen_header = False
            n = 0
            read_again = 0  # characters given back to be read again (see below)
            while True:
                start = lines.count + 1
                lines.new_row()
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except (csv.Error, _RowTooLong) as exc:
                    n += 1
                    again = lines.consumed[1:] if isinstance(exc, csv.Error) else []
                    size = sum(map(len, again))
                    if again and read_again + size <= self.position():
                        # A quote opened a field on the row's first line and was never closed
                        # well: every line after it, to the next quote or the end of the file,
                        # was read into that one field (a stray quote, a field over the size
                        # limit, data ending inside quotes). Those lines are rows of their own,
                        # not one broken row: the first line is the reject, and the reader goes
                        # on with the line after it. At most as much text is read again as was
                        # read from the file: lines built so that each reading again finds
                        # another such row in what it reads would otherwise be read over and
                        # over (hours for a file of a few MB); past that, the row is one
                        # reject, as it was read.
                        read_again += size
                        first = lines.consumed[0]
                        lines.read_again(again)
                        if n > skip and seen_header:
                            yield RawRow(start, [], "csv.quoting", text=first.rstrip("\r\n"))
                        continue
                    if n > skip and seen_header:
                        if isinstance(exc, _RowTooLong):
                            yield RawRow(start, [], "row.size", text=lines.kept)
                            continue
                        code = "csv.field_size" if "field larger" in str(exc) else "csv.quoting"
                        yield RawRow(start, [], code, text="".join(lines.consumed).rstrip("\r\n"))
                    continue
                if not seen_header:
                    if any(c.strip() for c in row):
                        seen_header = True
                    continue
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line: not a row
                n += 1
                if n <= skip:
                    continue
                cells: list[str | None] = list(row)
                error: str | None = None
                if len(row) != width:
                    # never guess which field absorbed or lost a delimiter
                    error = "csv.fields"
                if error is None and _SURROGATE.search("\x1f".join(row)):
                    error = "encoding"
                yield RawRow(start, cells, error)


# -- JSON Lines ---------------------------------------------------------------

_JSON_SCALARS = (str, int, float)


#: JSON Lines: the header is the union of the keys of the objects on these first lines
JSONL_HEADER_LINES = 1000


class JsonLinesSource:
    """One JSON object per line.

    The header is every key seen in the objects of the first
    :data:`JSONL_HEADER_LINES` lines (writers often omit null keys, so the
    first object alone may lack some). A key that first appears later makes
    its row a reject (``json.fields``) rather than a silent loss.
    """

    format: Format = "jsonl"

    def __init__(self, path: Path, encoding: str) -> None:
        self.path = path
        self.encoding: str | None = encoding
        self.stamp = stamp(path)
        self.size = self.stamp[2]
        self._fh: BinaryIO | None = None
        keys: dict[str, None] = {}
        chars = 0
        with open(path, "rb") as fh:
            for i, (line, whole) in enumerate(_json_lines(fh)):
                if i >= JSONL_HEADER_LINES:
                    break
                obj = self._parse(line) if whole else None
                if isinstance(obj, dict):
                    for k in obj:
                        if k not in keys:
                            keys[k] = None
                            chars += len(k)
                    # bounded as a CSV header line is: a thousand lines of keys that are values
                    # would otherwise make a header of gigabytes
                    _check_width(len(keys))
                    if chars > ROW_LIMIT:
                        raise ReaderError(f"the keys of the first lines' objects come to more than "
                                          f"{ROW_LIMIT >> 20} MiB: the file is not a table of residents",
                                          hint="export one object per resident, its fields as keys")
        if not keys:
            raise ReaderError(f"no JSON object in the first {JSONL_HEADER_LINES} lines",
                              code="import.empty")
        self.header: tuple[str, ...] = tuple(keys)

    def _parse(self, line: bytes) -> Any:
        try:
            return json.loads(line.decode(self.encoding or "utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return None

    def position(self) -> int:
        fh = self._fh
        if fh is None or fh.closed:
            return self.size
        return fh.tell()

    def rows(self, skip: int = 0, columns: Sequence[int] | None = None) -> Iterator[RawRow]:
        index = {k: i for i, k in enumerate(self.header)}
        width = len(self.header)
        enc = self.encoding or "utf-8"
        n = 0
        with open(self.path, "rb") as fh:
            self._fh = fh
            for lineno, (line, whole) in enumerate(_json_lines(fh), start=1):
                if not line.strip():
                    continue
                n += 1
                if n <= skip:
                    continue
                if not whole:
                    yield RawRow(lineno, [], "row.size",
                                 text=line.decode(enc, errors="surrogateescape")[:KEPT_CHARS])
                    continue
                try:
                    text = line.decode(enc)
                except UnicodeDecodeError:
                    yield RawRow(lineno, [], "encoding",
                                 text=line.decode(enc, errors="surrogateescape").rstrip("\r\n"))
                    continue
                try:
                    obj = _JSON.decode(text)
                except (ValueError, RecursionError):  # nested deeper than the parser goes: not a row
                    yield RawRow(lineno, [], "json.syntax", text=text.rstrip("\r\n"))
                    continue
                if not isinstance(obj, dict):
                    yield RawRow(lineno, [], "json.type", text=text.rstrip("\r\n"))
                    continue
                if isinstance(obj, _KeyTwice):
                    yield RawRow(lineno, [], "json.fields", text=text.rstrip("\r\n"))
                    continue
                cells: list[str | None] = [None] * width
                error: str | None = None
                extra: list[str] = []
                for k, v in obj.items():
                    i = index.get(k)
                    if v is None:
                        value = None
                    elif isinstance(v, bool) or not isinstance(v, _JSON_SCALARS):
                        error = error or "json.type"
                        value = json.dumps(v, ensure_ascii=False)
                    else:
                        value = v if isinstance(v, str) else str(v)
                    if i is None:
                        error = error or "json.fields"
                        extra.append(value or "")
                    else:
                        cells[i] = value
                if error:
                    cells.extend(extra)
                yield RawRow(lineno, cells, error)


class _KeyTwice(dict[str, Any]):
    """A JSON object that named a key more than once.

    ``json.loads`` keeps the last value without a word, other readers the
    first: which one the row means cannot be told, so it is a reject.
    """


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    return obj if len(obj) == len(pairs) else _KeyTwice(obj)


#: one decoder for every line: ``json.loads`` with a hook would build a new one per call (2 us)
_JSON = json.JSONDecoder(object_pairs_hook=_object)


def _json_lines(fh: BinaryIO) -> Iterator[tuple[bytes, bool]]:
    """Each line of ``fh`` and whether it is whole: one over :data:`ROW_LIMIT` bytes is cut short.

    The rest of a line that is too long is read in pieces and dropped, so
    that a file of one huge line is read in flat memory (see :class:`_Lines`).
    """
    while line := fh.readline(ROW_LIMIT + 1):
        if len(line) <= ROW_LIMIT or line.endswith(b"\n"):
            yield line, True
            continue
        kept = line[:KEPT_CHARS]
        while line and not line.endswith(b"\n"):
            line = fh.readline(1 << 16)
        yield kept, False


# -- Parquet --------------------------------------------------------------------

#: a Parquet file may hold this many times its own size in text (decoded and decompressed), and
#: at least this much: real tables come to a few times their file; more is a decompression bomb
PARQUET_MAX_RATIO = 200
PARQUET_MIN_EXPANDED = 64 << 20
#: text of the rows one Parquet batch turns into Python values at a time
PARQUET_SLICE_BYTES = 16 << 20


class ParquetSource:
    """Parquet, read one record batch at a time; ``line`` is the row number.

    Parquet compresses: a file of 30 KB can hold a value of 300 MB, and a
    dictionary column one long value repeated on every row. So the text a
    file holds is measured on the Arrow arrays before any of it becomes
    Python strings (lengths only, nothing decoded): past
    :data:`PARQUET_MAX_RATIO` times the file's size it is refused, a row
    over :data:`ROW_LIMIT` becomes a ``row.size`` reject that keeps the head
    of each cell, and a batch is turned into values a slice at a time.
    """

    format: Format = "parquet"
    encoding: str | None = None

    def __init__(self, path: Path) -> None:
        import pyarrow.parquet as pq

        self.path = path
        self.stamp = stamp(path)
        try:
            self._file = pq.ParquetFile(path)
        except Exception as exc:
            raise ReaderError(f"not a readable Parquet file ({type(exc).__name__})") from None
        _check_width(len(self._file.schema_arrow.names))
        self.header: tuple[str, ...] = tuple(self._file.schema_arrow.names)
        meta = self._file.metadata
        self.size: int = meta.num_rows
        self._done = 0
        self._limit = max(PARQUET_MAX_RATIO * self.stamp[2], PARQUET_MIN_EXPANDED)
        declared = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
        if declared > self._limit:
            raise self._bomb()

    def check_columns(self, positions: Mapping[int, str]) -> None:
        """One error, before any row is read, for a mapped column that holds lists or records.

        ``str()`` of such a value is Python's picture of it (``['…', '…']``),
        not anything an operator meant to store as a field.
        """
        import pyarrow as pa

        schema = self._file.schema_arrow
        for i, fld in sorted(positions.items()):
            t = schema.field(i).type
            if pa.types.is_dictionary(t):
                t = t.value_type
            if pa.types.is_nested(t):
                raise ReaderError(f"the column mapped to {fld} (#{i + 1}) holds lists or records, not text",
                                  code="import.mapping",
                                  hint="map another column to it, or leave this one out with --ignore COLUMN")

    def _bomb(self) -> ReaderError:
        return ReaderError(f"the Parquet file expands to more than {PARQUET_MAX_RATIO} times its size: "
                           "it is not a table of residents (a decompression bomb?)",
                           hint="export the data again, or as CSV or JSON Lines")

    def position(self) -> int:
        return self._done

    def rows(self, skip: int = 0, columns: Sequence[int] | None = None) -> Iterator[RawRow]:
        meta = self._file.metadata
        wanted = sorted(set(columns)) if columns is not None else list(range(len(self.header)))
        names = [self.header[i] for i in wanted]
        width = len(self.header)
        row_no = 0
        expanded = 0
        first_batch = True
        for rg in range(meta.num_row_groups):
            count = meta.row_group(rg).num_rows
            if row_no + count <= skip:
                row_no += count
                self._done = row_no
                continue
            start = row_no
            with self._reading(rg, start, count):
                batches = self._file.iter_batches(batch_size=8192, row_groups=[rg], columns=names)
            while True:
                with self._reading(rg, start, count):
                    batch = next(batches, None)
                    if batch is None:
                        break
                    sizes = _row_bytes(batch)
                expanded += sizes.total
                if expanded > self._limit:
                    # past the first rows, the chunks before are committed: not "nothing imported"
                    raise self._bomb() if first_batch and skip == 0 else \
                        self._unreadable(rg, start, count, f"expands past {PARQUET_MAX_RATIO} times the "
                                         "file's size: a decompression bomb?")
                first_batch = False
                for first, stop in sizes.slices():
                    with self._reading(rg, start, count):
                        part = batch.slice(first, stop - first)
                        big = sizes.over_limit(first, stop)
                        cols = [_values(part.column(j), big) for j in range(len(names))]
                    for k in range(part.num_rows):
                        row_no += 1
                        if row_no <= skip:
                            continue
                        cells: list[str | None] = [None] * width
                        error: str | None = "row.size" if k in big else None
                        for j, i in enumerate(wanted):
                            v = cols[j][k]
                            if v is None or isinstance(v, str):
                                cells[i] = v
                            elif isinstance(v, bytes):
                                try:
                                    cells[i] = v.decode("utf-8")
                                except UnicodeDecodeError:
                                    cells[i] = v.decode("utf-8", errors="surrogateescape")
                                    error = error or "encoding"
                            else:
                                cells[i] = str(v)
                        self._done = row_no
                        yield RawRow(row_no, cells, error)
            if row_no != start + count:
                # a resume skips row groups by the footer's counts: rows numbered otherwise would
                # be skipped, or imported twice, by the next run of the batch
                raise self._unreadable(rg, start, count, "its rows are not as many as the footer says")
        self._done = row_no

    @contextlib.contextmanager
    def _reading(self, rg: int, start: int, count: int) -> Iterator[None]:
        """Arrow's failures to read row group ``rg`` (rows ``start + 1`` on) as one clear error.

        A data page changed on the way (a bad disk, a copy cut short and patched) or a codec
        this pyarrow lacks surfaces from Arrow as ``OSError``, its own ``ArrowInvalid`` or
        ``ArrowIndexError``, and a value out of Python's range (a timestamp in the year 60000)
        as ``OverflowError``: without this, a traceback, or "error[io]: OSError" that names no
        file and no place. Arrow's message is left out: it may quote a value.
        """
        import pyarrow as pa

        try:
            yield
        except (OSError, ArithmeticError, ValueError, IndexError, pa.ArrowException) as exc:
            raise self._unreadable(rg, start, count, type(exc).__name__) from None

    def _unreadable(self, rg: int, start: int, count: int, why: str) -> UnreadableRows:
        return UnreadableRows(
            f"{self.path.name}: row group {rg + 1} (rows {start + 1}-{start + count}) cannot be read "
            f"({why}): the file is damaged, or holds what pivault cannot read as text",
            hint="the rows committed before it are kept; import an undamaged copy of the file (a new "
                 "batch: the rows already imported count as duplicates), or export it again")


@dataclass(slots=True)
class _RowBytes:
    """The text each row of a record batch holds, in bytes (``per_row`` only when some row needs it)."""

    rows: int
    total: int
    per_row: list[int] | None

    def slices(self) -> Iterator[tuple[int, int]]:
        """``(first, stop)`` ranges of rows holding at most :data:`PARQUET_SLICE_BYTES` (or one row)."""
        if self.per_row is None:
            yield 0, self.rows
            return
        first, held = 0, 0
        for k, n in enumerate(self.per_row):
            n = min(n, KEPT_CHARS)  # a row over the limit gives only the head of its cells
            if k > first and held + n > PARQUET_SLICE_BYTES:
                yield first, k
                first, held = k, 0
            held += n
        if self.rows > first:
            yield first, self.rows

    def over_limit(self, first: int, stop: int) -> set[int]:
        """Rows of ``first:stop`` (numbered from ``first``) longer than :data:`ROW_LIMIT`."""
        if self.per_row is None:
            return set()
        return {k - first for k in range(first, stop) if self.per_row[k] > ROW_LIMIT}


def _row_bytes(batch: Any) -> _RowBytes:
    """How much text a record batch holds, measured on its Arrow arrays (nothing is decoded)."""
    import pyarrow.compute as pc

    total = None
    for j in range(batch.num_columns):
        lengths = text_lengths(batch.column(j))
        if lengths is not None:
            lengths = pc.fill_null(lengths, 0)
            total = lengths if total is None else pc.add(total, lengths)
    if total is None or batch.num_rows == 0:
        return _RowBytes(batch.num_rows, 0, None)
    whole = int(pc.sum(total).as_py())
    if whole <= PARQUET_SLICE_BYTES and int(pc.max(total).as_py()) <= ROW_LIMIT:
        return _RowBytes(batch.num_rows, whole, None)  # the usual batch: taken in one piece
    return _RowBytes(batch.num_rows, whole, total.to_pylist())


def _values(col: Any, big: set[int]) -> list[Any]:
    """A column's Python values; of the rows in ``big`` only the first :data:`KEPT_CHARS` of each.

    A text column is UTF-8 by Parquet's rules, but nothing stops a writer from putting other
    bytes in it (GBK text from a careless exporter), and Arrow turns those into Python's
    ``UnicodeDecodeError``. Such a column is then read as bytes, so that each value that is not
    UTF-8 makes its own row an ``encoding`` reject (:meth:`ParquetSource.rows`).
    """
    try:
        if not big:
            return list(col.to_pylist())
        return [_head(col, k) if k in big else col[k].as_py() for k in range(len(col))]
    except UnicodeDecodeError:
        as_bytes = _as_bytes(col)
        if as_bytes is None:
            raise
        return _values(as_bytes, big)


def _as_bytes(col: Any) -> Any:
    """A text column (or a dictionary of text) as binary, its bytes unchanged; None for other types."""
    import pyarrow as pa

    t = col.type
    if pa.types.is_dictionary(t):
        values = _as_bytes(col.dictionary)
        return None if values is None else pa.DictionaryArray.from_arrays(col.indices, values)
    if pa.types.is_string(t):
        return col.view(pa.binary())
    if pa.types.is_large_string(t):
        return col.view(pa.large_binary())
    return None


def _head(col: Any, k: int) -> Any:
    """The start of value ``k``, cut in Arrow so that a value of hundreds of MB is never copied whole."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = col.type
    if pa.types.is_dictionary(t):
        index = col.indices[k].as_py()
        return None if index is None else _head(col.dictionary, index)
    one = col.slice(k, 1)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        one = pc.utf8_slice_codeunits(one, 0, KEPT_CHARS)
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
        one = pc.binary_slice(one, 0, KEPT_CHARS)
    return one[0].as_py()
