"""`kill -9` of `pivault backup`: what the dead run left on the shelf goes, a live run's stays.

A backup run works in a scratch directory on the backup shelf (the copy of
the store, the temporary tar) and holds a lock on it for as long as it
lives. The next run clears the directories of dead runs and never one a
live run is writing; `backup verify` and `restore` refuse a scratch file as
not a backup. Real processes, a real SIGKILL, a real SIGSTOP.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "vault"))

from vault_support import cheap_cli_env, make_residents
from vault_support import run_cli as run
from vault_support import spawn_cli as _spawn


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return cheap_cli_env(tmp_path, monkeypatch, "")


def _scratch(shelf: Path) -> set[Path]:
    return {p for p in shelf.glob(".pivault-backup-*") if p.is_dir()} if shelf.exists() else set()


def _caught(env: dict[str, str], home: Path, out: Path, sig: int) -> tuple[subprocess.Popen[str], Path]:
    """A `pivault backup` given ``sig`` while its scratch directory holds a file (retried until caught)."""
    before = _scratch(out.parent)
    for _ in range(20):
        proc = _spawn(env, "backup", "--out", str(out), "--home", str(home))
        while proc.poll() is None:
            made = [d for d in _scratch(out.parent) - before if any(d.iterdir())]
            if made:
                os.killpg(proc.pid, sig)
                return proc, made[0]
            time.sleep(0.0005)
        out.unlink(missing_ok=True)  # it finished before it could be caught: try again
    pytest.fail("no backup run was caught while writing its scratch directory")


def test_a_killed_backups_scratch_is_cleared_by_the_next_never_a_live_ones(
        env: dict[str, str], tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(env, "init", "--home", str(home), "--expected-population", "100000", "--json")
    src = tmp_path / "residents.csv"
    with open(src, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["name", "id_number", "mobile", "address"])
        w.writeheader()
        w.writerows({k: p[k] for k in ("name", "id_number", "mobile", "address")}
                    for p in make_residents(300, seed=71))
    run(env, "import", str(src), "--home", str(home))
    shelf = tmp_path / "shelf"

    killed, dead_dir = _caught(env, home, shelf / "killed.pvb", signal.SIGKILL)
    killed.wait(timeout=30)
    assert dead_dir.exists() and not (shelf / "killed.pvb").exists()
    left = next(p for p in dead_dir.iterdir())
    res = run(env, "backup", "verify", str(left), "--home", str(home), code=1)
    assert "backup.unfinished" in res.output and "Traceback" not in res.output

    live, live_dir = _caught(env, home, shelf / "live.pvb", signal.SIGSTOP)
    try:
        run(env, "backup", "--out", str(shelf / "next.pvb"), "--home", str(home))
        assert not dead_dir.exists(), "the dead run's scratch was left on the shelf"
        assert live_dir.exists(), "a live run's scratch was removed under it"
    finally:
        os.killpg(live.pid, signal.SIGCONT)
    _, err = live.communicate(timeout=120)
    assert live.returncode == 0, err[-2000:]
    assert not live_dir.exists() and _scratch(shelf) == set()
    for name in ("live.pvb", "next.pvb"):
        out = json.loads(run(env, "backup", "verify", str(shelf / name), "--home", str(home),
                             "--json").stdout)
        assert out["ok"] is True
    # nothing on the shelf but the two backups and the shelf's lock
    assert sorted(p.name for p in shelf.iterdir()) == [".pivault-backup.lock", "live.pvb", "next.pvb"]


def test_a_public_key_other_than_the_one_beside_the_keyring_is_warned_of(
        env: dict[str, str], tmp_path: Path) -> None:
    """`--public-key` wins over the key file beside the keyring; when they differ, stderr says so once."""
    home = tmp_path / "home"
    info = json.loads(run(env, "init", "--home", str(home), "--expected-population", "100000",
                          "--json").stdout)
    shelf = tmp_path / "shelf"
    first = json.loads(run(env, "backup", "--out", str(shelf / "a.pvb"), "--home", str(home),
                           "--json").stdout)
    old_key = first["signing_key"]
    signing = Path(info["keyring"] + ".backup-signing.json")
    old_public = json.loads(signing.read_text())["public"]
    signing.rename(signing.with_name(signing.name + ".old"))  # a new signing key from the next backup
    run(env, "backup", "--out", str(shelf / "b.pvb"), "--home", str(home))
    new_public = json.loads(signing.read_text())["public"]
    assert new_public != old_public

    res = run(env, "backup", "verify", str(shelf / "a.pvb"), "--public-key", old_public, "--home", str(home))
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning:") and old_key in lines[0]
    assert "differs" in lines[0] and "signing key beside the keyring" in lines[0]
    res = run(env, "restore", str(shelf / "a.pvb"), "--public-key", old_public, "--home", str(home))
    assert res.stderr.splitlines()[0].startswith("warning:") and "Traceback" not in res.stderr
    # the same key, or none given: nothing to warn of
    res = run(env, "backup", "verify", str(shelf / "b.pvb"), "--public-key", new_public, "--home", str(home))
    assert res.stderr == ""
    res = run(env, "backup", "verify", str(shelf / "b.pvb"), "--home", str(home))
    assert res.stderr == ""
