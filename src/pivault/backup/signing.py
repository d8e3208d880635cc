"""The backup signing key: Ed25519, kept beside the keyring, encrypted under it.

Backups are signed so that a restore can tell a backup this vault made from
one that was altered or planted: a ransomware operator with write access to
the backup shelf must not be able to slip in rows of their choosing. The
private key lives beside the keyring (never in the data directory) and is
itself encrypted under the keyring, so the file alone signs nothing and a
stolen data disk carries no signing key. The public key is in clear in the
same file, and its fingerprint is printed on every backup, so ``backup
verify`` needs no passphrase and can also be given the key separately.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pivault.crypto import IntegrityError, Keyring
from pivault.crypto._atomic import write_private
from pivault.errors import PivaultError

__all__ = [
    "SIGNING_SUFFIX",
    "BackupError",
    "SigningKey",
    "VerifyKey",
    "load_or_create_signing_key",
    "load_trusted_verify_key",
    "load_verify_key",
    "signing_key_path",
]

SIGNING_SUFFIX = ".backup-signing.json"
_FORMAT = "pivault.backup.signing"
_AD = ("backup.signing", "ed25519")


class BackupError(PivaultError):
    """A backup cannot be made, verified or restored."""

    code = "backup.error"


def signing_key_path(keyring_path: str | os.PathLike[str]) -> Path:
    p = Path(keyring_path)
    return p.with_name(p.name + SIGNING_SUFFIX)


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(public: bytes) -> str:
    return hashlib.sha256(b"pivault.backup.key\x00" + public).hexdigest()[:16]


@dataclass(frozen=True)
class VerifyKey:
    """A backup signing public key."""

    public: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(signature, message)
            return True
        except (InvalidSignature, ValueError):
            return False

    @classmethod
    def parse(cls, text: str) -> VerifyKey:
        """From base64 of the 32 raw bytes (as ``backup`` prints it)."""
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise BackupError("the public key is not base64", code="backup.key") from None
        if len(raw) != 32:
            raise BackupError("an Ed25519 public key is 32 bytes", code="backup.key")
        return cls(raw)


@dataclass(frozen=True)
class SigningKey:
    verify_key: VerifyKey
    _private: Ed25519PrivateKey

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)


def _read(path: Path) -> dict[str, object]:
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise BackupError("no backup signing key beside the keyring", code="backup.key.missing",
                          hint="it is made by the first `pivault backup`; or pass --public-key") from None
    except (OSError, ValueError):
        raise BackupError("the backup signing key file is unreadable", code="backup.key") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT or doc.get("version") != 1:
        raise BackupError("not a pivault backup signing key file", code="backup.key")
    return doc


def load_verify_key(keyring_path: str | os.PathLike[str]) -> VerifyKey:
    """The public key from the signing key file beside the keyring (no passphrase needed).

    The public half is in clear, so this is only as trustworthy as the
    file: whoever can write beside the keyring can put a key of their own
    there. A caller holding the keyring uses :func:`load_trusted_verify_key`.
    """
    doc = _read(signing_key_path(keyring_path))
    return VerifyKey.parse(str(doc.get("public", "")))


def load_trusted_verify_key(keyring: Keyring, *,
                            keyring_path: str | os.PathLike[str] | None = None) -> VerifyKey:
    """The public key of the signing key sealed under ``keyring``, checked against the file's clear copy.

    A restore holds the keyring: it checks a backup against the key the
    keyring vouches for (the private half, which only the root key opens),
    not against the clear public half beside it. Otherwise an intruder who
    can write the keyring's directory, but has no root key, could put a key
    of their own there and have a backup of their making restored (a bearer
    token of theirs planted in it, say). Refused (``backup.key.altered``)
    when the clear half is not the sealed key's. ``keyring_path``: where the
    keyring's file is to live, when ``keyring`` was opened from a staged copy.
    """
    signing = _open(_read(signing_key_path(keyring_path if keyring_path is not None else keyring.path)),
                    keyring)
    return signing.verify_key


def _open(doc: dict[str, object], keyring: Keyring) -> SigningKey:
    """The signing key in ``doc``, opened with ``keyring``; its clear public half must be its own."""
    if doc.get("vault_id") != keyring.vault_id:
        raise BackupError("the backup signing key beside the keyring belongs to another vault",
                          code="backup.key")
    try:
        ct = base64.b64decode(str(doc.get("private_ct", "")), validate=True)
        raw = keyring.decrypt(*_AD, ct)
    except (binascii.Error, ValueError, IntegrityError):
        raise BackupError("the backup signing key does not decrypt with this keyring",
                          code="backup.key", hint="check and restore backups with --public-key and the "
                                                   "copy of the public key kept apart") from None
    private = Ed25519PrivateKey.from_private_bytes(raw)
    sealed = VerifyKey(_raw_public(private.public_key()))
    try:
        public = VerifyKey.parse(str(doc.get("public", "")))
    except BackupError:
        public = None
    if public != sealed:
        raise BackupError(
            f"the public key in the backup signing key file beside the keyring is not the one sealed under "
            f"the keyring ({sealed.fingerprint}): the file was altered, and no backup is checked or signed "
            "with it", code="backup.key.altered",
            hint="find out who can write the keyring's directory; check and restore backups with "
                 "--public-key and the copy of the public key kept apart")
    return SigningKey(sealed, private)


def load_or_create_signing_key(keyring: Keyring) -> SigningKey:
    """The vault's backup signing key, made on first use (mode 0600, beside the keyring)."""
    path = signing_key_path(keyring.path)
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
        doc = {"format": _FORMAT, "version": 1, "vault_id": keyring.vault_id,
               "public": base64.b64encode(_raw_public(key.public_key())).decode("ascii"),
               "private_ct": base64.b64encode(keyring.encrypt(*_AD, raw)).decode("ascii")}
        # another process may have made it first: then use theirs
        with contextlib.suppress(FileExistsError):
            write_private(path, json.dumps(doc, indent=2).encode() + b"\n", overwrite=False)
    return _open(_read(path), keyring)
