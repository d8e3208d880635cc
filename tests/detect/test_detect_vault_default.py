"""The vault-wide read limit every new vault gets: sized by ``pivault init``, seen, changed, enforced.

Without it, every token issued to a new principal name brings a budget of
its own, and many tokens together can read the whole population. The drill
runs a real ``pivault serve`` on a vault made by the command line, with no
configuration written by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_vault import CHEAP, PASSPHRASE, LiveVault, without_vault_limit
from typer.testing import CliRunner

from pivault.api.server import ServeOptions, _limits
from pivault.cli.main import app
from pivault.detect import BudgetExceeded, list_alerts
from pivault.detect.setup import DetectSettings, default_vault_budget
from pivault.errors import ConfigError
from pivault.model import Resident
from pivault.policy import Policy
from pivault.policy.context import local_operator
from pivault.policy.tokens import TokenStore
from pivault.store import Database
from pivault.synth import generate, write_population
from pivault.vault import Vault
from pivault.vault import home as vault_home
from pivault.vault.facade import seal

ROOT_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PIVAULT_")}


def _init(tmp_path: Path, population: int = 1000) -> Path:
    home = tmp_path / "home"
    vault_home.init(home, passphrase=PASSPHRASE, keyring_path=tmp_path / "keys" / "v.keyring",
                    argon2=CHEAP, expected_population=population)
    return home


def _config(home: Path) -> str:
    return (home / "pivault.toml").read_text(encoding="utf-8")


def test_the_default_is_sized_from_the_population_with_floors() -> None:
    # 0.01 % of the population a minute, 0.2 % an hour, 2 % a day ...
    assert default_vault_budget(10_000_000) == {
        "records_per_minute": 1_000, "records_per_hour": 20_000, "records_per_day": 200_000}
    assert default_vault_budget(1_400_000_000) == {
        "records_per_minute": 140_000, "records_per_hour": 2_800_000, "records_per_day": 28_000_000}
    # ... never below what a small vault's few principals need
    floors = {"records_per_minute": 100, "records_per_hour": 1_000, "records_per_day": 5_000}
    assert default_vault_budget(1000) == floors
    assert default_vault_budget(100_000) == floors
    for population in (250_000, 10**6, 10**7, 10**8, 10**9, 10**12):
        b = default_vault_budget(population)
        # a copy of the whole population takes at least 50 days at the limit
        assert population / b["records_per_day"] >= 50 or b["records_per_day"] == floors["records_per_day"]
        assert b["records_per_minute"] * 60 > b["records_per_hour"] > b["records_per_minute"]
        assert b["records_per_hour"] * 24 > b["records_per_day"] > b["records_per_hour"]


def test_init_writes_the_vault_wide_limit(tmp_path: Path) -> None:
    home = _init(tmp_path, population=10_000_000)
    text = _config(home)
    doc = tomllib.loads(text)
    assert doc["detect"]["vault"] == default_vault_budget(10_000_000)
    assert "records_per_minute = 1000\n" in text and "records_per_day = 200000\n" in text
    assert vault_home.load(home).vault_budget == default_vault_budget(10_000_000)
    settings = DetectSettings.from_home(home)
    assert settings.vault == default_vault_budget(10_000_000)
    # the serve banner shows it, and where it is set
    line = _limits(ServeOptions(home=str(home)))
    assert line.startswith("vault-wide records_per_day 200000, records_per_hour 20000, "
                           "records_per_minute 1000"), line
    assert "[detect.vault] in " + str(home / "pivault.toml") in line


def test_the_command_line_init_shows_and_writes_the_limit(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from pivault.crypto import PassphraseProvider

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(vault_home, "PassphraseProvider",
                        lambda passphrase, params=None: PassphraseProvider(passphrase, CHEAP))
    env = {"PIVAULT_PASSPHRASE": PASSPHRASE}
    r = CliRunner().invoke(app, ["init", "--home", str(tmp_path / "a"), "--expected-population", "2000000"],
                           env=env)
    assert r.exit_code == 0, r.output
    assert "read limit, all principals together: 200 a minute, 4,000 an hour, 40,000 a day" in r.stdout
    assert "[detect.vault] in " + str(tmp_path / "a" / "pivault.toml") in r.stdout
    r = CliRunner().invoke(app, ["init", "--home", str(tmp_path / "b"), "--json"], env=env)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["vault_read_limit"] == default_vault_budget(10_000_000)
    assert tomllib.loads(_config(tmp_path / "b"))["detect"]["vault"] == default_vault_budget(10_000_000)


@pytest.mark.parametrize(("line", "words"), [
    ("records_per_minute = 0", ("records_per_minute", "at least 1")),
    ("records_per_hour = -5", ("records_per_hour", "at least 1")),
    ("records_per_day = 1.5", ("records_per_day", "whole number")),
    ('records_per_minute = "lots"', ("records_per_minute", "whole number")),
    ("records_per_minute = true", ("records_per_minute", "whole number")),
    ("records_per_minut = 100", ("[detect.vault]", "'records_per_minut'", "records_per_minute")),
])
def test_bad_values_are_refused_in_one_line_naming_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          line: str, words: tuple[str, ...]) -> None:
    home = _init(tmp_path)
    bad = without_vault_limit(_config(home)) + "[detect.vault]\n" + line + "\n"
    (home / "pivault.toml").write_text(bad, encoding="utf-8")
    monkeypatch.setenv("PIVAULT_PASSPHRASE", PASSPHRASE)
    for args in (["stats", "--home", str(home)], ["serve", "--home", str(home), "--port", "1"]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stderr.startswith("error[home.config]: [detect.vault] "), r.stderr
        assert all(w in r.stderr for w in words), r.stderr
        assert "Traceback" not in r.output
    with pytest.raises(ConfigError) as exc:  # the settings the door is built from say the same
        DetectSettings.from_home(home)
    assert exc.value.message.startswith("[detect.vault] ") and words[0] in exc.value.message


def _residents(n: int, seed: int = 77) -> list[Resident]:
    return [Resident.parse({k: row[k] or None for k in  # type: ignore[literal-required]
                            ("name", "id_number", "mobile", "address", "notes")})
            for row in generate(n, seed)]


def _read_all(home: Path, ids: list[str]) -> tuple[int, BudgetExceeded | None]:
    """Read each record once through the door as the local operator (no budget of its own)."""
    done = 0
    with Vault.open(home, passphrase=PASSPHRASE) as v:
        ctx = local_operator("administration")
        for rid in ids:
            try:
                v.get(rid, ctx=ctx)
            except BudgetExceeded as exc:
                return done, exc
            done += 1
    return done, None


def test_the_limit_binds_a_fresh_vault_and_an_old_config_behaves_as_before(tmp_path: Path) -> None:
    home = _init(tmp_path)
    people = _residents(130)
    with Vault.open(home, passphrase=PASSPHRASE) as v:
        v.store.insert([seal(v.keyring, r) for r in people])
    ids = [p.record_id for p in people]
    # a fresh vault: a caller without a budget of its own is stopped by the vault's minute
    done, refused = _read_all(home, ids)
    assert done == 100 and refused is not None
    assert refused.rule == "vault.records_per_minute" and refused.limit == 100
    assert 1 <= refused.retry_after <= 62  # a minute, and at most one 60/59-second bucket
    # the same vault as configured before the default: no vault-wide limit, as before
    (home / "pivault.toml").write_text(without_vault_limit(_config(home)), encoding="utf-8")
    assert vault_home.load(home).vault_budget == {}
    assert DetectSettings.from_home(home).vault == {}
    done, refused = _read_all(home, ids)
    assert (done, refused) == (len(ids), None)


def test_without_the_limit_the_banner_names_the_lines_to_add(tmp_path: Path) -> None:
    home = _init(tmp_path, population=50_000_000)
    config = home / "pivault.toml"
    config.write_text(without_vault_limit(_config(home)), encoding="utf-8")
    text = _limits(ServeOptions(home=str(home)))
    first, *rest = text.splitlines()
    assert "no vault-wide limit" in first and "[detect.vault]" in first and str(config) in first
    assert "50,000,000" in first  # the population the lines are sized for
    added = "\n".join(line.strip() for line in rest) + "\n"
    assert added == ("[detect.vault]\nrecords_per_minute = 5000\nrecords_per_hour = 100000\n"
                     "records_per_day = 1000000\n")
    # pasted as printed, they give the vault what `pivault init` writes today
    config.write_text(config.read_text(encoding="utf-8") + "\n" + added, encoding="utf-8")
    assert DetectSettings.from_home(home).vault == default_vault_budget(50_000_000)


def test_a_second_limit_section_is_refused_in_one_line(tmp_path: Path) -> None:
    """An operator who adds [detect.vault] under the one init wrote is told where, not just 'cannot read'."""
    home = _init(tmp_path)
    (home / "pivault.toml").write_text(_config(home) + "\n[detect.vault]\nrecords_per_minute = 5\n",
                                       encoding="utf-8")
    r = CliRunner().invoke(app, ["stats", "--home", str(home)], env={"PIVAULT_PASSPHRASE": PASSPHRASE})
    assert r.exit_code == 2 and r.stderr.startswith("error[home.config]: ")
    assert "('detect', 'vault') twice" in r.stderr and "line" in r.stderr, r.stderr


# -- the drill: ten tokens on a vault made by the command line --------------------------------------

def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "pivault.cli.main", *args], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveVault]:
    """`pivault init` and `pivault import`, the shipped policy, no line of configuration by hand."""
    from pivault.api.tls import make_dev_cert

    tmp = tmp_path_factory.mktemp("fresh")
    home, keyring = tmp / "home", tmp / "keys" / "vault.keyring"
    env = {**ROOT_ENV, "PIVAULT_PASSPHRASE": PASSPHRASE, "XDG_CONFIG_HOME": str(tmp / "xdg"),
           "PYTHONPATH": os.pathsep.join(sys.path)}
    _cli(env, "init", "--home", str(home), "--keyring", str(keyring), "--expected-population", "1000")
    src = tmp / "residents.csv"
    write_population(src, 300, 1357)
    _cli(env, "import", str(src), "--home", str(home))
    residents = [dict(r) for r in generate(300, 1357)]
    policy = tmp / "shipped-policy.toml"
    policy.write_text(Policy.default_text(), encoding="utf-8")
    c = make_dev_cert(tmp / "tls")
    live = LiveVault(home, keyring, c.certfile, c.keyfile, policy, "", residents, [])
    try:
        live.token("officer-on-duty")
        live.start(workers=2)
        yield live
    finally:
        live.stop()


@pytest.mark.slow
def test_ten_tokens_under_their_own_budgets_are_stopped_by_the_default(fresh: LiveVault) -> None:
    live = fresh
    limit = default_vault_budget(1000)["records_per_minute"]
    own = Policy.default().budgets_for("officer")["records_per_minute"]
    per_token = own - 1  # each stays under its own budget ...
    assert 10 * per_token > limit  # ... and together they would read more than the vault allows
    banner = live.output(live.base)
    assert f"read limits together: vault-wide records_per_day 5000, records_per_hour 1000, " \
           f"records_per_minute {limit}" in banner
    tokens = [live.token(f"officer-crowd-{i}")[1] for i in range(10)]
    got = [0] * 10
    refusals: list[tuple[int, str, str, str]] = []
    lock = threading.Lock()

    def read(i: int) -> None:
        with live.client(tokens[i]) as c:
            for resident in live.residents[i * per_token:(i + 1) * per_token]:
                r = c.post("/v1/residents/lookup", json={"id_number": resident["id_number"]})
                with lock:
                    if r.status_code == 200:
                        got[i] += r.json()["count"]
                    else:
                        refusals.append((r.status_code, r.json()["code"], r.json().get("detail", ""),
                                         r.headers.get("Retry-After", "")))

    started = time.monotonic()
    threads = [threading.Thread(target=read, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    elapsed = time.monotonic() - started
    assert all(n <= own for n in got)
    assert refusals, got
    for status, code, detail, retry in refusals:
        assert (status, code) == (429, "budget.exceeded") and "vault.records_per_minute" in detail, detail
        assert 1 <= int(retry) <= 62  # a minute, and at most one 60/59-second bucket
    assert sum(got) <= limit
    if elapsed < 55:  # within one minute's window the vault handed out exactly its limit
        assert sum(got) == limit
    # the operator is alerted, and nobody is suspended for the vault's limit
    with Database(vault_home.load(live.home).store_url) as db:
        deadline = time.monotonic() + 10
        while not any(a["rule"] == "budget.vault" for a in list_alerts(db)) and time.monotonic() < deadline:
            time.sleep(0.1)
        vault_alerts = [a for a in list_alerts(db) if a["rule"] == "budget.vault"]
        assert vault_alerts and vault_alerts[0]["severity"] == "critical"
        states = {t.principal: t.state() for t in TokenStore(db).list()}
    assert all(states[f"officer-crowd-{i}"] == "active" for i in range(10))


def test_an_export_larger_than_the_limit_waits_for_the_operator_to_raise_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An approved export is still a bulk read: it is charged whole to the vault-wide limit, and one
    larger than it never fits however long one waits. The refusal says so, and the export stays
    approved until the operator raises the limit in pivault.toml."""
    home = _init(tmp_path)
    people = _residents(150, seed=78)
    with Vault.open(home, passphrase=PASSPHRASE) as v:
        v.store.insert([seal(v.keyring, r) for r in people])
        _, approver = TokenStore(v.db).create("approver-1", "approver", ["export_approval"], ttl_seconds=600)
    monkeypatch.setenv("PIVAULT_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("PIVAULT_HOME", str(home))
    run = CliRunner().invoke
    r = run(app, ["export", "request", "--recipient", "Institute X", "--purpose", "research", "--fields",
                  "name,id_number", "--selection", "ids=" + ",".join(p.record_id for p in people), "--json"])
    assert r.exit_code == 0, r.output
    export_id = json.loads(r.stdout)["export_id"]
    r = run(app, ["export", "approve", export_id, "--token", approver])
    assert r.exit_code == 0, r.output
    out = tmp_path / "x.csv"
    r = run(app, ["export", "fetch", export_id, "--out", str(out)])
    assert r.exit_code == 1 and not out.exists()
    assert r.stderr.startswith("error[budget.exceeded]: read budget too small for this request: "
                               "vault.records_per_minute allows 100, the request needs 150; no wait lets "
                               "it through"), r.stderr
    assert "hint: " in r.stderr and "never fits" in r.stderr and "[detect.vault]" in r.stderr
    assert str(home / "pivault.toml") in r.stderr and "policy" not in r.stderr.split("hint: ")[1]
    r = run(app, ["export", "list", "--json"])
    assert [e["status"] for e in json.loads(r.stdout)] == ["approved"]
    # the refusal outlives the fetch it stopped: in the trail, which still verifies, and in the alerts
    r = run(app, ["audit", "show", "--operation", "export", "--outcome", "refused", "--json"])
    assert r.exit_code == 0, r.output
    assert sorted(rid for e in json.loads(r.stdout) for rid in e["record_ids"]) == sorted(
        p.record_id for p in people)
    r = run(app, ["alerts", "list", "--rule", "budget.vault", "--json"])
    assert [a["evidence"]["requested_records"] for a in json.loads(r.stdout)] == [150]
    r = run(app, ["audit", "verify"])
    assert r.exit_code == 0 and r.stdout.startswith("audit chain intact"), r.output
    # the operator raises the limit for the fetch, deliberately, in the file
    config = home / "pivault.toml"
    config.write_text(config.read_text(encoding="utf-8").replace("records_per_minute = 100\n",
                                                                  "records_per_minute = 200\n"),
                      encoding="utf-8")
    r = run(app, ["export", "fetch", export_id, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "150 records" in r.stdout
