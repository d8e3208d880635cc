"""Commands for the audit trail, alerts and canaries: a thin skin over pivault.audit and pivault.detect.

``pivault audit verify|show|export-checkpoint|prune|rebase-anchor|init-keys``,
``pivault alerts list|ack``, ``pivault canary seed``. Errors are one line on
stderr (``error[code]: message``), exit status 2 for bad input and 1 for
everything else; ``audit verify`` exits 1 when the chain is not intact.
Nothing printed here holds PI: entries carry opaque record ids only.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import time
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from pivault.cli.common import LIMIT_MAX, HomeOpt, JsonOpt
from pivault.cli.common import print_json as _json
from pivault.cli.common import run_cli as _cli
from pivault.errors import ConfigError, PivaultError, ValidationError

__all__ = ["alerts_app", "audit_app", "canary_app", "register"]

P = ParamSpec("P")
R = TypeVar("R")

audit_app = typer.Typer(help="The audit trail: verify the chain, show entries, export a checkpoint, prune.",
                        no_args_is_help=True)
alerts_app = typer.Typer(help="Alerts raised by budgets, the detector and canaries.", no_args_is_help=True)
canary_app = typer.Typer(help="Canary residents: synthetic records nobody should read.", no_args_is_help=True)



def _config(home: Path | None) -> Any:
    from pivault.vault.home import load

    return load(home)


def _db(cfg: Any, *, migrate: bool = False) -> Any:
    """The store; ``migrate``: one the command writes to, refused with schema steps pending
    (only `pivault migrate` upgrades a vault, after its backup)."""
    from pivault.store.db import Database
    from pivault.store.migrations import require_current

    db = Database(cfg.existing_store_url())
    if migrate:
        try:
            require_current(db)
        except BaseException:
            db.close()
            raise
    return db


_ALERT_ID = re.compile(r"al_[0-9a-f]{16}")


def _keyring(cfg: Any) -> Any:
    from pivault.crypto import Keyring, PassphraseProvider, passphrase_from_env_or_prompt

    return Keyring.open(cfg.keyring_path, PassphraseProvider(passphrase_from_env_or_prompt()))


def _current(db: Any, keyring: Any) -> None:
    """Refuse a keyring older than the store has seen (keyring.rollback), as opening a vault does."""
    from pivault.keys import seen

    seen.check(db, keyring)


def _settings(cfg: Any) -> Any:
    from pivault.detect.setup import DetectSettings

    return DetectSettings.from_home(cfg.home)


def _key_dir(cfg: Any) -> Path:
    from pivault.detect.setup import audit_key_dir

    return audit_key_dir(cfg.keyring_path, cfg.vault_id, _settings(cfg))


def _log(db: Any, keyring: Any, cfg: Any, *, anchored: bool = True) -> Any:
    """The vault's audit log for a command: its checkpoints go to the home's anchor as the writers' do."""
    from pivault.audit import AuditLog, load_writer

    return AuditLog(db, keyring, load_writer(_key_dir(cfg), keyring),
                    anchor=_settings(cfg).anchor if anchored else None)


