"""Benchmark: what the audit trail and read budgets cost a lookup service over HTTPS.

    python bench/bench_door_http.py --count 100000 --seconds 10 --rounds 5 [--workers 2]

BENCHMARKS *door* measures the door in-process: ``Vault.find`` with and without
its watchman, nothing around it. A member of staff looks a resident up through
the API, so this measures the same two doors behind the service that carries
them: two ``pivault serve`` processes over one vault, the same TLS, HTTP stack,
token check, policy and masks, driven in turn by ``wrk`` with
``POST /v1/residents/lookup`` by ID number as an ``officer``:

1. inner path (the baseline): the vault's door with the local guard only
   (authorise, masks), no audit entry, no budgets, no canary check, no
   detector. ``pivault serve`` has no such mode: this benchmark builds it by
   replacing, in every process of that server, the function that opens the
   vault, so that the vault is opened with ``LocalGuard``
   (``Vault.open(guard=…)``), through a ``sitecustomize`` module of its own
   on that server's ``PYTHONPATH``;
2. full door: ``pivault serve`` as it runs — audit entry written and chained
   (by the worker's thread with one worker; by the node's chainer process with
   several), read budgets charged (in-process with one worker, in the vault's
   counters file with several; raised far above what the run reads, so that
   every lookup is charged and none refused), canary check, detector.

With one worker (the default) a server's throughput is what its one core can
do and ``wrk`` takes the other; with ``--workers 2`` the servers run as
``serve`` runs on this machine by default. The rounds alternate, and the
figures are medians of the rounds. The CPU time of the processes that serve
(workers and, with several, the node's chainer) per lookup, read from
``/proc``, is the steadier figure on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import bench_api as api

#: imported by every Python process of the inner server (its workers are spawned, so a patch made
#: in the parent alone would not reach them): the vault is opened with the local guard only
_INNER_SITECUSTOMIZE = """
from pivault.api import server as _server
from pivault.vault import LocalGuard as _LocalGuard, Vault as _Vault

_product_build = _server.build_app


def _inner_build(opts, vault=None):
    return _product_build(opts, vault if vault is not None else _Vault.open(opts.home, guard=_LocalGuard()))


_server.build_app = _inner_build
"""


def _serve(home: str, port: int, workers: int, cert: str, key: str, policy: str) -> None:
    """Run one server in this process, by the product's ``serve`` path."""
    from pivault.api import server

    os.environ["PIVAULT_PASSPHRASE"] = api.PASSPHRASE
    server.run(server.ServeOptions(home=home, port=port, workers=workers, certfile=cert, keyfile=key,
                                   policy=policy, log_to_stderr=False), echo=lambda _: None)


def _start(which: str, home: Path, port: int, workers: int, cert: Path, key: Path, policy: Path,
           logdir: Path) -> subprocess.Popen[bytes]:


    env = {k: v for k, v in os.environ.items() if k not in ("PIVAULT_REDIS_URL", "PIVAULT_COUNTERS_URL")}
    if which == "inner":
        site = logdir / "inner-site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(_INNER_SITECUSTOMIZE, encoding="utf-8")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    cmd = [sys.executable, __file__, "--serve", which, "--home", str(home), "--port", str(port),
           "--workers", str(workers), "--cert", str(cert), "--key", str(key), "--policy", str(policy)]
    proc = subprocess.Popen(cmd, stdout=(logdir / f"{which}.out").open("wb"),
                            stderr=(logdir / f"{which}.err").open("wb"), env=env)
    return api.wait_healthy(proc, port, cert, logdir / f"{which}.err", f"{which} server")


