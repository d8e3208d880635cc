"""An older keyring file put back is refused by every process, not only by those that held a newer one.

The attacker (or the careless operator) copies last month's keyring file over the
current one after keys were rotated, rewrapped and retired, and starts a process:
a Vault, a command. The store remembers the newest keyring generation it has seen
(pivault.keys.seen), so the process refuses to open, naming the problem in one
line, and nothing is read, written or changed with the older keys. The current
keyring keeps working, and so does a data backup restored with it.

Also here: a writer whose keyring has not looked at its file since the keys changed
(the 10 ms between two looks, or an import chunk sealed before a rotation) seals
again before it commits, so nothing arrives under a key a retirement's census
found unused.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from keys_support import CHEAP, PASSPHRASE, AuditingGuard, audited_vault, ctx, provider, put_all, residents

from pivault.audit import AuditLog, load_writer, verify
from pivault.backup import create_backup, load_verify_key, restore
from pivault.backup.restore import _BOOKKEEPING
from pivault.crypto import Keyring, KeyringError
from pivault.errors import ConfigError
from pivault.keys import seen
from pivault.keys.rewrap import rewrap
from pivault.keys.rotate import retire_unused, rotate
from pivault.keys.shred import ShreddingRecordStore
from pivault.keys.sites import file_sites
from pivault.store.db import Database
from pivault.store.migrations import migrate
from pivault.vault import Vault
from pivault.vault import home as _home

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _open(url: str, path: Path) -> Vault:
    """The vault as a process started now opens it: the keyring file as it is on disk."""
    return Vault(Database(url), Keyring.open(path, provider()))


def _record_keys(vault: Vault) -> ShreddingRecordStore:
    store = vault.store
    assert isinstance(store, ShreddingRecordStore)
    return store


def _operator(vault: Vault) -> Keyring:
    """The operator's own process (`pivault keys …`), with the keyring file as it is now."""
    kr = Keyring.open(vault.keyring.path, provider())
    kr.record_keys = True
    return kr


def _rotate_rewrap_retire(vault: Vault, keyset: str = "aead") -> tuple[int, int]:
    """`keys rotate`, `keys rewrap --retire` from the operator's process: (retired, new) key ids."""
    kr = _operator(vault)
    old = kr.primary_key_id(keyset)
    rotate(kr, [keyset], db=vault.db)
    assert rewrap(vault.db, kr, record_keys=_record_keys(vault).keys).complete
    retired = retire_unused(vault.db, kr, record_keys=_record_keys(vault).keys)
    assert (keyset, old) in [(r.keyset, r.key_id) for r in retired]
    return old, kr.primary_key_id(keyset)


def _put_back(path: Path, data: bytes) -> None:
    """A copy put over the keyring file, as `cp` or a restore of the keyring's backup does."""
    path.unlink()
    path.write_bytes(data)
    path.chmod(0o600)  # private, as the copy it was made from


def _refused(url: str, path: Path) -> KeyringError:
    db = Database(url)
    try:
        with pytest.raises(KeyringError) as exc:
            Vault(db, Keyring.open(path, provider())).close()
    finally:
        db.close()
    return exc.value


def _no_pi(text: str, people: list[dict[str, str]]) -> None:
    for p in people:
        for value in (p["name"], p["id_number"], p["mobile"]):
            assert value not in text


def test_an_older_keyring_put_back_after_a_rotation_is_refused_by_a_new_process(vault: Vault) -> None:
    url, path = vault.db.url.raw, vault.keyring.path
    people = residents(6, seed=71)
    ids = put_all(vault, people[:3])
    older = path.read_bytes()
    rotate(_operator(vault), ["aead"], db=vault.db)  # `pivault keys rotate`
    ids += put_all(vault, people[3:])  # wrapped under the new key, which the older copy lacks
    newer = path.read_bytes()

    _put_back(path, older)
    err = _refused(url, path)
    assert err.code == "keyring.rollback"
    assert "older" in err.message and "\n" not in err.message and "keyring" in err.hint
    _no_pi(err.message + err.hint, people)
    with pytest.raises(KeyringError) as exc:  # nor is a key change built on it
        rotate(Keyring.open(path, provider()), ["aead"], db=vault.db)
    assert exc.value.code == "keyring.rollback"
    assert path.read_bytes() == older  # nothing changed

    _put_back(path, newer)
    reader = _open(url, path)
    try:
        for rid, p in zip(ids, people, strict=True):
            assert reader.get(rid, ctx=ctx())["id_number"] == p["id_number"]
    finally:
        reader.close()


