"""Policy reload without restart reaches every worker; an invalid file changes nothing."""

from __future__ import annotations

import os
import signal
import ssl
import time
from datetime import date
from pathlib import Path

import httpx
import pytest
from api_support import (
    CHEAP,
    PASSPHRASE,
    REDIS_URL,
    Live,
    free_port,
    policy_for_tests,
    redis_available,
    start_server,
    stop,
)
from test_api_auth import assert_clean_problem
from test_api_workers import children

from pivault.api.app import PolicyHolder
from pivault.api.tls import make_dev_cert
from pivault.api.workers import balanced
from pivault.model import resident_id
from pivault.policy import Policy, PolicyError
from pivault.policy.tokens import TokenStore
from pivault.store.db import Database
from pivault.vault import init, load


def _lookup_status(live: Live, purpose: str) -> int:
    with live.client(live.tokens["dpo"], purpose=purpose) as c:  # a new connection each time
        return c.post("/v1/residents/lookup", json={"id_number": live.residents[0]["id_number"]}).status_code


def test_reload_applies_on_every_worker_and_refuses_invalid_files(live: Live) -> None:
    policy_file = live.home.parent / "policy.toml"
    original = policy_file.read_text(encoding="utf-8")
    try:
        # the dpo may not look up for "audit" once the policy says so
        narrowed = original.replace('purposes = ["data_subject_request", "audit"]',
                                    'purposes = ["data_subject_request"]', 1)
        assert narrowed != original
        assert all(_lookup_status(live, "audit") == 200 for _ in range(4))
        _write(policy_file, narrowed)
        with live.client(role="admin") as admin:
            r = admin.post("/v1/admin/policy/reload")
            assert r.status_code == 200, r.text
            assert {x["role"] for x in r.json()["roles"]} >= {"officer", "dpo", "admin"}
        assert all(_lookup_status(live, "audit") == 403 for _ in range(8))
        # an invalid file is refused, and the running policy stays as it was
        _write(policy_file, original.replace('operations = ["lookup", "read"]',
                                             'operations = ["lookup", "steal"]'))
        with live.client(role="admin") as admin:
            problem = assert_clean_problem(admin.post("/v1/admin/policy/reload"), live, 422)
        assert problem["code"] == "policy.invalid" and "steal" in problem["detail"]
        assert all(_lookup_status(live, "audit") == 403 for _ in range(4))
        # so is one that shows the officer the county beside the number's sequence and check character
        _write(policy_file, original.replace('id_number = "id_number_ends"', 'id_number = "mask"', 1)
               .replace('region_code = "region_province"', 'region_code = "none"', 1))
        with live.client(role="admin") as admin:
            problem = assert_clean_problem(admin.post("/v1/admin/policy/reload"), live, 422)
        assert problem["code"] == "policy.id_rebuild"
        assert problem["detail"].startswith("roles.officer, purpose 'identity_verification': ")
        assert all(_lookup_status(live, "audit") == 403 for _ in range(4))
        assert _lookup_status(live, "data_subject_request") == 200
        # and a valid file that every account of the host may write (any of them could have
        # widened it) is not taken either
        _write(policy_file, original)
        policy_file.chmod(0o666)
        with live.client(role="admin") as admin:
            problem = assert_clean_problem(admin.post("/v1/admin/policy/reload"), live, 422)
        assert problem["code"] == "policy.writable"
        assert all(_lookup_status(live, "audit") == 403 for _ in range(4))
    finally:
        policy_file.chmod(0o644)
        _write(policy_file, original)
        with live.client(role="admin") as admin:
            assert admin.post("/v1/admin/policy/reload").status_code == 200
    assert all(_lookup_status(live, "audit") == 200 for _ in range(4))


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def test_every_worker_takes_the_policy_the_reload_validated(tmp_path: Path) -> None:
    """Two workers' holders over one policy file and one reload marker.

    A worker that serves no request between a reload and a later edit of the file must
    take what was reloaded, not the edit nobody reloaded (a broader policy, or one it
    would refuse and so stay on the policy from before the reload).
    """
    original = Policy.default_text()
    narrowed = original.replace('purposes = ["data_subject_request", "audit"]',
                                'purposes = ["data_subject_request"]', 1)
    broader = original.replace('purposes = ["data_subject_request", "audit"]',
                               'purposes = ["data_subject_request", "audit", "identity_verification"]', 1)
    assert narrowed != original and broader != original
    path, marker = tmp_path / "policy.toml", tmp_path / "run" / "policy.reload"
    marker.parent.mkdir()
    _write(path, original)
    a, b, c = (PolicyHolder(Policy.load(path), path=path, marker=marker) for _ in range(3))
    _write(path, narrowed)
    assert a.reload().purposes_for("dpo") == ("data_subject_request",)
    invalid = original.replace('operations = ["lookup", "read"]', 'operations = ["lookup", "steal"]')
    for worker, edit in ((b, broader), (c, invalid)):
        _write(path, edit)  # edited after the reload, and not reloaded
        assert worker.current().purposes_for("dpo") == ("data_subject_request",)
    assert (marker.stat().st_mode & 0o777) == 0o600
    # the next reload of a valid file reaches the other worker as it was validated
    _write(path, broader)
    a.reload()
    _write(path, original)
    assert "identity_verification" in b.current().purposes_for("dpo")


