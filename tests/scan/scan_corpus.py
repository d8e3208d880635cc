"""A labelled synthetic corpus for the scanner: planted PI and secrets, hard negatives.

Every document is built piece by piece so the byte span of each planted value
is known. Formats: Chinese and English prose, CSV, JSON lines, application
logs, SQL dumps and config files. Hard negatives sit beside the positives:
ID numbers and card numbers with a wrong check character, ID numbers with an
impossible date or an unknown division, date-prefixed 18-digit order numbers,
19-digit snowflake ids, epoch timestamps (s, ms, us, ns), compact datetimes,
phone-like product codes (letters glued on, wrong grouping, 12 digits,
unallocated prefixes), EAN-13 barcodes, UUIDs, hashes, the AWS documentation
example key, passport-like codes without context.

All values are random: no real person is described.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass, field

from pivault.model import divisions, mobile, resident_id

KINDS_ASSERTED = ("id_number", "mobile", "bank_card", "cloud_key")

SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢"
)
COMPOUND = ("欧阳", "司马", "诸葛", "上官")
GIVEN = (
    "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红鹏辉建国文云飞浩宇欣怡子涵梓轩博晨思雨佳俊嘉婷雪"
    "琳晓海波斌宁凯鑫林丹蕾倩颖琪璐瑶慧婧媛毅峰健亮成龙威帆昊然一诺欢乐晶月霖悦睿哲泽铭航皓楠蕊薇妍菲茜露"
)
ROADS = (
    "建国",
    "人民",
    "解放",
    "中山",
    "和平",
    "胜利",
    "光明",
    "幸福",
    "长江",
    "黄河",
    "学府",
    "科技",
    "文化",
    "滨江",
    "世纪",
    "朝阳",
    "新华",
    "东风",
    "青年",
    "振兴",
)
ROAD_SUFFIX = ("路", "街", "大街", "大道")
EN_FIRST = ("John", "Mary", "Wei", "Li", "Anna", "Peter", "Linda", "Tom", "Grace", "David")
EN_LAST = ("Smith", "Brown", "Chen", "Wang", "Taylor", "Lee", "Miller", "Zhang")
DOMAINS = ("example.com", "mail.example.cn", "corp.example.org", "example.net")
UNALLOCATED = (
    "120",
    "121",
    "123",
    "125",
    "127",
    "129",
    "142",
    "143",
    "154",
    "160",
    "161",
    "163",
    "164",
    "168",
    "169",
    "179",
    "194",
)
_B32 = string.ascii_uppercase + "234567"
_B62 = string.ascii_letters + string.digits
_GENERIC = {"市辖区", "县", "省直辖县级行政区划", "自治区直辖县级行政区划"}

ZH_FILLER = (
    "系统于本周完成了例行维护，各项服务运行正常。",
    "本季度客户满意度持续提升，投诉量环比下降。",
    "请各部门按照通知要求做好数据安全自查工作。",
    "会议讨论了下一阶段的工作计划和资源安排。",
    "客户信息已更新，请相关人员及时核对。",
    "用户管理模块新增了批量导入功能。",
    "平台将在凌晨进行升级，届时部分功能暂停使用。",
    "经核实，该笔交易已按流程完成退款处理。",
    "关于加强个人信息保护工作的通知已经下发。",
    "高度重视数据分类分级管理，落实主体责任。",
    "方案经评审后由项目组负责实施，周期约三个月。",
    "何时上线取决于测试进度和安全评估结果。",
    "金额较大的转账需要二次确认并留存记录。",
    "本次活动共吸引了大量市民参与，反响良好。",
    "客户经理应当在规定时间内完成回访。",
    "石化行业的安全生产检查将持续到年底。",
    "万事开头难，新系统的推广需要耐心。",
    "程序运行日志保留九十天后自动清理。",
    "用户反馈页面加载缓慢，技术团队正在排查。",
    "文件已归档，如需调阅请提交申请。",
)
EN_FILLER = (
    "The nightly batch finished without errors and the cache was warmed.",
    "Please review the access policy before the next release.",
    "Customer satisfaction improved this quarter according to the survey.",
    "The service was restarted after the configuration change was applied.",
    "Retention for application logs is ninety days.",
    "All passengers must present a valid document at the gate.",
    "The report covers orders, refunds and shipping delays.",
    "Contact the support desk if the problem persists.",
    "Password rotation is enforced every ninety days for service accounts.",
    "Export jobs are queued and processed in order of submission.",
)


@dataclass
class Label:
    kind: str
    start: int
    end: int


@dataclass
class Doc:
    name: str
    fmt: str
    data: bytes
    labels: list[Label] = field(default_factory=list)
    negatives: list[Label] = field(default_factory=list)


class _Builder:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.pos = 0
        self.labels: list[Label] = []
        self.negatives: list[Label] = []

    def t(self, text: str) -> _Builder:
        b = text.encode("utf-8")
        self.parts.append(b)
        self.pos += len(b)
        return self

    def pi(self, kind: str, text: str) -> _Builder:
        start = self.pos
        self.t(text)
        self.labels.append(Label(kind, start, self.pos))
        return self

    def neg(self, label: str, text: str) -> _Builder:
        start = self.pos
        self.t(text)
        self.negatives.append(Label(label, start, self.pos))
        return self

    def doc(self, name: str, fmt: str) -> Doc:
        return Doc(name, fmt, b"".join(self.parts), self.labels, self.negatives)


class Gen:
    """Random values, each with the formats people write them in."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        self.counties = [c for c in divisions.current_county_codes() if divisions.name_of(c) not in _GENERIC]

    # --- positives -------------------------------------------------------
    def birth(self, lo: int = 1940, hi: int = 2006) -> dt.date:
        return dt.date(lo, 1, 1) + dt.timedelta(days=self.r.randrange((hi - lo) * 365))

    def id18(self) -> str:
        v = resident_id.make(self.r.choice(self.counties), self.birth(), self.r.randrange(1000))
        if v.endswith("X") and self.r.random() < 0.3:
            v = v[:-1] + "x"
        if self.r.random() < 0.04:
            v = f"{v[:6]} {v[6:14]} {v[14:]}"
        return v

    def id15(self) -> str:
        b = self.birth(1930, 1999)
        return f"{self.r.choice(self.counties)}{b:%y%m%d}{self.r.randrange(1000):03d}"

    def mobile11(self) -> str:
        return self.r.choice(mobile.PERSONAL_PREFIXES) + f"{self.r.randrange(10**8):08d}"

    def mobile(self) -> str:
        m = self.mobile11()
        f = self.r.random()
        if f < 0.55:
            return m
        if f < 0.65:
            return "+86" + m
        if f < 0.72:
            return "+86 " + m
        if f < 0.82:
            return f"{m[:3]}-{m[3:7]}-{m[7:]}"
        if f < 0.92:
            return f"{m[:3]} {m[3:7]} {m[7:]}"
        if f < 0.96:
            return f"+86 {m[:3]} {m[3:7]} {m[7:]}"
        return "(+86)" + m

    @staticmethod
    def luhn_digit(body: str) -> str:
        total = 0
        for i, c in enumerate(reversed(body)):
            d = int(c)
            if i % 2 == 0:
                d *= 2
                if d > 9:
                    d -= 9
            total += d
        return str((10 - total % 10) % 10)

    def card_digits(self) -> str:
        f = self.r.random()
        if f < 0.6:
            bin_ = self.r.choice(
                (
                    "622202",
                    "622848",
                    "621700",
                    "622588",
                    "623058",
                    "622700",
                    "621226",
                    "622609",
                    "625911",
                    "628288",
                )
            )
            n = self.r.choice((16, 19, 19))
        elif f < 0.8:
            bin_, n = "4" + f"{self.r.randrange(10**5):05d}", 16
        elif f < 0.95:
            bin_, n = str(self.r.randint(51, 55)) + f"{self.r.randrange(10**4):04d}", 16
        else:
            bin_, n = str(self.r.randint(3528, 3589)) + f"{self.r.randrange(100):02d}", 16
        body = bin_ + "".join(self.r.choice(string.digits) for _ in range(n - len(bin_) - 1))
        return body + self.luhn_digit(body)

    def card(self) -> str:
        c = self.card_digits()
        f = self.r.random()
        if f < 0.7 or len(c) not in (16, 19):
            return c
        sep = self.r.choice(" -")
        return sep.join(c[i : i + 4] for i in range(0, len(c), 4))

    def cloud_key(self) -> str:
        f = self.r.random()
        if f < 0.45:
            return "LTAI5t" + "".join(self.r.choice(_B62) for _ in range(18))
        if f < 0.55:
            return "LTAI" + "".join(self.r.choice(_B62) for _ in range(12))
        if f < 0.85:
            return self.r.choice(("AKIA", "AKIA", "ASIA")) + "".join(self.r.choice(_B32) for _ in range(16))
        return "AKID" + "".join(self.r.choice(_B62) for _ in range(32))

    def cloud_secret(self) -> str:
        return "".join(self.r.choice(_B62) for _ in range(30))

    def jwt(self) -> str:
        def enc(obj: object) -> str:
            return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

        head = enc({"alg": self.r.choice(("HS256", "RS256")), "typ": "JWT"})
        body = enc({"sub": str(self.r.randrange(10**6)), "iat": 1700000000 + self.r.randrange(10**7)})
        sig = base64.urlsafe_b64encode(self.r.randbytes(32)).rstrip(b"=").decode()
        return f"{head}.{body}.{sig}"

    def pem(self) -> str:
        kind = self.r.choice(("RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"))
        body = base64.b64encode(self.r.randbytes(180)).decode()
        lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
        return f"-----BEGIN {kind}-----\n{lines}\n-----END {kind}-----"

    def password(self) -> str:
        return "".join(self.r.choice(_B62 + "!#%^*") for _ in range(self.r.randint(10, 18)))

    def name(self) -> str:
        s = self.r.choice(COMPOUND) if self.r.random() < 0.03 else self.r.choice(SURNAMES)
        return s + "".join(self.r.choice(GIVEN) for _ in range(self.r.choice((1, 2, 2))))

    def address(self, with_province: bool = True) -> str:
        code = self.r.choice(self.counties)
        pref = divisions.prefecture_of(code) or ""
        prov = divisions.province_of(code) or ""
        head = (prov + (pref if pref != prov else "")) if with_province else pref
        tail = f"{self.r.choice(ROADS)}{self.r.choice(ROAD_SUFFIX)}{self.r.randint(1, 999)}号"
        if self.r.random() < 0.5:
            r = self.r
            tail += f"{r.randint(1, 30)}栋{r.randint(1, 6)}单元{r.randint(1, 33)}0{r.randint(1, 4)}室"
        return head + (divisions.name_of(code) or "") + tail

    def email(self) -> str:
        local = "".join(self.r.choice(string.ascii_lowercase) for _ in range(self.r.randint(3, 9)))
        if self.r.random() < 0.4:
            local += str(self.r.randrange(1000))
        return f"{local}@{self.r.choice(DOMAINS)}"

    def passport(self) -> str:
        if self.r.random() < 0.5:
            return "E" + f"{self.r.randrange(10**8):08d}"
        return "E" + self.r.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") + f"{self.r.randrange(10**7):07d}"

    def permit(self) -> str:
        return self.r.choice("CL") + f"{self.r.randrange(10**8):08d}"

    # --- hard negatives --------------------------------------------------
    def neg_id_check(self) -> str:
        v = resident_id.make(self.r.choice(self.counties), self.birth(), self.r.randrange(1000))
        wrong = self.r.choice([c for c in "0123456789X" if c != v[-1]])
        return v[:-1] + wrong

    def neg_id_date(self) -> str:
        first17 = (
            f"{self.r.choice(self.counties)}{self.r.randint(1950, 2000)}{self.r.choice(('13', '00', '02'))}"
        )
        first17 += (
            "30" if first17.endswith("02") else f"{self.r.randint(1, 28):02d}"
        ) + f"{self.r.randrange(1000):03d}"
        return first17 + resident_id.check_char(first17)

    def neg_id_region(self) -> str:
        first17 = (
            f"{self.r.choice(('99', '00', '19', '27', '49', '55', '70', '90'))}{self.r.randrange(10**4):04d}"
        )
        first17 += f"{self.birth():%Y%m%d}{self.r.randrange(1000):03d}"
        return first17 + resident_id.check_char(first17)

    def neg_card_luhn(self) -> str:
        c = self.card_digits()
        wrong = self.r.choice([d for d in string.digits if d != c[-1]])
        c = c[:-1] + wrong
        if self.r.random() < 0.3 and len(c) in (16, 19):
            return " ".join(c[i : i + 4] for i in range(0, len(c), 4))
        return c

    def neg_order(self) -> str:
        t = dt.datetime(2023, 1, 1) + dt.timedelta(seconds=self.r.randrange(86400 * 700))
        return f"{t:%Y%m%d%H%M%S}{self.r.randrange(10**4):04d}"

    def neg_snowflake(self) -> str:
        return str(self.r.randint(1_600_000_000_000_000_000, 1_899_999_999_999_999_999))

    def neg_timestamp(self) -> str:
        s = 1_600_000_000 + self.r.randrange(200_000_000)
        return self.r.choice(
            (
                str(s),
                str(s * 1000 + self.r.randrange(1000)),
                str(s * 10**6 + self.r.randrange(10**6)),
                str(s * 10**9 + self.r.randrange(10**9)),
                f"{dt.datetime.fromtimestamp(s, dt.UTC):%Y%m%d%H%M%S}",
            )
        )

    def neg_product(self) -> str:
        m = self.mobile11()
        f = self.r.random()
        if f < 0.25:
            return self.r.choice(("HW", "SKU", "SN", "P")) + m + self.r.choice(("", "CN", "A"))
        if f < 0.45:
            return f"{m[:3]}-{m[3:8]}-{m[8:]}"
        if f < 0.65:
            return m + str(self.r.randrange(10))
        if f < 0.85:
            return self.r.choice(UNALLOCATED) + f"{self.r.randrange(10**8):08d}"
        body = "69" + "".join(self.r.choice(string.digits) for _ in range(10))
        return body + self.luhn_digit(body)

    def neg_misc(self) -> str:
        f = self.r.random()
        if f < 0.3:
            g = self.r.getrandbits
            return f"{g(32):08x}-{g(16):04x}-{g(16):04x}-{g(16):04x}-{g(48):012x}"
        if f < 0.55:
            return f"{self.r.getrandbits(128):032x}"
        if f < 0.7:
            return ".".join(str(self.r.randrange(256)) for _ in range(4))
        if f < 0.8:
            return "AKIAIOSFODNN7EXAMPLE"
        if f < 0.9:
            return "AKIA" + "".join(self.r.choice("0189" + string.ascii_uppercase) for _ in range(15)) + "1"
        return "LTAI" + "".join(self.r.choice(_B62) for _ in range(5))

    def neg_any(self) -> tuple[str, str]:
        kinds = (
            ("id_check", self.neg_id_check),
            ("id_date", self.neg_id_date),
            ("id_region", self.neg_id_region),
            ("card_luhn", self.neg_card_luhn),
            ("order", self.neg_order),
            ("snowflake", self.neg_snowflake),
            ("timestamp", self.neg_timestamp),
            ("product", self.neg_product),
            ("misc", self.neg_misc),
        )
        label, fn = self.r.choice(kinds)
        return label, fn()


