"""The audit anchor: how far the chain went, kept outside the store.

Everything the verifier checks lives in the store, so the store alone cannot
show one change: the head row put back as it was at entry ``m`` (from a
backup or a snapshot) with every entry and checkpoint after ``m`` deleted is
a consistent, shorter chain. The anchor is a mark the store's holder cannot
reach: an append-only file, one per vault home (``[audit] anchor``, default
``<home>/audit-anchor.jsonl``, made 0600), to which the process that writes
a checkpoint appends it once its transaction has committed — the journal's
chaining thread, the node's chainer under ``pivault serve``, a command. A
checkpoint is made every ``checkpoint_every`` entries or
``checkpoint_seconds``, so the anchor costs one small ``write`` per
checkpoint and nothing per entry.

Each line is one JSON object:

* ``"kind": "mark"`` — a signed checkpoint (chain, seq, time, MAC, sealed key,
  signature), exactly as the store holds it, so the line can be checked
  against the vault's public key wherever the file is copied;
* ``"kind": "rebase"`` — the same for the checkpoint at an audited
  ``backup.restore`` (or ``audit.rebase``) entry, and, signed again with the
  writer's key, the newest mark it supersedes. A restore puts back an
  earlier chain on purpose; the marks before the re-base then describe a
  history the store no longer holds, and only the marks from the re-base on
  are checked.

:func:`pivault.audit.verify.verify` reads the file *before* it takes its
snapshot of the store (a mark is written only after its checkpoint
committed, so every mark read is in the snapshot) and fails with
``tail.rolled_back`` when the chain no longer reaches the newest mark,
``anchor.mismatch`` when an anchored entry has another MAC now. A line torn
by a crash is skipped, never a failure: the next writer starts on a fresh
line. Several processes append at once (``O_APPEND``, one ``write`` a line,
under ``flock``).

What it does not cover: whoever holds the database *and* this file can roll
back both. Keep copies of the anchor (or exported checkpoints) on another
host and verify against them with ``--anchor``.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pivault.audit.log import AuditError, Checkpoint

if TYPE_CHECKING:
    from pivault.audit.keys import WriterKeys
    from pivault.audit.log import AuditLog
    from pivault.policy.context import AccessContext
    from pivault.store.db import Database

__all__ = ["ANCHOR_NAME", "REBASE_OPERATIONS", "Anchor", "AnchorRead", "Mark", "Rebase", "Settled",
           "anchor_path", "settle", "unreached"]

log = logging.getLogger("pivault.audit")

#: the anchor's file name in a vault home, unless ``[audit] anchor`` names another path
ANCHOR_NAME = "audit-anchor.jsonl"
FORMAT = "pivault.audit.anchor"
REBASE_DOMAIN = b"pivault.audit.anchor.rebase.v1\n"
#: the audited operations a re-base may stand on: its checkpoint is at such an entry
REBASE_OPERATIONS = frozenset({"backup.restore", "audit.rebase"})
#: a line longer than this is not one the writers make: skipped as damaged
_MAX_LINE = 8192
#: a failed append is logged at most this often per process (the next checkpoint tries again)
_WARN_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class Mark:
    """One checkpoint as the anchor holds it; ``line`` is its line number in the file (from 1)."""

    checkpoint: Checkpoint
    line: int

    @property
    def seq(self) -> int:
        return self.checkpoint.seq


@dataclass(frozen=True, slots=True)
class Rebase:
    """A re-base: from its checkpoint on, the chain is the one a restore put back."""

    mark: Mark
    operation: str
    #: the newest mark it supersedes (None: the anchor held none for any chain)
    from_chain: str | None
    from_seq: int | None
    signature: bytes

    def message(self) -> bytes:
        cp = self.mark.checkpoint
        return rebase_message(cp, self.operation, self.from_chain, self.from_seq)


def rebase_message(cp: Checkpoint, operation: str, from_chain: str | None, from_seq: int | None) -> bytes:
    """What the writer signs for a re-base: the checkpoint it starts at and the mark it supersedes."""
    return REBASE_DOMAIN + json.dumps(
        {"chain": cp.chain_id, "seq": cp.seq, "time_us": cp.ts_us, "mac": cp.mac.hex(),
         "operation": operation, "from_chain": from_chain, "from_seq": from_seq},
        sort_keys=True, separators=(",", ":")).encode("ascii")


@dataclass(frozen=True)
class AnchorRead:
    """What an anchor file says now: the marks from its last re-base on, in file order."""

    path: Path
    #: the marks checked: from the last re-base (its own checkpoint first) to the end
    marks: tuple[Mark, ...]
    #: the last re-base, if any
    rebase: Rebase | None
    #: complete lines read, and lines skipped as torn (a crash mid-write) or damaged
    lines: int
    torn: int
    #: marks before the last re-base: history the store no longer holds, not checked
    superseded: int = 0

    def newest(self, chain_id: str | None = None) -> Mark | None:
        """The mark of the highest entry (of ``chain_id``, if given)."""
        got = [m for m in self.marks if chain_id is None or m.checkpoint.chain_id == chain_id]
        return max(got, key=lambda m: m.seq) if got else None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _line(cp: Checkpoint, kind: str, extra: dict[str, Any] | None = None) -> bytes:
    doc: dict[str, Any] = {
        "format": FORMAT, "version": 1, "kind": kind, "chain": cp.chain_id, "seq": cp.seq,
        "time_us": cp.ts_us, "mac": cp.mac.hex(), "sealed_key": _b64(cp.sealed_key),
        "signature": _b64(cp.signature)}
    if extra:
        doc.update(extra)
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n"


def _parse(raw: bytes, number: int) -> Mark | Rebase | None:
    """One line's mark or re-base; None for a line that is not one (torn, damaged, another format)."""
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != 1:
            return None
        cp = Checkpoint(chain_id=str(doc["chain"]), seq=int(doc["seq"]), ts_us=int(doc["time_us"]),
                        mac=bytes.fromhex(doc["mac"]),
                        sealed_key=base64.b64decode(doc["sealed_key"], validate=True),
                        signature=base64.b64decode(doc["signature"], validate=True))
        if cp.seq < 0 or len(cp.mac) != 32:
            return None
        mark = Mark(cp, number)
        if doc["kind"] == "mark":
            return mark
        if doc["kind"] != "rebase":
            return None
        reb = doc["rebase"]
        from_seq = reb.get("from_seq")
        from_chain = reb.get("from_chain")
        return Rebase(mark, str(reb["operation"]), None if from_chain is None else str(from_chain),
                      None if from_seq is None else int(from_seq),
                      base64.b64decode(reb["signature"], validate=True))
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, OverflowError,
            RecursionError, UnicodeDecodeError):
        return None


