"""A synthetic population of residents, with labelled bad rows, at population scale.

All test and demo data in pivault comes from here; no row describes a real
person. ``generate(count, seed)`` streams rows; ``write_population(path, …)``
writes CSV, JSONL or Parquet (by the extension) plus a labels file. The same
arguments give the same rows and the same bytes.

The residents
-------------
* ID numbers (GB 11643) are valid, unique, and agree with the row: the
  sequence's parity is the gender, the birth date gives an age of 0 to 99 on
  :data:`REFERENCE_DATE` (never in the future), following the 2020 census age
  pyramid, and the region is a current county code, counties weighted by
  their province's 2020 census population.
* Mobile numbers are unique, under allocated personal prefixes weighted by
  carrier market share; residents under 10 have none (empty field).
* Names follow published surname shares (compound surnames included) with
  common given-name characters by gender; in Xinjiang, Tibet and Inner
  Mongolia some names are Uyghur (with ``·``), Tibetan or Mongolian.
* Addresses start with the province, prefecture and district of the ID's
  region code (``model.address.parse_prefix`` finds that code), then a street,
  number and building/room, or a town, village and group.
* Notes are short case notes from templates; a quarter are empty and about
  one in a hundred spans two lines (a newline inside a quoted CSV field).

How uniqueness is guaranteed without remembering values is explained in
:mod:`pivault.synth.population`.

Bad rows and the labels contract
--------------------------------
With ``bad_rate=R`` each row is independently replaced, with probability R,
by a bad row of a kind drawn uniformly from the kinds the output format can
carry (a ``duplicate`` repeats a good row at most 4,096 rows earlier; where
there is none, the row gets the first other kind instead). The good rows do
not depend on R or the format, and the rows of a shorter population, bad
ones included, are the first rows of a longer one with the same seed and
format. Every bad row is labelled in
``<out>.labels.jsonl``, one JSON object per line, in row order::

    {"row": 17, "line": 18, "kind": "id_checksum", "expected_code": "id.checksum"}
    {"row": 40, "line": 42, "kind": "duplicate", "expected_code": "duplicate", "duplicate_of": 12}

* ``row``: 1-based number of the data row (the header is not a row).
* ``line``: the 1-based physical line where the row starts: in CSV the
  header is line 1, and a row starts below earlier rows' embedded newlines;
  in JSONL ``line == row``; in Parquet ``null``.
* Rows in the file = ``count`` = good rows + labelled rows, exactly.
* Each row breaks exactly one rule; the other fields are valid. For every
  kind but ``csv_*`` and ``duplicate``, ``Resident.parse`` on the row raises
  ``ValidationError`` whose ``code`` is ``expected_code`` (the fields are
  checked in the order name, id_number, mobile, address, notes).

====================  ===============  ================================================
kind                  expected_code    what the row holds
====================  ===============  ================================================
id_checksum           id.checksum      a wrong check character
id_date_impossible    id.date          a date that does not exist (02-30, 13-01, …)
id_date_future        id.date          a birth year between 2101 and 2199
id_region             id.region        a division code never assigned
mobile_short          mobile.length    7 to 10 digits
mobile_prefix         mobile.prefix    11 digits under an unallocated 1xx prefix
name_empty            name.empty       an empty name
name_long             name.length      a Latin-script (pinyin) name over 64 characters
address_long          address.length   an address of 201 to 240 characters
notes_long            notes.length     notes of 2001 to 2300 characters
duplicate             duplicate        the name and ID number of the earlier good row
                                       ``duplicate_of`` (its own mobile, address,
                                       notes): valid, but an importer must reject it
                                       as a duplicate of that row
csv_fields            csv.fields       CSV only: one physical line with six fields (an
                                       ASCII comma in the unquoted address) or four
                                       (the notes column missing); no quote characters
csv_quote             csv.quoting      CSV only: the id_number field written as
                                       ``"<18 chars>"0``, a character after a closing
                                       quote, on one physical line
====================  ===============  ================================================

CSV readers: ``csv.reader(f, strict=True)`` raises ``csv.Error`` on a
``csv_quote`` line and goes on with the next line; a non-strict reader reads
a 19-character ID number there, which ``Resident.parse`` rejects as
``id.length``. No bad row spans more than one line, so no damage spills into
the next row. (An unterminated quote is deliberately not generated: pivault's
import rejects only the line where it opened and reads the lines after it
again, but a general CSV reader swallows every following line into one
field, so a label could not say what every reader makes of it.)
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator, Sequence
from typing import Any, NotRequired, TypedDict

from pivault.synth.population import (
    BAD_KINDS,
    COLUMNS,
    CSV_KINDS,
    FIELD_KINDS,
    REFERENCE_DATE,
    capacity,
    chunks,
    identity,
)
from pivault.synth.writers import SynthSummary, csv_damaged_line, labels_path_for, write_population


class SynthRow(TypedDict):
    """One generated row; bad rows also carry their label."""

    name: str
    id_number: str
    mobile: str
    address: str
    notes: str
    #: the kind of bad row (a key of :data:`BAD_KINDS`); absent on good rows
    label: NotRequired[str]
    expected_code: NotRequired[str]
    #: for ``duplicate`` rows: the 1-based row whose ID number this repeats
    duplicate_of: NotRequired[int]


def generate(
    count: int, seed: int, *, bad_rate: float = 0.0, kinds: Sequence[str] = FIELD_KINDS,
    as_of: _dt.date = REFERENCE_DATE,
) -> Iterator[SynthRow]:
    """Stream ``count`` residents; memory stays flat whatever ``count`` is.

    ``kinds`` selects the bad-row kinds (default: all but the CSV-structure
    ones, which only a CSV writer can produce; asked for here they yield the
    row's valid values, which the CSV writer then damages).
    """
    for chunk in chunks(count, seed, bad_rate=bad_rate, kinds=kinds, as_of=as_of):
        labels = {lb.row - 1 - chunk.start: lb for lb in chunk.labels}
        # a few thousand Python dicts at a time, so memory stays small
        for first in range(0, chunk.batch.num_rows, 4096):
            rows: list[Any] = chunk.batch.slice(first, 4096).to_pylist()
            for k, row in enumerate(rows, start=first):
                lb = labels.get(k)
                if lb is not None:
                    row["label"] = lb.kind
                    row["expected_code"] = lb.expected_code
                    if lb.duplicate_of is not None:
                        row["duplicate_of"] = lb.duplicate_of
            yield from rows


__all__ = [
    "BAD_KINDS",
    "COLUMNS",
    "CSV_KINDS",
    "FIELD_KINDS",
    "REFERENCE_DATE",
    "SynthRow",
    "SynthSummary",
    "capacity",
    "csv_damaged_line",
    "generate",
    "identity",
    "labels_path_for",
    "write_population",
]
