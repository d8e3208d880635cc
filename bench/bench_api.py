"""Benchmark: authenticated lookups per second over HTTPS on loopback, against /healthz.

    python bench/bench_api.py --count 100000 --workers 2 --connections 16 --seconds 15

Builds (or reuses, with ``--home``) a vault of ``count`` synthetic residents,
starts ``pivault serve`` over TLS with ``--workers`` processes, and drives it
with several concurrent keep-alive clients:

1. baseline: ``GET /healthz`` — the cost of HTTP and TLS in this server;
2. ``POST /v1/residents/lookup`` by ID number as an ``officer``, rotating over
   1,000 residents: bearer token checked against the store, purpose checked,
   policy, read budget charged, audit entry written, blind-index search,
   decrypt, mask, JSON.

The load generator is ``wrk`` when it is installed (C, cheap on the shared
cores), else a Python client (threads, httpx) that takes a larger share of
the CPU; the output says which. The read budgets of the policy are raised
for the benchmark principal (the shipped 30 lookups a minute would refuse
it at once), but they are still charged on every lookup: with several
workers in the vault's counters file (what ``serve`` does with nothing
configured), or in Redis with ``--counters redis``.

The two runs alternate for ``--rounds`` rounds and the medians are printed,
so that load from other processes on a shared machine hits both alike. Each
run also reports the CPU time spent per request by the server's workers (with
the node's audit chainer beside them), by the Redis server (when it runs on
this machine) and by the client, read from ``/proc``: the steadier figure
when the machine is shared.
Also measured in the same run: one token check (primary-key read + hash
compare) in-process, the per-request price of refusing revoked tokens at once;
and, in-process without sockets, where the time of a lookup goes (the ASGI app
against the Vault's door alone).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

PASSPHRASE = "synthetic-bench-passphrase"
SEED = 8080


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _policy_text() -> str:
    from pivault.policy import Policy

    return re.sub(r"(?m)^((?:records_per_\w+|misses_per_hour|distinct_per_day) = )\d+",
                  r"\g<1>1000000000", Policy.default_text())


def lift_vault_limit(config: Path) -> None:
    """Set the vault-wide read limit ``init`` writes far above what a benchmark reads: every lookup
    is still charged to it, none refused."""
    import re

    text = config.read_text(encoding="utf-8")
    big = 1_000_000_000
    if "[detect.vault]" in text:
        text = re.sub(r"(?m)^(records_per_\w+|misses_per_hour) = \d+$", rf"\1 = {big}", text)
        if "misses_per_hour" not in text:  # misses charged too, as hits are
            text = text.replace("[detect.vault]\n", f"[detect.vault]\nmisses_per_hour = {big}\n", 1)
    else:
        text += f"\n[detect.vault]\nrecords_per_minute = {big}\nmisses_per_hour = {big}\n"
    config.write_text(text, encoding="utf-8")


def prepare(home: Path, count: int, store_url: str | None) -> None:
    """A vault with ``count`` synthetic residents (kept if ``home`` already has one)."""
    from pivault.crypto import Argon2Params
    from pivault.policy.context import local_operator
    from pivault.synth import write_population
    from pivault.vault import Vault, init

    if not (home / "pivault.toml").exists():
        init(home, passphrase=PASSPHRASE, store_url=store_url,
             keyring_path=home.parent / "keys" / f"{home.name}.keyring",
             argon2=Argon2Params(time_cost=1, memory_cost=8 * 1024, parallelism=1),
             expected_population=max(count, 16))
    lift_vault_limit(home / "pivault.toml")
    with Vault.open(home, passphrase=PASSPHRASE) as vault:
        have = vault.store.count()
        if have < count:
            src = home.parent / "population.csv"
            print(f"importing {count:,} synthetic residents …", flush=True)
            t = time.perf_counter()
            write_population(src, count, SEED)
            vault.import_files([src], ctx=local_operator("bench"))
            print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)
            src.unlink()


def _lookup_ids(n: int) -> list[str]:
    from pivault.synth import generate

    return [r["id_number"] for r in generate(n, SEED)]


def _tokens(home: Path) -> str:
    from pivault.policy.tokens import TokenStore
    from pivault.store.db import Database
    from pivault.vault import load

    store = TokenStore(Database(load(home).store_url))
    _, tok = store.create("bench-officer", "officer", ["identity_verification"], ttl_seconds=3600)
    return tok


def token_check_us(home: Path, token: str, n: int = 5000) -> float:
    from pivault.policy.tokens import TokenStore
    from pivault.store.db import Database
    from pivault.vault import load

    store = TokenStore(Database(load(home).store_url))
    store.verify(token)
    t = time.perf_counter()
    for _ in range(n):
        store.verify(token)
    return (time.perf_counter() - t) / n * 1e6


def start(home: Path, port: int, workers: int, cert: Path, key: Path, policy: Path, logdir: Path,
          redis_url: str | None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("PIVAULT_REDIS_URL", "PIVAULT_COUNTERS_URL")}
    env["PIVAULT_PASSPHRASE"] = PASSPHRASE
    if redis_url:
        env["PIVAULT_REDIS_URL"] = redis_url  # several workers share their budget counters
    # else several workers share a counters file of the vault (<home>/run/counters.db)
    cmd = [sys.executable, "-m", "pivault.cli.serve_cmds", "serve", "--home", str(home), "--port", str(port),
           "--workers", str(workers), "--cert", str(cert), "--key", str(key), "--policy", str(policy)]
    out = (logdir / "server.out").open("wb")
    err = (logdir / "server.err").open("wb")
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
    return wait_healthy(proc, port, cert, logdir / "server.err", "server")


def wait_healthy(proc: subprocess.Popen[bytes], port: int, cert: Path, errfile: Path,
                 what: str) -> subprocess.Popen[bytes]:
    """Wait until the server answers ``/healthz`` over TLS; stop with its error output if it exits."""
    import httpx

    ctx = ssl.create_default_context(cafile=str(cert))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the {what} exited: " + errfile.read_text()[-2000:])
        try:
            if httpx.get(f"https://127.0.0.1:{port}/healthz", verify=ctx, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.terminate()
    raise SystemExit(f"the {what} did not start")


def door_breakdown(home: Path, policy_file: Path, ids: list[str], n: int = 300) -> dict[str, float]:
    """Milliseconds per ``Vault.find`` in-process, one thread, as guards are added: where the time goes."""
    from pivault.api.server import ServeOptions, build_app
    from pivault.policy import AccessContext, Policy
    from pivault.policy.guard import PolicyGuard
    from pivault.vault import AccessDenied, LocalGuard, Vault

    ctx = AccessContext("bench-officer", "officer", "identity_verification", token_id=None, source="api")
    local = AccessContext("bench", "operator", "bench")
    out: dict[str, float] = {}

    def timed(vault: Vault, c: AccessContext) -> float:
        for i in range(20):
            vault.find(id_number=ids[i % len(ids)], ctx=c)
        t = time.perf_counter()
        for i in range(n):
            vault.find(id_number=ids[i % len(ids)], ctx=c)
        return (time.perf_counter() - t) / n * 1000

    # opened with its guard given: no watchman is built, so none is left running (and feeding on
    # these lookups through the vault's read observers) when the guard is swapped below
    with Vault.open(home, passphrase=PASSPHRASE, guard=LocalGuard()) as v:
        out["find, no policy, no audit (local guard)"] = timed(v, local)
        v.guard = PolicyGuard(Policy.load(policy_file), denied=AccessDenied)
        out["+ policy guard (authorise, masks)"] = timed(v, ctx)
    os.environ["PIVAULT_PASSPHRASE"] = PASSPHRASE
    os.environ.pop("PIVAULT_REDIS_URL", None)
    app = build_app(ServeOptions(home=str(home), policy=str(policy_file), log_to_stderr=False))
    vault = app.state.vault
    token = _tokens(home)
    door, whole = [], []
    for _ in range(5):  # alternating, medians: the two differ by the API layer alone
        door.append(timed(vault, ctx))
        whole.append(_asgi_ms(app, token, ids, n))
    out["+ audit entry, budgets (in-process), detector"] = statistics.median(door)
    out["the ASGI app: token, purpose, door, JSON (no sockets)"] = statistics.median(whole)
    vault.close()
    return out


def _asgi_ms(app: Any, token: str, ids: list[str], n: int) -> float:
    """Milliseconds per lookup through the whole ASGI app (middleware, token, route, door), no network."""
    import asyncio

    bodies = [json.dumps({"id_number": i}).encode() for i in ids]
    headers = [(b"host", b"bench"), (b"authorization", f"Bearer {token}".encode()),
               (b"x-purpose", b"identity_verification"), (b"content-type", b"application/json")]

    async def one(i: int) -> None:
        body = bodies[i % len(bodies)]
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "https", "path": "/v1/residents/lookup", "raw_path": b"/v1/residents/lookup",
                 "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
                 "server": ("127.0.0.1", 443),
                 "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        messages: list[dict[str, Any]] = [{"type": "http.request", "body": body, "more_body": False}]
        status: list[int] = []

        async def receive() -> dict[str, Any]:
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(scope, receive, send)
        if status != [200]:
            raise SystemExit(f"in-process lookup answered {status}")

    async def loop() -> float:
        for i in range(20):
            await one(i)
        t = time.perf_counter()
        for i in range(n):
            await one(i)
        return (time.perf_counter() - t) / n * 1000

    return asyncio.run(loop())


# -- CPU time per request, from /proc --------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0 if it is gone or not readable)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return out


def _workers(server_pid: int) -> list[int]:
    """The processes that serve: the worker processes and the audit chainer, or the server itself alone."""
    found = []
    for child in _children(server_pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as fh:
                if b"spawn_main" in fh.read():
                    found.append(child)
        except OSError:
            continue
    return found or [server_pid]


def _redis_pid(url: str | None) -> int | None:
    """The Redis server's process id if it runs on this machine (for its CPU time), else None."""
    if not url:
        return None
    try:
        import redis

        pid = int(redis.Redis.from_url(url, socket_connect_timeout=2).info("server")["process_id"])
    except Exception:
        return None
    return pid if os.path.exists(f"/proc/{pid}/stat") else None


