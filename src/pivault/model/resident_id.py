"""Resident identity numbers (GB 11643-1999).

18 characters: division code (6) + birth date YYYYMMDD (8) + sequence (3, odd
for men) + an ISO 7064 MOD 11-2 check character (0-9 or X). Legacy cards carry
15 digits (two-digit year, no check character) and convert to 18.
"""

from __future__ import annotations

import datetime as _dt
import re
import time
import unicodedata
from typing import NamedTuple

from pivault.errors import ValidationError
from pivault.model import divisions
from pivault.model._text import drop_invisible, fold_digits

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"
_RE18 = re.compile(r"[0-9]{17}[0-9X]")
_RE15 = re.compile(r"[0-9]{15}")
#: spaces and dashes, the hyphens and dashes of U+2010-U+2015 and the minus sign U+2212 among them
_SPACES = re.compile(r"[\s\u3000\u00a0\-\u2010-\u2015\u2212]+")
EARLIEST_BIRTH = _dt.date(1900, 1, 1)


def check_char(first17: str) -> str:
    """The MOD 11-2 check character for the first 17 digits."""
    if len(first17) == 17 and first17.isascii() and first17.isdigit():
        # the weights are 2**(17-i) mod 11 and 13 is 2 modulo 11: the weighted sum is
        # 2 * int(first17, 13) mod 11 (the identity the leak and scan matchers use)
        return _CHECK[(2 * int(first17, 13)) % 11]
    total = 0
    for w, c in zip(_WEIGHTS, first17, strict=True):
        total += w * (ord(c) - 48)
    return _CHECK[total % 11]


def _err(code: str, message: str) -> ValidationError:
    return ValidationError(code, message, field="id_number")


def clean(value: str) -> str:
    """Width-fold, drop invisible characters and separators, fold digits, upper-case; no validation."""
    v = fold_digits(drop_invisible(unicodedata.normalize("NFKC", value)))
    v = _SPACES.sub("", v)
    return v.upper()


def upgrade15(number15: str) -> str:
    """Convert a 15-digit legacy number (19YY birth years) to its 18-character form."""
    if not _RE15.fullmatch(number15):
        raise _err("id.format", "a legacy resident ID number has 15 digits")
    first17 = number15[:6] + "19" + number15[6:]
    return first17 + check_char(first17)


#: today's local date and the span of clock time it covers [start, end)
_today_cache: tuple[_dt.date, float, float] = (_dt.date.min, 0.0, 0.0)


def _today() -> _dt.date:
    """``date.today()``, asked of the clock once a day: every number validated compares with it."""
    global _today_cache
    day, start, end = _today_cache
    if start <= time.time() < end:  # a clock set back or forward past midnight asks again
        return day
    day = _dt.date.today()
    start = _dt.datetime.combine(day, _dt.time()).timestamp()
    end = _dt.datetime.combine(day + _dt.timedelta(days=1), _dt.time()).timestamp()
    _today_cache = (day, start, end)
    return day


def _date(number: str, today: _dt.date | None) -> _dt.date:
    try:
        born = _dt.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        raise _err("id.date", "the birth date in the resident ID number is not a real date") from None
    if born < EARLIEST_BIRTH:
        raise _err("id.date", "the birth date in the resident ID number is before 1900")
    if born > (today or _today()):
        raise _err("id.date", "the birth date in the resident ID number is in the future")
    return born


def normalise(value: str, *, today: _dt.date | None = None) -> str:
    """Validate a resident ID number and return its canonical 18-character form.

    Accepts surrounding and inner spaces, full-width digits, digits of other
    scripts, invisible characters (zero-width, bidi controls, which are
    dropped), a lowercase ``x`` and 15-digit legacy numbers. Raises :class:`ValidationError` with one of
    ``id.empty``, ``id.length``, ``id.format``, ``id.region``, ``id.date``,
    ``id.checksum``.
    """
    # already 17 digits and a digit or X (every import row, lookup): nothing for clean() to fold
    canonical = (value.__class__ is str and len(value) == 18 and value.isascii()
                 and _RE18.fullmatch(value.upper()) is not None)
    if not canonical and (value is None or not str(value).strip()):
        raise _err("id.empty", "the resident ID number is empty")
    v = value.upper() if canonical else clean(str(value))
    if not v:  # nothing but characters that show nothing
        raise _err("id.empty", "the resident ID number is empty")
    if len(v) == 15:
        if not _RE15.fullmatch(v):
            raise _err("id.format", "a legacy resident ID number has 15 digits")
        v15 = v
        if not divisions.is_known(v15[:6]):
            raise _err("id.region", "the division code of the resident ID number is unknown")
        v = upgrade15(v15)
        _date(v, today)
        return v
    if len(v) != 18:
        raise _err("id.length", "a resident ID number has 18 characters (or 15 for legacy cards)")
    if not _RE18.fullmatch(v):
        raise _err("id.format", "a resident ID number is 17 digits and a digit or X")
    if not divisions.is_known(v[:6]):
        raise _err("id.region", "the division code of the resident ID number is unknown")
    _date(v, today)
    if check_char(v[:17]) != v[17]:
        raise _err("id.checksum", "the check character of the resident ID number is wrong")
    return v


def is_valid(value: str) -> bool:
    try:
        normalise(value)
    except ValidationError:
        return False
    return True


class IdFacts(NamedTuple):
    """What a valid number says about its holder.

    A named tuple, not a frozen dataclass: it is made for every record a lookup
    returns, and a tuple is made in a fifth of the time.
    """

    region_code: str
    birth_date: _dt.date
    gender: str  # "M" or "F"


def facts(normalised: str) -> IdFacts:
    """Facts derived from an already-normalised 18-character number."""
    born = _dt.date(int(normalised[6:10]), int(normalised[10:12]), int(normalised[12:14]))
    return IdFacts(normalised[:6], born, "M" if int(normalised[16]) % 2 else "F")


def make(region_code: str, birth_date: _dt.date, sequence: int) -> str:
    """Build a valid number; the gender is the parity of ``sequence`` (odd = male)."""
    first17 = f"{region_code}{birth_date:%Y%m%d}{sequence:03d}"
    return first17 + check_char(first17)
