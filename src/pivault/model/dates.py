"""Dates as people write them: one reading for the lookup by name and birth date and the leak check.

A dump's birth-date column is read in the forms below; a lookup that refused
them (``1990/3/7``, ``1990年3月7日``, full-width digits) told its caller that a
date the leak check reads without a second thought is not a date.
"""

from __future__ import annotations

import re
import unicodedata

from pivault.model._text import drop_invisible

#: ``YYYY-M-D`` (or ``/``, ``.``; a time after it is ignored), ``YYYYMMDD``, ``YYYY年M月D日``; ``\d`` is
#: any script's decimal digit, which ``int`` reads
_PATTERNS = (
    re.compile(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?:[ T].*)?"),
    re.compile(r"(\d{4})(\d{2})(\d{2})"),
    re.compile(r"(\d{4})年(\d{1,2})月(\d{1,2})日?"),
)


def written_date(value: str) -> tuple[int, int, int] | None:
    """Year, month and day of a date written in one of the common forms (not checked to exist)."""
    v = drop_invisible(unicodedata.normalize("NFKC", value)).strip()
    for pat in _PATTERNS:
        m = pat.fullmatch(v)
        if m:
            return int(m.group(1)), int(m.group(2)), int(m.group(3))
    return None
