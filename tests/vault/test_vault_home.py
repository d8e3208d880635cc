"""The vault home: keyring kept out of the data directory, private modes, binding, wrong keys."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from vault_support import CHEAP, PASSPHRASE, make_residents

from pivault.crypto import KeyringError
from pivault.errors import ConfigError, PivaultError
from pivault.policy import local_operator
from pivault.vault import Vault, VaultMismatch, init, load
from pivault.vault import home as _home


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_then_open(tmp_path: Path) -> None:
    home = tmp_path / "vault-home"
    cfg = init(home, passphrase=PASSPHRASE, keyring_path=tmp_path / "keys" / "k.keyring",
               expected_population=1000, argon2=CHEAP)
    assert cfg.store_url == f"sqlite:///{home / 'vault.db'}"
    assert _mode(home) == 0o700 and _mode(home / "pivault.toml") == 0o600
    assert _mode(home / "vault.db") == 0o600 and _mode(cfg.keyring_path) == 0o600
    assert load(home) == cfg
    with Vault.open(home, passphrase=PASSPHRASE) as v:
        rid = v.put(make_residents(1)[0], ctx=local_operator())
        assert v.get(rid, ctx=local_operator())["record_id"] == rid
        for f in home.rglob("*"):  # WAL, shared memory, anything else
            assert _mode(f) == (0o700 if f.is_dir() else 0o600), f.name
    with pytest.raises(ConfigError) as info:
        init(home, passphrase=PASSPHRASE, keyring_path=tmp_path / "k2", argon2=CHEAP)
    assert info.value.code == "home.exists"


def test_keyring_inside_home_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    home = tmp_path / "h"
    with pytest.raises(KeyringError) as info:
        init(home, passphrase=PASSPHRASE, keyring_path=home / "sub" / "k.keyring", argon2=CHEAP)
    assert info.value.code == "keyring.location"
    assert not (home / "pivault.toml").exists()


def test_default_keyring_goes_to_the_config_directory(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PIVAULT_HOME", str(tmp_path / "envhome"))
    cfg = init(passphrase=PASSPHRASE, argon2=CHEAP)
    assert cfg.home == tmp_path / "envhome"
    assert cfg.keyring_path == tmp_path / "xdg" / "pivault" / "keyrings" / f"{cfg.vault_id}.keyring"
    assert _mode(cfg.keyring_path.parent) == 0o700
    assert not [p for p in cfg.keyring_path.parent.iterdir() if p.name.startswith(".new-")]
    assert _home.resolve_home() == cfg.home


def test_wrong_passphrase_missing_home_and_foreign_keyring(tmp_path: Path) -> None:
    a = init(tmp_path / "a", passphrase=PASSPHRASE, keyring_path=tmp_path / "ka", argon2=CHEAP)
    b = init(tmp_path / "b", passphrase=PASSPHRASE, keyring_path=tmp_path / "kb", argon2=CHEAP)
    with pytest.raises(KeyringError) as info:
        Vault.open(a.home, passphrase="not the passphrase")
    assert info.value.code == "keyring.passphrase"
    with pytest.raises(ConfigError) as missing:
        Vault.open(tmp_path / "nowhere", passphrase=PASSPHRASE)
    assert missing.value.code == "home.missing"
    # point vault a at vault b's keyring
    text = (a.home / "pivault.toml").read_text().replace(str(a.keyring_path), str(b.keyring_path))
    (a.home / "pivault.toml").write_text(text)
    with pytest.raises(VaultMismatch) as info2:
        Vault.open(a.home, passphrase=PASSPHRASE)
    assert info2.value.code == "vault.mismatch" and b.vault_id not in info2.value.message


def test_closing_a_vault_stops_its_threads_before_its_store(tmp_path: Path) -> None:
    """A closed vault leaves no detector thread behind to evaluate (and alert) against a closed
    store, and every audit entry of its reads is chained by then."""
    import threading

    from pivault.audit import entries

    def detectors() -> int:
        return sum(1 for t in threading.enumerate() if t.name == "pivault-detector" and t.is_alive())

    cfg = init(tmp_path / "home", passphrase=PASSPHRASE, keyring_path=tmp_path / "k", argon2=CHEAP)
    before = detectors()
    v = Vault.open(cfg.home, passphrase=PASSPHRASE)
    assert detectors() == before + 1
    rid = v.put(make_residents(1)[0], ctx=local_operator())
    v.get(rid, ctx=local_operator())
    v.close()
    assert detectors() == before
    with Vault.open(cfg.home, passphrase=PASSPHRASE) as again:
        assert [e.operation for e in entries(again.db) if rid in e.record_ids][-2:] == ["put", "get"]


def test_a_missing_store_is_named_not_recreated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "vault-home"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rel").mkdir()
    cfg = init(home, passphrase=PASSPHRASE, store_url="sqlite:///rel/vault.db",
               keyring_path=tmp_path / "keys" / "k.keyring", expected_population=1000, argon2=CHEAP)
    # a relative path would name another file from every other directory: it is stored absolute
    assert cfg.store_url == f"sqlite:///{tmp_path / 'rel' / 'vault.db'}" and load(home) == cfg
    monkeypatch.chdir(home)
    with Vault.open(home, passphrase=PASSPHRASE) as v:
        v.put(make_residents(1)[0], ctx=local_operator())
    moved = tmp_path / "elsewhere.db"
    (tmp_path / "rel" / "vault.db").rename(moved)
    with pytest.raises(ConfigError) as info:
        Vault.open(home, passphrase=PASSPHRASE)
    assert info.value.code == "store.missing" and "pivault restore" in (info.value.hint or "")
    assert not (tmp_path / "rel" / "vault.db").exists()  # no empty store made in its place


def test_a_refused_init_or_dev_cert_leaves_no_directory(tmp_path: Path) -> None:
    from pivault.api.tls import make_dev_cert

    with pytest.raises(KeyringError) as info:
        init(tmp_path / "h", passphrase=PASSPHRASE, keyring_path=tmp_path / "k" / "k.keyring",
             expected_population=0, argon2=CHEAP)
    assert info.value.code == "keyring.population"
    with pytest.raises(KeyringError) as weak:
        init(tmp_path / "h2", passphrase="short", keyring_path=tmp_path / "k2" / "k.keyring", argon2=CHEAP)
    assert weak.value.code == "keyring.passphrase_weak"
    with pytest.raises(PivaultError) as bad:
        make_dev_cert(tmp_path / "tls", days=0)
    assert bad.value.code == "tls.days"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_closed_vault_leaves_no_connection_thread_or_journal_behind(tmp_path: Path) -> None:
    """A process that opens and closes vaults (a batch job, a notebook, a test run) kept, for
    each vault it had closed, its audit journal's file, chaining thread and store connection
    until it exited: a long run ran out of file descriptors. Closing the vault chains what is
    left and lets all of it go."""
    import os
    import threading
    import time

    home = tmp_path / "vault-home"
    init(home, passphrase=PASSPHRASE, keyring_path=tmp_path / "keys" / "k.keyring",
         expected_population=1000, argon2=CHEAP)
    people = make_residents(3)
    with Vault.open(home, passphrase=PASSPHRASE) as v:
        for p in people:
            v.put(p, ctx=local_operator())

    def held() -> int:
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                n += os.readlink(f"/proc/self/fd/{fd}").startswith(str(home))
            except OSError:
                continue
        return n

    before = set(threading.enumerate())  # other tests' vaults may still run theirs
    for _ in range(4):
        v = Vault.open(home, passphrase=PASSPHRASE)
        assert v.find(id_number=people[0]["id_number"], ctx=local_operator())
        v.close()
    def chaining() -> bool:
        return any(t.name == "pivault-audit-journal" for t in set(threading.enumerate()) - before)

    deadline = time.monotonic() + 5
    while chaining() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not chaining()
    assert held() == 0
    assert not list((home / "run" / "audit-journal").glob("*.journal"))
    with Vault.open(home, passphrase=PASSPHRASE) as v:  # and every read was chained
        from pivault.audit import entries

        assert sum(1 for e in entries(v.db, operation="find")) == 4
