"""``pivault restore``: a verified backup into an empty vault, all or nothing.

Refused before anything is touched: a backup whose signature or any
checksum fails, a backup of another vault, a store that is not empty (it
holds records, audit entries or any table pivault does not know: a ransom
note counts). ``quarantine=True`` first moves a damaged store aside (SQLite:
the files are renamed; PostgreSQL: its tables move to a schema of their
own), keeping it as evidence, and restores into the emptied place.

Given the record-key store, the restore leaves no record that silently
cannot be opened. A row whose record has no key at all was erased since
the backup, and is deleted again (crypto-shredding is never undone by a
restore). A row whose record still has a key, but not the one its
ciphertext names, was corrected since: the correction dropped the key of
the version the backup holds. That key is put back from the record-key
backup given with the data backup, and only for records that still hold a
key; where no copy of it exists the restore is refused, touching nothing,
unless ``keep_unreadable`` asks to keep such rows and list them.

After the rows are back the schema is brought forward (``migrate``), so a
backup made by an older pivault restores into a newer one. An audit trail
salvaged from the quarantined store can be appended when it continues the
backup's chain (``salvage=True``, :func:`salvage_audit_trail`): what happened
through the door after the backup (the wipe itself, if it went through the
door) stays on the record, and ``audit verify`` checks it with the rest.

All of that is done to the restored rows before they take the store's
place, so a crash leaves the old store or the restored one whole.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import sqlite3
import struct
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pivault.backup.backup import ident
from pivault.backup.manifest import Container
from pivault.backup.signing import BackupError, VerifyKey
from pivault.crypto import IntegrityError, Keyring
from pivault.crypto.recordkeys import KEY_REF_BYTES, RECORD_KEY_BYTES, RecordKey, key_ref_of
from pivault.errors import ConfigError
from pivault.keys import seen
from pivault.keys.events import KeyEvents, noop
from pivault.keys.shred import RecordKeyStore
from pivault.store.db import Database, StoreError, parse_url
from pivault.store.migrations import migrate, needs_migration, pending

__all__ = [
    "RecordKeysReport",
    "RestoreReport",
    "erased_on_record",
    "restore",
    "restore_record_keys",
    "salvage_audit_trail",
    "salvage_quarantined",
    "verify_backup",
]

#: tables that a freshly initialised, still empty vault already has rows in
_BOOKKEEPING = {"schema_migrations", "vault_meta", "keyring_seen"}
#: rows of a store being restored, read before they are committed: (sql with ``?``, params) -> rows
Query = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
#: the record ids an error names at most: enough to look one up, short enough for one line
_IDS_IN_ERROR = 3
#: what a restore does to the restored rows before they take the store's place:
#: (restored store, damaged store or None, its PostgreSQL schema, the quarantine's name)
Finish = Callable[[Database, Database | None, str | None, str | None], None]


@dataclass
class RestoreReport:
    backup_id: str
    vault_id: str
    backend: str
    counts: dict[str, int]
    quarantined: str | None = None
    migrated: list[str] = field(default_factory=list)
    #: records deleted after the restore because their record key is gone (erased since)
    erased_since_backup: int | None = None
    #: records corrected since the backup, back at their backed-up version, whose key was put back
    #: from the record-key backup (None: no record-key store was given, nothing was checked)
    corrected_since_backup: int | None = None
    #: their record ids: the corrections made since the backup are undone and must be made again
    corrected_record_ids: list[str] = field(default_factory=list)
    #: records corrected since the backup whose backed-up version has no key anywhere, kept only
    #: because ``keep_unreadable`` was given: they cannot be opened
    unreadable_record_ids: list[str] = field(default_factory=list)
    #: tables in the backup that pivault's schema does not have (PostgreSQL): left out of the restore
    not_restored: list[str] = field(default_factory=list)
    #: audit entries the damaged store wrote after the backup, appended to the restored trail
    salvaged_audit_entries: int = 0
    #: why the damaged store's audit entries after the backup were not salvaged (they stay with it)
    salvage_refused: str | None = None
    #: tokens revoked, or suspended, after the backup (the damaged store shows it): kept so
    tokens_kept_revoked: list[str] = field(default_factory=list)
    tokens_kept_suspended: list[str] = field(default_factory=list)
    #: tokens active as the backup had them, with no damaged store to tell of a revocation since
    #: (None: there was one, and what it shows was kept)
    tokens_unchecked: int | None = None
    #: when the backup was taken (UTC, from its signed manifest)
    created: str = ""
    #: data backups of this vault taken after this one, newest first, as the record-key store knows
    #: them: (backup id, when); restoring this one loses what they hold
    newer_backups: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"backup_id": self.backup_id, "vault_id": self.vault_id, "backend": self.backend,
                "created": self.created,
                "newer_backups": [{"backup_id": b, "created": t} for b, t in self.newer_backups],
                "counts": self.counts, "quarantined": self.quarantined, "migrated": self.migrated,
                "erased_since_backup": self.erased_since_backup,
                "corrected_since_backup": self.corrected_since_backup,
                "corrected_record_ids": self.corrected_record_ids,
                "unreadable": len(self.unreadable_record_ids),
                "unreadable_record_ids": self.unreadable_record_ids, "not_restored": self.not_restored,
                "salvaged_audit_entries": self.salvaged_audit_entries,
                "salvage_refused": self.salvage_refused, "tokens_kept_revoked": self.tokens_kept_revoked,
                "tokens_kept_suspended": self.tokens_kept_suspended,
                "tokens_unchecked": self.tokens_unchecked, "seconds": round(self.seconds, 3)}

    def restore_detail(self) -> dict[str, Any]:
        """For the ``backup.restore`` audit entry: what was restored, and what was kept of since.

        When the backup was taken and whether newer ones were, why the damaged
        store's entries were not salvaged, which tokens revoked or suspended
        after the backup stayed so (ids of tokens, never a secret).
        """
        out: dict[str, Any] = {"salvage_refused": self.salvage_refused} if self.salvage_refused else {}
        if self.created:
            out["taken"] = self.created
        if self.newer_backups:
            out["newer_backups"] = len(self.newer_backups)
            out["newest_backup"] = self.newer_backups[0][0]
        if self.tokens_kept_revoked:
            out["tokens_kept_revoked"] = self.tokens_kept_revoked
        if self.tokens_kept_suspended:
            out["tokens_kept_suspended"] = self.tokens_kept_suspended
        if self.tokens_unchecked:
            out["tokens_unchecked"] = self.tokens_unchecked
        return out

    def audit_detail(self) -> dict[str, Any]:
        """The record-key facts for the ``backup.restore`` audit entry.

        Counts, and the ids only of records left unreadable: those are few,
        and each is a resident whose data must be collected again, which the
        trail must keep. Corrected records can run to many; the report lists them.
        """
        return {"erased_since_backup": self.erased_since_backup,
                "corrected_since_backup": self.corrected_since_backup,
                "unreadable": len(self.unreadable_record_ids),
                "unreadable_records": list(self.unreadable_record_ids)}


def verify_backup(path: str | os.PathLike[str], key: VerifyKey, *, vault_id: str | None = None,
                  deep: bool = False) -> dict[str, Any]:
    """Check a backup without restoring it: signature, checksums, and with ``deep`` its contents.

    ``deep`` opens a SQLite copy in a temporary file (integrity check, row
    counts against the manifest); binary COPY streams are checked by size
    and digest only.
    """
    with Container.open(path) as c:
        c.verify(key, vault_id=vault_id)
        out: dict[str, Any] = {"ok": True, "backup_id": c.manifest["backup_id"], "vault_id": c.vault_id,
                               "kind": c.kind, "created": c.manifest["created"],
                               "counts": c.manifest.get("counts"), "files": len(c.manifest["files"]),
                               "signing_key": key.fingerprint}
        if deep and c.kind == "data" and c.manifest.get("backend") == "sqlite":
            with tempfile.TemporaryDirectory(prefix=".pivault-verify-") as d:
                db = c.extract("data/vault.db", Path(d) / "vault.db")
                _check_sqlite_copy(db, c.manifest)
            out["deep"] = "sqlite integrity and row counts match"
        return out


def _check_sqlite_copy(path: Path, manifest: dict[str, Any]) -> None:
    conn = sqlite3.connect(path)
    try:
        if conn.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            raise BackupError("the database in the backup fails SQLite's integrity check",
                              code="backup.corrupt")
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                             " AND name NOT LIKE 'sqlite_%'")]
        listed: dict[str, Any] = manifest["tables"]
        if set(tables) != set(listed) or any(
                [r[1] for r in conn.execute(f"PRAGMA table_info({ident(t)})")] != listed[t]["columns"]
                for t in tables):
            raise BackupError("the database in the backup does not hold the tables and columns its "
                              "manifest lists", code="backup.corrupt")
        for t, n in manifest.get("counts", {}).items():
            got = conn.execute(f"SELECT COUNT(*) FROM {ident(t)}").fetchone()[0]
            if int(got) != int(n):
                raise BackupError(f"table {table_label(t)} holds {got} rows, the manifest says {n}",
                                  code="backup.corrupt")
        row = conn.execute("SELECT value FROM vault_meta WHERE key = 'vault_id'").fetchone()
        if row is None or row[0] != manifest["vault_id"]:
            raise BackupError("the database in the backup belongs to another vault", code="backup.vault")
    except sqlite3.Error as exc:
        raise BackupError(f"the database in the backup cannot be read ({type(exc).__name__})",
                          code="backup.corrupt") from None
    finally:
        conn.close()


# -- emptiness -------------------------------------------------------------------------

def table_label(table: str) -> str:
    """A table name fit for a message: as it is if it is a plain name, else quoted, escaped and cut."""
    return table if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", table) else repr(table[:64])


def _new_sqlite_target(url: str) -> Path | None:
    """The SQLite file a restore is about to create by opening it (None: PostgreSQL, or it exists)."""
    parsed = parse_url(url)
    if parsed.dialect != "sqlite":
        return None
    target = Path(parsed.target)
    return None if target.exists() else target


def _drop_if_empty(target: Path) -> None:
    """Remove the store file a refused restore created, if it still holds no table.

    Opening the target makes the file; a restore refused after that (the wrong backend, a
    record-key store the rows are not bound to) left an empty database where none was, which
    the next command then took for the vault's store. A file with any table (another
    process's, made meanwhile) is left alone.
    """
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{target}?mode=ro", uri=True)) as conn:
            tables = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.Error:
        return
    if tables == 0:
        for p in (target, target.with_name(target.name + "-wal"), target.with_name(target.name + "-shm")):
            p.unlink(missing_ok=True)


def open_target(url: str) -> Database:
    """The store to restore into, opened; an SQLite file that is no database is refused as such.

    That file may be the store encrypted in place by ransomware, or another
    program's file: a restore cannot tell, and moves neither, even with
    ``--quarantine`` (as for a foreign store), so it says what to do instead.
    """
    try:
        return Database(url)
    except StoreError as exc:
        target = Path(parse_url(url).target)
        if exc.code != "store.open" or not target.is_file():
            raise
        raise BackupError(f"the store {target.name} is not a database SQLite can open (encrypted or "
                          "overwritten?); a restore does not move a file it cannot tell is a vault's store, "
                          "and nothing was restored", code="restore.store_unreadable",
                          hint=f"move {target.name} (and any {target.name}-wal, {target.name}-shm) aside "
                               "by hand, keeping it as evidence, then run the same restore again") from None


def foreign_store(db: Database) -> str | None:
    """Why the store is not one pivault may restore into, whatever ``quarantine`` says; or None.

    A store with tables but without pivault's schema bookkeeping belongs to
    other software (another program's database, or the record-key file
    beside a keyring, given as ``--store`` by mistake): its tables are never
    dropped, moved aside or replaced, even when they are empty.
    """
    tables = db.tables()
    if tables and "schema_migrations" not in tables:
        return (f"it holds {len(tables)} table(s) and no pivault schema: the store of other software "
                "(or a record-key store), which a restore never moves or drops")
    return None


def _refuse_foreign(db: Database) -> None:
    why = foreign_store(db)
    if why is not None:
        raise BackupError(f"the target store is not a pivault store: {why}", code="backup.foreign_store",
                          hint="restore into an empty store, or into this vault's own; a store wrecked "
                               "beyond pivault's schema is moved aside by hand first")


def _why_not_empty(db: Database, vault_id: str) -> str | None:
    """None if the store may be restored into; else why not (no values named)."""
    tables = db.tables()
    # the tables an operator recognises first, then the rest (a ransom note counts too)
    first = [t for t in ("records", "audit_entries") if t in tables]
    for t in first + [t for t in tables if t not in first]:
        if t in _BOOKKEEPING:
            continue
        row = db.query_one(f"SELECT COUNT(*) FROM {ident(t)}")
        if row and int(row[0]):
            return f"table {table_label(t)} holds {int(row[0])} rows"
    if "vault_meta" in db.tables():
        row = db.query_one("SELECT value FROM vault_meta WHERE key = 'vault_id'")
        if row is not None and row[0] != vault_id:
            return f"the store is bound to another vault ({row[0]})"
    return None


# -- schema at the backup's versions -----------------------------------------------------

def _migrate_to(db: Database, versions: dict[str, int]) -> None:
    """Apply exactly the schema steps the backup's store had, so its rows fit."""
    needs_migration(db)  # loads every component's steps
    known: dict[str, int] = {}
    for step in pending(db):
        known[step.component] = max(known.get(step.component, 0), step.version)
    for comp, v in versions.items():
        if comp != "schema_migrations" and known.get(comp, 0) < v:
            raise BackupError(f"the backup's schema ({comp} version {v}) is newer than this pivault's",
                              code="backup.version", hint="restore with the pivault version that made it")
    for step in pending(db):
        if step.version > versions.get(step.component, 0):
            continue
        action = step.sqlite if db.dialect == "sqlite" else step.postgresql
        if callable(action):
            action(db)
        else:
            for stmt in (s.strip() for s in action.split(";")):
                if stmt:
                    db.execute(stmt)
        db.execute("INSERT INTO schema_migrations (component, version, description, applied_at)"
                   " VALUES (?, ?, ?, ?)", (step.component, step.version, step.description, time.time()))


