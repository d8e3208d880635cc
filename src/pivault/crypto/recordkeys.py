"""Per-record data keys: what makes an erased resident unrecoverable.

With record keys on, each record's fields are encrypted under a random
256-bit key of its own (AES-256-GCM, random 96-bit nonce), and that
key is stored apart from the data, wrapped by the keyring's field key (Tink
XChaCha20-Poly1305, so it carries the key id and follows rotation). Erasing
a resident destroys its wrapped record key; the field ciphertext left in any
older backup or replica is then noise, whoever holds the keyring.

Field ciphertext, format 2::

    0x02 | key ref (4) | nonce (12) | AES-GCM ciphertext | tag (16)

associated data ``0x02 | len(record_id) u32be | record_id | len(field) u32be | field | key ref``.
The key ref names which of a record's keys encrypted it (a record briefly
has two while an update commits). The record key as stored::

    key ref (4) | Tink ciphertext of the 32-byte key (77 bytes: prefix 5, nonce 24, key 32, tag 16)

wrapped with associated data ``"pivault.recordkey\\0" | record part of the field AD | key ref``.
A record key encrypts one version of one record, at most a handful of
values, so GCM's per-key limit (2^32 random nonces) is never approached and
a nonce collision has probability below 2^-90. AES-GCM rather than
ChaCha20-Poly1305 here because, through ``cryptography``, it costs half as
much per call on hosts with AES instructions (measured: bench/bench_shred.py)
and a record key makes about six calls in its life; the long-lived field
key stays XChaCha20-Poly1305 (see docs/crypto.md).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from typing import NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pivault.crypto.errors import IntegrityError

__all__ = [
    "KEY_REF_BYTES",
    "RECORD_CIPHERTEXT_VERSION",
    "RECORD_KEY_BYTES",
    "RecordKey",
    "key_ref_of",
]

RECORD_CIPHERTEXT_VERSION = 2
KEY_REF_BYTES = 4
#: stored record key: key ref + Tink ciphertext of the 32-byte key
RECORD_KEY_BYTES = KEY_REF_BYTES + 5 + 24 + 32 + 16
_V = bytes([RECORD_CIPHERTEXT_VERSION])
_HEAD = struct.Struct(">BI")
_NONCE = 12
_MIN_CT = 1 + KEY_REF_BYTES + _NONCE + 16
_TAILS: dict[str, bytes] = {}


def key_ref_of(ciphertext: bytes) -> bytes | None:
    """The key ref of a format-2 field ciphertext; None for any other value."""
    if isinstance(ciphertext, bytes | bytearray | memoryview) and len(ciphertext) >= _MIN_CT \
            and ciphertext[0] == RECORD_CIPHERTEXT_VERSION:
        return bytes(ciphertext[1:1 + KEY_REF_BYTES])
    return None


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _tail(field: str) -> bytes:
    """The field part of the associated data, kept for the next record (a vault has a few fields)."""
    tail = _lp(field.encode("utf-8"))
    if len(_TAILS) < 4096:
        _TAILS[field] = tail
    return tail


class RecordKey:
    """The data key of one record version: encrypts and decrypts its fields.

    Made by :meth:`pivault.crypto.Keyring.new_record_key` or opened by
    :meth:`~pivault.crypto.Keyring.open_record_key`; never pickled.
    ``stored`` is what goes to the record-key store (wrapped, never clear).
    """

    __slots__ = ("_aead", "_head", "key_ref", "record_id", "stored")

    def __init__(self, record_id: str, key_ref: bytes, stored: bytes, key: bytes) -> None:
        self.record_id = record_id
        self.key_ref = key_ref
        self.stored = stored
        rid = record_id.encode("utf-8")
        self._head = _HEAD.pack(RECORD_CIPHERTEXT_VERSION, len(rid)) + rid
        self._aead = AESGCM(key)

    def __reduce__(self) -> NoReturn:
        raise TypeError("RecordKey holds a key and cannot be pickled")

    def __repr__(self) -> str:
        return f"RecordKey(key_ref={self.key_ref.hex()})"

    def _ad(self, field: str) -> bytes:
        tail = _TAILS.get(field)
        if tail is None:
            tail = _tail(field)
        return self._head + tail + self.key_ref

    def encrypt(self, field: str, plaintext: bytes) -> bytes:
        if type(plaintext) is not bytes:
            if not isinstance(plaintext, bytearray | memoryview):
                raise TypeError(f"plaintext for field {field!r} must be bytes")
            plaintext = bytes(plaintext)
        nonce = os.urandom(_NONCE)
        return _V + self.key_ref + nonce + self._aead.encrypt(nonce, plaintext, self._ad(field))

    def encrypt_many(self, fields: Mapping[str, bytes]) -> dict[str, bytes]:
        nonces = os.urandom(_NONCE * len(fields))  # one system call for the record
        out: dict[str, bytes] = {}
        enc = self._aead.encrypt
        head = _V + self.key_ref
        # what _ad makes, inline: an import encrypts four or five fields a resident
        ad_head, ref, tails = self._head, self.key_ref, _TAILS
        at = 0
        for f, v in fields.items():
            if type(v) is not bytes:
                if not isinstance(v, bytearray | memoryview):
                    raise TypeError(f"plaintext for field {f!r} must be bytes")
                v = bytes(v)
            tail = tails.get(f)
            if tail is None:
                tail = _tail(f)
            nonce = nonces[at:at + _NONCE]
            at += _NONCE
            out[f] = head + nonce + enc(nonce, v, ad_head + tail + ref)
        return out

    def decrypt(self, field: str, ciphertext: bytes) -> bytes:
        if type(ciphertext) is not bytes:
            if not isinstance(ciphertext, bytearray | memoryview):
                raise TypeError(f"ciphertext for field {field!r} must be bytes")
            ciphertext = bytes(ciphertext)
        if len(ciphertext) < _MIN_CT or ciphertext[0] != RECORD_CIPHERTEXT_VERSION:
            raise IntegrityError(f"ciphertext of field {field!r} has an unknown format", field=field)
        if ciphertext[1:1 + KEY_REF_BYTES] != self.key_ref:
            raise IntegrityError(
                f"ciphertext of field {field!r} was made under another key of this record",
                field=field)
        start = 1 + KEY_REF_BYTES
        try:
            return self._aead.decrypt(ciphertext[start:start + _NONCE], ciphertext[start + _NONCE:],
                                      self._ad(field))
        except InvalidTag:
            raise IntegrityError(
                f"ciphertext of field {field!r} failed authentication: altered, or moved from "
                "another record or field", field=field) from None
