"""Which source column feeds which record field.

Files arrive from many systems with headers in Chinese or English and no two
alike. The common names are recognised without help; anything else needs an
explicit ``--map field=column`` (or ``--ignore column``), and an unknown column
stops the import *before* any row is read: guessing would put an address in
the notes field, or silently drop a column the operator thought was kept.

An error names columns by position (``#2``) and the kind of text they hold
("looks like an ID number"), never by their text: in a file without a header
row, or one read in the wrong encoding, the "header" is a resident's name,
ID number and address, and an error message must not carry them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pivault.errors import ConfigError
from pivault.model import PI_FIELDS, REQUIRED_FIELDS
from pivault.model import mobile as _mobile
from pivault.model import resident_id as _rid

__all__ = [
    "DERIVED_HEADERS",
    "KNOWN_HEADERS",
    "ColumnMap",
    "MappingError",
    "parse_mapping",
    "resolve",
]


class MappingError(ConfigError):
    """The header cannot be mapped onto record fields; nothing was imported."""

    code = "import.header"


#: recognised header names (compared after :func:`_key`) -> field
KNOWN_HEADERS: dict[str, str] = {}
for _field, _names in {
    "name": "姓名 名字 name full_name fullname person_name xm",
    "id_number": "身份证号 身份证号码 公民身份号码 身份证 证件号码 身份证件号码 id_number idnumber "
                 "id_card idcard id_no sfzh citizen_id resident_id",
    "mobile": "手机 手机号 手机号码 电话 电话号码 联系电话 联系方式 mobile mobile_number phone "
              "phone_number cellphone tel telephone sjhm",
    "address": "地址 住址 家庭住址 户籍地址 居住地址 现住址 联系地址 address addr home_address dz",
    "notes": "备注 案情 简要案情 说明 notes note remarks remark comment comments bz",
}.items():
    for _n in _names.split():
        KNOWN_HEADERS[_n] = _field

#: columns that repeat what the ID number already says (derived on read);
#: recognised and left out, and listed in the import summary
DERIVED_HEADERS: frozenset[str] = frozenset({
    "性别", "出生日期", "出生年月", "生日", "年龄", "gender", "sex", "birth_date", "birthdate",
    "birthday", "dob", "age", "region_code",
})

_SEP = re.compile(r"[\s_\-./:：()（）\[\]]+")


def _key(header: str) -> str:
    """Header names compared width-folded, case-folded, without separators."""
    v = unicodedata.normalize("NFKC", header).strip().lstrip("\ufeff").casefold()
    return _SEP.sub("_", v).strip("_")


_KNOWN = {_key(k): v for k, v in KNOWN_HEADERS.items()}
_DERIVED = {_key(k) for k in DERIVED_HEADERS}


@dataclass(frozen=True, slots=True)
class ColumnMap:
    """The resolved mapping of one file's header."""

    #: column position -> field, for the columns that are imported
    positions: Mapping[int, str]
    #: header names left out (derived or ignored on request), for the summary
    ignored: tuple[str, ...]
    #: the header as read
    header: tuple[str, ...]

    def fields_of(self, cells: Sequence[str | None]) -> dict[str, str | None]:
        """Field values of one row; missing trailing cells read as empty."""
        n = len(cells)
        return {f: (cells[i] if i < n else None) for i, f in self.positions.items()}

    def to_json(self) -> dict[str, object]:
        return {"fields": {f: self.header[i] for i, f in sorted(self.positions.items())},
                "ignored": list(self.ignored)}


def parse_mapping(specs: Iterable[str]) -> dict[str, str]:
    """``["name=姓名,id_number=身份证号", "mobile=电话"]`` -> ``{field: column}``."""
    out: dict[str, str] = {}
    for spec in specs:
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            field, sep, column = part.partition("=")
            field, column = field.strip(), column.strip()
            if not sep or not field or not column:
                raise MappingError("a mapping is written field=column, e.g. name=姓名",
                                   code="import.mapping")
            if field not in PI_FIELDS:
                # not echoed: an operator may have written a value where a field belongs
                raise MappingError("a mapping names an unknown field; fields are "
                                   f"{', '.join(PI_FIELDS)}", code="import.mapping")
            if field in out:
                raise MappingError(f"field {field!r} is mapped twice", code="import.mapping")
            out[field] = column
    return out


_ID_SHAPE = re.compile(r"[0-9]{17}[0-9X]|[0-9]{15}")
_MOBILE_SHAPE = re.compile(r"1[0-9]{10}")
_DATE_SHAPE = re.compile(r"[0-9]{4}([-/.年])[0-9]{1,2}([-/.月])[0-9]{1,2}日?|(19|20)[0-9]{6}")
_NUMBER_SHAPE = re.compile(r"[+-]?[0-9][0-9.,\s]*")
_UNREADABLE = re.compile("[\udc80-\udcff\ufffd\x00-\x08\x0b-\x1f\x7f]")
#: kinds of a header cell that only a resident's data has, never a column's name
_DATA_KINDS = ("looks like an ID number", "looks like a mobile number", "looks like a date")