# --- documents -----------------------------------------------------------


def _zh_prose(g: Gen, b: _Builder, n: int) -> None:
    r = g.r
    for _ in range(n):
        f = r.random()
        if f < 0.35:
            b.t(r.choice(ZH_FILLER))
        elif f < 0.45:
            b.t("客户").pi("name", g.name()).t("的身份证号为").pi("id_number", g.id18()).t("，手机号码")
            b.pi("mobile", g.mobile()).t("。")
        elif f < 0.52:
            b.t("身份证号").pi("id_number", g.id18()).t("已核验，卡号").pi("bank_card", g.card_digits()).t(
                "。"
            )
        elif f < 0.58:
            b.t("联系人：").pi("name", g.name()).t("，住址：").pi("address", g.address()).t("。")
        elif f < 0.62:
            b.t("旧版身份证号码").pi("id_number", g.id15()).t("已升级。")
        elif f < 0.66:
            b.t("持卡人").pi("name", g.name()).t("的银行卡号").pi("bank_card", g.card()).t("已冻结。")
        elif f < 0.69:
            b.t("护照号码").pi("passport", g.passport()).t("，往来港澳通行证").pi(
                "travel_permit", g.permit()
            ).t("。")
        elif f < 0.72:
            b.t("家住").pi("address", g.address()).t("的").pi("name", g.name()).t("来电反映问题。")
        elif f < 0.75:
            b.t("电话").pi("mobile", g.mobile()).t("无人接听，邮箱").pi("email", g.email()).t("。")
        elif f < 0.78:
            b.t("阿里云AccessKeyId：").pi("cloud_key", g.cloud_key()).t("，请立即轮换。")
        else:
            label, v = g.neg_any()
            b.t(r.choice(("订单号", "流水号", "编号", "时间戳", "型号", "批次", "参考号"))).neg(label, v).t(
                "。"
            )
        if r.random() < 0.15:
            b.t("\n")
    b.t("\n")


