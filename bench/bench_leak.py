"""Benchmark: dump rows matched against the vault per second, against parsing alone.

    python bench/bench_leak.py --residents 50000 --rows 300000

Builds a synthetic vault (``--residents`` records, keyring sized for 10^5), then
writes a CSV dump of ``--rows`` rows (80 % residents of the vault with
re-typed values, 20 % outsiders). Measured in the same run, median of 3:

* baseline: reading and parsing the same dump (``pivault.leak.readers``)
  without matching;
* ``leak check``: parsing, PI column detection, blind indexes of every row,
  matching, export canaries, attribution (case not saved).

The one-off load of the blind-index pairs is timed separately. Besides the
wall-clock rates: rows per CPU-second (of the check's worker processes too),
the load average of the machine during the runs, and the peak RSS of this
process and of the largest worker.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

from pivault.crypto import Argon2Params, Keyring, PassphraseProvider
from pivault.leak.check import Checker
from pivault.leak.match import PairIndex
from pivault.leak.readers import read_dump
from pivault.model import Resident
from pivault.policy.context import AccessContext
from pivault.store.db import Database
from pivault.synth import generate
from pivault.vault import Vault
from pivault.vault.facade import seal


def build(tmp: Path, residents: int) -> tuple[Vault, list[Resident]]:
    kr = Keyring.create(tmp / "keys" / "k.keyring",
                        PassphraseProvider("bench passphrase", Argon2Params(1, 8, 1)),
                        expected_population=10**5)
    (tmp / "data").mkdir()
    vault = Vault.initialise(Database(f"sqlite:///{tmp / 'data' / 'vault.db'}"), kr)
    people: list[Resident] = []
    batch: list[Resident] = []
    for row in generate(residents, 77):
        r = Resident.parse({k: row[k] or None for k in  # type: ignore[literal-required]
                            ("name", "id_number", "mobile", "address", "notes")})
        people.append(r)
        batch.append(r)
        if len(batch) >= 5000:
            vault.store.insert([seal(kr, x) for x in batch])
            batch = []
    if batch:
        vault.store.insert([seal(kr, x) for x in batch])
    return vault, people


def write_dump(path: Path, people: list[Resident], rows: int) -> None:
    outsiders = generate(rows // 5 + 1, 4242)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["姓名", "身份证号", "手机", "住址"])
        n = len(people)
        for i in range(rows):
            if i % 5 == 4:
                o = next(outsiders)
                w.writerow([o["name"], o["id_number"], o["mobile"], o["address"]])
            else:
                r = people[(i * 7919) % n]
                m = r.mobile or ""
                w.writerow([r.name, r.id_number.lower(), f"+86 {m[:3]}-{m[3:7]}-{m[7:]}" if m else "",
                            r.address or ""])


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def parse_only(path: Path) -> int:
    n = 0
    for batch in read_dump(path):
        n += len(batch.rows)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--residents", type=int, default=50_000)
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None,
                    help="matching processes (default: up to 4, by CPU count)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t = time.perf_counter()
        vault, people = build(tmp, args.residents)
        print(f"vault: {args.residents} residents built in {time.perf_counter() - t:.1f} s")
        dump = tmp / "dump.csv"
        write_dump(dump, people, args.rows)
        print(f"dump: {args.rows} rows, {dump.stat().st_size / 2**20:.1f} MiB")
        t = time.perf_counter()
        PairIndex.load(vault.db)
        print(f"blind-index pairs loaded in {time.perf_counter() - t:.2f} s (once per check)")
        ctx = AccessContext(principal="bench", role="operator", purpose="leak investigation")
        checker = Checker(vault, ctx=ctx, workers=args.workers)
        print(f"workers: {checker.workers}")
        base, match, base_cpu, match_cpu, match_par = [], [], [], [], []
        matched = 0
        load = [os.getloadavg()[0]]
        for _ in range(args.runs):
            t, c = time.perf_counter(), time.process_time()
            assert parse_only(dump) == args.rows
            base.append(time.perf_counter() - t)
            base_cpu.append(time.process_time() - c)
            kids = _children_cpu()
            t, c = time.perf_counter(), time.process_time()
            res = checker.check([dump], save=False)
            match.append(time.perf_counter() - t)
            match_par.append(time.process_time() - c)
            # the worker processes' CPU is counted once they have exited, at the end of the check
            match_cpu.append(match_par[-1] + _children_cpu() - kids)
            matched = res.residents_matched
            load.append(os.getloadavg()[0])
        b, m = statistics.median(base), statistics.median(match)
        bc, mc, mp = statistics.median(base_cpu), statistics.median(match_cpu), statistics.median(match_par)
        print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs; "
              f"1-minute load average during the runs {min(load):.1f}-{max(load):.1f}")
        print(f"parse only (baseline): {args.rows / b:,.0f} rows/s ({b:.2f} s)")
        print(f"leak check (matched):  {args.rows / m:,.0f} rows/s ({m:.2f} s)")
        print(f"ratio check/baseline time: {m / b:.2f}x; residents matched: {matched:,}")
        print(f"per CPU-second: parse {args.rows / bc:,.0f} rows/s; check {args.rows / mc:,.0f} rows/s "
              f"(all its processes; this one alone {args.rows / mp:,.0f} rows/s)")
        print(f"peak RSS: this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB, "
              f"largest worker {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MiB")
        vault.close()


if __name__ == "__main__":
    main()
