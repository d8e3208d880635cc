"""Find the PI columns of a dump by what they hold, not by what they are called.

Leaked files arrive with headers renamed (``身份证号``, ``col3``, ``zjhm``),
dropped, or shuffled. What cannot be renamed away is the content: resident ID
numbers carry a MOD 11-2 check character, a region code and a real birth
date; mobile numbers sit under allocated carrier prefixes; names start with a
surname; addresses start with a province, city or district or carry road and
house-number markers. So each column of a sample of rows is scored by the
share of its non-empty values that validate as each kind, and the best kind
above a threshold wins. Validation is the model's own normalisers, so what is
detected here is exactly what the matcher can use.
"""

from __future__ import annotations

import datetime as _dt
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from pivault.errors import ValidationError
from pivault.model import address as _address
from pivault.model import is_record_id
from pivault.model import mobile as _mobile
from pivault.model import resident_id as _rid
from pivault.model._text import PRINTABLE_INVISIBLE, drop_invisible
from pivault.model.dates import written_date
from pivault.model.masks import mask_field

__all__ = [
    "COMPOUND_SURNAMES",
    "KINDS",
    "MATCH_KINDS",
    "PI_KINDS",
    "Column",
    "address_key",
    "classify",
    "detect_columns",
    "fast_id_number",
    "fast_id_numbers",
    "fast_mobile",
    "fast_mobiles",
    "fast_name",
    "fast_names",
    "looks_like_header",
    "parse_birth_date",
    "plain_address",
    "shown_header",
    "shown_name",
    "spreadsheet_safe",
]

#: kinds of PI column, in precedence order for ties
KINDS: tuple[str, ...] = ("id_number", "mobile", "birth_date", "gender", "name", "address", "notes",
                          "record_id")
#: kinds that are PI (a record id is the vault's own opaque id: it exposes nothing of the resident,
#: but a dump that carries ids the vault issued was served by it)
PI_KINDS: tuple[str, ...] = KINDS[:-1]
#: kinds the matcher uses to find residents through the blind indexes
MATCH_KINDS: tuple[str, ...] = ("id_number", "mobile", "name", "birth_date")
_THRESHOLD = {"id_number": 0.5, "mobile": 0.5, "birth_date": 0.6, "gender": 0.8, "name": 0.6,
              "address": 0.6, "notes": 0.6, "record_id": 0.5}
_MIN_VALUES = 3

# The ~300 commonest surnames (together >95 % of the population) and the compound ones.
_SURNAMES = set(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁"
    "任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴"
    "莫孔向汤常温康施文牛樊葛邢安齐易乔伍庞颜倪庄聂章鲁岳翟殷詹申欧耿关兰焦俞左柳甘祝包宁尚符舒阮柯纪"
    "梅童凌毕单季裴霍涂成苗谷盛曲翁冉骆蓝路游辛靳管柴蒙鲍华喻祁蒲房滕屈饶解牟艾尤阳时穆农司卓古吉缪简车"
    "项连芦麦褚娄窦戚岑景党宫费卜冷晏席卫米柏宗瞿桂全佟应臧闵苟邬边卞姬师和仇栾隋商刁沙荣巫寇桑郎甄丛"
    "仲虞敖巩明佘池查麻苑迟邝官封谈匡鞠惠荆乐冀郁胥南班储原栗燕楚鄢劳谌奚皮粟冼蔺楼盘满闻位厉伊仝区郜"
    "海阚花权强帅屠豆朴盖练廉禹井祖漆巴丰支卿国狄平计索宣晋相初门云容敬来扈晁芮都普阙浦戈伏鹿薄邸雍辜"
    "羊阿乌母裘亓修邰赫杭况那宿鲜印逯隆茹诸战慕危玉银亢嵇公哈湛宾戎勾茅利於呼居揭干但尉冶斯元束檀衣信"
    "展阴昝智幸奉植衡富尧闭由"
)
_COMPOUND = {"欧阳", "司马", "上官", "诸葛", "东方", "皇甫", "尉迟", "公孙", "慕容", "长孙", "宇文",
             "司徒", "夏侯", "轩辕", "令狐", "端木", "独孤", "南宫", "西门", "百里", "呼延", "赫连"}
