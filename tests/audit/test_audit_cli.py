"""``pivault audit``, ``alerts`` and ``canary`` commands on a real vault home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pivault.audit import AuditEvent
from pivault.cli.audit_cmds import register
from pivault.crypto import Argon2Params, Keyring, PassphraseProvider
from pivault.detect import Alert
from pivault.detect.setup import build_guard
from pivault.policy.context import AccessContext
from pivault.store import Database
from pivault.vault.home import init, load

PASS = "synthetic-cli-passphrase"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    init(h, passphrase=PASS, keyring_path=tmp_path / "keys" / "keyring.json",
         argon2=Argon2Params(time_cost=1, memory_cost=8, parallelism=1), expected_population=10**6)
    monkeypatch.setenv("PIVAULT_PASSPHRASE", PASS)
    monkeypatch.setenv("PIVAULT_HOME", str(h))
    monkeypatch.delenv("PIVAULT_REDIS_URL", raising=False)
    return h


@pytest.fixture
def app() -> typer.Typer:
    a = typer.Typer()
    register(a)
    return a


def _fill(home: Path, n: int = 12) -> None:
    cfg = load(home)
    keyring = Keyring.open(cfg.keyring_path, PassphraseProvider(PASS))
    with Database(cfg.store_url) as db:
        guard = build_guard(db, keyring, keyring_path=cfg.keyring_path, home=home)
        ctx = AccessContext(principal="officer-17", role="officer", purpose="case_investigation")
        for i in range(n):
            guard.audit_log.append(AuditEvent.of(ctx, "get", "ok", [f"r_{i:026d}"]))
        guard.alerts.raise_alert(Alert("budget.exceeded", "warning", "officer-17", None, {"limit": 30}))


def test_verify_show_and_tamper(home: Path, app: typer.Typer, tmp_path: Path) -> None:
    _fill(home)
    r = CliRunner().invoke(app, ["audit", "verify"])
    assert r.exit_code == 0, r.output
    assert "audit chain intact: 12 entries" in r.output
    r = CliRunner().invoke(app, ["audit", "show", "--principal", "officer-17", "--json", "--since", "1h"])
    shown = json.loads(r.output)
    assert len(shown) == 12 and shown[0]["operation"] == "get"
    r = CliRunner().invoke(app, ["audit", "show", "--limit", "3"])
    assert r.exit_code == 0 and "officer-17" in r.output
    # without --since the latest entries, in order; with it the first from that time
    r = CliRunner().invoke(app, ["audit", "show", "--limit", "3", "--json"])
    assert [e["seq"] for e in json.loads(r.output)] == [10, 11, 12]
    r = CliRunner().invoke(app, ["audit", "show", "--limit", "3", "--json", "--since", "1h"])
    assert [e["seq"] for e in json.loads(r.output)] == [1, 2, 3]
    cp_file = tmp_path / "cp.json"
    r = CliRunner().invoke(app, ["audit", "export-checkpoint", "--out", str(cp_file)])
    assert r.exit_code == 0 and "entry 12" in r.output
    with Database(load(home).store_url) as db:
        db.execute("UPDATE audit_entries SET record_ids = '[]' WHERE seq = 7")
    r = CliRunner().invoke(app, ["audit", "verify", "--checkpoint", str(cp_file)])
    assert r.exit_code == 1
    assert "AUDIT CHAIN BROKEN at entry 7 [entry.mac]" in r.output
    r = CliRunner().invoke(app, ["audit", "verify", "--json", "--no-keyring"])
    assert r.exit_code == 1 and json.loads(r.output)["first_bad"] == 7


def test_prune_dry_run_and_floor(home: Path, app: typer.Typer) -> None:
    _fill(home, 3)
    r = CliRunner().invoke(app, ["audit", "prune"])
    assert r.exit_code == 0 and "would delete 0 entries" in r.output
    for args in (["--keep-days", "30", "--yes"], ["--keep-days", "10"], ["--keep-days", "1095"]):
        r = CliRunner().invoke(app, ["audit", "prune", *args])
        assert r.exit_code == 2 and r.output.startswith("error[audit.retention]:"), (args, r.output)
    r = CliRunner().invoke(app, ["audit", "prune", "--keep-days", "1096"])
    assert r.exit_code == 0 and "would delete 0 entries" in r.output


def test_alerts_list_and_ack(home: Path, app: typer.Typer) -> None:
    _fill(home, 1)
    r = CliRunner().invoke(app, ["alerts", "list", "--json"])
    alerts = json.loads(r.output)
    assert [a["rule"] for a in alerts] == ["budget.exceeded"]
    r = CliRunner().invoke(app, ["alerts", "ack", alerts[0]["alert_id"], "--note", "spoke to the officer"])
    assert r.exit_code == 0
    r = CliRunner().invoke(app, ["alerts", "list", "--unacked"])
    assert "(none)" in r.output
    r = CliRunner().invoke(app, ["alerts", "ack", alerts[0]["alert_id"]])
    assert r.exit_code == 1 and "alert.not_found" in r.output
    # both tries are in the audit trail, which an insider acking a canary's alarm cannot skip
    r = CliRunner().invoke(app, ["audit", "show", "--operation", "alerts.ack", "--json"])
    acks = json.loads(r.output)
    assert [(e["outcome"], e["record_ids"]) for e in acks] == [("ok", [alerts[0]["alert_id"]]),
                                                               ("not_found", [alerts[0]["alert_id"]])]
    # what is no alert id is refused before anything is written (it could be anything typed there)
    r = CliRunner().invoke(app, ["alerts", "ack", "11010519491231002X"])
    assert r.exit_code == 2 and r.output.startswith("error[alerts.id]:"), r.output
    r = CliRunner().invoke(app, ["audit", "show", "--operation", "alerts.ack", "--json"])
    assert len(json.loads(r.output)) == 2
    r = CliRunner().invoke(app, ["alerts", "list", "--severity", "warning", "--json"])
    assert r.exit_code == 0 and len(json.loads(r.output)) == 1
    r = CliRunner().invoke(app, ["alerts", "list", "--severity", "extreme"])
    assert r.exit_code == 2 and r.output.startswith("error[alerts.severity]:"), r.output
    assert "info, warning or critical" in r.output


def test_canary_seed(home: Path, app: typer.Typer) -> None:
    r = CliRunner().invoke(app, ["canary", "seed", "3", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == {"seeded": 3}
    with Database(load(home).store_url) as db:
        assert db.query_one("SELECT COUNT(*) FROM canary_registry") == (3,)
        assert len(db.query("SELECT record_ids FROM audit_entries WHERE operation = 'put'")) == 3


def test_a_reader_that_stops_early_ends_the_command_quietly(home: Path) -> None:
    """`pivault audit show | head -1`: no "Broken pipe" error, no complaint at exit."""
    _fill(home, 40)
    for args in (["audit", "show"], ["audit", "show", "--json"], ["version"]):
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before the first byte
        try:
            r = subprocess.run([sys.executable, "-m", "pivault.cli.main", *args], stdout=write_end,
                               stderr=subprocess.PIPE, env=os.environ.copy(), timeout=60)
        finally:
            os.close(write_end)
        assert r.stderr == b"" and r.returncode == 1, (args, r.stderr.decode())
