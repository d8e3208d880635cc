"""Drills: kill -9 during import, no plaintext at rest after a 100,000-row import, erase purges.

The plaintext search reads every file once. Each needle is keyed by its first
four bytes; a zero-copy Arrow view of the file as 32-bit words, at each of the
four byte offsets, is checked against that key set, and each candidate
position is compared with the full needles. Ciphertext is uniformly random, so
a needle of L bytes turns up by chance about ``size / 256**L`` times per
distinct needle: for 6 bytes and more that is nothing (ID numbers, mobiles,
addresses, names in UTF-8, names of three or more characters in GB18030) and
any hit fails the test; two-character names are 4 bytes in GB18030 and turn
up by chance, so the test allows a few times the chance count, while a leak
would show about one hit per resident.
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from vault_support import CHEAP, PASSPHRASE, new_keyring

from pivault.model.record import _B32
from pivault.policy import AccessContext
from pivault.store.db import Database
from pivault.synth import write_population
from pivault.vault import Vault

#: a needle this long found anywhere fails at once. 6-byte needles (2-character names in UTF-8,
#: 3-character ones in GB18030: ~75,000 of them in the 100k file) are judged against what random
#: bytes hold by chance like the shorter ones: over the ~2.5·10^8 bytes scanned, 0.07 chance hits
#: a run, so failing on one failed one run in fifteen; a real leak holds thousands
EXACT_MIN_BYTES = 7
#: a needle made only of characters a record id is made of (digits and lowercase letters: the
#: 7-digit mobiles of bad rows) is judged with the short ones below this length. The stores hold
#: millions of record ids, whose random characters hold one of those 25 strings in about 2 % of
#: runs; a leak of the rejected rows would show all 25 (the short-needle bound allows 10)
ID_LIKE_EXACT_MIN_BYTES = 8
_ID_ALPHABET = frozenset(_B32.encode())


class NeedleSet:
    """Byte strings to look for anywhere in a file."""

    def __init__(self, values: set[bytes]) -> None:
        # first four bytes -> length -> needles
        self.by_key: dict[int, dict[int, set[bytes]]] = {}
        for v in values:
            if len(v) >= 4:
                key = int.from_bytes(v[:4], "little")
                self.by_key.setdefault(key, {}).setdefault(len(v), set()).add(v)
        self.keys = pc.SetLookupOptions(pa.array(sorted(self.by_key), type=pa.uint32()))
        self.lengths = Counter(len(v) for v in values if len(v) >= 4)

    def scan(self, data: bytes) -> list[bytes]:
        """Every needle occurrence in ``data``."""
        buf = pa.py_buffer(data)
        found: list[bytes] = []
        for k in range(4):
            count = (len(data) - k) // 4
            if count <= 0:
                continue
            words = pa.Array.from_buffers(pa.uint32(), count, [None, buf.slice(k)])
            for i in pc.indices_nonzero(pc.is_in(words, options=self.keys)).to_pylist():
                pos = 4 * i + k
                for n, vs in self.by_key[int.from_bytes(data[pos:pos + 4], "little")].items():
                    if data[pos:pos + n] in vs:
                        found.append(data[pos:pos + n])
        return found

    def chance_hits(self, size: int, n: int) -> float:
        return size * self.lengths.get(n, 0) / 256.0**n


def _needles(csv_path: Path) -> set[bytes]:
    """Every name, ID number, mobile and address of the file, in UTF-8 and GB18030."""
    values: set[bytes] = set()
    with open(csv_path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            for col in ("name", "id_number", "mobile", "address"):
                v = (row.get(col) or "").strip()
                if v:
                    values.add(v.encode("utf-8"))
                    values.add(v.encode("gb18030"))
    return values


def _assert_no_plaintext(files: list[Path], needles: NeedleSet) -> None:
    total = 0
    short_hits: Counter[int] = Counter()
    for f in files:
        data = f.read_bytes()
        total += len(data)
        for v in needles.scan(data):
            exact_min = ID_LIKE_EXACT_MIN_BYTES if set(v) <= _ID_ALPHABET else EXACT_MIN_BYTES
            if len(v) >= exact_min:
                pytest.fail(f"a plaintext value of {len(v)} bytes found in {f.name}")
            short_hits[len(v)] += 1
    for n, hits in short_hits.items():
        allowed = 4 * needles.chance_hits(total, n) + 10
        assert hits <= allowed, f"{hits} hits of {n}-byte values (chance allows {allowed:.0f})"


def _files_under(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file())


# -- no plaintext at rest ------------------------------------------------------------

@pytest.mark.slow
def test_no_plaintext_at_rest_after_100k_import(sqlite_url: str, pg_url: str, tmp_path: Path) -> None:
    src = tmp_path / "population.csv"
    write_population(src, 100_000, seed=2024, bad_rate=0.01)
    needles = NeedleSet(_needles(src))
    # the scanner works: the source file itself is full of hits
    assert len(needles.scan(src.read_bytes()[:500_000])) > 10_000

    # SQLite: database, WAL, shared memory, anything else in the data directory
    db = Database(sqlite_url)
    v = Vault.initialise(db, new_keyring(tmp_path / "keys" / "sqlite.keyring", 10**7))
    s = v.import_files([src], on_duplicate="reject")
    assert s.reconciles and s.imported > 95_000 and s.rejected > 500
    data_dir = Path(db.url.target).parent
    files = _files_under(data_dir)
    assert any(f.name.endswith("-wal") for f in files)
    _assert_no_plaintext(files, needles)
    db.close()

    # PostgreSQL: the heap, TOAST and index files of the vault's relations
    pdb = Database(pg_url)
    pv = Vault.initialise(pdb, new_keyring(tmp_path / "keys" / "pg.keyring", 10**7))
    ps = pv.import_files([src], on_duplicate="reject")
    assert (ps.imported, ps.rejected) == (s.imported, s.rejected)
    pdb.execute("CHECKPOINT")
    data_root = Path(str(pdb.query_one("SHOW data_directory")[0]))  # type: ignore[index]
    rels = pdb.query(
        "WITH ours AS (SELECT oid, reltoastrelid FROM pg_class"
        "              WHERE relnamespace = current_schema()::regnamespace)"
        " SELECT pg_relation_filepath(oid) FROM ours"
        " UNION SELECT pg_relation_filepath(reltoastrelid) FROM ours WHERE reltoastrelid <> 0"
        " UNION SELECT pg_relation_filepath(i.indexrelid) FROM pg_index i"
        "       JOIN ours o ON i.indrelid = o.reltoastrelid")
    paths = [data_root / str(r[0]) for r in rels if r[0]]
    if not paths or not os.access(paths[0].parent, os.R_OK):
        pdb.close()
        pytest.skip("the PostgreSQL data directory is not readable by the test process")
    pg_files = [f for p in paths for f in p.parent.glob(p.name + "*") if f.is_file()]
    assert sum(f.stat().st_size for f in pg_files) > 10_000_000
    _assert_no_plaintext(pg_files, needles)
    pdb.close()


def test_erase_leaves_no_ciphertext_in_sqlite_files(sqlite_vault: Vault, ctx: AccessContext) -> None:
    from vault_support import make_residents

    ids = [sqlite_vault.put(p, ctx=ctx) for p in make_residents(60, seed=77)]
    victim, keep = sqlite_vault.store.get(ids[10]), sqlite_vault.store.get(ids[20])
    assert victim is not None and keep is not None
    sqlite_vault.erase(ids[10], ctx=ctx)
    files = _files_under(Path(sqlite_vault.db.url.target).parent)
    blob = b"".join(f.read_bytes() for f in files)
    for ct in victim.fields.values():
        assert ct not in blob
    for ct in keep.fields.values():  # the search would have found them
        assert ct in blob
    assert ids[10].encode() not in blob


# -- kill -9 ------------------------------------------------------------------------

_CHILD = """
import sys
from pivault.crypto import Argon2Params, Keyring, PassphraseProvider
from pivault.store.db import Database
from pivault.vault import Vault
url, keyring_path, src, workers, passphrase = sys.argv[1:6]
kr = Keyring.open(keyring_path, PassphraseProvider(passphrase, Argon2Params(1, 8, 1)))
v = Vault(Database(url), kr)
def progress(p):
    print("chunk", p.read, flush=True)