#: the compound surnames, which a name's split into surname and given name must know
COMPOUND_SURNAMES: frozenset[str] = frozenset(_COMPOUND)
_CJK_NAME = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]{2,4}")
_MINORITY = re.compile(r"[\u4e00-\u9fff]{1,8}(?:[·•・.][\u4e00-\u9fff]{1,8}){1,3}")
_LATIN_NAME = re.compile(r"[A-Z][a-z]{1,15}(?: [A-Z][a-z]{1,15}){1,2}")
_ADDRESS_MARK = re.compile(r"[路街道巷弄号室村镇乡栋楼院]|小区|单元|社区|大厦|花园")
_DIGIT = re.compile(r"[0-9０-９一二三四五六七八九十]")
_CJK = re.compile(r"[\u4e00-\u9fff]")
_GENDERS = {"男", "女", "m", "f", "male", "female", "男性", "女性"}
_HEADER_WORDS = (
    "姓名", "名字", "身份证", "证件", "证号", "手机", "电话", "联系", "号码", "地址", "住址", "户籍", "籍贯",
    "出生", "生日", "性别", "备注", "编号", "序号", "名称", "年龄", "民族", "案件", "描述",
    "name", "id", "phone", "mobile", "tel", "address", "addr", "birth", "dob", "gender", "sex",
    "email", "card", "no", "number", "note", "remark", "sfz", "sfzh", "xm", "zjhm", "sjhm",
)
_WORD = re.compile(r"[a-z]+|[\u4e00-\u9fff]+")
_CHECK = "10X98765432"


@cache
def _valid_dates() -> frozenset[str]:
    """Every YYYYMMDD from 1900-01-01 to today: the birth dates an ID number can hold."""
    day = _rid.EARLIEST_BIRTH
    today = _dt.date.today()
    out = []
    one = _dt.timedelta(days=1)
    while day <= today:
        out.append(day.strftime("%Y%m%d"))
        day += one
    return frozenset(out)


@cache
def _known_regions() -> frozenset[str]:
    from pivault.model import divisions

    return frozenset(divisions.all_codes())


_FAST: tuple[frozenset[str], frozenset[str]] | None = None


def _fast_tables() -> tuple[frozenset[str], frozenset[str]]:
    global _FAST
    _FAST = (_known_regions(), _valid_dates())
    return _FAST


def fast_id_number(value: str) -> str | None:
    """The canonical 18-character ID number, or ``None`` when it does not validate.

    The common clean case (18 ASCII characters) is checked with set lookups
    and one base-13 integer conversion: the MOD 11-2 weights are ``2**(17-i)
    mod 11``, and 13 is 2 modulo 11, so ``2 * int(first17, 13) % 11`` is the
    weighted sum. Anything else goes through :func:`pivault.model.resident_id.normalise`.
    """
    if len(value) == 18 and value.isascii():
        v = value.upper() if value[17] == "x" else value
        first = v[:17]
        if first.isdigit():
            regions, dates = _FAST or _fast_tables()
            if v[:6] in regions and v[6:14] in dates and _CHECK[(2 * int(first, 13)) % 11] == v[17]:
                return v
            return None
    try:
        return _rid.normalise(value)
    except ValueError:
        return None


# the ASCII characters the model's normaliser strips (``\s``, dash, parentheses, dot); deleted
# from the ASCII bytes (``bytes.translate`` is several times faster than ``str.translate`` here)
_MOBILE_SEPARATORS = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f-()."


def fast_mobile(value: str) -> str | None:
    """The 11-digit mobile number, or ``None``.

    ASCII input with ``+86``/``0086``/``86`` and separators is cleaned with one
    ``str.translate``; anything else (full-width digits …) goes through
    :func:`pivault.model.mobile.normalise`.
    """
    if value.isascii():
        v = value if (len(value) == 11 and value.isdigit()) else \
            value.encode("ascii").translate(None, _MOBILE_SEPARATORS).decode("ascii")
        if v.startswith("+86"):
            v = v[3:]
        elif v.startswith("0086"):
            v = v[4:]
        elif len(v) == 13 and v.startswith("86"):
            v = v[2:]
        if len(v) == 11 and v.isdigit():
            return v if v[:3] in _mobile.CARRIERS else None
        return None
    try:
        return _mobile.normalise(value)
    except ValueError:
        return None


def fast_name(value: str) -> str | None:
    """The normalised name (the vault's own normaliser), or ``None``."""
    if 2 <= len(value) <= 6 and _CJK_NAME.fullmatch(value):
        return value
    from pivault.model import name as _name

    try:
        return _name.normalise(value)
    except ValueError:
        return None


def fast_id_numbers(values: Sequence[str | None]) -> list[str | None]:
    """``[fast_id_number(v.strip()) if v else None for v in values]``, with less overhead a value."""
    regions, dates = _FAST or _fast_tables()
    check = _CHECK
    slow = fast_id_number
    out: list[str | None] = []
    add = out.append
    for value in values:
        if not value:
            add(None)
            continue
        v = value.strip()
        if len(v) == 18 and v.isascii() and v[:17].isdigit():
            if v[17] == "x":
                v = v.upper()
            add(v if v[:6] in regions and v[6:14] in dates and check[(2 * int(v[:17], 13)) % 11] == v[17]
                else None)
        else:
            add(slow(v))
    return out


