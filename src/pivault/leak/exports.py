"""Approved, traceable exports: the only way PI leaves the vault in bulk.

An export is requested by one principal (selection, recipient, purpose,
fields), approved by a second principal holding an approver role (two-person
rule: nobody approves their own request, nor with a token they issued), and
only then fetched. Fetching is a door operation: authorise → budget → audit
(with every record id) → decrypt → mask (with ``reveal``: the policy decides
which fields may leave in full) → write CSV, JSONL or Parquet, to a new file
of mode 0600.

The request counts its selection and keeps the records it holds (encrypted):
the approver sees that count and approves that set, and the fetch hands out
no record outside it. An approval is fetched within a window, a request
decided within another (:class:`ExportSettings`, ``[export]`` in pivault.toml).

Every file carries canary residents unique to that export: fictitious people
assembled from pieces of different real rows of the export
(:mod:`pivault.leak.canaries`), so no rule on the file tells them apart, mixed
in at random positions among the real rows in random order, at a rate such that any sample of 200
rows of the file holds at least one canary with probability >= 1 - 10^-6
(:func:`canaries_needed`; the calculation is in docs/leak.md). The canaries and
the export's record ids are stored encrypted under the vault's keyring; when
a dump surfaces, :mod:`pivault.leak.check` finds the canaries by exact value
and measures how well the dump fits inside each export's record set.

No step holds an export's whole set, whatever its size: the request stores its selection a
chunk at a time as it runs, the approval counts it a chunk at a time, and the fetch writes its
rows part after part of a random order that waits in the store, encrypted (:class:`_Plan` says
why the file's order is still uniformly random). What is in memory is bounded by the sizes of
those chunks and parts, never by the number of records.

A fetch killed part-way (``kill -9``, a machine lost) leaves its temporary file, PI in
full, and the export ``fetching``: :func:`recover` (and the export's next fetch) tells a
dead fetch from a running one by the locks the fetch held for its life, removes the file,
and undoes the fetch in the trail, so that the export is fetched once, again.

An export that a copy could not be traced back to is refused
(:func:`untraceable`): it carries the ID number, or two of name, mobile and
address. For the latter, the digests of each real row's pairs of exact values
are kept with its record ids, so that a copied row is confirmed as its
resident though names and addresses have no blind index.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import secrets
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pivault.errors import NotFoundError, PivaultError, ValidationError
from pivault.leak.canaries import Blender
from pivault.leak.columns import address_key, fast_mobile, fast_name, spreadsheet_safe
from pivault.model import is_record_id
from pivault.model import resident_id as _rid
from pivault.policy.context import AccessContext
from pivault.store.db import Database
from pivault.store.migrations import Migration, register

if TYPE_CHECKING:
    from pivault.vault import Vault

__all__ = [
    "APPROVER_ROLES",
    "EXPORT_FIELDS",
    "PAIR_FIELDS",
    "RECOVER_ROLES",
    "ROW_KEYS",
    "ExportError",
    "ExportInfo",
    "ExportRegistry",
    "ExportSettings",
    "Recovery",
    "Selection",
    "approve",
    "canaries_needed",
    "canary_values",
    "fetch",
    "get_export",
    "list_exports",
    "load_registry",
    "miss_probability",
    "recover",
    "refuse",
    "request",
    "row_key",
    "untraceable",
    "when",
]

#: roles that may approve another principal's export request
APPROVER_ROLES: frozenset[str] = frozenset({"approver", "dpo"})
#: roles that may recover any export's interrupted fetch (a requester recovers their own)
RECOVER_ROLES: frozenset[str] = frozenset({"dpo", "operator"})
#: what an export may carry: the PI fields and what derives from the ID number
EXPORT_FIELDS: tuple[str, ...] = ("name", "id_number", "mobile", "address", "notes",
                                  "gender", "birth_date", "region_code")
#: fields of which any two find a canary, and confirm an exported resident, by exact value
PAIR_FIELDS: tuple[str, ...] = ("name", "mobile", "address")
#: any leaked sample of at least this many rows holds a canary ...
SAMPLE_ROWS = 200
#: ... except with at most this probability
MISS_PROBABILITY = 1e-6
#: canaries in even the smallest export: several, so one can be lost in a sample
MIN_CANARIES = 3
FORMATS = ("csv", "jsonl", "parquet")
#: records decrypted at a time
_CHUNK = 5000
#: rows of the export whose pieces canaries are made of (a uniform sample)
_MODELS = 1000
# No step of an export holds its whole set: what the sizes below bound is what is in memory.
#: record ids per stored chunk of a request's set, of an export's members and of its row keys
_MEMBER_CHUNK = 10000
#: a fetch's random order: the mean number of record ids in one of its parts (one part is in
#: memory at a time: see _Plan)
_PART_IDS = 1 << 15
#: record ids a fetch's first pass holds, over all parts, before it stores them; and the fewest
#: it stores in one chunk
_STAGE_IDS = 1 << 17
_MIN_STAGE = 64
#: record ids per ``export`` audit entry
_AUDIT_IDS = 10000
#: canaries per stored chunk
_CANARY_CHUNK = 2000
#: stored chunks read per query
_PAGE = 8
#: records read per query when a request runs its selection over every record
_SCAN_PAGE = 2000
#: the filter of canary values taken: bits per value, and its largest size (32 MiB)
_SEEN_BITS = 16
_SEEN_MAX_BITS = 1 << 28
_MASK64 = (1 << 64) - 1
#: the PostgreSQL advisory lock that queues the registration of export canaries
_CANARY_LOCK = 0x70766361
#: the class of the PostgreSQL advisory locks (two-key form, the second key the export's) that a
#: fetch holds for its session's life: whoever can take one knows no live session fetches that export
_FETCH_LOCK = 0x70766674
#: a fetch's temporary file: hidden, beside the output, named after it and after the attempt
_PART = re.compile(r"\.(?P<name>.+)\.(?P<token>[0-9a-f]{16})\.part")
#: how an attempt to fetch is named in the audit trail, beside its export
_ATTEMPT = "xf_"
_EXPORT_ID = re.compile(r"x_[0-9a-f]{16}")
#: days an approved export may wait for its fetch, and a request for its decision, by default
FETCH_WITHIN_DAYS = 7.0
APPROVE_WITHIN_DAYS = 30.0
_DAY = 86400.0
#: what a fetch writes to export_members (an approval and a request's set are kept when it fails)
_FETCH_KINDS = ("canaries", "members", "rowkeys")

log = logging.getLogger(__name__)


class ExportError(PivaultError):
    code = "export.error"


@dataclass(frozen=True)
class ExportSettings:
    """How long an export's steps may wait (``[export]`` in pivault.toml).

    An approval is given for the records the selection held when it was
    requested; the longer it waits, the more of them have moved, been
    corrected or erased, and the longer a forgotten approval stays a way out.
    So an approval lapses ``fetch_within_days`` after it was given, and a
    request nobody decided on lapses ``approve_within_days`` after it was made.
    Each deadline is fixed when its step happens: changing the setting later
    does not extend an approval already given.
    """

    fetch_within_days: float = FETCH_WITHIN_DAYS
    approve_within_days: float = APPROVE_WITHIN_DAYS

    def __post_init__(self) -> None:
        for name in ("fetch_within_days", "approve_within_days"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValidationError("export.settings", f"[export] {name} must be a positive, finite "
                                                         "number of days")

    @classmethod
    def of(cls, vault: Vault) -> ExportSettings:
        """The vault's settings: its pivault.toml's ``[export]``, or the defaults (library use)."""
        config = getattr(vault, "config", None)
        table = dict(config.export) if config is not None else {}
        return cls(**{k: float(v) for k, v in table.items()})


# ---------------------------------------------------------------- schema

_SQLITE = """
CREATE TABLE exports (
    export_id TEXT NOT NULL PRIMARY KEY,
    status TEXT NOT NULL,
    requested_at DOUBLE PRECISION NOT NULL,
    requester TEXT NOT NULL,
    requester_role TEXT NOT NULL,
    recipient TEXT NOT NULL,
    purpose TEXT NOT NULL,
    fields TEXT NOT NULL,
    selection BLOB NOT NULL,
    approver TEXT,
    decided_at DOUBLE PRECISION,
    fetched_by TEXT,
    fetched_at DOUBLE PRECISION,
    format TEXT,
    rows INTEGER,
    canaries INTEGER);
CREATE TABLE export_members (
    export_id TEXT NOT NULL,
    chunk INTEGER NOT NULL,
    kind TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (export_id, kind, chunk))
"""
register(Migration("exports", 1, "export requests, approvals, encrypted members and canaries",
                   _SQLITE, _SQLITE.replace("BLOB", "BYTEA")))

# leak cases: a summary without PI, and the affected record ids encrypted
_CASES = """
CREATE TABLE leak_cases (
    case_id TEXT NOT NULL PRIMARY KEY,
    detected_at DOUBLE PRECISION NOT NULL,
    created_by TEXT NOT NULL,
    summary TEXT NOT NULL);
CREATE TABLE leak_case_members (
    case_id TEXT NOT NULL,
    chunk INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (case_id, chunk))
