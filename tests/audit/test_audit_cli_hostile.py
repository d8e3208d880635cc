"""``pivault audit`` given hostile or careless input: one line ``error[code]: …``, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from click.testing import Result
from test_audit_cli import _fill, app, home  # noqa: F401 - fixtures
from typer.testing import CliRunner

from pivault.store import Database
from pivault.vault.home import load


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


# What an insider can put in the SQLite store, which keeps any value in any column: each breaks the
# entry's MAC, and verify and show tripped over it instead (a traceback, or a gigabyte allocated for
# a MAC given as a large integer).
_ODD_VALUES = [
    ("principal", "CAST(X'FF41' AS TEXT)"),  # not UTF-8: SQLite refuses to fetch the row
    ("principal", "CAST('officer-17' AS BLOB)"),
    ("ts_us", "'yesterday'"),
    ("ts_us", "1e20"),
    ("count", "'several'"),
    ("mac", "'0123'"),
    ("mac", "4611686018427387904"),
    ("record_ids", "'[1,{}]'"),
    ("detail", "'" + "[" * 5000 + "'"),
]


@pytest.mark.parametrize(("column", "value"), _ODD_VALUES)
def test_verify_and_show_name_an_entry_holding_a_value_no_writer_stores(
        home: Path, app: typer.Typer, column: str, value: str) -> None:  # noqa: F811
    _fill(home, 12)
    with Database(load(home).store_url) as db:
        db.execute(f"UPDATE audit_entries SET {column} = {value} WHERE seq = 7")
    r = CliRunner().invoke(app, ["audit", "verify"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.exception
    assert "AUDIT CHAIN BROKEN at entry 7 [entry.mac]" in r.output, r.output
    r = CliRunner().invoke(app, ["audit", "verify", "--no-keyring", "--json"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.exception
    assert (json.loads(r.output)["problem"], json.loads(r.output)["first_bad"]) == ("entry.mac", 7)
    r = CliRunner().invoke(app, ["audit", "show"])
    assert r.exit_code == 0, r.exception
    assert "note: values no writer stores, altered in the store, in entry 7" in r.output
    assert len([line for line in r.output.splitlines() if "officer-17" in line]) >= 11
    r = CliRunner().invoke(app, ["audit", "show", "--json"])
    shown = {e["seq"]: e for e in json.loads(r.output)}
    assert shown[7]["malformed"] == [column] and "malformed" not in shown[6]


@pytest.mark.parametrize(("table", "change", "named"), [
    ("audit_checkpoints", "ts_us = 'x' WHERE seq = 0", "BROKEN at entry 0 [checkpoint.signature]"),
    ("audit_checkpoints", "chain_id = CAST(X'FF' AS TEXT)", "BROKEN [checkpoint.signature]"),
    ("audit_head", "seq = 'twelve'", "BROKEN [head.mismatch]"),
    ("audit_head", "mac = 12", "BROKEN [head.mismatch]"),
    ("audit_head", "chain_id = CAST(X'FF' AS TEXT)", "BROKEN [head.mismatch]"),
])
def test_verify_names_a_checkpoint_or_head_holding_a_value_no_writer_stores(
        home: Path, app: typer.Typer, table: str, change: str, named: str) -> None:  # noqa: F811
    _fill(home, 12)
    with Database(load(home).store_url) as db:
        db.execute(f"UPDATE {table} SET {change}")
    r = CliRunner().invoke(app, ["audit", "verify", "--no-keyring"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.exception
    assert f"AUDIT CHAIN {named}" in r.output, r.output


def test_show_does_not_hand_the_terminal_what_an_entry_holds(home: Path, app: typer.Typer) -> None:  # noqa: F811
    """An entry set in the store to an escape sequence (clear the screen), a line break that draws a
    made-up row, a right-to-left override: show printed them as they were."""
    _fill(home, 3)
    forged = "\x1b[2J\x1b[1;1H\r\n3    2026-01-01T00:00:00.000  officer-00\u202eoperator\x9b31m"
    with Database(load(home).store_url) as db:
        db.execute("UPDATE audit_entries SET principal = ? WHERE seq = 2", (forged,))
    r = CliRunner().invoke(app, ["audit", "show"])
    assert r.exit_code == 0, r.exception
    assert not any(c in r.output for c in ("\x1b", "\r", "\u202e", "\x9b")), repr(r.output)
    assert len(r.output.splitlines()) == 4  # the header and three rows
    assert "\\u001b[2J" in r.output and "\\u202e" in r.output
