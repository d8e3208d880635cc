"""Resident ID numbers (GB 11643): properties, normalisation and every error code."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pivault.errors import ValidationError
from pivault.model import divisions, resident_id
from pivault.synth import identity

TODAY = dt.date(2026, 1, 1)
COUNTIES = divisions.current_county_codes()
FULL_WIDTH = str.maketrans("0123456789X", "０１２３４５６７８９Ｘ")

counties = st.sampled_from(COUNTIES)
birth_dates = st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2025, 12, 31))
sequences = st.integers(min_value=0, max_value=999)


@st.composite
def valid_ids(draw: st.DrawFn) -> str:
    """Valid numbers from two sources: ``resident_id.make`` and the synthetic population."""
    if draw(st.booleans()):
        return resident_id.make(draw(counties), draw(birth_dates), draw(sequences))
    return identity(draw(st.integers(min_value=0, max_value=10**9)), draw(st.integers(0, 3)))[0]


def code_of(value: str, today: dt.date = TODAY) -> str:
    with pytest.raises(ValidationError) as info:
        resident_id.normalise(value, today=today)
    assert value.strip() not in str(info.value)  # never the value in the message
    assert info.value.field == "id_number"
    return info.value.code


@settings(max_examples=200, deadline=None)
@given(valid_ids())
def test_every_synthetic_id_validates(number: str) -> None:
    assert resident_id.normalise(number, today=TODAY) == number
    facts = resident_id.facts(number)
    assert facts.gender == ("M" if int(number[16]) % 2 else "F")
    assert divisions.is_known(facts.region_code)


@settings(max_examples=150, deadline=None)
@given(valid_ids(), st.integers(min_value=0, max_value=17), st.integers(min_value=1, max_value=10))
def test_changing_any_one_character_is_rejected(number: str, pos: int, shift: int) -> None:
    alphabet = "0123456789X" if pos == 17 else "0123456789"
    if number[pos] not in alphabet:  # an X can only sit in the last place
        return
    new = alphabet[(alphabet.index(number[pos]) + shift) % len(alphabet)]
    if new == number[pos]:
        return
    mutated = number[:pos] + new + number[pos + 1:]
    # MOD 11-2 catches every single substitution; the region or date rules may catch it first
    assert code_of(mutated) in {"id.checksum", "id.date", "id.region"}


@settings(max_examples=150, deadline=None)
@given(counties, st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(1999, 12, 31)), sequences)
def test_15_to_18_round_trip(region: str, born: dt.date, seq: int) -> None:
    number = resident_id.make(region, born, seq)
    legacy = number[:6] + number[8:17]
    assert len(legacy) == 15
    assert resident_id.upgrade15(legacy) == number
    assert resident_id.normalise(legacy, today=TODAY) == number


@settings(max_examples=200, deadline=None)
@given(valid_ids(), st.sampled_from([" ", "  ", "\t", "\u3000"]))
def test_lowercase_x_full_width_and_spaces_normalise(number: str, space: str) -> None:
    variants = [
        space + number + space,
        number.lower(),
        number.translate(FULL_WIDTH),
        number[:6] + " " + number[6:14] + " " + number[14:],
        number[:6] + "-" + number[6:],
    ]
    for v in variants:
        assert resident_id.normalise(v, today=TODAY) == number


def test_the_checksum_of_a_known_number() -> None:
    # the worked example of GB 11643-1999 (a division code still in the table)
    assert resident_id.check_char("11010519491231002") == "X"
    assert resident_id.normalise("11010519491231002x", today=TODAY) == "11010519491231002X"


def test_error_codes() -> None:
    good = resident_id.make("110105", dt.date(1990, 3, 7), 123)
    wrong_check = good[:17] + ("0" if good[17] != "0" else "1")
    assert code_of(wrong_check) == "id.checksum"
    impossible = resident_id.check_char("11010519900230123")
    assert code_of("11010519900230123" + impossible) == "id.date"           # Feb 30
    assert code_of(resident_id.make("110105", dt.date(2030, 1, 1), 1)) == "id.date"  # future
    assert code_of(resident_id.make("110105", dt.date(1899, 12, 31), 1)) == "id.date"  # before 1900
    assert code_of(resident_id.make("110199", dt.date(1990, 1, 1), 1)) == "id.region"
    assert code_of(resident_id.make("999999", dt.date(1990, 1, 1), 1)) == "id.region"
    assert code_of("9999999001011234") == "id.length"    # 16
    assert code_of("1101051990030712345") == "id.length"  # 19
    assert code_of("11010519900307A23X") == "id.format"
    assert code_of("1101051990030712X4") == "id.format"
    assert code_of("11010590030712X") == "id.format"      # 15 with a letter
    assert code_of("99999990030712") == "id.length"      # 14 digits
    assert code_of("999999900307123") == "id.region"      # 15-digit legacy, unknown region
    assert code_of("110105900230123") == "id.date"        # 15-digit legacy, Feb 30
    with pytest.raises(ValidationError) as info:
        resident_id.normalise("   ")
    assert info.value.code == "id.empty"


def test_today_bounds_the_birth_date() -> None:
    born = dt.date(2025, 6, 1)
    number = resident_id.make("110105", born, 1)
    assert resident_id.normalise(number, today=born) == number
    assert code_of(number, today=born - dt.timedelta(days=1)) == "id.date"



def test_without_a_date_the_clock_says_what_today_is(monkeypatch: pytest.MonkeyPatch) -> None:
    today = dt.date.today()
    born_today = resident_id.make("110105", today, 1)
    born_tomorrow = resident_id.make("110105", today + dt.timedelta(days=1), 1)
    assert resident_id.normalise(born_today) == born_today
    with pytest.raises(ValidationError) as info:
        resident_id.normalise(born_tomorrow)
    assert info.value.code == "id.date"
    # the day is kept until the clock leaves it: a process running past midnight asks again
    monkeypatch.setattr(resident_id, "_today_cache", (today - dt.timedelta(days=1), 0.0, 1.0))
    assert resident_id.normalise(born_today) == born_today

@settings(max_examples=150, deadline=None)
@given(st.one_of(st.from_regex(r"[0-9Xx \-]{8,25}", fullmatch=True), valid_ids(), st.text(max_size=30)))
def test_any_input_is_accepted_or_rejected_with_a_code_and_never_echoed(value: str) -> None:
    try:
        out = resident_id.normalise(value, today=TODAY)
    except ValidationError as exc:
        assert exc.code.startswith("id.")
        cleaned = resident_id.clean(value)
        if len(cleaned) >= 8:  # shorter strings can occur in any English sentence
            assert cleaned not in str(exc) and value.strip() not in str(exc)
    else:
        assert len(out) == 18 and resident_id.is_valid(out)
