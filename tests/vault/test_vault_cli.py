"""The vault commands through Typer: output masked by default, JSON for scripts, one-line errors."""

from __future__ import annotations

import json
import re
import sqlite3
import tomllib
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner
from vault_support import cheap_cli_env, make_residents

from pivault.cli import vault_cmds


@pytest.fixture
def app() -> typer.Typer:
    a = typer.Typer(pretty_exceptions_enable=False)
    vault_cmds.register(a)
    return a


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return cheap_cli_env(tmp_path, monkeypatch, str(tmp_path / "home"))


def test_cli_round_trip(app: typer.Typer, env: dict[str, str], tmp_path: Path) -> None:
    run = CliRunner().invoke
    r = run(app, ["init", "--expected-population", "1000", "--json"], env=env)
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert Path(info["keyring"]).is_relative_to(tmp_path / "xdg")

    people = make_residents(5, seed=51)
    src = tmp_path / "in.csv"
    src.write_text("姓名,身份证号,手机\n" + "".join(
        f"{p['name']},{p['id_number']},{p['mobile']}\n" for p in people) + "张三,123,13800000000\n",
        encoding="utf-8")
    r = run(app, ["import", str(src), "--json"], env=env)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert (summary["read"], summary["imported"], summary["rejected"]) == (6, 5, 1)
    r = run(app, ["import", str(src)], env=env)
    assert "already imported" in r.stdout

    r = run(app, ["find", "--id-number", people[0]["id_number"], "--json"], env=env)
    assert r.exit_code == 0, r.output
    found = json.loads(r.stdout)
    assert len(found) == 1 and found[0]["name"] != people[0]["name"]       # masked
    assert people[0]["id_number"] not in r.stdout and people[0]["mobile"] not in r.stdout
    rid = found[0]["record_id"]
    r = run(app, ["get", rid, "--reveal", "--json"], env=env)
    assert json.loads(r.stdout)[0]["mobile"] == people[0]["mobile"]
    r = run(app, ["get", rid], env=env)
    assert r.exit_code == 0 and people[0]["mobile"] not in r.stdout

    r = run(app, ["rejects", "show", "--json"], env=env)
    rej = json.loads(r.stdout)
    assert [(x["line"], x["code"]) for x in rej] == [(7, "id.length")]
    assert "123" not in json.dumps(rej["cells"] if isinstance(rej, dict) else rej[0]["cells"])
    r = run(app, ["rejects", "show", "--reveal", "--json"], env=env)
    assert json.loads(r.stdout)[0]["cells"]["id_number"] == "123"

    r = run(app, ["stats", "--json"], env=env)
    stats = json.loads(r.stdout)
    assert stats["store"]["rows"] == 5 and stats["imports"]["rejects"] == 1
    for p in people:
        assert p["id_number"] not in r.stdout

    store_file = Path(env["PIVAULT_HOME"]) / "vault.db"
    with sqlite3.connect(store_file) as raw:
        row = raw.execute("SELECT name, id_number, mobile FROM records WHERE record_id = ?",
                          (rid,)).fetchone()
    ciphertexts = [bytes(v) for v in row if v is not None]
    assert len(ciphertexts) == 3
    with sqlite3.connect(Path(info["keyring"] + ".recordkeys")) as raw:
        wrapped = [bytes(w) for (w,) in raw.execute("SELECT wrapped FROM record_keys WHERE record_id = ?",
                                                    (rid,))]
    assert len(wrapped) == 1
    ciphertexts += wrapped  # the record's key: gone too
    r = run(app, ["erase", rid], env=env, input="n\n")
    assert r.exit_code != 0
    r = run(app, ["erase", rid, "--yes"], env=env)
    assert r.exit_code == 0, r.output
    r = run(app, ["get", rid], env=env)
    assert r.exit_code == 1 and "error[record.not_found]" in r.stderr
    assert "Traceback" not in r.output
    r = run(app, ["stats"], env=env)
    assert "erased since the last scrub: 1 (run pivault scrub); last scrub: never" in r.stdout
    r = run(app, ["scrub", "--only-if-erased", "--json"], env=env)
    assert r.exit_code == 0 and json.loads(r.stdout) == {"scrubbed": True, "erasures_behind_it": 1}, r.output
    r = run(app, ["stats", "--json"], env=env)
    erasure = json.loads(r.stdout)["erasure"]
    assert erasure["erased_since_scrub"] == 0 and erasure["last_scrub"] is not None
    # on a schedule: nothing erased since, nothing rewritten
    before = store_file.read_bytes()
    r = run(app, ["scrub", "--only-if-erased"], env=env)
    assert r.exit_code == 0 and "nothing to scrub" in r.stdout, r.output
    r = run(app, ["scrub", "--only-if-erased", "--json"], env=env)
    assert json.loads(r.stdout) == {"scrubbed": False, "erasures_behind_it": 0}, r.output
    assert store_file.read_bytes() == before
    files = [f for d in (Path(env["PIVAULT_HOME"]), Path(info["keyring"]).parent)
             for f in d.rglob("*") if f.is_file()]
    assert store_file in files
    for f in files:
        data = f.read_bytes()
        assert not any(ct in data for ct in ciphertexts), f.name

    r = run(app, ["migrate", "--json"], env=env)
    assert r.exit_code == 0 and json.loads(r.stdout) == {"applied": []}


