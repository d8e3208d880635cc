"""A real ``pivault serve`` for the drills: TLS on loopback, Redis-shared budgets, a webhook receiver."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pivault.api.tls import make_dev_cert
from pivault.crypto import Argon2Params
from pivault.policy.context import AccessContext
from pivault.policy.tokens import TokenStore
from pivault.store import Database
from pivault.synth import generate
from pivault.vault import LocalGuard, Vault, init
from pivault.vault.home import load

PASSPHRASE = "synthetic-drill-passphrase"
CHEAP = Argon2Params(time_cost=1, memory_cost=8, parallelism=1)
WEBHOOK_SECRET = "synthetic-drill-webhook-secret"
PER_MINUTE = 20
VAULT_PER_MINUTE = 150

POLICY = f"""
[policy]
version = 1
description = "drill policy: officers look up residents, one at a time"

[roles.officer]
description = "looks up residents"
operations = ["lookup", "read"]
purposes = ["case_investigation"]

[roles.officer.fields]
name = "mask"
id_number = "id_number_ends"
mobile = "mask"

[roles.officer.budgets]
records_per_minute = {PER_MINUTE}
records_per_hour = 200
records_per_day = 400
misses_per_hour = 40
distinct_per_day = 300
"""


def detect_settings(webhook_url: str) -> str:
    return f"""
[detect]
webhook_url = "{webhook_url}"
suspend_after = 3

[detect.vault]
records_per_minute = {VAULT_PER_MINUTE}

[detect.detector]
distributed_min_principals = 5
distributed_min_each = 5
distributed_min_total = 50
evaluate_every = 0.2
"""


def without_vault_limit(text: str) -> str:
    """A ``pivault.toml`` as `pivault init` wrote it before its default vault-wide limit (it ended with
    [policy]): for vaults of that age, and for tests that set a limit of their own."""
    head, sep, rest = text.partition("[policy]\n")
    assert sep and "[detect.vault]" in rest, text
    return head + sep + rest.splitlines(keepends=True)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveVault:
    home: Path
    keyring_path: Path
    cert: Path
    key: Path
    policy: Path
    redis_url: str
    residents: list[dict[str, Any]]
    record_ids: list[str]
    servers: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    @property
    def base(self) -> str:
        return self.servers[0][0]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIVAULT_")}
        env.update(PIVAULT_PASSPHRASE=PASSPHRASE, PIVAULT_HOME=str(self.home),
                   XDG_CONFIG_HOME=str(self.home.parent / "xdg"), PIVAULT_REDIS_URL=self.redis_url,
                   PIVAULT_WEBHOOK_SECRET=WEBHOOK_SECRET)
        return env

    def start(self, workers: int = 2) -> str:
        port = free_port()
        log = self.home.parent / f"server-{port}.log"
        cmd = [sys.executable, "-m", "pivault.cli.serve_cmds", "serve", "--home", str(self.home),
               "--port", str(port), "--cert", str(self.cert), "--key", str(self.key),
               "--workers", str(workers), "--policy", str(self.policy)]
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env())
        base = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(base + "/healthz", verify=self.tls(), timeout=2).status_code == 200:
                    self.servers.append((base, proc))
                    return base
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        proc.terminate()
        raise RuntimeError("server did not come up")

    def output(self, base: str) -> str:
        """What the server at ``base`` printed (its banner first)."""
        return (self.home.parent / f"server-{base.rsplit(':', 1)[1]}.log").read_text()

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def token(self, principal: str) -> tuple[str, str]:
        with Database(load(self.home).store_url) as db:
            info, token = TokenStore(db).create(principal, "officer", ["case_investigation"],
                                                ttl_seconds=3600)
        return info.token_id, token

    def client(self, token: str, base: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=base or self.base, verify=self.tls(), timeout=20, headers={
            "Authorization": f"Bearer {token}", "X-Purpose": "case_investigation"})

    def stop(self) -> None:
        for _, proc in self.servers:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


def make_live_vault(tmp: Path, redis_url: str, webhook_url: str, population: int = 400,
                    canaries: int = 2) -> tuple[LiveVault, list[str]]:
    """A vault home with ``population`` residents and ``canaries`` canaries; returns it and the canaries."""
    from pivault.detect import seed
    from pivault.detect.setup import DetectSettings, build_guard

    home = tmp / "home"
    keyring_path = tmp / "keys" / "vault.keyring"
    init(home, passphrase=PASSPHRASE, keyring_path=keyring_path, argon2=CHEAP, expected_population=10**5)
    config = home / "pivault.toml"  # the drills' own vault-wide limit, instead of the default
    config.write_text(without_vault_limit(config.read_text(encoding="utf-8")) + detect_settings(webhook_url),
                      encoding="utf-8")
    policy = tmp / "policy.toml"
    policy.write_text(POLICY, encoding="utf-8")
    c = make_dev_cert(tmp / "tls")
    setup = AccessContext(principal="local:drill", role="operator", purpose="administration")
    residents: list[dict[str, Any]] = [dict(r) for r in generate(population, 2718)]
    with Vault.open(home, passphrase=PASSPHRASE, guard=LocalGuard()) as vault:
        assert vault.config is not None
        guard = build_guard(vault.db, vault.keyring, keyring_path=keyring_path, home=home,
                            settings=DetectSettings())
        vault.guard = guard
        ids = [vault.put({k: (str(v) if v else None) for k, v in r.items()}, ctx=setup) for r in residents]
        made = seed(vault, canaries, ctx=setup, registry=guard.canaries)
    live = LiveVault(home, keyring_path, c.certfile, c.keyfile, policy, redis_url, residents, ids)
    return live, made
