"""Checkpoints of long key jobs (rewrap, index rebuild), kept in the data store.

A job's progress lives beside the data it walks, so a restored backup
carries a checkpoint consistent with its rows, and a crashed job resumes
where its last committed batch ended. The table holds key ids and record
ids only, never a value.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from pivault.errors import ConfigError, PivaultError
from pivault.store.db import Database
from pivault.store.migrations import Migration, register

__all__ = ["Job", "load_job", "save_progress", "start_job"]

_SQL = """
CREATE TABLE key_jobs (
    job TEXT NOT NULL PRIMARY KEY,
    state TEXT NOT NULL,
    target TEXT NOT NULL,
    phase TEXT NOT NULL,
    cursor TEXT NOT NULL,
    done BIGINT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION,
    detail TEXT NOT NULL)
"""

register(Migration("keys", 1, "key lifecycle jobs: rewrap and index rebuild checkpoints", _SQL, _SQL))


@dataclass
class Job:
    """One job's row: what it aims at (key ids), where it is, and counts."""

    job: str
    state: str  # "running" or "done"
    target: dict[str, Any]
    phase: str
    cursor: str
    done: int
    started_at: float
    updated_at: float
    finished_at: float | None
    detail: dict[str, Any]


_COLS = "job, state, target, phase, cursor, done, started_at, updated_at, finished_at, detail"


def _ensure(db: Database) -> None:
    if not db.table_exists("key_jobs"):
        raise ConfigError("the store's schema is older than this pivault (no key_jobs table)",
                          code="store.schema", hint="run `pivault migrate` (back up first)")


def load_job(db: Database, name: str) -> Job | None:
    if not db.table_exists("key_jobs"):
        return None
    row = db.query_one(f"SELECT {_COLS} FROM key_jobs WHERE job = ?", (name,))
    if row is None:
        return None
    return Job(str(row[0]), str(row[1]), json.loads(row[2]), str(row[3]), str(row[4]), int(row[5]),
               float(row[6]), float(row[7]), None if row[8] is None else float(row[8]), json.loads(row[9]))


def start_job(db: Database, name: str, target: dict[str, Any], phase: str) -> Job:
    """A fresh job row (replacing a finished or outdated one)."""
    now = time.time()
    _ensure(db)
    with db.transaction():
        db.execute("DELETE FROM key_jobs WHERE job = ?", (name,))
        db.execute(f"INSERT INTO key_jobs ({_COLS}) VALUES (?, 'running', ?, ?, '', 0, ?, ?, NULL, '{{}}')",
                   (name, json.dumps(target, sort_keys=True), phase, now, now))
    job = load_job(db, name)
    assert job is not None
    return job


def save_progress(db: Database, job: Job, *, phase: str | None = None, cursor: str | None = None,
                  add_done: int = 0, finished: bool = False, detail: dict[str, Any] | None = None) -> None:
    """Record progress; call inside the batch's transaction so both commit together.

    Only into the run's own row: if another run restarted the job since (after a rotation),
    this run raises ``keys.job_superseded`` and its batch is undone with the transaction. Its
    progress, counted under keys older than the new run's, would otherwise move the new run's
    cursor past records it never saw, or mark its job done.
    """
    if phase is not None:
        job.phase = phase
    if cursor is not None:
        job.cursor = cursor
    job.done += add_done
    job.updated_at = time.time()
    if detail is not None:
        job.detail.update(detail)
    if finished:
        job.state = "done"
        job.finished_at = job.updated_at
    cur = db.execute("UPDATE key_jobs SET state = ?, phase = ?, cursor = ?, done = ?, updated_at = ?,"
                     " finished_at = ?, detail = ? WHERE job = ? AND started_at = ? AND target = ?",
                     (job.state, job.phase, job.cursor, job.done, job.updated_at, job.finished_at,
                      json.dumps(job.detail, sort_keys=True), job.job, job.started_at,
                      json.dumps(job.target, sort_keys=True)))
    if cur.rowcount != 1:
        raise PivaultError(f"the {job.job} job was restarted by another run (a key was rotated since"
                           " this one began); this run stops", code="keys.job_superseded",
                           hint="let the newer run finish; run the command again to resume it")
