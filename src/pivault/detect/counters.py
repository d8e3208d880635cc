"""Counters shared by every worker: in-process, a file for one node, or Redis for several nodes.

Three backends with the same semantics:

* :class:`MemoryCounters` — one process (a single worker, tests, the CLI).
* :class:`~pivault.detect.filecounters.FileCounters` — every process of one
  node (several ``serve`` workers), in an SQLite file; one write
  transaction per charge.
* :class:`RedisCounters` — every worker of every API node; the budget check
  and the increments run in one Lua script, so two workers cannot both spend
  the last record of a budget. Redis's own clock is used, so nodes whose
  clocks drift still agree on windows. Any Redis error raises
  :class:`DetectUnavailable` (``detect.unavailable``) and the door refuses
  the request: budgets fail closed.

Sliding windows: a window of ``W`` seconds is kept as 60 buckets of ``W/59``
seconds (:func:`bucket_length`); a charge is allowed when the sum over the
current bucket and the 59 before it, plus the charge, stays within the limit.
The 59 whole buckets before the current one span ``W``, so no ``W`` seconds
ever hold more than ``limit`` records, wherever they start. (With buckets of
``W/60`` they spanned ``W - W/60``: a caller who spent the limit at the end
of one bucket could spend it again ``W - W/60`` later, twice the limit in
less than one window.) A charge then stays counted for ``W`` to ``W + W/59``
seconds (1.02-second buckets for a per-minute budget, 61 s per hour, 24.4 min
per day). Distinct-record budgets count the distinct record ids per UTC day
(a set).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from pivault.errors import PivaultError

__all__ = [
    "BUCKETS",
    "SHARED_SCHEMES",
    "Counters",
    "DetectUnavailable",
    "DistinctRule",
    "MemoryCounters",
    "RedisCounters",
    "Refusal",
    "WindowRule",
    "bucket_length",
    "counters_file",
    "counters_from_url",
]

#: buckets per sliding window
BUCKETS = 60
DAY = 86400.0


def bucket_length(window: float) -> float:
    """Seconds per bucket of a window of ``window`` seconds: the 59 whole buckets before the
    current one span the whole window, so no ``window`` seconds hold more than the limit."""
    return window / (BUCKETS - 1)


class DetectUnavailable(PivaultError):
    """The shared counters cannot be reached: requests are refused (fail closed)."""

    code = "detect.unavailable"


class WindowRule(NamedTuple):
    """Charge ``amount`` against ``limit`` over a sliding ``window`` (seconds).

    A negative ``amount`` is a probe: the window must have room for ``-amount``,
    and nothing is charged to it (a lookup that found nothing must not tell,
    by being answered, that a record would have been refused).
    """

    name: str
    key: str
    limit: int
    window: float
    amount: int


class DistinctRule(NamedTuple):
    """At most ``limit`` distinct ids per UTC day under ``key``."""

    name: str
    key: str
    limit: int
    ids: tuple[str, ...]


class Refusal(NamedTuple):
    """The first rule a charge would break: its name, the wait, and what was used."""

    rule: str
    retry_after: float
    used: int
    limit: int
    #: what the refused charge asked for (0 where the counter store does not say): more than
    #: ``limit`` means no wait lets it through
    amount: int = 0


class Counters(Protocol):
    """What budgets and the detector need from a counter store."""

    def charge(self, windows: Sequence[WindowRule], distinct: Sequence[DistinctRule]) -> Refusal | None:
        """All rules pass and every counter moves, or nothing moves and the first failure returns."""
        ...

    def incr(self, key: str, ttl: float) -> int:
        """Add one to ``key`` (created with a lifetime of ``ttl`` seconds); the new value."""
        ...

    def add_fields(self, key: str, fields: Mapping[str, int], ttl: float) -> None:
        """Add to several counters of one hash ``key`` (lifetime ``ttl``)."""
        ...

    def read_fields(self, keys: Sequence[str]) -> list[dict[str, int]]:
        """The counters of several hashes (missing ones are empty)."""
        ...

    def claim(self, key: str, ttl: float) -> bool:
        """True for the first caller in ``ttl`` seconds, across all workers (alert de-duplication)."""
        ...

    def get_state(self, key: str) -> dict[str, str]: ...

    def set_state(self, key: str, values: Mapping[str, str]) -> None: ...

    def now(self) -> float:
        """The counters' clock."""
        ...


