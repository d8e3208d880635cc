"""``pivault backup``: a consistent, signed, online copy of the data store.

What is in it: every table of the store as it was at one instant
(ciphertext, blind indexes, audit trail, import and job state), and the
keyring file (keysets encrypted under the root key). What is not: any
plaintext, any key in clear, and the record keys, which live beside the
keyring and have their own backup (:func:`backup_record_keys`), so that an
erase also reaches every data backup already taken.

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
import os
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
from pivault.backup.signing import BackupError, load_or_create_signing_key
from pivault.crypto import Keyring
from pivault.keys.events import KeyEvents, noop
from pivault.keys.shred import RecordKeyStore
from pivault.store.db import Database

__all__ = ["BackupResult", "backup_record_keys", "create_backup", "ident", "pg_tables"]

_RK_ROW = struct.Struct(">H")


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


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A private scratch directory beside the output (same file system: the rename is atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix=".pivault-backup-", dir=out.parent))
    os.chmod(d, 0o700)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


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


def _dump_sqlite(db: Database, dest: Path) -> dict[str, Any]:
    src = sqlite3.connect(db.url.target, timeout=30.0)
    try:
        dst = sqlite3.connect(dest)
        try:
            src.backup(dst)  # one step: a single consistent read of every page
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


def _dump_postgresql(db: Database, stage: Path) -> tuple[dict[str, Any], list[tuple[str, Path]]]:
    import psycopg

    files: list[tuple[str, Path]] = []
    info: dict[str, Any] = {"tables": {}, "counts": {}}
    with psycopg.connect(db.url.target) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            tables = pg_tables(conn)
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
    return info, files


def create_backup(db: Database, keyring: Keyring, out: str | os.PathLike[str], *,
                  events: KeyEvents = noop) -> BackupResult:
    """Write a signed backup of ``db`` and the keyring file to ``out`` (never overwriting)."""
    t0 = time.monotonic()
    target = Path(out).expanduser().absolute()
    if target.exists():
        raise BackupError(f"{target.name} exists; refusing to overwrite a backup", code="backup.exists")
    signer = load_or_create_signing_key(keyring)
    with _staging(target) as stage:
        if db.dialect == "sqlite":
            path = stage / "vault.db"
            info = _dump_sqlite(db, path)
            files = [("data/vault.db", path)]
        else:
            info, files = _dump_postgresql(db, stage)
        if info.get("store_vault_id") != keyring.vault_id:
            raise BackupError("the store is not bound to this keyring's vault", code="backup.vault")
        kr_copy = stage / "keyring.json"
        shutil.copyfile(keyring.path, kr_copy)
        files.append(("keyring.json", kr_copy))
        manifest = {
            "format": "pivault.backup", "version": 1, "kind": "data",
            "backup_id": str(uuid.uuid4()), "vault_id": keyring.vault_id, "created": _now(),
            "pivault_version": __version__, "backend": db.dialect,
            "schema": info["schema"], "tables": info["tables"], "counts": info["counts"],
            "audit_head": info["audit_head"], "keyring_generation": keyring.generation,
            "record_keys": "not included: they are kept beside the keyring and backed up by "
                           "`pivault keys backup`, so an erase reaches this backup too",
        }
        manifest = write_container(target, files, manifest, signer)
    events("backup.create", "ok", {"backup_id": manifest["backup_id"], "file": target.name,
                                   "records": manifest["counts"].get("records", 0)})
    return BackupResult(target, manifest, time.monotonic() - t0)


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
        manifest = write_container(target, [("data/record_keys.bin", path)], manifest, signer)
    events("keys.backup", "ok", {"backup_id": manifest["backup_id"], "file": target.name, "keys": n})
    return BackupResult(target, manifest, time.monotonic() - t0)
