"""Export and leak commands: ``pivault export …`` and ``pivault leak …``.

A thin skin over :mod:`pivault.leak` (``exports``, ``check``, ``report``),
named like its functions. Who runs a command is the holder of ``--token``
(or ``$PIVAULT_TOKEN``): its principal and role decide, so the two-person rule
of exports holds at the command line too. Without a token the caller is the
local operator, who may request and fetch but never approve (nor through a
token it issued: see :func:`pivault.leak.exports.approve`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pivault.cli.common import HomeOpt, JsonOpt, check_purpose, err, run_cli
from pivault.cli.common import print_json as _print_json

__all__ = ["export_app", "leak_app", "register"]

export_app = typer.Typer(help="Approved, traceable exports (two-person rule, canaries).",
                         no_args_is_help=True)
leak_app = typer.Typer(help="Leak response: check a dump, write the breach report.", no_args_is_help=True)

TokenOpt = Annotated[str | None, typer.Option(
    "--token", envvar="PIVAULT_TOKEN", show_envvar=True,
    help="Bearer token of the principal running the command (default: the local operator). Prefer "
         "$PIVAULT_TOKEN: a command line is visible to every user of the machine (ps).")]


def _open(home: Path | None) -> Any:
    from pivault.vault import Vault

    return Vault.open(home)


def _ctx(vault: Any, token: str | None, purpose: str) -> Any:
    """The caller: the token's principal and role, or the local operator."""
    from pivault.policy.context import AccessContext, local_operator

    if not token:
        return local_operator(purpose)
    from pivault.policy.tokens import TokenStore

    info = TokenStore(vault.db).verify(token)
    return AccessContext(principal=info.principal, role=info.role, purpose=purpose,
                         token_id=info.token_id, source="cli")


# -- export ---------------------------------------------------------------------------

@export_app.command("request")
@run_cli
def export_request(
    recipient: Annotated[str, typer.Option("--recipient", help="Who receives the export.")],
    purpose: Annotated[str, typer.Option("--purpose", help="Why (recorded and audited).")],
    fields: Annotated[str, typer.Option("--fields", help="Comma-separated: name,id_number,mobile,"
                                                         "address,notes,gender,birth_date,region_code")],
    selection: Annotated[list[str], typer.Option(
        "--selection", help="region=31,3201 | born=1980-01-01..1989-12-31 | ids=r_…,r_… | ids=@FILE "
                            "(repeat to combine)")],
    home: HomeOpt = None, token: TokenOpt = None, json_out: JsonOpt = False,
) -> None:
    """Request an export; another principal with an approver role must approve it.

    The selection is counted now: the approver sees that count and approves those records.
    """
    from pivault.leak import exports

    check_purpose(purpose)
    with _open(home) as vault:
        info = exports.request(vault, exports.Selection.parse(selection), recipient=recipient,
                               purpose=purpose, fields=fields.split(","),
                               ctx=_ctx(vault, token, purpose))
    if json_out:
        _print_json(info.to_dict())
    else:
        typer.echo(f"export {info.export_id} requested: {info.selected} records; awaiting approval by "
                   f"another principal until {exports.when(info.expires_at)}")


@export_app.command("approve")
@run_cli
def export_approve(
    export_id: str,
    max_records: Annotated[int | None, typer.Option(
        "--max-records", min=1, help="Refuse to approve if the export holds more records than this "
                                     "(the count `export list` showed).")] = None,
    home: HomeOpt = None, token: TokenOpt = None, json_out: JsonOpt = False,
) -> None:
    """Approve another principal's export request (approver or dpo role) for the records it was
    counted with; it must then be fetched before the approval lapses."""
    from pivault.leak import exports

    with _open(home) as vault:
        info = exports.approve(vault, export_id, ctx=_ctx(vault, token, "export approval"),
                               max_records=max_records)
    if json_out:
        _print_json(info.to_dict())
    else:
        typer.echo(f"export {info.export_id} approved by {info.approver}: {info.selected} records for "
                   f"{info.recipient}; to be fetched by {exports.when(info.expires_at)}")


