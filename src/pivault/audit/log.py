"""The audit trail: an append-only, forward-secure MAC chain with signed checkpoints.

Every access through the Vault door appends one entry (who, role, purpose,
operation, opaque record ids, count, outcome, request id) *before* any data
leaves; if the entry cannot be written the request fails.

Chain (see docs/audit.md for the full threat model)::

    mac_0 = 32 zero bytes,  k_1 = random (sealed to the auditor in checkpoint 0)
    mac_i = HMAC-SHA256(k_i, "pivault.audit.v1" | canonical(entry_i) | mac_{i-1})
    k_{i+1} = HMAC-SHA256(k_i, "pivault.audit.ratchet")

The writer keeps only the *current* key k_{n+1}, in the chain-head row,
encrypted under the keyring, so that several worker processes share one
chain. The ratchet is one-way: whoever steals the writer's state today cannot
recompute k_i for i <= n, so cannot forge or rewrite entries already written.
Every ``checkpoint_every`` entries (or ``checkpoint_seconds``) a checkpoint
records ``(seq, mac_seq)`` and the next key sealed to the auditor's X25519
key, signed with Ed25519. Appends are serialised by the database: the head
row is read and rewritten inside one transaction (SQLite ``BEGIN IMMEDIATE``,
PostgreSQL ``SELECT … FOR UPDATE``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
import sqlite3
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pivault.audit.keys import AuditKeys, FieldCipher, WriterKeys
from pivault.crypto.hmac256 import HmacSha256, hmac_sha256
from pivault.errors import PivaultError
from pivault.policy.context import AccessContext
from pivault.store.db import Database
from pivault.store.migrations import Migration, register

if TYPE_CHECKING:
    from pivault.audit.anchor import Anchor

__all__ = [
    "ENTRY_DOMAIN",
    "OPERATIONS",
    "OUTCOMES",
    "AuditEntry",
    "AuditError",
    "AuditEvent",
    "AuditLog",
    "Checkpoint",
    "encode_fields",
    "entries",
    "entry_mac",
    "entry_rows",
    "head_opens",
    "head_plaintext",
    "latest_checkpoint",
    "load_checkpoints",
    "malformed_columns",
    "open_head",
    "ratchet",
    "undecodable",
]

ENTRY_DOMAIN = b"pivault.audit.v1\x00"
RATCHET_LABEL = b"pivault.audit.ratchet"
CHECKPOINT_DOMAIN = b"pivault.audit.checkpoint.v1\n"
ZERO_MAC = bytes(32)

#: the operations the door records; others may be added but must match ``_NAME``
OPERATIONS = frozenset({
    "read", "lookup", "find", "create", "update", "erase", "export", "import", "stats",
    "token.create", "token.list", "token.revoke", "token.resume", "token.suspend", "policy.change",
    "audit.prune", "audit.journal", "canary.seed",
})
#: "not_found" and "invalid" are the Vault's words for a miss and for rejected input;
#: "duplicate" for a create or a correction refused because another record holds the ID number
OUTCOMES = frozenset({"ok", "miss", "not_found", "denied", "refused", "invalid", "duplicate", "error"})
_NAME = re.compile(r"[a-z][a-z0-9_.\-]{0,63}")
_DETAIL_KEY = re.compile(r"[a-z][a-z0-9_]{0,39}")
_PLAIN_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
#: the detail of an entry whose caller asked for full values (``reveal``)
_REVEALED = '{"reveal":true}'


class AuditError(PivaultError):
    """The audit trail cannot be written or read. Requests fail closed on it."""

    code = "audit.error"


# -- schema -----------------------------------------------------------------

_SQLITE = """
CREATE TABLE audit_entries (
  seq INTEGER PRIMARY KEY,
  ts_us INTEGER NOT NULL,
  principal TEXT NOT NULL,
  role TEXT NOT NULL,
  purpose TEXT NOT NULL,
  operation TEXT NOT NULL,
  record_ids TEXT NOT NULL,
  count INTEGER NOT NULL,
  outcome TEXT NOT NULL,
  request_id TEXT NOT NULL,
  token_id TEXT,
  source TEXT NOT NULL,
  detail TEXT NOT NULL,
  mac BLOB NOT NULL
);
CREATE INDEX audit_entries_principal ON audit_entries (principal, seq);
CREATE INDEX audit_entries_time ON audit_entries (ts_us);
CREATE TABLE audit_head (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  chain_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  mac BLOB NOT NULL,
  key_ct BLOB NOT NULL,
  cp_seq INTEGER NOT NULL,
  cp_ts_us INTEGER NOT NULL
);
CREATE TABLE audit_checkpoints (
  seq INTEGER PRIMARY KEY,
  chain_id TEXT NOT NULL,
  ts_us INTEGER NOT NULL,
  mac BLOB NOT NULL,
  sealed_key BLOB NOT NULL,
  signature BLOB NOT NULL
)
"""

_PG = (_SQLITE.replace("INTEGER PRIMARY KEY CHECK", "SMALLINT PRIMARY KEY CHECK")
       .replace("seq INTEGER", "seq BIGINT").replace("ts_us INTEGER", "ts_us BIGINT")
       .replace("count INTEGER", "count BIGINT").replace("cp_seq INTEGER", "cp_seq BIGINT")
       .replace("cp_ts_us INTEGER", "cp_ts_us BIGINT").replace("BLOB", "BYTEA"))

register(Migration("audit", 1, "audit entries, chain head, signed checkpoints", _SQLITE, _PG))
register(Migration(
    "audit", 2, "how far each writer's journal has been chained (crash recovery)",
    "CREATE TABLE audit_journals (journal_id TEXT PRIMARY KEY, flushed_seq INTEGER NOT NULL,"
    " ts_us INTEGER NOT NULL)",
    "CREATE TABLE audit_journals (journal_id TEXT PRIMARY KEY, flushed_seq BIGINT NOT NULL,"
    " ts_us BIGINT NOT NULL)"))


# -- entries ------------------------------------------------------------------

def _check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise AuditError(f"audit {what} must be a short lower-case name", code="audit.entry")
    return value


def _check_detail(detail: Mapping[str, Any]) -> str:
    for key, value in detail.items():
        if not isinstance(key, str) or not _DETAIL_KEY.fullmatch(key):
            raise AuditError("audit detail keys are short lower-case names", code="audit.entry")
        if not isinstance(value, str | int | bool | type(None) | list | tuple):
            raise AuditError("audit detail values are text, integers, booleans or lists",
                             code="audit.entry")
    return json.dumps(detail, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What the door hands to the trail: one access, before its data leaves.

    ``record_ids`` are opaque record ids, never a value from a record;
    ``detail`` holds non-PI facts only (an error code, a rule name, a count).
    """

    operation: str
    outcome: str
    principal: str
    role: str
    purpose: str
    request_id: str
    record_ids: tuple[str, ...] = ()
    count: int | None = None
    token_id: str | None = None
    source: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, ctx: AccessContext, operation: str, outcome: str, record_ids: Iterable[str] = (),
           *, count: int | None = None, detail: Mapping[str, Any] | None = None) -> AuditEvent:
        """An event for the caller ``ctx``.

        A caller asking for full values is marked in ``detail`` (``"reveal": true``) as
        :meth:`AuditLog.record_access` marks it: a budget refusal or an error of a reveal is an
        attempt to see full values too, and an auditor looking for those must find it.
        """
        if ctx.reveal:
            detail = {**(detail or {}), "reveal": True}
        return cls(operation=operation, outcome=outcome, principal=ctx.principal, role=ctx.role,
                   purpose=ctx.purpose, request_id=ctx.request_id, record_ids=tuple(record_ids),
                   count=count, token_id=ctx.token_id, source=ctx.source, detail=detail or {})


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One stored entry, as ``audit show`` and ``audit verify`` see it."""

    seq: int
    ts_us: int
    principal: str
    role: str
    purpose: str
    operation: str
    record_ids: tuple[str, ...]
    count: int
    outcome: str
    request_id: str
    token_id: str | None
    source: str
    detail: dict[str, Any]
    mac: bytes
    #: the columns whose stored value is not of a kind the writers store (so the entry was
    #: altered in the store; ``audit verify`` names it): shown as far as they can be, never fatal
    malformed: tuple[str, ...] = ()

    @property
    def time(self) -> float:
        return self.ts_us / 1_000_000

    def to_dict(self) -> dict[str, Any]:
        from datetime import UTC, datetime

        try:
            when = ("(not a time)" if "ts_us" in self.malformed
                    else datetime.fromtimestamp(self.time, UTC).isoformat(timespec="microseconds"))
        except (ValueError, OverflowError, OSError):  # a time no calendar holds: set so in the store
            when = f"(not a time: {self.ts_us} us)"
        out = {
            "seq": self.seq,
            "time": when,
            "principal": self.principal, "role": self.role, "purpose": self.purpose,
            "operation": self.operation, "record_ids": list(self.record_ids), "count": self.count,
            "outcome": self.outcome, "request_id": self.request_id, "token_id": self.token_id,
            "source": self.source, "detail": self.detail, "mac": self.mac.hex(),
        }
        if self.malformed:
            out["malformed"] = list(self.malformed)
        return out


#: the stored columns, in MAC order (record_ids and detail as their stored JSON text)
ENTRY_COLUMNS = ("seq", "ts_us", "principal", "role", "purpose", "operation", "record_ids", "count",
                 "outcome", "request_id", "token_id", "source", "detail")
_SELECT_ENTRY = "SELECT " + ", ".join((*ENTRY_COLUMNS, "mac")) + " FROM audit_entries"


#: compact JSON, UTF-8 kept as is (one encoder object: no per-call setup)
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
#: a string's JSON, as that encoder writes it (quotes, backslashes and controls escaped)
_QUOTE: Callable[[str], str] = json.encoder.encode_basestring
#: the JSON of a value by its exact type (bool is not int here: it goes to the encoder)
_JSON_OF: dict[type, Callable[[Any], str]] = {str: _QUOTE, int: int.__repr__, type(None): lambda _: "null"}


def entry_mac(key: bytes, row: Sequence[Any], prev_mac: bytes) -> bytes:
    """MAC of one stored row (the ``ENTRY_COLUMNS`` values) chained to ``prev_mac``.

    The row is serialised as a JSON array of exactly the stored values, so the
    verifier recomputes it from the database without re-encoding anything.
    """
    return hmac_sha256(key, ENTRY_DOMAIN + b"[" + encode_fields(row) + prev_mac)


def encode_fields(fields: Sequence[Any]) -> bytes:
    """The JSON of an entry's values after ``seq`` and ``ts_us``, without the opening bracket.

    ``b"[%d,%d," % (seq, ts_us) + encode_fields(fields)`` is the JSON array that
    :func:`entry_mac` serialises for the row ``(seq, ts_us, *fields)``, byte for
    byte: the journal encodes an entry's values once, for its own line and for
    the MAC.

    Built from its values' own JSON (strings through the encoder's C quoting)
    rather than by the encoder, whose every call sets up a C encoder object:
    1.6 µs an entry instead of 2.7, on the request path of every read.
    """
    try:
        return (",".join([_JSON_OF[v.__class__](v) for v in fields]) + "]").encode("utf-8")
    except KeyError:  # a value of another type (never in the door's entries): the encoder itself
        return _ENCODE(fields).encode("utf-8")[1:]


def ratchet(key: bytes) -> bytes:
    """k_{i+1} from k_i: one-way, so today's key does not give yesterday's."""
    return hmac_sha256(key, RATCHET_LABEL)


#: the kind of value the writers store in each column of ``ENTRY_COLUMNS``, then the MAC
_KINDS: tuple[tuple[type, ...], ...] = (
    (int,), (int,), (str,), (str,), (str,), (str,), (str,), (int,), (str,), (str,), (str, type(None)),
    (str,), (str,), (bytes,))


def malformed_columns(row: Sequence[Any]) -> tuple[str, ...]:
    """The columns of a stored row (``ENTRY_COLUMNS`` and the MAC) whose value the writers never store.

    SQLite keeps whatever is put in a column (text in an integer column, a blob in a text one),
    so an entry altered in the store can hold values of any kind: the readers check the kind
    before they use a value, and report the entry instead of failing on it.
    """
    bad = [name for name, value, kinds in zip((*ENTRY_COLUMNS, "mac"), row, _KINDS, strict=True)
           if value.__class__ not in kinds]
    if not bad and len(row[13]) != 32:
        bad.append("mac")
    return tuple(bad)


def _json_of(text: Any, kind: type) -> Any:
    """``text`` parsed as JSON if it is a ``kind``; None otherwise (a value set in the store)."""
    if not isinstance(text, str):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, kind) else None


def _shown(value: Any) -> str:
    """A stored value of a kind the writers never store, as text to show (bounded)."""
    if isinstance(value, bytes):
        return "0x" + value[:64].hex() + ("…" if len(value) > 64 else "")
    return repr(value)[:200]


def _row_to_entry(row: Sequence[Any]) -> AuditEntry:
    bad = list(malformed_columns(row))
    record_ids = _json_of(row[6], list)
    if record_ids is None or not all(isinstance(r, str) for r in record_ids):
        record_ids = [row[6] if isinstance(row[6], str) else _shown(row[6])]
        if "record_ids" not in bad:
            bad.append("record_ids")
    detail = _json_of(row[12], dict)
    if detail is None:
        detail = {}
        if "detail" not in bad:
            bad.append("detail")

    def text(i: int) -> str:
        return row[i] if isinstance(row[i], str) else _shown(row[i])

    def number(i: int) -> int:
        return row[i] if row[i].__class__ is int else 0

    return AuditEntry(
        seq=number(0), ts_us=number(1), principal=text(2), role=text(3), purpose=text(4),
        operation=text(5), record_ids=tuple(record_ids), count=number(7), outcome=text(8),
        request_id=text(9), token_id=None if row[10] is None else text(10), source=text(11),
        detail=detail, mac=row[13] if isinstance(row[13], bytes) else b"",
        malformed=tuple(c for c in (*ENTRY_COLUMNS, "mac") if c in bad))


def undecodable(exc: BaseException) -> bool:
    """SQLite's error for text that is not UTF-8, raised when a row holding it is fetched."""
    return isinstance(exc, sqlite3.OperationalError) and "decode" in str(exc)


