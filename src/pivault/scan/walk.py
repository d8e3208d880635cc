"""Walking the paths to scan: recursion, include/exclude globs, .gitignore, symlink loops.

Globs match the path relative to the root given (``logs/*.gz``, ``**/*.csv``)
or the file's name alone (``*.csv``). Symbolic links are followed while they
stay inside the paths given: a link that leads out of them (to ``/``, to
``/proc/kmsg``, to another team's share) is reported and not followed, or
one link planted in a share would take the sweep over the whole machine or
into a read that never returns. A link that leads back into a directory
already being walked is reported as a symlink loop, a dangling link or one
that cannot be resolved as unreadable. FIFOs, sockets and devices are
reported and never opened.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache

from pivault.scan.findings import ScanIssue, ScanOptions


@cache
def _glob_re(pattern: str) -> re.Pattern[str]:
    """A glob with ``**`` (any depth), ``*`` (within a path segment), ``?`` and ``[...]``."""
    i, out = 0, []
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : j]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def glob_match(pattern: str, rel: str) -> bool:
    """Does ``pattern`` match the relative path ``rel`` (or, for a pattern without ``/``, its name)?"""
    pattern = pattern.lstrip("./") if pattern.startswith("./") else pattern
    if "/" not in pattern.rstrip("/"):
        return fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], pattern) or fnmatch.fnmatchcase(rel, pattern)
    return _glob_re(pattern.lstrip("/")).match(rel) is not None


@dataclass(frozen=True)
class _Rule:
    base: str  # directory of the .gitignore, relative to the root ('' for the root)
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool


def _parse_gitignore(text: str, base: str) -> list[_Rule]:
    rules = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if negate:
            line = line[1:]
        if line.startswith("\\"):
            line = line[1:]
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        anchored = "/" in line
        pat = line.lstrip("/")
        rx = _glob_re(pat) if anchored else _glob_re("**/" + pat)
        rules.append(_Rule(base, rx, negate, dir_only))
    return rules


def _ignored(rules: Sequence[_Rule], rel: str, is_dir: bool) -> bool:
    verdict = False
    for r in rules:
        if r.dir_only and not is_dir:
            continue
        if r.base:
            if not rel.startswith(r.base + "/"):
                continue
            sub = rel[len(r.base) + 1 :]
        else:
            sub = rel
        if r.regex.match(sub):
            verdict = not r.negate
    return verdict


def _within(path: str, roots: Sequence[str]) -> bool:
    """Whether the link ``path`` resolves to one of ``roots`` (real paths) or to something under one."""
    target = os.path.realpath(path)
    return any(target == r or target.startswith(r.rstrip("/") + "/") for r in roots)


def iter_files(
    paths: Sequence[str | os.PathLike[str]], options: ScanOptions, on_issue: Callable[[ScanIssue], None]
) -> Iterator[str]:
    """Regular files under ``paths`` to scan, in a stable order; problems go to ``on_issue``."""
    roots = [os.path.realpath(os.fspath(p)) for p in paths]
    for p in paths:
        root = os.fspath(p)
        try:
            st = os.stat(root) if options.follow_symlinks else os.lstat(root)
        except OSError as e:
            on_issue(_stat_issue(root, e))
            continue
        if stat.S_ISDIR(st.st_mode):
            rules: list[_Rule] = []
            yield from _walk(root, "", options, on_issue, {(st.st_dev, st.st_ino)}, rules, roots)
        elif stat.S_ISREG(st.st_mode):
            yield root
        else:
            on_issue(
                ScanIssue(root, "not_regular", "not a regular file (FIFO, socket or device): not opened")
            )


def _stat_issue(path: str, e: OSError) -> ScanIssue:
    if e.errno == errno.ELOOP:
        return ScanIssue(path, "symlink_loop", "symbolic link loop: not followed")
    if e.errno == errno.ENOENT and os.path.islink(path):
        return ScanIssue(path, "unreadable", "dangling symbolic link")
    if e.errno in (errno.EACCES, errno.EPERM):
        return ScanIssue(path, "unreadable", "permission denied")
    return ScanIssue(path, "unreadable", f"cannot stat: {e.strerror or type(e).__name__}")


def _outside(path: str) -> ScanIssue:
    return ScanIssue(path, "symlink_outside", "symbolic link leads out of the paths scanned: not followed")


def _selected(rel: str, options: ScanOptions) -> bool:
    if options.include and not any(glob_match(g, rel) for g in options.include):
        return False
    return not any(glob_match(g, rel) for g in options.exclude)


def _walk(
    directory: str,
    rel: str,
    options: ScanOptions,
    on_issue: Callable[[ScanIssue], None],
    active: set[tuple[int, int]],
    rules: list[_Rule],
    roots: Sequence[str],
) -> Iterator[str]:
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        on_issue(_stat_issue(directory, e))
        return
    if options.gitignore:
        gi = os.path.join(directory, ".gitignore")
        if os.path.isfile(gi):
            try:
                with open(gi, encoding="utf-8", errors="replace") as f:
                    rules = rules + _parse_gitignore(f.read(), rel)
            except OSError:
                on_issue(ScanIssue(gi, "unreadable", "cannot read .gitignore"))
    for entry in entries:
        child_rel = f"{rel}/{entry.name}" if rel else entry.name
        if options.gitignore and entry.name == ".git":
            continue
        try:
            is_link = entry.is_symlink()
            if is_link and not options.follow_symlinks:
                continue
            st = entry.stat(follow_symlinks=True)
        except OSError as e:
            on_issue(_stat_issue(entry.path, e))
            continue
        if stat.S_ISDIR(st.st_mode):
            if options.gitignore and _ignored(rules, child_rel, True):
                continue
            if any(glob_match(g, child_rel) or glob_match(g, child_rel + "/") for g in options.exclude):
                continue
            if is_link and not _within(entry.path, roots):
                on_issue(_outside(entry.path))
                continue
            key = (st.st_dev, st.st_ino)
            if key in active:
                on_issue(
                    ScanIssue(
                        entry.path,
                        "symlink_loop",
                        "symbolic link leads back into a directory being scanned: not followed",
                    )
                )
                continue
            active.add(key)
            try:
                yield from _walk(entry.path, child_rel, options, on_issue, active, rules, roots)
            finally:
                active.discard(key)
        elif stat.S_ISREG(st.st_mode):
            if options.gitignore and _ignored(rules, child_rel, False):
                continue
            if _selected(child_rel, options):
                if is_link and not _within(entry.path, roots):
                    on_issue(_outside(entry.path))
                    continue
                yield entry.path
        elif _selected(child_rel, options):
            on_issue(
                ScanIssue(
                    entry.path, "not_regular", "not a regular file (FIFO, socket or device): not opened"
                )
            )
