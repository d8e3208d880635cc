"""Check tags: a keyed tag on each blind-index entry, so that a lookup decrypts only its match.

A blind index is truncated on purpose: about C = 4-8 residents share each
index value (docs/crypto.md), so that a value does not single out a resident
even to someone who holds the index key. A lookup must then tell the resident
it looks for from the C - 1 others. Decrypting each candidate's field does,
at the price of reading the candidate's row and record key and unwrapping the
key: the largest part of a lookup's work, paid C times, and on a store larger
than memory two random page reads per candidate.

So each entry also carries a check tag, keyed BLAKE2b (RFC 7693, a PRF) of
``index name | record id | value`` in 4 bytes, where ``K`` is a random key kept in the store encrypted under
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

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pivault.crypto import IntegrityError, Keyring
from pivault.errors import PivaultError
from pivault.store.db import Database

__all__ = ["TAG_BYTES", "CheckTags", "load_check_tags"]

#: 32 bits: a lookup's C - 1 wrong candidates pass by chance with probability ~C * 2^-32, and
#: are then still told apart by decryption; each byte more is 3 bytes a resident in the
#: blind index, whose inserts are the random part of an import
TAG_BYTES = 4
_DOMAIN = b"pivault.index-check.v1\x00"
#: associated data of the key's ciphertext (a keyring ciphertext site, see pivault.keys.sites)
KEY_RECORD_ID = "index-check"
KEY_FIELD = "key"


class CheckTags:
    """Check tags under one key; thread-safe (each tag works on a copy of a prepared state).

    Keyed BLAKE2b rather than HMAC-SHA256: one pass instead of two, about half the
    time, and the import computes three tags per resident.
    """

    __slots__ = ("_key", "_states")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a check-tag key has 32 bytes")
        self._key = key
        #: index name -> BLAKE2b state keyed with K that has absorbed the domain and the name
        self._states: dict[str, Any] = {}

    def __repr__(self) -> str:
        return "CheckTags(<key>)"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("CheckTags holds a key and cannot be pickled")

    def _state(self, index_name: str) -> Any:
        st = self._states.get(index_name)
        if st is None:
            st = hashlib.blake2b(_DOMAIN + index_name.encode("utf-8") + b"\x00", key=self._key,
                                 digest_size=TAG_BYTES)
            if len(self._states) < 64:
                self._states[index_name] = st
        return st

    def tag(self, index_name: str, record_id: str, value: str) -> bytes:
        """The tag of the entry of ``record_id`` under ``index_name`` for a normalised ``value``.

        ``value`` is what the blind index is computed over; a record id holds no NUL byte, so
        the message ``record id | NUL | value`` splits one way only.
        """
        return self.tags(record_id, {index_name: value})[index_name]

    def tags(self, record_id: str, values: Mapping[str, str]) -> dict[str, bytes]:
        """:meth:`tag` of each ``index name -> value`` of one record (the import's three)."""
        head = record_id.encode("ascii") + b"\x00"
        states = self._states
        out: dict[str, bytes] = {}
        for name, value in values.items():
            st = states.get(name)
            h = (st if st is not None else self._state(name)).copy()
            h.update(head + value.encode("utf-8"))
            out[name] = h.digest()
        return out

    def tags_many(self, index_name: str, record_ids: Sequence[str], values: Sequence[str]) -> list[bytes]:
        """:meth:`tag` of each ``(record id, value)`` under one index, in order (an import's chunk)."""
        copy = self._state(index_name).copy
        out: list[bytes] = []
        add = out.append
        for rid, value in zip(record_ids, values, strict=True):
            h = copy()
            h.update(rid.encode("ascii") + b"\x00" + value.encode("utf-8"))
            add(h.digest())
        return out

    def checker(self, index_name: str, value: str) -> Callable[[str], bytes]:
        """``record_id -> tag`` for one searched value (what the store's lookup takes)."""
        state = self._state(index_name)
        tail = b"\x00" + value.encode("utf-8")

        def tag(record_id: str) -> bytes:
            h = state.copy()
            h.update(record_id.encode("ascii") + tail)
            return h.digest()  # type: ignore[no-any-return]

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
