"""Writing a synthetic population to CSV, JSONL or Parquet, with its labels file."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc

from pivault.synth.population import (
    COLUMNS,
    CSV_KINDS,
    FIELD_KINDS,
    REFERENCE_DATE,
    SCHEMA,
    BadLabel,
    Chunk,
    chunks,
)

FORMATS: dict[str, str] = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
_NEEDS_QUOTES = r'[",\r\n]'


@dataclass(frozen=True, slots=True)
class SynthSummary:
    """What :func:`write_population` wrote."""

    path: Path
    labels_path: Path
    format: str
    encoding: str
    rows: int
    bad_rows: int
    #: bad rows by kind
    kinds: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def good_rows(self) -> int:
        return self.rows - self.bad_rows


def labels_path_for(path: Path | str) -> Path:
    """``<out>.labels.jsonl`` beside the data file."""
    p = Path(path)
    return p.with_name(p.name + ".labels.jsonl")


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS.values():
            raise ValueError("fmt must be one of csv, jsonl, parquet")
        return fmt
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError("the output file must end in .csv, .jsonl or .parquet") from None


def _label_json(label: BadLabel, line: int | None) -> str:
    obj: dict[str, Any] = {"row": label.row, "line": line, "kind": label.kind,
                           "expected_code": label.expected_code}
    if label.duplicate_of is not None:
        obj["duplicate_of"] = label.duplicate_of
    return json.dumps(obj, ensure_ascii=False) + "\n"


def _csv_field(value: str) -> str:
    """RFC 4180 minimal quoting, as ``csv.writer`` does it."""
    if any(ch in value for ch in '",\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def csv_damaged_line(row: tuple[str, ...] | list[str], kind: str) -> str:
    """The physical line written for a CSV-structure bad row (see the package docstring)."""
    name, idn, mob, addr, notes = row
    if kind == "csv_quote":
        # a quoted field with a character after its closing quote
        return ",".join([name, f'"{idn}"0', mob, addr, notes]) + "\n"
    # csv_fields: an ASCII comma inside the unquoted address -> six fields, or the
    # notes column left out -> four fields, by the parity of the name's length
    if len(name) % 2:
        return ",".join([name, idn, mob, addr.replace("号", "号,", 1) if "号" in addr else addr + ",",
                         notes]) + "\n"
    return ",".join([name, idn, mob, addr]) + "\n"


def _csv_bytes(chunk: Chunk) -> bytes:
    """One chunk as CSV lines (UTF-8), built with Arrow kernels; damaged lines patched in.

    Generated values hold no comma, quote or carriage return, and a newline only
    in notes flagged ``multiline``: those notes are quoted. The counts of
    commas and quotes in the result are checked; should a value ever break
    that assumption, the chunk is quoted field by field instead.
    """
    batch, n = chunk.batch, chunk.batch.num_rows
    if n == 0:
        return b""
    damaged = [lb for lb in chunk.labels if lb.kind in CSV_KINDS]
    text = _damaged_text(damaged, chunk)
    raw = _join_lines(list(batch.columns), chunk.multiline, damaged, text, chunk.start, n)
    commas = 4 * (n - len(damaged)) + sum(line.count(",") for line in text)
    quotes = 2 * (pc.sum(pc.cast(chunk.multiline, pa.int64())).as_py() or 0)
    quotes += sum(line.count('"') for line in text)
    if raw.count(b",") == commas and raw.count(b'"') == quotes and b"\r" not in raw:
        return raw
    cols = []  # pragma: no cover - only if a table ever holds a character that needs quoting
    for col in batch.columns:  # pragma: no cover
        needs = pc.match_substring_regex(col, _NEEDS_QUOTES)
        quoted = pc.binary_join_element_wise('"', pc.replace_substring(col, '"', '""'), '"', "")
        cols.append(pc.if_else(needs, quoted, col))
    return _join_lines(cols, None, damaged, text, chunk.start, n)  # pragma: no cover


def _damaged_text(damaged: list[BadLabel], chunk: Chunk) -> list[str]:
    return [csv_damaged_line([chunk.batch.column(f)[lb.row - 1 - chunk.start].as_py()
                              for f in range(len(COLUMNS))], lb.kind) for lb in damaged]


def _join_lines(cols: list[Any], multiline: Any, damaged: list[BadLabel], text: list[str], start: int,
                n: int) -> bytes:
    if multiline is not None and pc.any(multiline).as_py():
        notes = cols[4]
        quoted = pc.binary_join_element_wise('"', pc.filter(notes, multiline), '"', "")
        cols[4] = pc.replace_with_mask(notes, multiline, quoted)
    lines = pc.binary_join_element_wise(*cols, ",")
    lines = pc.binary_join_element_wise(lines, "\n", "")
    if damaged:
        mask = [False] * n
        for lb in damaged:
            mask[lb.row - 1 - start] = True
        lines = pc.replace_with_mask(lines, pa.array(mask, pa.bool_()), pa.array(text, pa.string()))
    offsets = memoryview(lines.buffers()[1]).cast("i")
    first, last = offsets[lines.offset], offsets[lines.offset + len(lines)]
    data: bytes = lines.buffers()[2][first:last].to_pybytes()
    return data


def _write_csv(out: IO[bytes], labels: IO[str], count: int, seed: int, bad_rate: float,
               as_of: _dt.date, tally: Counter[str], encoding: str) -> int:
    utf8 = encoding == "utf-8"
    out.write((",".join(COLUMNS) + "\n").encode(encoding))
    bad = 0
    for chunk in chunks(count, seed, bad_rate=bad_rate, kinds=FIELD_KINDS + CSV_KINDS, as_of=as_of):
        raw = _csv_bytes(chunk)
        out.write(raw if utf8 else raw.decode("utf-8").encode(encoding))
        for lb in chunk.labels:
            labels.write(_label_json(lb, lb.row + 1 + lb.newlines_before))
            tally[lb.kind] += 1
            bad += 1
    return bad


def _write_jsonl(out: IO[bytes], labels: IO[str], count: int, seed: int, bad_rate: float,
                 as_of: _dt.date, tally: Counter[str], encoding: str) -> int:
    dumps = json.dumps
    bad = 0
    for chunk in chunks(count, seed, bad_rate=bad_rate, as_of=as_of):
        text = "".join(dumps(r, ensure_ascii=False) + "\n" for r in chunk.batch.to_pylist())
        out.write(text.encode("utf-8"))
        for lb in chunk.labels:
            labels.write(_label_json(lb, lb.row))
            tally[lb.kind] += 1
            bad += 1
    return bad


def _write_parquet(path: Path, labels: IO[str], count: int, seed: int, bad_rate: float,
                   as_of: _dt.date, tally: Counter[str]) -> int:
    import pyarrow.parquet as pq

    bad = 0
    # one row group per chunk (at most 32,768 rows), so memory stays flat
    with pq.ParquetWriter(str(path), SCHEMA, compression="zstd") as writer:
        for chunk in chunks(count, seed, bad_rate=bad_rate, as_of=as_of):
            writer.write_batch(chunk.batch)
            for lb in chunk.labels:
                labels.write(_label_json(lb, None))
                tally[lb.kind] += 1
                bad += 1
    return bad


def write_population(
    path: Path | str, count: int, seed: int, bad_rate: float = 0.0, fmt: str | None = None, *,
    encoding: str = "utf-8", as_of: _dt.date = REFERENCE_DATE,
) -> SynthSummary:
    """Write ``count`` residents to ``path`` and the bad rows' labels beside it.

    The format follows the extension (``.csv``, ``.jsonl``, ``.parquet``) unless
    ``fmt`` names one. ``encoding`` may be ``gb18030`` for CSV; JSONL and
    Parquet are always UTF-8. The labels file ``<path>.labels.jsonl`` is
    always written (empty when there are no bad rows). The same arguments give
    the same bytes.
    """
    path = Path(path)
    kind = _format_of(path, fmt)
    enc = encoding.lower().replace("_", "-")
    enc = "utf-8" if enc == "utf8" else enc
    if enc not in ("utf-8", "gb18030"):
        raise ValueError("encoding must be utf-8 or gb18030")
    if kind != "csv" and enc != "utf-8":
        raise ValueError("only CSV output can be written in gb18030")
    labels_path = labels_path_for(path)
    tally: Counter[str] = Counter()
    started = time.perf_counter()
    opened: list[Path] = []
    try:
        with labels_path.open("w", encoding="utf-8", newline="") as labels:
            opened.append(labels_path)
            if kind == "parquet":
                opened.append(path)
                bad = _write_parquet(path, labels, count, seed, bad_rate, as_of, tally)
            else:
                with path.open("wb") as out:
                    opened.append(path)
                    writer = _write_csv if kind == "csv" else _write_jsonl
                    bad = writer(out, labels, count, seed, bad_rate, as_of, tally, enc)
    except BaseException:
        # a half-written population would read as a whole one: leave none behind
        for p in opened:
            with contextlib.suppress(OSError):
                p.unlink()
        raise
    return SynthSummary(
        path=path, labels_path=labels_path, format=kind, encoding=enc, rows=count, bad_rows=bad,
        kinds=dict(sorted(tally.items())), seconds=time.perf_counter() - started,
    )
