"""Streaming readers for what leaked dumps really look like.

A dump offered for sale is rarely a tidy CSV: it is a ``mysqldump`` of several
tables, a ``pg_dump`` with ``COPY`` blocks, an Excel sheet someone exported, a
JSON array from an API scrape, a Parquet file from a data lake, any of them
gzipped or zipped and re-encoded to GB18030 or UTF-16 on the way. The officer
holding it needs an answer in minutes, and the file may be larger than memory.

So every reader here streams: it sniffs the format from the content (never the
file name, which leaks rename), decodes with a detected encoding, and yields
rows in bounded batches. Nothing is read whole: lines, JSON elements and SQL
tuples are bounded (``max_line_mib``), and a longer one stops that file with a
clear :class:`DumpError` (``line longer than N MiB at line L``) instead of
exhausting memory. Errors name the file, the line and the rule, never a value.

The one entry point is :func:`read_dump`; it yields :class:`Batch` objects,
each holding rows of one :class:`Table` (a CSV file, a sheet, a SQL table, a
JSON array) as lists of strings (``None`` for SQL ``NULL`` / JSON ``null``).
"""

from __future__ import annotations

import codecs
import csv
import datetime as _dt
import functools
import gzip
import io
import itertools
import json
import operator
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, cast

from pivault.errors import PivaultError
from pivault.leak.columns import shown_name

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_MAX_LINE_MIB",
    "Batch",
    "DumpError",
    "Table",
    "detect_encoding",
    "open_dump",
    "read_dump",
    "read_stream",
]

MiB = 1024 * 1024
DEFAULT_MAX_LINE_MIB = 16
DEFAULT_BATCH = 2000
_SAMPLE_BYTES = 256 * 1024
_HEADER_SAMPLE_ROWS = 200
_READ_CHUNK = MiB
_MAX_ZIP_DEPTH = 4
#: what a batch (and the sample a header is decided on) may cost in memory, about: a row may be
#: as long as a line (``max_line_mib``), and a batch of thousands of such rows would not fit
BATCH_BYTES = 16 * MiB
#: what a batch is charged per cell (a string object and its pointer) and per character
_CELL_BYTES = 64
_CHAR_BYTES = 2
#: columns a row may have: a wider one is no table of residents and is skipped, counted rejected
#: (a line of a few MiB of commas would otherwise be a row of millions of cells, in every batch)
MAX_COLUMNS = 4096


class DumpError(PivaultError):
    """A dump (or one file inside it) cannot be read further.

    ``source`` names the file (and member); ``line`` is 1-based where known.
    The message never holds a value from the dump.
    """

    code = "dump.error"

    def __init__(self, message: str, *, code: str | None = None, source: str = "",
                 line: int | None = None) -> None:
        where = source + (f" line {line}" if line is not None else "")
        super().__init__(f"{where}: {message}" if where else message, code=code)
        self.source = source
        self.line = line


@dataclass
class Table:
    """One table of a dump: a CSV file, a worksheet, a SQL table, a JSON array.

    ``header`` holds the column names the dump gives (``None`` when it gives
    none); positions in every row line up with it. ``rows`` counts rows read
    so far and ``rejected`` rows that could not be parsed (with ``notes``
    saying why, once per reason): read = rows + rejected.
    """

    source: str
    format: str
    encoding: str | None = None
    header: list[str] | None = None
    rows: int = 0
    rejected: int = 0
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes and len(self.notes) < 20:
            self.notes.append(text)

    @property
    def width(self) -> int:
        return len(self.header) if self.header else 0


@dataclass
class Batch:
    """Consecutive rows of one table; ``first`` is the 1-based number of the first."""

    table: Table
    rows: list[list[str | None]]
    first: int


Row = list[str | None]


# ---------------------------------------------------------------- encodings


def _gb18030_fallback(exc: UnicodeError) -> tuple[str, int]:
    """Decode a byte sequence UTF-8 rejects as GB18030 (an ASCII-only sample hid the encoding)."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    data = exc.object
    for width in (2, 4):
        chunk = bytes(data[exc.start:exc.start + width])
        try:
            return chunk.decode("gb18030"), exc.start + width
        except UnicodeDecodeError:
            continue
    return "\ufffd", exc.start + 1


codecs.register_error("pivault-gb18030", _gb18030_fallback)


#: control characters no text dump holds: C0 but tab, LF, VT, FF, CR, ESC (colour codes in logs)
#: and \x01-\x03 (the field delimiters of Hive text exports), and DEL. Compressed or random data
#: is about 9 % such characters, text (in any encoding) next to none.
_CONTROLS = dict.fromkeys([*range(0x04, 0x09), *range(0x0E, 0x1B), *range(0x1C, 0x20), 0x7F])
#: more than this share of control characters in the sample: binary data, not text
BINARY_CONTROL_SHARE = 0.01


def detect_encoding(sample: bytes) -> str:
    """Guess the text encoding of a dump from its first bytes.

    A BOM decides; otherwise NUL bytes at one parity say UTF-16 without BOM;
    otherwise UTF-8 if the sample is valid UTF-8, GB18030 if it is valid
    GB18030, else UTF-8 falling back to GB18030 sequence by sequence. Returns
    a Python codec name (``utf-8-sig``, ``utf-16-le`` …); ``binary`` when the
    sample is not text at all: NUL bytes that are not UTF-16, or, once
    decoded, control characters in more than 1 % of it (compressed, encrypted
    or random data, whether or not a text decoder happens to accept it).
    """
    encoding = _guess_encoding(sample)
    if encoding == "binary" or not sample:
        return encoding
    return "binary" if _looks_binary(_decode_sample(sample, encoding)) else encoding


def _guess_encoding(sample: bytes) -> str:
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith(codecs.BOM_UTF32_LE) or sample.startswith(codecs.BOM_UTF32_BE):
        return "utf-32"
    if sample.startswith(codecs.BOM_UTF16_LE) or sample.startswith(codecs.BOM_UTF16_BE):
        return "utf-16"
    if not sample:
        return "utf-8"
    head = sample[:65536]
    even = head[0::2]
    odd = head[1::2]
    zeros_even = even.count(0) / max(1, len(even))
    zeros_odd = odd.count(0) / max(1, len(odd))
    if zeros_odd > 0.2 and zeros_even < 0.05:
        return "utf-16-le"
    if zeros_even > 0.2 and zeros_odd < 0.05:
        return "utf-16-be"
    if head.count(0) > len(head) // 100:
        return "binary"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
        return "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        codecs.getincrementaldecoder("gb18030")().decode(sample, final=False)
        return "gb18030"
    except UnicodeDecodeError:
        # neither: read as UTF-8 with GB18030 for what UTF-8 rejects (binary data is caught after)
        return "utf-8"


def _decode_sample(sample: bytes, encoding: str) -> str:
    """The sample as the readers will decode it (a sequence cut off at its end left out)."""
    decoder = codecs.getincrementaldecoder(encoding)(errors=_errors_for(encoding))
    return decoder.decode(sample, final=False)


def _looks_binary(text: str) -> bool:
    controls = len(text) - len(text.translate(_CONTROLS))
    return controls > max(1, len(text) * BINARY_CONTROL_SHARE)


def _errors_for(encoding: str) -> str:
    return "pivault-gb18030" if encoding.startswith("utf-8") else "replace"


# ---------------------------------------------------------------- byte streams


class _Prefixed(io.RawIOBase):
    """A stream that replays bytes already read (the sniffed sample) before the rest."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self._head.nbytes:
            n = min(len(buf), self._head.nbytes)
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buf))
        n = len(data)
        buf[:n] = data
        return n


