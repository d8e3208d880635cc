"""Rewrap while the vault serves, and rewrap that crashes and resumes: nothing lost, all readable."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from keys_support import PASSPHRASE, ctx, provider, put_all, residents

from pivault.keys import jobs
from pivault.keys.rewrap import JOB, RewrapProgress, rewrap
from pivault.keys.rotate import retire_unused, rotate
from pivault.keys.shred import ShreddingRecordStore
from pivault.keys.sites import census
from pivault.store.db import Database
from pivault.vault import Vault


def _keys(vault: Vault) -> ShreddingRecordStore:
    assert isinstance(vault.store, ShreddingRecordStore)
    return vault.store


def _check_all(vault: Vault, expected: dict[str, dict[str, str]]) -> None:
    c = ctx()
    assert vault.store.count() == len(expected)
    for rid, p in expected.items():
        got = vault.get(rid, ctx=c)
        assert (got["name"], got["id_number"], got["address"]) == (p["name"], p["id_number"], p["address"])
        assert [r["record_id"] for r in vault.find(id_number=p["id_number"], ctx=c)] == [rid]


def test_rewrap_while_a_writer_and_a_reader_run(vault: Vault, store_url: str) -> None:
    kr = vault.keyring
    people = residents(260, seed=11)
    ids = put_all(vault, people[:200])
    expected = dict(zip(ids, people[:200], strict=True))
    old_field = kr.primary_key_id()
    rotate(kr, ["aead", "prf.id_number"])
    errors: list[BaseException] = []
    stop = threading.Event()
    lock = threading.Lock()

    def writer() -> None:
        db = Database(store_url)
        v = Vault(db, kr)
        c = ctx("writer")
        rng = random.Random(1)
        try:
            for p in people[200:]:
                rid = v.put(p, ctx=c)
                with lock:
                    expected[rid] = p
                target = rng.choice(ids)
                with lock:
                    new = dict(expected[target], address=rng.choice(people)["address"])
                v.update(target, {"address": new["address"]}, ctx=c)
                with lock:
                    expected[target] = new
                time.sleep(0.002)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            v.close()

    def reader() -> None:
        db = Database(store_url)
        v = Vault(db, kr)
        c = ctx("reader")
        rng = random.Random(2)
        n = 0
        try:
            while not stop.is_set() or n < 50:
                rid = rng.choice(ids)
                with lock:
                    idn = expected[rid]["id_number"]
                assert v.get(rid, ctx=c)["id_number"] == idn
                assert [r["record_id"] for r in v.find(id_number=idn, ctx=c)] == [rid]
                n += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            v.close()

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    seen: list[RewrapProgress] = []

    def slow(p: RewrapProgress) -> None:
        seen.append(p)
        time.sleep(0.01)  # let the writer and reader interleave with the batches

    report = rewrap(vault.db, kr, record_keys=_keys(vault).keys, batch_size=10, progress=slow)
    stop.set()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert report.complete and len(seen) >= 20
    # no value still needs the old field key, every record reads with its last written values
    assert census(vault.db, kr, record_keys=_keys(vault).keys).total(old_field) == 0
    retired = {r.keyset for r in retire_unused(vault.db, kr, record_keys=_keys(vault).keys)}
    assert retired == {"aead", "prf.id_number"}
    _check_all(vault, expected)


class _Crash(Exception):
    pass


def test_crash_between_batches_then_resume(vault: Vault) -> None:
    kr = vault.keyring
    people = residents(60, seed=12)
    expected = dict(zip(put_all(vault, people), people, strict=True))
    old = kr.primary_key_id()
    rotate(kr, ["aead", "prf.mobile"])

    def crash_after_three(p: RewrapProgress) -> None:
        if p.done >= 24:
            raise _Crash

    with pytest.raises(_Crash):
        rewrap(vault.db, kr, record_keys=_keys(vault).keys, batch_size=8, progress=crash_after_three)
    job = jobs.load_job(vault.db, JOB)
    assert job is not None and job.state == "running" and job.done == 24
    _check_all(vault, expected)  # half-way is a consistent, readable state
    report = rewrap(vault.db, kr, record_keys=_keys(vault).keys, batch_size=8)
    assert report.resumed_from.startswith("records:") and report.complete
    assert report.record_keys_rewrapped == 36  # the committed batches were done already
    assert census(vault.db, kr, record_keys=_keys(vault).keys).total(old) == 0
    retire_unused(vault.db, kr, record_keys=_keys(vault).keys)
    _check_all(vault, expected)


def test_crash_inside_a_batch_rolls_it_back(vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    kr = vault.keyring
    people = residents(40, seed=13)
    expected = dict(zip(put_all(vault, people), people, strict=True))
    # part of the store from before record keys: the batch that fails is upgrading it
    old = kr.primary_key_id()
    rotate(kr, ["aead", "prf.id_number"])
    real = jobs.save_progress
    calls = {"n": 0}

    def failing(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Crash  # after the batch's row updates, before its commit
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(jobs, "save_progress", failing)
    with pytest.raises(_Crash):
        rewrap(vault.db, kr, record_keys=_keys(vault).keys, batch_size=10)
    monkeypatch.setattr(jobs, "save_progress", real)
    _check_all(vault, expected)
    report = rewrap(vault.db, kr, record_keys=_keys(vault).keys, batch_size=10)
    assert report.complete and report.resumed_from == "records:" + sorted(expected)[19]
    assert census(vault.db, kr, record_keys=_keys(vault).keys).total(old) == 0
    retire_unused(vault.db, kr, record_keys=_keys(vault).keys)
    _check_all(vault, expected)


_KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from pivault.crypto import Argon2Params, Keyring, PassphraseProvider
    from pivault.keys.rewrap import rewrap
    from pivault.keys.shred import RecordKeyStore, record_key_store_url
    from pivault.store.db import Database
    kr = Keyring.open(sys.argv[1], PassphraseProvider(sys.argv[3], Argon2Params(1, 8, 1)))
    kr.record_keys = True
    keys = RecordKeyStore(record_key_store_url(kr.path), vault_id=kr.vault_id)
    db = Database(sys.argv[2])
    rewrap(db, kr, record_keys=keys, batch_size=5, progress=lambda p: time.sleep(0.05))
    print("finished")
""")


