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
import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import re
import stat
import struct
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import tink
from google.protobuf import json_format  # type: ignore[import-untyped]
from tink import aead, prf

from pivault.crypto import _keysets
from pivault.crypto import recovery as _recovery
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
from pivault.crypto.recordkeys import (
    KEY_REF_BYTES,
    RECORD_CIPHERTEXT_VERSION,
    RECORD_KEY_BYTES,
    RecordKey,
)

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
_NEVER = 1 << 62
#: how often (seconds) a keyring looks whether another process rewrote its file; see Keyring._fresh
_FRESH_EVERY = 0.01
_RECORD_KEY_AD = b"pivault.recordkey\x00"
_V2_BYTE = bytes([RECORD_CIPHERTEXT_VERSION])
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


def _encode_all(values: Sequence[str], index_name: str) -> list[bytes]:
    """UTF-8 of every value, after the checks :meth:`Keyring.blind_index` makes of one."""
    if not all(type(v) is str and v for v in values):
        for v in values:  # the first bad value raises, with blind_index's message
            _text(v, f"value for index {index_name!r}")
    try:
        return list(map(str.encode, values))  # UTF-8, strict
    except UnicodeEncodeError:
        raise ValueError(f"value for index {index_name!r} is not valid Unicode text") from None


def _compute_all(fast: Callable[[bytes, int], bytes], compute: Callable[[bytes, int], bytes],
                 data: list[bytes], nbytes: int) -> list[bytes]:
    try:
        return list(map(fast, data, itertools.repeat(nbytes)))
    except Exception:
        # the direct call failed: Tink's own wrapper raises its own error (or succeeds)
        return [compute(d, nbytes) for d in data]


def _direct_compute(p: Any, nbytes: int) -> Callable[[bytes, int], bytes]:
    """The PRF's compute without Tink's Python error-translating shim, for batches.

    It is the same Tink (C++) primitive the shim calls; it is used only when it is
    there and gives the shim's output on a probe, else the shim itself.
    """
    public: Callable[[bytes, int], bytes] = p.compute
    inner = getattr(getattr(p, "_cc_primitive", None), "compute", None)
    if inner is None:
        return public
    probe = b"pivault blind index probe"
    try:
        if inner(probe, nbytes) == public(probe, nbytes):
            return inner  # type: ignore[no-any-return]
    except Exception:  # any doubt: the shim
        pass
    return public


def _direct_decrypt(a: Any) -> Callable[[bytes, bytes], bytes]:
    """Tink's AEAD decrypt without its Python shims, for the lookups' record keys.

    Tink's wrapper scans its key list for the ciphertext's 5-byte prefix and
    calls the key's (C++) primitive through an error-translating decorator:
    about half of the 3 µs an unwrap costs, paid for every candidate of every
    lookup. Here the prefix picks the same C++ primitive from a table. Any
    ciphertext the table cannot serve, and any failure, goes through Tink's
    own wrapper, so errors (and raw-prefix keys, or keys sharing a prefix) are
    exactly Tink's. Used only when the table gives the wrapper's output on a
    probe and the keyset has no decryption monitor.
    """
    public: Callable[[bytes, bytes], bytes] = a.decrypt
    try:
        if getattr(a, "_decryption_monitor", None) is not None:
            return public
        table: dict[bytes, Callable[[bytes, bytes], bytes]] = {}
        for entries in a._primitive_set.all():
            if len(entries) == 1 and len(entries[0].identifier) == 5:
                cc = getattr(getattr(entries[0].primitive, "_aead", None), "decrypt", None)
                if cc is not None:
                    table[bytes(entries[0].identifier)] = cc
        probe_ad = b"pivault direct decrypt probe"
        probe = a.encrypt(b"probe", probe_ad)
        fn = table.get(probe[:5])
        if fn is None or fn(probe[5:], probe_ad) != b"probe":
            return public
    except Exception:  # any doubt: Tink's own wrapper
        return public

    def decrypt(ciphertext: bytes, associated_data: bytes) -> bytes:
        fn = table.get(ciphertext[:5])
        if fn is not None:
            try:
                return fn(ciphertext[5:], associated_data)
            except Exception:  # Tink's wrapper below gives the error
                pass
        return public(ciphertext, associated_data)

    return decrypt


