"""Candidate finding and validation over UTF-8 bytes.

One set of *anchors* (short patterns: a digit run of a length some identifier
has, a key prefix, a context word, a road-and-number) is searched in one pass,
with hyperscan when it is installed and with :mod:`re` otherwise. Each anchor
hit goes to a handler that cuts the exact token out of the bytes around it and
validates it (division code, date and check character; allocated prefix; Luhn
and issuer; key alphabet and length; JSON inside a JWT …). Only the handlers
of names and addresses decode text, and only a small window around the hit.

The numbers and cloud key ids are *bulk* anchors: each pattern is a whole value
of one length between its boundaries, so the value's start is its end less
its length, and the match callback only appends an offset. After the scan,
each such anchor's ends are validated together in one loop (no call per
candidate), into compact tuples (:data:`Raw`); a mask, and the look at the words
before a card, are made only for the findings that a report lists, and past a
source's listing cap numbers are only counted.

Boundaries are explicit character classes, never ``\\b``: a number glued to
Chinese text (``身份证号11010519491231002X``) is found, one glued to ASCII
letters or digits (``SKU13812345678``, a longer digit run) is not.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import operator
import re
from collections import Counter
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
_PC = b"(?:" + _PROV + b"|" + _CARDP + b")"


def _u(words: Iterable[str]) -> bytes:
    """An alternation of UTF-8 literals, longest first."""
    return b"(?:" + b"|".join(re.escape(w.encode()) for w in sorted(set(words), key=len, reverse=True)) + b")"


def _not_suffix(word: bytes, alphabet: bytes) -> bytes:
    """``len(word)`` characters of ``alphabet`` that are not ``word`` (hyperscan has no lookaround)."""
    alts = []
    for k in range(len(word)):
        others = bytes(c for c in alphabet if c != word[k])
        rest = b"[" + alphabet + b"]{%d}" % (len(word) - k - 1) if k < len(word) - 1 else b""
        alts.append(re.escape(word[:k]) + b"[" + others + b"]" + rest)
    return b"(?:" + b"|".join(alts) + b")"


def _digit_alternation(words: Iterable[bytes]) -> bytes:
    """A regular expression for a set of equal-length digit strings, as a trie (``1(?:3[0-9]|4[5-9])``)."""

    def cls(cs: list[int]) -> bytes:
        if len(cs) == 1:
            return bytes(cs)
        out, i = b"", 0
        while i < len(cs):
            j = i
            while j + 1 < len(cs) and cs[j + 1] == cs[j] + 1:
                j += 1
            out += bytes([cs[i]]) if j == i else bytes([cs[i], 0x2D, cs[j]])
            i = j + 1
        return b"[" + out + b"]"

    def rec(ws: list[bytes]) -> bytes:
        if len(ws[0]) == 1:
            return cls(sorted(w[0] for w in ws))
        rests: dict[int, list[bytes]] = {}
        for w in ws:
            rests.setdefault(w[0], []).append(w[1:])
        heads: dict[tuple[bytes, ...], list[int]] = {}
        for c, rest in rests.items():
            heads.setdefault(tuple(rest), []).append(c)
        alts = [cls(sorted(cs)) + rec(list(rest)) for rest, cs in heads.items()]
        return alts[0] if len(alts) == 1 else b"(?:" + b"|".join(alts) + b")"

    return b"(?:" + rec(sorted(set(words))) + b")"


_MOB3 = _digit_alternation(checks.MOBILE_PREFIXES)


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
    #: a *bulk* anchor's match is the whole value between its two boundaries; its handler takes every
    #: end at once. Hyperscan consumes the right boundary byte (no ``$``: the buffer is padded instead),
    #: so its ends are one past the value's; ``re`` looks ahead
    bulk: bool = False
    #: the value's length when fixed (its start is then ``end - size``), else 0
    size: int = 0
    #: hyperscan database: anchors that slow each other down when compiled together are kept apart
    group: int = 0
    #: the core's first character (a byte or a class): ``re`` then checks the left boundary after it,
    #: so that it can skip to where that character occurs instead of trying every byte
    lead: bytes = b""

    def hs_pattern(self) -> bytes:
        if self.hs_core is not None:
            return self.hs_core
        p = b"(?:" + self.core + b")"
        if self.left is not None:
            p = b"(?:^|[^" + self.left + b"])" + p
        if self.right is not None:
            p = p + (b"[^" + self.right + b"]" if self.bulk else b"(?:[^" + self.right + b"]|$)")
        return p

    def re_pattern(self) -> re.Pattern[bytes]:
        core = self.re_core if self.re_core is not None else self.core
        p = b"(?:" + core + b")"
        if self.digits_only:
            return re.compile(p)  # matched against whole runs (see ``Engine._candidates``)
        if self.re_core is None:
            if self.left is not None and self.lead:
                assert core.startswith(self.lead)
                rest = core[len(self.lead) :]
                p = self.lead + b"(?<![" + self.left + b"]" + self.lead + b")(?:" + rest + b")"
            elif self.left is not None:
                p = b"(?<![" + self.left + b"])" + p
            if self.right is not None:
                p = p + b"(?![" + self.right + b"])"
        return re.compile(p, re.IGNORECASE if self.caseless else 0)

    @property
    def digits_only(self) -> bool:
        """A bulk anchor whose values are whole digit runs of one length (``re`` finds the runs once for
        all of them)."""
        return self.bulk and self.name.startswith(("run", "mob"))


_AN = b"0-9A-Za-z"
#: for ``re``: a digit run of 11 to 19 digits (an X may end it) between bytes that are not letters or digits
_RE_RUNS = re.compile(rb"[0-9](?<![0-9A-Za-z][0-9])[0-9]{10,18}[Xx]?(?![0-9A-Za-z])")
_B32_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_KEYR = _AN + rb"_\-"

_DIGIT_KINDS = frozenset({"id_number", "mobile", "bank_card"})
_CLOUD = frozenset({"cloud_key"})

ANCHORS: tuple[_Anchor, ...] = (
    # a digit run of a length some identifier has, under a prefix it can start with: 18 (ID, X last)
    # or 15 (legacy ID) under a province code, 16-19 under a card issuer's first digits; 11 under an
    # allocated mobile prefix, with 86 or 0086 before it. One pattern per length: the value's start is
    # then its end less the length (no start-of-match tracking), and hyperscan runs these about twice
    # as fast as one alternation (the exact mobile prefixes give it literals to look for)
    *(
        _Anchor(f"run{n}", _DIGIT_KINDS, _PC + b"[0-9]{%d}[0-9Xx]" % (n - 3), _AN, _AN, bulk=True, size=n)
        for n in (15, 16, 17, 18, 19)
    ),
    *(
        _Anchor(
            f"mob{len(p) + 11}", _DIGIT_KINDS, p + _MOB3 + rb"[0-9]{8}", _AN, _AN, bulk=True, size=len(p) + 11
        )
        for p in (b"", b"86", b"0086")
    ),
    # grouped forms, by their shape only (prefixes are checked by the handler: cheaper for hyperscan)
    _Anchor(
        "gmobile",
        _DIGIT_KINDS,
        rb"[0-9][0-9]{2}[ \-][0-9]{4}[ \-][0-9]{4}",
        _AN,
        _AN,
        bulk=True,
        size=13,
        group=1,
        lead=b"[0-9]",
    ),
    _Anchor(
        "gcard",
        _DIGIT_KINDS,
        rb"[0-9][0-9]{3}(?:[ \-][0-9]{4}){3}",
        _AN,
        _AN,
        bulk=True,
        size=19,
        group=1,
        lead=b"[0-9]",
    ),
    _Anchor(
        "gid",
        _DIGIT_KINDS,
        rb"[0-9][0-9]{5}[ \-][0-9]{8}[ \-][0-9]{3}[0-9Xx]",
        _AN,
        _AN,
        bulk=True,
        size=20,
        group=1,
        lead=b"[0-9]",
    ),
    # cloud access key ids, whole (the documentation's ...EXAMPLE keys excluded already)
    _Anchor(
        "akia",
        _CLOUD,
        rb"A(?:KIA|SIA)[A-Z2-7]{9}" + _not_suffix(b"EXAMPLE", _B32_ALPHABET),
        _AN,
        _KEYR,
        bulk=True,
        size=20,
        lead=b"A",
    ),
    _Anchor("akid", _CLOUD, rb"AKID[0-9A-Za-z]{32}", _AN, _KEYR, bulk=True, size=36, lead=b"A"),
    _Anchor("aiza", _CLOUD, rb"AIza[0-9A-Za-z_\-]{35}", _AN, _KEYR, bulk=True, size=39, lead=b"A"),
    _Anchor("ltai", _CLOUD, rb"LTAI[0-9A-Za-z]{12,26}", _AN, _KEYR, bulk=True, lead=b"L"),
    _Anchor("aklt", _CLOUD, rb"AKLT[0-9A-Za-z_\-]{20,60}", _AN, _KEYR, bulk=True, lead=b"A"),
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

#: a validated value in a scanned buffer, as the engine passes it on:
#: ``(start, kind, end, confidence, detail, masked)``. Ordered by start, then kind. ``masked`` is None
#: for numbers (made from the bytes only for the findings that are kept) and the confidence of a card
#: is :data:`LAZY_CARD` until it is asked for (it needs a look at the words before the number).
Raw = tuple[int, str, int, float, str, "str | None"]

ID, MOBILE, CARD = "id_number", "mobile", "bank_card"
#: a card with a valid Luhn digit, not grouped: 0.95 after a card word, else 0.85
LAZY_CARD = -1.0

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


_DIGITX = b"0123456789Xx"
_SEP = (0x20, 0x2D)
_PROV2 = frozenset(b"%d" % p for p in (*range(11, 16), 21, 22, 23, *range(31, 38), *range(41, 47)))
_PROV2 |= frozenset(b"%d" % p for p in (*range(50, 55), *range(61, 66), 71, 81, 82))
_CARDP2 = frozenset(b"%02d" % p for p in range(100) if re.fullmatch(_CARDP, b"%02d" % p))
_GROUP_TAIL = re.compile(rb"[ \-]([0-9]{1,3})(?![0-9A-Za-z])")


def _judge(buf: bytes, s: int, e: int, tok: bytes, grouped: bool, out: list[Raw]) -> None:
    """The digits ``tok`` of the value at ``buf[s:e]`` (separators removed): an ID number, a mobile
    number, a card, or nothing."""
    n = len(tok)
    if tok[-1] == 0x78:  # x
        tok = tok[:-1] + b"X"
    if n == 18:
        if checks.id18_ok(tok):
            out.append((s, ID, e, 0.99, "18-digit", None))
            return
        if tok[-1] == 0x58:
            return
    elif n == 11:
        if tok[:3] in _MOBILE:
            out.append((s, MOBILE, e, 0.95 if grouped else 0.9, "", None))
        return
    elif n == 15:
        if checks.id15_ok(tok):
            out.append((s, ID, e, 0.8, "legacy 15-digit", None))
        elif tok[:4] == b"0086" and tok[4:7] in _MOBILE:
            out.append((s, MOBILE, e, 0.95, "", None))
        return
    elif n == 13:
        if tok[:2] == b"86" and tok[2:5] in _MOBILE:
            out.append((s, MOBILE, e, 0.95, "", None))
        return
    if 16 <= n <= 19:
        _card(buf, s, e, tok, grouped, out)


def _card(buf: bytes, s: int, e: int, tok: bytes, grouped: bool, out: list[Raw]) -> None:
    """16-19 digits: a card with an issuer prefix, a length it issues and a Luhn digit (not an
    ID-shaped 18-digit number); or a UnionPay-prefixed number labelled as a card."""
    scheme = checks.card_ok(tok)
    if scheme is not None:
        out.append((s, CARD, e, 0.95 if grouped else LAZY_CARD, scheme, None))
    elif tok[:2] == b"62" and not checks.id_shaped(tok):
        _unionpay_labelled(buf, s, e, out)


def _unionpay_labelled(buf: bytes, s: int, e: int, out: list[Raw]) -> None:
    # some domestic UnionPay cards carry no Luhn digit: a number labelled as a card right before it
    if _CARD_LABEL.search(buf, max(0, s - 24), s):
        out.append((s, CARD, e, 0.6, "UnionPay prefix, labelled, no Luhn", None))


_MOBILE = checks.MOBILE_PREFIXES
_CODES = checks.DIVISION_CODES
_DATES = checks.BIRTH_DATES
_BASE13 = checks.ID_BASE13
_ISSUERS = checks.ISSUERS
_LUHN2 = checks.LUHN_DOUBLED


def _bulk_digits(
    buf: bytes,
    ends: list[int],
    shift: int,
    start: int,
    limit: int,
    out: list[Raw],
    counts: Counter[str] | None,
    size: int,
    mobile: bool,
) -> None:
    """Digit runs of one length. The common cases are decided inline (a mobile number is valid by its
    pattern already; an 18-digit ID number; a card with a Luhn digit), the rest by :func:`_judge`. With
    ``counts``, valid values are counted there instead of listed."""
    ends.sort()  # hyperscan reports matches nearly, not strictly, in order
    off = size + shift
    lo = bisect.bisect_left(ends, start + off)
    hi = bisect.bisect_left(ends, limit + off)
    if lo >= hi:
        return
    sel = ends[lo:hi] if lo or hi < len(ends) else ends
    if mobile:
        if counts is not None:
            counts[MOBILE] += len(sel)
        else:
            conf = 0.9 if size == 11 else 0.95
            out.extend([(t - off, MOBILE, t - shift, conf, "", None) for t in sel])
        return
    append = out.append
    valid = 0
    if size == 18:
        codes, dates, base13 = _CODES, _DATES, _BASE13
        for t in sel:
            tok = buf[t - off : t - shift]
            if (
                tok[:6] in codes
                and tok[6:14] in dates
                and int(tok if tok[17] < 0x3A else tok.translate(base13), 13) % 11 == 1
            ):
                if counts is None:
                    append((t - off, ID, t - shift, 0.99, "18-digit", None))
                else:
                    valid += 1
            elif tok[-1] <= 0x39:  # not an ID number (with an X, nothing): a card?
                _card(buf, t - off, t - shift, tok, False, out)
        if valid:
            counts[ID] += valid  # type: ignore[index]
        return
    if size == 15:
        for t in sel:
            tok = buf[t - off : t - shift]
            if tok[-1] <= 0x39:
                _judge(buf, t - off, t - shift, tok, False, out)
        return
    issuers, luhn2 = _ISSUERS, _LUHN2
    p = 1 - (size & 1)  # Luhn: the digits not doubled (odd positions of an even length), then the others
    d = size & 1
    for t in sel:
        tok = buf[t - off : t - shift]
        if tok[-1] > 0x39:
            continue  # X only ends an 18-character ID number
        issuer = issuers.get(tok[:4])
        if (
            issuer is not None
            and size in issuer[1]
            and (int(tok[p::2], 11) + int(tok[d::2].translate(luhn2), 11)) % 10 == 0
        ):
            if counts is None:
                append((t - off, CARD, t - shift, LAZY_CARD, issuer[0], None))
            else:
                valid += 1
        elif tok[:2] == b"62":
            _unionpay_labelled(buf, t - off, t - shift, out)
    if valid:
        counts[CARD] += valid  # type: ignore[index]


def _bulk_grouped(
    buf: bytes,
    ends: list[int],
    shift: int,
    start: int,
    limit: int,
    out: list[Raw],
    counts: Counter[str] | None,
    size: int,
) -> None:
    """``3-4-4`` mobiles, ``4-4-4-4[-1..3]`` cards, ``6 8 4`` ID numbers (space or dash between groups)."""
    n = len(buf)
    for t in ends:
        e = t - shift
        s = e - size
        if s < start or s >= limit:
            continue
        if size == 19:
            if buf[s : s + 2] not in _CARDP2:
                continue
            tok = buf[s : s + 4] + buf[s + 5 : s + 9] + buf[s + 10 : s + 14] + buf[s + 15 : s + 19]
            if e + 1 < n and buf[e] in _SEP and buf[e + 1] in _DIGITS:
                m = _GROUP_TAIL.match(buf, e)
                if m is None:
                    continue
                tok += m.group(1)
                e = m.end()
        elif size == 13:
            tok = buf[s : s + 3] + buf[s + 4 : s + 8] + buf[s + 9 : s + 13]
        else:
            if buf[s : s + 2] not in _PROV2:
                continue
            tok = buf[s : s + 6] + buf[s + 7 : s + 15] + buf[s + 16 : s + 20]
        if e + 1 < n and buf[e] in _SEP and buf[e + 1] in _DIGITS:
            continue  # the first groups of a longer grouped number
        if size == 19 and len(tok) != 18:
            _card(buf, s, e, tok, True, out)
        else:
            _judge(buf, s, e, tok, True, out)


_KEY_CHARS = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-")
_ALNUM = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_ALNUM_B = bytes(sorted(_ALNUM))


def _varied(s: bytes, minimum: int = 6) -> bool:
    return len(set(s)) >= minimum


def _cloud(tok: bytes) -> tuple[float, str]:
    """(confidence, provider) of a cloud key id cut out whole by its pattern (which holds its alphabet
    and length), or (0, "")."""
    p = tok[:4]
    conf, detail = 0.0, ""
    if p == b"LTAI":
        if 16 <= len(tok) <= 30 and _varied(tok[4:]):
            conf, detail = (0.95 if len(tok) in (16, 24) else 0.75), "Alibaba Cloud AccessKey ID"
    elif p in (b"AKIA", b"ASIA"):
        if len(tok) == 20 and b"EXAMPLE" not in tok and _varied(tok[4:]):
            conf, detail = 0.95, "AWS access key ID" + (" (temporary)" if p == b"ASIA" else "")
    elif p == b"AKID":
        if len(tok) == 36 and _varied(tok[4:], 10):
            conf, detail = 0.9, "Tencent Cloud SecretId"
    elif p == b"AKLT":
        if 24 <= len(tok) <= 64 and _varied(tok[4:], 10):
            conf, detail = 0.8, "Volcengine/Kingsoft Cloud AccessKey"
    elif p == b"AIza" and len(tok) == 39 and _varied(tok[4:], 10):
        conf, detail = 0.9, "Google API key"
    return conf, detail


def _bulk_cloud(
    buf: bytes,
    ends: list[int],
    shift: int,
    start: int,
    limit: int,
    out: list[Raw],
    counts: Counter[str] | None,
    size: int,
    name: str,
) -> None:
    """Cloud key ids: the value runs from its prefix to the first byte that is not a key character."""
    for t in ends:
        e = t - shift
        if size:
            starts = [e - size]
        elif name == "ltai":  # LTAI + letters and digits: the run of those that ends here
            w = buf[max(0, e - 31) : e]
            starts = [e - (len(w) - len(w.rstrip(_ALNUM_B)))]
        else:  # AKLT + key characters, which may hold another AKLT after a dash or underscore
            starts = []
            p = buf.find(b"AKLT", max(0, e - 64), e - 20)
            while p >= 0:
                if p == 0 or buf[p - 1] not in _ALNUM:
                    starts.append(p)
                p = buf.find(b"AKLT", p + 1, e - 20)
        for s in starts:
            if start <= s < limit:
                tok = buf[s:e]
                conf, detail = _cloud(tok)
                if conf:
                    out.append((s, "cloud_key", e, conf, detail, checks.mask_key(tok.decode())))


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


_JWT_RUN = re.compile(rb"[0-9A-Za-z_\-.]{1,10000}")


def _jwt(buf: bytes, f: int, t: int) -> list[Hit]:
    f = buf.find(b"eyJ", f, t)
    if f < 0:
        return []
    m = _JWT_RUN.match(buf, f)
    end = m.end() if m else f
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
_KIND = operator.itemgetter(1)
#: a buffer that ends in one of these needs no padding for the right boundary of a bulk anchor
_NO_PAD = frozenset(b"\n\r\t ,;\"'")


def resolve_confidence(buf: bytes, raw: Raw) -> float:
    """A hit's confidence (a card's is decided by the words before it only when asked)."""
    conf = raw[3]
    if conf == LAZY_CARD:
        s = raw[0]
        return 0.95 if _CARD_CONTEXT.search(buf, max(0, s - 40), s) is not None else 0.85
    return conf


def masked(buf: bytes, raw: Raw) -> str:
    """A hit's masked value (numbers are masked from their bytes only when asked)."""
    m = raw[5]
    if m is not None:
        return m
    tok = buf[raw[0] : raw[2]].replace(b" ", b"").replace(b"-", b"").decode("ascii")
    kind = raw[1]
    if kind == ID:
        return checks.mask_id(tok.upper())
    if kind == MOBILE:
        return checks.mask_mobile(tok[-11:])
    return checks.mask_card(tok)


