"""Scanning many files: a process pool over files, results in the order they finish."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

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
    with ProcessPoolExecutor(max_workers=options.workers) as pool:
        pending: set[Future[list[SourceResult]]] = set()
        for batch in _batches(files):
            yield from drain_issues()
            pending.add(pool.submit(_scan_batch, batch, options))
            if len(pending) >= options.workers * 3:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield from fut.result()
        yield from drain_issues()
        for fut in pending:
            yield from fut.result()


def scan_paths(paths: Sequence[str | os.PathLike[str]], options: ScanOptions | None = None) -> ScanReport:
    """Scan files and directories; a :class:`ScanReport` iterates over its findings."""
    t0 = time.perf_counter()
    report = ScanReport()
    for r in iter_results(paths, options):
        report.add(r)
    report.elapsed = time.perf_counter() - t0
    return report
