"""The audit journal: write ahead, chain in batches.

A database transaction per lookup would cost more than the lookup itself
(about 100-150 µs for the smallest SQLite write transaction against about
300 µs for a lookup on the benchmark machine). So, as a database does with
its own write-ahead log, each process writes an entry first to its own
journal file — one ``write`` with ``O_APPEND``, the same durability as a
SQLite commit in WAL mode with ``synchronous=NORMAL`` (survives a crash of
the process, not of the machine) — and a background thread chains the
entries into the database, up to ``max_batch`` per transaction, within
``max_delay`` seconds (20 ms by default).

Fail closed:

* if the journal cannot be written, :meth:`Journal.write` raises and the
  request fails before its data leaves;
* if the chain cannot be written (store down, lock timeout), the thread keeps
  the entries and retries, and every further :meth:`write` raises
  ``audit.unavailable`` until it succeeds — so at most the requests of a few
  milliseconds are served while their entries wait in the journal;
* the backlog is bounded (``max_backlog``): beyond it requests fail.

Crash recovery: each journal is a file ``<host>-<pid>-<random>.journal``
held under an exclusive ``flock`` for the life of its process. A process
that starts a journal replays every journal whose lock it can take (its
owner is gone): the entries after the last sequence chained from it (kept in
``audit_journals``, updated in the same transaction as the entries), so no
entry is lost or chained twice. Journals hold what the audit entries hold
(opaque record ids, never PI).

An entry waits unchained (and so without a MAC) for at most ``max_delay``
in normal operation; that window is the price of the throughput, and is
stated in docs/audit.md.

In node mode (``chain="node"``, what ``pivault serve`` gives its workers)
there is no thread: the node's chainer process (:mod:`pivault.audit.chainer`)
reads the journal and writes its progress to ``<journal>.chained``, which
:meth:`Journal.write` reads to fail closed the same way.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hmac
import json
import logging
import mmap
import os
import secrets
import socket
import struct
import threading
import time
import weakref
from multiprocessing import util as mp_util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pivault.audit.log import AuditError, AuditEvent, encode_fields
from pivault.crypto.hmac256 import HmacSha256
from pivault.policy.context import AccessContext

if TYPE_CHECKING:
    from pivault.audit.log import AuditLog

__all__ = ["CHAIN_MODES", "PROGRESS", "REFUSAL", "TAG_BYTES", "Journal", "chained_seq", "parse_line",
           "refusal", "register", "remove_journal"]

#: who chains a journal: a thread of its own process, or the node's chainer process
#: (:mod:`pivault.audit.chainer`), which several worker processes share
CHAIN_MODES = ("thread", "node")
#: a journal's progress file, written by the node's chainer: the last journal sequence
#: chained, and 0 or the code of the failure that stops the chainer (requests then refuse)
PROGRESS = struct.Struct("<qq")
PROGRESS_SUFFIX = ".chained"
#: a journal whose lines were refused, kept under this suffix for the operator to look at
REFUSED_SUFFIX = ".refused"
#: the bytes of a line's tag (HMAC-SHA256 under the journal's key, truncated)
TAG_BYTES = 16

log = logging.getLogger("pivault.audit")
_write = os.write
_monotonic = time.monotonic

#: how long the chaining thread sleeps with nothing pending, unless an entry wakes it first
_IDLE_WAIT = 1.0
#: forks of this process so far: a journal belongs to the process that opened it, and
#: comparing a counter costs less per entry than asking the kernel for the pid
_FORKS = [0]
_JOURNALS: weakref.WeakSet[Journal] = weakref.WeakSet()


def _forked() -> None:
    _FORKS[0] += 1
    for journal in list(_JOURNALS):
        # the parent's chaining thread may have held it at the fork; it does not exist here
        journal._lock = threading.Lock()
        journal._cond = threading.Condition(journal._lock)
        journal._idle = False


os.register_at_fork(after_in_child=_forked)


def parse_line(raw: bytes, mac: HmacSha256) -> tuple[int, int, tuple[Any, ...], bytes] | None:
    """A journal line's (journal sequence, ts_us, fields, encoded fields); None for a line to refuse.

    ``mac`` is the journal's (:meth:`AuditLog.journal_mac`): a line is ``[seq,ts_us,fields…]``, a
    space, and its tag, so a line torn by a crash, altered, moved from another journal or made by
    someone without the writer's keys is refused. The encoded fields are the bytes the writer
    encoded, which the chain's MAC is over.
    """
    body, space, tag = raw.rstrip(b"\n").rpartition(b" ")
    if not space or len(tag) != 2 * TAG_BYTES:
        return None
    try:
        claimed = bytes.fromhex(tag.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None
    if not hmac.compare_digest(mac.digest(body)[:TAG_BYTES], claimed):
        return None
    try:
        item = json.loads(body)
        seq, ts_us = int(item[0]), int(item[1])
        cut = body.index(b",", body.index(b",") + 1) + 1
    except (ValueError, TypeError, IndexError, KeyError, RecursionError):
        return None
    return seq, ts_us, tuple(item[2:]), body[cut:]


def chained_seq(db: Any, journal_id: str) -> int | None:
    """The last sequence of journal ``journal_id`` chained into the store (0 for none yet).

    None for a journal the store does not know: every journal is registered by its process
    before it takes its name (:func:`register`), and its row goes when it is removed. So a file
    without a row was not made by a writer of this store, or is a copy of a journal chained
    and removed before, put back to have its entries chained twice.
    """
    row = db.query_one("SELECT flushed_seq FROM audit_journals WHERE journal_id = ?", (journal_id,))
    return int(row[0]) if row else None


def register(db: Any, journal_id: str, ts_us: int) -> None:
    """Make the store know journal ``journal_id`` before any process can find its file."""
    db.execute("INSERT INTO audit_journals (journal_id, flushed_seq, ts_us) VALUES (?, 0, ?)",
               (journal_id, ts_us))


#: what the chainer of a journal records when it refuses lines of it
REFUSAL = "audit.journal"


def refusal(journal_id: str, *, refused: int, missing: int, unknown: bool) -> AuditEvent:
    """The entry that records lines of a journal not chained: their count, never their content.

    ``refused``: complete lines whose tag does not check (altered, forged, copied from another
    journal), or every line of a journal the store does not know (``unknown``); ``missing``:
    sequence numbers skipped between the lines chained, which no line that checks holds (lines
    taken out of the file, or altered).
    """
    ctx = AccessContext(principal="system:audit", role="system", purpose="protection", source="system")
    return AuditEvent.of(ctx, REFUSAL, "invalid", count=0, detail={
        "journal": journal_id, "refused_lines": refused, "missing_lines": missing,
        "reason": "unknown journal" if unknown else "lines altered or removed"})


def still_there(path: Path, fd: int) -> bool:
    """``fd``, opened at ``path`` and locked, is the file at ``path`` still.

    A journal is removed by whoever chained it last, under its lock: a process that opened
    it before and takes the lock after holds a removed file, whose progress row is gone too,
    and would chain its entries again.
    """
    try:
        here, held = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)


def remove_journal(db: Any, path: Path, *, keep: bool = False) -> None:
    """A journal whose entries are all chained: its file, its progress file (node mode) and its row.

    ``keep``: some of its lines were refused; the file is kept as ``<journal>.refused``.
    """
    with contextlib.suppress(OSError):
        if keep:
            path.rename(path.with_suffix(REFUSED_SUFFIX))
        else:
            path.unlink()
    with contextlib.suppress(OSError):
        path.with_suffix(PROGRESS_SUFFIX).unlink()
    db.execute("DELETE FROM audit_journals WHERE journal_id = ?", (path.stem,))


class Journal:
    """One process's write-ahead journal of audit entries, and its chaining thread in thread mode."""

    def __init__(self, audit_log: AuditLog, directory: str | os.PathLike[str], *, max_delay: float = 0.02,
                 max_batch: int = 500, max_backlog: int = 50_000, stale_after: float = 2.0,
                 chain: str = "thread", rotate_bytes: int = 1 << 20) -> None:
        if chain not in CHAIN_MODES:
            raise AuditError(f"the audit journal is chained by a thread or the node's chainer, not {chain!r}",
                             code="audit.config")
        self.log = audit_log
        #: "node": no thread here; the node's chainer process reads the file and reports
        #: its progress in ``<journal>.chained``, which :meth:`write` reads to fail closed
        self.chain = chain
        #: in "node" mode, the file starts afresh once everything in it is chained and it is this long
        self.rotate_bytes = rotate_bytes
        self._progress: mmap.mmap | None = None
        self._size = 0
        self._unchained_from = 0
        self.directory = Path(directory)
        self.max_delay = max_delay
        self.max_batch = max_batch
        self.max_backlog = max_backlog
        #: refuse new entries when the oldest waiting one is older than this
        self.stale_after = stale_after
        #: the condition's own lock, entered directly on the request path (a C-level `with`,
        #: without the Condition's Python-level __enter__)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        #: the chaining thread waits with nothing pending (the next entry wakes it)
        self._idle = False
        self._pid = -1
        self._fd = -1
        self.journal_id = ""
        self._seq = 0
        #: (journal seq, ts_us, fields, encoded fields) written but not yet chained
        self._pending: list[tuple[int, int, tuple[Any, ...], bytes]] = []
        self._clock = audit_log._clock
        self._forks = -1
        self._pending_since = 0.0
        self._chained = 0
        self._broken: str | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._flush_wanted = False
        self._db: Any = None
        #: the tag of this journal's lines (set with its id)
        self._mac = HmacSha256(b"")
        _JOURNALS.add(self)

    # -- per process -----------------------------------------------------------------
    def _ensure(self) -> None:
        if self._pid == os.getpid() and self._forks == _FORKS[0]:
            return
        with self._cond:
            if self._pid == os.getpid() and self._forks == _FORKS[0]:
                return
            # a forked child: the parent's file, lock and thread are not ours
            # every level private, not just the last (mkdir's mode applies to the leaf only)
            for level in (*reversed(self.directory.parents[:2]), self.directory):
                level.mkdir(mode=0o700, exist_ok=True)
            self.journal_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
            self._mac = self.log.journal_mac(self.journal_id)
            path = self.directory / f"{self.journal_id}.journal"
            # in node mode the progress file first: the chainer may find the journal at once
            progress = self._open_progress(path) if self.chain == "node" else None
            # locked before it takes its name: a process looking for dead journals (a starting
            # one, the node's chainer) takes a free flock on a *.journal for its owner's death,
            # and would otherwise find this one in the moment between its creation and its lock
            fresh = path.with_name(f".{path.name}-new")
            fd = os.open(fresh, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                # and known to the store before it takes its name: a journal file the store does
                # not know is refused (made by someone else, or a removed one put back)
                self._register()
            except Exception as exc:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(fresh)
                if progress is not None:
                    progress.close()
                    with contextlib.suppress(OSError):
                        os.unlink(path.with_suffix(PROGRESS_SUFFIX))
                raise AuditError(f"the audit journal cannot be registered in the store "
                                 f"({getattr(exc, 'code', type(exc).__name__)})",
                                 code="audit.unavailable", hint="check the store") from None
            os.rename(fresh, path)
            self._fd = fd
            self._seq = 0
            self._pending = []
            self._chained = 0
            self._broken = None
            self._closing = False
            self._size = 0
            self._unchained_from = 0
            if self.chain == "node":
                self._progress = progress
                self._pid = os.getpid()
                self._forks = _FORKS[0]
                atexit.register(self.close)
                mp_util.Finalize(None, self.close, exitpriority=10)
                return  # the node's chainer recovers the journals of stopped processes
            # its own connection: chaining never holds the requests' connection, and on
            # PostgreSQL its round trips overlap with them
            from pivault.store.db import Database

            self._db = Database(self.log.db.url)
            self._pid = os.getpid()
            self._forks = _FORKS[0]
            self._thread = threading.Thread(target=self._run, name="pivault-audit-journal", daemon=True)
            self._thread.start()
            atexit.register(self.close)
            # multiprocessing children leave through os._exit, past atexit: its finalizers still run
            mp_util.Finalize(None, self.close, exitpriority=10)
        self.recover()

    def _register(self) -> None:
        """This journal's row in the store (its own connection: never a request's transaction)."""
        from pivault.store.db import Database

        with Database(self.log.db.url) as db:
            register(db, self.journal_id, int(self._clock() * 1_000_000))

    def _open_progress(self, path: Path) -> mmap.mmap:
        """This journal's progress file, zeroed, mapped for reading (the chainer writes it)."""
        progress = path.with_suffix(PROGRESS_SUFFIX)
        pfd = os.open(progress, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(pfd, bytes(PROGRESS.size))
            return mmap.mmap(pfd, PROGRESS.size, access=mmap.ACCESS_READ)
        finally:
            os.close(pfd)

    def _node_progress(self) -> tuple[int, int]:
        """(last sequence chained, failure code) as the node's chainer last wrote them."""
        mm = self._progress
        assert mm is not None
        while True:  # two equal reads: never a value torn by the chainer's write
            first = PROGRESS.unpack_from(mm)
            if PROGRESS.unpack_from(mm) == first:
                return first

    # -- the request path ---------------------------------------------------------------
    def write(self, fields: tuple[Any, ...]) -> None:
        """Journal one prepared entry; raise ``audit.unavailable`` if it or the chain cannot be written."""
        if self._forks != _FORKS[0]:
            self._ensure()
        # encoded once, for the line here and for the MAC in the chaining thread
        tail = encode_fields(fields)
        ts_us = int(self._clock() * 1_000_000)
        if self._progress is not None:
            self._write_node(tail, ts_us)
            return
        with self._lock:
            if self._broken is not None:
                raise AuditError(f"the audit chain cannot be written ({self._broken}); refusing",
                                 code="audit.unavailable", hint="check the store")
            pending = self._pending
            if pending and (len(pending) >= self.max_backlog
                            or _monotonic() - self._pending_since > self.stale_after):
                raise AuditError("the audit chain is falling behind; refusing", code="audit.unavailable",
                                 hint="check the store's load")
            seq = self._seq + 1
            self._append_line(seq, ts_us, tail)
            self._seq = seq
            if not pending:
                self._pending_since = _monotonic()
                if self._idle:
                    self._cond.notify_all()
            pending.append((seq, ts_us, fields, tail))
            # the chaining thread wakes on its own every max_delay; waking it per entry would
            # cost a thread switch per request
            if len(pending) >= self.max_batch:
                self._cond.notify_all()

    def _append_line(self, seq: int, ts_us: int, tail: bytes) -> int:
        """One ``write`` of the entry's line (the caller holds the lock); its length."""
        body = b"[%d,%d,%s" % (seq, ts_us, tail)
        data = b"%s %s\n" % (body, self._mac.digest(body)[:TAG_BYTES].hex().encode("ascii"))
        try:
            if _write(self._fd, data) != len(data):
                raise OSError("short write")
        except OSError as exc:
            raise AuditError(f"the audit journal cannot be written ({type(exc).__name__})",
                             code="audit.unavailable", hint="check the journal's disk") from None
        return len(data)

    def _write_node(self, tail: bytes, ts_us: int) -> None:
        """:meth:`write` when the node's chainer chains: refuse if it has failed or fallen behind."""
        with self._lock:
            chained, failure = self._node_progress()
            if failure:
                raise AuditError("the node's audit chainer cannot write the chain; refusing",
                                 code="audit.unavailable", hint="check the store and the chainer's log")
            now = _monotonic()
            waiting = self._seq - chained
            if waiting <= 0:
                if self._size >= self.rotate_bytes:
                    # everything in the file is chained: start it afresh (the chainer reads the
                    # sequence numbers, so it notices)
                    try:
                        os.ftruncate(self._fd, 0)
                        self._size = 0
                    except OSError:
                        pass
            else:
                if self._unchained_from <= chained:
                    # the chainer moved on: the oldest waiting entry is newer than the one timed
                    self._unchained_from = chained + 1
                    self._pending_since = now
                if waiting >= self.max_backlog or now - self._pending_since > self.stale_after:
                    raise AuditError("no audit chainer has chained this process's entries for "
                                     f"{self.stale_after:g} s; refusing", code="audit.unavailable",
                                     hint="check that the node's audit chainer runs, and the store")
            seq = self._seq + 1
            self._size += self._append_line(seq, ts_us, tail)
            self._seq = seq
            if waiting <= 0:
                self._unchained_from = seq
                self._pending_since = now

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything written so far is chained."""
        if self._pid != os.getpid():
            return True
        deadline = time.monotonic() + timeout
        if self._progress is not None:
            while self._node_progress()[0] < self._seq:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.002)
            return True
        with self._cond:
            target = self._seq
            self._flush_wanted = True
            self._cond.notify_all()
            while self._chained < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def close(self) -> None:
        """Chain what is left and remove the journal (at exit)."""
        if self._pid != os.getpid() or self._closing:
            return
        done = self.flush(5.0)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._progress is not None:
            # the chainer forgets a journal whose file is gone; one left behind (not all of it
            # chained) it chains once this process's lock is released, as after a crash
            if done:
                path = self.directory / f"{self.journal_id}.journal"
                with contextlib.suppress(OSError):
                    os.unlink(path)
                with contextlib.suppress(OSError):
                    os.unlink(path.with_suffix(PROGRESS_SUFFIX))
            with contextlib.suppress(OSError, ValueError):
                self._progress.close()
            with contextlib.suppress(OSError):
                os.close(self._fd)
            return
        if done:
            with contextlib.suppress(OSError):
                os.unlink(self.directory / f"{self.journal_id}.journal")
            with contextlib.suppress(Exception):
                self._db.execute("DELETE FROM audit_journals WHERE journal_id = ?", (self.journal_id,))
        with contextlib.suppress(OSError):
            os.close(self._fd)
        with contextlib.suppress(Exception):
            self._db.close()

    # -- the chaining thread ------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.05
        while True:
            with self._cond:
                # a batch: what came within max_delay of the oldest waiting entry, up to max_batch
                while not self._closing:
                    if self._pending:
                        left = self._pending_since + self.max_delay - time.monotonic()
                        if left <= 0 or len(self._pending) >= self.max_batch or self._flush_wanted:
                            break
                    else:
                        # idle: the first entry wakes the thread (write notifies while _idle is
                        # set), so an idle process does not wake fifty times a second
                        self._idle = True
                        left = _IDLE_WAIT
                    self._cond.wait(left)
                    self._idle = False
                if self._closing and not self._pending:
                    return
                self._flush_wanted = False
                batch = self._pending[:self.max_batch]
            try:
                self.log.append_rows([(ts, f) for _, ts, f, _ in batch],
                                     journals=[(self.journal_id, batch[-1][0])], db=self._db,
                                     encoded=[e for *_, e in batch], background=True)
            except Exception as exc:
                code = getattr(exc, "code", type(exc).__name__)
                with self._cond:
                    if self._broken is None:
                        log.error("audit journal: chaining failed (%s); refusing requests until it works",
                                  code)
                    self._broken = str(code)
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            with self._cond:
                if self._broken is not None:
                    log.warning("audit journal: chaining works again")
                self._broken = None
                del self._pending[:len(batch)]
                self._chained = batch[-1][0]
                if self._pending:
                    self._pending_since = time.monotonic()
                else:
                    # everything is chained: start the file afresh (O_APPEND writes go to the new end)
                    with contextlib.suppress(OSError):
                        os.ftruncate(self._fd, 0)
                self._cond.notify_all()

    # -- recovery ---------------------------------------------------------------------------------
    def recover(self) -> int:
        """Chain the entries of journals whose process is gone; return how many."""
        total = 0
        for path in sorted(self.directory.glob("*.journal")):
            if path.stem == self.journal_id:
                continue
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its process is alive
                if not still_there(path, fd):
                    continue  # recovered and removed by another process meanwhile
                total += self._replay(path, fd)
            finally:
                os.close(fd)
        return total

    def _replay(self, path: Path, fd: int) -> int:
        db = self._db if self._db is not None else self.log.db
        known = chained_seq(db, path.stem)
        done = known or 0
        mac = self.log.journal_mac(path.stem)
        rows: list[tuple[int, int, tuple[Any, ...], bytes]] = []
        refused = missing = 0
        with os.fdopen(os.dup(fd), "rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    continue  # the last line, torn by the crash: its request was never answered
                line = parse_line(raw, mac) if known is not None else None
                if line is None:
                    refused += 1
                elif line[0] > done:
                    missing += line[0] - done - 1  # lines taken out of the file
                    done = line[0]
                    rows.append(line)
        prepared = [(ts, f) for _, ts, f, _ in rows]
        encoded = [e for *_, e in rows]
        if refused or missing:
            event = self.log.prepare(refusal(path.stem, refused=refused, missing=missing,
                                             unknown=known is None))
            prepared.append((int(self._clock() * 1_000_000), event))
            encoded.append(encode_fields(event))
            log.error("audit journal: %d line(s) of a stopped process's journal refused and %d missing: "
                      "altered, or not made by this vault's writers; recorded in the trail", refused, missing)
        for i in range(0, len(prepared), self.max_batch):
            part = rows[i:i + self.max_batch]
            self.log.append_rows(prepared[i:i + self.max_batch],
                                 journals=[(path.stem, part[-1][0])] if part else [],
                                 db=db, encoded=encoded[i:i + self.max_batch])
        remove_journal(db, path, keep=bool(refused or missing))
        if rows:
            log.warning("audit journal: chained %d entries left by a stopped process", len(rows))
        return len(rows)
