"""PI column detection by content."""

from __future__ import annotations

import random

from leak.synthetic import people
from pivault.leak.columns import (
    classify,
    detect_columns,
    fast_id_number,
    fast_mobile,
    looks_like_header,
    parse_birth_date,
    shown_header,
)
from pivault.model import resident_id

PEOPLE = list(people(400, seed=3))


def messy(r: dict[str, str], rng: random.Random) -> list[str]:
    """What a re-typed leak does to values: lowercase x, +86, dashes, spaces."""
    idn = r["id_number"]
    idn = idn[:-1] + "x" if idn.endswith("X") else idn
    m = r["mobile"]
    m = rng.choice([f"+86 {m[:3]}-{m[3:7]}-{m[7:]}", f"{m[:3]} {m[3:7]} {m[7:]}", f"86{m}", m])
    return [r["address"], m, r["name"], idn]


def test_finds_kinds_with_renamed_and_shuffled_columns() -> None:
    rng = random.Random(1)
    rows: list[list[str | None]] = [[*messy(r, rng), "备注无"] for r in PEOPLE]  # type: ignore[misc]
    for row in rows[::10]:
        row[1] = ""  # missing mobiles
    cols = detect_columns(["col1", "col2", "col3", "col4", "col5"], rows)
    kinds = [c.kind for c in cols]
    assert kinds == ["address", "mobile", "name", "id_number", None]
    assert all(c.primary for c in cols if c.kind)
    assert cols[3].confidence == "high" and cols[3].share == 1.0
    assert cols[1].values == 360
    assert cols[0].describe()["header"] == "col1"


def test_ignores_non_pi_and_near_misses() -> None:
    rng = random.Random(2)
    rows: list[list[str | None]] = []
    for _ in range(300):
        bad_id = "".join(rng.choice("0123456789") for _ in range(18))  # fails the checksum mostly
        order = f"{rng.randrange(10**10, 10**11)}"  # 11-digit order numbers under no mobile prefix
        rows.append([bad_id, "2" + order[1:], f"SKU-{rng.randrange(1000)}", str(rng.random())])
    cols = detect_columns(None, rows)
    assert [c.kind for c in cols] == [None, None, None, None]


def test_second_column_of_a_kind_is_not_primary() -> None:
    rows: list[list[str | None]] = [[r["mobile"], PEOPLE[(i + 1) % 400]["mobile"] if i % 3 else ""]
                                    for i, r in enumerate(PEOPLE)]
    cols = detect_columns(None, rows)
    assert [c.kind for c in cols] == ["mobile", "mobile"]
    assert cols[0].primary and not cols[1].primary


def test_birth_dates_and_gender() -> None:
    assert parse_birth_date("1985-03-07") == "1985-03-07"
    assert parse_birth_date("1985/3/7") == "1985-03-07"
    assert parse_birth_date("19850307") == "1985-03-07"
    assert parse_birth_date("1985年3月7日") == "1985-03-07"
    assert parse_birth_date("1985-02-30") is None
    assert parse_birth_date("1850-01-01") is None
    rows: list[list[str | None]] = [[f"19{rng:02d}-0{rng % 9 + 1}-1{rng % 9}", "男" if rng % 2 else "女"]
                                    for rng in range(10, 90)]
    assert [c.kind for c in detect_columns(None, rows)] == ["birth_date", "gender"]


def test_fast_paths_agree_with_the_model() -> None:
    rng = random.Random(5)
    for r in PEOPLE:
        idn = r["id_number"]
        assert fast_id_number(idn) == resident_id.normalise(idn)
        assert fast_id_number(idn.lower()) == idn
        assert fast_id_number("  " + idn[:6] + " " + idn[6:]) == idn
        broken = idn[:17] + ("0" if idn[17] != "0" else "1")
        assert fast_id_number(broken) is None
        assert fast_mobile(r["mobile"]) == r["mobile"]
        assert fast_mobile(messy(r, rng)[1]) == r["mobile"]
    assert fast_id_number(resident_id.make("110105", __import__("datetime").date(1949, 12, 31), 2)[:6]
                          + "491231002") is not None  # 15-digit legacy
    assert fast_mobile("12012345678") is None


def test_classify() -> None:
    assert classify(None) is None and classify("  ") is None
    assert classify("欧阳修文") == "name"
    assert classify("买买提·艾力") == "name"
    assert classify("上海市浦东新区世纪大道100号") == "address"
    assert classify("北京") is None
    assert classify("嫌疑人于当日晚间在商场内盗窃财物被当场抓获") == "notes"


def test_header_detection() -> None:
    data = [[r["name"], r["id_number"], r["mobile"]] for r in PEOPLE[:50]]
    assert looks_like_header(["姓名", "身份证号", "手机号码"], data)
    assert looks_like_header(["xm", "sfzh", "sjhm"], data)
    assert looks_like_header(["a", "b", "c"], data)  # kinds differ from the column below
    assert not looks_like_header(data[0], data[1:])
    names = [[r["name"], r["address"]] for r in PEOPLE[:50]]
    assert not looks_like_header(names[0], names[1:])
    assert looks_like_header(["名字", "地址"], names)


def test_a_resident_missing_keys_is_data_not_a_header() -> None:
    """A first row whose ID number and mobile are missing, or whose notes use a header word, is a
    resident: taken for a header, its name and address would be kept as column names."""
    data = [[r["name"], r["id_number"], r["mobile"], r["address"], "无"] for r in PEOPLE[:50]]
    first = [PEOPLE[60]["name"], "", "", PEOPLE[60]["address"], "无"]
    assert not looks_like_header(first, data)
    noted = [PEOPLE[61]["name"], "", "", PEOPLE[61]["address"], "户籍于2019年迁入本市"]
    assert not looks_like_header(noted, data)
    assert looks_like_header(["姓名", "", "", "地址", "备注"], data)  # blank header cells


def test_header_cells_that_read_as_values_are_masked() -> None:
    p = PEOPLE[62]
    assert shown_header(p["name"]) == p["name"][0] + "*" * (len(p["name"]) - 1)
    assert shown_header(p["address"]).endswith("***")  # type: ignore[union-attr]
    assert p["address"][-6:] not in (shown_header(p["address"]) or "")
    assert shown_header(p["id_number"]) == p["id_number"][:3] + "*" * 11 + p["id_number"][-4:]
    assert shown_header("Zhang Wei") == "Z**** ***"
    for value in ("户籍于2019年迁入本市", "工作单位", "E12345678", "男"):
        assert shown_header(value) == "***"
    for label in ("姓名", "常住地址", "手机号码(11位)", "身份证号", "col3", "zjhm", "ID Number",
                  "r_0123456789abcdefghjkmnpqrs"):
        assert shown_header(label) == label
    assert shown_header(None) is None


def test_fast_mobile_agrees_with_the_model_on_random_ascii() -> None:
    from pivault.model import mobile

    rng = random.Random(8)
    alphabet = "0123456789+-(). \t\n86"
    for _ in range(20000):
        v = "".join(rng.choice(alphabet) for _ in range(rng.randrange(8, 20)))
        if rng.random() < 0.5:
            v = rng.choice(["+86", "0086", "86", ""]) + rng.choice(["138", "120", "199"]) + v[:8]
        try:
            want: str | None = mobile.normalise(v)
        except ValueError:
            want = None
        assert fast_mobile(v) == want, repr(v)
