"""The keyring: field encryption and blind indexes for one vault.

One AEAD keyset (XChaCha20-Poly1305) encrypts every PI field; one PRF keyset
(HMAC-SHA256) per blind index computes lookup keys. Both are Tink keysets,
stored encrypted under a root key that a :class:`RootKeyProvider` holds.
Callers get operations (encrypt, decrypt, blind_index), never key bytes.

Field ciphertext layout::

    0x01 | Tink prefix (0x01 | key id, 4 bytes) | nonce (24) | ciphertext | tag (16)

and its associated data::

    0x01 | len(record_id) u32be | record_id UTF-8 | len(field) u32be | field UTF-8
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import struct
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import tink
from google.protobuf import json_format  # type: ignore[import-untyped]
from tink import aead, prf

from pivault.crypto._atomic import write_private
from pivault.crypto.blind import (
    MIN_POPULATION,
    expected_coincidences,
    index_bits_for_population,
    index_bytes,
    last_byte_mask,
)
from pivault.crypto.errors import IntegrityError, KeyringError
from pivault.crypto.providers import RootKeyProvider

__all__ = ["DEFAULT_INDEX_NAMES", "FORMAT_VERSION", "Keyring"]

aead.register()
prf.register()

FORMAT_NAME = "pivault.keyring"
FORMAT_VERSION = 1
#: first byte of every field ciphertext and of its associated data
CIPHERTEXT_VERSION = 1
DEFAULT_INDEX_NAMES: tuple[str, ...] = ("id_number", "mobile", "name_birth")
MAX_POPULATION = 10**12
_MAX_FILE_BYTES = 8 * 1024 * 1024
_INDEX_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_AEAD_TEMPLATE = "XCHACHA20_POLY1305"
_AEAD_TYPE_URL = "type.googleapis.com/google.crypto.tink.XChaCha20Poly1305Key"
_PRF_TEMPLATE = "HMAC_SHA256"
_PRF_TYPE_URL = "type.googleapis.com/google.crypto.tink.HmacPrfKey"
_VERIFIER_PLAINTEXT = b"pivault keyring verifier v1"
_VERSION_BYTE = bytes([CIPHERTEXT_VERSION])
_AD_HEAD = struct.Struct(">BI")  # version byte, u32 length of the record id
_FIELD_CACHE_MAX = 4096
# Tink output prefixes: TINK = 0x01 | key id, LEGACY/CRUNCHY = 0x00 | key id
_TINK_PREFIXES = (0x00, 0x01)
_OUTPUT_PREFIX_NAMES = {0: "UNKNOWN", 1: "TINK", 2: "LEGACY", 3: "RAW", 4: "CRUNCHY"}
_STATUS_NAMES = {0: "UNKNOWN", 1: "ENABLED", 2: "DISABLED", 3: "DESTROYED"}


def _lp(data: bytes) -> bytes:
    """Length-prefixed (u32 big-endian) bytes: concatenations stay unambiguous."""
    return len(data).to_bytes(4, "big") + data


def _text(value: object, what: str) -> bytes:
    if type(value) is not str:
        raise TypeError(f"{what} must be str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} is empty")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode text") from None


def _as_bytes(value: object, field: str, what: str) -> bytes:
    # Tink's C++ binding echoes its arguments in TypeError messages: never
    # let a wrong type reach it, the argument may be PI.
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} for field {field!r} must be bytes, not {type(value).__name__}")


def record_ad_prefix(record_id: str) -> bytes:
    """The record part of a field's associated data: version byte, length, id."""
    if type(record_id) is str and record_id:
        try:
            rid = record_id.encode("utf-8")
        except UnicodeEncodeError:
            pass
        else:
            return _AD_HEAD.pack(CIPHERTEXT_VERSION, len(rid)) + rid
    _text(record_id, "record id")  # raises the precise error
    raise AssertionError("unreachable")


