"""``pivault backup``: a consistent, signed, online copy of the data store.

What is in it: every table of the store as it was at one instant
(ciphertext, blind indexes, audit trail, import and job state), the
keyring file (keysets encrypted under the root key), and (format 2) the
wrapped record keys of every record version it copies, read against the
same instant, so that the backup restores on its own after a record was
corrected (an update drops the key of the version it replaces). Those keys
are sealed, a frame at a time, under a fresh key of this backup that is
kept in the record-key store beside the keyring and never in the backup:
the data shelf alone, even with the root key, opens no record, and once
that key is forgotten (``pivault keys gc --backup-keys-older-than``) an
erasure is final in this backup too. What is not in it: any plaintext,
any key in clear, and the keys of records erased before the copy.

Consistency while the vault keeps serving:

* SQLite: the SQLite online backup API copies the database under one read
  transaction (writers continue in the WAL); the copy is switched to
  rollback-journal mode so it is a single self-contained file.
* PostgreSQL: one ``REPEATABLE READ READ ONLY`` transaction on its own
  connection, and a binary ``COPY … TO STDOUT`` of each table of the
  vault's schema inside it: one snapshot for all tables, no ``pg_dump``
  needed (and no client/server version pairing to get right).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import sqlite3
import struct
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pivault import __version__
from pivault.backup.manifest import write_container
from pivault.backup.signing import BackupError, SigningKey, load_or_create_signing_key
from pivault.crypto import Keyring
from pivault.crypto.recordkeys import RecordKey, key_ref_of
from pivault.keys.events import KeyEvents, noop
from pivault.keys.shred import KeySnapshot, RecordKeyStore
from pivault.store.db import Database

__all__ = ["BackupResult", "backup_record_keys", "create_backup", "ident", "pg_tables"]

_RK_ROW = struct.Struct(">H")
#: rows read from a snapshot of the store being backed up: (sql with ``?``, params) -> rows
Query = Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]


@dataclass
class BackupResult:
    path: Path
    manifest: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {"file": str(self.path), "backup_id": m["backup_id"], "vault_id": m["vault_id"],
                "kind": m["kind"], "backend": m.get("backend"), "counts": m.get("counts"),
                "bytes": self.path.stat().st_size, "signing_key": m["signing_key"]["fingerprint"],
                "seconds": round(self.seconds, 3)}


#: a backup run's private scratch directory on the shelf: ``.pivault-backup-<random>``
STAGE_PREFIX = ".pivault-backup-"
#: taken while a run makes its scratch directory, and while stale ones are cleared
_SHELF_LOCK = ".pivault-backup.lock"
#: the temporary tar an older pivault wrote beside the target: ``.<name>.<pid>.<8 hex>.tmp``
_OLD_TMP = re.compile(r"\..+\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")


def is_unfinished(path: Path) -> bool:
    """Whether ``path`` is a backup run's scratch file, never a backup (to verify or restore)."""
    p = Path(path).absolute()
    return p.parent.name.startswith(STAGE_PREFIX) or p.name.startswith(STAGE_PREFIX) \
        or _OLD_TMP.fullmatch(p.name) is not None or p.name == _SHELF_LOCK


@contextlib.contextmanager
def _shelf_lock(shelf: Path) -> Iterator[None]:
    fd = os.open(shelf / _SHELF_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _remove_stale(shelf: Path) -> int:
    """Delete what backup runs that died (``kill -9``, a crash, a power cut) left on the shelf.

    Each run holds a lock on its scratch directory for as long as it lives,
    and the kernel drops it when the process dies: a directory whose lock
    can be taken belongs to no live run. Called under the shelf lock, which
    a run holds from making its directory until it has locked it, so a
    directory just made is never taken for a dead one. Temporary tars of an
    older pivault name their process: removed when it no longer runs.
    """
    n = 0
    for entry in shelf.iterdir():
        if entry.name.startswith(STAGE_PREFIX) and entry.is_dir() and not entry.is_symlink():
            try:
                fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError:
                continue  # gone meanwhile, or not ours to open
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live run's
            else:
                shutil.rmtree(entry, ignore_errors=True)
                n += 1
            finally:
                os.close(fd)
        elif (m := _OLD_TMP.fullmatch(entry.name)) is not None and entry.is_file():
            try:
                os.kill(int(m["pid"]), 0)
            except ProcessLookupError:
                entry.unlink(missing_ok=True)
                n += 1
            except PermissionError:
                continue  # another user's live process
    return n


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A private scratch directory on the shelf (same file system: the rename is atomic).

    Locked for as long as this run lives; what dead runs left is cleared first.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    with _shelf_lock(out.parent):
        _remove_stale(out.parent)
        d = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=out.parent))
        os.chmod(d, 0o700)
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
        os.close(fd)


def ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (SQLite and PostgreSQL alike).

    Table and column names are read from the store, where whoever reached
    the database may have named one to end the quotes and run SQL of their own.
    """
    return '"' + name.replace('"', '""') + '"'


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _audit_head(query: Callable[[str], list[tuple[Any, ...]]], has_table: bool) -> dict[str, Any] | None:
    if not has_table:
        return None
    rows = query("SELECT chain_id, seq, mac FROM audit_head WHERE id = 1")
    if not rows:
        return None
    chain, seq, mac = rows[0]
    return {"chain_id": str(chain), "seq": int(seq), "mac": bytes(mac).hex()}


def _dump_sqlite(db: Database, dest: Path, pinned: Callable[[], None],
                 collect: Callable[[Query], None]) -> dict[str, Any]:
    src = sqlite3.connect(db.url.target, timeout=30.0, isolation_level=None)
    try:
        # pin the snapshot first (a read transaction): the record keys are read against this instant
        src.execute("BEGIN")
        src.execute("SELECT COUNT(*) FROM sqlite_master").fetchall()
        pinned()
        dst = sqlite3.connect(dest)
        try:
            src.backup(dst)  # one step, inside the pinned read: a single consistent read of every page
            src.execute("COMMIT")
            dst.execute("PRAGMA journal_mode=DELETE")
            tables = [r[0] for r in dst.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                " ORDER BY name")]
            info: dict[str, Any] = {"tables": {}, "counts": {}}
            for t in tables:
                cols = [r[1] for r in dst.execute(f"PRAGMA table_info({ident(t)})")]
                n = dst.execute(f"SELECT COUNT(*) FROM {ident(t)}").fetchone()[0]
                info["tables"][t] = {"columns": cols}
                info["counts"][t] = int(n)
            info["schema"] = _schema_versions(lambda q: dst.execute(q).fetchall(),
                                              "schema_migrations" in tables)
            info["audit_head"] = _audit_head(lambda q: dst.execute(q).fetchall(), "audit_head" in tables)
            vid = dst.execute("SELECT value FROM vault_meta WHERE key = 'vault_id'").fetchone() \
                if "vault_meta" in tables else None
            info["store_vault_id"] = vid[0] if vid else None
            if "records" in tables:
                collect(lambda sql, params: dst.execute(sql, params).fetchall())
            dst.commit()
        finally:
            dst.close()
    finally:
        src.close()
    return info


def _schema_versions(query: Callable[[str], list[tuple[Any, ...]]], has_table: bool) -> dict[str, int]:
    if not has_table:
        return {}
    return {str(c): int(v) for c, v in query(
        "SELECT component, MAX(version) FROM schema_migrations GROUP BY component")}


def pg_tables(conn: Any) -> dict[str, list[str]]:
    """Base tables of the connection's current schema, with their columns in order."""
    out: dict[str, list[str]] = {}
    for t, c in conn.execute(
            "SELECT c.table_name, c.column_name FROM information_schema.columns c"
            " JOIN information_schema.tables t ON t.table_schema = c.table_schema"
            " AND t.table_name = c.table_name AND t.table_type = 'BASE TABLE'"
            " WHERE c.table_schema = current_schema() ORDER BY c.table_name, c.ordinal_position"):
        out.setdefault(str(t), []).append(str(c))
    return out


def _dump_postgresql(db: Database, stage: Path, pinned: Callable[[], None],
                     collect: Callable[[Query], None]) -> tuple[dict[str, Any], list[tuple[str, Path]]]:
    import psycopg

    files: list[tuple[str, Path]] = []
    info: dict[str, Any] = {"tables": {}, "counts": {}}
    with psycopg.connect(db.url.target) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            tables = pg_tables(conn)  # the first statement: the snapshot is taken here
            pinned()
            for t, cols in sorted(tables.items()):
                collist = ", ".join(ident(c) for c in cols)
                path = stage / f"{t}.copy"
                with open(path, "wb") as fh, conn.cursor() as cur, \
                        cur.copy(f"COPY {ident(t)} ({collist}) TO STDOUT (FORMAT BINARY)") as cp:
                    for chunk in cp:
                        fh.write(chunk)
                n = conn.execute(f"SELECT COUNT(*) FROM {ident(t)}").fetchone()
                info["tables"][t] = {"columns": cols}
                info["counts"][t] = int(n[0]) if n else 0
                files.append((f"data/{t}.copy", path))

            def q(sql: str) -> list[tuple[Any, ...]]:
                return [tuple(r) for r in conn.execute(sql).fetchall()]

            info["schema"] = _schema_versions(q, "schema_migrations" in tables)
            info["audit_head"] = _audit_head(q, "audit_head" in tables)
            vid = q("SELECT value FROM vault_meta WHERE key = 'vault_id'") if "vault_meta" in tables else []
            info["store_vault_id"] = vid[0][0] if vid else None
            if "records" in tables:
                collect(lambda sql, params: [tuple(r) for r in conn.execute(
                    sql.replace("?", "%s"), params).fetchall()])
    return info, files


