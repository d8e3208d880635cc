"""Postal addresses: width and whitespace normalisation, division prefix recognition."""

from __future__ import annotations

import re
import unicodedata
from functools import cache
from typing import NamedTuple

from pivault.errors import ValidationError
from pivault.model import divisions

MAX_LENGTH = 200
_WS = re.compile(r"\s+")
_CJK_GAP = re.compile(r"(?<=[\u3400-\u9fff])\s+(?=[\u3400-\u9fff0-9])|(?<=[0-9])\s+(?=[\u3400-\u9fff])")
# Unicode category Cc is exactly the first two ranges; one regex search instead of a
# category look-up per character (most of an address's parse time). The third is category Cs:
# halves of UTF-16 pairs on their own (JSON's "\\ud800" escape) are no characters at all, and an
# address holding one could not even be encoded to be sealed
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_GENERIC = {"市辖区", "县", "省直辖县级行政区划", "自治区直辖县级行政区划"}


def _err(code: str, message: str) -> ValidationError:
    return ValidationError(code, message, field="address")


def normalise(value: str) -> str:
    """Fold full/half width, collapse whitespace (none between CJK characters).

    Codes: ``address.empty``, ``address.length``, ``address.chars``.
    """
    if value is None or not str(value).strip():
        raise _err("address.empty", "the address is empty")
    v = unicodedata.normalize("NFKC", str(value)).strip()
    if _CONTROL.search(v):
        raise _err("address.chars", "the address holds control characters or half of a UTF-16 pair")
    v = _WS.sub(" ", v)
    v = _CJK_GAP.sub("", v)
    if len(v) > MAX_LENGTH:
        raise _err("address.length", f"an address has at most {MAX_LENGTH} characters")
    return v


class AddressPrefix(NamedTuple):
    """The administrative part an address starts with (a named tuple: one is made per record shown)."""

    province: str | None
    prefecture: str | None
    district: str | None
    region_code: str | None
    #: index in the address where the part below the district begins
    end: int


@cache
def _names() -> tuple[dict[str, str], dict[str, list[str]], dict[str, list[str]]]:
    """province name -> 2-digit code; prefecture name -> codes; district name -> codes."""
    provinces: dict[str, str] = {}
    prefectures: dict[str, list[str]] = {}
    districts: dict[str, list[str]] = {}
    for code in divisions.all_codes():
        for d in divisions.lookup(code):
            if d.valid_to is not None or d.name in _GENERIC:
                continue
            if code.endswith("0000"):
                provinces[d.name] = code[:2]
            elif code.endswith("00"):
                prefectures.setdefault(d.name, []).append(code)
            else:
                districts.setdefault(d.name, []).append(code)
    return provinces, prefectures, districts


@cache
def _lengths() -> tuple[dict[str, tuple[int, ...]], ...]:
    """Per level (province, prefecture, district): first character -> name lengths, longest first.

    A mask runs on every record read: trying only the lengths of names that start with the
    address's character costs one or two dictionary probes per level instead of one per
    possible length (some autonomous counties have 15 characters).
    """
    out: list[dict[str, tuple[int, ...]]] = []
    for names in _names():
        by_first: dict[str, set[int]] = {}
        for name in names:
            by_first.setdefault(name[0], set()).add(len(name))
        out.append({c: tuple(sorted(ns, reverse=True)) for c, ns in by_first.items()})
    return tuple(out)


def _first(text: str, pos: int, names: dict[str, list[str]] | dict[str, str],
           lengths: dict[str, tuple[int, ...]], width: int, code: str | None
           ) -> tuple[str, str | list[str]] | None:
    """The longest name at ``pos`` (with its code or codes) one of whose codes lies inside
    ``code[:width]`` (any, when there is no ``code``); None when there is none."""
    if pos >= len(text):
        return None
    for n in lengths.get(text[pos], ()):
        cand = text[pos:pos + n]
        if len(cand) != n:
            continue
        found = names.get(cand)
        if found is None:
            continue
        if code is None or isinstance(found, str):
            return cand, found
        head = code[:width]
        hits = [x for x in found if x[:width] == head]
        if hits:
            return cand, hits
    return None


def parse_prefix(normalised: str) -> AddressPrefix:
    """Recognise the province / prefecture / district an address starts with.

    Missing levels stay ``None``; the ``region_code`` is the most specific
    consistent code found. Addresses that start below the district (or in
    another script) give an empty prefix with ``end`` 0. Every record shown
    masked passes here (the address mask keeps this prefix).
    """
    provinces, prefectures, districts = _names()
    p_len, c_len, d_len = _lengths()
    pos = 0
    province = prefecture = district = None
    code: str | None = None
    hit = _first(normalised, 0, provinces, p_len, 0, None)
    if hit is not None:
        province, pos = hit[0], len(hit[0])
        code = f"{hit[1]}0000"
    hit = _first(normalised, pos, prefectures, c_len, 2, code)
    if hit is not None:
        prefecture, code, pos = hit[0], hit[1][0], pos + len(hit[0])
    width = 2 if code is not None and code.endswith("0000") else 4
    hit = _first(normalised, pos, districts, d_len, width, code)
    if hit is not None:
        district, code, pos = hit[0], hit[1][0], pos + len(hit[0])
    return AddressPrefix(province, prefecture, district, code, pos)


def is_valid(value: str) -> bool:
    try:
        normalise(value)
    except ValidationError:
        return False
    return True
