"""The vault home: a data directory with its configuration.

``$PIVAULT_HOME`` (default ``./.pivault``) holds ``pivault.toml`` and, with
the default SQLite store, ``vault.db`` and its WAL. The keyring is never in
it: a copy of the data directory (a backup, a snapshot, a stolen disk) must
be worthless without the keys. By default the keyring goes to the operator's
configuration directory, ``$XDG_CONFIG_HOME/pivault/keyrings/<vault-id>.keyring``
(``~/.config/…``); ``--keyring PATH`` puts it elsewhere (another disk, a
removable medium, a secrets mount). Directories are created 0700, files 0600.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pivault.crypto import Argon2Params, Keyring, KeyringError, PassphraseProvider, check_new_passphrase
from pivault.crypto._atomic import write_private
from pivault.crypto.blind import MIN_POPULATION
from pivault.crypto.keyring import MAX_POPULATION
from pivault.errors import ConfigError
from pivault.store.db import Database, parse_url

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_EXPECTED_POPULATION",
    "HOME_ENV",
    "SETTINGS",
    "VaultConfig",
    "check_settings",
    "default_keyring_dir",
    "init",
    "load",
    "resolve_home",
]

HOME_ENV = "PIVAULT_HOME"
CONFIG_NAME = "pivault.toml"
DEFAULT_EXPECTED_POPULATION = 10_000_000


@dataclass(frozen=True)
class VaultConfig:
    """The contents of ``pivault.toml``."""

    home: Path
    store_url: str
    keyring_path: Path
    vault_id: str
    expected_population: int
    #: the access policy file; empty until policies are configured
    policy_path: str = ""
    #: the vault-wide read limit (``[detect.vault]``); empty: none, as in vaults made before
    #: ``init`` wrote one (:func:`pivault.detect.setup.default_vault_budget`)
    vault_budget: dict[str, int] = field(default_factory=dict)
    #: ``[keys] record_key_store``: the record-key store's URL; empty: beside the keyring
    record_key_store: str = ""
    #: ``[export]``: the windows of the export workflow (:class:`pivault.leak.exports.ExportSettings`)
    export: dict[str, float] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.home / CONFIG_NAME

    def existing_store_url(self) -> str:
        """The store's URL, once a SQLite store's file is known to be there.

        Opening a missing SQLite file makes an empty one, which then reads as a
        vault whose schema is out of date: the operator is sent to `migrate`,
        then to `init`, which refuses the existing home. Say what happened
        instead. (`pivault restore` writes a missing store and does not ask.)
        """
        parsed = parse_url(self.store_url)
        if parsed.dialect == "sqlite" and not Path(parsed.target).exists():
            raise ConfigError(f"the vault's store {parsed.target} is not there (moved or deleted?)",
                              code="store.missing",
                              hint="put the file back, or restore a backup with `pivault restore`")
        return self.store_url

    def to_toml(self) -> str:
        def s(v: str) -> str:
            return json.dumps(v, ensure_ascii=False)

        return (
            "# pivault vault configuration. The keyring is kept outside this directory on purpose.\n"
            "[vault]\n"
            f"vault_id = {s(self.vault_id)}\n"
            f"expected_population = {self.expected_population}\n\n"
            "[store]\n"
            "# sqlite:///PATH or postgresql://USER@HOST:PORT/DB (prefer a .pgpass file to a password here)\n"
            f"url = {s(self.store_url)}\n\n"
            "[keyring]\n"
            f"path = {s(str(self.keyring_path))}\n\n"
            "[policy]\n"
            f"path = {s(self.policy_path)}\n"
        ) + self._keys_toml() + self._vault_budget_toml()

    def _keys_toml(self) -> str:
        if not self.record_key_store:
            return ""
        return ("\n[keys]\n"
                "# the record-key store this vault is bound to: it opens only with this one\n"
                f"record_key_store = {json.dumps(self.record_key_store, ensure_ascii=False)}\n")

    def _vault_budget_toml(self) -> str:
        if not self.vault_budget:
            return ""
        from pivault.detect.setup import vault_budget_lines

        # no [detect] header: settings added under one of their own further down stay valid TOML
        return (
            "\n# Records all principals together may read (each also has its role's budget).\n"
            f"# Sized by `pivault init` for {self.expected_population:,} residents: 0.01 % of them a\n"
            "# minute, 0.2 % an hour, 2 % a day, with floors (docs/detect.md). Raise a value for\n"
            "# traffic the vault must carry; delete the section only to have no limit on everyone\n"
            "# together.\n"
            + "\n".join(vault_budget_lines(self.vault_budget)) + "\n"
        )


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    """``home``, else ``$PIVAULT_HOME``, else ``./.pivault``; made absolute."""
    raw = home if home is not None else os.environ.get(HOME_ENV) or ".pivault"
    return Path(raw).expanduser().absolute()


def default_keyring_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser().absolute() / "pivault" / "keyrings"


#: every table ``pivault.toml`` may hold, and the kind of each of its settings: str, int,
#: number, bool, table, or tables (a table of tables). docs/api.md, docs/keys.md, docs/detect.md,
#: docs/audit.md and docs/leak.md describe them.
SETTINGS: dict[str, dict[str, str]] = {
    "vault": {"vault_id": "str", "expected_population": "int"},
    "store": {"url": "str"},
    "keyring": {"path": "str"},
    "policy": {"path": "str"},
    "keys": {"record_key_store": "str", "usage_limit": "int", "usage_warn": "number",
             "usage_rotate": "number", "auto_rotate": "bool"},
    "audit": {"key_dir": "str", "journal_dir": "str", "checkpoint_every": "int",
              "checkpoint_seconds": "number", "anchor": "str", "anchor_required": "bool"},
    "detect": {"counters": "str", "suspend_after": "int", "vault": "table", "role_totals": "tables",
               "principals": "tables", "alerts_jsonl": "str", "webhook_url": "str",
               "detector": "table"},
    "export": {"approve_within_days": "number", "fetch_within_days": "number"},
}

_KIND_WORDS = {"str": "a string", "int": "an integer", "number": "a number", "bool": "true or false",
               "table": "a table", "tables": "a table of tables"}


def _is(kind: str, value: object) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "table":
        return isinstance(value, dict)
    return isinstance(value, dict) and all(isinstance(v, dict) for v in value.values())


#: (table, setting) -> (test, what it must be): values of the right kind that still make no sense
_RANGES: dict[tuple[str, str], tuple[Callable[[Any], bool], str]] = {
    ("audit", "checkpoint_every"): (lambda v: v >= 1, "at least 1 (entries)"),
    ("audit", "checkpoint_seconds"): (lambda v: math.isfinite(v) and v > 0,
                                      "a positive, finite number of seconds"),
    ("detect", "suspend_after"): (lambda v: v >= 0, "0 (never) or more breaches"),
    ("vault", "expected_population"): (lambda v: v >= 1, "at least 1"),
    ("export", "approve_within_days"): (lambda v: math.isfinite(v) and v > 0,
                                        "a positive, finite number of days"),
    ("export", "fetch_within_days"): (lambda v: math.isfinite(v) and v > 0,
                                      "a positive, finite number of days"),
}


def _check_ranges(doc: dict[str, object]) -> None:
    for (table, key), (ok, what) in _RANGES.items():
        section = doc.get(table)
        if isinstance(section, dict) and key in section and not ok(section[key]):
            raise ConfigError(f"[{table}] {key} must be {what}", code="home.config")


def check_settings(doc: dict[str, object]) -> None:
    """Refuse what ``pivault.toml`` may not hold: an unknown table or setting, a value of the wrong kind.

    Raises :class:`ConfigError` (``home.config``) naming the table and the
    setting, never the value. Missing settings are :func:`load`'s to report.
    """
    hint = "compare with the file `pivault init` writes"
    for name, table in doc.items():
        known = SETTINGS.get(name)
        if known is None:
            raise ConfigError(f"pivault.toml has an unknown table or setting {name!r}",
                              code="home.config", hint=hint)
        if not isinstance(table, dict):
            raise ConfigError(f"{name} in pivault.toml must be the table [{name}], not a single value",
                              code="home.config",
                              hint=f"write [{name}] on a line of its own and its settings under it, "
                                   + ('e.g. path = "FILE"' if name == "policy" else "one per line"))
        for key, value in table.items():
            kind = known.get(key)
            if kind is None:
                raise ConfigError(f"[{name}] has an unknown setting {key!r}", code="home.config",
                                  hint=f"[{name}] takes {', '.join(known)}")
            if not _is(kind, value):
                raise ConfigError(f"[{name}] {key} must be {_KIND_WORDS[kind]}", code="home.config")
    _check_ranges(doc)
    detect = doc.get("detect")
    if isinstance(detect, dict) and isinstance(detect.get("vault"), dict):
        from pivault.detect.setup import check_vault_budget

        check_vault_budget(detect["vault"])
    keys = doc.get("keys")
    if isinstance(keys, dict) and keys:
        from pivault.keys.usage import UsagePolicy

        UsagePolicy.from_mapping(keys)  # the fractions' order and range


def load(home: str | os.PathLike[str] | None = None) -> VaultConfig:
    """Read ``pivault.toml`` of a vault home (its settings checked: :func:`check_settings`)."""
    h = resolve_home(home)
    path = h / CONFIG_NAME
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"no vault at {h} (no {CONFIG_NAME})", code="home.missing",
                          hint=f"create one with `pivault init`, or set {HOME_ENV} / --home") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise unreadable(path, exc) from None
    check_settings(doc)
    try:
        vault = doc["vault"]
        store = doc["store"]
        keyring = doc["keyring"]
        return VaultConfig(
            home=h, store_url=str(store["url"]), keyring_path=Path(str(keyring["path"])),
            vault_id=str(vault["vault_id"]), expected_population=int(vault["expected_population"]),
            policy_path=str(doc.get("policy", {}).get("path", "")),
            vault_budget=dict(doc.get("detect", {}).get("vault", {})),
            record_key_store=str(doc.get("keys", {}).get("record_key_store", "")),
            export={k: float(v) for k, v in doc.get("export", {}).items()},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path} lacks a setting ({exc})", code="home.config",
                          hint="compare with the file `pivault init` writes") from None


def unreadable(path: Path, exc: OSError | tomllib.TOMLDecodeError) -> ConfigError:
    """The error for a ``pivault.toml`` that cannot be read: the parser's words name the line.

    A table declared twice (one added by hand under the one ``init`` wrote) is
    told by line, which the operator can fix; the file holds no PI.
    """
    why = str(exc) if isinstance(exc, tomllib.TOMLDecodeError) else (exc.strerror or type(exc).__name__)
    return ConfigError(f"cannot read {path}: {why}", code="home.config",
                       hint="compare with the file `pivault init` writes")


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def init(
    home: str | os.PathLike[str] | None = None, *, passphrase: str,
    store_url: str | None = None, keyring_path: str | os.PathLike[str] | None = None,
    expected_population: int = DEFAULT_EXPECTED_POPULATION,
    argon2: Argon2Params | None = None, record_key_store: str | None = None,
) -> VaultConfig:
    """Create a vault: home directory, keyring (outside it), schema, binding, default read limit.

    Refuses a home that already has a configuration, and a keyring path
    inside the home (``keyring.location``). ``record_key_store``: a URL for
    the record-key store (default: a SQLite file beside the keyring), made
    and bound to the vault here, since a vault opens only with the store it
    was made with (:mod:`pivault.keys.binding`). Returns the written
    configuration.
    """
    h = resolve_home(home)
    if (h / CONFIG_NAME).exists():
        raise ConfigError(f"a vault already exists at {h}", code="home.exists",
                          hint="choose another --home, or use the existing vault")
    url = store_url or f"sqlite:///{h / 'vault.db'}"
    parsed = parse_url(url)  # a bad URL fails before anything is created
    keys_url = _record_key_store_url(record_key_store, url)
    if parsed.dialect == "sqlite" and not Path(parsed.target).is_absolute():
        # kept relative, the path would name another file from every other directory
        url = f"sqlite:///{Path(parsed.target).absolute()}"
    provider = PassphraseProvider(check_new_passphrase(passphrase), argon2)
    if type(expected_population) is not int or not MIN_POPULATION <= expected_population <= MAX_POPULATION:
        # refused before the home is made, as the keyring would refuse it after
        raise KeyringError(f"expected population must be an integer within "
                           f"{MIN_POPULATION}..{MAX_POPULATION}", code="keyring.population")
    _private_dir(h)
    if keyring_path is not None:
        target = Path(keyring_path).expanduser().absolute()
        keyring = Keyring.create(target, provider, expected_population=expected_population,
                                 data_dir=h)
    else:
        # the file is named by the vault id, which the keyring itself chooses:
        # create under a temporary name, then link to the final one
        kdir = default_keyring_dir()
        _private_dir(kdir)
        tmp = kdir / f".new-{secrets.token_hex(8)}.keyring"
        keyring = Keyring.create(tmp, provider, expected_population=expected_population, data_dir=h)
        target = kdir / f"{keyring.vault_id}.keyring"
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise KeyringError(f"a keyring already exists at {target}",
                               code="keyring.exists") from None
        finally:
            os.unlink(tmp)
        keyring = Keyring.open(target, provider)  # the provider caches the derived key
    from pivault.detect.setup import default_vault_budget

    # a new vault limits everyone together from the start (see default_vault_budget)
    cfg = VaultConfig(home=h, store_url=url, keyring_path=target, vault_id=keyring.vault_id,
                      expected_population=expected_population,
                      vault_budget=default_vault_budget(expected_population),
                      record_key_store=keys_url or "")
    from pivault.vault.facade import Vault

    parsed = parse_url(url)
    new_file = parsed.dialect == "sqlite" and not Path(parsed.target).exists()
    from pivault.keys.shred import record_key_store_url

    keys_target = parse_url(keys_url or record_key_store_url(target))
    new_keys = keys_target.dialect == "sqlite" and not Path(keys_target.target).exists()
    # PostgreSQL: the tables already in each schema, so that a failed init removes only its own
    servers = {u: _existing_tables(u) for u in (url, keys_url) if u and parse_url(u).dialect != "sqlite"}
    try:
        with Database(url) as db:
            Vault.initialise(db, keyring, record_key_store=keys_url).close()
        write_private(h / CONFIG_NAME, cfg.to_toml().encode("utf-8"), overwrite=False)
    except BaseException:
        # nothing is protected by the new keyring yet: leave no half-made vault behind (a store
        # left bound to the keyring deleted here would refuse the next init as another vault's)
        target.unlink(missing_ok=True)
        for made, path in ((new_file, parsed.target), (new_keys, keys_target.target)):
            if made:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(path + suffix).unlink(missing_ok=True)
        for server_url, before in servers.items():
            if before is not None:
                _drop_new_tables(server_url, before)
        raise
    return cfg


def _existing_tables(url: str) -> set[tuple[str, str]] | None:
    """The tables, sequences and functions in a PostgreSQL store's schema before ``init``.

    None if it cannot be reached: then init makes nothing there, and there is nothing to undo.
    """
    try:
        with Database(url) as db:
            return _schema_objects(db)
    except Exception:
        return None


def _schema_objects(db: Database) -> set[tuple[str, str]]:
    """``(kind, SQL name)`` of what ``DROP <kind>`` would remove from the URL's schema."""
    found = {("TABLE", t) for t in db.tables()}
    found |= {("SEQUENCE", str(r[0])) for r in db.query(
        "SELECT sequence_name FROM information_schema.sequences WHERE sequence_schema = current_schema()")}
    found |= {("FUNCTION", str(r[0])) for r in db.query(
        "SELECT p.oid::regprocedure::text FROM pg_proc p"
        " WHERE p.pronamespace = current_schema()::regnamespace")}
    return found


