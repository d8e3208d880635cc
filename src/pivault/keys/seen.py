"""The newest keyring generation a data store has seen, and what the store refuses because of it.

The keyring file counts its rewrites (``generation`` in its header, which the
keysets' associated data binds: it cannot be edited without the root key). A
process holding the keyring refuses an older copy put back over the file
(``keyring.rollback``), but a process started afterwards had nothing to compare
with: it opened the older copy, could not read records wrapped under the keys
added since, and a ``keys rotate`` there would have forked the key history. So
the store keeps the highest generation it has seen (table ``keyring_seen``,
one row, no secret):

* a keyring of another vault is refused (``vault.mismatch``) and never moves the mark;
* a vault opened with an older keyring is refused (``keyring.rollback``); one
  opened with a newer keyring (a data backup restored, a key change made
  without the store) raises the mark;
* every key change pivault makes with the store at hand (rotate, retire,
  change-root, split, recover) raises it right after the keyring file is
  written; a retirement raises it also *before* its census;
* a writer of records takes, inside its write transaction, the mark (held
  there, see :func:`require_current`) and checks that what it sealed before the
  transaction was sealed with a keyring at least that new, or seals it again.
  So nothing sealed with the keys of an older keyring commits once the mark has
  moved past it: a key that a retirement's census found unused cannot gain a
  value afterwards, however little time passed since the rotation.

The mark only grows, except that restoring a data backup brings back the mark
of its time, which the next open with the current keyring raises again.
"""

from __future__ import annotations

import os
import time

from pivault.crypto import Keyring, KeyringError
from pivault.store.db import Database, StoreError
from pivault.store.migrations import Migration, register

__all__ = ["TABLE", "check", "check_file", "check_restore", "record", "require_current",
           "seen_generation"]

TABLE = "keyring_seen"

_SQL = (f"CREATE TABLE {TABLE} ("
        " id INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),"
        " generation BIGINT NOT NULL,"
        " updated_at DOUBLE PRECISION NOT NULL)")

#: PostgreSQL advisory-lock space (two-``int4`` form) of the mark: writers hold it shared until
#: they commit, a change of the mark exclusive (pivault.store.records uses 0x70760001 and 2)
_LOCK_SEEN = 0x70760003

# A writer's lock and read in one round trip (see _lock_exclusive): inside a VOLATILE PL/pgSQL
# function each statement takes its own snapshot under READ COMMITTED, so the read sees what
# committed before the lock was granted. Two statements from here cost a second round trip on
# every write (about 100 us on the test machine, some 5 % of a single put).
_PG_MARK = f"""
CREATE OR REPLACE FUNCTION pivault_keyring_mark() RETURNS BIGINT LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared({_LOCK_SEEN}, 0);
    RETURN (SELECT generation FROM {TABLE} WHERE id = 1);
END
$$"""


def _pg_step(db: Database) -> None:
    db.execute(_SQL)
    db.execute(_PG_MARK)


# The table only (and on PostgreSQL the writers' function): its row is written by the first
# open (a step that inserted it would collide with the row a PostgreSQL restore copies in after
# making the schema of the backup's versions).
register(Migration("keyring", 1, "the newest keyring generation the store has seen", _SQL, _pg_step))


def _older(keyring: Keyring, generation: int, seen: int, *, running: bool) -> KeyringError:
    if running:
        return KeyringError(
            f"this process's keyring (generation {generation}) is older than this vault's store has seen"
            f" (generation {seen}): the file it follows, {keyring.path}, is an older copy or is not the one"
            " the keys were last changed in; nothing was written",
            code="keyring.rollback",
            hint="put the newest keyring file at that path and restart this process")
    return KeyringError(
        f"the keyring {keyring.path} is older than this vault's store has seen (generation {generation}"
        f" < {seen}): an older copy was put back after keys were changed; nothing was read or written"
        " with it", code="keyring.rollback",
        hint="put the newest keyring file back (each data backup carries the keyring of its time as "
             "keyring.json) and open the vault again; do not change keys with the older copy")


def _lock_exclusive(db: Database) -> None:
    """On PostgreSQL, wait for every writer that read the mark to commit (SQLite's writers queue already).

    Under READ COMMITTED a writer that read the old mark could otherwise commit after a
    retirement raised it and took its census, unseen by both. Writers of records hold the
    lock shared (``pivault_keyring_mark()``); PostgreSQL queues a new shared request behind
    a waiting exclusive one, so a steady stream of writers cannot hold a change off. The
    lock is taken in a statement of its own: the mark is read in the next one, whose
    snapshot comes after it. Then the audit chain head's row, which its writers lock
    before they compare the mark in the statement that rewrites it (taken second, as the
    record writers, who append to the chain inside their transactions, take them).
    """
    if db.dialect == "postgresql":
        db.execute("SELECT pg_advisory_xact_lock(?::int4, 0)", (_LOCK_SEEN,))
        # the audit chain head's writers hold its row instead (pivault.audit.log, AuditLog._write_head)
        if db.table_exists("audit_head"):
            db.execute("SELECT 1 FROM audit_head WHERE id = 1 FOR UPDATE")


