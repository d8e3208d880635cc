"""The row generator: realistic residents, unique by construction, and labelled bad rows.

How uniqueness holds without remembering any value
--------------------------------------------------
Row ``i`` (0-based) gets its identity from two keyed bijections of the row
index, so no two rows can share an ID number or a mobile number whatever
``count`` is, and nothing is remembered per row.

*ID numbers.* The 17 digits before the check character are region (6), birth
date (8) and sequence (3). Each current county gets ``kc`` "region slots"
(1..20, in proportion to its province's population per county) and each
birth date of the last 100 years ``kd`` "date slots" (0..25, in proportion
to the 2020 census age pyramid; the rare oldest ages get 0 or 1 by error
diffusion). A 4-round Feistel network over ``Z_(2X) x Z_Y`` (``X`` region
slots, ``Y`` date slots; modular addition of round functions that are random
tables drawn from the seed) maps ``i`` to one (region slot, gender bit, date
slot). The slot's county and date follow by table lookup; its rank inside
the county (``< kc``) and inside the date (``< kd``) give
``m = rank_c * 25 + rank_d < 500``, and the sequence number is
``2 * perm(m) + gender`` for a seeded permutation ``perm`` of ``0..499``.
Distinct slots give distinct (county, date, sequence) triples, hence
distinct ID numbers, and the gender is the sequence's parity as GB 11643
requires.

*Mobile numbers.* Each allocated personal prefix gets ``u`` units (1..100,
by carrier market share); a unit is the prefix with a two-digit block,
distinct inside the prefix. A second Feistel network over
``Z_(100 U) x Z_10000`` maps ``i`` to (unit, two more digits, four digits),
so the 11 digits are distinct for distinct rows. Residents under 10 have no
mobile (empty field); the number reserved for their row is not used.

The ID space holds about 1.9·10^10 rows and the mobile space about 3.6·10^9;
asking for more rows than :func:`capacity` raises :class:`ValueError`.

Speed: rows are built a chunk (32,768 rows) at a time with Arrow compute
kernels (table lookups, modular arithmetic, string joins); no Python code runs
per good row, and memory is bounded by one chunk. Bad rows are made in Python,
one at a time (see BENCHMARKS.md for measured rates).

Randomness: personal details come from ``random.Random(seed)`` in one
``randbytes`` draw per chunk (row-major, so a shorter population is a prefix
of a longer one); which rows are bad, and how, comes from a second
``random.Random`` derived from the seed, so the good rows do not depend on
``bad_rate``.
"""

from __future__ import annotations

import datetime as _dt
import math
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pivault.model import divisions, mobile
from pivault.synth import data

#: Birth dates are drawn relative to this day (ages 0 to 99 on it), so that a
#: seed gives the same population whenever it is run.
REFERENCE_DATE = _dt.date(2025, 1, 1)

#: kind of bad row -> the error code an importer must report for it
BAD_KINDS: dict[str, str] = {
    "id_checksum": "id.checksum",
    "id_date_impossible": "id.date",
    "id_date_future": "id.date",
    "id_region": "id.region",
    "mobile_short": "mobile.length",
    "mobile_prefix": "mobile.prefix",
    "name_empty": "name.empty",
    "name_long": "name.length",
    "address_long": "address.length",
    "notes_long": "notes.length",
    "duplicate": "duplicate",
    "csv_fields": "csv.fields",
    "csv_quote": "csv.quoting",
}
#: kinds that only exist in CSV output (they damage the file's structure)
CSV_KINDS: tuple[str, ...] = ("csv_fields", "csv_quote")
#: kinds every format can carry
FIELD_KINDS: tuple[str, ...] = tuple(k for k in BAD_KINDS if k not in CSV_KINDS)
COLUMNS: tuple[str, ...] = ("name", "id_number", "mobile", "address", "notes")
SCHEMA = pa.schema([(c, pa.string()) for c in COLUMNS])
CHUNK = 32768

