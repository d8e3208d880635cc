"""Rewrap: move every ciphertext to the primary keys, online, resumable.

After a rotation, new writes use the new keys at once; what was written
before stays readable under the old ones. ``rewrap`` walks the store in
record-id order, a batch at a time, and for each record:

* a record key wrapped by an older field key is rewrapped (the record-key
  store only; the data row does not change);
* format-1 fields are re-encrypted: under a new record key when record keys
  are on (the record becomes shreddable), else under the primary field key;
* during a blind-index key rotation, index entries made with an older
  index key are recomputed from the decrypted values.

Online: every data change is a compare-and-swap on the record's ``name``
ciphertext (random per write, so any concurrent update changes it). A record
that changed under us is left alone: the writer that changed it used the
current keys. Each batch's changes and the checkpoint commit in one
transaction, so after a crash the job resumes at the last committed batch
and repeats nothing that would matter (work already done is skipped).
Associated data is preserved: record ids and field names do not change.

Other tables holding keyring ciphertexts (rejects, audit head, exports …,
see :mod:`pivault.keys.sites`) and the key files beside the keyring follow
in a second phase.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pivault.crypto import IntegrityError, Keyring
from pivault.crypto.recordkeys import key_ref_of
from pivault.keys import jobs
from pivault.keys.shred import RecordKeyStore
from pivault.keys.sites import FileSite, Site, sites
from pivault.store.db import Database
from pivault.store.records import RecordStore
from pivault.vault.facade import index_inputs

__all__ = ["JOB", "RewrapProgress", "RewrapReport", "index_values", "rewrap", "target_of"]

JOB = "rewrap"
FIELDS = RecordStore.FIELDS
_V1_BYTE = b"\x01"
#: damaged records named in a report (the count has them all)
DAMAGED_IDS_KEPT = 100
_SELECT = "SELECT record_id, name, id_number, mobile, address, notes FROM records"


@dataclass(frozen=True)
class RewrapProgress:
    """Passed to the progress callback after each committed batch."""

    phase: str  # "records", "recheck", "other", "files"
    done: int
    total: int


@dataclass
class RewrapReport:
    """What a rewrap run did. ``complete`` once every phase finished."""

    records_seen: int = 0
    records_reencrypted: int = 0
    records_upgraded: int = 0
    record_keys_rewrapped: int = 0
    indexes_rebuilt: int = 0
    #: records whose index entries were written before check tags existed, tagged now
    records_tagged: int = 0
    conflicts: int = 0
    #: records whose key is gone (erased, or a writer that crashed before its record committed)
    unreadable: int = 0
    #: records whose stored key or fields fail authentication (altered, moved from another record,
    #: damaged on disk): left as they are, and named, so that one of them cannot stop the walk, and
    #: the key that wraps them stays in use (the census counts them) until they are dealt with
    damaged: int = 0
    damaged_record_ids: list[str] = field(default_factory=list)
    other_values_rewrapped: int = 0
    files_rewrapped: int = 0
    #: key files beside the keyring whose ciphertext no key opens (damaged or replaced): left as
    #: they are, and named by the command line, since a signing key there no longer works
    files_unreadable: list[str] = field(default_factory=list)
    resumed_from: str = ""
    complete: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def target_of(keyring: Keyring) -> dict[str, Any]:
    """The key state a rewrap aims at; a rotation in between restarts the job."""
    return {
        "aead": keyring.primary_key_id("aead"),
        "prf": {n: keyring.primary_key_id(f"prf.{n}") for n in keyring.index_names},
        "record_keys": bool(keyring.record_keys),
    }


def _index_rotating(keyring: Keyring) -> bool:
    return any(len(keyring.key_ids(f"prf.{n}")) > 1 for n in keyring.index_names)


def index_values(keyring: Keyring, plain: dict[str, str]) -> dict[str, bytes]:
    """The blind-index entries of a record from its (normalised) plaintext fields."""
    return {name: keyring.blind_index(name, v) for name, v in index_inputs(keyring, plain).items()}


@dataclass
class _Plan:
    record_id: str
    old_name: bytes
    new_fields: dict[str, bytes] | None = None
    new_key: bytes | None = None
    new_index: dict[str, bytes] | None = None
    new_tags: dict[str, bytes] = field(default_factory=dict)
    tags_only: bool = False
    upgraded: bool = False


def _in(db: Database, ids: Sequence[str]) -> tuple[str, tuple[Any, ...]]:
    if db.dialect == "postgresql":
        return "= ANY(?)", (list(ids),)
    return f"IN ({','.join('?' * len(ids))})", tuple(ids)


class _Rewrapper:
    def __init__(self, db: Database, keyring: Keyring, keys: RecordKeyStore | None,
                 report: RewrapReport,
                 index_fn: Callable[[Keyring, dict[str, str]], dict[str, bytes]]) -> None:
        self.db = db
        self.kr = keyring
        self.keys = keys
        self.report = report
        self.index_fn = index_fn
        self.primary = keyring.primary_key_id("aead")
        self.rotating_index = _index_rotating(keyring)
        # a rebuilt entry gets its check tag again (the tag is of the value, not of the index
        # key), and entries written before tags existed get theirs
        from pivault.vault.checks import load_check_tags

        self.checks = load_check_tags(db, keyring)
        self._damaged_seen: set[str] = set()
        if keyring.record_keys and keys is None:
            raise ValueError("record keys are on but no record-key store was given")

    def _indexes_of(self, ids: Sequence[str]) -> dict[str, dict[str, bytes]]:
        out: dict[str, dict[str, bytes]] = {}
        cond, params = _in(self.db, ids)
        for rid, name, value in self.db.query(
                f"SELECT record_id, index_name, value FROM blind_index WHERE record_id {cond}", params):
            out.setdefault(rid, {})[name] = bytes(value)
        return out

    def _damaged(self, record_id: str) -> None:
        rep = self.report
        if record_id not in self._damaged_seen:  # the recheck may meet it again
            self._damaged_seen.add(record_id)
            rep.damaged += 1
            if len(rep.damaged_record_ids) < DAMAGED_IDS_KEPT:
                rep.damaged_record_ids.append(record_id)

    def _untagged(self, ids: Sequence[str]) -> set[str]:
        cond, params = _in(self.db, ids)
        return {r[0] for r in self.db.query(
            f"SELECT DISTINCT record_id FROM blind_index WHERE record_id {cond} AND tag IS NULL", params)}

    def batch(self, rows: list[tuple[Any, ...]], job: jobs.Job, phase: str) -> None:
        kr, rep = self.kr, self.report
        ids = [r[0] for r in rows]
        untagged = self._untagged(ids)
        stored_keys: dict[tuple[str, bytes], bytes] = {}
        refs: dict[str, bytes] = {}
        for r in rows:
            ref = key_ref_of(bytes(r[1])) if r[1] is not None else None
            if ref is not None:
                refs[r[0]] = ref
        if refs and self.keys is not None:
            stored_keys = self.keys.get_many(list(refs.items()))
        current_index = self._indexes_of(ids) if self.rotating_index else {}
        plans: list[_Plan] = []
        key_rewraps: list[tuple[str, bytes, bytes]] = []
        for r in rows:
            rid = r[0]
            fields = {f: bytes(v) for f, v in zip(FIELDS, r[1:6], strict=True) if v is not None}
            rep.records_seen += 1
            ref = refs.get(rid)
            stored = stored_keys.get((rid, ref)) if ref is not None else None
            if ref is not None and stored is None:
                rep.unreadable += 1  # erased (key destroyed) or written by a process that crashed
                continue
            # a cell emptied or cut short (by hand, by damage) is damage like any other, not a crash
            v1 = {f: ct for f, ct in fields.items() if ct[:1] == _V1_BYTE}
            upgrade = bool(v1) and kr.record_keys
            try:
                reencrypt = not upgrade and any(kr.key_id_of(ct) != self.primary for ct in v1.values())
            except IntegrityError:
                self._damaged(rid)
                continue
            if stored is not None:
                try:
                    if kr.record_key_id(stored) != self.primary:
                        key_rewraps.append((rid, stored, kr.rewrap_record_key(rid, stored)))
                except IntegrityError:
                    self._damaged(rid)
                    continue
            if not (upgrade or reencrypt or self.rotating_index or rid in untagged):
                continue
            try:
                plain_b = kr.decrypt_many(rid, fields, record_key=stored)
            except IntegrityError:
                self._damaged(rid)
                continue
            plan = _Plan(rid, fields["name"])
            if upgrade or reencrypt:
                new_fields, new_key = kr.encrypt_record(rid, plain_b)
                plan.new_fields, plan.new_key, plan.upgraded = new_fields, new_key, upgrade
            plain = {f: v.decode("utf-8") for f, v in plain_b.items()}
            if self.rotating_index:
                idx = self.index_fn(kr, plain)
                if idx != current_index.get(rid, {}):
                    plan.new_index = idx
            if plan.new_index is not None or rid in untagged:
                inputs = index_inputs(kr, plain)
                names = plan.new_index if plan.new_index is not None else inputs
                plan.new_tags = {n: self.checks.tag(n, rid, inputs[n]) for n in names if n in inputs}
                plan.tags_only = plan.new_index is None
            if plan.new_fields is not None or plan.new_index is not None or plan.tags_only:
                plans.append(plan)
        if key_rewraps and self.keys is not None:
            rep.record_keys_rewrapped += self.keys.rewrap_many(key_rewraps)
        new_keys = [(p.record_id, p.new_key) for p in plans if p.new_key is not None]
        if new_keys and self.keys is not None:
            self.keys.put_many(new_keys)  # committed before the rows that need them
        failed: list[_Plan] = []
        db = self.db
        with db.transaction():
            for p in plans:
                if p.new_fields is not None:
                    nf = p.new_fields
                    cur = db.execute(
                        "UPDATE records SET name = ?, id_number = ?, mobile = ?, address = ?, notes = ?"
                        " WHERE record_id = ? AND name = ?",
                        (*(nf.get(f) for f in FIELDS), p.record_id, p.old_name))
                else:
                    cur = db.execute("UPDATE records SET name = name WHERE record_id = ? AND name = ?",
                                     (p.record_id, p.old_name))
                if cur.rowcount != 1:
                    failed.append(p)
                    continue
                if p.new_index is not None:
                    db.execute("DELETE FROM blind_index WHERE record_id = ?", (p.record_id,))
                    db.executemany(
                        "INSERT INTO blind_index (index_name, value, record_id, tag) VALUES (?, ?, ?, ?)",
                        [(n, v, p.record_id, p.new_tags.get(n)) for n, v in p.new_index.items()])
                    rep.indexes_rebuilt += 1
                elif p.tags_only:
                    # the entries as they are, each given the tag of its value
                    db.executemany("UPDATE blind_index SET tag = ? WHERE record_id = ? AND index_name = ?"
                                   " AND tag IS NULL",
                                   [(t, p.record_id, n) for n, t in p.new_tags.items()])
                    rep.records_tagged += 1
                if p.new_fields is not None:
                    if p.upgraded:
                        rep.records_upgraded += 1
                    else:
                        rep.records_reencrypted += 1
            jobs.save_progress(db, job, phase=phase, cursor=rows[-1][0], add_done=len(rows))
        rep.conflicts += len(failed)
        if self.keys is not None:
            for p in failed:
                if p.new_key is not None:
                    self.keys.delete_ref(p.record_id, p.new_key[:4])

    def other_site(self, site: Site) -> None:
        db, kr = self.db, self.kr
        if not db.table_exists(site.table):
            return
        keys_sql = ", ".join(site.key_columns)
        col = site.column
        if db.dialect == "sqlite":
            cond = f"substr({col}, 1, 2) = x'0101' AND substr({col}, 3, 4) <> ?"
        else:
            cond = f"substring({col} from 1 for 2) = '\\x0101'::bytea AND substring({col} from 3 for 4) <> ?"
        where = " AND ".join(f"{c} = ?" for c in site.key_columns)
        after = f"({keys_sql}) > ({', '.join('?' * len(site.key_columns))})"
        last: tuple[Any, ...] | None = None
        while True:  # a page at a time, in key order: the table may be large (import rejects)
            page = "" if last is None else f" AND {after}"
            rows = db.query(f"SELECT {keys_sql}, {col} FROM {site.table} WHERE {cond}{page}"
                            f" ORDER BY {keys_sql} LIMIT 500",
                            (self.primary.to_bytes(4, "big"), *(last or ())))
            if not rows:
                return
            last = tuple(rows[-1][:-1])
            with db.transaction():
                for row in rows:
                    keyvals, old = row[:-1], bytes(row[-1])
                    rid, fld = site.associated(keyvals)
                    try:
                        new = kr.encrypt(rid, fld, kr.decrypt(rid, fld, old))
                    except IntegrityError:
                        self.report.unreadable += 1
                        continue
                    cur = db.execute(f"UPDATE {site.table} SET {col} = ? WHERE {where} AND {col} = ?",
                                     (new, *keyvals, old))
                    if cur.rowcount == 1:
                        self.report.other_values_rewrapped += 1
                    else:
                        self.report.conflicts += 1


def rewrap(
    db: Database, keyring: Keyring, *, record_keys: RecordKeyStore | None = None,
    files: Sequence[FileSite] = (), batch_size: int = 500,
    progress: Callable[[RewrapProgress], None] | None = None,
    index_fn: Callable[[Keyring, dict[str, str]], dict[str, bytes]] = index_values,
) -> RewrapReport:
    """Bring every ciphertext under the primary keys; see the module documentation.

    Resumes an interrupted run that aimed at the same keys; starts over if
    a key was rotated since. Safe to run while the vault serves reads and
    writes.
    """
    t0 = time.monotonic()
    report = RewrapReport()
    target = target_of(keyring)
    job = jobs.load_job(db, JOB)
    if job is None or job.state != "running" or job.target != target:
        job = jobs.start_job(db, JOB, target, "records")
    else:
        report.resumed_from = f"{job.phase}:{job.cursor}"
    w = _Rewrapper(db, keyring, record_keys, report, index_fn)
    total = RecordStore(db).count()

    def tell(phase: str, done: int, of: int) -> None:
        if progress is not None:
            progress(RewrapProgress(phase, done, of))

    if job.phase == "records":
        while True:
            rows = db.query(_SELECT + " WHERE record_id > ? ORDER BY record_id LIMIT ?",
                            (job.cursor, batch_size))
            if not rows:
                break
            w.batch(rows, job, "records")
            tell("records", job.done, total)
        with db.transaction():
            jobs.save_progress(db, job, phase="recheck", cursor="")
    if job.phase == "recheck":
        # Records written during the pass by a process that had not yet
        # reloaded the keyring may carry old index values: look again at
        # everything changed since the job began.
        if w.rotating_index:
            while True:
                rows = db.query(_SELECT + " WHERE record_id > ? AND updated_at >= ? ORDER BY record_id"
                                " LIMIT ?", (job.cursor, job.started_at - 1.0, batch_size))
                if not rows:
                    break
                w.batch(rows, job, "recheck")
                tell("recheck", job.done, total)
        with db.transaction():
            jobs.save_progress(db, job, phase="other", cursor="")
    if job.phase == "other":
        for site in sites():
            w.other_site(site)
        tell("other", job.done, total)
        for fs in files:
            ct = fs.read()
            if ct is not None and ct[:1] == b"\x01":
                try:
                    if keyring.key_id_of(ct) != w.primary:
                        if fs.rewrap(keyring):
                            report.files_rewrapped += 1
                        else:
                            report.files_unreadable.append(fs.path.name)
                except IntegrityError:
                    report.files_unreadable.append(fs.path.name)
        with db.transaction():
            jobs.save_progress(db, job, phase="done", cursor="", finished=True,
                               detail={"index_rebuilt": w.rotating_index})
        tell("files", job.done, total)
    report.complete = job.state == "done"
    report.seconds = time.monotonic() - t0
    return report


def rewrap_job(db: Database) -> jobs.Job | None:
    return jobs.load_job(db, JOB)