def field_ad(record_id: str, field: str) -> bytes:
    """Associated data that binds a ciphertext to its record id and field."""
    return record_ad_prefix(record_id) + _lp(_text(field, "field name"))


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _corrupt(what: str) -> NoReturn:
    raise KeyringError(
        f"keyring file is damaged or was altered: {what}",
        code="keyring.corrupt",
        hint="restore the keyring file from a backup",
    ) from None


class _ProviderAead(aead.Aead):  # type: ignore[misc]
    """A root-key provider seen as a Tink AEAD, to encrypt keysets with Tink."""

    def __init__(self, provider: RootKeyProvider) -> None:
        self._provider = provider

    def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
        return self._provider.wrap(plaintext, associated_data)

    def decrypt(self, ciphertext: bytes, associated_data: bytes) -> bytes:
        return self._provider.unwrap(ciphertext, associated_data)


def _keyset_ad(header_bytes: bytes, name: str) -> bytes:
    return b"pivault.keyset\x00" + _lp(name.encode("ascii")) + header_bytes


def _verifier_ad(header_bytes: bytes) -> bytes:
    return b"pivault.verifier\x00" + header_bytes


def _check_index_names(index_names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(index_names, str):
        raise KeyringError("index_names must be a sequence of names", code="keyring.index")
    names = tuple(index_names)
    for name in names:
        if not isinstance(name, str) or not _INDEX_NAME.fullmatch(name):
            raise KeyringError(
                "index names are lower-case identifiers ([a-z][a-z0-9_]*, at most 63 chars)",
                code="keyring.index",
            )
    if len(set(names)) != len(names):
        raise KeyringError("index names repeat", code="keyring.index")
    return names


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or path.is_relative_to(directory)


class Keyring:
    """Keys of one vault: field AEAD and blind-index PRFs.

    Make one with :meth:`create`, load it with :meth:`open`. The object is
    not picklable (it holds keys); worker processes either inherit it by
    ``fork`` or call :meth:`open` with the same provider (a
    :class:`PassphraseProvider` caches its derived root key, so a forked
    worker does not run Argon2 again).
    """

    __slots__ = (
        "_aead",
        "_aead_handle",
        "_decrypt",
        "_encrypt",
        "_field_ad",
        "_header",
        "_prf",
        "_prf_handles",
        "_provider",
        "expected_population",
        "index_names",
        "path",
        "vault_id",
    )

    def __init__(
        self,
        *,
        path: Path,
        header: dict[str, Any],
        provider: RootKeyProvider,
        aead_handle: tink.KeysetHandle,
        prf_handles: Mapping[str, tink.KeysetHandle],
    ) -> None:
        self.path = path
        self._header = header
        self._provider = provider
        self.vault_id: str = header["vault_id"]
        self.expected_population: int = header["expected_population"]
        self._aead_handle = aead_handle
        self._prf_handles = dict(prf_handles)
        self._aead = aead_handle.primitive(aead.Aead)
        self._encrypt: Callable[[bytes, bytes], bytes] = self._aead.encrypt
        self._decrypt: Callable[[bytes, bytes], bytes] = self._aead.decrypt
        self._field_ad: dict[str, bytes] = {}
        indexes: dict[str, Any] = header["indexes"]
        self.index_names: tuple[str, ...] = tuple(header["index_names"])
        self._prf: dict[str, tuple[Any, int, tuple[bytes, ...] | None, int]] = {}
        for name in self.index_names:
            bits = int(indexes[name]["bits"])
            primary = self._prf_handles[name].primitive(prf.PrfSet).primary()
            mask = last_byte_mask(bits)
            # last byte of the index -> itself with the bits past ``bits`` cleared
            last = None if mask == 0xFF else tuple(bytes((b & mask,)) for b in range(256))
            self._prf[name] = (primary.compute, index_bytes(bits), last, bits)

    # ------------------------------------------------------------------ create/open

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        provider: RootKeyProvider,
        *,
        expected_population: int,
        index_names: Sequence[str] = DEFAULT_INDEX_NAMES,
        data_dir: str | os.PathLike[str] | None = None,
    ) -> Keyring:
        """Make new keysets, write them encrypted to ``path`` (mode 0600).

        Refuses an existing file (``keyring.exists``) and a path inside
        ``data_dir`` (``keyring.location``): keys never sit beside the data.
        """
        names = _check_index_names(index_names)
        if (
            type(expected_population) is not int
            or not MIN_POPULATION <= expected_population <= MAX_POPULATION
        ):
            raise KeyringError(
                f"expected population must be an integer within {MIN_POPULATION}..{MAX_POPULATION}",
                code="keyring.population",
            )
        target = Path(path).expanduser().resolve()
        if data_dir is not None:
            data = Path(data_dir).expanduser().resolve()
            if _inside(target, data):
                raise KeyringError(
                    "the keyring must not be stored inside the data directory",
                    code="keyring.location",
                    hint="keep keys apart from the data they protect (another disk or host)",
                )
        if os.path.lexists(target):
            raise KeyringError(
                f"a keyring already exists at {target}; refusing to overwrite it",
                code="keyring.exists",
            )
        bits = index_bits_for_population(expected_population)
        header: dict[str, Any] = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "vault_id": str(uuid.uuid4()),
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "provider": provider.describe(),
            "expected_population": expected_population,
            "aead": {"template": _AEAD_TEMPLATE, "ciphertext_version": CIPHERTEXT_VERSION},
            "index_names": list(names),
            "indexes": {
                name: {
                    "prf": _PRF_TEMPLATE,
                    "bits": bits,
                    "expected_coincidences": round(expected_coincidences(expected_population, bits), 1),
                }
                for name in names
            },
        }
        aead_handle = tink.new_keyset_handle(aead.aead_key_templates.XCHACHA20_POLY1305)
        prf_handles = {name: tink.new_keyset_handle(prf.prf_key_templates.HMAC_SHA256) for name in names}
        header_bytes = _canonical(header)
        master = _ProviderAead(provider)
        keysets: dict[str, Any] = {
            "aead": json.loads(
                tink.json_proto_keyset_format.serialize_encrypted(
                    aead_handle, master, _keyset_ad(header_bytes, "aead")
                )
            )
        }
        for name, handle in prf_handles.items():
            keysets[f"prf.{name}"] = json.loads(
                tink.json_proto_keyset_format.serialize_encrypted(
                    handle, master, _keyset_ad(header_bytes, f"prf.{name}")
                )
            )
        document = {
            "header": header,
            "header_sha256": hashlib.sha256(header_bytes).hexdigest(),
            "verifier": base64.b64encode(
                provider.wrap(_VERIFIER_PLAINTEXT, _verifier_ad(header_bytes))
            ).decode("ascii"),
            "keysets": keysets,
        }
        payload = json.dumps(document, indent=2, sort_keys=True).encode("ascii") + b"\n"
        try:
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_private(target, payload, overwrite=False)
        except FileExistsError:
            raise KeyringError(
                f"a keyring already exists at {target}; refusing to overwrite it",
                code="keyring.exists",
            ) from None
        except OSError as exc:
            raise KeyringError(
                f"cannot write the keyring at {target}: {exc.strerror}", code="keyring.io"
            ) from exc
        return cls(
            path=target,
            header=header,
            provider=provider,
            aead_handle=aead_handle,
            prf_handles=prf_handles,
        )

    @classmethod
    def open(cls, path: str | os.PathLike[str], provider: RootKeyProvider) -> Keyring:
        """Load the keyring at ``path`` with the root key from ``provider``.

        Never writes. Raises ``KeyringError``: ``keyring.missing``,
        ``keyring.passphrase`` (wrong passphrase), ``keyring.corrupt``.
        """
        target = Path(path).expanduser().resolve()
        try:
            with open(target, "rb") as fh:
                raw = fh.read(_MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            raise KeyringError(f"no keyring at {target}", code="keyring.missing") from None
        except OSError as exc:
            raise KeyringError(
                f"cannot read the keyring at {target}: {exc.strerror}", code="keyring.io"
            ) from exc
        if len(raw) > _MAX_FILE_BYTES:
            _corrupt("file is too large")
        try:
            document = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            _corrupt("not a JSON document")
        header, verifier, keysets = _parse_document(document)
        header_bytes = _canonical(header)
        provider_description = header["provider"]
        try:
            provider.restore(provider_description)
        except KeyringError:
            raise
        except Exception as exc:
            raise KeyringError(
                "the root-key provider rejected the keyring header", code="keyring.provider"
            ) from exc
        try:
            plain = provider.unwrap(verifier, _verifier_ad(header_bytes))
        except KeyringError:
            raise
        except Exception as exc:
            raise KeyringError(
                "the root-key provider could not unwrap the keyring (wrong root key?)",
                code="keyring.unwrap",
            ) from exc
        if plain != _VERIFIER_PLAINTEXT:
            _corrupt("verifier mismatch")
        master = _ProviderAead(provider)
        handles: dict[str, tink.KeysetHandle] = {}
        for name, encrypted in keysets.items():
            try:
                handles[name] = tink.json_proto_keyset_format.parse_encrypted(
                    json.dumps(encrypted), master, _keyset_ad(header_bytes, name)
                )
            except Exception:
                # Tink and the provider say nothing useful here, and must not
                # be chained into logs: the message is the whole story.
                _corrupt(f"keyset {name!r} does not decrypt")
            # Tink stores a cleartext summary (key ids, types) beside the
            # encrypted keyset and does not authenticate it: it must agree
            # with what decrypted, or somebody edited it.
            if encrypted.get("keysetInfo") != json_format.MessageToDict(handles[name].keyset_info()):
                _corrupt(f"keyset {name!r} summary does not match its keys")
        aead_handle = handles.pop("aead")
        _check_keyset(aead_handle, "aead", _AEAD_TYPE_URL)
        prf_handles = {name.removeprefix("prf."): h for name, h in handles.items()}
        for name, handle in prf_handles.items():
            _check_keyset(handle, f"prf.{name}", _PRF_TYPE_URL)
        try:
            return cls(
                path=target,
                header=header,
                provider=provider,
                aead_handle=aead_handle,
                prf_handles=prf_handles,
            )
        except Exception:
            _corrupt("keysets cannot be used")

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "Keyring holds keys and cannot be pickled; fork workers after opening it, "
            "or call Keyring.open(path, provider) in each worker"
        )

    def __repr__(self) -> str:
        return f"Keyring(vault_id={self.vault_id!r}, indexes={self.index_names!r})"

    # ------------------------------------------------------------------ fields

    def _field_tail(self, field: str) -> bytes:
        tail = self._field_ad.get(field)
        if tail is None:
            tail = _lp(_text(field, "field name"))
            if len(self._field_ad) < _FIELD_CACHE_MAX:
                self._field_ad[field] = tail
        return tail

    def encrypt(self, record_id: str, field: str, plaintext: bytes) -> bytes:
        """AEAD-encrypt one field value, bound to ``record_id`` and ``field``."""
        ad = record_ad_prefix(record_id) + self._field_tail(field)
        if type(plaintext) is not bytes:
            plaintext = _as_bytes(plaintext, field, "plaintext")
        return _VERSION_BYTE + self._encrypt(plaintext, ad)

    def decrypt(self, record_id: str, field: str, ciphertext: bytes) -> bytes:
        """Decrypt one field value; ``IntegrityError`` on any failure."""
        return self._open(record_ad_prefix(record_id), field, ciphertext)

    def _open(self, head: bytes, field: str, ciphertext: bytes) -> bytes:
        ad = head + self._field_tail(field)
        if type(ciphertext) is not bytes:
            ciphertext = _as_bytes(ciphertext, field, "ciphertext")
        if ciphertext[:1] != _VERSION_BYTE:
            raise IntegrityError(f"ciphertext of field {field!r} has an unknown format", field=field)
        try:
            return self._decrypt(ciphertext[1:], ad)
        except tink.TinkError:
            raise IntegrityError(
                f"ciphertext of field {field!r} failed authentication: altered, moved from "
                "another record or field, or made under a key this keyring lacks",
                field=field,
            ) from None

    def encrypt_many(self, record_id: str, fields: Mapping[str, bytes]) -> dict[str, bytes]:
        """Encrypt several fields of one record; the record id is encoded once."""
        head = record_ad_prefix(record_id)
        tail_of = self._field_tail
        enc = self._encrypt
        out: dict[str, bytes] = {}
        for field, plaintext in fields.items():
            ad = head + tail_of(field)
            if type(plaintext) is not bytes:
                plaintext = _as_bytes(plaintext, field, "plaintext")
            out[field] = _VERSION_BYTE + enc(plaintext, ad)
        return out

    def decrypt_many(self, record_id: str, fields: Mapping[str, bytes]) -> dict[str, bytes]:
        """Decrypt several fields of one record; ``IntegrityError`` names the first bad field."""
        head = record_ad_prefix(record_id)
        return {field: self._open(head, field, ct) for field, ct in fields.items()}

    # ------------------------------------------------------------------ blind indexes

    def blind_index(self, index_name: str, normalised_value: str) -> bytes:
        """Truncated HMAC-SHA256 of an already normalised value.

        ``index_bits(index_name)`` bits, packed big-endian into whole bytes
        with the trailing bits zero. Composite indexes (``name_birth``) take
        the caller's joined value.
        """
        entry = self._prf.get(index_name)
        if entry is None:
            raise KeyringError(f"no blind index named {index_name!r} in this keyring", code="keyring.index")
        compute, nbytes, last, _bits = entry
        if type(normalised_value) is not str or not normalised_value:
            _text(normalised_value, f"value for index {index_name!r}")  # raises
        try:
            data = normalised_value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"value for index {index_name!r} is not valid Unicode text") from None
        out: bytes = compute(data, nbytes)
        if last is not None:
            out = out[:-1] + last[out[-1]]
        return out

    def index_bits(self, index_name: str) -> int:
        entry = self._prf.get(index_name)
        if entry is None:
            raise KeyringError(f"no blind index named {index_name!r} in this keyring", code="keyring.index")
        return entry[3]

    # ------------------------------------------------------------------ metadata

    def key_id_of(self, ciphertext: bytes) -> int:
        """The Tink key id a field ciphertext was made under (no decryption)."""
        if (
            not isinstance(ciphertext, bytes)
            or len(ciphertext) < 6
            or ciphertext[0] != CIPHERTEXT_VERSION
            or ciphertext[1] not in _TINK_PREFIXES
        ):
            raise IntegrityError("not a pivault field ciphertext", code="crypto.format")
        return int.from_bytes(ciphertext[2:6], "big")

    def key_info(self) -> list[dict[str, object]]:
        """Non-secret metadata of each keyset: name, primary key id, key ids, type."""
        out = [_describe_keyset("aead", self._aead_handle, {"purpose": "field encryption"})]
        for name in self.index_names:
            bits = self._prf[name][3]
            out.append(
                _describe_keyset(
                    f"prf.{name}",
                    self._prf_handles[name],
                    {"purpose": "blind index", "index": name, "index_bits": bits},
                )
            )
        return out

    def describe(self) -> dict[str, object]:
        """Non-secret header of the keyring (for ``pivault status``)."""
        return json.loads(json.dumps(self._header))  # type: ignore[no-any-return]