def _en_prose(g: Gen, b: _Builder, n: int) -> None:
    r = g.r
    for _ in range(n):
        f = r.random()
        if f < 0.4:
            b.t(r.choice(EN_FILLER) + " ")
        elif f < 0.5:
            b.t("Customer ID card ").pi("id_number", g.id18()).t(" called from ").pi("mobile", g.mobile()).t(
                ". "
            )
        elif f < 0.58:
            b.t("Refund to card ").pi("bank_card", g.card()).t(" was approved. ")
        elif f < 0.63:
            b.t("Passport no. ").pi("passport", g.passport()).t(" expires soon. ")
        elif f < 0.68:
            b.t("Reply to ").pi("email", g.email()).t(" by Friday. ")
        elif f < 0.73:
            b.t("AWS key ").pi("cloud_key", g.cloud_key()).t(" was found in a public bucket. ")
        elif f < 0.76:
            b.t("Bearer ").pi("jwt", g.jwt()).t(" expired. ")
        else:
            label, v = g.neg_any()
            b.t(r.choice(("Order ", "Ref ", "Trace id ", "ts=", "Part no. ", "Build ", "error code "))).neg(
                label, v
            )
            b.t(". ")
        if r.random() < 0.2:
            b.t("\n")
    b.t("\n")


_CSV_HEAD = ("id", "姓名", "身份证号", "手机号", "地址", "银行卡号", "邮箱", "下单时间", "订单号")


