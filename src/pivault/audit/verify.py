"""Check the audit chain and name the first bad entry.

The verifier (the auditor, holding the X25519 verifier key) starts at the
oldest retained checkpoint, unseals the chain key for that point, and
recomputes every MAC in sequence order. It finds:

* a modified entry, an inserted one, or two swapped ones: the MAC of the
  first affected entry does not match (``entry.mac``);
* a deleted entry: a gap in the sequence (``entry.missing``);
* a truncated tail: the chain ends before the head row, a stored checkpoint,
  an exported checkpoint, or the head's encrypted key says it should
  (``tail.truncated``); a trail deleted whole from a store that holds
  records (``head.missing``);
* a deleted prefix that no logged ``audit.prune`` covers (``prune.unlogged``);
* a forged or altered checkpoint (``checkpoint.signature``,
  ``checkpoint.mismatch``);
* a prune that removed the entry of a given exported checkpoint younger
  than the retention floor (``prune.early``);
* against the vault home's anchor (:mod:`pivault.audit.anchor`), kept
  outside the store: a chain that no longer reaches the newest anchored
  checkpoint — the head row put back as it was earlier, with the tail
  deleted (``tail.rolled_back``) — or whose anchored entries changed
  (``anchor.mismatch``).
"""

from __future__ import annotations

import datetime as _dt
import hmac
import json
import os
import sqlite3
import time
from dataclasses import asdict, dataclass
from typing import Any

from pivault.audit.anchor import REBASE_OPERATIONS, Anchor, AnchorRead, Mark
from pivault.audit.keys import AuditKeyError, AuditKeys, FieldCipher, VerifierKey
from pivault.audit.log import (
    _SELECT_CHECKPOINT,
    AuditError,
    Checkpoint,
    _head_key_id,
    entry_mac,
    entry_rows,
    malformed_columns,
    open_head,
    ratchet,
    undecodable,
)
from pivault.audit.retention import MIN_RETENTION_DAYS
from pivault.errors import PivaultError
from pivault.store.db import Database

