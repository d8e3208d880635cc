"""Helpers for the API tests: start a real ``pivault serve`` process and talk to it."""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest

from pivault.crypto import Argon2Params
from pivault.model import divisions, resident_id
from pivault.policy import Policy
from pivault.policy.policy import Decision
from pivault.policy.tokens import TokenStore
from pivault.store.db import Database

PG_BASE = os.environ.get("PIVAULT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
CHEAP = Argon2Params(time_cost=1, memory_cost=8, parallelism=1)
PASSPHRASE = "synthetic-test-passphrase"
POPULATION = 40
SEED = 4242
ROLE_PURPOSE = {"officer": "identity_verification", "registrar": "registration",
                "dpo": "data_subject_request", "admin": "administration"}


def policy_for_tests() -> str:
    """The shipped policy with read budgets far above what the tests read, plus ``trainee`` and
    ``clerk`` roles whose tiny budgets the budget tests spend, and a ``copier`` that reveals nothing."""
    text = re.sub(r"(?m)^((?:records_per_\w+|misses_per_hour|distinct_per_day|changes_per_day) = )\d+",
                  r"\g<1>1000000", Policy.default_text())
    return text + TRAINEE


def lift_vault_limit(home: Path) -> None:
    """Raise the vault-wide read limit `pivault init` wrote far above what the tests read, as
    :func:`policy_for_tests` does the budgets of each principal: one server serves every test."""
    config = home / "pivault.toml"
    config.write_text(re.sub(r"(?m)^(records_per_\w+) = \d+$", r"\g<1> = 1000000",
                             config.read_text(encoding="utf-8")), encoding="utf-8")


TRAINEE = """
[roles.trainee]
description = "test role with a tiny read budget"
operations = ["lookup"]
purposes = ["training"]
[roles.trainee.fields]
name = "mask"
[roles.trainee.budgets]
records_per_minute = 2
misses_per_hour = 100

[roles.copier]
description = "test role that reads and copies records but may reveal nothing"
operations = ["read", "export"]
purposes = ["training"]
[roles.copier.fields]
name = "mask"

[roles.clerk]
description = "test role that registers residents, with a tiny read budget"
operations = ["create"]
purposes = ["training"]
writable = ["name", "id_number", "mobile", "address", "notes"]
[roles.clerk.budgets]
records_per_minute = 2
changes_per_day = 6
"""


#: the fields that are digits of a resident ID number, or tell one of them (gender: the 17th's parity)
ID_PARTS = ("id_number", "region_code", "birth_date", "gender")


def rebuild_ids(view: Mapping[str, Any], birth_date: str, masks: Mapping[str, str]) -> list[str]:
    """Every valid number whose view under ``masks`` is ``view``, to a caller who knows the birth date.

    The attack a masked ID number has to survive: try every division code the
    masked region code allows and every sequence, mask each number as the
    server does, and keep those that look like what was shown.
    """
    shown_masks = {f: m for f, m in masks.items() if f in ID_PARTS}
    seen = Decision(True, "lookup", "caller", "purpose", fields=shown_masks)
    shown = {f: view[f] for f in shown_masks}
    born = date.fromisoformat(birth_date)
    codes = [c for c in divisions.all_codes()
             if "region_code" not in shown
             or seen.apply({"region_code": c})["region_code"] == shown["region_code"]]
    found = []
    for code in codes:
        for seq in range(1000):
            number = resident_id.make(code, born, seq)
            candidate = {"id_number": number, "region_code": code, "birth_date": birth_date,
                         "gender": "M" if seq % 2 else "F"}
            if seen.apply(candidate) == shown:
                found.append(number)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


REDIS_URL = os.environ.get("PIVAULT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def redis_available() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping())
    except Exception:
        return False


def server_env(home: Path, *, redis_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIVAULT_")}
    env["PIVAULT_PASSPHRASE"] = PASSPHRASE
    env["PIVAULT_HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home.parent / "xdg")
    if redis_url:
        env["PIVAULT_REDIS_URL"] = redis_url
    return env


def serve_cmd(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pivault.cli.serve_cmds", "serve", "--home", str(home), *args]


@dataclass
class Live:
    backend: str
    base: str
    home: Path
    cert: Path
    store_url: str
    tokens: dict[str, str]
    residents: list[dict[str, str]]
    record_ids: list[str]
    stdout: Path
    stderr: Path
    proc: subprocess.Popen[bytes]
    extra_pi: list[str] = field(default_factory=list)

    def client(self, token: str | None = None, *, purpose: str | None = None,
               role: str | None = None, **kw: Any) -> httpx.Client:
        headers: dict[str, str] = {}
        if role is not None:
            token = self.tokens[role]
            purpose = purpose if purpose is not None else ROLE_PURPOSE[role]
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if purpose is not None:
            headers["X-Purpose"] = purpose
        return httpx.Client(base_url=self.base, verify=self.tls(), headers=headers, timeout=20, **kw)

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def token_store(self) -> TokenStore:
        return TokenStore(Database(self.store_url))

    def pi_values(self) -> list[str]:
        """Every PI value the test population holds (and any the tests added)."""
        out = list(self.extra_pi)
        for r in self.residents:
            out += [v for k, v in r.items() if k in ("name", "id_number", "mobile", "address", "notes") and v]
        return out


def _store_url(backend: str, tmp: Path) -> tuple[str, str | None]:
    if backend == "sqlite":
        return f"sqlite:///{tmp / 'home' / 'vault.db'}", None
    try:
        import psycopg

        with psycopg.connect(PG_BASE, connect_timeout=3, autocommit=True) as conn:
            schema = "pva_" + uuid.uuid4().hex[:12]
            conn.execute(f"CREATE SCHEMA {schema}")
    except Exception as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have PostgreSQL: {type(exc).__name__}")
        pytest.skip(f"PostgreSQL not reachable at {PG_BASE} ({type(exc).__name__})")
    sep = "&" if "?" in PG_BASE else "?"
    return f"{PG_BASE}{sep}options=-csearch_path%3D{schema}", schema


def start_server(home: Path, cert: Path, key: Path, port: int, out: Path, err: Path,
                 *extra: str, redis_url: str | None = None) -> subprocess.Popen[bytes]:
    cmd = serve_cmd(home, "--port", str(port), "--cert", str(cert), "--key", str(key), *extra)
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(cmd, stdout=o, stderr=e, env=server_env(home, redis_url=redis_url))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}): {err.read_text()[-2000:]}")
        try:
            r = httpx.get(f"https://127.0.0.1:{port}/healthz",
                          verify=ssl.create_default_context(cafile=str(cert)), timeout=2)
            if r.status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("the server did not answer /healthz within 60 s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)




@contextmanager
def uvicorn_thread(app: Any, **config: Any) -> Iterator[int]:
    """A real uvicorn server on a free loopback port, in a thread of the test; yields the port."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def audited(store_url: str, request_id: str, at_least: int = 1, timeout: float = 10.0) -> list[Any]:
    """The audit entries of one request: durable before the response, chained a moment later (by the
    worker's thread, or the node's chainer with several workers)."""
    from pivault.audit import entries

    with Database(store_url) as db:
        deadline = time.monotonic() + timeout
        while True:
            found = list(entries(db, request_id=request_id))
            if len(found) >= at_least or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


def small_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int, seed: int,
               extra_policy: str = "") -> tuple[Path, Path, list[dict[str, Any]]]:
    """A SQLite vault of ``count`` synthetic residents and a policy file for in-process apps.

    The policy is :func:`policy_for_tests` with ``extra_policy`` appended; the passphrase is
    in the environment, and budgets are counted in-process. Returns (home, policy file,
    residents as put).
    """
    from pivault.policy.context import local_operator
    from pivault.synth import generate
    from pivault.vault import Vault, init

    home = tmp_path / "home"
    init(home, passphrase=PASSPHRASE, store_url=f"sqlite:///{home / 'vault.db'}",
         keyring_path=tmp_path / "keys" / "vault.keyring", argon2=CHEAP, expected_population=1000)
    residents = [{k: r[k] for k in ("name", "id_number", "mobile", "address", "notes")}
                 for r in generate(count, seed)]
    with Vault.open(home, passphrase=PASSPHRASE) as vault:
        for r in residents:
            vault.put(r, ctx=local_operator("test setup"))
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_for_tests() + extra_policy, encoding="utf-8")
    monkeypatch.setenv("PIVAULT_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("PIVAULT_REDIS_URL", raising=False)
    return home, policy, residents
