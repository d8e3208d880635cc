"""What a role learns of a resident ID number from the other fields it sees.

An 18-character number is the division code (positions 1-6), the birth date
YYYYMMDD (7-14), a sequence (15-17, odd for men) and a check character (18).
All but the sequence are facts about the holder that other fields show: the
``region_code`` and ``birth_date`` fields are the number's own digits, and
``gender`` is the parity of its 17th. So a masked number is only as hidden as
the union of what every visible field gives away. The registrar of the old
shipped policy saw the region code and the birth date in full and the last four
characters of the number: the whole number, under a purpose for which the
policy refused to reveal it.

The check here works out, for each role and each of its purposes, which of the
18 positions the role can learn without a reveal, and how many numbers remain
possible for the resident it is shown. It finds the positions by applying the
role's real masks to synthetic sample values and seeing which characters
change the output, so a mask added or changed later is judged as it behaves,
not as a table says it does. A caller that may look up by name and birth date
has supplied the birth date itself, so every role allowed ``lookup`` is taken
to know all eight of its digits.

Counting is for the worst-placed resident: for the digits a role sees, the
smallest number of division codes, dates or sequences that share them. Check
character: when it is visible it rules out ten numbers in eleven (one missing
digit is then recovered outright); when it is hidden it is computed from the
other 17 and adds nothing.

:data:`THRESHOLD` is 1,000 candidates. The three sequence digits leave 500
numbers for one division code, birth date and sex; the threshold sits above
that, so a role that knows the region and the birth date in full never passes
on the sequence alone, however the number is masked — some of the region (its
county within a province) or of the date must stay unknown. And 1,000
candidates cost a caller about 500 failed lookups by ID number to confirm one,
ten hours and more against the shipped ``misses_per_hour`` budgets (20-50),
which suspend the principal long before.

The address of residence counts too, as the division it names: for a resident
registered where they live (most never move) the district the default address
mask keeps is the number's county, so a role that looks up by name and birth
date and sees it is left a few dozen numbers. The shipped roles see the
address cut to its province (``address_province``).

Limits: the division codes of Taiwan, Hong Kong and Macau (71, 81, 82) each
stand alone in their province, so a role shown a province learns those holders'
whole region; they are left out of the worst case.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache

from pivault.model import divisions

__all__ = ["THRESHOLD", "IdExposure", "exposures", "id_exposure", "refusal"]

#: fewer candidate numbers than this, for a role that may not reveal the number, refuses the policy
THRESHOLD = 1000

#: applies a named mask to a field's value, as the policy does (``apply_mask``)
MaskFn = Callable[[str, str, str], str]

_REGION = range(0, 6)
_DATE = range(6, 14)
_SEQ = range(14, 17)
_CHECK = 17
#: synthetic values whose characters are varied one at a time; two of each, so a mask
#: that keeps a character only for some values is still caught
_ID_SAMPLES = ("110105194912310021", "622927200102280538")
_DATE_SAMPLES = ("1949-12-31", "2001-02-28")
#: the ID positions of a birth date written YYYY-MM-DD, character by character
_DATE_CHARS = (0, 1, 2, 3, 5, 6, 8, 9)
_UNISSUED = ("71", "81", "82")


@dataclass(frozen=True, slots=True)
class IdExposure:
    """What one role learns of a resident's ID number under one purpose, without a reveal."""

    role: str
    purpose: str
    #: 0-based positions of the 18 the role learns
    known: frozenset[int]
    #: the fields that give them away, in the order of a record
    sources: tuple[str, ...]
    #: numbers still possible for the worst-placed resident
    candidates: int
    #: the birth date is known from lookups by name and birth date, whatever its mask
    birth_from_lookup: bool

    @property
    def refused(self) -> bool:
        return self.candidates < THRESHOLD


def _other(ch: str) -> str:
    return "0" if ch in "9X" else str(int(ch) + 1)


def _vary(value: str, i: int) -> str:
    return value[:i] + _other(value[i]) + value[i + 1:]


def _changes(mask_fn: MaskFn, mask: str, fieldname: str, value: str, i: int) -> bool:
    return mask_fn(mask, fieldname, value) != mask_fn(mask, fieldname, _vary(value, i))


def _visible_id(mask_fn: MaskFn, mask: str) -> set[int]:
    return {i for s in _ID_SAMPLES for i in range(18) if _changes(mask_fn, mask, "id_number", s, i)}


def _visible_region(mask_fn: MaskFn, mask: str) -> set[int]:
    return {i for s in _ID_SAMPLES for i in _REGION
            if _changes(mask_fn, mask, "region_code", s[:6], i)}


def _visible_birth(mask_fn: MaskFn, mask: str) -> set[int]:
    return {6 + j for s in _DATE_SAMPLES for j, c in enumerate(_DATE_CHARS)
            if _changes(mask_fn, mask, "birth_date", s, c)}


def _sample_address(code: str) -> str:
    """A synthetic address in the division ``code``: province, prefecture, district, then a street."""
    parts = [divisions.province_of(code), divisions.prefecture_of(code), divisions.name_of(code)]
    return "".join(dict.fromkeys(p for p in parts if p)) + "人民路1号"


def _visible_address(mask_fn: MaskFn, mask: str) -> set[int]:
    """The ID positions an address under ``mask`` gives away: its division's code, to the level shown.

    Taken for a resident registered where they live (most never move): the
    district shown is the number's county, the prefecture its first four digits.
    """
    from pivault.model.address import parse_prefix

    known: set[int] = set()
    for s in _ID_SAMPLES:
        shown = parse_prefix(mask_fn(mask, "address", _sample_address(s[:6])))
        if shown.district is not None:
            known |= set(_REGION)
        elif shown.prefecture is not None:
            known |= set(range(0, 4))
        elif shown.province is not None:
            known |= set(range(0, 2))
    return known