def _csv(g: Gen, b: _Builder, rows: int, sep: str = ",") -> None:
    b.t(sep.join(_CSV_HEAD) + "\n")
    for i in range(rows):
        t = dt.datetime(2024, 1, 1) + dt.timedelta(seconds=g.r.randrange(86400 * 300))
        b.t(f"{i + 1}{sep}").pi("name", g.name()).t(sep)
        if g.r.random() < 0.9:
            b.pi("id_number", g.id18())
        else:
            b.neg("id_check", g.neg_id_check())
        b.t(sep).pi("mobile", g.mobile11()).t(sep).pi("address", g.address(g.r.random() < 0.7)).t(sep)
        if g.r.random() < 0.85:
            b.pi("bank_card", g.card_digits())
        else:
            b.neg("card_luhn", g.neg_card_luhn())
        b.t(sep).pi("email", g.email()).t(f"{sep}{t:%Y-%m-%d %H:%M:%S}{sep}").neg("order", g.neg_order()).t(
            "\n"
        )


def _jsonl(g: Gen, b: _Builder, rows: int) -> None:
    for _ in range(rows):
        t = dt.datetime(2024, 3, 1) + dt.timedelta(milliseconds=g.r.randrange(86400 * 10**5))
        b.t('{"ts":').neg("timestamp", str(int(t.timestamp() * 1000))).t(
            ',"level":"INFO","event":"order.create",'
        )
        b.t('"user":{"name":"').pi("name", g.name()).t('","mobile":"').pi("mobile", g.mobile11()).t('",')
        b.t('"id_card":"').pi("id_number", g.id18()).t('"},"order_id":"').neg("snowflake", g.neg_snowflake())
        b.t('","trace":"').neg("misc", g.neg_misc()).t('","sku":"').neg("product", g.neg_product()).t('"}\n')


