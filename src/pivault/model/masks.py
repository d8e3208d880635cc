"""Display masks: what a screen shows when it must not show the whole value.

Defaults from DESIGN.md: ID ``310***********123X`` (first 3, last 4), mobile
``138****5678``, name ``张*``, address cut after the district.
"""

from __future__ import annotations

from collections.abc import Callable

from pivault.model import address as _address


def _ends(v: str, head: int, tail: int) -> str:
    """``head`` first and ``tail`` last characters, if at least four stay hidden between them.

    A value of an odd length (a rejected row's mobile of 8 or 9 digits, say)
    would otherwise show nearly all of itself: then only its last two
    characters are shown, and nothing of a value shorter than six.
    """
    n = len(v)
    if n >= head + tail + 4:
        return v[:head] + "*" * (n - head - tail) + v[n - tail:]
    if n >= 6:
        return "*" * (n - 2) + v[-2:]
    return "*" * n


def mask_id_number(v: str) -> str:
    return _ends(v, 3, 4)


def mask_id_number_ends(v: str) -> str:
    """Only the first and the last character.

    The last four characters the default mask keeps are the sequence and the
    check character: the only part of a number that is not a fact about its
    holder (where registered, when born, which sex). Whoever knows the birth
    date (any caller of a lookup by name and birth date) and the region
    rebuilds the rest, so a role that must not learn numbers sees the ends only.
    """
    if len(v) <= 7:
        return "*" * len(v)
    return v[:1] + "*" * (len(v) - 2) + v[-1:]


def mask_mobile(v: str) -> str:
    return _ends(v, 3, 4)


def mask_name(v: str) -> str:
    """The first character only (``张*``); in a name written in Latin letters, the first word's.

    Every word's initial (``Z**** J** H**``) is most of what tells one resident
    from another of the same surname.
    """
    if not v:
        return v
    if v.isascii():
        first, *rest = v.split(" ")
        return " ".join([first[:1] + "*" * (len(first) - 1), *("*" * len(p) for p in rest)])
    return v[0] + "*" * (len(v) - 1)


def mask_address(v: str) -> str:
    """Keep the administrative prefix up to the district; hide the rest."""
    prefix = _address.parse_prefix(v)
    if prefix.district is None:
        # no district recognised: keep the province/prefecture if any, else nothing
        return (v[: prefix.end] + "***") if prefix.end else "***"
    return v[: prefix.end] + "***"


def mask_address_province(v: str) -> str:
    """Only the province an address starts with.

    The district the default mask keeps is, for a resident who never moved,
    the county of their ID number: with the birth date a caller searched by,
    the sex and one character of the number, that leaves a few dozen numbers.
    """
    prefix = _address.parse_prefix(v)
    return (prefix.province + "***") if prefix.province else "***"


def mask_notes(v: str) -> str:
    return "***" if v else v


def mask_date(v: str) -> str:
    """Birth dates shown as the year only."""
    return v[:4] + "-**-**" if len(v) >= 4 else "*" * len(v)


def mask_region_province(v: str) -> str:
    """A division code cut to its province (the first two digits).

    The full code, with the birth date, leaves only the sequence of a resident
    ID number unknown; the province leaves dozens to hundreds of counties.
    """
    return v[:2] + "*" * (len(v) - 2) if len(v) > 2 else "*" * len(v)


def mask_full(v: str) -> str:
    return "***" if v else v


MASKS: dict[str, Callable[[str], str]] = {
    "id_number": mask_id_number,
    "mobile": mask_mobile,
    "name": mask_name,
    "address": mask_address,
    "notes": mask_notes,
    "birth_date": mask_date,
    "id_number_ends": mask_id_number_ends,
    "region_province": mask_region_province,
    "address_province": mask_address_province,
}


def mask_field(field: str, value: str | None) -> str | None:
    """Default mask of ``field``; unknown fields are hidden entirely."""
    if value is None:
        return None
    return MASKS.get(field, mask_full)(value)
