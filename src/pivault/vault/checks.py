"""Check tags: a keyed tag on each blind-index entry, so that a lookup decrypts only its match.

A blind index is truncated on purpose: about C = 4-8 residents share each
index value (docs/crypto.md), so that a value does not single out a resident
even to someone who holds the index key. A lookup must then tell the resident
it looks for from the C - 1 others. Decrypting each candidate's field does,
at the price of reading the candidate's row and record key and unwrapping the
key: the largest part of a lookup's work, paid C times, and on a store larger
than memory two random page reads per candidate.

So each entry also carries ``HMAC-SHA256(K, index name | record id | value)``
cut to 8 bytes, where ``K`` is a random key kept in the store encrypted under
the keyring's field key (as the canary registry keeps its key). A lookup
computes, for each candidate's record id, the tag the resident it looks for
would carry, reads only the records whose tag matches (and those whose entry
has no tag: written before tags existed), then decrypts and compares them as
before. A tag never decides a match alone: it only rules candidates out.

What a tag tells:

* without ``K``, nothing: a pseudo-random function of the record id and the
  value, so two records with the same value have unrelated tags;
* with ``K`` and the store, whether a record holds a guessed value. Unwrapping
  ``K`` takes the field key, which decrypts the value itself: ``K`` adds no
  exposure beyond the field key. Someone who holds only the blind-index key
  still faces C candidates per value, as before;
* someone who can write to the store can hide a record from lookups by
  altering its tags, as deleting its index entries would.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from pivault.crypto import IntegrityError, Keyring
from pivault.crypto.hmac256 import HmacSha256
from pivault.errors import PivaultError
from pivault.store.db import Database

__all__ = ["TAG_BYTES", "CheckTags", "load_check_tags"]

#: 64 bits: among a lookup's handful of candidates a wrong one matches by chance with
#: probability ~2^-61, and is then still told apart by decryption
TAG_BYTES = 8
_DOMAIN = b"pivault.index-check.v1\x00"
#: associated data of the key's ciphertext (a keyring ciphertext site, see pivault.keys.sites)
KEY_RECORD_ID = "index-check"
KEY_FIELD = "key"


class CheckTags:
    """Check tags under one key; thread-safe (each tag works on copies of prepared states)."""

    __slots__ = ("_key", "_macs")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a check-tag key has 32 bytes")
        self._key = key
        self._macs: dict[str, HmacSha256] = {}

    def __repr__(self) -> str:
        return "CheckTags(<key>)"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("CheckTags holds a key and cannot be pickled")

    def _mac(self, index_name: str) -> HmacSha256:
        mac = self._macs.get(index_name)
        if mac is None:
            mac = HmacSha256(self._key, _DOMAIN + index_name.encode("utf-8") + b"\x00")
            if len(self._macs) < 64:
                self._macs[index_name] = mac
        return mac

    def tag(self, index_name: str, record_id: str, value: str) -> bytes:
        """The tag of the entry of ``record_id`` under ``index_name`` for a normalised ``value``.

        ``value`` is what the blind index is computed over; a record id holds no NUL byte, so
        the message ``record id | NUL | value`` splits one way only.
        """
        return self._mac(index_name).digest(b"%s\x00%s" % (record_id.encode("ascii"),
                                                             value.encode("utf-8")))[:TAG_BYTES]

    def checker(self, index_name: str, value: str) -> Callable[[str], bytes]:
        """``record_id -> tag`` for one searched value (what the store's lookup takes)."""
        mac = self._mac(index_name)
        tail = value.encode("utf-8")

        def tag(record_id: str) -> bytes:
            return mac.digest(b"%s\x00%s" % (record_id.encode("ascii"), tail))[:TAG_BYTES]

        return tag


def load_check_tags(db: Database, keyring: Keyring) -> CheckTags:
    """The vault's check tags: the key in the store, made on first use (every process agrees on one)."""
    row = db.query_one("SELECT key_ct FROM index_check_key WHERE id = 1")
    if row is None:
        db.execute("INSERT INTO index_check_key (id, key_ct) VALUES (1, ?) ON CONFLICT (id) DO NOTHING",
                   (keyring.encrypt(KEY_RECORD_ID, KEY_FIELD, os.urandom(32)),))
        row = db.query_one("SELECT key_ct FROM index_check_key WHERE id = 1")
        if row is None:  # pragma: no cover - the insert above or another process's made it
            raise PivaultError("the check-tag key could not be stored", code="store.check_key")
    try:
        return CheckTags(keyring.decrypt(KEY_RECORD_ID, KEY_FIELD, bytes(row[0])))
    except IntegrityError:
        raise PivaultError("the store's check-tag key does not decrypt with this keyring",
                           code="store.check_key",
                           hint="the store was changed outside pivault: restore it from a backup") from None