KC_MAX = 20   # region slots of the most densely populated counties
KD_MAX = 25   # date slots of the most common birth dates
_WORDS = 5    # random 32-bit words per row
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"
_GENERIC = {"市辖区", "县", "省直辖县级行政区划", "自治区直辖县级行政区划"}
_IMPOSSIBLE_MMDD = ("0230", "0231", "0431", "0631", "0931", "1131", "1301", "1232", "0000", "0532")
#: eighths of the residents of Xinjiang, Tibet and Inner Mongolia who get a
#: Uyghur, Tibetan or Mongolian name (2020 census shares, about 45%, 86%, 17%)
_MINORITY_EIGHTHS = (0, 4, 7, 1)
_STYLE = {"65": 1, "54": 2, "15": 3}


@dataclass(frozen=True, slots=True)
class BadLabel:
    """Why a row is bad: its kind, the code expected, and where it sits."""

    row: int             # 1-based data row number
    kind: str
    expected_code: str
    #: newlines inside the fields of the rows before this one (they shift CSV lines)
    newlines_before: int
    duplicate_of: int | None = None


Row = tuple[str, str, str, str, str]


def _partial(digits: str, offset: int) -> int:
    return sum(_WEIGHTS[offset + k] * (ord(ch) - 48) for k, ch in enumerate(digits))


def _fix_check(first17: str) -> str:
    return first17 + _CHECK[_partial(first17, 0) % 11]


def _weighted_table(items: Sequence[tuple[str, float]], size: int) -> list[str]:
    """``size`` entries in which each item appears in proportion to its weight (at least once)."""
    total = sum(w for _, w in items)
    out: list[str] = []
    acc = 0.0
    for value, w in items:
        acc += w
        end = round(acc / total * size)
        out.extend([value] * max(end - len(out), 1))
    del out[size:]
    while len(out) < size:
        out.append(items[0][0])
    return out


def _cycle(items: Sequence[str], size: int) -> list[str]:
    return [items[k % len(items)] for k in range(size)]


@dataclass(frozen=True, slots=True)
class _Tables:
    """Seed-independent tables, as Python values (for single rows) and Arrow arrays (for chunks)."""

    region_code: tuple[str, ...]
    region_cs: tuple[int, ...]
    region_prefix: tuple[str, ...]
    x_county: tuple[int, ...]
    x_rank: tuple[int, ...]
    date_str: tuple[str, ...]
    date_cs: tuple[int, ...]
    date_child: tuple[bool, ...]
    y_day: tuple[int, ...]
    y_rank: tuple[int, ...]
    mobile_head: tuple[str, ...]
    unknown_regions: tuple[str, ...]
    unallocated_prefixes: tuple[str, ...]
    streets: tuple[str, ...]
    numbers: tuple[str, ...]
    note_dates: tuple[str, ...]
    note_bodies: tuple[str, ...]
    arrow: dict[str, Any]


def _regions() -> tuple[list[str], list[str], list[int], list[int]]:
    codes: list[str] = []
    prefixes: list[str] = []
    styles: list[int] = []
    by_province: dict[str, int] = {}
    for code in divisions.current_county_codes():
        name = divisions.name_of(code)
        province = divisions.province_of(code)
        if not name or not province or name in _GENERIC or code[:2] not in data.PROVINCE_POPULATION:
            continue
        codes.append(code)
        prefixes.append(province + (divisions.prefecture_of(code) or "") + name)
        styles.append(_STYLE.get(code[:2], 0))
        by_province[code[:2]] = by_province.get(code[:2], 0) + 1
    density = {p: data.PROVINCE_POPULATION[p] / n for p, n in by_province.items()}
    top = max(density.values())
    kc = [max(1, round(KC_MAX * density[c[:2]] / top)) for c in codes]
    return codes, prefixes, styles, kc


