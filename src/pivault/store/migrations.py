"""Versioned schema steps, per component, for both backends.

Each component (``records``, ``tokens``, ``audit`` …) owns an ordered list of
steps; ``schema_migrations`` remembers which were applied. Steps are never
edited once released: a change is a new step. :func:`migrate` applies the
missing ones, each in its own transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

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


def _ensure_table(db: Database) -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " component TEXT NOT NULL, version INTEGER NOT NULL, description TEXT NOT NULL,"
        " applied_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (component, version))"
    )


def applied(db: Database) -> dict[str, int]:
    """component -> highest applied version."""
    _ensure_table(db)
    return {c: int(v) for c, v in db.query(
        "SELECT component, MAX(version) FROM schema_migrations GROUP BY component")}


def pending(db: Database) -> list[Migration]:
    done = applied(db)
    out: list[Migration] = []
    for comp, steps in sorted(_REGISTRY.items()):
        out.extend(s for s in steps if s.version > done.get(comp, 0))
    return out


def _load_components() -> None:
    """Import every module that registers steps."""
    import importlib

    for mod in ("pivault.store.records", "pivault.policy.tokens", "pivault.audit.log",
                "pivault.detect.alerts", "pivault.vault.imports", "pivault.leak.exports",
                "pivault.detect.canary", "pivault.keys.jobs", "pivault.keys.seen"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if not exc.name or not mod.startswith(exc.name):
                raise


def migrate(db: Database) -> list[str]:
    """Apply every pending step; return ``component:version`` of each applied."""
    _load_components()
    done: list[str] = []
    for step in pending(db):
        action = step.sqlite if db.dialect == "sqlite" else step.postgresql
        try:
            with db.transaction():
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
                f"schema step {step.component}:{step.version} failed: {type(exc).__name__}: {exc}",
                code="store.migrate") from exc
        done.append(f"{step.component}:{step.version}")
    return done


def needs_migration(db: Database) -> bool:
    _load_components()
    return bool(pending(db))
