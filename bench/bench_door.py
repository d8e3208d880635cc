"""Benchmark: lookups per second through the full door against the door's inner path.

    python bench/bench_door.py --count 20000 --lookups 3000 --rounds 5

One vault, one run, two doors over the same store and keyring:

1. inner path (the baseline): ``Vault.find`` by ID number with only the local
   guard (authorise, masks) — blind index, candidate rows, decrypt, compare,
   decrypt the record, mask. No audit, no budgets.
2. full door: the same call through the :class:`~pivault.detect.DetectGuard`
   that ``Vault.open`` installs: read budgets charged (per principal, role
   and vault; in-process counters, a counters file with ``--file-counters``
   (what several ``serve`` workers share on one node), or Redis with
   ``--redis``), the audit
   entry appended and chained (one transaction per lookup, on the same
   store), the canary check, the global detector fed with coarse cells.

With ``--chainer node`` a third door is measured: the full door as
``pivault serve`` runs it with several workers, its journal chained by the
node's audit chainer in a process of its own (:mod:`pivault.audit.chainer`)
instead of a thread beside the lookups; that process's CPU time is counted
with the benchmark's.

Rounds alternate between the doors so that load from other processes hits
them alike; the figure is the median round. The budgets are set far above
what the benchmark reads (so every lookup is charged, none refused). A
third line shows the bare inner path without even the local guard, for
reference.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pivault.audit import AuditLog, create_audit_keys, load_writer
from pivault.crypto import Argon2Params, Keyring, PassphraseProvider
from pivault.detect import (
    AlertDispatcher,
    Budget,
    BudgetPolicy,
    Budgets,
    CanaryRegistry,
    Counters,
    DetectGuard,
    FileCounters,
    GlobalDetector,
    MemoryCounters,
    RedisCounters,
    TableSink,
    seed,
)
from pivault.policy.context import AccessContext
from pivault.store import Database
from pivault.synth import generate
from pivault.vault import LocalGuard, Vault

CHEAP = Argon2Params(time_cost=1, memory_cost=8, parallelism=1)
OPERATOR = AccessContext(principal="local:bench", role="operator", purpose="administration")
READER = AccessContext(principal="bench-officer", role="operator", purpose="case_investigation",
                       token_id="be0c0000be0c0000", source="api")
BIG = 10**9


class BareGuard:
    """No checks at all: only for the reference line (never part of the product)."""

    def authorise(self, ctx: AccessContext, operation: str, fields: Sequence[str]) -> None:
        return None

    def budget(self, ctx: AccessContext, operation: str, n: int) -> None:
        return None

    def audit(self, ctx: AccessContext, operation: str, record_ids: Sequence[str], outcome: str) -> None:
        return None

    def mask(self, ctx: AccessContext, field: str, value: str | None) -> str | None:
        return value


def _chainer(url: str, keys: str, journal: str) -> None:
    """The node's audit chainer, as ``pivault serve`` runs it beside its workers."""
    from pivault.audit.chainer import NodeChainer

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    keyring = Keyring.open(Path(keys) / "keyring.json", PassphraseProvider("bench-pass", CHEAP))
    with Database(url) as db:
        log = AuditLog(db, keyring, load_writer(Path(keys) / "audit", keyring),
                       anchor=Path(keys).parent / "audit-anchor.jsonl")
        NodeChainer(log, journal).run(stop)


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        parts = fh.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def node_door(tmp: Path, db: Database, keyring: Keyring, counters: Counters, canaries: CanaryRegistry
              ) -> tuple[Vault, Any]:
    """The full door with its journal left to a node chainer process (started here)."""
    url = db.url.raw
    journal = tmp / "data" / "node-journal"
    proc = multiprocessing.get_context("spawn").Process(
        target=_chainer, args=(url, str(tmp / "keys"), str(journal)), daemon=True)
    proc.start()
    log = AuditLog(db, keyring, load_writer(tmp / "keys" / "audit", keyring), journal_dir=journal,
                   journal_chain="node", anchor=tmp / "audit-anchor.jsonl")
    alerts = AlertDispatcher([TableSink(db)], claim=counters.claim)
    big = Budget(records_per_minute=BIG, records_per_hour=BIG, records_per_day=BIG, misses_per_hour=BIG,
                 distinct_per_day=BIG)
    budgets = Budgets(BudgetPolicy(roles={"operator": big}, vault=Budget(records_per_minute=BIG)), counters)
    detector = GlobalDetector(counters, alerts)
    detector.start()
    guard = DetectGuard(log, budgets=budgets, alerts=alerts, canaries=canaries, detector=detector,
                        inner=LocalGuard())
    vault = Vault(db, keyring, guard=guard)
    guard.attach(vault)
    return vault, proc


