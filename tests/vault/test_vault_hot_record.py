"""A record corrected again and again while others read it, on both backends.

A read takes the record's row from the data store and its key from the
record-key store: two reads, one after the other. A correction commits the
new ciphertext (its new key stored first) and then drops the old key, so a
reader can find the key its row names gone; it reads the row again. Two
corrections in quick succession can do that to the second read as well. The
reader keeps reading until row and key agree: it gets the record as one of
the corrections left it, never an integrity error (which tells an operator
that the store was tampered with).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vault_support import make_residents

from pivault.keys.shred import RecordKeyStore, ShreddingRecordStore
from pivault.policy import AccessContext
from pivault.store.db import Database
from pivault.vault import Vault


def _keys(vault: Vault) -> RecordKeyStore:
    assert isinstance(vault.store, ShreddingRecordStore)
    return vault.store.keys


def test_corrections_between_every_read_of_a_reader_leave_it_the_newest_version(
        vault: Vault, reveal: AccessContext) -> None:
    person = make_residents(1, seed=41)[0]
    rid = vault.put(dict(person), ctx=reveal)
    writer = Vault(Database(vault.db.url.raw), vault.keyring)
    keys = _keys(vault)
    key_reads = keys.get_many
    corrections = iter(range(1, 1000))
    last: list[str] = []

    def correct() -> None:
        address = f"北京市东城区东华门街道{next(corrections)}号"
        writer.update(rid, {"address": address}, ctx=reveal)
        last.append(address)

    calls = iter(range(1, 1000))

    def corrected_before(wanted: Sequence[tuple[str, bytes]]) -> dict[tuple[str, bytes], bytes]:
        # another process corrects the record between the reader's row read and its key read,
        # three times over for each read through the door
        if next(calls) % 4:
            correct()
        return key_reads(wanted)

    keys.get_many = corrected_before  # type: ignore[method-assign]
    try:
        got: dict[str, Any] = vault.get(rid, ctx=reveal)
        found = vault.find(id_number=person["id_number"], ctx=reveal)
    finally:
        del keys.get_many
        writer.close()
    assert len(last) == 6  # each read was overtaken three times
    assert got["record_id"] == rid and got["address"] in last and got["name"] == person["name"]
    assert [r["record_id"] for r in found] == [rid] and found[0]["address"] in last
    assert vault.get(rid, ctx=reveal)["address"] == last[-1]
