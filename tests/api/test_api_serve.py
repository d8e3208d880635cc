"""``pivault serve`` fails closed; the token, policy and dev-cert commands."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from api_support import CHEAP, PASSPHRASE, free_port, serve_cmd, server_env, start_server, stop
from typer.testing import CliRunner

from pivault.api.server import ServeOptions, ServeRefused, is_loopback, preflight
from pivault.api.tls import make_dev_cert
from pivault.cli.serve_cmds import app
from pivault.policy import Policy, PolicyError
from pivault.policy.tokens import TokenStore
from pivault.store.db import Database
from pivault.vault import init, load


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("serve")
    h = tmp / "home"
    init(h, passphrase=PASSPHRASE, keyring_path=tmp / "keys" / "v.keyring", argon2=CHEAP,
         expected_population=1000)
    return h


def refused(home: Path, *args: str) -> str:
    """Run serve; it must exit non-zero at once, and say why on stderr."""
    r = subprocess.run(serve_cmd(home, *args), env=server_env(home), capture_output=True, timeout=60)
    assert r.returncode != 0
    assert b"Traceback" not in r.stderr
    return r.stderr.decode()


def test_no_principals_refuses_to_start(home: Path) -> None:
    msg = refused(home, "--port", str(free_port()))
    assert "no principals" in msg and "pivault token create" in msg


def test_non_loopback_without_tls_refuses_to_start(home: Path) -> None:
    store = TokenStore(Database(load(home).store_url))
    store.create("someone", "officer", ["identity_verification"], ttl_seconds=600)
    for host in ("0.0.0.0", "::"):  # other addresses: see test_loopback_and_preflight_rules
        msg = refused(home, "--host", host, "--port", str(free_port()))
        assert f"refusing to serve on {host} without TLS" in msg
        assert "--cert" in msg and "dev-cert" in msg


def test_tls_misconfigurations_refuse(home: Path, tmp_path: Path) -> None:
    c = make_dev_cert(tmp_path / "tls")

    def why(**kw: str) -> str:
        with pytest.raises(ServeRefused) as exc:
            preflight(ServeOptions(home=str(home), **kw))  # type: ignore[arg-type]
        return exc.value.message

    assert "both --cert and --key" in why(certfile=str(c.certfile))
    os.chmod(c.keyfile, 0o644)
    assert "can be read by other users" in why(certfile=str(c.certfile), keyfile=str(c.keyfile))
    assert "does not exist" in why(certfile=str(tmp_path / "no.pem"), keyfile=str(c.keyfile))
    os.chmod(c.keyfile, 0o600)
    # files that exist but do not make a TLS pair: refused before any worker would start on them
    other = make_dev_cert(tmp_path / "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n", encoding="utf-8")
    for cert, key in ((garbage, c.keyfile), (c.certfile, other.keyfile)):
        msg = why(certfile=str(cert), keyfile=str(key))
        assert "do not load" in msg and "dev-cert" in msg


def test_several_workers_share_their_budget_counters(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIVAULT_REDIS_URL", raising=False)
    monkeypatch.delenv("PIVAULT_COUNTERS_URL", raising=False)
    # nothing configured: one worker counts in-process, several share a file in the data directory
    one = preflight(ServeOptions(home=str(home), workers=1))
    assert one.counters == "in-process (one worker)" and one.counters_url is None
    two = preflight(ServeOptions(home=str(home), workers=2))
    assert two.counters_url == f"sqlite:///{home.absolute() / 'run' / 'counters.db'}"
    assert two.counters == f"shared by this node's workers, file {home.absolute() / 'run' / 'counters.db'}"
    # in-process counters asked for by name: several workers would each allow the whole budget
    monkeypatch.setenv("PIVAULT_COUNTERS_URL", "memory://")
    with pytest.raises(ServeRefused) as exc:
        preflight(ServeOptions(home=str(home), workers=2))
    assert "in-process budget counters" in exc.value.message and "--workers 1" in exc.value.message
    monkeypatch.setenv("PIVAULT_REDIS_URL", "redis://127.0.0.1:6379/15")
    pre = preflight(ServeOptions(home=str(home), workers=2))
    assert pre.counters == "shared, redis://127.0.0.1:6379" and pre.counters_url is None


def test_policy_granting_anonymous_refuses(home: Path, tmp_path: Path) -> None:
    p = tmp_path / "open.toml"
    p.write_text('[roles.anonymous]\noperations = ["lookup"]\npurposes = ["any"]\n'
                 '[roles.anonymous.fields]\nname = "none"\n', encoding="utf-8")
    with pytest.raises(PolicyError) as exc:
        preflight(ServeOptions(home=str(home), policy=str(p)))
    assert "anonymous" in exc.value.message


def test_policy_rebuilding_id_numbers_refuses(home: Path, tmp_path: Path) -> None:
    p = tmp_path / "rebuild.toml"
    p.write_text('[roles.clerk]\noperations = ["read"]\npurposes = ["registration"]\n'
                 '[roles.clerk.fields]\nid_number = "mask"\nregion_code = "none"\nbirth_date = "none"\n',
                 encoding="utf-8")
    with pytest.raises(PolicyError) as exc:
        preflight(ServeOptions(home=str(home), policy=str(p)))
    assert exc.value.code == "policy.id_rebuild"
    assert exc.value.message.startswith("roles.clerk, purpose 'registration': id_number + region_code")


def test_loopback_and_preflight_rules(home: Path) -> None:
    for h in ("127.0.0.1", "127.8.9.10", "::1", "localhost", "[::1]"):
        assert is_loopback(h)
    for h in ("0.0.0.0", "::", "10.0.0.1", "myhost"):
        assert not is_loopback(h)
    with pytest.raises(ServeRefused):
        preflight(ServeOptions(home=str(home), workers=0))
    for kw in ({"max_body": 0}, {"max_body": -1}, {"timeout": 0.0}, {"timeout": -5.0},
               {"timeout": float("nan")}):
        with pytest.raises(ServeRefused):
            preflight(ServeOptions(home=str(home), **kw))  # type: ignore[arg-type]


def test_nonsense_limits_refuse_to_start(home: Path) -> None:
    """A body limit or timeout that would refuse every request: one line, exit 2, not started."""
    for args, what in ((("--max-body", "-1"), "--max-body"), (("--max-body", "0"), "--max-body"),
                       (("--timeout", "0"), "--timeout"), (("--timeout", "-1"), "--timeout")):
        r = subprocess.run(serve_cmd(home, "--port", str(free_port()), *args), env=server_env(home),
                           capture_output=True, timeout=60)
        err = r.stderr.decode()
        assert r.returncode == 2 and err.startswith("error[serve.refused]:") and what in err, (args, err)
        assert "Traceback" not in err and len(err.splitlines()) == 1


def test_client_share_limits_are_checked_and_named(home: Path) -> None:
    """Each client address's share (connections, TLS handshakes a second): out of range, serve says
    which option and its range in one line and does not start; in range, the banner states them."""
    rate = "--max-client-handshake-rate"
    for args, what in (((rate, "0"), f"{rate} is between 1 and 10000 new TLS handshakes a second"),
                       ((rate, "10001"), f"{rate} is between 1 and 10000"),
                       (("--max-client-connections", "0"), "--max-client-connections is between 1 and")):
        r = subprocess.run(serve_cmd(home, "--port", str(free_port()), *args), env=server_env(home),
                           capture_output=True, timeout=60)
        err = r.stderr.decode()
        assert r.returncode == 2 and err.startswith("error[serve.refused]:") and what in err, (args, err)
        assert "Traceback" not in err and len(err.splitlines()) == 1
    tls = ServeOptions(home=str(home), certfile="c.pem", keyfile="k.pem", max_client_connections=8,
                       max_client_handshake_rate=20)
    from pivault.api.server import Preflight, banner

    line = next(x for x in banner(tls, Preflight(Policy.default(), None, [])).splitlines()
                if x.startswith("per client address"))
    assert line == ("per client address and worker: 8 connections (TLS handshakes in progress included), "
                    "20 new TLS handshakes a second; more are closed before their handshake")


def test_a_taken_port_is_one_line_before_the_banner(home: Path, tmp_path: Path) -> None:
    import socket

    store = TokenStore(Database(load(home).store_url))
    store.create("port-check", "admin", ["administration"], ttl_seconds=600)
    c = make_dev_cert(tmp_path / "tls3")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for workers in ("1", "2"):
            r = subprocess.run(serve_cmd(home, "--port", str(port), "--workers", workers, "--cert",
                                         str(c.certfile), "--key", str(c.keyfile)),
                               env=server_env(home), capture_output=True, timeout=60)
            last = r.stderr.decode().strip().splitlines()[-1]  # after a first start's note on audit keys
            assert r.returncode == 2, (workers, last)
            assert last.startswith("error[serve.refused]: cannot listen"), (workers, last)
            assert "another server" in last and "Traceback" not in r.stderr.decode()
            assert b"routes:" not in r.stdout  # nothing said to be served


def test_serve_on_any_address_with_tls_starts_and_prints_what_it_exposes(home: Path, tmp_path: Path) -> None:
    """With TLS, binding all addresses is allowed; the test still only talks to loopback."""
    store = TokenStore(Database(load(home).store_url))
    store.create("banner-check", "admin", ["administration"], ttl_seconds=600)
    c = make_dev_cert(tmp_path / "tls2")
    port = free_port()
    out, err = tmp_path / "out", tmp_path / "err"
    proc = start_server(home, c.certfile, c.keyfile, port, out, err, "--host", "0.0.0.0")
    try:
        banner = out.read_text()
        assert f"https://0.0.0.0:{port}" in banner
        assert "GET    /healthz" in banner and "anyone (liveness only, no data)" in banner
        assert "POST   /v1/residents/lookup" in banner and "roles: officer, registrar, dpo" in banner
        # the approver may export but reads no record, so a rights copy is not its to make
        assert next(x for x in banner.splitlines() if "/v1/rights/" in x).endswith("roles: dpo")
        assert "banner-check (role admin" in banner
        # a vault made by `pivault init` limits everyone together; the operator sees it at start
        limits = next(x for x in banner.splitlines() if x.startswith("read limits together:"))
        assert limits == ("read limits together: vault-wide records_per_day 5000, records_per_hour 1000, "
                          f"records_per_minute 100 ([detect.vault] in {home / 'pivault.toml'})")
    finally:
        stop(proc)


def test_the_banner_states_the_limits_on_everyone_together(tmp_path: Path) -> None:
    from pivault.api.server import ServeOptions, _limits

    (tmp_path / "pivault.toml").write_text(
        "[detect.vault]\nrecords_per_minute = 5000\nrecords_per_hour = 20000\n"
        "[detect.role_totals.officer]\nrecords_per_hour = 8000\n", encoding="utf-8")
    line = _limits(ServeOptions(home=str(tmp_path)))
    assert line == ("vault-wide records_per_hour 20000, records_per_minute 5000 ([detect.vault] in "
                    f"{tmp_path / 'pivault.toml'}); role officer in all records_per_hour 8000")


def test_token_commands(home: Path, tmp_path: Path) -> None:
    runner = CliRunner(env={"PIVAULT_HOME": str(home), "PIVAULT_PASSPHRASE": PASSPHRASE})
    r = runner.invoke(app, ["token", "create", "--principal", "clerk-7", "--role", "registrar",
                            "--purpose", "registration", "--expires", "2h"])
    assert r.exit_code == 0, r.output
    token = r.stdout.strip()
    assert token.startswith("pv_") and "\n" not in token
    info = TokenStore(Database(load(home).store_url)).verify(token)
    assert info.role == "registrar" and info.purposes == ("registration",)
    out = tmp_path / "t" / "officer.token"
    out.parent.mkdir(mode=0o700)
    r = runner.invoke(app, ["token", "create", "--principal", "o-1", "--role", "officer", "--out", str(out)])
    assert r.exit_code == 0 and "pv_" not in r.stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    r = runner.invoke(app, ["token", "create", "--principal", "x", "--role", "officer",
                            "--purpose", "registration"])
    assert r.exit_code == 2 and "may state only" in r.stderr
    r = runner.invoke(app, ["token", "create", "--principal", "x", "--role", "root"])
    assert r.exit_code == 2 and "no role 'root'" in r.stderr
    r = runner.invoke(app, ["token", "list"])
    assert r.exit_code == 0 and "clerk-7" in r.stdout and token not in r.stdout
    store = TokenStore(Database(load(home).store_url))
    store.suspend(info.token_id, "test")
    assert runner.invoke(app, ["token", "resume", info.token_id]).exit_code == 0
    assert runner.invoke(app, ["token", "resume", info.token_id]).exit_code == 2
    r = runner.invoke(app, ["token", "revoke", info.token_id])
    assert r.exit_code == 0
    r = runner.invoke(app, ["token", "revoke", info.token_id])
    assert r.exit_code == 2
    r = runner.invoke(app, ["token", "list", "--all"])
    assert "revoked" in r.stdout
    # every change at the command line is in the audit trail, naming the token, never the secret
    from pivault.audit import entries

    trail = [(e.operation, tuple(e.detail.get("subjects", ())))
             for e in entries(Database(load(home).store_url)) if e.operation.startswith("token.")]
    assert ("token.create", (info.token_id,)) in trail
    assert ("token.resume", (info.token_id,)) in trail
    assert ("token.revoke", (info.token_id,)) in trail
    assert sum(op == "token.create" for op, _ in trail) == 2  # the refused ones left no entry


def test_token_out_is_checked_before_the_token_exists(home: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner(env={"PIVAULT_HOME": str(home), "PIVAULT_PASSPHRASE": PASSPHRASE})

    def tokens() -> list[str]:
        return [t.token_id for t in TokenStore(Database(load(home).store_url)).list()]

    def create(out: Path, *more: str) -> tuple[int, str]:
        r = runner.invoke(app, ["token", "create", "--principal", "o-2", "--role", "officer",
                                "--out", str(out), *more])
        assert "pv_" not in r.output
        return r.exit_code, r.output

    before = tokens()
    # a directory: refused before anything is made, and nothing is left in it
    d = tmp_path / "dir"
    d.mkdir()
    code, out = create(d)
    assert code == 2 and "error[token.out]" in out and "is a directory" in out
    assert list(d.iterdir()) == [] and tokens() == before
    # a missing directory is not made
    code, out = create(tmp_path / "no" / "such" / "t.token")
    assert code == 2 and "error[token.out]" in out
    assert not (tmp_path / "no").exists() and tokens() == before
    # an existing file is kept, unless --force
    f = tmp_path / "held.token"
    f.write_text("an earlier token\n")
    code, out = create(f)
    assert code == 2 and "error[token.exists]" in out and "--force" in out
    assert f.read_text() == "an earlier token\n" and tokens() == before
    code, out = create(f, "--force")
    assert code == 0, out
    assert f.read_text().startswith("pv_") and stat.S_IMODE(f.stat().st_mode) == 0o600
    assert len(tokens()) == len(before) + 1
    TokenStore(Database(load(home).store_url)).verify(f.read_text().strip())
    # a write that fails after the checks (the path taken meanwhile) leaves no token and no file
    from pivault.crypto import _atomic

    real = _atomic.write_private

    def taken_meanwhile(path: Path, data: bytes, *, overwrite: bool) -> None:
        path.mkdir()
        real(path, data, overwrite=overwrite)

    monkeypatch.setattr(_atomic, "write_private", taken_meanwhile)
    before = tokens()
    late = tmp_path / "late" / "t.token"
    late.parent.mkdir()
    code, out = create(late)
    assert code == 1 and "error[io]" in out
    assert tokens() == before
    assert [p.name for p in late.parent.iterdir()] == ["t.token"] and late.is_dir()
    # with --force, a failure after the new token is written keeps the file it would have replaced

    def written_then_failed(path: Path, data: bytes, *, overwrite: bool) -> None:
        real(path, data, overwrite=overwrite)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(_atomic, "write_private", written_then_failed)
    held = f.read_text()
    code, out = create(f, "--force")
    assert code == 1 and tokens() == before
    assert f.read_text() == held  # the file it would have replaced, and its holder's token, as they were
    assert [p.name for p in f.parent.iterdir() if p.name.startswith(".")] == []  # no new token left


def test_token_commands_need_the_passphrase(home: Path) -> None:
    runner = CliRunner(env={"PIVAULT_HOME": str(home), "PIVAULT_PASSPHRASE": "not the passphrase"})
    before = TokenStore(Database(load(home).store_url)).list()
    r = runner.invoke(app, ["token", "create", "--principal", "mallory", "--role", "admin"])
    assert r.exit_code != 0 and "pv_" not in r.stdout
    assert TokenStore(Database(load(home).store_url)).list() == before


def test_policy_check_command(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["policy", "check"])
    assert r.exit_code == 0, r.output
    for role in ("officer", "registrar", "dpo", "admin"):
        assert role in r.stdout
    assert "no PI" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[roles.r]\noperations = ["lookup", "steal"]\npurposes = ["p"]\n', encoding="utf-8")
    r = runner.invoke(app, ["policy", "check", str(bad)])
    assert r.exit_code == 2 and "unknown operation 'steal'" in r.stderr
    r = runner.invoke(app, ["policy", "check", "--print-default"])
    assert "[roles.officer]" in r.stdout


def test_dev_cert_command(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["dev-cert", "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE((tmp_path / "c" / "key.pem").stat().st_mode) == 0o600
    r = CliRunner().invoke(app, ["dev-cert", "--out", str(tmp_path / "c")])
    assert r.exit_code == 2  # never overwritten without --force
