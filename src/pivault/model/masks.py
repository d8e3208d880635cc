"""Display masks: what a screen shows when it must not show the whole value.

Defaults from DESIGN.md: ID ``310***********123X`` (first 3, last 4), mobile
``138****5678``, name ``张*``, address cut after the district.
"""

from __future__ import annotations

from collections.abc import Callable

from pivault.model import address as _address


def mask_id_number(v: str) -> str:
    if len(v) <= 7:
        return "*" * len(v)
    return v[:3] + "*" * (len(v) - 7) + v[-4:]


def mask_mobile(v: str) -> str:
    if len(v) <= 7:
        return "*" * len(v)
    return v[:3] + "*" * (len(v) - 7) + v[-4:]


def mask_name(v: str) -> str:
    if not v:
        return v
    if v.isascii():
        parts = v.split(" ")
        return " ".join(p[0] + "*" * (len(p) - 1) if p else p for p in parts)
    return v[0] + "*" * (len(v) - 1)


def mask_address(v: str) -> str:
    """Keep the administrative prefix up to the district; hide the rest."""
    prefix = _address.parse_prefix(v)
    if prefix.district is None:
        # no district recognised: keep the province/prefecture if any, else nothing
        return (v[: prefix.end] + "***") if prefix.end else "***"
    return v[: prefix.end] + "***"


def mask_notes(v: str) -> str:
    return "***" if v else v


def mask_date(v: str) -> str:
    """Birth dates shown as the year only."""
    return v[:4] + "-**-**" if len(v) >= 4 else "*" * len(v)


def mask_full(v: str) -> str:
    return "***" if v else v


MASKS: dict[str, Callable[[str], str]] = {
    "id_number": mask_id_number,
    "mobile": mask_mobile,
    "name": mask_name,
    "address": mask_address,
    "notes": mask_notes,
    "birth_date": mask_date,
}


def mask_field(field: str, value: str | None) -> str | None:
    """Default mask of ``field``; unknown fields are hidden entirely."""
    if value is None:
        return None
    return MASKS.get(field, mask_full)(value)