#: the columns of ENTRY_COLUMNS stored as text
_TEXT_COLUMNS = frozenset(c for c, kinds in zip(ENTRY_COLUMNS, _KINDS, strict=False) if str in kinds)
#: the entry's columns with each text column fetched as its bytes and its storage class
_SELECT_ENTRY_BYTES = "SELECT " + ", ".join(
    f"CASE typeof({c}) WHEN 'text' THEN CAST({c} AS BLOB) ELSE {c} END, typeof({c})"
    if c in _TEXT_COLUMNS else c for c in (*ENTRY_COLUMNS, "mac")) + " FROM audit_entries"


class _NotUtf8:
    """Text stored in the store that is not UTF-8: no value the writers store."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def __repr__(self) -> str:
        return "(not UTF-8) " + _shown(self.raw)


def _decoded(row: Sequence[Any]) -> tuple[Any, ...]:
    out: list[Any] = []
    i = 0
    for c in (*ENTRY_COLUMNS, "mac"):
        value = row[i]
        if c in _TEXT_COLUMNS:
            if row[i + 1] == "text":
                try:
                    value = bytes(value).decode("utf-8")
                except UnicodeDecodeError:
                    value = _NotUtf8(bytes(value))
            i += 2
        else:
            i += 1
        out.append(value)
    return tuple(out)


def entry_rows(db: Database, tail: str = "", params: Sequence[Any] = (), *,
               stream: bool = False) -> Iterator[tuple[Any, ...]]:
    """The stored rows (``ENTRY_COLUMNS`` and the MAC) of ``SELECT … FROM audit_entries`` + ``tail``.

    SQLite refuses to fetch a row whose text is not UTF-8 (set so in the store): the rows are
    then fetched again with their text as bytes, decoded here, and such a value is given as
    an object :func:`malformed_columns` reports, so that the readers name the entry rather
    than fail. ``stream``: in bounded memory (``audit verify``); the rows already given are
    not given again (the caller reads one snapshot).
    """
    run = db.stream if stream else db.query
    given = 0
    try:
        for row in run(_SELECT_ENTRY + tail, params):
            yield tuple(row)
            given += 1
        return
    except sqlite3.OperationalError as exc:
        if not undecodable(exc):
            raise
    for i, row in enumerate(run(_SELECT_ENTRY_BYTES + tail, params)):
        if i >= given:
            yield _decoded(row)


# -- checkpoints -----------------------------------------------------------------

def _seal_context(chain_id: str, seq: int) -> bytes:
    return b"pivault.audit.chainkey\x00" + chain_id.encode("ascii") + b"\x00" + str(seq).encode("ascii")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement: entry ``seq`` of chain ``chain_id`` has MAC ``mac``.

    ``sealed_key`` is k_{seq+1} sealed to the auditor, so verification (after
    pruning) can start here instead of at the first entry ever written.
    """

    chain_id: str
    seq: int
    ts_us: int
    mac: bytes
    sealed_key: bytes
    signature: bytes

    def message(self) -> bytes:
        return CHECKPOINT_DOMAIN + json.dumps(
            {"chain": self.chain_id, "seq": self.seq, "time_us": self.ts_us, "mac": self.mac.hex(),
             "sealed_key": base64.b64encode(self.sealed_key).decode("ascii")},
            sort_keys=True, separators=(",", ":")).encode("ascii")

    def signature_ok(self, keys: AuditKeys) -> bool:
        return keys.check_signature(self.signature, self.message())

    @property
    def seal_context(self) -> bytes:
        return _seal_context(self.chain_id, self.seq)

    def to_json(self) -> str:
        return json.dumps({
            "format": "pivault.audit.checkpoint", "version": 1, "chain": self.chain_id,
            "seq": self.seq, "time_us": self.ts_us, "mac": self.mac.hex(),
            "sealed_key": base64.b64encode(self.sealed_key).decode("ascii"),
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Checkpoint:
        try:
            doc = json.loads(text)
            if doc.get("format") != "pivault.audit.checkpoint" or doc.get("version") != 1:
                raise ValueError("not a checkpoint")
            return cls(chain_id=str(doc["chain"]), seq=int(doc["seq"]), ts_us=int(doc["time_us"]),
                       mac=bytes.fromhex(doc["mac"]),
                       sealed_key=base64.b64decode(doc["sealed_key"], validate=True),
                       signature=base64.b64decode(doc["signature"], validate=True))
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error,
                OverflowError, RecursionError):  # 1e400 as a number, nesting past the parser's depth
            raise AuditError("not a pivault audit checkpoint file", code="audit.checkpoint") from None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Checkpoint:
        """A stored checkpoint; ``audit.checkpoint`` for values no writer stores (set in the store)."""
        seq, chain_id, ts_us, mac, sealed, sig = row
        if (seq.__class__ is not int or ts_us.__class__ is not int or chain_id.__class__ is not str
                or not all(b.__class__ is bytes for b in (mac, sealed, sig))):
            at = f" at entry {seq}" if seq.__class__ is int else ""
            raise AuditError(f"the checkpoint{at} holds a value no writer stores: it was altered in "
                             "the store", code="audit.checkpoint", hint="run `pivault audit verify`")
        return cls(chain_id, seq, ts_us, mac, sealed, sig)


_SELECT_CHECKPOINT = "SELECT seq, chain_id, ts_us, mac, sealed_key, signature FROM audit_checkpoints"


def load_checkpoints(db: Database) -> list[Checkpoint]:
    return [Checkpoint.from_row(r) for r in db.query(_SELECT_CHECKPOINT + " ORDER BY seq")]


# -- the writer ---------------------------------------------------------------------

_ROW_MARKS = "(" + ", ".join("?" * (len(ENTRY_COLUMNS) + 1)) + ")"
_INSERT_SQL: dict[int, str] = {}


def _insert_sql(n: int) -> str:
    sql = _INSERT_SQL.get(n)
    if sql is None:
        sql = ("INSERT INTO audit_entries (" + ", ".join(ENTRY_COLUMNS) + ", mac) VALUES "
               + ", ".join([_ROW_MARKS] * n))
        if len(_INSERT_SQL) < 256:
            _INSERT_SQL[n] = sql
    return sql


_PG_CASTS = {"seq": "::bigint", "ts_us": "::bigint", "count": "::bigint"}
_PG_INSERT = (
    "INSERT INTO audit_entries (" + ", ".join(ENTRY_COLUMNS) + ", mac) SELECT "
    + ", ".join(f"(r->>{i}){_PG_CASTS.get(c, '')}" for i, c in enumerate(ENTRY_COLUMNS))
    + f", decode(r->>{len(ENTRY_COLUMNS)}, 'hex') FROM json_array_elements(?::json) AS r")


def _head_key_id(chain_id: str, seq: int) -> str:
    # binds the encrypted head key to its position: an old key row copied back fails to open
    return f"audit.{chain_id}.{seq}"


def head_opens(keyring: FieldCipher, chain_id: str, seq: int, key_ct: bytes) -> bool:
    """Whether a chain head's sealed key opens under ``keyring`` at that position.

    A head that does not (altered, moved, or of another keyring) can be
    appended to by no writer: a restore checks it before it takes over a
    damaged store's head.
    """
    try:
        keyring.decrypt(_head_key_id(chain_id, seq), "ratchet", key_ct)
    except PivaultError:
        return False
    return True


#: what the head's encrypted key holds after the key: the entry and time of the last checkpoint
_HEAD_SCHEDULE = struct.Struct(">qq")


def head_plaintext(key: bytes, cp_seq: int, cp_ts_us: int) -> bytes:
    """The plaintext of ``audit_head.key_ct``: the chain key, then when the last checkpoint was made.

    The checkpoint schedule is sealed with the key because the writers decide from it when the
    next checkpoint is due: left in plain columns, whoever holds the database could set them
    ahead and no checkpoint would ever be made again, so the anchor outside the store would
    get no more marks, and a rollback of everything since would go unseen.
    """
    return key + _HEAD_SCHEDULE.pack(cp_seq, cp_ts_us)


def open_head(plain: bytes) -> tuple[bytes, int | None, int | None]:
    """(chain key, checkpoint seq, checkpoint time) from :func:`head_plaintext`.

    A head written before the schedule was sealed holds the key alone: (key, None, None).
    """
    if len(plain) == 32:
        return plain, None, None
    if len(plain) != 32 + _HEAD_SCHEDULE.size:
        raise AuditError("the audit chain head's key has an unknown form", code="audit.head")
    cp_seq, cp_ts_us = _HEAD_SCHEDULE.unpack(plain[32:])
    return plain[:32], cp_seq, cp_ts_us


@dataclass(slots=True)
class _Head:
    chain_id: str
    seq: int
    mac: bytes
    key: bytes
    cp_seq: int
    cp_ts_us: int


#: how long the chaining thread computes MACs before it lets other threads run: a slice
#: of time, not of entries, because an entry's MACs cost 2-3 µs on a CPU with SHA-256
#: instructions and ~10 µs without, and every pause costs both threads a hand-off
_YIELD_AFTER = 0.0001
#: how long it lets them run: any sleep lets a waiting request take the interpreter
_YIELD_SECONDS = 0.00002


@dataclass(frozen=True)
class _Chained:
    """A batch's rows with their MACs, chained onto ``head``, and the head after them."""

    head: _Head
    rows: list[tuple[Any, ...]]
    seqs: list[int]
    seq: int
    mac: bytes
    key: bytes


def _chain(head: _Head, prepared: Sequence[tuple[int, tuple[Any, ...]]], encoded: Sequence[bytes],
           yield_after: float) -> _Chained:
    """MAC and ratchet each entry after ``head``; with ``yield_after`` (s), sleep between slices."""
    seq, mac, key = head.seq, head.mac, head.key
    rows: list[tuple[Any, ...]] = []
    seqs: list[int] = []
    sleep, clock = time.sleep, time.perf_counter
    slice_end = clock() + yield_after
    for (ts_us, fields_), tail in zip(prepared, encoded, strict=True):
        seq += 1
        # entry_mac and ratchet, inlined: the JSON of (seq, ts_us, *fields) from its tail
        mac = hmac_sha256(key, b"%s[%d,%d,%s%s" % (ENTRY_DOMAIN, seq, ts_us, tail, mac))
        key = hmac_sha256(key, RATCHET_LABEL)
        rows.append((seq, ts_us, *fields_, mac))
        seqs.append(seq)
        if yield_after and clock() >= slice_end:
            sleep(_YIELD_SECONDS)
            slice_end = clock() + yield_after
    return _Chained(head, rows, seqs, seq, mac, key)


#: pivault.keys.seen.TABLE: the newest keyring generation the store has seen
_KEYRING_SEEN = "keyring_seen"
_UPDATE_HEAD = "UPDATE audit_head SET seq = ?, mac = ?, key_ct = ?, cp_seq = ?, cp_ts_us = ? WHERE id = 1"
_UPDATE_HEAD_MARKED = (_UPDATE_HEAD + f" AND COALESCE((SELECT generation FROM {_KEYRING_SEEN}"
                       " WHERE id = 1), 0) <= ?")


class AuditLog:
    """Appends entries to the chain and makes checkpoints.

    Safe for many threads (one lock) and many processes (the database
    serialises appends). Any failure raises :class:`AuditError` with code
    ``audit.unavailable``: the caller must refuse the request.
    """

    def __init__(self, db: Database, keyring: FieldCipher, writer: WriterKeys, *,
                 checkpoint_every: int = 1000, checkpoint_seconds: float = 300.0,
                 clock: Callable[[], float] = time.time,
                 journal_dir: str | os.PathLike[str] | None = None, journal_chain: str = "thread",
                 anchor: Anchor | str | os.PathLike[str] | None = None) -> None:
        if checkpoint_every < 1 or not math.isfinite(checkpoint_seconds) or checkpoint_seconds <= 0:
            raise AuditError("checkpoint interval must be positive", code="audit.config")
        self.db = db
        self._keyring = keyring
        #: the store keeps the newest keyring generation it has seen: the head's key is checked
        #: against it as it is written (see _write_head)
        self._marked = hasattr(keyring, "write_generation") and db.table_exists(_KEYRING_SEEN)
        self._writer = writer
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self._clock = clock
        self._lock = threading.Lock()
        #: per connection: its lock, and (chain_id, seq, mac, next key) after its last
        #: commit, which saves a decrypt when nobody else appended since. Each
        #: connection has its own, so the journal's connection never waits on a
        #: Python lock held by a request that holds the store's write lock.
        self._conn_locks: dict[int, threading.Lock] = {}
        self._caches: dict[int, _Head | None] = {}
        self._names_seen: set[str] = set()
        #: the vault home's anchor (:mod:`pivault.audit.anchor`): each checkpoint this log
        #: writes is appended to it once committed, so that how far the chain went is known
        #: outside the store. None: checkpoints are kept in the store only
        self.anchor: Anchor | None = None
        if anchor is not None:
            from pivault.audit.anchor import Anchor

            self.anchor = anchor if isinstance(anchor, Anchor) else Anchor(anchor)
        #: with a journal directory, :meth:`record` writes ahead to this process's
        #: journal, and a background thread (``journal_chain="thread"``) or the node's
        #: chainer process (``"node"``, :mod:`pivault.audit.chainer`) chains entries in batches
        self.journal: Any = None
        if journal_dir is not None:
            from pivault.audit.journal import Journal

            self.journal = Journal(self, journal_dir, chain=journal_chain)

    @property
    def public_keys(self) -> AuditKeys:
        """The vault's public audit keys, to check a checkpoint's signature."""
        return self._writer.public

    # -- head --------------------------------------------------------------------
    def _read_head(self, db: Database, *, for_update: bool = True) -> _Head | None:
        lock = " FOR UPDATE" if for_update and db.dialect == "postgresql" else ""
        row = db.query_one(
            "SELECT chain_id, seq, mac, key_ct, cp_seq, cp_ts_us FROM audit_head WHERE id = 1" + lock)
        if row is None:
            return None
        chain_id, seq, mac, key_ct, cp_seq, cp_ts = row[0], int(row[1]), bytes(row[2]), bytes(row[3]), \
            int(row[4]), int(row[5])
        cache = self._caches.get(id(db))
        if cache is not None and cache.chain_id == chain_id and cache.seq == seq and cache.mac == mac:
            # the schedule as this connection committed it, not as the columns say now
            return _Head(chain_id, seq, mac, cache.key, cache.cp_seq, cache.cp_ts_us)
        try:
            plain = self._keyring.decrypt(_head_key_id(chain_id, seq), "ratchet", key_ct)
        except PivaultError:
            raise AuditError("the audit chain head does not decrypt: altered, or another keyring",
                             code="audit.head") from None
        key, sealed_seq, sealed_ts = open_head(plain)
        if sealed_seq is not None and sealed_ts is not None:
            # the columns are for reading only: the schedule the writers follow is the sealed one
            cp_seq, cp_ts = sealed_seq, sealed_ts
        return _Head(chain_id, seq, mac, key, cp_seq, cp_ts)

    def _init_chain(self, db: Database, now_us: int) -> _Head:
        """First use: a fresh chain, its key k_1 sealed to the auditor in checkpoint 0."""
        chain_id = uuid.uuid4().hex
        key = os.urandom(32)
        cur = db.execute(
            "INSERT INTO audit_head (id, chain_id, seq, mac, key_ct, cp_seq, cp_ts_us)"
            " VALUES (1, ?, 0, ?, ?, 0, ?) ON CONFLICT (id) DO NOTHING",
            (chain_id, ZERO_MAC, self._keyring.encrypt(_head_key_id(chain_id, 0), "ratchet",
                                                        head_plaintext(key, 0, now_us)), now_us))
        if cur.rowcount != 1:  # another process made it first
            head = self._read_head(db)
            assert head is not None
            return head
        self._write_checkpoint(db, chain_id, 0, now_us, ZERO_MAC, key)
        return _Head(chain_id, 0, ZERO_MAC, key, 0, now_us)

    def _write_checkpoint(self, db: Database, chain_id: str, seq: int, ts_us: int, mac: bytes,
                          next_key: bytes) -> Checkpoint:
        sealed = self._writer.public.seal(next_key, _seal_context(chain_id, seq))
        unsigned = Checkpoint(chain_id, seq, ts_us, mac, sealed, b"")
        cp = Checkpoint(chain_id, seq, ts_us, mac, sealed, self._writer.sign(unsigned.message()))
        db.execute(
            "INSERT INTO audit_checkpoints (seq, chain_id, ts_us, mac, sealed_key, signature)"
            " VALUES (?, ?, ?, ?, ?, ?)", (seq, chain_id, ts_us, mac, sealed, cp.signature))
        self._anchor_after_commit(db, cp)
        return cp

    def _anchor_after_commit(self, db: Database, cp: Checkpoint) -> None:
        # after the commit, never before: a mark whose checkpoint then rolled back would
        # accuse a sound chain of having lost its tail; a mark lost to a crash in between
        # only leaves the anchor one checkpoint behind
        anchor = self.anchor
        if anchor is not None:
            def mark() -> None:
                anchor.mark(cp)

            db.after_commit(mark)

    # -- append -------------------------------------------------------------------
    def append(self, event: AuditEvent) -> int:
        """Append one entry; return its sequence number."""
        return self.append_many((event,))[-1]

    def append_many(self, events: Sequence[AuditEvent]) -> list[int]:
        """Append several entries in one transaction (one head update)."""
        if not events:
            return []
        prepared = [self._prepare(e) for e in events]
        now_us = int(self._clock() * 1_000_000)
        return self.append_rows([(now_us, p) for p in prepared])

    def record(self, event: AuditEvent) -> None:
        """Record an entry before data leaves, as cheaply as durability allows.

        With a journal, the entry is appended to this process's journal file
        (one ``write``; the same durability as a SQLite commit in WAL mode
        with ``synchronous=NORMAL``) and chained into the database within
        milliseconds by a background thread, many entries per transaction.
        If the journal cannot be written, or the chain has not been
        writable for a moment, this raises ``audit.unavailable`` and the
        request fails. Without a journal, or inside an open transaction
        (changes are audited atomically with the change), it appends at once.
        """
        if self.journal is None or self.db.in_transaction:
            self.append(event)
            return
        self.journal.write(self._prepare(event))

    def record_access(self, ctx: AccessContext, operation: str, outcome: str, record_ids: Sequence[str],
                      count: int) -> None:
        """:meth:`record` for the door's hot path: the caller's entry without building an event."""
        if operation not in self._names_seen:
            _check_name(operation, "operation")
            if len(self._names_seen) < 256:
                self._names_seen.add(operation)
        if outcome not in OUTCOMES:
            raise AuditError("unknown audit outcome", code="audit.entry")
        if all(_PLAIN_ID.fullmatch(r) for r in record_ids):
            ids_json = '["' + '","'.join(record_ids) + '"]' if record_ids else "[]"
        else:
            ids_json = json.dumps([str(r) for r in record_ids], separators=(",", ":"))
        # a read of full values is not a read of masked ones: an auditor must tell them apart
        detail = _REVEALED if ctx.reveal else "{}"
        fields = (ctx.principal, ctx.role, ctx.purpose, operation, ids_json, count, outcome,
                  ctx.request_id, ctx.token_id, ctx.source, detail)
        if self.journal is None or self.db.in_transaction:
            self.append_rows([(int(self._clock() * 1_000_000), fields)])
        else:
            self.journal.write(fields)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every recorded entry of this process is chained; False on timeout."""
        return True if self.journal is None else bool(self.journal.flush(timeout))

    def close(self) -> None:
        """Chain what is left and let go of the journal: its file, its thread's connection.

        The vault closing says nothing more will be recorded here. Left to the process's exit,
        every vault a long-lived process opened and closed kept a journal, a thread and a
        store connection open until then.
        """
        if self.journal is not None:
            self.journal.close()

    def append_rows(self, rows: Sequence[tuple[int, tuple[Any, ...]]], *,
                    journals: Sequence[tuple[str, int]] = (), db: Database | None = None,
                    encoded: Sequence[bytes] | None = None, background: bool = False) -> list[int]:
        """Chain prepared rows ``(ts_us, fields)`` in one transaction (on ``db``, default the log's).

        ``journals`` = (journal id, last journal sequence in ``rows``) of each
        journal the rows come from is stored in the same transaction, so a
        journal replayed after a crash never chains an entry twice. ``encoded``,
        if given, holds each row's :func:`encode_fields` (computed once when it
        was journalled).

        ``background``: the caller is the journal's chaining thread, beside
        requests in the same interpreter. The MACs are then computed before the
        write transaction, in slices between which the thread lets go of the
        interpreter: a batch's MACs (about a millisecond of Python for 40
        entries) would otherwise hold up whichever request was running when the
        thread woke, and hold the store's write lock meanwhile. The head they
        start from is read first, outside the transaction; if another writer
        moved it in between, the transaction computes them again from the head
        it reads.
        """
        conn = db if db is not None else self.db
        with self._conn_lock(conn):
            try:
                ahead = self._macs_ahead(conn, rows, encoded) if background else None
                return self._append_locked(conn, rows, journals, encoded, ahead)
            except AuditError:
                self._caches[id(conn)] = None
                raise
            except Exception as exc:
                self._caches[id(conn)] = None
                raise AuditError(f"the audit entry could not be written ({type(exc).__name__})",
                                 code="audit.unavailable",
                                 hint="the request was refused; check the store") from None

    def _conn_lock(self, db: Database) -> threading.Lock:
        lock = self._conn_locks.get(id(db))
        if lock is None:
            with self._lock:
                lock = self._conn_locks.setdefault(id(db), threading.Lock())
        return lock

    def journal_mac(self, journal_id: str) -> HmacSha256:
        """What tags the lines of write-ahead journal ``journal_id`` (see :meth:`WriterKeys.journal_key`)."""
        return HmacSha256(self._writer.journal_key(journal_id))

    def prepare(self, event: AuditEvent) -> tuple[Any, ...]:
        """``event`` checked, as its stored columns after ``seq`` and ``ts_us`` (:meth:`append_rows`)."""
        return self._prepare(event)

    @staticmethod
    def _prepare(e: AuditEvent) -> tuple[Any, ...]:
        _check_name(e.operation, "operation")
        if e.outcome not in OUTCOMES:
            raise AuditError("unknown audit outcome", code="audit.entry")
        for rid in e.record_ids:
            if not isinstance(rid, str):
                raise AuditError("record ids are text", code="audit.entry")
        count = len(e.record_ids) if e.count is None else int(e.count)
        ids = e.record_ids
        if all(_PLAIN_ID.fullmatch(r) for r in ids):  # the usual case, without the JSON encoder
            ids_json = '["' + '","'.join(ids) + '"]' if ids else "[]"
        else:
            ids_json = json.dumps(list(ids), separators=(",", ":"))
        return (e.principal, e.role, e.purpose, e.operation, ids_json, count, e.outcome,
                e.request_id, e.token_id, e.source, _check_detail(e.detail) if e.detail else "{}")

    def _macs_ahead(self, db: Database, prepared: Sequence[tuple[int, tuple[Any, ...]]],
                    encoded: Sequence[bytes] | None) -> _Chained | None:
        """The batch chained onto the head as it is now, yielding the GIL between slices.

        The head is read outside the write transaction (another process's chaining
        thread may move it before ours begins, which the transaction detects).
        """
        head = self._read_head(db, for_update=False)
        if head is None:
            return None
        if encoded is None:
            encoded = [encode_fields(f) for _, f in prepared]
        return _chain(head, prepared, encoded, _YIELD_AFTER)

    def _append_locked(self, db: Database, prepared: Sequence[tuple[int, tuple[Any, ...]]],
                       journals: Sequence[tuple[str, int]] = (),
                       encoded: Sequence[bytes] | None = None,
                       ahead: _Chained | None = None) -> list[int]:
        now_us = int(self._clock() * 1_000_000)
        with db.transaction():
            head = self._read_head(db) or self._init_chain(db, now_us)
            if (ahead is not None and ahead.head.chain_id == head.chain_id and ahead.head.seq == head.seq
                    and ahead.head.mac == head.mac):
                chained = ahead
            else:  # no head known before, or another writer appended since: chain from this one
                if encoded is None:
                    encoded = [encode_fields(f) for _, f in prepared]
                chained = _chain(head, prepared, encoded, 0)
            rows, seqs, seq, mac, key = chained.rows, chained.seqs, chained.seq, chained.mac, chained.key
            if db.dialect == "postgresql":
                # the whole batch as one JSON parameter: adapting 14 parameters per row in the
                # driver costs more than writing the rows
                db.execute(_PG_INSERT, (_ENCODE([[*r[:-1], r[-1].hex()] for r in rows]),))
            else:
                for i in range(0, len(rows), 200):  # one multi-row INSERT per 200 entries
                    part = rows[i:i + 200]
                    db.execute(_insert_sql(len(part)), [v for r in part for v in r])
            cp_seq, cp_ts = head.cp_seq, head.cp_ts_us
            if (seq - cp_seq >= self.checkpoint_every
                    or now_us - cp_ts >= self.checkpoint_seconds * 1_000_000):
                self._write_checkpoint(db, head.chain_id, seq, now_us, mac, key)
                cp_seq, cp_ts = seq, now_us
            self._write_head(db, head.chain_id, seq, mac, key, cp_seq, cp_ts)
            for journal_id, flushed in journals:
                db.execute(
                    "INSERT INTO audit_journals (journal_id, flushed_seq, ts_us) VALUES (?, ?, ?)"
                    " ON CONFLICT (journal_id) DO UPDATE SET flushed_seq = excluded.flushed_seq,"
                    " ts_us = excluded.ts_us", (journal_id, flushed, now_us))
        self._caches[id(db)] = _Head(head.chain_id, seq, mac, key, cp_seq, cp_ts)
        return seqs

    def _write_head(self, db: Database, chain_id: str, seq: int, mac: bytes, key: bytes,
                    cp_seq: int, cp_ts: int) -> None:
        """The new head, its key encrypted with keys at least as new as the store has seen.

        The head is rewritten under the current field key at every append, and
        a key change is seen by a process at most 10 ms late: a retirement
        whose census ran in between would otherwise destroy the only key of the
        head's key, and the chain could not go on. The store's keyring mark
        (:mod:`pivault.keys.seen`) is compared in the same statement, at no
        extra round trip: the head row is locked by this transaction
        (``FOR UPDATE``, or SQLite's write lock), and a change of the mark takes
        that lock before it commits, so the mark read here is the one a
        retirement's census comes after. A head key made with an older keyring
        is made again after the keyring has looked at its file.
        """
        head_id = _head_key_id(chain_id, seq)
        plain = head_plaintext(key, cp_seq, cp_ts)
        made_at = self._generation(look_now=False)
        key_ct = self._keyring.encrypt(head_id, "ratchet", plain)
        if made_at is None:
            db.execute(_UPDATE_HEAD, (seq, mac, key_ct, cp_seq, cp_ts))
            return
        if db.execute(_UPDATE_HEAD_MARKED, (seq, mac, key_ct, cp_seq, cp_ts, made_at)).rowcount == 1:
            return
        made_at = self._generation(look_now=True)
        key_ct = self._keyring.encrypt(head_id, "ratchet", plain)
        if db.execute(_UPDATE_HEAD_MARKED, (seq, mac, key_ct, cp_seq, cp_ts, made_at)).rowcount != 1:
            raise AuditError(
                f"this process's keyring (generation {made_at}) is older than this vault's store has seen:"
                " the keyring file it follows is an older copy or is not the one the keys were last"
                " changed in; the audit entry was not written", code="keyring.rollback",
                hint="put the newest keyring file at that path and restart this process")

    def _generation(self, *, look_now: bool) -> int | None:
        """The keyring generation what it encrypts from now on is made with; None: nothing to compare."""
        if not self._marked:
            return None
        follow: Callable[..., int] | None = getattr(self._keyring, "write_generation", None)
        return None if follow is None else follow(look_now=look_now)

    def checkpoint(self) -> Checkpoint:
        """A checkpoint at the current head (made now if the latest is older)."""
        db = self.db
        with self._conn_lock(db):
            try:
                now_us = int(self._clock() * 1_000_000)
                with db.transaction():
                    head = self._read_head(db) or self._init_chain(db, now_us)
                    row = db.query_one(_SELECT_CHECKPOINT + " WHERE seq = ?", (head.seq,))
                    if row is not None:
                        cp = Checkpoint.from_row(row)
                        self._anchor_after_commit(db, cp)  # an anchor begun since still gets it
                        return cp
                    cp = self._write_checkpoint(db, head.chain_id, head.seq, now_us, head.mac, head.key)
                    # the schedule is sealed with the key: the head's key is written again
                    self._write_head(db, head.chain_id, head.seq, head.mac, head.key, head.seq, now_us)
                # read again from the store next time: this may be inside a caller's transaction,
                # which can still roll the new schedule back
                self._caches[id(db)] = None
                return cp
            except AuditError:
                self._caches[id(db)] = None
                raise

    # -- reading ----------------------------------------------------------------------
    def head_seq(self) -> int:
        row = self.db.query_one("SELECT seq FROM audit_head WHERE id = 1")
        return int(row[0]) if row else 0


def latest_checkpoint(db: Database) -> Checkpoint | None:
    row = db.query_one(_SELECT_CHECKPOINT + " ORDER BY seq DESC LIMIT 1")
    return Checkpoint.from_row(row) if row else None


def entries(db: Database, *, principal: str | None = None, operation: str | None = None,
            since: float | None = None, until: float | None = None, outcome: str | None = None,
            request_id: str | None = None, after_seq: int | None = None,
            limit: int | None = None, newest: bool = False) -> Iterator[AuditEntry]:
    """Stored entries in chain order, filtered (``audit show``).

    With ``limit`` the first ``limit`` entries that match, or with ``newest`` the
    last ``limit`` (still in chain order).
    """
    where: list[str] = []
    params: list[Any] = []
    for col, value in (("principal", principal), ("operation", operation), ("outcome", outcome),
                       ("request_id", request_id)):
        if value is not None:
            where.append(f"{col} = ?")
            params.append(value)
    if since is not None:
        where.append("ts_us >= ?")
        params.append(int(since * 1_000_000))
    if until is not None:
        where.append("ts_us < ?")
        params.append(int(until * 1_000_000))
    if after_seq is not None:
        where.append("seq > ?")
        params.append(after_seq)
    sql = (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq"
    if limit is not None and newest:
        rows = list(entry_rows(db, sql + f" DESC LIMIT {int(limit)}", params))
        for row in reversed(rows):
            yield _row_to_entry(row)
        return
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    for row in entry_rows(db, sql, params):
        yield _row_to_entry(row)
