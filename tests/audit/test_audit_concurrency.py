"""Several worker processes appending at once keep one consistent chain."""

from __future__ import annotations

import multiprocessing as mp

from pivault.audit import AuditEvent, AuditLog, VerifierKey, WriterKeys, entries, verify
from pivault.crypto import Keyring
from pivault.policy.context import AccessContext
from pivault.store import Database

WORKERS = 4
PER_WORKER = 60


def _worker(url: str, keyring: Keyring, writer: WriterKeys, n: int, batch: int) -> None:
    db = Database(url)
    log = AuditLog(db, keyring, writer, checkpoint_every=25)
    pid = mp.current_process().name
    ctx = AccessContext(principal=f"worker-{pid}", role="clerk", purpose="load-test")
    i = 0
    while i < n:
        size = min(batch, n - i)
        log.append_many([AuditEvent.of(ctx, "read", "ok", [f"r_{pid}_{i + j}"]) for j in range(size)])
        i += size
    db.close()


def test_concurrent_processes_one_chain(store_url: str, db: Database, keyring: Keyring,
                                        writer: WriterKeys, verifier: VerifierKey) -> None:
    fork = mp.get_context("fork")  # children inherit the opened keyring (it refuses pickling)
    procs = [fork.Process(target=_worker, args=(store_url, keyring, writer, PER_WORKER, 1 + w % 3),
                          name=str(w)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    report = verify(db, verifier, keyring=keyring)
    assert report.ok, report
    assert report.checked == WORKERS * PER_WORKER
    seen = [e.principal for e in entries(db)]
    assert {p: seen.count(p) for p in set(seen)} == {f"worker-{w}": PER_WORKER for w in range(WORKERS)}


def test_verify_while_workers_append(store_url: str, db: Database, keyring: Keyring,
                                     writer: WriterKeys, verifier: VerifierKey) -> None:
    """A DPO runs ``audit verify`` on a busy vault: what is being written is not tampering."""
    fork = mp.get_context("fork")
    procs = [fork.Process(target=_worker, args=(store_url, keyring, writer, 4 * PER_WORKER, 1),
                          name=str(w)) for w in range(2)]
    for p in procs:
        p.start()
    reports = []
    while any(p.is_alive() for p in procs) or not reports:
        reports.append(verify(db, verifier, keyring=keyring))
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    bad = [r for r in reports if not r.ok]
    assert not bad, bad[0]
    assert len(reports) > 1, "the verifier never ran while the workers wrote"
    assert verify(db, verifier, keyring=keyring).checked == 2 * 4 * PER_WORKER
