"""RecordKeyStore.put_many in bulk (binary COPY on PostgreSQL) on both backends."""

from __future__ import annotations

import os

import pytest

from pivault.crypto.recordkeys import KEY_REF_BYTES, RECORD_KEY_BYTES
from pivault.keys.shred import RecordKeyStore
from pivault.model.record import new_record_id


def test_put_many_in_bulk_round_trips(store_url: str) -> None:
    with RecordKeyStore(store_url, vault_id="v-bulk") as keys:
        items = [(new_record_id(), os.urandom(RECORD_KEY_BYTES)) for _ in range(1200)]
        assert keys.put_many(items) == 1200
        got = keys.get_many([(rid, k[:KEY_REF_BYTES]) for rid, k in items])
        assert got == {(rid, k[:KEY_REF_BYTES]): k for rid, k in items}
        assert keys.count() == 1200
        with pytest.raises(Exception):  # noqa: B017 - a repeated key is refused, as by INSERT
            keys.put_many(items[:600])
        assert keys.count() == 1200
