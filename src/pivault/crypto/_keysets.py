"""Keyset surgery for rotation: add a primary key, remove a retired one.

Tink's Python binding has no keyset manager, so rotation edits the keyset
proto directly. The cleartext keyset exists only inside these functions, in
memory; nothing here writes a file or returns key bytes to a caller outside
:mod:`pivault.crypto` (the recovery envelope is the one caller that needs
the serialised keyset, and it encrypts it at once).
"""

from __future__ import annotations

import secrets

import tink
from tink import core, secret_key_access
from tink.proto import tink_pb2

from pivault.crypto.errors import KeyringError

__all__ = ["add_primary", "from_cleartext", "remove_key", "to_cleartext"]


def to_cleartext(handle: tink.KeysetHandle) -> bytes:
    """The serialised keyset proto, secret keys included (memory only)."""
    return bytes(tink.proto_keyset_format.serialize(handle, secret_key_access.TOKEN))


def from_cleartext(data: bytes) -> tink.KeysetHandle:
    return tink.proto_keyset_format.parse(data, secret_key_access.TOKEN)


def _keyset(handle: tink.KeysetHandle) -> tink_pb2.Keyset:
    return tink_pb2.Keyset.FromString(to_cleartext(handle))


def add_primary(handle: tink.KeysetHandle, template: tink_pb2.KeyTemplate) -> tink.KeysetHandle:
    """A copy of ``handle`` with a fresh key from ``template`` as its primary.

    The earlier keys stay enabled, so everything they protect still opens.
    """
    ks = _keyset(handle)
    used = {k.key_id for k in ks.key}
    key_id = 0
    while key_id == 0 or key_id in used:
        key_id = secrets.randbits(32)
    key = ks.key.add()
    key.key_data.CopyFrom(core.Registry.new_key_data(template))
    key.status = tink_pb2.ENABLED
    key.key_id = key_id
    key.output_prefix_type = template.output_prefix_type
    ks.primary_key_id = key_id
    return from_cleartext(ks.SerializeToString())


def remove_key(handle: tink.KeysetHandle, key_id: int) -> tink.KeysetHandle:
    """A copy of ``handle`` without ``key_id`` (which must not be the primary)."""
    ks = _keyset(handle)
    if ks.primary_key_id == key_id:
        raise KeyringError("the primary key cannot be retired; rotate first", code="keyring.retire")
    keep = [k for k in ks.key if k.key_id != key_id]
    if len(keep) == len(ks.key):
        raise KeyringError(f"no key {key_id} in this keyset", code="keyring.retire")
    out = tink_pb2.Keyset(primary_key_id=ks.primary_key_id)
    for k in keep:
        out.key.add().CopyFrom(k)
    return from_cleartext(out.SerializeToString())