def test_a_worker_started_later_takes_the_policy_last_accepted_not_the_file(tmp_path: Path) -> None:
    """``pivault serve`` with several workers replaces a worker that dies; the new one loaded the
    policy file, which may have been edited since the last reload (a broader policy nobody
    reloaded), or may hold the policy from before a reload (the reload's text is in the marker only
    if the file was edited back). Now serve hands the policy it checked at start to its workers
    through the reload marker, and every worker it starts — then or later — takes the marker's
    text: the policy the others run. A marker that is missing or damaged stops such a worker from
    starting rather than letting it serve the file's policy."""
    original = policy_for_tests()
    narrowed = original.replace('purposes = ["data_subject_request", "audit"]',
                                'purposes = ["data_subject_request"]', 1)
    assert narrowed != original
    # the holder of a worker started later, over a marker and a file edited since
    path, marker = tmp_path / "policy.toml", tmp_path / "run" / "policy.reload"
    marker.parent.mkdir()
    _write(path, original)
    PolicyHolder.publish(marker, narrowed)
    assert PolicyHolder.resume(marker, path=path).current().purposes_for("dpo") == ("data_subject_request",)
    marker.write_text(marker.read_text(encoding="utf-8").replace("data_subject_request", "audit", 1),
                      encoding="utf-8")
    with pytest.raises(PolicyError) as damaged:
        PolicyHolder.resume(marker, path=path)
    assert damaged.value.code == "policy.unreadable"
    marker.unlink()
    with pytest.raises(PolicyError):
        PolicyHolder.resume(marker, path=path)
    assert Policy.load(path).purposes_for("dpo") == ("data_subject_request", "audit")

    # a real server with two workers, both killed after a reload and an edit of the file nobody reloaded
    if not balanced():
        pytest.skip("workers are replaced by this service's supervisor on Linux only")
    if not redis_available():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have Redis at {REDIS_URL}")
        pytest.skip(f"two workers need shared budget counters: no Redis at {REDIS_URL}")
    home = tmp_path / "home"
    init(home, passphrase=PASSPHRASE, keyring_path=tmp_path / "keys" / "v.keyring", argon2=CHEAP,
         expected_population=1000)
    store = TokenStore(Database(load(home).store_url))
    admin = store.create("reload-admin", "admin", ["administration"], ttl_seconds=600)[1]
    dpo = store.create("reload-dpo", "dpo", ["data_subject_request", "audit"], ttl_seconds=600)[1]
    nobody = resident_id.make("110101", date(1990, 1, 1), 997)  # a valid number held by nobody
    served = tmp_path / "served.toml"
    _write(served, original)
    tls = make_dev_cert(tmp_path / "tls")
    port = free_port()
    proc = start_server(home, tls.certfile, tls.keyfile, port, tmp_path / "out", tmp_path / "err",
                        "--workers", "2", "--policy", str(served), redis_url=REDIS_URL)
    try:
        base = f"https://127.0.0.1:{port}"
        verify = ssl.create_default_context(cafile=str(tls.certfile))

        def statuses(n: int) -> set[int]:
            out = set()
            for _ in range(n):  # a new connection each time: the kernel spreads them over the workers
                with httpx.Client(base_url=base, verify=verify, timeout=20, headers={
                        "Authorization": f"Bearer {dpo}", "X-Purpose": "audit"}) as c:
                    out.add(c.post("/v1/residents/lookup", json={"id_number": nobody}).status_code)
            return out

        assert statuses(6) == {200}
        _write(served, narrowed)
        with httpx.Client(base_url=base, verify=verify, timeout=20,
                          headers={"Authorization": f"Bearer {admin}"}) as c:
            assert c.post("/v1/admin/policy/reload").status_code == 200
        assert statuses(8) == {403}
        _write(served, original)  # edited again, not reloaded
        workers = children(proc.pid)
        assert len(workers) == 2
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not ((now := children(proc.pid)) and len(now) == 2 and not set(now) & set(workers)):
            assert time.monotonic() < deadline, "the killed workers were not replaced"
            time.sleep(0.2)
        deadline = time.monotonic() + 60
        while True:  # the new workers answer once they have built their app
            try:
                with httpx.Client(base_url=base, verify=verify, timeout=5) as c:
                    if c.get("/healthz").status_code == 200:
                        break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert statuses(12) == {403}
        assert proc.poll() is None
    finally:
        stop(proc)