# -- SQLite ------------------------------------------------------------------------------

def _sqlite_files(target: str) -> list[Path]:
    return [Path(target + s) for s in ("", "-wal", "-shm", "-journal")]


def _sqlite_mark(path: Path) -> int:
    """The newest keyring generation the store in a SQLite copy had seen (0: none, or older schema)."""
    conn = sqlite3.connect(path)
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                        (seen.TABLE,)).fetchone() is None:
            return 0
        row = conn.execute(f"SELECT generation FROM {seen.TABLE} WHERE id = 1").fetchone()
        return int(row[0]) if row else 0
    finally:
        conn.close()


def _restore_sqlite(c: Container, url: str, quarantine: bool, keyring_generation: int | None,
                    settle: Callable[[Query], None] | None = None,
                    finish: Finish | None = None) -> str | None:
    """Stage the copy beside the store, finish it there, and rename it into place: that is the commit.

    Everything the restore does to the restored rows (``finish``: schema
    steps, erased records purged, the audit trail salvaged and the restore
    recorded) is done to the staged copy first, so a crash at any point
    leaves either the old store under its name or the restored one whole.
    The damaged store is set aside as a hard link made before the rename:
    until then its name still holds it, and a rerun reuses that link.
    """
    # where SQLite keeps the store: a symbolic link (to a data disk) is followed, as SQLite does, so
    # the copy is staged and renamed in there and the link stays, and the journals are the real ones
    target = os.path.realpath(parse_url(url).target)
    tpath = Path(target)
    tpath.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_copies(tpath)
    tmp = tpath.with_name(f".{tpath.name}.restore-{os.getpid()}-{os.urandom(4).hex()}")
    c.extract("data/vault.db", tmp)
    try:
        _check_sqlite_copy(tmp, c.manifest)
        if keyring_generation is not None:
            seen.check_restore(_sqlite_mark(tmp), keyring_generation)
        why: str | None = None
        if tpath.exists() and tpath.stat().st_size > 0:
            with Database(url) as existing:
                _refuse_foreign(existing)
                why = _why_not_empty(existing, c.vault_id)
                existing.truncate_wal()
        if why is not None and not quarantine:
            raise BackupError(f"the target store is not empty: {why}", code="backup.not_empty",
                              hint="restore into an empty vault, or pass --quarantine to move the "
                                   "damaged store aside first")
        if _open_elsewhere(tpath):
            raise BackupError("the store is open in another process (a running `pivault serve`, an import, "
                              "another command): it would go on using the old store, and what it wrote "
                              "would be lost; nothing was restored", code="restore.store_in_use",
                              hint="stop every process using the vault, then run the restore again")
        if settle is not None:
            # read-only: the copy must stay byte for byte what was checked
            copy = sqlite3.connect(f"file:{tmp}?mode=ro", uri=True)
            try:
                settle(lambda sql, params: copy.execute(sql, params).fetchall())
            finally:
                copy.close()
        qpath = _quarantine_path(tpath) if why is not None else None
        if finish is not None:
            with Database(f"sqlite:///{tmp}") as staged:
                damaged = Database(url) if qpath is not None else None
                try:
                    finish(staged, damaged, None, str(qpath) if qpath is not None else None)
                finally:
                    if damaged is not None:
                        damaged.close()
                staged.execute("PRAGMA journal_mode=DELETE")  # one self-contained file again
        if qpath is not None:
            _set_aside(tpath, qpath)
        for f in _sqlite_files(target)[1:]:
            # what is left of the old store's journals must not meet the restored file
            f.unlink(missing_ok=True)
        os.replace(tmp, tpath)
        fd = os.open(tpath.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return str(qpath) if qpath is not None else None
    finally:
        for f in _sqlite_files(str(tmp)):
            f.unlink(missing_ok=True)


#: the byte of a WAL store's ``-shm`` file on which every open SQLite connection holds a read lock
#: (its "dead man switch"), for as long as it is open
_SHM_DMS = 128


def _open_elsewhere(tpath: Path) -> bool:
    """Whether another process has the SQLite store open (a running server, an import).

    Each open connection holds a read lock on the ``-shm`` file's DMS byte;
    a write lock on it is refused while another process holds one (this
    process's own connections do not count). Closing the probe's descriptor
    drops this process's own locks on that file: harmless here, since the
    store is refused or replaced next, and this process's connections to it
    are stale either way.
    """
    try:
        fd = os.open(str(tpath) + "-shm", os.O_RDWR)
    except FileNotFoundError:
        return False  # no connection has it open in WAL mode
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _SHM_DMS)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return True
        raise
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, _SHM_DMS)
    finally:
        os.close(fd)
    return False