__all__ = ["VerifyReport", "verify"]


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :func:`verify`. ``first_bad`` is a sequence number."""

    ok: bool
    checked: int
    first_seq: int | None
    last_seq: int | None
    checkpoints: int
    chain_id: str | None = None
    problem: str | None = None
    first_bad: int | None = None
    message: str = "audit chain intact"
    #: the anchor file checked, and the newest anchored entry the chain was found to reach
    anchor: str | None = None
    anchored_seq: int | None = None
    #: what the operator should know though nothing failed (an anchor missing, torn lines, a re-base)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Bad(Exception):
    def __init__(self, problem: str, first_bad: int | None, message: str) -> None:
        super().__init__(message)
        self.problem, self.first_bad, self.message = problem, first_bad, message


def _holds_records(db: Database) -> bool:
    return db.table_exists("records") and db.query_one("SELECT 1 FROM records LIMIT 1") is not None


def _prune_through(detail_text: str) -> int:
    try:
        detail = json.loads(detail_text)
        return int(detail.get("through", 0))
    except (ValueError, TypeError, AttributeError, OverflowError, RecursionError):
        return 0


def verify(db: Database, verifier: VerifierKey, *, checkpoint: Checkpoint | None = None,
           keyring: FieldCipher | None = None, now: float | None = None,
           anchor: Anchor | str | os.PathLike[str] | None = None,
           anchor_required: bool = False) -> VerifyReport:
    """Verify the whole retained chain.

    ``checkpoint`` is an exported checkpoint kept elsewhere (it bounds what an
    attacker holding the database *and* the keyring can rewrite: its entry
    must still be in the chain, or be older than the retention floor at
    ``now``). With ``keyring`` the head's encrypted key is checked too, which
    catches a tail truncated together with a rewritten head row.

    ``anchor`` is the vault home's anchor file (or a copy of it): the chain
    must still reach its newest mark, with the same MAC, which catches the
    tail rolled back to an earlier copy of itself — the one change the store
    alone cannot show. It is read before the store's snapshot is taken, so a
    checkpoint anchored while this runs is in the snapshot. A missing file
    is a note (a vault older than the anchor has none), or with
    ``anchor_required`` a failure (``anchor.missing``).
    """
    state: dict[str, Any] = {"checked": 0, "first": None, "last": None, "cps": 0, "chain": None,
                             "anchored": None, "notes": []}
    read: AnchorRead | None = None
    where: str | None = None
    if anchor is not None:
        handle = anchor if isinstance(anchor, Anchor) else Anchor(anchor)
        where = str(handle.path)
        try:
            read = handle.read()  # before the snapshot: every mark read is of a committed checkpoint
        except AuditError as exc:
            if exc.code != "anchor.missing":
                raise
            if anchor_required:
                state["missing"] = where
            else:
                state["notes"].append(f"the tail was not checked: no audit anchor at {where} (writers "
                                      "start it at their next checkpoint; `pivault audit "
                                      "export-checkpoint` starts it now)")
        if read is not None and read.torn:
            state["notes"].append(f"{read.torn} torn or damaged line(s) of the audit anchor skipped")
        if read is not None and read.rebase is not None:
            rb = read.rebase
            state["notes"].append(f"the audit anchor was re-based at entry {rb.mark.seq} ({rb.operation}); "
                                  f"{read.superseded} earlier mark(s) describe the chain before it")
    try:
        with db.snapshot():  # a live vault keeps appending while it is verified
            _verify(db, verifier, checkpoint, keyring, state, time.time() if now is None else now, read)
        if state.get("missing"):
            raise _Bad("anchor.missing", None, f"no audit anchor at {where}, and [audit] anchor_required "
                       "is set: the tail cannot be checked")
    except _Bad as bad:
        return VerifyReport(False, state["checked"], state["first"], state["last"], state["cps"],
                            state["chain"], bad.problem, bad.first_bad, bad.message, where,
                            state["anchored"], tuple(state["notes"]))
    return VerifyReport(True, state["checked"], state["first"], state["last"], state["cps"],
                        state["chain"], anchor=where, anchored_seq=state["anchored"],
                        notes=tuple(state["notes"]))


def _verify(db: Database, verifier: VerifierKey, external: Checkpoint | None,
            keyring: FieldCipher | None, state: dict[str, Any], now: float,
            anchor: AnchorRead | None = None) -> None:
    public = verifier.public
    try:
        head = db.query_one("SELECT chain_id, seq, mac, key_ct, cp_seq, cp_ts_us FROM audit_head"
                            " WHERE id = 1")
    except sqlite3.OperationalError as exc:
        if not undecodable(exc):
            raise
        raise _Bad("head.mismatch", None, "the head row holds text that is not UTF-8: it was altered in "
                   "the store") from None
    if head is not None and [v.__class__ for v in head] != [str, int, bytes, bytes, int, int]:
        raise _Bad("head.mismatch", None, "the head row holds a value no writer stores: it was altered "
                   "in the store")
    cps = _checkpoints(db)
    bounds = db.query_one("SELECT MIN(seq), MAX(seq) FROM audit_entries")
    first_seq = int(bounds[0]) if bounds and bounds[0] is not None else None
    state["first"] = first_seq
    if head is None and not cps and first_seq is None:
        if external is not None:
            raise _Bad("tail.truncated", 1, "the audit trail is empty but a checkpoint says "
                       f"it held {external.seq} entries")
        if anchor is not None and anchor.marks:
            _check_anchor(anchor, None, None, 0, {}, None, public, now, state)
        if _holds_records(db):
            # every record is written through the door with its entry, in one transaction: an
            # empty trail beside records is a deleted one, not a vault that has not begun
            raise _Bad("head.missing", 1, "the audit trail is empty, but the store holds records, "
                       "each written with an entry in the trail: the trail was deleted")
        return
    if head is None:
        raise _Bad("head.missing", first_seq, "the audit chain head row is missing")
    chain_id = str(head[0])
    state["chain"] = chain_id
    for cp in cps:
        if cp.chain_id != chain_id or not cp.signature_ok(public):
            raise _Bad("checkpoint.signature", cp.seq,
                       f"checkpoint at entry {cp.seq} is not validly signed for this chain")
    state["cps"] = len(cps)
    if external is not None and (external.chain_id != chain_id or not external.signature_ok(public)):
        raise _Bad("checkpoint.signature", external.seq,
                   "the given checkpoint is not validly signed for this chain")
    by_seq = {cp.seq: cp for cp in cps}

    # -- where the retained chain starts ---------------------------------------
    start_at = (first_seq - 1) if first_seq is not None else int(head[1])
    start = by_seq.get(start_at)
    if start is None:
        earlier = [cp for cp in cps if cp.seq < start_at]
        if earlier:
            gap = earlier[-1].seq + 1
            raise _Bad("entry.missing", gap, f"entry {gap} is missing (deleted)")
        raise _Bad("start.missing", start_at + 1,
                   f"no checkpoint before entry {start_at + 1}: the chain cannot be anchored")
    try:
        key = verifier.unseal(start.sealed_key, start.seal_context)
    except AuditKeyError:
        raise _Bad("checkpoint.signature", start.seq,
                   f"the chain key sealed in checkpoint {start.seq} does not open") from None

    # -- walk every retained entry ----------------------------------------------
    prev = start.mac
    expected = start.seq + 1
    logged_through = 0
    ext_mac: bytes | None = None
    # the entries the anchor marked (their recomputed MACs are compared after the walk), and the
    # operation of the entry a re-base stands on
    anchored = {m.seq for m in anchor.marks if m.checkpoint.chain_id == chain_id} if anchor else set()
    macs_at: dict[int, bytes] = {start.seq: start.mac}
    rebase_seq = anchor.rebase.mark.seq if anchor is not None and anchor.rebase is not None else None
    rebase_op: str | None = None
    for row in entry_rows(db, " ORDER BY seq", stream=True):
        seq = int(row[0])
        if seq != expected:
            raise _Bad("entry.missing", expected, f"entry {expected} is missing (deleted)")
        odd = malformed_columns(row)
        if odd:
            # text in a number's column, a blob in a text one, text that is not UTF-8: SQLite keeps
            # what it is given, and no writer stores such values
            raise _Bad("entry.mac", seq, f"entry {seq} holds a value no writer stores ({', '.join(odd)}): "
                                         "modified in the store")
        mac = entry_mac(key, row[:13], prev)
        if not hmac.compare_digest(mac, row[13]):
            raise _Bad("entry.mac", seq, f"entry {seq} fails its MAC: modified, inserted, moved, "
                                         "or the entry before it was removed")
        stored_cp = by_seq.get(seq)
        if stored_cp is not None and not hmac.compare_digest(stored_cp.mac, mac):
            raise _Bad("checkpoint.mismatch", seq, f"checkpoint at entry {seq} disagrees with the chain")
        if external is not None and seq == external.seq:
            ext_mac = mac
        if seq in anchored:
            macs_at[seq] = mac
        if seq == rebase_seq:
            rebase_op = row[5]
        if row[5] == "audit.prune":
            logged_through = max(logged_through, _prune_through(row[12]))
        prev = mac
        key = ratchet(key)
        expected += 1
        state["checked"] += 1
        state["last"] = seq
    last = expected - 1

    if start.seq > 0 and logged_through < start.seq:
        raise _Bad("prune.unlogged", logged_through + 1,
                   f"entries {logged_through + 1}..{start.seq} were removed without a logged prune")

    # -- the tail ---------------------------------------------------------------------
    later = [cp.seq for cp in cps if cp.seq > last]
    claimed = max([int(head[1]), *later, external.seq if external is not None else 0])
    if claimed > last:
        raise _Bad("tail.truncated", last + 1,
                   f"the chain ends at entry {last} but entry {claimed} was recorded: "
                   f"entries from {last + 1} are missing")
    if int(head[1]) < last:
        raise _Bad("head.mismatch", int(head[1]) + 1,
                   f"entries after {int(head[1])} were added without moving the head")
    if not hmac.compare_digest(bytes(head[2]), prev):
        raise _Bad("head.mismatch", last, f"the head row disagrees with entry {last}")
    if external is not None and external.seq >= start.seq:
        reference = start.mac if external.seq == start.seq else ext_mac
        if reference is None or not hmac.compare_digest(reference, external.mac):
            raise _Bad("checkpoint.mismatch", external.seq,
                       f"the given checkpoint disagrees with entry {external.seq}")
    elif external is not None and external.ts_us > (now - MIN_RETENTION_DAYS * 86400) * 1_000_000:
        # Its entry was pruned. The whole writer (store and keyring) can log a prune of any recent
        # entries, with a clock set ahead; the rule it breaks is the retention floor, and the
        # checkpoint's own signed time, kept out of the writer's reach, shows it.
        made = _dt.datetime.fromtimestamp(external.ts_us / 1e6, _dt.UTC).strftime("%Y-%m-%d")
        raise _Bad("prune.early", external.seq,
                   f"entry {external.seq} of the given checkpoint (made {made}) was pruned, but entries "
                   f"are kept at least {MIN_RETENTION_DAYS} days: removed before their time")
    cp_seq: int | None = None
    cp_ts_us: int | None = None
    if keyring is not None:
        try:
            head_key, cp_seq, cp_ts_us = open_head(
                keyring.decrypt(_head_key_id(chain_id, int(head[1])), "ratchet", bytes(head[3])))
        except PivaultError:
            head_key, cp_seq, cp_ts_us = b"", None, None
        if not hmac.compare_digest(head_key, key):
            raise _Bad("tail.truncated", last + 1,
                       f"the head's chain key is not the one after entry {last}: entries from "
                       f"{last + 1} were removed and the head rewritten")
    if anchor is not None:
        _check_anchor(anchor, chain_id, start, last, macs_at, rebase_op, public, now, state)
    if start.seq > 0 and start.ts_us > (now - MIN_RETENTION_DAYS * 86400) * 1_000_000:
        # The chain starts at a checkpoint a logged prune stood on, but that checkpoint's signed time
        # is younger than the retention floor: no due prune reaches it. A prune deceived by an entry's
        # time set back in the store, or one logged with a clock set ahead. Checked after the anchor
        # and a given checkpoint, which name what the prune removed.
        raise _Bad("prune.early", start.seq,
                   f"entries up to {start.seq} were pruned, but the checkpoint there was made "
                   f"{_day(start.ts_us)}, and entries are kept at least {MIN_RETENTION_DAYS} days: "
                   "removed before their time")
    if keyring is not None and cp_seq is not None and (cp_seq, cp_ts_us) != (head[4], head[5]):
        # Checked last, the chain and the anchor having said what they could: the writers follow
        # the schedule sealed with the key, so the change stopped nothing; but someone tried to
        # stop the checkpoints, and with them the anchor's marks.
        raise _Bad("head.mismatch", int(head[1]),
                   "the head row's checkpoint schedule is not the one sealed with its key: it was "
                   "altered in the store (to stop checkpoints, and with them the anchor's marks)")


def _checkpoints(db: Database) -> list[Checkpoint]:
    """The stored checkpoints; one holding values no writer stores is named, not a crash."""
    try:
        rows = db.query(_SELECT_CHECKPOINT + " ORDER BY seq")
    except sqlite3.OperationalError as exc:
        if not undecodable(exc):
            raise
        raise _Bad("checkpoint.signature", None, "a checkpoint holds text that is not UTF-8: it was "
                   "altered in the store") from None
    out: list[Checkpoint] = []
    for row in rows:
        try:
            out.append(Checkpoint.from_row(row))
        except AuditError as exc:
            raise _Bad("checkpoint.signature", row[0] if row[0].__class__ is int else None,
                       exc.message) from None
    return out


def _day(ts_us: int) -> str:
    return _dt.datetime.fromtimestamp(ts_us / 1e6, _dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _check_anchor(anchor: AnchorRead, chain_id: str | None, start: Checkpoint | None, last: int,
                  macs_at: dict[int, bytes], rebase_op: str | None, public: AuditKeys, now: float,
                  state: dict[str, Any]) -> None:
    """The chain against the marks kept outside the store, from the anchor's last re-base on.

    A mark is trusted only once its signature checks, and checked only when it
    would fail the chain: a mark the chain agrees with says nothing new, and
    signatures are the costly part of reading a long anchor.
    """
    def authentic(m: Mark) -> None:
        if not m.checkpoint.signature_ok(public):
            raise _Bad("anchor.signature", m.seq, f"line {m.line} of the audit anchor is not signed by "
                       "this vault's audit key: another vault's anchor, or an altered line")

    rb = anchor.rebase
    if rb is not None:
        authentic(rb.mark)
        if rb.operation not in REBASE_OPERATIONS or not public.check_signature(rb.signature, rb.message()):
            raise _Bad("anchor.signature", rb.mark.seq, f"the re-base on line {rb.mark.line} of the audit "
                       "anchor is not signed by this vault's audit key")
    if not anchor.marks:
        return
    foreign = [m for m in anchor.marks if m.checkpoint.chain_id != chain_id]
    if foreign:
        m = foreign[-1]
        authentic(m)
        if chain_id is None:
            raise _Bad("tail.rolled_back", 1, f"the audit trail is empty, but the audit anchor marked "
                       f"entry {m.seq} ({_day(m.checkpoint.ts_us)}, line {m.line}): the trail was deleted")
        raise _Bad("tail.rolled_back", None, f"the store's audit chain is not the one the audit anchor "
                   f"marked last (entry {m.seq}, {_day(m.checkpoint.ts_us)}, line {m.line}): the trail was "
                   "replaced")
    assert start is not None
    newest = anchor.newest(chain_id)
    assert newest is not None
    if newest.seq > last:
        authentic(newest)
        raise _Bad("tail.rolled_back", last + 1,
                   f"the chain ends at entry {last}, but the audit anchor marked entry {newest.seq} "
                   f"({_day(newest.checkpoint.ts_us)}, line {newest.line}): entries from {last + 1} were "
                   "removed and the head put back as it was")
    # a mark whose entry was pruned since: only entries past the retention floor go, and the newest
    # such mark is the youngest of them
    pruned = max((m for m in anchor.marks if m.seq < start.seq), key=lambda m: m.seq, default=None)
    if pruned is not None and pruned.checkpoint.ts_us > (now - MIN_RETENTION_DAYS * 86400) * 1_000_000:
        authentic(pruned)
        raise _Bad("prune.early", pruned.seq, f"entry {pruned.seq}, marked in the audit anchor "
                   f"({_day(pruned.checkpoint.ts_us)}, line {pruned.line}), was pruned, but entries are kept "
                   f"at least {MIN_RETENTION_DAYS} days: removed before their time")
    for m in sorted(anchor.marks, key=lambda m: m.seq):
        if m.seq < start.seq:
            continue
        got = macs_at.get(m.seq)
        if got is None or not hmac.compare_digest(got, m.checkpoint.mac):
            authentic(m)
            raise _Bad("anchor.mismatch", m.seq, f"entry {m.seq} is not the one the audit anchor marked "
                       f"(line {m.line}): the chain was rewritten from there")
    if rb is not None and rb.mark.seq > start.seq and rebase_op not in REBASE_OPERATIONS:
        raise _Bad("anchor.rebase", rb.mark.seq, f"the audit anchor was re-based at entry {rb.mark.seq} "
                   f"(line {rb.mark.line}), but that entry records no restore")
    state["anchored"] = newest.seq