class _Window:
    """One sliding window in memory: buckets oldest first, and their running sum.

    ``cur`` is the newest bucket (``[index, count]``) and ``g`` the bucket's
    length: a charge in the same bucket as the one before it finds nothing to
    drop (buckets leave only when a new one starts) and adds to ``cur``.
    """

    __slots__ = ("buckets", "cur", "expires", "g", "used")

    def __init__(self, window: float) -> None:
        self.buckets: deque[list[int]] = deque()
        self.used = 0
        self.g = bucket_length(window)
        #: [bucket index, count] of the newest bucket, not yet one of ``buckets`` if its index is -1
        self.cur: list[int] = [-1, 0]
        #: when the newest bucket leaves the window (then the whole window is empty)
        self.expires = 0.0


def _window_advance(w: _Window, b: int) -> None:
    """Open bucket ``b`` (the current one) and drop the buckets that left the window."""
    buckets = w.buckets
    while buckets and buckets[0][0] <= b - BUCKETS:
        w.used -= buckets.popleft()[1]
    if buckets and buckets[-1][0] == b:
        w.cur = buckets[-1]
    else:
        w.cur = [b, 0]
        buckets.append(w.cur)
    w.expires = (b + BUCKETS + 1) * w.g


def window_refusal(buckets: Iterable[Sequence[int]], used: int, rule: WindowRule, now: float,
                   g: float) -> Refusal:
    """The refusal of ``rule``, whose charge does not fit in a window holding ``used``.

    ``buckets`` are the window's ``(bucket number, count)`` oldest first and ``g`` a bucket's
    length: the wait is until enough of the oldest have left for the charge to fit.
    """
    retry = rule.window
    if rule.amount <= rule.limit:
        need, freed = used + rule.amount - rule.limit, 0
        for k, c in buckets:
            freed += c
            if freed >= need:
                retry = (k + BUCKETS) * g - now
                break
    return Refusal(rule.name, max(retry, 0.001), used, rule.limit, abs(rule.amount))


