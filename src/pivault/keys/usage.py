"""Rotation by use: count encryptions per field key, warn and rotate well before the bound.

The keyring counts in memory (one integer add per encryption) and reports
to this ledger every ``every`` encryptions; the ledger adds the counts up in
the record-key store, beside the keyring, so they survive restarts and add
up across processes. Forked import workers hand their counts back to the
importing process with each chunk (:meth:`Keyring.add_usage`).

The bound: field keys are XChaCha20-Poly1305 with 192-bit random nonces.
After q encryptions the chance of any repeated nonce is at most q²/2^193.
:data:`DEFAULT_LIMIT` (2^48 ≈ 2.8 × 10^14 encryptions) keeps it below
2^-97. By default the ledger warns at a quarter of the limit and, when
``auto_rotate`` is set, rotates at half, far inside the margin. With record
keys on, a field key encrypts one record key per record version, so the
count grows with writes, not with fields.

Counts can only be low, never high: what a process counted since its last
report is lost if it dies (at most ``every`` per process), which the
margins above absorb many times over.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pivault.crypto import Keyring
from pivault.errors import ConfigError
from pivault.keys.shred import RecordKeyStore

__all__ = ["DEFAULT_LIMIT", "UsageLedger", "UsagePolicy"]

log = logging.getLogger("pivault.keys")

#: encryptions per field key: nonce-collision chance below 2^-97 (see module doc)
DEFAULT_LIMIT = 2**48


@dataclass(frozen=True)
class UsagePolicy:
    """When to warn and when to rotate, as fractions of ``limit``."""

    limit: int = DEFAULT_LIMIT
    warn_at: float = 0.25
    rotate_at: float = 0.5
    auto_rotate: bool = False

    def __post_init__(self) -> None:
        if self.limit < 1 or not 0 < self.warn_at <= self.rotate_at <= 1:
            raise ValueError("usage policy needs limit >= 1 and 0 < warn_at <= rotate_at <= 1")

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> UsagePolicy:
        """From a ``[keys]`` table of ``pivault.toml`` (``usage_limit``, ``usage_warn``,
        ``usage_rotate``, ``auto_rotate``)."""
        d = cls()
        try:
            return cls(limit=int(data.get("usage_limit", d.limit)),
                       warn_at=float(data.get("usage_warn", d.warn_at)),
                       rotate_at=float(data.get("usage_rotate", d.rotate_at)),
                       auto_rotate=bool(data.get("auto_rotate", d.auto_rotate)))
        except (TypeError, ValueError):
            raise ConfigError("[keys] needs usage_limit >= 1 and 0 < usage_warn <= usage_rotate <= 1",
                              code="home.config", hint="usage_warn and usage_rotate are fractions "
                              "of usage_limit, e.g. 0.25 and 0.5") from None


class UsageLedger:
    """Adds up the keyring's encryption counts durably; warns and optionally rotates."""

    def __init__(self, store: RecordKeyStore, keyring: Keyring, policy: UsagePolicy | None = None,
                 *, on_warning: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.keyring = keyring
        self.policy = policy or UsagePolicy()
        self.on_warning = on_warning
        self._pid = os.getpid()
        self._warned: set[int] = set()
        self.rotations: list[int] = []

    def attach(self, *, every: int = 65536) -> None:
        """Have the keyring report here every ``every`` encryptions."""
        self.keyring.set_usage_sink(self.record, every=every)

    def detach(self) -> None:
        """Stop receiving the keyring's reports (if it still reports here)."""
        if self.keyring.usage_sink == self.record:
            self.keyring.set_usage_sink(None)

    def flush(self) -> None:
        """Report what the keyring counted since its last report (call at shutdown)."""
        counts = self.keyring.take_usage()
        if counts:
            self.record(counts)

    def record(self, counts: dict[int, int]) -> None:
        """Add counts (the keyring's sink). Never raises: counting must not stop encryption."""
        try:
            self._record(counts)
        except Exception as exc:
            log.warning("key usage could not be recorded (%s); counts since the last report are lost",
                        type(exc).__name__)

    def _record(self, counts: dict[int, int]) -> None:
        self.store.db.reopen_after_fork()
        totals = self.store.add_usage(counts)
        p = self.policy
        for key_id, total in totals.items():
            if total >= p.warn_at * p.limit and key_id not in self._warned:
                self._warned.add(key_id)
                msg = (f"field key {key_id} has made {total:,} encryptions, "
                       f"{total / p.limit:.0%} of the rotation limit {p.limit:,}: rotate it "
                       "(`pivault keys rotate`, then `pivault keys rewrap`)")
                log.warning(msg)
                if self.on_warning is not None:
                    self.on_warning(msg)
            if (p.auto_rotate and total >= p.rotate_at * p.limit and os.getpid() == self._pid
                    and key_id == self.keyring.primary_key_id("aead")):
                new = self.keyring.rotate("aead")
                self.rotations.append(new)
                log.warning("field key %s reached %s encryptions: rotated, new primary key %s",
                            key_id, total, new)

    def report(self) -> list[dict[str, Any]]:
        """Per field key: encryptions counted, fraction of the limit, and what it calls for."""
        p = self.policy
        usage = self.store.usage()
        out = []
        for key_id in self.keyring.key_ids("aead"):
            n = usage.get(key_id, 0)
            state = ("rotate" if n >= p.rotate_at * p.limit
                     else "warn" if n >= p.warn_at * p.limit else "ok")
            out.append({"key_id": key_id, "encryptions": n, "fraction_of_limit": n / p.limit,
                        "state": state})
        return out