def to_hit(buf: bytes, raw: Raw) -> Hit:
    return Hit(raw[1], raw[0], raw[2], masked(buf, raw), resolve_confidence(buf, raw), raw[4])


def _as_raw(h: Hit) -> Raw:
    return (h.start, h.kind, h.end, h.confidence, h.detail, h.masked)


class Engine:
    """Anchors for a set of kinds, compiled once; :meth:`find` and :meth:`scan` find and validate."""

    def __init__(self, kinds: frozenset[str], engine: str = "auto") -> None:
        self.kinds = kinds
        self.anchors = [a for a in ANCHORS if a.kinds & kinds]
        # bulk anchors first: the match callback tells them apart by index
        self.anchors.sort(key=lambda a: not a.bulk)
        self.n_bulk = sum(a.bulk for a in self.anchors)
        self.handlers = [_HANDLERS.get(a.name) for a in self.anchors]
        self._bulk = [_bulk_handler(a) for a in self.anchors[: self.n_bulk]]
        #: bulk anchors whose hits are numbers (never overlapping one another) go to the fast list
        self._fast = [bool(a.kinds & _DIGIT_KINDS) for a in self.anchors[: self.n_bulk]]
        self._all_digits = kinds >= _DIGIT_KINDS
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
        self._by_size: dict[int, list[int]] = {}
        self._dbs: list[Any] = []
        if self.name == "hyperscan":
            for group in sorted({a.group for a in self.anchors}):
                ids = [i for i, a in enumerate(self.anchors) if a.group == group]
                db = _hs.Database(mode=_hs.HS_MODE_BLOCK)
                flags = [
                    (_hs.HS_FLAG_SOM_LEFTMOST if self.anchors[i].som and not self.anchors[i].bulk else 0)
                    | (_hs.HS_FLAG_CASELESS if self.anchors[i].caseless else 0)
                    for i in ids
                ]
                db.compile(
                    expressions=[self.anchors[i].hs_pattern() for i in ids],
                    ids=ids,
                    elements=len(ids),
                    flags=flags,
                )
                self._dbs.append(db)
        else:
            self._res = [a.re_pattern() for a in self.anchors]
            for i, a in enumerate(self.anchors):
                if a.digits_only:
                    self._by_size.setdefault(a.size, []).append(i)

    def _candidates(self, buf: bytes, pos: int) -> tuple[list[list[Any]], int]:
        """Per anchor: the ends of bulk anchors' matches, ``(start, end)`` of the others'; and how far
        past a bulk value its ends lie (hyperscan consumes the right boundary, ``re`` looks ahead)."""
        lists: list[list[Any]] = [[] for _ in self.anchors]
        if self._dbs:
            nb = self.n_bulk

            def on_match(i: int, f: int, t: int, _flags: int, c: list[list[Any]]) -> None:
                if i < nb:
                    c[i].append(t)
                else:
                    c[i].append((f, t))

            for db in self._dbs:
                db.scan(buf, match_event_handler=on_match, context=lists)
            return lists, 1
        if self._by_size:
            # every maximal run of 11-19 digits (an X may end it), each given to the anchors of its length
            # whose pattern it matches: what hyperscan reports for them
            by_size, full = self._by_size, self._res
            for m in _RE_RUNS.finditer(buf, pos):
                s, e = m.span()
                for i in by_size.get(e - s, ()):
                    if full[i].fullmatch(buf, s, e):
                        lists[i].append(e)
        for i, rx in enumerate(self._res):
            if self.anchors[i].digits_only:
                continue
            if i < self.n_bulk:
                lists[i] = [m.end() for m in rx.finditer(buf, pos)]
            else:
                lists[i] = [(m.start(), m.end()) for m in rx.finditer(buf, pos)]
        return lists, 0

    def find(
        self,
        buf: bytes,
        start: int = 0,
        limit: int | None = None,
        min_confidence: float = 0.0,
        counts: Counter[str] | None = None,
    ) -> tuple[list[Raw], list[Raw]]:
        """Validated hits whose anchor starts in ``[start, limit)``, as two lists of :data:`Raw`:

        - *numbers* (ID numbers, mobiles, cards), unordered: they never overlap one another, and each
          is found from its own first byte, so it needs no deduplication. With ``counts``, they are
          counted there per kind and not listed (what a scan past its listing cap needs);
        - everything else, ordered and deduplicated (the longer of two same-kind hits at one start, no
          same-kind hit nested in the one before, no password that is a key, token or JWT).

        Bytes before ``start`` are context only; the value of a hit may begin before ``start`` (an
        address ends at its road number) or end after ``limit``: callers give enough bytes on either
        side (see ``stream``).
        """
        if limit is None:
            limit = len(buf)
        if limit + 64 >= len(buf) and buf and buf[-1] not in _NO_PAD:
            buf = buf + b"\n"  # a value at the very end still has a right boundary to match
        lists, shift = self._candidates(buf, max(0, start - 64))
        fast: list[Raw] = []
        slow: list[Raw] = []
        kinds = self.kinds
        filtered = not self._all_digits or min_confidence > 0.6
        direct = None if filtered else counts
        for i, bulk in enumerate(self._bulk):
            if lists[i]:
                bulk(buf, lists[i], shift, start, limit, fast if self._fast[i] else slow, direct)
        if fast:
            if not self._all_digits:
                fast = [h for h in fast if h[1] in kinds]
            if min_confidence > 0.6:
                fast = [h for h in fast if resolve_confidence(buf, h) >= min_confidence]
            if counts is not None:
                counts.update(map(_KIND, fast))
                fast = []
        nb = self.n_bulk
        backs = self._backs
        cands = [
            (f if backs[i] is None else t - backs[i], t, i)
            for i in range(nb, len(self.anchors))
            for f, t in lists[i]
        ]
        if not cands and not slow:
            return fast, slow
        cands.sort()
        hits: dict[tuple[str, int], Raw] = {}
        for h in slow:
            if h[1] in kinds and h[3] >= min_confidence:
                hits[(h[1], h[0])] = h
        handlers = self.handlers
        for f, t, i in cands:
            if not start <= f < limit:
                continue
            for hh in handlers[i](buf, f, t):  # type: ignore[misc]
                if hh.kind not in kinds or hh.confidence < min_confidence:
                    continue
                old = hits.get((hh.kind, hh.start))
                if old is None or hh.end > old[2]:
                    hits[(hh.kind, hh.start)] = _as_raw(hh)
        out = sorted(hits.values())
        if "password" in kinds and len(out) > 1:
            # spans of keys, tokens and JWTs, by start, with the furthest end so far
            starts = [h[0] for h in out if h[1] in _SPECIFIC_SECRETS]
            if starts:
                reach = list(itertools.accumulate((h[2] for h in out if h[1] in _SPECIFIC_SECRETS), max))
                out = [h for h in out if h[1] != "password" or not _overlaps(starts, reach, h[0], h[2])]
        return fast, _drop_nested(out)

    def scan(
        self, buf: bytes, start: int = 0, limit: int | None = None, min_confidence: float = 0.0
    ) -> list[Hit]:
        """Validated hits whose anchor starts in ``[start, limit)``, in order, masked (see :meth:`find`)."""
        fast, slow = self.find(buf, start, limit, min_confidence)
        return [to_hit(buf, h) for h in sorted(fast + slow)]


