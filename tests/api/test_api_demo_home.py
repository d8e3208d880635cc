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