def test_cli_errors_are_one_line_without_pi(app: typer.Typer, env: dict[str, str], tmp_path: Path) -> None:
    run = CliRunner().invoke
    r = run(app, ["find", "--mobile", "13800000000"], env=env)
    assert r.exit_code == 2 and r.stderr.startswith("error[home.missing]:") and "hint:" in r.stderr
    assert run(app, ["init"], env=env).exit_code == 0
    r = run(app, ["find", "--id-number", "11010119900101123"], env=env)
    assert r.exit_code == 2 and "error[id.length]" in r.stderr and "11010119900101123" not in r.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("name,favourite_colour\n张三,blue\n", encoding="utf-8")
    r = run(app, ["import", str(bad)], env=env)
    assert r.exit_code == 2 and "error[import.header]" in r.stderr and "--map" in r.stderr
    r = run(app, ["find", "--mobile", "13800000000"], env={**env, "PIVAULT_PASSPHRASE": "wrong"})
    assert r.exit_code == 1 and "error[keyring.passphrase]" in r.stderr
    assert "Traceback" not in r.output


def test_cli_import_chunk_size(app: typer.Typer, env: dict[str, str], tmp_path: Path) -> None:
    """Smaller chunks (less memory per transaction) import the same rows; nonsense is refused."""
    run = CliRunner().invoke
    assert run(app, ["init", "--expected-population", "1000"], env=env).exit_code == 0
    people = make_residents(25, seed=52)
    src = tmp_path / "chunked.csv"
    src.write_text("name,id_number,mobile\n" + "".join(
        f"{p['name']},{p['id_number']},{p['mobile']}\n" for p in people), encoding="utf-8")
    r = run(app, ["import", str(src), "--chunk-size", "0"], env=env)
    assert r.exit_code == 2 and "error[import.chunk_size]" in r.stderr
    r = run(app, ["import", str(src), "--chunk-size", "7", "--json"], env=env)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert (summary["read"], summary["imported"], summary["rejected"]) == (25, 25, 0)
    for p in (people[0], people[24]):
        r = run(app, ["find", "--id-number", p["id_number"], "--json"], env=env)
        assert r.exit_code == 0 and len(json.loads(r.stdout)) == 1


def _cell_traces(cell: str) -> set[str]:
    """A cell and what it reads as in the encodings the test uses (its mojibake)."""
    raw = cell.encode("utf-8")
    return {cell, *(raw.decode(enc, errors="replace") for enc in ("gb18030", "latin-1", "big5"))}


