"""Custodian shares: any k rebuild the recovery key; fewer, mixed, damaged or foreign shares fail clearly."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from keys_support import new_keyring, provider

from pivault.crypto import Keyring, KeyringError
from pivault.keys.custodians import Share, ShareError, combine, read_share, recover, split, write_shares


def _events() -> tuple[list[tuple[str, str, dict[str, Any]]], Any]:
    seen: list[tuple[str, str, dict[str, Any]]] = []
    return seen, lambda op, out, d: seen.append((op, out, dict(d)))


def test_any_three_of_five_recover_a_lost_passphrase(keyring: Keyring, tmp_path: Path) -> None:
    ct = keyring.encrypt("r1", "name", b"synthetic")
    seen, events = _events()
    shares = split(keyring, shares=5, threshold=3, events=events)
    assert [s.number for s in shares] == [1, 2, 3, 4, 5]
    files = write_shares(shares, tmp_path / "custodians")
    assert all(oct(f.stat().st_mode & 0o777) == "0o600" for f in files)
    text = files[0].read_text()
    assert "threshold:   3" in text and keyring.vault_id in text
    # every 3-subset works; the keyring ends up under each new passphrase in turn
    for i, combo in enumerate(itertools.combinations(files, 3)):
        new = provider(f"new-passphrase-{i}")
        ring = recover(keyring.path, [read_share(f) for f in combo], new, events=events)
        assert ring.decrypt("r1", "name", ct) == b"synthetic"
        assert Keyring.open(keyring.path, provider(f"new-passphrase-{i}")).decrypt("r1", "name", ct) \
            == b"synthetic"
    with pytest.raises(KeyringError) as info:
        Keyring.open(keyring.path, provider())
    assert info.value.code == "keyring.passphrase"
    assert seen[0][0] == "keys.split" and seen[0][2]["threshold"] == 3
    assert [e[0] for e in seen[1:]] == ["keys.recover"] * 10
    # the events name the split and counts, never the shares or the key
    for _op, _out, detail in seen:
        for s in shares:
            assert s.data.hex() not in repr(detail) and s.to_text() not in repr(detail)


def test_two_shares_reveal_nothing_and_change_nothing(keyring: Keyring) -> None:
    shares = split(keyring, shares=5, threshold=3)
    before = keyring.path.read_bytes()
    with pytest.raises(ShareError) as info:
        recover(keyring.path, shares[:2], provider("x"))
    assert info.value.code == "keys.shares.too_few"
    assert "3 shares are needed, 2 given" in info.value.message
    assert keyring.path.read_bytes() == before
    # what 2 shares give when forced through the arithmetic is not the key
    import pyshamir

    from pivault.crypto.recovery import fingerprint, public_of

    forced = bytes(pyshamir.combine([bytearray(s.data) for s in shares[:2]]))
    assert fingerprint(public_of(forced)) != shares[0].fingerprint


def test_duplicate_mixed_damaged_and_foreign_shares(keyring: Keyring, tmp_path: Path) -> None:
    a = split(keyring, shares=4, threshold=2)
    before = keyring.path.read_bytes()
    with pytest.raises(ShareError) as info:
        combine([a[0], a[0]])
    assert info.value.code == "keys.shares.duplicate"
    b = split(keyring, shares=4, threshold=2)  # a new split replaces the old recovery key
    with pytest.raises(ShareError) as info:
        combine([a[0], b[1]])
    assert info.value.code == "keys.shares.mixed"
    # the old split no longer opens the keyring
    before = keyring.path.read_bytes()
    with pytest.raises(KeyringError) as kinfo:
        recover(keyring.path, a[:2], provider("x"))
    assert kinfo.value.code == "keyring.recovery"
    assert keyring.path.read_bytes() == before
    # a mistyped share is named before anything is combined
    text = b[0].to_text()
    lines = text.splitlines()
    i = next(n for n, line in enumerate(lines) if line == "data:") + 1
    bad = lines[i][:3] + ("A" if lines[i][3] != "A" else "B") + lines[i][4:]
    with pytest.raises(ShareError) as info:
        Share.from_text("\n".join([*lines[:i], bad, *lines[i + 1:]]), name="share-1.txt")
    assert info.value.code == "keys.shares.damaged" and "share-1.txt" in info.value.message
    with pytest.raises(ShareError) as info:
        Share.from_text("hello", name="x.txt")
    assert info.value.code == "keys.shares.format"
    # a share whose checksum was recomputed after altering it fails the fingerprint check (a byte
    # in the middle: X25519 clears the low bits of a key's first byte and the top of its last, so a
    # change there can leave the same public key, and the same key in use)
    forged = Share(**{**b[0].__dict__, "data": b[0].data[:5] + bytes([b[0].data[5] ^ 1]) + b[0].data[6:]})
    forged = Share.from_text(forged.to_text())
    with pytest.raises(ShareError) as info:
        combine([forged, b[1]])
    assert info.value.code == "keys.shares.wrong"
    # shares of another vault
    other = new_keyring(tmp_path / "other" / "vault.keyring")
    foreign = split(other, shares=3, threshold=2)
    with pytest.raises(ShareError) as info:
        recover(keyring.path, foreign[:2], provider("x"))
    assert info.value.code == "keys.shares.vault"
    assert keyring.path.read_bytes() == before


def test_recovery_survives_rotation_and_root_change(keyring: Keyring) -> None:
    shares = split(keyring, shares=3, threshold=2)
    ct1 = keyring.encrypt("r1", "name", b"one")
    keyring.rotate("aead")
    keyring.rotate("prf.mobile")
    ct2 = keyring.encrypt("r2", "name", b"two")
    keyring.change_root(provider("changed-passphrase"))
    ring = recover(keyring.path, shares[1:], provider("recovered"))
    assert ring.decrypt("r1", "name", ct1) == b"one" and ring.decrypt("r2", "name", ct2) == b"two"
    assert ring.key_ids("prf.mobile") == keyring.key_ids("prf.mobile")


def test_a_forged_envelope_is_refused(keyring: Keyring) -> None:
    """Whoever can write the keyring file cannot plant keys of their own for a recovery."""
    import base64
    import json

    from pivault.crypto import recovery

    shares = split(keyring, shares=3, threshold=2)
    doc = json.loads(keyring.path.read_bytes())
    public = base64.b64decode(doc["header"]["recovery"]["public"])
    # seal an attacker's bundle to the (public) recovery key
    fake = recovery.seal(public, b'{"aead": ""}', b"pivault.recovery\x00" + json.dumps(
        doc["header"], sort_keys=True, separators=(",", ":")).encode())
    doc["recovery"]["sealed"] = base64.b64encode(fake).decode()
    keyring.path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    with pytest.raises(KeyringError) as info:
        recover(keyring.path, shares[:2], provider("x"))
    assert info.value.code == "keyring.corrupt"


def test_split_parameters(keyring: Keyring) -> None:
    for n, k in ((5, 1), (2, 3), (300, 3)):
        with pytest.raises(ShareError):
            split(keyring, shares=n, threshold=k)
    assert keyring.recovery_fingerprint() is None
    with pytest.raises(KeyringError) as info:
        Keyring.recover(keyring.path, b"\x00" * 32, provider("x"))
    assert info.value.code == "keyring.recovery"


def _reforged(share: Share, **changes: Any) -> str:
    """The share's text with header fields changed and its (unkeyed) checksum made to fit again."""
    return Share(**{**share.__dict__, **changes}).to_text()


