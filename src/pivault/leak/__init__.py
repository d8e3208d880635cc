"""Leak response: approved and traceable exports, leak check, attribution, breach report.

* :mod:`pivault.leak.exports` — request / approve / fetch (two-person rule), canaries per export,
  recover (a fetch killed part-way);
* :mod:`pivault.leak.readers` — streaming dump readers (CSV, JSON, SQL, xlsx, Parquet, gz/zip);
* :mod:`pivault.leak.columns` — PI columns found by content;
* :mod:`pivault.leak.match` — matching through the blind indexes, decrypting nothing;
* :mod:`pivault.leak.attribution` — export, principal or store, or "the evidence is weak";
* :mod:`pivault.leak.check` — ``check(vault, paths, ctx=…)`` and its case (the function is not
  re-exported here, so that ``pivault.leak.check`` stays the module); :mod:`pivault.leak.report`
  — the notice.
"""

from pivault.leak.attribution import Attribution, Finding
from pivault.leak.check import Checker, CheckResult, affected, load_case
from pivault.leak.columns import Column, detect_columns
from pivault.leak.exports import (
    ExportError,
    ExportInfo,
    Recovery,
    Selection,
    approve,
    canaries_needed,
    fetch,
    list_exports,
    recover,
    refuse,
    request,
)
from pivault.leak.readers import Batch, DumpError, Table, read_dump, read_stream
from pivault.leak.report import build_report, write_report

__all__ = [
    "Attribution",
    "Batch",
    "CheckResult",
    "Checker",
    "Column",
    "DumpError",
    "ExportError",
    "ExportInfo",
    "Finding",
    "Recovery",
    "Selection",
    "Table",
    "affected",
    "approve",
    "build_report",
    "canaries_needed",
    "detect_columns",
    "fetch",
    "list_exports",
    "load_case",
    "read_dump",
    "read_stream",
    "recover",
    "refuse",
    "request",
    "write_report",
]
