"""Benchmark: what per-record keys (crypto-shredding) cost, against the same vault without them.

    python bench/bench_shred.py --count 20000 --rounds 3

Two stores in one run, the same synthetic CSV imported into each through
``Vault.import_files`` (one process, so the figure is per core):

1. baseline: every field under the keyring's field key (format 1), plain
   record store, as before record keys;
2. record keys: every record under a key of its own, wrapped by the field
   key and kept in the record-key store beside the keyring (format 2).

Rounds alternate between the two (fresh stores each round); the figures are
the best round of each, the ratio is record keys / baseline. Space is bytes
on disk after a WAL checkpoint: the data store of each, and the record-key
store, divided by the rows. Also measured: sealing and opening one record
(the crypto alone, best of several passes) and a rewrap after a field-key
rotation (records per second).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pivault.crypto import Argon2Params, Keyring, PassphraseProvider
from pivault.keys.rewrap import rewrap
from pivault.keys.shred import ShreddingRecordStore
from pivault.model import Resident
from pivault.policy.context import local_operator
from pivault.store import Database
from pivault.store.records import RecordStore
from pivault.synth import generate, write_population
from pivault.vault import Vault
from pivault.vault.facade import open_record, seal

CHEAP = Argon2Params(time_cost=1, memory_cost=8, parallelism=1)


def _size(path: Path) -> int:
    return sum(os.path.getsize(str(path) + s) for s in ("", "-wal") if os.path.exists(str(path) + s))


def _import_once(csv_path: Path, work: Path, record_keys: bool) -> dict[str, Any]:
    work.mkdir(parents=True)
    kr = Keyring.create(work / "keys" / "vault.keyring", PassphraseProvider("bench", CHEAP),
                        expected_population=10**7)
    db_path = work / "data" / "vault.db"
    db_path.parent.mkdir()
    db = Database(f"sqlite:///{db_path}")
    vault = Vault.initialise(db, kr)
    if not record_keys:
        getattr(vault.store, "close", lambda: None)()
        vault.store = RecordStore(db)
        kr.record_keys = False
    t0 = time.perf_counter()
    summary = vault.import_files([csv_path], ctx=local_operator("bench"), workers=0, chunk_size=2000)
    seconds = time.perf_counter() - t0
    rows = summary.imported
    db.query_one("PRAGMA wal_checkpoint(TRUNCATE)")
    out: dict[str, Any] = {"rows": rows, "seconds": seconds, "data_bytes": _size(db_path), "keys_bytes": 0}
    store = vault.store
    if isinstance(store, ShreddingRecordStore):
        store.keys.db.query_one("PRAGMA wal_checkpoint(TRUNCATE)")
        out["keys_bytes"] = _size(Path(store.keys.db.url.target))
    # rewrap after a rotation, on the same store
    kr.rotate("aead")
    t0 = time.perf_counter()
    rep = rewrap(db, kr, record_keys=store.keys if isinstance(store, ShreddingRecordStore) else None,
                 batch_size=1000)
    out["rewrap_seconds"] = time.perf_counter() - t0
    assert rep.complete and rep.conflicts == 0
    vault.close()
    return out


def _crypto(n: int, passes: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        kr = Keyring.create(Path(d) / "k", PassphraseProvider("bench", CHEAP), expected_population=10**7)
        people = [Resident.parse({k: str(v) for k, v in row.items()}) for row in generate(n, seed=3)]
        out: dict[str, float] = {}
        for mode in (False, True, False, True):
            kr.record_keys = mode
            best_seal = best_open = float("inf")
            for _ in range(passes):
                t0 = time.perf_counter()
                sealed = [seal(kr, r) for r in people]
                best_seal = min(best_seal, time.perf_counter() - t0)
                t0 = time.perf_counter()
                for s in sealed:
                    open_record(kr, s)
                best_open = min(best_open, time.perf_counter() - t0)
            key = "v2" if mode else "v1"
            out[f"{key}_seal_us"] = min(out.get(f"{key}_seal_us", 1e18), best_seal / n * 1e6)
            out[f"{key}_open_us"] = min(out.get(f"{key}_open_us", 1e18), best_open / n * 1e6)
        return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--crypto-records", type=int, default=5000)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pivault-bench-shred-") as tmp:
        root = Path(tmp)
        csv_path = root / "residents.csv"
        write_population(csv_path, args.count, seed=7)
        best: dict[bool, dict[str, Any]] = {}
        for i in range(args.rounds):
            for mode in (False, True):
                r = _import_once(csv_path, root / f"r{i}-{int(mode)}", mode)
                if mode not in best or r["seconds"] < best[mode]["seconds"]:
                    best[mode] = r
        crypto = _crypto(args.crypto_records, 3)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores, "
          f"load average {load}; count={args.count:,}, best of {args.rounds} alternating rounds, one process")
    base, rk = best[False], best[True]
    for label, r in (("baseline (field key only)", base), ("record keys (shreddable)", rk)):
        print(f"{label:<27}: {r['rows'] / r['seconds']:>9,.0f} rows/s import  "
              f"data {r['data_bytes'] / r['rows']:>6,.0f} B/row  "
              f"record keys {r['keys_bytes'] / r['rows']:>5,.0f} B/row  "
              f"rewrap {r['rows'] / r['rewrap_seconds']:>9,.0f} rows/s")
    print(f"ratio record keys/baseline: import time {rk['seconds'] / base['seconds']:.2f}, "
          f"bytes per row {(rk['data_bytes'] + rk['keys_bytes']) / (base['data_bytes']):.2f} "
          f"(data alone {rk['data_bytes'] / base['data_bytes']:.2f}), "
          f"rewrap time {rk['rewrap_seconds'] / base['rewrap_seconds']:.2f}")
    print(f"crypto per record: seal {crypto['v1_seal_us']:.1f} -> {crypto['v2_seal_us']:.1f} us "
          f"({crypto['v2_seal_us'] / crypto['v1_seal_us']:.2f}x), open {crypto['v1_open_us']:.1f} -> "
          f"{crypto['v2_open_us']:.1f} us ({crypto['v2_open_us'] / crypto['v1_open_us']:.2f}x)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
