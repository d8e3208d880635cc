"""Audit keys: who may sign checkpoints, and who may check the chain.

Three files, kept beside the keyring and never in the data directory:

``audit-signing.key``
    The Ed25519 key that signs checkpoints, itself encrypted under the
    vault's keyring (so the file alone signs nothing). The writer needs it.
``audit-verifier.key``
    The X25519 private key of the auditor (PKCS#8 PEM, optionally under a
    passphrase). Checkpoints seal the chain's ratchet key to it, so only its
    holder can recompute old MACs. The writer never needs it: move it to the
    auditor's machine after ``create``.
``audit-public.json``
    Both public keys. The writer seals to the verifier key; anyone can check
    a checkpoint signature.

Why X25519 sealing rather than a symmetric verifier key: the writer must be
able to *seal* the ratchet key at each checkpoint without being able to
*unseal* old ones, or stealing the writer's state would reveal old keys and
defeat forward security. See docs/audit.md for the threat model.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pivault.crypto._atomic import write_private
from pivault.crypto.hmac256 import hmac_sha256
from pivault.errors import PivaultError

__all__ = [
    "PUBLIC_FILE",
    "SIGNING_FILE",
    "VERIFIER_FILE",
    "AuditKeyError",
    "AuditKeys",
    "FieldCipher",
    "VerifierKey",
    "WriterKeys",
    "create_audit_keys",
    "load_public",
    "load_verifier",
    "load_writer",
]

SIGNING_FILE = "audit-signing.key"
VERIFIER_FILE = "audit-verifier.key"
PUBLIC_FILE = "audit-public.json"
_SIGNING_FORMAT = "pivault.audit.signing"
_PUBLIC_FORMAT = "pivault.audit.public"
_SEAL_INFO = b"pivault.audit.seal.v1"
_SEAL_VERSION = 1
_JOURNAL_LABEL = b"pivault.audit.journal.v1"


class AuditKeyError(PivaultError):
    """An audit key file is missing, damaged, or in the wrong place."""

    code = "audit.keys"


class FieldCipher(Protocol):
    """The part of :class:`pivault.crypto.Keyring` the audit trail uses."""

    def encrypt(self, record_id: str, field: str, plaintext: bytes) -> bytes: ...

    def decrypt(self, record_id: str, field: str, ciphertext: bytes) -> bytes: ...


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise AuditKeyError(f"{what} is missing", code="audit.keys.corrupt")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise AuditKeyError(f"{what} is not base64", code="audit.keys.corrupt") from None


def _raw_public(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class AuditKeys:
    """Public half of the audit keys: enough to check checkpoint signatures."""

    signing_public: Ed25519PublicKey
    verifier_public: X25519PublicKey

    def check_signature(self, signature: bytes, message: bytes) -> bool:
        try:
            self.signing_public.verify(signature, message)
            return True
        except InvalidSignature:
            return False

    def seal(self, secret: bytes, context: bytes) -> bytes:
        """Encrypt ``secret`` so that only the verifier key opens it.

        Ephemeral X25519, HKDF-SHA256, AES-256-GCM with ``context`` as
        associated data: ``0x01 | ephemeral public (32) | nonce (12) | ct``.
        """
        eph = X25519PrivateKey.generate()
        eph_pub = _raw_public(eph.public_key())
        shared = eph.exchange(self.verifier_public)
        key = HKDF(hashes.SHA256(), 32, salt=None,
                   info=_SEAL_INFO + eph_pub + _raw_public(self.verifier_public)).derive(shared)
        nonce = os.urandom(12)
        return bytes([_SEAL_VERSION]) + eph_pub + nonce + AESGCM(key).encrypt(nonce, secret, context)


@dataclass(frozen=True)
class WriterKeys:
    """What the appending process holds: the signing key and the public keys."""

    public: AuditKeys
    signing: Ed25519PrivateKey

    def sign(self, message: bytes) -> bytes:
        return self.signing.sign(message)

    def journal_key(self, journal_id: str) -> bytes:
        """The key that authenticates the lines of the write-ahead journal ``journal_id``.

        Derived from the signing key, which only the writers hold (it is kept encrypted
        under the keyring): whoever can write to the journal directory but does not hold
        the keyring cannot make a line the chainer accepts. One key per journal, so a line
        copied from one journal to another does not check.
        """
        seed = self.signing.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                          serialization.NoEncryption())
        base = hmac_sha256(seed, _JOURNAL_LABEL)
        return hmac_sha256(base, journal_id.encode("utf-8"))


@dataclass(frozen=True)
class VerifierKey:
    """What the auditor holds: the verifier private key and the public keys."""

    public: AuditKeys
    private: X25519PrivateKey

    def unseal(self, sealed: bytes, context: bytes) -> bytes:
        if len(sealed) < 1 + 32 + 12 + 16 or sealed[0] != _SEAL_VERSION:
            raise AuditKeyError("sealed key has an unknown format", code="audit.keys.seal")
        eph_pub = sealed[1:33]
        nonce = sealed[33:45]
        shared = self.private.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        key = HKDF(hashes.SHA256(), 32, salt=None,
                   info=_SEAL_INFO + eph_pub + _raw_public(self.public.verifier_public)).derive(shared)
        try:
            return AESGCM(key).decrypt(nonce, sealed[45:], context)
        except InvalidTag:
            raise AuditKeyError(
                "a sealed chain key does not open with this verifier key (wrong key, or altered)",
                code="audit.keys.seal") from None


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or path.is_relative_to(directory)


def create_audit_keys(
    directory: str | os.PathLike[str],
    keyring: FieldCipher,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    verifier_passphrase: bytes | None = None,
) -> VerifierKey:
    """Make the three audit key files in ``directory`` (mode 0600).

    Refuses a directory inside ``data_dir`` (``audit.keys.location``) and
    existing files (``audit.keys.exists``). Returns the verifier key so a
    caller can check it right away; the operator should then move
    ``audit-verifier.key`` to the auditor.
    """
    target = Path(directory).expanduser().resolve()
    if data_dir is not None and _inside(target, Path(data_dir).expanduser().resolve()):
        raise AuditKeyError("audit keys must not be stored inside the data directory",
                            code="audit.keys.location",
                            hint="keep them beside the keyring, apart from the data")
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in (SIGNING_FILE, VERIFIER_FILE, PUBLIC_FILE):
        if os.path.lexists(target / name):
            raise AuditKeyError(f"{name} already exists; refusing to overwrite it",
                                code="audit.keys.exists")
    signing = Ed25519PrivateKey.generate()
    verifier = X25519PrivateKey.generate()
    raw_signing = signing.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                        serialization.NoEncryption())
    signing_pub = _raw_public(signing.public_key())
    signing_doc = {
        "format": _SIGNING_FORMAT,
        "version": 1,
        "public": _b64(signing_pub),
        "private_ct": _b64(keyring.encrypt("audit.signing", "ed25519", raw_signing)),
    }
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(verifier_passphrase) if verifier_passphrase
        else serialization.NoEncryption())
    verifier_pem = verifier.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          encryption)
    public_doc = {
        "format": _PUBLIC_FORMAT,
        "version": 1,
        "signing_public": _b64(signing_pub),
        "verifier_public": _b64(_raw_public(verifier.public_key())),
    }
    try:
        # the signing file first: of processes making the keys at once (the first workers of a
        # new vault), the one whose signing file lands writes the rest; the others write nothing
        write_private(target / SIGNING_FILE, json.dumps(signing_doc, indent=2).encode() + b"\n",
                      overwrite=False)
        write_private(target / VERIFIER_FILE, verifier_pem, overwrite=False)
        write_private(target / PUBLIC_FILE, json.dumps(public_doc, indent=2).encode() + b"\n",
                      overwrite=False)
    except FileExistsError:
        raise AuditKeyError("the audit keys were made meanwhile; refusing to overwrite them",
                            code="audit.keys.exists") from None
    public = AuditKeys(signing.public_key(), verifier.public_key())
    return VerifierKey(public, verifier)


def _read_json(path: Path, fmt: str) -> dict[str, object]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise AuditKeyError(f"no audit key file {path.name} in {path.parent}",
                            code="audit.keys.missing",
                            hint="create the audit keys with `pivault audit init-keys`") from None
    try:
        doc = json.loads(raw)
    except ValueError:
        raise AuditKeyError(f"{path.name} is not JSON", code="audit.keys.corrupt") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt or doc.get("version") != 1:
        raise AuditKeyError(f"{path.name} is not a pivault audit key file", code="audit.keys.corrupt")
    return doc


def load_public(directory: str | os.PathLike[str]) -> AuditKeys:
    doc = _read_json(Path(directory) / PUBLIC_FILE, _PUBLIC_FORMAT)
    try:
        return AuditKeys(
            Ed25519PublicKey.from_public_bytes(_unb64(doc.get("signing_public"), "signing key")),
            X25519PublicKey.from_public_bytes(_unb64(doc.get("verifier_public"), "verifier key")),
        )
    except ValueError:
        raise AuditKeyError("a public audit key has a bad length", code="audit.keys.corrupt") from None


def load_writer(directory: str | os.PathLike[str], keyring: FieldCipher) -> WriterKeys:
    """The signing key (decrypted with the keyring) and the public keys."""
    public = load_public(directory)
    doc = _read_json(Path(directory) / SIGNING_FILE, _SIGNING_FORMAT)
    ct = _unb64(doc.get("private_ct"), "signing key")
    try:
        raw = keyring.decrypt("audit.signing", "ed25519", ct)
    except PivaultError:
        raise AuditKeyError("the audit signing key does not decrypt with this keyring",
                            code="audit.keys.keyring") from None
    signing = Ed25519PrivateKey.from_private_bytes(raw)
    if _raw_public(signing.public_key()) != _raw_public(public.signing_public):
        raise AuditKeyError("the audit signing key does not match audit-public.json",
                            code="audit.keys.corrupt")
    return WriterKeys(public, signing)


def load_verifier(
    directory: str | os.PathLike[str],
    *,
    verifier_file: str | os.PathLike[str] | None = None,
    passphrase: bytes | None = None,
) -> VerifierKey:
    """The auditor's key: ``verifier_file`` (default: the one in ``directory``)."""
    public = load_public(directory)
    path = Path(verifier_file) if verifier_file is not None else Path(directory) / VERIFIER_FILE
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise AuditKeyError("no audit verifier key file", code="audit.keys.missing",
                            hint="pass the auditor's key with --verifier-key") from None
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase)
    except TypeError:
        raise AuditKeyError("the verifier key needs its passphrase (or was given one it lacks)",
                            code="audit.keys.passphrase") from None
    except ValueError:
        raise AuditKeyError("the verifier key does not load (damaged, or wrong passphrase)",
                            code="audit.keys.passphrase") from None
    if not isinstance(key, X25519PrivateKey):
        raise AuditKeyError("the verifier key is not an X25519 key", code="audit.keys.corrupt")
    if _raw_public(key.public_key()) != _raw_public(public.verifier_public):
        raise AuditKeyError("the verifier key does not match audit-public.json",
                            code="audit.keys.corrupt")
    return VerifierKey(public, key)
