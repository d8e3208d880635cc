"""Drills against a real server: exfiltration, distributed enumeration, canary, shared budgets.

Two worker processes per server, budgets in the real Redis, a webhook
receiver run by the test, the audit trail checked afterwards.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from detect_helpers import Receiver
from live_vault import PASSPHRASE, PER_MINUTE, VAULT_PER_MINUTE, WEBHOOK_SECRET, LiveVault, make_live_vault

from pivault.audit import entries, load_verifier, verify
from pivault.crypto import Keyring, PassphraseProvider
from pivault.detect import DetectUnavailable, RedisCounters, list_alerts
from pivault.detect.setup import audit_key_dir
from pivault.policy.tokens import TokenStore
from pivault.store import Database
from pivault.vault.home import load

pytestmark = pytest.mark.slow
REDIS_URL = os.environ.get("PIVAULT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver(WEBHOOK_SECRET.encode())
    yield r
    r.close()


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory,
          receiver: Receiver) -> Iterator[tuple[LiveVault, list[str]]]:
    try:
        RedisCounters(REDIS_URL, timeout=2).ping()
    except DetectUnavailable:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have Redis at {REDIS_URL}")
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    live, canaries = make_live_vault(tmp_path_factory.mktemp("drill"), REDIS_URL, receiver.url)
    try:
        live.token("officer-on-duty")  # serve refuses to start without a principal
        live.start(workers=2)
        yield live, canaries
    finally:
        live.stop()
        RedisCounters(REDIS_URL, namespace=load(live.home).vault_id).flush_namespace()


def _db(live: LiveVault) -> Database:
    return Database(load(live.home).store_url)


def _verify(live: LiveVault) -> Any:
    cfg = load(live.home)
    keyring = Keyring.open(cfg.keyring_path, PassphraseProvider(PASSPHRASE))
    verifier = load_verifier(audit_key_dir(cfg.keyring_path, cfg.vault_id))
    with _db(live) as db:
        return verify(db, verifier, keyring=keyring)


def _trail(live: LiveVault, principal: str, expected: int, timeout: float = 5.0) -> list[Any]:
    """The principal's audit entries, once the server's journal has chained ``expected`` of them."""
    deadline = time.monotonic() + timeout
    while True:
        with _db(live) as db:
            got = list(entries(db, principal=principal))
        if len(got) >= expected or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


def _wait_alert(receiver: Receiver, rule: str, principal: str | None = None,
                timeout: float = 5.0) -> tuple[float, dict[str, Any]] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t, alert in list(receiver.received):
            if alert["rule"] == rule and (principal is None or alert["principal"] == principal):
                return t, alert
        time.sleep(0.01)
    return None


def test_exfiltration_drill(drill: tuple[LiveVault, list[str]], receiver: Receiver) -> None:
    live, _ = drill
    token_id, token = live.token("officer-exfil")
    statuses: list[int] = []
    records = 0
    first_429: Any = None
    with live.client(token) as c:
        for resident in live.residents[:200]:  # as fast as one client can go
            r = c.post("/v1/residents/lookup", json={"id_number": resident["id_number"]})
            statuses.append(r.status_code)
            if r.status_code == 200:
                records += r.json()["count"]
            elif r.status_code == 429 and first_429 is None:
                first_429 = r
            elif r.status_code == 401:
                break
    # it got at most its budget, then refusals, then it was locked out
    assert records <= PER_MINUTE
    assert statuses.count(200) == records
    assert first_429 is not None
    problem = first_429.json()
    assert problem["code"] == "budget.exceeded"
    assert 1 <= int(first_429.headers["Retry-After"]) <= 62
    assert statuses[-1] == 401
    with live.client(token) as c:
        r = c.post("/v1/residents/lookup", json={"id_number": live.residents[0]["id_number"]})
        assert r.status_code == 401 and r.json()["code"] == "auth.suspended"
    with _db(live) as db:
        info = TokenStore(db).get(token_id)
        assert info is not None and info.state() == "suspended"
    # every request that reached the door, and each use of the token once suspended (the last of the
    # loop's and the one above), recorded under its principal
    uses = statuses.count(401) + 1
    everything = _trail(live, "officer-exfil", len(statuses) - statuses.count(401) + uses)
    assert [(e.operation, e.outcome) for e in everything if e.operation == "token.use"] == [
        ("token.use", "denied")] * uses
    trail = [e for e in everything if e.operation != "token.use"]
    # the alert reached the receiver within one second of the breach
    refused = [e for e in trail if e.outcome == "refused"]
    breach_time = refused[0].time
    got = _wait_alert(receiver, "budget.exceeded", "officer-exfil")
    assert got is not None, receiver.received
    assert got[0] - breach_time < 1.0
    assert got[1]["evidence"]["budget_rule"].startswith("principal.")
    assert _wait_alert(receiver, "token.suspended", "officer-exfil") is not None
    # the audit shows the whole attempt: every request that reached the door
    assert [e.outcome for e in trail] == ["ok" if s == 200 else "refused" for s in statuses if s != 401]
    assert sum(e.count for e in trail) == records
    report = _verify(live)
    assert report.ok, report


def test_budget_holds_across_two_servers_sharing_redis(drill: tuple[LiveVault, list[str]]) -> None:
    live, _ = drill
    second = live.start(workers=2)
    _, token = live.token("officer-two-servers")
    got = 0
    with live.client(token) as a, live.client(token, base=second) as b:
        for i, resident in enumerate(live.residents[200:240]):
            r = (a if i % 2 else b).post("/v1/residents/lookup", json={"id_number": resident["id_number"]})
            if r.status_code == 200:
                got += r.json()["count"]
            elif r.status_code == 401:
                break
    assert 0 < got <= PER_MINUTE


def test_canary_drill(drill: tuple[LiveVault, list[str]], receiver: Receiver) -> None:
    live, canaries = drill
    token_id, token = live.token("officer-curious")
    with live.client(token) as c:
        r = c.get(f"/v1/residents/{live.record_ids[5]}")
        assert r.status_code == 200
        r = c.get(f"/v1/residents/{canaries[0]}")
        assert r.status_code == 200  # answered like any other record
        assert r.json()["record"]["record_id"] == canaries[0]
        r = c.get(f"/v1/residents/{live.record_ids[6]}")
        assert r.status_code == 401 and r.json()["code"] == "auth.suspended"
    got = _wait_alert(receiver, "canary.read", "officer-curious")
    assert got is not None and got[1]["severity"] == "critical"
    assert got[1]["evidence"]["record_ids"] == [canaries[0]]
    with _db(live) as db:
        info = TokenStore(db).get(token_id)
        assert info is not None and info.state() == "suspended"
        assert any(a["rule"] == "canary.read" for a in list_alerts(db, severity="critical"))


def test_distributed_enumeration_drill(drill: tuple[LiveVault, list[str]], receiver: Receiver) -> None:
    live, _ = drill
    tokens = [live.token(f"officer-swarm-{i}")[1] for i in range(10)]
    per_token = PER_MINUTE - 1  # each stays under its own budget
    got = [0] * 10
    codes: list[str] = []
    lock = threading.Lock()

    def enumerate_(i: int) -> None:
        start = 240 + i * per_token
        with live.client(tokens[i]) as c:
            for resident in live.residents[start:start + per_token]:
                r = c.post("/v1/residents/lookup", json={"id_number": resident["id_number"]})
                with lock:
                    if r.status_code == 200:
                        got[i] += r.json()["count"]
                    else:
                        codes.append(f"{r.status_code}:{r.json()['code']}:{r.json().get('detail', '')}")

    threads = [threading.Thread(target=enumerate_, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(n <= PER_MINUTE for n in got)
    # the vault-wide limit stopped them ...
    assert codes
    assert all(c.startswith("429:budget.exceeded:") and "vault.records_per_minute" in c for c in codes)
    assert sum(got) <= VAULT_PER_MINUTE
    # ... and the global detector saw many principals enumerating together
    alert = _wait_alert(receiver, "global.distributed", timeout=10)
    assert alert is not None, [a["rule"] for _, a in receiver.received]
    assert alert[1]["evidence"]["principals"] >= 5
    assert _wait_alert(receiver, "budget.vault") is not None
    # nobody was suspended for the vault-wide limit
    with _db(live) as db:
        states = {t.principal: t.state() for t in TokenStore(db).list()}
    assert all(states[f"officer-swarm-{i}"] == "active" for i in range(10))
    assert _verify(live).ok


def _vault_without_redis(factory: pytest.TempPathFactory, name: str, population: int) -> LiveVault:
    """A vault whose servers share budgets in its counters file, with a principal (serve needs one)."""
    live, _ = make_live_vault(factory.mktemp(name), "", "http://127.0.0.1:9/unused",
                              population=population, canaries=0)
    live.token("officer-on-duty")
    return live


def test_budget_holds_across_workers_and_servers_sharing_a_counters_file(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """No Redis: the workers of a server, and a second server of the same vault, share one file."""
    live = _vault_without_redis(tmp_path_factory, "drill-file", 120)
    try:
        first = live.start(workers=2)
        second = live.start(workers=2)
        counters = live.home / "run" / "counters.db"
        assert counters.exists()
        banner = live.output(first)
        assert "shared by this node's workers, file" in banner
        token_id, token = live.token("officer-file-counters")
        statuses: list[int] = []
        lock = threading.Lock()

        def hammer(base: str, part: list[dict[str, Any]]) -> None:
            with live.client(token, base=base) as c:  # a connection each: both workers of each server
                for resident in part:
                    r = c.post("/v1/residents/lookup", json={"id_number": resident["id_number"]})
                    with lock:
                        statuses.append(r.status_code)

        people = live.residents[:120]
        threads = [threading.Thread(target=hammer, args=(base, people[i::6]))
                   for i, base in enumerate([first, second] * 3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        # 120 lookups from six connections over two servers of two workers: exactly the budget granted
        assert statuses.count(200) == PER_MINUTE, statuses
        assert statuses.count(429) >= 1 and set(statuses) <= {200, 429, 401}
        with _db(live) as db:
            info = TokenStore(db).get(token_id)
            assert info is not None and info.state() == "suspended"
        assert _verify(live).ok
    finally:
        live.stop()


def _lock_holder(path: Path, parent: int) -> int | None:
    """The child of ``parent`` holding an ``flock`` on ``path``, from ``/proc/locks``."""
    st = path.stat()
    here = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if "FLOCK" not in parts or "->" in parts or parts[5] != here:
            continue
        pid = int(parts[4])
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            return pid
    return None


def test_a_killed_audit_chainer_is_replaced_and_no_entry_is_lost(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Two workers leave their journals to the node's chainer; kill -9 it mid-session."""
    live = _vault_without_redis(tmp_path_factory, "drill-chainer", 40)
    try:
        base = live.start(workers=2)
        banner = live.output(base)
        assert "chained by the node's audit chainer process" in banner
        journal = live.home / "run" / "audit-journal"
        _, token = live.token("officer-chainer")
        statuses: list[int] = []
        with live.client(token) as c:
            for resident in live.residents[:6]:
                statuses.append(c.post("/v1/residents/lookup", json={"id_number": resident["id_number"]})
                                .status_code)
            assert list(journal.glob("*.chained"))  # the workers run in node mode
            server = live.servers[0][1].pid
            first = _lock_holder(journal / "chainer.lock", server)
            assert first is not None, Path("/proc/locks").read_text()
            os.kill(first, signal.SIGKILL)
            deadline = time.monotonic() + 20
            while (holder := _lock_holder(journal / "chainer.lock", server)) in (None, first):
                assert time.monotonic() < deadline, "the serving process did not replace the chainer"
                time.sleep(0.1)
            assert holder != first
            for resident in live.residents[6:14]:
                statuses.append(c.post("/v1/residents/lookup", json={"id_number": resident["id_number"]})
                                .status_code)
        # every answered lookup was recorded (a refused one, if the entries waited too long, was not)
        assert set(statuses) <= {200, 503} and statuses.count(200) >= 10, statuses
        trail = _trail(live, "officer-chainer", statuses.count(200))
        assert len(trail) == statuses.count(200), (len(trail), statuses)
        assert all(e.outcome == "ok" for e in trail)
        assert _verify(live).ok
    finally:
        live.stop()
    assert not list(journal.glob("*.journal"))  # the workers' last entries chained at shutdown
