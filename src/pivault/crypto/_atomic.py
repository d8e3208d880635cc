"""Write a small secret-bearing file atomically with mode 0600."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

_NO_HARDLINK = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK}


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Write ``data`` to ``path``: temp file in the same directory, fsync, then
    move into place. Without ``overwrite`` the move is a hard link, which
    fails if ``path`` exists (no window in which another writer is clobbered).

    Raises ``FileExistsError`` when ``path`` exists and ``overwrite`` is false.
    """
    directory = path.parent
    tmp = directory / f".{path.name}.{os.getpid()}.{os.urandom(6).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        try:
            # os.open applies the umask, which can only remove bits; fchmod
            # makes 0600 exact whatever the umask or an ACL default.
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except OSError as exc:
                if exc.errno not in _NO_HARDLINK:
                    raise
                # File system without hard links: best effort check-then-rename.
                if os.path.lexists(path):
                    raise FileExistsError(errno.EEXIST, "file exists") from None
                os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(directory)
