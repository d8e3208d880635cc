"""Where ciphertext under the field key lives, and how much of it each key protects.

A field key may be retired only when nothing needs it any more, so the count
must not miss a place. Two mechanisms together:

* **The census scans every bytes column of every table** for values that
  are pivault format-1 ciphertexts (``0x01 0x01 | key id``, at least 46
  bytes) and counts them by key id; plus the record-key store (wrapped
  record keys) and the small key files kept beside the keyring. A table
  added by a later component is counted without anyone registering it.
* **Sites** say how to *rewrap* a place: the table, its key columns, the
  ciphertext column and the associated data (record id, field) its values
  were made with. Values the census finds outside every known site keep
  their key from retirement, and ``keys status`` names the column.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pivault.crypto import IntegrityError, Keyring
from pivault.crypto._atomic import write_private
from pivault.store.db import Database

__all__ = [
    "Census",
    "FileSite",
    "Site",
    "census",
    "file_sites",
    "register_site",
    "sites",
]

#: shortest format-1 field ciphertext: version, Tink prefix, nonce, tag
MIN_V1_CIPHERTEXT = 1 + 5 + 24 + 16


@dataclass(frozen=True)
class Site:
    """A column of ciphertexts outside the record table, with the AD its values carry."""

    table: str
    key_columns: tuple[str, ...]
    column: str
    #: key column values -> (record id, field) of the associated data
    associated: Callable[[Sequence[Any]], tuple[str, str]]


_SITES: list[Site] = []


def register_site(site: Site) -> None:
    """Declare a table column of keyring ciphertexts, so rewrap can move it to the primary key."""
    if all((s.table, s.column) != (site.table, site.column) for s in _SITES):
        _SITES.append(site)


def sites() -> tuple[Site, ...]:
    return tuple(_SITES)


# The associated data below must stay in step with the modules that write
# these columns (imports, audit, detect.canary, vault.checks, leak.exports, leak.check).
register_site(Site("import_rejects", ("reject_id",), "raw_row", lambda k: (str(k[0]), "raw_row")))
register_site(Site("audit_head", ("chain_id", "seq"), "key_ct",
                   lambda k: (f"audit.{k[0]}.{int(k[1])}", "ratchet")))
register_site(Site("canary_key", ("id",), "key_ct", lambda k: ("canary-registry", "key")))
register_site(Site("index_check_key", ("id",), "key_ct", lambda k: ("index-check", "key")))
register_site(Site("exports", ("export_id",), "selection", lambda k: (f"export:{k[0]}", "selection")))
register_site(Site("export_members", ("export_id", "kind", "chunk"), "data",
                   lambda k: (f"export:{k[0]}", f"{k[1]}.{int(k[2])}")))
register_site(Site("leak_case_members", ("case_id", "chunk"), "data",
                   lambda k: (f"case:{k[0]}", f"affected.{int(k[1])}")))


@dataclass(frozen=True)
class FileSite:
    """A JSON key file beside the keyring holding one keyring ciphertext (a signing key)."""

    path: Path
    member: str
    record_id: str
    field: str

    def read(self) -> bytes | None:
        try:
            doc = json.loads(self.path.read_bytes())
            return base64.b64decode(doc[self.member], validate=True)
        except (OSError, ValueError, KeyError, TypeError, binascii.Error):
            return None

    def rewrap(self, keyring: Keyring) -> bool:
        """Re-encrypt under the primary key; False if the file is not this keyring's."""
        doc = json.loads(self.path.read_bytes())
        ct = base64.b64decode(doc[self.member], validate=True)
        try:
            plain = keyring.decrypt(self.record_id, self.field, ct)
        except IntegrityError:
            return False
        ct = keyring.encrypt(self.record_id, self.field, plain)
        doc[self.member] = base64.b64encode(ct).decode("ascii")
        write_private(self.path, json.dumps(doc, indent=2).encode() + b"\n", overwrite=True)
        return True


def default_audit_dir(keyring_path: Path, vault_id: str) -> Path:
    """Where the audit keys live unless ``[audit] key_dir`` says otherwise (see pivault.detect.setup)."""
    return Path(keyring_path).expanduser().absolute().parent / f"{vault_id}.audit"


