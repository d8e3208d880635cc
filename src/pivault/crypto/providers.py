"""Root-key providers: what protects the keysets at rest.

A :class:`RootKeyProvider` wraps and unwraps small secrets (the serialised
keysets) under a root key that never appears in the keyring file. The default,
:class:`PassphraseProvider`, derives the root key from a passphrase with
Argon2id. A KMS (HashiCorp Vault transit, AWS KMS, GCP KMS) plugs in by
implementing the same four methods; see docs/crypto.md.
"""

from __future__ import annotations

import base64
import binascii
import os
import sys
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from getpass import getpass
from typing import NoReturn, Protocol, runtime_checkable

from argon2.low_level import ARGON2_VERSION, Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pivault.crypto.errors import KeyringError

__all__ = [
    "PASSPHRASE_ENV",
    "Argon2Params",
    "KmsProvider",
    "PassphraseProvider",
    "RootKeyProvider",
    "check_new_passphrase",
    "passphrase_from_env_or_prompt",
    "provider_for",
]

PASSPHRASE_ENV = "PIVAULT_PASSPHRASE"
#: the fewest characters (spaces at the ends not counted) a new keyring passphrase may have
MIN_PASSPHRASE = 12


@runtime_checkable
class RootKeyProvider(Protocol):
    """Protects the keysets with a root key that is not stored beside them.

    ``describe()`` returns non-secret parameters (kind, KDF parameters and
    salt, or a KMS key URI); the keyring stores them in its header at create
    time and hands them back through ``restore()`` at open time, so that the
    provider can check it is the right one and load what it needs.
    ``wrap``/``unwrap`` are an AEAD: ``unwrap`` must fail (raise) if the
    ciphertext or the associated data changed, or if the root key is not the
    one that wrapped it.
    """

    def wrap(self, plaintext: bytes, associated_data: bytes) -> bytes: ...

    def unwrap(self, ciphertext: bytes, associated_data: bytes) -> bytes: ...

    def describe(self) -> dict[str, object]: ...

    def restore(self, description: Mapping[str, object]) -> None: ...


# Bounds that a keyring header must respect. They keep a damaged or hostile
# header from asking for terabytes of memory or hours of CPU.
_MAX_TIME_COST = 64
_MAX_MEMORY_KIB = 4 * 1024 * 1024  # 4 GiB
_MAX_PARALLELISM = 64
_SALT_BYTES = 16
_KEY_BYTES = 32
_WRAP_VERSION = 1
_NONCE_BYTES = 12