def _log(g: Gen, b: _Builder, lines: int) -> None:
    r = g.r
    for _ in range(lines):
        t = dt.datetime(2024, 3, 15) + dt.timedelta(milliseconds=r.randrange(86400 * 1000))
        b.t(
            f"{t:%Y-%m-%d %H:%M:%S}.{t.microsecond // 1000:03d} {r.choice(('INFO', 'WARN', 'DEBUG'))} "
            f"[http-nio-8080-exec-{r.randint(1, 200)}] "
            f"c.e.{r.choice(('UserService', 'OrderApi', 'PayGate'))} - "
        )
        f = r.random()
        if f < 0.5:
            b.t(f"request done in {r.randint(1, 900)}ms status=200 bytes={r.randint(100, 99999)} trace=")
            b.neg("misc", g.neg_misc())
        elif f < 0.6:
            b.t("login ok phone=").pi("mobile", g.mobile()).t(" ip=").neg(
                "misc", ".".join(str(r.randrange(256)) for _ in range(4))
            )
        elif f < 0.66:
            b.t("verify idcard=").pi("id_number", g.id18()).t(" result=PASS")
        elif f < 0.7:
            b.t("pay card=").pi("bank_card", g.card()).t(
                f" amount={r.randint(1, 99999)}.{r.randint(0, 99):02d}"
            )
        elif f < 0.73:
            b.t("using credentials accessKeyId=").pi("cloud_key", g.cloud_key())
        elif f < 0.75:
            b.t("connect ").pi("password", f"postgresql://app:{g.password()}@db.internal:5432/orders")
        else:
            label, v = g.neg_any()
            b.t(r.choice(("order=", "ts=", "sku=", "ref=", "id="))).neg(label, v)
        b.t("\n")