def test_cli_import_header_errors_show_no_cell(app: typer.Typer, env: dict[str, str],
                                               tmp_path: Path) -> None:
    """A file without a header, or read in the wrong encoding: columns by position, never a value."""
    run = CliRunner().invoke
    assert run(app, ["init", "--expected-population", "1000"], env=env).exit_code == 0
    people = make_residents(3, seed=53)
    broken_id = people[0]["id_number"][:17] + ("0" if people[0]["id_number"][17] != "0" else "1")
    rows = [[people[0]["name"], broken_id, people[0]["address"]],
            *([p["name"], p["id_number"], p["mobile"]] for p in people[1:])]
    nohdr = tmp_path / "nohdr.csv"
    nohdr.write_text("".join(",".join(r) + "\n" for r in rows), encoding="utf-8")
    # no ID number in the first row: only names and addresses
    names = tmp_path / "names.csv"
    names.write_text("".join(f"{p['name']},{p['address']}\n" for p in people), encoding="utf-8")
    traces = {t for r in rows for c in r for t in _cell_traces(c)}
    traces |= {t for p in people for c in (p["name"], p["address"]) for t in _cell_traces(c)}
    cases = [
        ([str(nohdr)], "import.no_header"),
        ([str(nohdr), "--encoding", "gb18030"], "import.no_header"),
        ([str(names)], "import.header"),
        ([str(names), "--encoding", "gb18030"], "import.header"),
        ([str(names), "--encoding", "latin-1"], "import.header"),
        ([str(names), "--encoding", "big5"], "import.header"),
    ]
    for args, code in cases:
        r = run(app, ["import", *args], env=env)
        assert r.exit_code == 2 and "Traceback" not in r.output, (args, r.output)
        # a wrong encoding may show already in the header's bytes: no header to map then
        assert r.stderr.startswith((f"error[{code}]:", "error[import.encoding]:")), (args, r.output)
        assert "--map" in r.stderr or "--encoding" in r.stderr or "header line" in r.stderr
        # no quote of any cell, in the file's encoding or another
        assert not re.search(r"'[^'\s]+'|\"[^\"\s]+\"", r.output), args
        for t in traces:
            assert t not in r.output, args
    r = run(app, ["import", str(nohdr)], env=env)
    assert "#1 (Chinese text), #2 (looks like an ID number), #3 (Chinese text)" in r.stderr
    r = run(app, ["import", str(names)], env=env)
    assert "#1 (Chinese text), #2 (Chinese text)" in r.stderr
    r = run(app, ["import", str(names), "--map", f"name={people[0]['name']}", "--map", "id_number=x"],
            env=env)
    assert r.exit_code == 2 and "error[import.mapping]" in r.stderr
    assert people[0]["name"] not in r.output
    r = run(app, ["stats", "--json"], env=env)
    assert json.loads(r.stdout)["imports"]["batches"] == 0


def test_cli_import_refuses_unreadable_encodings(app: typer.Typer, env: dict[str, str],
                                                  tmp_path: Path) -> None:
    """Codecs the CSV reader cannot read a row at a time: one line, exit 2, no batch begun."""
    run = CliRunner().invoke
    assert run(app, ["init", "--expected-population", "1000"], env=env).exit_code == 0
    people = make_residents(3, seed=54)
    src = tmp_path / "people.csv"
    src.write_text("name,id_number\n" + "".join(f"{p['name']},{p['id_number']}\n" for p in people),
                   encoding="utf-8")
    for enc in ("utf-16", "utf-16-le", "utf-32", "utf-7", "rot13", "base64", "hex", "no-such-codec"):
        r = run(app, ["import", str(src), "--encoding", enc], env=env)
        assert r.exit_code == 2, (enc, r.output)
        assert r.stderr.startswith("error[import.encoding]:") and "Traceback" not in r.output, enc
        assert len(r.stderr.splitlines()) == 2 and "hint:" in r.stderr, enc  # the line and its hint
    r = run(app, ["stats", "--json"], env=env)
    assert json.loads(r.stdout)["imports"]["batches"] == 0
    r = run(app, ["import", str(src), "--encoding", "UTF8", "--json"], env=env)
    assert r.exit_code == 0 and json.loads(r.stdout)["imported"] == 3, r.output


