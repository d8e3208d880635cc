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
it at once), but they are still charged on every lookup.
Also measured in the same run: one token check (primary-key read + hash
compare) in-process, the per-request price of refusing revoked tokens at once.
"""

from __future__ import annotations

import argparse
import json
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
    import httpx

    env = dict(os.environ, PIVAULT_PASSPHRASE=PASSPHRASE)
    if redis_url:
        env["PIVAULT_REDIS_URL"] = redis_url  # several workers share their budget counters
    cmd = [sys.executable, "-m", "pivault.cli.serve_cmds", "serve", "--home", str(home), "--port", str(port),
           "--workers", str(workers), "--cert", str(cert), "--key", str(key), "--policy", str(policy)]
    out = (logdir / "server.out").open("wb")
    err = (logdir / "server.err").open("wb")
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
    ctx = ssl.create_default_context(cafile=str(cert))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the server exited: " + (logdir / "server.err").read_text()[-2000:])
        try:
            if httpx.get(f"https://127.0.0.1:{port}/healthz", verify=ctx, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.terminate()
    raise SystemExit("the server did not start")


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

    with Vault.open(home, passphrase=PASSPHRASE) as v:
        v.guard = LocalGuard()
        out["find, no policy, no audit (local guard)"] = timed(v, local)
        v.guard = PolicyGuard(Policy.load(policy_file), denied=AccessDenied)
        out["+ policy guard (authorise, masks)"] = timed(v, ctx)
    os.environ["PIVAULT_PASSPHRASE"] = PASSPHRASE
    os.environ.pop("PIVAULT_REDIS_URL", None)
    app = build_app(ServeOptions(home=str(home), policy=str(policy_file), log_to_stderr=False))
    vault = app.state.vault
    out["+ audit entry, budgets (in-process), detector"] = timed(vault, ctx)
    vault.close()
    return out


# -- load generators ------------------------------------------------------------------------------------
def _wrk_latency(text: str, pct: str) -> float:
    m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return float("nan")
    v = float(m.group(1))
    return v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v


def run_wrk(url: str, seconds: int, connections: int, threads: int, script: Path | None) -> dict[str, float]:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if script is not None:
        cmd += ["-s", str(script)]
    text = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors:.*", text)
    return {"rps": rps, "p50": _wrk_latency(text, "50"), "p99": _wrk_latency(text, "99"),
            "non2xx": float(non2xx.group(1)) if non2xx else 0.0, "socket_errors": 1.0 if errors else 0.0}


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
               ids: list[str]) -> dict[str, float]:
    import httpx

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
    lat.sort()
    return {"rps": len(lat) / elapsed, "p50": statistics.median(lat), "p99": lat[int(len(lat) * 0.99) - 1],
            "non2xx": float(bad[0]), "socket_errors": 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100_000, help="synthetic residents in the vault")
    ap.add_argument("--home", type=Path, help="reuse this bench vault home (created if absent)")
    ap.add_argument("--store-url", help="postgresql://… to bench the PostgreSQL backend")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--connections", type=int, default=16, help="concurrent keep-alive clients")
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    ap.add_argument("--redis-url", default=os.environ.get("PIVAULT_REDIS_URL", "redis://127.0.0.1:6379/14"),
                    help="budget counters shared by the workers (needed for --workers > 1)")
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
    redis_url = args.redis_url if args.workers > 1 else None
    proc = start(home, port, args.workers, cert.certfile, cert.keyfile, policy, tmp, redis_url)
    base = f"https://127.0.0.1:{port}"
    try:
        if use_wrk:
            # wrk trusts no CA here; it does not verify certificates (the Python client does)
            script = wrk_script(tmp / "lookup.lua", token, ids)
            run_wrk(base + "/healthz", 2, args.connections, 1, None)  # warm-up
            health = run_wrk(base + "/healthz", args.seconds, args.connections, 1, None)
            run_wrk(base + "/v1/residents/lookup", 2, args.connections, 1, script)
            look = run_wrk(base + "/v1/residents/lookup", args.seconds, args.connections, 1, script)
            tool = "wrk (1 thread)"
        else:
            run_python(base + "/healthz", 2, args.connections, cert.certfile, None, ids)
            health = run_python(base + "/healthz", args.seconds, args.connections, cert.certfile, None, ids)
            look = run_python(base + "/v1/residents/lookup", args.seconds, args.connections, cert.certfile,
                              token, ids)
            tool = "python threads + httpx (the client shares the 2 cores)"
    finally:
        proc.terminate()
        proc.wait(30)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    backend = "PostgreSQL" if args.store_url else "SQLite"
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores, "
          f"load average {load}; {backend}, {args.count:,} residents, {args.workers} workers, "
          f"{args.connections} connections, {args.seconds} s per run, client: {tool}; budget counters: "
          f"{'Redis' if redis_url else 'in-process'}")
    print(f"baseline GET /healthz     : {health['rps']:>8,.0f} req/s  p50 {health['p50']:6.2f} ms  "
          f"p99 {health['p99']:6.2f} ms")
    print(f"POST /v1/residents/lookup : {look['rps']:>8,.0f} req/s  p50 {look['p50']:6.2f} ms  "
          f"p99 {look['p99']:6.2f} ms  (non-2xx: {look['non2xx']:.0f})")
    print(f"ratio lookup/healthz throughput: {look['rps'] / health['rps']:.2f}")
    print(f"token check (primary-key read + constant-time compare), in-process: {verify_us:.1f} us")
    print("in-process, one thread, ms per lookup through the door:")
    for what, ms in breakdown.items():
        print(f"  {what:<48}: {ms:6.2f} ms")
    target = look["rps"] >= 3000 and look["p99"] <= 20
    print(f"target >= 3,000 lookups/s and p99 <= 20 ms: {'met' if target else 'NOT met'}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
