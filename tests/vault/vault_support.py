"""Synthetic residents and cheap keyrings for the Vault tests (no real person anywhere)."""

from __future__ import annotations

import datetime as _dt
import random
from pathlib import Path
from typing import Any

from pivault.crypto import Argon2Params, Keyring, PassphraseProvider
from pivault.model import resident_id

PASSPHRASE = "synthetic-vault-test-passphrase"
#: minimum Argon2 cost: the tests check behaviour, not the work factor
CHEAP = Argon2Params(time_cost=1, memory_cost=8, parallelism=1)

_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘"
_GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超兰霞平刚桂华建国志红玉萍文斌宇浩鹏"
_PREFIXES = ("138", "139", "186", "189", "150", "133")
_REGIONS = ("110101", "310104", "440305", "510107", "330106", "420106")


def make_residents(n: int, seed: int = 1) -> list[dict[str, str]]:
    """Distinct synthetic residents (no real person) with valid ID and mobile numbers."""
    rng = random.Random(seed)
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    while len(out) < n:
        born = _dt.date(1940, 1, 1) + _dt.timedelta(days=rng.randrange(25000))
        idn = resident_id.make(rng.choice(_REGIONS), born, rng.randrange(1000))
        if idn in seen:
            continue
        seen.add(idn)
        out.append({
            "name": rng.choice(_SURNAMES) + "".join(rng.choice(_GIVEN) for _ in range(rng.choice((1, 2)))),
            "id_number": idn,
            "mobile": rng.choice(_PREFIXES) + f"{rng.randrange(10**8):08d}",
            "address": f"北京市东城区东华门街道{rng.randrange(1, 300)}号{rng.randrange(1, 30)}室",
            "notes": rng.choice(("", "测试备注", "合成数据")),
        })
    return out


def new_keyring(path: Path, population: int = 10**6) -> Keyring:
    return Keyring.create(path, PassphraseProvider(PASSPHRASE, CHEAP), expected_population=population)


def cheap_cli_env(tmp_path: Path, monkeypatch: Any, home: str) -> dict[str, str]:
    """Environment for the command line in tests: the synthetic passphrase, keyrings under
    ``tmp_path``, and Argon2 kept cheap for ``init`` (opening reads the keyring's parameters)."""
    from pivault.vault import home as _home

    def cheap(passphrase: str, params: object = None) -> PassphraseProvider:
        return PassphraseProvider(passphrase, CHEAP)

    monkeypatch.setattr(_home, "PassphraseProvider", cheap)
    return {"PIVAULT_PASSPHRASE": PASSPHRASE, "PIVAULT_HOME": home,
            "XDG_CONFIG_HOME": str(tmp_path / "xdg")}


def run_cli(env: dict[str, str], *args: str, code: int = 0, **more: str) -> Any:
    """``pivault ARGS`` in this process with ``env`` (and ``more``): its exit code is ``code``, and
    no traceback reached the operator."""
    from typer.testing import CliRunner

    from pivault.cli.main import app

    res = CliRunner().invoke(app, list(args), env={**env, **more})
    assert res.exit_code == code, (args, res.output)
    assert "Traceback" not in res.output
    return res


def spawn_cli(env: dict[str, str], *args: str) -> Any:
    """The command line in a process of its own (and its own group), as an operator runs it: one
    that a test can kill."""
    import os
    import subprocess
    import sys

    full = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-c", "from pivault.cli.main import main; main()", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=full)

