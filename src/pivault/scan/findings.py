"""What a scan reports: findings (masked), issues, per-source counts, and the options."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

#: every kind the scanner detects, with its description
KINDS: dict[str, str] = {
    "id_number": "Resident ID number (GB 11643, 18 digits with check character, or 15-digit legacy)",
    "mobile": "Mainland mobile number (allocated prefix)",
    "bank_card": "Bank card number (issuer prefix and Luhn check)",
    "passport": "Passport number (with context)",
    "travel_permit": "Hong Kong/Macau/Taiwan travel permit number (with context)",
    "email": "E-mail address",
    "name": "Chinese personal name (surname and context)",
    "address": "Postal address (division names and road/number)",
    "cloud_key": "Cloud access key id (Alibaba Cloud, AWS, Tencent Cloud, Volcengine, Google)",
    "api_token": "API token (GitHub, GitLab, Slack, Stripe)",
    "private_key": "Private key (PEM)",
    "jwt": "JSON Web Token",
    "password": "Password or secret in a connection string or config file",
}
PI_KINDS = frozenset(
    {"id_number", "mobile", "bank_card", "passport", "travel_permit", "email", "name", "address"}
)
SECRET_KINDS = frozenset({"cloud_key", "api_token", "private_key", "jwt", "password"})
#: the validated detectors (checksums, allocated prefixes, formats): the fast set
VALIDATED_KINDS = frozenset(
    {"id_number", "mobile", "bank_card", "cloud_key", "api_token", "private_key", "jwt", "password"}
)


@dataclass(slots=True)
class Finding:
    """One detected value. ``masked`` never holds the whole value."""

    kind: str
    masked: str
    confidence: float
    #: the file (archive members as ``archive.zip!member.csv``), or None for a database
    file: str | None = None
    #: database table, or the worksheet of a spreadsheet
    table: str | None = None
    #: CSV/database/spreadsheet column, or the key a value was assigned to (``phone=…``, ``"mobile": …``)
    column: str | None = None
    #: 1-based line in a text file, or 1-based row in a table
    line: int | None = None
    #: byte offset of the value in the file's UTF-8 text (the file's own bytes for UTF-8 files)
    offset: int | None = None
    length: int | None = None
    #: what the validation found: the card scheme, the key's provider, "legacy 15-digit" …
    detail: str = ""

    @property
    def source(self) -> str:
        return self.file if self.file is not None else (self.table or "")

    @property
    def location(self) -> str:
        parts = []
        if self.table and self.file is not None:
            parts.append(self.table)
        if self.line is not None:
            parts.append(f"{'row' if self.file is None or self.table else 'line'} {self.line}")
        if self.column:
            parts.append(f"[{self.column}]")
        return " ".join(parts)

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "masked": self.masked,
            "confidence": round(self.confidence, 3),
            "file": self.file,
            "table": self.table,
            "column": self.column,
            "line": self.line,
            "offset": self.offset,
            "length": self.length,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class ScanIssue:
    """An input the scan could not read, or read only in part, and why."""

    source: str
    #: ``unreadable``, ``not_regular``, ``binary``, ``encoding``, ``corrupt``, ``zip_bomb``, ``too_deep``,
    #: ``symlink_loop``, ``symlink_outside``, ``database``
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"source": self.source, "code": self.code, "message": self.message}


@dataclass(slots=True)
class SourceResult:
    """Everything one input (a file with its archive members, or a table) produced."""

    source: str
    bytes_scanned: int = 0
    findings: list[Finding] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    issues: list[ScanIssue] = field(default_factory=list)
    #: findings counted but not kept because the per-source cap was reached
    dropped: int = 0


@dataclass(slots=True)
class ScanOptions:
    """How to scan. The defaults suit a sweep of a file server."""

    #: kinds to detect (default: all of :data:`KINDS`)
    kinds: frozenset[str] = frozenset(KINDS)
    #: findings below this confidence are not reported
    min_confidence: float = 0.5
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    #: skip what ``.gitignore`` files ignore
    gitignore: bool = False
    follow_symlinks: bool = True
    #: worker processes for files (default: every core)
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    #: archives inside archives deeper than this are reported, not opened
    max_depth: int = 4
    #: decompressed/compressed ratio above which an archive is treated as a bomb
    max_ratio: float = 200.0
    #: decompressed bytes any one top-level file may expand to
    max_expanded: int = 64 * 1024**3
    #: findings kept per source (all are counted)
    max_findings_per_source: int = 1000
    #: SQLite files met in a path sweep: read every row, or a sample of this many rows per table
    db_full: bool = False
    db_sample: int = 1000
    #: read size of the streaming scanner
    chunk_size: int = 4 * 1024 * 1024
    #: ``auto`` (hyperscan when installed), ``hyperscan`` or ``re``
    engine: str = "auto"

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown kinds: {', '.join(sorted(unknown))}; known: {', '.join(KINDS)}")
        self.kinds = frozenset(self.kinds)


@dataclass(slots=True)
class ScanReport:
    """Findings (up to the per-source cap), complete counts, issues, and what was read."""

    findings: list[Finding] = field(default_factory=list)
    issues: list[ScanIssue] = field(default_factory=list)
    #: (source, kind) -> number of findings, including those past the cap
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    sources: int = 0
    bytes_scanned: int = 0
    elapsed: float = 0.0
    dropped: int = 0
    #: (source, kind) -> the first few findings, for summaries
    examples: dict[tuple[str, str], list[Finding]] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Finding]:
        return iter(self.findings)

    def __len__(self) -> int:
        return len(self.findings)

    def add(self, result: SourceResult) -> None:
        self.sources += 1
        self.bytes_scanned += result.bytes_scanned
        self.findings.extend(result.findings)
        for f in result.findings:
            ex = self.examples.setdefault((result.source, f.kind), [])
            if len(ex) < 3:
                ex.append(f)
        self.issues.extend(result.issues)
        self.dropped += result.dropped
        for kind, n in result.counts.items():
            self.counts[(result.source, kind)] += n

    def merge(self, other: ScanReport) -> None:
        """Add another report's findings, counts and issues to this one."""
        self.findings.extend(other.findings)
        self.issues.extend(other.issues)
        self.counts.update(other.counts)
        for k, v in other.examples.items():
            self.examples.setdefault(k, v)
        self.sources += other.sources
        self.bytes_scanned += other.bytes_scanned
        self.elapsed += other.elapsed
        self.dropped += other.dropped

    def totals(self) -> Counter[str]:
        """Findings per kind over every source."""
        out: Counter[str] = Counter()
        for (_, kind), n in self.counts.items():
            out[kind] += n
        return out

    def exceeded(self, limits: dict[str, int]) -> list[tuple[str, int, int]]:
        """``(kind, count, limit)`` for each kind whose count is above its limit.

        The kind ``any`` (or ``*``) counts every finding; ``unread`` counts the issues of inputs
        left unread or read in part (:data:`UNREAD_CODES`): a gate that passes a share where
        someone put the copy in a password-protected zip is no gate."""
        totals = self.totals()
        out = []
        for kind, limit in limits.items():
            if kind == UNREAD:
                n = sum(1 for i in self.issues if i.code in UNREAD_CODES)
            else:
                n = sum(totals.values()) if kind in ("*", "any", "all") else totals.get(kind, 0)
            if n > limit:
                out.append((kind, n, limit))
        return out