s = v.import_files([src], on_duplicate="reject", workers=int(workers), chunk_size=150,
                   progress=progress)
print("done", s.files[0].status, flush=True)
"""


def _run_child(url: str, keyring: Path, src: Path, workers: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, url, str(keyring), str(src), str(workers), PASSPHRASE],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _kill_midway(proc: subprocess.Popen[str], chunks: int, wait: float) -> None:
    """Kill -9 the import ``wait`` seconds after it reported ``chunks`` chunks (or ended).

    An import that failed on its own before the kill fails the test: a kill must interrupt work
    that would have succeeded.
    """
    assert proc.stdout is not None
    for _ in range(chunks):
        if not proc.stdout.readline():
            break
    time.sleep(wait)
    early = proc.poll()
    _kill_group(proc)
    if early is not None and early != 0:
        assert proc.stderr is not None
        pytest.fail(f"the import process failed on its own: {proc.stderr.read()[-2000:]}")


#: enough 150-row chunks that the kills below land before the end even on a fast machine: 6,000
#: rows took 0.6 s with 2 workers on SQLite, as long as the first attempt's kill may wait, so
#: that attempt sometimes finished the import and left the others nothing to interrupt
ROWS = 20_000


@pytest.mark.parametrize("workers", [0, 2])
def test_kill_minus_nine_then_rerun_imports_every_row_once(store_url: str, tmp_path: Path,
                                                           ctx: AccessContext, workers: int) -> None:
    assert CHEAP.memory_cost == 8
    src = tmp_path / "pop.csv"
    write_population(src, ROWS, seed=99, bad_rate=0.03)
    labels_lines = src.with_name(src.name + ".labels.jsonl").read_text().splitlines()
    keyring_path = tmp_path / "keys" / "kill.keyring"
    db = Database(store_url)
    v = Vault.initialise(db, new_keyring(keyring_path))
    rng = random.Random(f"{store_url}{workers}")
    kills_mid_import = 0
    for attempt in range(3):
        proc = _run_child(store_url, keyring_path, src, workers)
        if attempt == 0:
            _kill_midway(proc, 0, rng.uniform(0.0, 0.6))  # anywhere, maybe before the first chunk
        else:
            _kill_midway(proc, rng.randint(1, 4), rng.uniform(0.0, 0.05))  # a little way in
        row = db.query_one("SELECT rows_consumed, status FROM import_batches")
        if row and row[1] == "running" and 0 < row[0] < ROWS:
            kills_mid_import += 1
    assert kills_mid_import >= 2
    # a resumed attempt has little left to do, and may finish before its kill
    row = db.query_one("SELECT status FROM import_batches")
    finished = row is not None and row[0] == "done"
    proc = _run_child(store_url, keyring_path, src, workers)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    if finished:
        assert "done already_imported" in out
    else:
        assert "done resumed" in out or "done imported" in out
    f = v.import_files([src], on_duplicate="reject").files[0]
    assert f.status == "already_imported"
    n_bad = len(labels_lines)
    assert (f.read, f.rejected, f.duplicates, f.imported) == (ROWS, n_bad, 0, ROWS - n_bad)
    # exactly once: as many records as good rows, one reject per bad row
    assert v.store.count() == ROWS - n_bad
    lines = [r[0] for r in db.query("SELECT line FROM import_rejects ORDER BY line")]
    assert len(lines) == len(set(lines)) == n_bad
    rid_rows = db.query("SELECT COUNT(DISTINCT record_id), COUNT(*) FROM blind_index"
                        " WHERE index_name = 'id_number'")
    assert rid_rows[0] == (ROWS - n_bad, ROWS - n_bad)
    db.close()


_CHILD_FILES = """
import sys
from pivault.crypto import Argon2Params, Keyring, PassphraseProvider
from pivault.store.db import Database
from pivault.vault import Vault
url, keyring_path, workers, passphrase, *srcs = sys.argv[1:]
kr = Keyring.open(keyring_path, PassphraseProvider(passphrase, Argon2Params(1, 8, 1)))
v = Vault(Database(url), kr)
def progress(p):
    print("chunk", p.file, p.read, flush=True)