def test_kill_minus_nine_mid_rewrap_then_resume(vault: Vault, store_url: str, tmp_path: Path) -> None:
    kr = vault.keyring
    people = residents(150, seed=14)
    expected = dict(zip(put_all(vault, people), people, strict=True))
    old = kr.primary_key_id()
    rotate(kr, ["aead", "prf.name_birth"])
    script = tmp_path / "rewrap_child.py"
    script.write_text(_KILL_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.Popen([sys.executable, str(script), str(kr.path), store_url, PASSPHRASE],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = jobs.load_job(vault.db, JOB)
        if job is not None and job.done >= 40:
            break
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    out, err = child.communicate(timeout=30)
    assert b"finished" not in out, err.decode()[-2000:]
    job = jobs.load_job(vault.db, JOB)
    assert job is not None and job.state == "running" and 40 <= job.done < 150
    _check_all(vault, expected)
    report = rewrap(vault.db, kr, record_keys=_keys(vault).keys, batch_size=20)
    assert report.complete and report.resumed_from
    assert census(vault.db, kr, record_keys=_keys(vault).keys).total(old) == 0
    assert len(retire_unused(vault.db, kr, record_keys=_keys(vault).keys)) == 2
    _check_all(vault, expected)
    # a crash leaves at most orphan keys behind; garbage collection finds none it may not take
    assert _keys(vault).keys.collect_garbage(vault.db, grace_seconds=0, writers_stopped=True) == 0
    _check_all(vault, expected)


def test_a_record_replaced_between_reading_its_row_and_its_key_reads_as_its_new_version(
        vault: Vault) -> None:
    """The record and its key are two reads from two stores. An update that lands between them
    (new ciphertext under a new key, the old key dropped) must not look like tampering: the
    reader reads the row again and gets the new version."""
    from pivault.crypto.recordkeys import key_ref_of
    from pivault.store.records import RecordStore
    from pivault.vault.facade import decrypt_fields

    c = ctx()
    people = residents(3, seed=5)
    ids = put_all(vault, people)
    store = _keys(vault)
    stale = RecordStore.get(store, ids[0])  # the row alone, as the first of the two reads sees it
    assert stale is not None
    vault.update(ids[0], {"address": people[2]["address"]}, ctx=c)  # new record key; old one dropped
    old_ref = key_ref_of(stale.fields["name"])
    assert old_ref is not None and store.keys.get(ids[0], old_ref) is None  # the stale row's key is gone
    (fresh,) = store._attach([stale])
    got = decrypt_fields(vault.keyring, fresh)
    assert got["address"] == people[2]["address"] and got["id_number"] == people[0]["id_number"]
    # and the vault's own read agrees
    assert vault.get(ids[0], ctx=c)["address"] == people[2]["address"]


def test_a_rewrap_overtaken_by_a_newer_one_cannot_mark_the_index_rebuilt(vault: Vault) -> None:
    """Two rewraps after two rotations: the older run must not finish the newer run's job.

    The older run walks on under the keys it started with; had it marked the job done, the
    newer blind-index key would count as rebuilt everywhere, and retiring the older keys would
    leave every entry the older run wrote unsearchable (lookups miss, numbers register twice).
    """
    from pivault.crypto import Keyring
    from pivault.errors import PivaultError

    kr = vault.keyring
    people = residents(40, seed=16)
    expected = dict(zip(put_all(vault, people), people, strict=True))
    rotate(kr, ["prf.id_number"])
    keys = _keys(vault).keys
    overtaken: list[PivaultError] = []

    def crash(p: RewrapProgress) -> None:
        if p.done >= 8:
            raise _Crash

    def newer_run_starts(p: RewrapProgress) -> None:
        if p.done != 8:
            return
        # another operator, another process: one more rotation, and a rewrap that stops after a batch
        other = Keyring.open(kr.path, provider())
        rotate(other, ["prf.id_number"])
        own = Database(vault.db.url.raw)
        try:
            with pytest.raises(_Crash):
                rewrap(own, other, record_keys=keys, batch_size=8, progress=crash)
        finally:
            own.close()

    try:
        rewrap(vault.db, kr, record_keys=keys, batch_size=8, progress=newer_run_starts)
    except PivaultError as exc:
        overtaken.append(exc)
    assert [e.code for e in overtaken] == ["keys.job_superseded"]  # the older run stopped
    kr.reload()
    job = jobs.load_job(vault.db, JOB)
    assert job is not None and job.state == "running"  # the newer run's job is not done
    retire_unused(vault.db, kr, record_keys=keys)
    assert kr.index_versions("id_number") == 3  # nothing retired before the newer run is complete
    _check_all(vault, expected)
    # the newer run resumes and completes; only then are the older keys retired
    assert rewrap(vault.db, kr, record_keys=keys, batch_size=8).complete
    assert len(retire_unused(vault.db, kr, record_keys=keys)) == 2
    _check_all(vault, expected)