def file_sites(keyring_path: Path, vault_id: str, *, audit_dir: Path | None = None) -> list[FileSite]:
    """Key files beside the keyring that hold keyring ciphertexts (those that exist)."""
    from pivault.backup.signing import signing_key_path

    adir = audit_dir if audit_dir is not None else default_audit_dir(keyring_path, vault_id)
    candidates = [
        FileSite(adir / "audit-signing.key", "private_ct", "audit.signing", "ed25519"),
        FileSite(signing_key_path(keyring_path), "private_ct", "backup.signing", "ed25519"),
    ]
    return [c for c in candidates if c.path.exists()]


# -- census --------------------------------------------------------------------------

def bytes_columns(db: Database) -> list[tuple[str, str]]:
    """Every (table, column) of bytes type in the store."""
    if db.dialect == "sqlite":
        out = []
        for (table,) in db.query("SELECT name FROM sqlite_master WHERE type = 'table'"
                                 " AND name NOT LIKE 'sqlite_%' ORDER BY name"):
            for row in db.query(f'PRAGMA table_info("{table}")'):
                if str(row[2]).upper() == "BLOB":
                    out.append((str(table), str(row[1])))
        return out
    return [(str(t), str(c)) for t, c in db.query(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND data_type = 'bytea'"
        " ORDER BY table_name, ordinal_position")]


def _key_ids_in_column(db: Database, table: str, column: str) -> dict[int, int]:
    if db.dialect == "sqlite":
        sql = (f'SELECT substr("{column}", 3, 4) AS k, COUNT(*) FROM "{table}"'
               f' WHERE substr("{column}", 1, 2) = x\'0101\' AND length("{column}") >= ? GROUP BY k')
    else:
        sql = (f'SELECT substring("{column}" from 3 for 4) AS k, COUNT(*) FROM "{table}"'
               f" WHERE substring(\"{column}\" from 1 for 2) = '\\x0101'::bytea"
               f' AND octet_length("{column}") >= ? GROUP BY k')
    return {int.from_bytes(bytes(k), "big"): int(n) for k, n in db.query(sql, (MIN_V1_CIPHERTEXT,))}


@dataclass
class Census:
    """Values per field-key id, by place (``table.column``, ``record_keys``, ``file:NAME``)."""

    primary: int
    key_ids: tuple[int, ...]
    by_key: dict[int, dict[str, int]] = field(default_factory=dict)

    def total(self, key_id: int) -> int:
        return sum(self.by_key.get(key_id, {}).values())

    def add(self, key_id: int, place: str, n: int) -> None:
        if n:
            d = self.by_key.setdefault(key_id, {})
            d[place] = d.get(place, 0) + n

    def unknown_keys(self) -> list[int]:
        """Key ids found in data that the keyring does not hold (data it cannot read)."""
        return sorted(k for k in self.by_key if k not in self.key_ids)

    def to_dict(self) -> dict[str, Any]:
        keys = sorted(set(self.key_ids) | set(self.by_key))
        return {"primary": self.primary,
                "keys": {str(k): {"total": self.total(k),
                                  "where": dict(sorted(self.by_key.get(k, {}).items()))} for k in keys}}


def census(db: Database, keyring: Keyring, *, record_keys: Any = None,
           files: Sequence[FileSite] = ()) -> Census:
    """Count every field-key ciphertext by key id: data store, record-key store, key files.

    One scan of each bytes column; run it for ``keys status`` and before
    retiring a key, not on a request path.
    """
    c = Census(keyring.primary_key_id("aead"), keyring.key_ids("aead"))
    for table, column in bytes_columns(db):
        if table == "blind_index":
            continue  # truncated PRF values, never ciphertext
        for kid, n in _key_ids_in_column(db, table, column).items():
            c.add(kid, f"{table}.{column}", n)
    if record_keys is not None:
        for kid, n in record_keys.key_ids_in_use().items():
            c.add(kid, "record_keys", n)
    for site in files:
        ct = site.read()
        if ct is None:
            continue
        try:
            kid = keyring.key_id_of(ct)
        except IntegrityError:
            continue
        if kid in c.key_ids:  # a shared key directory may hold another vault's files
            c.add(kid, f"file:{site.path.name}", 1)
    return c
