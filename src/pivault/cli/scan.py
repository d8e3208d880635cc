"""``pivault scan``: find personal information and secrets in files and database tables.

A thin skin over :mod:`pivault.scan`; values are always shown masked.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from pivault.cli.common import err as _err
from pivault.cli.common import run_cli
from pivault.errors import ValidationError
from pivault.scan import (
    KINDS,
    ScanIssue,
    ScanOptions,
    ScanReport,
    parse_fail_on,
    render_table,
    scan_database,
    scan_paths,
    to_json,
    to_sarif,
)
from pivault.scan.findings import UNREAD
from pivault.scan.output import dumps, path_shower, shown

#: issue codes that mean an input was not read at all, not merely in part
_NOT_READ = frozenset({"unreadable", "not_regular", "symlink_loop", "database", "error"})


def _not_read(
    report: ScanReport, paths: list[Path], db: str | None, tables: list[str] | None = None
) -> list[ScanIssue]:
    """Issues of the inputs named on the command line that left them unread.

    A file, directory or database given by name that could not be opened is
    not a clean result: nothing is known of what it holds, and neither is it
    of a table named with ``--table`` that could not be read (a misspelt
    name, no privilege). Issues of files inside a directory, or of one table
    of a database whose tables were listed (``db#table``), leave the input
    read in part: they are listed in the report.
    """
    from pivault.scan.database import source_name

    named = {str(p) for p in paths}
    table_of: str | None = None
    if db is not None:
        named.add(source_name(db))
        if tables:
            # every table scanned was named (schema resolved on the search path when not given)
            table_of = source_name(db) + "#"
    return [
        i
        for i in report.issues
        if i.code in _NOT_READ
        and (i.source in named or (table_of is not None and i.source.startswith(table_of)))
    ]


@run_cli
def scan(
    paths: list[Path] | None = typer.Argument(None, help="Files and directories to scan (recursively)."),
    db: str | None = typer.Option(None, "--db", help="Database URL: sqlite:///file.db or postgresql://…"),
    table: list[str] | None = typer.Option(
        None, "--table", help="Only this table (repeatable; schema.table)."
    ),
    full: bool = typer.Option(False, "--full", help="Read every row of each table (default: a sample)."),
    sample: int = typer.Option(1000, "--sample", min=1, help="Rows sampled per table."),
    include: list[str] | None = typer.Option(
        None, "--include", help="Only files matching this glob (repeatable)."
    ),
    exclude: list[str] | None = typer.Option(
        None, "--exclude", help="Skip files matching this glob (repeatable)."
    ),
    gitignore: bool = typer.Option(False, "--gitignore", help="Skip what .gitignore files ignore."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    sarif: Path | None = typer.Option(None, "--sarif", help="Also write a SARIF 2.1.0 report to this file."),
    fail_on: list[str] | None = typer.Option(
        None,
        "--fail-on",
        help="KIND:COUNT: exit 1 when more than COUNT findings of KIND (or 'any'), or inputs left "
             "unread or read in part ('unread': encrypted or damaged archives, unknown encodings) "
             "(repeatable).",
    ),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="Worker processes (default: all cores)."
    ),
    kind: list[str] | None = typer.Option(
        None, "--kind", help=f"Detect only these kinds: {', '.join(KINDS)}."
    ),
    reveal_paths: bool = typer.Option(
        False, "--reveal-paths",
        help="Show file and member names whole, even where they hold an ID number, mobile or other "
             "value (masked by default: the report then carries those values).",
    ),
    min_confidence: float = typer.Option(
        0.5, "--min-confidence", min=0.0, max=1.0, help="Report findings at or above this confidence."
    ),
) -> None:
    """Find personal information and secrets in files and database tables (values shown masked)."""
    err = Console(stderr=True)
    if not paths and not db:
        raise ValidationError("scan.usage", "nothing to scan: give PATH… to scan files, "
                              "or --db URL to scan a database",
                              hint="pivault scan ./share, or pivault scan --db sqlite:///app.db")
    try:
        limits = parse_fail_on(fail_on or [])
    except ValueError as e:
        raise ValidationError("scan.fail_on", str(e)) from None
    try:
        options = ScanOptions(
            kinds=frozenset(kind) if kind else frozenset(KINDS),
            min_confidence=min_confidence,
            include=tuple(include or ()),
            exclude=tuple(exclude or ()),
            gitignore=gitignore,
            workers=workers or os.cpu_count() or 1,
            db_full=full,
            db_sample=sample,
        )
    except ValueError as e:
        raise ValidationError("scan.kind", str(e)) from None
    unscanned = sorted(k for k in limits if k in KINDS and k not in options.kinds)
    if unscanned:
        # a gate on a kind that is not looked for can never fail: it would pass with PI present
        raise ValidationError("scan.fail_on", f"--fail-on {', '.join(unscanned)}: not a kind scanned "
                              f"(--kind {' --kind '.join(sorted(options.kinds))})",
                              hint="add --kind for it, or drop the --fail-on")
    report = ScanReport()
    if paths:
        report = scan_paths([str(p) for p in paths], options)
    if db:
        try:
            report.merge(scan_database(db, table or None, full=full, sample=sample, options=options))
        except ValueError as e:
            raise ValidationError("scan.database", str(e)) from None
    if sarif is not None:
        sarif.write_text(dumps(to_sarif(report, reveal_paths=reveal_paths)), encoding="utf-8")
    if as_json:
        sys.stdout.write(dumps(to_json(report, reveal_paths=reveal_paths)) + "\n")
    else:
        render_table(report, Console(), reveal_paths=reveal_paths)
    path = path_shower(reveal_paths)
    over = report.exceeded(limits)
    for k, n, limit in over:
        what = "input(s) not read or read in part" if k == UNREAD else "finding(s)"
        err.print(f"fail-on: {n} {k} {what}, more than {limit}", markup=False)
    unread = _not_read(report, paths or [], db, table)
    if unread:
        # after the report, so what was read is still shown; status 2 whatever was found
        _err("error[scan.unreadable]: not read: "
             + "; ".join(shown(path(f"{i.source} ({i.message})")) for i in unread))
        raise typer.Exit(2)
    if over:
        raise typer.Exit(1)