def _gender_visible(mask_fn: MaskFn, mask: str) -> bool:
    return mask_fn(mask, "gender", "M") != mask_fn(mask, "gender", "F")


def _smallest_group(values: Iterable[str], positions: Iterable[int]) -> int:
    groups: dict[tuple[str, ...], int] = {}
    pos = tuple(positions)
    for v in values:
        key = tuple(v[i] for i in pos)
        groups[key] = groups.get(key, 0) + 1
    return min(groups.values())


@cache
def _region_candidates(known: frozenset[int]) -> int:
    codes = [c for c in divisions.all_codes() if c[:2] not in _UNISSUED]
    return _smallest_group(codes, sorted(known))


@cache
def _date_candidates(known: frozenset[int]) -> int:
    # whole years (1901-2000 holds 25 leap years in a hundred), so the answer does not move with today's date
    start, end = _dt.date(1901, 1, 1), _dt.date(2000, 12, 31)
    days = [f"{start + _dt.timedelta(days=n):%Y%m%d}" for n in range((end - start).days + 1)]
    return _smallest_group(days, sorted(i - 6 for i in known))


@cache
def _seq_candidates(known: frozenset[int], gender: bool) -> int:
    seqs = [f"{n:03d}" + (str(n % 2) if gender else "") for n in range(1000)]
    return _smallest_group(seqs, [*sorted(i - 14 for i in known), *([3] if gender else [])])


def count_candidates(known: Iterable[int], gender: bool) -> int:
    """Numbers still possible, for the worst-placed resident, to one who knows ``known`` (and the sex)."""
    k = frozenset(known)
    total = (_region_candidates(k & set(_REGION)) * _date_candidates(k & set(_DATE))
             * _seq_candidates(k & set(_SEQ), gender))
    if _CHECK in k:
        total = math.ceil(total / 11)
    return total


def id_exposure(mask_fn: MaskFn, role: str, purpose: str, fields: Mapping[str, str],
                operations: Iterable[str]) -> IdExposure:
    """What ``role`` learns of the ID number, seeing ``fields`` under their masks, for ``purpose``."""
    known: set[int] = set()
    sources: list[str] = []
    if "id_number" in fields:
        shown = _visible_id(mask_fn, fields["id_number"])
        if shown:
            known |= shown
            sources.append("id_number")
    if "region_code" in fields:
        shown = _visible_region(mask_fn, fields["region_code"])
        if shown:
            known |= shown
            sources.append("region_code")
    if "address" in fields:
        shown = _visible_address(mask_fn, fields["address"])
        if shown - known:
            known |= shown
            sources.append("address")
    from_lookup = "lookup" in set(operations)
    if from_lookup:
        known |= set(_DATE)
        sources.append("birth_date")
    elif "birth_date" in fields:
        shown = _visible_birth(mask_fn, fields["birth_date"])
        if shown:
            known |= shown
            sources.append("birth_date")
    gender = "gender" in fields and _gender_visible(mask_fn, fields["gender"])
    if gender:
        sources.append("gender")
    return IdExposure(role, purpose, frozenset(known), tuple(sources), count_candidates(known, gender),
                      from_lookup)


def exposures(mask_fn: MaskFn, role: str, purposes: Iterable[str], fields: Mapping[str, str],
              reveal: Mapping[str, frozenset[str]], operations: Iterable[str]) -> list[IdExposure]:
    """One :class:`IdExposure` per purpose for which the role may not reveal the ID number.

    A field the role may reveal for the purpose counts in full: a caller asks
    for the reveal and reads the masked ID number beside it.
    """
    ops = frozenset(operations)
    if not fields or not ops & {"lookup", "read", "export"}:
        return []
    out = []
    for p in purposes:
        if p in reveal.get("id_number", frozenset()):
            continue
        seen = {f: ("none" if p in reveal.get(f, frozenset()) else m) for f, m in fields.items()}
        out.append(id_exposure(mask_fn, role, p, seen, ops))
    return out


def _positions(known: frozenset[int]) -> str:
    """1-based runs, as an operator counts the characters of a number: ``1-3, 15-18``."""
    runs: list[str] = []
    ps = sorted(i + 1 for i in known)
    start = prev = ps[0] if ps else 0
    for p in [*ps[1:], None]:
        if p is not None and p == prev + 1:
            prev = p
            continue
        runs.append(f"{start}" if start == prev else f"{start}-{prev}")
        if p is not None:
            start = prev = p
    return ", ".join(runs) if ps else "none"


def refusal(e: IdExposure) -> str:
    """The one-line reason a policy is refused, and what to change."""
    n = "1 candidate" if e.candidates == 1 else f"{e.candidates} candidates"
    combine = " + ".join(
        f"{s} (from lookups by name and birth date)" if s == "birth_date" and e.birth_from_lookup else s
        for s in e.sources)
    fix = ("mask region_code (region_province) and the address (address_province) further, or mask "
           "more of id_number (id_number_ends)"
           if e.birth_from_lookup else
           "mask region_code (region_province), the address (address_province) or birth_date further, "
           "or mask more of id_number (id_number_ends)")
    what = ("rebuild a resident ID number" if e.candidates == 1
            else "narrow a resident ID number down")
    return (f"roles.{e.role}, purpose {e.purpose!r}: {combine} {what} "
            f"(positions {_positions(e.known)} of 18 known, {n} left, fewer than {THRESHOLD}) "
            f"though the role may not reveal id_number for this purpose; {fix}, "
            f"or allow reveal of id_number for {e.purpose!r}")