def fast_mobiles(values: Sequence[str | None]) -> list[str | None]:
    """``[fast_mobile(v.strip()) if v else None for v in values]``, with less overhead a value."""
    carriers = _mobile.CARRIERS
    seps = _MOBILE_SEPARATORS
    slow = fast_mobile
    out: list[str | None] = []
    add = out.append
    for value in values:
        if not value:
            add(None)
            continue
        v = value.strip()
        if not v.isascii():
            add(slow(v))
            continue
        if not (len(v) == 11 and v.isdigit()):
            v = v.encode("ascii").translate(None, seps).decode("ascii")
        if v.startswith("+86"):
            v = v[3:]
        elif v.startswith("0086"):
            v = v[4:]
        elif len(v) == 13 and v.startswith("86"):
            v = v[2:]
        add(v if len(v) == 11 and v.isdigit() and v[:3] in carriers else None)
    return out


def fast_names(values: Sequence[str | None]) -> list[str | None]:
    """``[fast_name(v.strip()) if v else None for v in values]``, with less overhead a value."""
    cjk = _CJK_NAME.fullmatch
    slow = fast_name
    out: list[str | None] = []
    add = out.append
    for value in values:
        if not value:
            add(None)
            continue
        v = value.strip()
        add(v if 2 <= len(v) <= 6 and cjk(v) else slow(v))
    return out


#: first characters that make a spreadsheet take a cell for a formula (CSV injection)
FORMULA_START: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: str) -> str:
    """A CSV cell a spreadsheet shows as text: a leading ``'`` before what would start a formula.

    Addresses and notes are free text, and an export is opened in a
    spreadsheet by whoever receives it: ``=HYPERLINK(...)`` stored in a
    resident's notes must not run there (OWASP's CSV injection advice).
    :func:`plain_address` undoes it when a copy of the export comes back.
    """
    return "'" + value if value.startswith(FORMULA_START) else value


def plain_address(value: str) -> str | None:
    """An address cell of a dump as the vault holds it: a spreadsheet's ``'`` taken off, then
    :func:`address_key`."""
    v = value.strip()
    if v[:1] == "'" and v[1:2] in FORMULA_START and len(v) > 1:
        v = v[1:].strip()
    return address_key(v) if v else None


def address_key(value: str) -> str | None:
    """An address as the vault normalises it (:func:`pivault.model.address.normalise`), without
    the characters that show nothing: what exported rows and canaries are matched by.

    A dump re-typed with full-width digits, a space between two characters or a zero-width
    space reads as the address the vault holds; taken as written, it agreed with no exported
    row and no canary. An address the vault would refuse (over 200 characters, control
    characters) is taken stripped. Most cells are already in the vault's form: printable,
    without a space and in NFKC, they are returned as they are (about a microsecond instead
    of the normaliser's seven).
    """
    if (value.isprintable() and " " not in value and unicodedata.is_normalized("NFKC", value)
            and not PRINTABLE_INVISIBLE.search(value)):
        return value or None
    v = drop_invisible(value).strip()
    try:
        return _address.normalise(v)
    except ValidationError:
        return v or None


def parse_birth_date(value: str) -> str | None:
    """``YYYY-MM-DD`` from the common written forms (:func:`pivault.model.dates.written_date`,
    as a lookup reads them), or ``None`` (not a plausible birth date)."""
    parts = written_date(value)
    if parts is None:
        return None
    key = f"{parts[0]:04d}{parts[1]:02d}{parts[2]:02d}"
    return f"{key[:4]}-{key[4:6]}-{key[6:]}" if key in _valid_dates() else None


def _is_name(v: str) -> bool:
    if not v.isascii():
        # as the matcher reads it (width, spaces between characters, dot variants, characters that
        # show nothing): a name column re-typed "张 三" or "张\u200b三" is still found
        n = fast_name(v)
        if n is None:
            return False
        v = n
    if _CJK_NAME.fullmatch(v):
        return v[0] in _SURNAMES or v[:2] in _COMPOUND
    if _MINORITY.fullmatch(v):
        return True
    return bool(_LATIN_NAME.fullmatch(v))


