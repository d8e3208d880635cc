"""Streaming a byte source through the engine in bounded memory.

Input is read in chunks (4 MiB by default). Each chunk is scanned together
with a context of the bytes before it and a tail of the bytes after it, and a
hit is reported by the chunk in which its anchor starts, so a value that
straddles two reads is found once. Chunks end at a line break where one is
near, which keeps line numbers and CSV columns exact.

UTF-8 (and ASCII) is scanned as it is: the digits and Latin letters of the
validated detectors are the same bytes in UTF-8, and the name and address
handlers decode only a window. GB18030 and UTF-16 are transcoded to UTF-8
chunk by chunk; offsets then count bytes of that UTF-8 text.
"""

from __future__ import annotations

import bisect
import codecs
import csv
import io
import operator
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from pivault.scan.engine import Engine, Raw, cell_hits, masked, resolve_confidence
from pivault.scan.findings import Finding, ScanIssue, ScanOptions, SourceResult


class Readable(Protocol):
    """Anything with ``read(n) -> bytes``: files, archive members, decompressors."""

    def read(self, n: int = -1, /) -> bytes: ...


#: bytes kept before the unscanned region (context for boundaries and labels)
CONTEXT = 1024
#: bytes that must follow the last anchor a chunk owns (the longest value after its anchor)
TAIL = 16384
#: how much of a file decides its encoding
SNIFF = 64 * 1024


_KIND = operator.itemgetter(1)


class Collector:
    """Turns hits into findings of one source: counts them all, keeps up to the cap."""

    def __init__(self, result: SourceResult, options: ScanOptions) -> None:
        self.result = result
        self.cap = options.max_findings_per_source
        self.min_confidence = options.min_confidence

    def add(self, finding: Finding) -> None:
        if finding.confidence < self.min_confidence:
            return
        self.result.counts[finding.kind] += 1
        if len(self.result.findings) < self.cap:
            self.result.findings.append(finding)
        else:
            self.result.dropped += 1

    def room(self) -> int:
        """How many more findings are kept with their details."""
        return self.cap - len(self.result.findings)

    def count(self, hits: list[Raw]) -> None:
        """Count hits past the cap (already filtered by confidence): no finding is made for them."""
        if hits:
            self.result.counts.update(map(_KIND, hits))
            self.result.dropped += len(hits)

    def tally(self, counts: Counter[str]) -> None:
        """Add counts of hits past the cap."""
        self.result.counts.update(counts)
        self.result.dropped += sum(counts.values())

    def issue(self, code: str, message: str, source: str | None = None) -> None:
        self.result.issues.append(ScanIssue(source or self.result.source, code, message))


