"""Vault commands: init, import, find, get, erase, stats, migrate, rejects show.

A thin skin over :class:`pivault.vault.Vault`, named like its methods. Output
is masked unless ``--reveal``; ``--json`` prints machine-readable output.
Errors are one line on stderr (``error[code]: message`` and a hint), exit
status 2 for bad input and 1 for everything else, never a traceback and
never a value from a record.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from pivault.cli.common import LIMIT_MAX, HomeOpt, JsonOpt, check_purpose, run_cli
from pivault.cli.common import print_json as _print_json
from pivault.errors import ValidationError

__all__ = [
    "erase",
    "find",
    "get",
    "import_",
    "init",
    "migrate",
    "read_limit_line",
    "rejects_app",
    "rejects_show",
    "run_cli",
    "scrub",
    "stats",
]

P = ParamSpec("P")
R = TypeVar("R")

RevealOpt = Annotated[bool, typer.Option(
    "--reveal", help="Show full values instead of masks (audited).")]


def _open(home: Path | None) -> Any:
    from pivault.vault import Vault

    return Vault.open(home)


def _ctx(purpose: str, reveal: bool = False) -> Any:
    from pivault.policy.context import local_operator

    return local_operator(purpose, reveal=reveal)


# -- init / migrate ---------------------------------------------------------------

@run_cli
def init(
    home: HomeOpt = None,
    store: Annotated[str | None, typer.Option(
        "--store", help="Store URL: sqlite:///PATH (default <home>/vault.db) or "
                        "postgresql://USER@HOST:PORT/DB.")] = None,
    keyring: Annotated[Path | None, typer.Option(
        "--keyring", help="Where to write the keyring; must be outside the home directory "
                          "(default ~/.config/pivault/keyrings/<vault-id>.keyring).")] = None,
    expected_population: Annotated[int, typer.Option(
        "--expected-population", help="Residents the vault is sized for (sets blind-index "
                                       "length).")] = 10_000_000,
    record_key_store: Annotated[str | None, typer.Option(
        "--record-key-store", help="Where the per-record keys go: sqlite:///PATH or a PostgreSQL URL of "
                                   "another database or schema than the data's (default: beside the "
                                   "keyring). The vault opens only with this store from then on.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a vault: data directory, keyring (kept apart from it), record-key store and schema."""
    from pivault.crypto import passphrase_from_env_or_prompt
    from pivault.crypto.blind import MIN_POPULATION
    from pivault.crypto.keyring import MAX_POPULATION
    from pivault.vault import home as _home

    if not MIN_POPULATION <= expected_population <= MAX_POPULATION:
        # a bad argument (exit 2), said before the passphrase is asked for or anything is made
        raise ValidationError("keyring.population", f"--expected-population is between "
                              f"{MIN_POPULATION} and {MAX_POPULATION:,}")
    passphrase = passphrase_from_env_or_prompt("New keyring passphrase: ", confirm=True)
    cfg = _home.init(home, passphrase=passphrase, store_url=store, keyring_path=keyring,
                     expected_population=expected_population, record_key_store=record_key_store)
    from pivault.store.db import parse_url

    info = {"home": str(cfg.home), "vault_id": cfg.vault_id, "keyring": str(cfg.keyring_path),
            "store": parse_url(cfg.store_url).redacted,
            "expected_population": cfg.expected_population, "vault_read_limit": cfg.vault_budget}
    if json_out:
        _print_json(info)
        return
    typer.echo(f"created vault {cfg.vault_id}")
    typer.echo(f"  home:    {cfg.home}")
    typer.echo(f"  store:   {info['store']}")
    typer.echo(f"  keyring: {cfg.keyring_path}")
    typer.echo(read_limit_line(cfg))
    typer.echo("Back up the keyring apart from the data, and keep the passphrase: without both "
               "the data cannot be decrypted.")


def read_limit_line(cfg: Any) -> str:
    """What a new vault lets everyone together read, and where to change it: said when it is made,
    so that the first refusal for the vault-wide limit is no surprise."""
    b = cfg.vault_budget
    return (f"  read limit, all principals together: {b['records_per_minute']:,} a minute, "
            f"{b['records_per_hour']:,} an hour, {b['records_per_day']:,} a day "
            f"([detect.vault] in {cfg.config_path}; sized for {cfg.expected_population:,} residents)")