def _describe_keyset(name: str, handle: tink.KeysetHandle, extra: Mapping[str, object]) -> dict[str, object]:
    info = handle.keyset_info()
    keys = [
        {
            "key_id": k.key_id,
            "key_type": k.type_url.rsplit(".", 1)[-1],
            "status": _STATUS_NAMES.get(k.status, str(k.status)),
            "output_prefix": _OUTPUT_PREFIX_NAMES.get(k.output_prefix_type, "?"),
        }
        for k in info.key_info
    ]
    primary = next((k for k in keys if k["key_id"] == info.primary_key_id), None)
    return {
        "keyset": name,
        **extra,
        "primary_key_id": info.primary_key_id,
        "key_ids": [k["key_id"] for k in keys],
        "key_type": primary["key_type"] if primary else None,
        "keys": keys,
    }


def _check_keyset(handle: tink.KeysetHandle, name: str, type_url: str) -> None:
    info = handle.keyset_info()
    for key in info.key_info:
        if key.type_url != type_url:
            _corrupt(f"keyset {name!r} holds a key of an unexpected type")
    if name == "aead":
        for key in info.key_info:
            if key.output_prefix_type != 1:  # TINK: the key id travels with the ciphertext
                _corrupt("field keyset holds a key without Tink output prefix")


