"""Candidate finding and validation over UTF-8 bytes.

One set of *anchors* (short patterns: a digit run of a length some identifier
has, a key prefix, a context word, a road-and-number) is searched in one pass,
with hyperscan when it is installed and with :mod:`re` otherwise. Each anchor
hit goes to a handler that cuts the exact token out of the bytes around it and
validates it (division code, date and check character; allocated prefix; Luhn
and issuer; key alphabet and length; JSON inside a JWT …). Only the handlers
of names and addresses decode text, and only a small window around the hit.

Boundaries are explicit character classes, never ``\\b``: a number glued to
Chinese text (``身份证号11010519491231002X``) is found, one glued to ASCII
letters or digits (``SKU13812345678``, a longer digit run) is not.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from pivault.model import address as _address
from pivault.model import divisions
from pivault.scan import checks, lexicon

_hs: Any
try:  # pragma: no cover - exercised when installed
    import hyperscan as _hs
except ImportError:  # pragma: no cover
    _hs = None

HAVE_HYPERSCAN = _hs is not None


@dataclass(slots=True)
class Hit:
    """A validated value at ``[start, end)`` of the scanned buffer."""

    kind: str
    start: int
    end: int
    masked: str
    confidence: float
    detail: str = ""


# --- anchors ---------------------------------------------------------------

_PROV = rb"(?:1[1-5]|2[1-3]|3[1-7]|4[1-6]|5[0-4]|6[1-5]|71|8[12])"
_CARDP = rb"(?:[3-689][0-9]|2[2-7])"


def _u(words: Iterable[str]) -> bytes:
    """An alternation of UTF-8 literals, longest first."""
    return b"(?:" + b"|".join(re.escape(w.encode()) for w in sorted(set(words), key=len, reverse=True)) + b")"


@dataclass(frozen=True)
class _Anchor:
    name: str
    kinds: frozenset[str]
    core: bytes
    #: bytes that may not touch the core on the left / right (a character class body), or None
    left: bytes | None = None
    right: bytes | None = None
    caseless: bool = False
    #: a shorter anchor for hyperscan / for ``re`` (the handler re-derives the token either way);
    #: boundaries are not added to these
    hs_core: bytes | None = None
    re_core: bytes | None = None
    #: hyperscan reports the start of match (costly for some patterns); without it the anchor's
    #: position is taken as ``end - back`` by both engines
    som: bool = True
    back: int = 0

    def hs_pattern(self) -> bytes:
        if self.hs_core is not None:
            return self.hs_core
        p = b"(?:" + self.core + b")"
        if self.left is not None:
            p = b"(?:^|[^" + self.left + b"])" + p
        if self.right is not None:
            p = p + b"(?:[^" + self.right + b"]|$)"
        return p

    def re_pattern(self) -> re.Pattern[bytes]:
        core = self.re_core if self.re_core is not None else self.core
        p = b"(?:" + core + b")"
        if self.re_core is None:
            if self.left is not None:
                p = b"(?<![" + self.left + b"])" + p
            if self.right is not None:
                p = p + b"(?![" + self.right + b"])"
        return re.compile(p, re.IGNORECASE if self.caseless else 0)


_AN = b"0-9A-Za-z"

_DIGIT_KINDS = frozenset({"id_number", "mobile", "bank_card"})

ANCHORS: tuple[_Anchor, ...] = (
    _Anchor(
        "run",
        _DIGIT_KINDS,
        _PROV + rb"[0-9]{15}[0-9Xx]|" + _PROV + rb"[0-9]{13}|" + _CARDP + rb"[0-9]{14,17}|"
        rb"1[3-9][0-9]{9}|861[3-9][0-9]{9}|00861[3-9][0-9]{9}",
        _AN,
        _AN,
    ),
    _Anchor(
        "grouped",
        _DIGIT_KINDS,
        rb"1[3-9][0-9][ \-][0-9]{4}[ \-][0-9]{4}|"
        + _CARDP
        + rb"[0-9]{2}(?:[ \-][0-9]{4}){3}(?:[ \-][0-9]{1,3})?|"
        + _PROV
        + rb"[0-9]{4} [0-9]{8} [0-9]{3}[0-9Xx]",
        _AN,
        _AN,
    ),
    _Anchor(
        "cloud",
        frozenset({"cloud_key"}),
        rb"LTAI|AKIA|ASIA|AKID|AKLT|AIza",
        _AN,
        None,
        som=False,
        back=4,
    ),
    _Anchor(
        "token",
        frozenset({"api_token"}),
        rb"gh[pousr]_[0-9A-Za-z]{36}|github_pat_[0-9A-Za-z_]{60,90}|glpat-[0-9A-Za-z_\-]{20}|"
        rb"xox[abpr]-[0-9A-Za-z\-]{10,72}|sk_live_[0-9A-Za-z]{24,99}",
        _AN,
        _AN + rb"_\-",
    ),
    _Anchor(
        "jwt",
        frozenset({"jwt"}),
        rb"eyJ[0-9A-Za-z_\-]{8,4000}\.eyJ[0-9A-Za-z_\-]{8,4000}\.[0-9A-Za-z_\-]{8,2000}",
        _AN + rb"_\-.",
        _AN + rb"_\-",
        hs_core=rb"eyJ[0-9A-Za-z_\-]{8,}\.eyJ",
        re_core=rb"eyJ[0-9A-Za-z_\-]{8,4000}\.eyJ",
    ),
    _Anchor("pem", frozenset({"private_key"}), rb"-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----"),
    _Anchor(
        "urlpw",
        frozenset({"password"}),
        rb"[A-Za-z][A-Za-z0-9+.\-]{1,30}://[^\s:/@\"'<>]{0,64}:[^\s/@\"'<>]{1,128}@[A-Za-z0-9.\-]{1,255}",
        None,
        rb"A-Za-z0-9.\-",
        hs_core=rb"://[^\s:/@\"'<>]{0,64}:[^\s/@\"'<>]{1,128}@",
        re_core=rb"://[^\s:/@\"'<>]{0,64}:[^\s/@\"'<>]{1,128}@",
    ),
    _Anchor(
        "kvpw",
        frozenset({"password"}),
        rb"[A-Za-z0-9_.\-]{0,40}(?:passw(?:or)?d|pwd|pass|secret|api[_\-]?key|private[_\-]?key)"
        rb"[A-Za-z0-9_.\-]{0,24}[\"']?[ \t]*(?:=|:|=>)[ \t]*[\"']?[^\s\"',;<>]{4,200}",
        None,
        rb"\s\"',;<>",
        caseless=True,
        hs_core=rb"(?:passw(?:or)?d|pwd|pass|secret|api[_\-]?key|private[_\-]?key)"
        rb"[A-Za-z0-9_.\-]{0,24}[\"']?[ \t]*(?:=|:|=>)",
        re_core=rb"(?:passw(?:or)?d|pwd|pass|secret|api[_\-]?key|private[_\-]?key)"
        rb"[A-Za-z0-9_.\-]{0,24}[\"']?[ \t]*(?:=|:|=>)",
        som=False,
        back=1,
    ),
    _Anchor(
        "email",
        frozenset({"email"}),
        rb"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63}){0,8}\.[A-Za-z]{2,24}",
        None,
        rb"A-Za-z0-9\-",
        hs_core=rb"[A-Za-z0-9._%+\-]@[A-Za-z0-9]",
        re_core=rb"@(?=[A-Za-z0-9])",
    ),
    _Anchor(
        "doc",
        frozenset({"passport", "travel_permit"}),
        _u(("护照", "通行证", "回乡证", "台胞证", "旅行证")) + rb"|passport|permit",
        caseless=True,
    ),
    _Anchor("namectx", frozenset({"name"}), _u(lexicon.NAME_CONTEXT_ZH), som=False, back=3),
    _Anchor(
        "namekey",
        frozenset({"name"}),
        rb"(?:name|full_?name|real_?name|customer(?:_?name)?|contact(?:_?name)?|patient|holder|"
        rb"card_?holder|applicant|recipient|consignee)[\"']?[ \t]*(?:=|:)",
        _AN + b"_",
        None,
        caseless=True,
        som=False,
        back=1,
    ),
    _Anchor("nametitle", frozenset({"name"}), _u(lexicon.NAME_SUFFIX_TITLES)),
    _Anchor(
        "addr",
        frozenset({"address"}),
        _u(("路", "街", "道", "巷", "弄", "胡同", "村", "里", "组"))
        + rb"[0-9]{1,5}"
        + _u(("号", "弄", "栋", "幢"))
        + b"|"
        + _u(("小区", "花园", "苑", "公寓", "大厦", "家园"))
        + rb"[0-9]{1,4}"
        + _u(("号楼", "栋", "幢", "座")),
        som=False,
        back=3,
    ),
)


# --- handlers --------------------------------------------------------------

_DIGITS = frozenset(b"0123456789")
_CARD_CONTEXT = re.compile(
    "(?:卡号|银行卡|借记卡|信用卡|储蓄卡|账号|帐号|账户|card|acct|account|pan)".encode(), re.IGNORECASE
)


_CARD_LABEL = re.compile(
    (
        "(?:卡号|银行卡号?|借记卡号?|信用卡号?|储蓄卡号?|card[ _]?(?:no\\.?|num(?:ber)?|#)?)"
        "[ \t]*(?::|：|=)?[ \t]*$"
    ).encode(),
    re.IGNORECASE,
)


def _strip(buf: bytes, f: int, t: int, first: frozenset[int], last: frozenset[int]) -> tuple[int, int]:
    while f < t and buf[f] not in first:
        f += 1
    while t > f and buf[t - 1] not in last:
        t -= 1
    return f, t


_DIGITX = frozenset(b"0123456789Xx")


def _digits(buf: bytes, f: int, t: int) -> list[Hit]:
    f, t = _strip(buf, f, t, _DIGITS, _DIGITX)
    raw = buf[f:t]
    tok = raw.replace(b" ", b"").replace(b"-", b"")
    grouped = len(tok) != len(raw)
    if grouped and t + 1 < len(buf) and buf[t] in b" -" and buf[t + 1] in _DIGITS:
        return []  # the first groups of a longer grouped number, which has its own candidate
    n = len(tok)
    if tok[-1] == 0x78:  # x
        tok = tok[:-1] + b"X"
    if n == 18:
        if checks.id18_ok(tok):
            s = tok.decode()
            return [Hit("id_number", f, t, checks.mask_id(s), 0.99, "18-digit")]
        if tok[-1] == 0x58:
            return []
    elif n == 11:
        if checks.mobile_ok(tok):
            return [Hit("mobile", f, t, checks.mask_mobile(tok.decode()), 0.95 if grouped else 0.9)]
        return []
    elif n == 15:
        if checks.id15_ok(tok):
            return [Hit("id_number", f, t, checks.mask_id(tok.decode()), 0.8, "legacy 15-digit")]
        if tok.startswith(b"0086") and checks.mobile_ok(tok[4:]):
            return [Hit("mobile", f, t, checks.mask_mobile(tok[4:].decode()), 0.95)]
        return []
    elif n == 13:
        if tok.startswith(b"86") and checks.mobile_ok(tok[2:]):
            return [Hit("mobile", f, t, checks.mask_mobile(tok[2:].decode()), 0.95)]
        return []
    if 16 <= n <= 19:
        scheme = checks.card_ok(tok)
        if scheme is not None:
            ctx = _CARD_CONTEXT.search(buf, max(0, f - 40), f) is not None
            return [
                Hit(
                    "bank_card",
                    f,
                    t,
                    checks.mask_card(tok.decode()),
                    0.95 if ctx or grouped else 0.85,
                    scheme,
                )
            ]
        if tok[:2] == b"62" and not checks.id_shaped(tok) and _CARD_LABEL.search(buf, max(0, f - 24), f):
            # some domestic UnionPay cards carry no Luhn digit: a number labelled as a card right before it
            return [
                Hit(
                    "bank_card",
                    f,
                    t,
                    checks.mask_card(tok.decode()),
                    0.6,
                    "UnionPay prefix, labelled, no Luhn",
                )
            ]
    return []


_KEY_CHARS = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-")
_ALNUM = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_B32 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")


def _varied(s: bytes, minimum: int = 6) -> bool:
    return len(set(s)) >= minimum


def _cloud(buf: bytes, f: int, t: int) -> list[Hit]:
    f = max(0, t - 4)
    t = f
    n = len(buf)
    while t < n and buf[t] in _KEY_CHARS and t - f < 80:
        t += 1
    tok = buf[f:t]
    p = tok[:4]
    conf, detail = 0.0, ""
    if p == b"LTAI":
        if 16 <= len(tok) <= 30 and _ALNUM.issuperset(tok) and _varied(tok[4:]):
            conf, detail = (0.95 if len(tok) in (16, 24) else 0.75), "Alibaba Cloud AccessKey ID"
    elif p in (b"AKIA", b"ASIA"):
        if len(tok) == 20 and _B32.issuperset(tok[4:]) and b"EXAMPLE" not in tok and _varied(tok[4:]):
            conf, detail = 0.95, "AWS access key ID" + (" (temporary)" if p == b"ASIA" else "")
    elif p == b"AKID":
        if len(tok) == 36 and _ALNUM.issuperset(tok) and _varied(tok[4:], 10):
            conf, detail = 0.9, "Tencent Cloud SecretId"
    elif p == b"AKLT":
        if 24 <= len(tok) <= 64 and _varied(tok[4:], 10):
            conf, detail = 0.8, "Volcengine/Kingsoft Cloud AccessKey"
    elif p == b"AIza" and len(tok) == 39 and _varied(tok[4:], 10):
        conf, detail = 0.9, "Google API key"
    if not conf:
        return []
    return [Hit("cloud_key", f, t, checks.mask_key(tok.decode()), conf, detail)]


def _token(buf: bytes, f: int, t: int) -> list[Hit]:
    f, t = _strip(buf, f, t, frozenset(b"gxs"), _KEY_CHARS)
    tok = buf[f:t].decode()
    if tok.startswith("gh") and tok[3] == "_":
        ok = checks.github_checksum_ok(tok)
        return [
            Hit(
                "api_token",
                f,
                t,
                checks.mask_key(tok),
                0.99 if ok else 0.7,
                "GitHub token" + (" (checksum valid)" if ok else ""),
            )
        ]
    detail = (
        "GitHub fine-grained token"
        if tok.startswith("github_pat_")
        else "GitLab token"
        if tok.startswith("glpat-")
        else "Slack token"
        if tok.startswith("xox")
        else "Stripe live key"
    )
    if not _varied(tok.encode(), 8):
        return []
    return [Hit("api_token", f, t, checks.mask_key(tok), 0.9, detail)]


_JWT_CHARS = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-.")


def _jwt(buf: bytes, f: int, t: int) -> list[Hit]:
    f = buf.find(b"eyJ", f, t)
    if f < 0:
        return []
    end = f
    n = len(buf)
    while end < n and buf[end] in _JWT_CHARS and end - f < 10000:
        end += 1
    tok = buf[f:end].rstrip(b".")
    alg = checks.jwt_header(tok)
    if alg is None:
        return []
    return [Hit("jwt", f, f + len(tok), checks.mask_key(tok.decode()), 0.95, f"alg={alg}")]


_B64_LINE = re.compile(rb"\r?\n(?:Proc-Type:|[A-Za-z0-9+/=]{16,})")


def _pem(buf: bytes, f: int, t: int) -> list[Hit]:
    if not _B64_LINE.match(buf, t):
        return []
    header = buf[f:t].decode()
    label = header.strip("-").replace("BEGIN ", "")
    return [Hit("private_key", f, t, f"{label} (PEM)", 0.99, label)]


_PLACEHOLDER = re.compile(
    r"^(?:\$\{?[A-Za-z_][A-Za-z0-9_]*\}?|\{\{.*\}\}|<[^>]*>|%\(?[A-Za-z_]*\)?s?|\*+|x+|X+|\.+|null|none|nil|"
    r"true|false|undefined|changeit|password|passwd|secret|your[_-]?\w*|example\w*|redacted|masked|"
    r"(?:os\.|process\.|env\b|getenv|System\.|config\.|settings\.|self\.|this\.|request\.)\S*|"
    r"[A-Za-z_][A-Za-z0-9_.]*\(.*|[A-Za-z_][A-Za-z0-9_.]*\[.*)$",
    re.IGNORECASE,
)
_KEY_TOKENS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")
_SECRET_WORDS = frozenset(
    {"password", "passwd", "pwd", "pass", "secret", "apikey", "privatekey", "passphrase"}
)


def _secret_key(key: str) -> bool:
    words = [w.lower() for w in _KEY_TOKENS.findall(key)]
    if any(w in _SECRET_WORDS for w in words):
        return True
    return any(a + b in _SECRET_WORDS for a, b in itertools.pairwise(words))


def _secret_value(value: str) -> bool:
    return len(value) >= 4 and _PLACEHOLDER.match(value) is None and len(set(value)) >= 3


_KV = re.compile(rb"([A-Za-z0-9_.\-]{0,64})[\"']?[ \t]*(?:=>|=|:)[ \t]*[\"']?([^\s\"',;<>]{1,200})")


_KEY_DOT = _KEY_CHARS | {0x2E}


def _kvpw(buf: bytes, f: int, t: int) -> list[Hit]:
    # back from the assignment sign over quotes and blanks, then over the key
    k = t
    while k > 0 and buf[k - 1] in b"=:> \t\"'":
        k -= 1
    ks = k
    while ks > 0 and k - ks < 64 and buf[ks - 1] in _KEY_DOT:
        ks -= 1
    m = _KV.match(buf, ks)
    if m is None or not m.group(1):
        return []
    key = m.group(1).decode("ascii", "replace")
    value = m.group(2).decode("utf-8", "replace")
    if not _secret_key(key) or not _secret_value(value):
        return []
    return [Hit("password", m.start(2), m.end(2), f"{key}=****", 0.8, key)]


_URL = re.compile(
    rb"([A-Za-z][A-Za-z0-9+.\-]{1,30})://([^\s:/@\"'<>]{0,64}):([^\s/@\"'<>]{1,128})@([A-Za-z0-9.\-]{1,255})"
)


def _urlpw(buf: bytes, f: int, t: int) -> list[Hit]:
    s = buf.find(b"://", f, t)
    if s < 0:
        return []
    a = s
    while a > 0 and s - a < 30 and (chr(buf[a - 1]).isalnum() or buf[a - 1] in b"+.-") and buf[a - 1] < 128:
        a -= 1
    m = _URL.match(buf, a)
    if m is None:
        return []
    password = m.group(3).decode("utf-8", "replace")
    if not _secret_value(password):
        return []
    scheme = m.group(1).decode()
    host = m.group(4).decode()
    return [Hit("password", m.start(3), m.end(3), f"{scheme}://****:****@{host}", 0.9, f"{scheme} URL")]


_URL_BREAK = frozenset(b" \t\r\n\"'<>,;/")
_LOCAL = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz._%+-")
_DOMAIN = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.-")
_EMAIL = re.compile(
    rb"[A-Za-z0-9._%+\-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,24}"
)
_FILE_TLDS = frozenset(
    [
        "png",
        "jpg",
        "jpeg",
        "gif",
        "svg",
        "webp",
        "bmp",
        "ico",
        "css",
        "js",
        "mjs",
        "ts",
        "json",
        "xml",
        "html",
        "htm",
        "txt",
        "log",
        "zip",
        "gz",
        "tar",
        "tgz",
        "java",
        "py",
        "rb",
        "go",
        "rs",
        "php",
        "jsp",
        "md",
        "yaml",
        "yml",
        "ini",
        "conf",
        "cfg",
        "pdf",
        "doc",
        "docx",
        "xls",
        "xlsx",
        "csv",
        "mp3",
        "mp4",
        "wav",
        "woff",
        "woff2",
        "ttf",
        "map",
    ]
)


def _email(buf: bytes, f: int, t: int) -> list[Hit]:
    at = buf.find(b"@", f, t)
    if at < 0:
        return []
    a = at
    while a > 0 and at - a < 64 and buf[a - 1] in _LOCAL:
        a -= 1
    while a < at and buf[a] in b".-":
        a += 1
    z = at + 1
    n = len(buf)
    while z < n and z - at < 255 and buf[z] in _DOMAIN:
        z += 1
    m = _EMAIL.match(buf, a, z)
    if m is None or a == at:
        return []
    u = buf.rfind(b"://", max(0, a - 200), a)
    if u >= 0 and not any(c in _URL_BREAK for c in buf[u + 3 : a]):
        return []  # the user:password@host part of a URL
    tok = m.group().decode()
    if tok.rsplit(".", 1)[-1].lower() in _FILE_TLDS:
        return []
    return [Hit("email", m.start(), m.end(), checks.mask_email(tok), 0.9)]


_PASSPORT = re.compile(
    rb"(?<![0-9A-Za-z])(?:[EG][0-9]{8}|E[A-HJ-NP-Z][0-9]{7}|[DSP][0-9]{7,8})(?![0-9A-Za-z])"
)
_PERMIT = re.compile(
    rb"(?<![0-9A-Za-z])(?:C[0-9]{8}|C[A-HJ-NP-Z][0-9]{7}|[LT][0-9]{8}|[HM][0-9]{8}(?:[0-9]{2})?)(?![0-9A-Za-z])"
)
_TW_PERMIT = re.compile(rb"(?<![0-9A-Za-z])[0-9]{8}(?:[0-9]{2}(?:\([A-Z]\)|[A-Z])?)?(?![0-9A-Za-z])")


def _doc(buf: bytes, f: int, t: int) -> list[Hit]:
    word = buf[f:t].lower()
    window_end = min(len(buf), t + 48)
    nl = buf.find(b"\n", t, window_end)
    if nl >= 0:
        window_end = nl
    out = []
    if word in ("护照".encode(), b"passport", "旅行证".encode()):
        m = _PASSPORT.search(buf, t, window_end)
        if m:
            tok = m.group().decode()
            out.append(Hit("passport", m.start(), m.end(), checks.mask_doc(tok), 0.9))
    else:
        m = _PERMIT.search(buf, t, window_end)
        if m is None and word == "台胞证".encode():
            m = _TW_PERMIT.search(buf, t, window_end)
        if m:
            tok = m.group().decode()
            out.append(Hit("travel_permit", m.start(), m.end(), checks.mask_doc(tok), 0.9))
    return out


# --- names and addresses (decoded windows) -----------------------------------

_CJK = "\u3400-\u4dbf\u4e00-\u9fff"
_SURNAME = "(?:" + "|".join(lexicon.SURNAMES_2) + "|[" + lexicon.SURNAMES_1 + "])"
_NAME_AFTER_CTX = re.compile(r"[ \t:：=\"'“”]{0,4}(?:是|为)?[ \t:：]{0,2}(" + _SURNAME + f"[{_CJK}]{{1,2}})")
_STOP_RE = re.compile("(?:" + "|".join(sorted(lexicon.NAME_STOPS, key=len, reverse=True)) + ")")
_SINGLE_STOPS = frozenset(s for s in lexicon.NAME_STOPS if len(s) == 1)
_IS_CJK = re.compile(f"[{_CJK}]")


def _window(buf: bytes, a: int, z: int) -> tuple[str, int]:
    """Decode ``buf[a:z]`` widened to whole UTF-8 characters; return the text and its byte start."""
    a = max(0, a)
    z = min(len(buf), z)
    while a > 0 and 0x80 <= buf[a] < 0xC0:
        a -= 1
    while z < len(buf) and 0x80 <= buf[z] < 0xC0:
        z += 1
    return buf[a:z].decode("utf-8", "replace"), a


def _bpos(text: str, i: int, base: int) -> int:
    return base + len(text[:i].encode("utf-8"))


def _pick_name(text: str, i: int) -> tuple[int, int] | None:
    """A surname and a 1-2 character given name at ``text[i:]``, followed by a stop word or a non-CJK
    character: its (start, end), or None."""
    m = re.match(_SURNAME, text[i:])
    if m is None:
        return None
    s_end = i + m.end()
    for g in (2, 1):
        e = s_end + g
        if e > len(text) or not all(_IS_CJK.match(c) for c in text[s_end:e]):
            continue
        if g == 2 and text[e - 1] in _SINGLE_STOPS:
            continue
        cand = text[i:e]
        if cand in lexicon.NOT_NAMES or cand[:2] in lexicon.NOT_NAMES:
            return None
        if e == len(text) or not _IS_CJK.match(text[e]) or _STOP_RE.match(text, e):
            return i, e
    return None


def _name_hit(text: str, base: int, i: int, e: int, conf: float, detail: str) -> Hit:
    name = text[i:e]
    return Hit("name", _bpos(text, i, base), _bpos(text, e, base), checks.mask_name(name), conf, detail)


def _namectx(buf: bytes, f: int, t: int) -> list[Hit]:
    text, base = _window(buf, t, t + 40)
    m = _NAME_AFTER_CTX.match(text)
    if m is None:
        return []
    span = _pick_name(text, m.start(1))
    if span is None:
        return []
    pre = buf[max(0, t - 24) : t].decode("utf-8", "ignore")
    label = next((w for w in _CTX_WORDS if pre.endswith(w)), "a label")
    return [_name_hit(text, base, *span, 0.85, "after " + label)]


def _namekey(buf: bytes, f: int, t: int) -> list[Hit]:
    text, base = _window(buf, t, t + 40)
    m = re.match(r"[ \t]*[\"']?[ \t]*", text)
    i = m.end() if m else 0
    span = _pick_name(text, i)
    if span is None:
        return []
    k = t
    while k > 0 and buf[k - 1] in b"=: \t\"'":
        k -= 1
    ks = k
    while ks > 0 and k - ks < 32 and buf[ks - 1] in _KEY_CHARS:
        ks -= 1
    return [_name_hit(text, base, *span, 0.9, buf[ks:k].decode("ascii", "replace") + "=")]


def _nametitle(buf: bytes, f: int, t: int) -> list[Hit]:
    text, base = _window(buf, f - 12, f)
    for back in (3, 2):
        i = len(text) - back
        if i < 0:
            continue
        if i > 0 and _IS_CJK.match(text[i - 1]) and back == 2:
            # a longer CJK run: only accept a compound surname + 1
            continue
        span = _pick_name(text + "先生", i)
        if span is not None and span[1] == len(text):
            return [_name_hit(text, base, *span, 0.75, "before a title")]
    return []


_ADDR_ANCHOR = re.compile(
    r"(?:路|街|道|巷|弄|胡同|村|里|组)[0-9]{1,5}(?:号|弄|栋|幢)$|(?:小区|花园|苑|公寓|大厦|家园)[0-9]{1,4}(?:号楼|栋|幢|座)$"
)
_CTX_WORDS = sorted(lexicon.NAME_CONTEXT_ZH, key=len, reverse=True)
_ADDR_CTX = re.compile("(?:" + "|".join(lexicon.ADDRESS_CONTEXT) + ")[ \t:：为是]*", re.IGNORECASE)
_ADDR_TAIL = re.compile(r"(?:[0-9A-Za-z一二三四五六七八九十]{1,4}(?:号楼|号|栋|幢|座|单元|层|楼|室|户)){0,5}")
_ADDR_CHAR = re.compile(f"[{_CJK}0-9]")


@cache
def _division_first_chars() -> frozenset[str]:
    out = set()
    for code in divisions.all_codes():
        for d in divisions.lookup(code):
            if d.name:
                out.add(d.name[0])
    return frozenset(out)


def _addr(buf: bytes, f: int, t: int) -> list[Hit]:
    text, base = _window(buf, t - 180, t + 60)
    z = len(buf[base:t].decode("utf-8", "replace"))
    anchor = _ADDR_ANCHOR.search(text, max(0, z - 12), z)
    if anchor is None:
        return []
    a = anchor.start()
    z += _ADDR_TAIL.match(text, z).end() - z  # type: ignore[union-attr]
    # the run of address characters that ends at the anchor
    run = a
    while run > 0 and _ADDR_CHAR.match(text[run - 1]) and a - run < 48:
        run -= 1
    firsts = _division_first_chars()
    start = None
    conf = 0.0
    detail = ""
    for i in range(run, a):
        if text[i] not in firsts:
            continue
        p = _address.parse_prefix(text[i:z])
        if p.end and p.end <= a - i and a - i - p.end <= 20:
            start = i
            if p.district:
                conf, detail = 0.9, "division and road/number"
            else:
                conf, detail = 0.8, "province/city and road/number"
            break
    if start is None:
        ctx = None
        for m in _ADDR_CTX.finditer(text, max(0, run - 8), a):
            ctx = m
        if ctx is not None:
            start, conf, detail = ctx.end(), 0.65, "address label and road/number"
        else:
            start, conf, detail = max(run, a - 8), 0.4, "road/number only"
    if z - start < 5:
        return []
    value = text[start:z]
    return [
        Hit(
            "address",
            _bpos(text, start, base),
            _bpos(text, z, base),
            checks.mask_address(value),
            conf,
            detail,
        )
    ]


_HANDLERS: dict[str, Callable[[bytes, int, int], list[Hit]]] = {
    "run": _digits,
    "grouped": _digits,
    "cloud": _cloud,
    "token": _token,
    "jwt": _jwt,
    "pem": _pem,
    "urlpw": _urlpw,
    "kvpw": _kvpw,
    "email": _email,
    "doc": _doc,
    "namectx": _namectx,
    "namekey": _namekey,
    "nametitle": _nametitle,
    "addr": _addr,
}

# --- cell values of a named column -------------------------------------------

_PASSPORT_COL = re.compile(r"(?i)passport|护照")
_PERMIT_COL = re.compile(r"(?i)permit|通行证|回乡证|台胞证")


def cell_hits(value: str, column: str, kinds: frozenset[str]) -> list[Hit]:
    """What the column's name says a whole cell value is (a name, an address, a document number)."""
    v = value.strip()
    if not v or len(v) > 200:
        return []
    lead = len(value) - len(value.lstrip())
    b0 = len(value[:lead].encode("utf-8"))
    b1 = b0 + len(v.encode("utf-8"))
    if "name" in kinds and lexicon.is_name_column(column):
        cjk = all(_IS_CJK.match(c) or c == "·" for c in v)
        if 2 <= len(v) <= 6 and cjk and re.match(_SURNAME, v) and v not in lexicon.NOT_NAMES:
            return [Hit("name", b0, b1, checks.mask_name(v), 0.9, f"column {column}")]
        return []
    if "address" in kinds and lexicon.is_address_column(column):
        if len(v) >= 6 and _IS_CJK.search(v):
            p = _address.parse_prefix(v)
            if p.end or re.search(r"[路街道巷弄村组号]", v):
                return [
                    Hit("address", b0, b1, checks.mask_address(v), 0.9 if p.end else 0.7, f"column {column}")
                ]
        return []
    vb = v.encode("utf-8", "replace")
    if "passport" in kinds and _PASSPORT_COL.search(column) and _PASSPORT.fullmatch(vb):
        return [Hit("passport", b0, b1, checks.mask_doc(v), 0.9, f"column {column}")]
    if (
        "travel_permit" in kinds
        and _PERMIT_COL.search(column)
        and (_PERMIT.fullmatch(vb) or _TW_PERMIT.fullmatch(vb))
    ):
        return [Hit("travel_permit", b0, b1, checks.mask_doc(v), 0.9, f"column {column}")]
    return []


