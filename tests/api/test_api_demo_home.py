"""The demo's home in the checkout holds bearer tokens and the vault's passphrase."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_git_never_takes_the_demo_home_into_a_commit() -> None:
    """`make demo` writes `.pivault-demo/` (tokens, TLS key, passphrase) where a `git add -A` would
    pick it up: the checkout ignores it."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to commit the demo home into")
    secrets = [".pivault-demo/tokens/officer.token", ".pivault-demo/secrets/passphrase",
               ".pivault-demo/tls/key.pem", ".pivault-demo/vault.db"]
    done = subprocess.run(["git", "check-ignore", "--no-index", *secrets], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert sorted(done.stdout.split()) == sorted(secrets), done.stderr


def test_demo_without_serving_prepares_the_vault_and_says_nothing_listens(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import stat

    from typer.testing import CliRunner

    from pivault.cli.main import app

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PIVAULT_PASSPHRASE", "")  # generated and kept in the home (restored after)
    home = tmp_path / "demo"
    r = CliRunner().invoke(app, ["demo", "--home", str(home), "--count", "300", "--no-serve"])
    assert r.exit_code == 0, r.output
    assert "not served (--no-serve)" in r.output and "try, from another terminal" not in r.output
    # the demo vault limits all principals together, as every vault `pivault init` makes
    import tomllib

    from pivault.detect.setup import default_vault_budget

    assert "read limit, all principals together: 100 a minute, 1,000 an hour, 5,000 a day" in r.output
    config = tomllib.loads((home / "pivault.toml").read_text(encoding="utf-8"))
    assert config["detect"]["vault"] == default_vault_budget(1000)
    tokens = sorted(p.name for p in (home / "tokens").iterdir())
    assert tokens == ["admin.token", "dpo.token", "officer.token", "registrar.token"]
    for p in [*(home / "tokens").iterdir(), home / "secrets" / "passphrase"]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name
    assert not (home / "import" / "demo-population.csv").exists()  # the plaintext file is gone
    r = CliRunner().invoke(app, ["stats", "--json", "--home", str(home)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["store"]["rows"] == 300
