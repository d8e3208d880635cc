"""``leak check``: is this dump ours, whom does it affect, what was exposed, where from?

One streaming pass over every file of the dump: each table's PI columns are
found by content on its first rows, every row is matched through the blind
indexes (:mod:`pivault.leak.match`; nothing is decrypted), export canaries
are looked up by exact value, and only counts and record ids are kept.
Afterwards the matched residents are compared with each export's record set,
with what the audit trail shows each principal read, and with the vault's
canary registry; :func:`pivault.leak.attribution.attribute` weighs that.

The result is saved as a *case*: a summary without PI (counts, regions,
fields, findings) and the affected record ids encrypted under the keyring,
revealed only to a role allowed to notify (:func:`affected`).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import multiprocessing
import os
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pivault.errors import NotFoundError, PivaultError
from pivault.leak.attribution import Attribution, SourceFit, attribute
from pivault.leak.columns import PI_KINDS, Column, detect_columns
from pivault.leak.exports import load_registry, rid_digest
from pivault.leak.match import Matcher, Outcome, match_columns
from pivault.leak.readers import DEFAULT_MAX_LINE_MIB, DumpError, Table, open_dump, read_dump
from pivault.model import divisions
from pivault.policy.context import AccessContext

if TYPE_CHECKING:
    from pivault.vault import Vault

__all__ = ["NOTIFY_ROLES", "READ_OPERATIONS", "CheckResult", "Checker", "affected", "check",
           "load_case"]

#: roles that may see which residents a case affects (to notify them)
NOTIFY_ROLES: frozenset[str] = frozenset({"dpo", "notifier"})
#: audit operations that serve records to a principal through the door
READ_OPERATIONS: frozenset[str] = frozenset({"get", "read", "find", "lookup", "rights.copy"})
_SAMPLE = 500
_CASE_CHUNK = 10000
#: dumps from this size are matched in worker processes (below, forking costs more than it saves)
PARALLEL_BYTES = 4 * 1024 * 1024
#: batches out per worker at a time: one being matched, one waiting
_IN_FLIGHT = 2
_WORKER_MATCHER: Matcher | None = None


@dataclass
class _TableState:
    table: Table
    columns: list[Column] | None = None
    cols: dict[str, int] = field(default_factory=dict)
    usable: bool = False
    rows_matched: int = 0


@dataclass
class CheckResult:
    """What a check found; no PI (counts, region names, field kinds, record-free evidence)."""

    case_id: str
    detected_at: float
    files: list[dict[str, Any]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    rows_read: int = 0
    rows_rejected: int = 0
    rows_with_keys: int = 0
    rows_single_key: int = 0
    rows_matched: int = 0
    #: rows that carry an id of the vault's form that the vault does not hold (an erased
    #: resident's, or made up)
    record_ids_not_held: int = 0
    residents_matched: int = 0
    matched_by: dict[str, int] = field(default_factory=dict)
    expected_false: float = 0.0
    fields_exposed: list[str] = field(default_factory=list)
    residents_by_field: dict[str, int] = field(default_factory=dict)
    residents_by_region: dict[str, int] = field(default_factory=dict)
    export_canaries: dict[str, dict[str, int]] = field(default_factory=dict)
    vault_canaries: dict[str, int] = field(default_factory=dict)
    attribution: Attribution | None = None
    timeline: list[dict[str, Any]] = field(default_factory=list)
    elapsed_seconds: float = 0.0

    @property
    def is_ours(self) -> bool:
        return self.residents_matched > 0

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "attribution"}
        out["attribution"] = self.attribution.to_dict() if self.attribution else None
        out["is_ours"] = self.is_ours
        return out


@functools.cache
def _province(code: str) -> str:
    return divisions.province_of(code) or divisions.name_of(code[:2] + "0000") or f"region {code[:2]}"


def _principal_reads(db: Any) -> tuple[dict[str, set[int]], dict[str, tuple[float, float]]]:
    """Per principal: digests of the records the audit trail shows it was served, and when."""
    reads: dict[str, set[int]] = {}
    times: dict[str, tuple[float, float]] = {}
    if not db.table_exists("audit_entries"):
        return reads, times
    from pivault.audit import entries

    after = 0
    while True:
        page = list(entries(db, after_seq=after, limit=5000))
        if not page:
            break
        for e in page:
            after = e.seq
            if e.outcome != "ok" or e.operation not in READ_OPERATIONS or not e.record_ids:
                continue
            reads.setdefault(e.principal, set()).update(rid_digest(r) for r in e.record_ids)
            lo, hi = times.get(e.principal, (e.time, e.time))
            times[e.principal] = (min(lo, e.time), max(hi, e.time))
    return reads, times


def _vault_canaries(vault: Vault) -> Any:
    try:
        from pivault.detect.canary import CanaryRegistry
    except ImportError:  # pragma: no cover - the detect component is optional
        return None
    if not vault.db.table_exists("canary_registry"):
        return None
    return CanaryRegistry(vault.db, vault.keyring)


class Checker:
    """What a check compares a dump with, loaded once: exports, the pair index, the audit
    trail's reads, the vault canary registry. Check many dumps with one :class:`Checker`."""

    def __init__(self, vault: Vault, *, ctx: AccessContext, max_line_mib: int = DEFAULT_MAX_LINE_MIB,
                 pair_cache_limit: int | None = None, workers: int | None = None) -> None:
        vault.guard.authorise(ctx, "stats", ())
        self.workers = workers if workers is not None else min(4, os.cpu_count() or 1)
        self.vault = vault
        self.ctx = ctx
        self.max_line_mib = max_line_mib
        self.registry = load_registry(vault)
        kwargs = {} if pair_cache_limit is None else {"pair_cache_limit": pair_cache_limit}
        self.matcher = Matcher.for_vault(vault, self.registry, **kwargs)
        self.reads, self.read_times = _principal_reads(vault.db)
        self.canary_registry = _vault_canaries(vault)
        self.served: set[int] = set()
        for members in self.registry.members.values():
            self.served |= members
        for got in self.reads.values():
            self.served |= got

    def check(self, paths: Sequence[str | Path], *,
              progress: Callable[[int], None] | None = None, save: bool = True) -> CheckResult:
        """Check the dump files ``paths``; save the case unless ``save`` is false.

        A path that cannot be opened (missing, a directory, no permission) is
        a :class:`DumpError` before anything is read, and so is a dump of which
        no row could be read (empty files, nothing but damage): neither makes
        a case, which would read as a clean result. Errors in one file
        (truncated, empty, too long a line) are otherwise recorded in
        ``errors`` with the rows read before them, and the other files are
        still read. With ``workers`` > 1 and a dump of at least
        :data:`PARALLEL_BYTES`, batches are matched in forked worker processes
        while this one reads on; the result is the same.
        """
        t0 = time.perf_counter()
        for path in paths:
            _openable(Path(path))
        res = CheckResult(case_id="case_" + secrets.token_hex(8), detected_at=time.time())
        matched: set[str] = set()
        canary_strong: dict[str, set[int]] = {}
        canary_single: dict[str, set[int]] = {}
        fields_exposed: set[str] = set()
        states: dict[int, _TableState] = {}
        # the batches sent to be matched and not yet tallied (a few, however long the dump)
        pending: deque[tuple[_TableState, list[list[str | None]]]] = deque()
        cells = self.matcher.cells

        def tasks() -> Iterator[tuple[dict[str, list[str | None]], int]]:
            for path in paths:
                p = Path(path)
                info: dict[str, Any] = {"file": p.name, "rows": 0, "error": None}
                res.files.append(info)
                try:
                    for batch in read_dump(p, max_line_mib=self.max_line_mib):
                        st = states.get(id(batch.table))
                        if st is None:
                            st = states[id(batch.table)] = _TableState(batch.table)
                            _detect(st, batch.rows)
                            if st.usable:
                                fields_exposed.update(c.kind for c in st.columns or ()
                                                      if c.kind in PI_KINDS)
                        res.rows_read += len(batch.rows)
                        info["rows"] += len(batch.rows)
                        if st.usable:
                            pending.append((st, batch.rows))
                            yield match_columns(batch.rows, st.cols, cells), len(batch.rows)
                        if progress:
                            progress(res.rows_read)
                except DumpError as exc:
                    info["error"] = exc.message
                    res.errors.append({"file": p.name, "code": exc.code, "message": exc.message})

        unplaced: set[str] = set()
        canaries: set[str] = set()
        # records a PI value of the dump confirmed (before :meth:`_held` adds those an id alone did)
        by_value: set[str] = set()
        for outcome in self._matched(tasks(), paths):
            st, rows = pending.popleft()
            by_value.update(rid for rid, _j, _region in outcome.firsts)
            self._held(outcome, res)
            self._apart(outcome, matched, canaries)
            _tally(res, st, rows, outcome, matched, canary_strong, canary_single, unplaced)
        self._place(res, unplaced)
        for st in states.values():
            t = st.table
            res.rows_rejected += t.rejected
            res.tables.append({
                "source": t.source, "format": t.format, "encoding": t.encoding, "rows": t.rows,
                "rejected": t.rejected, "notes": list(t.notes), "header": bool(t.header),
                "pi_columns_found": st.usable, "rows_matched": st.rows_matched,
                "columns": [c.describe() for c in st.columns or ()],
                "message": None if st.usable else _no_pi_message(st)})
        res.residents_matched = len(matched)
        res.fields_exposed = sorted(fields_exposed)
        self._attribute(res, matched, canaries, canary_strong, canary_single, by_value)
        res.elapsed_seconds = round(time.perf_counter() - t0, 3)
        if not res.rows_read:
            # a case of nothing read would say "no resident confirmed": no case, an error
            why = "; ".join(e["message"] for e in res.errors) or "the dump holds no rows"
            raise DumpError(f"no row could be read from the dump ({why}); no case was saved",
                            code="dump.unread")
        self.vault.guard.audit(self.ctx, "leak.check", (), "ok")
        if save:
            _save_case(self.vault, res, matched, self.ctx)
        return res

    def _place(self, res: CheckResult, unplaced: set[str]) -> None:
        """Count residents matched without an ID number under their record's province.

        Their rows carry no region, but once matched the vault knows their
        record, and its ID number says where they are registered: the vault
        gives the counts per region code (no value), the case keeps them per
        province. A record erased since it was matched stays ``unknown``.
        """
        if not unplaced:
            return
        counts = self.vault.region_counts(unplaced, ctx=self.ctx)
        placed = 0
        for code, n in counts.items():
            region = _province(code)
            res.residents_by_region[region] = res.residents_by_region.get(region, 0) + n
            placed += n
        if placed < len(unplaced):
            res.residents_by_region["unknown"] = (res.residents_by_region.get("unknown", 0)
                                                 + len(unplaced) - placed)

    def _matched(self, tasks: Iterator[tuple[dict[str, list[str | None]], int]],
                 paths: Sequence[str | Path]) -> Iterator[Outcome]:
        """Match each task, in order: here, or in forked workers for a large dump.

        With ``workers`` = *n*, *n* - 1 processes are forked: this one reads and parses,
        sends each worker only the cells matching reads (a worker sends back counts and the
        records matched), and matches a batch itself whenever every worker already has
        :data:`_IN_FLIGHT` batches to do. At most twice that many batches are held, so
        memory stays flat however long the dump.
        """
        size = 0
        for p in paths:
            with contextlib.suppress(OSError):
                size += Path(p).stat().st_size
        # workers never touch the database: only the in-memory pair index is matched in them
        parallel = (self.workers > 1 and size >= PARALLEL_BYTES and self.matcher.pairs is not None
                    and self.matcher.blind_all is None
                    and "fork" in multiprocessing.get_all_start_methods())
        if not parallel:
            for columns, rows in tasks:
                yield self.matcher.outcome(columns, rows)
            return
        global _WORKER_MATCHER
        _WORKER_MATCHER = self.matcher  # inherited by the forked workers, never pickled
        gc.freeze()  # the collector in a worker leaves the inherited pair index alone (its pages stay shared)
        try:
            forks = self.workers - 1  # this process matches too
            cap = _IN_FLIGHT * forks
            with ProcessPoolExecutor(forks, mp_context=multiprocessing.get_context("fork")) as pool:
                window: deque[Future[Outcome]] = deque()
                for task in tasks:
                    if sum(not f.done() for f in window) >= cap:
                        # the workers have enough to do: this batch is matched here meanwhile
                        here: Future[Outcome] = Future()
                        here.set_result(self.matcher.outcome(*task))
                        window.append(here)
                    else:
                        window.append(pool.submit(_work, _packed(task)))
                    while window and (window[0].done() or len(window) > 2 * cap):
                        yield window.popleft().result()
                while window:
                    yield window.popleft().result()
        finally:
            _WORKER_MATCHER = None
            gc.unfreeze()

    def _held(self, out: Outcome, res: CheckResult) -> None:
        """Count the rows matched by a record id the store holds (looked up here: workers never
        touch the store).

        Record ids are random: one the vault holds in a dump was copied from its output, so
        it confirms the resident without any chance match, where the masks left no value the
        blind indexes could use.
        """
        if not out.record_ids:
            return
        held = self.vault.store.existing(sorted({rid for _, rid in out.record_ids}))
        seen = {rid for rid, _j, _region in out.firsts}
        n = 0
        for j, rid in out.record_ids:
            if rid not in held:
                res.record_ids_not_held += 1
                continue
            n += 1
            if rid not in seen:
                seen.add(rid)
                out.firsts.append((rid, j, ""))
        if n:
            out.matched_by["record_id"] = out.matched_by.get("record_id", 0) + n

    def _apart(self, out: Outcome, matched: set[str], canaries: set[str]) -> None:
        """Set the vault canaries among the batch's newly matched records apart.

        They are fictitious: left out of the residents counted, placed by region and listed for
        notification, as they are left out of ``stats``, and weighed only as evidence of where
        the copy came from (:meth:`_attribute`).
        """
        reg = self.canary_registry
        if reg is None or not out.firsts:
            return
        new = [rid for rid, _j, _region in out.firsts if rid not in matched and rid not in canaries]
        canaries |= set(reg.which(new)) if new else set()
        # every canary known so far, not only this batch's new ones: one met again in a later batch
        # (a duplicated row, a second file) is still no resident
        if canaries:
            out.firsts = [f for f in out.firsts if f[0] not in canaries]

    def _attribute(self, res: CheckResult, residents: set[str], canaries: set[str],
                   canary_strong: dict[str, set[int]], canary_single: dict[str, set[int]],
                   by_value: set[str]) -> None:
        registry = self.registry
        # the fits weigh every record the copy holds, the vault's canaries among them
        matched = residents | canaries
        digests = {rid_digest(r) for r in matched}
        # and again without those a record id alone confirmed: the ids are no secret of the door
        valued = {rid_digest(r) for r in matched & by_value}
        exports: list[SourceFit] = []
        for eid, info in registry.exports.items():
            members = registry.members.get(eid, set())
            inside = len(digests & members)
            strong = len(canary_strong.get(eid, ()))
            single = len(canary_single.get(eid, ()))
            res.export_canaries[eid] = {"found": strong, "single_key": single,
                                        "total": registry.canary_counts.get(eid, 0)}
            if inside or strong or single:
                exports.append(SourceFit("export", eid, len(members), inside,
                                         registry.canary_counts.get(eid, 0), strong, single,
                                         {"recipient": info.recipient, "purpose": info.purpose,
                                          "requester": info.requester, "approver": info.approver,
                                          "fetched_at": info.fetched_at},
                                         inside_by_value=len(valued & members)))
        principals: list[SourceFit] = []
        for who, got in self.reads.items():
            inside = len(digests & got)
            if inside:
                lo, hi = self.read_times.get(who, (0.0, 0.0))
                principals.append(SourceFit("principal", who, len(got), inside,
                                            label={"first_read": lo, "last_read": hi},
                                            inside_by_value=len(valued & got)))
        reg = self.canary_registry
        v_found = v_unserved = v_total = 0
        if reg is not None and matched:
            v_total = reg.count()
            v_found = len(canaries)
            v_unserved = sum(1 for h in canaries if rid_digest(h) not in self.served)
        res.vault_canaries = {"found": v_found, "never_served": v_unserved, "total": v_total}
        rows_tested = max(res.rows_with_keys, 1)
        res.attribution = attribute(
            matched=len(matched), population=self.matcher.population, dump_rows=res.rows_read,
            exports=exports, principals=principals, vault_canaries_found=v_found,
            vault_canaries_unserved=v_unserved, vault_canaries_total=v_total,
            expected_false_per_row=res.expected_false / rows_tested, matched_by_value=len(valued))
        res.timeline = self._timeline(res)

    def _timeline(self, res: CheckResult) -> list[dict[str, Any]]:
        assert res.attribution is not None
        tl: list[dict[str, Any]] = []
        for f in res.attribution.named:
            if f.kind == "export":
                info = self.registry.exports[f.source_id]
                tl.append({"time": info.requested_at, "event": f"export {info.export_id} requested"})
                if info.decided_at:
                    tl.append({"time": info.decided_at, "event": f"export {info.export_id} approved"})
                if info.fetched_at:
                    tl.append({"time": info.fetched_at,
                               "event": f"export {info.export_id} fetched for {info.recipient}"})
            elif f.kind == "principal":
                lo, hi = self.read_times.get(f.source_id, (0.0, 0.0))
                tl.append({"time": lo, "event": f"principal {f.source_id}: first read"})
                tl.append({"time": hi, "event": f"principal {f.source_id}: last read"})
        tl.append({"time": res.detected_at, "event": "leak detected (case opened)"})
        tl.append({"time": res.detected_at + 72 * 3600, "event": "72-hour notification deadline"})
        return sorted(tl, key=lambda e: e["time"])


