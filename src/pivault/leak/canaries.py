"""Export canaries that cannot be told from the real rows around them.

A canary only traces a leak if the person holding the export cannot find it
and strip it. Anything made from a fixed list — a few dozen name characters,
a street template, a handful of stock notes, random mobile numbers — is one
regular expression away from being removed with every canary and no real row.
So each canary is assembled from the export's own rows, piece by piece, each
piece from a different real row of a uniform sample of the export:

* region: the county of a row from the prefecture of another row, drawn
  apart from the birth year, so that a canary does not share county and
  birth year with exactly one real row, as a copy of one row would;
* birth year: another row's (clamped to the selection's range); the day and
  the sequence number are drawn, the sequence's parity giving the gender of
  the row the name comes from;
* name: the surname of one row and the given name of another of the same
  gender and naming style (Han, compound surname, or ``·``-joined names);
* mobile: none when the birth-year row has none (children), else the first
  five digits (carrier prefix, start of the home-location block) of a row of
  the same prefecture, with six drawn digits;
* address: the division prefix of the address of a row from the same
  prefecture, the district swapped for the canary's, then the street part
  of another row's address with that prefix, its numbers drawn again;
* notes: another row's notes (empty as often as the real ones), with dates
  and numbers drawn again.

Nothing here reads the vault: uniqueness (no real record, no other canary)
is checked by the caller.
"""

from __future__ import annotations

import datetime as _dt
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from pivault.leak.columns import COMPOUND_SURNAMES
from pivault.model import address as _address
from pivault.model import divisions
from pivault.model import resident_id as _rid

__all__ = ["Blender", "split_name"]

Row = dict[str, "str | None"]
_DOT = "·"
_DATE_CN = re.compile(r"(\d{4})年(\d{1,2})月(\d{1,2})日")
_DATE_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_DIGITS = re.compile(r"\d+")
#: how many draws a piece gets to find a matching row before it settles for any
_TRIES = 24


def split_name(name: str) -> tuple[str, str, str] | None:
    """``(style, surname, given)`` of a Han or ``·``-joined name; None for other scripts."""
    if _DOT in name:
        first, _, rest = name.partition(_DOT)
        return ("dot", first, rest) if first and rest else None
    if not re.fullmatch(r"[\u3400-\u4dbf\u4e00-\u9fff]{2,5}", name):
        return None
    if name[:2] in COMPOUND_SURNAMES and len(name) > 2:
        return "han", name[:2], name[2:]
    return "han", name[:1], name[1:]


def _gender(idn: str) -> str:
    return "M" if int(idn[16]) % 2 else "F"