@run_cli
def migrate(home: HomeOpt = None, json_out: JsonOpt = False) -> None:
    """Bring the store's schema up to date (back it up first)."""
    from pivault.store.db import Database
    from pivault.store.migrations import migrate as _migrate
    from pivault.vault import home as _home

    cfg = _home.load(home)
    with Database(cfg.existing_store_url()) as db:  # a missing store is not made anew, empty
        done = _migrate(db)
    if json_out:
        _print_json({"applied": done})
    elif done:
        typer.echo("applied: " + ", ".join(done))
    else:
        typer.echo("schema is up to date")


# -- import -------------------------------------------------------------------------

def _progress_printer(quiet: bool) -> tuple[Any, Callable[[Any], None] | None]:
    """A Rich progress bar on a terminal; nothing otherwise."""
    if quiet or not sys.stderr.isatty():
        return None, None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(bar_width=16),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[rows]:,} rows {task.fields[rate]:,.0f}/s"),
        TextColumn("{task.fields[rejected]:,} rej"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(compact=True),
        console=Console(stderr=True), transient=False)
    tasks: dict[str, TaskID] = {}
    import time

    starts: dict[str, tuple[float, int]] = {}

    def update(p: Any) -> None:
        if p.file not in tasks:
            tasks[p.file] = bar.add_task(p.file, total=p.total, rows=0, rate=0.0, rejected=0)
            starts[p.file] = (time.monotonic(), p.read)
        t0, r0 = starts[p.file]
        el = max(time.monotonic() - t0, 1e-6)
        bar.update(tasks[p.file], completed=p.done, total=p.total, rows=p.read,
                   rate=(p.read - r0) / el, rejected=p.rejected)

    return bar, update