def check(vault: Vault, paths: Sequence[str | Path], *, ctx: AccessContext,
          max_line_mib: int = DEFAULT_MAX_LINE_MIB, pair_cache_limit: int | None = None,
          progress: Callable[[int], None] | None = None, save: bool = True,
          workers: int | None = None) -> CheckResult:
    """Check the dump files ``paths`` against the vault; save and return the case."""
    checker = Checker(vault, ctx=ctx, max_line_mib=max_line_mib, pair_cache_limit=pair_cache_limit,
                      workers=workers)
    return checker.check(paths, progress=progress, save=save)


def _openable(p: Path) -> None:
    """Raise :class:`DumpError` unless ``p`` is a file this process can open for reading
    (:func:`pivault.leak.readers.open_dump`: never waiting on a pipe)."""
    open_dump(p).close()


def _no_pi_message(st: _TableState) -> str:
    found = [c.kind for c in st.columns or () if c.kind in PI_KINDS]
    if not found:
        return "no PI columns found: no column holds ID numbers, mobiles, names or addresses"
    return ("PI found (" + ", ".join(sorted(set(found))) + ") but no key to match residents by: "
            "an ID number, a mobile, a name with a birth date, a name with an address, or the vault's "
            "record ids is needed")


def _detect(st: _TableState, rows: list[list[str | None]]) -> None:
    st.columns = detect_columns(st.table.header, rows[:_SAMPLE])
    st.cols = {c.kind: c.index for c in st.columns if c.kind and c.primary}
    has_birth = "id_number" in st.cols or "birth_date" in st.cols
    # name and address: no blind index, but two exact values of an exported row or a canary
    st.usable = ("id_number" in st.cols or "mobile" in st.cols or "record_id" in st.cols
                 or ("name" in st.cols and (has_birth or "address" in st.cols)))