def test_a_share_whose_header_claims_impossible_counts_is_refused(tmp_path: Path) -> None:
    """Anyone can recompute a share's checksum: a share claiming a threshold below 2, above its
    count of shares, or a number outside 1..n is refused as unreadable, in one line, from the
    library and from the command line, and the keyring is not touched."""
    import os
    import subprocess
    import sys

    from keys_support import CHEAP, PASSPHRASE

    from pivault.vault import home as _home

    home = tmp_path / "home"
    cfg = _home.init(home, passphrase=PASSPHRASE, keyring_path=tmp_path / "keys" / "vault.keyring",
                     argon2=CHEAP)
    ring = Keyring.open(cfg.keyring_path, provider())
    good = split(ring, shares=3, threshold=2)
    before = cfg.keyring_path.read_bytes()
    impossible = [{"threshold": 1}, {"threshold": 0}, {"threshold": -1}, {"threshold": 4},
                  {"threshold": 300, "total": 300}, {"number": 0}, {"number": 4}, {"total": 1}]
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PIVAULT_PASSPHRASE": PASSPHRASE,
           "PIVAULT_NEW_PASSPHRASE": "another-long-passphrase", "PIVAULT_HOME": str(home),
           "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for i, changes in enumerate(impossible):
        text = _reforged(good[0], **changes)
        with pytest.raises(ShareError) as info:
            Share.from_text(text, name="forged.txt")
        assert info.value.code == "keys.shares.format" and "forged.txt" in info.value.message
        forged = Share(**{**good[0].__dict__, **changes})
        with pytest.raises(ShareError):
            recover(cfg.keyring_path, [forged] * max(1, min(forged.threshold, 3)), provider("x"))
        path = tmp_path / f"forged-{i}.txt"
        path.write_text(text)
        res = subprocess.run([sys.executable, "-c", "from pivault.cli.main import main; main()",
                              "keys", "recover", str(path)],
                             env=env, capture_output=True, text=True, timeout=120, check=False)
        assert res.returncode != 0 and "Traceback" not in res.stderr, (changes, res.stderr)
        assert res.stderr.startswith("error[keys.shares.format]: "), (changes, res.stderr)
        assert cfg.keyring_path.read_bytes() == before


