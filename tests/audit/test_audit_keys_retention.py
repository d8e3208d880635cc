"""Audit key files, and retention that keeps the chain verifiable."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from pivault.audit import (
    MIN_RETENTION_DAYS,
    AuditError,
    AuditEvent,
    AuditKeyError,
    AuditLog,
    RetentionPolicy,
    VerifierKey,
    WriterKeys,
    create_audit_keys,
    entries,
    load_verifier,
    load_writer,
    prune,
    verify,
)
from pivault.audit.keys import PUBLIC_FILE, SIGNING_FILE, VERIFIER_FILE
from pivault.crypto import Keyring
from pivault.policy.context import AccessContext
from pivault.store import Database

DAY = 86400.0


def test_key_files_are_private(key_dir: Path, verifier: VerifierKey) -> None:
    for name in (SIGNING_FILE, VERIFIER_FILE, PUBLIC_FILE):
        assert stat.S_IMODE((key_dir / name).stat().st_mode) == 0o600
    assert b"PRIVATE" not in (key_dir / SIGNING_FILE).read_bytes()  # encrypted under the keyring


def test_keys_refuse_the_data_directory(tmp_path: Path, keyring: Keyring) -> None:
    with pytest.raises(AuditKeyError) as info:
        create_audit_keys(tmp_path / "data" / "keys", keyring, data_dir=tmp_path / "data")
    assert info.value.code == "audit.keys.location"


def test_keys_are_not_overwritten(key_dir: Path, keyring: Keyring, verifier: VerifierKey) -> None:
    with pytest.raises(AuditKeyError) as info:
        create_audit_keys(key_dir, keyring)
    assert info.value.code == "audit.keys.exists"


def test_keys_made_by_two_processes_at_once_are_one_set(tmp_path: Path, keyring: Keyring) -> None:
    # the first workers of a new vault open it together, and each finds no audit keys yet
    import threading

    for i in range(15):
        d = tmp_path / f"race{i}"
        start = threading.Barrier(2)
        outcomes: list[str] = []

        def make(d: Path = d, start: threading.Barrier = start, outcomes: list[str] = outcomes) -> None:
            start.wait(timeout=10)
            try:
                create_audit_keys(d, keyring)
                outcomes.append("made")
            except AuditKeyError as exc:
                outcomes.append(exc.code)

        threads = [threading.Thread(target=make) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(outcomes) == ["audit.keys.exists", "made"]
        # one set: what the writer signs, the public half the auditor holds accepts
        writer = load_writer(d, keyring)
        assert load_verifier(d).public.check_signature(writer.sign(b"checkpoint"), b"checkpoint")


def test_verifier_key_with_passphrase(tmp_path: Path, keyring: Keyring) -> None:
    d = tmp_path / "k2"
    create_audit_keys(d, keyring, verifier_passphrase=b"synthetic-auditor-secret")
    with pytest.raises(AuditKeyError):
        load_verifier(d)
    assert load_verifier(d, passphrase=b"synthetic-auditor-secret").public is not None
    # the verifier key can live elsewhere (the auditor's machine)
    moved = tmp_path / "auditor.key"
    (d / VERIFIER_FILE).rename(moved)
    load_verifier(d, verifier_file=moved, passphrase=b"synthetic-auditor-secret")


def test_signing_key_needs_the_keyring(key_dir: Path, verifier: VerifierKey, tmp_path: Path) -> None:
    from pivault.crypto import Argon2Params, PassphraseProvider

    other = Keyring.create(tmp_path / "o" / "k.json", PassphraseProvider(
        "other-synthetic-pass", Argon2Params(time_cost=1, memory_cost=8, parallelism=1)),
        expected_population=10**6)
    with pytest.raises(AuditKeyError) as info:
        load_writer(key_dir, other)
    assert info.value.code == "audit.keys.keyring"


def test_wrong_verifier_key_cannot_verify(tmp_path: Path, keyring: Keyring, log: AuditLog,
                                          ctx: AccessContext) -> None:
    log.append(AuditEvent.of(ctx, "read", "ok", ["r_1"]))
    stranger = create_audit_keys(tmp_path / "stranger", keyring)
    report = verify(log.db, stranger)
    assert not report.ok and report.problem == "checkpoint.signature"


def test_retention_floor() -> None:
    with pytest.raises(AuditError):
        RetentionPolicy(keep_days=365)
    assert RetentionPolicy().keep_days == MIN_RETENTION_DAYS


def test_prune_keeps_the_chain_verifiable(db: Database, keyring: Keyring, writer: WriterKeys,
                                          verifier: VerifierKey, ctx: AccessContext) -> None:
    clock = [time.time() - 5 * 365 * DAY]
    log = AuditLog(db, keyring, writer, checkpoint_every=10, checkpoint_seconds=1e9,
                   clock=lambda: clock[0])
    for i in range(35):  # 35 old entries, checkpoints at 10, 20, 30
        log.append(AuditEvent.of(ctx, "read", "ok", [f"r_{i}"]))
        clock[0] += 60
    clock[0] = time.time()
    for i in range(5):
        log.append(AuditEvent.of(ctx, "read", "ok", [f"r_new_{i}"]))
    result = prune(log, ctx)
    assert (result.through_seq, result.deleted) == (30, 30)
    report = verify(db, verifier, keyring=keyring)
    assert report.ok, report
    assert report.first_seq == 31
    pruned = [e for e in entries(db, operation="audit.prune")]
    assert pruned and pruned[0].detail["through"] == 30
    # nothing newer than the retention period is ever pruned
    assert prune(log, ctx).through_seq == 0
    # and appending carries on
    log.append(AuditEvent.of(ctx, "read", "ok", ["r_after"]))
    assert verify(db, verifier).ok
