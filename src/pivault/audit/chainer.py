"""The node's audit chainer: one process chains the journals of every worker on the node.

Each worker still writes its entries ahead to its own journal, one ``write``
per request, before any data leaves (:mod:`pivault.audit.journal`). What a
chaining thread inside the worker would then do — two MACs per entry and a
write transaction every few milliseconds — is done here, in a process of its
own. A thread beside the requests shares their interpreter: each time a
request let go of it (every SQLite call does), the chaining thread took it,
and the request waited for it back. Measured in one process, that hand-off
cost more than the chaining's own work (BENCHMARKS *door*). In a separate
process the chaining runs on another core, and one chainer for all the
workers makes one transaction a round for all their journals instead of one
per worker thread.

How the two sides agree, with no other channel than files:

* the chainer reads each journal's new complete lines and chains those whose
  journal sequence is above the last one chained (``audit_journals``, updated
  in the same transaction as the entries), so nothing is chained twice or
  skipped, whatever the chainer or the worker did in between;
* after each commit it writes the journal's progress file
  (``<journal>.chained``: the last sequence chained, and a failure code). The
  worker reads it on every entry: it refuses requests (``audit.unavailable``)
  when the chainer reports a failure, or when its oldest waiting entry has
  waited ``stale_after`` seconds (no chainer running) — fail closed, as with
  the thread;
* a worker starts its file afresh once everything in it is chained; the
  chainer notices because the line at its reading position is not the next
  sequence, and reads the file from the start;
* a journal whose process is gone (its ``flock`` is free) is chained to its
  end and removed, as a starting process recovers journals in thread mode.

One chainer per journal directory: it holds ``chainer.lock`` there, and a
second one waits for the first to stop.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pivault.audit.journal import (
    PROGRESS,
    PROGRESS_SUFFIX,
    chained_seq,
    parse_line,
    refusal,
    remove_journal,
    still_there,
)
from pivault.audit.log import encode_fields
from pivault.crypto.hmac256 import HmacSha256

if TYPE_CHECKING:
    from pivault.audit.log import AuditLog
    from pivault.store.db import Database

__all__ = ["LOCK_NAME", "NodeChainer"]

log = logging.getLogger("pivault.audit")

LOCK_NAME = "chainer.lock"
#: failure code written to a progress file while the chain cannot be written
FAILED = 1


@dataclass
class _Tail:
    """What the chainer knows of one live journal."""

    fd: int
    #: the last journal sequence chained from it
    done: int
    #: what tags its lines
    mac: HmacSha256
    #: the store knows it (registered by its process before it took its name); a journal it
    #: does not know is refused whole, and its process, if it lives, is told to refuse requests
    known: bool = True
    #: where its next unread line starts
    offset: int = 0
    #: its progress file; none if its process chains it itself (a thread-mode journal: the
    #: command line beside a server) — left alone while that process lives
    progress_fd: int = -1


@dataclass
class _Read:
    """A journal's entries read in a round, chained together with the others' or not at all."""

    jid: str
    tail: _Tail
    rows: list[tuple[int, tuple[Any, ...]]]
    encoded: list[bytes]
    #: the last journal sequence among them, and where the next unread line starts
    last: int
    offset: int
    #: complete lines refused (their tag does not check, or the journal is unknown), and
    #: sequence numbers skipped between the lines read (lines taken out of the file)
    refused: int = 0
    missing: int = 0


class NodeChainer:
    """Chains the journals in ``directory`` into ``audit_log``'s store, round after round.

    ``audit_log`` is an :class:`~pivault.audit.log.AuditLog` without a
    journal of its own (its keys make the MACs and checkpoints). ``db``, if
    given, is the connection the chainer writes with (default the log's).
    """

    def __init__(self, audit_log: AuditLog, directory: str | os.PathLike[str], *, max_delay: float = 0.02,
                 max_batch: int = 500, db: Database | None = None, idle_delay: float = 0.2) -> None:
        self.log = audit_log
        self.directory = Path(directory)
        self.max_delay = max_delay
        self.max_batch = max_batch
        self.idle_delay = idle_delay
        self.db = db if db is not None else audit_log.db
        self._tails: dict[str, _Tail] = {}
        self._lock_fd = -1
        self._failing = False

    # -- the process's life -----------------------------------------------------------------
    def acquire(self, stop: threading.Event | None = None, poll: float = 0.2) -> bool:
        """Take the directory's chainer lock, waiting while another chainer holds it; False if stopped."""
        for level in (*reversed(self.directory.parents[:2]), self.directory):
            level.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock_fd = fd
                return True
            except BlockingIOError:
                if stop is not None and stop.wait(poll):
                    os.close(fd)
                    return False
                if stop is None:
                    time.sleep(poll)

    def run(self, stop: threading.Event) -> None:
        """Chain every ``max_delay`` until ``stop`` is set, then chain what is left and release.

        While rounds find nothing to chain (an idle node), the wait between them doubles up to
        ``idle_delay``, and falls back to ``max_delay`` at the first round that chains again: an
        idle service does not wake fifty times a second. The first entry after a quiet spell
        then waits for its chaining up to ``idle_delay``, a tenth of the ``stale_after`` at
        which workers would refuse requests; it was written to its journal before its request
        was answered, as always.
        """
        if not self.acquire(stop):
            return
        backoff = 0.05
        wait = self.max_delay
        try:
            while not stop.is_set():
                try:
                    chained = self.run_once()
                    backoff = 0.05
                    wait = self.max_delay if chained else min(wait * 2, max(self.idle_delay, self.max_delay))
                    stop.wait(wait)
                except Exception as exc:  # the store is down or locked: report, retry with backoff
                    self._fail(exc)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 2.0)
            with contextlib.suppress(Exception):
                self.run_once()
        finally:
            self.close()

    def close(self) -> None:
        for tail in self._tails.values():
            self._forget(tail)
        self._tails.clear()
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = -1

    # -- one round ---------------------------------------------------------------------------
    def run_once(self) -> int:
        """Chain what every journal holds now, in one transaction; return how many entries.

        Raises if the store fails; then nothing of the round counts as chained, and the
        next round reads the same lines again.
        """
        reads: list[_Read] = []
        gone: list[tuple[str, Path]] = []
        seen: set[str] = set()
        for path in sorted(self.directory.glob("*.journal")):
            jid = path.stem
            seen.add(jid)
            tail = self._tails.get(jid)
            if tail is None:
                tail = self._open(path)
                if tail is None:
                    continue
                self._tails[jid] = tail
            try:
                fcntl.flock(tail.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its process is alive
                if tail.progress_fd >= 0 and tail.known:
                    reads.append(self._read(jid, tail, self.max_batch))
                continue
            if not still_there(path, tail.fd):
                # removed since we listed it, by a starting process that recovered it or by its
                # own at a clean exit: everything in it is chained, and its progress row is ours
                # to drop as when it is no longer listed
                if tail.progress_fd >= 0:
                    self.db.execute("DELETE FROM audit_journals WHERE journal_id = ?", (jid,))
                self._forget(self._tails.pop(jid))
                continue
            # its process is gone: what it left is chained, and the journal goes. Its own
            # thread may have chained more since we first saw it: the store says how much
            done = chained_seq(self.db, jid)
            if done is not None and done > tail.done:
                tail.done, tail.offset = done, 0
            reads.append(self._read(jid, tail, None))
            gone.append((jid, path))
        total = self._commit(reads)
        refused = {r.jid for r in reads if r.refused or r.missing}
        for jid, path in gone:
            remove_journal(self.db, path, keep=jid in refused)
            self._forget(self._tails.pop(jid))
        for jid in [j for j in self._tails if j not in seen]:
            # removed by its process at a clean exit, everything chained (or recovered by another)
            if self._tails[jid].progress_fd >= 0:
                self.db.execute("DELETE FROM audit_journals WHERE journal_id = ?", (jid,))
            self._forget(self._tails.pop(jid))
        if self._failing:
            self._failing = False
            for tail in self._tails.values():
                self._report(tail, 0)
            log.warning("audit chainer: chaining works again")
        return total

    def _open(self, path: Path) -> _Tail | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None  # removed meanwhile
        done = chained_seq(self.db, path.stem)
        if done is None and not still_there(path, fd):
            os.close(fd)  # recovered and removed (row and all) by another process meanwhile
            return None
        tail = _Tail(fd, done or 0, self.log.journal_mac(path.stem), known=done is not None)
        # a node-mode worker makes its progress file before its journal
        with contextlib.suppress(OSError):
            tail.progress_fd = os.open(path.with_suffix(PROGRESS_SUFFIX), os.O_WRONLY | os.O_CLOEXEC)
        if not tail.known:
            # Every writer registers its journal before the journal takes its name: this one is
            # not a writer's, or a removed one put back. Nothing in it is chained; a process
            # holding it is told that its entries cannot be (it refuses requests), and once the
            # file is free its lines are counted in the trail.
            log.error("audit chainer: a journal the store does not know was found; it is not chained")
            self._report(tail, FAILED)
            return tail
        self._report(tail, 0)
        return tail

    def _forget(self, tail: _Tail) -> None:
        for fd in (tail.fd, tail.progress_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _read(self, jid: str, tail: _Tail, limit: int | None) -> _Read:
        """The entries after the last chained, up to ``limit``; nothing moves until they are chained."""
        size = os.fstat(tail.fd).st_size
        offset = tail.offset if tail.offset <= size else 0
        lines = _complete_lines(tail.fd, offset, size)
        first = parse_line(lines[0], tail.mac) if offset and lines else None
        if offset and lines and (first is None or first[0] != tail.done + 1):
            # the file was started afresh and has grown past where we were (we would read from
            # the middle of a line): read it whole
            offset = 0
            lines = _complete_lines(tail.fd, 0, size)
        out = _Read(jid, tail, [], [], tail.done, offset)
        pos = offset
        for raw in lines:
            pos += len(raw) + 1
            line = parse_line(raw, tail.mac) if tail.known else None
            if line is None:
                # a complete line whose tag does not check: altered, made by someone without the
                # writer's keys, copied from another journal, or two lines run together after a
                # failed write. Its sequence number is not believed (a forged high one would make
                # every later line look chained): it is counted, and the next lines are read
                out.refused += 1
                out.offset = pos
                continue
            if line[0] <= out.last:
                out.offset = pos  # chained before
                continue
            seq, ts_us, fields, encoded = line
            out.missing += seq - out.last - 1  # lines taken out of the file
            out.rows.append((ts_us, fields))
            out.encoded.append(encoded)
            out.last, out.offset = seq, pos
            if limit is not None and len(out.rows) >= limit:
                break
        return out

    def _commit(self, reads: list[_Read]) -> int:
        """Chain the round's entries of every journal in one transaction, in time order."""
        merged = sorted((r.rows[i][0], k, i) for k, r in enumerate(reads) for i in range(len(r.rows)))
        rows = [reads[k].rows[i] for _, k, i in merged]
        encoded = [reads[k].encoded[i] for _, k, i in merged]
        now_us = int(time.time() * 1_000_000)
        for r in reads:
            if r.refused or r.missing:
                # what was not chained is recorded in the chain, by count: never its content
                log.error("audit chainer: %d line(s) of a journal refused and %d missing: altered, or "
                          "not made by this vault's writers; recorded in the trail", r.refused, r.missing)
                fields = self.log.prepare(refusal(r.jid, refused=r.refused, missing=r.missing,
                                                  unknown=not r.tail.known))
                rows.append((now_us, fields))
                encoded.append(encode_fields(fields))
        if rows:
            # one transaction a round, not one a journal: each commit makes every reader of the
            # store drop its page cache (BENCHMARKS *door*)
            self.log.append_rows(rows, db=self.db, encoded=encoded,
                                 journals=[(r.jid, r.last) for r in reads if r.rows])
        for r in reads:
            r.tail.done, r.tail.offset = r.last, r.offset
            if r.rows:
                self._report(r.tail, 0)
        return len(merged)

    def _report(self, tail: _Tail, failure: int) -> None:
        if tail.progress_fd >= 0:
            with contextlib.suppress(OSError):
                os.pwrite(tail.progress_fd, PROGRESS.pack(tail.done, failure), 0)

    def _fail(self, exc: BaseException) -> None:
        if not self._failing:
            log.error("audit chainer: chaining failed (%s); the workers refuse requests until it works",
                      getattr(exc, "code", type(exc).__name__))
        self._failing = True
        for tail in self._tails.values():
            self._report(tail, FAILED)


def _complete_lines(fd: int, offset: int, size: int) -> list[bytes]:
    """The complete lines of a journal from ``offset`` (a line still being written is left)."""
    if size <= offset:
        return []
    data = os.pread(fd, size - offset, offset)
    return data[:data.rfind(b"\n") + 1].split(b"\n")[:-1]