#: joins a column's cells for a worker (matching reads an empty cell as it reads a missing one)
_SEP = "\x1e"


def _packed(task: tuple[dict[str, list[str | None]], int]) -> tuple[dict[str, str | list[str | None]], int]:
    """Each column as one string (one copy to send instead of thousands of objects to pickle),
    unless a cell holds the separator."""
    columns, rows = task
    out: dict[str, str | list[str | None]] = {}
    for kind, cells in columns.items():
        try:
            joined = _SEP.join(cells)  # type: ignore[arg-type]
        except TypeError:  # None among the cells
            joined = _SEP.join([c or "" for c in cells])
        out[kind] = joined if joined.count(_SEP) == len(cells) - 1 else cells
    return out, rows


def _work(task: tuple[dict[str, str | list[str | None]], int]) -> Outcome:
    """A forked worker's job: match one batch with the matcher it inherited."""
    assert _WORKER_MATCHER is not None
    packed, rows = task
    columns: dict[str, list[str | None]] = {
        kind: cells.split(_SEP) if isinstance(cells, str) else cells  # type: ignore[misc]
        for kind, cells in packed.items()}
    return _WORKER_MATCHER.outcome(columns, rows)


def _tally(res: CheckResult, st: _TableState, rows: list[list[str | None]], out: Outcome,
           matched: set[str], canary_strong: dict[str, set[int]],
           canary_single: dict[str, set[int]], unplaced: set[str]) -> None:
    """Add a matched batch to the result; residents whose first row has no ID number go to
    ``unplaced``, to be counted by their record's region once the dump is read."""
    res.expected_false += out.expected_false
    res.rows_with_keys += out.with_keys
    res.rows_single_key += out.single_key
    for eid, num, keys, by_id in out.canaries:
        if keys >= 2:
            canary_strong.setdefault(eid, set()).add(num)
        elif by_id:
            canary_single.setdefault(eid, set()).add(num)
    for by, n in out.matched_by.items():
        res.matched_by[by] = res.matched_by.get(by, 0) + n
        res.rows_matched += n
        st.rows_matched += n
    field_cols = [(c.kind, c.index) for c in st.columns or () if c.kind in PI_KINDS]
    for rid, j, region6 in out.firsts:
        if rid in matched:
            continue
        matched.add(rid)
        if region6:
            region = _province(region6)
            res.residents_by_region[region] = res.residents_by_region.get(region, 0) + 1
        else:
            unplaced.add(rid)
        # fields of this resident the dump exposes (non-empty cells of PI columns)
        row = rows[j]
        for kind, idx in field_cols:
            cell = row[idx] if idx < len(row) else None
            if cell is not None and cell.strip():
                res.residents_by_field[kind] = res.residents_by_field.get(kind, 0) + 1


