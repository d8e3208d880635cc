"""Keys and field encryption: the keyring.

``Keyring`` encrypts PI fields (AES-256-GCM under a per-record key that a
XChaCha20-Poly1305 field key wraps, or the field key itself; bound to record
id and field) and computes blind indexes (truncated HMAC-SHA256) with Tink keysets
that are stored encrypted under a root key from a ``RootKeyProvider``
(passphrase + Argon2id by default). Callers get operations, never key bytes.
"""

from pivault.crypto.blind import index_bits_for_population
from pivault.crypto.errors import IntegrityError, KeyringError
from pivault.crypto.keyring import Keyring
from pivault.crypto.providers import (
    Argon2Params,
    KmsProvider,
    PassphraseProvider,
    RootKeyProvider,
    check_new_passphrase,
    passphrase_from_env_or_prompt,
)

__all__ = [
    "Argon2Params",
    "IntegrityError",
    "Keyring",
    "KeyringError",
    "KmsProvider",
    "PassphraseProvider",
    "RootKeyProvider",
    "check_new_passphrase",
    "index_bits_for_population",
    "passphrase_from_env_or_prompt",
]