class Anchor:
    """A vault home's anchor file: appended to by the writers, read by ``audit verify``.

    Appends never raise into the writer: the checkpoint is already committed
    when its mark is written, so a failure here (a full disk, a file made
    read-only) cannot undo it; it is logged, and the next checkpoint tries
    again.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().absolute()
        self._warned = 0.0
        #: appends that failed in this process (for tests and the operator's logs)
        self.failures = 0

    def __repr__(self) -> str:
        return f"Anchor({str(self.path)!r})"

    # -- writing -------------------------------------------------------------------------
    def mark(self, cp: Checkpoint) -> bool:
        """Append ``cp`` (committed); False if it could not be written (logged)."""
        return self._append(_line(cp, "mark"))

    def rebase(self, cp: Checkpoint, operation: str, signature: bytes, *,
               superseded: Mark | None) -> None:
        """Append a re-base at ``cp``, the checkpoint of the audited ``operation`` entry.

        ``signature`` is the writer's over :func:`rebase_message`. Unlike a
        mark, a re-base that cannot be written raises: the restore that
        asked for it must say so, or ``audit verify`` would fail afterwards.
        """
        if operation not in REBASE_OPERATIONS:
            raise AuditError("a re-base stands on a backup.restore or audit.rebase entry",
                             code="anchor.rebase")
        extra = {"rebase": {"operation": operation,
                            "from_chain": superseded.checkpoint.chain_id if superseded else None,
                            "from_seq": superseded.seq if superseded else None,
                            "signature": _b64(signature)}}
        if not self._append(_line(cp, "rebase", extra), quiet=False):
            raise AuditError(f"the audit anchor {self.path} cannot be written", code="anchor.write",
                             hint="check the file's directory and permissions, then run "
                                  "`pivault audit rebase-anchor --yes`")

    def _append(self, line: bytes, *, quiet: bool = True) -> bool:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # O_APPEND: each line lands at the end whoever else appends, and a file made
            # append-only (chattr +a) still takes it. The flock (per open, so between threads
            # too) orders the newline repair below with the other writers' lines
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                         0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line  # a line torn by a crash stays a line of its own
                os.write(fd, line)
            finally:
                os.close(fd)  # releases the flock
            return True
        except OSError as exc:
            self.failures += 1
            now = time.monotonic()
            if not quiet or now - self._warned >= _WARN_EVERY:
                self._warned = now
                log.error("audit anchor %s not written (%s): the checkpoint is in the store, the "
                          "mark outside it is missing", self.path, type(exc).__name__)
            return False

    # -- reading -------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> AnchorRead:
        """The file's marks from its last re-base on; torn and damaged lines are counted, not fatal.

        Raises ``anchor.read`` for a path that is not a readable regular file.
        """
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - closed below, after the file type is checked
        except FileNotFoundError:
            raise AuditError(f"no audit anchor at {self.path}", code="anchor.missing") from None
        except OSError as exc:
            raise AuditError(f"the audit anchor {self.path} cannot be read ({type(exc).__name__})",
                             code="anchor.read") from None
        with fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise AuditError(f"the audit anchor {self.path} is not a regular file", code="anchor.read")
            marks: list[Mark] = []
            rebase: Rebase | None = None
            lines = torn = superseded = 0
            number = 0
            while True:
                raw = fh.readline(_MAX_LINE + 1)
                if not raw:
                    break
                number += 1
                if not raw.endswith(b"\n"):
                    if len(raw) > _MAX_LINE:  # a damaged line too long to be a mark: skip to its end
                        while raw and not raw.endswith(b"\n"):
                            raw = fh.readline(_MAX_LINE + 1)
                    torn += 1  # or the last line, torn by a crash while it was written
                    continue
                item = _parse(raw, number)
                if item is None:
                    if raw.strip():
                        torn += 1
                    continue
                lines += 1
                if isinstance(item, Rebase):
                    superseded += len(marks)
                    rebase, marks = item, [item.mark]
                else:
                    marks.append(item)
        return AnchorRead(self.path, tuple(marks), rebase, lines, torn, superseded)


def anchor_path(home: str | os.PathLike[str], configured: str | None) -> Path:
    """The anchor file of the vault home ``home``: ``[audit] anchor``, else ``<home>/audit-anchor.jsonl``."""
    if configured:
        return Path(configured).expanduser().absolute()
    return Path(home).expanduser().absolute() / ANCHOR_NAME


# -- after a restore ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Settled:
    """What :func:`settle` did: re-based the anchor (from ``superseded``) or marked the chain as it is."""

    rebased: bool
    checkpoint: Checkpoint
    #: the newest mark the store's chain no longer reaches (what a re-base left behind)
    superseded: Mark | None = None
    #: the audited entry the re-base stands on: backup.restore or audit.rebase
    operation: str | None = None


def unreached(read: AnchorRead, db: Database) -> Mark | None:
    """The newest mark (from the anchor's last re-base on) that the store's chain no longer holds.

    None when the store holds every mark's entry with its MAC, or the entry
    was pruned. A quick look for :func:`settle`, not a verification: ``audit
    verify`` recomputes the chain.
    """
    head = db.query_one("SELECT chain_id FROM audit_head WHERE id = 1")
    chain_id = str(head[0]) if head else None
    foreign = [m for m in read.marks if m.checkpoint.chain_id != chain_id]
    if foreign:
        return foreign[-1]
    newest = read.newest(chain_id)
    if newest is None:
        return None
    cp = newest.checkpoint
    for table in ("audit_entries", "audit_checkpoints"):
        row = db.query_one(f"SELECT mac FROM {table} WHERE seq = ?", (cp.seq,))
        if row is not None:
            return None if bytes(row[0]) == cp.mac else newest
    first = db.query_one("SELECT MIN(seq) FROM audit_entries")
    pruned = first is not None and first[0] is not None and cp.seq < int(first[0])
    return None if pruned else newest


def settle(log: AuditLog, writer: WriterKeys, anchor: Anchor, ctx: AccessContext, *,
           detail: dict[str, Any] | None = None) -> Settled:
    """Bring the anchor to the chain as it is after a restore, in the open.

    A restore (or a store put back by other means: a PostgreSQL point-in-time
    recovery, a snapshot) legitimately leaves the anchor ahead of the chain,
    and ``audit verify`` would report the tail rolled back from then on. If
    it is ahead, the re-base stands on an audited entry — the restore's
    ``backup.restore`` when it is the chain's last, else a new
    ``audit.rebase`` — with a checkpoint at it, and the anchor line saying
    which mark it supersedes is signed with the writer's key: whoever holds
    only the database can neither make one nor hide one, and the verifier
    names every re-base. If the anchor is not ahead, the chain's checkpoint
    is simply marked.

    ``log`` writes no anchor of its own: the lines here are this function's.
    """
    from pivault.audit.log import AuditEvent

    if log.anchor is not None:
        raise AuditError("settle() writes the anchor itself: give it a log without one", code="audit.config")
    db = log.db
    try:
        read: AnchorRead | None = anchor.read()
    except AuditError as exc:
        if exc.code != "anchor.missing":
            raise
        read = None
    behind = unreached(read, db) if read is not None else None
    if behind is None:
        cp = log.checkpoint()
        if not anchor.mark(cp):
            raise AuditError(f"the audit anchor {anchor.path} cannot be written", code="anchor.write",
                             hint="check the file's directory and permissions")
        return Settled(False, cp)
    with db.transaction():
        row = db.query_one("SELECT operation FROM audit_entries WHERE seq = "
                           "(SELECT seq FROM audit_head WHERE id = 1)")
        operation = str(row[0]) if row is not None else ""
        if operation != "backup.restore":
            operation = "audit.rebase"
            log.append(AuditEvent.of(ctx, operation, "ok", detail={
                "anchor_seq": behind.seq, **(detail or {})}))
        cp = log.checkpoint()  # in this transaction: at the entry just read or appended
    superseded_chain = behind.checkpoint.chain_id
    signature = writer.sign(rebase_message(cp, operation, superseded_chain, behind.seq))
    anchor.rebase(cp, operation, signature, superseded=behind)
    return Settled(True, cp, behind, operation)