"""
register(Migration("exports", 2, "leak cases and their affected residents (encrypted)",
                   _CASES, _CASES.replace("BLOB", "BYTEA")))

# what the approver sees and when a step lapses: the records the selection held when requested
# (canary residents not counted), the deadline of the step awaited, and the records of the
# approved set that had left the selection when it was fetched
_COUNTS = """
ALTER TABLE exports ADD COLUMN selected INTEGER;
ALTER TABLE exports ADD COLUMN expires_at DOUBLE PRECISION;
ALTER TABLE exports ADD COLUMN left_out INTEGER
"""
register(Migration("exports", 3, "an export's counted selection, its deadline, and the records left out",
                   _COUNTS, _COUNTS))

# what recovers a fetch whose process was killed (kill -9, power lost): the temporary file it was
# writing (a path, not PI), on which host, recorded with the status 'fetching' in one transaction
_RECOVERY = """
ALTER TABLE exports ADD COLUMN fetch_part TEXT;
ALTER TABLE exports ADD COLUMN fetch_host TEXT
"""
register(Migration("exports", 4, "where an export's fetch writes its temporary file, for recovery",
                   _RECOVERY, _RECOVERY))


# ---------------------------------------------------------------- the canary rate


def miss_probability(real_rows: int, canaries: int, sample: int = SAMPLE_ROWS) -> float:
    """P(a uniform sample of ``sample`` rows of the file holds no canary).

    Hypergeometric: the file has ``real_rows + canaries`` rows; the sample is
    drawn without replacement, so P0 = prod_{i<s} (m - i) / (m + k - i).
    A file smaller than the sample is all sample: P0 = 0 when it has a canary.
    """
    if canaries <= 0:
        return 1.0
    if real_rows < sample:
        return 0.0
    log_p = 0.0
    for i in range(sample):
        log_p += math.log((real_rows - i) / (real_rows + canaries - i))
    return math.exp(log_p)


def canaries_needed(real_rows: int, *, sample: int = SAMPLE_ROWS, miss: float = MISS_PROBABILITY,
                    minimum: int = MIN_CANARIES) -> int:
    """The fewest canaries that keep :func:`miss_probability` at or below ``miss``.

    For large exports this tends to ``(1 - miss**(1/sample)) / miss**(1/sample)``
    canaries per real row (~7.15 % of the real rows, 6.67 % of the file);
    sampling without replacement makes smaller exports need slightly fewer.
    """
    lo, hi = minimum, max(minimum, real_rows)
    if miss_probability(real_rows, lo, sample) <= miss:
        return lo
    while miss_probability(real_rows, hi, sample) > miss:
        hi *= 2
    while lo < hi:
        mid = (lo + hi) // 2
        if miss_probability(real_rows, mid, sample) <= miss:
            hi = mid
        else:
            lo = mid + 1
    return lo


# ---------------------------------------------------------------- selections


@dataclass(frozen=True)
class Selection:
    """Which records an export holds: regions, a birth-date range, or record ids.

    ``regions`` are division-code prefixes (``31`` Shanghai, ``310115`` one
    district); criteria combine with AND. An empty selection is refused.
    """

    regions: tuple[str, ...] = ()
    born_from: _dt.date | None = None
    born_to: _dt.date | None = None
    record_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for r in self.regions:
            if not re.fullmatch(r"[0-9]{2}(?:[0-9]{2}){0,2}", r):
                raise ValidationError("export.selection", "a region is a 2, 4 or 6 digit division code")
        for rid in self.record_ids:
            if not is_record_id(rid):
                raise ValidationError("export.selection", "the selection holds a malformed record id")
        if self.born_from and self.born_to and self.born_from > self.born_to:
            raise ValidationError("export.selection", "the birth-date range is empty")

    @property
    def empty(self) -> bool:
        return not (self.regions or self.born_from or self.born_to or self.record_ids)

    def to_json(self) -> dict[str, Any]:
        return {"regions": list(self.regions),
                "born_from": self.born_from.isoformat() if self.born_from else None,
                "born_to": self.born_to.isoformat() if self.born_to else None,
                "record_ids": list(self.record_ids)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Selection:
        return cls(tuple(obj.get("regions") or ()),
                   _dt.date.fromisoformat(obj["born_from"]) if obj.get("born_from") else None,
                   _dt.date.fromisoformat(obj["born_to"]) if obj.get("born_to") else None,
                   tuple(obj.get("record_ids") or ()))

    @classmethod
    def parse(cls, terms: Iterable[str]) -> Selection:
        """From command-line terms: ``region=31,3201``, ``born=1980-01-01..1989-12-31``,
        ``ids=r_…,r_…`` or ``ids=@FILE`` (one record id a line)."""
        regions: list[str] = []
        ids: list[str] = []
        born_from = born_to = None
        for term in terms:
            key, sep, value = term.partition("=")
            key = key.strip().lower()
            if not sep:
                raise ValidationError("export.selection", "a selection term is KEY=VALUE")
            if key in ("region", "regions"):
                regions.extend(v.strip() for v in value.split(",") if v.strip())
            elif key in ("born", "birth", "birth_date"):
                lo, _, hi = value.partition("..")
                try:
                    born_from = _dt.date.fromisoformat(lo) if lo else None
                    born_to = _dt.date.fromisoformat(hi) if hi else None
                except ValueError:
                    raise ValidationError("export.selection",
                                          "a birth-date range is YYYY-MM-DD..YYYY-MM-DD") from None
            elif key in ("ids", "record_ids"):
                if value.startswith("@"):
                    text = Path(value[1:]).read_text(encoding="utf-8")
                    ids.extend(x.strip() for x in text.split() if x.strip())
                else:
                    ids.extend(v.strip() for v in value.split(",") if v.strip())
            else:
                raise ValidationError("export.selection", "selection keys are region, born and ids")
        return cls(tuple(regions), born_from, born_to, tuple(ids))

    def admits(self, id_number: str) -> bool:
        if self.regions and not any(id_number.startswith(r) for r in self.regions):
            return False
        if self.born_from or self.born_to:
            born = _rid.facts(id_number).birth_date
            if self.born_from and born < self.born_from:
                return False
            if self.born_to and born > self.born_to:
                return False
        return True


# ---------------------------------------------------------------- records of an export


@dataclass
class ExportInfo:
    """An export's row: who asked, who approved, what went where (no PI)."""

    export_id: str
    status: str
    requested_at: float
    requester: str
    requester_role: str
    recipient: str
    purpose: str
    fields: tuple[str, ...]
    approver: str | None = None
    decided_at: float | None = None
    fetched_by: str | None = None
    fetched_at: float | None = None
    format: str | None = None
    rows: int | None = None
    canaries: int | None = None
    #: records the selection held when requested (canary residents not counted): what the
    #: approver approves; None for a request made before requests were counted
    selected: int | None = None
    #: when the step awaited lapses: the decision of a request, the fetch of an approval
    expires_at: float | None = None
    #: records of the approved set the fetch left out: erased, or corrected out of the selection
    left_out: int | None = None
    #: while a fetch runs, or after one was killed: its temporary file (a path; no PI in it, but
    #: never logged) and the host it ran on (see :func:`recover`)
    fetch_part: str | None = None
    fetch_host: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


_COLS = ("export_id, status, requested_at, requester, requester_role, recipient, purpose, fields,"
         " approver, decided_at, fetched_by, fetched_at, format, rows, canaries, selected, expires_at,"
         " left_out, fetch_part, fetch_host")


def _num(v: Any, kind: type[int] | type[float]) -> Any:
    return None if v is None else kind(v)


def _info(row: Sequence[Any]) -> ExportInfo:
    """An export's row; a request or approval past its deadline reads as ``expired``."""
    info = ExportInfo(row[0], row[1], float(row[2]), row[3], row[4], row[5], row[6],
                      tuple(json.loads(row[7])), row[8], _num(row[9], float), row[10],
                      _num(row[11], float), row[12], _num(row[13], int), _num(row[14], int),
                      _num(row[15], int), _num(row[16], float), _num(row[17], int), row[18], row[19])
    if info.status in ("requested", "approved") and info.expires_at is not None \
            and time.time() > info.expires_at:
        info.status = "expired"
    return info


def get_export(db: Database, export_id: str) -> ExportInfo:
    row = db.query_one(f"SELECT {_COLS} FROM exports WHERE export_id = ?", (export_id,))
    if row is None:
        raise NotFoundError("no export with this id", code="export.not_found")
    return _info(row)


def list_exports(db: Database) -> list[ExportInfo]:
    if not db.table_exists("exports"):
        return []
    return [_info(r) for r in db.query(f"SELECT {_COLS} FROM exports ORDER BY requested_at, export_id")]


def _aad_id(export_id: str) -> str:
    return f"export:{export_id}"


def _put_blobs(vault: Vault, export_id: str, kind: str, payloads: Iterable[bytes]) -> None:
    for i, p in enumerate(payloads):
        _put_blob(vault, export_id, kind, i, p)


def _put_blob(vault: Vault, export_id: str, kind: str, chunk: int, payload: bytes) -> None:
    """One chunk of an export's members, encrypted and bound to the export, its kind and its number."""
    vault.db.execute("INSERT INTO export_members (export_id, chunk, kind, data) VALUES (?, ?, ?, ?)",
                     (export_id, chunk, kind, vault.keyring.encrypt(_aad_id(export_id), f"{kind}.{chunk}",
                                                                    payload)))


def _blob_rows(db: Database, export_id: str, kind: str) -> Iterator[tuple[int, bytes]]:
    """The stored chunks of one kind, in order, a few at a time: a kind may hold millions of ids."""
    last: int | None = None
    while True:
        after = "" if last is None else " AND chunk > ?"
        rows = db.query("SELECT chunk, data FROM export_members WHERE export_id = ? AND kind = ?" + after
                        + f" ORDER BY chunk LIMIT {_PAGE}",
                        (export_id, kind) + (() if last is None else (last,)))
        for chunk, data in rows:
            yield int(chunk), bytes(data)
        if len(rows) < _PAGE:
            return
        last = int(rows[-1][0])


def _get_blobs(db: Database, keyring: Any, export_id: str, kind: str) -> Iterator[bytes]:
    for chunk, data in _blob_rows(db, export_id, kind):
        yield keyring.decrypt(_aad_id(export_id), f"{kind}.{chunk}", data)


def _id_chunks(db: Database, keyring: Any, export_id: str, kind: str) -> Iterator[tuple[int, list[str]]]:
    """Each stored chunk of record ids of one kind, with its number: one chunk in memory at a time."""
    for chunk, data in _blob_rows(db, export_id, kind):
        text = keyring.decrypt(_aad_id(export_id), f"{kind}.{chunk}", data).decode("ascii")
        yield chunk, [r for r in text.split("\n") if r]


def _chunked(items: Iterable[str], size: int) -> Iterator[list[str]]:
    part: list[str] = []
    for x in items:
        part.append(x)
        if len(part) >= size:
            yield part
            part = []
    if part:
        yield part


def _audit(vault: Vault, ctx: AccessContext, operation: str, ids: Sequence[str], outcome: str) -> None:
    vault.guard.audit(ctx, operation, ids, outcome)


def _authorise(vault: Vault, ctx: AccessContext, fields: Sequence[str]) -> None:
    """The door's first step for an export: the guard decides; a refusal is audited."""
    from pivault.vault.guard import AccessDenied

    try:
        vault.guard.authorise(ctx, "export", fields)
    except AccessDenied:
        _audit(vault, ctx, "export", (), "denied")
        raise


def _budget(vault: Vault, ctx: AccessContext, n: int) -> None:
    from pivault.vault.guard import AccessDenied

    try:
        vault.guard.budget(ctx, "export", n)
    except AccessDenied:
        _audit(vault, ctx, "export", (), "denied")
        raise


# ---------------------------------------------------------------- request / approve


def untraceable(fields: Iterable[str]) -> str | None:
    """Why a copy of an export of ``fields`` could not be traced back to it (None: it could).

    A copy is traced by its canaries, found where two of their exact values agree (or
    by the ID number alone, beyond its chance count), and its rows are counted as
    residents where two keys point at one. So an export carries ``id_number``, or two of
    name, mobile and address. A name with a birth date is not enough: it is one canary
    key and one blind index, and a row of one mobile or one address is no more.
    """
    have = set(fields)
    if "id_number" in have:
        return None
    pair = [f for f in PAIR_FIELDS if f in have]
    if len(pair) >= 2:
        return None
    missing = [f for f in PAIR_FIELDS if f not in have]
    add = " or ".join(missing) if pair else "two of " + ", ".join(missing)
    return ("a copy of this export could not be traced: an export carries id_number, or two of "
            f"name, mobile and address (add id_number, or add {add})")


def request(vault: Vault, selection: Selection, *, recipient: str, purpose: str,
            fields: Sequence[str], ctx: AccessContext, settings: ExportSettings | None = None) -> ExportInfo:
    """Record an export request; nothing leaves until another principal approves it.

    The selection is run now, and the records it holds are kept with the request
    (encrypted) and counted (canary residents left out, as ``stats`` leaves them
    out): that count is what the approver sees, and that set is what an approval
    covers. A resident added to the selection later, or corrected into it, was
    never shown to the approver and is not exported. A selection that holds
    nobody is refused (``export.empty``).
    """
    flds = tuple(dict.fromkeys(f.strip() for f in fields if f.strip()))
    bad = [f for f in flds if f not in EXPORT_FIELDS]
    if bad or not flds:
        raise ValidationError("export.fields", "export fields are: " + ", ".join(EXPORT_FIELDS))
    why = untraceable(flds)
    if why:
        raise ValidationError("export.untraceable", why)
    if selection.empty:
        raise ValidationError("export.selection", "an export needs a selection (region, born or ids)")
    if not recipient.strip() or not purpose.strip():
        raise ValidationError("export.request", "an export names its recipient and its purpose")
    pi = [f for f in flds if f in ("name", "id_number", "mobile", "address", "notes")] or ["id_number"]
    _authorise(vault, ctx, pi)
    window = (settings or ExportSettings.of(vault)).approve_within_days
    export_id = "x_" + secrets.token_hex(8)
    # the selection goes to the store a chunk at a time as it is run (never whole in memory), under
    # the export's id, before the row that names it: a request that fails takes its chunks back
    held = shown = 0
    try:
        for n, ids in enumerate(_chunked(_selected(vault, selection), _MEMBER_CHUNK)):
            _put_blob(vault, export_id, "selected", n, "\n".join(ids).encode("ascii"))
            held += len(ids)
            shown += _shown(vault, ids)
        if not held:
            raise ExportError("the selection holds no records", code="export.empty",
                              hint="check the region codes, birth dates or record ids of --selection")
        sel = vault.keyring.encrypt(_aad_id(export_id), "selection",
                                    json.dumps(selection.to_json()).encode("utf-8"))
        now = time.time()
        with vault.db.transaction():
            # the export's id is the entry's subject: the trail, not the editable exports table,
            # says who asked for, decided on and fetched which export
            _audit(vault, ctx, "export.request", (export_id,), "ok")
            vault.db.execute(
                "INSERT INTO exports (export_id, status, requested_at, requester, requester_role, recipient,"
                " purpose, fields, selection, selected, expires_at) VALUES (?, 'requested', ?, ?, ?, ?, ?, ?,"
                " ?, ?, ?)",
                (export_id, now, ctx.principal, ctx.role, recipient.strip(), purpose.strip(),
                 json.dumps(list(flds)), sel, shown, now + window * _DAY))
    except BaseException:
        _drop(vault, export_id, "selected")
        raise
    return get_export(vault.db, export_id)


