"""Backup files made by whoever can write to the backup shelf, and files given by mistake.

None of these carries a valid signature, so none may get further than the
first check: each must end in one clear ``error[code]`` line (no traceback,
nothing of the attacker's text echoed), quickly, in bounded memory, and
without touching any store.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from keys_support import new_keyring, put_all, residents

from pivault.backup import BackupError, BackupResult, Container, create_backup, load_verify_key, verify_backup
from pivault.backup.signing import VerifyKey
from pivault.crypto import Keyring
from pivault.store.db import Database
from pivault.vault import Vault


@pytest.fixture
def shelf(sqlite_url: str, tmp_path: Path) -> Iterator[tuple[BackupResult, Keyring]]:
    """A real backup of a small SQLite vault, and its keyring."""
    kr = new_keyring(tmp_path / "keys" / "vault.keyring")
    with Database(sqlite_url) as db:
        v = Vault.initialise(db, kr)
        put_all(v, residents(4, seed=91))
        res = create_backup(db, kr, tmp_path / "shelf" / "vault.pvb")
        v.close()
    yield res, kr


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        out = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert f is not None
            out[m.name] = f.read()
        return out


def _write_tar(out: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(out, "w:", format=tarfile.PAX_FORMAT) as tar:
        for name, body in members:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out


def _with_manifest(res: BackupResult, out: Path, manifest: bytes) -> Path:
    members = _members(res.path)
    members["manifest.json"] = manifest
    return _write_tar(out, list(members.items()))


_CLI = "from pivault.cli.main import main; main()"


def _cli_verify(path: Path, key: VerifyKey, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`pivault backup verify FILE --public-key KEY` in its own process, as an operator runs it."""
    import base64

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", _CLI, "backup", "verify", str(path), "--public-key",
                           base64.b64encode(key.public).decode()], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _one_clear_line(proc: subprocess.CompletedProcess[str], code: str) -> None:
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert lines and lines[0].startswith(f"error[{code}]: "), proc.stderr[-2000:]
    assert all(line.startswith("  hint: ") for line in lines[1:]), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "\x1b" not in proc.stderr
    assert len(proc.stderr) < 1000


def test_a_deeply_nested_manifest_is_refused_in_one_line(shelf: tuple[BackupResult, Keyring],
                                                         tmp_path: Path) -> None:
    res, kr = shelf
    key = load_verify_key(kr.path)
    for label, body in (("array", b"[" * 100_000 + b"]" * 100_000),
                        ("object", b'{"a":' * 100_000 + b"1" + b"}" * 100_000)):
        bad = _with_manifest(res, tmp_path / f"nested-{label}.pvb", body)
        with pytest.raises(BackupError) as info:
            verify_backup(bad, key)
        assert info.value.code == "backup.format", label
        _one_clear_line(_cli_verify(bad, key), "backup.format")


def test_the_unsigned_vault_id_is_never_echoed(shelf: tuple[BackupResult, Keyring], tmp_path: Path) -> None:
    """Before the signature is checked the manifest is the attacker's text: it must not reach the terminal."""
    res, kr = shelf
    manifest = json.loads(_members(res.path)["manifest.json"])
    manifest["vault_id"] = "\x1b[2J\x1b[31m\nerror[ok]: backup verified, restore it now " + "x" * 10_000
    bad = _with_manifest(res, tmp_path / "lying-id.pvb", json.dumps(manifest).encode())
    with pytest.raises(BackupError) as info:
        verify_backup(bad, load_verify_key(kr.path), vault_id=kr.vault_id)
    assert info.value.code == "backup.vault"
    assert "\x1b" not in info.value.message and "\n" not in info.value.message
    assert "restore it now" not in info.value.message and len(info.value.message) < 300
    assert kr.vault_id in info.value.message


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "/dev/null", "directory"])
def test_a_backup_path_that_is_no_regular_file_is_refused_at_once(shelf: tuple[BackupResult, Keyring],
                                                                  tmp_path: Path, kind: str) -> None:
    _, kr = shelf
    if kind == "fifo":
        path = tmp_path / "vault.pvb"
        os.mkfifo(path)  # nobody writes: opening it for reading would wait forever
    elif kind == "directory":
        path = tmp_path / "vault.pvb"
        path.mkdir()
    else:
        path = Path(kind)
    key = load_verify_key(kr.path)
    proc = _cli_verify(path, key, timeout=30)
    _one_clear_line(proc, "backup.format")
    assert "not a regular file" in proc.stderr
    with pytest.raises(BackupError) as info:
        Container.open(path)
    assert info.value.code == "backup.format"


