"""Bearer tokens on both backends: hashed at rest, refused at once when expired or revoked."""

from __future__ import annotations

import time

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