s = v.import_files(srcs, workers=int(workers), chunk_size=150, progress=progress)
print("done", " ".join(f.status for f in s.files), flush=True)
"""


@pytest.mark.parametrize("workers", [0, 2])
def test_kill_minus_nine_in_a_load_of_several_files(store_url: str, tmp_path: Path, workers: int) -> None:
    """A first load of three files, killed at random points and run again: every resident once.

    The run carries its fast duplicate check from file to file; after a kill the rerun finds some
    files done, one half done and the rest new, and the third file repeats residents of the first.
    """
    src = tmp_path / "pop.csv"
    write_population(src, 9000, seed=98)
    with open(src, encoding="utf-8", newline="") as fh:
        header, *rows = list(csv.reader(fh))
    repeats = random.Random(3).sample(rows[:3000], 300)
    parts = [rows[:3000], rows[3000:6000], rows[6000:] + repeats]
    files = []
    for i, part in enumerate(parts):
        files.append(tmp_path / f"part{i + 1}.csv")
        with open(files[-1], "w", encoding="utf-8", newline="") as fh:
            csv.writer(fh).writerows([header, *part])
    keyring_path = tmp_path / "keys" / "files.keyring"
    db = Database(store_url)
    v = Vault.initialise(db, new_keyring(keyring_path))
    rng = random.Random(f"files{store_url}{workers}")

    def child() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", _CHILD_FILES, store_url, str(keyring_path), str(workers), PASSPHRASE,
             *map(str, files)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

    kills_mid_load = 0
    for _ in range(3):
        _kill_midway(child(), rng.randint(2, 25), rng.uniform(0.0, 0.05))  # somewhere in one of the files
        done = db.query_one("SELECT COUNT(*) FROM import_batches WHERE status = 'done'")
        kills_mid_load += done is not None and done[0] < 3
    assert kills_mid_load >= 2
    proc = child()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    statuses = out.splitlines()[-1].split()[1:]
    assert len(statuses) == 3 and set(statuses) <= {"imported", "resumed", "already_imported"}
    summary = v.import_files(files)
    assert [f.status for f in summary.files] == ["already_imported"] * 3
    assert summary.reconciles and (summary.read, summary.duplicates) == (9300, 300)
    assert summary.imported == v.store.count() == 9000
    rid_rows = db.query("SELECT COUNT(DISTINCT record_id), COUNT(*) FROM blind_index"
                        " WHERE index_name = 'id_number'")
    assert rid_rows[0] == (9000, 9000)
    db.close()
