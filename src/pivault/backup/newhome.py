"""Rebuild a vault home from a data backup, after the data directory was lost.

``pivault restore FILE --home DIR --new-home``: DIR has no ``pivault.toml``
(the disk that held it failed, or the machine is new). In this order, and
stopping at the first refusal:

1. the backup is verified (signature under ``--public-key`` or the signing
   key file beside the keyring, every checksum, nothing extra), and so is
   the record-key backup if one is given: nothing is written before;
2. refusals: a vault already in DIR (``home.exists``), a keyring at the
   target path of another vault, a store bound to another vault (even with
   ``quarantine``: it is someone's live vault), a store that is not empty
   (unless ``quarantine``; this vault's store used since the backup is named
   as such, since restoring into it rolls the vault back), a store of the
   other backend;
3. the root key is checked against the keyring (the one in place, else the
   backup's envelope staged under a temporary name);
4. the keyring envelope is written if no keyring is at the target path
   (an existing keyring is never overwritten);
5. the record keys are put back from the record-key backup, if given: all
   of them when no record-key store survived beside the keyring; else only
   the keys of versions of records corrected since the backup (a survived
   store knows which records were erased since, and those stay erased).
   Then the store is restored (:func:`pivault.backup.restore`, which
   refuses if a record corrected since has no key for its backed-up
   version anywhere, unless ``keep_unreadable``), rows erased since the
   backup deleted (when the record-key store holds keys), the restore
   appended to the audit trail (when the audit keys are in place);
6. ``pivault.toml`` is written last, atomically: a crash before leaves no
   configuration, so no later command takes the half-made home for a vault,
   and the same command run again (with ``quarantine`` for a store that was
   already filled) finishes the job.

The configuration written holds what a backup knows: the vault id, the
expected population (from the keyring header), the store URL, the keyring
path. What the lost ``pivault.toml`` held besides (``[policy]``,
``[audit]``, ``[detect]``, ``[keys]``) is not in a backup: see docs/backup.md.
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pivault.backup.manifest import Container
from pivault.backup.restore import (
    RestoreReport,
    _refuse_foreign,
    _why_not_empty,
    open_target,
    restore,
    restore_record_keys,
)
from pivault.backup.signing import (
    BackupError,
    VerifyKey,
    load_trusted_verify_key,
    load_verify_key,
    signing_key_path,
)
from pivault.crypto import Keyring, KeyringError
from pivault.crypto._atomic import write_private
from pivault.errors import ConfigError
from pivault.store.db import Database, parse_url
from pivault.vault.home import CONFIG_NAME, VaultConfig, default_keyring_dir, resolve_home

__all__ = ["NewHomeReport", "restore_new_home"]


@dataclass
class NewHomeReport:
    config: VaultConfig
    restore: RestoreReport
    #: the keyring envelope was written from the backup (no keyring was there)
    keyring_written: bool
    #: keys put back from the record-key backup into an empty record-key store (None: none was)
    record_keys_added: int | None = None
    salvaged_audit_entries: int = 0
    #: things the operator must bring back by hand before using the vault
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = self.restore.to_dict()
        out.update({"home": str(self.config.home), "store": parse_url(self.config.store_url).redacted,
                    "keyring": str(self.config.keyring_path), "keyring_written": self.keyring_written,
                    "record_keys_added": self.record_keys_added,
                    "salvaged_audit_entries": self.salvaged_audit_entries, "notes": self.notes})
        return out


def _inside(path: Path, directory: Path) -> bool:
    p, d = path.resolve(), directory.resolve()
    return p == d or p.is_relative_to(d)


def _store_state(url: str, vault_id: str) -> tuple[str | None, str | None]:
    """(vault the store is bound to, why it is not empty), read without creating anything."""
    from pivault.vault import meta

    parsed = parse_url(url)
    if parsed.dialect == "sqlite":
        p = Path(parsed.target)
        if not p.exists() or p.stat().st_size == 0:
            return None, None
    with open_target(url) as db:
        _refuse_foreign(db)  # before anything is written: another program's tables are never touched
        return meta.bound_vault_id(db), _why_not_empty(db, vault_id)


def _used_since(url: str, manifest: dict[str, Any]) -> str | None:
    """What shows that this vault's store was used after the backup was taken; None if nothing does.

    An earlier try of the same restore leaves only the backup's rows and its own
    ``backup.restore`` entry; a store that went on serving has audit entries past
    the backup's chain head (every access is one) or records changed after it.
    """
    head = manifest.get("audit_head") or {}
    with Database(url) as db:
        tables = set(db.tables())
        if "audit_entries" in tables:
            row = db.query_one("SELECT COUNT(*), MAX(ts_us) FROM audit_entries WHERE seq > ? AND operation"
                               " <> 'backup.restore'", (int(head.get("seq", 0)),))
            if row is not None and int(row[0]):
                return (f"{int(row[0])} audit entries after the backup's, the last at "
                        f"{_utc(float(row[1]) / 1e6)}")
        created = manifest.get("created")
        if "records" in tables and isinstance(created, str):
            try:
                taken = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
            except ValueError:
                return None
            # the stamp is in whole seconds, taken once the copy was made: a second's slack
            row = db.query_one("SELECT COUNT(*), MAX(updated_at) FROM records WHERE updated_at > ?",
                               (taken + 1.0,))
            if row is not None and int(row[0]):
                return f"{int(row[0])} records changed after the backup, the last at {_utc(float(row[1]))}"
    return None


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _check_new_home(h: Path) -> None:
    """``h`` can become a vault home: a new directory, or one holding only an earlier try's store.

    Never a symbolic link (the home would be made elsewhere), a file, or a
    directory in use by something else (its mode would be narrowed, its
    files mixed with the vault's).
    """
    if h.is_symlink():
        raise ConfigError(f"{h} is a symbolic link: give the directory itself", code="restore.home")
    if h.exists() and not h.is_dir():
        raise ConfigError(f"{h} exists and is not a directory", code="restore.home")
    base = h
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise ConfigError(f"{h} cannot be made: {base} is not a directory", code="restore.home")
    if h.exists():
        others = sorted(e.name for e in h.iterdir() if not e.name.lstrip(".").startswith("vault.db"))
        if others:
            raise ConfigError(f"{h} already holds {len(others)} other entries: give a new directory",
                              code="restore.home", hint="--new-home makes the vault home; it does not "
                              "share a directory with other files")


def _record_key_store_there(keyring_path: Path) -> bool:
    """Whether a record-key store (its tables, not just a file) is beside the keyring; nothing is made."""
    from pivault.keys.binding import probe
    from pivault.keys.shred import record_key_store_url

    return probe(record_key_store_url(keyring_path)).tables == {"keystore_meta", "record_keys"}


def _record_keys_held(keyring_path: Path) -> int:
    """How many record keys the default record-key store beside the keyring holds (0 if none)."""
    from pivault.keys.shred import record_key_store_url

    url = record_key_store_url(keyring_path)
    p = Path(parse_url(url).target)
    if not p.exists() or p.stat().st_size == 0:
        return 0
    with Database(url) as db:
        if not db.table_exists("record_keys"):
            return 0
        row = db.query_one("SELECT COUNT(*) FROM record_keys")
    return int(row[0]) if row else 0


def _vouched(keyring: Keyring, kpath: Path, key: VerifyKey) -> None:
    """Refuse unless ``key``, read in clear beside the keyring, is the signing key sealed under it.

    Before the root key was at hand, the backup could only be checked against that clear copy,
    which whoever can write the keyring's directory could have replaced with a key of their
    own; the keyring, now open, says whether it did. Nothing has been written yet.
    """
    if load_trusted_verify_key(keyring, keyring_path=kpath) != key:
        raise BackupError("the backup signing key beside the keyring changed while the restore ran; nothing "
                          "was restored", code="backup.key.altered",
                          hint="run the restore again, with --public-key and the copy kept apart")


def _verified_record_keys(path: str | os.PathLike[str], key: VerifyKey, vault_id: str) -> None:
    with Container.open(path) as rk:
        if rk.kind != "record-keys":
            raise BackupError(f"{Path(path).name} is not a record-key backup", code="backup.kind",
                              hint="--record-keys takes a file written by `pivault keys backup`")
        rk.verify(key, vault_id=vault_id)


def restore_new_home(
    path: str | os.PathLike[str], home: str | os.PathLike[str], *,
    key: VerifyKey | None = None, store_url: str | None = None,
    keyring_path: str | os.PathLike[str] | None = None,
    record_keys_backup: str | os.PathLike[str] | None = None,
    keep_erased: bool = False, keep_unreadable: bool = False, quarantine: bool = False,
    provider: Callable[[Mapping[str, object]], Any] | None = None,
) -> NewHomeReport:
    """Make the vault home ``home`` anew from a data backup; see the module doc.

    ``key``: the backup public key (default: the signing key file beside the
    keyring). ``store_url``: default ``sqlite:///<home>/vault.db`` (a
    PostgreSQL backup needs one). ``keyring_path``: default
    ``~/.config/pivault/keyrings/<vault-id>.keyring``. ``provider``: the
    root-key provider for a keyring header's description (default
    :func:`pivault.crypto.providers.provider_for`, which asks for the passphrase).
    ``record_keys_backup``: a ``pivault keys backup``, put back whole only
    into an empty record-key store; ``keep_erased`` and ``keep_unreadable``
    as for :func:`pivault.backup.restore`.
    """
    from pivault.crypto.providers import provider_for

    make_provider = provider or provider_for
    h = resolve_home(home)
    if os.path.lexists(h / CONFIG_NAME):
        raise ConfigError(f"a vault already exists at {h}", code="home.exists",
                          hint="restore into it with `pivault restore FILE --home DIR` (without --new-home)")
    _check_new_home(h)
    with Container.open(path) as c:
        if c.kind != "data":
            raise BackupError("this is a record-key backup; give the data backup, and this one with "
                              "--record-keys", code="backup.kind")
        vault_id = c.vault_id
        try:
            if str(uuid.UUID(vault_id)) != vault_id:
                raise ValueError
        except ValueError:
            raise BackupError("the backup's manifest names no valid vault id", code="backup.format") from None
        kpath = (Path(keyring_path).expanduser().absolute() if keyring_path is not None
                 else default_keyring_dir() / f"{vault_id}.keyring")
        if _inside(kpath, h):
            raise KeyringError("the keyring must not be stored inside the data directory",
                               code="keyring.location", hint="give --keyring a path outside --home")
        if kpath.exists() and not kpath.is_file():
            # a FIFO there would make the keyring's reader wait forever
            raise ConfigError(f"the keyring path {kpath} is not a regular file", code="restore.keyring",
                              hint="give --keyring the path of this vault's keyring file, or a free one")
        if kpath.exists():
            there = Keyring.peek(kpath).get("vault_id")
            if there != vault_id:
                raise BackupError(f"the keyring at {kpath} is of vault {there}, not of the backup's "
                                  f"({vault_id})", code="backup.vault",
                                  hint="give --keyring the path of this vault's keyring, or a free one")
        #: the key is the clear copy beside the keyring: checked against the keyring once it is open
        beside = key is None
        if key is None:
            try:
                key = load_verify_key(kpath)
            except BackupError as exc:
                if exc.code != "backup.key.missing":
                    raise
                raise BackupError(f"no backup signing key file at {signing_key_path(kpath)} to check the "
                                  "backup with", code="backup.key.missing",
                                  hint="pass --public-key with the backup public key kept apart (printed "
                                       "by every `pivault backup`)") from None
        c.verify(key)
        keys_survived = False
        if record_keys_backup is not None:
            _verified_record_keys(record_keys_backup, key, vault_id)
            # a surviving store knows the erasures made since the key backup: putting the backup back
            # whole would undo them, so it only fills in versions of records the store still keeps
            keys_survived = _record_keys_held(kpath) > 0
        backend = str(c.manifest.get("backend"))
        if store_url is None:
            if backend != "sqlite":
                raise ConfigError(f"this is a {backend} backup: say where to restore it",
                                  code="restore.store", hint="pass --store postgresql://USER@HOST:PORT/DB")
            store_url = f"sqlite:///{h / 'vault.db'}"
        parsed = parse_url(store_url)
        if parsed.dialect == "sqlite" and not Path(parsed.target).is_absolute():
            store_url = f"sqlite:///{Path(parsed.target).absolute()}"
        if parsed.dialect != backend:
            raise BackupError(f"this is a {backend} backup; restore it into a {backend} store",
                              code="backup.backend")
        envelope = c.read("keyring.json")
        try:
            header = json.loads(envelope)["header"]
            population = int(header["expected_population"])
            if header["vault_id"] != vault_id:
                raise BackupError("the keyring in the backup is of another vault", code="backup.vault")
        except (ValueError, KeyError, TypeError):
            raise BackupError("the keyring in the backup is unreadable", code="backup.format") from None
        bound, why = _store_state(store_url, vault_id)
        if bound is not None and bound != vault_id:
            raise BackupError(f"the store is bound to another vault ({bound}); it is not restored into",
                              code="backup.vault", hint="give --store an empty store of its own")
        if why is not None and not quarantine:
            used = _used_since(store_url, c.manifest) if bound == vault_id else None
            if used is not None:
                # the store survived the home: restoring would roll the vault back to the backup
                raise BackupError(
                    f"the target store is this vault's and was used after the backup ({used}): "
                    "restoring it would set that aside and roll the vault back", code="backup.store_survived",
                    hint="if the store is sound, it needs no restore: write DIR/pivault.toml naming it "
                         "(docs/backup.md, 'When the store survived'); if it is damaged, pass "
                         "--quarantine to set it aside and restore the backup")
            raise BackupError(f"the target store is not empty: {why}", code="backup.not_empty",
                              hint="give an empty store; if an interrupted restore filled it, pass "
                                   "--quarantine to move it aside")

    # the root key, before anything is written that needs it
    keyring_written = False
    if kpath.exists():
        keyring = Keyring.open(kpath, make_provider(Keyring.peek(kpath)["provider"]))
        if beside:
            _vouched(keyring, kpath, key)
    else:
        kpath.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        staged = kpath.with_name(f".restore-{secrets.token_hex(8)}.keyring")
        write_private(staged, envelope, overwrite=False)
        try:
            prov = make_provider(Keyring.peek(staged)["provider"])
            opened = Keyring.open(staged, prov)  # a wrong passphrase stops here, and nothing is left
            if beside:
                _vouched(opened, kpath, key)
            try:
                os.link(staged, kpath)
            except FileExistsError:
                raise KeyringError(f"a keyring appeared at {kpath} meanwhile",
                                   code="keyring.exists") from None
        finally:
            staged.unlink(missing_ok=True)
        keyring_written = True
        keyring = Keyring.open(kpath, prov)  # the provider caches the derived key

    if not h.exists():
        h.mkdir(mode=0o700, parents=True)
        os.chmod(h, 0o700)  # exactly, whatever the umask (a directory that was there keeps its mode)
    from pivault.keys.attach import open_record_key_store

    keyring.record_keys = True
    added: int | None = None
    there = _record_key_store_there(kpath)
    if not there and record_keys_backup is None:
        # no store survived and none is given: none is made, empty (every record would read as
        # erased); the vault refuses to open until `pivault keys restore` refills it
        report = restore(path, store_url, key, vault_id=vault_id, quarantine=quarantine, keyring=keyring,
                         keep_erased=True, keep_unreadable=keep_unreadable, salvage=True,
                         keyring_generation=keyring.generation)
    else:
        with open_record_key_store(keyring, create=not there) as keys:
            if record_keys_backup is not None and not keys_survived:
                # the keys first, as for any write of a record; audited once the trail is back
                added = restore_record_keys(record_keys_backup, keys, key).added
            # erasures since are purged below, where an empty record-key store is a note, not an error
            report = restore(path, store_url, key, vault_id=vault_id, quarantine=quarantine,
                             record_keys=keys, record_keys_backup=record_keys_backup, keyring=keyring,
                             keep_erased=True, keep_unreadable=keep_unreadable, salvage=True,
                             keyring_generation=keyring.generation, fresh_keys=not there)
    from pivault.detect.setup import default_vault_budget

    # the lost home's pivault.toml is not in the backup: the new one limits everyone together from the
    # start, as a new vault's does, rather than not at all
    out = NewHomeReport(VaultConfig(home=h, store_url=store_url, keyring_path=kpath, vault_id=vault_id,
                                    expected_population=population,
                                    vault_budget=default_vault_budget(population)),
                        report, keyring_written, added)
    out.notes.append("the new pivault.toml limits the reads of all principals together to the default for "
                     f"{population:,} residents ([detect.vault]); set it as the lost home had it")
    if keys_survived:
        out.notes.append("the record-key store beside the keyring survived: the record-key backup put back "
                         "only keys of records corrected since the data backup, none of a record erased")
    _after_restore(out, keyring, record_keys_backup, keep_erased, Path(path).name)
    # last: only now is DIR a vault home
    write_private(h / CONFIG_NAME, out.config.to_toml().encode("utf-8"), overwrite=False)
    return out


def _after_restore(out: NewHomeReport, keyring: Keyring, record_keys_backup: str | os.PathLike[str] | None,
                   keep_erased: bool, file_name: str) -> None:
    """Salvage, record keys, erasures since the backup, the audit entry; notes for the operator."""
    from pivault.detect.setup import audit_key_dir
    from pivault.keys.attach import open_record_key_store
    from pivault.keys.events import audit_events
    from pivault.keys.shred import purge_erased
    from pivault.policy.context import local_operator

    cfg, report = out.config, out.restore
    adir = audit_key_dir(cfg.keyring_path, cfg.vault_id)
    with Database(cfg.store_url) as db:
        out.salvaged_audit_entries = report.salvaged_audit_entries
        sink = audit_events(db, keyring, local_operator("restore"), adir)
        if sink is not None and out.record_keys_added is not None and record_keys_backup is not None:
            sink("keys.restore", "ok", {"file": Path(record_keys_backup).name,
                                        "keys_added": out.record_keys_added})
        if not _record_key_store_there(cfg.keyring_path):
            out.notes.append("no record-key store beside the keyring: the vault refuses to open until "
                             "`pivault keys restore FILE` puts back the newest record-key backup (or pass "
                             "it here with --record-keys)")
        elif not keep_erased:
            with open_record_key_store(keyring) as keys:
                try:
                    report.erased_since_backup = purge_erased(db, keys)
                except ConfigError as exc:
                    if exc.code != "keys.store_empty":
                        raise
                    out.notes.append("no record key was found beside the keyring: records cannot be read "
                                     "until `pivault keys restore FILE` puts back the newest record-key "
                                     "backup (or pass it here with --record-keys)")
        if sink is not None:
            sink("backup.restore", "ok", {"backup_id": report.backup_id, "file": file_name,
                                          "records": report.counts.get("records", 0),
                                          "quarantined": report.quarantined, "new_home": True,
                                          "salvaged_entries": out.salvaged_audit_entries,
                                          **report.restore_detail(), **report.audit_detail()})
        else:
            out.notes.append(f"no audit keys at {adir}: put back the copy kept apart (audit-signing.key, "
                             "audit-public.json; the auditor keeps audit-verifier.key) before the vault is "
                             "used, or pivault makes new ones; this restore was not recorded in the trail")
    if not signing_key_path(cfg.keyring_path).exists():
        out.notes.append("no backup signing key beside the keyring: the next `pivault backup` makes a new "
                         "one; older backups then verify with --public-key")
    out.notes.append("pivault.toml holds the vault id, store and keyring only: add back by hand any "
                     "[policy], [audit], [detect], [keys] or [export] settings the lost one had")