def test_every_older_copy_is_refused_after_a_retirement(vault: Vault) -> None:
    url, path = vault.db.url.raw, vault.keyring.path
    people = residents(6, seed=72)
    ids = put_all(vault, people[:2])
    before_rotation = path.read_bytes()
    kr = _operator(vault)
    rotate(kr, ["aead"], db=vault.db)
    before_retirement = path.read_bytes()  # has the new key, and the old one
    assert rewrap(vault.db, kr, record_keys=_record_keys(vault).keys).complete
    assert retire_unused(vault.db, kr, record_keys=_record_keys(vault).keys)
    current = path.read_bytes()
    time.sleep(0.05)  # the running vault looks at its file at most every 10 ms
    ids += put_all(vault, people[2:])

    for copy in (before_rotation, before_retirement):
        _put_back(path, copy)
        assert _refused(url, path).code == "keyring.rollback"
    _put_back(path, current)
    reader = _open(url, path)
    try:
        for rid, p in zip(ids, people, strict=True):
            assert reader.get(rid, ctx=ctx())["name"] == p["name"]
        assert seen.seen_generation(reader.db) == reader.keyring.generation
    finally:
        reader.close()


def test_the_command_line_refuses_an_older_keyring_in_one_line(tmp_path: Path) -> None:
    """A real process: `pivault keys status` and `keys rotate` after the file was put back."""
    home = tmp_path / "home"
    cfg = _home.init(home, passphrase=PASSPHRASE, keyring_path=tmp_path / "keys" / "vault.keyring",
                     argon2=CHEAP)
    people = residents(3, seed=73)
    with Vault.open(home, passphrase=PASSPHRASE) as v:
        put_all(v, people)
    path = cfg.keyring_path
    older = path.read_bytes()
    env = {**os.environ, "PIVAULT_PASSPHRASE": PASSPHRASE, "PIVAULT_HOME": str(home),
           "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def pivault(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", "from pivault.cli.main import main; main()", *args],
                              env=env, capture_output=True, text=True, timeout=120, check=False)

    assert pivault("keys", "rotate").returncode == 0
    _put_back(path, older)
    for args in (("keys", "status"), ("keys", "rotate"), ("stats",)):
        res = pivault(*args)
        assert res.returncode == 1, (args, res.stderr)
        first, *rest = res.stderr.splitlines()
        assert first.startswith("error[keyring.rollback]: the keyring ") and "older" in first, res.stderr
        assert all(line.startswith("  hint: ") for line in rest) and "Traceback" not in res.stderr
        _no_pi(res.stdout + res.stderr, people)
    assert path.read_bytes() == older  # the refused rotation changed nothing


