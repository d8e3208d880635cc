"""The policies the documentation shows are policies pivault accepts.

A reader copies the example from docs/api.md into a file and runs
``pivault policy check``: it must pass, or the page teaches a refused policy.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pivault.policy import Policy

DOCS = Path(__file__).resolve().parents[2] / "docs"
_BLOCK = re.compile(r"^```toml\n(.*?)^```", re.M | re.S)


def _policy_blocks() -> list[tuple[str, str]]:
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for i, m in enumerate(_BLOCK.finditer(page.read_text(encoding="utf-8"))):
            if re.search(r"^\[policy\]", m.group(1), re.M):
                found.append((f"{page.name}#{i}", m.group(1)))
    return found


def test_the_docs_show_a_policy() -> None:
    assert any(name.startswith("api.md") for name, _ in _policy_blocks())


@pytest.mark.parametrize(("where", "text"), _policy_blocks())
def test_every_policy_in_the_docs_loads(where: str, text: str) -> None:
    policy = Policy.loads(text, source=where)
    assert policy.roles
