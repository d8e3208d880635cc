"""What every command shares: the error contract, the ``--home`` and ``--json`` options.

A command never ends in a traceback: a pivault error is one line
``error[<code>]: <message>`` (plus a hint) on stderr and an exit status —
2 for bad input or configuration, 1 for anything else, 130 when interrupted.
When the reader of stdout goes away (``pivault audit show | head -1``) the
command stops without a word and exits 1, as Python's own recipe for it does.
Messages come from :class:`pivault.errors.PivaultError`, which never carries
a value, so no PI reaches the terminal through an error.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from pivault.errors import ConfigError, PivaultError, ValidationError

P = ParamSpec("P")
R = TypeVar("R")

HomeOpt = Annotated[Path | None, typer.Option(
    "--home", envvar="PIVAULT_HOME", show_envvar=True,
    help="Vault home (data directory); default ./.pivault.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
#: the largest ``--limit`` of a listing: past SQLite's 64-bit integers the store itself fails
LIMIT_MAX = 1_000_000_000


def check_purpose(purpose: str) -> str:
    """A ``--purpose`` as the API takes ``X-Purpose``: a name, recorded in the audit trail as given.

    Free text is refused, and not repeated in the error: it may hold a resident's name.
    """
    from pivault.policy.context import PURPOSE_NAME

    if not PURPOSE_NAME.fullmatch(purpose):
        raise ValidationError("purpose.invalid", "--purpose is a purpose name: a lower-case letter, "
                              "then lower-case letters, digits, _ . - (at most 64)",
                              hint="e.g. --purpose identity_verification")
    return purpose


def err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False, indent=2, default=str))


def silence_stdout() -> None:
    """Send what is left for stdout to /dev/null, after its reader closed the pipe.

    Python flushes stdout at exit; without this, the output still buffered
    would fail again there and print a complaint of its own.
    """
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError):  # no file descriptor behind stdout (a test's capture)
        pass


def _vault_limit_hint(exc: PivaultError, home: object) -> str | None:
    """What to do about a refusal by the vault-wide read limit, which the policy does not set.

    At the command line the refused request is often one large read (an export's
    fetch is charged whole), which no wait lets through: the operator who wants it
    raises the limit in pivault.toml, deliberately.
    """
    rule = getattr(exc, "rule", None)
    if exc.code != "budget.exceeded" or not isinstance(rule, str) or not rule.startswith("vault."):
        return None
    from pivault.vault.home import CONFIG_NAME, resolve_home

    config = resolve_home(home if isinstance(home, str | os.PathLike) else None) / CONFIG_NAME
    return (f"this is the limit on all principals together, {rule.split('.', 1)[1]} in [detect.vault] of "
            f"{config}; wait and retry, but a request (an export) larger than the limit never fits: "
            "raise it there for that request, then put it back")


def run_cli(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn pivault errors into one clear line and an exit status, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except PivaultError as exc:
            err(f"error[{exc.code}]: {exc.message}")
            hint = _vault_limit_hint(exc, kwargs.get("home")) or exc.hint
            if hint:
                err(f"  hint: {hint}")
            raise typer.Exit(2 if isinstance(exc, ValidationError | ConfigError) else 1) from None
        except BrokenPipeError:
            # the reader has what it wanted (`| head`): not an error to report
            silence_stdout()
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err("error[interrupted]: stopped; committed work is kept — run the same command "
                "again to resume")
            raise typer.Exit(130) from None
        except OSError as exc:
            # file names are the operator's own; contents never reach this message
            err(f"error[io]: {exc.strerror or type(exc).__name__}"
                + (f": {Path(exc.filename).name}" if exc.filename else ""))
            raise typer.Exit(1) from None

    return wrapper