def test_a_split_whose_shares_cannot_be_written_keeps_the_recovery_key(tmp_path: Path) -> None:
    """The shares are the only copy of a new recovery key: if they cannot be written (an --out
    under a file, a full disk), the keyring keeps the recovery key it had and the custodians'
    shares keep working, from the library and from `pivault keys split --force`."""
    import os
    import subprocess
    import sys

    from keys_support import CHEAP, PASSPHRASE

    from pivault.vault import home as _home

    home = tmp_path / "home"
    cfg = _home.init(home, passphrase=PASSPHRASE, keyring_path=tmp_path / "keys" / "vault.keyring",
                     argon2=CHEAP)
    ring = Keyring.open(cfg.keyring_path, provider())
    held = split(ring, shares=3, threshold=2)
    fingerprint = ring.recovery_fingerprint()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ShareError) as info:
        split(ring, shares=3, threshold=2, out=blocker / "shares")
    assert info.value.code == "keys.shares.out" and "\n" not in info.value.message
    assert ring.recovery_fingerprint() == fingerprint
    assert Keyring.peek(cfg.keyring_path)["recovery"]["fingerprint"] == fingerprint
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PIVAULT_PASSPHRASE": PASSPHRASE, "PIVAULT_HOME": str(home),
           "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", "from pivault.cli.main import main; main()",
                          "keys", "split", "--force", "--out", str(blocker / "shares")],
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "error[keys.shares.out]: " in res.stderr, res.stderr
    assert Keyring.peek(cfg.keyring_path)["recovery"]["fingerprint"] == fingerprint
    recovered = recover(cfg.keyring_path, held[1:], provider("recovered-passphrase"))
    assert recovered.recovery_fingerprint() == fingerprint
    # a split that can write its shares writes them before the keyring takes the new key
    made = split(recovered, shares=3, threshold=2, out=tmp_path / "custodians")
    files = sorted((tmp_path / "custodians").iterdir())
    assert len(files) == 3 and [read_share(f) for f in files] == sorted(made, key=lambda s: s.number)
    assert Keyring.peek(cfg.keyring_path)["recovery"]["fingerprint"] == made[0].fingerprint
    recover(cfg.keyring_path, [read_share(f) for f in files[:2]], provider("again-recovered"))


