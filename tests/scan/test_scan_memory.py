"""A large file scans in bounded memory: the peak RSS does not grow with the file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import scan_corpus as corpus

from pivault.scan import HAVE_HYPERSCAN

#: 200 MiB with hyperscan; the ``re`` fallback is ~25 times slower, so 48 MiB (still 12 reads of 4 MiB)
SIZE = (200 if HAVE_HYPERSCAN else 48) * 1024 * 1024


def test_flat_memory_on_a_large_file(tmp_path: Path) -> None:
    block = corpus.filler_text(7, 2 << 20) + b"".join(d.data for d in corpus.generate_docs(7))[: 64 << 10]
    big = tmp_path / "big.log"
    with open(big, "wb") as f:
        written = 0
        while written < SIZE:
            f.write(block)
            written += len(block)
    script = textwrap.dedent(f"""
        import resource
        from pivault.scan import ScanOptions, VALIDATED_KINDS, get_engine, scan_text
        from pivault.scan.sources import scan_file
        opts = ScanOptions(kinds=VALIDATED_KINDS, workers=1, max_findings_per_source=1000)
        eng = get_engine(opts.kinds, opts.engine)
        scan_text("warm up 13812345678", opts)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        r = scan_file({str(big)!r}, opts, eng)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(before, after, r.bytes_scanned, sum(r.counts.values()), len(r.findings), len(r.issues))
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    before, after, scanned, counted, kept, issues = map(int, out.stdout.split())
    assert scanned >= SIZE
    assert counted > 10_000 and kept == 1000 and issues == 0
    grew_mib = (after - before) / 1024
    assert grew_mib < 64, f"peak RSS grew by {grew_mib:.0f} MiB while scanning {SIZE >> 20} MiB"
