"""Benchmark: import and lookup of N residents through the Vault, against plaintext in the same run.

    python bench/bench_vault.py --count 1000000 --backend sqlite --workers 2
    python bench/bench_vault.py --count 1000000 --backend postgresql --workers 2

Phases, each in a fresh interpreter (so each has its own peak RSS, the
kernel's ``VmHWM``; the import's forked workers are sampled the same way):

0. synth (not timed): ``pivault.synth.write_population`` writes N residents
   to CSV; queries are drawn from it: existing ID numbers and mobiles, and
   misses (residents N+1… of the same synthetic population, so valid
   numbers that are not in the file).
1. plaintext baseline: the same file through the same reader, chunking (10,000
   rows, ``DEFAULT_CHUNK``), forked workers and ``Resident.parse`` as the import; the parent
   checks ID numbers already present with one query per chunk (as the
   import does, in plaintext) and inserts the new rows, one transaction per
   chunk, through the same ``Database`` layer and page cache (``executemany`` on SQLite,
   binary ``COPY`` on PostgreSQL, as ``RecordStore.insert`` does), into one
   table with the same columns in plaintext (plus the birth date, which the
   vault derives from the ID number) and plain B-tree indexes on
   ``id_number``, ``mobile`` and ``(name, birth_date)``. The two paths
   differ only in what the import adds: encryption under per-record keys,
   three blind indexes, the record-key store, the duplicate check by
   decryption, the batch's progress row and the audit entry per chunk.
2. ``Vault.import_files`` (what ``pivault import`` runs) into a new vault
   whose keyring is sized for N residents (so ~4–8 residents share a blind
   index value, as in production).

With ``--files K`` the population comes as K files of consecutive rows (one
per region or month, as registers often export it), imported in one run by
both sides: the plaintext baseline reads them one after the other, the vault
imports them as K batches of one ``import_files`` call.
3. lookups in one process, in alternating blocks so that the machine's load
   hits both alike: ``Vault.find(id_number=…)`` and ``find(mobile=…)``
   through the full door of ``Vault.open`` — audit trail (journal, chained
   by its background thread), read budgets (a vault-wide budget is set so
   that every read is charged to a counter; the local operator's own role
   has no budget in the shipped policy), canary check, detector, masks —
   as the local operator; and the same lookups on the plaintext table
   (``SELECT`` by the indexed column, rows as dicts). Hits and misses
   (``--miss-rate``); the number of rows found is checked against the
   baseline for every query.

CPU is counted for every process of a phase (parent, workers, and on
PostgreSQL the server backends of its connections, from ``/proc``), because
on a shared machine wall-clock rates move with other people's load:
rows per CPU-second is the steadier figure.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PG_BASE = os.environ.get("PIVAULT_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
PASSPHRASE = "bench-vault-passphrase"
PLAIN_TABLE = "plain_residents"
_PLAIN_COLS = ("record_id, name, id_number, mobile, address, notes, birth_date, created_at, updated_at,"
               " batch_id")
_PLAIN_TYPES = ["text", "text", "text", "text", "text", "text", "text", "float8", "float8", "text"]
_CLK = os.sysconf("SC_CLK_TCK")


# -- measuring ------------------------------------------------------------------------------

def _status_kib(pid: int | str, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


def _proc_cpu(pid: int) -> float:
    """utime + stime of a process in seconds (0 if it is gone or not visible)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK
    except (OSError, IndexError, ValueError):
        return 0.0


class PeakSampler:
    """The high-water mark (VmHWM) of this process and of every descendant, sampled."""

    def __init__(self, every: float = 0.2) -> None:
        self.every = every
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        stack = _children(os.getpid())
        while stack:
            pid = stack.pop()
            hwm = _status_kib(pid, "VmHWM:")
            if hwm:
                self.peaks[pid] = max(self.peaks.get(pid, 0), hwm)
            stack.extend(_children(pid))

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def self_mib(self) -> float:
        return _status_kib("self", "VmHWM:") / 1024

    @property
    def children_mib(self) -> float:
        return max(self.peaks.values(), default=0) / 1024