# ---------------------------------------------------------------- cases


def _aad(case_id: str) -> str:
    return f"case:{case_id}"


def _save_case(vault: Vault, res: CheckResult, matched: Iterable[str], ctx: AccessContext) -> None:
    ids = sorted(matched)
    db = vault.db
    rows = [(res.case_id, i // _CASE_CHUNK,
             vault.keyring.encrypt(_aad(res.case_id), f"affected.{i // _CASE_CHUNK}",
                                   "\n".join(ids[i:i + _CASE_CHUNK]).encode("ascii")))
            for i in range(0, len(ids), _CASE_CHUNK)]
    with db.transaction():
        db.execute("INSERT INTO leak_cases (case_id, detected_at, created_by, summary) VALUES (?, ?, ?, ?)",
                   (res.case_id, res.detected_at, ctx.principal,
                    json.dumps(res.to_dict(), ensure_ascii=False, default=str)))
        db.executemany(db.sql("INSERT INTO leak_case_members (case_id, chunk, data) VALUES (?, ?, ?)"), rows)


def load_case(vault: Vault, case_id: str) -> dict[str, Any]:
    """A case's summary (no PI)."""
    row = vault.db.query_one("SELECT summary FROM leak_cases WHERE case_id = ?", (case_id,))
    if row is None:
        raise NotFoundError("no leak case with this id", code="leak.case_not_found")
    out: dict[str, Any] = json.loads(row[0])
    return out


def affected(vault: Vault, case_id: str, *, ctx: AccessContext) -> list[str]:
    """The record ids of the residents a case affects, for notification; audited.

    Only a role in :data:`NOTIFY_ROLES` gets them; everyone else sees counts.
    """
    if ctx.role not in NOTIFY_ROLES:
        vault.guard.audit(ctx, "leak.affected", (), "denied")
        raise PivaultError("only a role allowed to notify residents (" + ", ".join(sorted(NOTIFY_ROLES))
                           + ") sees who a case affects", code="leak.not_notifier")
    load_case(vault, case_id)
    ids: list[str] = []
    for chunk, data in vault.db.query("SELECT chunk, data FROM leak_case_members WHERE case_id = ?"
                                      " ORDER BY chunk", (case_id,)):
        ids.extend(vault.keyring.decrypt(_aad(case_id), f"affected.{int(chunk)}", bytes(data))
                   .decode("ascii").split("\n"))
    ids = [i for i in ids if i]
    vault.guard.audit(ctx, "leak.affected", ids, "ok")
    return ids
