"""The command line end to end: export request/approve/fetch, leak check, breach report."""

from __future__ import annotations

import csv
import json
import random
import re
import zipfile
import zlib
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from leak.conftest import CHEAP
from pivault.cli.leak_cmds import register
from pivault.model import Resident
from pivault.synth import generate
from pivault.vault import Vault
from pivault.vault import home as vault_home
from pivault.vault.facade import seal

PASS = "synthetic cli passphrase"


@pytest.fixture
def cli(tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> tuple[CliRunner, typer.Typer, Path, list[Resident]]:
    home = tmp_path / "home"
    vault_home.init(home, passphrase=PASS, keyring_path=tmp_path / "keys" / "k.keyring",
                    expected_population=10**5, argon2=CHEAP)
    # these exports are larger than the vault-wide limit init writes (each is charged whole, and the
    # limit counts everyone together): the operator raises it for them, as docs/detect.md says
    config = home / "pivault.toml"
    config.write_text(re.sub(r"(?m)^(records_per_\w+) = \d+$", r"\1 = 1000000",
                             config.read_text(encoding="utf-8")), encoding="utf-8")
    monkeypatch.setenv("PIVAULT_PASSPHRASE", PASS)
    monkeypatch.setenv("PIVAULT_HOME", str(home))
    residents = [Resident.parse({k: row[k] or None for k in  # type: ignore[literal-required]
                                 ("name", "id_number", "mobile", "address", "notes")})
                 for row in generate(5000, 21)]
    with Vault.open(home) as v:
        v.store.insert([seal(v.keyring, r) for r in residents])
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """pivault (test root)."""

    register(app)
    return CliRunner(), app, tmp_path, residents


def _token(principal: str, role: str) -> str:
    from pivault.policy.tokens import TokenStore

    with Vault.open() as v:
        _, token = TokenStore(v.db).create(principal, role, ["export approval", "breach notification"],
                                           ttl_seconds=3600)
    return token


def test_export_leak_and_report_from_the_command_line(cli: tuple[CliRunner, typer.Typer, Path,
                                                                  list[Resident]]) -> None:
    runner, app, tmp, residents = cli
    ids = ",".join(r.record_id for r in residents[:4500])
    r = runner.invoke(app, ["export", "request", "--recipient", "Institute X", "--purpose", "research",
                            "--fields", "name,id_number,mobile,birth_date", "--selection", f"ids={ids}",
                            "--json"])
    assert r.exit_code == 0, r.output
    export_id = json.loads(r.output)["export_id"]
    # the local operator cannot approve: not an approver
    r = runner.invoke(app, ["export", "approve", export_id])
    assert r.exit_code == 1 and "approver" in r.output
    r = runner.invoke(app, ["export", "approve", export_id, "--token", _token("approver-1", "approver")])
    assert r.exit_code == 0, r.output
    out = tmp / "x.csv"
    r = runner.invoke(app, ["export", "fetch", export_id, "--out", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["export", "list"])
    assert export_id in r.output and "fetched" in r.output
    with open(out, encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    sample = random.Random(4).sample(rows, 250)
    dump = tmp / "forum_post.json"
    objs = [{"a": s[0], "b": s[1].lower(), "c": s[2]} for s in sample]
    dump.write_text(json.dumps(objs, ensure_ascii=False), encoding="utf-8")
    r = runner.invoke(app, ["leak", "check", str(dump)])
    assert r.exit_code == 0, r.output
    assert f"export {export_id} (conclusive)" in r.output
    case_id = re.search(r"case (case_[0-9a-f]+)", r.output).group(1)  # type: ignore[union-attr]
    report_dir = tmp / "report"
    r = runner.invoke(app, ["leak", "report", case_id, "--out", str(report_dir), "--contact",
                            "DPO, dpo@example.org", "--measure", "export recipient's access revoked"])
    assert r.exit_code == 0, r.output
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    twin = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    for key in ("kinds_of_pi", "cause", "possible_harm", "measures_taken", "what_residents_can_do",
                "contact_point", "notification_deadline", "residents_by_region", "timeline"):
        assert twin[key], key
    assert twin["residents_affected"] >= 200  # 250 rows, ~7 % of them canaries
    assert "Institute X" in twin["cause"][0]
    assert page.count("<svg") == 3 and "<script" not in page
    assert not re.search(r"(src|href)=", page)  # no external assets
    for res in residents[:4500]:
        assert res.id_number not in page and res.id_number not in json.dumps(twin)
    # who is affected: a notifying role only
    r = runner.invoke(app, ["leak", "affected", case_id])
    assert r.exit_code == 1 and "notify" in r.output
    r = runner.invoke(app, ["leak", "affected", case_id, "--token", _token("dpo-1", "dpo")])
    assert r.exit_code == 0 and len(r.output.split()) == twin["residents_affected"]


def test_bad_input_is_one_clear_line(cli: tuple[CliRunner, typer.Typer, Path, list[Resident]]) -> None:
    runner, app, _, _ = cli
    r = runner.invoke(app, ["export", "request", "--recipient", "R", "--purpose", "p", "--fields", "notes",
                            "--selection", "region=31"])
    assert r.exit_code == 2 and "error[export.untraceable]" in r.output
    r = runner.invoke(app, ["export", "request", "--recipient", "R", "--purpose", "Bad Purpose",
                            "--fields", "name", "--selection", "region=31"])
    assert r.exit_code == 2 and "error[purpose.invalid]" in r.output


def _cases() -> int:
    with Vault.open() as v:
        if not v.db.table_exists("leak_cases"):
            return 0
        row = v.db.query_one("SELECT COUNT(*) FROM leak_cases")
        assert row is not None
        return int(row[0])


def test_a_dump_that_cannot_be_read_is_an_error_not_a_clean_case(
        cli: tuple[CliRunner, typer.Typer, Path, list[Resident]]) -> None:
    runner, app, tmp, residents = cli
    empty = tmp / "e.csv"
    empty.write_bytes(b"")
    folder = tmp / "dumps"
    folder.mkdir()
    for args, code, why in (([str(tmp / "nonexist.csv")], "dump.open", "nonexist.csv: cannot open"),
                            ([str(folder)], "dump.open", "dumps: a directory"),
                            ([str(empty)], "dump.unread", "e.csv: the file is empty"),
                            ([str(empty), str(tmp / "nonexist.csv")], "dump.open", "nonexist.csv")):
        r = runner.invoke(app, ["leak", "check", *args])
        assert r.exit_code == 1, (args, r.output)
        assert f"error[{code}]" in r.output and why in r.output, r.output
        assert "case_" not in r.output and "confirmed" not in r.output
        assert len(r.output.strip().splitlines()) == 1
    assert _cases() == 0
    # a dump read in part is checked, and says that it was read in part
    good = tmp / "part.csv"
    good.write_text("name,id_number\n" + "".join(f"{p.name},{p.id_number}\n" for p in residents[:50]),
                    encoding="utf-8")
    r = runner.invoke(app, ["leak", "check", str(good), str(empty)])
    assert r.exit_code == 0, r.output
    assert "50 rows read, 50 matched" in r.output and "problem in e.csv" in r.output
    assert "warning: 1 dump file(s) not read in full" in r.output
    assert _cases() == 1


def _audit_checks() -> int:
    with Vault.open() as v:
        row = v.db.query_one("SELECT COUNT(*) FROM audit_entries WHERE operation = 'leak.check'") \
            if v.db.table_exists("audit_entries") else (0,)
        assert row is not None
        return int(row[0])


def test_a_binary_file_is_refused_not_read_as_an_empty_dump(
        cli: tuple[CliRunner, typer.Typer, Path, list[Resident]]) -> None:
    runner, app, tmp, residents = cli
    rnd = random.Random(5)

    def noise(n: int) -> bytes:
        return rnd.randbytes(n).replace(b"\x00", b"")

    pdf = tmp / "offer.pdf"
    pdf.write_bytes(b"%PDF-1.4\n" + zlib.compress(noise(200_000)).replace(b"\x00", b"\x01"))
    blob = tmp / "dump.csv"  # the name says CSV; the content decides
    blob.write_bytes(noise(200_000))
    packed = tmp / "dump.zip"
    with zipfile.ZipFile(packed, "w") as zf:
        zf.writestr("data.bin", noise(100_000))
    for path, why in ((pdf, "offer.pdf: the file is a PDF document"),
                      (blob, "dump.csv: the file is neither text"),
                      (packed, "dump.zip:data.bin: the file is neither text")):
        r = runner.invoke(app, ["leak", "check", str(path)])
        assert r.exit_code == 1, r.output
        assert "error[dump.unread]" in r.output and why in r.output, r.output
        assert "case_" not in r.output and "affected" not in r.output
        assert len(r.output.strip().splitlines()) == 1
    assert _cases() == 0
    assert _audit_checks() == 0
    # a binary member beside a CSV in one archive: the CSV is checked, the member named as not read
    mixed = tmp / "mixed.zip"
    with zipfile.ZipFile(mixed, "w") as zf:
        zf.writestr("proof.bin", noise(50_000))
        zf.writestr("people.csv", "name,id_number\n"
                    + "".join(f"{p.name},{p.id_number}\n" for p in residents[:30]))
    r = runner.invoke(app, ["leak", "check", str(mixed)])
    assert r.exit_code == 0, r.output
    assert "30 rows read, 30 matched" in r.output
    assert "problem in mixed.zip: mixed.zip:proof.bin: the file is neither text" in r.output
    assert "warning: 1 dump file(s) not read in full" in r.output
    assert _cases() == 1
    assert _audit_checks() == 1


def _request(runner: CliRunner, app: typer.Typer, residents: list[Resident]) -> str:
    ids = ",".join(r.record_id for r in residents[:300])
    r = runner.invoke(app, ["export", "request", "--recipient", "Self", "--purpose", "research",
                            "--fields", "name,id_number", "--selection", f"ids={ids}", "--json"])
    assert r.exit_code == 0, r.output
    return str(json.loads(r.output)["export_id"])


def test_a_token_the_requester_issued_cannot_approve(
        cli: tuple[CliRunner, typer.Typer, Path, list[Resident]]) -> None:
    from pivault.audit import entries
    from pivault.cli.main import app as main_app
    from pivault.leak.exports import get_export

    runner, _, tmp, residents = cli
    export_id = _request(runner, main_app, residents)
    # the requester issues an approver token for a made-up second person
    r = runner.invoke(main_app, ["token", "create", "--principal", "sock-puppet", "--role", "approver",
                                 "--expires", "5m"])
    assert r.exit_code == 0, r.output
    puppet = r.stdout.strip().splitlines()[-1]
    r = runner.invoke(main_app, ["export", "approve", export_id, "--token", puppet])
    assert r.exit_code == 1 and "error[export.two_person]" in r.output, r.output
    assert "issued by the export's requester" in r.output
    r = runner.invoke(main_app, ["export", "fetch", export_id, "--out", str(tmp / "f.csv")])
    assert r.exit_code == 1 and "only an approved export" in r.output
    assert not (tmp / "f.csv").exists()
    with Vault.open() as v:
        assert get_export(v.db, export_id).status == "requested"
        denied = [e for e in entries(v.db, operation="export.approve") if e.principal == "sock-puppet"]
    assert [e.outcome for e in denied] == ["denied"]
    # a token issued by someone else still approves
    r = runner.invoke(main_app, ["export", "approve", export_id, "--token", _token("approver-2", "approver")])
    assert r.exit_code == 0, r.output


def test_an_export_file_is_made_0600_and_never_overwrites(
        cli: tuple[CliRunner, typer.Typer, Path, list[Resident]]) -> None:
    import os
    import stat

    runner, app, tmp, residents = cli
    old = os.umask(0o022)
    try:
        for fmt in ("csv", "parquet"):
            export_id = _request(runner, app, residents)
            r = runner.invoke(app, ["export", "approve", export_id, "--token",
                                    _token(f"approver-{fmt}", "approver")])
            assert r.exit_code == 0, r.output
            out = tmp / f"ex.{fmt}"
            r = runner.invoke(app, ["export", "fetch", export_id, "--out", str(out)])
            assert r.exit_code == 0, r.output
            assert stat.S_IMODE(out.stat().st_mode) == 0o600 and out.stat().st_size > 0
        # an existing file is neither truncated nor replaced, and the export stays approved
        export_id = _request(runner, app, residents)
        r = runner.invoke(app, ["export", "approve", export_id, "--token", _token("approver-3", "approver")])
        assert r.exit_code == 0, r.output
        taken = tmp / "taken.csv"
        taken.write_text("someone else's file\n", encoding="utf-8")
        r = runner.invoke(app, ["export", "fetch", export_id, "--out", str(taken)])
        assert r.exit_code == 1 and "error[export.exists]" in r.output, r.output
        assert taken.read_text(encoding="utf-8") == "someone else's file\n"
        r = runner.invoke(app, ["export", "fetch", export_id, "--out", str(tmp / "ex2.csv")])
        assert r.exit_code == 0, r.output
    finally:
        os.umask(old)


def test_a_refused_export_is_listed_as_refused_by_its_decider(
        cli: tuple[CliRunner, typer.Typer, Path, list[Resident]]) -> None:
    runner, app, _, residents = cli
    export_id = _request(runner, app, residents)
    r = runner.invoke(app, ["export", "refuse", export_id, "--token", _token("approver-9", "approver")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["export", "list"])
    line = next(x for x in r.output.splitlines() if export_id in x)
    assert "refused by approver-9" in line and "approved by" not in line


def test_leak_check_says_how_many_ids_the_vault_does_not_hold(
        cli: tuple[CliRunner, typer.Typer, Path, list[Resident]]) -> None:
    runner, app, tmp, residents = cli
    dump = tmp / "scrape.csv"
    made_up = [f"r_{i:026d}" for i in range(7)]
    dump.write_text("record_id,gender\n" + "".join(f"{rid},F\n" for rid in
                                                   [r.record_id for r in residents[:12]] + made_up),
                    encoding="utf-8")
    r = runner.invoke(app, ["leak", "check", str(dump)])
    assert r.exit_code == 0, r.output
    assert "12 residents of this vault affected" in r.output
    assert "record ids the vault does not hold: 7 rows" in r.output
    assert "fields exposed: gender" in r.output


def test_the_approver_sees_the_count_and_the_window_comes_from_pivault_toml(
        cli: tuple[CliRunner, typer.Typer, Path, list[Resident]]) -> None:
    """`export list` shows how many records a request holds before anyone approves it; `approve`
    states the count and the deadline; `[export] fetch_within_days` sets the window."""
    runner, app, tmp, residents = cli
    config = tmp / "home" / "pivault.toml"
    config.write_text(config.read_text(encoding="utf-8") + "\n[export]\nfetch_within_days = 0.5\n",
                      encoding="utf-8")
    export_id = _request(runner, app, residents)
    with Vault.open(tmp / "home") as v:
        from pivault.leak import exports as ex

        n = ex.get_export(v.db, export_id).selected
    assert n
    r = runner.invoke(app, ["export", "list"])
    line = next(x for x in r.output.splitlines() if export_id in x)
    assert f"records {n} " in line and "requested " in line and "decide by" in line
    r = runner.invoke(app, ["export", "approve", export_id, "--max-records", str(n - 1),
                            "--token", _token("approver-2", "approver")])
    assert r.exit_code == 1 and "error[export.count]" in r.output
    r = runner.invoke(app, ["export", "approve", export_id, "--token", _token("approver-3", "approver"),
                            "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["selected"] == n and got["expires_at"] - got["decided_at"] == pytest.approx(43200)
    r = runner.invoke(app, ["export", "list"])
    line = next(x for x in r.output.splitlines() if export_id in x)
    assert "approved" in line and "fetch by" in line
    config.write_text(config.read_text(encoding="utf-8").replace("fetch_within_days = 0.5",
                                                                 "fetch_within_days = 0"), encoding="utf-8")
    r = runner.invoke(app, ["export", "list"])
    assert r.exit_code == 2
    assert "error[home.config]: [export] fetch_within_days must be a positive" in r.output
