"""Benchmark: peak memory of an export (request, approve, fetch) against reading the same rows.

    python bench/bench_export.py --count 200000
    python bench/bench_export.py --count 1000000 --workdir DIR

Builds a vault of ``--count`` synthetic residents (``pivault.synth``, sealed and inserted in
chunks, as the leak benchmark does), then runs each step in a fresh process of its own, so that
each step's peak resident set (the kernel's ``VmHWM``) is its own:

1. baseline: the same vault opened the same way, every record read (``iter_all``), decrypted
   and written to a CSV file — what any reader of all the rows costs, streaming;
2. ``request`` of an export of every resident (a selection by the provinces' codes),
   ``approve`` by a second principal, ``fetch`` to a CSV file, through the full door:
   the :class:`~pivault.detect.DetectGuard` with the audit chain, read budgets (set far above
   the export) and the canary check, as the command line has it.

It prints, per step, the wall-clock and CPU seconds, the resident set just after the vault was
opened and the peak, and the peak against the baseline's. The resident set counts SQLite's page
cache (up to 32 MiB a connection), which fills as a step reads more of the store; with
``--trace`` each step also reports the peak of the Python objects it allocated (``tracemalloc``,
which makes it several times slower). Run it with ``PYTHONPATH`` pointing at another checkout's
``src`` to measure that code with the same script.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

CHEAP_PASS = "bench passphrase"
FIELDS = "name,id_number,mobile,address,notes"
#: every province-level division code: a selection of them holds every resident
PROVINCES = ("11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37",
             "41", "42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64",
             "65", "71", "81", "82")
BIG = 10**12


def _status(key: str) -> int:
    """A line of /proc/self/status, in KiB (VmHWM: the peak resident set; VmRSS: now)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def build(work: Path, count: int, store: str | None) -> str:
    from pivault.audit import create_audit_keys
    from pivault.crypto import Argon2Params, Keyring, PassphraseProvider
    from pivault.model import Resident
    from pivault.store.db import Database
    from pivault.synth import generate
    from pivault.vault import Vault
    from pivault.vault.facade import seal

    kr = Keyring.create(work / "keys" / "keyring.json",
                        PassphraseProvider(CHEAP_PASS, Argon2Params(1, 8, 1)),
                        expected_population=max(count, 10**5))
    create_audit_keys(work / "keys" / "audit", kr)
    (work / "data").mkdir()
    url = store or f"sqlite:///{work / 'data' / 'vault.db'}"
    vault = Vault.initialise(Database(url), kr)
    batch: list[Any] = []
    for row in generate(count, 2024):
        batch.append(Resident.parse({k: row[k] or None for k in  # type: ignore[literal-required]
                                     ("name", "id_number", "mobile", "address", "notes")}))
        if len(batch) >= 5000:
            vault.store.insert([seal(kr, r) for r in batch])
            batch = []
    if batch:
        vault.store.insert([seal(kr, r) for r in batch])
    vault.close()
    return url


def _open(work: Path, url: str) -> Any:
    """The vault behind the full door: audit chain, budgets far above the export, canary check."""
    from pivault.audit import AuditLog, load_writer
    from pivault.crypto import Argon2Params, Keyring, PassphraseProvider
    from pivault.detect import Budget, BudgetPolicy, Budgets, CanaryRegistry, DetectGuard, MemoryCounters
    from pivault.store.db import Database
    from pivault.vault import LocalGuard, Vault

    kr = Keyring.open(work / "keys" / "keyring.json", PassphraseProvider(CHEAP_PASS, Argon2Params(1, 8, 1)))
    db = Database(url)
    log = AuditLog(db, kr, load_writer(work / "keys" / "audit", kr))
    big = Budget(records_per_minute=BIG, records_per_hour=BIG, records_per_day=BIG)
    budgets = Budgets(BudgetPolicy(roles={"operator": big}, vault=Budget(records_per_minute=BIG)),
                      MemoryCounters())
    guard = DetectGuard(log, budgets=budgets, canaries=CanaryRegistry(db, kr), inner=LocalGuard())
    return Vault(db, kr, guard=guard)