def test_cli_import_workers_are_bounded(app: typer.Typer, env: dict[str, str], tmp_path: Path) -> None:
    """--workers is 0 to 64 like serve's: a typo forks nothing and begins no batch."""
    run = CliRunner().invoke
    assert run(app, ["init", "--expected-population", "1000"], env=env).exit_code == 0
    people = make_residents(4, seed=55)
    src = tmp_path / "few.csv"
    src.write_text("name,id_number\n" + "".join(f"{p['name']},{p['id_number']}\n" for p in people),
                   encoding="utf-8")
    for bad in ("1000", "65", "-1"):
        r = run(app, ["import", str(src), "--workers", bad], env=env)
        assert r.exit_code == 2 and r.stderr.startswith("error[import.workers]:"), (bad, r.output)
        assert "between 0 and 64" in r.stderr
    r = run(app, ["stats", "--json"], env=env)
    assert json.loads(r.stdout)["imports"]["batches"] == 0
    r = run(app, ["import", str(src), "--workers", "1", "--json"], env=env)
    assert r.exit_code == 0 and json.loads(r.stdout)["files"][0]["workers"] == 1, r.output


def test_cli_purpose_is_a_name(app: typer.Typer, env: dict[str, str], tmp_path: Path) -> None:
    """--purpose as the API takes X-Purpose: free text is refused, unrepeated and unaudited."""
    run = CliRunner().invoke
    assert run(app, ["init", "--expected-population", "1000"], env=env).exit_code == 0
    person = make_residents(1, seed=56)[0]
    for bad in ("Bad Purpose", f"call {person['name']}", "x" * 65, "9lives", "", "lookup\n"):
        for cmd in (["find", "--id-number", person["id_number"]], ["get", "r_" + "0" * 26]):
            r = run(app, [*cmd, "--purpose", bad], env=env)
            assert r.exit_code == 2 and r.stderr.startswith("error[purpose.invalid]:"), (bad, r.output)
            assert person["name"] not in r.output
    r = run(app, ["find", "--id-number", person["id_number"], "--purpose", "case-17.review_2"], env=env)
    assert r.exit_code == 0, r.output
    with sqlite3.connect(Path(env["PIVAULT_HOME"]) / "vault.db") as raw:
        purposes = {p for (p,) in raw.execute("SELECT purpose FROM audit_entries")}
    assert "case-17.review_2" in purposes
    assert not any(" " in p or person["name"] in p for p in purposes)


def test_cli_bad_argument_values_exit_2(app: typer.Typer, env: dict[str, str], tmp_path: Path) -> None:
    """A value out of an option's range is bad input (exit 2), said before anything is made."""
    run = CliRunner().invoke
    for population in ("0", "15", "-3", str(10**13)):
        r = run(app, ["init", "--expected-population", population], env=env)
        assert r.exit_code == 2 and r.stderr.startswith("error[keyring.population]:"), r.output
    assert not Path(env["PIVAULT_HOME"]).exists() and not (tmp_path / "xdg").exists()
    assert run(app, ["init", "--expected-population", "16"], env=env).exit_code == 0
    for limit in ("-1", str(10**20)):  # past SQLite's integers: a traceback from the store before
        r = run(app, ["rejects", "show", "--limit", limit], env=env)
        assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.exception
    # errors that are not about an argument keep their status
    r = run(app, ["get", "r_" + "0" * 26], env=env)
    assert r.exit_code == 1 and "error[record.not_found]" in r.stderr


def test_cli_migrate_names_a_missing_store(app: typer.Typer, env: dict[str, str], tmp_path: Path) -> None:
    run = CliRunner().invoke
    r = run(app, ["init", "--expected-population", "1000"], env=env)
    assert r.exit_code == 0, r.output
    store = Path(env["PIVAULT_HOME"]) / "vault.db"
    for f in store.parent.glob("vault.db*"):
        f.unlink()
    for args in (["migrate"], ["stats"]):
        r = run(app, args, env=env)
        assert r.exit_code != 0 and "error[store.missing]" in r.output, (args, r.output)
        assert f"the vault's store {store} is not there" in r.stderr, r.stderr  # one slash
    assert not store.exists()  # not made anew, empty