def _audit_entries(home: Path) -> int:
    from pivault.store.db import Database
    from pivault.vault import load

    with Database(load(home).store_url) as db:
        row = db.query_one("SELECT COUNT(*) FROM audit_entries")
    return int(row[0]) if row else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100_000, help="synthetic residents in the vault")
    ap.add_argument("--home", type=Path, help="reuse this bench vault home (created if absent)")
    ap.add_argument("--store-url", help="postgresql://… to bench the PostgreSQL backend")
    ap.add_argument("--workers", type=int, default=1,
                    help="worker processes of each server (several: the budgets in the counters file, "
                         "the audit chained by the node's chainer, as serve runs them)")
    ap.add_argument("--connections", type=int, default=16, help="concurrent keep-alive clients")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds of both servers; medians")
    ap.add_argument("--serve", choices=("inner", "full"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cert", help=argparse.SUPPRESS)
    ap.add_argument("--key", help=argparse.SUPPRESS)
    ap.add_argument("--policy", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        _serve(str(args.home), args.port, args.workers, args.cert, args.key, args.policy)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("this benchmark drives the servers with wrk: install it (apt-get install wrk)")

    tmp = Path(tempfile.mkdtemp(prefix="pivault-bench-door-http-"))
    home = args.home or tmp / "home"
    home.parent.mkdir(parents=True, exist_ok=True)
    api.prepare(home, args.count, args.store_url)
    from pivault.api.tls import make_dev_cert

    cert = make_dev_cert(tmp / "tls")
    policy = tmp / "policy.toml"
    policy.write_text(api._policy_text(), encoding="utf-8")
    token = api._tokens(home)
    ids = api._lookup_ids(min(1000, args.count))
    script = api.wrk_script(tmp / "lookup.lua", token, ids)
    entries_before = _audit_entries(home)
    procs = {w: _start(w, home, api._free_port(), args.workers, cert.certfile, cert.keyfile, policy, tmp)
             for w in ("inner", "full")}
    # the processes that serve (with several workers: the workers and the node's chainer)
    serving = {w: api._workers(p.pid) for w, p in procs.items()}
    urls = {w: "https://127.0.0.1:" + p.args[p.args.index("--port") + 1] for w, p in procs.items()}  # type: ignore[union-attr]
    runs: dict[str, list[dict[str, float]]] = {"inner": [], "full": []}
    try:
        for w in runs:  # warm-up
            api.run_wrk(urls[w] + "/v1/residents/lookup", 2, args.connections, 1, script)
        for _ in range(args.rounds):
            for w in runs:
                meter = api.CpuMeter(serving[w], None)
                runs[w].append(api.run_wrk(urls[w] + "/v1/residents/lookup", args.seconds, args.connections,
                                           1, script, meter))
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGINT)
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    audited = _audit_entries(home) - entries_before
    med = {w: api._median_run(r) for w, r in runs.items()}
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    backend = "PostgreSQL" if args.store_url else "SQLite"
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores, "
          f"load average {load}; {backend}, {args.count:,} residents; {args.workers} worker(s) a server, "
          f"{args.connections} connections, {args.seconds} s a run, {args.rounds} alternating rounds "
          "(medians)")
    print("                                  lookups/s   p50 ms   p99 ms   server CPU ms a lookup")
    labels = {"inner": "inner path (no audit, no budgets)",
              "full": f"full door (serve --workers {args.workers})"}
    for w, label in labels.items():
        r = med[w]
        print(f"{label:<33} {r['rps']:>9,.0f}  {r['p50']:7.2f}  {r['p99']:7.2f}  {r['workers_ms']:8.3f}")
    for w in runs:
        print(f"rounds, {w}: " + ", ".join(f"{r['rps']:,.0f}" for r in runs[w]))
    refused = sum(r["non2xx"] for rs in runs.values() for r in rs)
    print(f"lookups refused or failed (non-2xx), all rounds: {refused:.0f}; "
          f"audit entries written by the full door: {audited:,}; by the inner path: none by design")
    ratio = med["full"]["rps"] / med["inner"]["rps"]
    own = statistics.median(f["rps"] / i["rps"] for f, i in zip(runs["full"], runs["inner"], strict=True))
    cpu = med["inner"]["workers_ms"] / med["full"]["workers_ms"]
    print(f"ratio full/inner, lookups/s: {ratio:.2f} (audit and budgets cost {1 - ratio:.0%}); "
          f"median of the rounds' own ratios: {own:.2f}")
    print(f"ratio full/inner, server CPU a lookup (inner / full): {cpu:.2f} (cost {1 - cpu:.0%})")
    print(f"target: the audit trail and budgets cost at most 25 % of throughput: "
          f"{'met' if ratio >= 0.75 and cpu >= 0.75 else 'NOT met'}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
