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
from functools import cache

from pivault.model import divisions, mobile, resident_id
from pivault.model import masks as _masks

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = b"10X98765432"
#: MOD 11-2 in one C call: the weights are 2**(17-i) mod 11 and 13 = 2 (mod 11), so the weighted sum
#: plus the check value (X = 10, written ``a`` in base 13) is the number read in base 13, which must be
#: 1 (mod 11)
ID_BASE13 = bytes.maketrans(b"Xx", b"aa")


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
#: the allocated mobile prefixes, every division code and every birth date (``YYYYMMDD``), as bytes
MOBILE_PREFIXES = _MOBILE_PREFIXES


_CODES = _division_codes()
_DATES = _dates()
DIVISION_CODES = _CODES
BIRTH_DATES = _DATES


def id18_ok(tok: bytes) -> bool:
    """``tok`` is 17 digits and a digit or upper-case X: is it a valid resident ID number?"""
    if tok[:6] not in _CODES or tok[6:14] not in _DATES:
        return False
    return int(tok.translate(ID_BASE13), 13) % 11 == 1


def id_check_char(first17: bytes) -> int:
    """The check character (a byte) of 17 digits: the weighted sum, for the tests of :func:`id18_ok`."""
    return _ID_CHECK[sum(w * (b - 48) for w, b in zip(_ID_WEIGHTS, first17, strict=True)) % 11]


def id15_ok(tok: bytes) -> bool:
    """A 15-digit legacy number: known division and a real 19YY birth date."""
    return tok[:6] in _CODES and (b"19" + tok[6:12]) in _DATES


def mobile_ok(tok: bytes) -> bool:
    """11 digits under an allocated prefix."""
    return tok[:3] in _MOBILE_PREFIXES


#: a doubled digit's contribution (2d, or 2d - 9 past 9), as a digit
LUHN_DOUBLED = bytes.maketrans(b"0123456789", b"0246813579")


def luhn_ok(tok: bytes) -> bool:
    """Luhn over ASCII digits, in C calls: every second digit from the right is replaced by its
    doubled contribution, and each half is read in base 11 (11 = 1 mod 10, so a number read in base 11
    is its digit sum mod 10)."""
    n = len(tok)
    if n < 2:
        return tok == b"0"
    return (int(tok[(n - 1) & 1 :: 2], 11) + int(tok[n & 1 :: 2].translate(LUHN_DOUBLED), 11)) % 10 == 0


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


def _issuers() -> dict[bytes, tuple[str, tuple[int, ...]]]:
    out = {}
    for i in range(10000):
        p = b"%04d" % i
        scheme = card_issuer(p)
        if scheme is not None:
            out[p] = (scheme, _LENGTHS.get(scheme, (16, 17, 18, 19)))
    return out


#: first four digits -> (scheme, lengths it issues): :func:`card_issuer` as one lookup
ISSUERS = _issuers()


def card_ok(tok: bytes) -> str | None:
    """The scheme of a 16-19 digit number with an issuer prefix, a length the scheme issues and a valid
    Luhn digit, else None. ID-shaped 18-digit numbers are not cards."""
    issuer = ISSUERS.get(tok[:4])
    if issuer is None or len(tok) not in issuer[1]:
        return None
    if not luhn_ok(tok) or id_shaped(tok):
        return None
    return issuer[0]


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
