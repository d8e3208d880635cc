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
  than the retention floor (``prune.early``).
"""

from __future__ import annotations

import datetime as _dt
import hmac
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from pivault.audit.keys import AuditKeyError, FieldCipher, VerifierKey
from pivault.audit.log import (
    ENTRY_COLUMNS,
    Checkpoint,
    _head_key_id,
    entry_mac,
    load_checkpoints,
    ratchet,
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
    except (ValueError, TypeError, AttributeError):
        return 0


def verify(db: Database, verifier: VerifierKey, *, checkpoint: Checkpoint | None = None,
           keyring: FieldCipher | None = None, now: float | None = None) -> VerifyReport:
    """Verify the whole retained chain.

    ``checkpoint`` is an exported checkpoint kept elsewhere (it bounds what an
    attacker holding the database *and* the keyring can rewrite: its entry
    must still be in the chain, or be older than the retention floor at
    ``now``). With ``keyring`` the head's encrypted key is checked too, which
    catches a tail truncated together with a rewritten head row.
    """
    state: dict[str, Any] = {"checked": 0, "first": None, "last": None, "cps": 0, "chain": None}
    try:
        with db.snapshot():  # a live vault keeps appending while it is verified
            _verify(db, verifier, checkpoint, keyring, state, time.time() if now is None else now)
    except _Bad as bad:
        return VerifyReport(False, state["checked"], state["first"], state["last"], state["cps"],
                            state["chain"], bad.problem, bad.first_bad, bad.message)
    return VerifyReport(True, state["checked"], state["first"], state["last"], state["cps"],
                        state["chain"])


def _verify(db: Database, verifier: VerifierKey, external: Checkpoint | None,
            keyring: FieldCipher | None, state: dict[str, Any], now: float) -> None:
    public = verifier.public
    head = db.query_one("SELECT chain_id, seq, mac, key_ct FROM audit_head WHERE id = 1")
    cps = load_checkpoints(db)
    bounds = db.query_one("SELECT MIN(seq), MAX(seq) FROM audit_entries")
    first_seq = int(bounds[0]) if bounds and bounds[0] is not None else None
    state["first"] = first_seq
    if head is None and not cps and first_seq is None:
        if external is not None:
            raise _Bad("tail.truncated", 1, "the audit trail is empty but a checkpoint says "
                       f"it held {external.seq} entries")
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
    cols = ", ".join((*ENTRY_COLUMNS, "mac"))
    for row in db.stream(f"SELECT {cols} FROM audit_entries ORDER BY seq"):
        seq = int(row[0])
        if seq != expected:
            raise _Bad("entry.missing", expected, f"entry {expected} is missing (deleted)")
        values = (seq, int(row[1]), *row[2:7], int(row[7]), *row[8:13])
        mac = entry_mac(key, values, prev)
        if not hmac.compare_digest(mac, bytes(row[13])):
            raise _Bad("entry.mac", seq, f"entry {seq} fails its MAC: modified, inserted, moved, "
                                         "or the entry before it was removed")
        stored_cp = by_seq.get(seq)
        if stored_cp is not None and not hmac.compare_digest(stored_cp.mac, mac):
            raise _Bad("checkpoint.mismatch", seq, f"checkpoint at entry {seq} disagrees with the chain")
        if external is not None and seq == external.seq:
            ext_mac = mac
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
    if keyring is not None:
        try:
            head_key = keyring.decrypt(_head_key_id(chain_id, int(head[1])), "ratchet", bytes(head[3]))
        except PivaultError:
            head_key = b""
        if not hmac.compare_digest(head_key, key):
            raise _Bad("tail.truncated", last + 1,
                       f"the head's chain key is not the one after entry {last}: entries from "
                       f"{last + 1} were removed and the head rewritten")
