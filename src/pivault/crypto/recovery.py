"""The recovery envelope: the keysets sealed to a key that custodians hold in shares.

Why a public key: the keyring is rewritten at every rotation and root-key
change, and the envelope must follow it without anybody assembling the
custodians. The writer seals to the recovery *public* key; only the private
key (rebuilt from k of n shares) opens the envelope.

Why also a MAC: anyone who can read the header knows the public key and
could seal keysets of their own choosing into a keyring file they can
write. A recovery would then install those keys. So the sealed bundle also
carries an HMAC under ``M = HKDF(recovery private key)``; the writer holds
``M`` wrapped under the root key (it never sees the private key after the
split), and the recoverer derives ``M`` from the rebuilt private key. Without
both the root key and the private key nobody can make a bundle that a
recovery accepts.

Sealing: X25519 with an ephemeral key, HKDF-SHA256 over the shared secret
(salt = ephemeral public | recipient public), AES-256-GCM with a random
nonce. Blob: ``0x01 | ephemeral public (32) | nonce (12) | ciphertext | tag``.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pivault.crypto.errors import KeyringError

__all__ = [
    "RECOVERY_KIND",
    "fingerprint",
    "mac_key",
    "new_recovery_secret",
    "public_of",
    "seal",
    "unseal",
]

RECOVERY_KIND = "x25519-hkdf-sha256-aes256gcm+hmac"
SECRET_BYTES = 32
_VERSION = 1
_SEAL_INFO = b"pivault.recovery.seal.v1"
_MAC_INFO = b"pivault.recovery.mac.v1"


def _raw(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def new_recovery_secret() -> bytes:
    """A fresh X25519 private key (32 bytes): split it, never store it."""
    return X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def _private(secret: bytes) -> X25519PrivateKey:
    if len(secret) != SECRET_BYTES:
        raise KeyringError("a recovery secret is 32 bytes", code="keyring.recovery")
    return X25519PrivateKey.from_private_bytes(secret)


def public_of(secret: bytes) -> bytes:
    return _raw(_private(secret).public_key())


def fingerprint(public: bytes) -> str:
    """Short non-secret name of a recovery key (printed on every share)."""
    return hashlib.sha256(b"pivault.recovery.fingerprint\x00" + public).hexdigest()[:16]


def mac_key(secret: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=_MAC_INFO).derive(secret)


def bundle_mac(key: bytes, sealed: bytes, associated_data: bytes) -> bytes:
    return hmac.new(key, len(sealed).to_bytes(4, "big") + sealed + associated_data,
                    hashlib.sha256).digest()


def _kdf(shared: bytes, eph: bytes, recipient: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=eph + recipient, info=_SEAL_INFO).derive(shared)


def seal(public: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    recipient = X25519PublicKey.from_public_bytes(public)
    eph = X25519PrivateKey.generate()
    eph_pub = _raw(eph.public_key())
    key = _kdf(eph.exchange(recipient), eph_pub, public)
    nonce = os.urandom(12)
    return bytes([_VERSION]) + eph_pub + nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def unseal(secret: bytes, blob: bytes, associated_data: bytes) -> bytes:
    priv = _private(secret)
    if len(blob) < 1 + 32 + 12 + 16 or blob[0] != _VERSION:
        raise KeyringError("the recovery envelope is damaged", code="keyring.corrupt")
    eph_pub = blob[1:33]
    try:
        shared = priv.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        key = _kdf(shared, eph_pub, _raw(priv.public_key()))
        return AESGCM(key).decrypt(blob[33:45], blob[45:], associated_data)
    except (InvalidTag, ValueError):
        raise KeyringError("the recovery envelope does not open with this recovery key",
                           code="keyring.recovery") from None
