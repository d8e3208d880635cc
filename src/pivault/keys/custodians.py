"""Custodians: the recovery key split k-of-n, for a lost passphrase or KMS key.

``split`` seals the keysets to a fresh recovery key (see
:mod:`pivault.crypto.recovery`) and splits that key's 32-byte secret with
Shamir's scheme over GF(256), using ``pyshamir`` (a port of HashiCorp
Vault's ``shamir`` package) rather than arithmetic of our own. Each
custodian gets one share: a file that is also printable text, with the
vault id, the split it belongs to, k and n, and a checksum over all of it
so a mistyped or damaged share is named before anything is combined.

Any k shares rebuild the secret; ``recover`` checks it against the recovery
public key in the keyring header before it opens anything, then rewrites
the keyring under a new root key. Fewer than k shares are refused up front:
with Shamir's scheme they carry no information about the secret, so there
is nothing to try.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyshamir

from pivault.crypto import Keyring, KeyringError
from pivault.crypto._atomic import write_private
from pivault.crypto.providers import RootKeyProvider
from pivault.crypto.recovery import fingerprint, new_recovery_secret, public_of
from pivault.errors import PivaultError
from pivault.keys.events import KeyEvents, noop

__all__ = [
    "Share",
    "ShareError",
    "check_shares",
    "combine",
    "read_share",
    "recover",
    "share_path",
    "split",
    "write_shares",
]

_MAGIC = "pivault custodian share"
_FORMAT = 1
_SECRET_BYTES = 32
_CHECK_BYTES = 4


class ShareError(PivaultError):
    """Shares that cannot rebuild the recovery key: too few, mixed, damaged or wrong."""

    code = "keys.shares"


@dataclass(frozen=True)
class Share:
    """One custodian's share of a vault's recovery key."""

    vault_id: str
    split_id: str
    fingerprint: str
    threshold: int
    total: int
    number: int
    created: str
    data: bytes  # pyshamir part: 32 bytes of y values and the x coordinate

    def _check(self) -> bytes:
        head = (f"{_FORMAT}|{self.vault_id}|{self.split_id}|{self.fingerprint}|{self.threshold}|"
                f"{self.total}|{self.number}|{self.created}|").encode("ascii")
        return hashlib.sha256(b"pivault.share\x00" + head + self.data).digest()[:_CHECK_BYTES]

    def to_text(self) -> str:
        """The share as printable text (what goes to the custodian, on paper or in a file)."""
        payload = base64.b32encode(self.data + self._check()).decode("ascii").rstrip("=")
        groups = [payload[i:i + 5] for i in range(0, len(payload), 5)]
        lines = ["-".join(groups[i:i + 6]) for i in range(0, len(groups), 6)]
        return "\n".join([
            f"{_MAGIC} (format {_FORMAT})",
            f"Keep this private. Any {self.threshold} of the {self.total} shares rebuild the vault's"
            " recovery key;",
            "fewer reveal nothing about it.",
            "",
            f"vault:       {self.vault_id}",
            f"split:       {self.split_id}",
            f"fingerprint: {self.fingerprint}",
            f"threshold:   {self.threshold}",
            f"shares:      {self.total}",
            f"share:       {self.number}",
            f"created:     {self.created}",
            "data:",
            *lines,
            "",
        ])

    @classmethod
    def from_text(cls, text: str, *, name: str = "share") -> Share:
        """Parse a share; ``keys.shares.damaged`` names which one if the checksum fails."""
        fields: dict[str, str] = {}
        data_lines: list[str] = []
        in_data = False
        lines = text.strip().splitlines()
        if not lines or not lines[0].startswith(_MAGIC):
            raise ShareError(f"{name} is not a pivault custodian share", code="keys.shares.format")
        for line in lines[1:]:
            if in_data:
                if line.strip():
                    data_lines.append(line.strip())
                continue
            m = re.match(r"^([a-z]+):\s*(.*)$", line.strip())
            if m:
                if m.group(1) == "data":
                    in_data = True
                else:
                    fields[m.group(1)] = m.group(2).strip()
        try:
            payload = re.sub(r"[\s-]", "", "".join(data_lines)).upper()
            raw = base64.b32decode(payload + "=" * (-len(payload) % 8))
            share = cls(vault_id=fields["vault"], split_id=fields["split"],
                        fingerprint=fields["fingerprint"], threshold=int(fields["threshold"]),
                        total=int(fields["shares"]), number=int(fields["share"]),
                        created=fields["created"], data=raw[:-_CHECK_BYTES])
        except (KeyError, ValueError, TypeError):
            raise ShareError(f"{name} is incomplete or unreadable", code="keys.shares.format") from None
        if len(share.data) != _SECRET_BYTES + 1 or raw[-_CHECK_BYTES:] != share._check():
            raise ShareError(f"{name} is damaged or mistyped (checksum does not match)",
                             code="keys.shares.damaged", hint="compare it with the custodian's copy")
        share.check_counts(name)
        return share

    def check_counts(self, name: str = "share") -> None:
        """Refuse counts no split makes (``keys.shares.format``).

        The checksum is not a secret, so a share's header can be rewritten with counts
        that fit: a threshold below 2 would reach Shamir's arithmetic with one share.
        """
        if not (2 <= self.threshold <= self.total <= 255 and 1 <= self.number <= self.total):
            raise ShareError(f"{name} claims counts no split makes (threshold, shares, number): it was "
                             "altered", code="keys.shares.format",
                             hint="use the share files as `pivault keys split` wrote them")


def split(keyring: Keyring, *, shares: int = 5, threshold: int = 3,
          events: KeyEvents = noop, out: str | os.PathLike[str] | None = None) -> list[Share]:
    """Set up a new recovery key for ``keyring`` and split it into ``shares`` shares.

    Replaces any earlier recovery key (its shares stop working). The secret
    exists only in this call's memory. With ``out``, the share files are written
    there (:func:`write_shares`) *before* the keyring takes the new key: the
    shares are its only copy, so when they cannot be written the keyring keeps
    the recovery key it had, and the custodians' shares of it keep working.
    """
    if not 2 <= threshold <= shares <= 255:
        raise ShareError("need 2 <= threshold <= shares <= 255", code="keys.shares.params")
    secret = new_recovery_secret()
    try:
        parts = pyshamir.split(secret, shares, threshold)
        fp = fingerprint(public_of(secret))
        split_id = secrets.token_hex(8)
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        made = [Share(keyring.vault_id, split_id, fp, threshold, shares, i + 1, created, bytes(p))
                for i, p in enumerate(parts)]
        written = write_shares(made, out) if out is not None else []
        try:
            keyring.set_up_recovery(secret)
        except BaseException:
            _forget(keyring, written, fp)
            raise
    finally:
        del secret
    events("keys.split", "ok", {"split": made[0].split_id, "shares": shares, "threshold": threshold,
                                "fingerprint": made[0].fingerprint})
    return made


def _forget(keyring: Keyring, written: Sequence[Path], fp: str) -> None:
    """Remove share files of a recovery key the keyring did not take (they would open nothing).

    Kept if the file on disk names the key after all (the write landed and a later step failed).
    """
    try:
        taken = Keyring.peek(keyring.path).get("recovery", {}).get("fingerprint") == fp
    except KeyringError:
        taken = True  # unsure: keep the shares rather than lose the only copy
    if not taken:
        for path in written:
            path.unlink(missing_ok=True)


def share_path(directory: str | os.PathLike[str], share: Share) -> Path:
    """The file :func:`write_shares` gives ``share`` in ``directory``."""
    name = f"pivault-share-{share.vault_id[:8]}-{share.split_id}-{share.number}-of-{share.total}.txt"
    return Path(directory) / name


def write_shares(shares: Sequence[Share], directory: str | os.PathLike[str]) -> list[Path]:
    """One file per share (mode 0600, never overwriting); hand each to its custodian.

    All or none: a share that cannot be written (``keys.shares.out``, ``keys.shares.exists``)
    removes those written before it, so no incomplete set is handed out.
    """
    d = Path(directory)
    out: list[Path] = []
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        for s in shares:
            path = share_path(d, s)
            write_private(path, s.to_text().encode("ascii"), overwrite=False)
            out.append(path)
    except FileExistsError:
        _remove(out)
        raise ShareError(f"{share_path(d, shares[len(out)]).name} already exists; refusing to overwrite it",
                         code="keys.shares.exists") from None
    except OSError as exc:
        _remove(out)
        raise ShareError(f"cannot write the share files in {d}: {exc.strerror or type(exc).__name__}",
                         code="keys.shares.out",
                         hint="write them to a directory that can be written (--out); the vault's "
                              "recovery key was not changed") from None
    return out


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


#: a share file is some 600 bytes; anything much larger is not one
_MAX_SHARE_BYTES = 64 * 1024


def read_share(path: str | os.PathLike[str]) -> Share:
    """Read one custodian's share file; only a small regular file is read.

    A wrong path given for a share must not hang or exhaust the recovery: a
    named pipe would wait for a writer, ``/dev/zero`` never ends.
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        raise ShareError(f"cannot read share {p.name}", code="keys.shares.format") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ShareError(f"{p.name} is not a share file (not a regular file)", code="keys.shares.format",
                             hint="give the share files `pivault keys split` wrote")
        data = b""
        while len(data) <= _MAX_SHARE_BYTES:
            chunk = os.read(fd, _MAX_SHARE_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError:
        raise ShareError(f"cannot read share {p.name}", code="keys.shares.format") from None
    finally:
        os.close(fd)
    if len(data) > _MAX_SHARE_BYTES:
        raise ShareError(f"{p.name} is too large to be a share file", code="keys.shares.format",
                         hint="give the share files `pivault keys split` wrote")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ShareError(f"cannot read share {p.name}", code="keys.shares.format") from None
    return Share.from_text(text, name=p.name)


def combine(shares: Sequence[Share], *, vault_id: str | None = None) -> bytes:
    """Rebuild the recovery secret from k or more shares of one split; checked, never guessed."""
    if not shares:
        raise ShareError("no shares given", code="keys.shares.too_few")
    for s in shares:
        s.check_counts(f"share {s.number}")
    first = shares[0]
    for s in shares[1:]:
        if (s.vault_id, s.split_id, s.fingerprint, s.threshold, s.total) != \
                (first.vault_id, first.split_id, first.fingerprint, first.threshold, first.total):
            raise ShareError("the shares come from different splits or vaults; use shares of one split",
                             code="keys.shares.mixed")
    if vault_id is not None and first.vault_id != vault_id:
        raise ShareError("the shares belong to another vault", code="keys.shares.vault")
    numbers = [s.number for s in shares]
    if len(set(numbers)) != len(numbers) or len({s.data[-1] for s in shares}) != len(shares):
        raise ShareError("the same share was given twice", code="keys.shares.duplicate")
    if len(shares) < first.threshold:
        raise ShareError(
            f"{first.threshold} shares are needed, {len(shares)} given; fewer than {first.threshold}"
            " reveal nothing about the key, so nothing was tried",
            code="keys.shares.too_few", hint=f"collect {first.threshold - len(shares)} more from custodians")
    secret = bytes(pyshamir.combine([bytearray(s.data) for s in shares]))
    if fingerprint(public_of(secret)) != first.fingerprint:
        raise ShareError("the shares do not rebuild the recovery key (one was altered or is from "
                         "another split with the same name)", code="keys.shares.wrong")
    return secret


def _header_of(keyring_path: Path) -> dict[str, object]:
    """A keyring file's header, unauthenticated: for a clear message only ({} if unreadable)."""
    import json

    try:
        header = json.loads(keyring_path.read_bytes())["header"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return header if isinstance(header, dict) else {}


def _vault_id_of(keyring_path: Path) -> str | None:
    """The vault id in a keyring file's header (unauthenticated: for a clear message only)."""
    vid = _header_of(keyring_path).get("vault_id")
    return vid if isinstance(vid, str) else None


def check_shares(keyring_path: str | os.PathLike[str], shares: Sequence[Share]) -> None:
    """Make every check :func:`recover` makes of ``shares`` (``ShareError`` if one fails).

    The command line calls it before it asks for the new passphrase, so that
    too few or wrong shares are said first: shares of a recovery key that a
    later split replaced rebuild their own key faithfully, and only the
    keyring's recovery key tells them apart. The header is read
    unauthenticated here, to refuse early; :meth:`Keyring.recover` checks
    the rebuilt key against the keyring itself.
    """
    header = _header_of(Path(keyring_path))
    secret = combine(shares, vault_id=_vault_id_of(Path(keyring_path)))
    try:
        recovery = header.get("recovery")
        if not header:
            return  # no readable keyring: Keyring.recover says what is wrong with it
        if not isinstance(recovery, dict):
            raise KeyringError("this keyring has no custodian recovery set up", code="keyring.recovery",
                               hint="recovery needs a `pivault keys split` made before the loss")
        held = recovery.get("fingerprint")
        rebuilt = fingerprint(public_of(secret))
        if rebuilt != held:
            raise ShareError(f"the shares rebuild recovery key {rebuilt}, but this keyring's recovery key is "
                             f"{held}: a later `pivault keys split` replaced theirs, or they were altered",
                             code="keys.shares.wrong", hint="use shares of the keyring's current split")
    finally:
        del secret


def recover(keyring_path: str | os.PathLike[str], shares: Sequence[Share], new_provider: RootKeyProvider,
            *, events: KeyEvents = noop) -> Keyring:
    """Rebuild the recovery key from shares and put the keyring under ``new_provider``.

    Nothing changes unless every check passes: share checksums, one split,
    enough shares, the rebuilt key's fingerprint, the envelope's MAC.
    """
    vault_id = _vault_id_of(Path(keyring_path))
    secret = combine(shares, vault_id=vault_id)
    try:
        ring = Keyring.recover(keyring_path, secret, new_provider)
    except KeyringError:
        raise
    finally:
        del secret
    events("keys.recover", "ok", {"split": shares[0].split_id, "shares_used": len(shares),
                                  "generation": ring.generation})
    return ring