@export_app.command("refuse")
@run_cli
def export_refuse(export_id: str, home: HomeOpt = None, token: TokenOpt = None) -> None:
    """Refuse an export request."""
    from pivault.leak import exports

    with _open(home) as vault:
        info = exports.refuse(vault, export_id, ctx=_ctx(vault, token, "export approval"))
    typer.echo(f"export {info.export_id} refused by {info.approver}")


@export_app.command("fetch")
@run_cli
def export_fetch(
    export_id: str,
    out: Annotated[Path, typer.Option("--out", help="File to write (.csv, .jsonl or .parquet).")],
    fmt: Annotated[str | None, typer.Option(
        "--format", help="csv, jsonl or parquet (default: by extension).")] = None,
    home: HomeOpt = None, token: TokenOpt = None, json_out: JsonOpt = False,
) -> None:
    """Write an approved export (once), with its canaries mixed in."""
    from pivault.leak import exports

    with _open(home) as vault:
        info0 = exports.get_export(vault.db, export_id)
        info = exports.fetch(vault, export_id, out, fmt=fmt, ctx=_ctx(vault, token, info0.purpose))
    if json_out:
        _print_json(info.to_dict())
    else:
        typer.echo(f"export {info.export_id}: {info.rows} records for {info.recipient} written to {out.name}")
        if info.left_out:
            typer.echo(f"  {info.left_out} approved records were left out: erased or corrected out of the "
                       "selection since the request")


@export_app.command("recover")
@run_cli
def export_recover(
    export_id: Annotated[str | None, typer.Argument(
        help="One export (default: every export whose fetch runs or was interrupted).")] = None,
    home: HomeOpt = None, token: TokenOpt = None, json_out: JsonOpt = False,
) -> None:
    """Recover export fetches killed part-way (kill -9, power lost): remove the temporary file
    they left (PI in full) and approve the export again, to be fetched once.

    A fetch still running is left alone, and a file that got its name is never undone. The
    export's requester recovers their own (`export fetch` does so first); a dpo or the local
    operator recovers any, or all. Exits 1 when a fetch could not be recovered from here.
    """
    from pivault.leak import exports

    with _open(home) as vault:
        done = exports.recover(vault, export_id, ctx=_ctx(vault, token, "export recovery"))
    if json_out:
        _print_json([r.to_dict() for r in done])
    else:
        if not done:
            typer.echo("no export fetch to recover")
        for r in done:
            typer.echo(f"export {r.export_id}: {r.outcome}, now {r.status}: {r.message}")
            if r.part and r.file != "removed":
                # the operator's own file name, for whoever removes it where the fetch ran
                typer.echo(f"  temporary file: {r.part}" + (f" (host {r.host})" if r.host else ""))
    if any(r.outcome in ("left", "refused") for r in done):
        raise typer.Exit(1)


@export_app.command("list")
@run_cli
def export_list(home: HomeOpt = None, json_out: JsonOpt = False) -> None:
    """Every export: status, requester, approver, recipient, counts, deadline (no PI)."""
    from pivault.leak import exports

    with _open(home) as vault:
        rows = [e.to_dict() for e in exports.list_exports(vault.db)]
    if json_out:
        _print_json(rows)
        return
    for r in rows:
        n = r["rows"] if r["rows"] is not None else "-"
        # the second person decided either way: "approved by" on a refused export would misread
        decided = "refused by" if r["status"] == "refused" else "approved by"
        # what the approver approves: the records the selection held when requested
        selected = r["selected"] if r["selected"] is not None else "-"
        step = {"requested": "  decide by ", "approved": "  fetch by ", "expired": "  expired "}
        due = (step[r["status"]] + exports.when(r["expires_at"])
               if r["status"] in step and r["expires_at"] else "")
        if r["status"] == "fetching" or r["fetch_part"]:
            # a fetch running, or one killed part-way whose temporary file (PI in full) is left
            due += (f"  fetch on host {r['fetch_host'] or '?'}: if its process ended, "
                    f"`pivault export recover {r['export_id']}`")
        typer.echo(f"{r['export_id']}  {r['status']:<9}  {r['recipient']}  requested by {r['requester']}"
                   f"  records {selected}  {decided} {r['approver'] or '-'}  rows {n}{due}")


