"""Bearer tokens on both backends: hashed at rest, refused at once when expired or revoked."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pivault.policy.tokens import AuthError, TokenStore, parse_duration
from pivault.store.db import Database
from pivault.store.migrations import migrate


@pytest.fixture
def tokens(store_url: str) -> TokenStore:
    db = Database(store_url)
    migrate(db)
    return TokenStore(db)


def test_create_verify_and_hash_only_at_rest(tokens: TokenStore) -> None:
    info, tok = tokens.create("alice", "officer", ["case_investigation"], ttl_seconds=3600)
    assert tok.startswith("pv_" + info.token_id + "_")
    secret = tok.rsplit("_", 1)[1]
    assert len(secret) == 52  # 256 bits, base32
    got = tokens.verify(tok)
    assert got.principal == "alice" and got.role == "officer"
    assert got.purposes == ("case_investigation",)
    # only the hash is stored: neither the token nor its secret is in any column
    for row in tokens.db.query("SELECT * FROM tokens"):
        for value in row:
            raw = bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()
            assert secret.encode() not in raw and tok.encode() not in raw


@pytest.mark.parametrize("bad", ["", "x", "pv_", "Bearer pv_x", "pv_0123456789abcdef_short",
                                 "pv_0123456789abcdef_" + "a" * 52, "pv_0123456789ABCDEF_" + "a" * 52])
def test_malformed_or_unknown_tokens(tokens: TokenStore, bad: str) -> None:
    with pytest.raises(AuthError) as exc:
        tokens.verify(bad)
    assert exc.value.code in ("auth.malformed", "auth.invalid")
    assert bad not in str(exc.value) or bad == ""


def test_wrong_secret_is_refused(tokens: TokenStore) -> None:
    _, tok = tokens.create("alice", "officer", ["p"], ttl_seconds=60)
    forged = tok[:-1] + ("a" if tok[-1] != "a" else "b")
    with pytest.raises(AuthError) as exc:
        tokens.verify(forged)
    assert exc.value.code == "auth.invalid"


def test_expired_revoked_suspended(tokens: TokenStore) -> None:
    info, tok = tokens.create("bob", "registrar", ["registration"], ttl_seconds=60)
    with pytest.raises(AuthError) as exc:
        tokens.verify(tok, now=time.time() + 61)
    assert exc.value.code == "auth.expired"
    assert tokens.suspend(info.token_id, "enumeration suspected")
    with pytest.raises(AuthError) as exc:
        tokens.verify(tok)
    assert exc.value.code == "auth.suspended"
    assert tokens.get(info.token_id).suspended_reason == "enumeration suspected"  # type: ignore[union-attr]
    assert tokens.resume(info.token_id)
    tokens.verify(tok)
    assert tokens.revoke(info.token_id)
    assert not tokens.revoke(info.token_id)
    with pytest.raises(AuthError) as exc:
        tokens.verify(tok)
    assert exc.value.code == "auth.revoked"
    assert not tokens.resume(info.token_id)
    states = {t.token_id: t.state() for t in tokens.list()}
    assert states[info.token_id] == "revoked"
    assert tokens.active_principals() == []


def test_revocation_seen_by_another_connection(store_url: str, tokens: TokenStore) -> None:
    """A second connection (another worker) sees the revocation on its next check."""
    other = TokenStore(Database(store_url))
    info, tok = tokens.create("carol", "dpo", ["audit"], ttl_seconds=60)
    other.verify(tok)
    tokens.revoke(info.token_id)
    with pytest.raises(AuthError):
        other.verify(tok)


def test_create_validates(tokens: TokenStore) -> None:
    with pytest.raises(ValueError):
        tokens.create("bad name with spaces", "officer", ["p"], ttl_seconds=60)
    with pytest.raises(ValueError):
        tokens.create("alice", "officer", [], ttl_seconds=60)
    with pytest.raises(ValueError):
        tokens.create("alice", "officer", ["p"], ttl_seconds=0)


def test_parse_duration() -> None:
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("12h") == 43200
    assert parse_duration("90") == 90
    for bad in ("", "0", "1y", "-5d", "abc"):
        with pytest.raises(ValueError):
            parse_duration(bad)


# -- the rows a process keeps on SQLite ------------------------------------------------------

def _statements(db: Database) -> list[str]:
    """Every statement the connection runs from here on (SQLite's trace callback)."""
    seen: list[str] = []
    db.raw.set_trace_callback(seen.append)
    return seen


@pytest.fixture
def local_tokens(tmp_path: Path) -> Iterator[TokenStore]:
    """A token store on an SQLite file of its own (``tmp_path / "vault.db"``)."""
    db = Database(f"sqlite:///{tmp_path / 'vault.db'}")
    migrate(db)
    yield TokenStore(db)
    db.close()


def test_sqlite_keeps_the_row_until_anything_is_committed(tmp_path: Path, local_tokens: TokenStore) -> None:
    tokens, db = local_tokens, local_tokens.db
    info, tok = tokens.create("erin", "officer", ["p"], ttl_seconds=600)
    tokens.verify(tok)
    ran = _statements(db)
    for _ in range(3):
        tokens.verify(tok)
    assert ran and not any("FROM tokens" in s for s in ran), ran  # the row was kept
    # another process revokes it: the next check reads the row again and refuses
    subprocess.run(
        [sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
         " c.execute('UPDATE tokens SET revoked_at = 1 WHERE token_id = ?', (sys.argv[2],)); c.commit()",
         str(tmp_path / "vault.db"), info.token_id], check=True)
    with pytest.raises(AuthError) as exc:
        tokens.verify(tok)
    assert exc.value.code == "auth.revoked"
    assert any("FROM tokens" in s for s in ran)


def test_a_kept_row_still_checks_the_secret_the_clock_and_this_connections_writes(
        local_tokens: TokenStore) -> None:
    tokens, db = local_tokens, local_tokens.db
    info, tok = tokens.create("frank", "officer", ["p"], ttl_seconds=60)
    tokens.verify(tok)  # kept from here
    forged = tok[:-1] + ("a" if tok[-1] != "a" else "b")
    with pytest.raises(AuthError) as exc:
        tokens.verify(forged)
    assert exc.value.code == "auth.invalid"
    with pytest.raises(AuthError) as exc:
        tokens.verify(tok, now=time.time() + 61)
    assert exc.value.code == "auth.expired"
    # a write through the same connection (another thread of this worker, the detector's
    # suspension) moves the mark too
    db.execute("UPDATE tokens SET suspended_at = 1 WHERE token_id = ?", (info.token_id,))
    with pytest.raises(AuthError) as exc:
        tokens.verify(tok)
    assert exc.value.code == "auth.suspended"


def test_nothing_is_kept_inside_a_transaction_that_may_roll_back(local_tokens: TokenStore) -> None:
    tokens, db = local_tokens, local_tokens.db
    info, tok = tokens.create("gina", "officer", ["p"], ttl_seconds=600)
    tokens.suspend(info.token_id, "test")

    class Undo(Exception):
        pass

    with pytest.raises(Undo), db.transaction():
        tokens.resume(info.token_id)
        assert tokens.verify(tok).principal == "gina"  # resumed, inside the transaction
        raise Undo
    with pytest.raises(AuthError) as exc:
        tokens.verify(tok)
    assert exc.value.code == "auth.suspended"


def test_a_forked_process_reads_the_row_again_on_its_own_connection(tmp_path: Path) -> None:
    """A child's new connection counts its marks afresh: the parent's kept rows are not its own.

    The reading connection never writes, so its marks are (data_version, 0); a new connection
    opened after the revocation starts again at the same data_version.
    """
    import multiprocessing

    url = f"sqlite:///{tmp_path / 'vault.db'}"
    admin_db = Database(url)
    migrate(admin_db)
    admin = TokenStore(admin_db)
    info, tok = admin.create("hana", "officer", ["p"], ttl_seconds=600)
    db = Database(url)
    tokens = TokenStore(db)
    tokens.verify(tok)  # kept by the parent, under its connection's first mark
    admin.revoke(info.token_id)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_verify_in_child, args=(tokens, tok, queue))
    child.start()
    child.join(30)
    assert queue.get(timeout=5) == "auth.revoked"
    with pytest.raises(AuthError):
        tokens.verify(tok)  # and the parent, at its next check
    db.close()
    admin_db.close()


def _verify_in_child(tokens: TokenStore, tok: str, queue: object) -> None:
    tokens.db.reopen_after_fork()
    try:
        tokens.verify(tok)
        queue.put("accepted")  # type: ignore[attr-defined]
    except AuthError as exc:
        queue.put(exc.code)  # type: ignore[attr-defined]
