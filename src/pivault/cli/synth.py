"""``pivault synth`` — write a synthetic population (a thin skin over :mod:`pivault.synth`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from pivault.cli.common import run_cli
from pivault.errors import ValidationError
from pivault.synth import write_population


@run_cli
def synth(
    count: int = typer.Option(..., "--count", min=0, help="Number of residents to write."),
    seed: int = typer.Option(0, "--seed", help="The same seed gives the same file, byte for byte."),
    out: Path = typer.Option(..., "--out", help="Output file: .csv, .jsonl or .parquet."),
    bad_rate: float = typer.Option(
        0.0, "--bad-rate", min=0.0, max=1.0,
        help="Share of rows replaced by labelled invalid rows (labels in <out>.labels.jsonl).",
    ),
    encoding: str = typer.Option("utf-8", "--encoding", help="utf-8, or gb18030 for CSV."),
) -> None:
    """Write a synthetic population of residents (no real person in it)."""
    # checked first: the labels file is opened before the output, and neither should be
    # half-made because the other cannot be
    if not out.parent.is_dir():
        raise ValidationError("synth.out", f"the directory of --out {out.name} does not exist",
                              hint="create it first (mkdir -p), or write the file elsewhere")
    try:
        summary = write_population(out, count, seed, bad_rate=bad_rate, encoding=encoding)
    except ValidationError:
        raise
    except ValueError as exc:
        raise ValidationError("synth.options", str(exc)) from None
    Console().print(
        f"wrote [bold]{summary.rows:,}[/bold] rows ([bold]{summary.bad_rows:,}[/bold] bad) "
        f"to {summary.path} in {summary.seconds:.2f} s; labels in {summary.labels_path}",
        highlight=False, soft_wrap=True,
    )