def _drop_new_tables(url: str, before: set[tuple[str, str]]) -> None:
    """Drop what a failed ``init`` made in a PostgreSQL schema; never what was there before.

    Best effort: the error that stopped the init is the one reported.
    """
    try:
        with Database(url) as db, db.transaction():
            for kind, name in sorted(_schema_objects(db) - before, key=lambda o: o[0] != "TABLE"):
                # a function's name comes with its argument types, already quoted as needed
                sql_name = name if kind == "FUNCTION" else '"' + name.replace('"', '""') + '"'
                db.execute(f"DROP {kind} IF EXISTS {sql_name} CASCADE")
    except Exception:
        return


def _record_key_store_url(given: str | None, store_url: str) -> str | None:
    """``init``'s record-key store URL, checked: a SQLite path made absolute, never the data store itself.

    Record keys in the data store would go wherever its copies go (a dump, a
    snapshot), and an erasure would no longer reach every copy of a record.
    """
    if not given:
        return None
    parsed = parse_url(given)
    if parsed.dialect == "sqlite" and not Path(parsed.target).is_absolute():
        given = f"sqlite:///{Path(parsed.target).absolute()}"
    if parse_url(given).target == parse_url(store_url).target:
        raise ConfigError("the record-key store must not be the data store itself", code="keys.store_url",
                          hint="give --record-key-store another database (or schema) than --store")
    return given