_STAGED = re.compile(r"\.(?P<name>.+)\.restore-(?P<pid>\d+)-[0-9a-f]{8}(-wal|-shm|-journal)?")


def _remove_stale_copies(tpath: Path) -> None:
    """Delete the staged copies that restores killed before their rename left beside the store.

    Each is as large as the store; only those of processes no longer
    running are removed (a restore running alongside keeps its own).
    """
    for p in tpath.parent.glob(f".{tpath.name}.restore-*"):
        m = _STAGED.fullmatch(p.name)
        if m is None or m["name"] != tpath.name:
            continue
        pid = int(m["pid"])
        if pid == os.getpid():
            continue
        # a staged copy of a restore still running (even another user's) is left alone
        with contextlib.suppress(PermissionError):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                p.unlink(missing_ok=True)


def _quarantine_path(tpath: Path) -> Path:
    """Where the damaged store goes: the link an interrupted restore already made, or a new name."""
    for q in sorted(tpath.parent.glob(f"{tpath.name}.quarantine-*")):
        if not q.name.endswith(("-wal", "-shm", "-journal")) and os.path.samefile(q, tpath):
            return q
    base = tpath.with_name(f"{tpath.name}.quarantine-{time.strftime('%Y%m%dT%H%M%S')}")
    q, n = base, 1
    while any(os.path.lexists(str(q) + s) for s in ("", "-wal", "-shm", "-journal")):
        n += 1  # never over an earlier quarantine, even one made within the same second
        q = base.with_name(f"{base.name}-{n}")
    return q