_Bulk = Callable[[bytes, list[int], int, int, int, list[Raw], "Counter[str] | None"], None]


def _bulk_handler(a: _Anchor) -> _Bulk:
    if a.name.startswith(("run", "mob")):
        return functools.partial(_bulk_digits, size=a.size, mobile=a.name.startswith("mob"))
    if a.kinds == _DIGIT_KINDS:
        return functools.partial(_bulk_grouped, size=a.size)
    return functools.partial(_bulk_cloud, size=a.size, name=a.name)


def _overlaps(starts: list[int], reach: list[int], s: int, e: int) -> bool:
    """Does ``[s, e)`` overlap a span, given the spans' sorted starts and the running maximum of their
    ends?"""
    k = bisect.bisect_left(starts, e)  # spans that start before e
    return k > 0 and reach[k - 1] > s


def _drop_nested(hits: list[Raw]) -> list[Raw]:
    """Same-kind hits inside another (a 3-4-4 group inside a longer value) are dropped."""
    out: list[Raw] = []
    for h in hits:
        if out and out[-1][1] == h[1] and h[0] < out[-1][2]:
            if h[2] - h[0] > out[-1][2] - out[-1][0]:
                out[-1] = h
            continue
        out.append(h)
    return out


@cache
def get_engine(kinds: frozenset[str], engine: str = "auto") -> Engine:
    """One compiled engine per process and kind set."""
    return Engine(kinds, engine)
