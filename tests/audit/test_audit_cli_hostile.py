"""``pivault audit`` given hostile or careless input: one line ``error[code]: …``, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from click.testing import Result
from test_audit_cli import _fill, app, home  # noqa: F401 - fixtures
from typer.testing import CliRunner


def _one_line_error(r: Result, code: str, status: int) -> None:
    assert isinstance(r.exception, SystemExit), r.exception  # not a traceback
    assert r.exit_code == status and f"error[{code}]" in r.output, r.output


def test_show_limit_past_the_store_integers_is_a_usage_error(home: Path, app: typer.Typer) -> None:  # noqa: F811
    _fill(home, 3)
    r = CliRunner().invoke(app, ["audit", "show", "--limit", str(10**20)])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.exception  # click's range error


@pytest.mark.parametrize("content", [
    b"\xff\xfe\x00not utf-8",
    b'{"format": "pivault.audit.checkpoint", "version": 1, "chain": "c", "seq": 1e400, "time_us": 1,'
    b' "mac": "00", "sealed_key": "", "signature": ""}',
    b"[" * 100_000 + b"]" * 100_000,
])
def test_a_checkpoint_file_that_is_not_one_is_one_line(home: Path, app: typer.Typer,  # noqa: F811
                                                       tmp_path: Path, content: bytes) -> None:
    _fill(home, 3)
    cp = tmp_path / "checkpoint.json"
    cp.write_bytes(content)
    r = CliRunner().invoke(app, ["audit", "verify", "--checkpoint", str(cp)])
    _one_line_error(r, "audit.checkpoint", 1)  # as for any other file that is not a checkpoint