def _parse_document(document: object) -> tuple[dict[str, Any], bytes, dict[str, Any]]:
    """Validate the keyring document's shape; return header, verifier, keysets."""
    if not isinstance(document, dict) or not isinstance(document.get("header"), dict):
        _corrupt("no header")
    header = document["header"]
    if header.get("format") != FORMAT_NAME:
        _corrupt("not a pivault keyring")
    version = header.get("version")
    if version != FORMAT_VERSION:
        if type(version) is int and version > FORMAT_VERSION:
            raise KeyringError(
                f"keyring format {version} is newer than this pivault understands",
                code="keyring.version",
                hint="upgrade pivault",
            )
        _corrupt("unknown format version")
    if set(document) != {"header", "header_sha256", "verifier", "keysets"}:
        _corrupt("unexpected top-level layout")
    # Catches accidental damage with a precise message. It is no defence
    # against a deliberate edit (anyone can recompute it): that one fails
    # the verifier and keyset decryption, which bind the whole header.
    if document["header_sha256"] != hashlib.sha256(_canonical(header)).hexdigest():
        _corrupt("header checksum mismatch")
    vault_id = header.get("vault_id")
    try:
        if not isinstance(vault_id, str) or str(uuid.UUID(vault_id)) != vault_id:
            _corrupt("bad vault id")
    except ValueError:
        _corrupt("bad vault id")
    if not isinstance(header.get("created"), str):
        _corrupt("bad created time")
    provider = header.get("provider")
    if not isinstance(provider, dict) or not isinstance(provider.get("kind"), str):
        _corrupt("bad provider description")
    population = header.get("expected_population")
    if type(population) is not int or not MIN_POPULATION <= population <= MAX_POPULATION:
        _corrupt("bad expected population")
    aead_desc = header.get("aead")
    if aead_desc != {"template": _AEAD_TEMPLATE, "ciphertext_version": CIPHERTEXT_VERSION}:
        _corrupt("unknown field cipher")
    indexes = header.get("indexes")
    names = header.get("index_names")
    if (
        not isinstance(indexes, dict)
        or not isinstance(names, list)
        or not all(isinstance(n, str) for n in names)
        or sorted(names) != sorted(indexes)
    ):
        _corrupt("bad index table")
    for name, desc in indexes.items():
        if not isinstance(name, str) or not _INDEX_NAME.fullmatch(name):
            _corrupt("bad index name")
        if not isinstance(desc, dict) or desc.get("prf") != _PRF_TEMPLATE:
            _corrupt("bad index description")
        bits = desc.get("bits")
        if type(bits) is not int or not 1 <= bits <= 256:
            _corrupt("bad index length")
    verifier = _strict_b64(document["verifier"], "verifier")
    keysets = document["keysets"]
    expected = {"aead"} | {f"prf.{name}" for name in indexes}
    if not isinstance(keysets, dict) or set(keysets) != expected:
        _corrupt("keysets do not match the header")
    for value in keysets.values():
        if not isinstance(value, dict):
            _corrupt("bad keyset entry")
        _strict_b64(value.get("encryptedKeyset"), "encrypted keyset")
    return header, verifier, keysets


def _strict_b64(text: object, what: str) -> bytes:
    """Decode canonical base64 only: a flipped padding bit is damage too."""
    if not isinstance(text, str):
        _corrupt(f"bad {what}")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        _corrupt(f"bad {what}")
    if base64.b64encode(data).decode("ascii") != text:
        _corrupt(f"bad {what}")
    return data
