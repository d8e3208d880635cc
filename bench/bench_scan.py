"""Benchmark of ``pivault.scan``: throughput per core against a read-only baseline, and Presidio.

Usage::

    python bench/bench_scan.py [--size-mb 128] [--presidio-mb 4] [--json-out FILE]

The corpus is generated (tests/scan/scan_corpus.py) into a temporary file:

- ``mixed``: 85 % text without PI (Chinese and English prose, application
  logs, JSON events, config, with the hard negatives: order numbers,
  timestamps, product codes, hashes) and 15 % PI-dense exports (CSV, JSON
  lines, SQL dumps, logs, config with keys), interleaved in 64 KiB blocks;
- ``dense``: the PI-dense exports only (about 8 findings per KiB);
- ``plain``: the text without PI only (what most of a file share holds).

Each rate is one process on one core, reading the file from the page cache, timed in CPU seconds of
that process (``time.process_time``) so that other load on the machine does not count against it; the
all-cores figure is wall time.
The baseline reads the same file in the same 4 MiB chunks and counts its
lines, without detecting. Presidio (``presidio-analyzer``, if installed) is
given pattern recognizers equivalent to the validated detectors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "scan"))

import scan_corpus as corpus  # noqa: E402

from pivault.scan import HAVE_HYPERSCAN, KINDS, VALIDATED_KINDS, ScanOptions, SourceResult, get_engine  # noqa: E402
from pivault.scan.runner import scan_paths  # noqa: E402
from pivault.scan.sources import scan_file  # noqa: E402
from pivault.scan.stream import Collector, scan_bytes  # noqa: E402

CHUNK = 4 * 1024 * 1024
FAST = frozenset(
    {"id_number", "mobile", "bank_card", "cloud_key", "api_token", "private_key", "jwt", "password"}
)
assert FAST == VALIDATED_KINDS


def build_corpus(kind: str, unique_mb: int, seed: int = 21) -> bytes:
    if kind == "plain":
        return corpus.filler_text(seed, unique_mb << 20)
    dense = b"".join(d.data for d in corpus.generate_docs(seed, scale=max(1, unique_mb // 2)))
    if kind == "dense":
        return dense[: unique_mb << 20]
    filler = corpus.filler_text(seed, int((unique_mb << 20) * 0.85))
    dense = dense[: (unique_mb << 20) - len(filler)]
    out = bytearray()
    block = 64 * 1024
    fi = di = 0
    while fi < len(filler) or di < len(dense):
        nl = filler.find(b"\n", fi + int(block * 0.85 * 6.7))
        nl = len(filler) if nl < 0 else nl + 1
        out += filler[fi:nl]
        fi = nl
        dl = dense.find(b"\n", di + int(block * 0.15 * 6.7))
        dl = len(dense) if dl < 0 else dl + 1
        out += dense[di:dl]
        di = dl
    return bytes(out)


def write_file(data: bytes, size: int, directory: str, name: str) -> Path:
    path = Path(directory) / name
    with open(path, "wb") as f:
        written = 0
        while written < size:
            part = data[: size - written]
            f.write(part)
            written += len(part)
    return path


def baseline(path: Path) -> float:
    t0 = time.process_time()
    lines = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            lines += chunk.count(b"\n")
    return time.process_time() - t0


def scan_rate(path: Path, kinds: frozenset[str], engine: str) -> tuple[float, Counter[str]]:
    opts = ScanOptions(kinds=kinds, engine=engine, workers=1, chunk_size=CHUNK)
    eng = get_engine(kinds, engine)
    t0 = time.process_time()
    result = scan_file(str(path), opts, eng)
    return time.process_time() - t0, result.counts


def quality(seed: int = 31) -> dict[str, dict[str, float]]:
    docs = corpus.generate_docs(seed, scale=2)
    opts = ScanOptions(max_findings_per_source=10**9)
    eng = get_engine(opts.kinds, opts.engine)
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for d in docs:
        r = SourceResult(d.name)
        sep = b"\t" if d.name.endswith(".tsv") else b"," if d.name.endswith(".csv") else None
        scan_bytes(d.data, d.name, eng, Collector(r, opts), opts, csv_sep=sep)
        used: set[int] = set()
        for lab in d.labels:
            hits = [
                i
                for i, f in enumerate(r.findings)
                if f.kind == lab.kind
                and f.offset is not None
                and f.offset < lab.end
                and lab.start < f.offset + (f.length or 0)
            ]
            if hits:
                tp[lab.kind] += 1
                used.update(hits)
            else:
                fn[lab.kind] += 1
        for i, f in enumerate(r.findings):
            if i not in used:
                fp[f.kind] += 1
    out = {}
    for k in KINDS:
        if tp[k] + fn[k] + fp[k]:
            out[k] = {
                "planted": tp[k] + fn[k],
                "tp": tp[k],
                "fp": fp[k],
                "fn": fn[k],
                "precision": tp[k] / (tp[k] + fp[k]) if tp[k] + fp[k] else 0.0,
                "recall": tp[k] / (tp[k] + fn[k]) if tp[k] + fn[k] else 0.0,
            }
    return out


def presidio_rate(data: bytes) -> dict[str, Any]:
    try:
        from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
        from presidio_analyzer.predefined_recognizers import CreditCardRecognizer
    except ImportError:
        return {"skipped": "presidio-analyzer not installed"}
    from pivault.scan import checks

    class Id(PatternRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return checks.id18_ok(pattern_text.upper().encode())

    class Mobile(PatternRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return checks.mobile_ok(pattern_text.encode())

    class Key(PatternRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return len(set(pattern_text)) > 6

    recognizers = [
        Id(
            supported_entity="CN_ID",
            patterns=[Pattern("id", r"(?<![0-9A-Za-z])[1-8][0-9]{16}[0-9Xx](?![0-9A-Za-z])", 0.5)],
        ),
        Mobile(
            supported_entity="CN_MOBILE",
            patterns=[Pattern("mobile", r"(?<![0-9A-Za-z])1[3-9][0-9]{9}(?![0-9A-Za-z])", 0.5)],
        ),
        CreditCardRecognizer(),
        Key(
            supported_entity="CLOUD_KEY",
            patterns=[
                Pattern(
                    "key",
                    r"(?<![0-9A-Za-z])(?:LTAI[0-9A-Za-z]{12,20}|"
                    r"A(?:KIA|SIA)[0-9A-Z]{16}|AKID[0-9A-Za-z]{32})"
                    r"(?![0-9A-Za-z])",
                    0.5,
                )
            ],
        ),
    ]
    entities = ["CN_ID", "CN_MOBILE", "CREDIT_CARD", "CLOUD_KEY"]
    text = data.decode("utf-8", "replace")
    blocks = [text[i : i + 65536] for i in range(0, len(text), 65536)]
    how = "AnalyzerEngine with a no-model NLP engine"
    try:
        from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine

        class NoNlp(NlpEngine):  # no spaCy model can be downloaded here: give the analyzer empty artifacts
            def load(self) -> None: ...

            def is_loaded(self) -> bool:
                return True

            def process_text(self, text: str, language: str) -> NlpArtifacts:
                return NlpArtifacts(
                    entities=[], tokens=[], tokens_indices=[], lemmas=[], nlp_engine=self, language=language
                )

            def process_batch(self, texts, language, batch_size=1, n_process=1, **kw):  # type: ignore[no-untyped-def]
                for t in texts:
                    yield t, self.process_text(t, language)

            def is_stopword(self, word: str, language: str) -> bool:
                return False

            def is_punct(self, word: str, language: str) -> bool:
                return False

            def get_supported_entities(self) -> list[str]:
                return []

            def get_supported_languages(self) -> list[str]:
                return ["en"]

        registry = RecognizerRegistry(recognizers=recognizers)
        analyzer = AnalyzerEngine(registry=registry, nlp_engine=NoNlp(), supported_languages=["en"])
        analyzer.analyze(blocks[0][:1000], language="en", entities=entities)

        def run() -> int:
            return sum(len(analyzer.analyze(b, language="en", entities=entities)) for b in blocks)
    except Exception as e:  # fall back to the recognizers themselves
        how = f"recognizers' analyze() directly (AnalyzerEngine failed: {type(e).__name__})"

        def run() -> int:
            return sum(
                len(r.analyze(b, entities=entities, nlp_artifacts=None)) for b in blocks for r in recognizers
            )

    t0 = time.process_time()
    found = run()
    dt = time.process_time() - t0
    import presidio_analyzer

    return {
        "how": how,
        "mb_s": len(data) / dt / 1e6,
        "seconds": dt,
        "bytes": len(data),
        "found": found,
        "version": getattr(presidio_analyzer, "__version__", "?"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=128, help="size of each corpus file")
    ap.add_argument("--unique-mb", type=int, default=16, help="generated once, then repeated to --size-mb")
    ap.add_argument("--presidio-mb", type=float, default=2.0, help="bytes given to Presidio (it is slow)")
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--corpora", default="plain,mixed,dense", help="comma-separated: plain, mixed, dense")
    args = ap.parse_args()
    engines = ["hyperscan", "re"] if HAVE_HYPERSCAN else ["re"]
    results: dict[str, Any] = {"cpu_count": os.cpu_count(), "hyperscan": HAVE_HYPERSCAN, "runs": []}
    print(f"pivault scan benchmark: {args.size_mb} MB per corpus, engines {engines}, one core per rate")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.corpora.split(","):
            data = build_corpus(kind, args.unique_mb)
            path = write_file(data, args.size_mb << 20, tmp, f"{kind}.txt")
            size = path.stat().st_size
            baseline(path)  # warm the page cache
            base = min(baseline(path) for _ in range(3))
            base_rate = size / base / 1e6
            print(
                f"\n[{kind}] {size / 1e6:.0f} MB; baseline (read {CHUNK >> 20} MiB chunks, count lines): "
                f"{base_rate:,.0f} MB/s"
            )
            for engine in engines:
                for label, kinds in (("validated", VALIDATED_KINDS), ("all kinds", frozenset(KINDS))):
                    if engine == "re" and kind != "mixed" and label == "all kinds":
                        continue
                    dt, counts = scan_rate(path, kinds, engine)
                    rate = size / dt / 1e6
                    row = {
                        "corpus": kind,
                        "engine": engine,
                        "kinds": label,
                        "mb_s": round(rate, 1),
                        "baseline_mb_s": round(base_rate, 1),
                        "ratio": round(rate / base_rate, 4),
                        "findings": sum(counts.values()),
                        "findings_per_mb": round(sum(counts.values()) / (size / 1e6), 1),
                    }
                    results["runs"].append(row)
                    print(
                        f"  {engine:9s} {label:9s}: {rate:8.1f} MB/s  "
                        f"ratio {rate / base_rate:.3f} of baseline"
                        f"  ({row['findings_per_mb']:.0f} findings/MB)"
                    )
            if kind == "mixed":
                n = os.cpu_count() or 1
                copies = [write_file(data, (args.size_mb << 20) // n, tmp, f"part{i}.txt") for i in range(n)]
                total = sum(p.stat().st_size for p in copies)
                t0 = time.perf_counter()
                scan_paths([str(p) for p in copies], ScanOptions(kinds=VALIDATED_KINDS, workers=n))
                dt = time.perf_counter() - t0
                results["parallel"] = {"workers": n, "mb_s": round(total / dt / 1e6, 1)}
                print(f"  all cores ({n} workers, {n} files, validated): {total / dt / 1e6:8.1f} MB/s")
                sample = data[: int(args.presidio_mb * (1 << 20))]
                pres = presidio_rate(sample)
                results["presidio"] = pres
                if "skipped" in pres:
                    print(f"  presidio: skipped: {pres['skipped']}")
                else:
                    ours, _ = scan_rate(
                        write_file(sample, len(sample), tmp, "sample.txt"), VALIDATED_KINDS, engines[0]
                    )
                    pres["pivault_same_sample_mb_s"] = round(len(sample) / ours / 1e6, 1)
                    print(
                        f"  presidio {pres['version']} ({pres['how']}): {pres['mb_s']:.2f} MB/s on "
                        f"{len(sample) / 1e6:.1f} MB; pivault on the same bytes: "
                        f"{pres['pivault_same_sample_mb_s']} MB/s"
                    )
    q = quality()
    results["quality"] = q
    print("\nquality on the labelled corpus (seed 31, scale 2):")
    for k, v in q.items():
        print(
            f"  {k:14s} planted {v['planted']:5d}  precision {v['precision']:.4f}  recall {v['recall']:.4f}"
            f"  (fp {v['fp']}, fn {v['fn']})"
        )
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
