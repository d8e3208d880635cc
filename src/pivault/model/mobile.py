"""Mainland China mobile numbers: 11 digits under an allocated 1xx prefix.

Prefixes follow the MIIT numbering plan as allocated to the carriers; numbers
under an unallocated prefix (``120``, ``142``, ``154`` …) are rejected.
"""

from __future__ import annotations

import re
import unicodedata

from pivault.errors import ValidationError
from pivault.model._text import drop_invisible, fold_digits

#: prefix -> carrier. Three-digit prefixes; 1349 (satellite) and 1740/1749 are
#: special blocks inside allocated prefixes and are accepted under them.
CARRIERS: dict[str, str] = {}
for _carrier, _prefixes in {
    "china_mobile": "134 135 136 137 138 139 147 148 150 151 152 157 158 159 172 178 "
                    "182 183 184 187 188 195 197 198",
    "china_unicom": "130 131 132 145 146 155 156 166 175 176 185 186 196",
    "china_telecom": "133 149 153 173 174 177 180 181 189 190 191 193 199",
    "china_broadnet": "192",
    "virtual": "162 165 167 170 171",
    "iot": "140 141 144",
}.items():
    for _p in _prefixes.split():
        CARRIERS[_p] = _carrier

#: prefixes for personal subscriptions (not the IoT data-only blocks)
PERSONAL_PREFIXES: tuple[str, ...] = tuple(
    sorted(p for p, c in CARRIERS.items() if c != "iot")
)

#: spaces, dashes (U+2010-U+2015 and the minus sign U+2212 among them), parentheses, dots
_STRIP = re.compile(r"[\s\u3000\u00a0\-\u2010-\u2015\u2212().]+")
_DIGITS = re.compile(r"[0-9]+")


def _err(code: str, message: str) -> ValidationError:
    return ValidationError(code, message, field="mobile")


def clean(value: str) -> str:
    """Width-fold and remove separators and a country prefix, without validating."""
    v = _STRIP.sub("", fold_digits(drop_invisible(unicodedata.normalize("NFKC", value))))
    if v.startswith("+86"):
        v = v[3:]
    elif v.startswith("0086"):
        v = v[4:]
    elif v.startswith("86") and len(v) == 13:
        v = v[2:]
    return v


def normalise(value: str) -> str:
    """Validate a mobile number and return its 11 digits.

    Accepts ``+86``, ``0086`` and ``86`` prefixes, spaces, dashes,
    full-width digits, digits of other scripts and invisible characters
    (zero-width, bidi controls, which are dropped). Idempotent. Codes: ``mobile.empty``, ``mobile.format``,
    ``mobile.length``, ``mobile.prefix``.
    """
    if value is None or not str(value).strip():
        raise _err("mobile.empty", "the mobile number is empty")
    v = clean(str(value))
    if not v:  # nothing but characters that show nothing
        raise _err("mobile.empty", "the mobile number is empty")
    if not _DIGITS.fullmatch(v):
        raise _err("mobile.format", "a mobile number holds digits only (with +86 and separators)")
    if len(v) != 11:
        raise _err("mobile.length", "a mainland mobile number has 11 digits")
    if v[:3] not in CARRIERS:
        raise _err("mobile.prefix", "the mobile number's prefix is not allocated to a carrier")
    return v


def carrier(normalised: str) -> str:
    return CARRIERS.get(normalised[:3], "unknown")


def is_valid(value: str) -> bool:
    try:
        normalise(value)
    except ValidationError:
        return False
    return True
