"""Versioned schema steps, per component, for both backends.

Each component (``records``, ``tokens``, ``audit`` …) owns an ordered list of
steps; ``schema_migrations`` remembers which were applied. Steps are never
edited once released: a change is a new step. :func:`migrate` applies the
missing ones, each in its own transaction.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from pivault.errors import ConfigError
from pivault.store.db import Database, StoreError


@dataclass(frozen=True)
class Migration:
    component: str
    version: int
    description: str
    #: SQL for SQLite, SQL for PostgreSQL (``;``-separated statements), or a
    #: callable taking the Database for steps that need logic
    sqlite: str | Callable[[Database], None]
    postgresql: str | Callable[[Database], None]


_REGISTRY: dict[str, list[Migration]] = {}


def register(*steps: Migration) -> None:
    """Add steps; components call this at import time."""
    for step in steps:
        lst = _REGISTRY.setdefault(step.component, [])
        if any(m.version == step.version for m in lst):
            continue
        lst.append(step)
        lst.sort(key=lambda m: m.version)


#: PostgreSQL advisory-lock space (two-``int4`` form) of schema changes, the second half the hash
#: of the schema's name: migrators of one schema queue, those of other schemas do not
#: (pivault.store.records uses 0x70760001 and 2, pivault.keys.seen 3)
_LOCK_MIGRATE = 0x70760004
_CREATE = re.compile(r"\bCREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?([A-Za-z_][A-Za-z0-9_]*)", re.I)
_DROP = re.compile(r"\bDROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?([A-Za-z_][A-Za-z0-9_]*)", re.I)


def _lock(db: Database) -> None:
    """Queue behind any other migrator of this store, until the caller's transaction ends.

    SQLite's ``BEGIN IMMEDIATE`` already holds the file's write lock. On PostgreSQL two
    ``CREATE TABLE IF NOT EXISTS`` of one name collide in the catalogue, and two migrators
    would each apply the steps both found missing.
    """
    if db.dialect == "postgresql":
        db.execute("SELECT pg_advisory_xact_lock(?, hashtext(current_schema()))", (_LOCK_MIGRATE,))


def _has_table(db: Database) -> bool:
    """Whether this store has its ``schema_migrations``: on PostgreSQL in the schema it writes to
    (``current_schema()``), not one further down the search path (another vault's, in ``public``)."""
    if db.dialect == "sqlite":
        return db.table_exists("schema_migrations")
    return db.query_one("SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema()"
                        " AND table_name = 'schema_migrations'") is not None


def _ensure_table(db: Database) -> None:
    if _has_table(db):
        return
    with db.transaction():
        _lock(db)
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " component TEXT NOT NULL, version INTEGER NOT NULL, description TEXT NOT NULL,"
            " applied_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (component, version))"
        )


def _read_applied(db: Database) -> dict[str, int]:
    if not _has_table(db):
        return {}
    return {c: int(v) for c, v in db.query(
        "SELECT component, MAX(version) FROM schema_migrations GROUP BY component")}


def applied(db: Database) -> dict[str, int]:
    """component -> highest applied version (nothing is written: a store without the table has none)."""
    return _read_applied(db)


def pending(db: Database, done: dict[str, int] | None = None) -> list[Migration]:
    """The steps not applied (``done``: the applied versions, if already read)."""
    if done is None:
        done = applied(db)
    out: list[Migration] = []
    for comp, steps in sorted(_REGISTRY.items()):
        out.extend(s for s in steps if s.version > done.get(comp, 0))
    return out


def _step_tables(step: Migration) -> tuple[set[str], set[str]]:
    """(tables the step creates, tables it drops), read from its SQL (either backend's text)."""
    for action in (step.sqlite, step.postgresql):
        if isinstance(action, str):
            return ({m.lower() for m in _CREATE.findall(action)},
                    {m.lower() for m in _DROP.findall(action)})
    return set(), set()


def _state(db: Database) -> tuple[dict[str, int], set[str]]:
    """The recorded versions and the tables there are, read at one moment (a migrator may commit
    between two plain reads, and the store would look torn when it is not)."""
    if db.in_transaction:
        return _read_applied(db), {t.lower() for t in db.tables()}
    with db.snapshot():
        return _read_applied(db), {t.lower() for t in db.tables()}