def _is_address(v: str) -> bool:
    if len(v) < 5 or not _CJK.search(v):
        return False
    try:
        norm = _address.normalise(v)
    except ValueError:
        return False
    if _address.parse_prefix(norm).end > 0 and len(norm) >= 6:
        return True
    return bool(_ADDRESS_MARK.search(norm)) and bool(_DIGIT.search(norm)) and len(norm) >= 6


def classify(value: str | None) -> str | None:
    """The kind of one value (first in precedence order), ``None`` if none."""
    if value is None:
        return None
    v = value.strip()
    if not v:
        return None
    if len(v) == 28 and is_record_id(v):
        return "record_id"
    if fast_id_number(v):
        return "id_number"
    if fast_mobile(v):
        return "mobile"
    if parse_birth_date(v):
        return "birth_date"
    if v.lower() in _GENDERS:
        return "gender"
    if _is_name(v):
        return "name"
    if _is_address(v):
        return "address"
    if len(v) >= 15 and len(_CJK.findall(v)) >= 8:
        return "notes"
    return None


@dataclass(frozen=True, slots=True)
class Column:
    """What a column was found to hold.

    ``share`` is the fraction of its non-empty sampled values that validate
    as ``kind``; ``values`` how many non-empty values were sampled;
    ``primary`` marks the best column of its kind (the one matching uses).
    """

    index: int
    header: str | None
    kind: str | None
    share: float
    values: int
    primary: bool = False

    @property
    def confidence(self) -> str:
        """``high`` / ``medium`` / ``low`` from the share and the sample size."""
        if self.kind is None:
            return "none"
        if self.share >= 0.9 and self.values >= 20:
            return "high"
        if self.share >= 0.7 and self.values >= 5:
            return "medium"
        return "low"

    def describe(self) -> dict[str, object]:
        """The column for a case and its report: no PI, so a header cell that holds a value is
        masked (:func:`shown_header`)."""
        return {"column": self.index + 1, "header": shown_header(self.header), "kind": self.kind,
                "share": round(self.share, 3), "values": self.values,
                "confidence": self.confidence, "primary": self.primary}


def detect_columns(header: Sequence[str] | None, rows: Sequence[Sequence[str | None]]) -> list[Column]:
    """Score every column of ``rows`` (a sample) and name the PI kind each holds.

    The header is carried into the result for the report only; it plays no
    part in the decision.
    """
    width = max([len(r) for r in rows] + [len(header) if header else 0])
    cols: list[Column] = []
    for i in range(width):
        counts: dict[str, int] = {}
        n = 0
        for row in rows:
            if i >= len(row):
                continue
            kind = classify(row[i])
            if row[i] is None or not str(row[i]).strip():
                continue
            n += 1
            if kind:
                counts[kind] = counts.get(kind, 0) + 1
        best: str | None = None
        best_share = 0.0
        for kind in KINDS:
            share = counts.get(kind, 0) / n if n else 0.0
            enough = counts.get(kind, 0) >= min(_MIN_VALUES, n)
            if share >= _THRESHOLD[kind] and share > best_share and enough:
                best, best_share = kind, share
        name = header[i] if header and i < len(header) else None
        cols.append(Column(i, name, best, best_share, n))
    # the best column of each kind is the primary one
    out: list[Column] = []
    for col in cols:
        if col.kind is None:
            out.append(col)
            continue
        rivals = [c for c in cols if c.kind == col.kind]
        top = max(rivals, key=lambda c: (c.share, c.values, -c.index))
        out.append(Column(col.index, col.header, col.kind, col.share, col.values, top is col))
    return out


#: a header cell is a label: this many characters at most
_LABEL_MAX = 24
#: a label written in ASCII (``col3``, ``zjhm``, ``ID Number``, ``user.name``)
_ASCII_LABEL = re.compile(r"[A-Za-z][A-Za-z0-9_ .\-]*")
_DIGITS = re.compile(r"[0-9０-９]")


def _has_header_word(cell: str) -> bool:
    for word in _WORD.findall(cell.lower()):
        if word in _HEADER_WORDS or any(h in word for h in _HEADER_WORDS if not h.isascii()):
            return True
    return False


def _label(cell: str) -> bool:
    """Whether a cell reads as a column's label: short, few digits, and a header word or an
    ASCII name. Free text of a resident (notes: ``户籍于2019年迁入``) is longer or carries
    numbers, and a value (a passport or plate number) carries digits."""
    if len(cell) > _LABEL_MAX or len(_DIGITS.findall(cell)) > 2:
        return False
    return _has_header_word(cell) or bool(_ASCII_LABEL.fullmatch(cell))