def _set_aside(tpath: Path, qpath: Path) -> None:
    """Give the damaged store its quarantine name while its own name still holds it (a hard link).

    Its journals are moved: they must not be there when the restored file
    takes the name. Where hard links are not supported, the file is renamed:
    a crash before the restored file is renamed in then leaves no store
    under the name, and a rerun restores into that emptiness.
    """
    for f in _sqlite_files(str(tpath)):
        if not f.exists():
            continue
        q = Path(str(qpath) + f.name[len(tpath.name):])
        if f != tpath:
            os.replace(f, q)
        elif not (q.exists() and os.path.samefile(f, q)):
            try:
                os.link(f, q)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                os.rename(f, q)


# -- PostgreSQL ----------------------------------------------------------------------------

def _restore_postgresql(c: Container, db: Database, quarantine: bool,
                        keyring_generation: int | None,
                        settle: Callable[[Query], None] | None = None,
                        finish: Finish | None = None) -> tuple[str | None, list[str]]:
    from pivault.backup.backup import pg_tables

    quarantined: str | None = None
    with db.transaction():
        _refuse_foreign(db)
        why = _why_not_empty(db, c.vault_id)
        if why is not None and not quarantine:
            raise BackupError(f"the target store is not empty: {why}", code="backup.not_empty",
                              hint="restore into an empty vault, or pass --quarantine to move the "
                                   "damaged store aside first")
        if why is not None:
            schema = "pivault_quarantine_" + time.strftime("%Y%m%d%H%M%S") + "_" + os.urandom(3).hex()
            db.execute(f"CREATE SCHEMA {ident(schema)}")
            for t in db.tables():
                db.execute(f"ALTER TABLE {ident(t)} SET SCHEMA {ident(schema)}")
            quarantined = schema
        else:
            for t in db.tables():
                db.execute(f"DROP TABLE {ident(t)} CASCADE")
        db.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                   " component TEXT NOT NULL, version INTEGER NOT NULL, description TEXT NOT NULL,"
                   " applied_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (component, version))")
        _migrate_to(db, {k: int(v) for k, v in c.manifest.get("schema", {}).items()})
        db.execute("DELETE FROM schema_migrations")
        have = pg_tables(db.raw)
        # every table pivault's schema has must be in the backup, as it is; a table in the backup that
        # the schema does not make (added to the store by hand, or planted) is left out, and named
        want: dict[str, Any] = {t: spec for t, spec in c.manifest["tables"].items() if t in have}
        not_restored = sorted(set(c.manifest["tables"]) - set(want))
        if set(have) != set(want) or any(have[t] != want[t]["columns"] for t in want):
            raise BackupError("the schema made for the backup's versions does not match its tables",
                              code="backup.schema")
        with db.raw.cursor() as cur:
            for t, spec in sorted(want.items()):
                _copy_in(c, cur, t, spec["columns"])
        for t, n in c.manifest["counts"].items():
            if t not in want:
                continue
            row = db.query_one(f"SELECT COUNT(*) FROM {ident(t)}")
            if row is None or int(row[0]) != int(n):
                raise BackupError(f"table {table_label(t)} restored with a different row count",
                                  code="backup.corrupt")
        if keyring_generation is not None:  # refused inside the transaction: the store is left as it was
            seen.check_restore(seen.seen_generation(db), keyring_generation)
        if settle is not None:
            settle(db.query)  # inside the transaction: a refusal rolls back the quarantine too
        if finish is not None:
            # in the same transaction: a crash before it commits leaves the old store as it was
            finish(db, db if quarantined else None, quarantined, quarantined)
    return quarantined, not_restored


def _copy_in(c: Container, cur: Any, table: str, columns: list[str]) -> None:
    """COPY a table's member into it, hashing what is sent, inside the restore's transaction.

    The file was verified in a pass of its own: a member changed on the
    shelf since must not reach the store, so its digest is checked again on
    the bytes sent, before the transaction can commit (a refusal rolls it
    back). A change that breaks the stream's framing makes the server
    refuse first; the rest of the member is then read to tell that apart
    from rows this server cannot take.
    """
    import psycopg

    name = f"data/{table}.copy"
    want = {str(f["name"]): f for f in c.manifest["files"]}[name]["sha256"]
    collist = ", ".join(ident(col) for col in columns)
    src = c.open_member(name)
    h = hashlib.sha256()
    try:
        with cur.copy(f"COPY {ident(table)} ({collist}) FROM STDIN (FORMAT BINARY)") as cp:
            while block := src.read(1 << 20):
                h.update(block)
                cp.write(block)
    except psycopg.Error:
        while block := src.read(1 << 20):
            h.update(block)
        if h.hexdigest() == want:
            raise BackupError(f"the server refused the rows of table {table_label(table)} in the backup; "
                              "nothing was restored", code="backup.corrupt") from None
    if h.hexdigest() != want:
        raise BackupError(f"{name} in the backup changed after it was verified; nothing was restored",
                          code="backup.checksum", hint="the backup file is being written to: find out by "
                          "whom, then verify it again")