class _Race(Exception):
    """A version copied into the backup lost its key before it could be read (retry the backup)."""


#: data backups written now: version 2 carries the record keys of the versions it holds, sealed
DATA_FORMAT_VERSION = 2
#: the sealed record keys inside a data backup
SEALED_MEMBER = "record_keys.sealed"
#: record keys per sealed frame (about 1 MiB of plaintext per frame at most)
_FRAME_KEYS = 8192
_FRAME = struct.Struct(">I")
#: attempts at a backup whose copied versions lost a key in the instant between its snapshots
_ATTEMPTS = 3


def sealing_record_id(backup_id: str) -> str:
    """The record id the key sealing a data backup's record keys is bound to (never a resident's)."""
    return f"pivault.backup/{backup_id}"


def frame_field(n: int) -> str:
    """The associated-data field name of sealed frame ``n``: frames cannot be reordered or swapped."""
    return f"record_keys/{n}"


class _Sealer:
    """Writes ``u16 len | record id | stored key`` rows, sealed a frame at a time, to a file."""

    def __init__(self, path: Path, key: RecordKey) -> None:
        self._fh = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._key = key
        self._rows: list[bytes] = []
        self._frames = 0
        self.count = 0

    def add(self, record_id: str, stored: bytes) -> None:
        raw = record_id.encode("utf-8")
        self._rows.append(_RK_ROW.pack(len(raw)) + raw + stored)
        self.count += 1
        if len(self._rows) >= _FRAME_KEYS:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        ct = self._key.encrypt(frame_field(self._frames), b"".join(self._rows))
        self._fh.write(_FRAME.pack(len(ct)) + ct)
        self._frames += 1
        self._rows.clear()

    def close(self) -> None:
        self._flush()
        self._fh.close()


def _collector(sealer: _Sealer, snaps: list[KeySnapshot]) -> Callable[[Query], None]:
    """Reads the copied rows' key refs and seals the key of each version, from the key snapshots.

    ``snaps`` is [before, after]: key-store snapshots taken just before and
    just after the data's. A version's key is taken from *after*; one
    missing there whose record still holds a key was corrected in between
    (the correction dropped it), so it comes from *before*. A record with no
    key *after* was erased: its key is left out, even though *before* has
    it. A version found in neither was written and corrected within the
    instant between the snapshots: :class:`_Race`, the backup starts again.
    """
    def collect(query: Query) -> None:
        before, after = snaps
        last = ""
        while True:
            rows = query("SELECT record_id, name FROM records WHERE record_id > ? ORDER BY record_id"
                         " LIMIT ?", (last, 1000))
            if not rows:
                return
            last = str(rows[-1][0])
            named = {str(rid): ref for rid, name in rows
                     if name is not None and (ref := key_ref_of(bytes(name))) is not None}
            now = after.keys_of(list(named))
            gone = [rid for rid, ref in named.items() if rid in now and ref not in now[rid]]
            earlier = before.keys_of(gone) if gone else {}
            for rid, ref in named.items():
                if rid not in now:
                    continue  # erased since the rows were copied: its key stays gone
                stored = now[rid].get(ref) or earlier.get(rid, {}).get(ref)
                if stored is None:
                    raise _Race
                sealer.add(rid, stored)
    return collect


def create_backup(db: Database, keyring: Keyring, out: str | os.PathLike[str], *,
                  events: KeyEvents = noop, record_keys: RecordKeyStore | None = None,
                  on_snapshot: Callable[[], None] | None = None) -> BackupResult:
    """Write a signed backup of ``db``, the keyring file and its versions' record keys to ``out``.

    Never overwrites. The record keys come from ``record_keys`` (default:
    the vault's record-key store beside the keyring), read against the same
    instant as the rows (:func:`_collector`), sealed under a key of this
    backup that is kept in that store and not in the backup (see the module
    doc). ``on_snapshot`` is called once the rows' snapshot is taken, before the
    second key snapshot (for drills of changes made while a backup runs).
    """
    t0 = time.monotonic()
    target = Path(out).expanduser().absolute()
    if target.exists():
        raise BackupError(f"{target.name} exists; refusing to overwrite a backup", code="backup.exists")
    signer = load_or_create_signing_key(keyring)
    with contextlib.ExitStack() as owned:
        if record_keys is None:
            from pivault.keys.attach import open_record_key_store

            # the store the data store is bound to: a missing one is refused, never made anew
            record_keys = owned.enter_context(open_record_key_store(keyring, db=db))
        if record_keys.vault_id != keyring.vault_id:
            raise BackupError("the record-key store belongs to another vault", code="backup.vault")
        for attempt in range(_ATTEMPTS):
            try:
                manifest = _write_backup(db, keyring, record_keys, target, signer, on_snapshot)
                break
            except _Race:
                on_snapshot = None
                if attempt == _ATTEMPTS - 1:
                    raise BackupError(
                        f"records kept being written and corrected while the backup read them, {_ATTEMPTS}"
                        " times over; no backup was written", code="backup.busy",
                        hint="run the backup again, at a quieter moment") from None
    events("backup.create", "ok", {"backup_id": manifest["backup_id"], "file": target.name,
                                   "records": manifest["counts"].get("records", 0),
                                   "record_keys": manifest["record_keys"]["keys"]})
    return BackupResult(target, manifest, time.monotonic() - t0)