def test_cli_config_mistakes_are_one_line_errors(app: typer.Typer, env: dict[str, str]) -> None:
    run = CliRunner().invoke
    assert run(app, ["init", "--expected-population", "1000"], env=env).exit_code == 0
    config = Path(env["PIVAULT_HOME"]) / "pivault.toml"
    written = config.read_text(encoding="utf-8")
    without_policy = written.replace('[policy]\npath = ""\n', "")
    # as init wrote it before its default vault-wide limit (the file ended with [policy])
    without_limit = written[:written.index("[policy]")] + '[policy]\npath = ""\n'
    cases = {
        # the key the shipped policy's comment once named, at the top level
        'policy = "/etc/pivault/policy.toml"\n' + without_policy: ("policy", "[policy]"),
        written + '\n[keys]\nusage_warn = "lots"\n': ("[keys] usage_warn", "a number"),
        written + "\n[keys]\nauto_rotat = true\n": ("[keys]", "'auto_rotat'"),
        written + "\n[keys]\nusage_warn = 0.9\nusage_rotate = 0.5\n": ("[keys]", "usage_rotate"),
        written + "\n[audit]\ncheckpoint_every = 1.5\n": ("[audit] checkpoint_every", "integer"),
        without_limit + '\n[detect]\nvault = "all"\n': ("[detect] vault", "a table"),
        without_limit + '\n[detect.vault]\nrecords_per_hour = 0\n': ("[detect.vault] records_per_hour",
                                                                     "at least 1"),
        written + "\n[kyes]\nauto_rotate = true\n": ("'kyes'",),
        # a table declared twice: the parser's reason and the line, not only "cannot read"
        written + '\n[policy]\npath = "/etc/pivault/policy.toml"\n': ("('policy',) twice", "at line "),
        written.replace('[vault]\n', '[vault]\nvault_idd = "x"\n'): ("[vault]", "'vault_idd'"),
        written.replace("expected_population = 1000", 'expected_population = "1000"'):
            ("[vault] expected_population",),
    }
    for text, words in cases.items():
        config.write_text(text, encoding="utf-8")
        for args in (["stats"], ["find", "--mobile", "13800000000"]):
            r = run(app, args, env=env)
            assert r.exit_code == 2 and r.stderr.startswith("error[home.config]: "), (text, r.output)
            assert "Traceback" not in r.output and all(w in r.stderr for w in words), (text, r.stderr)
    # every setting the docs show, together, is accepted (their own vault-wide limit instead of init's)
    config.write_text(without_limit + "\n" + """
[keys]
usage_limit = 281474976710656
usage_warn = 0.25
usage_rotate = 0.5
auto_rotate = false

[audit]
checkpoint_every = 1000
checkpoint_seconds = 300

[detect]
suspend_after = 3
alerts_jsonl = "/tmp/pivault-test-alerts.jsonl"
[detect.vault]
records_per_minute = 5000
[detect.role_totals.officer]
records_per_hour = 20000
[detect.principals."officer-17"]
records_per_day = 5000
[detect.detector]
rate_factor = 5
""", encoding="utf-8")
    r = run(app, ["stats"], env=env)
    assert r.exit_code == 0, r.output


def test_shipped_policy_names_the_real_setting() -> None:
    from importlib import resources

    text = resources.files("pivault.policy").joinpath("default_policy.toml").read_text(encoding="utf-8")
    assert 'policy = "FILE"' not in text and '`path = "FILE"` under `[policy]`' in text


def test_cli_wrong_passphrase_hint_names_what_a_user_can_change(app: typer.Typer,
                                                                env: dict[str, str]) -> None:
    run = CliRunner().invoke
    assert run(app, ["init", "--expected-population", "1000"], env=env).exit_code == 0
    r = run(app, ["stats"], env={**env, "PIVAULT_PASSPHRASE": "not the passphrase"})
    assert r.exit_code == 1 and r.stderr.startswith("error[keyring.passphrase]: wrong passphrase"), r.output
    assert "argument" not in r.stderr and "$PIVAULT_PASSPHRASE" in r.stderr and "typed" in r.stderr