class MemoryCounters:
    """Counters in this process (one lock). For a single worker."""

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        self._sets: dict[str, tuple[float, set[str]]] = {}
        self._values: dict[str, tuple[float, int]] = {}
        self._hashes: dict[str, tuple[float, dict[str, int]]] = {}
        self._claims: dict[str, float] = {}
        self._state: dict[str, dict[str, str]] = {}
        self._sweeps = 0

    def now(self) -> float:
        return float(self._clock())

    def charge(self, windows: Sequence[WindowRule], distinct: Sequence[DistinctRule]) -> Refusal | None:
        # every read passes here: one pass to check, one to count, nothing built but the plan
        now = float(self._clock())
        floor = math.floor
        with self._lock:
            found = self._windows
            plan: list[tuple[_Window, int]] = []
            for rule in windows:
                w = found.get(rule.key)
                if w is None:
                    w = found[rule.key] = _Window(rule.window)
                if floor(now / w.g) != w.cur[0]:
                    _window_advance(w, floor(now / w.g))
                amount = rule.amount
                if amount > 0:
                    if w.used + amount > rule.limit:
                        return window_refusal(w.buckets, w.used, rule, now, w.g)
                    plan.append((w, amount))
                elif amount < 0 and w.used - amount > rule.limit:  # a probe: room, not a charge
                    return window_refusal(w.buckets, w.used, rule._replace(amount=-amount), now, w.g)
            dplan: list[tuple[set[str], Collection[str]]] = []
            if distinct:
                day = floor(now / DAY)
                for d in distinct:
                    key = f"{d.key}:{day}"
                    entry = self._sets.get(key)
                    if entry is None or entry[0] <= now:
                        entry = ((day + 1) * DAY, set())
                        self._sets[key] = entry
                    members = entry[1]
                    ids = d.ids
                    new: Collection[str] = ((() if ids[0] in members else ids) if len(ids) == 1
                                          else set(ids) - members)
                    if new and len(members) + len(new) > d.limit:
                        return Refusal(d.name, (day + 1) * DAY - now, len(members), d.limit, len(new))
                    dplan.append((members, new))
            for w, amount in plan:
                w.cur[1] += amount
                w.used += amount
            for members, new in dplan:
                members.update(new)
            self._sweeps += 1
            if not self._sweeps & 1023:
                self._sweep(now)
        return None

    def _sweep(self, now: float) -> None:
        for key in [k for k, (exp, _) in self._sets.items() if exp <= now]:
            del self._sets[key]
        for key in [k for k, (exp, _) in self._hashes.items() if exp <= now]:
            del self._hashes[key]
        for key in [k for k, (exp, _) in self._values.items() if exp <= now]:
            del self._values[key]
        for key in [k for k, exp in self._claims.items() if exp <= now]:
            del self._claims[key]
        for key in [k for k, v in self._windows.items() if v.expires <= now]:
            del self._windows[key]

    def incr(self, key: str, ttl: float) -> int:
        now = self.now()
        with self._lock:
            exp, value = self._values.get(key, (0.0, 0))
            if exp <= now:
                exp, value = now + ttl, 0
            value += 1
            self._values[key] = (exp, value)
            return value

    def add_fields(self, key: str, fields: Mapping[str, int], ttl: float) -> None:
        now = self.now()
        with self._lock:
            exp, h = self._hashes.get(key, (0.0, {}))
            if exp <= now:
                h = {}
            for f, n in fields.items():
                h[f] = h.get(f, 0) + n
            self._hashes[key] = (now + ttl, h)

    def read_fields(self, keys: Sequence[str]) -> list[dict[str, int]]:
        now = self.now()
        with self._lock:
            out = []
            for key in keys:
                exp, h = self._hashes.get(key, (0.0, {}))
                out.append(dict(h) if exp > now else {})
            return out

    def claim(self, key: str, ttl: float) -> bool:
        now = self.now()
        with self._lock:
            if self._claims.get(key, 0.0) > now:
                return False
            self._claims[key] = now + ttl
            return True

    def get_state(self, key: str) -> dict[str, str]:
        with self._lock:
            return dict(self._state.get(key, {}))

    def set_state(self, key: str, values: Mapping[str, str]) -> None:
        with self._lock:
            self._state.setdefault(key, {}).update(values)


