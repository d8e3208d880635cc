"""Key lifecycle: rotation, rewrap, retirement, custodians, crypto-shredding, usage.

Operations on a vault's keys over time, on top of :mod:`pivault.crypto`
(which holds the keys) and :mod:`pivault.store` (which holds what they
protect). See docs/keys.md.

Submodules load on first use (``pivault.keys.rewrap`` …), so that the store's
schema registry can import :mod:`pivault.keys.jobs` without pulling in the
rest.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Census",
    "RecordKeyStore",
    "RewrapReport",
    "Share",
    "ShareError",
    "ShreddingRecordStore",
    "UsageLedger",
    "UsagePolicy",
    "census",
    "combine",
    "recover",
    "resolve_keysets",
    "retire_unused",
    "rewrap",
    "rotate",
    "split",
    "status",
]

_WHERE = {
    "Census": "sites", "census": "sites",
    "RecordKeyStore": "shred", "ShreddingRecordStore": "shred",
    "RewrapReport": "rewrap", "rewrap": "rewrap",
    "Share": "custodians", "ShareError": "custodians", "combine": "custodians",
    "recover": "custodians", "split": "custodians",
    "UsageLedger": "usage", "UsagePolicy": "usage",
    "resolve_keysets": "rotate", "retire_unused": "rotate", "rotate": "rotate", "status": "rotate",
}


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'pivault.keys' has no attribute {name!r}")
    return getattr(importlib.import_module(f"pivault.keys.{mod}"), name)