def sniff_encoding(head: bytes) -> str | None:
    """``utf-8``, ``utf-8-sig``, ``utf-16-le``/``-be`` or ``gb18030``; ``binary`` for binary data;
    None when the encoding is none of these."""
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    # before UTF-16's: the UTF-32 LE mark begins with it, and decoded as UTF-16 every
    # character of such a file is followed by a NUL, so nothing in it was ever found
    if head.startswith(codecs.BOM_UTF32_LE) or head.startswith(codecs.BOM_UTF32_BE):
        return "utf-32"
    if head.startswith(codecs.BOM_UTF16_LE):
        return "utf-16-le"
    if head.startswith(codecs.BOM_UTF16_BE):
        return "utf-16-be"
    sample = head[:SNIFF]
    if b"\x00" in sample:
        even = sample[0::2].count(0)
        odd = sample[1::2].count(0)
        half = max(1, len(sample) // 2)
        if odd > 0.3 * half and even < 0.05 * half:
            return "utf-16-le"
        if even > 0.3 * half and odd < 0.05 * half:
            return "utf-16-be"
        # Chinese text without a BOM: its characters have no NUL byte, only the ASCII among
        # them (digits, punctuation, line breaks) have one, so the NULs are few but all on one
        # side; the text decodes, and reads as text, where binary data does not
        if even < 0.05 * half and _reads_as_utf16(sample, "utf-16-le"):
            return "utf-16-le"
        if odd < 0.05 * half and _reads_as_utf16(sample, "utf-16-be"):
            return "utf-16-be"
        return "binary"
    if sample.isascii():
        return "utf-8"
    for enc in ("utf-8", "gb18030"):
        try:
            codecs.getincrementaldecoder(enc)().decode(sample, final=len(head) < SNIFF)
            return enc
        except UnicodeDecodeError:
            continue
    controls = sum(
        sample.count(bytes([c])) for c in (1, 2, 3, 4, 5, 6, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24)
    )
    if controls > len(sample) // 100:
        return "binary"
    return None


#: a share of unprintable characters above which a UTF-16 reading of data is not text
_UTF16_UNPRINTABLE = 0.01


def _reads_as_utf16(sample: bytes, enc: str) -> bool:
    """Whether ``sample`` decodes as ``enc`` into text: no broken surrogate, next to no controls."""
    try:
        text = codecs.getincrementaldecoder(enc)().decode(sample[: len(sample) & ~1])
    except UnicodeDecodeError:
        return False
    if not text:
        return False
    odd = sum(1 for c in text if not c.isprintable() and c not in "\t\r\n")
    return odd <= _UTF16_UNPRINTABLE * len(text)


_DIGIT_RUN = re.compile(rb"[0-9]{6}")


def header_is_data(cells: Sequence[str], engine: Engine, min_confidence: float) -> bool:
    """Whether a first row taken for a header is a row of data, whose cells must not name columns.

    A header's cells are printed whole as the column of every finding below
    them; in a file without a header they are the first resident's ID
    number, mobile and address. A row in which the scanner finds a value, or
    that holds a run of six digits (no column name does), is data.
    """
    text = "\t".join(cells).encode("utf-8")
    if _DIGIT_RUN.search(text):
        return True
    fast, slow = engine.find(text, 0, len(text), min_confidence)
    return bool(fast or slow)


def _csv_header(line: bytes, sep: bytes) -> list[str]:
    text = line.decode("utf-8", "replace").lstrip("\ufeff").rstrip("\r\n")
    try:
        return [c.strip() for c in next(csv.reader([text], delimiter=sep.decode()))]
    except (StopIteration, csv.Error):
        return []


def _csv_column(buf: bytes, line_start: int, pos: int, sep: int) -> int:
    """Index of the CSV cell containing ``pos`` (quotes respected)."""
    col = 0
    quoted = False
    for b in buf[line_start:pos]:
        if b == 0x22:
            quoted = not quoted
        elif b == sep and not quoted:
            col += 1
    return col


#: ``key = "``, ``"key": "``, ``键：`` read backwards from a value (a reversed pattern on a reversed slice
#: is one anchored match instead of a search)
_FIELD_REV = re.compile(
    rb"[\"']?[ \t]*(?:=|:|\x9a\xbc\xef)[ \t]*[\"']?"
    rb"((?:[\x80-\xbf]{2}[\xe4-\xe9]){1,8}|[A-Za-z0-9_.\-]{0,40}[A-Za-z_])"
)


def field_before(buf: bytes, line_start: int, pos: int) -> str | None:
    """The key a value is assigned to (``phone=…``, ``"mobile": "…"``, ``手机：…``), if any."""
    a = max(line_start, pos - 64)
    m = _FIELD_REV.match(buf[a:pos][::-1])
    if m is None:
        return None
    key = m.group(1)[::-1]
    k0 = pos - m.end(1)
    if k0 > a and buf[k0 - 1] in _KEYISH:
        return None  # cut in the middle of a longer key
    text = key.decode("utf-8", "replace")
    if key[0] >= 0x80 and _name_shaped(text):
        return None  # '王伟：138…', a contact list: the "key" is the holder's name
    return text


#: characters of the keys that label a value (手机号, 银行卡, 车牌 …), which a name does not hold
_KEY_CHARS = frozenset("号码卡证址牌额箱机话")


def _name_shaped(key: str) -> bool:
    """Whether a Chinese key before a value could be a person's name, never to be printed as a column."""
    from pivault.scan import lexicon

    return (2 <= len(key) <= 4
            and (key[:2] in lexicon.SURNAMES_2 or key[0] in lexicon.SURNAMES_1)
            and key not in lexicon.NOT_NAMES and key[:2] not in lexicon.NOT_NAMES
            and _KEY_CHARS.isdisjoint(key))


_KEYISH = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_.-")


class TextStream:
    """Scans one text source given as successive byte chunks."""

    def __init__(
        self,
        engine: Engine,
        collector: Collector,
        name: str,
        *,
        csv_sep: bytes | None = None,
        table: str | None = None,
    ) -> None:
        self.engine = engine
        self.out = collector
        self.name = name
        self.table = table
        self.csv_sep = csv_sep
        self.header: list[str] | None = None
        self.hint_cols: list[int] = []
        self.carry = b""
        self.carry_start = 0  # index in carry where unscanned bytes begin
        self.abs_base = 0  # absolute offset of carry[0]
        self.line_base = 0  # newlines before carry[0]
        self.seen: set[tuple[str, int]] = set()

    def _set_header(self, first_line: bytes) -> None:
        assert self.csv_sep is not None
        self.header = _csv_header(first_line, self.csv_sep)
        if header_is_data(self.header, self.engine, self.out.min_confidence):
            self.header = []  # no header: columns are named by position (#1, #2 …)
        kinds = self.engine.kinds
        from pivault.scan import lexicon

        self.hint_cols = [
            i
            for i, h in enumerate(self.header)
            if ("name" in kinds and lexicon.is_name_column(h))
            or ("address" in kinds and lexicon.is_address_column(h))
            or (
                kinds & {"passport", "travel_permit"}
                and re.search(r"(?i)passport|护照|permit|通行证|回乡证|台胞证", h)
            )
        ]

    def feed(self, data: bytes, final: bool = False) -> None:
        buf = self.carry + data if self.carry else data
        start = self.carry_start
        if self.csv_sep is not None and self.header is None:
            nl = buf.find(b"\n")
            if nl >= 0 or final:
                self._set_header(buf[: nl if nl >= 0 else len(buf)])
            elif len(buf) < 1 << 20:
                self.carry = buf
                return
        if final:
            limit = len(buf)
        else:
            limit = len(buf) - TAIL
            if limit <= start:
                self.carry = buf
                self.carry_start = start
                return
            nl = buf.rfind(b"\n", max(start, limit - (1 << 16)), limit)
            if nl >= 0:
                limit = nl + 1
        self._scan(buf, start, limit)
        if final:
            self.carry = b""
            return
        keep = max(0, limit - CONTEXT)
        if self.out.room() > 0:  # line numbers are only needed while findings are still listed
            self.line_base += buf.count(b"\n", 0, keep)
        self.abs_base += keep
        self.carry = buf[keep:]
        self.carry_start = limit - keep

    def _scan(self, buf: bytes, start: int, limit: int) -> None:
        room = self.out.room()
        # past the listing cap, numbers are only counted (the engine makes no hit for them)
        tally: Counter[str] | None = Counter() if room <= 0 else None
        fast, slow = self.engine.find(buf, start, limit, self.out.min_confidence, tally)
        if tally:
            self.out.tally(tally)
        if self.hint_cols:
            slow = self._cell_hits(buf, start, limit, slow)
        base = self.abs_base
        if slow and self.seen:
            # a value near the end of the last chunk may have been found there from another anchor
            edge = max(a for _, a in self.seen)
            slow = [h for h in slow if h[0] + base > edge or (h[1], h[0] + base) not in self.seen]
        self.seen = set()
        for h in reversed(slow):
            if h[0] < limit - CONTEXT:
                break
            self.seen.add((h[1], h[0] + base))
        if not fast and not slow:
            return
        if room <= 0:
            self.out.count(fast)
            self.out.count(slow)
            return
        hits = sorted(fast + slow) if fast and slow else sorted(fast) if fast else slow
        if len(hits) > room:
            self.out.count(hits[room:])
            hits = hits[:room]
        line = self.line_base
        cursor = 0
        sep = self.csv_sep[0] if self.csv_sep else None
        for h in hits:
            s, kind, e = h[0], h[1], h[2]
            line += buf.count(b"\n", cursor, s)
            cursor = s
            ls = buf.rfind(b"\n", 0, s) + 1
            column: str | None = None
            if sep is not None and self.header is not None and line > 0:
                i = _csv_column(buf, ls, s, sep)
                column = self.header[i] if i < len(self.header) else f"#{i + 1}"
            elif not (kind == "password" and h[4].endswith("URL")):
                column = field_before(buf, ls, s)
            self.out.add(
                Finding(
                    kind,
                    masked(buf, h),
                    resolve_confidence(buf, h),
                    file=self.name,
                    table=self.table,
                    column=column,
                    line=line + 1,
                    offset=base + s,
                    length=e - s,
                    detail=h[4],
                )
            )

    def _cell_hits(self, buf: bytes, start: int, limit: int, hits: list[Raw]) -> list[Raw]:
        assert self.header is not None and self.csv_sep is not None
        sep = self.csv_sep.decode()
        kinds = self.engine.kinds
        have = {(h[1], h[0]) for h in hits}
        extra: list[Raw] = []
        pos = start
        # the header line itself is not data
        if self.abs_base == 0 and start == 0:
            nl = buf.find(b"\n", 0, limit)
            pos = nl + 1 if nl >= 0 else limit
        while pos < limit:
            nl = buf.find(b"\n", pos, limit)
            end = nl if nl >= 0 else limit
            line = buf[pos:end]
            text = line.decode("utf-8", "replace").rstrip("\r")
            cells = text.split(sep) if '"' not in text else _split_quoted(text, sep)
            offset = pos
            for i, cell in enumerate(cells):
                if i in self.hint_cols:
                    for h in cell_hits(cell.strip('"'), self.header[i], kinds):
                        s = offset + h.start + (1 if cell.startswith('"') else 0)
                        if (h.kind, s) not in have and h.confidence >= self.out.min_confidence:
                            extra.append((s, h.kind, s + h.end - h.start, h.confidence, h.detail, h.masked))
                offset += len(cell.encode("utf-8")) + len(sep.encode())
            pos = end + 1
        if not extra:
            return hits
        return sorted(hits + extra)


def _split_quoted(text: str, sep: str) -> list[str]:
    out = []
    cur: list[str] = []
    quoted = False
    for c in text:
        if c == '"':
            quoted = not quoted
        if c == sep and not quoted:
            out.append("".join(cur))
            cur.clear()
        else:
            cur.append(c)
    out.append("".join(cur))
    return out


def scan_binary_stream(
    f: Readable,
    name: str,
    engine: Engine,
    collector: Collector,
    options: ScanOptions,
    *,
    csv_sep: bytes | None = None,
    table: str | None = None,
    head: bytes | None = None,
) -> int:
    """Scan a readable byte stream as text; returns the bytes read. Encoding problems become issues."""
    size = options.chunk_size
    chunk = head if head is not None else f.read(size)
    enc = sniff_encoding(chunk)
    if enc == "binary":
        collector.issue("binary", "binary data (not text, not a known document or archive format): skipped",
                        name)
        return len(chunk)
    if enc is None:
        collector.issue(
            "encoding",
            "not valid UTF-8, GB18030 or UTF-16: scanned as raw bytes "
            "(numbers, keys and e-mail addresses are still found)",
            name,
        )
    stream = TextStream(engine, collector, name, csv_sep=csv_sep, table=table)
    decoder = codecs.getincrementaldecoder(enc)(errors="replace") if enc not in (None, "utf-8") else None
    # the start decides UTF-8 on 64 KiB, often all ASCII: a log or an export whose Chinese
    # lines come later in GB18030 had its labels, names and addresses read as bytes of nothing
    # (passports and permits, found only after their label, never were). So each later chunk
    # that is not ASCII is checked: one that is not UTF-8 (a stray bad byte aside) but is
    # GB18030 is read as GB18030
    gb = codecs.getincrementaldecoder("gb18030")(errors="replace") if enc == "utf-8" else None
    told = False
    total = 0
    bad = 0
    failed: Exception | None = None
    while chunk:
        total += len(chunk)
        as_gb = False
        if gb is not None and not chunk.isascii() and not _mostly_utf8(chunk):
            as_gb = _decodes(chunk, "gb18030")
            if not told:
                told = True
                collector.issue("encoding", "UTF-8 or ASCII at the start, GB18030 further on: read as "
                                "GB18030 there (offsets count its UTF-8 transcoding)" if as_gb else
                                "not valid UTF-8 further on: scanned as raw bytes (numbers, keys and "
                                "e-mail addresses are still found)", name)
        if as_gb and gb is not None:
            stream.feed(gb.decode(chunk).encode("utf-8"))
        elif decoder is not None:
            text = decoder.decode(chunk)
            bad += text.count("\ufffd")
            stream.feed(text.encode("utf-8"))
        else:
            stream.feed(chunk)
        try:
            chunk = f.read(size)
        except Exception as e:
            # a truncated or damaged archive: the bytes held back for the next chunk are
            # still scanned (findings before the damage are kept), then the caller hears of it
            failed = e
            break
    tail = b""
    if decoder is not None:
        text = decoder.decode(b"", final=True)
        bad += text.count("\ufffd")
        tail = text.encode("utf-8")
    stream.feed(tail, final=True)
    if bad:
        collector.issue("encoding", f"{bad} byte sequence(s) invalid in {enc}: replaced and scanned around",
                        name)
    if failed is not None:
        raise failed
    return total


_NON_ASCII = re.compile(rb"[\x80-\xff]")
#: bytes of a chunk, from its first non-ASCII byte and from its middle, that say whether it is UTF-8
_UTF8_PROBE = 16 * 1024


def _mostly_utf8(chunk: bytes) -> bool:
    """UTF-8, but for a stray bad sequence (a cut character) or two; GB18030 fails at every character.

    Two probes, not the whole chunk: decoding every chunk of a UTF-8 file cost a good part of
    the scan's time. The first probe starts where the text stops being ASCII, where a log's
    GB18030 lines begin.
    """
    errors = seen = 0
    for at in (0, len(chunk) // 2):
        m = _NON_ASCII.search(chunk, at)
        if m is None:
            continue
        i = m.start()
        while i < m.start() + 3 and i < len(chunk) and 0x80 <= chunk[i] < 0xC0:
            i += 1  # not from the middle of a UTF-8 character
        probe = chunk[i : i + _UTF8_PROBE]
        errors += probe.decode("utf-8", "replace").count("\ufffd")
        seen += len(probe)
    return errors <= max(2, seen // 1000)


def _decodes(data: bytes, enc: str) -> bool:
    """Whether ``data`` (a chunk: it may end inside a character) is valid in ``enc``."""
    try:
        codecs.getincrementaldecoder(enc)().decode(data, final=False)
    except UnicodeDecodeError:
        return False
    return True


def scan_bytes(
    data: bytes,
    name: str,
    engine: Engine,
    collector: Collector,
    options: ScanOptions,
    *,
    csv_sep: bytes | None = None,
    table: str | None = None,
) -> int:
    return scan_binary_stream(
        io.BytesIO(data), name, engine, collector, options, csv_sep=csv_sep, table=table
    )


def _clean(v: str) -> str:
    return v.replace("\n", " ").replace("\r", " ")


def scan_columns(
    rows: Iterable[Sequence[object]],
    columns: list[str],
    name: str | None,
    table: str | None,
    engine: Engine,
    collector: Collector,
    *,
    first_row: int = 1,
    row_ids: Callable[[int], int] | None = None,
    batch: int = 2000,
) -> int:
    """Scan tabular values column by column, each cell with its column's name as context.

    A batch of one column's cells is scanned as one text (a cell per line), so
    the per-cell cost is small. Returns the bytes of cell text scanned.
    ``row_ids`` maps a 0-based ordinal to the row number reported (a rowid,
    say); by default rows count from ``first_row``. Column names that hold a
    resident's values (a headerless file read by a tool that took its first
    row for names, then saved as Parquet or as a table) are replaced by
    positions, ``#1``, ``#2`` …: they would be printed with every finding.
    """
    if header_is_data(columns, engine, collector.min_confidence):
        columns = [f"#{j + 1}" for j in range(len(columns))]
    total = 0
    ordinal = 0
    pending: list[Sequence[object]] = []

    def flush() -> None:
        nonlocal total, ordinal
        for j, col in enumerate(columns):
            values = [_clean(_cell_text(r[j])) if j < len(r) else "" for r in pending]
            blob = "\n".join(values).encode("utf-8", "replace")
            total += len(blob)
            if not blob.strip():
                continue
            starts = [0]
            for v in values[:-1]:
                starts.append(starts[-1] + len(v.encode("utf-8", "replace")) + 1)
            found: set[tuple[str, int]] = set()
            emitted = [(h, bisect.bisect_right(starts, h.start) - 1) for h in engine.scan(blob)]
            found = {(h.kind, r) for h, r in emitted}
            for r, v in enumerate(values):
                if v:
                    emitted.extend(
                        (h, r) for h in cell_hits(v, col, engine.kinds) if (h.kind, r) not in found
                    )
            for h, r in emitted:
                o = ordinal + r
                collector.add(
                    Finding(
                        h.kind,
                        h.masked,
                        h.confidence,
                        file=name,
                        table=table,
                        column=col,
                        line=row_ids(o) if row_ids is not None else first_row + o,
                        length=h.end - h.start,
                        detail=h.detail,
                    )
                )
        ordinal += len(pending)
        pending.clear()

    for row in rows:
        pending.append(row)
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return total


def _cell_text(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, bytes | bytearray | memoryview):
        b = bytes(v)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            return b.decode("gb18030", "replace") if not b.count(0) else ""
    return str(v)