def _same_vault(db: Database, vault_id: str, path: str | os.PathLike[str]) -> None:
    """Refuse a keyring of another vault before its generation is compared or written.

    Generations of two vaults count different histories: another vault's keyring put at this
    one's path (or named by a command) must not raise this store's mark, or the vault's own
    keyring, put back, would be refused for ever as an older copy of itself.
    """
    from pivault.vault.meta import VaultMismatch, bound_vault_id

    bound = bound_vault_id(db)
    if bound is not None and bound != vault_id:
        raise VaultMismatch(
            f"this store belongs to vault {bound}, but the keyring {path} is of vault {vault_id};"
            " nothing was read or written with it",
            hint="put this vault's own keyring at that path (see keyring.path in pivault.toml)")


def _read(db: Database) -> int | None:
    row = db.query_one(f"SELECT generation FROM {TABLE} WHERE id = 1")
    return None if row is None else int(row[0])


def seen_generation(db: Database) -> int:
    """The highest keyring generation this store has seen (0: none yet, or an older schema)."""
    if not db.table_exists(TABLE):
        return 0
    return _read(db) or 0


def record(db: Database, keyring: Keyring) -> int:
    """Raise the store's mark to ``keyring``'s generation; return the mark.

    Refuses (``keyring.rollback``) a keyring older than the mark, after it has looked
    at its file once more (another process may have changed the keys a moment ago): a
    key change made with it would build on keys the vault has moved past.
    """
    generation = keyring.write_generation(look_now=True)
    with db.transaction():
        _same_vault(db, keyring.vault_id, keyring.path)
        _lock_exclusive(db)
        seen = _read(db)
        if seen is None:
            db.execute(f"INSERT INTO {TABLE} (id, generation, updated_at) VALUES (1, ?, ?)",
                       (generation, time.time()))
            return generation
        if generation < seen:
            raise _older(keyring, generation, seen, running=False)
        if generation > seen:
            db.execute(f"UPDATE {TABLE} SET generation = ?, updated_at = ? WHERE id = 1",
                       (generation, time.time()))
        return generation


def check(db: Database, keyring: Keyring) -> None:
    """At open: refuse a keyring older than the store has seen; note a newer one.

    A store whose schema predates the mark is left alone (``pivault migrate`` adds it;
    the first open after that notes the keyring it is opened with).
    """
    _same_vault(db, keyring.vault_id, keyring.path)
    if not db.table_exists(TABLE):
        return
    seen = _read(db)
    if seen is not None and keyring.generation < seen and keyring.write_generation(look_now=True) < seen:
        raise _older(keyring, keyring.generation, seen, running=False)
    if seen is None or keyring.generation > seen:
        record(db, keyring)


def check_file(db: Database, path: str | os.PathLike[str]) -> None:
    """Before a keyring file is rewritten without being opened (a custodian recovery): refuse an
    older copy, which the rewrite would give a generation the store may count as current, and
    another vault's keyring, which the store is not the store of.

    The generation is read from the file's header unauthenticated: it is only used to
    refuse (an edited header does not open anyway), never to raise the mark.
    """
    header = Keyring.peek(path)
    _same_vault(db, str(header.get("vault_id")), path)
    on_disk = int(header.get("generation", 0))
    mark = seen_generation(db)
    if on_disk < mark:
        raise KeyringError(
            f"the keyring {path} is older than this vault's store has seen (generation {on_disk}"
            f" < {mark}): an older copy was put back after keys were changed; nothing was changed",
            code="keyring.rollback",
            hint="put the newest keyring file back (each data backup carries the keyring of its time "
                 "as keyring.json) and run the command again")


def check_restore(backup_mark: int, keyring_generation: int) -> None:
    """Before a data backup is restored: refuse when its store had seen a newer keyring than the one at
    hand, which the restored vault would refuse to open with (and whose keys its values may need)."""
    if keyring_generation < backup_mark:
        raise KeyringError(
            f"the backup's store had seen keyring generation {backup_mark}, newer than the keyring at"
            f" hand (generation {keyring_generation}): the restored vault would refuse it; nothing was"
            " restored", code="keyring.rollback",
            hint="restore with the newest keyring file; the backup carries the one of its time "
                 "(keyring.json), which `pivault restore --new-home` writes where no keyring is")


def require_current(db: Database, keyring: Keyring) -> int:
    """Inside a write transaction: the store's mark, held until it ends, with ``keyring`` up to it.

    Call it first in the transaction. A keyring behind the mark (another process
    changed the keys less than the 10 ms ago a keyring looks at its file) looks at
    the file at once; if the file is behind too, nothing is written
    (``keyring.rollback``). Returns the mark: values sealed before the transaction
    with a keyring of an older generation must be sealed again.
    """
    if not db.in_transaction:
        raise StoreError("the keyring mark is checked inside the writing transaction", code="store.lock")
    if db.dialect == "postgresql":
        row = db.query_one("SELECT pivault_keyring_mark()")  # the lock shared, then the mark
        seen = int(row[0]) if row is not None and row[0] is not None else 0
    else:
        seen = _read(db) or 0
    if keyring.generation < seen and keyring.write_generation(look_now=True) < seen:
        raise _older(keyring, keyring.generation, seen, running=True)
    return seen