class CpuMeter:
    """CPU seconds used by the server's workers, Redis and the client during one run."""

    def __init__(self, workers: list[int], redis_pid: int | None) -> None:
        self.pids = {"workers": workers, "redis": [redis_pid] if redis_pid else []}

    def snapshot(self) -> dict[str, float]:
        return {k: sum(_cpu_s(p) for p in pids) for k, pids in self.pids.items()}


# -- load generators ------------------------------------------------------------------------------------
def _wrk_latency(text: str, pct: str) -> float:
    m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return float("nan")
    v = float(m.group(1))
    return v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v


def _wrk_max(text: str) -> float:
    """The slowest request of the run, in ms (wrk's thread-stats line: avg, stdev, max, +/- stdev)."""
    m = re.search(r"^\s*Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\s", text, re.M)
    if not m:
        return float("nan")
    v = float(m.group(1))
    return v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v


def run_wrk(url: str, seconds: int, connections: int, threads: int, script: Path | None,
            meter: CpuMeter | None = None) -> dict[str, float]:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if script is not None:
        cmd += ["-s", str(script)]
    before = meter.snapshot() if meter else {}
    proc = subprocess.Popen([*cmd, url], stdout=subprocess.PIPE, text=True)
    # wrk's own CPU time, read just before it exits (a finished process has no /proc entry)
    client = 0.0
    while proc.poll() is None:
        client = _cpu_s(proc.pid) or client
        time.sleep(0.05)
    text = proc.communicate()[0]
    if proc.returncode != 0:
        raise SystemExit(f"wrk failed ({proc.returncode})")
    after = meter.snapshot() if meter else {}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors:.*", text)
    out = {"rps": rps, "p50": _wrk_latency(text, "50"), "p99": _wrk_latency(text, "99"),
           "max": _wrk_max(text),
           "non2xx": float(non2xx.group(1)) if non2xx else 0.0, "socket_errors": 1.0 if errors else 0.0,
           "client_ms": client / max(requests, 1) * 1000}
    for k in after:
        out[f"{k}_ms"] = (after[k] - before[k]) / max(requests, 1) * 1000
    return out


