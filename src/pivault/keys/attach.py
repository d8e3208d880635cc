"""How the Vault gets its record store: shredding, counted, configured from ``[keys]``.

Settings in the vault's ``pivault.toml`` (all optional)::

    [keys]
    record_key_store = "sqlite:////etc/pivault/keyrings/<vault-id>.keyring.recordkeys"
                              # default: beside the keyring; a PostgreSQL URL (another database
                              # than the data's) for several API nodes
    usage_limit = 281474976710656     # encryptions per field key (2^48)
    usage_warn = 0.25                 # warn at this fraction of the limit
    usage_rotate = 0.5                # rotate at this fraction when auto_rotate
    auto_rotate = false
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pivault.crypto import Keyring
from pivault.errors import ConfigError
from pivault.keys.shred import RecordKeyStore, ShreddingRecordStore, record_key_store_url
from pivault.keys.usage import UsageLedger, UsagePolicy
from pivault.store.db import Database

__all__ = ["keys_settings", "open_record_key_store", "record_key_store_location", "record_store"]


def keys_settings(home: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The ``[keys]`` table of a vault home's ``pivault.toml`` (empty if none)."""
    if home is None:
        return {}
    path = Path(home) / "pivault.toml"
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path.name}: {type(exc).__name__}", code="home.config") from None
    section = doc.get("keys", {})
    if not isinstance(section, dict):
        raise ConfigError("[keys] in pivault.toml must be a table", code="home.config")
    return section


def record_key_store_location(keyring: Keyring, *, home: str | os.PathLike[str] | None = None) -> str:
    """The URL of a vault's record-key store: ``[keys] record_key_store``, else beside the keyring."""
    return str(keys_settings(home).get("record_key_store") or record_key_store_url(keyring.path))


def open_record_key_store(keyring: Keyring, *, home: str | os.PathLike[str] | None = None,
                          db: Database | None = None, url: str | None = None, create: bool = False,
                          repair: bool = False) -> RecordKeyStore:
    """The vault's record-key store, never made anew by accident.

    With the vault's data store ``db``, the store must be the one ``db`` is
    bound to (:func:`pivault.keys.binding.attach`; ``repair`` for ``pivault
    keys restore``). Without it (a restore, whose data store is being made),
    the store must be there (``keys.store_missing``) unless ``create`` says
    this caller makes it on purpose. ``url`` overrides the configured one.
    """
    target = url or record_key_store_location(keyring, home=home)
    if db is not None:
        from pivault.keys.binding import attach

        return attach(db, keyring, target, repair=repair)
    return RecordKeyStore(target, vault_id=keyring.vault_id, create=create)


def record_store(db: Database, keyring: Keyring, *, home: str | os.PathLike[str] | None = None,
                 url: str | None = None) -> ShreddingRecordStore:
    """The record store the Vault uses: per-record keys on, encryptions counted.

    Turns on :attr:`Keyring.record_keys` for this keyring: from here on every
    record sealed with it gets a key of its own, which this store keeps. The
    record-key store must be the one the data store is bound to
    (:mod:`pivault.keys.binding`): a missing or foreign one is refused, never
    replaced by an empty one.
    """
    settings = keys_settings(home)
    keys = open_record_key_store(keyring, home=home, db=db, url=url)
    keyring.record_keys = True
    ledger = UsageLedger(keys, keyring, UsagePolicy.from_mapping(settings))
    ledger.attach()
    return ShreddingRecordStore(db, keys, ledger=ledger)
