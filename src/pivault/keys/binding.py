"""Which record-key store a vault belongs with, and the refusal when the one at hand is not it.

Every record is sealed under a key of its own, kept in the record-key store
(:mod:`pivault.keys.shred`), a database apart from the data. When that store
is not there — the file moved aside, its disk not mounted, a wrong
``[keys] record_key_store`` — a new, empty one made in its place would make
every record read as erased, send new records' keys where the real store
never sees them, and let a key census find nothing under a field key that
still wraps every key of the real store. So the two are bound:

* the data store keeps the id of its record-key store (``vault_meta``, key
  ``record_key_store``) and the record-key store keeps the same id
  (``keystore_meta``, key ``store_id``), both written when the vault is made;
* a vault opens only with the store of that id. A store that is not there,
  whose ``record_keys`` table is gone, or that carries another id is refused
  (``keys.store_missing``, ``keys.store_mismatch``) before anything is read,
  created or written;
* a new store is made only for a data store never bound to one and holding no
  record sealed under a record key: a vault being made;
* a vault or a store from before the binding (one side or both without the
  id) is bound on its first open, only when the store clearly is the vault's:
  the keys of most of a sample of its records are there and open under its
  keyring (``keys.store_empty`` when none is, ``keys.store_mismatch`` when
  too few are; nothing is bound then);
* ``pivault keys restore`` refills a lost store (:func:`attach` with
  ``repair``), which is bound once its keys are back and open records.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from pivault.crypto import IntegrityError, Keyring
from pivault.crypto.recordkeys import RECORD_CIPHERTEXT_VERSION, key_ref_of
from pivault.errors import ConfigError
from pivault.keys.shred import RecordKeyStore, store_location, store_missing
from pivault.store.db import Database, StoreError, parse_url

__all__ = ["DATA_KEY", "attach", "bind", "bound_store_id", "check_home", "probe", "sealed_sample"]

#: the key in the data store's ``vault_meta`` naming its record-key store's id
DATA_KEY = "record_key_store"
#: records looked at, from each end of the record-id order, to judge an unbound store
_SAMPLE = 128
_SEALED = bytes([RECORD_CIPHERTEXT_VERSION])


@dataclass(frozen=True)
class Probe:
    """What is at a record-key store's location, found without creating or writing anything."""

    where: str
    sqlite: bool
    #: which of its two essential tables are there
    tables: frozenset[str]
    vault_id: str | None = None
    store_id: str | None = None

    @property
    def present(self) -> bool:
        return bool(self.tables)

    @property
    def lost_table(self) -> str | None:
        """The one essential table missing from a store that has the other (dropped), else None."""
        lost = {"keystore_meta", "record_keys"} - self.tables
        return lost.pop() if self.present and len(lost) == 1 else None


def probe(url: str) -> Probe:
    """Look at the store at ``url``: its tables and ids. A missing SQLite file is not made."""
    parsed = parse_url(url)
    where = store_location(url)
    sqlite = parsed.dialect == "sqlite"
    if sqlite:
        p = Path(parsed.target)
        if not p.is_file() or p.stat().st_size == 0:
            return Probe(where, sqlite, frozenset())
    try:
        db = Database(url)
    except StoreError as exc:
        if exc.code == "store.schema":  # the search path names no schema: nothing of the store is there
            return Probe(where, sqlite, frozenset())
        raise StoreError(f"the record-key store {where} cannot be opened: {exc.message}", code=exc.code,
                         hint=exc.hint) from None
    with db:
        tables = frozenset(t for t in ("keystore_meta", "record_keys") if db.table_exists(t))
        meta: dict[str, str] = {}
        if "keystore_meta" in tables:
            meta = {str(k): str(v) for k, v in db.query(
                "SELECT key, value FROM keystore_meta WHERE key IN ('vault_id', 'store_id')")}
    return Probe(where, sqlite, tables, meta.get("vault_id"), meta.get("store_id"))


def bound_store_id(db: Database) -> str | None:
    """The id of the record-key store the data store ``db`` is bound to; None if it never was."""
    if not db.table_exists("vault_meta"):
        return None
    row = db.query_one("SELECT value FROM vault_meta WHERE key = ?", (DATA_KEY,))
    return str(row[0]) if row else None


def _claim_data(db: Database, store_id: str) -> str:
    """Bind the data store to ``store_id`` unless it is bound already; returns the id it holds."""
    import time

    db.execute("INSERT INTO vault_meta (key, value, updated_at) VALUES (?, ?, ?)"
               " ON CONFLICT (key) DO NOTHING", (DATA_KEY, store_id, time.time()))
    held = bound_store_id(db)
    assert held is not None
    return held


def sealed_sample(db: Database) -> dict[str, bytes]:
    """Records sealed under a record key, record id -> the key ref their ciphertext names.

    The oldest and the newest (record ids sort by creation time), so that a
    store holding only the keys of records written after some day, or only of
    those before, is not taken for the whole. When neither end holds a sealed
    record (a vault of field-key-only records), any sealed ones are looked for.
    """
    rows = db.query("SELECT record_id, name FROM records ORDER BY record_id LIMIT ?", (_SAMPLE,))
    rows += db.query("SELECT record_id, name FROM records ORDER BY record_id DESC LIMIT ?", (_SAMPLE,))
    out = _refs(rows)
    if not out and rows:
        first = "substr(name, 1, 1)" if db.dialect == "sqlite" else "substring(name from 1 for 1)"
        out = _refs(db.query(f"SELECT record_id, name FROM records WHERE {first} = ? LIMIT ?",
                             (_SEALED, _SAMPLE)))
    return out


