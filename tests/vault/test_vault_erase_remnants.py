"""What an erasure leaves of a resident: nothing the vault can still show, nothing in its files.

The attacker here holds the vault's passphrase, or later steals its disk: after ``erase``, no
command may give the resident's values back, and on SQLite no byte of what held them is left.
"""

from __future__ import annotations

import contextlib
import csv
from pathlib import Path

import pytest
from vault_support import make_residents

from pivault.policy import AccessContext
from pivault.store.db import Database
from pivault.vault import Vault


def _write_csv(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "id_number", "mobile", "address"])
        w.writerows(rows)


def _files_under(*roots: Path) -> bytes:
    return b"".join(p.read_bytes() for r in roots for p in sorted(r.rglob("*")) if p.is_file())


def test_erase_takes_the_residents_rejected_rows_with_it(vault: Vault, tmp_path: Path, ctx: AccessContext,
                                                         reveal: AccessContext) -> None:
    a, b, c = make_residents(3, seed=311)
    first, mended, again = tmp_path / "first.csv", tmp_path / "mended.csv", tmp_path / "again.csv"
    # a's row is rejected for its mobile (with the number spaced out in another cell too), b's as
    # well; the mended file brings a in; a third file repeats a, kept by --on-duplicate reject
    spaced = " ".join(a["id_number"][i:i + 4] for i in range(0, 18, 4))
    _write_csv(first, [[a["name"], a["id_number"], "12345", a["address"]],
                       [b["name"], b["id_number"], "12345", b["address"]],
                       [c["name"], "", c["mobile"], f"see {spaced}"]])
    _write_csv(mended, [[a["name"], a["id_number"], a["mobile"], a["address"]]])
    _write_csv(again, [[a["name"], a["id_number"], a["mobile"], a["address"]]])
    vault.import_files([first], workers=2)  # the tags are made in the forked workers
    vault.import_files([mended])
    assert vault.import_files([again], on_duplicate="reject").rejected == 1  # and in the parent
    assert len(vault.rejects(ctx=reveal, limit=None)) == 4
    (rid,) = [r["record_id"] for r in vault.find(id_number=a["id_number"], ctx=ctx)]
    held = {str(x[0]): bytes(x[1]) for x in vault.db.query("SELECT reject_id, raw_row FROM import_rejects")}

    vault.erase(rid, ctx=ctx)

    left = vault.rejects(ctx=reveal, limit=None)
    shown = repr(left)
    assert a["id_number"] not in shown and a["name"] not in shown and a["address"] not in shown
    assert spaced not in shown
    # b's rejected row is not a's: it stays, as do the batches' counts
    assert [r["cells"]["id_number"] for r in left] == [b["id_number"]]
    assert sum(int(x[0]) for x in vault.db.query("SELECT rejected FROM import_batches")) == 4
    assert vault.db.query_one("SELECT COUNT(*) FROM import_reject_numbers")[0] == 1  # type: ignore[index]
    gone = set(held) - {r["reject_id"] for r in left}
    assert len(gone) == 3
    if vault.db.dialect == "sqlite":
        blob = _files_under(Path(vault.db.url.target).parent)
        for reject_id in gone:
            ct = held[reject_id]
            assert all(ct[i:i + 16] not in blob for i in range(0, len(ct) - 16, 8))
        assert held[left[0]["reject_id"]] in blob  # the search would have found it


def test_an_import_correction_drops_the_old_version_and_its_key(vault: Vault, tmp_path: Path,
                                                               ctx: AccessContext) -> None:
    """``--on-duplicate update`` is a correction: the version before it must be as gone as after
    ``update``, whose old record key is dropped (an older data backup holds that version)."""
    people = make_residents(20, seed=312)
    first, fix = tmp_path / "first.csv", tmp_path / "fix.csv"
    _write_csv(first, [[p["name"], p["id_number"], p["mobile"], p["address"]] for p in people])
    vault.import_files([first])
    a = people[7]
    (rid,) = [r["record_id"] for r in vault.find(id_number=a["id_number"], ctx=ctx)]
    before = vault.store.get(rid)
    assert before is not None and before.record_key is not None
    _write_csv(fix, [[a["name"], a["id_number"], a["mobile"], a["address"] + "附1号"]])
    assert vault.import_files([fix], on_duplicate="update").updated == 1

    after = vault.store.get(rid)
    assert after is not None and after.record_key is not None
    assert after.record_key[:4] != before.record_key[:4]
    # the record-key store holds the new version's key only: the old version, wherever a copy of
    # it is kept, no longer opens
    assert vault.store.keys.refs(rid) == [after.record_key[:4]]  # type: ignore[attr-defined]
    assert vault.store.keys.get(rid, before.record_key[:4]) is None  # type: ignore[attr-defined]
    if vault.db.dialect == "sqlite":
        keys_path = Path(vault.store.keys.db.url.target)  # type: ignore[attr-defined]
        blob = _files_under(Path(vault.db.url.target).parent, keys_path.parent)
        for ct in (before.fields["address"], before.record_key[4:]):
            assert all(ct[i:i + 16] not in blob for i in range(0, len(ct) - 16, 8))
        assert after.fields["address"] in blob


@pytest.mark.parametrize("reading", ["both stores", "the record-key store"])
def test_an_erasure_beside_a_long_reader_says_its_bytes_are_still_in_the_files(
        sqlite_vault: Vault, ctx: AccessContext, reading: str) -> None:
    """A backup or an export's fetch reads a snapshot for minutes: the checkpoint that takes the
    erased bytes out of the files cannot finish meanwhile. The erasure must say so, not claim
    them gone; once the reader ends, the next purge takes them."""
    v = sqlite_vault
    ids = [v.put(p, ctx=ctx) for p in make_residents(60, seed=313)]
    assert v.store.purge_freed()
    victim = v.store.get(ids[10])
    assert victim is not None and victim.record_key is not None
    keys_db = v.store.keys.db  # type: ignore[attr-defined]
    data_dir, keys_dir = Path(v.db.url.target).parent, Path(keys_db.url.target).parent
    remnants = [*victim.fields.values(), victim.record_key[4:]]

    def left() -> int:
        blob = _files_under(data_dir, keys_dir)
        return sum(any(ct[i:i + 16] in blob for i in range(0, len(ct) - 16, 8)) for ct in remnants)

    # the readers' snapshots outlast the writers' wait for them (30 s in service, shortened here)
    v.db.execute("PRAGMA busy_timeout=200")
    keys_db.execute("PRAGMA busy_timeout=200")
    data_reader = Database(f"sqlite:///{v.db.url.target}")
    keys_reader = Database(f"sqlite:///{keys_db.url.target}")
    try:
        with contextlib.ExitStack() as held:
            if reading == "both stores":
                held.enter_context(data_reader.snapshot())
                data_reader.query("SELECT COUNT(*) FROM records")
            held.enter_context(keys_reader.snapshot())
            keys_reader.query("SELECT COUNT(*) FROM record_keys")
            v.erase(ids[10], ctx=ctx)
            assert v.purge_pending
            assert left() > 0
    finally:
        data_reader.close()
        keys_reader.close()
    assert v.store.purge_freed()
    assert left() == 0
    # with nobody reading, an erasure says its bytes are gone, and they are
    victim = v.store.get(ids[20])
    assert victim is not None and victim.record_key is not None
    remnants = [*victim.fields.values(), victim.record_key[4:]]
    v.erase(ids[20], ctx=ctx)
    assert not v.purge_pending
    assert left() == 0