@dataclass
class Blender:
    """Makes canaries from ``samples``: full rows (every field, and ``id_number``) of the export.

    ``regions``, ``born_from`` and ``born_to`` are the selection's; a canary never
    falls outside them, so filtering on the selection does not strip it.
    """

    samples: Sequence[Row]
    regions: tuple[str, ...] = ()
    born_from: _dt.date | None = None
    born_to: _dt.date | None = None
    rng: secrets.SystemRandom = field(default_factory=secrets.SystemRandom)

    def __post_init__(self) -> None:
        self._rows = [r for r in self.samples if len(r.get("id_number") or "") == 18]
        if not self._rows:
            raise ValueError("canaries are made from at least one row with an ID number")
        self._by_gender: dict[str, list[Row]] = {}
        self._mobile_by_pref: dict[str, list[Row]] = {}
        self._mobiles: list[Row] = []
        self._by_pref: dict[str, list[Row]] = {}
        for r in self._rows:
            idn = r["id_number"] or ""
            self._by_pref.setdefault(idn[:4], []).append(r)
            self._by_gender.setdefault(_gender(idn), []).append(r)
            if r.get("mobile"):
                self._mobiles.append(r)
                self._mobile_by_pref.setdefault(idn[:4], []).append(r)

    def _pick(self, rows: Sequence[Row] | None = None) -> Row:
        return self.rng.choice(rows or self._rows)

    # -- one piece at a time ----------------------------------------------------------
    def _region(self) -> str:
        """The county of a row from the prefecture of another: counties come as often as
        the export's rows come from them (never a code under which no one lives)."""
        model = (self._pick()["id_number"] or "")[:4]
        return (self._pick(self._by_pref.get(model))["id_number"] or "")[:6]

    def _born(self) -> tuple[_dt.date, Row]:
        donor = self._pick()
        year = int((donor["id_number"] or "")[6:10])
        born = _dt.date(year, 1, 1) + _dt.timedelta(days=self.rng.randrange(365))
        born = min(born, _dt.date.today() - _dt.timedelta(days=1))
        lo, hi = self.born_from, self.born_to
        if (lo and born < lo) or (hi and born > hi):
            born = min(max(born, lo or born), hi or born)
        return born, donor

    def _name(self) -> tuple[str, str]:
        """A name and its gender: surname of one row, given name of another alike."""
        first = self._pick()
        gender = _gender(first["id_number"] or "")
        parts = split_name(first.get("name") or "")
        if parts is None:
            return first.get("name") or "", gender
        style, surname, given = parts
        for _ in range(_TRIES):
            other = self._pick(self._by_gender.get(gender))
            p = split_name(other.get("name") or "")
            if p is not None and p[0] == style and other is not first:
                given = p[2]
                break
        return surname + (_DOT if style == "dot" else "") + given, gender

    def _mobile(self, region: str, born_donor: Row) -> str:
        if not born_donor.get("mobile") or not self._mobiles:
            return ""
        donor = self._pick(self._mobile_by_pref.get(region[:4]) or self._mobiles)
        # the carrier prefix and the first two digits of the home-location block: the number
        # lands in one of a hundred neighbouring blocks, and shares its seven-digit block with
        # another row about as often as a real number does (copying all seven would make every
        # canary share its block with a real row, which few real rows of a sparse export do)
        head = (donor["mobile"] or "")[:5]
        return head + f"{self.rng.randrange(10**6):06d}"

    def _address(self, region: str) -> str:
        """The division prefix of a row from the canary's prefecture, its district made the
        canary's; the street part of a row with that prefix (or of the same row), renumbered."""
        model = self._pick(self._by_pref.get(region[:4]))
        text = model.get("address") or ""
        if not text:
            return ""
        prefix, tail = self._split_address(text)
        old = (model["id_number"] or "")[:6]
        if prefix and old != region:
            old_name, new_name = divisions.name_of(old), divisions.name_of(region)
            if old_name and new_name and prefix.endswith(old_name):
                prefix = prefix[: -len(old_name)] + new_name
        for _ in range(_TRIES):
            other = self._pick()
            p, t = self._split_address(other.get("address") or "")
            if t and p == prefix:
                tail = t
                break
        return prefix + self._redraw_numbers(tail)

    @staticmethod
    def _split_address(text: str) -> tuple[str, str]:
        try:
            end = _address.parse_prefix(_address.normalise(text)).end
        except ValueError:
            end = 0
        return text[:end], text[end:]

    def _redraw_numbers(self, text: str, *, today: _dt.date | None = None) -> str:
        """Every number drawn again, of the same width; dates stay dates, rooms keep their door."""
        today = today or _dt.date.today()

        def date(m: re.Match[str], fmt: str) -> str:
            try:
                d = _dt.date(int(m[1]), int(m[2]), int(m[3]))
            except ValueError:
                d = today
            d = min(d + _dt.timedelta(days=self.rng.randrange(-365, 366)), today)
            if fmt == "cn":
                return f"{d.year}年{d.month}月{d.day}日"
            return d.isoformat()

        def number(m: re.Match[str]) -> str:
            s = m.group(0)
            after = m.string[m.end():m.end() + 1]
            keep = s[-2:] if after == "室" and len(s) >= 3 else ""  # the door on its floor
            head = s[:len(s) - len(keep)]
            if s[0] == "0":  # a code, not a count: same width
                return "".join(str(self.rng.randrange(10)) for _ in head) + keep
            n = int(head)  # a house, building or floor number: of the same size
            top = n if keep else n + n // 2  # a floor no higher than one the building has
            return str(self.rng.randint(max(1, n // 2), max(1, top))) + keep

        parts: list[str] = []
        pos = 0
        for m in sorted([*(_m for _m in _DATE_CN.finditer(text)), *(_m for _m in _DATE_ISO.finditer(text))],
                        key=lambda x: x.start()):
            if m.start() < pos:
                continue
            parts.append(_DIGITS.sub(number, text[pos:m.start()]))
            parts.append(date(m, "cn" if "年" in m.group(0) else "iso"))
            pos = m.end()
        parts.append(_DIGITS.sub(number, text[pos:]))
        return "".join(parts)

    def _notes(self) -> str:
        return self._redraw_numbers(self._pick().get("notes") or "")

    # -- a whole canary -----------------------------------------------------------------
    def make(self) -> dict[str, str]:
        """One fictitious resident: name, id_number, mobile, address, notes (empty when absent)."""
        region = self._region()
        born, born_donor = self._born()
        name, gender = self._name()
        seq = self.rng.randrange(1, 500) * 2 - (1 if gender == "M" else 0)
        return {"name": name, "id_number": _rid.make(region, born, seq),
                "mobile": self._mobile(region, born_donor), "address": self._address(region),
                "notes": self._notes()}
