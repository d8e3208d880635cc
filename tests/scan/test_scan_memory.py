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


_OOXML = "http://schemas.openxmlformats.org"
_CONTENT_TYPES = (
    f'<?xml version="1.0" encoding="UTF-8"?><Types xmlns="{_OOXML}/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>'
)
_RELS = (
    f'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="{_OOXML}/package/2006/relationships">'
    f'<Relationship Id="rId1" Type="{_OOXML}/officeDocument/2006/relationships/officeDocument" '
    'Target="word/document.xml"/></Relationships>'
)


def _big_docx(path: Path, xml_bytes: int) -> None:
    """A .docx whose document.xml holds ``xml_bytes`` of paragraphs, written as a stream."""
    import random
    import zipfile

    ns = f"{_OOXML}/wordprocessingml/2006/main"
    rnd = random.Random(5)
    texts = ("".join(chr(rnd.randrange(0x4E00, 0x9FA5)) for _ in range(300)) for _ in range(1200))
    block = "".join(f"<w:p><w:r><w:t>{t}</w:t></w:r></w:p>" for t in texts).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", _CONTENT_TYPES)
        z.writestr("_rels/.rels", _RELS)
        with z.open("word/document.xml", "w", force_zip64=True) as f:
            f.write(f'<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="{ns}"><w:body>'.encode())
            written = 0
            while written < xml_bytes:
                f.write(block)
                written += len(block)
            f.write("<w:p><w:r><w:t>身份证号11010519491231002X</w:t></w:r></w:p>".encode())
            f.write(b"<w:tbl><w:tr><w:tc><w:p><w:r><w:t>13812345678</w:t></w:r></w:p></w:tc></w:tr></w:tbl>")
            f.write(b"</w:body></w:document>")


def test_flat_memory_on_a_large_document(tmp_path: Path) -> None:
    """A .docx was loaded whole (python-docx): several times its XML in memory, and a 5 MB file
    may inflate 200 times. Its body and tables are now read as a stream."""
    doc = tmp_path / "big.docx"
    _big_docx(doc, 64 << 20)
    script = textwrap.dedent(f"""
        import resource
        from pivault.scan import ScanOptions, get_engine, scan_text
        from pivault.scan.sources import scan_file
        opts = ScanOptions(workers=1)
        eng = get_engine(opts.kinds, opts.engine)
        scan_text("warm up 13812345678", opts)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        r = scan_file({str(doc)!r}, opts, eng)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(before, after, r.counts["id_number"], r.counts["mobile"], len(r.issues))
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=600
    )
    before, after, ids, mobiles, issues = map(int, out.stdout.split())
    assert (ids, mobiles, issues) == (1, 1, 0)
    grew_mib = (after - before) / 1024
    assert grew_mib < 48, f"peak RSS grew by {grew_mib:.0f} MiB while scanning a 64 MiB document"
