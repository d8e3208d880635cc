"""The bulk path: counts past the listing cap, engines that agree on edge cases, the fast checks."""

from __future__ import annotations

import random
import string

import pytest
import scan_corpus as corpus

from pivault.scan import HAVE_HYPERSCAN, KINDS, VALIDATED_KINDS, ScanOptions, SourceResult, checks, get_engine
from pivault.scan import scan_text as _scan_text
from pivault.scan.stream import Collector, scan_bytes

ENGINES = ["re", "hyperscan"] if HAVE_HYPERSCAN else ["re"]


def _scan(data: bytes, engine: str, kinds: frozenset[str], cap: int, chunk: int, mc: float) -> SourceResult:
    opts = ScanOptions(
        kinds=kinds, engine=engine, max_findings_per_source=cap, chunk_size=chunk, min_confidence=mc
    )
    r = SourceResult("x")
    scan_bytes(data, "x", get_engine(kinds, engine), Collector(r, opts), opts)
    return r


@pytest.fixture(scope="module")
def mixed() -> bytes:
    docs = corpus.generate_docs(seed=4)
    return corpus.filler_text(4, 300_000) + b"".join(d.data for d in docs if d.fmt != "csv")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kinds", [VALIDATED_KINDS, frozenset(KINDS), frozenset({"mobile", "password"})])
def test_counts_past_the_cap_are_exact(mixed: bytes, engine: str, kinds: frozenset[str]) -> None:
    """Past the cap, values are counted without findings: the counts and the listed findings are those
    of a scan that lists everything."""
    for mc in (0.5, 0.9):
        full = _scan(mixed, engine, kinds, 10**9, 4 << 20, mc)
        total = sum(full.counts.values())
        assert total > 500
        for cap, chunk in ((100, 4 << 20), (100, 50_000), (0, 4 << 20)):
            r = _scan(mixed, engine, kinds, cap, chunk, mc)
            assert r.counts == full.counts, (cap, chunk, mc)
            assert [f.to_dict() for f in r.findings] == [f.to_dict() for f in full.findings[:cap]]
            assert r.dropped == total - len(r.findings)


def _edge_text(r: random.Random, g: corpus.Gen) -> str:
    def digits(n: int) -> str:
        return "".join(r.choice(string.digits) for _ in range(n))

    def grouped(sizes: tuple[int, ...], sep: str) -> str:
        return sep.join(digits(k) for k in sizes)

    def card_groups() -> str:
        c = g.card_digits()
        return r.choice(" -").join(c[i : i + 4] for i in range(0, len(c), 4))

    pieces = [
        g.id18,
        g.id15,
        g.mobile,
        g.card,
        g.card_digits,
        lambda: g.neg_any()[1],
        g.cloud_key,
        lambda: digits(r.randint(1, 22)),
        lambda: grouped(
            r.choice([(4, 4, 4, 4), (4, 4, 4, 4, 3), (3, 4, 4), (6, 8, 4), (4, 4, 4, 4, 1)]), " "
        ),
        card_groups,
        lambda: "62" + digits(r.choice([14, 15, 16, 17])),
        lambda: r.choice(
            ["卡号", "银行卡号：", "card no ", "x", "X", "-", " ", "+86", "0086", "86", "\n", ",", "@"]
        ),
        lambda: (
            r.choice(["AKLT", "LTAI", "AKIA", "AIza", "-AKLT"])
            + "".join(r.choice("ABCdef0123_-") for _ in range(r.randint(10, 40)))
        ),
        lambda: "password=" + g.password(),
    ]
    return "".join(r.choice(pieces)() for _ in range(r.randint(1, 40)))


@pytest.mark.skipif(not HAVE_HYPERSCAN, reason="hyperscan not installed: only the re engine runs")
def test_engines_agree_on_edge_cases() -> None:
    r = random.Random(12)
    g = corpus.Gen(12)
    for _ in range(150):
        text = _edge_text(r, g)
        found = {}
        for engine in ("re", "hyperscan"):
            opts = ScanOptions(engine=engine, max_findings_per_source=10**9, min_confidence=0.0)
            found[engine] = sorted(
                (f.kind, f.offset, f.length, f.masked, f.confidence, f.detail) for f in _scan_text(text, opts)
            )
        assert found["re"] == found["hyperscan"], text


def test_values_at_the_very_end_are_found() -> None:
    """The right boundary of a value that ends the input is its end (hyperscan is given one)."""
    g = corpus.Gen(3)
    for _ in range(20):
        for value, kind in ((g.id18(), "id_number"), (g.mobile(), "mobile"), (g.card(), "bank_card")):
            for engine in ENGINES:
                fs = _scan_text(f"x {value}", ScanOptions(engine=engine))
                assert [f.kind for f in fs] == [kind], (engine, kind)


def test_luhn_and_cards_agree_with_plain_implementations() -> None:
    def luhn(tok: str) -> bool:
        total = 0
        for i, c in enumerate(reversed(tok)):
            d = int(c) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        return total % 10 == 0

    r = random.Random(8)
    for _ in range(20000):
        tok = "".join(r.choice(string.digits) for _ in range(r.randint(2, 19)))
        assert checks.luhn_ok(tok.encode()) == luhn(tok), tok
        if len(tok) >= 16:
            scheme = checks.card_issuer(tok.encode())
            lengths = {"Visa": (16, 19), "Mastercard": (16,)}.get(scheme or "", (16, 17, 18, 19))
            expect = scheme if scheme and len(tok) in lengths and luhn(tok) else None
            if checks.id_shaped(tok.encode()):
                expect = None
            assert checks.card_ok(tok.encode()) == expect, tok


def test_id_check_character_in_one_call() -> None:
    r = random.Random(9)
    for _ in range(20000):
        first17 = "".join(r.choice(string.digits) for _ in range(17)).encode()
        good = checks.id_check_char(first17)
        for c in b"0123456789X":
            tok = first17 + bytes([c])
            assert (int(tok.translate(checks.ID_BASE13), 13) % 11 == 1) == (c == good)