def _drop(vault: Vault, export_id: str, pattern: str) -> None:
    """Remove an export's chunks whose kind matches ``pattern`` (SQL ``LIKE``), when what wrote them
    failed. Tried once: the store may be what failed; what is left is ciphertext of record ids."""
    try:
        vault.db.execute("DELETE FROM export_members WHERE export_id = ? AND kind LIKE ?",
                         (export_id, pattern))
    except Exception as exc:
        log.warning("export %s: chunks of a step that failed could not be removed (%s)", export_id,
                    type(exc).__name__)


def _shown(vault: Vault, ids: Sequence[str]) -> int:
    """How many of ``ids`` a user is told of: canary residents are left out of every count shown."""
    from pivault.detect.canary import CanaryRegistry

    if not vault.db.table_exists("canary_registry"):
        return len(ids)
    return len(ids) - len(CanaryRegistry(vault.db, vault.keyring).which(ids))


def _minted_by(vault: Vault, ctx: AccessContext) -> str | None:
    """Who issued the caller's token (``created_by``), or None for a caller without one.

    Whoever can issue tokens can issue one for a made-up approver; comparing the
    issuer with the requester keeps one person from approving through such a token.
    """
    if ctx.token_id is None:
        return None
    from pivault.policy.tokens import TokenStore

    row = TokenStore(vault.db).get(ctx.token_id)
    return row.created_by if row is not None and row.created_by else None


#: what an approval holds besides the row's terms: when it was given, when it lapses, and how
#: many records of the request's set it covers (all of them, canary residents included)
_GRANT = ("approved_at", "expires_at", "records")


def _terms(db: Database, info: ExportInfo, approver: str) -> dict[str, Any]:
    """What an approver agrees to: the export's requester, recipient, purpose, fields and
    selection, and who approved.

    Stored encrypted with the approval (beside :data:`_GRANT`) and compared at fetch: the
    exports table is plain, and an edit to it (more fields, another recipient, a request
    marked approved by hand, a later deadline) must not pass for the second person's decision.
    """
    row = db.query_one("SELECT selection FROM exports WHERE export_id = ?", (info.export_id,))
    assert row is not None
    return {"requester": info.requester, "recipient": info.recipient, "purpose": info.purpose,
            "fields": list(info.fields), "approver": approver,
            "selection": hashlib.sha256(bytes(row[0])).hexdigest()}


def _encode(terms: dict[str, Any]) -> bytes:
    return json.dumps(terms, sort_keys=True).encode("utf-8")


def _approved_as_stored(vault: Vault, info: ExportInfo) -> dict[str, Any] | None:
    """The approval, if the export's row still holds the terms its approver agreed to.

    An approval given before approvals held their deadline and count comes back
    without :data:`_GRANT`: the caller refuses it (``export.stale``).
    """
    if info.approver is None:
        return None
    try:
        stored = list(_get_blobs(vault.db, vault.keyring, info.export_id, "approval"))
    except PivaultError:  # a ciphertext changed or moved from another export
        return None
    if len(stored) != 1:
        return None
    try:
        grant = json.loads(stored[0])
    except ValueError:
        return None
    if not isinstance(grant, dict):
        return None
    terms = {k: v for k, v in grant.items() if k not in _GRANT}
    if not secrets.compare_digest(_encode(terms), _encode(_terms(vault.db, info, info.approver))):
        return None
    return grant


def _decide(vault: Vault, export_id: str, ctx: AccessContext, status: str,
            settings: ExportSettings | None = None, max_records: int | None = None) -> ExportInfo:
    info = get_export(vault.db, export_id)
    op = "export.approve" if status == "approved" else "export.refuse"

    def refused(message: str, *, code: str, hint: str | None = None) -> ExportError:
        return _refused(vault, ctx, op, export_id, message, code=code, hint=hint)

    def expired() -> ExportError:
        return refused(f"the export was not decided by {when(info.expires_at)} and has expired",
                       code="export.expired", hint="the requester may request it again")

    if ctx.role not in APPROVER_ROLES:
        raise refused(f"only a principal with an approver role ({', '.join(sorted(APPROVER_ROLES))})"
                      " may decide on an export", code="export.not_approver")
    if ctx.principal == info.requester:
        raise refused("the requester cannot decide on their own export (two-person rule)",
                      code="export.two_person")
    if _minted_by(vault, ctx) == info.requester:
        # a token the requester issued is the requester's second hand, not a second person
        raise refused("this token was issued by the export's requester, who cannot decide on their "
                      "own export (two-person rule)", code="export.two_person",
                      hint="the approver's token must come from someone other than the requester")
    if info.status == "expired":
        raise expired()
    if info.status != "requested":
        raise refused(f"the export is {info.status}, not awaiting a decision", code="export.state")
    grant: dict[str, Any] = {}
    shown = info.selected
    if status == "approved":
        # counted again from the set itself, a chunk at a time: the count in the plain table may
        # have been edited
        records = shown = 0
        try:
            for _, ids in _id_chunks(vault.db, vault.keyring, export_id, "selected"):
                records += len(ids)
                shown += _shown(vault, ids)
        except PivaultError:  # a ciphertext changed or moved from another export
            records = 0
        if not records:
            raise refused("the request holds no counted selection (requested before requests were "
                          "counted, or its records were removed)", code="export.stale",
                          hint="the requester may request it again")
        if max_records is not None and shown > max_records:
            raise refused(f"the export holds {shown} records, more than the {max_records} "
                          "this approval allows", code="export.count",
                          hint="refuse it, or approve it knowing its count")
        now = time.time()
        window = (settings or ExportSettings.of(vault)).fetch_within_days
        grant = {"approved_at": now, "expires_at": now + window * _DAY, "records": records}
    decided = grant.get("approved_at", time.time())
    if status == "approved" and info.expires_at is not None and decided > info.expires_at:
        # the request lapsed while its set was counted again: too late to approve it
        raise expired()
    with vault.db.transaction():
        _audit(vault, ctx, op, (export_id,), "ok")
        cur = vault.db.execute("UPDATE exports SET status = ?, approver = ?, decided_at = ?, expires_at = ?,"
                               " selected = ? WHERE export_id = ? AND status = 'requested'",
                               (status, ctx.principal, decided, grant.get("expires_at"), shown, export_id))
        if cur.rowcount != 1:
            raise ExportError("the export was decided concurrently", code="export.state")
        if status == "approved":
            _put_blobs(vault, export_id, "approval",
                       [_encode({**_terms(vault.db, info, ctx.principal), **grant})])
        else:  # nothing will read a refused request's records again
            vault.db.execute("DELETE FROM export_members WHERE export_id = ? AND kind = 'selected'",
                             (export_id,))
    return get_export(vault.db, export_id)


def _refused(vault: Vault, ctx: AccessContext, operation: str, export_id: str, message: str, *,
             code: str, hint: str | None = None) -> ExportError:
    """A step of an export refused: audited as ``denied`` under the export's id, the error to raise."""
    _audit(vault, ctx, operation, (export_id,), "denied")
    return ExportError(message, code=code, hint=hint)