def test_cli_rejects_by_batch_and_a_second_import(app: typer.Typer, env: dict[str, str],
                                                  tmp_path: Path) -> None:
    run = CliRunner().invoke
    assert run(app, ["init", "--expected-population", "1000"], env=env).exit_code == 0
    people = make_residents(3, seed=53)
    src = tmp_path / "in.csv"
    src.write_text("姓名,身份证号,手机\n" + "".join(
        f"{p['name']},{p['id_number']},{p['mobile']}\n" for p in people) + "张三,123,13800000000\n",
        encoding="utf-8")
    r = run(app, ["import", str(src), "--json"], env=env)
    assert r.exit_code == 0, r.output
    batch = json.loads(r.stdout)["files"][0]["batch_id"]
    # the human table shows the batch id whole, ready to be copied
    r = run(app, ["rejects", "show"], env={**env, "COLUMNS": "80"})
    assert r.exit_code == 0 and batch in r.stdout, r.stdout
    r = run(app, ["rejects", "show", "--batch", batch, "--json"], env=env)
    assert r.exit_code == 0 and [x["line"] for x in json.loads(r.stdout)] == [5]
    for unknown in (batch[:8], "b_" + "0" * 32):
        r = run(app, ["rejects", "show", "--batch", unknown], env=env)
        assert r.exit_code == 1 and r.stderr.startswith("error[import.batch_unknown]: "), r.output
        assert "no rejected rows" not in r.stdout
    # a file already imported: nothing was read, so no rate
    r = run(app, ["import", str(src), "--json"], env=env)
    again = json.loads(r.stdout)
    f = again["files"][0]
    assert f["status"] == "already_imported" and f["rows_per_second"] == 0 and "seconds" in again


@pytest.mark.parametrize(("table", "setting"), [
    ("audit", "checkpoint_seconds = nan"), ("audit", "checkpoint_seconds = inf"),
    ("audit", "checkpoint_every = 0"), ("detect", "suspend_after = -1"),
])
def test_config_values_out_of_range_are_refused(table: str, setting: str) -> None:
    from pivault.errors import ConfigError
    from pivault.vault.home import check_settings

    doc = tomllib.loads(f"[{table}]\n{setting}\n")
    with pytest.raises(ConfigError) as err:
        check_settings(doc)
    assert err.value.code == "home.config" and setting.split(" ")[0] in err.value.message


def test_only_migrate_upgrades_a_vault_token_and_audit_commands_refuse(
        env: dict[str, str], tmp_path: Path) -> None:
    """A vault with a schema step pending (a new pivault installed over it): `token` and `audit`
    commands refuse, as every command that opens the vault does, and leave the schema as it was;
    they upgraded it silently, with no word of a backup first. `pivault migrate` upgrades it."""
    from vault_support import run_cli

    run_cli(env, "init", "--expected-population", "1000")
    store = Path(env["PIVAULT_HOME"]) / "vault.db"
    with sqlite3.connect(store) as raw:  # as if made by the release before the step
        raw.execute("DROP TABLE import_reject_numbers")
        raw.execute("DELETE FROM schema_migrations WHERE component = 'imports' AND version = 2")
    for args in (("token", "list"), ("token", "create", "--principal", "p1", "--role", "officer"),
                 ("alerts", "list"), ("audit", "export-checkpoint", "--out", str(tmp_path / "cp.json")),
                 ("stats",)):
        res = run_cli(env, *args, code=2)
        assert res.stderr.startswith("error[store.schema]") and "pivault migrate" in res.stderr, args
    with sqlite3.connect(store) as raw:
        assert raw.execute("SELECT COUNT(*) FROM schema_migrations WHERE component = 'imports'"
                           " AND version = 2").fetchone() == (0,)
    run_cli(env, "migrate")
    run_cli(env, "token", "list")
