"""Report formats: a Rich table grouped by source and kind, JSON, and SARIF 2.1.0.

Every format shows masked values only.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from pivault.scan.engine import Engine, get_engine
from pivault.scan.findings import KINDS, PI_KINDS, Finding, ScanReport

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
TOOL_NAME = "pivault-scan"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("pivault")
    except Exception:
        return "0"


#: characters a terminal acts on, or that reorder or hide text: C0 and C1 controls, bidirectional
#: overrides and isolates, zero-width and line separators, the byte order mark; and the lone
#: surrogates by which Python names the bytes of a file name that are not UTF-8 (a GBK name
#: from a Windows share), which no output can encode: one such name ended the scan in a
#: traceback, with no report at all
_UNSHOWABLE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ud800-\udfff]")

#: the same less C0 controls, which JSON escapes itself (and whose line breaks lay it out)
_JSON_UNSHOWABLE = re.compile(r"[\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ud800-\udfff]")


def shown(text: str) -> str:
    """``text`` as one line a terminal shows as it is: the characters above as ``\\uXXXX``.

    File and member names, CSV headers and sheet names are chosen by whoever wrote the files
    swept: an escape sequence in one would clear or retitle the terminal of the officer reading
    the report, a line break draw a made-up row, a right-to-left override turn a name around.
    """
    return _UNSHOWABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def dumps(doc: Any) -> str:
    """JSON for a terminal: as ``json.dumps`` with the characters of :func:`shown` escaped too.

    ``json.dumps`` escapes C0 controls only; the others are written as they are with
    ``ensure_ascii=False``. They occur only inside strings, where ``\\uXXXX`` is the same value
    (a file name's surrogates load back as they were: ``os.fsencode`` gives its bytes).
    """
    return _JSON_UNSHOWABLE.sub(lambda m: f"\\u{ord(m.group()):04x}",
                                json.dumps(doc, ensure_ascii=False, indent=2))


@lru_cache(maxsize=1)
def _names_engine() -> Engine:
    return get_engine(frozenset(KINDS))


#: a name's values are masked at the confidence the scan reports at by default
_NAME_CONFIDENCE = 0.5


def masked_path(text: str) -> str:
    """``text`` (a path, an archive member's name) with every value the detectors find in it masked.

    A scan of ID cards saved as ``110105194912310021.jpg``, an export per resident named by
    mobile: the name is the value, and a report printing the path whole carries it, in a CI log
    or a mail, as no finding does. Masked as findings are (``110***********0021.jpg``): with
    the directory, the first and last characters find the file (``ls DIR/110*0021.jpg``).
    """
    data = text.encode("utf-8", "surrogateescape")
    hits = _names_engine().scan(data, 0, len(data), _NAME_CONFIDENCE)
    if not hits:
        return text
    out, at = bytearray(), 0
    for h in hits:  # in order
        if h.start < at:
            continue
        out += data[at:h.start] + h.masked.encode("utf-8")
        at = h.end
    out += data[at:]
    return out.decode("utf-8", "surrogateescape")


def path_shower(reveal_paths: bool) -> Callable[[str], str]:
    """How a report shows the paths it names: whole, or with their values masked (:func:`masked_path`)."""
    return (lambda t: t) if reveal_paths else masked_path


def render_table(report: ScanReport, console: Console, *, reveal_paths: bool = False) -> None:
    """Counts per source and kind with a few masked examples, then the issues.

    Values in file and member names are masked unless ``reveal_paths`` (:func:`masked_path`)."""
    path = path_shower(reveal_paths)
    table = Table(title="pivault scan: findings")
    table.add_column("source", overflow="fold")
    table.add_column("kind")
    table.add_column("count", justify="right")
    table.add_column("examples (masked)", overflow="fold")
    rows: dict[str, dict[str, int]] = defaultdict(dict)
    for (source, kind), n in report.counts.items():
        rows[source][kind] = n
    order = list(KINDS)
    for source in sorted(rows):
        first = True
        for kind in sorted(rows[source], key=order.index):
            examples = report.examples.get((source, kind), [])
            ex = shown(path("; ".join(_example(f, source) for f in examples)))
            table.add_row(Text(shown(path(source)) if first else ""), kind, str(rows[source][kind]), Text(ex))
            first = False
    if rows:
        console.print(table)
    elif report.issues:
        # not a clean result: what could not be read may hold anything
        console.print("No personal information or secrets found in what could be read; "
                      "see the inputs not scanned below.")
    elif not report.sources:
        console.print("Nothing was scanned: no file to read.")
    else:
        console.print("No personal information or secrets found.")
    if report.issues:
        it = Table(title="inputs not scanned, or scanned in part")
        it.add_column("source", overflow="fold")
        it.add_column("issue")
        it.add_column("what happened", overflow="fold")
        for i in report.issues:
            it.add_row(Text(shown(path(i.source))), i.code, Text(shown(path(i.message))))
        console.print(it)
    totals = report.totals()
    summary = ", ".join(f"{k} {totals[k]}" for k in KINDS if totals.get(k)) or "nothing found"
    console.print(
        f"{report.sources} source(s), {report.bytes_scanned / 1e6:.1f} MB in {report.elapsed:.1f}s; "
        f"{summary}; {len(report.issues)} issue(s)",
        markup=False,
    )


def _example(f: Finding, source: str) -> str:
    where = f.location
    if f.file and f.file != source and f.file.startswith(source):
        where = f.file[len(source) :] + (" " + where if where else "")
    return f"{f.masked} ({where})" if where else f.masked


def to_json(report: ScanReport, *, reveal_paths: bool = False) -> dict[str, Any]:
    """The report as JSON; values in file and member names masked unless ``reveal_paths``."""
    path = path_shower(reveal_paths)
    totals = report.totals()
    return {
        "tool": TOOL_NAME,
        "version": _version(),
        "summary": {
            "sources": report.sources,
            "bytes_scanned": report.bytes_scanned,
            "elapsed_seconds": round(report.elapsed, 3),
            "totals": dict(totals),
            "findings_listed": len(report.findings),
            "findings_not_listed": report.dropped,
            "issues": len(report.issues),
        },
        "counts": [{"source": path(s), "kind": k, "count": n} for (s, k), n in sorted(report.counts.items())],
        "findings": [{**f.to_dict(), "file": None if f.file is None else path(f.file)}
                     for f in report.findings],
        "issues": [{"source": path(i.source), "code": i.code, "message": path(i.message)}
                   for i in report.issues],
    }


def _artifact(f: Finding) -> str:
    if f.file is not None:
        return f.file.replace("\\", "/")
    return f"db/{f.table or 'table'}"


def to_sarif(report: ScanReport, *, reveal_paths: bool = False) -> dict[str, Any]:
    """SARIF 2.1.0: one rule per kind, one result per listed finding, issues as notifications
    (values in file and member names masked unless ``reveal_paths``)."""
    path = path_shower(reveal_paths)
    rules = [
        {
            "id": kind,
            "name": kind.title().replace("_", ""),
            "shortDescription": {"text": desc},
            "defaultConfiguration": {
                "level": "error" if kind not in PI_KINDS or kind in ("id_number", "bank_card") else "warning"
            },
            "properties": {"category": "personal-information" if kind in PI_KINDS else "secret"},
        }
        for kind, desc in KINDS.items()
    ]
    index = {k: i for i, k in enumerate(KINDS)}
    results = []
    for f in report.findings:
        region: dict[str, Any] = {}
        if f.line is not None:
            region["startLine"] = f.line
        if f.offset is not None and f.file is not None and f.table is None:
            region["byteOffset"] = f.offset
            if f.length:
                region["byteLength"] = f.length
        physical: dict[str, Any] = {"artifactLocation": {"uri": path(_artifact(f))}}
        if region:
            physical["region"] = region
        location: dict[str, Any] = {"physicalLocation": physical}
        logical = [n for n in (f.table, f.column) if n]
        if logical:
            location["logicalLocations"] = [{"fullyQualifiedName": ".".join(logical), "kind": "member"}]
        results.append(
            {
                "ruleId": f.kind,
                "ruleIndex": index[f.kind],
                "level": rules[index[f.kind]]["defaultConfiguration"]["level"],  # type: ignore[index]
                "message": {"text": f"{KINDS[f.kind]}: {f.masked}" + (f" ({f.detail})" if f.detail else "")},
                "locations": [location],
                "properties": {"confidence": round(f.confidence, 3)},
            }
        )
    notifications = [
        {
            "level": "warning",
            "message": {"text": f"{i.code}: {path(i.message)}"},
            "locations": [{"physicalLocation": {"artifactLocation": {
                "uri": path(i.source.replace("\\", "/"))}}}],
        }
        for i in report.issues
    ]
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": TOOL_NAME,
                        "version": _version(),
                        "informationUri": "https://pypi.org/project/pivault/",
                        "rules": rules,
                    }
                },
                "results": results,
                "invocations": [{"executionSuccessful": True, "toolExecutionNotifications": notifications}],
                "properties": {
                    "counts": {f"{path(s)}|{k}": n for (s, k), n in sorted(report.counts.items())},
                    "findingsNotListed": report.dropped,
                },
            }
        ],
    }