def build(tmp: Path, count: int, store_url: str | None, redis_url: str | None,
          canaries: int, file_counters: bool = False) -> tuple[Vault, Vault, Vault, list[str], Database]:
    keyring = Keyring.create(tmp / "keys" / "keyring.json", PassphraseProvider("bench-pass", CHEAP),
                             expected_population=max(count, 10**5))
    url = store_url or f"sqlite:///{tmp / 'data' / 'vault.db'}"
    (tmp / "data").mkdir(exist_ok=True)
    db = Database(url)
    writer_dir = tmp / "keys" / "audit"
    create_audit_keys(writer_dir, keyring)
    # the anchor as Vault.open gives it: each checkpoint marked outside the store
    log = AuditLog(db, keyring, load_writer(writer_dir, keyring), journal_dir=tmp / "data" / "journal",
                   anchor=tmp / "audit-anchor.jsonl")
    counters: Counters = (RedisCounters(redis_url, namespace="bench-" + keyring.vault_id) if redis_url
                          else FileCounters(tmp / "data" / "counters.db") if file_counters
                          else MemoryCounters())
    alerts = AlertDispatcher([TableSink(db)], claim=counters.claim)
    big = Budget(records_per_minute=BIG, records_per_hour=BIG, records_per_day=BIG, misses_per_hour=BIG,
                 distinct_per_day=BIG)
    budgets = Budgets(BudgetPolicy(roles={"operator": big}, vault=Budget(records_per_minute=BIG)), counters)
    detector = GlobalDetector(counters, alerts)
    detector.start()  # as build_guard does: vault-wide rules off the request path
    guard = DetectGuard(log, budgets=budgets, alerts=alerts, canaries=CanaryRegistry(db, keyring),
                        detector=detector, inner=LocalGuard())
    full = Vault.initialise(db, keyring, guard=guard)
    guard.attach(full)
    ids: list[str] = []
    t0 = time.perf_counter()
    for row in generate(count, 31337):
        full.put({k: (str(v) if v else None) for k, v in row.items()}, ctx=OPERATOR)
        ids.append(row["id_number"])
    if canaries:
        seed(full, canaries, ctx=OPERATOR, registry=guard.canaries)
    print(f"# loaded {count:,} residents and {canaries} canaries in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    inner = Vault(db, keyring, guard=LocalGuard())
    bare = Vault(db, keyring, guard=BareGuard())
    return inner, full, bare, ids, db


def rate(fn: Callable[[str], Any], queries: list[str], settle: Callable[[], Any] | None = None,
         other_cpu: Callable[[], float] | None = None) -> tuple[float, float]:
    """(lookups per wall-clock second, lookups per CPU second of the whole process).

    CPU time counts every thread of the process, so the journal's chaining
    thread and the detector's thread are charged to the full door; ``settle``
    (the journal flush) runs inside the measurement so no chaining work is
    left over for the next round.
    """
    o0 = other_cpu() if other_cpu is not None else 0.0
    c0, t0 = time.process_time(), time.perf_counter()
    for q in queries:
        fn(q)
    if settle is not None:
        settle()
    c1, t1 = time.process_time(), time.perf_counter()
    o1 = other_cpu() if other_cpu is not None else 0.0
    return len(queries) / (t1 - t0), len(queries) / (c1 - c0 + o1 - o0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=20_000, help="residents in the vault")
    ap.add_argument("--lookups", type=int, default=3_000, help="lookups per door per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--canaries", type=int, default=20)
    ap.add_argument("--store", default=None, help="store URL (default: a new SQLite file)")
    ap.add_argument("--redis", default=None, help="Redis URL for the budget counters (default in-process)")
    ap.add_argument("--file-counters", action="store_true",
                    help="budget counters in an SQLite file, as several serve workers share them")
    ap.add_argument("--chainer", choices=["thread", "node"], default="thread",
                    help="node: also measure the full door with its journal chained by a node chainer "
                         "process, as serve runs it with several workers")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="pivault-bench-door-") as d:
        inner, full, bare, ids, db = build(Path(d), args.count, args.store, args.redis, args.canaries,
                                           args.file_counters)
        rnd = random.Random(7)
        ctx = READER
        doors: dict[str, Callable[[str], Any]] = {
            "inner": lambda q: inner.find(id_number=q, ctx=ctx),
            "full": lambda q: full.find(id_number=q, ctx=ctx),
            "bare": lambda q: bare.find(id_number=q, ctx=ctx),
        }
        settle = {"full": lambda: full.guard.audit_log.flush(30)}  # type: ignore[attr-defined]
        other: dict[str, Callable[[], float]] = {}
        chainer = None
        if args.chainer == "node":
            guard: Any = full.guard
            node, chainer = node_door(Path(d), db, full.keyring, guard.budgets.counters, guard.canaries)
            doors["node"] = lambda q: node.find(id_number=q, ctx=ctx)
            settle["node"] = lambda: node.guard.audit_log.flush(30)  # type: ignore[attr-defined]
            pid = chainer.pid
            other["node"] = lambda: _cpu_s(pid)
        for fn in doors.values():  # warm caches and code paths
            rate(fn, rnd.sample(ids, 200))
        results: dict[str, list[float]] = {k: [] for k in doors}
        cpu: dict[str, list[float]] = {k: [] for k in doors}
        for r in range(args.rounds):
            order = list(doors) if r % 2 == 0 else list(reversed(doors))
            for name in order:
                wall, per_cpu = rate(doors[name], rnd.sample(ids, args.lookups), settle.get(name),
                                     other.get(name))
                results[name].append(wall)
                cpu[name].append(per_cpu)
        flushed = full.guard.audit_log.flush(30)  # type: ignore[attr-defined]
        if chainer is not None:
            flushed = node.guard.audit_log.flush(30) and flushed  # type: ignore[attr-defined]
            node.guard.close()  # type: ignore[attr-defined]
            chainer.terminate()
            chainer.join(30)
        entries = db.query_one("SELECT COUNT(*) FROM audit_entries")
        db.close()

    med = {k: statistics.median(v) for k, v in results.items()}
    mcpu = {k: statistics.median(v) for k, v in cpu.items()}
    ratio = med["full"] / med["inner"]
    ratio_cpu = mcpu["full"] / mcpu["inner"]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    backend = "PostgreSQL" if args.store and args.store.startswith("postgres") else "SQLite"
    counters = "Redis" if args.redis else "file" if args.file_counters else "in-process"
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores, "
          f"load average {load}; {backend} store, {counters} counters; count={args.count:,}, "
          f"{args.lookups:,} lookups x {args.rounds} rounds, median round")
    print(f"{'':48s} {'per wall s':>11s} {'per CPU s':>10s}")
    for key, label in (("inner", "inner path (local guard, no audit/budgets)"),
                       ("full", "full door (audit+budgets+canary+detector)"),
                       ("node", "full door, journal chained by a node chainer"),
                       ("bare", "bare inner path (no guard at all, reference)")):
        if key in med:
            print(f"{label:48s} {med[key]:>11,.0f} {mcpu[key]:>10,.0f}")
    for what, value in (("wall clock", ratio), ("CPU time:  ", ratio_cpu)):
        print(f"ratio full/inner, {what}: {value:.2f}  (audit and budgets cost {(1 - value) * 100:.0f}%)")
    # each round's doors ran back to back: the median of the rounds' own ratios moves less with the
    # machine's load than the ratio of the medians
    for key in ("full", "node"):
        if key in results:
            per_round = statistics.median(f / i for f, i in zip(results[key], results["inner"], strict=True))
            print(f"ratio {key}/inner, median of the rounds' own ratios (wall): {per_round:.2f}")
    if "node" in med:
        for what, value in (("wall clock", med["node"] / med["inner"]),
                            ("CPU time (with the chainer's)", mcpu["node"] / mcpu["inner"])):
            print(f"ratio node-chained full/inner, {what}: {value:.2f}  "
                  f"(audit and budgets cost {(1 - value) * 100:.0f}%)")
    print(f"audit entries chained: {entries[0] if entries else 0:,} (all flushed: {flushed})")
    print("rounds, per wall s:", {k: [round(x) for x in v] for k, v in results.items()})
    print("rounds, per CPU s: ", {k: [round(x) for x in v] for k, v in cpu.items()})


if __name__ == "__main__":
    main()
