"""The command line: table, JSON, SARIF, --fail-on exit codes, --db."""

from __future__ import annotations

import json
import sqlite3
import zipfile
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pivault.cli.scan import scan

ID = "11010519491231002X"
MOBILE = "13812345678"

app = typer.Typer()
app.command()(scan)
runner = CliRunner()


def _tree(tmp_path: Path) -> Path:
    d = tmp_path / "share"
    d.mkdir()
    (d / "export.csv").write_text(
        f"姓名,身份证号,手机\n王小明,{ID},{MOBILE}\n李娜,{ID},{MOBILE}\n", encoding="utf-8"
    )
    (d / "app.env").write_text("ALIYUN_ACCESS_KEY_ID=LTAI5tQ8xK2mN7pR4vW9yZ3b\nDB_PASSWORD=Tr0ub4dor&3\n")
    (d / "blob.bin").write_bytes(bytes(range(256)) * 8)
    return d


def test_table_output_masks_values(tmp_path: Path) -> None:
    res = runner.invoke(app, [str(_tree(tmp_path)), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "id_number" in res.output and "110***********002X" in res.output
    assert ID not in res.output and MOBILE not in res.output and "LTAI5tQ8xK2mN7pR4vW9yZ3b" not in res.output
    assert "binary" in res.output  # the issue line


def test_json_output(tmp_path: Path) -> None:
    res = runner.invoke(app, [str(_tree(tmp_path)), "--json", "--workers", "1"])
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    assert doc["summary"]["totals"]["id_number"] == 2
    assert doc["summary"]["totals"]["cloud_key"] == 1
    assert {i["code"] for i in doc["issues"]} == {"binary"}
    f = next(f for f in doc["findings"] if f["kind"] == "mobile")
    assert f["column"] == "手机" and f["line"] == 2 and f["masked"] == "138****5678"
    assert ID not in res.stdout


def test_sarif_is_structurally_valid(tmp_path: Path) -> None:
    out = tmp_path / "scan.sarif"
    res = runner.invoke(app, [str(_tree(tmp_path)), "--sarif", str(out), "--workers", "1"])
    assert res.exit_code == 0
    sarif = json.loads(out.read_text(encoding="utf-8"))
    assert sarif["version"] == "2.1.0" and "sarif" in sarif["$schema"]
    run = sarif["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    ids = [r["id"] for r in rules]
    assert len(ids) == len(set(ids)) and "id_number" in ids
    assert run["results"]
    for r in run["results"]:
        assert r["ruleId"] in ids and rules[r["ruleIndex"]]["id"] == r["ruleId"]
        assert r["level"] in ("error", "warning", "note")
        assert r["message"]["text"]
        loc = r["locations"][0]["physicalLocation"]
        assert loc["artifactLocation"]["uri"]
        assert loc["region"]["startLine"] >= 1
    notes = run["invocations"][0]["toolExecutionNotifications"]
    assert any("binary" in n["message"]["text"] for n in notes)
    assert ID not in out.read_text(encoding="utf-8")


def test_fail_on_exit_codes(tmp_path: Path) -> None:
    d = _tree(tmp_path)
    assert runner.invoke(app, [str(d), "--fail-on", "id_number:0", "--workers", "1"]).exit_code == 1
    assert runner.invoke(app, [str(d), "--fail-on", "id_number:2", "--workers", "1"]).exit_code == 0
    assert runner.invoke(app, [str(d), "--fail-on", "id_number:5", "--fail-on", "cloud_key:0"]).exit_code == 1
    assert runner.invoke(app, [str(d), "--fail-on", "any:100", "--workers", "1"]).exit_code == 0
    assert runner.invoke(app, [str(d), "--fail-on", "passport:0", "--workers", "1"]).exit_code == 0
    bad = runner.invoke(app, [str(d), "--fail-on", "nonsense:1"])
    assert bad.exit_code == 2 and "unknown kind" in bad.output


def _encrypted_zip(path: Path) -> None:
    """A zip whose one member is marked encrypted (general-purpose flag bit 0), as ``zip -e`` makes."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("export.csv", f"姓名,身份证号\n王小明,{ID}\n")
    data = bytearray(path.read_bytes())
    for sig, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = data.index(sig)
        data[i + at] |= 1
    path.write_bytes(bytes(data))


def test_fail_on_unread_fails_a_share_holding_what_could_not_be_read(tmp_path: Path) -> None:
    """A password-protected zip is a copy nobody can scan: ``--fail-on id_number:0`` alone passes
    it (the zip is an issue, not a finding); ``--fail-on unread:0`` fails it. An image (binary)
    is no reason to fail."""
    d = tmp_path / "share"
    d.mkdir()
    (d / "notes.txt").write_text("nothing personal here\n", encoding="utf-8")
    (d / "photo.bin").write_bytes(bytes(range(256)) * 8)
    ok = runner.invoke(app, [str(d), "--fail-on", "id_number:0", "--fail-on", "unread:0", "--workers", "1"])
    assert ok.exit_code == 0, ok.output
    _encrypted_zip(d / "cases.zip")
    gate = runner.invoke(app, [str(d), "--fail-on", "id_number:0", "--workers", "1"])
    assert gate.exit_code == 0  # the zip is listed as an issue, and leaves the status alone
    assert "encrypted" in gate.output
    strict = runner.invoke(app, [str(d), "--fail-on", "id_number:0", "--fail-on", "unread:0",
                                 "--workers", "1"])
    assert strict.exit_code == 1
    assert "1 unread" in strict.output
    assert runner.invoke(app, [str(d), "--fail-on", "unread:1", "--workers", "1"]).exit_code == 0


def test_values_in_file_names_are_masked_in_every_report(tmp_path: Path) -> None:
    """A scan of an ID card saved under its holder's number, an export named by a mobile: the
    report names the file with the value masked, as findings are, in the table, the JSON and
    the SARIF; ``--reveal-paths`` shows the names whole."""
    d = tmp_path / "share"
    d.mkdir()
    (d / f"{ID}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    (d / f"export_{MOBILE}.txt").write_text("见附件\n", encoding="utf-8")
    sarif = tmp_path / "out.sarif"
    outputs = {
        "table": runner.invoke(app, [str(d), "--workers", "1"], env={"COLUMNS": "400"}).output,
        "json": runner.invoke(app, [str(d), "--json", "--workers", "1", "--sarif", str(sarif)]).output,
        "sarif": sarif.read_text(encoding="utf-8"),
    }
    for name, text in outputs.items():
        assert ID not in text and MOBILE not in text, name
        assert ID[:3] + "*" * 11 + ID[-4:] + ".jpg" in text, name
        assert "export_" + MOBILE[:3] + "****" + MOBILE[-4:] in text, name
    doc = json.loads(outputs["json"])
    assert {f["column"] for f in doc["findings"]} == {"file name"}
    whole = runner.invoke(app, [str(d), "--json", "--workers", "1", "--reveal-paths"]).output
    assert f"{ID}.jpg" in whole and f"export_{MOBILE}.txt" in whole


def test_kind_filter_and_usage(tmp_path: Path) -> None:
    res = runner.invoke(app, [str(_tree(tmp_path)), "--kind", "cloud_key", "--json", "--workers", "1"])
    assert set(json.loads(res.stdout)["summary"]["totals"]) == {"cloud_key"}
    assert runner.invoke(app, []).exit_code == 2


def test_usage_errors_are_one_coded_line(tmp_path: Path) -> None:
    d = _tree(tmp_path)
    for args, code, why in (
        ([], "scan.usage", "nothing to scan"),
        ([str(d), "--kind", "phone_numbr"], "scan.kind", "unknown kinds: phone_numbr"),
        ([str(d), "--fail-on", "nonsense:1"], "scan.fail_on", "unknown kind 'nonsense'"),
        ([str(d), "--fail-on", "id_number:x"], "scan.fail_on", "the count must be an integer"),
        ([str(d), "--fail-on", "id_number:-1"], "scan.fail_on", "must not be negative"),
        (["--db", "mysql://x"], "scan.database", "cannot scan a mysql:// database"),
    ):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert res.stderr.startswith(f"error[{code}]: "), res.stderr
        assert why in res.stderr.splitlines()[0]
        assert res.stdout == "" and "Traceback" not in res.output


def _crm_db(tmp_path: Path, rows: int) -> Path:
    """Another program's SQLite database: a customer table of synthetic mobiles."""
    db = tmp_path / "crm.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE customer (id INTEGER PRIMARY KEY, phone TEXT)")
    con.executemany("INSERT INTO customer (phone) VALUES (?)", [(MOBILE,)] * rows)
    con.commit()
    con.close()
    return db


def test_db_option(tmp_path: Path) -> None:
    db = _crm_db(tmp_path, 30)
    res = runner.invoke(app, ["--db", f"sqlite:///{db}", "--table", "customer", "--full", "--json"])
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    assert doc["summary"]["totals"] == {"mobile": 30}
    assert doc["findings"][0]["table"] == "customer" and doc["findings"][0]["column"] == "phone"
    assert runner.invoke(app, ["--db", str(db), "--fail-on", "mobile:10"]).exit_code == 1


def test_an_input_that_cannot_be_read_is_an_error(tmp_path: Path) -> None:
    d = _tree(tmp_path)
    not_a_db = tmp_path / "x.db"
    not_a_db.write_bytes(b"not a database at all" * 10)
    cases = [
        ([str(tmp_path / "nonexistent_path"), "--fail-on", "any:0"], "nonexistent_path"),
        (["--db", "postgresql://nobody:pw@127.0.0.1:1/none"], "127.0.0.1:1/none"),
        (["--db", f"sqlite:///{tmp_path / 'missing.db'}"], "missing.db"),
        (["--db", str(not_a_db)], "x.db"),
        # what could be read is still reported; the unread input still fails the scan
        ([str(d), str(tmp_path / "gone.csv"), "--workers", "1"], "gone.csv"),
    ]
    for args, named in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error[")]
        assert len(lines) == 1 and lines[0].startswith("error[scan.unreadable]: not read: ")
        assert named in lines[0] and "pw@" not in lines[0]
        assert "No personal information or secrets found." not in res.stdout
    res = runner.invoke(app, [str(d), str(tmp_path / "gone.csv"), "--workers", "1", "--json"])
    assert res.exit_code == 2 and json.loads(res.stdout)["summary"]["totals"]["id_number"] == 2
    # a URL of another database is refused, not opened as a SQLite path
    res = runner.invoke(app, ["--db", "mysql://x"])
    assert res.exit_code == 2 and "error[scan.database]: cannot scan a mysql:// database" in res.stderr
    assert not Path("mysql:").exists()
    # an empty directory is not called clean either
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, [str(empty)])
    assert res.exit_code == 0 and "Nothing was scanned" in res.stdout


def _unread_line(res: object) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error[")]  # type: ignore[attr-defined]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_named_table_that_cannot_be_read_is_an_error_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = _crm_db(tmp_path, 3)
    url = f"sqlite:///{db}"
    # a misspelt table does not pass a gate, beside a table that is read or alone
    res = runner.invoke(app, ["--db", url, "--table", "custmer", "--fail-on", "any:0"])
    assert res.exit_code == 2, res.output
    line = _unread_line(res)
    assert line.startswith("error[scan.unreadable]: not read: ") and "crm.db#custmer" in line
    res = runner.invoke(app, ["--db", url, "--table", "customer", "--table", "custmer", "--json"])
    assert res.exit_code == 2, res.output
    assert json.loads(res.stdout)["summary"]["totals"] == {"mobile": 3}
    assert "crm.db#custmer" in _unread_line(res) and "#customer " not in _unread_line(res)
    assert runner.invoke(app, ["--db", url, "--table", "customer"]).exit_code == 0
    # a table found by listing the database that fails is an issue of the report, not fatal
    from pivault.scan import database

    monkeypatch.setattr(database, "sqlite_tables", lambda con: ["customer", "vanished"])
    res = runner.invoke(app, ["--db", url])
    assert res.exit_code == 0, res.output
    assert "vanished" in res.stdout and "error[" not in res.stderr


def test_a_named_table_that_cannot_be_read_is_an_error_postgresql(pg_url: str) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE scan_customer (id int, mobile text)")
        conn.execute("INSERT INTO scan_customer VALUES (1, %s), (2, %s)", (MOBILE, MOBILE))
        schema = conn.execute("SELECT current_schema()").fetchone()[0]  # type: ignore[index]
    for table in ("public.nonexist", "nonexist", f"{schema}.nonexist"):
        res = runner.invoke(app, ["--db", pg_url, "--table", table, "--fail-on", "any:0"])
        assert res.exit_code == 2, (table, res.output)
        line = _unread_line(res)
        assert line.startswith("error[scan.unreadable]: not read: ") and "nonexist" in line
        assert "UndefinedTable" in line
    res = runner.invoke(app, ["--db", pg_url, "--table", "scan_customer", "--table", "nonexist", "--json"])
    assert res.exit_code == 2, res.output
    assert json.loads(res.stdout)["summary"]["totals"] == {"mobile": 2}
    assert runner.invoke(app, ["--db", pg_url, "--table", "scan_customer"]).exit_code == 0
    assert runner.invoke(app, ["--db", pg_url, "--fail-on", "mobile:2"]).exit_code == 0


def _cli(*args: str) -> tuple[int, bytes, bytes]:
    """The installed command, in a process of its own: its real stdout and stderr, as bytes."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "pivault.cli.main", "scan", *args, "--workers", "1"],
                       capture_output=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def test_names_chosen_by_whoever_wrote_the_share_do_not_act_on_the_terminal(tmp_path: Path) -> None:
    """File names, CSV headers and missing paths were echoed as they are: an escape sequence in
    one cleared or retitled the officer's terminal, a right-to-left override turned it around."""
    import os

    share = tmp_path / "share"
    share.mkdir()
    evil = "a\x1b[2J\x1b]0;owned\x07\u202eb\x9b31m.txt"
    (share / evil).write_text(f"身份证号{ID}\n", encoding="utf-8")
    (share / "h.csv").write_text(f"\x1b[31m手机,身份证号\n{MOBILE},{ID}\n", encoding="utf-8")
    missing = str(tmp_path / "gone\x1b[5m")
    sarif = tmp_path / "out.sarif"
    for extra in ([], ["--json"]):
        code, out, err = _cli(str(share), missing, "--sarif", str(sarif), *extra)
        assert code == 2, err  # the missing path
        text = (out + err).decode("utf-8")
        for c in ("\x1b", "\x07", "\u202e", "\x9b"):
            assert c not in text, (extra, repr(c))
        assert ID not in text and MOBILE not in text
    doc = json.loads(out)  # the same names once loaded
    assert {f["file"] for f in doc["findings"]} == {str(share / evil), str(share / "h.csv")}
    assert {f["column"] for f in doc["findings"]} >= {"\x1b[31m手机"}
    assert str(share / evil) in {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
                                 for r in json.loads(sarif.read_text("utf-8"))["runs"][0]["results"]}
    assert os.path.exists(share / evil)


def test_a_file_name_that_is_not_utf8_does_not_end_the_scan(tmp_path: Path) -> None:
    """A GBK file name from a Windows share (bytes that are not UTF-8) ended the scan in a
    traceback when the report was written: no table, no JSON, no SARIF."""
    import os

    share = tmp_path / "share"
    share.mkdir()
    raw = os.fsencode(share) + b"/" + "客户名单".encode("gbk") + b".txt"
    with open(raw, "wb") as f:
        f.write(f"身份证号{ID}\n".encode())
    sarif = tmp_path / "out.sarif"
    for extra in ([], ["--json"]):
        code, out, err = _cli(str(share), "--sarif", str(sarif), "--fail-on", "id_number:0", *extra)
        assert code == 1, err.decode("utf-8", "replace")
        assert b"Traceback" not in err
        assert b"110***********002X" in out
    doc = json.loads(out)
    (found,) = doc["findings"]
    assert os.fsencode(found["file"]) == raw  # the real name, to find the file by
    run = json.loads(sarif.read_text("utf-8"))["runs"][0]
    uri = run["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert os.fsencode(uri) == raw


def test_a_gate_on_a_kind_not_scanned_is_refused(tmp_path: Path) -> None:
    """``--kind mobile --fail-on id_number:0`` looked for no ID number, so the gate passed with
    ID numbers in the files: a CI check that can never fail."""
    share = _tree(tmp_path)
    res = runner.invoke(app, [str(share), "--kind", "mobile", "--fail-on", "id_number:0", "--workers", "1"])
    assert res.exit_code == 2
    assert res.stderr.startswith("error[scan.fail_on]: --fail-on id_number: not a kind scanned")
    assert ID not in res.output
    gated = [str(share), "--kind", "mobile", "--kind", "id_number", "--fail-on", "id_number:0"]
    assert runner.invoke(app, [*gated, "--workers", "1"]).exit_code == 1
    assert runner.invoke(app, [str(share), "--kind", "mobile", "--fail-on", "any:0"]).exit_code == 1
