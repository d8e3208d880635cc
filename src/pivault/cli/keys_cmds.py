"""Key lifecycle and backup commands: ``keys …``, ``backup``, ``backup verify``, ``restore``.

A thin skin over :mod:`pivault.keys` and :mod:`pivault.backup`, named like
them. Every change to keys, every split, recovery, backup and restore is
appended to the vault's audit trail when its audit keys are set up. Output
names key ids, counts and files, never a key, a share or a value; errors are
one line (``error[code]: message``) as in the other commands.
"""

from __future__ import annotations

import errno
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from pivault.cli.common import HomeOpt, JsonOpt, err, run_cli

__all__ = ["backup_app", "keys_app", "register", "restore"]

NEW_PASSPHRASE_ENV = "PIVAULT_NEW_PASSPHRASE"

keys_app = typer.Typer(help="Keys over time: rotate, rewrap, status, retire, change-root, custodian "
                            "split/recover, record-key backup/restore.", no_args_is_help=True)
backup_app = typer.Typer(help="Signed, consistent online backups of the data store (`backup --out FILE`, "
                              "`backup verify FILE`).", invoke_without_command=True)


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False, indent=2, default=str))


# -- opening things -------------------------------------------------------------------

@contextmanager
def _opened(home: Path | None, *, repair: bool = False) -> Iterator[Any]:
    """The vault home's config, keyring (root key from its header), store and record-key store.

    The record-key store must be the one the store is bound to (a missing or
    foreign one is refused before any key is touched); ``repair`` lets
    ``keys restore`` refill one that is lost (:func:`pivault.keys.binding.attach`).
    """
    from pivault.crypto import Keyring
    from pivault.crypto.providers import provider_for
    from pivault.keys.attach import open_record_key_store
    from pivault.store.db import Database
    from pivault.vault import home as _home

    cfg = _home.load(home)
    header = Keyring.peek(cfg.keyring_path)
    keyring = Keyring.open(cfg.keyring_path, provider_for(header["provider"]))
    keyring.record_keys = True
    db = Database(cfg.existing_store_url())
    try:
        from pivault.vault import meta

        meta.check(db, keyring)
        with open_record_key_store(keyring, home=cfg.home, db=db, repair=repair) as keys:
            yield _Opened(cfg, keyring, db, keys)
    finally:
        db.close()


class _Opened:
    def __init__(self, cfg: Any, keyring: Any, db: Any, keys: Any) -> None:
        self.cfg, self.keyring, self.db, self.keys = cfg, keyring, db, keys

    def audit_dir(self) -> Path:
        from pivault.detect.setup import DetectSettings, audit_key_dir

        return audit_key_dir(self.cfg.keyring_path, self.keyring.vault_id,
                             DetectSettings.from_home(self.cfg.home))

    def events(self) -> Any:
        from pivault.detect.setup import DetectSettings
        from pivault.keys.events import audit_events, noop
        from pivault.policy.context import local_operator

        sink = audit_events(self.db, self.keyring, local_operator("key management"), self.audit_dir(),
                            anchor=DetectSettings.from_home(self.cfg.home).anchor)
        return sink if sink is not None else noop

    def files(self) -> Any:
        from pivault.keys.sites import file_sites

        return file_sites(self.cfg.keyring_path, self.keyring.vault_id, audit_dir=self.audit_dir())


KMS_HELP = ("Not available from the command line: it registers no KMS client. A KMS root key is a "
            "library feature (docs/keys.md, Root-key change).")


def _refuse_kms(kms: str | None) -> None:
    """``--kms`` is refused before anything is asked or opened: the command line has no KMS client.

    Tink's KMS integrations (``tink[gcpkms]``, ``tink[awskms]``, ``tink[hcvault]``) are
    not among pivault's dependencies, so no command can reach a KMS; a program that
    registers the client itself moves the root key with :class:`pivault.crypto.KmsProvider`.
    """
    from pivault.errors import ValidationError

    if kms is not None:
        raise ValidationError("keyring.kms_cli", "a KMS root key is a library feature: the pivault "
                              "command line registers no KMS client",
                              hint="use Keyring.change_root(KmsProvider(uri)) from a program that "
                                   "registers the tink.integration client (docs/keys.md)")


def _new_provider() -> Any:
    from pivault.crypto import PassphraseProvider, passphrase_from_env_or_prompt

    return PassphraseProvider(passphrase_from_env_or_prompt(
        "New keyring passphrase: ", confirm=True, env_var=NEW_PASSPHRASE_ENV))


def _progress(quiet: bool, label: str) -> tuple[Any, Callable[[Any], None] | None]:
    if quiet or not sys.stderr.isatty():
        return None, None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                   TextColumn("{task.completed:,}/{task.total:,} records"), TimeElapsedColumn(),
                   TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True))
    task = bar.add_task(label, total=None)

    def update(p: Any) -> None:
        bar.update(task, completed=p.done, total=max(p.total, p.done), description=f"{label} ({p.phase})")

    return bar, update


# -- keys -----------------------------------------------------------------------------