def _sparse_header_bomb(out: Path, header_type: bytes, declared: int) -> Path:
    """A tar whose first header announces a pax (or GNU long-name) record of ``declared`` bytes.

    The file is sparse: it costs the attacker nothing on disk, while a reader that takes such a
    record whole allocates ``declared`` bytes.
    """
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = header_type
    info.size = declared
    with open(out, "wb") as fh:
        fh.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        fh.truncate(512 + declared + 1024)
    return out


#: the child's own peak (VmHWM starts afresh at exec; ru_maxrss would carry the test process's over)
_VERIFY_CHILD = """
import re, sys
from pivault.backup import BackupError, verify_backup
from pivault.backup.signing import VerifyKey
try:
    verify_backup(sys.argv[1], VerifyKey(bytes(32)))
    print("passed")
except BackupError as exc:
    print("refused", exc.code)
with open("/proc/self/status") as fh:
    print("peak_kib", re.search(r"VmHWM:\\s+(\\d+)", fh.read()).group(1))
"""


def _peak_mib(bad: Path) -> tuple[str, int]:
    """Verify ``bad`` in a process of its own: its outcome, and the most memory it held (MiB)."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to measure a process's peak memory")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", _VERIFY_CHILD, str(bad)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcome, peak = proc.stdout.splitlines()
    return outcome, int(peak.split()[1]) // 1024


@pytest.mark.parametrize("header_type", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME])
def test_a_huge_tar_header_record_is_refused_before_it_is_read(tmp_path: Path, header_type: bytes) -> None:
    bomb = _sparse_header_bomb(tmp_path / "bomb.pvb", header_type, 768 << 20)
    outcome, peak = _peak_mib(bomb)
    assert outcome == "refused backup.format"
    assert peak < 150, f"reading a refused backup took {peak} MiB"


def test_a_tar_of_countless_members_is_refused(tmp_path: Path) -> None:
    """Every member header costs memory in the reader: a real backup has a few dozen."""
    bomb = tmp_path / "members.pvb"
    with tarfile.open(bomb, "w:", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(20_000):
            tar.addfile(tarfile.TarInfo(f"data/t{i}.copy"))
    with pytest.raises(BackupError) as info:
        verify_backup(bomb, VerifyKey(bytes(32)))
    assert info.value.code == "backup.format" and "members" in info.value.message


def test_an_oversized_manifest_is_refused_unparsed(shelf: tuple[BackupResult, Keyring],
                                                   tmp_path: Path) -> None:
    """A real manifest is a few KiB; one of many MiB of tiny objects takes hundreds of MiB once parsed."""
    res, _ = shelf
    body = b'{"format":"pivault.backup","version":1,"pad":[' + b"{}," * (5 << 20) + b"{}]}"
    outcome, peak = _peak_mib(_with_manifest(res, tmp_path / "huge.pvb", body))
    assert outcome == "refused backup.format"
    assert peak < 150, f"reading a refused backup took {peak} MiB"


@pytest.mark.parametrize("kind", ["binary file", "fifo", "/dev/zero"])
def test_a_public_key_argument_that_names_no_key_file_is_refused_in_one_line(
        shelf: tuple[BackupResult, Keyring], tmp_path: Path, kind: str) -> None:
    """`--public-key` takes the key or a file holding it: a wrong file must not hang, eat memory or crash."""
    res, _ = shelf
    if kind == "binary file":
        arg = tmp_path / "vault.pvb.copy"
        arg.write_bytes(res.path.read_bytes())  # the backup given in the key's place
    elif kind == "fifo":
        arg = tmp_path / "key.fifo"
        os.mkfifo(arg)
    else:
        arg = Path(kind)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def limit_memory() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    proc = subprocess.run([sys.executable, "-c", _CLI, "backup", "verify", str(res.path), "--public-key",
                           str(arg)], capture_output=True, text=True, timeout=30, env=env,
                          preexec_fn=limit_memory)
    _one_clear_line(proc, "backup.key")


def test_a_member_announced_larger_than_listed_is_refused_before_it_is_read(
        shelf: tuple[BackupResult, Keyring], tmp_path: Path) -> None:
    """The signed manifest stays; the database member's header claims 64 GiB (a sparse file costs nothing)."""
    import time

    res, kr = shelf
    members = _members(res.path)
    claimed = 64 << 30
    bad = tmp_path / "huge-member.pvb"
    with open(bad, "wb") as fh:
        info = tarfile.TarInfo("data/vault.db")
        info.size = claimed
        fh.write(info.tobuf(format=tarfile.GNU_FORMAT))
        fh.seek(claimed, os.SEEK_CUR)  # a hole, then the rest of the backup as it was
        for name in ("keyring.json", "manifest.json", "manifest.sig"):
            body = members[name]
            info = tarfile.TarInfo(name)
            info.size = len(body)
            fh.write(info.tobuf(format=tarfile.GNU_FORMAT) + body + b"\0" * (-len(body) % 512))
        fh.write(b"\0" * 1024)
    t0 = time.monotonic()
    with pytest.raises(BackupError) as info_:
        verify_backup(bad, load_verify_key(kr.path))
    assert info_.value.code == "backup.checksum"
    assert time.monotonic() - t0 < 10, "the claimed 64 GiB were read"


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_new_home_with_a_keyring_path_that_is_no_file_is_refused_at_once(shelf: tuple[BackupResult, Keyring],
                                                                         tmp_path: Path, kind: str) -> None:
    import base64

    res, kr = shelf
    keyring = tmp_path / "elsewhere" / "vault.keyring"
    keyring.parent.mkdir()
    if kind == "fifo":
        os.mkfifo(keyring)
    else:
        keyring.mkdir()
    public = base64.b64encode(load_verify_key(kr.path).public).decode()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    new = tmp_path / "new"
    proc = subprocess.run([sys.executable, "-c", _CLI, "restore", str(res.path), "--home", str(new),
                           "--new-home", "--keyring", str(keyring), "--public-key", public],
                          capture_output=True, text=True, timeout=30, env=env)
    _one_clear_line_or_two(proc, "restore.keyring")
    assert not new.exists()