def _write_backup(db: Database, keyring: Keyring, keys: RecordKeyStore, target: Path, signer: SigningKey,
                  on_snapshot: Callable[[], None] | None) -> dict[str, Any]:
    backup_id = str(uuid.uuid4())
    seal = keyring.new_record_key(sealing_record_id(backup_id))
    with _staging(target) as stage, contextlib.ExitStack() as snaps_open:
        sealer = _Sealer(stage / SEALED_MEMBER, seal)
        snaps_open.callback(sealer.close)
        snaps = [snaps_open.enter_context(keys.pinned())]

        def pinned() -> None:
            if on_snapshot is not None:
                on_snapshot()
            snaps.append(snaps_open.enter_context(keys.pinned()))

        collect = _collector(sealer, snaps)
        if db.dialect == "sqlite":
            path = stage / "vault.db"
            info = _dump_sqlite(db, path, pinned, collect)
            files = [("data/vault.db", path)]
        else:
            info, files = _dump_postgresql(db, stage, pinned, collect)
        snaps_open.close()
        if info.get("store_vault_id") != keyring.vault_id:
            raise BackupError("the store is not bound to this keyring's vault", code="backup.vault")
        kr_copy = stage / "keyring.json"
        shutil.copyfile(keyring.path, kr_copy)
        files.append(("keyring.json", kr_copy))
        files.append((SEALED_MEMBER, stage / SEALED_MEMBER))
        manifest = {
            "format": "pivault.backup", "version": DATA_FORMAT_VERSION, "kind": "data",
            "backup_id": backup_id, "vault_id": keyring.vault_id, "created": _now(),
            "pivault_version": __version__, "backend": db.dialect,
            "schema": info["schema"], "tables": info["tables"], "counts": info["counts"],
            "audit_head": info["audit_head"], "keyring_generation": keyring.generation,
            "record_keys": {"keys": sealer.count, "file": SEALED_MEMBER,
                            "sealed_by": "a key of this backup kept in the record-key store beside the "
                                         "keyring, never in the backup: an erase reaches this backup "
                                         "once that key is forgotten (`pivault keys gc`)"},
        }
        # the sealing key is kept before the backup exists: no backup whose keys nothing opens
        keys.put_backup_key(backup_id, seal.stored)
        return write_container(target, files, manifest, signer, scratch=stage)


def backup_record_keys(store: RecordKeyStore, keyring: Keyring, out: str | os.PathLike[str], *,
                       events: KeyEvents = noop) -> BackupResult:
    """Write a signed backup of the record-key store (wrapped keys only) to ``out``.

    A portable stream (``u16 len | record id | key (81 bytes)`` per key)
    read in one snapshot. Keep these on the keyring's shelf, not the data's,
    and for no longer than erasures may take to become final (docs/keys.md).
    """
    t0 = time.monotonic()
    target = Path(out).expanduser().absolute()
    if target.exists():
        raise BackupError(f"{target.name} exists; refusing to overwrite a backup", code="backup.exists")
    if store.vault_id != keyring.vault_id:
        raise BackupError("the record-key store belongs to another vault", code="backup.vault")
    signer = load_or_create_signing_key(keyring)
    with _staging(target) as stage:
        path = stage / "record_keys.bin"
        n = 0
        with open(path, "wb") as fh:
            for rid, stored in store.snapshot():
                raw = rid.encode("utf-8")
                fh.write(_RK_ROW.pack(len(raw)) + raw + stored)
                n += 1
        manifest = {
            "format": "pivault.backup", "version": 1, "kind": "record-keys",
            "backup_id": str(uuid.uuid4()), "vault_id": keyring.vault_id, "created": _now(),
            "pivault_version": __version__, "counts": {"record_keys": n},
            "keyring_generation": keyring.generation,
        }
        manifest = write_container(target, [("data/record_keys.bin", path)], manifest, signer,
                                   scratch=stage)
    events("keys.backup", "ok", {"backup_id": manifest["backup_id"], "file": target.name, "keys": n})
    return BackupResult(target, manifest, time.monotonic() - t0)
