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

__all__ = ["keys_settings", "open_record_key_store", "record_store"]


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


def open_record_key_store(keyring: Keyring, *, home: str | os.PathLike[str] | None = None) -> RecordKeyStore:
    settings = keys_settings(home)
    url = str(settings.get("record_key_store") or record_key_store_url(keyring.path))
    return RecordKeyStore(url, vault_id=keyring.vault_id)


def record_store(db: Database, keyring: Keyring, *,
                 home: str | os.PathLike[str] | None = None) -> ShreddingRecordStore:
    """The record store the Vault uses: per-record keys on, encryptions counted.

    Turns on :attr:`Keyring.record_keys` for this keyring: from here on every
    record sealed with it gets a key of its own, which this store keeps.
    """
    settings = keys_settings(home)
    keys = open_record_key_store(keyring, home=home)
    keyring.record_keys = True
    ledger = UsageLedger(keys, keyring, UsagePolicy.from_mapping(settings))
    ledger.attach()
    return ShreddingRecordStore(db, keys, ledger=ledger)