def _cpu_self_and_children() -> tuple[float, float]:
    t = os.times()
    return t.user + t.system, t.children_user + t.children_system


def _pg_pids(dbs: Sequence[Any]) -> list[int]:
    pids = []
    for db in dbs:
        if db is not None and db.dialect == "postgresql":
            row = db.query_one("SELECT pg_backend_pid()")
            if row:
                pids.append(int(row[0]))
    return pids


# -- plaintext baseline ---------------------------------------------------------------------

def _plain_ddl(dialect: str) -> list[str]:
    text = "TEXT" if dialect == "sqlite" else 'TEXT COLLATE "C"'
    return [
        f"CREATE TABLE {PLAIN_TABLE} (record_id {text} NOT NULL PRIMARY KEY, name TEXT NOT NULL,"
        f" id_number {text} NOT NULL, mobile {text}, address TEXT, notes TEXT, birth_date {text} NOT NULL,"
        " created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL, batch_id TEXT)",
        f"CREATE INDEX {PLAIN_TABLE}_id_number ON {PLAIN_TABLE} (id_number)",
        f"CREATE INDEX {PLAIN_TABLE}_mobile ON {PLAIN_TABLE} (mobile)",
        f"CREATE INDEX {PLAIN_TABLE}_name_birth ON {PLAIN_TABLE} (name, birth_date)",
    ]


_PLAIN_POSITIONS: dict[int, str] = {}


def _plain_parse(rows: list[tuple[int, list[str | None], str | None, str | None]]
                 ) -> list[tuple[Any, ...] | None]:
    """Worker: the same validation and normalisation as the import; plaintext out."""
    from pivault.errors import ValidationError
    from pivault.model import Resident

    out: list[tuple[Any, ...] | None] = []
    items = tuple(_PLAIN_POSITIONS.items())
    for _line, cells, error, _text in rows:
        if error is not None:
            out.append(None)
            continue
        n = len(cells)
        raw = {f: (cells[i] if i < n else None) for i, f in items}
        try:
            r = Resident.parse(raw)
        except ValidationError:
            out.append(None)
            continue
        out.append((r.record_id, r.name, r.id_number, r.mobile, r.address, r.notes,
                    r.birth_date.isoformat()))
    return out


def _plain_existing(db: Any, ids: list[str]) -> set[str]:
    out: set[str] = set()
    if db.dialect == "postgresql":
        for i in range(0, len(ids), 5000):
            out.update(r[0] for r in db.query(
                f"SELECT id_number FROM {PLAIN_TABLE} WHERE id_number = ANY(?)", (ids[i:i + 5000],)))
    else:
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            out.update(r[0] for r in db.query(
                f"SELECT id_number FROM {PLAIN_TABLE} WHERE id_number IN ({','.join('?' * len(chunk))})",
                chunk))
    return out