def restore(path: str | os.PathLike[str], store_url: str, key: VerifyKey, *,
            vault_id: str | None = None, quarantine: bool = False,
            keyring_path: str | os.PathLike[str] | None = None,
            record_keys: RecordKeyStore | None = None,
            record_keys_backup: str | os.PathLike[str] | None = None,
            keyring: Keyring | None = None, keep_erased: bool = False, keep_unreadable: bool = False,
            salvage: bool = False,
            events: Callable[[Database], KeyEvents | None] | None = None,
            keyring_generation: int | None = None, fresh_keys: bool = False) -> RestoreReport:
    """Restore a data backup into the (empty) store at ``store_url``; see the module doc.

    ``vault_id``: the vault this must be (its keyring's); a backup of another
    vault is refused. ``keyring_path``: if no keyring file is there, the
    backup's keyring envelope is written there (it still needs the
    passphrase or the custodians to open). ``record_keys``: the vault's
    record-key store. With it, the keys of records corrected since the
    backup are put back from ``record_keys_backup`` (a ``pivault keys
    backup`` taken with the data backup), or the restore is refused
    (``restore.keys_missing``) unless ``keep_unreadable``; then records
    whose key is gone there (erased after the backup was taken) are deleted
    from the restored store (:func:`pivault.keys.shred.purge_erased`) unless
    ``keep_erased``. Without it the record keys are not looked at.
    ``keyring``: the vault's; given, a key from the record-key backup is put
    back only if it opens under it (one wrapped by a field key retired since
    would leave the record as unreadable as no key at all).
    ``salvage``: with ``quarantine``, append the audit entries the damaged
    store wrote after the backup (:func:`salvage_audit_trail`).
    ``events``: given the restored store, returns where to record the
    restore (the audit trail), or None.
    ``keyring_generation``: that of the keyring the vault will be opened with; a
    backup whose store had seen a newer one is refused before anything changes
    (``keyring.rollback``: the restored vault would refuse that keyring).
    With ``record_keys`` and ``keyring``, the restored store is bound to that
    record-key store, or the restore refused (:func:`pivault.keys.binding.bind`;
    ``fresh_keys``: the caller made it for this restore).

    All of this happens before the restored rows take the store's place
    (SQLite: the staged copy is renamed in last; PostgreSQL: one
    transaction), so a crash leaves the old store or the restored one whole.
    """
    t0 = time.monotonic()
    if record_keys_backup is not None and record_keys is None:
        raise ConfigError("a record-key backup is put back into a record-key store: give both",
                          code="restore.record_keys")
    with Container.open(path) as c, contextlib.ExitStack() as stack:
        if c.kind != "data":
            raise BackupError("this is a record-key backup; restore it with `pivault keys restore`",
                              code="backup.kind")
        c.verify(key, vault_id=vault_id)
        rk: Container | None = None
        if record_keys_backup is not None:
            rk = stack.enter_context(Container.open(record_keys_backup))
            if rk.kind != "record-keys":
                raise BackupError(f"{Path(record_keys_backup).name} is not a record-key backup",
                                  code="backup.kind",
                                  hint="--record-keys takes a file written by `pivault keys backup`")
            rk.verify(key, vault_id=c.vault_id)
        if keyring_path is not None:
            kp = Path(keyring_path)
            if not kp.exists():
                from pivault.crypto._atomic import write_private

                kp.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                write_private(kp, c.read("keyring.json"), overwrite=False)
        backend = str(c.manifest["backend"])
        report = RestoreReport(c.manifest["backup_id"], c.vault_id, backend,
                               {t: int(n) for t, n in c.manifest["counts"].items()},
                               created=str(c.manifest.get("created", "")))
        if record_keys is not None:
            # a file on the shelf can be an older backup put in a newer one's place: the record-key
            # store knows every backup taken, and says which came after this one
            report.newer_backups = [(b, _utc_text(t)) for b, t in record_keys.backups_after(
                report.backup_id, _parse_utc(report.created))]
        settle: Callable[[Query], None] | None = None
        if record_keys is not None:
            keys = record_keys
            sources: list[_KeySource] = []
            if rk is not None:
                backup_rk = rk
                sources.append(_KeySource("the record-key backup given",
                                          lambda: _read_record_keys(backup_rk)))
            own = _own_keys(c, keys, keyring)
            if own is not None:
                sources.append(own)

            def settle(query: Query) -> None:
                settled = _settle_version_keys(query, keys, sources, keyring, keep_unreadable,
                                               backup_id=str(c.manifest["backup_id"]),
                                               has_own=c.manifest.get("version", 1) >= 2)
                report.corrected_since_backup = len(settled.corrected)
                report.corrected_record_ids = settled.corrected
                report.unreadable_record_ids = settled.unreadable

        def finish(store: Database, damaged: Database | None, damaged_schema: str | None,
                   quarantined: str | None) -> None:
            report.quarantined = quarantined
            report.migrated = migrate(store)
            if record_keys is not None and keyring is not None:
                # the restored rows and the record-key store at hand must belong together (the
                # backup's binding, or a store that clearly holds its records' keys): refused here,
                # the old store stays in place
                from pivault.keys.binding import bind

                bind(store, keyring, record_keys, fresh=fresh_keys)
            if record_keys is not None and not keep_erased:
                from pivault.keys.shred import purge_erased

                report.erased_since_backup = purge_erased(store, record_keys)
            if salvage and damaged is not None:
                carried = _salvage(store, damaged, source_schema=damaged_schema, keyring=keyring)
                report.salvaged_audit_entries, report.salvage_refused = carried.entries, carried.refused
            from pivault.backup.revocations import active_tokens, carry_over

            if damaged is not None:
                # a credential revoked or suspended after the backup must not work again once it is back
                kept = carry_over(store, damaged, damaged_schema=damaged_schema,
                                  after_seq=int((c.manifest.get("audit_head") or {}).get("seq", 0)))
                report.tokens_kept_revoked, report.tokens_kept_suspended = kept.revoked, kept.suspended
            else:
                report.tokens_unchecked = active_tokens(store)
            sink = events(store) if events is not None else None
            if sink is not None:
                sink("backup.restore", "ok", {"backup_id": report.backup_id, "file": Path(path).name,
                                              "records": report.counts.get("records", 0),
                                              "quarantined": quarantined,
                                              "salvaged_entries": report.salvaged_audit_entries,
                                              **report.restore_detail(), **report.audit_detail()})

        made = _new_sqlite_target(store_url)
        db = open_target(store_url)
        done = False
        try:
            if db.dialect != backend:
                raise BackupError(f"this is a {backend} backup; restore it into a {backend} store",
                                  code="backup.backend")
            if backend == "sqlite":
                db.close()
                _restore_sqlite(c, store_url, quarantine, keyring_generation, settle, finish)
            else:
                _, report.not_restored = _restore_postgresql(c, db, quarantine, keyring_generation, settle,
                                                             finish)
                report.counts = {t: n for t, n in report.counts.items() if t not in report.not_restored}
            done = True
        finally:
            db.close()
            if not done and made is not None:
                _drop_if_empty(made)
        if record_keys is not None:
            # in place and reported: what this restore put back is no longer news to a rerun
            record_keys.restore_done(report.backup_id)
    report.seconds = time.monotonic() - t0
    return report


