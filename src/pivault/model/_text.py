"""Folds shared by the validators: characters that show nothing, and digits of other scripts.

A value re-typed with a zero-width space, a byte-order mark or a bidi control
inside it, or with Arabic-Indic or Devanagari digits, reads as the same number
or name to whoever looks at it. Refused, it would be a dump's way past the
leak check (which reads cells with these validators); folded, it is the
resident it shows, found by every lookup and caught as a duplicate. Values
accepted before hold none of these characters, so no stored value's
normalised form changes.
"""

from __future__ import annotations

import re
import unicodedata

#: Unicode's default-ignorable code points (DerivedCoreProperties.txt, Unicode 15): format
#: characters such as U+200B-U+200F, U+202A-U+202E, U+2060-U+206F and U+FEFF, variation
#: selectors, Hangul fillers, tags. None of them is seen, and none has a place in a number or a name
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0000-\U000e0fff]+")

#: those of them that ``str.isprintable`` takes for printable (combining marks, Hangul fillers,
#: variation selectors): a printable value without one of these holds nothing to drop
PRINTABLE_INVISIBLE = re.compile(
    "[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180d\u180f\u3164\ufe00-\ufe0f\uffa0\U000e0100-\U000e01ef]")


def drop_invisible(value: str) -> str:
    """``value`` without the characters that show nothing (the ASCII case costs one test)."""
    return value if value.isascii() else _INVISIBLE.sub("", value)


def fold_digits(value: str) -> str:
    """Decimal digits of every script (Arabic-Indic ``٣``, Devanagari ``३`` …) as ASCII digits.

    NFKC already folds full-width and mathematical digits; digits of other
    scripts are digits in their own right, which it keeps.
    """
    if value.isascii():
        return value
    return "".join([c if c.isascii() else _digit(c) for c in value])


def _digit(c: str) -> str:
    d = unicodedata.decimal(c, None)
    return c if d is None else chr(48 + d)