def _plain_insert(db: Any, rows: list[tuple[Any, ...]]) -> None:
    if db.dialect == "postgresql" and len(rows) >= 500:
        with db.raw.cursor() as cur, cur.copy(
                f"COPY {PLAIN_TABLE} ({_PLAIN_COLS}) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(_PLAIN_TYPES)
            for row in rows:
                cp.write_row(row)
    else:
        db.executemany(f"INSERT INTO {PLAIN_TABLE} ({_PLAIN_COLS}) VALUES ({', '.join('?' * 10)})", rows)


def phase_plain_import(a: dict[str, Any]) -> dict[str, Any]:
    import multiprocessing
    from collections import deque

    from pivault.store import Database
    from pivault.vault import mapping as _mapping
    from pivault.vault.imports import DEFAULT_CHUNK, IMPORT_CACHE_KIB, _chunks
    from pivault.vault.readers import open_source

    global _PLAIN_POSITIONS
    db = Database(a["plain_url"])
    if db.dialect == "sqlite":  # the page cache the import gives its own connection
        db.execute(f"PRAGMA cache_size=-{IMPORT_CACHE_KIB}")
    with db.transaction():
        for stmt in _plain_ddl(db.dialect):
            db.execute(stmt)
    sources = [open_source(path) for path in a["csvs"]]
    cmap = _mapping.resolve(sources[0].header, None, ())
    _PLAIN_POSITIONS = dict(cmap.positions)
    pids = _pg_pids([db])
    srv0 = sum(_proc_cpu(p) for p in pids)
    (own0, kids0), t0 = _cpu_self_and_children(), time.perf_counter()
    read = inserted = dup = bad = 0
    batch_id = "b_" + uuid.uuid4().hex

    def commit(prepared: list[tuple[Any, ...] | None]) -> None:
        nonlocal inserted, dup, bad
        now = time.time()
        good = [p for p in prepared if p is not None]
        bad += len(prepared) - len(good)
        with db.transaction():
            existing = _plain_existing(db, [p[2] for p in good])
            rows = []
            for p in good:
                if p[2] in existing:
                    dup += 1
                    continue
                existing.add(p[2])
                rows.append((*p, now, now, batch_id))
            _plain_insert(db, rows)
        inserted += len(rows)

    with PeakSampler() as peaks:
        # the files one after the other, each in chunks of its own, as the vault's import reads them
        chunks = (chunk for source in sources
                  for chunk in _chunks(source.rows(columns=sorted(_PLAIN_POSITIONS)), DEFAULT_CHUNK))
        workers = a["workers"]
        if workers == 0:
            for rows in chunks:
                read += len(rows)
                commit(_plain_parse(rows))
        else:
            mp = multiprocessing.get_context("fork")
            with mp.Pool(workers) as pool:
                pending: deque[Any] = deque()
                for rows in chunks:
                    read += len(rows)
                    pending.append(pool.apply_async(_plain_parse, (rows,)))
                    while len(pending) > 2 * workers:
                        commit(pending.popleft().get())
                while pending:
                    commit(pending.popleft().get())
                pool.close()
                pool.join()
    wall = time.perf_counter() - t0
    own, kids = _cpu_self_and_children()
    server = sum(_proc_cpu(p) for p in pids) - srv0
    sizes = _plain_sizes(db)
    db.close()
    return {"read": read, "imported": inserted, "duplicates": dup, "rejected": bad, "seconds": wall,
            "cpu_client": own - own0 + kids - kids0, "cpu_parent": own - own0, "cpu_workers": kids - kids0,
            "cpu_server": server, "rss_parent_mib": peaks.self_mib,
            "rss_workers_mib": peaks.children_mib, "sizes": sizes}


def _plain_sizes(db: Any) -> dict[str, Any]:
    if db.dialect == "postgresql":
        db.execute(f"VACUUM ANALYZE {PLAIN_TABLE}")
        row = db.query_one(f"SELECT pg_relation_size('{PLAIN_TABLE}'), pg_indexes_size('{PLAIN_TABLE}'),"
                           f" pg_total_relation_size('{PLAIN_TABLE}')")
        assert row is not None
        return {"table": int(row[0]), "indexes": int(row[1]), "total": int(row[2]),
                "relations": _pg_relations(db)}
    db.query_one("PRAGMA wal_checkpoint(TRUNCATE)")
    sizes = dict(db.query("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"))
    table = int(sizes.get(PLAIN_TABLE, 0))
    idx = sum(int(v) for k, v in sizes.items() if k.startswith((f"{PLAIN_TABLE}_", "sqlite_autoindex")))
    return {"table": table, "indexes": idx, "total": table + idx, "relations": sizes}


# -- the vault --------------------------------------------------------------------------------

def phase_vault_import(a: dict[str, Any]) -> dict[str, Any]:
    from pivault.vault import Vault, init

    home = Path(a["home"])
    init(home, passphrase=PASSPHRASE, store_url=a["vault_url"], keyring_path=a["keyring"],
         expected_population=a["expected_population"], record_key_store=a.get("keys_url"))
    # a vault-wide read budget far above what the benchmark reads: every lookup is charged
    from bench_api import lift_vault_limit

    lift_vault_limit(home / "pivault.toml")
    vault = Vault.open(home, passphrase=PASSPHRASE)
    pids = _pg_pids([vault.db, getattr(vault.store, "keys", None) and vault.store.keys.db])  # type: ignore[attr-defined]
    srv0 = sum(_proc_cpu(p) for p in pids)
    (own0, kids0), t0 = _cpu_self_and_children(), time.perf_counter()
    with PeakSampler() as peaks:
        summary = vault.import_files(a["csvs"], workers=a["workers"])
        vault.guard.audit_log.flush(60)  # type: ignore[attr-defined]
    wall = time.perf_counter() - t0
    own, kids = _cpu_self_and_children()
    server = sum(_proc_cpu(p) for p in pids) - srv0
    sizes = _vault_sizes(vault)
    vault.close()
    return {"read": summary.read, "imported": summary.imported, "duplicates": summary.duplicates,
            "rejected": summary.rejected, "reconciles": summary.reconciles,
            "workers": summary.files[0].workers, "seconds": wall,
            "cpu_client": own - own0 + kids - kids0, "cpu_parent": own - own0, "cpu_workers": kids - kids0,
            "cpu_server": server, "rss_parent_mib": peaks.self_mib, "rss_workers_mib": peaks.children_mib,
            "sizes": sizes}


def _pg_relations(db: Any) -> dict[str, int]:
    """Bytes of every table and index in the connection's schema."""
    return {str(n): int(b) for n, b in db.query(
        "SELECT c.relname, pg_relation_size(c.oid) FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'i')")}


def _vault_sizes(vault: Any) -> dict[str, Any]:
    db = vault.db
    keys_db = vault.store.keys.db
    out: dict[str, Any] = {}
    if db.dialect == "postgresql":
        db.execute("VACUUM ANALYZE records")
        db.execute("VACUUM ANALYZE blind_index")
        for t in ("records", "blind_index"):
            row = db.query_one(f"SELECT pg_relation_size('{t}'), pg_indexes_size('{t}'),"
                               f" pg_total_relation_size('{t}')")
            assert row is not None
            out[t] = {"table": int(row[0]), "indexes": int(row[1]), "total": int(row[2])}
        out["relations"] = _pg_relations(db)
    else:
        db.query_one("PRAGMA wal_checkpoint(TRUNCATE)")
        sizes = {str(k): int(v) for k, v in db.query("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")}
        out["relations"] = sizes
        rec_idx = sum(v for k, v in sizes.items() if k.startswith("sqlite_autoindex_records"))
        out["records"] = {"table": sizes.get("records", 0), "indexes": rec_idx,
                          "total": sizes.get("records", 0) + rec_idx}
        # blind_index is WITHOUT ROWID: its primary key B-tree is the table
        out["blind_index"] = {"table": sizes.get("blind_index", 0),
                              "indexes": sizes.get("blind_index_record", 0),
                              "total": sizes.get("blind_index", 0) + sizes.get("blind_index_record", 0)}
        out["file_bytes"] = sum(sizes.values())
    if keys_db.dialect == "postgresql":
        keys_db.execute("VACUUM ANALYZE record_keys")
        row = keys_db.query_one("SELECT pg_relation_size('record_keys'), pg_indexes_size('record_keys'),"
                                " pg_total_relation_size('record_keys')")
        assert row is not None
        out["record_keys"] = {"table": int(row[0]), "indexes": int(row[1]), "total": int(row[2])}
        out["key_relations"] = _pg_relations(keys_db)
    else:
        keys_db.query_one("PRAGMA wal_checkpoint(TRUNCATE)")
        sizes = {str(k): int(v)
                 for k, v in keys_db.query("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")}
        out["record_keys"] = {"table": sizes.get("record_keys", 0), "indexes": 0,
                              "total": sizes.get("record_keys", 0)}
    stats = vault.store.stats()
    out["rows"] = stats["rows"]
    out["index_entries"] = stats["index_entries"]
    out["store_stats_bytes_on_disk"] = stats["bytes_on_disk"]
    return out


# -- lookups ------------------------------------------------------------------------------------

def _pct(values: list[int], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] / 1000.0  # ns -> µs


def phase_lookups(a: dict[str, Any]) -> dict[str, Any]:
    from pivault.policy.context import local_operator
    from pivault.store import Database
    from pivault.vault import Vault

    queries = json.loads(Path(a["queries"]).read_text(encoding="utf-8"))
    with PeakSampler() as peaks:
        vault = Vault.open(a["home"], passphrase=PASSPHRASE)
        plain = Database(a["plain_url"])
        ctx = local_operator("bench")
        cols = ("record_id", "name", "id_number", "mobile", "address", "notes", "birth_date")
        sel = {k: f"SELECT {', '.join(cols)} FROM {PLAIN_TABLE} WHERE {k} = ?"
               for k in ("id_number", "mobile")}

        def plain_find(kind: str) -> Callable[[str], list[dict[str, Any]]]:
            sql = sel[kind]
            return lambda q: [dict(zip(cols, r, strict=True)) for r in plain.query(sql, (q,))]

        def vault_find(kind: str) -> Callable[[str], list[dict[str, Any]]]:
            if kind == "id_number":
                return lambda q: vault.find(id_number=q, ctx=ctx)
            return lambda q: vault.find(mobile=q, ctx=ctx)

        doors = {(side, kind): (plain_find(kind) if side == "plain" else vault_find(kind))
                 for side in ("plain", "vault") for kind in ("id_number", "mobile")}
        lat: dict[tuple[str, str], list[int]] = {k: [] for k in doors}
        cpu: dict[tuple[str, str], float] = dict.fromkeys(doors, 0.0)
        found: dict[tuple[str, str], list[int]] = {k: [] for k in doors}
        rounds = a["rounds"]
        for kind in ("id_number", "mobile"):  # warm caches and code paths
            for side in ("plain", "vault"):
                for q in queries[kind][:200]:
                    doors[(side, kind)](q)
        for r in range(rounds):
            for kind in ("id_number", "mobile"):
                qs = queries[kind][r::rounds]
                order = ("plain", "vault") if r % 2 == 0 else ("vault", "plain")
                for side in order:
                    fn = doors[(side, kind)]
                    times = lat[(side, kind)]
                    got = found[(side, kind)]
                    c0 = time.process_time()
                    for q in qs:
                        t = time.perf_counter_ns()
                        res = fn(q)
                        times.append(time.perf_counter_ns() - t)
                        got.append(len(res))
                    cpu[(side, kind)] += time.process_time() - c0
        c0 = time.process_time()
        flushed = vault.guard.audit_log.flush(60)  # type: ignore[attr-defined]
        flush_cpu = time.process_time() - c0
        counted = int(vault.guard.budgets is not None)  # type: ignore[attr-defined]
        vault.close()
        plain.close()
    out: dict[str, Any] = {"rss_mib": peaks.self_mib, "audit_flushed": flushed, "budgets_on": bool(counted),
                           "flush_cpu": flush_cpu}
    for kind in ("id_number", "mobile"):
        p, v = found[("plain", kind)], found[("vault", kind)]
        mismatch = sum(1 for x, y in zip(p, v, strict=True) if x != y)
        misses = sum(1 for x in p if x == 0)
        for side in ("plain", "vault"):
            xs = lat[(side, kind)]
            out[f"{side}.{kind}"] = {"n": len(xs), "p50_us": _pct(xs, 0.50), "p99_us": _pct(xs, 0.99),
                                     "mean_us": statistics.fmean(xs) / 1000,
                                     "cpu_us": cpu[(side, kind)] / len(xs) * 1e6}
        out[f"{kind}.mismatches"] = mismatch
        out[f"{kind}.misses"] = misses
    return out


# -- synthetic input and queries ------------------------------------------------------------------

def phase_synth(a: dict[str, Any]) -> dict[str, Any]:
    from pivault.model import mobile as _mobile
    from pivault.model import resident_id as _rid
    from pivault.synth import write_population
    from pivault.synth.population import identity

    t0 = time.perf_counter()
    done = Path(a["csv"] + ".done")
    stamp = f"{a['count']} {a['seed']}"
    if not (done.exists() and done.read_text() == stamp):  # a kept --workdir reuses its file
        write_population(a["csv"], a["count"], a["seed"])
        done.write_text(stamp)
    if len(a["csvs"]) > 1:
        _split(a["csv"], a["csvs"], a["count"])
    synth_s = time.perf_counter() - t0
    rnd = random.Random(a["seed"] + 1)
    n_hit = a["lookups"] - int(a["lookups"] * a["miss_rate"])
    pick = set(rnd.sample(range(a["count"]), min(a["count"], 3 * n_hit)))
    ids: list[str] = []
    mobiles: list[str] = []
    with open(a["csv"], encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        ci, cm = header.index("id_number"), header.index("mobile")
        for i, row in enumerate(reader):
            if i in pick:
                ids.append(row[ci])
                if row[cm]:
                    mobiles.append(row[cm])
    rnd.shuffle(ids)
    rnd.shuffle(mobiles)
    ids, mobiles = ids[:n_hit], mobiles[:n_hit]
    n_miss = a["lookups"] - n_hit
    for j in range(n_miss):  # residents beyond the file: valid numbers, (almost surely) absent
        idn, mob = identity(a["count"] + 1 + j, a["seed"])
        ids.append(idn)
        mobiles.append(mob)
    rnd.shuffle(ids)
    rnd.shuffle(mobiles)
    queries = {"id_number": [_rid.normalise(x) for x in ids],
               "mobile": [_mobile.normalise(x) for x in mobiles]}
    Path(a["queries"]).write_text(json.dumps(queries), encoding="utf-8")
    return {"seconds": synth_s, "bytes": os.path.getsize(a["csv"])}


def _split(path: str, parts: Sequence[str], count: int) -> None:
    """The population file as len(parts) files of consecutive rows, each with the header (streamed)."""
    per = -(-count // len(parts))
    with open(path, encoding="utf-8", newline="") as src:
        header = src.readline()
        for part in parts:
            with open(part, "w", encoding="utf-8", newline="") as out:
                out.write(header)
                for _ in range(per):
                    line = src.readline()
                    if not line:
                        break
                    out.write(line)


PHASES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "synth": phase_synth, "plain_import": phase_plain_import, "vault_import": phase_vault_import,
    "lookups": phase_lookups,
}


def _run_phase(name: str, args: dict[str, Any], log: Path) -> dict[str, Any]:
    """Run one phase in a fresh interpreter; its result is the last line of its output."""
    cmd = [sys.executable, os.path.abspath(__file__), "--phase", name, "--phase-args", json.dumps(args)]
    load = os.getloadavg()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"## {name}\n{proc.stderr}")
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"phase {name} failed (exit {proc.returncode})")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["load_before"] = load
    out["load_after"] = os.getloadavg()
    return out