@dataclass(frozen=True, slots=True)
class Argon2Params:
    """Argon2id cost parameters (argon2-cffi units: memory in KiB).

    The defaults (t=3, m=64 MiB, p=1) take time and memory from RFC 9106's
    second recommended option, with one lane. They are written into the keyring header, so a later keyring can
    raise them without breaking older ones.
    """

    time_cost: int = 3
    memory_cost: int = 64 * 1024
    parallelism: int = 1

    def __post_init__(self) -> None:
        for name in ("time_cost", "memory_cost", "parallelism"):
            value = getattr(self, name)
            if type(value) is not int:
                raise ValueError(f"Argon2 {name} must be an integer")
        if not 1 <= self.time_cost <= _MAX_TIME_COST:
            raise ValueError(f"Argon2 time_cost must be within 1..{_MAX_TIME_COST}")
        if not 1 <= self.parallelism <= _MAX_PARALLELISM:
            raise ValueError(f"Argon2 parallelism must be within 1..{_MAX_PARALLELISM}")
        if not 8 * self.parallelism <= self.memory_cost <= _MAX_MEMORY_KIB:
            raise ValueError(f"Argon2 memory_cost (KiB) must be within 8*parallelism..{_MAX_MEMORY_KIB}")

    def to_dict(self) -> dict[str, object]:
        return {
            "time_cost": self.time_cost,
            "memory_cost_kib": self.memory_cost,
            "parallelism": self.parallelism,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Argon2Params:
        return cls(
            time_cost=data["time_cost"],  # type: ignore[arg-type]
            memory_cost=data["memory_cost_kib"],  # type: ignore[arg-type]
            parallelism=data["parallelism"],  # type: ignore[arg-type]
        )


def _corrupt(what: str) -> NoReturn:
    raise KeyringError(
        f"keyring header is damaged: {what}",
        code="keyring.corrupt",
        hint="restore the keyring file from a backup",
    ) from None


class PassphraseProvider:
    """Root key derived from a passphrase with Argon2id; wraps with AES-256-GCM.

    A new provider carries a fresh random salt, ready to create a keyring;
    opening a keyring replaces salt and parameters by the ones in its header.
    The derived root key is cached in the object, so a forked worker that
    inherits the provider, or a second ``Keyring.open`` with it, does not run
    Argon2 again. The provider refuses to be pickled: it holds the passphrase.
    """

    kind = "passphrase"

    def __init__(self, passphrase: str | bytes, params: Argon2Params | None = None) -> None:
        if isinstance(passphrase, str):
            # The same passphrase typed on two systems may arrive composed or
            # decomposed; NFC makes both derive the same key.
            secret = unicodedata.normalize("NFC", passphrase).encode("utf-8")
        elif isinstance(passphrase, bytes | bytearray):
            secret = bytes(passphrase)
        else:
            raise TypeError("passphrase must be str or bytes")
        if not secret:
            raise KeyringError("the passphrase is empty", code="keyring.passphrase")
        self._secret = secret
        self._params = params if params is not None else Argon2Params()
        self._salt = os.urandom(_SALT_BYTES)
        self._key: bytes | None = None
        self._aead: AESGCM | None = None
        #: how many times Argon2 ran in this object (for tests and stats)
        self.derivations = 0

    @property
    def params(self) -> Argon2Params:
        return self._params

    def __repr__(self) -> str:
        p = self._params
        return f"PassphraseProvider(argon2id t={p.time_cost}, m={p.memory_cost} KiB, p={p.parallelism})"

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "PassphraseProvider holds a passphrase and cannot be pickled; "
            "fork workers after opening the keyring, or open it again in each worker"
        )

    def describe(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "kdf": "argon2id",
            "argon2_version": ARGON2_VERSION,
            **self._params.to_dict(),
            "hash_len": _KEY_BYTES,
            "salt": base64.b64encode(self._salt).decode("ascii"),
            "wrap": "AES-256-GCM",
        }

    def restore(self, description: Mapping[str, object]) -> None:
        if description.get("kind") != self.kind:
            raise KeyringError(
                f"keyring is protected by a {description.get('kind')!s:.40} root key, not by a passphrase",
                code="keyring.provider",
            )
        if description.get("kdf") != "argon2id" or description.get("wrap") != "AES-256-GCM":
            _corrupt("unknown key derivation or wrapping")
        if description.get("argon2_version") != ARGON2_VERSION:
            _corrupt("unknown Argon2 version")
        if description.get("hash_len") != _KEY_BYTES:
            _corrupt("unexpected root key length")
        try:
            params = Argon2Params.from_dict(description)
        except (KeyError, ValueError) as exc:
            _corrupt(f"bad Argon2 parameters ({exc})")
        salt_text = description.get("salt")
        if not isinstance(salt_text, str):
            _corrupt("missing salt")
        try:
            salt = base64.b64decode(salt_text, validate=True)
        except (binascii.Error, ValueError):
            _corrupt("salt is not base64")
        if not 16 <= len(salt) <= 64:
            _corrupt("salt has a bad length")
        if params != self._params or salt != self._salt:
            self._params, self._salt = params, salt
            self._key = None
            self._aead = None

    def _cipher(self) -> AESGCM:
        if self._aead is None:
            self._key = hash_secret_raw(
                self._secret,
                self._salt,
                time_cost=self._params.time_cost,
                memory_cost=self._params.memory_cost,
                parallelism=self._params.parallelism,
                hash_len=_KEY_BYTES,
                type=Type.ID,
                version=ARGON2_VERSION,
            )
            self.derivations += 1
            self._aead = AESGCM(self._key)
        return self._aead

    def wrap(self, plaintext: bytes, associated_data: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._cipher().encrypt(nonce, plaintext, associated_data)
        return bytes([_WRAP_VERSION]) + nonce + sealed

    def unwrap(self, ciphertext: bytes, associated_data: bytes) -> bytes:
        if len(ciphertext) < 1 + _NONCE_BYTES + 16 or ciphertext[0] != _WRAP_VERSION:
            raise KeyringError("wrapped key has an unknown format", code="keyring.corrupt")
        nonce = ciphertext[1 : 1 + _NONCE_BYTES]
        try:
            return self._cipher().decrypt(nonce, ciphertext[1 + _NONCE_BYTES :], associated_data)
        except InvalidTag:
            raise KeyringError(
                "wrong passphrase for this keyring (or its header was altered)",
                code="keyring.passphrase",
                hint=f"check the passphrase: the one in ${PASSPHRASE_ENV} if it is set, "
                     "else the one typed when asked",
            ) from None


class KmsProvider:
    """Root key held by a KMS (GCP KMS, AWS KMS, HashiCorp Vault transit …) through Tink.

    The keysets are wrapped by the remote key directly (a few hundred bytes
    each), as Tink encrypts keysets with a KMS master key. ``key_uri`` is
    Tink's (``gcp-kms://projects/…``, ``aws-kms://arn:…``,
    ``hcvault://…``); the matching ``tink.integration`` client must be
    registered (``tink.register_kms_client``) before use, or an AEAD passed
    in. The header records only the URI, and ``open`` refuses another one.
    """

    kind = "kms"

    def __init__(self, key_uri: str, aead: object | None = None) -> None:
        if not isinstance(key_uri, str) or "://" not in key_uri:
            raise KeyringError("a KMS key URI looks like scheme://…", code="keyring.provider")
        self.key_uri = key_uri
        self._aead = aead

    def __repr__(self) -> str:
        return f"KmsProvider({self.key_uri.split('://', 1)[0]}://…)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("KmsProvider holds a remote key handle and cannot be pickled")

    def _remote(self) -> object:
        if self._aead is None:
            import tink

            try:
                self._aead = tink.kms_client_from_uri(self.key_uri).get_aead(self.key_uri)
            except Exception as exc:
                raise KeyringError("no KMS client for this key URI is registered, or it refused",
                                   code="keyring.provider",
                                   hint="register the tink.integration client for the KMS in the program "
                                        "that opens the keyring; the pivault command line registers "
                                        "none (docs/keys.md)") from exc
        return self._aead

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "key_uri": self.key_uri, "wrap": "KMS AEAD"}

    def restore(self, description: Mapping[str, object]) -> None:
        if description.get("kind") != self.kind:
            raise KeyringError(
                f"keyring is protected by a {description.get('kind')!s:.40} root key, not by a KMS key",
                code="keyring.provider")
        if description.get("key_uri") != self.key_uri:
            raise KeyringError("keyring is protected by another KMS key", code="keyring.provider")

    def wrap(self, plaintext: bytes, associated_data: bytes) -> bytes:
        return bytes(self._remote().encrypt(plaintext, associated_data))  # type: ignore[attr-defined]

    def unwrap(self, ciphertext: bytes, associated_data: bytes) -> bytes:
        return bytes(self._remote().decrypt(ciphertext, associated_data))  # type: ignore[attr-defined]