def _as_held(kind: str, value: str) -> str:
    """``value`` as the vault would hold it, for its mask.

    A mask keeps the first and last characters of what it is given, and one
    character can write several digits (``⑪`` is 11, ``㉕`` 25): an ID number
    written so showed its birth date and sequence (``⑪01******⑫㉕⑩⑰``). The
    mask of the normalised value shows what the mask promises.
    """
    held: str | None = None
    if kind == "id_number":
        held = fast_id_number(value)
    elif kind == "mobile":
        held = fast_mobile(value)
    elif kind == "name":
        held = fast_name(value)
    elif kind == "birth_date":
        held = parse_birth_date(value)
    elif kind == "address":
        held = address_key(value)
    return held or value


def shown_header(cell: str | None) -> str | None:
    """A header cell as a case may keep it: as it is when it reads as a label, else masked.

    The first row of a dump is taken for a header by its content, and a data row can pass
    for one. Its cells would then be a resident's name, address or notes, kept in the case
    and printed with ``--json``, where no PI may go. So a cell that reads as PI is masked
    like the value it is (``张*``, the address cut after the district) unless it is a label
    with a header word that happens to read as a value too (``常住地址`` starts with a surname,
    ``手机号码(11位)`` has an address's marker and digits), and any other cell that does not
    read as a label (:func:`_label`) is hidden (``***``): a header the case cannot tell from a
    value loses its name, never a resident's data.
    """
    if cell is None:
        return None
    v = cell.strip()
    if not v:
        return v
    kind = classify(v)
    if kind == "record_id" or (_has_header_word(v) and _label(v)):
        return v  # the vault's opaque id (no PI of the resident), or a label
    if kind is not None:
        return mask_field(kind, _as_held(kind, v))
    return v if _label(v) else "***"


#: what splits a name from a dump (a zip member's path, a JSON key, a table or sheet name) into parts
_NAME_PARTS = re.compile(r"([/\\_.\-#:\s]+)")
#: a run of digits long enough to be an ID number, a mobile or a card number
_LONG_DIGITS = re.compile(r"[0-9０-９]{6,}")
#: characters a terminal or an HTML page acts on rather than shows: controls, and bidi overrides
_UNSHOWN = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
#: characters of such a name kept at most
NAME_MAX = 120


def shown_name(name: str) -> str:
    """A name the dump itself gave (a zip member's path, a JSON key, a table or a sheet name), as a
    case, its report and error messages may show it.

    Whoever made the dump chose these names: ``110105194912310021_张三.csv`` inside a zip puts a
    resident's ID number and name into the case, kept for years and printed with ``--json``, and
    escape sequences in a member's name would act on the terminal that prints it. So each part
    that reads as PI is masked as the value it is, any long run of digits is hidden, characters a
    terminal or a page would act on are replaced by ``?``, and the name is cut to
    :data:`NAME_MAX` characters.
    """
    text = _UNSHOWN.sub("?", name)
    if len(text) > NAME_MAX:
        text = text[:NAME_MAX - 1] + "…"
    parts = _NAME_PARTS.split(text)
    for i in range(0, len(parts), 2):  # the separators sit at the odd places
        part = parts[i]
        if not part:
            continue
        kind = classify(part)
        if kind is not None and kind != "record_id":
            part = mask_field(kind, _as_held(kind, part)) or "***"
        parts[i] = _LONG_DIGITS.sub(lambda m: "*" * len(m.group()), part)
    return "".join(parts)


def looks_like_header(first: Sequence[str | None], rest: Sequence[Sequence[str | None]]) -> bool:
    """Whether ``first`` is a header row rather than data.

    A header holds no valid ID number or mobile, and either uses a word
    headers use (``姓名``, ``phone`` …) or differs in kind from the rest of
    its columns (``身份证号`` above a column of ID numbers).
    """
    cells = [(c or "").strip() for c in first]
    kinds = [classify(c) for c in cells]
    if any(k in ("id_number", "mobile", "birth_date") for k in kinds):
        return False
    if not any(cells):
        return False
    # a header word counts in a label only: a resident's notes may hold one (``户籍迁入本市``)
    if any(_has_header_word(c) and _label(c) for c in cells):
        return True
    if not rest:
        return False
    typed = mismatched = 0
    for i, kind in enumerate(kinds):
        if not cells[i]:
            # an empty cell is a value missing from a data row as often as a header left blank
            continue
        col = [classify(r[i]) for r in rest if i < len(r) and r[i] is not None and str(r[i]).strip()]
        if len(col) < 2:
            continue
        dominant = max(set(col), key=col.count)
        if dominant is None or col.count(dominant) / len(col) < 0.6:
            continue
        typed += 1
        if kind != dominant:
            mismatched += 1
    return typed > 0 and mismatched * 2 >= typed