# -- orchestration ------------------------------------------------------------------------------------

def _pg_schemas(tag: str) -> dict[str, str]:
    return {k: f"pvb_{tag}_{k}" for k in ("plain", "vault", "keys")}


def _pg_url(schema: str) -> str:
    sep = "&" if "?" in PG_BASE else "?"
    return f"{PG_BASE}{sep}options=-csearch_path%3D{schema}"


def _pg_admin(statements: Sequence[str]) -> None:
    import psycopg

    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        for s in statements:
            conn.execute(s)


def _machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"python {platform.python_version()} on {platform.machine()}, nproc {os.cpu_count()}, "
            f"{model}")


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def report(args: argparse.Namespace, r: dict[str, Any]) -> None:
    plain, vault, look = r["plain_import"], r["vault_import"], r["lookups"]
    loads = [r[k]["load_before"][0] for k in ("plain_import", "vault_import", "lookups")]
    loads += [r[k]["load_after"][0] for k in ("plain_import", "vault_import", "lookups")]
    print(f"{_machine()}; load average (1 min) during the run {min(loads):.1f}-{max(loads):.1f}")
    print(f"backend {args.backend}, count={args.count:,}, workers={args.workers}, "
          f"keyring sized for {max(args.expected_population or args.count, 1000):,}; "
          f"lookups: {args.lookups:,} per kind and side "
          f"({args.miss_rate:.0%} misses) in {args.rounds} alternating rounds")
    print(f"synthetic CSV: {r['synth']['bytes'] / 2**20:,.0f} MiB "
          f"(written in {r['synth']['seconds']:.0f} s, not timed)"
          + (f", imported as {args.files} files in one run" if args.files > 1 else ""))
    print()
    print("import                 rows    wall s    rows/s  CPU s: parent+workers+server  rows/CPU-s  "
          "peak RSS parent / worker")

    def line(name: str, p: dict[str, Any]) -> tuple[float, float]:
        cpu = p["cpu_client"] + p["cpu_server"]
        rate, rate_cpu = p["read"] / p["seconds"], p["read"] / cpu
        split = f"{p['cpu_parent']:.0f}+{p['cpu_workers']:.0f}+{p['cpu_server']:.0f}"
        print(f"{name:20s} {p['imported']:>10,} {p['seconds']:>8.1f} {rate:>9,.0f}  "
              f"{cpu:>7.1f} = {split:<18s} {rate_cpu:>11,.0f}  "
              f"{p['rss_parent_mib']:>6.0f} / {p['rss_workers_mib']:.0f} MiB")
        return rate, rate_cpu

    pr, pc = line("plaintext baseline", plain)
    vr, vc = line("pivault import", vault)
    print(f"ratio vault/plaintext: wall rate {vr / pr:.2f}, rate per CPU-second {vc / pc:.2f}   "
          f"(target >= 0.50)")
    print(f"vault: read {vault['read']:,} = imported {vault['imported']:,} + rejected {vault['rejected']:,} "
          f"+ duplicates {vault['duplicates']:,} (reconciles: {vault['reconciles']}); "
          f"plaintext duplicates {plain['duplicates']:,}")
    print()
    s, ps = vault["sizes"], plain["sizes"]
    rows = max(1, vault["imported"])
    vault_total = s["records"]["total"] + s["blind_index"]["total"] + s["record_keys"]["total"]
    print("bytes per resident       table    indexes     total")
    for name, d in (("records", s["records"]), ("blind_index", s["blind_index"]),
                    ("record_keys", s["record_keys"])):
        print(f"  {name:18s} {d['table'] / rows:>8.0f} {d['indexes'] / rows:>10.0f} "
              f"{d['total'] / rows:>9.0f}")
    print(f"  {'vault, all':18s} {'':>8s} {'':>10s} {vault_total / rows:>9.0f}   ({_mb(vault_total)})")
    prow = max(1, plain["imported"])
    print(f"  {'plaintext':18s} {ps['table'] / prow:>8.0f} {ps['indexes'] / prow:>10.0f} "
          f"{ps['total'] / prow:>9.0f}"
          f"   ({_mb(ps['total'])}); ratio {vault_total / rows / (ps['total'] / prow):.2f}")
    print(f"  index entries: {s['index_entries']}")
    print()
    print("lookups (in-process, µs)     plaintext p50    p99   |  vault p50     p99    mean  CPU/lookup "
          "| ratio p50  rows-found mismatches")
    ok = True
    for kind in ("id_number", "mobile"):
        p, v = look[f"plain.{kind}"], look[f"vault.{kind}"]
        ok = ok and v["p50_us"] <= 50 and v["p99_us"] <= 1000
        print(f"  by {kind:10s} n={v['n']:>6,}   {p['p50_us']:>9.1f} {p['p99_us']:>7.1f}  | "
              f"{v['p50_us']:>9.1f} {v['p99_us']:>7.1f} {v['mean_us']:>7.1f} {v['cpu_us']:>8.1f}   | "
              f"{v['p50_us'] / p['p50_us']:>7.1f}x   {look[f'{kind}.mismatches']} "
              f"({look[f'{kind}.misses']:,} misses)")
    print(f"  door: Vault.open's full guard (audit journal, budgets charged: {look['budgets_on']}, canaries, "
          f"detector, masks), local operator; audit entries flushed: {look['audit_flushed']}")
    print(f"  target p50 <= 50 µs and p99 <= 1 ms: {'met' if ok else 'NOT met'}")
    print()
    print(f"peak RSS (VmHWM): plaintext import {plain['rss_parent_mib']:.0f} MiB "
          f"(workers {plain['rss_workers_mib']:.0f}), "
          f"vault import {vault['rss_parent_mib']:.0f} MiB (workers {vault['rss_workers_mib']:.0f}), "
          f"lookups {look['rss_mib']:.0f} MiB   (target <= 512 MiB)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100_000, help="residents")
    ap.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--workers", type=int, default=2, help="import worker processes (0 = one process)")
    ap.add_argument("--lookups", type=int, default=5000, help="queries per kind (ID number, mobile)")
    ap.add_argument("--miss-rate", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=2022)
    ap.add_argument("--files", type=int, default=1,
                    help="import the population as this many files of consecutive rows, in one run")
    ap.add_argument("--expected-population", type=int, default=None,
                    help="size the keyring's blind indexes for this many residents (default: --count)")
    ap.add_argument("--workdir", default=None, help="keep files here (default: a temporary directory)")
    ap.add_argument("--json", default=None, help="also write the raw results to this file")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--phase-args", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.phase:
        result = PHASES[args.phase](json.loads(args.phase_args))
        print(json.dumps(result))
        return

    tmp = None
    if args.workdir:
        work = Path(args.workdir).absolute()
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="pivault-bench-vault-")
        work = Path(tmp.name)
    tag = uuid.uuid4().hex[:10]
    schemas = _pg_schemas(tag)
    if args.backend == "postgresql":
        _pg_admin([f"CREATE SCHEMA {s}" for s in schemas.values()])
        plain_url, vault_url, keys_url = (_pg_url(schemas[k]) for k in ("plain", "vault", "keys"))
    else:
        (work / "plain").mkdir(exist_ok=True)
        (work / "home").mkdir(exist_ok=True)
        plain_url = f"sqlite:///{work / 'plain' / 'plain.db'}"
        vault_url, keys_url = None, None
    common = {"count": args.count, "workers": args.workers, "seed": args.seed,
              "csv": str(work / "people.csv"),
              "csvs": ([str(work / "people.csv")] if args.files == 1 else
                       [str(work / f"people.{i + 1}.csv") for i in range(args.files)]),
              "queries": str(work / "queries.json"), "plain_url": plain_url, "vault_url": vault_url,
              "keys_url": keys_url, "home": str(work / "home" / "vault"),
              "keyring": str(work / "keys" / "vault.keyring"), "lookups": args.lookups,
              "miss_rate": args.miss_rate, "rounds": args.rounds,
              "expected_population": max(args.expected_population or args.count, 1000)}
    log = work / "bench.log"
    results: dict[str, Any] = {}
    try:
        for name in ("synth", "plain_import", "vault_import", "lookups"):
            print(f"# {name} …", file=sys.stderr, flush=True)
            results[name] = _run_phase(name, common, log)
            print(f"#   {json.dumps(results[name])[:300]}", file=sys.stderr, flush=True)
    finally:
        if args.backend == "postgresql" and not args.workdir:
            _pg_admin([f"DROP SCHEMA IF EXISTS {s} CASCADE" for s in schemas.values()])
        if tmp is not None:
            tmp.cleanup()
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1),
                                   encoding="utf-8")
    report(args, results)


if __name__ == "__main__":
    main()