# --- the engine ----------------------------------------------------------------

_SPECIFIC_SECRETS = frozenset({"cloud_key", "api_token", "jwt", "private_key"})


class Engine:
    """Anchors for a set of kinds, compiled once; :meth:`scan` finds and validates."""

    def __init__(self, kinds: frozenset[str], engine: str = "auto") -> None:
        self.kinds = kinds
        self.anchors = [a for a in ANCHORS if a.kinds & kinds]
        self.handlers = [_HANDLERS[a.name] for a in self.anchors]
        use_hs = engine == "hyperscan" or (engine == "auto" and HAVE_HYPERSCAN)
        if engine == "hyperscan" and not HAVE_HYPERSCAN:
            raise RuntimeError(
                "the hyperscan engine was asked for but the hyperscan package is not installed"
            )
        if engine not in ("auto", "hyperscan", "re"):
            raise ValueError(f"unknown engine {engine!r}: auto, hyperscan or re")
        self.name = "hyperscan" if use_hs and self.anchors else "re"
        self._backs: list[int | None] = [None if a.som else a.back for a in self.anchors]
        self._res: list[re.Pattern[bytes]] = []
        self._db: Any = None
        if self.name == "hyperscan":
            ids = list(range(len(self.anchors)))
            if ids:
                db = _hs.Database(mode=_hs.HS_MODE_BLOCK)
                flags = [
                    (_hs.HS_FLAG_SOM_LEFTMOST if self.anchors[i].som else 0)
                    | (_hs.HS_FLAG_CASELESS if self.anchors[i].caseless else 0)
                    for i in ids
                ]
                db.compile(
                    expressions=[self.anchors[i].hs_pattern() for i in ids],
                    ids=ids,
                    elements=len(ids),
                    flags=flags,
                )
                self._db = db
        else:
            self._res = [a.re_pattern() for a in self.anchors]

    def _candidates(self, buf: bytes, pos: int) -> list[tuple[int, int, int]]:
        """(anchor position, anchor end, anchor index), sorted; the position of an anchor without
        start-of-match is ``end - back`` for both engines."""
        out: list[tuple[int, int, int]] = []
        if not self.anchors:
            return out
        if self._db is not None:
            append = out.append
            self._db.scan(buf, match_event_handler=lambda i, f, t, _fl, _c: append((f, t, i)))
        else:
            for i, rx in enumerate(self._res):
                out.extend((m.start(), m.end(), i) for m in rx.finditer(buf, pos))
        backs = self._backs
        out = [(t - backs[i], t, i) if backs[i] is not None else (f, t, i) for f, t, i in out]  # type: ignore[operator]
        out.sort()
        return out

    def scan(
        self, buf: bytes, start: int = 0, limit: int | None = None, min_confidence: float = 0.0
    ) -> list[Hit]:
        """Validated hits whose anchor starts in ``[start, limit)``.

        Bytes before ``start`` are context only; the value of a hit may begin
        before ``start`` (an address ends at its road number) or end after
        ``limit``: callers give enough bytes on either side (see ``stream``).
        """
        if limit is None:
            limit = len(buf)
        hits: dict[tuple[str, int], Hit] = {}
        handlers = self.handlers
        kinds = self.kinds
        for f, t, i in self._candidates(buf, max(0, start - 64)):
            if not start <= f < limit:
                continue
            for h in handlers[i](buf, f, t):
                if h.kind not in kinds or h.confidence < min_confidence:
                    continue
                old = hits.get((h.kind, h.start))
                if old is None or h.end > old.end:
                    hits[(h.kind, h.start)] = h
        out = sorted(hits.values(), key=lambda h: (h.start, h.kind))
        if "password" in kinds and len(out) > 1:
            spans = [(h.start, h.end) for h in out if h.kind in _SPECIFIC_SECRETS]
            if spans:
                out = [
                    h
                    for h in out
                    if h.kind != "password" or not any(s < h.end and h.start < e for s, e in spans)
                ]
        return _drop_nested(out)


def _drop_nested(hits: list[Hit]) -> list[Hit]:
    """Same-kind hits inside another (a 3-4-4 group inside a longer value) are dropped."""
    out: list[Hit] = []
    for h in hits:
        if out and out[-1].kind == h.kind and h.start < out[-1].end:
            if h.end - h.start > out[-1].end - out[-1].start:
                out[-1] = h
            continue
        out.append(h)
    return out


@cache
def get_engine(kinds: frozenset[str], engine: str = "auto") -> Engine:
    """One compiled engine per process and kind set."""
    return Engine(kinds, engine)