def _kind(cell: str) -> str:
    """What a header cell looks like, for an error message that must not show it.

    The shapes are loose on purpose (a mistyped check character is still an ID
    number): a header row that is really a resident's row must be told apart.
    """
    v = unicodedata.normalize("NFKC", cell).strip()
    if not v:
        return "empty"
    if _ID_SHAPE.fullmatch(_rid.clean(v)):
        return "looks like an ID number"
    if _MOBILE_SHAPE.fullmatch(_mobile.clean(v)):
        return "looks like a mobile number"
    if _DATE_SHAPE.fullmatch(v):
        return "looks like a date"
    if _NUMBER_SHAPE.fullmatch(v):
        return "a number"
    if _UNREADABLE.search(v):
        return "not readable text in this encoding"
    if any("\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf" for c in v):
        return "Chinese text"
    return "text"


#: the most columns an error names; the others are counted ("and 80 more")
LISTED = 20


def _columns(positions: Iterable[int]) -> str:
    """``#2, #5``: columns named by position only."""
    return _listed([f"#{i + 1}" for i in positions])


def _listed(items: Sequence[str]) -> str:
    """``#1 (text), #2 (a number)``, the first :data:`LISTED` of them and a count of the rest."""
    shown = ", ".join(items[:LISTED])
    return shown if len(items) <= LISTED else f"{shown}, and {len(items) - LISTED:,} more"


def resolve(
    header: Sequence[str],
    mapping: Mapping[str, str] | None = None,
    ignore: Iterable[str] = (),
) -> ColumnMap:
    """Map a file's header onto record fields, or explain in one error why not.

    Explicit ``mapping`` entries win; other columns are matched against the
    known names; columns named in ``ignore`` and derived columns (gender,
    birth date …) are left out. Raises :class:`MappingError` for a header
    row that looks like data, an unknown or repeated column, or a missing
    required field.
    """
    header = tuple(header)
    kinds = [_kind(h) for h in header]
    if any(k in _DATA_KINDS for k in kinds):
        # Never echo the row: it is a resident's data, not a header.
        raise MappingError(
            "the first row looks like data, not a header, so no column can be mapped: "
            + _listed([f"#{i + 1} ({k})" for i, k in enumerate(kinds)]), code="import.no_header",
            hint="add a header line naming the columns (姓名,身份证号,手机号,…); a column with "
                 "another name is then mapped with --map FIELD=COLUMN")
    by_key: dict[str, list[int]] = {}
    for i, h in enumerate(header):
        by_key.setdefault(_key(h), []).append(i)
    positions: dict[int, str] = {}
    mapping = dict(mapping or {})
    for field, column in mapping.items():
        found = by_key.get(_key(column))
        if not found:
            raise MappingError(f"the mapping for {field} names a column the header does not have",
                               code="import.mapping",
                               hint="the file's first line holds the column names, spelled as --map "
                                    "must give them")
        if len(found) > 1:
            raise MappingError(f"the column mapped to {field} appears {len(found)} times in the "
                               f"header ({_columns(found)})", code="import.header")
        if found[0] in positions:
            # the later entry would replace the earlier one, and the error would then say the
            # header has no column for the field just mapped
            raise MappingError(f"column #{found[0] + 1} is mapped to both {positions[found[0]]} and "
                               f"{field}: a column feeds one field", code="import.mapping")
        positions[found[0]] = field
    ignore_keys = {_key(c) for c in ignore}
    ignored: list[str] = []
    unknown: list[str] = []
    for i, h in enumerate(header):
        if i in positions:
            continue
        k = _key(h)
        if k in ignore_keys or k in _DERIVED:
            ignored.append(h)
            continue
        known = _KNOWN.get(k)
        if known is None:
            unknown.append(f"#{i + 1} ({kinds[i]})")
            continue
        if known in mapping:
            # the operator chose another column for this field: this one is not imported
            ignored.append(h)
            continue
        if known in positions.values():
            first = next(j for j, f in positions.items() if f == known)
            raise MappingError(f"columns for {known} appear more than once in the header "
                               f"({_columns((first, i))}); choose one with --map {known}=COLUMN",
                               code="import.header")
        positions[i] = known
    if unknown:
        raise MappingError(
            "the header has columns pivault does not recognise: " + _listed(unknown),
            hint="map them with --map FIELD=COLUMN (fields: " + ", ".join(PI_FIELDS)
                 + ") or leave them out with --ignore COLUMN, naming each column as the file's "
                   "first line does")
    missing = [f for f in REQUIRED_FIELDS if f not in positions.values()]
    if missing:
        raise MappingError("the header has no column for " + " and ".join(missing),
                           hint="name the column with --map " + missing[0] + "=COLUMN")
    return ColumnMap(positions=positions, ignored=tuple(ignored), header=header)
