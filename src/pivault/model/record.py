"""The resident record: the PI fields pivault protects and what derives from them."""

from __future__ import annotations

import datetime as _dt
import re
import secrets
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field

from pivault.errors import ValidationError
from pivault.model import address as _address
from pivault.model import mobile as _mobile
from pivault.model import name as _name
from pivault.model import resident_id as _rid

#: the PI fields, in their canonical order; each is stored encrypted
PI_FIELDS: tuple[str, ...] = ("name", "id_number", "mobile", "address", "notes")
REQUIRED_FIELDS: tuple[str, ...] = ("name", "id_number")
NOTES_MAX = 2000
_SURROGATE = re.compile("[\ud800-\udfff]")
_RECORD_ID = re.compile(r"r_[0-9a-z]{26}")
_B32 = "0123456789abcdefghjkmnpqrstvwxyz"
#: every 10-bit value as its two digits, and the shifts of an id's 13 pairs (most significant first)
_PAIRS = tuple(a + b for a in _B32 for b in _B32)
_PAIR_SHIFTS = tuple(range(120, -1, -10))


#: a record id is "r_" and 26 base-32 characters: 130 bits, the creation second then random bits
_SECOND_BITS = 35  # seconds since 1970 fit until the year 3058
_RANDOM_BITS = 130 - _SECOND_BITS


def new_record_id(at: float | None = None) -> str:
    """An opaque record id, never derived from PI: its creation second, then 95 random bits from the OS.

    The second comes first so that ids made one after another sort together:
    every B-tree keyed by record id (the records' primary key, the record-key
    store, the blind index's record index) then takes an import's rows at its
    right edge, in pages already in memory, instead of one random page per row
    across a tree that outgrows any cache. That took an import of 10^6
    residents on SQLite from 126 to 64–71 s (docs/import.md). What the second
    tells is the creation time the store keeps in the clear anyway
    (``created_at``, non-PI metadata); the 95 random bits keep ids unguessable.
    ``at`` backdates an id (canary residents take the creation time of a real
    record). The characters sort in the order of the alphabet's ASCII codes, so
    ids compare as their numbers do.
    """
    second = int(time.time() if at is None else at)
    if not 0 <= second < 1 << _SECOND_BITS:
        raise ValueError("a record id's time is a second between 1970 and 3058")
    n = (second << _RANDOM_BITS) | secrets.randbits(_RANDOM_BITS)
    # two digits at a time (the import makes an id per resident)
    return "r_" + "".join([_PAIRS[(n >> s) & 1023] for s in _PAIR_SHIFTS])


def _id_second(record_id: str) -> int:
    """The creation second in a record id's first characters (meaningless for ids made before them)."""
    n = 0
    for ch in record_id[2:]:
        n = n * 32 + _B32.index(ch)
    return n >> _RANDOM_BITS


def is_record_id(value: str) -> bool:
    return bool(_RECORD_ID.fullmatch(value))


def normalise_notes(value: str) -> str:
    v = unicodedata.normalize("NFC", value).strip()
    if len(v) > NOTES_MAX:
        raise ValidationError("notes.length", f"notes hold at most {NOTES_MAX} characters",
                              field="notes")
    if "\x00" in v:
        raise ValidationError("notes.chars", "notes hold a NUL character", field="notes")
    if _SURROGATE.search(v):
        # half of a UTF-16 pair on its own (JSON allows the escape "\\ud800"): not a character,
        # and notes holding one could not be encoded to be sealed
        raise ValidationError("notes.chars", "notes hold half of a UTF-16 surrogate pair, which is no "
                              "character", field="notes")
    return v


@dataclass(frozen=True, slots=True)
class Resident:
    """One resident, with every field already normalised.

    Build one with :meth:`parse` from raw input; gender, birth date and region
    are derived from the ID number, never stored separately.
    """

    record_id: str
    name: str
    id_number: str
    mobile: str | None = None
    address: str | None = None
    notes: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def gender(self) -> str:
        return _rid.facts(self.id_number).gender

    @property
    def birth_date(self) -> _dt.date:
        return _rid.facts(self.id_number).birth_date

    @property
    def region_code(self) -> str:
        return self.id_number[:6]

    def pi_fields(self) -> dict[str, str]:
        """The PI fields present, by name."""
        out = {"name": self.name, "id_number": self.id_number}
        for f in ("mobile", "address", "notes"):
            v = getattr(self, f)
            if v:
                out[f] = v
        return out

    @property
    def birth_year(self) -> int:
        return int(self.id_number[6:10])

    def to_dict(self) -> dict[str, str | None]:
        f = _rid.facts(self.id_number)
        return {
            "record_id": self.record_id, "name": self.name, "id_number": self.id_number,
            "mobile": self.mobile, "address": self.address, "notes": self.notes,
            "gender": f.gender, "birth_date": f.birth_date.isoformat(),
            "region_code": f.region_code,
        }

    @classmethod
    def parse(
        cls, raw: Mapping[str, str | None], *, record_id: str | None = None,
        today: _dt.date | None = None,
    ) -> Resident:
        """Validate and normalise raw field values (as read from a file or a request).

        Raises the first :class:`ValidationError` found, in field order.
        """
        def get(f: str) -> str | None:
            v = raw.get(f)
            return None if v is None or (isinstance(v, str) and not v.strip()) else str(v)

        name = get("name")
        if name is None:
            raise ValidationError("name.empty", "the name is empty", field="name")
        idn = get("id_number")
        if idn is None:
            raise ValidationError("id.empty", "the resident ID number is empty", field="id_number")
        n = _name.normalise(name)
        i = _rid.normalise(idn, today=today)
        m = get("mobile")
        a = get("address")
        t = get("notes")
        rid = record_id or new_record_id()
        if not is_record_id(rid):
            raise ValidationError("record_id.format", "the record id is not a pivault record id",
                                  field="record_id")
        return cls(
            record_id=rid, name=n, id_number=i,
            mobile=_mobile.normalise(m) if m is not None else None,
            address=_address.normalise(a) if a is not None else None,
            notes=normalise_notes(t) if t is not None else None,
        )


def check_changes(raw: Mapping[str, str | None]) -> None:
    """Validate the fields of a correction each on its own, as :meth:`Resident.parse` would.

    A correction is checked before the record it names is read: a bad value is
    then refused the same way whether the record exists or not, and before any
    of it is decrypted.
    """
    for f, v in raw.items():
        value = None if v is None or (isinstance(v, str) and not v.strip()) else str(v)
        if value is None:
            if f == "name":
                raise ValidationError("name.empty", "the name is empty", field="name")
            if f == "id_number":
                raise ValidationError("id.empty", "the resident ID number is empty", field="id_number")
            continue
        if f == "name":
            _name.normalise(value)
        elif f == "id_number":
            _rid.normalise(value)
        elif f == "mobile":
            _mobile.normalise(value)
        elif f == "address":
            _address.normalise(value)
        elif f == "notes":
            normalise_notes(value)
