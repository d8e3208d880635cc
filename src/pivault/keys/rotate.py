"""Rotate, report, retire: the key lifecycle around :mod:`pivault.keys.rewrap`.

1. ``rotate`` adds a key version and makes it primary (keyring file only).
2. ``rewrap`` moves every ciphertext to it, online.
3. ``status`` counts, per key version, what still uses it.
4. ``retire`` removes versions nothing uses: a field key when the census
   finds no value under it anywhere (data store, record-key store, key
   files); a blind-index key when a rewrap that began after its successor
   became primary has finished rebuilding the index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pivault.crypto import Keyring
from pivault.errors import PivaultError, ValidationError
from pivault.keys import jobs, seen
from pivault.keys.events import KeyEvents, noop
from pivault.keys.rewrap import JOB
from pivault.keys.shred import RecordKeyStore, keyless_batches
from pivault.keys.sites import FileSite, census
from pivault.keys.usage import UsageLedger
from pivault.store.db import Database

__all__ = ["Retired", "resolve_keysets", "retire_unused", "rotate", "status"]

PI_FIELDS = ("name", "id_number", "mobile", "address", "notes")


def resolve_keysets(keyring: Keyring, *, field: str | None = None, all_keys: bool = False) -> list[str]:
    """Keysets named by ``--field`` / ``--all``.

    Every PI field shares one field-encryption keyset (``aead``), so a PI
    field name rotates it for all fields; an index name (``id_number``,
    ``mobile``, ``name_birth``) rotates that blind-index key; ``aead`` and
    ``prf.<index>`` are accepted as they are. Nothing given: the field key.
    """
    if all_keys:
        if field is not None:
            raise ValidationError("keys.usage", "give --field or --all, not both")
        return list(keyring.keyset_names())
    if field is None or field in ("aead", "data"):
        return ["aead"]
    if field.startswith("prf.") and field.removeprefix("prf.") in keyring.index_names:
        return [field]
    if field in keyring.index_names:
        return [f"prf.{field}"]
    if field in PI_FIELDS:
        return ["aead"]
    raise ValidationError("keys.usage", f"no key for {field!r}: name a PI field, an index "
                          f"({', '.join(keyring.index_names)}) or use --all")


def rotate(keyring: Keyring, keysets: Sequence[str], *, events: KeyEvents = noop,
           db: Database | None = None) -> dict[str, int]:
    """Make a new key version primary in each keyset; return the new key ids.

    With the vault's store ``db``: refused with a keyring older than the store has
    seen (a rotation there would fork the key history), and each new generation is
    recorded in the store as soon as the keyring file holds it, so that values sealed
    with the keys of before are sealed again before they are written
    (:mod:`pivault.keys.seen`).
    """
    if db is not None:
        seen.check(db, keyring)
    out: dict[str, int] = {}
    for ks in keysets:
        old = keyring.primary_key_id(ks)
        new = keyring.rotate(ks)
        if db is not None:
            seen.record(db, keyring)
        out[ks] = new
        events("keys.rotate", "ok", {"keyset": ks, "old_key_id": old, "new_key_id": new,
                                     "generation": keyring.generation})
    return out


def _index_rebuilt(db: Database, keyring: Keyring, name: str) -> bool:
    job = jobs.load_job(db, JOB)
    return (job is not None and job.state == "done" and bool(job.detail.get("index_rebuilt"))
            and job.target.get("prf", {}).get(name) == keyring.primary_key_id(f"prf.{name}"))


def status(db: Database, keyring: Keyring, *, record_keys: RecordKeyStore | None = None,
           files: Sequence[FileSite] = (), ledger: UsageLedger | None = None) -> dict[str, Any]:
    """Per key version: is it primary, what uses it, may it be retired. No values, no keys."""
    c = census(db, keyring, record_keys=record_keys, files=files)
    usage = {u["key_id"]: u for u in ledger.report()} if ledger is not None else {}
    aead_keys = []
    for kid in keyring.key_ids("aead"):
        primary = kid == c.primary
        entry: dict[str, Any] = {"key_id": kid, "primary": primary, "values": c.total(kid),
                                 "where": dict(sorted(c.by_key.get(kid, {}).items())),
                                 "retirable": not primary and c.total(kid) == 0}
        if kid in usage:
            entry["encryptions"] = usage[kid]["encryptions"]
            entry["usage_state"] = usage[kid]["state"]
        aead_keys.append(entry)
    keysets: list[dict[str, Any]] = [{"keyset": "aead", "purpose": "field encryption",
                                      "primary": c.primary, "keys": aead_keys}]
    for name in keyring.index_names:
        ks = f"prf.{name}"
        prf_primary = keyring.primary_key_id(ks)
        ids = keyring.key_ids(ks)
        rebuilt = len(ids) == 1 or _index_rebuilt(db, keyring, name)
        keysets.append({
            "keyset": ks, "purpose": "blind index", "index": name, "primary": prf_primary,
            "index_complete": rebuilt,
            "keys": [{"key_id": k, "primary": k == prf_primary,
                      "state": "current" if k == prf_primary else ("retirable" if rebuilt else
                                                                "searched until the rebuild completes"),
                      "retirable": k != prf_primary and rebuilt} for k in ids],
        })
    job = jobs.load_job(db, JOB)
    return {
        "vault_id": keyring.vault_id,
        "generation": keyring.generation,
        "recovery_fingerprint": keyring.recovery_fingerprint(),
        "record_keys": record_keys.count() if record_keys is not None else None,
        "keysets": keysets,
        "unknown_key_ids": c.unknown_keys(),
        "rewrap": None if job is None else {
            "state": job.state, "phase": job.phase, "done": job.done, "started_at": job.started_at,
            "finished_at": job.finished_at, "current": job.target == _target(keyring)},
    }


def _target(keyring: Keyring) -> dict[str, Any]:
    from pivault.keys.rewrap import target_of

    return target_of(keyring)


#: record ids named in the refusal below (opaque ids, never a value)
_IDS_SHOWN = 5


def _refuse_missing_keys(db: Database, record_keys: RecordKeyStore, *, batch_size: int = 1000) -> None:
    """Refuse to retire anything while records name record keys the record-key store lacks.

    The census counts record keys in the store at hand. If that store is empty or not the vault's
    (moved, on a disk not mounted, a wrong ``[keys] record_key_store``), every record looks erased:
    the rewrap skips them and the census finds nothing under the old field key, whose retirement
    would then make every key in the real store unreadable for good (and the old index keys'
    retirement would hide records whose entries the walk could not rebuild). A record erased
    half-way (its key gone, its row left) holds retirement back too until it is erased again.
    """
    missing: list[str] = []
    count = 0
    for lacking, _found in keyless_batches(db, record_keys, batch_size=batch_size):
        count += len(lacking)
        missing.extend(lacking[:_IDS_SHOWN - len(missing)])
    if count:
        more = f" and {count - len(missing)} more" if count > len(missing) else ""
        raise PivaultError(
            f"{count} records have no key in the record-key store ({', '.join(missing)}{more}); nothing was"
            " retired: if the store is not the vault's own, a key retired now would make every record key"
            " in the real one unreadable", code="keys.retire_keys_missing",
            hint="point the vault at its own record-key store ([keys] record_key_store, default beside the"
                 " keyring) and run `pivault keys rewrap`; records erased half-way are finished by"
                 " `pivault erase` again")


@dataclass(frozen=True)
class Retired:
    keyset: str
    key_id: int


def retire_unused(db: Database, keyring: Keyring, *, record_keys: RecordKeyStore | None = None,
                  files: Sequence[FileSite] = (), dry_run: bool = False,
                  events: KeyEvents = noop) -> list[Retired]:
    """Remove every key version nothing uses any more; return what was (or would be) removed.

    Field keys: only with a fresh census at zero. Blind-index keys: only
    after a complete rebuild towards the current primary. Before the census
    the store records this keyring's generation (refusing a keyring older than
    it has seen): from then on a record sealed with an older keyring, whose keys
    may be the ones retired here, is sealed again before it is written, so none
    can arrive after the census (:mod:`pivault.keys.seen`). Other values under
    the field key (an audit chain head, a reject row, an export) are written by
    processes that follow the keyring file at most 10 ms late: see docs/keys.md.
    """
    out: list[Retired] = []
    if not dry_run:
        seen.record(db, keyring)
    if record_keys is not None:
        _refuse_missing_keys(db, record_keys)
    c = census(db, keyring, record_keys=record_keys, files=files)
    for kid in keyring.key_ids("aead"):
        if kid != c.primary and c.total(kid) == 0:
            out.append(Retired("aead", kid))
    for name in keyring.index_names:
        ks = f"prf.{name}"
        ids = keyring.key_ids(ks)
        if len(ids) > 1 and _index_rebuilt(db, keyring, name):
            primary = keyring.primary_key_id(ks)
            out.extend(Retired(ks, k) for k in ids if k != primary)
    if not dry_run:
        for r in out:
            keyring.retire(r.keyset, r.key_id)
            seen.record(db, keyring)
            events("keys.retire", "ok", {"keyset": r.keyset, "key_id": r.key_id,
                                         "generation": keyring.generation})
    return out
