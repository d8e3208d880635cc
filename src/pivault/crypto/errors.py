"""Errors of the keyring and of field decryption.

Messages name the keyring, the field or the index, never a value, a key or a
passphrase.
"""

from __future__ import annotations

from pivault.errors import PivaultError


class KeyringError(PivaultError):
    """The keyring cannot be created, opened or used.

    Codes: ``keyring.passphrase`` (wrong or missing passphrase),
    ``keyring.corrupt`` (the file is damaged or was altered),
    ``keyring.location`` (the keyring would sit inside the data directory),
    ``keyring.exists`` (refusing to overwrite), ``keyring.missing``,
    ``keyring.io``, ``keyring.provider``, ``keyring.unwrap``,
    ``keyring.population``, ``keyring.index``.
    """

    code = "keyring.error"


class IntegrityError(PivaultError):
    """A ciphertext failed authentication.

    It was altered, moved to another record or field, or made under a key
    this keyring does not hold. ``field`` names the field; the record id and
    the value are never part of the message.
    """

    code = "crypto.integrity"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.field = field