def when(t: float | None) -> str:
    """A deadline as the user reads it (UTC, to the minute)."""
    if t is None:
        return "-"
    return _dt.datetime.fromtimestamp(t, _dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def approve(vault: Vault, export_id: str, *, ctx: AccessContext, settings: ExportSettings | None = None,
            max_records: int | None = None) -> ExportInfo:
    """Approve another principal's request (two-person rule) for the records it was counted with.

    Refused, and audited as ``denied``, for the requester's own principal and for
    a token whose ``created_by`` is the requester. Two people who collude, or an
    admin issuing an approver token to a principal of their own, are not stopped:
    the token's issuer and its creation are in the audit trail.

    The approval covers the set of records counted when the export was requested
    (``selected``, shown by ``list_exports``), and must be fetched within
    ``fetch_within_days``. ``max_records``: refuse to approve (``export.count``)
    an export holding more records than the approver expects.
    """
    return _decide(vault, export_id, ctx, "approved", settings, max_records)


def refuse(vault: Vault, export_id: str, *, ctx: AccessContext) -> ExportInfo:
    return _decide(vault, export_id, ctx, "refused")


# ---------------------------------------------------------------- fetch


class _Picker:
    """Which of some record ids the selection holds now: region and birth date come from each
    record's ID number, decrypted a chunk at a time.

    At request time it runs over the records the selection names, or over every record; at
    fetch time over the records counted at request, a chunk at a time: an approval covers
    those, and of them the ones still in the selection (not erased, not corrected out of it)
    are handed out.
    """

    def __init__(self, vault: Vault, sel: Selection, *, listed_only: bool = False) -> None:
        self.vault, self.sel = vault, sel
        self.narrowed = bool(sel.regions or sel.born_from or sel.born_to)
        #: at fetch time, a selection by record ids admits only the ids it lists (built once: the
        #: list is the request itself, held as it was given)
        self.listed = set(sel.record_ids) if listed_only and sel.record_ids else None

    def pick(self, ids: Sequence[str]) -> list[str]:
        """Those of ``ids`` (distinct) that exist and that the selection holds, in their order."""
        from pivault.vault.facade import decrypt_fields

        listed = self.listed
        wanted = [r for r in ids if r in listed] if listed is not None else list(ids)
        out = []
        for start in range(0, len(wanted), _CHUNK):
            part = wanted[start:start + _CHUNK]
            found = {s.record_id: s for s in self.vault.store.get_many(part)}
            for rid in part:
                s = found.get(rid)
                if s is None:
                    continue
                if self.narrowed and not self.sel.admits(
                        decrypt_fields(self.vault.keyring, s, ("id_number",))["id_number"]):
                    continue
                out.append(rid)
        return out

    def admitted(self, records: Iterable[Any]) -> Iterator[str]:
        """The ids of those stored ``records`` the selection holds."""
        from pivault.vault.facade import decrypt_fields

        for s in records:
            if self.sel.admits(decrypt_fields(self.vault.keyring, s, ("id_number",))["id_number"]):
                yield s.record_id


def _selected(vault: Vault, sel: Selection) -> Iterator[str]:
    """The record ids the selection holds now, as a stream: those it lists (the first time each),
    or every record's in record-id order, read a page at a time.

    A page is one complete query, so nothing stays open on the connection between pages:
    the chunks the request stores meanwhile commit at once (SQLite commits a write only once
    no statement of its connection is still reading).
    """
    picker = _Picker(vault, sel)
    if sel.record_ids:
        for part in _chunked(dict.fromkeys(sel.record_ids), _CHUNK):
            yield from picker.pick(part)
        return
    db = vault.db
    last: str | None = None
    while True:
        after = "" if last is None else " WHERE record_id > ?"
        ids = [str(r[0]) for r in db.query(f"SELECT record_id FROM records{after} ORDER BY record_id"
                                           f" LIMIT {_SCAN_PAGE}", () if last is None else (last,))]
        if not ids:
            return
        yield from picker.admitted(vault.store.get_records(ids))
        if len(ids) < _SCAN_PAGE:
            return
        last = ids[-1]


class _Writer:
    """The export file, written under a temporary name beside ``out`` and put in place whole.

    Created new with mode 0600, as tokens and backups are: the mode is given when
    the file is made (never a chmod after it, which would leave a moment in which
    others may open it). Rows go to a hidden ``.NAME.<attempt>.part`` file in the same
    directory; :meth:`publish` syncs it and links it to ``out`` (never replacing a
    file there), so ``out`` appears complete or not at all, and :meth:`discard`
    removes the partial file of a fetch that failed.

    A process killed part-way runs no cleanup: so the writer holds an exclusive
    ``flock`` on the temporary file from its creation until :meth:`release`, on a
    descriptor of its own (the file's is closed when the rows are done). The kernel
    lets go of it when the process ends, however it ends: a lock that another
    process can take is a fetch nobody is running any more (:func:`recover`).
    """

    def __init__(self, out: Path, fmt: str, fields: Sequence[str], *, token: str | None = None) -> None:
        self.fmt = fmt
        self.fields = list(fields)
        self.out = out
        token = token or secrets.token_hex(8)
        #: names this attempt in the audit trail, beside the export: recovery tells by it whether
        #: this attempt's file was finished (``export.publish``) or undone (``export.fetch`` error)
        self.attempt = _ATTEMPT + token
        #: absolute: a recovery run from another directory finds it by the export's row
        self.path = Path(os.path.abspath(out)).with_name(f".{out.name}.{token}.part")
        self._pq: Any = None
        self._fh: Any = None
        self._bin: Any = None
        self._buf: list[dict[str, str | None]] = []
        #: the file has its name: from then on nothing may undo the fetch that wrote it
        self.published = False
        #: the temporary name is gone (published and unlinked, or renamed into place)
        self.temp_removed = False
        self._lock_fd: int | None = None
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        except FileExistsError:
            raise ExportError(f"{self.path.name} already exists; an export is written to a new file",
                              code="export.exists") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._lock_fd = os.dup(fd)
        except OSError as exc:
            # without the lock a recovery would take this fetch for a killed one and remove its file
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise ExportError(f"the export's directory does not take file locks ({type(exc).__name__}); "
                              "a fetch there could not be told from an interrupted one",
                              code="export.lock", hint="write the export to a local file system") from None
        if fmt == "parquet":
            self._bin = open(fd, "wb")  # noqa: SIM115 - closed in close()
        else:
            self._fh = open(fd, "w", encoding="utf-8", newline="")  # noqa: SIM115
            if fmt == "csv":
                self._csv = csv.writer(self._fh, lineterminator="\n")
                self._csv.writerow(self.fields)

    def write(self, row: dict[str, str | None]) -> None:
        if self.fmt == "csv":
            # opened in a spreadsheet by whoever receives it: no cell may start a formula
            self._csv.writerow([spreadsheet_safe(row.get(f) or "") for f in self.fields])
        elif self.fmt == "jsonl":
            assert self._fh is not None
            self._fh.write(json.dumps({f: row.get(f) for f in self.fields}, ensure_ascii=False) + "\n")
        else:
            self._buf.append(row)
            if len(self._buf) >= 10000:
                self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._buf:
            return
        table = pa.table({f: pa.array([r.get(f) for r in self._buf], type=pa.string())
                          for f in self.fields})
        if self._pq is None:
            self._pq = pq.ParquetWriter(self._bin, table.schema)
        self._pq.write_table(table)
        self._buf = []

    def close(self) -> None:
        """Finish the file and sync it to disk (a full disk shows here, if not before)."""
        if self.fmt == "parquet":
            self._flush()
            if self._pq is None:
                import pyarrow as pa
                import pyarrow.parquet as pq

                pq.write_table(pa.table({f: pa.array([], type=pa.string()) for f in self.fields}),
                               self._bin)
            else:
                self._pq.close()
                self._pq = None
            fh = self._bin
        else:
            fh = self._fh
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()

    def publish(self) -> None:
        """Give the finished file its name; a file that appeared there meanwhile is kept."""
        try:
            os.link(self.path, self.out)
        except FileExistsError:
            raise ExportError(f"{self.out.name} already exists; an export is written to a new file",
                              code="export.exists") from None
        except OSError:  # a file system without hard links: rename, having looked first
            if self.out.exists() or self.out.is_symlink():
                raise ExportError(f"{self.out.name} already exists; an export is written to a new file",
                                  code="export.exists") from None
            os.rename(self.path, self.out)
            self.published = self.temp_removed = True
            return
        self.published = True
        # the temporary name goes; should that fail, the file is still out under its name (and
        # the export's row keeps the temporary name, for `export recover` to remove)
        try:
            self.path.unlink()
            self.temp_removed = True
        except OSError as exc:
            log.error("export file published; its temporary name could not be removed (%s)",
                      type(exc).__name__)

    def empty(self) -> None:
        """Close the partial file and cut it to nothing, keeping its name and its lock.

        A failed fetch empties its file, records the undo, then removes the file: until the
        undo is recorded the name is there, locked, so a recovery running meanwhile sees a
        fetch still running rather than a killed one whose file went; and a process killed
        in between leaves an empty file, no PI.
        """
        if self.published:
            return
        self._buf = []
        for close in (getattr(self._pq, "close", None), getattr(self._fh, "close", None),
                      getattr(self._bin, "close", None)):
            if close is not None:
                with contextlib.suppress(Exception):  # the file is emptied next
                    close()
        self._pq = None
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):  # removed next, whatever happens here
                os.ftruncate(self._lock_fd, 0)

    def discard(self) -> None:
        """Close and remove the partial file; errors of a full disk are moot by now.

        A published file is not touched: it is out, and its export recorded as fetched.
        """
        if self.published:
            return
        self.empty()
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        """Let go of the fetch's lock, once the fetch is over (done, undone or given up)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)


def _derived(r: dict[str, str | None]) -> dict[str, str | None]:
    idn = r.get("id_number")
    if idn and len(idn) == 18:
        f = _rid.facts(idn)
        r = dict(r, gender=f.gender, birth_date=f.birth_date.isoformat(), region_code=f.region_code)
    return r


def fetch(vault: Vault, export_id: str, out: str | Path, *, ctx: AccessContext,
          fmt: str | None = None) -> ExportInfo:
    """Write an approved export to ``out`` (CSV, JSONL or Parquet by ``fmt`` or extension).

    Once only: a second fetch is refused (ask for a new export). The audit
    entry holding every record id is written before the first row. ``out`` is
    a new file, made with mode 0600: it holds PI in full. It appears whole or
    not at all: a fetch that fails part-way removes what it wrote, records the
    failure in the audit trail (``export.fetch``, outcome ``error``) and leaves
    the export approved, to be fetched again. A fetch of the export that was
    killed part-way (its process gone, its file left) is recovered first, as
    :func:`recover` does; one still running is left alone and this one refused.

    Handed out are the records counted when the export was requested that the
    selection still holds; an approval past its deadline is refused
    (``export.expired``), as is a set larger than the one approved (``export.grown``).

    The read budgets are charged with the whole set before the transaction that records
    the fetch: one that refuses it (``BudgetExceeded``) leaves its ``refused`` entries,
    its alert and any suspension on record, and the export approved, with no file.
    """
    from pivault.vault.facade import open_record

    out = Path(out)
    fmt = (fmt or out.suffix.lstrip(".") or "csv").lower()
    if fmt not in FORMATS:
        raise ValidationError("export.format", "an export is written as csv, jsonl or parquet")
    if out.exists() or out.is_symlink():  # said before any budget is spent; publish makes sure
        raise ExportError(f"{out.name} already exists; an export is written to a new file",
                          code="export.exists")
    info = get_export(vault.db, export_id)

    def refused(message: str, code: str, hint: str | None = None) -> ExportError:
        return _refused(vault, ctx, "export.fetch", export_id, message, code=code, hint=hint)

    if ctx.principal == info.requester and (info.status == "fetching" or info.fetch_part):
        # an earlier fetch of this export was killed part-way: its leftover file goes and the
        # export is approved again; a fetch still running is left alone, and this one refused
        recovered = _recover(vault, ctx, export_id)
        info = get_export(vault.db, export_id)
        if info.status == "fetching":
            raise refused("the export is being fetched" if recovered is None
                          else f"the export is fetching: {recovered.message}", "export.state")
    if info.status == "expired":
        raise refused(f"the export's approval lapsed at {when(info.expires_at)} unfetched",
                      "export.expired", "the requester may request it again")
    if info.status != "approved":
        raise refused(f"the export is {info.status}; only an approved export can be fetched once",
                      "export.state")
    if ctx.principal != info.requester:
        raise refused("only the requester fetches an approved export", "export.fetcher")
    grant = _approved_as_stored(vault, info)
    if grant is None:
        raise refused("the export's requester, recipient, purpose, fields or selection are not those "
                      "its approver agreed to", "export.tampered",
                      "request the export again and have it approved")
    if not all(k in grant for k in _GRANT):
        raise refused("the export was approved before approvals held their count and deadline",
                      "export.stale", "request the export again and have it approved")
    if time.time() > float(grant["expires_at"]):  # the approval's own deadline, not the table's
        raise refused(f"the export's approval lapsed at {when(float(grant['expires_at']))} unfetched",
                      "export.expired", "the requester may request it again")
    row = vault.db.query_one("SELECT selection FROM exports WHERE export_id = ?", (export_id,))
    assert row is not None
    sel = Selection.from_json(json.loads(vault.keyring.decrypt(_aad_id(export_id), "selection",
                                                               bytes(row[0]))))
    pi = [f for f in info.fields if f in ("name", "id_number", "mobile", "address", "notes")]
    _authorise(vault, ctx, pi or ["id_number"])
    rng = secrets.SystemRandom()
    token = secrets.token_hex(8)
    try:
        plan = _plan(vault, export_id, sel, int(grant["records"]), token, rng)
        if plan.rows > int(grant["records"]):
            raise refused(f"the export would hand out {plan.rows} records, more than the {grant['records']} "
                          "approved", "export.grown", "request the export again and have it approved")
        if not plan.rows:
            raise ExportError("the selection holds none of the records approved (erased or corrected out "
                              "of it since)", code="export.empty")
        if not _parts_intact(vault, export_id, plan):
            raise refused("the export's set holds a record twice, or changed while it was read",
                          "export.tampered", "request the export again and have it approved")
        _budget(vault, ctx, plan.rows)
        k = canaries_needed(plan.rows)
        # canaries are made of pieces of a uniform sample of the export's own rows
        samples = [_derived(open_record(vault.keyring, s).to_dict())
                   for s in vault.store.get_many(plan.models)]
        blender = Blender(samples, sel.regions, sel.born_from, sel.born_to, rng)
        # without the ID number a canary is found by two of these: each canary carries two
        trace = () if "id_number" in info.fields else tuple(f for f in PAIR_FIELDS if f in info.fields)
        taken, seen = _taken(vault, k)
        _stage_canaries(vault, export_id, plan, k, blender, taken, trace)
        reveal = replace(ctx, reveal=True)
        # held for the fetch's life on PostgreSQL: a recovery on any node that can take it knows
        # no live session fetches this export (the file lock below answers on this host)
        if not _hold(vault.db, export_id):
            raise ExportError("the export is being fetched or recovered by another process",
                              code="export.state")
        try:
            # the read budgets, before the transaction that records the fetch: a refusal's entries,
            # alert and suspension are kept, and the export is left as it was (no file, approved)
            charged = _charge_export(vault, ctx, export_id, plan)
            # the file first: one that cannot be made leaves the export approved, not half-fetched
            writer = _Writer(out, fmt, info.fields, token=token)
            try:
                _write_export(vault, ctx, reveal, export_id, info, writer, fmt, grant=grant, plan=plan,
                              canaries=k, rng=rng, blender=blender, taken=taken, seen=seen, trace=trace,
                              charged=charged)
            finally:
                writer.release()
        finally:
            _let_go(vault.db, export_id)
    finally:
        # what waited in the store for this attempt (undone or fetched, none is left; a failure
        # before the fetch was recorded leaves it here)
        _drop(vault, export_id, _STAGED.format(token=token, what="%"))
    return get_export(vault.db, export_id)


#: the record ids a fetch stores under kinds of its own while it runs (``tmp.<attempt>.…``):
#: the parts of its random order, the records left out of each counted chunk, its canaries before
#: they are registered
_STAGED = "tmp.{token}.{what}"


@dataclass
class _Plan:
    """An approved set as a fetch's first pass found it, waiting in the store to be written.

    **The file's order.** Each record id goes to one of ``parts`` parts (a power of two) by
    the first 64 bits of a keyed hash (BLAKE2b under a random key of this fetch, never
    stored); a part is then read whole, shuffled (``SystemRandom``) and written, part after
    part. With the key unknown the hash is a random function, so each record falls in a
    part uniformly and independently of every other; given the parts' sizes, which records
    a part holds is then a uniformly random subset, and its order a uniform shuffle. Every
    record is exchangeable with every other in this process, so every order of the real rows
    is equally likely: a uniform permutation, as one shuffle of them all in memory gives,
    whatever order the ids were counted in (import order, or the requester's). The canaries
    are spread likewise (each to a part uniformly, at uniform places among its rows), so
    their places are a uniform choice among all the file's positions.

    A part holds ``_PART_IDS`` ids on average, whatever the export's size: that, not the
    export, is what is in memory. The parts wait in the store encrypted under the keyring,
    as the members do, under this attempt's kinds (:data:`_STAGED`); nothing stored in
    clear, and no key kept, tells which part a record was in or where it went in the file.
    The same hash's other 64 bits, summed over the set, make a digest by which each later
    pass checks it reads the same records as the first.
    """

    token: str
    key: bytes
    parts: int
    #: ids stored in each part
    sizes: list[int]
    rows: int = 0
    left_out: int = 0
    digest: int = 0
    #: numbers of the counted chunks of which some records were left out (stored: the audit
    #: entries list the records handed out, the counted chunks less these)
    short: set[int] = field(default_factory=set)
    #: ids of a uniform sample of the records handed out, for the canaries' pieces
    models: list[str] = field(default_factory=list)

    def kind(self, what: str) -> str:
        return _STAGED.format(token=self.token, what=what)

    def hash(self, rid: str) -> tuple[int, int]:
        """(the record's part, its term of the set's digest)."""
        d = hashlib.blake2b(rid.encode("ascii"), key=self.key, digest_size=16).digest()
        return int.from_bytes(d[:8], "big") >> (65 - self.parts.bit_length()), int.from_bytes(d[8:], "big")


def _plan(vault: Vault, export_id: str, sel: Selection, records: int, token: str,
          rng: secrets.SystemRandom) -> _Plan:
    """The first pass over the approved set, a counted chunk at a time: which records the
    selection still holds, each stored in its part of the file's order (see :class:`_Plan`);
    which were left out (counted as ``stats`` counts, canary residents not shown); a uniform
    sample of those handed out (:class:`_Sample`).

    ``records``, the approved count, sizes the parts; a set grown beyond it is counted
    whole and refused by the caller.
    """
    parts = 1
    while parts * _PART_IDS < records:
        parts *= 2
    plan = _Plan(token, os.urandom(32), parts, [0] * parts)
    picker = _Picker(vault, sel, listed_only=True)
    models = _Sample(_MODELS, rng)
    # the ids held before they are stored, over all parts, stay about _STAGE_IDS
    flush_at = max(_MIN_STAGE, _STAGE_IDS // parts)
    held: list[list[str]] = [[] for _ in range(parts)]
    stored = [0] * parts

    def store(b: int) -> None:
        _put_blob(vault, export_id, plan.kind(f"shuffle.{b}"), stored[b], "\n".join(held[b]).encode("ascii"))
        plan.sizes[b] += len(held[b])
        stored[b] += 1
        held[b] = []

    for chunk, counted in _id_chunks(vault.db, vault.keyring, export_id, "selected"):
        kept = picker.pick(counted)
        if len(kept) < len(counted):
            still = set(kept)
            gone = [r for r in counted if r not in still]
            plan.left_out += _shown(vault, gone)
            _put_blob(vault, export_id, plan.kind("left"), chunk, "\n".join(gone).encode("ascii"))
            plan.short.add(chunk)
        for rid in kept:
            b, d = plan.hash(rid)
            plan.digest = (plan.digest + d) & _MASK64
            models.offer(rid)
            held[b].append(rid)
            if len(held[b]) >= flush_at:
                store(b)
        plan.rows += len(kept)
    for b in range(parts):
        if held[b]:
            store(b)
    plan.models = models.items
    return plan


def _part_ids(vault: Vault, export_id: str, plan: _Plan, b: int) -> list[str]:
    ids: list[str] = []
    for _, chunk in _id_chunks(vault.db, vault.keyring, export_id, plan.kind(f"shuffle.{b}")):
        ids.extend(chunk)
    return ids


def _parts_intact(vault: Vault, export_id: str, plan: _Plan) -> bool:
    """Whether the stored parts hold what the first pass put there, each record once.

    Checked before anything is audited: a record counted twice (a set edited with the
    keyring) falls twice in one part, its hash being its own, and is found here.
    """
    digest = 0
    for b in range(plan.parts):
        ids = _part_ids(vault, export_id, plan, b)
        if len(ids) != plan.sizes[b] or len(set(ids)) != len(ids):
            return False
        for rid in ids:
            digest += plan.hash(rid)[1]
    return digest & _MASK64 == plan.digest


def _kept_chunks(vault: Vault, export_id: str, plan: _Plan) -> Iterator[list[str]]:
    """The records handed out, at most :data:`_AUDIT_IDS` at a time, in the order they were
    counted at request: never the file's order, which the audit trail (plain text) must not tell."""
    db, kr = vault.db, vault.keyring
    for chunk, counted in _id_chunks(db, kr, export_id, "selected"):
        if chunk in plan.short:
            kind = plan.kind("left")
            row = db.query_one("SELECT data FROM export_members WHERE export_id = ? AND kind = ?"
                               " AND chunk = ?", (export_id, kind, chunk))
            gone = set() if row is None else set(
                kr.decrypt(_aad_id(export_id), f"{kind}.{chunk}", bytes(row[0])).decode("ascii").split("\n"))
            counted = [r for r in counted if r not in gone]
        for i in range(0, len(counted), _AUDIT_IDS):
            yield counted[i:i + _AUDIT_IDS]


def _charge_export(vault: Vault, ctx: AccessContext, export_id: str, plan: _Plan) -> bool:
    """Charge the read budgets with the whole export, outside any transaction; True if charged.

    The fetch records its records in one transaction, all or none; a budget that refused
    them in there would see its ``refused`` entries, its alert row and the suspension it
    calls for rolled back with it. So the charge comes first, on its own, and the
    transaction records the entries without charging again (:func:`_audit_export`).
    Raises :class:`~pivault.detect.budgets.BudgetExceeded` when refused; False for a
    guard that charges a read only as it records it.
    """
    from pivault.detect.budgets import BudgetExceeded

    charge = getattr(vault.guard, "charge_batches", None)
    if charge is None:
        return False
    try:
        return bool(charge(ctx, "export", lambda: _kept_chunks(vault, export_id, plan), plan.rows))
    except BudgetExceeded:
        # the refused entries list the records; this one names the export they were asked for
        _audit(vault, ctx, "export.fetch", (export_id,), "refused")
        raise


def _audit_export(vault: Vault, ctx: AccessContext, export_id: str, plan: _Plan, charged: bool = False
                  ) -> None:
    """The ``export`` entries: every record handed out, :data:`_AUDIT_IDS` an entry (one entry
    of millions of ids would be held whole by the trail's writer and by every reader of it).

    A guard with ``audit_batches`` (the detect guard) charges the read budgets once for
    the whole export, as for one read, and writes the entries (only the entries when
    ``charged`` by :func:`_charge_export` before this transaction); another guard is
    asked once per entry. The entries must list exactly the set the first pass found: counted
    and summed as they are written, and checked in the same transaction.
    """
    tally = [-1, -1]

    def batches() -> Iterator[list[str]]:
        n = d = 0
        for batch in _kept_chunks(vault, export_id, plan):
            n += len(batch)
            for rid in batch:
                d += plan.hash(rid)[1]
            yield batch
        tally[:] = [n, d & _MASK64]

    many = getattr(vault.guard, "audit_batches", None)
    if many is not None:
        many(ctx, "export", batches, plan.rows, "ok", **({"charged": True} if charged else {}))
    else:
        for batch in batches():
            _audit(vault, ctx, "export", batch, "ok")
    if tally != [plan.rows, plan.digest]:
        raise ExportError("the export's set changed while it was fetched", code="export.tampered",
                          hint="request the export again and have it approved")


class _Sample:
    """A uniform sample of ``size`` items of a stream whose length is not known beforehand, in
    memory for ``size`` items (Li's "Algorithm L": the reservoir skips ahead by a drawn number of
    items, so there are a few draws per item taken, not one per item seen)."""

    def __init__(self, size: int, rng: secrets.SystemRandom) -> None:
        self.size, self.rng = size, rng
        self.items: list[str] = []
        self._seen = 0
        self._next = 0
        self._w = 1.0

    def _draw(self) -> float:
        u = self.rng.random()
        while u == 0.0:
            u = self.rng.random()
        return u

    def _skip(self) -> None:
        self._w *= math.exp(math.log(self._draw()) / self.size)
        gap = math.floor(math.log(self._draw()) / math.log1p(-self._w)) if self._w < 1.0 else 0
        self._next += gap + 1

    def offer(self, item: str) -> None:
        i = self._seen
        self._seen += 1
        if i < self.size:
            self.items.append(item)
            if i == self.size - 1:
                self._next = i
                self._skip()
        elif i == self._next:
            self.items[self.rng.randrange(self.size)] = item
            self._skip()


def _spread(count: int, parts: int) -> list[int]:
    """How many of ``count`` canaries fall in each of ``parts`` parts (a power of two): each to a
    part uniformly and independently, from ``os.urandom`` (what ``SystemRandom`` draws from)."""
    out = [0] * parts
    mask = parts - 1
    left = count
    while left:
        n = min(left, 1 << 16)
        for w in memoryview(os.urandom(4 * n)).cast("I"):
            out[w & mask] += 1
        left -= n
    return out


def _arranged(ids: list[str], canaries: int, rng: secrets.SystemRandom) -> list[str | None]:
    """One part of the file in order: its record ids shuffled, and ``canaries`` places (None)
    among them, at a uniform choice of the part's positions."""
    rng.shuffle(ids)
    total = len(ids) + canaries
    slots = set(rng.sample(range(total), canaries))
    rest = iter(ids)
    return [None if p in slots else next(rest) for p in range(total)]


class _Members:
    """The exported record ids in the file's order, and each real row's keys, stored a chunk at
    a time as the rows are written (chunk i of both holds the same rows)."""

    def __init__(self, vault: Vault, export_id: str) -> None:
        self.vault, self.export_id = vault, export_id
        self.ids: list[str] = []
        self.keys: list[list[int]] = []
        self.chunk = self.count = 0

    def add(self, rid: str, keys: list[int]) -> None:
        self.ids.append(rid)
        self.keys.append(keys)
        if len(self.ids) >= _MEMBER_CHUNK:
            self.flush()

    def flush(self) -> None:
        if not self.ids:
            return
        v, x = self.vault, self.export_id
        with v.db.transaction():
            _put_blob(v, x, "members", self.chunk, "\n".join(self.ids).encode("ascii"))
            # per row, one 8-byte key per pair of ROW_KEYS
            _put_blob(v, x, "rowkeys", self.chunk,
                      b"".join(k.to_bytes(8, "big") for ks in self.keys for k in ks))
        self.count += len(self.ids)
        self.chunk += 1
        self.ids, self.keys = [], []


def _write_rows(vault: Vault, reveal: AccessContext, export_id: str, info: ExportInfo, writer: _Writer,
                plan: _Plan, canaries: int, rng: secrets.SystemRandom) -> None:
    """The rows, part after part (see :class:`_Plan`), the canaries at their places among them;
    each part's stored ids are removed once it is written."""
    from pivault.vault.facade import open_record

    spread = _spread(canaries, plan.parts)
    made = _canary_rows(vault, export_id)
    members = _Members(vault, export_id)
    digest = 0

    def canary() -> None:
        c = next(made, None)
        if c is None:
            raise ExportError("the export's registered canaries changed while it was fetched",
                              code="export.tampered")
        writer.write(_present(vault, reveal, _derived(_as_row(c)), info.fields))

    for b in range(plan.parts):
        ids = _part_ids(vault, export_id, plan, b)
        if len(ids) != plan.sizes[b]:
            raise ExportError("the export's set changed while it was fetched", code="export.tampered")
        order = _arranged(ids, spread[b], rng)
        for start in range(0, len(order), _CHUNK):
            window = order[start:start + _CHUNK]
            by_id = {s.record_id: s for s in vault.store.get_many([r for r in window if r is not None])}
            for rid in window:
                if rid is None:
                    canary()
                    continue
                full = _derived(open_record(vault.keyring, by_id[rid]).to_dict())
                writer.write(_present(vault, reveal, full, info.fields))
                # each real row's exact pairs (name and mobile, ...): what confirms a copied row as
                # its resident when the export carries too little for two blind indexes (no ID number)
                members.add(rid, _row_keys(full, info.fields))
                digest += plan.hash(rid)[1]
        vault.db.execute("DELETE FROM export_members WHERE export_id = ? AND kind = ?",
                         (export_id, plan.kind(f"shuffle.{b}")))
    members.flush()
    if members.count != plan.rows or digest & _MASK64 != plan.digest or next(made, None) is not None:
        raise ExportError("the export's set changed while it was fetched", code="export.tampered")


def _write_export(vault: Vault, ctx: AccessContext, reveal: AccessContext, export_id: str,
                  info: ExportInfo, writer: _Writer, fmt: str, *, grant: dict[str, Any], plan: _Plan,
                  canaries: int, rng: secrets.SystemRandom, blender: Blender, taken: _Seen,
                  seen: set[str], trace: Sequence[str], charged: bool = False) -> None:
    """The fetch from its first audit entry to the file's name: all of it or, undone, none.

    The row records the temporary file and the host with the status ``fetching``, in
    the transaction of the audit entries that say the records left, so a process
    killed after it leaves what :func:`recover` needs; the attempt's name in those
    entries ties them to the file. The members and row keys are stored as the rows are
    written; an undone fetch drops them with its canaries.
    """
    part = str(writer.path)
    try:
        with vault.db.transaction():
            cur = vault.db.execute("UPDATE exports SET status = 'fetching', fetch_part = ?, fetch_host = ?"
                                   " WHERE export_id = ? AND status = 'approved'",
                                   (part, socket.gethostname(), export_id))
            if cur.rowcount != 1:
                raise ExportError("the export is being fetched already", code="export.state")
            if vault.db.query_one("SELECT 1 FROM export_members WHERE export_id = ? AND kind = 'canaries'",
                                  (export_id,)) is not None:
                # canaries are registered once per export, by its one fetch: a status set back
                # to approved by hand does not make a second copy
                raise ExportError("the export was fetched already", code="export.state")
            if _fetched_in_trail(vault, info.requester, export_id, float(grant["approved_at"])):
                # the exports table and the export's members can be edited, and an approval
                # copied back: the trail, which cannot be edited unseen, says it was fetched
                raise ExportError("the audit trail records a fetch of this export that was not undone",
                                  code="export.state")
            if _register_canaries(vault, export_id, plan, blender, taken, seen, trace) != canaries:
                raise ExportError("the canaries made for the export changed before they were registered",
                                  code="export.tampered")
            _audit(vault, ctx, "export.fetch", (export_id, writer.attempt), "ok")
            _audit_export(vault, ctx, export_id, plan, charged)
            vault.db.execute("DELETE FROM export_members WHERE export_id = ? AND kind IN (?, ?)",
                             (export_id, plan.kind("canaries"), plan.kind("left")))
    except BaseException:
        # rolled back with the transaction: no entry says the fetch went ahead
        writer.discard()
        raise
    # from here the trail says the records left: a failure must say they did not
    try:
        _write_rows(vault, reveal, export_id, info, writer, plan, canaries, rng)
        writer.close()
        with vault.db.transaction():
            cur = vault.db.execute(
                "UPDATE exports SET status = 'fetched', fetched_by = ?, fetched_at = ?, format = ?,"
                " rows = ?, canaries = ?, left_out = ? WHERE export_id = ? AND status = 'fetching'"
                " AND fetch_part = ?",
                (ctx.principal, time.time(), fmt, plan.rows, canaries, plan.left_out, export_id, part))
            if cur.rowcount != 1:
                # a recovery took this attempt for a killed one (its file or its database session
                # was lost meanwhile) and undid it: this copy must not come out
                raise ExportError("the fetch was undone by a recovery while it ran", code="export.state")
            # what any attempt of this export left waiting in the store (one killed before it was
            # recorded, or beaten to the fetch) is of no use now
            vault.db.execute("DELETE FROM export_members WHERE export_id = ? AND kind LIKE ?",
                             (export_id, _STAGED.format(token="%", what="%")))
            # the point of no return, in the trail: a recovery never undoes an attempt past it,
            # whatever the exports table says
            _audit(vault, ctx, "export.publish", (export_id, writer.attempt), "ok")
        # recorded as fetched before the file gets its name: a crash between the two leaves an
        # export spent and no file, never a file the vault does not know of
        writer.publish()
    except BaseException as exc:
        if writer.published:
            # the file is out with its canaries, and the export recorded as fetched: undoing
            # the fetch now would let it be fetched again while this copy exists
            raise
        writer.empty()
        _fetch_failed(vault, ctx, export_id, exc, part, writer.attempt)
        writer.discard()
        raise
    if writer.temp_removed:
        _forget_part(vault, export_id, part)


#: how far before its approval a fetch's audit entry is looked for (clocks of two nodes differ)
_CLOCK_SLACK = _DAY


def _fetched_in_trail(vault: Vault, requester: str, export_id: str, approved_at: float) -> bool:
    """Whether the audit trail holds a fetch of the export (``export.fetch`` ``ok``) that no
    ``error`` entry undid: a file may have left, whatever the exports table says now.

    Only the requester fetches, and only after the approval: the ``ok`` entries looked at
    are theirs, from (a day before, for clocks that differ) the sealed time of the approval.
    An ``error`` entry undoes the ``ok`` of its own attempt (named beside the export since
    fetches name them; one entry of each before that), whoever wrote it: the fetch that
    failed, or the recovery of one that was killed.
    """
    from pivault.audit import entries

    if not vault.db.table_exists("audit_entries"):  # a vault without a trail
        return False
    started: dict[str | None, int] = {}
    undone: dict[str | None, int] = {}
    for e in entries(vault.db, operation="export.fetch", since=approved_at - _CLOCK_SLACK):
        if export_id not in e.record_ids:
            continue
        attempt = _attempt_named(e.record_ids)
        if e.outcome == "ok" and e.principal == requester:
            started[attempt] = started.get(attempt, 0) + 1
        elif e.outcome == "error":
            undone[attempt] = undone.get(attempt, 0) + 1
    return any(n > undone.get(a, 0) for a, n in started.items())


def _attempt_named(ids: Sequence[str]) -> str | None:
    """The attempt an export's audit entry names beside the export (None: an older entry)."""
    return next((r for r in ids if r.startswith(_ATTEMPT)), None)


def _undo(vault: Vault, ctx: AccessContext, export_id: str, part: str, attempt: str,
          *, interrupted: bool) -> bool:
    """Set an attempt back: its canaries and members go, the export is approved again, and the
    trail says so (``export.fetch`` ``error``; ``export.recover`` for a killed fetch), in one
    transaction. False if the row no longer holds this attempt (undone already).

    The row must still name the attempt's temporary file: a fetch and a recovery of it
    racing each other undo it once, and never a later attempt of the same export. A
    recovery undoes only a fetch still ``fetching``; the fetch itself also one it recorded
    as fetched whose file then did not get its name (it knows; a recovery cannot).
    """
    statuses = "('fetching')" if interrupted else "('fetching', 'fetched')"
    with vault.db.transaction():
        cur = vault.db.execute(
            "UPDATE exports SET status = 'approved', fetched_by = NULL, fetched_at = NULL, format = NULL,"
            " rows = NULL, canaries = NULL, left_out = NULL, fetch_part = NULL, fetch_host = NULL"
            f" WHERE export_id = ? AND status IN {statuses} AND fetch_part = ?", (export_id, part))
        if cur.rowcount != 1:
            return False
        marks = ", ".join("?" for _ in _FETCH_KINDS)
        staged = _STAGED.format(token=attempt[len(_ATTEMPT):], what="%")
        vault.db.execute("DELETE FROM export_members WHERE export_id = ?"
                         f" AND (kind IN ({marks}) OR kind LIKE ?)", (export_id, *_FETCH_KINDS, staged))
        # with the undo, in its transaction: the entry that lets the export be fetched again
        # (see _fetched_in_trail) is in the trail exactly when the export is approved again
        _audit(vault, ctx, "export.fetch", (export_id, attempt), "error")
        if interrupted:
            _audit(vault, ctx, "export.recover", (export_id, attempt), "ok")
    return True


def _fetch_failed(vault: Vault, ctx: AccessContext, export_id: str, exc: BaseException, part: str,
                  attempt: str) -> None:
    """Undo a fetch that failed after its audit entries: its file holds nothing (the caller
    emptied it, and removes it next), the canaries and members go, the export is approved
    again, and the trail says so.

    Each step is tried on its own: a full disk or a lost database may fail them too, and
    the first error is the one the caller raises. A recovery that took this fetch for a
    killed one (it lost its file or its database session) may have undone it already.
    """
    try:
        if not _undo(vault, ctx, export_id, part, attempt, interrupted=False):
            log.warning("export %s: the failed fetch was undone by a recovery already", export_id)
        return
    except Exception as undo:  # reported; the fetch's own error is raised
        log.error("export %s: could not set the failed fetch back (%s); it stays %s", export_id,
                  type(undo).__name__, "fetching")
    try:
        _audit(vault, ctx, "export.fetch", (export_id, attempt), "error")
    except Exception as undo:
        log.error("export %s: the failed fetch (%s) could not be audited (%s)", export_id,
                  type(exc).__name__, type(undo).__name__)


def _forget_part(vault: Vault, export_id: str, part: str) -> None:
    """The fetched file has its name and its temporary name is gone: nothing is left to recover."""
    try:
        vault.db.execute("UPDATE exports SET fetch_part = NULL, fetch_host = NULL WHERE export_id = ?"
                         " AND fetch_part = ?", (export_id, part))
    except Exception as exc:  # the export is fetched; `export recover` clears the row later
        log.warning("export %s: fetched; its row still names its temporary file (%s)", export_id,
                    type(exc).__name__)


# ---------------------------------------------------------------- recovery of a killed fetch


def _hold(db: Database, export_id: str) -> bool:
    """PostgreSQL: take the export's fetch lock for this session, if no other session holds it.

    A session-level advisory lock lives as long as the session: the server lets go of it
    when the fetching process's connection ends, on whatever node it ran. SQLite has no
    sessions to ask; the lock on the temporary file answers there (True).
    """
    if db.dialect != "postgresql":
        return True
    row = db.query_one("SELECT pg_try_advisory_lock(CAST(? AS integer), CAST(? AS integer))",
                       _lock_keys(export_id))
    return bool(row and row[0])


def _let_go(db: Database, export_id: str) -> None:
    if db.dialect != "postgresql":
        return
    try:
        db.query_one("SELECT pg_advisory_unlock(CAST(? AS integer), CAST(? AS integer))",
                     _lock_keys(export_id))
    except Exception as exc:  # it goes with the session
        log.warning("export %s: its fetch lock could not be released (%s)", export_id, type(exc).__name__)


def _lock_keys(export_id: str) -> tuple[int, int]:
    return _FETCH_LOCK, int.from_bytes(hashlib.blake2b(export_id.encode("utf-8"), digest_size=4).digest(),
                                       "big", signed=True)


@dataclass(frozen=True)
class Recovery:
    """What :func:`recover` found of one export's fetch and did about it (ids, a path, a host; no PI).

    ``outcome``: ``recovered`` — the fetch was killed part-way and is undone, the export
    approved again; ``cleaned`` — a fetched export's file kept its temporary name, now
    removed (the export stays fetched); ``running`` — a live process holds the fetch, left
    alone; ``left`` — whether its process lives cannot be told from here (``message`` says
    why and what to do); ``refused`` — the audit trail says this fetch's file was finished,
    so it is not undone whatever the exports table says.
    ``file``: ``removed``, ``not_found`` (not on this host) or ``kept``.
    """

    export_id: str
    outcome: str
    status: str
    file: str
    message: str
    #: the temporary file the fetch wrote (for whoever must remove it where the fetch ran)
    part: str | None = None
    host: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Busy(Exception):
    """The fetch's process still holds the lock on its file."""


class _Unsure(Exception):
    """Whether the fetch's process lives cannot be told from here (the message says why)."""


class _Part:
    """A killed fetch's temporary file, open and locked: the lock keeps a second recovery off it,
    and the file's identity keeps :meth:`remove` from unlinking anything put at its name since."""

    def __init__(self, dir_fd: int, fd: int, name: str) -> None:
        self.dir_fd, self.fd, self.name = dir_fd, fd, name
        st = os.fstat(fd)
        self.identity = (st.st_dev, st.st_ino)
        #: other names of the file: the export's own name, once a fetch linked it there
        self.other_names = st.st_nlink - 1

    def remove(self) -> None:
        """Unlink the temporary name, without overwriting: the file itself is the export's, and
        its blocks are the file system's to reuse (see docs/leak.md on a killed fetch)."""
        st = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        if (st.st_dev, st.st_ino) != self.identity:
            raise _Unsure("the temporary file was replaced while it was looked at; left as it is")
        os.unlink(self.name, dir_fd=self.dir_fd)

    def close(self) -> None:
        os.close(self.fd)  # and with it the lock
        os.close(self.dir_fd)


def _open_part(path: str) -> _Part | None:
    """The temporary file at ``path``, open and locked; None if this host has no file there.

    Raises :class:`_Busy` when a live process holds its lock, :class:`_Unsure` when it cannot
    be checked (another account's, not a regular file, a file system without locks). The row
    naming it can be edited: only a fetch's temporary name is looked at, never through a
    symbolic link, and a FIFO put there does not block the open.
    """
    p = Path(path)
    if not p.is_absolute() or _PART.fullmatch(p.name) is None:
        raise _Unsure("the export's row does not name a fetch's temporary file; left as it is")
    try:
        dir_fd = os.open(p.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        raise _Unsure("the directory of the temporary file cannot be opened by this account: run the "
                      "recovery as the account that ran the fetch") from None
    try:
        fd = os.open(p.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        os.close(dir_fd)
        return None
    except PermissionError:
        os.close(dir_fd)
        raise _Unsure("the temporary file belongs to another account: run the recovery as the account "
                      "that ran the fetch") from None
    except OSError:
        os.close(dir_fd)
        raise _Unsure("the temporary file's name holds something else (a link); left as it is") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Unsure("the temporary file's name holds something else; left as it is")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _Busy from None
        except OSError:
            raise _Unsure("the temporary file's file system takes no locks: whether its fetch runs "
                          "cannot be told") from None
        return _Part(dir_fd, fd, p.name)
    except BaseException:
        os.close(fd)
        os.close(dir_fd)
        raise


def _finished_in_trail(vault: Vault, requester: str, export_id: str, attempt: str,
                       approved_at: float) -> bool:
    """Whether the trail holds the attempt's ``export.publish`` entry: its file was complete and the
    export recorded as fetched, past which no fetch is undone (the exports table may say
    otherwise: it can be edited, the trail not unseen)."""
    from pivault.audit import entries

    if not vault.db.table_exists("audit_entries"):
        return False
    return any(export_id in e.record_ids and attempt in e.record_ids
               for e in entries(vault.db, principal=requester, operation="export.publish",
                                since=approved_at - _CLOCK_SLACK))


def recover(vault: Vault, export_id: str | None = None, *, ctx: AccessContext) -> list[Recovery]:
    """Recover the fetches of ``export_id`` (default: of every export) that were killed part-way.

    A fetch whose process ended without cleaning up (``kill -9``, a lost machine) leaves
    its temporary file, PI in full, and the export ``fetching``. Whether the process lives
    is told by the locks it held for the whole fetch, which the kernel (the temporary
    file's ``flock``) and PostgreSQL (a session advisory lock) release when it ends. For a
    dead one: the temporary file is removed (unlinked) and the fetch undone as a failed one
    is — canaries and members dropped, the export approved again, ``export.fetch`` ``error``
    and ``export.recover`` in the trail, in one transaction — so it is fetched once, again.
    A fetched export whose file kept its temporary name loses that name, nothing more.

    Never touched: a fetch whose process still runs, and a fetch the trail records as
    finished (``export.publish``). A file this host cannot see (the fetch ran on another
    node) is said, not guessed at: see :class:`Recovery`.

    The export's requester recovers their own (``fetch`` does so first); a principal of a
    role in :data:`RECOVER_ROLES` recovers any, or all.
    """
    db = vault.db
    if export_id is None:
        if ctx.role not in RECOVER_ROLES:
            _audit(vault, ctx, "export.recover", (), "denied")
            raise ExportError("only a principal with role " + " or ".join(sorted(RECOVER_ROLES))
                              + " recovers the fetches of every export", code="export.not_recoverer",
                              hint="name the export: its requester may recover it")
        if not db.table_exists("exports"):
            return []
        wanted = [str(r[0]) for r in db.query(
            "SELECT export_id FROM exports WHERE status = 'fetching' OR fetch_part IS NOT NULL"
            " ORDER BY requested_at, export_id")]
    else:
        info = get_export(db, export_id)
        if ctx.principal != info.requester and ctx.role not in RECOVER_ROLES:
            raise _refused(vault, ctx, "export.recover", export_id, "only the export's requester or a "
                           "principal with role " + " or ".join(sorted(RECOVER_ROLES))
                           + " recovers its fetch", code="export.not_recoverer")
        wanted = [export_id]
    return [r for r in (_recover(vault, ctx, x) for x in wanted) if r is not None]


def _recover(vault: Vault, ctx: AccessContext, export_id: str) -> Recovery | None:
    """:func:`recover` for one export the caller may recover (None: nothing to recover).

    The row is read, the locks taken, and the row read again: a fetch that ended in
    between (its locks are let go last) has moved the row on, and is looked at anew.
    """
    db = vault.db
    for _ in range(3):
        row = _fetch_row(db, export_id)
        if row is None:
            return None
        status, part, host = row
        if status not in ("fetching", "fetched") or (status == "fetched" and part is None):
            return None
        if part is None:
            return _result(db, export_id, "left", "kept", "the fetch began before pivault recorded how to "
                           "recover one: whether its process still runs cannot be told; left as it is",
                           part, host)
        if not _hold(db, export_id):
            return _result(db, export_id, "running", "kept", "a fetch of this export is running (another "
                           "process holds it); left alone", part, host)
        try:
            try:
                held = _open_part(part)
            except _Busy:
                return _result(db, export_id, "running", "kept", "a fetch of this export is running (its "
                               "process holds its temporary file); left alone", part, host)
            except _Unsure as exc:
                return _result(db, export_id, "left", "kept", str(exc), part, host)
            try:
                if _fetch_row(db, export_id) != row:
                    continue
                return _recover_held(vault, ctx, export_id, status, part, host, held)
            finally:
                if held is not None:
                    held.close()
        finally:
            _let_go(db, export_id)
    return _result(db, export_id, "left", "kept", "the export's fetch kept changing while it was looked at: "
                   "run the recovery again", None, None)


def _fetch_row(db: Database, export_id: str) -> tuple[str, str | None, str | None] | None:
    row = db.query_one("SELECT status, fetch_part, fetch_host FROM exports WHERE export_id = ?", (export_id,))
    return None if row is None else (str(row[0]), row[1], row[2])


def _result(db: Database, export_id: str, outcome: str, file: str, message: str, part: str | None,
            host: str | None) -> Recovery:
    return Recovery(export_id, outcome, get_export(db, export_id).status, file, message, part, host)


def _recover_held(vault: Vault, ctx: AccessContext, export_id: str, status: str, part: str,
                  host: str | None, held: _Part | None) -> Recovery | None:
    """Recover a fetch whose process is gone (its locks are ours now; ``held``: its file, if this
    host has it)."""
    db = vault.db
    match = _PART.fullmatch(Path(part).name)
    assert match is not None  # _open_part looks only at a fetch's temporary name
    attempt = _ATTEMPT + match.group("token")
    elsewhere = bool(host) and host != socket.gethostname()

    def result(outcome: str, file: str, message: str) -> Recovery:
        return _result(db, export_id, outcome, file, message, part, host)

    if held is None and elsewhere and db.dialect == "sqlite":
        # no session to ask, no file to lock: a fetch there may be running
        return result("left", "kept", "the fetch ran on another host: whether its process still runs "
                      "cannot be told from here; run the recovery there")
    try:
        if status == "fetched":
            return _clean_fetched(vault, ctx, export_id, part, attempt, held, elsewhere, result)
        info = get_export(db, export_id)
        grant = _approved_as_stored(vault, info)
        if grant is None or "approved_at" not in grant:
            _audit(vault, ctx, "export.recover", (export_id, attempt), "denied")
            return result("refused", "kept", "the export's row no longer holds what its approver agreed to: "
                          "not undone")
        if _finished_in_trail(vault, info.requester, export_id, attempt, float(grant["approved_at"])):
            _audit(vault, ctx, "export.recover", (export_id, attempt), "denied")
            return result("refused", "kept", "the audit trail records that this fetch's file was finished: "
                          "it is not undone, whatever the exports table says")
        file = "not_found"
        if held is not None:
            # the file first: PI on a disk outlives a database that fails now
            held.remove()
            file = "removed"
        if not _undo(vault, ctx, export_id, part, attempt, interrupted=True):
            return result("left", file, "the export changed while it was recovered: run the recovery again")
    except _Unsure as exc:
        return result("left", "kept", str(exc))
    except OSError as exc:
        return result("left", "kept", f"the temporary file could not be removed ({type(exc).__name__}): run "
                      "the recovery as the account that ran the fetch")
    log.warning("export %s: an interrupted fetch was recovered; the export is approved again", export_id)
    again = "the export is approved again, to be fetched once"
    if file == "removed":
        return result("recovered", file, "the fetch was interrupted: its temporary file was removed; "
                      + again)
    return result("recovered", file, f"the fetch was interrupted; {again}. The temporary file could not be "
                  "found on this host; remove it where the fetch ran")


def _clean_fetched(vault: Vault, ctx: AccessContext, export_id: str, part: str, attempt: str,
                   held: _Part | None, elsewhere: bool,
                   result: Callable[[str, str, str], Recovery]) -> Recovery | None:
    """A fetched export whose row still names its temporary file: the process ended between
    recording the export as fetched and removing that name. The export stays fetched (its
    canaries are registered; a copy may be out); the temporary name goes.
    """
    file = "not_found"
    named = False
    if held is not None:
        named = held.other_names > 0
        held.remove()
        file = "removed"
    with vault.db.transaction():
        cur = vault.db.execute("UPDATE exports SET fetch_part = NULL, fetch_host = NULL WHERE export_id = ?"
                               " AND status = 'fetched' AND fetch_part = ?", (export_id, part))
        if cur.rowcount == 1 and (held is not None or elsewhere):
            _audit(vault, ctx, "export.recover", (export_id, attempt), "ok")
    if held is None:
        if not elsewhere:  # its temporary name went, as it should have: nothing is left
            return None
        return result("cleaned", file, "the export is fetched; its temporary file could not be found on "
                      "this host: if it is still there, remove it where the fetch ran")
    if named:
        return result("cleaned", file, "the export is fetched and its file has its name; the temporary "
                      "name it kept was removed")
    return result("cleaned", file, "the export is recorded as fetched, but its process ended before the "
                  "file got its name: the temporary file was removed, and the export stays fetched "
                  "(request it again for another copy)")


def _present(vault: Vault, ctx: AccessContext, r: dict[str, str | None],
             fields: Sequence[str]) -> dict[str, str | None]:
    return {f: vault.guard.mask(ctx, f, r.get(f)) for f in fields}


def _as_row(c: dict[str, str]) -> dict[str, str | None]:
    """A canary as a row: an empty field is absent, as it is in a real row."""
    return {k: (v or None) for k, v in c.items()}


#: the exact values by which a canary is found in a dump: a row agreeing with one canary on
#: two of them is that canary (``name_mobile`` and ``name_address`` hold the name with another
#: value, so that the name, shared by many, counts only beside a value unique to the canary)
CANARY_KEYS: tuple[str, ...] = ("id_number", "mobile", "name_birth", "address", "name_mobile",
                                "name_address")
#: the pairs of exact values by which an exported row is confirmed as its resident
ROW_KEYS: tuple[tuple[str, str], ...] = (("name", "mobile"), ("name", "address"), ("mobile", "address"))


def _canary_keys(c: dict[str, str]) -> dict[str, str]:
    """A stored canary's keys, derived from its values: a canary registered before a key
    existed is found by it too."""
    born = _rid.facts(c["id_number"]).birth_date.isoformat()
    name, mobile = c.get("name") or "", c.get("mobile") or ""
    address = address_key(c.get("address") or "") or ""
    out = {"id_number": c["id_number"], "mobile": mobile,
           "name_birth": f"{name}|{born}" if name else "", "address": address,
           "name_mobile": f"{name}|{mobile}" if name and mobile else "",
           "name_address": f"{name}|{address}" if name and address else ""}
    return {k: v for k, v in out.items() if v}


def row_key(a: str, b: str) -> int:
    """A 64-bit digest of two exact values of one row (normalised as the leak check reads them)."""
    data = f"{a}\x1f{b}".encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=b"pivault-rowkey").digest(), "big")


def _row_keys(r: dict[str, str | None], fields: Sequence[str]) -> list[int]:
    """The row's key per pair of :data:`ROW_KEYS` the export carries (0 where a value is empty)."""
    name, mobile = (r.get("name") or "").strip(), (r.get("mobile") or "").strip()
    address = (r.get("address") or "").strip()
    values = {"name": fast_name(name) if name else None, "mobile": fast_mobile(mobile) if mobile else None,
              "address": address_key(address) if address else None}
    out = []
    for a, b in ROW_KEYS:
        va, vb = values[a], values[b]
        out.append(row_key(va, vb) if a in fields and b in fields and va and vb else 0)
    return out


def _traceable(c: dict[str, str], trace: Sequence[str]) -> bool:
    """Whether a canary carries two of the export's ``trace`` fields (always, with no such
    fields: the export carries the ID number, and the canary's is its own)."""
    return not trace or sum(1 for f in trace if c.get(f)) >= 2


def _held_by_resident(vault: Vault, c: dict[str, str]) -> bool:
    """Whether a record holds the canary's mobile with its name or its address.

    Such a resident, leaked by other means with those two values, would be taken for the
    canary and blame the export. The mobile index narrows the records to a few; their
    values are compared exactly. (An address alone is not indexed: see docs/leak.md.)
    """
    from pivault.vault.facade import decrypt_fields

    kr = vault.keyring
    mobile = c.get("mobile")
    if not mobile or "mobile" not in kr.index_names:
        return False
    values = (kr.blind_index_all("mobile", mobile) if kr.index_versions("mobile") > 1
              else (kr.blind_index("mobile", mobile),))
    cands = sorted({r for rs in vault.store.candidate_ids("mobile", list(values)).values() for r in rs})
    for stored in vault.store.get_records(cands) if cands else ():
        plain = decrypt_fields(kr, stored, ("name", "mobile", "address"))
        if plain.get("mobile") == mobile and (plain.get("name") == c.get("name")
                                              or (c.get("address") and plain.get("address") == c["address"])):
            return True
    return False


class _Seen:
    """The exact canary values already taken (every registered export's, and this fetch's as its
    canaries are made), as a Bloom filter: bits set at a few keyed hashes of each value.

    A set of the values themselves grows with the export (six values a canary, a canary for
    about fourteen rows) and with every export fetched before; the filter has a fixed size
    for the values it was made for, ``_SEEN_BITS`` bits each, and never more than
    ``_SEEN_MAX_BITS`` (32 MiB). It never says a value that was added is free (no false
    negatives), so no canary shares a value with another, exactly as with a set. It says now
    and then that a free value is taken (at 16 bits a value, about once in 1,800 values, so
    about one canary in 300; more often past its largest size, about 2.8 million canaries):
    that canary is drawn again, and nothing else follows.
    """

    def __init__(self, values: int) -> None:
        values = max(1, values)
        size = 1 << 16
        while size < values * _SEEN_BITS and size < _SEEN_MAX_BITS:
            size <<= 1
        self._mask = size - 1
        self._bits = bytearray(size >> 3)
        self._k = max(1, min(8, round(math.log(2) * size / values)))
        self._unpack = struct.Struct(f"<{self._k}I").unpack
        self._key = os.urandom(32)

    def _places(self, kind: str, value: str) -> list[int]:
        d = hashlib.blake2b(f"{kind}\x1f{value}".encode(), key=self._key, digest_size=4 * self._k).digest()
        return [p & self._mask for p in self._unpack(d)]

    def holds(self, keys: dict[str, str]) -> bool:
        """Whether any of a canary's keys (:func:`_canary_keys`) may be taken."""
        bits = self._bits
        return any(all(bits[p >> 3] >> (p & 7) & 1 for p in self._places(k, v)) for k, v in keys.items())

    def add(self, keys: dict[str, str]) -> None:
        bits = self._bits
        for k, v in keys.items():
            for p in self._places(k, v):
                bits[p >> 3] |= 1 << (p & 7)


def _make_canary(vault: Vault, blender: Blender, taken: _Seen,
                 trace: Sequence[str] = ()) -> dict[str, str]:
    """A canary sharing no exact value with an earlier canary, no ID number with a record,
    no mobile with a record of its name or address, and carrying two of ``trace``."""
    misses = 0
    for _ in range(2000):
        c = blender.make()
        if not _traceable(c, trace):  # a child without a mobile in an export of names and mobiles
            continue
        keys = _canary_keys(c)
        if taken.holds(keys):
            misses += 1
        else:
            kr = vault.keyring
            if (not vault.ids_by_id_number({c["id_number"]: kr.blind_index("id_number", c["id_number"])})
                    and not _held_by_resident(vault, c)):
                taken.add(keys)
                return c
            misses += 1
        if misses >= 100:
            raise ExportError("could not make a unique canary", code="export.canary")
    raise ExportError("too few of the export's rows carry two of " + ", ".join(trace)
                      + " to make canaries that would trace a copy", code="export.canary")


def canary_values(vault: Vault, skip: Iterable[str] = ()) -> tuple[dict[str, set[str]], set[str]]:
    """Every registered export canary's exact values, and the exports they belong to
    (but for those in ``skip``): what a new canary must not share a value with."""
    known: dict[str, set[str]] = {k: set() for k in CANARY_KEYS}
    done = set(skip)
    seen: set[str] = set()
    for (eid,) in vault.db.query("SELECT DISTINCT export_id FROM export_members WHERE kind = 'canaries'"):
        if eid in done:
            continue
        seen.add(eid)
        for blob in _get_blobs(vault.db, vault.keyring, eid, "canaries"):
            for c in json.loads(blob.decode("utf-8")):
                for k, v in _canary_keys(c).items():
                    known[k].add(v)
    return known, seen | done


def _canary_chunks(vault: Vault) -> dict[str, int]:
    """The exports whose canaries are registered, and how many chunks (of up to 2000) hold them."""
    return {str(e): int(n) for e, n in vault.db.query(
        "SELECT export_id, COUNT(*) FROM export_members WHERE kind = 'canaries' GROUP BY export_id")}


def _add_registered(vault: Vault, exports: Iterable[str], into: Sequence[_Seen]) -> None:
    """Add the exact values of these exports' registered canaries to each filter of ``into``,
    a stored chunk at a time."""
    for eid in exports:
        for c in _canary_rows(vault, eid):
            keys = _canary_keys(c)
            for f in into:
                f.add(keys)


def _taken(vault: Vault, canaries: int) -> tuple[_Seen, set[str]]:
    """The values a new export's ``canaries`` must not take: every registered canary's, in a
    filter sized for those and the new ones; and the exports whose canaries are in it."""
    chunks = _canary_chunks(vault)
    taken = _Seen(len(CANARY_KEYS) * (_CANARY_CHUNK * sum(chunks.values()) + canaries))
    _add_registered(vault, chunks, (taken,))
    return taken, set(chunks)


def _canary_rows(vault: Vault, export_id: str, kind: str = "canaries") -> Iterator[dict[str, str]]:
    for blob in _get_blobs(vault.db, vault.keyring, export_id, kind):
        yield from json.loads(blob.decode("utf-8"))


def _store_canaries(vault: Vault, export_id: str, kind: str, canaries: Iterable[dict[str, str]]) -> int:
    """Store canaries as they come, :data:`_CANARY_CHUNK` a chunk; how many were stored."""
    n = chunk = 0
    batch: list[dict[str, str]] = []
    for c in canaries:
        batch.append(c)
        n += 1
        if len(batch) >= _CANARY_CHUNK:
            _put_blob(vault, export_id, kind, chunk, json.dumps(batch, ensure_ascii=False).encode("utf-8"))
            chunk += 1
            batch = []
    if batch:
        _put_blob(vault, export_id, kind, chunk, json.dumps(batch, ensure_ascii=False).encode("utf-8"))
    return n


def _stage_canaries(vault: Vault, export_id: str, plan: _Plan, count: int, blender: Blender, taken: _Seen,
                    trace: Sequence[str]) -> None:
    """Make the export's canaries, before its fetch is recorded, and keep them (encrypted, under
    this attempt's kind) until :func:`_register_canaries` registers them: a chunk in memory at a time."""
    _store_canaries(vault, export_id, plan.kind("canaries"),
                    (_make_canary(vault, blender, taken, trace) for _ in range(count)))


def _register_canaries(vault: Vault, export_id: str, plan: _Plan, blender: Blender, taken: _Seen,
                       seen: set[str], trace: Sequence[str] = ()) -> int:
    """Register the canaries made for the export before its file is written, in a transaction
    other fetches queue behind; how many were registered.

    The canaries were checked against those registered when they were made; an export
    fetched at the same moment may have registered some of the same values since. Inside
    the lock those are looked up and the clashing canaries made again, so no value is ever
    the canary of two exports (a dump would otherwise count it for the wrong one).
    """
    db = vault.db
    if db.dialect != "sqlite":  # SQLite's BEGIN IMMEDIATE already holds the write lock
        db.execute("SELECT pg_advisory_xact_lock(?)", (_CANARY_LOCK,))
    since: _Seen | None = None
    new = {e: n for e, n in _canary_chunks(vault).items() if e not in seen}
    if new:
        since = _Seen(len(CANARY_KEYS) * _CANARY_CHUNK * sum(new.values()))
        _add_registered(vault, new, (since, taken))

    def checked() -> Iterator[dict[str, str]]:
        for c in _canary_rows(vault, export_id, plan.kind("canaries")):
            if since is not None and since.holds(_canary_keys(c)):
                c = _make_canary(vault, blender, taken, trace)
            yield c

    return _store_canaries(vault, export_id, "canaries", checked())


# ---------------------------------------------------------------- what the leak check reads


@dataclass
class ExportRegistry:
    """Every fetched export: its record ids (as 64-bit digests) and its canaries by exact value.

    Decrypted in memory for one leak check; the canaries are fictitious, the
    record ids opaque.
    """

    exports: dict[str, ExportInfo] = field(default_factory=dict)
    members: dict[str, set[int]] = field(default_factory=dict)
    #: key kind -> normalised value -> (export id, canary number)
    canaries: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)
    canary_counts: dict[str, int] = field(default_factory=dict)
    #: pair of :data:`ROW_KEYS` -> :func:`row_key` of an exported row -> its record id (the
    #: smallest, where two residents share both values: one of them is affected)
    rows: dict[tuple[str, str], dict[int, str]] = field(default_factory=dict)

    def canary_values(self) -> dict[str, set[str]]:
        return {k: set(self.canaries.get(k, {})) for k in CANARY_KEYS}