class _Guarded(io.RawIOBase):
    """A decompressing stream whose truncation reads as the end of data, remembered in ``error``.

    The rows before the damage are then parsed like any others (a buffered
    reader would otherwise drop the bytes it had gathered for the failing
    read), and :func:`_dispatch` reports the truncation afterwards.
    """

    def __init__(self, inner: IO[bytes]) -> None:
        self._inner = inner
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self.error is None and self._inner.seekable()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()

    def readinto(self, buf: Any) -> int:
        if self.error is not None:
            return 0
        try:
            # read1: one decompression step, so a failure loses no bytes already inflated
            read1 = getattr(self._inner, "read1", None)
            data = read1(len(buf)) if read1 is not None else self._inner.read(len(buf))
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            self.error = exc
            return 0
        n = len(data)
        buf[:n] = data
        return n


def _text(stream: IO[bytes], encoding: str) -> io.TextIOWrapper:
    buffered: Any = stream if isinstance(stream, io.BufferedIOBase) else io.BufferedReader(
        stream, buffer_size=_READ_CHUNK)
    return io.TextIOWrapper(buffered, encoding=encoding, errors=_errors_for(encoding), newline="")


def _bounded_lines(text: IO[str], limit: int, source: str, counter: list[int]) -> Iterator[str]:
    """Lines of ``text``, none longer than ``limit`` characters; ``counter[0]`` is the line number,
    ``counter[1]`` the characters read (what the batches of these lines cost: :func:`_batched`)."""
    readline = text.readline
    mib = max(1, limit // MiB)
    while True:
        line = readline(limit + 1)
        if not line:
            return
        counter[0] += 1
        counter[1] += len(line)
        if len(line) > limit:
            raise DumpError(f"line longer than {mib} MiB at line {counter[0]}; "
                            "raise --max-line-mib to read it", code="dump.line_too_long",
                            source=source)
        yield line


# ---------------------------------------------------------------- value conversion


def _cell(value: object) -> str | None:
    """A cell from Excel, Parquet or JSON as text (ID numbers stored as numbers kept whole)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return repr(value)
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value == value.to_integral() else str(value)
    if isinstance(value, _dt.datetime):
        if value.time() == _dt.time(0, 0):
            return value.date().isoformat()
        return value.isoformat()
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


# ---------------------------------------------------------------- header detection


def _split_header(table: Table, rows: Iterator[Row], batch: int,
                  chars: Callable[[], int] | None = None) -> Iterator[Batch]:
    """Decide whether the first row is a header from a sample, then stream batches.

    The sample is bounded like a batch (:func:`_take`); its rows are then the first batch's.
    """
    from pivault.leak.columns import looks_like_header

    sample = _take(table, rows, _HEADER_SAMPLE_ROWS, chars, chars() if chars else 0)
    if not sample:
        return
    if table.header is None and looks_like_header(sample[0], sample[1:]):
        table.header = [(c or "").strip() for c in sample[0]]
        sample = sample[1:]
    yield from _batched(table, rows, batch, chars, sample)


def _reading(counter: list[int]) -> Callable[[], int]:
    """The characters :func:`_bounded_lines` has read so far, as :func:`_take` asks for them."""
    # a C-level call per row, not a Python function's: the reader is on the hot path
    return cast(Callable[[], int], functools.partial(operator.getitem, counter, 1))


def _chars_of(row: Row) -> int:
    return sum(map(len, filter(None, row)))


def _too_wide(table: Table) -> None:
    table.rejected += 1
    table.note(f"rows of more than {MAX_COLUMNS} columns were skipped")


def _take(table: Table, it: Iterator[Row], batch: int, chars: Callable[[], int] | None, mark: int,
          buf: list[Row] | None = None) -> list[Row]:
    """The next rows of ``it`` (after ``buf``), up to ``batch`` of them or :data:`BATCH_BYTES`.

    A row is charged its cells and characters; ``chars`` (characters the reader has consumed,
    ``mark`` at the start of ``buf``) spares counting them row by row. A row of more than
    :data:`MAX_COLUMNS` cells is skipped and counted rejected, here only (the rows of ``buf``
    were taken here before).
    """
    buf = [] if buf is None else buf
    if len(buf) >= batch:
        return buf
    # in characters: what is left of the batch's bytes once its cells are paid for
    room = BATCH_BYTES // _CHAR_BYTES
    cell = _CELL_BYTES // _CHAR_BYTES
    widest = MAX_COLUMNS
    used = sum(map(len, buf)) * cell + (0 if chars else sum(map(_chars_of, buf)))
    append = buf.append
    if chars is not None:
        used -= mark
        for row in it:
            n = len(row)
            if n > widest:
                _too_wide(table)
                continue
            append(row)
            used += n * cell
            if len(buf) >= batch or used + chars() >= room:
                break
        return buf
    for row in it:
        n = len(row)
        if n > widest:
            _too_wide(table)
            continue
        append(row)
        used += n * cell + _chars_of(row)
        if len(buf) >= batch or used >= room:
            break
    return buf


def _batched(table: Table, rows: Iterable[Row], batch: int, chars: Callable[[], int] | None = None,
             first: list[Row] | None = None) -> Iterator[Batch]:
    """Batches of at most ``batch`` rows and about :data:`BATCH_BYTES` (:func:`_take`), so that
    memory is bounded by the batch and not by how long each row may be; ``first``: rows already
    taken from ``rows`` (a header's sample)."""
    it = iter(rows)
    mark = 0
    buf = first
    while True:
        buf = _take(table, it, batch, chars, mark, buf)
        if chars:
            mark = chars()
        if not buf:
            return
        start = table.rows + 1
        table.rows += len(buf)
        yield Batch(table, buf, start)
        buf = None


# ---------------------------------------------------------------- CSV / TSV

_DELIMITERS = (",", "\t", ";", "|")


def _sniff_delimiter(lines: list[str]) -> str:
    """The delimiter giving the most consistent field count above one."""
    best, best_score = ",", (0.0, 0)
    sample = [ln for ln in lines if ln.strip()][:100]
    if not sample:
        return best
    for delim in _DELIMITERS:
        try:
            counts = [len(r) for r in csv.reader(sample, delimiter=delim)]
        except csv.Error:
            continue
        if not counts:
            continue
        mode = max(set(counts), key=counts.count)
        if mode < 2:
            continue
        score = (counts.count(mode) / len(counts), mode)
        if score > best_score:
            best, best_score = delim, score
    return best


def _read_csv(stream: IO[bytes], source: str, encoding: str, limit: int, batch: int) -> Iterator[Batch]:
    text = _text(stream, encoding)
    counter = [0, 0]
    lines = _bounded_lines(text, limit, source, counter)
    head: list[str] = []
    for line in lines:
        head.append(line)
        # a hundred lines to tell the delimiter by, fewer when they are long (memory)
        if len(head) >= 100 or counter[1] >= _SAMPLE_BYTES:
            break
    delim = _sniff_delimiter(head)
    table = Table(source, "tsv" if delim == "\t" else "csv", encoding)
    if not head:
        return
    if csv.field_size_limit() < limit:
        csv.field_size_limit(limit)
    reader = csv.reader(_chain_lines(head, lines), delimiter=delim, strict=False)

    def rows() -> Iterator[Row]:
        try:
            for row in reader:
                if row and not (len(row) == 1 and not row[0].strip()):
                    yield row  # type: ignore[misc]
        except csv.Error as exc:
            raise DumpError(f"CSV cannot be parsed: {_no_value(str(exc))}", code="dump.csv",
                            source=source, line=counter[0]) from None

    yield from _split_header(table, rows(), batch, _reading(counter))


def _chain_lines(head: list[str], rest: Iterator[str]) -> Iterator[str]:
    return itertools.chain(head, rest)


def _no_value(message: str) -> str:
    """Drop anything quoted from a library message: it could be a value from the dump."""
    return re.sub(r"(['\"]).*?\1", "…", message)[:200]


# ---------------------------------------------------------------- JSON


class _Columns:
    """Maps keys of JSON objects to column positions, growing the table header."""

    def __init__(self, table: Table) -> None:
        self.table = table
        table.header = table.header or []
        self.index: dict[str, int] = {k: i for i, k in enumerate(table.header)}

    def row(self, obj: object) -> Row:
        if isinstance(obj, dict):
            flat: dict[str, object] = {}
            _flatten(obj, "", flat, 0)
            out: Row = [None] * len(self.index)
            for key, value in flat.items():
                pos = self.index.get(key)
                if pos is None:
                    if len(self.index) >= MAX_COLUMNS:
                        self.table.note(f"keys beyond the first {MAX_COLUMNS} were not read")
                        continue
                    pos = self.index[key] = len(self.index)
                    assert self.table.header is not None
                    self.table.header.append(key)
                    out.append(None)
                out[pos] = _cell(value)
            return out
        if isinstance(obj, list):
            return [_cell(v) for v in obj]
        return [_cell(obj)]


def _flatten(obj: dict[str, Any], prefix: str, out: dict[str, object], depth: int) -> None:
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and depth < 3:
            _flatten(value, name + ".", out, depth + 1)
        else:
            out[name] = value


#: members that hold a page of records in an API's answer (``{"count": 3, "records": [...]}``)
_ENVELOPE_KEYS = frozenset({"records", "data", "items", "results", "rows"})


def _envelope(obj: object) -> list[dict[str, Any]] | None:
    """The records of a JSON line that is one answer of an API (a copy scraped answer by answer),
    or None for a line that is itself a record.

    Only a member of a known name whose value is a list of objects counts: a record with a
    list of, say, addresses stays one record.
    """
    if not isinstance(obj, dict):
        return None
    for key in _ENVELOPE_KEYS.intersection(obj):
        value = obj[key]
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            return value
    return None


def _read_jsonl(stream: IO[bytes], source: str, encoding: str, limit: int, batch: int) -> Iterator[Batch]:
    table = Table(source, "jsonl", encoding)
    cols = _Columns(table)
    counter = [0, 0]
    lines = _bounded_lines(_text(stream, encoding), limit, source, counter)
    loads = json.loads

    def rows() -> Iterator[Row]:
        for line in lines:
            if not line.strip():
                continue
            try:
                obj = loads(line)
            except ValueError:
                table.rejected += 1
                table.note("lines that are not JSON were skipped")
                continue
            inner = _envelope(obj)
            if inner is None:
                yield cols.row(obj)
            else:
                table.note("lines holding a list of records (an API answer each) were read record by record")
                for rec in inner:
                    yield cols.row(rec)

    yield from _batched(table, rows(), batch, _reading(counter))
    if table.header == []:
        table.header = None


class _JsonScanner:
    """Streams the elements of JSON arrays with bounded memory (one element at a time)."""

    _WS = re.compile(r"[ \t\r\n]*")

    def __init__(self, text: IO[str], limit: int, source: str) -> None:
        self.text = text
        self.limit = limit
        self.source = source
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.decoder = json.JSONDecoder()
        self.consumed_lines = 0
        self.consumed_chars = 0

    def _fill(self) -> bool:
        if self.eof:
            return False
        chunk = self.text.read(_READ_CHUNK)
        if not chunk:
            self.eof = True
            return False
        if self.pos:
            self.consumed_lines += self.buf.count("\n", 0, self.pos)
            self.consumed_chars += self.pos
            self.buf = self.buf[self.pos:]
            self.pos = 0
        self.buf += chunk
        return True

    def line(self) -> int:
        return self.consumed_lines + self.buf.count("\n", 0, self.pos) + 1

    def chars(self) -> int:
        """Characters consumed so far (what the batches of its elements cost)."""
        return self.consumed_chars + self.pos

    def skip_ws(self) -> str:
        """The next non-blank character ('' at the end), not consumed."""
        while True:
            m = self._WS.match(self.buf, self.pos)
            assert m is not None
            self.pos = m.end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def expect(self, chars: str) -> str:
        c = self.skip_ws()
        if not c or c not in chars:
            raise DumpError(f"JSON expected one of {chars!r}", code="dump.json", source=self.source,
                            line=self.line())
        self.pos += 1
        return c

    def value(self) -> object:
        """Decode one complete JSON value at the cursor."""
        self.skip_ws()
        while True:
            try:
                obj, end = self.decoder.raw_decode(self.buf, self.pos)
            except ValueError:
                obj, end = None, -1
            if end >= 0 and (end < len(self.buf) or self.eof):
                self.pos = end
                return obj
            if len(self.buf) - self.pos > self.limit:
                raise DumpError(f"JSON element longer than {max(1, self.limit // MiB)} MiB",
                                code="dump.line_too_long", source=self.source, line=self.line())
            if not self._fill():
                if end >= 0:
                    self.pos = end
                    return obj
                raise DumpError("JSON is cut off or malformed", code="dump.json", source=self.source,
                                line=self.line())

    def array(self) -> Iterator[object]:
        """Elements of the array whose '[' was just consumed."""
        if self.skip_ws() == "]":
            self.pos += 1
            return
        while True:
            yield self.value()
            if self.expect(",]") == "]":
                return


def _read_json(stream: IO[bytes], source: str, encoding: str, limit: int, batch: int) -> Iterator[Batch]:
    scan = _JsonScanner(_text(stream, encoding), limit, source)
    first = scan.expect("[{")
    if first == "[":
        table = Table(source, "json", encoding)
        cols = _Columns(table)
        yield from _batched(table, (cols.row(o) for o in scan.array()), batch, scan.chars)
        return
    # an object: stream every member that is an array (``{"data": [...]}``)
    if scan.skip_ws() == "}":
        return
    while True:
        key = scan.value()
        scan.expect(":")
        if scan.skip_ws() == "[":
            scan.pos += 1
            table = Table(f"{source}#{shown_name(str(key))}", "json", encoding)
            cols = _Columns(table)
            yield from _batched(table, (cols.row(o) for o in scan.array()), batch, scan.chars)
        else:
            scan.value()
        if scan.expect(",}") == "}":
            return


# ---------------------------------------------------------------- SQL dumps

_SQL_STR_MY = r"'(?:[^'\\]++|\\.|'')*+'"
_SQL_STR_PG = r"'(?:[^']++|'')*+'"
_IDENT = r"(?:`(?:[^`]|``)+`|\"(?:[^\"]|\"\")+\"|\[[^\]]+\]|[A-Za-z_][\w$]*)"
_QNAME = rf"{_IDENT}(?:\s*\.\s*{_IDENT})*"
_SPACE_COMMENTS = re.compile(r"(?:\s++|--[^\n]*+\n|#[^\n]*+\n|/\*.*?\*/)*+", re.S)
_INSERT = re.compile(
    rf"(?:INSERT|REPLACE)\s+(?:(?:LOW_PRIORITY|DELAYED|HIGH_PRIORITY|IGNORE)\s+)*(?:INTO\s+)?"
    rf"({_QNAME})\s*(\((?:[^()'\"`]++|`(?:[^`]|``)++`|\"(?:[^\"]|\"\")++\")*+\))?\s*VALUES\s*", re.I | re.S)
_COPY = re.compile(rf"COPY\s+({_QNAME})\s*(\((?:[^()'\"`]++|\"(?:[^\"]|\"\")++\")*+\))?"
                   r"\s+FROM\s+stdin\s*;[^\n]*\n", re.I | re.S)
_CREATE = re.compile(rf"CREATE\s+(?:(?:UNLOGGED|TEMPORARY|TEMP|GLOBAL|LOCAL)\s+)*TABLE\s+"
                     rf"(?:IF\s+NOT\s+EXISTS\s+)?({_QNAME})\s*\(", re.I | re.S)
_CONSTRAINT_WORDS = {"primary", "key", "unique", "constraint", "index", "foreign", "check",
                     "fulltext", "spatial", "exclude", "like", "period"}
_ESCAPES_MY = {"0": "\0", "b": "\b", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a"}
_ESC_RE = re.compile(r"\\(.)", re.S)


def _unescape_my(m: re.Match[str]) -> str:
    return _ESCAPES_MY.get(m.group(1), m.group(1))

_COPY_ESC = re.compile(r"\\(N|.)", re.S)
_COPY_MAP = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _unquote_ident(name: str) -> str:
    """The last part of a qualified name, without its quotes (``public.people`` -> ``people``)."""
    parts = re.findall(_IDENT, name)
    last = parts[-1] if parts else name
    if last[:1] in "`\"[":
        last = last[1:-1]
    return last


def _ident_list(text: str) -> list[str]:
    return [_unquote_ident(x) for x in re.findall(_IDENT, text)]


class _SqlParser:
    """A streaming tokenizer for SQL dumps: statements are skipped or parsed tuple by tuple.

    Only ``CREATE TABLE`` (for column names), ``INSERT``/``REPLACE … VALUES``
    and PostgreSQL ``COPY … FROM stdin`` blocks are read; everything else is
    skipped to its ``;`` (strings and comments respected). The buffer holds at
    most one statement head or one tuple, never the whole statement.
    """

    def __init__(self, text: IO[str], source: str, encoding: str, limit: int, batch: int) -> None:
        self.text = text
        self.source = source
        self.encoding = encoding
        self.limit = limit
        self.batch = batch
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.lines_before = 0
        self.columns: dict[str, list[str]] = {}
        self.tables: dict[str, Table] = {}
        self.mysql = True
        self._set_dialect(True)

    def _set_dialect(self, mysql: bool) -> None:
        self.mysql = mysql
        s = _SQL_STR_MY if mysql else _SQL_STR_PG
        estr = r"[Ee]'(?:[^'\\]++|\\.|'')*+'"
        bare = r"[^,()'\s][^,()']*+(?:\([^()]*\)[^,()']*+)?"
        value = rf"(?>(?:_\w+\s*+)?(?:{estr}|{s}|{bare}))"
        # possessive throughout: the grammar is LL(1), so a failed match never backtracks
        self.tuple_re = re.compile(rf"\(\s*+((?:{value}\s*+(?:,\s*+)?)*+)\)", re.S)
        self.value_re = re.compile(
            rf"\s*+(?:(?:_\w+\s*+)?(?:[Ee]('(?:[^'\\]++|\\.|'')*+')|({s}))|([^,']*+))\s*+(?:,|\Z)",
            re.S)
        self.skip_re = re.compile(rf"(?:[^;'\"`]++|{s}|\"(?:[^\"]|\"\")*+\"|`[^`]*+`)*+;", re.S)

    # -- buffer ----------------------------------------------------------
    def fill(self) -> bool:
        if self.eof:
            return False
        chunk = self.text.read(_READ_CHUNK)
        if self.pos:
            self.lines_before += self.buf.count("\n", 0, self.pos)
            self.buf = self.buf[self.pos:]
            self.pos = 0
        if not chunk:
            self.eof = True
            self.buf += "\n"  # ends a last comment line that has no newline
            return False
        self.buf += chunk
        return True

    def line(self) -> int:
        return self.lines_before + self.buf.count("\n", 0, self.pos) + 1

    def need_more(self, what: str) -> bool:
        """Read more for an incomplete ``what``; False at the end of input."""
        if len(self.buf) - self.pos > self.limit:
            raise DumpError(f"{what} longer than {max(1, self.limit // MiB)} MiB",
                            code="dump.line_too_long", source=self.source, line=self.line())
        return self.fill()

    def skip_blank(self) -> None:
        """Skip whitespace and comments, reading on while a comment is open."""
        while True:
            m = _SPACE_COMMENTS.match(self.buf, self.pos)
            assert m is not None
            self.pos = m.end()
            rest = self.buf[self.pos:self.pos + 2]
            incomplete = len(rest) < 2 or rest in ("/*", "--") or rest[0] == "#"
            if not incomplete or self.eof:
                return
            if not self.need_more("comment"):
                m = _SPACE_COMMENTS.match(self.buf, self.pos)
                assert m is not None
                self.pos = m.end()
                return

    # -- statements -------------------------------------------------------
    def run(self) -> Iterator[Batch]:
        head = self.buf[:4096] if self.buf else ""
        if not head:
            self.fill()
            head = self.buf[:4096]
        if "PostgreSQL database dump" in head or "standard_conforming_strings" in head:
            self._set_dialect(False)
        while True:
            self.skip_blank()
            if self.pos >= len(self.buf) and self.eof:
                return
            # make sure a statement head is in the buffer
            while len(self.buf) - self.pos < 65536 and self.fill():
                pass
            m = _INSERT.match(self.buf, self.pos)
            if m:
                self.pos = m.end()
                yield from self.values(_unquote_ident(m.group(1)), m.group(2))
                continue
            m = _COPY.match(self.buf, self.pos)
            if m:
                self.pos = m.end()
                yield from self.copy(_unquote_ident(m.group(1)), m.group(2))
                continue
            m = _CREATE.match(self.buf, self.pos)
            if m:
                self.pos = m.end()
                self.create(_unquote_ident(m.group(1)))
            self.skip_statement()

    def skip_statement(self) -> None:
        while True:
            m = self.skip_re.match(self.buf, self.pos)
            if m and (m.end() < len(self.buf) or self.eof):
                self.pos = m.end()
                return
            if not self.need_more("statement"):
                self.pos = len(self.buf)
                return

    def create(self, table: str) -> None:
        depth, i = 1, self.pos
        while True:
            n = len(self.buf)
            while i < n and depth:
                c = self.buf[i]
                if c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                elif c in "'\"`":
                    j = self.buf.find(c, i + 1)
                    if j < 0:
                        break
                    i = j
                i += 1
            if not depth:
                break
            if not self.need_more("CREATE TABLE statement"):
                return
            i = self.pos
            depth = 1
        body = self.buf[self.pos:i - 1]
        self.pos = i
        cols: list[str] = []
        for part in _split_top(body):
            m = re.match(rf"\s*({_IDENT})", part)
            if not m:
                continue
            name = m.group(1)
            if name[:1] not in "`\"[" and name.lower() in _CONSTRAINT_WORDS:
                continue
            cols.append(_unquote_ident(name))
        if cols:
            self.columns[table] = cols

    def table(self, name: str, collist: str | None, fmt: str) -> Table:
        t = self.tables.get(name)
        if t is None:
            header = _ident_list(collist[1:-1]) if collist else self.columns.get(name)
            t = Table(f"{self.source}#{shown_name(name)}", fmt, self.encoding,
                      list(header) if header else None)
            self.tables[name] = t
        return t

    def values(self, name: str, collist: str | None) -> Iterator[Batch]:
        table = self.table(name, collist, "sql-mysql" if self.mysql else "sql-postgresql")
        out: list[Row] = []
        cost = 0
        tuple_re = self.tuple_re
        while True:
            self.skip_blank()
            if self.buf[self.pos:self.pos + 1] != "(":
                table.rejected += 1
                table.note("an INSERT statement could not be parsed and was skipped")
                self.skip_statement()
                break
            m = tuple_re.match(self.buf, self.pos)
            while m is None:
                if not self.need_more("SQL row"):
                    if out:
                        table.rows += len(out)
                        yield Batch(table, out, table.rows - len(out) + 1)
                    raise DumpError("an INSERT statement is cut off (truncated dump?) or malformed",
                                    code="dump.truncated", source=self.source, line=self.line())
                m = tuple_re.match(self.buf, self.pos)
            self.pos = m.end()
            row = self.split(m.group(1))
            if len(row) > MAX_COLUMNS:
                _too_wide(table)
            else:
                out.append(row)
                cost += _CELL_BYTES * len(row) + _CHAR_BYTES * (m.end() - m.start())
            if len(out) >= self.batch or cost >= BATCH_BYTES:
                table.rows += len(out)
                yield Batch(table, out, table.rows - len(out) + 1)
                out, cost = [], 0
            self.skip_blank()
            c = self.buf[self.pos:self.pos + 1]
            if c == ",":
                self.pos += 1
                continue
            if c == ";":
                self.pos += 1
            elif c:
                # ON DUPLICATE KEY UPDATE, RETURNING … : not rows
                self.skip_statement()
            break
        if out:
            table.rows += len(out)
            yield Batch(table, out, table.rows - len(out) + 1)

    def split(self, inner: str) -> Row:
        row: Row = []
        mysql = self.mysql
        n = len(inner)
        for m in self.value_re.finditer(inner):
            estr, plain, bare = m.group(1), m.group(2), m.group(3)
            if estr is not None or plain is not None:
                body = (estr if estr is not None else plain)[1:-1]
                if (mysql or estr is not None) and "\\" in body:
                    body = _ESC_RE.sub(_unescape_my, body)
                row.append(body.replace("''", "'"))
            else:
                v = bare.strip()
                row.append(None if v.upper() == "NULL" else v)
            if m.end() >= n:
                break
        return row

    def copy(self, name: str, collist: str | None) -> Iterator[Batch]:
        table = self.table(name, collist, "sql-postgresql")
        out: list[Row] = []
        cost = 0
        while True:
            nl = self.buf.find("\n", self.pos)
            if nl < 0:
                if self.need_more("COPY line"):
                    continue
                nl = len(self.buf)
                if nl == self.pos:
                    break
            line = self.buf[self.pos:nl].rstrip("\r")
            self.pos = nl + 1
            if line == "\\.":
                break
            row: Row = []
            fields = line.split("\t")
            if len(fields) > MAX_COLUMNS:
                _too_wide(table)
                continue
            for f in fields:
                if f == "\\N":
                    row.append(None)
                elif "\\" in f:
                    row.append(_COPY_ESC.sub(lambda e: _COPY_MAP.get(e.group(1), e.group(1)), f))
                else:
                    row.append(f)
            out.append(row)
            cost += _CELL_BYTES * len(row) + _CHAR_BYTES * len(line)
            if len(out) >= self.batch or cost >= BATCH_BYTES:
                table.rows += len(out)
                yield Batch(table, out, table.rows - len(out) + 1)
                out, cost = [], 0
        if out:
            table.rows += len(out)
            yield Batch(table, out, table.rows - len(out) + 1)


def _split_top(body: str) -> list[str]:
    """Split a column list at commas outside parentheses and quotes."""
    parts, depth, start, i, n = [], 0, 0, 0, len(body)
    while i < n:
        c = body[i]
        if c in "'\"`":
            j = body.find(c, i + 1)
            i = n if j < 0 else j
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
        i += 1
    parts.append(body[start:])
    return parts


def _read_sql(stream: IO[bytes], source: str, encoding: str, limit: int, batch: int) -> Iterator[Batch]:
    parser = _SqlParser(_text(stream, encoding), source, encoding, limit, batch)
    yield from parser.run()


# ---------------------------------------------------------------- Excel, Parquet


def _read_xlsx(stream: IO[bytes], source: str, batch: int) -> Iterator[Batch]:
    import openpyxl

    try:
        wb = openpyxl.load_workbook(stream, read_only=True, data_only=True)
    except Exception as exc:
        raise DumpError(f"the Excel workbook cannot be opened ({type(exc).__name__})",
                        code="dump.xlsx", source=source) from None
    try:
        for ws in wb.worksheets:
            table = Table(f"{source}#{shown_name(str(ws.title))}", "xlsx", None)

            def rows(ws: Any = ws) -> Iterator[Row]:
                for values in ws.iter_rows(values_only=True):
                    row = [_cell(v) for v in values]
                    while row and row[-1] is None:
                        row.pop()
                    if row:
                        yield row

            yield from _split_header(table, rows(), batch)
    finally:
        wb.close()


def _read_parquet(stream: IO[bytes], source: str, batch: int) -> Iterator[Batch]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(stream)
    except Exception as exc:
        raise DumpError(f"the Parquet file cannot be opened ({type(exc).__name__})",
                        code="dump.parquet", source=source) from None
    table = Table(source, "parquet", None, [str(n) for n in pf.schema_arrow.names])
    meta = pf.metadata
    if table.width > MAX_COLUMNS:
        table.rejected += meta.num_rows
        table.note(f"rows of more than {MAX_COLUMNS} columns were skipped")
        return
    # rows a batch, from the widest row group's uncompressed bytes a row (a batch ~ BATCH_BYTES)
    per_row = max((meta.row_group(i).total_byte_size / max(meta.row_group(i).num_rows, 1)
                   for i in range(meta.num_row_groups)), default=0.0)
    batch = max(1, min(batch, int(BATCH_BYTES / (per_row * _CHAR_BYTES + _CELL_BYTES * max(table.width, 1)))))
    # row group by row group: a dump found in the wild is often damaged (cut, patched, a bad
    # disk), and one group that cannot be read is no reason to miss the residents in the others
    for group in range(meta.num_row_groups):
        expected = meta.row_group(group).num_rows
        got = 0
        try:
            for rb in pf.iter_batches(batch_size=batch, row_groups=[group]):
                columns = [_column_cells(col) for col in rb.columns]
                rows: list[Row] = [list(r) for r in zip(*columns, strict=True)]
                if rows:
                    got += len(rows)
                    table.rows += len(rows)
                    yield Batch(table, rows, table.rows - len(rows) + 1)
        except (OSError, ValueError, IndexError, OverflowError, ArithmeticError) as exc:
            # Arrow's errors (ArrowInvalid is a ValueError, ArrowIOError an OSError) may quote
            # a value: only the kind is told, and what is left of the group counts rejected
            table.rejected += max(expected - got, 0)
            table.note(f"Parquet row group {group + 1} could not be read past its first {got} rows "
                       f"(damaged: {type(exc).__name__}); its other rows were counted rejected")


def _column_cells(col: Any) -> list[str | None]:
    """A Parquet column's cells as text; a STRING column whose bytes are not all UTF-8 (a careless
    exporter's GBK, as Chinese registers often hold) is read cell by cell, each in the first of
    UTF-8 and GB18030 that decodes it, so its residents are still matched."""
    try:
        return [_cell(v) for v in col.to_pylist()]
    except UnicodeDecodeError:
        import pyarrow as pa

        kind = col.type
        if pa.types.is_dictionary(kind):
            col, kind = col.dictionary_decode(), kind.value_type
        binary = pa.large_binary() if pa.types.is_large_string(kind) else pa.binary()
        return [None if v is None else _decoded(v) for v in col.view(binary).to_pylist()]


def _decoded(raw: bytes) -> str:
    for encoding in ("utf-8", "gb18030"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("utf-8", errors="replace")


# ---------------------------------------------------------------- dispatch

#: binary formats leak check does not read, told by their first bytes (a clearer refusal than
#: "not text", and one a PDF whose first streams hold text still gets)
_BINARY_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "a PDF document"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"\x7fELF", "an executable"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"\xfd7zXZ\x00", "an xz stream"),
    (b"\x28\xb5\x2f\xfd", "a Zstandard stream"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "a legacy Office document (.xls, .doc)"),
    (b"SQLite format 3\x00", "an SQLite database"),
)
_FORMATS = "CSV/TSV, JSON, SQL, xlsx, Parquet, gzip, zip"


def _binary_format(sample: bytes) -> str | None:
    if sample[:3] == b"BZh" and sample[4:10] == b"1AY&SY":
        return "a bzip2 stream"
    for magic, what in _BINARY_MAGIC:
        if sample.startswith(magic):
            return what
    return None


_SQL_HEAD = re.compile(
    r"\s*(?:--|/\*|#|(?:INSERT|REPLACE|CREATE|SET|DROP|LOCK|UNLOCK|COPY|BEGIN|START|USE|"
    r"ALTER|SELECT|COMMIT)\b)", re.I)


def _sniff_text(sample: str) -> str:
    s = sample.lstrip("\ufeff \t\r\n")
    if not s:
        return "empty"
    if s[0] == "[":
        return "json"
    if s[0] == "{":
        first, _, rest = s.partition("\n")
        try:
            obj = json.loads(first)
        except ValueError:
            return "json"
        if rest.lstrip().startswith("{"):
            return "jsonl"
        # one object on one line: a document wrapping arrays of records, or a one-line JSONL
        wraps = isinstance(obj, dict) and any(
            isinstance(v, list) and v and isinstance(v[0], dict | list) for v in obj.values())
        return "json" if wraps else "jsonl"
    if _SQL_HEAD.match(s) and re.search(r"\b(INSERT|COPY|CREATE\s+TABLE)\b", s, re.I):
        return "sql"
    if _SQL_HEAD.match(s) and len(sample) < _SAMPLE_BYTES // 4:
        return "sql"
    return "csv"


def read_dump(path: str | os.PathLike[str], *, max_line_mib: int = DEFAULT_MAX_LINE_MIB,
              batch: int = DEFAULT_BATCH) -> Iterator[Batch]:
    """Every row of every table in the dump at ``path``, in batches.

    The format is sniffed from the content; ``.gz`` and ``.zip`` wrappers are
    opened (nested up to four deep). Raises :class:`DumpError` for what cannot
    be read (truncated compression, a line longer than ``max_line_mib``, a
    malformed structure); rows yielded before the error stay valid.
    """
    p = Path(path)
    fh = open_dump(p)
    try:
        yield from read_stream(fh, p.name, max_line_mib=max_line_mib, batch=batch)
    finally:
        fh.close()


def open_dump(path: str | os.PathLike[str]) -> IO[bytes]:
    """Open a dump file for reading, refusing what is no file, without ever waiting.

    ``open`` of a named pipe waits for a writer, forever if none comes (a FIFO extracted from a
    hostile archive, or named by mistake); a terminal or another device may never end. So the
    file is opened without blocking and looked at before it is read: a directory, a device or
    a socket is a :class:`DumpError` (``dump.open``); a pipe is read as it comes (what
    ``zcat dump.gz | pivault leak check /dev/stdin`` gives), and one without a writer ends at once.
    """
    p = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(p, flags)
    except OSError as exc:
        raise DumpError(f"cannot open the file ({exc.strerror or type(exc).__name__})", code="dump.open",
                        source=p.name) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise DumpError("a directory, not a dump file: name the files in it", code="dump.open",
                            source=p.name)
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise DumpError("not a file (a device or a socket): copy the dump into a file", code="dump.open",
                            source=p.name)
        if flags & getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_stream(stream: IO[bytes], name: str, *, max_line_mib: int = DEFAULT_MAX_LINE_MIB,
                batch: int = DEFAULT_BATCH) -> Iterator[Batch]:
    """Like :func:`read_dump` for an open binary stream (seekable or not) called ``name``."""
    limit = max(1, int(max_line_mib)) * MiB
    try:
        yield from _dispatch(stream, name, limit, batch, 0)
    except DumpError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DumpError(f"the compressed stream is truncated or damaged ({type(exc).__name__}); "
                        "rows before the damage were read", code="dump.truncated", source=name) from None
    except zipfile.BadZipFile:
        raise DumpError("the zip archive is damaged", code="dump.truncated", source=name) from None
    except UnicodeError as exc:
        raise DumpError(f"the text cannot be decoded ({type(exc).__name__})", code="dump.encoding",
                        source=name) from None
    except MemoryError:
        raise DumpError("the dump holds a structure too large to read", code="dump.memory",
                        source=name) from None


def _read_sample(stream: IO[bytes], size: int) -> tuple[bytes, IO[bytes]]:
    """The first ``size`` bytes, and a stream that starts again at the beginning.

    Read in pieces, so that a truncated compressed stream still gives the
    sample it has; the damage is reported when the rows reach it.
    """
    chunks, got = [], 0
    seekable = False
    try:
        seekable = stream.seekable()
        start = stream.tell() if seekable else 0
    except (AttributeError, OSError, ValueError):
        seekable = False
    try:
        while got < size:
            data = stream.read(min(65536, size - got))
            if not data:
                break
            chunks.append(data)
            got += len(data)
    except (EOFError, zlib.error, gzip.BadGzipFile):
        if not chunks:
            raise
        seekable = False
    sample = b"".join(chunks)
    if seekable and stream.seekable():
        stream.seek(start)
        return sample, stream
    return sample, io.BufferedReader(_Prefixed(sample, stream), buffer_size=_READ_CHUNK)


def _dispatch(stream: IO[bytes], name: str, limit: int, batch: int, depth: int) -> Iterator[Batch]:
    sample, stream = _read_sample(stream, _SAMPLE_BYTES)
    if not sample:
        raise DumpError("the file is empty", code="dump.empty", source=name)
    if sample[:2] == b"\x1f\x8b":
        if depth >= _MAX_ZIP_DEPTH:
            raise DumpError("archives nested too deep", code="dump.nested", source=name)
        gz: Any = gzip.GzipFile(fileobj=stream, mode="rb")
        guarded = _Guarded(gz)
        inner: Any = io.BufferedReader(guarded, buffer_size=_READ_CHUNK)
        inner_name = name[:-3] if name.lower().endswith(".gz") else name + "!"
        yield from _dispatch(inner, inner_name, limit, batch, depth + 1)
        if guarded.error is not None:
            raise DumpError("the gzip stream is truncated or damaged; the rows before the damage were read",
                            code="dump.truncated", source=name)
        return
    if sample[:4] == b"PK\x03\x04" or sample[:4] == b"PK\x05\x06":
        yield from _read_zip(stream, name, limit, batch, depth)
        return
    if sample[:4] == b"PAR1":
        yield from _read_parquet(stream, name, batch)
        return
    what = _binary_format(sample)
    if what is not None:
        raise DumpError(f"the file is {what}, not a dump format leak check reads ({_FORMATS})",
                        code="dump.format", source=name)
    encoding = detect_encoding(sample)
    if encoding == "binary":
        raise DumpError("the file is neither text nor a known binary format (gzip, zip, xlsx, Parquet)",
                        code="dump.format", source=name)
    text_sample = sample.decode(encoding, errors="replace") if not encoding.startswith("utf-16") \
        else sample[: len(sample) // 2 * 2].decode(encoding, errors="replace")
    kind = _sniff_text(text_sample)
    readers: dict[str, Callable[[IO[bytes], str, str, int, int], Iterator[Batch]]] = {
        "csv": _read_csv, "jsonl": _read_jsonl, "json": _read_json, "sql": _read_sql,
    }
    if kind == "empty":
        raise DumpError("the file holds only blank text", code="dump.empty", source=name)
    yield from readers[kind](stream, name, encoding, limit, batch)


#: errors of a zip member raised before it yields a row: the archive's other members are read on
_MEMBER_SKIPPED = frozenset({"dump.format", "dump.empty", "dump.encrypted"})


def _read_zip(stream: IO[bytes], name: str, limit: int, batch: int, depth: int) -> Iterator[Batch]:
    if depth >= _MAX_ZIP_DEPTH:
        raise DumpError("archives nested too deep", code="dump.nested", source=name)
    try:
        zf = zipfile.ZipFile(stream)
    except zipfile.BadZipFile:
        raise DumpError("the zip archive is damaged or truncated", code="dump.truncated",
                        source=name) from None
    with zf:
        names = zf.namelist()
        if "xl/workbook.xml" in names:
            stream.seek(0)
            yield from _read_xlsx(stream, name, batch)
            return
        members = [i for i in zf.infolist()
                   if not i.is_dir() and not i.filename.startswith("__MACOSX/")
                   and not i.filename.rsplit("/", 1)[-1].startswith(".")]
        if not members:
            raise DumpError("the zip archive holds no files", code="dump.empty", source=name)
        skipped: list[DumpError] = []
        for info in members:
            if info.flag_bits & 0x1:
                skipped.append(DumpError("a zip member is encrypted; unpack it with its password first",
                                         code="dump.encrypted", source=f"{name}:{shown_name(info.filename)}"))
                continue
            try:
                with zf.open(info) as member:
                    # the member's name as the archive's maker chose it, shown without its PI
                    shown = f"{name}:{shown_name(info.filename)}"
                    yield from _dispatch(member, shown, limit, batch, depth + 1)
            except DumpError as exc:
                # a member refused before its first row (binary, empty): the others are still read
                if exc.code not in _MEMBER_SKIPPED:
                    raise
                skipped.append(exc)
        if len(skipped) == 1:
            raise skipped[0]
        if skipped:
            raise DumpError(f"{len(skipped)} zip members not read: "
                            + "; ".join(e.message for e in skipped),
                            code=skipped[0].code, source=name)