def _refs(rows: list[tuple[object, ...]]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for rid, name in rows:
        ref = key_ref_of(bytes(name)) if isinstance(name, bytes | bytearray | memoryview) else None
        if ref is not None:
            out[str(rid)] = ref
    return out


def _opens(keyring: Keyring, record_id: str, stored: bytes) -> bool:
    try:
        keyring.open_record_key(record_id, stored)
    except IntegrityError:
        return False
    return True


def _mismatch(where: str) -> ConfigError:
    return ConfigError(
        f"the record-key store {where} is not the one this vault was made with (it carries another "
        "store's id): its keys would not open this vault's records, so nothing was read or written; "
        "point [keys] record_key_store in pivault.toml at this vault's own store",
        code="keys.store_mismatch",
        hint="if the vault's own store is lost, `pivault keys restore FILE` puts back its newest "
             "record-key backup")


def bind(db: Database, keyring: Keyring, keys: RecordKeyStore, *, fresh: bool = False) -> str:
    """Bind the data store ``db`` and the record-key store ``keys`` to one id, or refuse; returns the id.

    Already bound to each other: nothing to do. Bound to different stores:
    ``keys.store_mismatch``. One side or both unbound (made by an earlier
    pivault, refilled from a key backup, or a new empty store made in the
    real one's place): bound only when more than half of a sample of the
    vault's sealed records have their key here and it opens under
    ``keyring``; with no sealed record, only a data store never bound, or
    a store this command made (``fresh``), is bound. Nothing is written when
    this refuses.
    """
    bound, held = bound_store_id(db), keys.store_id
    where = store_location(keys.db.url.raw)
    if bound is not None and held == bound:
        return bound
    if bound is not None and held is not None:
        raise _mismatch(where)
    sample = sealed_sample(db)
    if sample:
        found = keys.get_many(list(sample.items()))
        opened = sum(1 for (rid, _), stored in found.items() if _opens(keyring, rid, stored))
        if opened == 0:
            raise ConfigError(
                f"the record-key store {where} holds no key of this vault's records (a new, empty store, "
                "or another one): nothing was read or written with it; put the vault's own store back (or "
                "point [keys] record_key_store at it) and run the command again", code="keys.store_empty",
                hint="if the vault's own store is lost, `pivault keys restore FILE` puts back its newest "
                     "record-key backup")
        if opened * 2 <= len(sample):
            raise ConfigError(
                f"the record-key store {where} holds the keys of only {opened} of {len(sample)} records "
                "sampled: it is not clearly this vault's, so it was not taken as such and nothing was read "
                "or written; point [keys] record_key_store at the vault's own store",
                code="keys.store_mismatch",
                hint="`pivault keys restore FILE` puts the keys of a record-key backup into the store at "
                     "hand")
    elif bound is not None and not fresh:
        raise _mismatch(where)
    chosen = keys.claim_id(bound or held or uuid.uuid4().hex)
    if bound is None:
        bound = _claim_data(db, chosen)
    if bound != chosen:  # another process bound the data store to another store meanwhile
        raise _mismatch(where)
    return chosen


def attach(db: Database, keyring: Keyring, url: str, *, repair: bool = False) -> RecordKeyStore:
    """Open the record-key store at ``url`` for the vault whose data store is ``db``, or refuse.

    Creates the store only for a data store never bound to one and holding no
    sealed record (a vault being made), and binds the two then. With
    ``repair`` (``pivault keys restore``), a store that is not there, or has
    lost its keys table, is made anew and left unbound: :func:`bind` it once
    its keys are back. Refusals change nothing on either side.
    """
    bound = bound_store_id(db)
    found = probe(url)
    if found.vault_id is not None and found.vault_id != keyring.vault_id:
        # said by the store itself, with the vault it belongs to
        RecordKeyStore(url, vault_id=keyring.vault_id, create=False).close()
    complete = found.tables == {"keystore_meta", "record_keys"}
    if not complete and not repair:
        if found.present or bound is not None or sealed_sample(db):
            raise store_missing(found.where, sqlite=found.sqlite, lost_table=found.lost_table)
        keys = RecordKeyStore(url, vault_id=keyring.vault_id)  # a vault being made
    else:
        keys = RecordKeyStore(url, vault_id=keyring.vault_id, create=repair)
    try:
        if bound is not None and found.store_id == bound:
            return keys
        if bound is not None and found.store_id is not None:
            raise _mismatch(found.where)
        if not repair:
            bind(db, keyring, keys)
    except BaseException:
        keys.close()
        raise
    return keys


def check_home(home: str | os.PathLike[str]) -> None:
    """Refuse, without a passphrase, a vault home whose bound record-key store is missing or foreign.

    For a process that writes to the vault without opening records (the
    node's audit chainer): it must not go on beside a vault that every
    other door refuses. A vault not yet bound is left to the first open
    that has the keyring (:func:`attach`).
    """
    from pivault.keys.attach import keys_settings
    from pivault.keys.shred import record_key_store_url
    from pivault.vault.home import load

    cfg = load(home)
    url = str(keys_settings(cfg.home).get("record_key_store") or record_key_store_url(cfg.keyring_path))
    with Database(cfg.existing_store_url()) as db:
        bound = bound_store_id(db)
    if bound is None:
        return
    found = probe(url)
    if found.tables != {"keystore_meta", "record_keys"}:
        raise store_missing(found.where, sqlite=found.sqlite, lost_table=found.lost_table)
    if found.store_id != bound:
        raise _mismatch(found.where)