def test_a_restored_data_backup_opens_with_the_current_keyring(store_url: str, tmp_path: Path) -> None:
    """The backup brings back the store's mark of its time; the current keyring is newer and opens."""
    path = tmp_path / "keys" / "vault.keyring"
    keyring = Keyring.create(path, provider(), expected_population=10**6)
    vault = Vault.initialise(Database(store_url), keyring)
    people = residents(6, seed=74)
    try:
        ids = put_all(vault, people[:3])
        too_old = path.read_bytes()
        rotate(_operator(vault), ["aead"], db=vault.db)
        time.sleep(0.05)
        ids += put_all(vault, people[3:5])
        create_backup(vault.db, vault.keyring, tmp_path / "vault.backup")
        at_backup = seen.seen_generation(vault.db)
        rotate(_operator(vault), ["aead", "prf.mobile"], db=vault.db)  # after the backup: the mark moves on
        time.sleep(0.05)
        ids.append(vault.put(people[5], ctx=ctx()))
        assert seen.seen_generation(vault.db) == at_backup + 2
        # the store is wiped (every row but the bookkeeping); the data backup is restored into it
        for table in vault.db.tables():
            if table not in _BOOKKEEPING:
                vault.db.execute(f'DELETE FROM "{table}"')
        wiped = seen.seen_generation(vault.db)
    finally:
        vault.close()
    backup, key = tmp_path / "vault.backup", load_verify_key(path)
    # with a keyring older than the backup's store had seen: refused before anything changes
    with pytest.raises(KeyringError) as exc:
        restore(backup, store_url, key, vault_id=keyring.vault_id, keyring_generation=0)
    assert exc.value.code == "keyring.rollback" and "nothing was restored" in exc.value.message
    with Database(store_url) as db:
        assert seen.seen_generation(db) == wiped and db.query_one("SELECT COUNT(*) FROM records") == (0,)
    restore(backup, store_url, key, vault_id=keyring.vault_id,
            keyring_generation=Keyring.peek(path)["generation"])
    with Database(store_url) as db:
        assert seen.seen_generation(db) == at_backup
    reader = _open(store_url, path)
    try:
        assert seen.seen_generation(reader.db) == reader.keyring.generation  # the open noted it
        for rid, p in zip(ids[:5], people[:5], strict=True):
            assert reader.get(rid, ctx=ctx())["mobile"] == p["mobile"]
    finally:
        reader.close()
    _put_back(path, too_old)  # older than the backup's own mark: still refused
    assert _refused(store_url, path).code == "keyring.rollback"


def test_a_store_migrated_from_before_the_mark_gets_it(store_url: str, keyring: Keyring) -> None:
    db = Database(store_url)
    Vault.initialise(db, keyring).close()
    older = keyring.path.read_bytes()
    db = Database(store_url)
    # the store as an older pivault left it: no mark, its schema step not applied
    db.execute(f"DROP TABLE {seen.TABLE}")
    db.execute("DELETE FROM schema_migrations WHERE component = 'keyring'")
    Keyring.open(keyring.path, provider()).rotate("aead")  # a change the store never heard of
    with pytest.raises(ConfigError) as exc:
        Vault(db, Keyring.open(keyring.path, provider()))
    assert exc.value.code == "store.schema"  # `pivault migrate` first
    assert "keyring:1" in migrate(db)
    assert seen.seen_generation(db) == 0
    _open(store_url, keyring.path).close()  # the first open notes the keyring it is opened with
    assert seen.seen_generation(db) == Keyring.peek(keyring.path)["generation"] == 1
    _put_back(keyring.path, older)
    assert _refused(store_url, keyring.path).code == "keyring.rollback"
    db.close()


def _asleep(vault: Vault) -> None:
    """The writer does not look at its keyring file now: as in the 10 ms between two looks."""
    vault.keyring._fresh_at = time.monotonic() + 3600


def test_a_rotation_and_retirement_inside_the_writers_window_cannot_strand_a_record(vault: Vault) -> None:
    people = residents(5, seed=75)
    ids = put_all(vault, people[:2])
    _asleep(vault)
    retired, new = _rotate_rewrap_retire(vault)  # all within the writer's window
    assert vault.keyring.primary_key_id() == retired  # it has not seen the change
    ids += put_all(vault, people[2:4])  # sealed under the retired key, then sealed again
    vault.update(ids[0], {"mobile": people[4]["mobile"]}, ctx=ctx())
    assert vault.keyring.primary_key_id() == new
    keys = _record_keys(vault).keys
    assert set(keys.key_ids_in_use()) == {new}
    reader = _open(vault.db.url.raw, vault.keyring.path)
    try:
        for rid, p in zip(ids[1:], people[1:4], strict=True):
            assert reader.get(rid, ctx=ctx())["id_number"] == p["id_number"]
        assert reader.get(ids[0], ctx=ctx())["mobile"] == people[4]["mobile"]
    finally:
        reader.close()


