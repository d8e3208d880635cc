"""Discovery of personal information and secrets outside the vault.

A library first; ``pivault scan`` is a thin skin over it::

    from pivault.scan import scan_paths, scan_database, ScanOptions

    report = scan_paths(["/srv/share"], ScanOptions(exclude=("*.iso",)))
    for finding in report:            # masked values only
        print(finding.file, finding.line, finding.kind, finding.masked)
    report.issues                     # what could not be read, and why
    report.totals()                   # findings per kind

    scan_database("postgresql://…/crm", tables=["public.customer"], full=True)
    scan_text("身份证号11010519491231002X")
"""

from __future__ import annotations

from pivault.scan.database import scan_database
from pivault.scan.engine import HAVE_HYPERSCAN, Engine, Hit, get_engine
from pivault.scan.findings import (
    KINDS,
    PI_KINDS,
    SECRET_KINDS,
    VALIDATED_KINDS,
    Finding,
    ScanIssue,
    ScanOptions,
    ScanReport,
    SourceResult,
    parse_fail_on,
)
from pivault.scan.output import render_table, to_json, to_sarif
from pivault.scan.runner import iter_results, scan_paths
from pivault.scan.sources import scan_file
from pivault.scan.stream import Collector, scan_bytes


def scan_text(
    text: str | bytes, options: ScanOptions | None = None, *, name: str = "<text>"
) -> list[Finding]:
    """Findings in an in-memory text (bytes are taken as a file's content, encoding detected)."""
    options = options or ScanOptions(max_findings_per_source=10**9)
    result = SourceResult(name)
    data = text.encode("utf-8") if isinstance(text, str) else text
    scan_bytes(data, name, get_engine(options.kinds, options.engine), Collector(result, options), options)
    return result.findings


__all__ = [
    "HAVE_HYPERSCAN",
    "KINDS",
    "PI_KINDS",
    "SECRET_KINDS",
    "VALIDATED_KINDS",
    "Engine",
    "Finding",
    "Hit",
    "ScanIssue",
    "ScanOptions",
    "ScanReport",
    "SourceResult",
    "iter_results",
    "parse_fail_on",
    "render_table",
    "scan_database",
    "scan_file",
    "scan_paths",
    "scan_text",
    "to_json",
    "to_sarif",
]