def rid_digest(record_id: str) -> int:
    """A 64-bit digest of a record id: sets of these stand for sets of ids in memory."""
    return int.from_bytes(hashlib.blake2b(record_id.encode("ascii"), digest_size=8).digest(), "big")


def load_registry(vault: Vault) -> ExportRegistry:
    """Every fetched export (and one being fetched: its canaries are registered before its
    file is written, and a fetch cut short may leave part of a file behind).

    A value that is the canary of two exports (possible in a vault whose exports were
    fetched at the same moment before canaries were registered up front) says nothing
    about which of them leaked: it is left out rather than counted for the one loaded last.
    """
    reg = ExportRegistry(canaries={k: {} for k in CANARY_KEYS}, rows={p: {} for p in ROW_KEYS})
    db = vault.db
    if not db.table_exists("exports"):
        return reg
    shared: dict[str, set[str]] = {k: set() for k in CANARY_KEYS}
    for info in list_exports(db):
        if info.status not in ("fetched", "fetching"):
            continue
        reg.exports[info.export_id] = info
        members: set[int] = set()
        ids: list[str] = []
        for blob in _get_blobs(db, vault.keyring, info.export_id, "members"):
            ids.extend(r for r in blob.decode("ascii").split("\n") if r)
        members.update(map(rid_digest, ids))
        reg.members[info.export_id] = members
        _load_row_keys(reg, db, vault.keyring, info.export_id, ids)
        n = 0
        for blob in _get_blobs(db, vault.keyring, info.export_id, "canaries"):
            for c in json.loads(blob.decode("utf-8")):
                entry = (info.export_id, n)
                for k, v in _canary_keys(c).items():
                    have = reg.canaries[k].setdefault(v, entry)
                    if have[0] != info.export_id:
                        shared[k].add(v)
                n += 1
        reg.canary_counts[info.export_id] = n
    for k, vs in shared.items():
        for v in vs:
            del reg.canaries[k][v]
    return reg


def _load_row_keys(reg: ExportRegistry, db: Database, keyring: Any, export_id: str, ids: list[str]) -> None:
    """An export's row keys, aligned with its record ids (none for an export fetched before
    they were kept: its rows are confirmed by the blind indexes only)."""
    width = 8 * len(ROW_KEYS)
    pos = 0
    for blob in _get_blobs(db, keyring, export_id, "rowkeys"):
        for off in range(0, len(blob) - width + 1, width):
            if pos >= len(ids):
                return
            rid = ids[pos]
            pos += 1
            for j, pair in enumerate(ROW_KEYS):
                k = int.from_bytes(blob[off + 8 * j:off + 8 * j + 8], "big")
                if k:
                    d = reg.rows[pair]
                    have = d.get(k)
                    if have is None or rid < have:
                        d[k] = rid