def test_an_index_key_retired_inside_the_writers_window_leaves_no_entry_unfindable(vault: Vault) -> None:
    people = residents(4, seed=76)
    put_all(vault, people[:1])
    _asleep(vault)
    _rotate_rewrap_retire(vault, "prf.id_number")
    put_all(vault, people[1:])  # its index values computed again under the new index key
    reader = _open(vault.db.url.raw, vault.keyring.path)
    try:
        for p in people:
            found = reader.find(id_number=p["id_number"], ctx=ctx())
            assert [f["name"] for f in found] == [p["name"]]
    finally:
        reader.close()


def test_an_import_chunk_sealed_before_the_rotation_is_sealed_again(vault: Vault, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from pivault.vault import imports

    people = residents(40, seed=77)
    src = tmp_path / "people.csv"
    src.write_text("name,id_number,mobile\n" + "".join(
        f"{p['name']},{p['id_number']},{p['mobile']}\n" for p in people), encoding="utf-8")
    original = imports._Committer.commit
    done: list[tuple[int, int]] = []

    def commit_after_a_retirement(self: imports._Committer, rows: list[imports.RowTuple],
                                  prepared: imports.Prepared) -> None:
        if not done:  # the first chunk was sealed; the operator rotates and retires before it commits
            _asleep(vault)
            done.append(_rotate_rewrap_retire(vault))
        original(self, rows, prepared)

    monkeypatch.setattr(imports._Committer, "commit", commit_after_a_retirement)
    summary = vault.import_files([src], ctx=ctx("load"), chunk_size=10, workers=0)
    assert summary.imported == 40 and done
    keys = _record_keys(vault).keys
    assert set(keys.key_ids_in_use()) == {done[0][1]}
    reader = _open(vault.db.url.raw, vault.keyring.path)
    try:
        for p in people:
            assert [f["mobile"] for f in reader.find(id_number=p["id_number"], ctx=ctx())] == [p["mobile"]]
    finally:
        reader.close()


def test_the_audit_chain_head_written_inside_the_window_stays_readable(store_url: str, keyring: Keyring,
                                                                       tmp_path: Path) -> None:
    """Every access rewrites the chain head's key under the field key: never under a retired one."""
    audit_dir = tmp_path / "audit"
    vault, verifier = audited_vault(Database(store_url), keyring, audit_dir)
    try:
        people = residents(3, seed=80)
        ids = put_all(vault, people)
        _asleep(vault)
        kr = _operator(vault)
        old = kr.primary_key_id()
        files = file_sites(kr.path, kr.vault_id, audit_dir=audit_dir)
        rotate(kr, ["aead"], db=vault.db)
        assert rewrap(vault.db, kr, record_keys=_record_keys(vault).keys, files=files).complete
        retired = retire_unused(vault.db, kr, record_keys=_record_keys(vault).keys, files=files)
        assert ("aead", old) in [(r.keyset, r.key_id) for r in retired]
        assert vault.keyring.primary_key_id() == old  # the door has not looked at its keyring file yet
        assert vault.get(ids[0], ctx=ctx())["name"] == people[0]["name"]  # its entry rewrites the head
        reader = _open(store_url, keyring.path)
        try:
            reader.guard = AuditingGuard(AuditLog(reader.db, reader.keyring,
                                                  load_writer(audit_dir, reader.keyring)))
            assert reader.get(ids[1], ctx=ctx())["name"] == people[1]["name"]  # the chain goes on
            assert verify(reader.db, verifier).ok
        finally:
            reader.close()
    finally:
        vault.close()


def test_a_root_change_elsewhere_leaves_the_writer_writing(vault: Vault) -> None:
    people = residents(3, seed=78)
    put_all(vault, people[:1])
    other = _operator(vault)
    other.change_root(provider("another synthetic passphrase"))
    seen.record(vault.db, other)  # `pivault keys change-root` records it
    time.sleep(0.05)
    put_all(vault, people[1:])  # the data keys are the ones it holds: as current as the file's
    assert vault.keyring.generation == other.generation


def test_a_writer_whose_keyring_file_is_behind_the_store_writes_nothing(vault: Vault, tmp_path: Path) -> None:
    """Another host's copy of the keyring rotated the keys; this host's file was never updated."""
    people = residents(2, seed=79)
    put_all(vault, people[:1])
    elsewhere = tmp_path / "elsewhere" / "vault.keyring"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(vault.keyring.path.read_bytes())
    elsewhere.chmod(0o600)
    rotate(Keyring.open(elsewhere, provider()), ["aead"], db=vault.db)
    before = vault.db.query_one("SELECT COUNT(*) FROM records")
    with pytest.raises(KeyringError) as exc:
        put_all(vault, people[1:])
    assert exc.value.code == "keyring.rollback" and "this process" in exc.value.message
    assert vault.db.query_one("SELECT COUNT(*) FROM records") == before


def test_raising_the_mark_waits_for_a_writer_that_read_it(vault: Vault, keyring: Keyring) -> None:
    """The retirement's census comes after every writer that saw the old mark has committed."""
    other = _operator(vault)
    other.rotate("aead")
    db2 = Database(vault.db.url)
    raised = threading.Event()

    def raise_mark() -> None:
        seen.record(db2, other)
        raised.set()

    try:
        with vault.db.transaction():
            mark = seen.require_current(vault.db, vault.keyring)
            t = threading.Thread(target=raise_mark)
            t.start()
            time.sleep(0.3)
            assert not raised.is_set()  # held until this writer commits
            assert mark == keyring.generation
        t.join(30)
        assert raised.is_set()
        assert seen.seen_generation(vault.db) == other.generation
    finally:
        db2.close()


def test_a_keyring_of_another_vault_never_moves_the_mark(vault: Vault, tmp_path: Path) -> None:
    """The wrong file at the keyring's path (another vault's, whose keys were rotated more often)
    is refused as another vault's, and the store's mark stays where it was: put the right keyring
    back and the vault opens, instead of being refused for ever as an 'older copy'."""
    url, path = vault.db.url.raw, vault.keyring.path
    people = residents(2, seed=80)
    ids = put_all(vault, people)
    mark = seen.seen_generation(vault.db)
    other = Keyring.create(tmp_path / "other" / "other.keyring", provider(), expected_population=10**6)
    for _ in range(3):
        other.rotate("aead")
    assert other.generation > mark
    for attempt in (seen.check, seen.record):
        with pytest.raises(ConfigError) as exc:
            attempt(vault.db, other)
        assert exc.value.code == "vault.mismatch" and "\n" not in exc.value.message
        assert seen.seen_generation(vault.db) == mark
    reader = _open(url, path)
    try:
        assert reader.get(ids[0], ctx=ctx())["name"] == people[0]["name"]
    finally:
        reader.close()


def test_audit_verify_with_another_vaults_keyring_leaves_the_vault_openable(tmp_path: Path) -> None:
    """`pivault audit verify` (which opens the keyring itself) given another vault's keyring says so in
    one line, and the vault still opens with its own keyring afterwards."""
    home = tmp_path / "home"
    cfg = _home.init(home, passphrase=PASSPHRASE, keyring_path=tmp_path / "keys" / "vault.keyring",
                     argon2=CHEAP)
    with Vault.open(home, passphrase=PASSPHRASE) as v:
        put_all(v, residents(2, seed=81))
    other = Keyring.create(tmp_path / "other" / "other.keyring", provider(), expected_population=10**6)
    for _ in range(3):
        other.rotate("aead")
    own = cfg.keyring_path.read_bytes()
    _put_back(cfg.keyring_path, other.path.read_bytes())
    env = {**os.environ, "PIVAULT_PASSPHRASE": PASSPHRASE, "PIVAULT_HOME": str(home),
           "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", "from pivault.cli.main import main; main()",
                          "audit", "verify"],
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode != 0
    assert res.stderr.startswith("error[vault.mismatch]: "), res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    _put_back(cfg.keyring_path, own)
    with Vault.open(home, passphrase=PASSPHRASE) as v:
        assert v.stats(ctx=ctx())["store"]["rows"] == 2
