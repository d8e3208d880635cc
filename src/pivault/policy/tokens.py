"""Bearer tokens: one per principal, scoped to a role and purposes, expiring, revocable.

A token reads ``pv_<token_id>_<secret>``: ``token_id`` (16 hex characters)
names the row and may appear in logs and listings; ``secret`` is 256 bits
from the OS random source, base32-encoded (52 characters). Only
``SHA-256(domain | token_id | secret)`` is stored.

Why a fast hash is enough here: slow password hashes (Argon2, bcrypt) exist
to make guessing *low-entropy* human passwords expensive after a database
theft. A 256-bit random secret cannot be guessed at any hash speed (2^256
candidates), so a slow hash would add milliseconds to every request and no
security. The comparison is constant-time (:func:`hmac.compare_digest`).

Expiry, revocation and suspension take effect on the next request, on every
worker process and every API node sharing the store. On PostgreSQL every
request reads the token's row by primary key. On SQLite a process keeps the
rows it has read for as long as nothing at all has been committed to the
vault's file since (SQLite's ``data_version`` and the connection's own change
count, read on every request: a few microseconds against the row's read): any
commit, by any process, empties the cache, so a revocation is seen by the
next request as before. Expiry is checked against the clock on every request,
and the secret against the stored hash.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pivault.errors import PivaultError, ValidationError
from pivault.store.db import Database
from pivault.store.migrations import Migration, register

__all__ = [
    "TOKEN_PREFIX",
    "AuthError",
    "TokenInfo",
    "TokenStore",
    "parse_duration",
]

TOKEN_PREFIX = "pv_"
_TOKEN = re.compile(r"pv_([0-9a-f]{16})_([a-z2-7]{52})")
_DOMAIN = b"pivault.token.v1\x00"
_PRINCIPAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}")
MAX_TTL_SECONDS = 366 * 86400
#: names the vault gives callers without a token (the command line's operator, the service itself)
RESERVED_PRINCIPAL_PREFIXES = ("local:", "system:")

register(Migration(
    "tokens", 1, "bearer tokens: hash, principal, role, purposes, expiry, revocation, suspension",
    sqlite=(
        "CREATE TABLE tokens ("
        " token_id TEXT PRIMARY KEY, token_hash BLOB NOT NULL, principal TEXT NOT NULL,"
        " role TEXT NOT NULL, purposes TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,"
        " expires_at DOUBLE PRECISION NOT NULL, revoked_at DOUBLE PRECISION,"
        " suspended_at DOUBLE PRECISION, suspended_reason TEXT, created_by TEXT NOT NULL DEFAULT '');"
        "CREATE INDEX tokens_principal ON tokens (principal)"
    ),
    postgresql=(
        "CREATE TABLE tokens ("
        " token_id TEXT PRIMARY KEY, token_hash BYTEA NOT NULL, principal TEXT NOT NULL,"
        " role TEXT NOT NULL, purposes TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,"
        " expires_at DOUBLE PRECISION NOT NULL, revoked_at DOUBLE PRECISION,"
        " suspended_at DOUBLE PRECISION, suspended_reason TEXT, created_by TEXT NOT NULL DEFAULT '');"
        "CREATE INDEX tokens_principal ON tokens (principal)"
    ),
))


class AuthError(PivaultError):
    """The bearer token is missing, malformed, unknown, expired, revoked or suspended (HTTP 401).

    The code says which (``auth.expired`` …); the message never repeats the token.
    """

    code = "auth.invalid"
    #: the token's row when the token is genuine but no longer active (expired, revoked,
    #: suspended): whoever still sends it holds its secret, and is to be recorded as its principal
    token: TokenInfo | None = None


def _hash(token_id: str, secret: str) -> bytes:
    return hashlib.sha256(_DOMAIN + token_id.encode() + b"\x00" + secret.encode()).digest()


def parse_duration(text: str) -> int:
    """``30d``, ``12h``, ``90m``, ``3600s`` or plain seconds -> seconds."""
    m = re.fullmatch(r"\s*(\d{1,7})\s*([smhdw]?)\s*", text)
    if not m:
        raise ValidationError("token.duration", "a duration is a number with s, m, h, d or w (e.g. 30d)")
    n = int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    if n <= 0:
        raise ValidationError("token.duration", "a duration must be positive")
    return n


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token's row, without its hash: what the server knows of the caller."""

    token_id: str
    principal: str
    role: str
    purposes: tuple[str, ...]
    created_at: float
    expires_at: float
    revoked_at: float | None = None
    suspended_at: float | None = None
    suspended_reason: str | None = None
    created_by: str = ""

    def state(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.revoked_at is not None:
            return "revoked"
        if self.suspended_at is not None:
            return "suspended"
        if self.expires_at <= now:
            return "expired"
        return "active"

    def to_dict(self) -> dict[str, object]:
        return {
            "token_id": self.token_id, "principal": self.principal, "role": self.role,
            "purposes": list(self.purposes), "created_at": self.created_at,
            "expires_at": self.expires_at, "revoked_at": self.revoked_at,
            "suspended_at": self.suspended_at, "suspended_reason": self.suspended_reason,
            "created_by": self.created_by, "state": self.state(),
        }


_COLS = ("token_id, principal, role, purposes, created_at, expires_at, revoked_at,"
         " suspended_at, suspended_reason, created_by")


def _info(row: Sequence[object]) -> TokenInfo:
    purposes = json.loads(str(row[3]))
    return TokenInfo(
        token_id=str(row[0]), principal=str(row[1]), role=str(row[2]),
        purposes=tuple(str(p) for p in purposes), created_at=float(row[4]),  # type: ignore[arg-type]
        expires_at=float(row[5]),  # type: ignore[arg-type]
        revoked_at=None if row[6] is None else float(row[6]),  # type: ignore[arg-type]
        suspended_at=None if row[7] is None else float(row[7]),  # type: ignore[arg-type]
        suspended_reason=None if row[8] is None else str(row[8]),
        created_by=str(row[9] or ""),
    )


class TokenStore:
    """Tokens in the vault's store (the ``tokens`` table; no PI in it)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        #: (the connection and its change mark when read, token id -> (hash, row)); see the
        #: module's docstring. The connection itself is compared: a forked process's new one
        #: counts its marks afresh.
        self._seen: tuple[object, tuple[int, int] | None, dict[str, tuple[bytes, TokenInfo]]] = (
            None, None, {})

    def create(self, principal: str, role: str, purposes: Iterable[str], *, ttl_seconds: int,
               created_by: str = "", now: float | None = None) -> tuple[TokenInfo, str]:
        """A new token; returns its row and the token string, which is shown once and never stored."""
        if not _PRINCIPAL.fullmatch(principal):
            raise ValidationError("token.principal",
                                  "a principal name is 1-128 letters, digits or _ . @ : - ")
        if principal.lower().startswith(RESERVED_PRINCIPAL_PREFIXES):
            # ``local:<account>`` is the operator at the vault's command line and ``system:`` the
            # service itself: a token under such a name would put its reads on their account in the
            # audit trail, and pass for the local requester of an export
            raise ValidationError("token.principal", "principal names beginning with "
                                  + " or ".join(RESERVED_PRINCIPAL_PREFIXES) + " are reserved")
        plist = tuple(dict.fromkeys(purposes))
        if not plist:
            raise ValidationError("token.purpose", "a token needs at least one purpose")
        if ttl_seconds <= 0 or ttl_seconds > MAX_TTL_SECONDS:
            raise ValidationError("token.duration",
                                  f"a token lives between 1 second and {MAX_TTL_SECONDS // 86400} days")
        now = time.time() if now is None else now
        token_id = secrets.token_hex(8)
        secret = base64.b32encode(secrets.token_bytes(32)).decode().rstrip("=").lower()
        info = TokenInfo(token_id, principal, role, plist, now, now + ttl_seconds, created_by=created_by)
        self.db.execute(
            "INSERT INTO tokens (token_id, token_hash, principal, role, purposes, created_at, expires_at,"
            " created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (token_id, _hash(token_id, secret), principal, role, json.dumps(list(plist)), now,
             info.expires_at, created_by))
        return info, f"{TOKEN_PREFIX}{token_id}_{secret}"

    def verify(self, token: str, *, now: float | None = None) -> TokenInfo:
        """The token's row if the token is genuine and active; :class:`AuthError` otherwise."""
        m = _TOKEN.fullmatch(token)
        if not m:
            raise AuthError("the bearer token is malformed", code="auth.malformed")
        token_id, secret = m.group(1), m.group(2)
        digest = _hash(token_id, secret)
        known = self._row(token_id)
        if known is None:
            # compare anyway, as for a wrong secret. Whether an id exists may still show in the
            # time taken (a kept row is quicker than a read): ids are not secret, they appear in
            # logs and listings; the secret is what the constant-time comparison guards
            hmac.compare_digest(digest, bytes(32))
            raise AuthError("the bearer token is not valid", code="auth.invalid")
        stored, info = known
        if not hmac.compare_digest(digest, stored):
            raise AuthError("the bearer token is not valid", code="auth.invalid")
        state = info.state(now)
        if state != "active":
            err = AuthError(f"the bearer token is {state}", code=f"auth.{state}")
            err.token = info
            raise err
        return info

    def _row(self, token_id: str) -> tuple[bytes, TokenInfo] | None:
        """The token's stored hash and row: read, or kept from a read since which nothing changed."""
        db = self.db
        # the mark is read before the row, so a commit after it shows as a new mark next time;
        # inside a transaction of this connection nothing is kept (it may yet roll back)
        conn = db.raw
        mark = None if db.in_transaction else db.change_mark()
        seen_conn, seen_mark, seen = self._seen
        fresh = mark is not None and mark == seen_mark and conn is seen_conn
        if fresh:
            hit = seen.get(token_id)
            if hit is not None:
                return hit
        row = db.query_one(f"SELECT {_COLS}, token_hash FROM tokens WHERE token_id = ?", (token_id,))
        if row is None:
            return None
        found = (bytes(row[10]), _info(row))
        if mark is not None:
            if not fresh or len(seen) >= 4096:
                self._seen = (conn, mark, {token_id: found})
            else:
                seen[token_id] = found
        return found

    def get(self, token_id: str) -> TokenInfo | None:
        row = self.db.query_one(f"SELECT {_COLS} FROM tokens WHERE token_id = ?", (token_id,))
        return _info(row) if row else None

    def list(self, *, include_inactive: bool = True) -> list[TokenInfo]:
        rows = [_info(r) for r in self.db.query(f"SELECT {_COLS} FROM tokens ORDER BY created_at, token_id")]
        if not include_inactive:
            rows = [r for r in rows if r.state() == "active"]
        return rows

    def revoke(self, token_id: str, *, now: float | None = None) -> bool:
        """Revoke for good; False if no such token or already revoked."""
        now = time.time() if now is None else now
        cur = self.db.execute("UPDATE tokens SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL",
                              (now, token_id))
        return cur.rowcount > 0

    def suspend(self, token_id: str, reason: str, *, now: float | None = None) -> bool:
        """Suspend (e.g. by the detector on a suspected bulk read); an operator may :meth:`resume` it.

        ``reason`` is stored and shown to operators; it must not contain PI.
        """
        now = time.time() if now is None else now
        cur = self.db.execute(
            "UPDATE tokens SET suspended_at = ?, suspended_reason = ?"
            " WHERE token_id = ? AND suspended_at IS NULL AND revoked_at IS NULL",
            (now, reason[:500], token_id))
        return cur.rowcount > 0

    def resume(self, token_id: str) -> bool:
        cur = self.db.execute(
            "UPDATE tokens SET suspended_at = NULL, suspended_reason = NULL"
            " WHERE token_id = ? AND suspended_at IS NOT NULL AND revoked_at IS NULL", (token_id,))
        return cur.rowcount > 0

    def active_principals(self, roles: Iterable[str] | None = None,
                          *, now: float | None = None) -> builtins.list[TokenInfo]:
        """Active tokens, optionally only those whose role is in ``roles``."""
        now = time.time() if now is None else now
        wanted = None if roles is None else set(roles)
        return [t for t in self.list() if t.state(now) == "active" and (wanted is None or t.role in wanted)]
