"""Fast validators and masks for the scanner's candidates.

These are specialised forms of the :mod:`pivault.model` validators, working
on ASCII bytes without normalisation (the scanner has already cut the token
out of its text). They agree with the model on every input of the shapes
they accept; the tests check that.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
import operator
from functools import cache

from pivault.model import divisions, mobile, resident_id
from pivault.model import masks as _masks

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = b"10X98765432"
_ID_BIAS = 48 * sum(_ID_WEIGHTS)


@cache
def _division_codes() -> frozenset[bytes]:
    return frozenset(c.encode() for c in divisions.all_codes())


@cache
def _dates() -> frozenset[bytes]:
    """Every YYYYMMDD from 1900-01-01 to today: the birth dates the model accepts."""
    out = set()
    d = resident_id.EARLIEST_BIRTH
    end = _dt.date.today()
    one = _dt.timedelta(days=1)
    while d <= end:
        out.add(d.strftime("%Y%m%d").encode())
        d += one
    return frozenset(out)


_MOBILE_PREFIXES = frozenset(p.encode() for p in mobile.CARRIERS)


_CODES = _division_codes()
_DATES = _dates()


def id18_ok(tok: bytes) -> bool:
    """``tok`` is 17 digits and a digit or upper-case X: is it a valid resident ID number?"""
    if tok[:6] not in _CODES or tok[6:14] not in _DATES:
        return False
    total = sum(map(operator.mul, _ID_WEIGHTS, tok[:17])) - _ID_BIAS
    return bool(_ID_CHECK[total % 11] == tok[17])


def id15_ok(tok: bytes) -> bool:
    """A 15-digit legacy number: known division and a real 19YY birth date."""
    return tok[:6] in _CODES and (b"19" + tok[6:12]) in _DATES


def mobile_ok(tok: bytes) -> bool:
    """11 digits under an allocated prefix."""
    return tok[:3] in _MOBILE_PREFIXES


_LUHN_DOUBLE = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def luhn_ok(tok: bytes) -> bool:
    total = 0
    double = False
    for b in reversed(tok):
        d = b - 48
        total += _LUHN_DOUBLE[d] if double else d
        double = not double
    return total % 10 == 0


def card_issuer(tok: bytes) -> str | None:
    """The card scheme an issuer prefix belongs to, for 16-19 digit numbers."""
    c = tok[0]
    if c == 0x34:  # 4
        return "Visa"
    if c == 0x36:  # 6
        if tok[1] == 0x32:  # 62
            return "UnionPay"
        if tok.startswith(b"6011") or tok[:2] == b"65" or b"644" <= tok[:3] <= b"649":
            return "Discover"
        return "UnionPay/Maestro"
    if c == 0x35:  # 5
        if b"51" <= tok[:2] <= b"55":
            return "Mastercard"
        return "Maestro" if tok[1] != 0x39 else None
    if c == 0x32:  # 2
        p = tok[:4]
        if b"2221" <= p <= b"2720":
            return "Mastercard"
        if b"2200" <= p <= b"2204":
            return "Mir"
        return None
    if c == 0x33:  # 3
        p4 = tok[:4]
        if b"3528" <= p4 <= b"3589":
            return "JCB"
        if tok[:2] in (b"36", b"38", b"39") or b"300" <= tok[:3] <= b"305":
            return "Diners"
        return None
    if c == 0x38 and tok[1] == 0x31:  # 81
        return "UnionPay"
    if c == 0x39 and tok[:4] in (b"9558", b"9559"):
        return "UnionPay (legacy domestic)"
    return None


#: card lengths each scheme issues (16-19 digit numbers only are considered)
_LENGTHS = {"Visa": (16, 19), "Mastercard": (16,), "Mir": (16, 17, 18, 19)}


def id_shaped(tok: bytes) -> bool:
    """18 digits that start with a division code and a 19xx/20xx year: an ID number (valid or mistyped),
    not a card."""
    return len(tok) == 18 and tok[:6] in _CODES and tok[6:8] in (b"19", b"20")


def card_ok(tok: bytes) -> str | None:
    """The scheme of a 16-19 digit number with an issuer prefix, a length the scheme issues and a valid
    Luhn digit, else None. ID-shaped 18-digit numbers are not cards."""
    scheme = card_issuer(tok)
    if scheme is None or len(tok) not in _LENGTHS.get(scheme, (16, 17, 18, 19)):
        return None
    if not luhn_ok(tok) or id_shaped(tok):
        return None
    return scheme


# --- agreement helpers: the model's verdict, for the tests ----------------


def model_id_ok(value: str) -> bool:
    return resident_id.is_valid(value)


def model_mobile_ok(value: str) -> bool:
    return mobile.is_valid(value)


# --- GitHub tokens: CRC32 check of the random part, base62 ----------------

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _base62(n: int) -> str:
    out = ""
    while n:
        n, r = divmod(n, 62)
        out = _B62[r] + out
    return out or "0"


def github_checksum_ok(token: str) -> bool:
    """``ghp_`` style tokens end with the base62 CRC32 of their 30 random characters."""
    body = token.split("_", 1)[-1]
    if len(body) != 36:
        return False
    return _base62(binascii.crc32(body[:30].encode())).rjust(6, "0") == body[30:]


def jwt_header(token: bytes) -> str | None:
    """The ``alg`` of a JWT whose header and payload decode to JSON objects, else None."""
    parts = token.split(b".")
    if len(parts) != 3:
        return None
    try:
        head = json.loads(base64.urlsafe_b64decode(parts[0] + b"=" * (-len(parts[0]) % 4)))
        body = json.loads(base64.urlsafe_b64decode(parts[1] + b"=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(head, dict) or not isinstance(body, dict) or "alg" not in head:
        return None
    return str(head["alg"])[:16]


# --- masks -----------------------------------------------------------------


def mask_id(tok: str) -> str:
    return _masks.mask_id_number(tok)


def mask_mobile(tok: str) -> str:
    return _masks.mask_mobile(tok)


def mask_card(tok: str) -> str:
    return tok[:4] + "*" * (len(tok) - 8) + tok[-4:]


def mask_key(tok: str) -> str:
    return tok[:4] + "****…" + tok[-4:]


def mask_doc(tok: str) -> str:
    return tok[:1] + "*" * (len(tok) - 3) + tok[-2:]


def mask_email(tok: str) -> str:
    local, _, domain = tok.partition("@")
    return (local[:1] + "***@" + domain) if local else "***@" + domain


def mask_name(tok: str) -> str:
    return _masks.mask_name(tok)


def mask_address(tok: str) -> str:
    return _masks.mask_address(tok)