def _days(as_of: _dt.date) -> tuple[list[_dt.date], list[int], list[bool]]:
    """Birth dates from ``as_of`` backwards (ages 0..99) with their date-slot counts."""
    days: list[_dt.date] = []
    ages: list[int] = []
    day = as_of
    one = _dt.timedelta(days=1)
    while True:
        age = as_of.year - day.year - ((as_of.month, as_of.day) < (day.month, day.day))
        if age >= 100:
            break
        days.append(day)
        ages.append(age)
        day -= one
    per_day = [data.AGE_GROUP_SHARES[a // 5] for a in ages]
    scale = KD_MAX / max(per_day)
    kd: list[int] = []
    carry = 0.0
    for w in per_day:
        carry += w * scale
        k = min(KD_MAX, int(carry))
        carry -= k
        kd.append(k)
    return days, kd, [a < 10 for a in ages]


def _mobile_heads() -> list[str]:
    personal = [p for p in mobile.PERSONAL_PREFIXES if mobile.CARRIERS[p] in data.CARRIER_SUBSCRIBERS]
    per_carrier: dict[str, float] = {}
    for p in personal:
        c = mobile.CARRIERS[p]
        per_carrier[c] = per_carrier.get(c, 0.0) + data.PREFIX_AGE_WEIGHT[p[:2]]
    share = {
        p: data.CARRIER_SUBSCRIBERS[mobile.CARRIERS[p]] * data.PREFIX_AGE_WEIGHT[p[:2]]
        / per_carrier[mobile.CARRIERS[p]]
        for p in personal
    }
    top = max(share.values())
    heads: list[str] = []
    for k, p in enumerate(personal):
        units = max(1, round(100 * share[p] / top))
        # distinct two-digit blocks inside a prefix: r -> (37 r + 11 k) mod 100 is injective
        heads.extend(f"{p}{(37 * r + 11 * k) % 100:02d}" for r in range(units))
    return heads


def _note_bodies() -> list[str]:
    out: list[str] = []
    for tmpl in data.NOTE_TEMPLATES:
        body = tmpl.replace("{date}", "")
        for topic in data.NOTE_TOPICS:
            for unit in data.NOTE_UNITS:
                text = body.format(topic=topic, unit=unit)
                if text not in out:
                    out.append(text)
    return out


def _minority_names() -> list[str]:
    """4 blocks of 512 (by style): 256 female then 256 male names each; block 0 unused."""
    out = [""] * 512
    uy_f = [f + "·" + m for f in data.UYGHUR_FEMALE for m in data.UYGHUR_MALE]
    uy_m = [f + "·" + m for f in data.UYGHUR_MALE for m in data.UYGHUR_MALE if f != m]
    out += _cycle(uy_f, 256) + _cycle(uy_m, 256)
    tib = [a + b for a in data.TIBETAN for b in data.TIBETAN if a != b]
    out += _cycle(tib[::2], 256) + _cycle(tib[1::2], 256)
    out += _cycle(data.MONGOLIAN, 256) + _cycle(data.MONGOLIAN[::-1], 256)
    return out


@cache
def _tables(as_of: _dt.date) -> _Tables:
    codes, prefixes, styles, kc = _regions()
    x_county = [c for c, k in enumerate(kc) for _ in range(k)]
    x_rank = [r for k in kc for r in range(k)]
    days, kd, child = _days(as_of)
    y_day = [d for d, k in enumerate(kd) for _ in range(k)]
    y_rank = [r for k in kd for r in range(k)]
    date_str = [f"{d:%Y%m%d}" for d in days]
    seq_str = [f"{s:03d}" for s in range(1000)]
    known = divisions.is_known
    unknown = sorted({c[:4] + sfx for c in codes for sfx in ("89", "97", "99") if not known(c[:4] + sfx)})
    surnames = list(data.SURNAMES) + [(s, data.TAIL_SHARE) for s in data.TAIL_SURNAMES]
    surnames += list(data.COMPOUND_SURNAMES)

    def given(chars: str) -> list[str]:
        return _weighted_table([(ch, 1.0 / (r + 8)) for r, ch in enumerate(chars)], 256)

    start = as_of - _dt.timedelta(days=3 * 365)
    note_dates = [f"{d.year}年{d.month}月{d.day}日" for d in
                  (start + _dt.timedelta(days=k) for k in range(1024))]
    follow = ["\n" + data.NOTE_FOLLOW_UPS[k] if k < 3 else data.NOTE_FOLLOW_UPS[k % 5] if k < 80 else ""
              for k in range(256)]
    streets = [r + s for r in data.STREET_ROOTS for s in data.STREET_SUFFIXES]
    numbers = [f"{n}号" for n in range(1, 1025)]
    rooms = [f"{b}栋{f}{u:02d}室" if e == 0
             else f"{data.ESTATE_ROOTS[b]}{data.ESTATE_SUFFIXES[e]}{b + 1}号楼{u}单元{f}{u:02d}室"
             for e in range(6) for b in range(1, 33) for f in range(1, 33) for u in range(1, 5)]
    villages = [f"{t}镇{v}村" for t in data.TOWN_ROOTS for v in data.VILLAGE_ROOTS]
    groups = [f"{g}组{n}号" for g in range(1, 9) for n in range(1, 65)]
    bodies = _note_bodies()
    mobile_head = _mobile_heads()
    region_cs = [_partial(c, 0) for c in codes]
    date_cs = [_partial(s, 6) for s in date_str]
    i64 = pa.int64()
    arrow: dict[str, Any] = {
        "x_county": pa.array(x_county, i64), "x_rank": pa.array(x_rank, i64),
        "y_day": pa.array(y_day, i64), "y_rank": pa.array(y_rank, i64),
        "region_code": pa.array(codes), "region_cs": pa.array(region_cs, i64),
        "region_prefix": pa.array(prefixes), "region_style": pa.array(styles, i64),
        "date_str": pa.array(date_str), "date_cs": pa.array(date_cs, i64),
        "date_child": pa.array(child, pa.bool_()),
        "seq_str": pa.array(seq_str), "seq_cs": pa.array([_partial(s, 14) for s in seq_str], i64),
        "check": pa.array([_CHECK[s % 11] for s in range(9 * sum(_WEIGHTS) + 1)]),
        # string tables end with an empty entry where a row may leave the part out
        "mobile_head": pa.array([*mobile_head, ""]),
        "d2": pa.array([*(f"{k:02d}" for k in range(100)), ""]),
        "d4": pa.array([*(f"{k:04d}" for k in range(10_000)), ""]),
        "name0": pa.array(_weighted_table(surnames, 1 << 16) + _minority_names()),
        "given": pa.array([*given(data.GIVEN_FEMALE), *given(data.GIVEN_MALE), ""]),
        "eighths": pa.array(_MINORITY_EIGHTHS, i64),
        "part1": pa.array(streets + villages), "part2": pa.array(numbers + groups),
        "part3": pa.array([*rooms, ""]),
        "note_dates": pa.array([*note_dates, ""]), "note_bodies": pa.array([*bodies, ""]),
        "follow": pa.array([*follow, ""]),
        "base": pa.array(range(CHUNK), i64),
    }
    return _Tables(
        region_code=tuple(codes), region_cs=tuple(region_cs), region_prefix=tuple(prefixes),
        x_county=tuple(x_county), x_rank=tuple(x_rank),
        date_str=tuple(date_str), date_cs=tuple(date_cs), date_child=tuple(child),
        y_day=tuple(y_day), y_rank=tuple(y_rank),
        mobile_head=tuple(mobile_head), unknown_regions=tuple(unknown),
        unallocated_prefixes=tuple(f"1{d:02d}" for d in range(100) if f"1{d:02d}" not in mobile.CARRIERS),
        streets=tuple(streets), numbers=tuple(numbers),
        note_dates=tuple(note_dates), note_bodies=tuple(bodies),
        arrow=arrow,
    )


def capacity(as_of: _dt.date = REFERENCE_DATE) -> int:
    """The largest population whose ID numbers and mobiles can all be distinct."""
    t = _tables(as_of)
    return min(2 * len(t.x_county) * len(t.y_day), len(t.mobile_head) * 1_000_000)


@dataclass(frozen=True, slots=True)
class _Keyed:
    """Seed-dependent tables: Feistel round functions and the sequence permutation (Arrow arrays)."""

    id_r: tuple[Any, Any, Any, Any]
    mob_r: tuple[Any, Any, Any, Any]
    seq_of: Any


@lru_cache(maxsize=4)
def _keyed(seed: int, as_of: _dt.date) -> _Keyed:
    """Round functions that are tables of uniform 32-bit values drawn from the seed.

    A Feistel network whose round functions are independent random tables is
    a random permutation of its domain for every practical purpose here, and
    a lookup is the cheapest round function to evaluate.
    """
    t = _tables(as_of)
    r = random.Random(f"pivault.synth.feistel:{seed}")

    def table(size: int) -> Any:
        raw = r.randbytes(4 * size)
        arr = pa.Array.from_buffers(pa.uint32(), size, [None, pa.py_buffer(raw)])
        if sys.byteorder == "big":  # pragma: no cover - the same values on every machine
            arr = pa.array([int.from_bytes(raw[j:j + 4], "little") for j in range(0, len(raw), 4)],
                           pa.uint32())
        return pc.cast(arr, pa.int64())

    a, b = 2 * len(t.x_county), len(t.y_day)
    a2 = 100 * len(t.mobile_head)
    id_r = (table(b), table(a), table(b), table(a))
    mob_r = (table(10_000), table(a2), table(10_000), table(a2))
    perm = list(range(500))
    random.Random(f"pivault.synth.sequence:{seed}").shuffle(perm)
    seq_of = pa.array([perm[m] * 2 + g for m in range(500) for g in (0, 1)], pa.int64())
    return _Keyed(id_r=id_r, mob_r=mob_r, seq_of=seq_of)


def identity(index: int, seed: int, as_of: _dt.date = REFERENCE_DATE) -> tuple[str, str]:
    """The (ID number, mobile) that row ``index`` (0-based) is built on, computed alone.

    The mobile is returned even for residents under 10, whose row leaves it empty.
    """
    t = _tables(as_of)
    k = _keyed(seed, as_of)
    t0, t1, t2, t3 = k.id_r
    a, b = 2 * len(t.x_county), len(t.y_day)
    left, right = divmod(index, b)
    left = (left + t0[right].as_py()) % a
    right = (right + t1[left].as_py()) % b
    left = (left + t2[right].as_py()) % a
    right = (right + t3[left].as_py()) % b
    x = left >> 1
    c, d = t.x_county[x], t.y_day[right]
    s = k.seq_of[((t.x_rank[x] * KD_MAX + t.y_rank[right]) << 1) | (left & 1)].as_py()
    idn = _fix_check(t.region_code[c] + t.date_str[d] + f"{s:03d}")
    m0, m1, m2, m3 = k.mob_r
    a2 = 100 * len(t.mobile_head)
    ml, mr = divmod(index, 10_000)
    ml = (ml + m0[mr].as_py()) % a2
    mr = (mr + m1[ml].as_py()) % 10_000
    ml = (ml + m2[mr].as_py()) % a2
    mr = (mr + m3[ml].as_py()) % 10_000
    q, dd = divmod(ml, 100)
    return idn, f"{t.mobile_head[q]}{dd:02d}{mr:04d}"


def _join(*parts: Any) -> Any:
    return pc.binary_join_element_wise(*parts, "")


def _mobiles(idx: Any, t: _Tables, k: _Keyed, blank: Any = None) -> Any:
    """The mobile numbers of rows ``idx`` (Int64Array); empty where ``blank`` is true."""
    take, mod, add, ifelse = pc.take, pc.modulo, pc.add, pc.if_else
    A = t.arrow
    a2 = 100 * len(t.mobile_head)
    m0, m1, m2, m3 = k.mob_r
    ml, mr = pc.divide(idx, 10_000), mod(idx, 10_000)
    ml = mod(add(ml, take(m0, mr)), a2)
    mr = mod(add(mr, take(m1, ml)), 10_000)
    ml = mod(add(ml, take(m2, mr)), a2)
    mr = mod(add(mr, take(m3, ml)), 10_000)
    head, d2 = pc.divide(ml, 100), mod(ml, 100)
    if blank is not None:
        head = ifelse(blank, len(t.mobile_head), head)
        d2 = ifelse(blank, 100, d2)
        mr = ifelse(blank, 10_000, mr)
    return _join(take(A["mobile_head"], head), take(A["d2"], d2), take(A["d4"], mr))


def _good_batch(start: int, n: int, words: bytes, t: _Tables, k: _Keyed) -> tuple[pa.RecordBatch, Any]:
    """Rows ``start .. start+n-1`` before any is made bad, and which notes span two lines.

    Arrow kernels throughout; choices between alternatives are made on indices
    (cheap integer ``if_else``) and every string is one ``take`` + join.
    """
    A = t.arrow
    take, mod, add, mul, band, shr, ifelse = (
        pc.take, pc.modulo, pc.add, pc.multiply, pc.bit_wise_and, pc.shift_right, pc.if_else)
    idx = add(A["base"].slice(0, n), start)
    # -- ID number
    a, b = 2 * len(t.x_county), len(t.y_day)
    t0, t1, t2, t3 = k.id_r
    left, right = pc.divide(idx, b), mod(idx, b)
    left = mod(add(left, take(t0, right)), a)
    right = mod(add(right, take(t1, left)), b)
    left = mod(add(left, take(t2, right)), a)
    right = mod(add(right, take(t3, left)), b)
    x, male = shr(left, 1), band(left, 1)
    c, d = take(A["x_county"], x), take(A["y_day"], right)
    m = add(mul(take(A["x_rank"], x), KD_MAX), take(A["y_rank"], right))
    s = take(k.seq_of, add(mul(m, 2), male))
    total = add(add(take(A["region_cs"], c), take(A["date_cs"], d)), take(A["seq_cs"], s))
    idn = _join(take(A["region_code"], c), take(A["date_str"], d), take(A["seq_str"], s),
                take(A["check"], total))
    # -- mobile (none under 10: every part points at the tables' empty last entry)
    mob = _mobiles(idx, t, k, take(A["date_child"], d))
    # -- random words: w0 surname 16 | given 8 | given 8; w1 name length 5 | minority 3 |
    #    minority name 8 | urban 2 | notes empty 2 | notes follow-up 8; w2 street 16 | number 16;
    #    w3 room 16 | village 16; w4 group 9 | note date 10 | note body 13
    raw = pa.Array.from_buffers(pa.uint32(), n * _WORDS, [None, pa.py_buffer(words)])
    if sys.byteorder == "big":  # pragma: no cover - the same values on every machine
        raw = pa.array([int.from_bytes(words[j:j + 4], "little") for j in range(0, len(words), 4)],
                       pa.uint32())
    rows = pa.FixedSizeListArray.from_arrays(raw, _WORDS)
    w0, w1, w2, w3, w4 = (pc.cast(pc.list_element(rows, j), pa.int64()) for j in range(_WORDS))
    # -- name: Han (surname + one or two given characters) or, in three regions, a minority name
    gender_base = mul(male, 256)
    style = take(A["region_style"], c)
    minority = pc.less(band(shr(w1, 5), 7), take(A["eighths"], style))
    none = 512  # the empty given-name entry
    i0 = ifelse(minority, add(add(mul(style, 512), gender_base), add(band(shr(w1, 8), 255), 1 << 16)),
                band(w0, 0xFFFF))
    i1 = ifelse(minority, none, add(gender_base, band(shr(w0, 16), 255)))
    i2 = ifelse(pc.or_(minority, pc.less(band(w1, 31), 2)), none, add(gender_base, shr(w0, 24)))
    name = _join(take(A["name0"], i0), take(A["given"], i1), take(A["given"], i2))
    # -- address: urban (street, number, building/room) or rural (town+village, group+number)
    rural = pc.equal(band(shr(w1, 16), 3), 0)
    n_streets, n_numbers = len(t.streets), len(t.numbers)
    p1 = ifelse(rural, add(mod(shr(w3, 16), 400), n_streets), mod(band(w2, 0xFFFF), n_streets))
    p2 = ifelse(rural, add(band(w4, 511), n_numbers), band(shr(w2, 16), 1023))
    p3 = ifelse(rural, 24576, mod(band(w3, 0xFFFF), 24576))
    addr = _join(take(A["region_prefix"], c), take(A["part1"], p1), take(A["part2"], p2),
                 take(A["part3"], p3))
    # -- notes: a quarter empty; follow-ups 0..2 put the second sentence on a new line
    empty = pc.equal(band(shr(w1, 18), 3), 0)
    follow = band(shr(w1, 20), 255)
    n_bodies = len(t.note_bodies)
    notes = _join(take(A["note_dates"], ifelse(empty, 1024, band(shr(w4, 9), 1023))),
                  take(A["note_bodies"], ifelse(empty, n_bodies, mod(shr(w4, 19), n_bodies))),
                  take(A["follow"], ifelse(empty, 256, follow)))
    multi = pc.and_(pc.invert(empty), pc.less(follow, 3))
    return pa.RecordBatch.from_arrays([name, idn, mob, addr, notes], schema=SCHEMA), multi


@dataclass(frozen=True, slots=True)
class Chunk:
    """Consecutive rows of the population."""

    #: 0-based index of the first row
    start: int
    batch: pa.RecordBatch
    #: labels of the bad rows among them
    labels: list[BadLabel]
    #: BooleanArray: rows whose notes hold a newline
    multiline: Any


def chunks(
    count: int, seed: int, *, bad_rate: float = 0.0, kinds: Sequence[str] = FIELD_KINDS,
    as_of: _dt.date = REFERENCE_DATE, chunk_size: int = CHUNK,
) -> Iterator[Chunk]:
    """The population as chunks of Arrow record batches, with the labels of their bad rows.

    Label ``row`` numbers count from 1 over the whole population. This is the
    fast path behind :func:`pivault.synth.generate` and the writers.
    """
    if count < 0:
        raise ValueError("count must not be negative")
    if not 0.0 <= bad_rate <= 1.0:
        raise ValueError("bad_rate must lie between 0 and 1")
    if any(kind not in BAD_KINDS for kind in kinds) or (bad_rate > 0 and not kinds):
        raise ValueError("kinds must be a non-empty selection of BAD_KINDS")
    if not 0 < chunk_size <= CHUNK:
        raise ValueError(f"chunk_size must lie between 1 and {CHUNK}")
    if count > capacity(as_of):
        raise ValueError("count exceeds the number of distinct identities the generator can make")
    t = _tables(as_of)
    k = _keyed(seed, as_of)
    rng = random.Random(seed)
    bad = _BadRows(seed, bad_rate, tuple(kinds), t, k)
    newlines = 0
    for start in range(0, count, chunk_size):
        n = min(chunk_size, count - start)
        batch, multi = _good_batch(start, n, rng.randbytes(4 * _WORDS * n), t, k)
        labels: list[BadLabel] = []
        if bad_rate:
            batch, multi, labels = bad.apply(start, batch, multi)
        counts = pc.cast(multi, pa.int64())
        if labels:
            before = pc.cumulative_sum(counts).to_pylist()
            labels = [BadLabel(lb.row, lb.kind, lb.expected_code,
                               newlines + (before[lb.row - 2 - start] if lb.row - 1 > start else 0),
                               lb.duplicate_of) for lb in labels]
        newlines += pc.sum(counts).as_py() or 0
        yield Chunk(start, batch, labels, multi)


class _BadRows:
    """Turns chosen rows of each batch into labelled bad rows.

    Two random streams, each consumed in row order, keep the bad rows of a
    shorter population equal to those of a longer one: one decides which rows
    are bad (geometric gaps between bad rows, the same law as a coin per row)
    and of what kind, the other how each is broken.
    """

    def __init__(self, seed: int, rate: float, kinds: tuple[str, ...], t: _Tables,
                 keyed: _Keyed) -> None:
        self.decide = random.Random(f"pivault.synth.bad:{seed}")
        self.rng = random.Random(f"pivault.synth.bad-detail:{seed}")
        self.rate, self.kinds, self.t, self.keyed = rate, kinds, t, keyed
        self.fallback = next((kd for kd in kinds if kd != "duplicate"), "")
        self.prev: tuple[int, pa.RecordBatch, set[int]] | None = None
        self.next_bad = self._gap() if rate > 0 else -1

    def _gap(self) -> int:
        """Good rows before the next bad one."""
        if self.rate >= 1.0:
            return 0
        return int(math.log1p(-self.decide.random()) / math.log1p(-self.rate))

    def _original(
        self, g: int, start: int, batch: pa.RecordBatch, bad: set[int],
    ) -> tuple[int, str, str] | None:
        """A good row shortly before global row ``g``: (row number, name, id number)."""
        back = g - 1 - int(self.rng.random() * min(g, 4096))
        while back >= 0:
            if back >= start:
                src, j, skip = batch, back - start, bad
            elif self.prev is not None and back >= self.prev[0]:
                src, j, skip = self.prev[1], back - self.prev[0], self.prev[2]
            else:
                return None
            if j not in skip:
                return back + 1, src.column(0)[j].as_py(), src.column(1)[j].as_py()
            back -= 1
        return None

    def apply(
        self, start: int, batch: pa.RecordBatch, multi: Any,
    ) -> tuple[pa.RecordBatch, Any, list[BadLabel]]:
        rnd, kinds, end = self.decide.random, self.kinds, start + batch.num_rows
        chosen: list[tuple[int, str]] = []
        while 0 <= self.next_bad < end:
            chosen.append((self.next_bad - start, kinds[int(rnd() * len(kinds))]))
            self.next_bad += 1 + self._gap()
        bad = {j for j, _ in chosen}
        if not chosen:
            self.prev = (start, batch, bad)
            return batch, multi, []
        where = pa.array([j for j, _ in chosen], pa.int64())
        bases = batch.take(where).to_pylist()
        mobiles = _mobiles(pc.add(where, start), self.t, self.keyed).to_pylist()  # also under 10
        labels: list[BadLabel] = []
        new: dict[int, Row] = {}
        for (j, kind), row, mob in zip(chosen, bases, mobiles, strict=True):
            g = start + j
            base: Row = (row["name"], row["id_number"], row["mobile"] or mob, row["address"], row["notes"])
            dup: int | None = None
            if kind == "duplicate":
                orig = self._original(g, start, batch, bad)
                if orig is None:
                    kind = self.fallback
                    if not kind:
                        bad.discard(j)
                        continue
                else:
                    dup, name, idn = orig
                    base = (name, idn, base[2], base[3], base[4])
            new[j] = _make_bad(kind, base, self.rng, self.t)
            labels.append(BadLabel(g + 1, kind, BAD_KINDS[kind], 0, dup))
        if not new:
            self.prev = (start, batch, bad)
            return batch, multi, []
        mask = [False] * batch.num_rows
        for j in new:
            mask[j] = True
        arrow_mask = pa.array(mask, pa.bool_())
        order = sorted(new)
        cols = [pc.replace_with_mask(batch.column(f), arrow_mask,
                                     pa.array([new[j][f] for j in order], pa.string()))
                for f in range(len(COLUMNS))]
        batch = pa.RecordBatch.from_arrays(cols, schema=SCHEMA)
        has_newline = pa.array(["\n" in new[j][4] for j in order], pa.bool_())
        multi = pc.replace_with_mask(multi, arrow_mask, has_newline)
        self.prev = (start, batch, bad)
        return batch, multi, labels


def _make_bad(kind: str, base: Row, rng: random.Random, t: _Tables) -> Row:
    """The row with exactly one rule broken (see the package docstring for each kind)."""
    name, idn, mob, addr, notes = base
    if kind == "id_checksum":
        idn = idn[:17] + rng.choice([ch for ch in "0123456789X" if ch != idn[17]])
    elif kind == "id_date_impossible":
        idn = _fix_check(idn[:10] + rng.choice(_IMPOSSIBLE_MMDD) + idn[14:17])
    elif kind == "id_date_future":
        mmdd = "0228" if idn[10:14] == "0229" else idn[10:14]
        idn = _fix_check(idn[:6] + str(rng.randint(2101, 2199)) + mmdd + idn[14:17])
    elif kind == "id_region":
        idn = _fix_check(rng.choice(t.unknown_regions) + idn[6:17])
    elif kind == "mobile_short":
        mob = mob[: 11 - rng.randint(1, 4)]
    elif kind == "mobile_prefix":
        mob = rng.choice(t.unallocated_prefixes) + mob[3:]
    elif kind == "name_empty":
        name = ""
    elif kind == "name_long":
        target = 65 + rng.randint(0, 16)
        words: list[str] = []
        while len(" ".join(words)) < target:
            words.append(rng.choice(data.PINYIN) + rng.choice(data.PINYIN).lower())
        name = " ".join(words)
    elif kind == "address_long":
        target = 201 + rng.randint(0, 39)
        piece = rng.choice(t.streets) + rng.choice(t.numbers) + "附属楼"
        addr = (addr + piece * (target // len(piece) + 1))[:target]
    elif kind == "notes_long":
        target = 2001 + rng.randint(0, 299)
        piece = (rng.choice(t.note_dates) + rng.choice(t.note_bodies) + rng.choice(t.note_dates)
                 + rng.choice(t.note_bodies))
        notes = (notes.replace("\n", "") + piece * (target // len(piece) + 1))[:target]
    # duplicate: name and ID already taken from the original row.
    # csv_fields / csv_quote: the values stay valid; the CSV writer damages the line.
    if kind in CSV_KINDS:
        notes = notes.replace("\n", "")
    return name, idn, mob, addr, notes
