"""Recall and precision on the labelled corpus, per kind, for both engines."""

from __future__ import annotations

from collections import Counter

import pytest
import scan_corpus as corpus

from pivault.scan import HAVE_HYPERSCAN, KINDS, ScanOptions, SourceResult, get_engine
from pivault.scan.stream import Collector, scan_bytes

ENGINES = ["re", "hyperscan"] if HAVE_HYPERSCAN else ["re"]


def _sep(name: str) -> bytes | None:
    return b"\t" if name.endswith(".tsv") else b"," if name.endswith(".csv") else None


def evaluate(
    docs: list[corpus.Doc], engine: str, chunk_size: int = 4 << 20
) -> dict[str, tuple[int, int, int]]:
    """kind -> (true positives, false positives, false negatives); a finding matches a label it overlaps."""
    opts = ScanOptions(max_findings_per_source=10**9, chunk_size=chunk_size, engine=engine)
    eng = get_engine(opts.kinds, engine)
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for d in docs:
        r = SourceResult(d.name)
        scan_bytes(d.data, d.name, eng, Collector(r, opts), opts, csv_sep=_sep(d.name))
        used: set[int] = set()
        for lab in d.labels:
            hit = [
                i
                for i, f in enumerate(r.findings)
                if f.kind == lab.kind
                and f.offset is not None
                and f.length is not None
                and f.offset < lab.end
                and lab.start < f.offset + f.length
            ]
            if hit:
                tp[lab.kind] += 1
                used.update(hit)
            else:
                fn[lab.kind] += 1
        for i, f in enumerate(r.findings):
            if i not in used:
                fp[f.kind] += 1
    return {k: (tp[k], fp[k], fn[k]) for k in KINDS}


@pytest.fixture(scope="module")
def docs() -> list[corpus.Doc]:
    return corpus.generate_docs(seed=11)


@pytest.mark.parametrize("engine", ENGINES)
def test_validated_kinds_meet_targets(docs: list[corpus.Doc], engine: str) -> None:
    stats = evaluate(docs, engine)
    for kind in corpus.KINDS_ASSERTED:
        tp, fp, fn = stats[kind]
        assert tp > 50, f"too few {kind} planted to measure"
        recall = tp / (tp + fn)
        precision = tp / (tp + fp)
        assert recall >= 0.995, f"{kind} recall {recall:.4f} (missed {fn})"
        assert precision >= 0.99, f"{kind} precision {precision:.4f} ({fp} false positives)"


def test_hard_negatives_are_planted(docs: list[corpus.Doc]) -> None:
    labels = Counter(n.kind for d in docs for n in d.negatives)
    for label in (
        "id_check",
        "id_date",
        "id_region",
        "card_luhn",
        "order",
        "snowflake",
        "timestamp",
        "product",
    ):
        assert labels[label] >= 20, label


def test_other_kinds_do_not_regress(docs: list[corpus.Doc]) -> None:
    """Names and addresses are measured (see BENCHMARKS.md); these floors catch regressions."""
    stats = evaluate(docs, ENGINES[-1])
    floors = {
        "name": (0.95, 0.6),
        "address": (0.95, 0.9),
        "email": (0.99, 0.99),
        "passport": (0.95, 0.95),
        "travel_permit": (0.95, 0.9),
        "password": (0.95, 0.95),
        "jwt": (0.99, 0.99),
        "private_key": (0.99, 0.99),
    }
    for kind, (pmin, rmin) in floors.items():
        tp, fp, fn = stats[kind]
        assert tp / (tp + fp) >= pmin, (kind, stats[kind])
        assert tp / (tp + fn) >= rmin, (kind, stats[kind])


@pytest.mark.parametrize("engine", ENGINES)
def test_chunk_boundaries_find_each_value_once(docs: list[corpus.Doc], engine: str) -> None:
    """Tiny reads (values straddle many chunk edges) find exactly what one big read finds."""
    data = b"".join(d.data for d in docs if d.fmt in ("log", "text", "jsonl"))[:400_000]
    found = {}
    for size in (4 << 20, 4096, 777):
        opts = ScanOptions(max_findings_per_source=10**9, chunk_size=size, engine=engine)
        r = SourceResult("x")
        scan_bytes(data, "x", get_engine(opts.kinds, engine), Collector(r, opts), opts)
        found[size] = sorted((f.kind, f.offset, f.line, f.length) for f in r.findings)
    assert found[4096] == found[4 << 20]
    assert found[777] == found[4 << 20]
    assert len(found[777]) > 1000


@pytest.mark.skipif(not HAVE_HYPERSCAN, reason="hyperscan not installed: only the re engine runs")
def test_engines_agree(docs: list[corpus.Doc]) -> None:
    def run(engine: str) -> list[tuple[str, int | None, str]]:
        opts = ScanOptions(max_findings_per_source=10**9, engine=engine)
        out = []
        for d in docs[:14]:
            r = SourceResult(d.name)
            scan_bytes(
                d.data, d.name, get_engine(opts.kinds, engine), Collector(r, opts), opts, csv_sep=_sep(d.name)
            )
            out += [(f.kind, f.offset, f.masked) for f in r.findings]
        return sorted(out)

    assert run("re") == run("hyperscan")