# -- leak -------------------------------------------------------------------------------

@leak_app.command("check")
@run_cli
def leak_check(
    dumps: Annotated[list[Path], typer.Argument(help="Dump files (CSV/TSV, JSON, SQL, xlsx, Parquet; "
                                                     ".gz/.zip).")],
    max_line_mib: Annotated[int, typer.Option("--max-line-mib", help="Longest line or row to read.")] = 16,
    workers: Annotated[int | None, typer.Option(
        "--workers", help="Matching processes for large dumps (default: up to 4, by CPU count).")] = None,
    home: HomeOpt = None, token: TokenOpt = None, json_out: JsonOpt = False,
) -> None:
    """Is this dump ours, whom does it affect, what was exposed, where did it leak from?"""
    from pivault.leak.check import check

    with _open(home) as vault:
        res = check(vault, dumps, ctx=_ctx(vault, token, "leak investigation"), max_line_mib=max_line_mib,
                    workers=workers)
    if json_out:
        _print_json(res.to_dict())
        return
    typer.echo(f"case {res.case_id}: {res.rows_read} rows read, {res.rows_matched} matched, "
               f"{res.residents_matched} residents of this vault affected "
               f"(chance matches expected: {res.expected_false:.1f})")
    for t in res.tables:
        cols = ", ".join(f"{c['column']}:{c['kind']}({c['confidence']})" for c in t["columns"] if c["kind"])
        typer.echo(f"  {t['source']} [{t['format']}, {t['encoding'] or '-'}]: {t['rows']} rows; "
                   + (cols or t["message"] or ""))
    for e in res.errors:
        typer.echo(f"  problem in {e['file']}: {e['message']}")
    if res.errors:
        # the rows read were checked; what could not be read was not, and may hold anyone
        err(f"warning: {len(res.errors)} dump file(s) not read in full (listed above); the result covers "
            "only the rows read")
    if res.record_ids_not_held:
        typer.echo(f"  record ids the vault does not hold: {res.record_ids_not_held} rows (erased "
                   "residents', or made up; not counted as residents)")
    typer.echo(f"  fields exposed: {', '.join(res.fields_exposed) or 'none'}")
    found = {k: v["found"] for k, v in res.export_canaries.items() if v["found"]}
    typer.echo(f"  canaries: exports {found or 'none'}; vault {res.vault_canaries.get('found', 0)}"
               f" ({res.vault_canaries.get('never_served', 0)} never served)")
    if res.attribution:
        typer.echo(f"  attribution: {res.attribution.summary}")
        for f in res.attribution.findings:
            typer.echo(f"    {f.kind} {f.source_id}: {f.strength}{'' if f.named else ' (not named)'}")


@leak_app.command("report")
@run_cli
def leak_report(
    case_id: str,
    out: Annotated[Path, typer.Option("--out", help="Directory for report.html and report.json.")],
    contact: Annotated[str, typer.Option("--contact", help="Contact point for residents and regulators.")]
    = "the data protection officer of the data handler",
    measure: Annotated[list[str] | None, typer.Option("--measure", help="A measure taken (repeatable).")]
    = None,
    home: HomeOpt = None, token: TokenOpt = None,
) -> None:
    """Write the breach report (HTML with charts, and its JSON twin) for a case."""
    from pivault.leak.report import write_report

    with _open(home) as vault:
        ctx = _ctx(vault, token, "breach notification")
        html_path, json_path = write_report(vault, case_id, out, ctx=ctx, contact=contact,
                                            measures=measure or ())
    typer.echo(f"wrote {html_path} and {json_path}")


@leak_app.command("affected")
@run_cli
def leak_affected(case_id: str, home: HomeOpt = None, token: TokenOpt = None) -> None:
    """Record ids of the residents a case affects (a notifying role only; audited)."""
    from pivault.leak.check import affected

    with _open(home) as vault:
        ids = affected(vault, case_id, ctx=_ctx(vault, token, "breach notification"))
    for rid in ids:
        typer.echo(rid)


def register(app: typer.Typer) -> None:
    """Attach ``export`` and ``leak`` to the main application."""
    app.add_typer(export_app, name="export")
    app.add_typer(leak_app, name="leak")
