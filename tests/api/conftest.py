"""A real ``pivault serve`` process on loopback, over TLS, on SQLite and on PostgreSQL.

One server per backend per session (two worker processes, so revocation is
seen to reach every worker), with a token per shipped role and a few dozen
synthetic residents. Its stdout and stderr go to files that the PI-leak test
searches afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from api_support import (
    CHEAP,
    PASSPHRASE,
    PG_BASE,
    POPULATION,
    REDIS_URL,
    ROLE_PURPOSE,
    SEED,
    Live,
    _store_url,
    free_port,
    lift_vault_limit,
    policy_for_tests,
    redis_available,
    start_server,
    stop,
)

from pivault.api.tls import make_dev_cert
from pivault.policy import Policy
from pivault.policy.context import local_operator
from pivault.policy.tokens import TokenStore
from pivault.synth import generate
from pivault.vault import Vault, init


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    backend = str(request.param)
    tmp = tmp_path_factory.mktemp(f"live-{backend}")
    home = tmp / "home"
    url, schema = _store_url(backend, tmp)
    init(home, passphrase=PASSPHRASE, store_url=url, keyring_path=tmp / "keys" / "vault.keyring",
         argon2=CHEAP, expected_population=1000)
    lift_vault_limit(home)
    residents = [{k: r[k] for k in ("name", "id_number", "mobile", "address", "notes")}  # type: ignore[literal-required]
                 for r in generate(POPULATION, SEED)]
    policy = Policy.default()
    with Vault.open(home, passphrase=PASSPHRASE) as vault:
        record_ids = [vault.put(r, ctx=local_operator("test setup")) for r in residents]
        store = TokenStore(vault.db)
        tokens = {role: store.create(f"test-{role}", role, policy.purposes_for(role), ttl_seconds=3600)[1]
                  for role in ROLE_PURPOSE}
    c = make_dev_cert(tmp / "tls")
    port = free_port()
    out, err = tmp / "server.stdout", tmp / "server.stderr"
    policy_file = tmp / "policy.toml"
    policy_file.write_text(policy_for_tests(), encoding="utf-8")
    # two workers show that revocation reaches every worker; they share their budget counters in
    # Redis, or without it in the vault's counters file
    if redis_available():
        redis_url: str | None = REDIS_URL
    elif os.environ.get("CI"):
        pytest.fail(f"CI must have Redis at {REDIS_URL}")
    else:
        redis_url = None
    proc = start_server(home, c.certfile, c.keyfile, port, out, err, "--workers", "2",
                        "--policy", str(policy_file), redis_url=redis_url)
    try:
        yield Live(backend, f"https://127.0.0.1:{port}", home, c.certfile, url, tokens, residents,
                   record_ids, out, err, proc)
    finally:
        stop(proc)
        if schema is not None:
            import psycopg

            with psycopg.connect(PG_BASE, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
