"""``pivault`` — the command line.

Each area keeps its commands in its own module; this file only assembles
them, so ``pivault --help`` reads like the library's table of contents.
"""

from __future__ import annotations

import sys

import typer

from pivault import __version__
from pivault.cli.common import silence_stdout

app = typer.Typer(
    name="pivault",
    help="A privacy vault for personal information: encrypted records, one audited door.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def version() -> None:
    """Print pivault's version."""
    typer.echo(__version__)


def _register() -> None:
    """Attach every area's commands, in the order ``--help`` lists them."""
    from pivault.cli import audit_cmds, keys_cmds, leak_cmds, scan, serve_cmds, synth, vault_cmds

    vault_cmds.register(app)
    serve_cmds.register(app)
    audit_cmds.register(app)
    leak_cmds.register(app)
    keys_cmds.register(app)
    app.command("synth")(synth.synth)
    app.command("scan")(scan.scan)


_register()


def main() -> None:
    """The console entry point: run :data:`app`, then flush stdout while a failure can be told.

    A reader that closed the pipe early (``pivault audit show | head -1``) ends
    the command quietly with status 1, as Python's recipe for a broken pipe
    does, rather than with a complaint from the flush at exit.
    """
    code: int | str | None = 0
    try:
        app()
    except SystemExit as exc:
        code = exc.code
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()
        code = 1
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