def step(name: str, work: Path, url: str, trace: bool = False) -> dict[str, Any]:
    """One step, in this (fresh) process: its times and its memory."""
    from pivault.leak import exports as ex
    from pivault.policy.context import AccessContext
    from pivault.vault.facade import open_record

    requester = AccessContext(principal="bench-requester", role="operator", purpose="research")
    approver = AccessContext(principal="bench-dpo", role="dpo", purpose="export approval")
    vault = _open(work, url)
    opened = _status("VmRSS")
    state = work / "export.json"
    if trace:
        tracemalloc.start()
    t, c = time.perf_counter(), time.process_time()
    out: dict[str, Any] = {}
    if name == "baseline":
        n = 0
        fields = FIELDS.split(",")
        with open(work / "baseline.csv", "w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh)
            for stored in vault.store.iter_all(batch_size=2000):
                r = open_record(vault.keyring, stored).to_dict()
                w.writerow([r.get(f) or "" for f in fields])
                n += 1
        out["rows"] = n
    elif name == "request":
        info = ex.request(vault, ex.Selection(regions=PROVINCES), recipient="Institute X", purpose="research",
                          fields=FIELDS.split(","), ctx=requester)
        state.write_text(json.dumps({"export_id": info.export_id}), encoding="utf-8")
        out["selected"] = info.selected
    elif name == "approve":
        export_id = json.loads(state.read_text(encoding="utf-8"))["export_id"]
        out["selected"] = ex.approve(vault, export_id, ctx=approver).selected
    elif name == "fetch":
        export_id = json.loads(state.read_text(encoding="utf-8"))["export_id"]
        target = work / "export.csv"
        info = ex.fetch(vault, export_id, target, ctx=requester)
        out["rows"], out["canaries"] = info.rows, info.canaries
        target.unlink()
    else:
        raise SystemExit(f"unknown step {name}")
    out.update(name=name, wall_s=time.perf_counter() - t, cpu_s=time.process_time() - c,
               opened_kib=opened, peak_kib=_status("VmHWM"))
    if trace:
        out["python_peak_mib"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
    vault.close()
    return out


def _commit() -> str:
    """The commit of the pivault code this run measured (``PYTHONPATH`` may point at another checkout)."""
    import pivault

    done = subprocess.run(["git", "-C", str(Path(pivault.__file__).parent), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    return done.stdout.strip() or "?"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=200_000, help="residents in the vault (all exported)")
    ap.add_argument("--store", default=None, help="store URL (default: a new SQLite file)")
    ap.add_argument("--workdir", default=None, help="directory for the vault (default: a temporary one)")
    ap.add_argument("--trace", action="store_true",
                    help="also measure each step's peak of Python objects (tracemalloc; slower)")
    ap.add_argument("--step", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--url", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.step:  # a child: one step, its figures as one JSON line
        print(json.dumps(step(args.step, Path(args.workdir), args.url, args.trace)), flush=True)
        return

    with tempfile.TemporaryDirectory(prefix="pivault-bench-export-", dir=args.workdir) as d:
        work = Path(d)
        t = time.perf_counter()
        url = build(work, args.count, args.store)
        print(f"# built {args.count:,} residents in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        results = []
        for name in ("baseline", "request", "approve", "fetch"):
            done = subprocess.run([sys.executable, __file__, "--step", name, "--workdir", str(work),
                                   "--url", url, *(["--trace"] if args.trace else [])],
                                  check=True, capture_output=True, text=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"# {name} done", file=sys.stderr)
    base = results[0]["peak_kib"]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    backend = "PostgreSQL" if url.startswith("postgres") else "SQLite"
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores, load average "
          f"{load}; {backend} store; pivault at {_commit()}; "
          f"count={args.count:,}, fields {FIELDS}")
    print(f"{'step':9s} {'wall s':>8s} {'CPU s':>8s} {'RSS opened':>11s} {'peak RSS':>10s} "
          f"{'peak/baseline':>14s}  result")
    for r in results:
        extra = {k: v for k, v in r.items() if k not in ("name", "wall_s", "cpu_s", "opened_kib", "peak_kib")}
        print(f"{r['name']:9s} {r['wall_s']:8.1f} {r['cpu_s']:8.1f} {r['opened_kib'] / 1024:9.1f} Mi "
              f"{r['peak_kib'] / 1024:8.1f} Mi {r['peak_kib'] / base:14.2f}  {extra}")


if __name__ == "__main__":
    main()
