"""The GB/T 2260 administrative division table shipped with pivault.

Resident ID numbers keep the division code of the place of first issue, so a
code retired decades ago still appears on valid cards: the table keeps every
code ever assigned with the years it was valid (see ``data/divisions.SOURCE.md``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True, slots=True)
class Division:
    code: str
    name: str
    province: str
    valid_from: int | None
    valid_to: int | None

    @property
    def is_current(self) -> bool:
        return self.valid_to is None

    @property
    def is_county(self) -> bool:
        """A county-level unit (the last two digits are not 00)."""
        return not self.code.endswith("00")


def _year(text: str) -> int | None:
    return int(text) if text else None


@cache
def _table() -> dict[str, tuple[Division, ...]]:
    table: dict[str, list[Division]] = {}
    ref = resources.files("pivault.model").joinpath("data/divisions.csv")
    with ref.open("r", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            d = Division(
                row["code"], row["name"], row["province"],
                _year(row["valid_from"]), _year(row["valid_to"]),
            )
            table.setdefault(d.code, []).append(d)
    return {code: tuple(v) for code, v in table.items()}


def is_known(code: str) -> bool:
    """True when ``code`` was ever assigned as a division code."""
    return code in _table()


def lookup(code: str) -> tuple[Division, ...]:
    """Every name the code has carried, oldest first; empty if unknown."""
    return _table().get(code, ())


def all_codes() -> list[str]:
    return sorted(_table())


@cache
def current_county_codes() -> tuple[str, ...]:
    """County-level codes in use today: the ones new ID numbers are issued under."""
    out = [
        code for code, names in _table().items()
        if code[2:] != "0000" and not code.endswith("00") and code[:2] not in ("71", "81", "82")
        and any(d.is_current for d in names)
    ]
    return tuple(sorted(out))


def name_of(code: str) -> str | None:
    """The code's latest name."""
    names = lookup(code)
    return names[-1].name if names else None


def province_of(code: str) -> str | None:
    names = lookup(code)
    return names[-1].province if names else None


def prefecture_of(code: str) -> str | None:
    """The latest name of the prefecture-level unit above ``code`` (``XXYY00``)."""
    pref = lookup(code[:4] + "00")
    if not pref:
        return None
    name = pref[-1].name
    return None if name in ("市辖区", "县", "省直辖县级行政区划", "自治区直辖县级行政区划") else name


@cache
def _by_name() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for code, names in _table().items():
        for d in names:
            out.setdefault(d.name, []).append(code)
    return out


def codes_named(name: str) -> list[str]:
    """Codes that have carried ``name`` (names repeat across provinces)."""
    return list(_by_name().get(name, ()))
