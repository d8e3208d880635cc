"""The backup container: a tar of data files, a manifest of their checksums, a signature.

::

    data/...        the dumped tables (SQLite: one database file; PostgreSQL: one
                    binary COPY stream per table)
    keyring.json    the keyring file as it is on disk (the "keyring envelope":
                    keysets encrypted under the root key; useless without it)
    manifest.json   what the backup is, and SHA-256 and size of every file above
    manifest.sig    Ed25519 signature of manifest.json (domain-separated)

Verification reads every member once: the signature must check under the
vault's backup key, every listed file must be present with its size and
digest, and nothing else may be in the tar. Members are never extracted by
name from the tar's own paths (no path traversal): the reader copies a
member it knows to a path it chooses.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Self

from pivault.backup.signing import BackupError, SigningKey, VerifyKey

__all__ = ["MANIFEST", "SIGNATURE", "Container", "write_container"]

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
_DOMAIN = b"pivault.backup.manifest.v1\n"
_BLOCK = 1 << 20
#: a real manifest is a few KiB (tables, columns, counts, files); parsed, a MiB of JSON is tens of MiB
_MANIFEST_LIMIT = 1 << 20
#: a backup holds a file per table, the keyring, the manifest and its signature: a few dozen members
_MAX_MEMBERS = 4096
#: pax and GNU long-name records, which the tar reader takes into memory whole
_HEADER_RECORDS = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                   tarfile.GNUTYPE_LONGLINK)
_HEADER_LIMIT = 64 << 10
#: manifest versions this pivault reads: 1 (data backups without record keys), 2 (data backups
#: carrying their versions' record keys, sealed); record-key backups are version 1
_VERSIONS = (1, 2)


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def file_digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            h.update(block)
            n += len(block)
    return n, h.hexdigest()


def write_container(out: Path, files: list[tuple[str, Path]], manifest: dict[str, Any],
                    signer: SigningKey, *, scratch: Path | None = None) -> dict[str, Any]:
    """Write the tar atomically (temp file, fsync, rename; mode 0600); return the manifest.

    The temp file goes into ``scratch`` (a run's locked directory on the
    same file system) when given, so that a run killed mid-way leaves it
    where the next run clears it, and never beside the backups.
    """
    entries = []
    for name, path in files:
        size, digest = file_digest(path)
        entries.append({"name": name, "bytes": size, "sha256": digest})
    manifest = dict(manifest)
    manifest["files"] = entries
    manifest["signing_key"] = {"public": base64.b64encode(signer.verify_key.public).decode("ascii"),
                               "fingerprint": signer.verify_key.fingerprint}
    body = _canonical(manifest)
    sig = base64.b64encode(signer.sign(_DOMAIN + body)) + b"\n"
    out = out.expanduser().absolute()
    tmp = (scratch / "container.tmp") if scratch is not None \
        else out.with_name(f".{out.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as raw, \
                tarfile.open(fileobj=raw, mode="w:", format=tarfile.PAX_FORMAT) as tar:
            for name, path in files:
                info = tar.gettarinfo(str(path), arcname=name)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o600
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            for name, data in ((MANIFEST, body + b"\n"), (SIGNATURE, sig)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o600
                tar.addfile(info, io.BytesIO(data))
            tar.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return manifest


class _Header(tarfile.TarInfo):
    """A member header whose extension record is refused, above a sensible size, before it is read.

    The tar reader reads a pax or long-name record whole, of any size a
    header announces: a sparse file of a few KiB on the shelf could claim
    gigabytes and take that much memory.
    """

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        info = super().frombuf(buf, encoding, errors)
        if info.type in _HEADER_RECORDS and info.size > _HEADER_LIMIT:
            raise BackupError(f"a tar header record of {info.size:,} bytes: not a pivault backup",
                              code="backup.format")
        return info


class _Tar(tarfile.TarFile):
    """Stops reading member headers past :data:`_MAX_MEMBERS`: each one read is kept in memory."""

    _headers_read = 0

    def next(self) -> tarfile.TarInfo | None:
        info = super().next()
        if info is not None:
            self._headers_read += 1
            if self._headers_read > _MAX_MEMBERS:
                raise BackupError(f"more than {_MAX_MEMBERS:,} members in the tar: not a pivault backup",
                                  code="backup.format")
        return info


@dataclass
class Container:
    """An opened backup file; nothing in it is trusted until :meth:`verify` passed."""

    path: Path
    manifest: dict[str, Any]
    manifest_bytes: bytes
    signature: bytes
    _tar: tarfile.TarFile
    _file: IO[bytes]
    verified: bool = False

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Container:
        p = Path(path)
        from pivault.backup.backup import is_unfinished

        if is_unfinished(p):
            raise BackupError(f"{p.name} is the scratch file of a backup run that did not finish (or is "
                              "still running), not a backup", code="backup.unfinished",
                              hint="give a backup file that `pivault backup --out` wrote; the next backup "
                                   "run clears what dead runs left")
        fh = _open_regular(p)
        try:
            try:
                tar = _Tar.open(fileobj=fh, mode="r:", tarinfo=_Header)
            except (tarfile.TarError, OSError):
                raise BackupError(f"{p.name} is not a pivault backup (not a tar file)",
                                  code="backup.format") from None
            try:
                body = _member_bytes(tar, MANIFEST, limit=_MANIFEST_LIMIT)
                sig_text = _member_bytes(tar, SIGNATURE, limit=4096)
                manifest = json.loads(body)
                signature = base64.b64decode(sig_text.strip(), validate=True)
            except BackupError:
                tar.close()
                raise
            except (ValueError, UnicodeDecodeError, RecursionError):
                # nesting deeper than the parser's stack: unsigned text made to crash the reader
                tar.close()
                raise BackupError(f"{p.name}: the manifest is damaged", code="backup.format") from None
            if not isinstance(manifest, dict) or manifest.get("format") != "pivault.backup":
                tar.close()
                raise BackupError(f"{p.name} is not a pivault backup", code="backup.format")
            if manifest.get("version") not in _VERSIONS:
                tar.close()
                raise BackupError(f"{p.name} was written by a newer pivault", code="backup.version")
        except BaseException:
            fh.close()
            raise
        return cls(p, manifest, body.rstrip(b"\n"), signature, tar, fh)

    def close(self) -> None:
        self._tar.close()
        self._file.close()

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def vault_id(self) -> str:
        return str(self.manifest.get("vault_id"))

    @property
    def kind(self) -> str:
        return str(self.manifest.get("kind"))

    def verify(self, key: VerifyKey, *, vault_id: str | None = None,
               progress: Callable[[str], None] | None = None) -> None:
        """Signature, then every file's size and SHA-256, then no stray members.

        Raises ``backup.vault`` (another vault's), ``backup.signature``,
        ``backup.checksum`` or ``backup.format``; reads the whole file once.
        """
        if vault_id is not None and self.vault_id != vault_id:
            # not signed yet: the id is named only if it is one, never as the file's own text
            theirs = (f"is of vault {self.vault_id}" if _is_vault_id(self.vault_id)
                      else "names no valid vault id")
            raise BackupError(f"this backup {theirs}, not of this vault ({vault_id})",
                              code="backup.vault", hint="restore a backup of this vault")
        if _canonical(self.manifest) != self.manifest_bytes or \
                not key.verify(self.signature, _DOMAIN + self.manifest_bytes):
            raise BackupError("the backup's signature does not check: it was altered, or made by "
                              "another vault's key", code="backup.signature")
        files = self.manifest.get("files")
        if not isinstance(files, list):
            raise BackupError("the manifest lists no files", code="backup.format")
        why = _malformed(self.manifest)
        if why is not None:
            raise BackupError(f"the backup's manifest is signed but malformed ({why})", code="backup.format",
                              hint="it was not written by a sound pivault: do not restore it, and check "
                                   "who holds the backup signing key")
        listed = {str(f["name"]): f for f in files}
        seen: set[str] = set()
        try:
            members = self._tar.getmembers()
        except (tarfile.TarError, OSError):
            raise BackupError("the backup file is truncated or damaged", code="backup.checksum") from None
        for member in members:
            if member.name in (MANIFEST, SIGNATURE):
                continue
            if member.name not in listed or not member.isreg() or member.name in seen:
                raise BackupError(f"the backup holds an unexpected member {member.name[:80]!r}",
                                  code="backup.format")
            seen.add(member.name)
            want = listed[member.name]
            if member.size != want["bytes"]:
                # before reading it: a header may claim any size, and a sparse file makes it cheap to
                raise BackupError(f"{member.name} in the backup does not match its checksum",
                                  code="backup.checksum")
            if progress is not None:
                progress(member.name)
            size, digest = _member_digest(self._tar, member)
            if size != int(want["bytes"]) or digest != want["sha256"]:
                raise BackupError(f"{member.name} in the backup does not match its checksum",
                                  code="backup.checksum")
        missing = sorted(set(listed) - seen)
        if missing:
            raise BackupError(f"the backup lacks {missing[0]}", code="backup.checksum")
        self.verified = True

    def extract(self, name: str, dest: Path) -> Path:
        """Copy one verified member to ``dest`` (mode 0600), checking its digest again."""
        if not self.verified:
            raise BackupError("verify the backup before using it", code="backup.unverified")
        want = {str(f["name"]): f for f in self.manifest["files"]}.get(name)
        if want is None:
            raise BackupError(f"the backup has no {name}", code="backup.format")
        member = self._tar.getmember(name)
        src = self._tar.extractfile(member)
        assert src is not None
        h = hashlib.sha256()
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            while block := src.read(_BLOCK):
                h.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != want["sha256"]:
            dest.unlink(missing_ok=True)
            raise BackupError(f"{name} changed while it was read", code="backup.checksum")
        return dest

    def read(self, name: str, limit: int = 64 << 20) -> bytes:
        """A small verified member's bytes."""
        if not self.verified:
            raise BackupError("verify the backup before using it", code="backup.unverified")
        data = _member_bytes(self._tar, name, limit=limit)
        want = {str(f["name"]): f for f in self.manifest["files"]}.get(name)
        if want is None or hashlib.sha256(data).hexdigest() != want["sha256"]:
            raise BackupError(f"{name} does not match its checksum", code="backup.checksum")
        return data

    def open_member(self, name: str) -> IO[bytes]:
        if not self.verified:
            raise BackupError("verify the backup before using it", code="backup.unverified")
        f = self._tar.extractfile(self._tar.getmember(name))
        assert f is not None
        return f


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _names(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def _malformed(m: dict[str, Any]) -> str | None:
    """What is wrong with a signed manifest's shape, or None: what a restore reads from it, it can trust.

    A signature says who wrote the manifest, not that it is sound: a faulty
    build or a stolen signing key can sign lies. Every field a restore uses
    is checked here once, so that none of them fails later in the middle of
    a restore, nor goes into SQL as a name the store does not have.
    """
    files = m["files"]
    if not all(isinstance(f, dict) and isinstance(f.get("name"), str) and _count(f.get("bytes"))
               and isinstance(f.get("sha256"), str) and _SHA256.fullmatch(f["sha256"]) for f in files):
        return "a file entry without name, size or SHA-256"
    names = {f["name"] for f in files}
    if len(names) != len(files):
        return "a file listed twice"
    counts = m.get("counts")
    if not isinstance(counts, dict) or not all(_count(n) for n in counts.values()):
        return "row counts that are not counts"
    if m.get("kind") == "record-keys":
        return None if "data/record_keys.bin" in names else "no record-key stream"
    if m.get("kind") != "data":
        return "no kind of backup"
    if m.get("version") == 2:
        rk = m.get("record_keys")
        if not isinstance(rk, dict) or not _count(rk.get("keys")) or rk.get("file") not in names \
                or rk.get("file") != "record_keys.sealed":
            return "no sealed record keys"
    tables, schema = m.get("tables"), m.get("schema")
    if not isinstance(tables, dict) or not all(isinstance(spec, dict) and _names(spec.get("columns"))
                                               for spec in tables.values()):
        return "tables without their columns"
    if not isinstance(schema, dict) or not all(_count(v) for v in schema.values()):
        return "schema versions that are not versions"
    if not set(counts) <= set(tables):
        return "row counts of tables it does not list"
    backend = m.get("backend")
    if backend == "sqlite":
        return None if "data/vault.db" in names else "no database file"
    if backend == "postgresql":
        return None if all(f"data/{t}.copy" in names for t in tables) else "a table without its data file"
    return "no backend"


def _open_regular(p: Path) -> IO[bytes]:
    """The backup file, for reading, refused unless it is a regular file.

    Checked on the opened descriptor, and opened without waiting: a FIFO
    would wait forever for a writer, a device is read without end, and a
    name checked before it is opened can be swapped in between.
    """
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BackupError(f"no backup file {p.name}", code="backup.missing") from None
    except OSError as exc:
        raise BackupError(f"{p.name} cannot be read ({exc.strerror})", code="backup.format") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BackupError(f"{p.name} is not a regular file (a directory, a FIFO or a device), so not a "
                          "pivault backup", code="backup.format", hint="give the backup file itself")
    return os.fdopen(fd, "rb")


def _is_vault_id(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def _member_bytes(tar: tarfile.TarFile, name: str, *, limit: int) -> bytes:
    try:
        member = tar.getmember(name)
    except KeyError:
        raise BackupError(f"the backup has no {name}", code="backup.format") from None
    except (tarfile.TarError, OSError):
        raise BackupError("the backup file is damaged", code="backup.format") from None
    if not member.isreg() or member.size > limit:
        raise BackupError(f"{name} in the backup is not a plain file of sensible size",
                          code="backup.format")
    f = tar.extractfile(member)
    if f is None:
        raise BackupError(f"{name} cannot be read", code="backup.format")
    return f.read()


def _member_digest(tar: tarfile.TarFile, member: tarfile.TarInfo) -> tuple[int, str]:
    f = tar.extractfile(member)
    if f is None:
        raise BackupError(f"{member.name} cannot be read", code="backup.format")
    h = hashlib.sha256()
    n = 0
    try:
        while block := f.read(_BLOCK):
            h.update(block)
            n += len(block)
    except (tarfile.TarError, OSError):
        raise BackupError("the backup file is truncated or damaged", code="backup.checksum") from None
    return n, h.hexdigest()