#: the ``--fail-on`` pseudo-kind counting inputs inside a directory or database left unread
UNREAD = "unread"

#: issue codes of an input whose content was not read, or only in part, though it may hold text: an
#: encrypted or damaged archive member, a bomb, a nesting too deep, an unknown encoding, a table or
#: a file that failed. Not ``binary`` (images and the like are no text to read), ``not_regular``
#: (pipes, devices) nor ``symlink_outside`` (left out on purpose).
UNREAD_CODES = frozenset({"unreadable", "encoding", "corrupt", "zip_bomb", "too_deep", "symlink_loop",
                          "database", "error"})


def parse_fail_on(specs: list[str] | tuple[str, ...]) -> dict[str, int]:
    """``["id_number:0", "mobile:10"]`` -> ``{"id_number": 0, "mobile": 10}``."""
    out: dict[str, int] = {}
    for spec in specs:
        kind, sep, count = spec.partition(":")
        kind = kind.strip()
        if kind not in KINDS and kind not in ("*", "any", "all", UNREAD):
            raise ValueError(f"--fail-on: unknown kind {kind!r}; known: {', '.join(KINDS)}, any, {UNREAD}")
        try:
            out[kind] = int(count) if sep else 0
        except ValueError:
            raise ValueError(f"--fail-on {spec!r}: the count must be an integer") from None
        if out[kind] < 0:
            raise ValueError(f"--fail-on {spec!r}: the count must not be negative")
    return out
