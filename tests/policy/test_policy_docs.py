"""The policies and vault configurations the documentation shows are ones pivault accepts.

A reader copies the example from docs/api.md into a file and runs
``pivault policy check``: it must pass, or the page teaches a refused policy;
the same for a ``pivault.toml`` written by hand (docs/backup.md).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pivault.policy import Policy
from pivault.vault.home import load

DOCS = Path(__file__).resolve().parents[2] / "docs"
_BLOCK = re.compile(r"^```toml\n(.*?)^```", re.M | re.S)


def _policy_blocks() -> list[tuple[str, str]]:
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for i, m in enumerate(_BLOCK.finditer(page.read_text(encoding="utf-8"))):
            # a vault's pivault.toml has a [policy] table too (the policy file's path): not a policy
            if re.search(r"^\[policy\]", m.group(1), re.M) and not re.search(r"^\[vault\]", m.group(1), re.M):
                found.append((f"{page.name}#{i}", m.group(1)))
    return found


def test_the_docs_show_a_policy() -> None:
    assert any(name.startswith("api.md") for name, _ in _policy_blocks())


@pytest.mark.parametrize(("where", "text"), _policy_blocks())
def test_every_policy_in_the_docs_loads(where: str, text: str) -> None:
    policy = Policy.loads(text, source=where)
    assert policy.roles


def _config_blocks() -> list[tuple[str, str]]:
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for i, m in enumerate(_BLOCK.finditer(page.read_text(encoding="utf-8"))):
            if re.search(r"^\[vault\]", m.group(1), re.M):
                found.append((f"{page.name}#{i}", m.group(1)))
    return found


def test_the_docs_show_a_vault_configuration() -> None:
    assert any(name.startswith("backup.md") for name, _ in _config_blocks())


@pytest.mark.parametrize(("where", "text"), _config_blocks())
def test_every_vault_configuration_in_the_docs_loads(where: str, text: str, tmp_path: Path) -> None:
    # an operator copies it into DIR/pivault.toml: it must be read as pivault.toml is
    (tmp_path / "pivault.toml").write_text(text, encoding="utf-8")
    cfg = load(tmp_path)
    assert cfg.vault_id and cfg.store_url and cfg.expected_population > 0, where