def _direct_encrypt(a: Any) -> Callable[[bytes, bytes], bytes]:
    """Tink's AEAD encrypt without its Python shims, for the import's record keys.

    Tink's wrapper prepends the primary key's 5-byte prefix to what the key's
    C++ primitive returns, calling it through an error-translating decorator:
    two Python frames around the ~1 µs the C++ call takes, and an import
    wraps a record key per resident. Here the same C++ primitive of the same
    primary key is called and the same prefix prepended; the nonce is drawn
    inside the C++ primitive as before. Any failure goes through Tink's own
    wrapper (its error, or its result). Used only when the keyset has no
    encryption monitor and the wrapper decrypts what the direct call made
    on a probe.
    """
    public: Callable[[bytes, bytes], bytes] = a.encrypt
    try:
        if getattr(a, "_encryption_monitor", None) is not None:
            return public
        primary = a._primitive_set.primary()
        prefix = bytes(primary.identifier)
        cc: Callable[[bytes, bytes], bytes] | None = getattr(
            getattr(primary.primitive, "_aead", None), "encrypt", None)
        if cc is None or len(prefix) != 5:
            return public
        probe_ad = b"pivault direct encrypt probe"
        made = prefix + cc(b"probe", probe_ad)
        if a.decrypt(made, probe_ad) != b"probe":
            return public
    except Exception:  # any doubt: Tink's own wrapper
        return public

    direct: Callable[[bytes, bytes], bytes] = cc

    def encrypt(plaintext: bytes, associated_data: bytes) -> bytes:
        try:
            return prefix + direct(plaintext, associated_data)
        except Exception:  # Tink's wrapper below gives the error
            return public(plaintext, associated_data)

    return encrypt


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
        "_file_sig",
        "_flush_at",
        "_fresh_at",
        "_generation",
        "_header",
        "_prf",
        "_prf_all",
        "_prf_direct",
        "_prf_handles",
        "_provider",
        "_recovery_mac_key",
        "_usage",
        "_usage_every",
        "_usage_key",
        "_usage_sink",
        "_uses",
        "expected_population",
        "index_names",
        "path",
        "record_keys",
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
        self._provider = provider
        self.vault_id: str = header["vault_id"]
        self.expected_population: int = header["expected_population"]
        self._field_ad: dict[str, bytes] = {}
        #: encrypt records under per-record keys (format 2); set by the Vault
        #: when it has a record-key store (see docs/keys.md)
        self.record_keys = False
        self._recovery_mac_key: bytes | None = None
        self._usage: dict[int, int] = {}
        self._uses = 0
        self._usage_key = 0
        self._usage_sink: Callable[[dict[int, int]], None] | None = None
        self._usage_every = 0
        self._flush_at = _NEVER
        #: (inode, size, mtime) of the keyring file whose keys are installed; None: unknown yet
        self._file_sig: tuple[int, int, int] | None = None
        self._fresh_at = 0.0
        self._install(header, aead_handle, prf_handles)

    def _install(
        self, header: dict[str, Any], aead_handle: tink.KeysetHandle,
        prf_handles: Mapping[str, tink.KeysetHandle],
    ) -> None:
        """Build the primitives of a (new) key state; the last step of open and of every change."""
        primary = aead_handle.keyset_info().primary_key_id
        if self._uses and self._usage_key != primary:
            # encryptions so far belong to the key that was primary when they were made
            self._usage[self._usage_key] = self._usage.get(self._usage_key, 0) + self._uses
            self._uses = 0
            if self._usage_sink is not None:
                self._flush_at = self._usage_every
        self._usage_key = primary
        self._header = header
        self._generation = int(header.get("generation", 0))
        self._aead_handle = aead_handle
        self._prf_handles = dict(prf_handles)
        self._aead = aead_handle.primitive(aead.Aead)
        self._encrypt: Callable[[bytes, bytes], bytes] = _direct_encrypt(self._aead)
        self._decrypt: Callable[[bytes, bytes], bytes] = _direct_decrypt(self._aead)
        indexes: dict[str, Any] = header["indexes"]
        self.index_names: tuple[str, ...] = tuple(header["index_names"])
        prfs: dict[str, tuple[Any, int, tuple[bytes, ...] | None, int]] = {}
        prf_all: dict[str, tuple[Any, ...]] = {}
        direct: dict[str, tuple[Callable[[bytes, int], bytes], ...]] = {}
        for name in self.index_names:
            bits = int(indexes[name]["bits"])
            prf_set = self._prf_handles[name].primitive(prf.PrfSet)
            primary_prf = prf_set.primary()
            mask = last_byte_mask(bits)
            # last byte of the index -> itself with the bits past ``bits`` cleared
            last = None if mask == 0xFF else tuple(bytes((b & mask,)) for b in range(256))
            prfs[name] = (primary_prf.compute, index_bytes(bits), last, bits)
            pid = prf_set.primary_id()
            others = [p.compute for kid, p in sorted(prf_set.all().items()) if kid != pid]
            prf_all[name] = (primary_prf.compute, *others)
            ordered = [primary_prf, *(p for kid, p in sorted(prf_set.all().items()) if kid != pid)]
            direct[name] = tuple(_direct_compute(p, index_bytes(bits)) for p in ordered)
        self._prf = prfs
        self._prf_all = prf_all
        self._prf_direct = direct

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
        payload = _build_document(header, provider, aead_handle, prf_handles, None)
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
        ring = cls(
            path=target,
            header=header,
            provider=provider,
            aead_handle=aead_handle,
            prf_handles=prf_handles,
        )
        ring._file_sig = _stat_of(target)
        return ring

    @classmethod
    def open(cls, path: str | os.PathLike[str], provider: RootKeyProvider) -> Keyring:
        """Load the keyring at ``path`` with the root key from ``provider``.

        Never writes. Raises ``KeyringError``: ``keyring.missing``,
        ``keyring.passphrase`` (wrong passphrase), ``keyring.corrupt``.
        """
        target = Path(path).expanduser().resolve()
        _refuse_shared(target)
        sig = _stat_of(target)  # before the read: a change in between is seen by the next check
        document = _read_document(target)
        header, verifier, keysets, _ = _parse_document(document)
        aead_handle, prf_handles = _decrypt_keysets(header, verifier, keysets, provider)
        try:
            ring = cls(
                path=target,
                header=header,
                provider=provider,
                aead_handle=aead_handle,
                prf_handles=prf_handles,
            )
        except Exception:
            _corrupt("keysets cannot be used")
        ring._file_sig = sig
        return ring

    @staticmethod
    def peek(path: str | os.PathLike[str]) -> dict[str, Any]:
        """The header of a keyring file, unauthenticated: to choose the provider before ``open``."""
        header, _v, _k, _e = _parse_document(_read_document(Path(path).expanduser().resolve()))
        return json.loads(json.dumps(header))  # type: ignore[no-any-return]

    @classmethod
    def recover(
        cls, path: str | os.PathLike[str], recovery_secret: bytes, new_provider: RootKeyProvider,
    ) -> Keyring:
        """Open the keyring with the custodians' recovery secret and put it under a new root key.

        For a lost passphrase (or a lost KMS key): the keysets come from the
        recovery envelope, are checked against the keyring's own summaries,
        and the file is rewritten under ``new_provider``; the data is not
        touched. Raises ``keyring.recovery`` when the secret is not this
        vault's recovery key or no recovery was set up, ``keyring.corrupt``
        when the envelope was altered. Changes nothing unless it succeeds.
        """
        target = Path(path).expanduser().resolve()
        with _file_lock(target):
            document = _read_document(target)
            header, _verifier, keysets, envelope = _parse_document(document)
            desc = header.get("recovery")
            if desc is None or envelope is None:
                raise KeyringError("this keyring has no custodian recovery set up",
                                   code="keyring.recovery",
                                   hint="recovery needs a `pivault keys split` made before the loss")
            public = _strict_b64(desc["public"], "recovery key")
            try:
                candidate = _recovery.public_of(recovery_secret)
            except ValueError:
                candidate = b""
            if candidate != public:
                raise KeyringError(
                    "the shares do not rebuild this vault's recovery key (a share is wrong, altered, "
                    "from another split, or there are too few)", code="keyring.recovery")
            header_bytes = _canonical(header)
            ad = _recovery_ad(header_bytes)
            sealed = _strict_b64(envelope.get("sealed"), "recovery envelope")
            mac = _strict_b64(envelope.get("mac"), "recovery envelope")
            mkey = _recovery.mac_key(recovery_secret)
            if not _hmac_equal(_recovery.bundle_mac(mkey, sealed, ad), mac):
                _corrupt("the recovery envelope was altered")
            bundle = _recovery.unseal(recovery_secret, sealed, ad)
            try:
                parts = json.loads(bundle)
                handles = {name: _keysets.from_cleartext(base64.b64decode(parts[name], validate=True))
                           for name in keysets}
            except Exception:
                _corrupt("the recovery envelope does not hold this keyring's keysets")
            for name, handle in handles.items():
                if keysets[name].get("keysetInfo") != json_format.MessageToDict(handle.keyset_info()):
                    _corrupt(f"recovered keyset {name!r} does not match the keyring's summary")
            aead_handle = handles.pop("aead")
            _check_keyset(aead_handle, "aead", _AEAD_TYPE_URL)
            prf_handles = {name.removeprefix("prf."): h for name, h in handles.items()}
            for name, handle in prf_handles.items():
                _check_keyset(handle, f"prf.{name}", _PRF_TYPE_URL)
            ring = cls(path=target, header=header, provider=new_provider, aead_handle=aead_handle,
                       prf_handles=prf_handles)
            ring._recovery_mac_key = mkey
            new_header = dict(header)
            new_header["provider"] = new_provider.describe()
            ring._commit(new_header, new_provider, aead_handle, prf_handles)
            return ring

    # ------------------------------------------------------------------ changes

    @property
    def generation(self) -> int:
        """How many times the keyring file was rewritten (rotations, retirements, root changes).

        It only grows, and it is part of the authenticated header, so it tells an older
        copy of the file from a newer one: the data store keeps the highest it has seen
        (:mod:`pivault.keys.seen`) and refuses an older keyring.
        """
        return self._generation

    def write_generation(self, *, look_now: bool = False) -> int:
        """The generation of the keys that what this keyring makes from now on is made with.

        Follows the file first, as every encryption does (at most every 10 ms; at once
        with ``look_now``), so a writer that notes it before sealing knows a lower bound
        for every key it sealed with: the store refuses values sealed with a keyring older
        than the newest it has seen, whose keys may be retired (:mod:`pivault.keys.seen`).
        """
        self._fresh(force=look_now)
        return self._generation

    def keyset_names(self) -> tuple[str, ...]:
        return ("aead", *(f"prf.{n}" for n in self.index_names))

    def _handle(self, keyset: str) -> tink.KeysetHandle:
        if keyset == "aead":
            return self._aead_handle
        name = keyset.removeprefix("prf.")
        if keyset.startswith("prf.") and name in self._prf_handles:
            return self._prf_handles[name]
        raise KeyringError(f"no keyset named {keyset!r} in this keyring", code="keyring.index")

    def primary_key_id(self, keyset: str = "aead") -> int:
        return int(self._handle(keyset).keyset_info().primary_key_id)

    def key_ids(self, keyset: str = "aead") -> tuple[int, ...]:
        return tuple(int(k.key_id) for k in self._handle(keyset).keyset_info().key_info)

    def _commit(self, header: dict[str, Any], provider: RootKeyProvider, aead_handle: tink.KeysetHandle,
                prf_handles: Mapping[str, tink.KeysetHandle]) -> None:
        """Write a new key state (caller holds the file lock), prove it opens, then use it."""
        header = dict(header)
        header["generation"] = int(header.get("generation", 0)) + 1
        if "recovery" in header:
            mkey = self._recovery_key_for_write()
            header["recovery"] = _recovery_header(header["recovery"], provider, header["vault_id"], mkey)
        else:
            mkey = None
        payload = _build_document(header, provider, aead_handle, prf_handles, mkey)
        # what is about to replace the only copy of the keys must open with the new root key
        check = json.loads(payload)
        h2, v2, k2, _ = _parse_document(check)
        a2, p2 = _decrypt_keysets(h2, v2, k2, provider)
        if a2.keyset_info() != aead_handle.keyset_info() or set(p2) != set(prf_handles):
            _corrupt("the rewritten keyring does not match its keys")
        _remove_stale_copies(self.path)  # before the write: they take room a full disk may need
        try:
            write_private(self.path, payload, overwrite=True)
        except OSError as exc:
            raise KeyringError(f"cannot write the keyring at {self.path}: {exc.strerror}",
                               code="keyring.io") from exc
        self._provider = provider
        self._install(header, aead_handle, prf_handles)
        self._file_sig = _stat_of(self.path)  # written under the lock: this is our own state

    def _recovery_key_for_write(self) -> bytes:
        if self._recovery_mac_key is None:
            desc = self._header.get("recovery")
            if not isinstance(desc, dict):
                _corrupt("recovery description missing")
            wrapped = _strict_b64(desc.get("mac_key"), "recovery MAC key")
            try:
                self._recovery_mac_key = self._provider.unwrap(
                    wrapped, _recovery_mac_ad(self.vault_id, _strict_b64(desc["public"], "recovery key")))
            except KeyringError:
                raise
            except Exception:
                _corrupt("the recovery MAC key does not unwrap")
        return self._recovery_mac_key

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """Hold the keyring's file lock and start from what is on disk now.

        Another process may have rotated since this one opened the file;
        its change must not be lost by writing an older state back.
        """
        with _file_lock(self.path):
            document = _read_document(self.path)
            header, verifier, keysets, _ = _parse_document(document)
            if header.get("generation", 0) != self._header.get("generation", 0) or header != self._header:
                if header["vault_id"] != self.vault_id:
                    raise KeyringError("the keyring file now belongs to another vault",
                                       code="keyring.corrupt")
                self._refuse_rollback(header)
                a, p = _decrypt_keysets(header, verifier, keysets, self._provider)
                self._recovery_mac_key = None
                self._install(header, a, p)
            yield

    def rotate(self, keyset: str = "aead") -> int:
        """Add a fresh key to ``keyset`` and make it primary; return its key id.

        Online: new encryptions (and new blind-index values) use it at once in
        this process, and in others after :meth:`reload`; every earlier key
        stays in the keyset, so everything it protects keeps opening.
        ``keyset`` is ``"aead"`` (field encryption, one key for every field)
        or ``"prf.<index>"``.
        """
        with self._changing():
            self._handle(keyset)
            aead_h, prf_h = self._aead_handle, dict(self._prf_handles)
            if keyset == "aead":
                aead_h = _keysets.add_primary(aead_h, aead.aead_key_templates.XCHACHA20_POLY1305)
            else:
                name = keyset.removeprefix("prf.")
                prf_h[name] = _keysets.add_primary(prf_h[name], prf.prf_key_templates.HMAC_SHA256)
            self._commit(self._header, self._provider, aead_h, prf_h)
            return self.primary_key_id(keyset)

    def retire(self, keyset: str, key_id: int) -> None:
        """Remove a key that nothing uses any more (destroying it in this file).

        The caller proves it is unused first (``pivault.keys`` counts every
        ciphertext by key id and finishes the index rebuild); the keyring
        only refuses to drop the primary.
        """
        with self._changing():
            aead_h, prf_h = self._aead_handle, dict(self._prf_handles)
            if keyset == "aead":
                aead_h = _keysets.remove_key(aead_h, key_id)
            else:
                self._handle(keyset)
                name = keyset.removeprefix("prf.")
                prf_h[name] = _keysets.remove_key(prf_h[name], key_id)
            self._commit(self._header, self._provider, aead_h, prf_h)

    def change_root(self, new_provider: RootKeyProvider) -> None:
        """Re-encrypt the keysets under another root key (new passphrase, or a KMS).

        Only the keyring file changes; the data keys, and so the data, stay
        as they are. The recovery envelope, if any, is rewritten with it.
        """
        with self._changing():
            if "recovery" in self._header:
                self._recovery_key_for_write()  # needs the old root key, so before the switch
            header = dict(self._header)
            header["provider"] = new_provider.describe()
            self._commit(header, new_provider, self._aead_handle, self._prf_handles)

    def set_up_recovery(self, secret: bytes | None = None) -> bytes:
        """Seal the keysets to a new recovery key; return its secret (32 bytes) once.

        The caller splits the secret among custodians at once and keeps no
        copy (``pivault keys split``); the keyring keeps the public half and
        re-seals to it on every later change. A new call replaces the
        recovery key: shares of the old one stop working. ``secret``: a
        recovery secret the caller made (:func:`pivault.crypto.recovery.new_recovery_secret`)
        and has already split and handed out, so that the keyring takes it only
        once its shares exist.
        """
        if secret is None:
            secret = _recovery.new_recovery_secret()
        with self._changing():
            public = _recovery.public_of(secret)
            held = self._recovery_mac_key
            self._recovery_mac_key = _recovery.mac_key(secret)
            header = dict(self._header)
            header["recovery"] = {
                "kind": _recovery.RECOVERY_KIND,
                "public": base64.b64encode(public).decode("ascii"),
                "fingerprint": _recovery.fingerprint(public),
                "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            try:
                self._commit(header, self._provider, self._aead_handle, self._prf_handles)
            except BaseException:
                # the file keeps the old recovery key: so must this process, or its next change
                # would seal the envelope with the new key's MAC and the custodians' shares stop working
                self._recovery_mac_key = held
                raise
        return secret

    def recovery_fingerprint(self) -> str | None:
        desc = self._header.get("recovery")
        return str(desc["fingerprint"]) if isinstance(desc, dict) else None

    def reload(self) -> bool:
        """Pick up a change another process wrote (rotation, retirement, root change).

        Returns True if the key state changed. Cheap when nothing changed
        (one file read); long-running services call it every few seconds.
        """
        return self._follow(_stat_of(self.path), root_change_ok=False)

    def _fresh(self, *, force: bool = False) -> bool:
        """Follow a key change another process wrote, before this one makes a ciphertext.

        A service or an import that opened the keyring before `keys rotate`,
        `rewrap` and `retire` (run elsewhere) would otherwise go on wrapping
        record keys, and making index values, under a key the file no longer
        holds: what it writes would open nowhere once it stops. So every
        operation that makes ciphertext or index values first compares the
        file's inode, size and mtime (one ``stat``, at most every
        ``_FRESH_EVERY`` seconds) and reloads on a change. If the new file
        does not open with this process's root key (``keys change-root``
        ran), that is harmless as long as the primary keys are the ones this
        process has; otherwise writing is refused (``keyring.stale``) rather
        than done under keys that may be gone. Returns True if keys changed.
        """
        now = time.monotonic()
        if not force and now < self._fresh_at:
            return False
        self._fresh_at = now + _FRESH_EVERY
        sig = _stat_of(self.path)
        if sig is None or sig == self._file_sig:
            return False  # unchanged, or no file to follow (nothing can be retired through it)
        return self._follow(sig, root_change_ok=True)

    def _follow(self, sig: tuple[int, int, int] | None, *, root_change_ok: bool) -> bool:
        """Install the file's keys if they changed (its stat ``sig`` taken before the read).

        ``root_change_ok``: a file that no longer opens with this process's root key is
        followed no further, as long as its primary keys are the ones held (see :meth:`_fresh`);
        else the error stands. Returns True if keys changed.
        """
        document = _read_document(self.path)
        header, verifier, keysets, _ = _parse_document(document)
        if header == self._header:
            self._file_sig = sig
            return False
        if header["vault_id"] != self.vault_id:
            raise KeyringError("the keyring file now belongs to another vault", code="keyring.corrupt")
        self._refuse_rollback(header)
        try:
            a, p = _decrypt_keysets(header, verifier, keysets, self._provider)
        except KeyringError:
            if not root_change_ok:
                raise
            if _primaries_on_disk(keysets) != self._primaries():
                raise KeyringError(
                    "the keyring was changed by another process under a root key this one does not"
                    " have, and its keys were rotated: nothing is written with the old keys",
                    code="keyring.stale",
                    hint="restart this process with the keyring's current passphrase or KMS key",
                ) from None
            self._file_sig = sig  # only the root key changed: the keys this process writes with are current
            # and as current as the file's: a store that has seen its generation takes what this one seals
            self._generation = max(self._generation, int(header.get("generation", 0)))
            return False
        self._recovery_mac_key = None
        self._install(header, a, p)
        self._file_sig = sig
        return True

    def _refuse_rollback(self, header: Mapping[str, Any]) -> None:
        """Refuse a keyring file older than the keys this process holds.

        An older copy put back over the file (from a backup, by hand) lacks
        the keys added since; following it would drop them from this process
        too, perhaps their last copy, and write new values under keys the
        newer file may have retired. Decryption goes on with the keys held;
        encryption, index values (so lookups too) and key changes stop until
        an operator sorts out which file is right.
        """
        if int(header.get("generation", 0)) < self.generation:
            raise KeyringError(
                f"the keyring file was replaced by an older copy (generation {header.get('generation', 0)}"
                f" < {self.generation}): nothing is written or changed with it",
                code="keyring.rollback",
                hint="put the newest keyring file back, or restart every process with the file you mean")

    def _primaries(self) -> dict[str, int]:
        out = {"aead": self.primary_key_id("aead")}
        out.update({f"prf.{n}": self.primary_key_id(f"prf.{n}") for n in self.index_names})
        return out

    # ------------------------------------------------------------------ usage

    def set_usage_sink(self, sink: Callable[[dict[int, int]], None] | None, *, every: int = 65536) -> None:
        """Report field-key encryptions to ``sink`` every ``every`` encryptions.

        The sink gets ``{key_id: encryptions since the last report}``; the
        ``pivault.keys`` ledger adds them up durably and warns (or rotates)
        long before the cipher's bound. Counting costs one integer add per call.
        """
        self._usage_sink = sink
        self._usage_every = max(1, int(every))
        self._flush_at = self._uses + self._usage_every if sink is not None else _NEVER

    @property
    def usage_sink(self) -> Callable[[dict[int, int]], None] | None:
        """Where encryption counts are reported (None: only counted in memory)."""
        return self._usage_sink

    def take_usage(self) -> dict[int, int]:
        """Encryptions per field key since the last call (or report); resets the count."""
        out = dict(self._usage)
        if self._uses:
            out[self._usage_key] = out.get(self._usage_key, 0) + self._uses
        self._usage.clear()
        self._uses = 0
        if self._usage_sink is not None:
            self._flush_at = self._usage_every
        return out

    def add_usage(self, counts: Mapping[int, int]) -> None:
        """Count encryptions made with this keyring's keys elsewhere: by a forked worker, which
        hands back its :meth:`take_usage` with each piece of work. They are reported with this
        keyring's own, at once if they reach the reporting interval."""
        for key_id, n in counts.items():
            if n > 0:
                self._usage[key_id] = self._usage.get(key_id, 0) + n
        if self._usage_sink is not None and self._uses + sum(self._usage.values()) >= self._usage_every:
            self._flush_usage()

    def _flush_usage(self) -> None:
        sink = self._usage_sink
        counts = self.take_usage()
        if sink is not None and counts:
            sink(counts)

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
        self._fresh()
        ad = record_ad_prefix(record_id) + self._field_tail(field)
        if type(plaintext) is not bytes:
            plaintext = _as_bytes(plaintext, field, "plaintext")
        out = _VERSION_BYTE + self._encrypt(plaintext, ad)
        self._uses += 1
        if self._uses >= self._flush_at:
            self._flush_usage()
        return out

    def decrypt(self, record_id: str, field: str, ciphertext: bytes, *,
                record_key: bytes | None = None) -> bytes:
        """Decrypt one field value; ``IntegrityError`` on any failure.

        A format-2 value (per-record key) needs the record's stored
        ``record_key``; without it (the record was erased) it fails with
        ``crypto.shredded``.
        """
        if record_key is None or ciphertext[:1] != _V2_BYTE:
            return self._open(record_ad_prefix(record_id), field, ciphertext)
        return self.open_record_key(record_id, record_key).decrypt(field, ciphertext)

    def _open(self, head: bytes, field: str, ciphertext: bytes) -> bytes:
        ad = head + self._field_tail(field)
        if type(ciphertext) is not bytes:
            ciphertext = _as_bytes(ciphertext, field, "ciphertext")
        if ciphertext[:1] != _VERSION_BYTE:
            if ciphertext[:1] == _V2_BYTE:
                raise IntegrityError(
                    f"field {field!r} is encrypted under a record key that is gone: the record was "
                    "erased (crypto-shredded), or its record key was not supplied",
                    field=field, code="crypto.shredded")
            raise IntegrityError(f"ciphertext of field {field!r} has an unknown format", field=field)
        try:
            return self._decrypt(ciphertext[1:], ad)
        except tink.TinkError:
            if self._fresh(force=True):  # made under a key another process added since
                return self._open(head, field, ciphertext)
            raise IntegrityError(
                f"ciphertext of field {field!r} failed authentication: altered, moved from "
                "another record or field, or made under a key this keyring lacks",
                field=field,
            ) from None

    def encrypt_many(self, record_id: str, fields: Mapping[str, bytes]) -> dict[str, bytes]:
        """Encrypt several fields of one record; the record id is encoded once."""
        self._fresh()
        head = record_ad_prefix(record_id)
        tail_of = self._field_tail
        enc = self._encrypt
        out: dict[str, bytes] = {}
        for field, plaintext in fields.items():
            ad = head + tail_of(field)
            if type(plaintext) is not bytes:
                plaintext = _as_bytes(plaintext, field, "plaintext")
            out[field] = _VERSION_BYTE + enc(plaintext, ad)
        self._uses += len(out)
        if self._uses >= self._flush_at:
            self._flush_usage()
        return out

    def decrypt_many(self, record_id: str, fields: Mapping[str, bytes], *,
                     record_key: bytes | None = None) -> dict[str, bytes]:
        """Decrypt several fields of one record; ``IntegrityError`` names the first bad field.

        Fields may mix formats 1 and 2 (a record being rewrapped); the record
        key is unwrapped once.
        """
        head = record_ad_prefix(record_id)
        rk: RecordKey | None = None
        out: dict[str, bytes] = {}
        for field, ct in fields.items():
            if record_key is not None and ct[:1] == _V2_BYTE:
                if rk is None:
                    rk = self.open_record_key(record_id, record_key)
                out[field] = rk.decrypt(field, ct)
            else:
                out[field] = self._open(head, field, ct)
        return out

    # ------------------------------------------------------------------ record keys

    def new_record_key(self, record_id: str) -> RecordKey:
        """A fresh random data key for one record version, wrapped by the primary field key."""
        self._fresh()
        head = record_ad_prefix(record_id)
        drawn = os.urandom(32 + KEY_REF_BYTES)  # one system call for both
        key, ref = drawn[:32], drawn[32:]
        wrapped = self._encrypt(key, _RECORD_KEY_AD + head + ref)
        self._uses += 1
        if self._uses >= self._flush_at:
            self._flush_usage()
        return RecordKey(record_id, ref, ref + wrapped, key)

    def open_record_key(self, record_id: str, stored: bytes) -> RecordKey:
        """Unwrap a stored record key; ``IntegrityError`` if it is not this record's."""
        if type(stored) is not bytes:
            stored = _as_bytes(stored, "record key", "record key")
        if len(stored) != RECORD_KEY_BYTES:
            raise IntegrityError("a stored record key has the wrong length", field="record_key",
                                 code="crypto.format")
        ref = stored[:KEY_REF_BYTES]
        try:
            key = self._decrypt(stored[KEY_REF_BYTES:], _RECORD_KEY_AD + record_ad_prefix(record_id) + ref)
        except tink.TinkError:
            if self._fresh(force=True):  # wrapped under a key another process added since
                return self.open_record_key(record_id, stored)
            raise IntegrityError(
                "a record key failed authentication: altered, moved from another record, or "
                "wrapped under a key this keyring lacks", field="record_key") from None
        return RecordKey(record_id, ref, stored, key)

    def rewrap_record_key(self, record_id: str, stored: bytes) -> bytes:
        """The same record key, wrapped under the current primary field key."""
        self._fresh()
        if type(stored) is not bytes or len(stored) != RECORD_KEY_BYTES:
            raise IntegrityError("a stored record key has the wrong length", field="record_key",
                                 code="crypto.format")
        ref = stored[:KEY_REF_BYTES]
        ad = _RECORD_KEY_AD + record_ad_prefix(record_id) + ref
        try:
            key = self._decrypt(stored[KEY_REF_BYTES:], ad)
        except tink.TinkError:
            if self._fresh(force=True):  # wrapped under a key another process added since
                return self.rewrap_record_key(record_id, stored)
            raise IntegrityError(
                "a record key failed authentication: altered, moved from another record, or "
                "wrapped under a key this keyring lacks", field="record_key") from None
        self._uses += 1
        if self._uses >= self._flush_at:
            self._flush_usage()
        return ref + self._encrypt(key, ad)

    def record_key_id(self, stored: bytes) -> int:
        """The Tink key id that wraps a stored record key (no decryption)."""
        if len(stored) != RECORD_KEY_BYTES or stored[KEY_REF_BYTES] not in _TINK_PREFIXES:
            raise IntegrityError("not a stored record key", code="crypto.format")
        return int.from_bytes(stored[KEY_REF_BYTES + 1:KEY_REF_BYTES + 5], "big")

    def encrypt_record(
        self, record_id: str, fields: Mapping[str, bytes],
    ) -> tuple[dict[str, bytes], bytes | None]:
        """Encrypt a record's fields the way this keyring is set to.

        With :attr:`record_keys` on: under a new record key, returned (wrapped)
        for the record-key store. Otherwise format 1 and ``None``.
        """
        if not self.record_keys:
            return self.encrypt_many(record_id, fields), None
        rk = self.new_record_key(record_id)
        return rk.encrypt_many(fields), rk.stored

    # ------------------------------------------------------------------ blind indexes

    def blind_index(self, index_name: str, normalised_value: str) -> bytes:
        """Truncated HMAC-SHA256 of an already normalised value.

        ``index_bits(index_name)`` bits, packed big-endian into whole bytes
        with the trailing bits zero. Composite indexes (``name_birth``) take
        the caller's joined value.
        """
        self._fresh()
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
        try:
            # the C++ PRF without Tink's Python shim (see _direct_compute): three a resident
            # in an import, one a lookup
            out: bytes = self._prf_direct[index_name][0](data, nbytes)
        except Exception:  # Tink's own shim gives its own error (or the value)
            out = compute(data, nbytes)
        if last is not None:
            out = out[:-1] + last[out[-1]]
        return out

    def blind_index_all(self, index_name: str, normalised_value: str) -> tuple[bytes, ...]:
        """The value's blind index under every key of the index, the primary's first.

        After a blind-index key rotation and until the rebuild has replaced
        every old entry, a lookup searches all of these (the Vault does).
        """
        first = self.blind_index(index_name, normalised_value)
        others = self._prf_all[index_name][1:]
        if not others:
            return (first,)
        _compute, nbytes, last, _bits = self._prf[index_name]
        data = normalised_value.encode("utf-8")
        out = [first]
        for compute in others:
            v: bytes = compute(data, nbytes)
            if last is not None:
                v = v[:-1] + last[v[-1]]
            out.append(v)
        return tuple(out)

    def blind_index_many(self, index_name: str, normalised_values: Sequence[str]) -> list[bytes]:
        """:meth:`blind_index` of each value, in order: the same bytes, the same errors.

        The index is looked up and the values checked once for the whole
        batch (all ``str``, none empty, all encodable), then each is hashed by
        the same Tink PRF. Nothing is computed when any value is bad.
        """
        self._fresh()
        entry = self._prf.get(index_name)
        if entry is None:
            raise KeyringError(f"no blind index named {index_name!r} in this keyring", code="keyring.index")
        compute, nbytes, last, _bits = entry
        data = _encode_all(normalised_values, index_name)
        out = _compute_all(self._prf_direct[index_name][0], compute, data, nbytes)
        if last is not None:
            out = [v[:-1] + last[v[-1]] for v in out]
        return out

    def blind_index_all_many(self, index_name: str,
                             normalised_values: Sequence[str]) -> list[tuple[bytes, ...]]:
        """:meth:`blind_index_all` of each value, in order (the primary key's value first)."""
        self._fresh()
        entry = self._prf.get(index_name)
        if entry is None:
            raise KeyringError(f"no blind index named {index_name!r} in this keyring", code="keyring.index")
        _compute, nbytes, last, _bits = entry
        data = _encode_all(normalised_values, index_name)
        per_key: list[list[bytes]] = []
        for fast, compute in zip(self._prf_direct[index_name], self._prf_all[index_name], strict=True):
            out = _compute_all(fast, compute, data, nbytes)
            if last is not None:
                out = [v[:-1] + last[v[-1]] for v in out]
            per_key.append(out)
        return list(zip(*per_key, strict=True)) if per_key else []

    def index_versions(self, index_name: str) -> int:
        """Keys of the index: more than one while a blind-index key rotation is rebuilding it."""
        entry = self._prf_all.get(index_name)
        if entry is None:
            raise KeyringError(f"no blind index named {index_name!r} in this keyring", code="keyring.index")
        return len(entry)

    def index_bits(self, index_name: str) -> int:
        self._fresh()
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


def _stat_of(target: Path) -> tuple[int, int, int] | None:
    """What tells a rewritten keyring file from the one loaded (a rewrite is a new inode)."""
    try:
        st = os.stat(target)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _refuse_shared(target: Path) -> None:
    """Refuse a keyring file that users other than its owner may read or write.

    pivault writes it 0600; one put in place by hand may not be. With a copy, the root
    key alone opens every key (for a passphrase: guessed offline, with no access to the
    vault), and a writable one can be replaced. As ``serve`` refuses a TLS key file
    others can read, nothing is read from it until it is private again.
    """
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        return  # missing or unreadable: the read says which
    if mode & 0o077:
        raise KeyringError(
            f"the keyring {target} can be read or written by other users (mode {mode:o}): a copy of it and "
            "the root key open every key of the vault; nothing was read from it",
            code="keyring.mode",
            hint=f"make it private: chmod 600 {target} (and find out who may have copied it)")


def _primaries_on_disk(keysets: Mapping[str, Any]) -> dict[str, int] | None:
    """Primary key id per keyset from the file's cleartext ``keysetInfo`` (None if unreadable)."""
    try:
        return {name: int(ks["keysetInfo"]["primaryKeyId"]) for name, ks in keysets.items()}
    except (KeyError, TypeError, ValueError):
        return None


def _read_document(target: Path) -> Any:
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
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        _corrupt("not a JSON document")


def _decrypt_keysets(
    header: dict[str, Any], verifier: bytes, keysets: dict[str, Any], provider: RootKeyProvider,
) -> tuple[tink.KeysetHandle, dict[str, tink.KeysetHandle]]:
    header_bytes = _canonical(header)
    try:
        provider.restore(header["provider"])
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
    return aead_handle, prf_handles


def _recovery_ad(header_bytes: bytes) -> bytes:
    return b"pivault.recovery\x00" + header_bytes


def _recovery_mac_ad(vault_id: str, public: bytes) -> bytes:
    return b"pivault.recovery.mac\x00" + vault_id.encode("ascii") + b"\x00" + public


def _recovery_header(desc: Mapping[str, Any], provider: RootKeyProvider, vault_id: str,
                     mac_key: bytes) -> dict[str, Any]:
    """The header's recovery entry with its MAC key wrapped under ``provider``."""
    public = _strict_b64(desc.get("public"), "recovery key")
    out = {k: v for k, v in desc.items() if k != "mac_key"}
    out["mac_key"] = base64.b64encode(
        provider.wrap(mac_key, _recovery_mac_ad(vault_id, public))).decode("ascii")
    return out


def _hmac_equal(a: bytes, b: bytes) -> bool:
    import hmac

    return hmac.compare_digest(a, b)


def _build_document(
    header: dict[str, Any], provider: RootKeyProvider, aead_handle: tink.KeysetHandle,
    prf_handles: Mapping[str, tink.KeysetHandle], recovery_mac_key: bytes | None,
) -> bytes:
    """The keyring file for a key state: keysets under the root key, and the recovery envelope."""
    header_bytes = _canonical(header)
    master = _ProviderAead(provider)
    handles: dict[str, tink.KeysetHandle] = {"aead": aead_handle}
    handles.update({f"prf.{name}": h for name, h in prf_handles.items()})
    keysets: dict[str, Any] = {
        name: json.loads(tink.json_proto_keyset_format.serialize_encrypted(
            handle, master, _keyset_ad(header_bytes, name)))
        for name, handle in handles.items()
    }
    document: dict[str, Any] = {
        "header": header,
        "header_sha256": hashlib.sha256(header_bytes).hexdigest(),
        "verifier": base64.b64encode(
            provider.wrap(_VERIFIER_PLAINTEXT, _verifier_ad(header_bytes))
        ).decode("ascii"),
        "keysets": keysets,
    }
    recovery = header.get("recovery")
    if recovery is not None:
        if recovery_mac_key is None:
            raise KeyringError("recovery MAC key missing", code="keyring.recovery")
        public = _strict_b64(recovery.get("public"), "recovery key")
        bundle = json.dumps({name: base64.b64encode(_keysets.to_cleartext(h)).decode("ascii")
                             for name, h in handles.items()}, sort_keys=True).encode("ascii")
        ad = _recovery_ad(header_bytes)
        sealed = _recovery.seal(public, bundle, ad)
        document["recovery"] = {
            "sealed": base64.b64encode(sealed).decode("ascii"),
            "mac": base64.b64encode(_recovery.bundle_mac(recovery_mac_key, sealed, ad)).decode("ascii"),
        }
    return json.dumps(document, indent=2, sort_keys=True).encode("ascii") + b"\n"


def _remove_stale_copies(target: Path) -> None:
    """Delete the temporary files that rewrites of ``target`` killed half-way left (caller holds the lock).

    Each is a whole copy of the keyring as it was to become, under the root key of its time:
    left there, it would keep keys that a later retirement destroys, and open with a
    passphrase that a later ``change-root`` retired. Every rewrite holds the lock, so one
    found while holding it belongs to a writer that is gone. Only names
    :func:`pivault.crypto._atomic.write_private` gives this file are touched, not those of
    the other files beside it (``<keyring>.backup-signing.json`` …), whose writers hold no lock.
    """
    pattern = re.compile(re.escape(f".{target.name}.") + r"[0-9]+\.[0-9a-f]{12}\.tmp")
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    for name in names:
        if pattern.fullmatch(name):
            with contextlib.suppress(OSError):
                os.unlink(target.parent / name)


@contextlib.contextmanager
def _file_lock(target: Path) -> Iterator[None]:
    """An exclusive advisory lock beside the keyring: one writer at a time, across processes."""
    lock_path = target.with_name(target.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError as exc:
        raise KeyringError(f"cannot lock the keyring: {exc.strerror}", code="keyring.io") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


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


def _parse_document(
    document: object,
) -> tuple[dict[str, Any], bytes, dict[str, Any], dict[str, Any] | None]:
    """Validate the keyring document's shape; return header, verifier, keysets, recovery envelope."""
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
    has_recovery = "recovery" in header
    expected_top = {"header", "header_sha256", "verifier", "keysets"}
    if has_recovery:
        expected_top.add("recovery")
    if set(document) != expected_top:
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
    generation = header.get("generation", 0)
    if type(generation) is not int or generation < 0:
        _corrupt("bad generation")
    envelope: dict[str, Any] | None = None
    if has_recovery:
        desc = header["recovery"]
        if not isinstance(desc, dict) or desc.get("kind") != _recovery.RECOVERY_KIND \
                or not isinstance(desc.get("fingerprint"), str):
            _corrupt("bad recovery description")
        if len(_strict_b64(desc.get("public"), "recovery key")) != 32:
            _corrupt("bad recovery key")
        _strict_b64(desc.get("mac_key"), "recovery MAC key")
        envelope = document["recovery"]
        if not isinstance(envelope, dict) or set(envelope) != {"sealed", "mac"}:
            _corrupt("bad recovery envelope")
        _strict_b64(envelope.get("sealed"), "recovery envelope")
        _strict_b64(envelope.get("mac"), "recovery envelope")
    verifier = _strict_b64(document["verifier"], "verifier")
    keysets = document["keysets"]
    expected = {"aead"} | {f"prf.{name}" for name in indexes}
    if not isinstance(keysets, dict) or set(keysets) != expected:
        _corrupt("keysets do not match the header")
    for value in keysets.values():
        if not isinstance(value, dict):
            _corrupt("bad keyset entry")
        _strict_b64(value.get("encryptedKeyset"), "encrypted keyset")
    return header, verifier, keysets, envelope


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