@run_cli
def import_(
    files: Annotated[list[Path], typer.Argument(help="CSV/TSV, JSON Lines or Parquet files.")],
    home: HomeOpt = None,
    map_: Annotated[list[str] | None, typer.Option(
        "--map", help="field=column pairs, e.g. name=姓名,id_number=身份证号 (repeatable).")] = None,
    ignore: Annotated[list[str] | None, typer.Option(
        "--ignore", help="A column to leave out (repeatable).")] = None,
    encoding: Annotated[str | None, typer.Option(
        "--encoding", help="Text encoding (default: UTF-8 if the first MiB is, else GB18030).")] = None,
    on_duplicate: Annotated[str, typer.Option(
        "--on-duplicate", help="skip | update | reject rows whose ID number is already known.")] = "skip",
    workers: Annotated[int | None, typer.Option(
        "--workers", help="Worker processes, 0 to 64 (default: by file size; 0 = one process).")] = None,
    chunk_size: Annotated[int | None, typer.Option(
        "--chunk-size", help="Rows committed per transaction (default 10,000). Smaller chunks hold less"
        " memory on large SQLite vaults and import more slowly (docs/import.md).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Import residents; bad rows go to the reject table. Safe to interrupt and rerun."""
    from pivault.vault.imports import WORKERS_LIMIT
    from pivault.vault.mapping import parse_mapping

    mapping = parse_mapping(map_ or [])
    if workers is not None and not 0 <= workers <= WORKERS_LIMIT:
        raise ValidationError("import.workers", f"--workers is between 0 and {WORKERS_LIMIT} "
                              "(0 = one process)")
    if on_duplicate not in ("skip", "update", "reject"):
        raise ValidationError("import.on_duplicate", "--on-duplicate is skip, update or reject")
    if chunk_size is not None and not 1 <= chunk_size <= 1_000_000:
        raise ValidationError("import.chunk_size", "--chunk-size is between 1 and 1,000,000 rows")
    bar, update = _progress_printer(quiet or json_out)
    with _open(home) as vault:
        if bar is not None:
            with bar:
                summary = vault.import_files(files, ctx=_ctx("import"), mapping=mapping,
                                             ignore=ignore or (), encoding=encoding,
                                             on_duplicate=on_duplicate,
                                             workers=workers, progress=update, chunk_size=chunk_size)
        else:
            summary = vault.import_files(files, ctx=_ctx("import"), mapping=mapping,
                                         ignore=ignore or (), encoding=encoding,
                                         on_duplicate=on_duplicate,
                                         workers=workers, chunk_size=chunk_size)
    if json_out:
        _print_json(summary.to_dict())
        return
    if quiet:
        return
    for f in summary.files:
        if f.status == "already_imported":
            typer.echo(f"{f.file}: already imported (batch {f.batch_id}): nothing to do")
        head = f"{f.file}: read {f.read:,} = imported {f.imported:,} + rejected {f.rejected:,}" \
               f" + duplicates {f.duplicates:,}"
        if f.updated:
            head += f" ({f.updated:,} updated existing records)"
        typer.echo(head + ("" if f.reconciles else "  [DOES NOT RECONCILE]"))
        if f.status == "resumed":
            typer.echo(f"  resumed after row {f.resumed_from:,}")
        if f.status != "already_imported" and f.seconds > 0:
            typer.echo(f"  {f.rows_per_second:,.0f} rows/s with {f.workers or 1} "
                       f"process{'es' if f.workers > 1 else ''}")
        if f.ignored_columns:
            typer.echo("  columns left out: " + ", ".join(f.ignored_columns))
        if f.reject_codes:
            typer.echo("  rejects: " + ", ".join(f"{c} {n:,}" for c, n in f.reject_codes.items()))
            typer.echo(f"  see them with: pivault rejects show --batch {f.batch_id}")


# -- lookups ------------------------------------------------------------------------

def _print_records(records: list[dict[str, Any]], json_out: bool) -> None:
    if json_out:
        _print_json(records)
        return
    if not records:
        typer.echo("no matching record")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=True, header_style="bold")
    cols = list(records[0])
    for c in cols:
        table.add_column(c)
    for r in records:
        table.add_row(*("" if r[c] is None else str(r[c]) for c in cols))
    Console().print(table)


@run_cli
def find(
    home: HomeOpt = None,
    id_number: Annotated[str | None, typer.Option("--id-number", help="Resident ID number.")] = None,
    mobile: Annotated[str | None, typer.Option("--mobile", help="Mobile number.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Name (with --birth-date).")] = None,
    birth_date: Annotated[str | None, typer.Option(
        "--birth-date", help="Birth date YYYY-MM-DD (with --name).")] = None,
    purpose: Annotated[str, typer.Option("--purpose", help="Why you look (audited).")] = "lookup",
    reveal: RevealOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Find residents by ID number, mobile, or name and birth date (exact matches)."""
    check_purpose(purpose)
    with _open(home) as vault:
        found = vault.find(id_number=id_number, mobile=mobile, name=name, birth_date=birth_date,
                           ctx=_ctx(purpose, reveal))
    _print_records(found, json_out)


@run_cli
def get(
    record_id: Annotated[str, typer.Argument(help="The record id (r_…).")],
    home: HomeOpt = None,
    purpose: Annotated[str, typer.Option("--purpose", help="Why you look (audited).")] = "lookup",
    reveal: RevealOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Show one record."""
    check_purpose(purpose)
    with _open(home) as vault:
        rec = vault.get(record_id, ctx=_ctx(purpose, reveal))
    _print_records([rec], json_out)


@run_cli
def erase(
    record_id: Annotated[str, typer.Argument(help="The record id (r_…).")],
    home: HomeOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Erase a record: its cells zeroed and its key destroyed (then run pivault scrub; see docs)."""
    if not yes:
        if not sys.stdin.isatty():
            raise ValidationError("erase.confirm", "erasing needs confirmation: pass --yes")
        typer.confirm(f"Erase record {record_id}? This cannot be undone", abort=True)
    with _open(home) as vault:
        vault.erase(record_id, ctx=_ctx("erasure"))
        purged = not vault.purge_pending
    if json_out:
        _print_json({"erased": record_id, "purged": purged})
    else:
        typer.echo(f"erased {record_id}")
    if not purged:
        typer.echo("warning: another process was reading the store (a backup, an export, a long read), so "
                   "the erased record's bytes are still in the files, as ciphertext whose key is gone; "
                   "run `pivault scrub` once it has finished (a scheduled `pivault scrub --only-if-erased` "
                   "does it)", err=True)


@run_cli
def scrub(home: HomeOpt = None, json_out: JsonOpt = False,
          only_if_erased: Annotated[bool, typer.Option(
              "--only-if-erased",
              help="do nothing unless a record was erased since the last scrub (for a schedule)")] = False,
          ) -> None:
    """Rewrite the store's files so that no byte of an erased record is left in them.

    An erase zeroes the record's cells at once; copies of them that SQLite's page rebuilds
    left in unallocated space go only when the file is rewritten. This takes as long as
    copying the store, needs as much free disk, and holds its write lock meanwhile (a running
    service refuses requests after 2 s of it: run it at a quiet hour). On a schedule, use
    --only-if-erased: a night without erasures then costs nothing.
    """
    from pivault.errors import PivaultError
    from pivault.vault import meta

    with _open(home) as vault:
        erased, _ = meta.erasures_since_scrub(vault.db)
        if only_if_erased and not erased:
            if json_out:
                _print_json({"scrubbed": False, "erasures_behind_it": 0})
            else:
                typer.echo("nothing to scrub: no record was erased since the last scrub")
            return
        done = vault.store.scrub()
        if done:
            meta.scrubbed(vault.db, erased)
    if not done:
        raise PivaultError("the scrub could not finish: another connection was reading an older "
                           "snapshot", code="store.busy", hint="run pivault scrub again")
    if json_out:
        _print_json({"scrubbed": True, "erasures_behind_it": erased})
    else:
        typer.echo(f"scrubbed: the store and the record-key store were rewritten whole "
                   f"({erased:,} erased records since the last scrub)")


@run_cli
def stats(home: HomeOpt = None, json_out: JsonOpt = False) -> None:
    """Counts, sizes and keys in use — never a value."""
    with _open(home) as vault:
        out = vault.stats(ctx=_ctx("administration"))
    if json_out:
        _print_json(out)
        return
    s = out["store"]
    typer.echo(f"vault {out['vault_id']} ({s['backend']})")
    typer.echo(f"  records:       {s['rows']:,}")
    typer.echo("  index entries: " + ", ".join(f"{k} {v:,}" for k, v in s["index_entries"].items()))
    typer.echo(f"  bytes on disk: {s['bytes_on_disk']:,}")
    imp = out["imports"]
    typer.echo(f"  imports:       {imp['batches']} batches ({imp['batches_done']} done), "
               f"{imp['rejects']:,} rejected rows")
    era = out["erasure"]
    last = (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(era["last_scrub"]))
            if era["last_scrub"] is not None else "never")
    hint = " (run pivault scrub)" if era["erased_since_scrub"] and s["backend"] == "sqlite" else ""
    typer.echo(f"  erased since the last scrub: {era['erased_since_scrub']:,}{hint}; last scrub: {last}")
    for k in out["keys"]:
        typer.echo(f"  key {k['keyset']}: primary {k['primary_key_id']}, ids {k['key_ids']}")
    if out.get("field_key_ids_in_use"):
        typer.echo("  field key ids in use: " + ", ".join(
            f"{k} ({n:,} records)" for k, n in out["field_key_ids_in_use"].items()))


# -- rejects -------------------------------------------------------------------------

rejects_app = typer.Typer(help="Rows an import could not accept.", no_args_is_help=True)


@rejects_app.command("show")
@run_cli
def rejects_show(
    home: HomeOpt = None,
    batch: Annotated[str | None, typer.Option("--batch", help="Only this import batch.")] = None,
    limit: Annotated[int, typer.Option(
        "--limit", min=1, max=LIMIT_MAX, help="At most this many rows.")] = 1000,
    reveal: RevealOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Rejected rows: line, error code, and the row (masked unless --reveal)."""
    with _open(home) as vault:
        rows = vault.rejects(ctx=_ctx("import review", reveal), batch_id=batch, limit=limit)
    if json_out:
        _print_json(rows)
        return
    if not rows:
        typer.echo("no rejected rows")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=True, header_style="bold")
    # the batch id whole, to be copied into --batch; the row's cells wrap instead
    table.add_column("batch", no_wrap=True, min_width=max(len(r["batch_id"]) for r in rows))
    for c in ("line", "code", "field", "row"):
        table.add_column(c)
    for r in rows:
        cells = "; ".join(f"{k}={v}" for k, v in r["cells"].items() if v not in (None, ""))
        table.add_row(r["batch_id"], str(r["line"]), r["code"], r["field"] or "", cells)
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Attach these commands to the main application."""
    app.command("init")(init)
    app.command("import")(import_)
    app.command("find")(find)
    app.command("get")(get)
    app.command("erase")(erase)
    app.command("scrub")(scrub)
    app.command("stats")(stats)
    app.command("migrate")(migrate)
    app.add_typer(rejects_app, name="rejects")
