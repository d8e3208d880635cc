"""Memory is bounded by the batch, not by how long or how wide a dump's rows are.

A row may be as long as a line (``--max-line-mib``, 16 MiB): 2,000 such rows in one batch
would not fit in memory, nor would rows of millions of cells. Batches stop at about
16 MiB (cells and characters) and rows wider than 4,096 columns are skipped, counted rejected.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from leak.synthetic import people
from pivault.leak.readers import read_stream

#: what a batch may hold, in characters (16 MiB at two bytes a character), and one row more
BOUND_CHARS = 8 * 2**20
ROWS = 2000
NOTE = 12_000  # characters of notes a row: 2,000 such rows are 24 million characters
PEOPLE = list(people(50, seed=17))


class _Lazy(io.RawIOBase):
    """A stream of the chunks an iterator gives, made as they are read (nothing on disk)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.left = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        while not self.left:
            self.left = next(self.chunks, b"")
            if not self.left:
                return 0
        n = min(len(buf), len(self.left))
        buf[:n] = self.left[:n]
        self.left = self.left[n:]
        return n


def _values(i: int) -> tuple[str, str, str, str]:
    p = PEOPLE[i % len(PEOPLE)]
    return p["name"], p["id_number"], p["mobile"], f"备注{i}" + "x" * NOTE


def _csv(n: int) -> Iterator[bytes]:
    yield "姓名,身份证号,手机,备注\n".encode()
    for i in range(n):
        yield (",".join(_values(i)) + "\n").encode()


def _jsonl(n: int) -> Iterator[bytes]:
    for i in range(n):
        yield (json.dumps(dict(zip(("name", "id", "mobile", "notes"), _values(i), strict=True)),
                          ensure_ascii=False) + "\n").encode()


def _json(n: int) -> Iterator[bytes]:
    yield b"["
    for i in range(n):
        yield (("," if i else "") + json.dumps(list(_values(i)), ensure_ascii=False)).encode()
    yield b"]"


def _mysql(n: int) -> Iterator[bytes]:
    yield b"INSERT INTO `people` (`name`,`id`,`mobile`,`notes`) VALUES "
    for i in range(n):
        yield (("," if i else "") + "(" + ",".join(f"'{v}'" for v in _values(i)) + ")").encode()
    yield b";\n"


def _copy(n: int) -> Iterator[bytes]:
    yield b"COPY public.people (name, id, mobile, notes) FROM stdin;\n"
    for i in range(n):
        yield ("\t".join(_values(i)) + "\n").encode()
    yield b"\\.\n"


FORMATS: dict[str, Callable[[int], Iterator[bytes]]] = {
    "csv": _csv, "jsonl": _jsonl, "json": _json, "sql-mysql": _mysql, "sql-postgresql": _copy}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_batches_of_long_rows_stay_under_the_bound(fmt: str) -> None:
    rows = 0
    for batch in read_stream(io.BufferedReader(_Lazy(FORMATS[fmt](ROWS))), f"d.{fmt}"):
        chars = sum(len(c) for r in batch.rows for c in r if c)
        assert chars <= BOUND_CHARS + NOTE + 100, (fmt, len(batch.rows), chars)
        assert batch.table.format == fmt and batch.table.rejected == 0
        rows += len(batch.rows)
    assert rows == ROWS


def _wide(fmt: str) -> Iterator[bytes]:
    """Ten rows of four columns around two of 5,000."""
    wide = [str(i % 10) for i in range(5000)]
    narrow = [[*_values(i)[:3], "无"] for i in range(10)]
    rows = [*narrow[:5], wide, *narrow[5:], wide]
    if fmt == "csv":
        yield b"".join((",".join(r) + "\n").encode() for r in rows)
    elif fmt == "json":
        yield json.dumps(rows, ensure_ascii=False).encode()
    elif fmt == "sql-mysql":
        yield ("INSERT INTO t VALUES " + ",".join("(" + ",".join(f"'{v}'" for v in r) + ")" for r in rows)
               + ";\n").encode()
    else:
        yield ("COPY t FROM stdin;\n" + "".join("\t".join(r) + "\n" for r in rows) + "\\.\n").encode()


@pytest.mark.parametrize("fmt", ["csv", "json", "sql-mysql", "sql-postgresql"])
def test_rows_too_wide_are_skipped_and_counted(fmt: str) -> None:
    batches = list(read_stream(io.BufferedReader(_Lazy(_wide(fmt))), f"w.{fmt}"))
    table = batches[0].table
    assert [len(r) for b in batches for r in b.rows] == [4] * 10
    assert table.rows == 10 and table.rejected == 2
    assert "rows of more than 4096 columns were skipped" in table.notes


def test_json_keys_beyond_the_limit_are_noted() -> None:
    wide = {f"k{i}": i for i in range(5000)}
    data = json.dumps([{"name": "王芳"}, wide]).encode()
    batches = list(read_stream(io.BytesIO(data), "k.json"))
    table = batches[0].table
    assert table.rows == 2 and max(len(r) for b in batches for r in b.rows) == 4096
    assert any("keys beyond the first 4096" in n for n in table.notes)


_CHILD = """
import io, sys
sys.path[:0] = [{tests!r}]
from leak.test_limits import _Lazy, _csv
import leak.test_limits as t
from pivault.leak.readers import read_stream
t.NOTE = int(sys.argv[1])
n = 0
for b in read_stream(io.BufferedReader(_Lazy(_csv(2000))), "d.csv"):
    n += len(b.rows)
assert n == 2000, n
print([int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0])
"""


def _peak_kib(note: int) -> int:
    code = _CHILD.format(tests=str(Path(__file__).resolve().parent.parent))
    out = subprocess.run([sys.executable, "-c", code, str(note)], capture_output=True, text=True,
                         check=True, timeout=120)
    return int(out.stdout.strip())


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from /proc")
def test_peak_memory_of_reading_long_rows_is_bounded() -> None:
    """2,000 rows of 48,000 characters: about 96 MB in one batch of 2,000 rows (and a second
    being read while the first is held: a peak about 200 MB above reading short rows). Read in
    batches of about 16 MiB, the peak grows by about 50 MB."""
    small = _peak_kib(10)
    long = _peak_kib(48_000)
    assert long - small < 100 * 1024, (small, long)


def test_parquet_batches_of_long_rows_stay_under_the_bound(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = list(zip(*(_values(i) for i in range(ROWS)), strict=True))
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({k: list(v) for k, v in zip(("name", "id", "mobile", "notes"), cols,
                                                          strict=True)}), path, row_group_size=ROWS)
    rows = 0
    with open(path, "rb") as f:
        for batch in read_stream(f, "d.parquet"):
            chars = sum(len(c) for r in batch.rows for c in r if c)
            assert chars <= BOUND_CHARS + NOTE + 100, (len(batch.rows), chars)
            rows += len(batch.rows)
    assert rows == ROWS