def check_schema(db: Database) -> dict[str, int]:
    """Refuse a store this pivault must not write to; return its applied versions.

    Refused: a schema newer than this pivault knows (a step it has no SQL for, or a component
    it has never heard of — an older pivault would write rows the newer one does not expect,
    and no step is ever undone), and a store whose tables disagree with ``schema_migrations``
    (a step recorded whose table is gone, or a table of a step not recorded): migrating that
    would build on a schema that is not what the record says.
    """
    _load_components()
    done, tables = _state(db)
    ahead = sorted(f"{c} {v} (this pivault knows {c} up to {_REGISTRY[c][-1].version})"
                   if c in _REGISTRY else f"{c} {v} (a component this pivault does not know)"
                   for c, v in done.items() if c not in _REGISTRY or v > _REGISTRY[c][-1].version)
    if ahead:
        raise StoreError("the store's schema is newer than this pivault: " + "; ".join(ahead),
                         code="store.schema_newer",
                         hint="use the pivault release that last migrated this store, or a newer "
                              "one; an older pivault never writes to it")
    for comp, steps in sorted(_REGISTRY.items()):
        made_by: dict[str, int] = {}  # table -> the applied step that made it
        for step in steps:
            made, dropped = _step_tables(step)
            if step.version <= done.get(comp, 0):
                for t in dropped:
                    made_by.pop(t, None)
                made_by.update(dict.fromkeys(made, step.version))
                continue
            present = sorted(t for t in made if t in tables and t not in made_by)
            if present:
                raise StoreError(
                    f"the store holds table {', '.join(present)} of schema step {comp}:{step.version},"
                    " which its schema_migrations does not record as applied", code="store.schema_torn",
                    hint="restore the store from a backup (`pivault restore`) rather than migrate it")
        for t, version in sorted(made_by.items(), key=lambda kv: kv[1]):
            if t not in tables:
                raise StoreError(
                    f"the store records schema step {comp}:{version} as applied, but its table {t}"
                    " is missing", code="store.schema_torn",
                    hint="restore the store from a backup (`pivault restore`) rather than migrate it")
    return done


def _load_components() -> None:
    """Import every module that registers steps."""
    import importlib

    for mod in ("pivault.store.records", "pivault.vault.meta", "pivault.policy.tokens", "pivault.audit.log",
                "pivault.detect.alerts", "pivault.vault.imports", "pivault.leak.exports",
                "pivault.detect.canary", "pivault.keys.jobs", "pivault.keys.seen"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if not exc.name or not mod.startswith(exc.name):
                raise


def migrate(db: Database) -> list[str]:
    """Apply every pending step; return ``component:version`` of each applied.

    Each step runs in its own transaction with its ``schema_migrations`` row, so a migrator
    killed at any moment leaves every step either whole or not begun, and the next run goes
    on from there. Inside that transaction it first queues behind any other migrator and
    looks again whether the step is still missing, so two at once apply each step once.
    """
    recorded = check_schema(db)
    _ensure_table(db)
    done: list[str] = []
    for step in pending(db, recorded):
        action = step.sqlite if db.dialect == "sqlite" else step.postgresql
        try:
            with db.transaction():
                _lock(db)
                if db.query_one("SELECT 1 FROM schema_migrations WHERE component = ? AND version = ?",
                                (step.component, step.version)) is not None:
                    continue  # another migrator applied it meanwhile
                if callable(action):
                    action(db)
                else:
                    for stmt in (s.strip() for s in action.split(";")):
                        if stmt:
                            db.execute(stmt)
                db.execute(
                    "INSERT INTO schema_migrations (component, version, description, applied_at)"
                    " VALUES (?, ?, ?, ?)", (step.component, step.version, step.description,
                                             time.time()))
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(
                f"schema step {step.component}:{step.version} failed: {type(exc).__name__}: "
                f"{_first_line(exc)}", code="store.migrate",
                hint="nothing of this step was kept; fix the cause and run `pivault migrate` again") from exc
        done.append(f"{step.component}:{step.version}")
    return done


def _first_line(exc: BaseException) -> str:
    """A driver's message can run to several lines (PostgreSQL adds DETAIL and a caret line)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def require_current(db: Database) -> None:
    """Refuse a store with schema steps pending (and one newer or torn, as :func:`check_schema`).

    Only ``pivault migrate`` changes a vault's schema, after the operator was told to back it
    up first: a token or audit command that migrated on its way would upgrade a vault silently.
    """
    if needs_migration(db):
        raise ConfigError("the store's schema is older than this pivault",
                          code="store.schema", hint="run `pivault migrate` (back up first)")


def needs_migration(db: Database) -> bool:
    """True if steps are pending; refuses a store that is newer than this pivault, or torn."""
    return bool(pending(db, check_schema(db)))