def provider_for(description: Mapping[str, object], *, passphrase: str | None = None) -> RootKeyProvider:
    """The provider a keyring header names: its passphrase from the argument, env or prompt."""
    kind = description.get("kind")
    if kind == "kms":
        return KmsProvider(str(description.get("key_uri")))
    if kind == PassphraseProvider.kind:
        return PassphraseProvider(passphrase if passphrase is not None else passphrase_from_env_or_prompt())
    raise KeyringError(f"unknown root-key provider {kind!s:.40}", code="keyring.provider")


def passphrase_from_env_or_prompt(
    prompt: str = "Keyring passphrase: ", *, confirm: bool = False, env_var: str = PASSPHRASE_ENV
) -> str:
    """The passphrase from ``$PIVAULT_PASSPHRASE``, else asked on the terminal.

    With ``confirm`` the terminal prompt asks twice (for a new keyring).
    Without the variable and without a terminal on stdin it raises
    ``KeyringError`` (``keyring.passphrase``) instead of blocking.
    """
    value = os.environ.get(env_var)
    if value:
        return check_new_passphrase(value) if confirm else value
    if not (sys.stdin is not None and sys.stdin.isatty()):
        raise KeyringError(
            f"no passphrase: set {env_var} or run on a terminal to be asked",
            code="keyring.passphrase",
        )
    first = getpass(prompt)
    if not first:
        raise KeyringError("the passphrase is empty", code="keyring.passphrase")
    if confirm:
        check_new_passphrase(first)
        if getpass("Repeat passphrase: ") != first:
            raise KeyringError("the two passphrases differ", code="keyring.passphrase")
    return first


def check_new_passphrase(passphrase: str) -> str:
    """``passphrase``, if it is long enough to become a keyring's; else ``KeyringError``.

    It is all that stands between a stolen keyring file and every record's key:
    Argon2 slows each guess, but a short or blank passphrase is guessed anyway.
    """
    if len(passphrase.strip()) < MIN_PASSPHRASE:
        raise KeyringError(
            f"a new keyring passphrase needs at least {MIN_PASSPHRASE} characters, not counting "
            "spaces at its ends: it alone protects the key of every record",
            code="keyring.passphrase_weak", hint="choose a phrase of several words")
    return passphrase