def _parse_utc(text: str) -> float:
    """A manifest's ``created`` (whole seconds, UTC) as a time; one second on, since it was cut."""
    from datetime import UTC, datetime

    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp() + 1.0
    except ValueError:
        return float("inf")  # not known: no backup is said to be newer


def _utc_text(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- record keys of the restored rows ----------------------------------------------------------

@dataclass
class _VersionKeys:
    #: records corrected since the backup whose backed-up version's key was put back
    corrected: list[str] = field(default_factory=list)
    #: records corrected since the backup whose backed-up version has no key anywhere
    unreadable: list[str] = field(default_factory=list)


def _corrected_since(query: Query, keys: RecordKeyStore, earlier: dict[str, bytes], *,
                     batch_size: int = 1000) -> tuple[dict[str, bytes], list[str]]:
    """Rows whose version has no key while their record keeps one: record id -> the key ref wanted.

    An update drops the key of the version it replaces, an erase every key
    of the record. So a row whose key is missing is a record corrected since
    the backup when the record still has a key, and one erased since when it
    has none (:func:`pivault.keys.shred.purge_erased` deletes those). Also
    returned: the rows whose version's key an earlier, unfinished run of
    this restore already put back (``earlier``), which are corrected too.
    """
    out: dict[str, bytes] = {}
    again: list[str] = []
    last = ""
    while True:
        rows = query("SELECT record_id, name FROM records WHERE record_id > ? ORDER BY record_id LIMIT ?",
                     (last, batch_size))
        if not rows:
            return out, again
        last = str(rows[-1][0])
        named: dict[str, bytes] = {}
        for rid, name in rows:
            ref = key_ref_of(bytes(name)) if name is not None else None
            if ref is not None:
                named[str(rid)] = ref
        have = keys.get_many(list(named.items()))
        lacking = [rid for rid, ref in named.items() if (rid, ref) not in have]
        again.extend(rid for rid, ref in named.items() if (rid, ref) in have and earlier.get(rid) == ref)
        if lacking:
            kept = keys.any_key_many(lacking)
            out.update((rid, named[rid]) for rid in lacking if rid in kept)


@dataclass
class _KeySource:
    """Where stored keys of backed-up versions can come from, named for a message."""

    name: str
    read: Callable[[], Iterator[tuple[str, bytes]]]


def _settle_version_keys(query: Query, keys: RecordKeyStore, sources: Sequence[_KeySource],
                         keyring: Keyring | None, keep_unreadable: bool, *, backup_id: str,
                         has_own: bool) -> _VersionKeys:
    """Put back the keys of versions corrected since the backup, before the restored rows commit.

    Keys go first, as for any write of a record (docs/keys.md): a restore
    that fails after this leaves spare keys of versions no row names, which
    ``pivault keys gc`` removes; never a row without its key. What is put
    back is noted with the restore (:meth:`RecordKeyStore.put_back_for_restore`),
    so that a rerun after a crash still reports those records. Refuses,
    having put back nothing, when some version has no key anywhere and
    ``keep_unreadable`` is not given.
    """
    wanted, again = _corrected_since(query, keys, keys.put_back_earlier(backup_id))
    found: dict[str, bytes] = {}
    for source in sources:
        if len(found) == len(wanted):
            break
        for rid, stored in source.read():
            if rid not in found and wanted.get(rid) == stored[:KEY_REF_BYTES]:
                found[rid] = stored
    if keyring is not None:
        for rid in sorted(found):
            try:
                keyring.open_record_key(rid, found[rid])
            except IntegrityError:
                del found[rid]
    unreadable = sorted(set(wanted) - set(found))
    if unreadable and not keep_unreadable:
        where = " nor ".join(["in the record-key store", *(s.name for s in sources)])
        if len(sources) > 0:
            where = "neither " + where
        if has_own and not any(s.name == _OWN for s in sources):
            where += (" (the keys this backup carries are sealed by a key the record-key store no longer"
                      " holds)")
        shown = ", ".join(unreadable[:_IDS_IN_ERROR]) + (", …" if len(unreadable) > _IDS_IN_ERROR else "")
        raise BackupError(
            f"{len(unreadable)} records corrected since the backup have no key that opens their "
            f"backed-up version {where} ({shown}); nothing was restored", code="restore.keys_missing",
            hint="give the record-key backup taken with this data backup (--record-keys FILE); if no "
                 "copy holds those keys, --keep-unreadable restores the rest and lists these records")
    corrected = keys.put_back_for_restore(backup_id, sorted(found.items())) if found else []
    return _VersionKeys(sorted(set(corrected) | set(again)), unreadable)


#: how the keys a data backup carries are named in a message
_OWN = "the keys this backup carries"
_FRAME = struct.Struct(">I")


def _own_keys(c: Container, keys: RecordKeyStore, keyring: Keyring | None) -> _KeySource | None:
    """The record keys sealed inside a data backup (format 2), if their sealing key still opens.

    That key is in the record-key store, not in the backup: it is gone when
    the store was lost or the key expired (``pivault keys gc``), and opens
    nothing once the field key that wrapped it was retired. Then the backup
    restores as one without keys does.
    """
    from pivault.backup.backup import sealing_record_id

    if keyring is None or c.manifest.get("version", 1) < 2:
        return None
    backup_id = str(c.manifest["backup_id"])
    stored = keys.backup_key(backup_id)
    if stored is None:
        return None
    try:
        seal = keyring.open_record_key(sealing_record_id(backup_id), stored)
    except IntegrityError:
        return None
    return _KeySource(_OWN, lambda: _read_sealed(c, seal))


def _read_sealed(c: Container, seal: RecordKey) -> Iterator[tuple[str, bytes]]:
    """The keys sealed in a verified data backup, each frame opened and the digest checked as read."""
    from pivault.backup.backup import SEALED_MEMBER, frame_field

    want = {str(f["name"]): f for f in c.manifest["files"]}.get(SEALED_MEMBER)
    f = c.open_member(SEALED_MEMBER)
    h = hashlib.sha256()
    n = 0
    while True:
        head = f.read(_FRAME.size)
        h.update(head)
        if not head:
            break
        ct = f.read(_FRAME.unpack(head)[0]) if len(head) == _FRAME.size else b""
        h.update(ct)
        try:
            plain = seal.decrypt(frame_field(n), ct)
        except IntegrityError:
            raise BackupError("the record keys sealed in the backup do not open", code="backup.corrupt",
                              hint="restore with --record-keys and the record-key backup taken with "
                                   "it") from None
        n += 1
        yield from _rows(plain)
    if want is None or h.hexdigest() != want["sha256"]:
        raise BackupError("the backup changed after it was verified", code="backup.checksum")


def _rows(plain: bytes) -> Iterator[tuple[str, bytes]]:
    at = 0
    while at < len(plain):
        (n,) = _RK_ROW.unpack_from(plain, at)
        at += 2
        rid, stored = plain[at:at + n], plain[at + n:at + n + RECORD_KEY_BYTES]
        at += n + RECORD_KEY_BYTES
        if len(stored) != RECORD_KEY_BYTES:
            raise BackupError("the record keys sealed in the backup are truncated", code="backup.corrupt")
        yield rid.decode("utf-8"), stored


# -- the audit trail of a damaged store -------------------------------------------------------

@dataclass
class Salvage:
    """What :func:`salvage` carried over from a damaged store's audit trail."""

    #: entries appended to the restored trail
    entries: int = 0
    #: why the entries the damaged store holds past the backup were not carried over (they stay
    #: with it, as evidence); None when they were, or when it holds none of this history
    refused: str | None = None


def salvage_audit_trail(db: Database, source: Database, *, source_schema: str | None = None,
                        keyring: Keyring | None = None) -> int:
    """Append the entries a damaged store wrote after the backup, if they continue its chain.

    The number appended (see :func:`_salvage`; a restore's report also says why none were).
    """
    return _salvage(db, source, source_schema=source_schema, keyring=keyring).entries


def _salvage(db: Database, source: Database, *, source_schema: str | None = None,
            keyring: Keyring | None = None) -> Salvage:
    """Append the entries a damaged store wrote after the backup, if they continue its chain.

    ``source`` is the quarantined store (for PostgreSQL the same database
    with ``source_schema``). Entries are copied as they are, MACs included;
    only if the damaged store's chain holds the restored head's entry with
    the same MAC (it is the same history), so ``audit verify`` judges them
    with everything else.

    The damaged store is the intruder's to change, and a salvage that
    failed would fail the restore it is part of: a ransom restore could be
    blocked by one row. So only what the damaged store's chain head vouches
    for is taken (entries and checkpoints up to its sequence number, not
    rows planted past it), only when that head opens under ``keyring``
    (else the restored vault could append nothing more), and a row the
    restored trail cannot take (a planted duplicate, a value the schema
    refuses) undoes the salvage, not the restore. What is not carried over
    stays in the quarantined store; ``refused`` says why.
    """
    q = f"{ident(source_schema)}." if source_schema else ""
    # the restored store's columns, read from the damaged one: its own column names are the
    # intruder's to choose, and extra ones are not part of any entry's MAC
    tables: dict[str, list[str]] = {}
    for t in ("audit_head", "audit_entries", "audit_checkpoints"):
        have = set(_columns(source, t, source_schema))
        cols = _columns(db, t, None) if db.table_exists(t) else []
        if not cols or not have.issuperset(cols):
            return Salvage()
        tables[t] = cols
    src_head = source.query_one(f"SELECT chain_id, seq, key_ct FROM {q}audit_head WHERE id = 1")
    head = db.query_one("SELECT chain_id, seq, mac FROM audit_head WHERE id = 1")
    if src_head is None or head is None or src_head[0] != head[0] or int(src_head[1]) <= int(head[1]):
        return Salvage()
    seq, last = int(head[1]), int(src_head[1])
    if seq:
        row = source.query_one(f"SELECT mac FROM {q}audit_entries WHERE seq = ?", (seq,))
        if row is None or bytes(row[0]) != bytes(head[2]):
            return Salvage()
    if keyring is not None:
        from pivault.audit.log import head_opens

        if not head_opens(keyring, str(src_head[0]), last, bytes(src_head[2])):
            return Salvage(refused="its audit chain head does not open under the keyring (altered), so the "
                                   "restored trail could not go on from it")
    cols, cp_cols, head_cols = tables["audit_entries"], tables["audit_checkpoints"], tables["audit_head"]

    def listed(names: list[str]) -> str:
        return ", ".join(ident(n) for n in names)

    entries = source.query(f"SELECT {listed(cols)} FROM {q}audit_entries WHERE seq > ? AND seq <= ?"
                           " ORDER BY seq", (seq, last))
    cps = source.query(f"SELECT {listed(cp_cols)} FROM {q}audit_checkpoints WHERE seq > ? AND seq <= ?"
                       " ORDER BY seq", (seq, last))
    new_head = source.query_one(f"SELECT {listed(head_cols)} FROM {q}audit_head WHERE id = 1")
    assert new_head is not None
    failed: str | None = None
    with db.transaction():
        # a savepoint: on PostgreSQL this runs inside the restore's own transaction
        db.execute("SAVEPOINT pivault_salvage")
        try:
            db.executemany(f"INSERT INTO audit_entries ({listed(cols)}) VALUES"
                           f" ({', '.join('?' * len(cols))})", entries)
            db.executemany(f"INSERT INTO audit_checkpoints ({listed(cp_cols)}) VALUES"
                           f" ({', '.join('?' * len(cp_cols))})", cps)
            sets = ", ".join(f"{ident(col)} = ?" for col in head_cols if col != "id")
            db.execute(f"UPDATE audit_head SET {sets} WHERE id = 1",
                       [v for col, v in zip(head_cols, new_head, strict=True) if col != "id"])
        except _db_errors(db) as exc:
            db.execute("ROLLBACK TO SAVEPOINT pivault_salvage")
            failed = (f"the restored trail could not take its entries ({type(exc).__name__}: a row was "
                      "altered or planted)")
        db.execute("RELEASE SAVEPOINT pivault_salvage")
    if failed is not None:
        return Salvage(refused=failed)
    return Salvage(len(entries))


def _db_errors(db: Database) -> tuple[type[Exception], ...]:
    """The driver's errors for a statement the database refused (a constraint, a type)."""
    if db.dialect == "postgresql":
        import psycopg

        return (psycopg.Error,)
    return (sqlite3.Error,)


def salvage_quarantined(db: Database, store_url: str, quarantined: str | None) -> int:
    """:func:`salvage_audit_trail` from what a ``quarantine`` restore set aside (0 if nothing was)."""
    if not quarantined:
        return 0
    if parse_url(store_url).dialect == "sqlite":
        with Database("sqlite:///" + quarantined) as damaged:
            return salvage_audit_trail(db, damaged)
    return salvage_audit_trail(db, db, source_schema=quarantined)


def _columns(db: Database, table: str, schema: str | None) -> list[str]:
    if db.dialect == "sqlite":
        return [str(r[1]) for r in db.query(f"PRAGMA table_info({ident(table)})")]
    return [str(r[0]) for r in db.query(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ?"
        " AND table_schema = COALESCE(?, current_schema()) ORDER BY ordinal_position", (table, schema))]


# -- record keys --------------------------------------------------------------------------------

_RK_ROW = struct.Struct(">H")
_RK_MEMBER = "data/record_keys.bin"


def _read_record_keys(c: Container) -> Iterator[tuple[str, bytes]]:
    """The keys of a verified record-key backup, checked once more against its digest as read.

    The keys read are used at once (put into a store): a file changed on
    the shelf after it was verified must not slip its keys in unchecked.
    """
    want = {str(f["name"]): f for f in c.manifest["files"]}.get(_RK_MEMBER)
    f = c.open_member(_RK_MEMBER)
    h = hashlib.sha256()

    def take(n: int) -> bytes:
        data = f.read(n)
        h.update(data)
        return data

    while True:
        head = take(2)
        if not head:
            break
        if len(head) != 2:
            raise BackupError("the record-key stream is truncated", code="backup.corrupt")
        (n,) = _RK_ROW.unpack(head)
        raw = take(n)
        stored = take(RECORD_KEY_BYTES)
        if len(raw) != n or len(stored) != RECORD_KEY_BYTES:
            raise BackupError("the record-key stream is truncated", code="backup.corrupt")
        yield raw.decode("utf-8"), stored
    if want is None or h.hexdigest() != want["sha256"]:
        raise BackupError("the record-key backup changed after it was verified", code="backup.checksum")


@dataclass
class RecordKeysReport:
    """What :func:`restore_record_keys` put back, and what it left out."""

    #: keys added to the record-key store
    added: int = 0
    #: records whose erasure is on record (``erased``) and whose key the backup holds and the store
    #: lacks: left out, so those erasures stand
    left_out_erased: list[str] = field(default_factory=list)


def erased_on_record(db: Database) -> set[str]:
    """The records whose erasure the audit trail records (``erase`` entries with outcome ``ok``).

    A record id is never given to another record, so such a record's key is
    never needed again; putting it back would undo an erasure (a resident's
    right to deletion) that the trail shows was made. Entries pruned from the
    trail are not seen.
    """
    if not db.table_exists("audit_entries"):
        return set()
    out: set[str] = set()
    for (ids,) in db.query("SELECT record_ids FROM audit_entries"
                           " WHERE operation = 'erase' AND outcome = 'ok'"):
        try:
            named = json.loads(ids)
        except ValueError:
            continue
        if isinstance(named, list):
            out.update(r for r in named if isinstance(r, str))
    return out


def restore_record_keys(path: str | os.PathLike[str], store: RecordKeyStore, key: VerifyKey, *,
                        only_records: Sequence[str] | None = None, erased: Collection[str] = (),
                        events: KeyEvents = noop) -> RecordKeysReport:
    """Put back record keys the live store lacks, from a record-key backup.

    Keys of records erased after that backup come back with the rest, so
    this undoes those erasures, but for the ones ``erased`` names: use it to
    repair a store lost with its disk, or a malicious erase, and read
    docs/keys.md first. ``only_records`` limits it to those record ids. ``erased``: records
    whose erasure is on record (:func:`erased_on_record`); their keys are
    left out unless ``only_records`` names them, so that refilling a store
    never undoes an erasure nobody asked to undo.
    """
    wanted = set(only_records) if only_records is not None else None
    spared = set(erased) - (wanted or set())
    report = RecordKeysReport()
    with Container.open(path) as c:
        if c.kind != "record-keys":
            raise BackupError("this is not a record-key backup", code="backup.kind")
        c.verify(key, vault_id=store.vault_id)
        batch: list[tuple[str, bytes]] = []
        #: with ``only_records``: the records whose erasure this undoes, for the audit entry
        put_back: list[str] = []

        def flush() -> int:
            have = store.get_many([(rid, k[:4]) for rid, k in batch])
            new = [(rid, k) for rid, k in batch if (rid, k[:4]) not in have]
            kept = [(rid, k) for rid, k in new if rid not in spared]
            report.left_out_erased.extend(rid for rid, _ in new if rid in spared)
            store.put_many(kept)
            if wanted is not None:
                put_back.extend(rid for rid, _ in kept)
            batch.clear()
            return len(kept)

        # one transaction: the stream's digest is known only at its end, and a backup changed on the
        # shelf since it was verified must not have put back the keys read before that
        with store.db.transaction():
            for rid, stored in _read_record_keys(c):
                if wanted is not None and rid not in wanted:
                    continue
                batch.append((rid, stored))
                if len(batch) >= 2000:
                    report.added += flush()
            report.added += flush()
    report.left_out_erased = sorted(set(report.left_out_erased))
    detail: dict[str, object] = {"file": Path(path).name, "keys_added": report.added}
    if wanted is not None:
        # named records brought back from erasure: the trail says which (a whole restore, a count)
        detail["records"] = sorted(set(put_back))
    if report.left_out_erased:
        detail["erased_left_out"] = len(report.left_out_erased)
    events("keys.restore", "ok", detail)
    return report
