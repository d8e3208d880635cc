"""Mobile numbers, names, addresses, notes and the display masks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pivault.errors import ValidationError
from pivault.model import Resident, address, masks, mobile, name
from pivault.model.record import normalise_notes

FULL_WIDTH = str.maketrans("0123456789+", "０１２３４５６７８９＋")
UNALLOCATED = [f"1{d:02d}" for d in range(100) if f"1{d:02d}" not in mobile.CARRIERS]

prefixes = st.sampled_from(sorted(mobile.CARRIERS))
subscribers = st.integers(min_value=0, max_value=10**8 - 1).map(lambda n: f"{n:08d}")
mobiles = st.builds(lambda p, s: p + s, prefixes, subscribers)


def rejected(fn: object, value: str) -> str:
    """The error code, after checking the message does not contain the value."""
    with pytest.raises(ValidationError) as info:
        fn(value)  # type: ignore[operator]
    if len(value.strip()) >= 3:
        assert value.strip() not in str(info.value)
    return info.value.code


# -- mobile numbers

@settings(max_examples=300, deadline=None)
@given(mobiles, st.sampled_from(["", "+86", "0086", "86", "+86 ", "0086-", "(+86) "]),
       st.sampled_from(["plain", "spaces", "dashes", "full-width"]))
def test_mobile_forms_normalise_to_11_digits(number: str, country: str, style: str) -> None:
    body = {
        "plain": number,
        "spaces": f"{number[:3]} {number[3:7]} {number[7:]}",
        "dashes": f"{number[:3]}-{number[3:7]}-{number[7:]}",
        "full-width": number.translate(FULL_WIDTH),
    }[style]
    text = country + body
    out = mobile.normalise(text)
    assert out == number
    assert mobile.normalise(out) == out                  # idempotent
    assert mobile.normalise(f"  {text}\u3000") == number  # surrounding spaces
    assert mobile.normalise(text.translate(FULL_WIDTH)) == number


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789+- ()", max_size=20))
def test_mobile_normalise_is_idempotent(value: str) -> None:
    try:
        out = mobile.normalise(value)
    except ValidationError as exc:
        assert exc.code.startswith("mobile.")
    else:
        assert mobile.normalise(out) == out and len(out) == 11


def test_mobile_error_codes() -> None:
    assert rejected(mobile.normalise, "1381234567") == "mobile.length"
    assert rejected(mobile.normalise, "138123456789") == "mobile.length"
    assert rejected(mobile.normalise, "+86 138 1234") == "mobile.length"
    for p in [*UNALLOCATED[:5], "120", "142", "154"]:
        assert rejected(mobile.normalise, p + "12345678") == "mobile.prefix"
    assert rejected(mobile.normalise, "138abc45678") == "mobile.format"
    assert rejected(mobile.normalise, " ") == "mobile.empty"
    assert mobile.carrier("13812345678") == "china_mobile"


# -- names

def test_names_normalise() -> None:
    assert name.normalise(" 张 伟 ") == "张伟"
    assert name.normalise("欧阳娜娜") == "欧阳娜娜"
    for dot in ["•", "・", ".", "･", "·"]:
        assert name.normalise(f"阿依古丽{dot}买买提") == "阿依古丽·买买提"
    assert name.normalise("Zhang  Wei") == "Zhang Wei"


def test_name_error_codes() -> None:
    assert rejected(name.normalise, "") == "name.empty"
    assert rejected(name.normalise, "   ") == "name.empty"
    assert rejected(name.normalise, "张3") == "name.chars"
    assert rejected(name.normalise, "Zhang@Wei") == "name.chars"
    assert rejected(name.normalise, "张") == "name.length"
    assert rejected(name.normalise, "张" * 7) == "name.length"
    assert rejected(name.normalise, "Wang " * 13 + "Li") == "name.length"   # 67 Latin characters
    assert rejected(name.normalise, "阿" * 10 + "·" + "买" * 6) == "name.length"


# -- addresses and notes

def test_address_normalise_and_prefix() -> None:
    assert address.normalise(" 北京市 朝阳区  建国路８８号 ") == "北京市朝阳区建国路88号"
    p = address.parse_prefix("北京市朝阳区建国路88号")
    assert (p.province, p.prefecture, p.district, p.region_code) == ("北京市", None, "朝阳区", "110105")
    # a 15-character autonomous county, and a district name shared by two prefectures of a province
    p = address.parse_prefix("甘肃省临夏回族自治州积石山保安族东乡族撒拉族自治县吹麻滩镇1号")
    assert p.region_code == "622927"
    assert address.parse_prefix("山东省枣庄市市中区光明路1号").region_code == "370402"
    assert address.parse_prefix("山东省济南市市中区光明路1号").region_code == "370103"
    assert address.parse_prefix("somewhere else").end == 0


def test_address_and_notes_error_codes() -> None:
    assert rejected(address.normalise, "") == "address.empty"
    assert rejected(address.normalise, "北京市朝阳区" + "建国路88号" * 40) == "address.length"
    assert rejected(address.normalise, "北京市\x07朝阳区") == "address.chars"
    with pytest.raises(ValidationError) as info:
        normalise_notes("记" * 2001)
    assert info.value.code == "notes.length"
    assert normalise_notes("记" * 2000) == "记" * 2000
    # half of a UTF-16 pair on its own (JSON's "\ud800") is no character: it cannot even be stored
    assert rejected(address.normalise, "北京市朝阳区\udc80") == "address.chars"
    with pytest.raises(ValidationError) as info:
        normalise_notes("备注\ud800")
    assert info.value.code == "notes.chars"


def test_resident_parse_reports_the_first_field_in_order() -> None:
    raw = {"name": "张伟", "id_number": "11010519491231002X", "mobile": "13812345678",
           "address": "北京市朝阳区建国路88号", "notes": ""}
    r = Resident.parse(raw)
    assert r.gender == "F" and r.region_code == "110105" and r.notes is None
    with pytest.raises(ValidationError) as info:
        Resident.parse({**raw, "name": "", "mobile": "1"})
    assert info.value.code == "name.empty"
    with pytest.raises(ValidationError) as info:
        Resident.parse({**raw, "mobile": "1"})
    assert info.value.code == "mobile.length"


# -- masks

def test_default_masks() -> None:
    assert masks.mask_id_number("31010119900307123X") == "310***********123X"
    assert masks.mask_mobile("13812345678") == "138****5678"
    assert masks.mask_name("张三") == "张*"
    assert masks.mask_name("欧阳娜娜") == "欧***"
    assert masks.mask_name("Zhang Wei") == "Z**** ***"
    assert masks.mask_name("Zhang Jun Hui") == "Z**** *** ***"  # not every initial
    assert masks.mask_address("北京市朝阳区建国路88号3栋1502室") == "北京市朝阳区***"
    assert masks.mask_address("广东省深圳市南山区科技路1号") == "广东省深圳市南山区***"
    assert masks.mask_address("科技路1号") == "***"
    assert masks.mask_field("notes", "任何内容") == "***"
    assert masks.mask_field("unknown", "x") == "***"
    assert masks.mask_field("mobile", None) is None


@settings(max_examples=200, deadline=None)
@given(mobiles)
def test_masks_hide_the_middle(number: str) -> None:
    m = masks.mask_mobile(number)
    assert m[:3] == number[:3] and m[-4:] == number[-4:] and m[3:7] == "****"


@pytest.mark.parametrize(("value", "shown"), [
    ("13333515", "******15"), ("133302505", "*******05"), ("1333", "****"), ("133351", "****51"),
    ("1333025050", "********50"), ("110105194912310", "110********2310"),
])
def test_a_value_of_an_odd_length_shows_little_of_itself(value: str, shown: str) -> None:
    # a rejected row's mobile of 8 digits must not come back with 7 of them
    assert masks.mask_mobile(value) == shown or masks.mask_id_number(value) == shown
    for m in (masks.mask_mobile(value), masks.mask_id_number(value)):
        assert m.count("*") >= max(4, len(value) // 2)


def test_the_control_character_check_is_exactly_unicode_categories_cc_and_cs() -> None:
    """The address check is a regex for speed; it must refuse exactly what categories Cc (control
    characters) and Cs (halves of UTF-16 pairs, which cannot be encoded to be sealed) name."""
    import unicodedata

    from pivault.model.address import _CONTROL

    for cp in range(0x110000):
        c = chr(cp)
        assert (_CONTROL.search(c) is not None) == (unicodedata.category(c) in ("Cc", "Cs")), hex(cp)
