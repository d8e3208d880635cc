"""Scanning many files: a process pool over files, results in the order they finish."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from pivault.scan.engine import get_engine
from pivault.scan.findings import ScanIssue, ScanOptions, ScanReport, SourceResult
from pivault.scan.sources import scan_file
from pivault.scan.walk import iter_files

#: small files are sent to a worker together until a batch holds this many bytes or files
BATCH_BYTES = 8 * 1024 * 1024
BATCH_FILES = 64


def _scan_batch(paths: list[str], options: ScanOptions) -> list[SourceResult]:
    engine = get_engine(options.kinds, options.engine)
    out = []
    for p in paths:
        try:
            out.append(scan_file(p, options, engine))
        except Exception as e:  # a bug must not end the sweep: report it as an issue of the file
            r = SourceResult(p)
            r.issues.append(ScanIssue(p, "error", f"scanner error ({type(e).__name__}); file skipped"))
            out.append(r)
    return out


def _batches(files: Iterator[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for f in files:
        try:
            n = os.path.getsize(f)
        except OSError:
            n = 0
        if n >= BATCH_BYTES:
            yield [f]
            continue
        batch.append(f)
        size += n
        if size >= BATCH_BYTES or len(batch) >= BATCH_FILES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def iter_results(
    paths: Sequence[str | os.PathLike[str]], options: ScanOptions | None = None
) -> Iterator[SourceResult]:
    """One :class:`SourceResult` per file (walk issues come as results of their path), as files finish."""
    options = options or ScanOptions()
    walk_issues: list[ScanIssue] = []
    files = iter_files(paths, options, walk_issues.append)
    # compile before forking, so workers inherit the compiled engine
    get_engine(options.kinds, options.engine)

    def drain_issues() -> Iterator[SourceResult]:
        while walk_issues:
            i = walk_issues.pop(0)
            r = SourceResult(i.source)
            r.issues.append(i)
            yield r

    if options.workers <= 1:
        for batch in _batches(files):
            yield from drain_issues()
            yield from _scan_batch(batch, options)
        yield from drain_issues()
        return
    for item in _pooled(_batches(files), options):
        yield from drain_issues()
        yield item
    yield from drain_issues()


def _died(path: str) -> SourceResult:
    r = SourceResult(path)
    r.issues.append(ScanIssue(path, "error", "the process scanning it ended abruptly (out of memory, "
                              "or killed); file skipped"))
    return r


def _pooled(batches: Iterator[list[str]], options: ScanOptions) -> Iterator[SourceResult]:
    """Batches scanned by a process pool, results as they finish.

    A worker that dies (the kernel's out-of-memory killer, a crash in a native library) breaks
    the whole pool, and every batch in flight with it: that ended the sweep of a file server in
    a traceback, with no report. The pool is replaced, and the files of the batches lost are
    scanned again one at a time; a file whose worker dies again is reported, and the sweep goes on.
    """
    pool = ProcessPoolExecutor(max_workers=options.workers)
    pending: dict[Future[list[SourceResult]], tuple[list[str], bool]] = {}
    unsent: deque[list[str]] = deque()  # batches whose submission met a broken pool
    retry: deque[str] = deque()  # files of the batches lost with a pool
    more = True

    def lost(batch: list[str], again: bool) -> Iterator[SourceResult]:
        if again:
            yield _died(batch[0])
        else:
            retry.extend(batch)

    try:
        while True:
            broken = False
            # a file scanned again runs alone: when the pool breaks, it is the one that broke it
            while not broken and len(pending) < options.workers * 3:
                if retry:
                    if pending:
                        break
                    batch, again = [retry.popleft()], True
                elif unsent:
                    batch, again = unsent.popleft(), False
                elif more:
                    nxt = next(batches, None)
                    if nxt is None:
                        more = False
                        break
                    batch, again = nxt, False
                else:
                    break
                try:
                    pending[pool.submit(_scan_batch, batch, options)] = (batch, again)
                except BrokenProcessPool:
                    broken = True
                    if again:
                        retry.appendleft(batch[0])
                    else:
                        unsent.appendleft(batch)
            if not pending and not broken:
                if retry or unsent:
                    continue
                return
            if not broken:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    batch, again = pending.pop(fut)
                    try:
                        results = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        yield from lost(batch, again)
                        continue
                    yield from results
            if broken:
                # the batches still in flight went down with the pool (or finished before it)
                for fut, (batch, again) in pending.items():
                    try:
                        results = fut.result()
                    except BrokenProcessPool:
                        yield from lost(batch, again)
                        continue
                    yield from results
                pending.clear()
                pool.shutdown(wait=True, cancel_futures=True)
                pool = ProcessPoolExecutor(max_workers=options.workers)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def scan_paths(paths: Sequence[str | os.PathLike[str]], options: ScanOptions | None = None) -> ScanReport:
    """Scan files and directories; a :class:`ScanReport` iterates over its findings."""
    t0 = time.perf_counter()
    report = ScanReport()
    for r in iter_results(paths, options):
        report.add(r)
    report.elapsed = time.perf_counter() - t0
    return report