def _when(text: str | None) -> float | None:
    """An ISO date or time (UTC unless it says otherwise), or an age such as 24h or 7d."""
    if text is None:
        return None
    from pivault.policy.tokens import parse_duration

    try:
        return time.time() - parse_duration(text)
    except ValueError:
        pass
    try:
        t = _dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValidationError("time.format", "a time is ISO 8601 (2026-05-01, 2026-05-01T08:00) "
                              "or an age (30m, 24h, 7d)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.UTC)
    return t.timestamp()


#: characters a terminal acts on or that reorder or hide text: C0 and C1 controls, bidirectional
#: overrides and isolates, zero-width and line separators, the byte order mark
_UNSHOWABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")


def _plain(value: object) -> str:
    """``value`` as one line that shows what it holds: the characters above escaped.

    Whoever can write to the store can put anything in an entry (its MAC breaks, but ``show``
    lists it): an escape sequence that clears the screen or recolours it, a line break that draws a
    made-up row, a right-to-left override that turns a name around.
    """
    return _UNSHOWABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", str(value))


def _table(rows: list[dict[str, Any]], cols: list[str]) -> None:
    if not rows:
        typer.echo("(none)")
        return
    shown = [{c: _plain(r.get(c, "")) for c in cols} for r in rows]
    widths = {c: max(len(c), *(len(r[c]) for r in shown)) for c in cols}
    typer.echo("  ".join(c.ljust(widths[c]) for c in cols))
    for r in shown:
        typer.echo("  ".join(r[c].ljust(widths[c]) for c in cols))


def _read_checkpoint(path: Path) -> Any:
    """An exported checkpoint; a file that is not one (not UTF-8, a JSON bomb) is one clear error."""
    from pivault.audit import AuditError, Checkpoint

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AuditError("not a pivault audit checkpoint file (not UTF-8 text)",
                         code="audit.checkpoint") from None
    return Checkpoint.from_json(text)


# -- audit -----------------------------------------------------------------------------------
@audit_app.command("verify")
@_cli
def audit_verify(
    home: HomeOpt = None,
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", help="A checkpoint exported earlier and kept elsewhere.")] = None,
    verifier_key: Annotated[Path | None, typer.Option(
        "--verifier-key",
        help="The auditor's key (default: audit-verifier.key in the audit key dir).")] = None,
    use_keyring: Annotated[bool, typer.Option(
        "--keyring/--no-keyring", help="Also check the head's encrypted chain key (needs the passphrase).")
    ] = True,
    anchor: Annotated[Path | None, typer.Option(
        "--anchor", help="The audit anchor to check the tail against, e.g. a copy kept on another host "
                         "(default: this home's, [audit] anchor).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Recompute the chain; name the first modified, deleted, inserted or reordered entry, and a tail
    rolled back behind the anchor kept outside the store."""
    from pivault.audit import load_verifier, verify

    cfg = _config(home)
    settings = _settings(cfg)
    passphrase = os.environ.get("PIVAULT_AUDIT_PASSPHRASE")
    verifier = load_verifier(_key_dir(cfg), verifier_file=verifier_key,
                             passphrase=passphrase.encode() if passphrase else None)
    cp = _read_checkpoint(checkpoint) if checkpoint else None
    keyring = _keyring(cfg) if use_keyring else None
    with _db(cfg) as db:
        if not db.table_exists("audit_entries"):
            raise PivaultError("this vault has no audit trail yet", code="audit.missing")
        if keyring is not None:
            _current(db, keyring)
        # a given file must be there: only the home's own may be missing (a vault older than anchors)
        if anchor is not None and not anchor.is_file():
            raise PivaultError(f"no audit anchor file at {anchor}", code="anchor.missing")
        report = verify(db, verifier, checkpoint=cp, keyring=keyring,
                        anchor=anchor if anchor is not None else settings.anchor,
                        anchor_required=settings.anchor_required or anchor is not None)
    if as_json:
        _json(report.to_dict())
    elif report.ok:
        typer.echo(f"audit chain intact: {report.checked} entries "
                   f"({report.first_seq}..{report.last_seq}), {report.checkpoints} signed checkpoints"
                   + (", matches the given checkpoint" if cp else "")
                   + (f", reaches the anchor's newest mark (entry {report.anchored_seq})"
                      if report.anchored_seq is not None else ""))
    else:
        at = f" at entry {report.first_bad}" if report.first_bad is not None else ""
        # without the anchor nothing was found broken, but the tail could not be checked as required
        what = "AUDIT CHAIN NOT VERIFIED" if report.problem == "anchor.missing" else "AUDIT CHAIN BROKEN"
        typer.echo(f"{what}{at} [{report.problem}]: {report.message}")
    if not as_json:
        for note in report.notes:
            typer.echo(f"note: {note}")
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("show")
@_cli
def audit_show(
    home: HomeOpt = None,
    principal: Annotated[str | None, typer.Option("--principal")] = None,
    operation: Annotated[str | None, typer.Option(
        "--operation", help="get, find, put, update, erase, …")] = None,
    outcome: Annotated[str | None, typer.Option(
        "--outcome", help="ok, not_found, denied, refused, …")] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO time or age (24h, 7d).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="ISO time or age.")] = None,
    request_id: Annotated[str | None, typer.Option("--request-id")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=LIMIT_MAX)] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Entries of the audit trail, in order, filtered: the latest LIMIT, or with --since the first LIMIT
    from that time."""
    from pivault.audit import entries

    cfg = _config(home)
    with _db(cfg) as db:
        if not db.table_exists("audit_entries"):
            raise PivaultError("this vault has no audit trail yet", code="audit.missing")
        got = [e.to_dict() for e in entries(db, principal=principal, operation=operation, outcome=outcome,
                                            since=_when(since), until=_when(until), request_id=request_id,
                                            limit=limit, newest=since is None)]
    if as_json:
        _json(got)
        return
    for e in got:
        ids = e["record_ids"]
        e["records"] = ",".join(ids[:3]) + (f" (+{len(ids) - 3})" if len(ids) > 3 else "")
        e["time"] = e["time"][:23]
    _table(got, ["seq", "time", "principal", "role", "purpose", "operation", "outcome", "count", "records"])
    altered = [str(e["seq"]) for e in got if e.get("malformed")]
    if altered:
        typer.echo(f"note: values no writer stores, altered in the store, in entry {', '.join(altered)}; "
                   "run `pivault audit verify`")


@audit_app.command("export-checkpoint")
@_cli
def audit_export_checkpoint(
    home: HomeOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="File to write (default: stdout).")] = None,
) -> None:
    """Sign a checkpoint at the newest entry and write it, to keep somewhere else (and to the anchor)."""
    cfg = _config(home)
    keyring = _keyring(cfg)
    with _db(cfg, migrate=True) as db:
        _current(db, keyring)
        cp = _log(db, keyring, cfg).checkpoint()
    if out is None:
        typer.echo(cp.to_json(), nl=False)
    else:
        out.write_text(cp.to_json(), encoding="utf-8")
        typer.echo(f"checkpoint at entry {cp.seq} written to {out}")


@audit_app.command("prune")
@_cli
def audit_prune(
    home: HomeOpt = None,
    keep_days: Annotated[int, typer.Option("--keep-days", help="Keep at least this many days (>= 1096).")
    ] = 1096,
    yes: Annotated[bool, typer.Option("--yes", help="Delete; without it, only say what would go.")] = False,
) -> None:
    """Delete entries older than the retention period, up to a signed checkpoint."""
    from pivault.audit import MIN_RETENTION_DAYS, RetentionPolicy, load_public, prunable, prune
    from pivault.policy.context import local_operator

    if keep_days < MIN_RETENTION_DAYS:
        # a bad argument (exit 2), said before the store is opened; the policy holds the same floor
        raise ValidationError("audit.retention", f"--keep-days is at least {MIN_RETENTION_DAYS}: audit "
                              "entries must be kept three years (PIPL art. 56)")
    policy = RetentionPolicy(keep_days=keep_days)
    cfg = _config(home)
    with _db(cfg, migrate=True) as db:
        if not yes:
            plan = prunable(db, policy, keys=load_public(_key_dir(cfg)))
            typer.echo(f"would delete {plan.deleted} entries (through entry {plan.through_seq}); "
                       "run again with --yes")
            return
        keyring = _keyring(cfg)
        _current(db, keyring)
        result = prune(_log(db, keyring, cfg), local_operator("audit"), policy)
    typer.echo(f"deleted {result.deleted} entries (through entry {result.through_seq})")


@audit_app.command("rebase-anchor")
@_cli
def audit_rebase_anchor(
    home: HomeOpt = None,
    yes: Annotated[bool, typer.Option("--yes", help="Re-base; without it, only say whether one is needed.")
    ] = False,
) -> None:
    """After the store was put back on purpose outside `pivault restore` (a point-in-time recovery, a
    snapshot): record it in the chain and let the anchor follow. `audit verify` names every re-base."""
    from pivault.audit import load_writer
    from pivault.audit.anchor import Anchor, settle, unreached
    from pivault.policy.context import local_operator

    cfg = _config(home)
    anchor = Anchor(_settings(cfg).anchor)
    with _db(cfg, migrate=True) as db:
        if not yes:
            behind = unreached(anchor.read(), db) if anchor.exists() else None
            if behind is None:
                typer.echo("the store's chain reaches the anchor's newest mark: no re-base is needed")
            else:
                typer.echo(f"the anchor marked entry {behind.seq}, which the store's chain no longer holds; "
                           "if the store was put back on purpose, run again with --yes (recorded in the "
                           "chain); otherwise it was rolled back: see docs/audit.md")
            return
        keyring = _keyring(cfg)
        _current(db, keyring)
        writer = load_writer(_key_dir(cfg), keyring)
        done = settle(_log(db, keyring, cfg, anchored=False), writer, anchor, local_operator("audit"))
    if done.rebased and done.superseded is not None:
        typer.echo(f"audit anchor re-based at entry {done.checkpoint.seq} ({done.operation}): it had marked "
                   f"entry {done.superseded.seq}, which the store's chain no longer holds")
    else:
        typer.echo(f"no re-base needed: the anchor marks entry {done.checkpoint.seq}")


@audit_app.command("init-keys")
@_cli
def audit_init_keys(
    home: HomeOpt = None,
    protect: Annotated[bool, typer.Option(
        "--protect-verifier", help="Encrypt the verifier key with $PIVAULT_AUDIT_PASSPHRASE.")] = False,
) -> None:
    """Create the audit signing and verifier keys beside the keyring."""
    from pivault.audit import create_audit_keys

    cfg = _config(home)
    secret = os.environ.get("PIVAULT_AUDIT_PASSPHRASE", "") if protect else ""
    if protect and not secret:
        raise ConfigError("set PIVAULT_AUDIT_PASSPHRASE to protect the verifier key", code="audit.keys")
    d = _key_dir(cfg)
    create_audit_keys(d, _keyring(cfg), data_dir=cfg.home, verifier_passphrase=secret.encode() or None)
    typer.echo(f"audit keys written to {d}\n"
               "move audit-verifier.key to the auditor: the writer never needs it")


# -- alerts ------------------------------------------------------------------------------------
@alerts_app.command("list")
@_cli
def alerts_list(
    home: HomeOpt = None,
    unacked: Annotated[bool, typer.Option("--unacked", help="Only alerts nobody acknowledged.")] = False,
    since: Annotated[str | None, typer.Option("--since", help="ISO time or age (24h, 7d).")] = None,
    rule: Annotated[str | None, typer.Option("--rule")] = None,
    severity: Annotated[str | None, typer.Option("--severity", help="info, warning or critical")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Alerts, newest first."""
    from pivault.detect import list_alerts
    from pivault.detect.alerts import SEVERITIES

    if severity is not None and severity not in SEVERITIES:
        # an unknown severity would list nothing, which reads as "no alerts"
        raise ValidationError("alerts.severity", "--severity is " + ", ".join(SEVERITIES[:-1])
                              + " or " + SEVERITIES[-1])
    cfg = _config(home)
    with _db(cfg, migrate=True) as db:
        got = list_alerts(db, unacked=unacked, since=_when(since), rule=rule, severity=severity, limit=limit)
    if as_json:
        _json(got)
        return
    for a in got:
        a["acked"] = "yes" if a["acked_at"] else ""
        a["evidence"] = json.dumps(a["evidence"], ensure_ascii=False)[:80]
        a["time"] = a["time"][:23]
    _table(got, ["alert_id", "time", "severity", "rule", "principal", "token_id", "acked", "evidence"])


@alerts_app.command("ack")
@_cli
def alerts_ack(
    alert_id: Annotated[str, typer.Argument(help="The alert's id (al_…).")],
    home: HomeOpt = None,
    note: Annotated[str, typer.Option("--note", help="What was found (no PI).")] = "",
) -> None:
    """Mark an alert as handled; the acknowledgement is in the audit trail.

    An alert acknowledged is one nobody looks at again: whoever quietly acked a canary's
    alarm would hide the read that tripped it, so the ack is recorded in the chain (in the
    same transaction), which takes the vault's passphrase.
    """
    from pivault.detect import ack_alert
    from pivault.detect.setup import build_guard
    from pivault.errors import NotFoundError
    from pivault.policy.context import local_operator

    if not _ALERT_ID.fullmatch(alert_id):
        raise ValidationError("alerts.id",
                              "an alert id is al_ and 16 hexadecimal digits (see `pivault alerts list`)")
    cfg = _config(home)
    keyring = _keyring(cfg)
    ctx = local_operator("administration")
    with _db(cfg, migrate=True) as db:
        _current(db, keyring)
        guard = build_guard(db, keyring, keyring_path=cfg.keyring_path, home=cfg.home)
        try:
            with db.transaction():
                try:
                    ack_alert(db, alert_id, by=ctx.principal, note=note)
                    outcome = "ok"
                except NotFoundError:
                    outcome = "not_found"
                guard.audit(ctx, "alerts.ack", [alert_id], outcome)
        finally:
            guard.close()
    if outcome != "ok":
        raise NotFoundError("no unacknowledged alert with this id", code="alert.not_found")
    typer.echo(f"acknowledged {alert_id}")


# -- canaries ----------------------------------------------------------------------------------
@canary_app.command("seed")
@_cli
def canary_seed(
    count: Annotated[int, typer.Argument(min=1, max=100_000, help="How many canary residents to add.")],
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add synthetic residents that look like everyone else; reading one trips an alarm."""
    from pivault.detect import seed
    from pivault.detect.setup import build_guard
    from pivault.policy.context import local_operator
    from pivault.vault import Vault

    cfg = _config(home)
    keyring = _keyring(cfg)
    with _db(cfg, migrate=True) as db:
        guard = build_guard(db, keyring, keyring_path=cfg.keyring_path, home=cfg.home)
        vault = Vault(db, keyring, guard=guard, config=cfg)
        made = seed(vault, count, ctx=local_operator("administration"), registry=guard.canaries)
    if as_json:
        _json({"seeded": len(made)})
    else:
        typer.echo(f"seeded {len(made)} canary residents; which records they are is kept only in the "
                   "encrypted registry")


def register(app: typer.Typer) -> None:
    """Attach ``audit``, ``alerts`` and ``canary`` to the main command line."""
    app.add_typer(audit_app, name="audit")
    app.add_typer(alerts_app, name="alerts")
    app.add_typer(canary_app, name="canary")