def wrk_script(path: Path, token: str, ids: list[str]) -> Path:
    bodies = ",\n".join(json.dumps(json.dumps({"id_number": i})) for i in ids)
    path.write_text(
        "local bodies = {\n" + bodies + "\n}\n"
        "local i = 0\n"
        'local headers = {["Content-Type"] = "application/json",\n'
        f'  ["Authorization"] = "Bearer {token}", ["X-Purpose"] = "identity_verification"}}\n'
        "request = function()\n"
        "  i = i + 1\n"
        '  return wrk.format("POST", "/v1/residents/lookup", headers, bodies[(i % #bodies) + 1])\n'
        "end\n", encoding="utf-8")
    return path


def run_python(url: str, seconds: int, connections: int, cert: Path, token: str | None,
               ids: list[str], meter: CpuMeter | None = None) -> dict[str, float]:
    import httpx

    before = meter.snapshot() if meter else {}
    client0 = time.process_time()

    ctx = ssl.create_default_context(cafile=str(cert))
    lat: list[float] = []
    bad = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(k: int) -> None:
        headers = {"Authorization": f"Bearer {token}", "X-Purpose": "identity_verification"} if token else {}
        mine: list[float] = []
        errors = 0
        with httpx.Client(verify=ctx, headers=headers, timeout=10) as c:
            i = k
            while time.monotonic() < stop_at:
                t = time.perf_counter()
                r = c.post(url, json={"id_number": ids[i % len(ids)]}) if token else c.get(url)
                mine.append((time.perf_counter() - t) * 1000)
                errors += r.status_code != 200
                i += connections
        with lock:
            lat.extend(mine)
            bad[0] += errors

    threads = [threading.Thread(target=client, args=(k,)) for k in range(connections)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t0
    after = meter.snapshot() if meter else {}
    lat.sort()
    n = max(len(lat), 1)
    out = {"rps": len(lat) / elapsed, "p50": statistics.median(lat), "p99": lat[int(len(lat) * 0.99) - 1],
           "non2xx": float(bad[0]), "socket_errors": 0.0,
           "client_ms": (time.process_time() - client0) / n * 1000}
    for k in after:
        out[f"{k}_ms"] = (after[k] - before[k]) / n * 1000
    return out


def _median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per figure, the median over the rounds."""
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100_000, help="synthetic residents in the vault")
    ap.add_argument("--home", type=Path, help="reuse this bench vault home (created if absent)")
    ap.add_argument("--store-url", help="postgresql://… to bench the PostgreSQL backend")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--connections", type=int, default=16, help="concurrent keep-alive clients")
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of both runs; medians")
    ap.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    ap.add_argument("--redis-url", default=os.environ.get("PIVAULT_REDIS_URL", "redis://127.0.0.1:6379/14"),
                    help="the Redis server of --counters redis")
    ap.add_argument("--counters", choices=("file", "redis"), default="file",
                    help="where several workers share their read budgets: the vault's counters file "
                         "(what serve does with nothing configured) or Redis")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pivault-bench-api-"))
    home = args.home or tmp / "home"
    home.parent.mkdir(parents=True, exist_ok=True)
    prepare(home, args.count, args.store_url)
    from pivault.api.tls import make_dev_cert

    cert = make_dev_cert(tmp / "tls")
    policy = tmp / "policy.toml"
    policy.write_text(_policy_text(), encoding="utf-8")
    token = _tokens(home)
    ids = _lookup_ids(min(1000, args.count))
    verify_us = token_check_us(home, token)
    breakdown = door_breakdown(home, policy, ids)
    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk") is not None)
    port = _free_port()
    redis_url = args.redis_url if args.workers > 1 and args.counters == "redis" else None
    counters = "Redis" if redis_url else "the vault's file" if args.workers > 1 else "in-process"
    proc = start(home, port, args.workers, cert.certfile, cert.keyfile, policy, tmp, redis_url)
    base = f"https://127.0.0.1:{port}"
    meter = CpuMeter(_workers(proc.pid), _redis_pid(redis_url))
    healths: list[dict[str, float]] = []
    looks: list[dict[str, float]] = []
    try:
        if use_wrk:
            # wrk trusts no CA here; it does not verify certificates (the Python client does)
            script = wrk_script(tmp / "lookup.lua", token, ids)
            run_wrk(base + "/healthz", 2, args.connections, 1, None)  # warm-up
            run_wrk(base + "/v1/residents/lookup", 2, args.connections, 1, script)
            for _ in range(args.rounds):
                healths.append(run_wrk(base + "/healthz", args.seconds, args.connections, 1, None, meter))
                looks.append(run_wrk(base + "/v1/residents/lookup", args.seconds, args.connections, 1, script,
                                     meter))
            tool = "wrk (1 thread)"
        else:
            run_python(base + "/healthz", 2, args.connections, cert.certfile, None, ids)
            for _ in range(args.rounds):
                healths.append(run_python(base + "/healthz", args.seconds, args.connections, cert.certfile,
                                          None, ids, meter))
                looks.append(run_python(base + "/v1/residents/lookup", args.seconds, args.connections,
                                        cert.certfile, token, ids, meter))
            tool = "python threads + httpx (the client shares the 2 cores)"
    finally:
        proc.terminate()
        proc.wait(30)
    health, look = _median_run(healths), _median_run(looks)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    backend = "PostgreSQL" if args.store_url else "SQLite"
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores, "
          f"load average {load}; {backend}, {args.count:,} residents, {args.workers} workers, "
          f"{args.connections} connections, {args.seconds} s per run, {args.rounds} alternating rounds "
          f"(medians), client: {tool}; budget counters: {counters}")
    print("                                                          CPU ms per request")
    print("                                                         workers  redis  client")
    for label, r in (("baseline GET /healthz     ", health), ("POST /v1/residents/lookup ", look)):
        print(f"{label}: {r['rps']:>8,.0f} req/s  p50 {r['p50']:6.2f} ms  p99 {r['p99']:6.2f} ms  "
              f"{r['workers_ms']:6.3f} {r['redis_ms']:6.3f} {r['client_ms']:6.3f}  "
              f"max {r.get('max', math.nan):.1f} ms")
    print(f"lookups refused or failed (non-2xx), median round: {look['non2xx']:.0f}")
    rounds_l = ", ".join(f"{r['rps']:,.0f}" for r in looks)
    rounds_h = ", ".join(f"{r['rps']:,.0f}" for r in healths)
    print(f"rounds, lookups/s: {rounds_l}; /healthz req/s: {rounds_h}")
    print(f"ratio lookup/healthz throughput: {look['rps'] / health['rps']:.2f}; "
          f"worker CPU per request: {look['workers_ms'] / health['workers_ms']:.1f}x")
    print(f"token check (primary-key read + constant-time compare), in-process: {verify_us:.1f} us")
    print("in-process, one thread, ms per lookup:")
    for what, ms in breakdown.items():
        print(f"  {what:<54}: {ms:6.2f} ms")
    target = look["rps"] >= 3000 and look["p99"] <= 20
    print(f"target >= 3,000 lookups/s and p99 <= 20 ms: {'met' if target else 'NOT met'}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