def _sql(g: Gen, b: _Builder, rows: int) -> None:
    b.t(
        "-- dump of table customer\nCREATE TABLE `customer` (`id` int, `name` varchar(32), `id_no` char(18),"
        " `phone` varchar(20), `addr` varchar(200), `card` varchar(24), `created` datetime);\n"
    )
    for i in range(rows):
        b.t(f"INSERT INTO `customer` VALUES ({i + 1},'").pi("name", g.name()).t("','").pi(
            "id_number", g.id18()
        )
        b.t("','").pi("mobile", g.mobile11()).t("','").pi("address", g.address()).t("','")
        if g.r.random() < 0.8:
            b.pi("bank_card", g.card_digits())
        else:
            b.neg("card_luhn", g.neg_card_luhn())
        b.t(
            f"','2024-0{g.r.randint(1, 9)}-1{g.r.randint(0, 9)} "
            f"0{g.r.randint(0, 9)}:1{g.r.randint(0, 9)}:00');\n"
        )


def _config(g: Gen, b: _Builder) -> None:
    r = g.r
    b.t("# application settings\nserver.port=8080\nspring.datasource.url=jdbc:mysql://db.internal:3306/app\n")
    b.t("spring.datasource.username=app\nspring.datasource.password=").pi("password", g.password()).t("\n")
    b.t("aliyun.oss.access-key-id=").pi("cloud_key", "LTAI5t" + "".join(r.choice(_B62) for _ in range(18)))
    b.t("\naliyun.oss.access-key-secret=").pi("password", g.cloud_secret()).t("\n")
    b.t("AWS_ACCESS_KEY_ID=").pi("cloud_key", "AKIA" + "".join(r.choice(_B32) for _ in range(16))).t("\n")
    b.t("# documentation example, not a key: AWS_ACCESS_KEY_ID=").neg("misc", "AKIAIOSFODNN7EXAMPLE").t("\n")
    b.t("REDIS_URL=").pi("password", f"redis://:{g.password()}@cache.internal:6379/0").t("\n")
    b.t("DB_PASSWORD=${DB_PASSWORD}\nlog.level=INFO\nbuild=").neg("misc", "G20240315").t("\n")
    b.t('jwt: "').pi("jwt", g.jwt()).t('"\n')
    b.pi("private_key", g.pem()).t("\n")