def test_a_share_path_that_is_no_share_file_is_refused_at_once(tmp_path: Path) -> None:
    """A custodian's share given as the wrong path (a named pipe, a device, /dev/zero, a huge file)
    was read to its end: a pipe with no writer hung the command for ever, /dev/zero filled memory
    and ended in a MemoryError traceback. Now anything but a small regular file is refused in one
    line, before anything is combined, and the keyring is not touched."""
    import os
    import resource
    import subprocess
    import sys
    import threading

    from keys_support import CHEAP, PASSPHRASE

    from pivault.vault import home as _home

    fifo = tmp_path / "share-pipe.txt"
    os.mkfifo(fifo)
    outcome: list[BaseException | Share] = []

    def read() -> None:
        try:
            outcome.append(read_share(fifo))
        except BaseException as exc:  # what the reader ends with, for the assertion below
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    hung = reader.is_alive()
    if hung:  # release it, so that the failure below is the only harm
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        reader.join(10)
    assert not hung, "reading a named pipe as a share waited for a writer"
    assert len(outcome) == 1 and isinstance(outcome[0], ShareError), outcome
    assert outcome[0].code == "keys.shares.format" and fifo.name in outcome[0].message
    huge = tmp_path / "huge.txt"
    huge.write_bytes(b"pivault custodian share (format 1)\n" + b"A" * (4 << 20))
    for path in (huge, tmp_path):  # /dev/zero below, in a process of its own with bounded memory
        with pytest.raises(ShareError) as info:
            read_share(path)
        assert info.value.code == "keys.shares.format" and "\n" not in info.value.message

    home = tmp_path / "home"
    cfg = _home.init(home, passphrase=PASSPHRASE, keyring_path=tmp_path / "keys" / "vault.keyring",
                     argon2=CHEAP)
    good = split(Keyring.open(cfg.keyring_path, provider()), shares=3, threshold=2, out=tmp_path / "sh")
    before = cfg.keyring_path.read_bytes()
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PIVAULT_PASSPHRASE": PASSPHRASE,
           "PIVAULT_NEW_PASSPHRASE": "another-long-passphrase", "PIVAULT_HOME": str(home),
           "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def at_most_a_gigabyte() -> None:  # the command must not need it: /dev/zero has no end
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    one = str(tmp_path / "sh" / f"pivault-share-{good[0].vault_id[:8]}-{good[0].split_id}-1-of-3.txt")
    res = subprocess.run([sys.executable, "-c", "from pivault.cli.main import main; main()",
                          "keys", "recover", "/dev/zero", one], env=env, capture_output=True, text=True,
                         timeout=120, check=False, preexec_fn=at_most_a_gigabyte)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.startswith("error[keys.shares.format]: ") and "zero" in res.stderr, res.stderr
    assert cfg.keyring_path.read_bytes() == before


_FULL_DISK_SPLIT = """
import json, resource, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from keys_support import provider
from pivault.crypto import Keyring, KeyringError
from pivault.keys.custodians import split

path = Path(sys.argv[1])
ring = Keyring.open(path, provider())
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as on a full disk
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size - 200, hard))  # shares fit, the keyring not
try:
    split(ring, shares=3, threshold=2, out=sys.argv[3])
    outcome = "split"
except KeyringError as exc:
    outcome = exc.code
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
ring.rotate("aead")  # the same process goes on changing keys
print(json.dumps({"split": outcome}))
"""


def test_a_split_the_keyring_could_not_take_leaves_the_old_shares_working(keyring: Keyring,
                                                                          tmp_path: Path) -> None:
    """A split whose share files were written but whose keyring rewrite failed (a full disk) kept the
    new recovery key's MAC key in the process: its next key change sealed the recovery envelope with
    it under the old recovery key, and every share the custodians held stopped working, unsaid."""
    import json
    import os
    import subprocess
    import sys

    held = split(keyring, shares=3, threshold=2)
    fingerprint = keyring.recovery_fingerprint()
    script = tmp_path / "full_disk_split.py"
    script.write_text(_FULL_DISK_SPLIT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    res = subprocess.run([sys.executable, str(script), str(keyring.path), str(Path(__file__).parent),
                          str(tmp_path / "new-shares")], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout) == {"split": "keyring.io"}
    assert list((tmp_path / "new-shares").iterdir()) == []  # the shares of a key nobody took, removed
    assert Keyring.peek(keyring.path)["recovery"]["fingerprint"] == fingerprint
    recovered = recover(keyring.path, held[:2], provider("recovered-synthetic-passphrase"))
    assert recovered.recovery_fingerprint() == fingerprint