_CHARGE_LUA = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
-- ARGV[2]: JSON {"w": [[limit, window, amount], ...], "d": [[limit, [id, ...]], ...]}, in KEYS order
local spec = cjson.decode(ARGV[2])
local buckets = tonumber(ARGV[3])
local nw = #spec.w
local plan = {}
for i = 1, nw do
  local key = KEYS[i]
  local limit = spec.w[i][1]; local window = spec.w[i][2]; local amount = spec.w[i][3]
  -- buckets of window / (buckets - 1) s: the whole buckets before the current one span the window
  local g = window / (buckets - 1)
  local b = math.floor(now / g)
  local oldest = b - buckets
  -- besides its buckets (field = bucket number, value = count) the hash keeps, in field '-1',
  -- the sum of the buckets it holds and, in '-2', 'lo': every bucket below it was dropped and
  -- taken off the sum. (Numbers below every bucket: a script that knows only buckets, as an
  -- older version's, drops them as expired, and the next charge here recounts.)
  local state = redis.call('HMGET', key, '-1', '-2')
  local used = tonumber(state[1]); local lo = tonumber(state[2])
  if used == nil or lo == nil or oldest - lo >= buckets then
    -- no sum yet (a new key, or one an older version wrote), or a whole window idle: recount
    local flat = redis.call('HGETALL', key)
    used = 0
    for j = 1, #flat, 2 do
      local k = tonumber(flat[j])
      if k ~= nil and k >= 0 then
        if k <= oldest then redis.call('HDEL', key, flat[j])
        else used = used + tonumber(flat[j + 1]) end
      end
    end
    redis.call('HSET', key, '-1', used, '-2', string.format('%d', oldest + 1))
    redis.call('PEXPIRE', key, math.ceil((window + g) * 1000))
  elseif lo <= oldest then
    -- drop the buckets that left the window since the last charge (usually one or none)
    local gone = {}
    for k = lo, oldest do gone[#gone + 1] = string.format('%d', k) end
    local counts = redis.call('HMGET', key, unpack(gone))
    for j = 1, #counts do if counts[j] then used = used - tonumber(counts[j]) end end
    redis.call('HDEL', key, unpack(gone))
    redis.call('HSET', key, '-1', used, '-2', string.format('%d', oldest + 1))
    redis.call('PEXPIRE', key, math.ceil((window + g) * 1000))
  end
  -- a negative amount is a probe: the window must have room for it, and is not charged
  local need = math.abs(amount)
  if need > 0 and used + need > limit then
    local retry = window
    if need <= limit then
      -- the live buckets, oldest first, only for a refusal
      local flat = redis.call('HGETALL', key)
      local live = {}
      for j = 1, #flat, 2 do
        local k = tonumber(flat[j])
        if k ~= nil and k > oldest then live[#live + 1] = {k, tonumber(flat[j + 1])} end
      end
      table.sort(live, function(x, y) return x[1] < y[1] end)
      local over = used + need - limit; local freed = 0
      for _, kc in ipairs(live) do
        freed = freed + kc[2]
        if freed >= over then retry = (kc[1] + buckets) * g - now; break end
      end
    end
    return {0, i, tostring(retry), used}
  end
  plan[i] = {key, b, amount, window + g}
end
local day = math.floor(now / 86400)
local dplan = {}
for i = 1, #spec.d do
  local key = KEYS[nw + i] .. ':' .. string.format('%d', day)
  local limit = spec.d[i][1]; local ids = spec.d[i][2]
  local new = {}
  for j = 1, #ids, 500 do
    local chunk = {}
    for m = j, math.min(j + 499, #ids) do chunk[#chunk + 1] = ids[m] end
    local present = redis.call('SMISMEMBER', key, unpack(chunk))
    for m = 1, #chunk do if present[m] == 0 then new[#new + 1] = chunk[m] end end
  end
  local card = redis.call('SCARD', key)
  if #new > 0 and card + #new > limit then
    return {0, nw + i, tostring((day + 1) * 86400 - now), card}
  end
  dplan[i] = {key, new}
end
for i = 1, nw do
  local p = plan[i]
  if p[3] > 0 then
    redis.call('HINCRBY', p[1], string.format('%d', p[2]), p[3])
    redis.call('HINCRBY', p[1], '-1', p[3])
    redis.call('PEXPIRE', p[1], math.ceil(p[4] * 1000))
  end
end
for i = 1, #dplan do
  local d = dplan[i]
  for j = 1, #d[2], 500 do
    redis.call('SADD', d[1], unpack(d[2], j, math.min(j + 499, #d[2])))
  end
  if #d[2] > 0 then redis.call('PEXPIREAT', d[1], (day + 2) * 86400000) end
end
return {1}
"""

#: KEYS[1] a hash, ARGV[1] its lifetime (ms), then field, amount pairs: every counter of a
#: detector bucket in one command (a pipeline of one HINCRBY a field cost ~7 µs of client CPU
#: a field to pack and parse, at a thousand and more fields a second)
_ADD_FIELDS_LUA = """
for i = 2, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return #ARGV
"""

#: field, amount pairs per command: each holds the server for ~1 ms at most
_ADD_FIELDS_CHUNK = 1000

_INCR_LUA = """
local v = redis.call('INCR', KEYS[1])
if v == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return v
"""


class RedisCounters:
    """Counters in Redis, shared by every worker and node pointing at it.

    ``namespace`` (usually the vault id) keeps several vaults apart on one
    server; all keys carry it as a hash tag so that one Lua script may touch
    them together on a Redis Cluster too.
    """

    def __init__(self, url: str, *, namespace: str = "default", timeout: float = 1.0,
                 clock: Any = None) -> None:
        import redis

        self._redis_mod = redis
        self._r = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout,
                                       decode_responses=True, health_check_interval=30)
        self._prefix = f"pivault:{{{namespace}}}:"
        self._clock = clock
        self._charge = self._r.register_script(_CHARGE_LUA)
        self._incr = self._r.register_script(_INCR_LUA)
        self._add = self._r.register_script(_ADD_FIELDS_LUA)
        #: per thread, a connection of its own for the scripts (see :meth:`_run`)
        self._own = threading.local()

    def _fail(self, exc: Exception) -> DetectUnavailable:
        return DetectUnavailable(f"the shared budget counters are unreachable ({type(exc).__name__}); "
                                 "requests are refused until they are back", hint="check the Redis server")

    def _k(self, key: str) -> str:
        return self._prefix + key

    def now(self) -> float:
        if self._clock is not None:
            return float(self._clock())
        try:
            sec, usec = self._r.time()
        except self._redis_mod.RedisError as exc:
            raise self._fail(exc) from None
        return float(sec) + float(usec) / 1e6

    def ping(self) -> None:
        try:
            self._r.ping()
        except self._redis_mod.RedisError as exc:
            raise self._fail(exc) from None

    def charge(self, windows: Sequence[WindowRule], distinct: Sequence[DistinctRule]) -> Refusal | None:
        keys = [self._k(w.key) for w in windows] + [self._k(d.key) for d in distinct]
        # one JSON argument: the client library packs three values instead of dozens
        spec = json.dumps({"w": [[w.limit, float(w.window), w.amount] for w in windows],
                           "d": [[d.limit, list(dict.fromkeys(d.ids))] for d in distinct]},
                          separators=(",", ":"))
        args: list[Any] = ["" if self._clock is None else repr(float(self._clock())), spec, BUCKETS]
        res = self._run(self._charge, keys, args)
        if int(res[0]) == 1:
            return None
        idx = int(res[1]) - 1
        rules: list[WindowRule | DistinctRule] = [*windows, *distinct]
        rule = rules[idx]
        amount = abs(rule.amount) if isinstance(rule, WindowRule) else 0
        return Refusal(rule.name, max(float(res[2]), 0.001), int(res[3]), rule.limit, amount)

    def _run(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """A registered script: on this thread's own connection, else the client library's way.

        Every read pays the charge's round trip, and the library's general path
        (connection pool, retry wrapper, command packing) costs about three times
        the CPU of the send and the receive themselves. If the server lost the
        script or the connection broke, the library's call loads the script and
        retries; any other failure, or that one's, is ``DetectUnavailable``.
        """
        errors = self._redis_mod.exceptions
        try:
            return self._evalsha(script.sha, keys, args)
        except (errors.NoScriptError, errors.ConnectionError, errors.TimeoutError):
            try:
                return script(keys=keys, args=args)
            except self._redis_mod.RedisError as exc:
                raise self._fail(exc) from None
        except self._redis_mod.RedisError as exc:
            raise self._fail(exc) from None

    def _evalsha(self, sha: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """``EVALSHA``, packed here and sent on this thread's own connection.

        The connection is the library's (it connects, authenticates, selects the
        database, speaks TLS); any error closes it, so no reply is ever read out
        of turn, and the caller falls back to the general path.
        """
        own = self._own
        conn = getattr(own, "conn", None)
        if conn is None or own.pid != os.getpid():
            conn = own.conn = self._r.connection_pool.make_connection()
            own.pid = os.getpid()
        parts = [b"EVALSHA", sha.encode(), str(len(keys)).encode(),
                 *(str(p).encode() for p in (*keys, *args))]
        packed = b"".join([b"*%d\r\n" % len(parts), *(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)])
        try:
            conn.send_packed_command([packed], check_health=False)
            return conn.read_response()
        except BaseException:
            conn.disconnect()
            raise

    def incr(self, key: str, ttl: float) -> int:
        try:
            return int(self._incr(keys=[self._k(key)], args=[int(ttl * 1000)]))
        except self._redis_mod.RedisError as exc:
            raise self._fail(exc) from None

    def add_fields(self, key: str, fields: Mapping[str, int], ttl: float) -> None:
        if not fields:
            return
        keys = [self._k(key)]
        flat = [x for kv in fields.items() for x in kv]
        step = 2 * _ADD_FIELDS_CHUNK
        for i in range(0, len(flat), step):
            self._run(self._add, keys, [int(ttl * 1000), *flat[i:i + step]])

    def read_fields(self, keys: Sequence[str]) -> list[dict[str, int]]:
        try:
            pipe = self._r.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(self._k(key))
            raw: Iterable[dict[str, str]] = pipe.execute()
        except self._redis_mod.RedisError as exc:
            raise self._fail(exc) from None
        return [{f: int(v) for f, v in h.items()} for h in raw]

    def claim(self, key: str, ttl: float) -> bool:
        try:
            return bool(self._r.set(self._k(key), "1", nx=True, px=max(1, int(ttl * 1000))))
        except self._redis_mod.RedisError as exc:
            raise self._fail(exc) from None

    def get_state(self, key: str) -> dict[str, str]:
        try:
            raw: dict[Any, Any] = self._r.hgetall(self._k(key))
            return {str(k): str(v) for k, v in raw.items()}
        except self._redis_mod.RedisError as exc:
            raise self._fail(exc) from None

    def set_state(self, key: str, values: Mapping[str, str]) -> None:
        try:
            mapping: dict[Any, Any] = dict(values)
            self._r.hset(self._k(key), mapping=mapping)
        except self._redis_mod.RedisError as exc:
            raise self._fail(exc) from None

    def flush_namespace(self) -> None:
        """Delete every key of this namespace (tests, and ``detect reset``)."""
        try:
            for key in self._r.scan_iter(match=self._prefix + "*", count=500):
                self._r.delete(key)
        except self._redis_mod.RedisError as exc:
            raise self._fail(exc) from None


#: URL schemes of Redis counters, and of all counters that several processes share
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
SHARED_SCHEMES = (*REDIS_SCHEMES, "sqlite:///")


def counters_file(url: str) -> str:
    """The absolute path of ``sqlite:///PATH`` (``sqlite:////PATH`` too): counters files are not relative."""
    return "/" + url[len("sqlite://"):].split("?", 1)[0].lstrip("/")


#: the sizes a new budgets map may be given in a counters file's URL (``?members=…``)
CAPACITY_PARAMS = ("windows", "sets", "members")


def counters_capacity(url: str) -> dict[str, int]:
    """The table sizes given in ``sqlite:///PATH?windows=…&sets=…&members=…`` (powers of two)."""
    from urllib.parse import parse_qsl

    from pivault.detect.budgetmap import is_table_size  # it imports this module

    query = url.split("?", 1)[1] if "?" in url else ""
    out: dict[str, int] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise PivaultError("the counters URL's query is not name=value pairs", code="detect.config") from None
    for name, value in pairs:
        if name not in CAPACITY_PARAMS:
            raise PivaultError(f"a counters file takes {', '.join(CAPACITY_PARAMS)} in its URL, not {name!r}",
                               code="detect.config")
        n = int(value) if value.isdigit() else 0
        if not is_table_size(n):
            raise PivaultError(f"{name} in the counters URL is a power of two from 8 to 2^30",
                               code="detect.config")
        out[name] = n
    return out


def counters_from_url(url: str | None, *, namespace: str = "default") -> Counters:
    """``None`` or ``memory://`` for in-process counters; ``sqlite:///PATH`` for files shared by
    this node's processes (``?members=N`` and the like size a new budgets map); ``redis://…`` for
    counters shared by several nodes."""
    if url is None or url in ("", "memory://"):
        return MemoryCounters()
    if url.startswith(REDIS_SCHEMES):
        return RedisCounters(url, namespace=namespace)
    if url.startswith("sqlite:///") and len(counters_file(url)) > 1:
        from pivault.detect.filecounters import FileCounters

        return FileCounters(counters_file(url), namespace=namespace, capacity=counters_capacity(url))
    raise PivaultError("budget counters are memory://, sqlite:///PATH or redis://HOST:PORT/DB",
                       code="detect.config")