def generate_docs(seed: int = 1, scale: int = 1) -> list[Doc]:
    """A corpus of every format; ``scale`` multiplies its size (scale 1: ~2,000 positives)."""
    g = Gen(seed)
    docs: list[Doc] = []
    for i in range(4 * scale):
        b = _Builder()
        _zh_prose(g, b, 120)
        docs.append(b.doc(f"zh_{i}.txt", "text"))
        b = _Builder()
        _en_prose(g, b, 120)
        docs.append(b.doc(f"en_{i}.txt", "text"))
        b = _Builder()
        _csv(g, b, 60, "," if i % 2 == 0 else "\t")
        docs.append(b.doc(f"export_{i}.{'csv' if i % 2 == 0 else 'tsv'}", "csv"))
        b = _Builder()
        _jsonl(g, b, 50)
        docs.append(b.doc(f"events_{i}.jsonl", "jsonl"))
        b = _Builder()
        _log(g, b, 200)
        docs.append(b.doc(f"app_{i}.log", "log"))
        b = _Builder()
        _sql(g, b, 50)
        docs.append(b.doc(f"dump_{i}.sql", "sql"))
        b = _Builder()
        _config(g, b)
        docs.append(b.doc(f"application_{i}.properties", "config"))
    return docs


def mixed_stream(seed: int, size: int) -> Iterator[bytes]:
    """Blocks of mixed-format text totalling ``size`` bytes: the corpus, repeated with new values."""
    done = 0
    s = seed
    while done < size:
        for d in generate_docs(s):
            block = d.data[: size - done]
            done += len(block)
            yield block
            if done >= size:
                return
        s += 1


def filler_text(seed: int, size: int) -> bytes:
    """Text without PI or secrets: prose, logs, JSON events and config, with the hard negatives."""
    g = Gen(seed)
    r = g.r
    parts: list[str] = []
    n = 0
    while n < size:
        f = r.random()
        if f < 0.25:
            s = "".join(r.choice(ZH_FILLER) for _ in range(4)) + "\n"
        elif f < 0.5:
            s = " ".join(r.choice(EN_FILLER) for _ in range(4)) + "\n"
        elif f < 0.8:
            t = dt.datetime(2024, 3, 15) + dt.timedelta(milliseconds=r.randrange(86400 * 1000))
            s = (
                f"{t:%Y-%m-%d %H:%M:%S}.{t.microsecond // 1000:03d} INFO [exec-{r.randint(1, 200)}] "
                f"c.e.OrderApi - GET /api/v1/orders/{g.neg_order()} done in {r.randint(1, 900)}ms "
                f"status=200 trace={g.neg_misc()}\n"
            )
        elif f < 0.95:
            s = (
                f'{{"ts":{g.neg_timestamp()},"event":"page.view","path":"/item/{r.randrange(10**6)}",'
                f'"session":"{r.getrandbits(64):016x}","sku":"{g.neg_product()}"}}\n'
            )
        else:
            s = f"cache.ttl={r.randint(1, 3600)}\npool.size={r.randint(1, 64)}\nfeature.flag=true\n"
        parts.append(s)
        n += len(s.encode())
    return "".join(parts).encode()[:size]
