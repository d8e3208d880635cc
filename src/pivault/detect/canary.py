"""Canary residents: synthetic records that no honest caller has a reason to read.

``seed(vault, n)`` makes residents with the same generator as the synthetic
population (valid ID numbers of real regions, plausible names, mobiles and
addresses) and stores them through the Vault door like any other record, so
their ciphertext, blind indexes and metadata look like everyone else's.

Which records are canaries is known only through the registry: one row per
canary holding ``HMAC-SHA256(K, record id)`` (truncated to 128 bits), where
``K`` is a random registry key stored encrypted under the keyring. Without
the keyring the table is a list of random-looking tags: it cannot be joined
to the records, and a record id cannot be tested against it.

Any read of a canary through the door raises a critical alert and suspends
the token at once (see :mod:`pivault.detect.guard`); the read itself is
answered normally, so the caller cannot tell that it tripped anything.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from pivault.crypto.hmac256 import HmacSha256
from pivault.errors import PivaultError
from pivault.policy.context import AccessContext
from pivault.store.db import Database
from pivault.store.migrations import Migration, register

log = logging.getLogger(__name__)

__all__ = ["CanaryRegistry", "canary_counts", "seed"]

_TAG_DOMAIN = b"pivault.canary.v1\x00"
_KEY_ID = "canary-registry"

register(Migration(
    "canary", 1, "canary registry: keyed tags of canary record ids, and the encrypted registry key",
    sqlite=("CREATE TABLE canary_key (id INTEGER PRIMARY KEY CHECK (id = 1), key_ct BLOB NOT NULL);"
            "CREATE TABLE canary_registry (tag BLOB PRIMARY KEY)"),
    postgresql=("CREATE TABLE canary_key (id SMALLINT PRIMARY KEY CHECK (id = 1), key_ct BYTEA NOT NULL);"
                "CREATE TABLE canary_registry (tag BYTEA PRIMARY KEY)"),
))


register(Migration(
    "canary", 2, "how many canaries carry a mobile (to leave them out of index counts)",
    sqlite="ALTER TABLE canary_key ADD COLUMN with_mobile INTEGER NOT NULL DEFAULT 0",
    postgresql="ALTER TABLE canary_key ADD COLUMN with_mobile BIGINT NOT NULL DEFAULT 0",
))


register(Migration(
    "canary", 3, "a count of the registry's changes (workers reload its tags when it moves)",
    sqlite="ALTER TABLE canary_key ADD COLUMN generation INTEGER NOT NULL DEFAULT 0",
    postgresql="ALTER TABLE canary_key ADD COLUMN generation BIGINT NOT NULL DEFAULT 0",
))

#: the registry's change count and size, read together: a worker reloads the tags when either moves
_STATE = ("SELECT (SELECT generation FROM canary_key WHERE id = 1),"
          " (SELECT COUNT(*) FROM canary_registry)")
_BUMP = "UPDATE canary_key SET generation = generation + 1 WHERE id = 1"


def canary_counts(db: Database) -> dict[str, int]:
    """What canaries add to the store's counts: rows and index entries (for ``stats``).

    Counts only; which records are canaries stays in the keyed registry.
    Zero everywhere for a store without canaries (or without the tables).
    """
    if not db.table_exists("canary_registry"):
        return {"rows": 0, "id_number": 0, "name_birth": 0, "mobile": 0}
    row = db.query_one("SELECT COUNT(*) FROM canary_registry")
    n = int(row[0]) if row else 0
    m = db.query_one("SELECT with_mobile FROM canary_key WHERE id = 1")
    return {"rows": n, "id_number": n, "name_birth": n, "mobile": int(m[0]) if m else 0}


class _Cipher(Protocol):
    def encrypt(self, record_id: str, field: str, plaintext: bytes) -> bytes: ...

    def decrypt(self, record_id: str, field: str, ciphertext: bytes) -> bytes: ...


class CanaryRegistry:
    """Which record ids are canaries; a keyed-hash check, cached in memory.

    The tag set is reloaded when the registry changed (checked at most every
    ``refresh_seconds``), so canaries seeded or erased by another process are
    caught within that delay. Every change moves the registry's change count
    in its own transaction: a canary erased and another seeded leave the size
    as it was, not the count.
    """

    def __init__(self, db: Database, keyring: _Cipher, *, refresh_seconds: float = 2.0) -> None:
        self.db = db
        self._keyring = keyring
        self.refresh_seconds = refresh_seconds
        self._key: bytes | None = None
        #: HMAC-SHA256 under the registry key with the domain already hashed in
        self._mac: HmacSha256 | None = None
        self._tags: frozenset[bytes] = frozenset()
        #: (change count, size) of the registry when the tags were loaded
        self._state: tuple[object, object] | None = None
        self._loaded_at = -1e18
        self._lock = threading.Lock()

    def _registry_key(self) -> bytes:
        if self._key is None:
            row = self.db.query_one("SELECT key_ct FROM canary_key WHERE id = 1")
            if row is None:
                fresh = os.urandom(32)
                self.db.execute(
                    "INSERT INTO canary_key (id, key_ct) VALUES (1, ?) ON CONFLICT (id) DO NOTHING",
                    (self._keyring.encrypt(_KEY_ID, "key", fresh),))
                row = self.db.query_one("SELECT key_ct FROM canary_key WHERE id = 1")
                assert row is not None
            try:
                self._key = self._keyring.decrypt(_KEY_ID, "key", bytes(row[0]))
            except PivaultError:
                raise PivaultError("the canary registry key does not decrypt with this keyring",
                                   code="canary.key") from None
        if self._mac is None:
            self._mac = HmacSha256(self._key, _TAG_DOMAIN)
        return self._key

    def tag(self, record_id: str) -> bytes:
        """``HMAC-SHA256(K, domain | record id)[:16]`` (every read's record ids pass here)."""
        mac = self._mac
        if mac is None:
            self._registry_key()
            mac = self._mac
            assert mac is not None
        return mac.digest(record_id.encode("utf-8"))[:16]

    def add(self, record_ids: Iterable[str]) -> int:
        rows = [(self.tag(rid),) for rid in record_ids]
        with self.db.transaction():
            self.db.executemany("INSERT INTO canary_registry (tag) VALUES (?) ON CONFLICT (tag) DO NOTHING",
                                rows)
            self.db.execute(_BUMP)
        with self._lock:
            self._tags = self._tags | {r[0] for r in rows}
        return len(rows)

    def remove(self, record_ids: Iterable[str]) -> None:
        """Forget these canaries; called before their records and index entries are deleted.

        Their mobiles leave the count that ``stats`` subtracts (else a canary
        erased would make ``stats`` show one mobile fewer than the residents hold).
        """
        ids = list(record_ids)
        tags = [(self.tag(rid),) for rid in ids]
        with self.db.transaction():
            mobiles = sum(1 for rid in ids if self.db.query_one(
                "SELECT 1 FROM blind_index WHERE record_id = ? AND index_name = 'mobile'", (rid,)))
            self.db.executemany("DELETE FROM canary_registry WHERE tag = ?", tags)
            self.db.execute(_BUMP)
            if mobiles:
                self.db.execute("UPDATE canary_key SET with_mobile = with_mobile - ? WHERE id = 1"
                                " AND with_mobile >= ?", (mobiles, mobiles))
        with self._lock:
            self._tags = self._tags - {t[0] for t in tags}

    def mobiles_changed(self, delta: int) -> None:
        """``delta`` canaries gained (+) or lost (-) their mobile in a correction.

        Called inside the correction's transaction, so the count that ``stats``
        subtracts moves with the index entry it stands for; never below zero.
        """
        self.db.execute("UPDATE canary_key SET with_mobile = CASE WHEN with_mobile + ? < 0 THEN 0"
                        " ELSE with_mobile + ? END WHERE id = 1", (delta, delta))

    def _refresh(self) -> frozenset[bytes]:
        now = time.monotonic()
        if now - self._loaded_at < self.refresh_seconds:
            return self._tags
        with self._lock:
            if now - self._loaded_at >= self.refresh_seconds:
                # the state before the tags: a change committed between the two reloads them again
                row = self.db.query_one(_STATE)
                state = (row[0], row[1]) if row else None
                if state != self._state:
                    rows = self.db.query("SELECT tag FROM canary_registry")
                    self._tags = frozenset(bytes(r[0]) for r in rows)
                    self._state = state
                self._loaded_at = now
            return self._tags

    def which(self, record_ids: Sequence[str]) -> list[str]:
        """The canaries among ``record_ids``."""
        tags = self._refresh()
        if not tags or not record_ids:
            return []
        return [rid for rid in record_ids if self.tag(rid) in tags]

    def is_canary(self, record_id: str) -> bool:
        return bool(self.which([record_id]))

    def count(self) -> int:
        """How many canaries there are (for subtracting from counts shown to users)."""
        row = self.db.query_one("SELECT COUNT(*) FROM canary_registry")
        return int(row[0]) if row else 0


class _VaultLike(Protocol):
    db: Database
    keyring: Any
    store: Any

    def put(self, record: Any, *, ctx: AccessContext) -> str: ...


def seed(vault: _VaultLike, n: int, *, ctx: AccessContext, registry: CanaryRegistry | None = None,
         rng_seed: int | None = None, blend: bool = True) -> list[str]:
    """Add ``n`` canary residents through the door; return their record ids (keep them secret).

    Rows whose ID number or mobile already belong to someone are skipped and
    replaced, so a canary never collides with a real resident. With
    ``blend`` each canary takes the creation time of a random existing record
    (± a few seconds), in its ``created_at``, in its record key's (which a real
    record's key precedes by a moment) and in its record id (whose first
    characters are the creation second), so none of them singles the canaries
    out. On SQLite it also takes that record's place in the table's row order
    (the implicit rowid, which tells the order rows were written in), and the
    record moves to the end, where the canary would otherwise be.
    """
    from pivault.model.record import Resident, new_record_id
    from pivault.synth import generate
    from pivault.vault.facade import DuplicateRecord

    if n <= 0:
        return []
    registry = registry or CanaryRegistry(vault.db, vault.keyring)
    registry._registry_key()
    seed_value = rng_seed if rng_seed is not None else secrets.randbits(48)
    rnd = random.SystemRandom()
    draws = _creation_draws(vault.db, max(n, 16), rnd) if blend else []
    places = _real_places(vault.db, registry, [place for _, place in draws if place is not None])
    # the draws whose places are free come first, each once: every canary then takes a place
    # while there are enough of them (a repeated draw would leave its second canary at the end)
    pool = list({place: (t, place) for t, place in draws if place in places}.values())
    rnd.shuffle(pool)
    made: list[tuple[str, float | None]] = []
    for row in generate(n * 3 + 10, seed_value):
        if len(made) >= n:
            break
        drawn, place = pool.pop() if pool else rnd.choice(draws) if draws else (None, None)
        at = max(drawn + rnd.uniform(-5.0, 5.0), 0.0) if drawn is not None else None
        record = {"name": row["name"], "id_number": row["id_number"], "mobile": row["mobile"],
                  "address": row["address"], "notes": row["notes"]}
        resident = Resident.parse({k: (v or None) for k, v in record.items()}, record_id=new_record_id(at))
        # one transaction per canary: the record, its registry tag, the mobile count and the
        # backdating commit together, so a seeding killed or refused part-way leaves neither an
        # unregistered synthetic resident (counted in stats, silent when read) nor a canary whose
        # creation time is the seeding's while its id tells another
        with vault.db.transaction():
            try:
                rid: str | None = vault.put(resident, ctx=ctx)
            except DuplicateRecord:  # caught inside: the refusal's audit entry is kept
                rid = None
            if rid is not None:
                registry.add([rid])
                if record["mobile"]:
                    vault.db.execute("UPDATE canary_key SET with_mobile = with_mobile + 1 WHERE id = 1")
                if at is not None:
                    vault.db.execute("UPDATE records SET created_at = ?, updated_at = ? WHERE record_id = ?",
                                     (at, at, rid))
                if place is not None and place in places:
                    places.discard(place)
                    _take_place(vault.db, rid, place)
        if rid is None and drawn is not None and place is not None and place in places:
            pool.append((drawn, place))  # not taken: there for the next canary
        if rid is not None:
            made.append((rid, at))
            if at is not None:
                # after the record committed: a key older than the garbage collector's grace and
                # without its record would be taken for an orphan
                _backdate_key(vault, rid, at - rnd.uniform(0.0002, 0.002))
    if len(made) < n:
        raise PivaultError("could not make enough distinct canaries", code="canary.seed")
    return [rid for rid, _ in made]


def _real_places(db: Database, registry: CanaryRegistry, places: Sequence[int]) -> set[int]:
    """The SQLite row numbers among ``places`` that hold a real record, not a canary seeded before
    (whose place a new canary would otherwise take, sending it to the end of the table)."""
    if not places:
        return set()
    held: dict[int, str] = {}
    for at in range(0, len(places), 500):
        part = list(places[at:at + 500])
        held.update((int(r[0]), str(r[1])) for r in db.query(
            f"SELECT rowid, record_id FROM records WHERE rowid IN ({','.join('?' * len(part))})", part))
    canaries = set(registry.which(list(held.values())))
    return {place for place, rid in held.items() if rid not in canaries}


def _take_place(db: Database, record_id: str, place: int) -> None:
    """Give the canary ``record_id`` the SQLite row number ``place``; its holder goes to the end.

    A row's number tells when it was written: a canary seeded after an import
    would be found as the last rows of the table, whatever its backdated time
    and id. The record that held ``place`` (drawn for its creation time, so the
    canary sits among the rows of the time it claims) moves to the canary's
    number at the end, as if it had been written last; in the one transaction
    that writes the canary.
    """
    row = db.query_one("SELECT rowid FROM records WHERE record_id = ?", (record_id,))
    if row is None or int(row[0]) == place:
        return
    last = int(row[0])
    parked = db.query_one("SELECT min(rowid) FROM records")
    spare = min(int(parked[0]) if parked and parked[0] is not None else 0, 0) - 1  # a number no row has
    db.execute("UPDATE records SET rowid = ? WHERE rowid = ?", (spare, place))
    db.execute("UPDATE records SET rowid = ? WHERE rowid = ?", (place, last))
    db.execute("UPDATE records SET rowid = ? WHERE rowid = ?", (last, spare))


def _backdate_key(vault: _VaultLike, record_id: str, at: float) -> None:
    """Date the canary's record key as a real record's: stored a moment before its record.

    Best effort: a key dated when it was seeded would tell the canary by its
    key store, but failing here must not leave the seeding half done (the
    canary is registered already).
    """
    keys = getattr(vault.store, "keys", None)
    if keys is None:
        return
    try:
        keys.db.execute("UPDATE record_keys SET created_at = ? WHERE record_id = ?", (at, record_id))
    except Exception as exc:
        log.warning("a canary's record key keeps its seeding time (%s)", type(exc).__name__)


def _creation_draws(db: Database, n: int, rnd: random.Random) -> list[tuple[float, int | None]]:
    """Creation times of ``n`` records drawn at random, each with its SQLite row number (None on
    PostgreSQL); fewer if the vault holds fewer, none if it is empty.

    Record ids sort by creation time, so the first ids would all be the oldest
    records: the draw goes by SQLite's row number, or a page sample on
    PostgreSQL, and costs a few index probes rather than a scan of the table.
    Canaries already seeded are drawn like any record, for their time; the
    caller does not take their places.
    """
    if db.dialect == "sqlite":
        top = db.query_one("SELECT max(rowid) FROM records")
        if top is None or top[0] is None:
            return []
        out: list[tuple[float, int | None]] = []
        seen: set[int] = set()
        for _ in range(4 * n):  # n different rows if the vault has them (a repeat is drawn again)
            if len(out) >= n:
                break
            row = db.query_one("SELECT created_at, rowid FROM records WHERE rowid >= ?"
                               " ORDER BY rowid LIMIT 1", (rnd.randint(1, int(top[0])),))
            if row is not None and int(row[1]) not in seen:
                seen.add(int(row[1]))
                out.append((float(row[0]), int(row[1])))
        return out
    # a page sample of about 4n pages: the draws then come from ~n different pages, spread over
    # the table, rather than from the handful of pages that 20n rows fill (records of one page
    # were created together: canaries drawn from it would share their times)
    est = db.query_one("SELECT relpages FROM pg_class WHERE oid = 'records'::regclass")
    pages = int(est[0]) if est is not None and est[0] is not None else 0
    if pages > 8 * n:
        percent = 100.0 * 4 * n / pages
        for _ in range(3):  # a sample short of n rows (very unlikely): a larger one, not a scan
            sampled = db.query(f"SELECT created_at FROM records TABLESAMPLE SYSTEM ({percent:.6f})"
                               f" ORDER BY random() LIMIT {int(n)}")
            if len(sampled) == n:
                return [(float(r[0]), None) for r in sampled]
            percent = min(100.0, percent * 4)
    return [(float(r[0]), None)
            for r in db.query(f"SELECT created_at FROM records ORDER BY random() LIMIT {int(n)}")]