@keys_app.command("rotate")
@run_cli
def keys_rotate(
    field: Annotated[str | None, typer.Option(
        "--field", help="A PI field (all share the field key), an index name (id_number, mobile, "
                        "name_birth) for its blind-index key, or a keyset name.")] = None,
    all_keys: Annotated[bool, typer.Option("--all", help="Rotate every key.")] = False,
    home: HomeOpt = None, json_out: JsonOpt = False,
) -> None:
    """A new key version becomes primary; new writes use it at once, old versions keep reading."""
    from pivault.keys.rotate import resolve_keysets, rotate

    with _opened(home) as o:
        new = rotate(o.keyring, resolve_keysets(o.keyring, field=field, all_keys=all_keys), events=o.events(),
                     db=o.db)
    if json_out:
        _print_json({"rotated": new})
        return
    for ks, kid in new.items():
        typer.echo(f"{ks}: new primary key {kid}")
    typer.echo("next: `pivault keys rewrap` moves what the old versions protect; running services pick "
               "up the new keyring when they reload it")


@keys_app.command("rewrap")
@run_cli
def keys_rewrap(
    batch: Annotated[int, typer.Option("--batch", min=1, max=100_000, help="Records per transaction.")] = 500,
    retire: Annotated[bool, typer.Option(
        "--retire", help="Then retire every key version nothing uses any more.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    home: HomeOpt = None, json_out: JsonOpt = False,
) -> None:
    """Re-encrypt everything under the primary keys, online and resumable (run it again after a crash)."""
    from pivault.keys.rewrap import rewrap
    from pivault.keys.rotate import retire_unused

    with _opened(home) as o:
        events = o.events()
        bar, update = _progress(quiet, "rewrap")
        try:
            if bar is not None:
                bar.start()
            report = rewrap(o.db, o.keyring, record_keys=o.keys, files=o.files(), batch_size=batch,
                            progress=update)
        finally:
            if bar is not None:
                bar.stop()
        events("keys.rewrap", "ok", {k: v for k, v in report.to_dict().items() if k != "seconds"})
        retired = retire_unused(o.db, o.keyring, record_keys=o.keys, files=o.files(), events=events) \
            if retire else []
    out = report.to_dict()
    out["retired"] = [{"keyset": r.keyset, "key_id": r.key_id} for r in retired]
    if json_out:
        _print_json(out)
        return
    typer.echo(f"rewrap {'complete' if report.complete else 'stopped'}: {report.records_seen:,} records "
               f"seen, {report.record_keys_rewrapped:,} record keys rewrapped, "
               f"{report.records_upgraded + report.records_reencrypted:,} records re-encrypted, "
               f"{report.indexes_rebuilt:,} index entries rebuilt, {report.records_tagged:,} records' "
               f"entries given check tags, {report.other_values_rewrapped:,} "
               f"other values, {report.files_rewrapped} key files; {report.conflicts} left to concurrent "
               f"writers, {report.unreadable} unreadable (erased)")
    if report.damaged:
        shown = ", ".join(report.damaged_record_ids[:_IDS_SHOWN])
        more = f" and {report.damaged - _IDS_SHOWN:,} more (--json lists up to 100)" \
            if report.damaged > _IDS_SHOWN else ""
        err(f"warning: {report.damaged:,} records fail authentication (their record key or fields were "
            f"altered, moved from another record or damaged) and were left as they are: {shown}{more}; "
            "an old field key still wrapping one of their record keys is not retired: "
            "restore each from a backup (or erase it), then run `pivault keys rewrap` again")
    if report.files_unreadable:
        err(f"warning: {len(report.files_unreadable)} key file(s) beside the keyring could not be opened "
            f"and were left as they are ({', '.join(report.files_unreadable)}): damaged or of another "
            "keyring; put back a good copy of each from where the key files are kept")
    for r in retired:
        typer.echo(f"retired {r.keyset} key {r.key_id}")


@keys_app.command("status")
@run_cli
def keys_status(home: HomeOpt = None, json_out: JsonOpt = False) -> None:
    """Per key version: primary or not, how many values still use it, whether it may be retired."""
    from pivault.keys.rotate import status
    from pivault.keys.usage import UsageLedger

    with _opened(home) as o:
        st = status(o.db, o.keyring, record_keys=o.keys, files=o.files(),
                    ledger=UsageLedger(o.keys, o.keyring))
    if json_out:
        _print_json(st)
        return
    typer.echo(f"vault {st['vault_id']}  keyring generation {st['generation']}  "
               f"custodian recovery: {st['recovery_fingerprint'] or 'not set up (pivault keys split)'}")
    for ks in st["keysets"]:
        typer.echo(f"{ks['keyset']} ({ks['purpose']})")
        for k in ks["keys"]:
            mark = "primary" if k["primary"] else ("retirable" if k["retirable"] else "in use")
            if ks["keyset"] == "aead":
                where = ", ".join(f"{p} {n:,}" for p, n in k["where"].items()) or "nothing"
                enc = f", {k['encryptions']:,} encryptions" if "encryptions" in k else ""
                typer.echo(f"  key {k['key_id']:>10}  {mark:<9}  {k['values']:>12,} values ({where}){enc}")
            else:
                typer.echo(f"  key {k['key_id']:>10}  {mark:<9}  {k['state']}")
    if st["unknown_key_ids"]:
        typer.echo(f"values under keys this keyring lacks: {st['unknown_key_ids']}", err=True)
    rw = st["rewrap"]
    if rw:
        typer.echo(f"last rewrap: {rw['state']} ({rw['phase']}, {rw['done']:,} records)"
                   + ("" if rw["current"] else " — keys rotated since; run `pivault keys rewrap`"))


@keys_app.command("retire")
@run_cli
def keys_retire(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be retired.")] = False,
    home: HomeOpt = None, json_out: JsonOpt = False,
) -> None:
    """Destroy key versions nothing uses any more (a fresh count decides)."""
    from pivault.keys.rotate import retire_unused

    with _opened(home) as o:
        retired = retire_unused(o.db, o.keyring, record_keys=o.keys, files=o.files(), dry_run=dry_run,
                                events=o.events())
    rows = [{"keyset": r.keyset, "key_id": r.key_id} for r in retired]
    if json_out:
        _print_json({"retired": rows, "dry_run": dry_run})
        return
    if not rows:
        typer.echo("nothing to retire")
    for r in rows:
        typer.echo(f"{'would retire' if dry_run else 'retired'} {r['keyset']} key {r['key_id']}")


@keys_app.command("change-root")
@run_cli
def keys_change_root(
    kms: Annotated[str | None, typer.Option("--kms", hidden=True, help=KMS_HELP)] = None,
    home: HomeOpt = None, json_out: JsonOpt = False,
) -> None:
    """Put the keysets under a new passphrase ($PIVAULT_NEW_PASSPHRASE); data untouched."""
    from pivault.crypto import Keyring, KeyringError, PassphraseProvider
    from pivault.keys import seen

    _refuse_kms(kms)
    with _opened(home) as o:
        new = _new_provider()
        old_kind = o.keyring.describe()["provider"]["kind"]
        if isinstance(new, PassphraseProvider):
            # a change to the same passphrase would be recorded as a change and protect nothing more
            try:
                Keyring.open(o.keyring.path, new)
            except KeyringError:
                pass
            else:
                raise KeyringError("the new passphrase is the current one", code="keyring.passphrase_same",
                                   hint=f"set the new one in ${NEW_PASSPHRASE_ENV}, or type it when asked")
        o.keyring.change_root(new)
        seen.record(o.db, o.keyring)
        o.events()("keys.change_root", "ok", {"from": old_kind, "to": new.describe()["kind"],
                                              "generation": o.keyring.generation})
    if json_out:
        _print_json({"root": new.describe()["kind"], "generation": o.keyring.generation})
        return
    typer.echo(f"keyring now protected by a {new.describe()['kind']} root key; the data was not touched")


@keys_app.command("split")
@run_cli
def keys_split(
    out: Annotated[Path, typer.Option("--out", help="Directory for the share files (one per custodian).")],
    shares: Annotated[int, typer.Option("--shares", min=2, max=255, help="Shares to make (n).")] = 5,
    threshold: Annotated[int, typer.Option("--threshold", min=2, help="Shares needed (k).")] = 3,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace a recovery key already split: every share of it stops working.")] = False,
    home: HomeOpt = None, json_out: JsonOpt = False,
) -> None:
    """Split the vault's recovery key among custodians; any THRESHOLD of them rebuild it.

    A vault has one recovery key: a new split replaces it, and the shares the
    custodians hold stop working. So an existing split is replaced only with
    ``--force``, and what it invalidates is said before anything changes.
    """
    from pivault.keys import seen
    from pivault.keys.custodians import ShareError, share_path, split

    if out.exists() and not out.is_dir():
        raise ShareError(f"{out.name} is not a directory", code="keys.shares.out")
    with _opened(home) as o:
        earlier = o.keyring.recovery_fingerprint()
        if earlier is not None:
            if not force:
                raise ShareError(
                    f"recovery key {earlier} is already split among custodians; a new split would make "
                    "every one of its shares stop working", code="keys.shares.split",
                    hint="pass --force to replace it, then collect and destroy the old shares")
            err(f"replacing recovery key {earlier}: every share of it stops working now")
        made = split(o.keyring, shares=shares, threshold=threshold, events=o.events(), out=out)
        seen.record(o.db, o.keyring)
    paths = [share_path(out, s) for s in made]
    if json_out:
        _print_json({"split": made[0].split_id, "fingerprint": made[0].fingerprint,
                     "threshold": threshold, "files": [str(p) for p in paths]})
        return
    typer.echo(f"recovery key {made[0].fingerprint} split {threshold} of {shares} (split {made[0].split_id})")
    for p in paths:
        typer.echo(f"  {p}")
    typer.echo("Give each file to one custodian (print it if you like) and delete it here."
               + (f" The shares of {earlier} no longer work." if earlier else ""))


@keys_app.command("recover")
@run_cli
def keys_recover(
    share_files: Annotated[list[Path], typer.Argument(help="Share files from THRESHOLD custodians.")],
    kms: Annotated[str | None, typer.Option("--kms", hidden=True, help=KMS_HELP)] = None,
    home: HomeOpt = None, json_out: JsonOpt = False,
) -> None:
    """Rebuild the recovery key from custodian shares and set a new passphrase ($PIVAULT_NEW_PASSPHRASE)."""
    from pivault.keys import seen
    from pivault.keys.custodians import check_shares, read_share, recover
    from pivault.keys.events import audit_events
    from pivault.policy.context import local_operator
    from pivault.store.db import Database
    from pivault.vault import home as _home

    _refuse_kms(kms)
    cfg = _home.load(home)
    store_url = cfg.existing_store_url()  # the recovery is audited into it: it must be there first
    got = [read_share(p) for p in share_files]
    check_shares(cfg.keyring_path, got)  # too few or wrong shares are said before the new passphrase is asked
    with Database(store_url) as db:
        seen.check_file(db, cfg.keyring_path)  # an older copy is not given a current generation
    ring = recover(cfg.keyring_path, got, _new_provider())
    with Database(store_url) as db:
        seen.check(db, ring)  # the rewritten keyring's generation; an older copy is said here
        from pivault.detect.setup import DetectSettings, audit_key_dir

        settings = DetectSettings.from_home(cfg.home)
        adir = audit_key_dir(cfg.keyring_path, ring.vault_id, settings)
        sink = audit_events(db, ring, local_operator("key management"), adir, anchor=settings.anchor)
        if sink is not None:
            sink("keys.recover", "ok", {"split": got[0].split_id, "shares_used": len(got),
                                        "generation": ring.generation})
    if json_out:
        _print_json({"recovered": True, "vault_id": ring.vault_id, "shares_used": len(got)})
        return
    typer.echo(f"keyring of vault {ring.vault_id} recovered from {len(got)} shares and put under the new "
               "root key; the recovery key and its shares stay valid")


@keys_app.command("backup")
@run_cli
def keys_backup(
    out: Annotated[Path, typer.Option("--out", help="The record-key backup file to write.")],
    home: HomeOpt = None, json_out: JsonOpt = False,
) -> None:
    """Back up the record keys (kept beside the keyring, apart from the data backups)."""
    from pivault.backup import backup_record_keys

    with _opened(home) as o:
        res = backup_record_keys(o.keys, o.keyring, out, events=o.events())
    if json_out:
        _print_json(res.to_dict())
        return
    typer.echo(f"wrote {res.path} ({res.manifest['counts']['record_keys']:,} record keys, signed by "
               f"{res.manifest['signing_key']['fingerprint']}); keep it with the keyring backups, "
               "not the data's, and only as long as erasures may take to become final")


@keys_app.command("restore")
@run_cli
def keys_restore(
    file: Annotated[Path, typer.Argument(help="A record-key backup.")],
    only: Annotated[list[str] | None, typer.Option(
        "--only", help="Restore the keys of these record ids only (repeatable); the only way to put back "
                       "the key of a record whose erasure the audit trail records.")] = None,
    home: HomeOpt = None, json_out: JsonOpt = False,
) -> None:
    """Put back record keys the live store lacks, never those of records the audit trail shows erased.

    A key of a record erased since that backup is put back only when --only
    names it (a malicious erase): that undoes the erasure. It also refills a
    record-key store that was lost (made anew here): the vault is bound to it
    once the keys put back open its records.
    """
    from pivault.backup import erased_on_record, load_trusted_verify_key, restore_record_keys
    from pivault.keys.binding import bind

    with _opened(home, repair=True) as o:
        fresh = not o.keys.holds_keys()
        # the key the keyring vouches for, not the clear copy beside it that anyone there could replace
        res = restore_record_keys(file, o.keys, load_trusted_verify_key(o.keyring), only_records=only,
                                  erased=erased_on_record(o.db), events=o.events())
        bind(o.db, o.keyring, o.keys, fresh=fresh)
    left_out = res.left_out_erased
    if json_out:
        _print_json({"keys_added": res.added, "erased_left_out": len(left_out),
                     "erased_left_out_record_ids": left_out})
        return
    typer.echo(f"{res.added:,} record keys put back")
    if left_out:
        shown = ", ".join(left_out[:_IDS_SHOWN]) + (" …" if len(left_out) > _IDS_SHOWN else "")
        typer.echo(f"{len(left_out):,} keys of records whose erasure the audit trail records were left out, "
                   f"so those erasures stand ({shown}); to undo one (a malicious erase), name the record "
                   "with --only")


@keys_app.command("gc")
@run_cli
def keys_gc(
    grace: Annotated[float, typer.Option(
        "--grace", help="Keep keys younger than this (seconds; at least 600 unless --writers-stopped).")
    ] = 3600.0,
    writers_stopped: Annotated[bool, typer.Option(
        "--writers-stopped",
        help="Nothing writes to the vault now (no serve, import or rewrap running): allows a grace under "
             "600 s. A key commits before its record, so on a vault that writes, a shorter grace can "
             "leave a new record unreadable.")] = False,
    allow_mass: Annotated[bool, typer.Option(
        "--allow-mass-delete",
        help="Delete orphan keys even when there are many (more than 10 and 1 % of the store): "
             "without it such a gc is refused, since the data store may have been wiped or replaced.")
    ] = False,
    backup_keys_days: Annotated[float | None, typer.Option(
        "--backup-keys-older-than", min=0.0,
        help="Also forget the keys that seal the record keys inside data backups older than this many "
             "days: from then on an erasure is final in those backups too, and a record corrected since "
             "one of them needs `--record-keys` to restore.")] = None,
    home: HomeOpt = None, json_out: JsonOpt = False,
) -> None:
    """Delete record keys no record uses (left by crashes), older than the grace period."""
    with _opened(home) as o:
        n = o.keys.collect_garbage(o.db, grace_seconds=grace, writers_stopped=writers_stopped,
                                   allow_mass=allow_mass)
        if n:
            # a record's key deleted is that record gone from every backup: who did it, and how many
            o.events()("keys.gc", "ok", {"deleted": n, "grace_seconds": grace, "mass": allow_mass})
        forgotten = o.keys.forget_backup_keys(older_than_seconds=backup_keys_days * 86400.0) \
            if backup_keys_days is not None else 0
        if forgotten:
            o.events()("keys.forget_backup_keys", "ok", {"backups": forgotten,
                                                         "older_than_days": backup_keys_days})
    if json_out:
        _print_json({"deleted": n, "backup_keys_forgotten": forgotten})
    else:
        typer.echo(f"{n:,} orphan record keys deleted")
        if backup_keys_days is not None:
            typer.echo(f"{forgotten:,} data backups' record-key seals forgotten")


# -- backup / restore -------------------------------------------------------------------

@backup_app.callback()
@run_cli
def backup(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(
        "--out", help="The backup file to write (never overwritten).")] = None,
    home: HomeOpt = None, json_out: JsonOpt = False,
) -> None:
    """Write a signed, consistent backup of the data store and the keyring envelope (no plaintext)."""
    if ctx.invoked_subcommand is not None:
        return
    if out is None:
        raise typer.BadParameter("give --out FILE (or use `pivault backup verify FILE`)")
    from pivault.backup import create_backup

    with _opened(home) as o:
        res = create_backup(o.db, o.keyring, out, events=o.events(), record_keys=o.keys)
    if json_out:
        _print_json(res.to_dict())
        return
    m = res.manifest
    typer.echo(f"wrote {res.path}: {m['counts'].get('records', 0):,} records, "
               f"{m['counts'].get('audit_entries', 0):,} audit entries, {res.path.stat().st_size:,} bytes")
    typer.echo(f"signed by backup key {m['signing_key']['fingerprint']} "
               f"(public key {m['signing_key']['public']}; keep a copy of it apart)")
    typer.echo(f"with the record keys of its {m['record_keys']['keys']:,} record versions, sealed by a key "
               "kept in the record-key store; `pivault keys backup` still backs up that store itself")


def _verify_key(public_key: str | None, keyring_path: Path | None) -> Any:
    """The backup public key: ``--public-key`` if given, else the signing key file beside the keyring.

    ``--public-key`` wins. When the file beside the keyring holds another
    key, one line on stderr says so (fingerprints only): a backup checked
    against a key nobody meant would otherwise pass or fail unexplained.
    """
    from pivault.backup import BackupError, VerifyKey, load_verify_key

    if public_key:
        key = VerifyKey.parse(_key_text(public_key))
        if keyring_path is not None:
            try:
                beside = load_verify_key(keyring_path)
            except BackupError:
                beside = None  # no key file there (or none readable): nothing to differ from
            if beside is not None and beside != key:
                err(f"warning: --public-key {key.fingerprint} differs from the backup signing key beside "
                    f"the keyring ({beside.fingerprint}); checking against --public-key")
        return key
    if keyring_path is None:
        raise BackupError("no backup public key: no keyring to find it beside", code="backup.key.missing",
                          hint="pass --public-key")
    return load_verify_key(keyring_path)


def _home_keyring(home: Path | None) -> Path | None:
    """The keyring path of the vault home, if there is one to read (no passphrase needed)."""
    from pivault.errors import ConfigError
    from pivault.vault import home as _home

    try:
        return Path(_home.load(home).keyring_path)
    except ConfigError:
        return None


def _key_text(arg: str) -> str:
    """``--public-key``: the key itself, or a file holding it.

    A file is read only if it is a regular file, and only its first few
    KiB (a key is 44 characters): a FIFO would wait forever, /dev/zero be
    read without end, and the backup given by mistake is not text.
    """
    import os
    import stat

    from pivault.backup import BackupError

    try:
        fd = os.open(arg, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return arg
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            return arg
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BackupError(f"--public-key names {Path(arg).name}, which is not a regular file",
                              code="backup.key", hint="give the key (base64, as `pivault backup` prints it) "
                                                      "or a file holding it")
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise BackupError(f"{Path(arg).name} does not hold a backup public key", code="backup.key",
                          hint="give the key (base64, as `pivault backup` prints it) or a file holding "
                               "it") from None


@backup_app.command("verify")
@run_cli
def backup_verify(
    file: Annotated[Path, typer.Argument(help="The backup file.")],
    public_key: Annotated[str | None, typer.Option(
        "--public-key", help="The backup public key (base64, or a file holding it); default: the "
                             "signing key file beside the keyring.")] = None,
    deep: Annotated[bool, typer.Option("--deep", help="Also open the database copy and count rows.")] = False,
    home: HomeOpt = None, json_out: JsonOpt = False,
) -> None:
    """Check a backup without restoring it: signature, every checksum, nothing extra."""
    from pivault.backup import verify_backup
    from pivault.vault import home as _home

    vault_id = None
    if public_key:
        key = _verify_key(public_key, _home_keyring(home))
    else:
        cfg = _home.load(home)
        key, vault_id = _verify_key(None, cfg.keyring_path), cfg.vault_id
    out = verify_backup(file, key, vault_id=vault_id, deep=deep)
    if json_out:
        _print_json(out)
        return
    typer.echo(f"backup {out['backup_id']} of vault {out['vault_id']} ({out['kind']}, {out['created']}): "
               f"signature and {out['files']} checksums OK" + (f"; {out['deep']}" if "deep" in out else ""))


@run_cli
def restore(
    file: Annotated[Path, typer.Argument(help="The backup file.")],
    quarantine: Annotated[bool, typer.Option(
        "--quarantine", help="Move a damaged, non-empty store aside (kept as evidence) and restore in "
                             "its place; its audit trail after the backup is salvaged.")] = False,
    keep_erased: Annotated[bool, typer.Option(
        "--keep-erased", help="Keep rows whose record key is gone (erased after the backup) instead of "
                              "deleting them.")] = False,
    keep_unreadable: Annotated[bool, typer.Option(
        "--keep-unreadable", help="Restore even if records corrected since the backup have no key for "
                                  "their backed-up version anywhere: those rows are kept, cannot be "
                                  "opened, and are listed.")] = False,
    public_key: Annotated[str | None, typer.Option(
        "--public-key", help="The backup public key (base64 or file); default: beside the keyring.")] = None,
    new_home: Annotated[bool, typer.Option(
        "--new-home", help="The data directory was lost: make the vault home --home DIR anew from the "
                           "backup (pivault.toml, store, and the keyring if none is there).")] = False,
    store: Annotated[str | None, typer.Option(
        "--store", help="With --new-home: the store to restore into (default sqlite in --home; a "
                        "PostgreSQL backup needs postgresql://USER@HOST:PORT/DB).")] = None,
    keyring: Annotated[Path | None, typer.Option(
        "--keyring", help="With --new-home: the keyring's path, outside --home (default "
                          "~/.config/pivault/keyrings/<vault-id>.keyring); written from the backup if "
                          "no keyring is there.")] = None,
    record_keys: Annotated[Path | None, typer.Option(
        "--record-keys", help="The record-key backup (`pivault keys backup`) taken with this data "
                              "backup: the keys of records corrected since are put back from it, never "
                              "those of records erased since. With --new-home and no record-key store "
                              "left beside the keyring, all its keys are put back.")] = None,
    home: HomeOpt = None, json_out: JsonOpt = False,
) -> None:
    """Restore a verified backup into this (empty) vault; a bad signature or checksum changes nothing.

    After the data directory is lost, --new-home rebuilds the vault home from the backup.
    """
    from pivault.backup import BackupError, load_trusted_verify_key
    from pivault.backup import restore as _restore
    from pivault.crypto import Keyring
    from pivault.crypto.providers import provider_for
    from pivault.errors import ConfigError, ValidationError
    from pivault.keys.attach import open_record_key_store
    from pivault.keys.events import audit_events
    from pivault.policy.context import local_operator
    from pivault.store.db import Database
    from pivault.vault import home as _home

    if new_home:
        if home is None:
            raise ValidationError("restore.home", "--new-home needs --home DIR (the vault home to make)")
        _restore_new_home(file, home, public_key=public_key, store=store, keyring=keyring,
                          record_keys=record_keys, keep_erased=keep_erased,
                          keep_unreadable=keep_unreadable, quarantine=quarantine, json_out=json_out)
        return
    for name, given in (("--store", store), ("--keyring", keyring)):
        if given is not None:
            raise ValidationError("restore.args", f"{name} goes with --new-home: a vault's own restore "
                                  "uses the store and keyring of its pivault.toml")
    try:
        cfg = _home.load(home)
    except ConfigError as exc:
        if exc.code != "home.missing":
            raise
        raise ConfigError(exc.message, code=exc.code,
                          hint="if the data directory was lost, make it anew from the backup: "
                               "pivault restore FILE --home DIR --new-home") from None
    key = _verify_key(public_key, cfg.keyring_path)
    ring = Keyring.open(cfg.keyring_path, provider_for(Keyring.peek(cfg.keyring_path)["provider"]))
    if not public_key:
        # with the keyring open, the key it vouches for: the clear copy beside it proves nothing
        key = load_trusted_verify_key(ring)
    from pivault.detect.setup import DetectSettings, audit_key_dir

    settings = DetectSettings.from_home(cfg.home)
    adir = audit_key_dir(cfg.keyring_path, ring.vault_id, settings)
    recorded: list[bool] = []

    def trail(db: Database) -> Any:
        # the restore's entry is not anchored as it is written: _anchor_restored below decides
        # whether the anchor follows it by a mark or by a re-base
        sink = audit_events(db, ring, local_operator("restore"), adir)
        if sink is not None:
            recorded.append(True)
        return sink

    # salvage and the audit entry are part of the restore: done before the restored store takes the
    # old one's place, so that a crash cannot leave a restore without them
    try:
        # the store must be there (never made anew, empty, by a restore); the restored rows are bound
        # to it, or refused, before they take the old store's place
        with open_record_key_store(ring, home=cfg.home) as keys:
            report = _restore(file, cfg.store_url, key, vault_id=ring.vault_id, quarantine=quarantine,
                              record_keys=keys, record_keys_backup=record_keys, keyring=ring,
                              keep_erased=keep_erased, keep_unreadable=keep_unreadable, salvage=True,
                              events=trail, keyring_generation=ring.generation)
    except BackupError as exc:
        backup_id = _restored_before(exc, file, cfg.store_url)
        if backup_id is None:
            raise
        # an earlier run restored the store and was stopped before the anchor followed: finish that
        with Database(cfg.store_url) as db:
            anchored = _anchor_restored(db, ring, adir, settings.anchor)
        if json_out:
            _print_json({"backup_id": backup_id, "already_restored": True, "audit_anchor": anchored})
            return
        typer.echo(f"the store already holds backup {backup_id}, restored by an earlier run (its audit trail "
                   "ends with that restore): nothing was restored again")
        if anchored:
            typer.echo(anchored)
        typer.echo("next: `pivault audit verify`")
        return
    anchored = None
    if recorded:
        # the anchor is a file outside the store: it follows the restored chain once that is in place
        # (after a crash in between, `pivault audit verify` says what to do)
        with Database(cfg.store_url) as db:
            anchored = _anchor_restored(db, ring, adir, settings.anchor)
    out = report.to_dict()
    out["audit_anchor"] = anchored
    if json_out:
        _print_json(out)
        return
    _say_restored(report, report.salvaged_audit_entries)
    if anchored:
        typer.echo(anchored)
    typer.echo("next: `pivault audit verify`")


def _restored_before(exc: Any, file: Path, store_url: str) -> str | None:
    """The backup's id if ``exc`` refused a store that this backup was restored into, and nothing since.

    A restore is recorded by the last entry of the store's trail; any use of
    the store since appends more. So a store whose trail ends with this
    backup's ``backup.restore`` holds exactly what running the command again
    would put there.
    """
    from pivault.audit import entries
    from pivault.backup import Container
    from pivault.store.db import Database

    if getattr(exc, "code", None) != "backup.not_empty":
        return None
    with Container.open(file) as c:
        backup_id = str(c.manifest.get("backup_id"))
    with Database(store_url) as db:
        if not db.table_exists("audit_entries"):
            return None
        last = list(entries(db, limit=1, newest=True))
    if last and last[0].operation == "backup.restore" and last[0].detail.get("backup_id") == backup_id:
        return backup_id
    return None


def _anchor_restored(db: Any, ring: Any, audit_dir: Path, anchor_path: str | None) -> str | None:
    """After a restore, the home's audit anchor follows the chain put back; what happened, in a line.

    The anchor is legitimately ahead of a restored chain (it marked checkpoints made after the
    backup). Left so, `audit verify` would report the tail rolled back for ever after; re-based
    silently, a real rollback could hide behind a restore. So the re-base stands on the restore's
    audited entry and is signed, and verify names it.
    """
    from pivault.audit import AuditLog, load_writer
    from pivault.audit.anchor import Anchor, settle
    from pivault.errors import PivaultError
    from pivault.policy.context import local_operator

    if anchor_path is None:
        return None
    try:
        writer = load_writer(audit_dir, ring)
        done = settle(AuditLog(db, ring, writer), writer, Anchor(anchor_path), local_operator("restore"))
    except PivaultError as exc:
        # the restore itself is done and recorded: say what is left to do rather than fail it
        return (f"the audit anchor could not follow the restore ({exc.code}): `pivault audit verify` "
                "will report the tail rolled back until `pivault audit rebase-anchor --yes` records it")
    if done.rebased and done.superseded is not None:
        return (f"the audit anchor had marked entry {done.superseded.seq}, past the restored chain: it was "
                f"re-based at entry {done.checkpoint.seq} ({done.operation}), signed; a later rollback is "
                "still found")
    return f"the audit anchor marks entry {done.checkpoint.seq} of the restored chain"


#: unreadable records named in the text output; --json lists them all
_IDS_SHOWN = 20


def _say_restored(report: Any, salvaged: int) -> None:
    taken = f" (taken {report.created})" if report.created else ""
    typer.echo(f"restored backup {report.backup_id}{taken}: {report.counts.get('records', 0):,} records, "
               f"{report.counts.get('audit_entries', 0):,} audit entries")
    if report.newer_backups:
        newest, when = report.newer_backups[0]
        typer.echo(f"warning: this vault took {len(report.newer_backups):,} data backups after this one (the "
                   f"newest, {newest}, at {when}): what they hold beyond it was not restored; if this file "
                   "was not chosen on purpose, restore the newest backup")
    if report.quarantined and report.salvage_refused:
        typer.echo(f"the damaged store was kept as {report.quarantined}; the audit entries it holds after "
                   f"the backup were not salvaged: {report.salvage_refused}; they stay there, as evidence")
    elif report.quarantined:
        typer.echo(f"the damaged store was kept as {report.quarantined}; {salvaged} audit entries written "
                   "after the backup were salvaged from it")
    for ids, what in ((report.tokens_kept_revoked, "revoked"), (report.tokens_kept_suspended, "suspended")):
        if ids:
            shown = ", ".join(ids[:_IDS_SHOWN]) + (" …" if len(ids) > _IDS_SHOWN else "")
            typer.echo(f"{len(ids):,} tokens {what} after the backup stay {what}: {shown}")
    if report.tokens_unchecked:
        typer.echo(f"warning: {report.tokens_unchecked:,} tokens are active as the backup had them; a token "
                   "revoked or suspended after the backup was taken is active again (the store restored into "
                   "held nothing to tell): review `pivault token list` and revoke any that must not work")
    if report.erased_since_backup:
        typer.echo(f"{report.erased_since_backup:,} records erased since the backup were removed again")
    if report.corrected_since_backup:
        typer.echo(f"{report.corrected_since_backup:,} records corrected since the backup are back at their "
                   "backed-up values (their keys put back from the record-key backup): make those "
                   "corrections again (--json lists the records)")
    if report.not_restored:
        from pivault.backup.restore import table_label

        shown = ", ".join(table_label(t) for t in report.not_restored[:5])
        more = len(report.not_restored) - 5
        tail = f" and {more} more (--json lists them)" if more > 0 else ""
        typer.echo(f"{len(report.not_restored)} tables in the backup are not part of pivault's schema and "
                   f"were not restored: {shown}{tail}")
    if report.unreadable_record_ids:
        shown = report.unreadable_record_ids[:_IDS_SHOWN]
        more = len(report.unreadable_record_ids) - len(shown)
        tail = f" and {more:,} more (--json lists them)" if more else ""
        typer.echo(f"{len(report.unreadable_record_ids):,} records corrected since the backup cannot be "
                   "opened, no key for their backed-up version was found (docs/backup.md says what to "
                   "do): " + ", ".join(shown) + tail)


def _restore_new_home(file: Path, home: Path, *, public_key: str | None, store: str | None,
                      keyring: Path | None, record_keys: Path | None, keep_erased: bool,
                      keep_unreadable: bool, quarantine: bool, json_out: bool) -> None:
    from pivault.backup import restore_new_home

    key = _verify_key(public_key, keyring) if public_key else None
    res = restore_new_home(file, home, key=key, store_url=store, keyring_path=keyring,
                           record_keys_backup=record_keys, keep_erased=keep_erased,
                           keep_unreadable=keep_unreadable, quarantine=quarantine)
    anchored = _anchor_new_home(res.config)
    if json_out:
        _print_json({**res.to_dict(), "audit_anchor": anchored})
        return
    cfg = res.config
    typer.echo(f"made vault home {cfg.home} for vault {cfg.vault_id}")
    _say_restored(res.restore, res.salvaged_audit_entries)
    typer.echo(f"  store:   {res.to_dict()['store']}")
    typer.echo(f"  keyring: {cfg.keyring_path}"
               + (" (written from the backup)" if res.keyring_written else " (already there)"))
    if res.record_keys_added is not None:
        typer.echo(f"  {res.record_keys_added:,} record keys put back")
    for note in res.notes:
        typer.echo(f"note: {note}")
    if anchored:
        typer.echo(anchored)
    typer.echo("next: `pivault audit verify`")


def _anchor_new_home(cfg: Any) -> str | None:
    """The new home's audit anchor starts at the restored chain's newest checkpoint, signed as stored.

    Nothing here needs a key: the checkpoint is the store's own, already signed.
    Until the anchor holds a mark, `audit verify` cannot check the tail.
    """
    from pivault.audit import latest_checkpoint
    from pivault.audit.anchor import Anchor, unreached
    from pivault.detect.setup import DetectSettings
    from pivault.store.db import Database

    path = DetectSettings.from_home(cfg.home).anchor
    if path is None:
        return None
    anchor = Anchor(path)
    with Database(cfg.store_url) as db:
        if not db.table_exists("audit_checkpoints"):
            return None
        if anchor.exists() and unreached(anchor.read(), db) is not None:
            return (f"the audit anchor at {anchor.path} marks entries past the restored chain: if this "
                    "restore is what put the chain back, record it with `pivault audit rebase-anchor --yes`")
        cp = latest_checkpoint(db)
    if cp is None or not anchor.mark(cp):
        return None
    return f"the audit anchor starts at entry {cp.seq} of the restored chain"


def register(app: typer.Typer) -> None:
    """Attach ``keys``, ``backup`` and ``restore`` to the main command line."""
    app.add_typer(keys_app, name="keys")
    app.add_typer(backup_app, name="backup")
    app.command("restore")(restore)