def _one_clear_line_or_two(proc: subprocess.CompletedProcess[str], code: str) -> None:
    assert proc.returncode in (1, 2), proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert lines and lines[0].startswith(f"error[{code}]: "), proc.stderr[-2000:]
    assert all(line.startswith("  hint: ") for line in lines[1:]) and "Traceback" not in proc.stderr


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(b"pwned") if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize("planted", [
    _member("../../escaped.txt"),
    _member("/tmp/escaped-absolute.txt"),
    _member("data/../../escaped.txt"),
    _member("data/vault.db", tarfile.SYMTYPE, link="/etc/passwd"),
    _member("data/vault.db", tarfile.LNKTYPE, link="keyring.json"),
    _member("data/vault.db", tarfile.CHRTYPE),
], ids=["dotdot", "absolute", "inner-dotdot", "symlink", "hardlink", "device"])
def test_members_aimed_outside_the_restore_are_refused_and_write_nothing(shelf: tuple[BackupResult, Keyring],
                                                                         tmp_path: Path,
                                                                         planted: tarfile.TarInfo) -> None:
    """Names are never used as paths; a listed name that is not a plain file is no backup member."""
    res, kr = shelf
    bad = tmp_path / "deep" / "er" / "planted.pvb"
    bad.parent.mkdir(parents=True)
    members = _members(res.path)
    with tarfile.open(bad, "w:", format=tarfile.PAX_FORMAT) as tar:
        for name, body in members.items():
            if name == planted.name:
                continue
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        tar.addfile(planted, io.BytesIO(b"pwned") if planted.isreg() else None)
    with pytest.raises(BackupError) as info:
        verify_backup(bad, load_verify_key(kr.path), deep=True)
    assert info.value.code in ("backup.format", "backup.checksum")
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/escaped-absolute.txt").exists()
