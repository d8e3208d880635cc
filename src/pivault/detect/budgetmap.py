"""The read budgets' windows and distinct-record sets in a file mapped by every worker of a node.

A charge is on every read's path. Kept in SQLite, it was a write transaction
(a page or more written to the log, the file's lock held meanwhile): 80-120 µs
of a worker's CPU per lookup, and the other workers waited for the lock that
long. Here a charge reads and writes a few hundred bytes of memory that every
process of the node maps from one file, under the same advisory lock, held
for a few microseconds.

Layout: fixed-size open-addressing tables of 64-bit words (linear probing),
after a header that says their sizes, so that a file made by one process is
read alike by every other.

* windows: per key, the newest bucket's number, when the window expires and
  the counts of its :data:`~pivault.detect.counters.BUCKETS` buckets (slot
  ``b % BUCKETS``);
* the windows' sums, one word per window slot, at the file's end: a charge
  reads a window's sum instead of adding up its 60 buckets (nine windows a
  lookup), and moves it with each bucket it adds to or empties. A file of
  version 1, which had no sums, is given them when a process first maps it;
* per UTC day, two generations (today's and yesterday's, the day's parity):
  each distinct-record set's size, and the set members, one digest of
  (namespace, set, record id) a slot. A generation is emptied when its day
  comes round again, so no member outlives the day after its own.

Keys are 128-bit BLAKE2b digests of the namespace and the key: the file
holds principal names and record ids only as such digests (not keyed: one
who can guess a name can test it, as one who can read the vault's other
files can list them). An expired
window's slot is taken by the next new key that probes past it, so probe
chains never break. A table that is full (or a probe that runs long) fails
closed, as an unreachable Redis does.

A worker killed in the middle of a charge can leave that charge partly
counted (some windows moved, not others): it can only count more than was
read, never less, and the tables stay well formed, because a new slot's key
is written after its contents, a sum grows before its bucket and shrinks
after it. (Such a sum stays above its buckets' until the window is empty.)
Every process of a node runs the same version: ``pivault serve`` starts and
stops its workers together.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
from array import array
from collections.abc import Sequence
from typing import Any

from pivault.detect.counters import (
    BUCKETS,
    DAY,
    DistinctRule,
    Refusal,
    WindowRule,
    bucket_length,
    window_refusal,
)

__all__ = ["BudgetMap", "BudgetMapFull", "is_table_size"]

_MAGIC = 0x3130_5047_4455_4250  # "PBUDGP01", little-endian
_VERSION = 2
#: the version before the windows' sums: mapped, it is given them (:meth:`BudgetMap._upgrade`)
_VERSION_NO_SUMS = 1
_HEADER = 512  # words (4 KiB)
#: header words
_H_MAGIC, _H_VERSION, _H_WINDOWS, _H_SETS, _H_MEMBERS = 0, 1, 2, 3, 4
#: per generation (the day's parity): the day it holds, and how many members it has
_H_DAY0, _H_COUNT0 = 5, 7
#: a window's slot: key (2 words), newest bucket, expiry (µs), then the counts
_W_WORDS = 4 + BUCKETS
_S_WORDS = 4  # key (2 words), size, spare
_M_WORDS = 2  # key
#: a probe longer than this means the table is too full to be worth using
_MAX_PROBE = 512
_LOW = (1 << 64) - 1
_ZEROS = array("Q", bytes(8 * BUCKETS))


def is_table_size(n: int) -> bool:
    """A table of the map has a power of two of slots, from 8 to 2^30."""
    return 8 <= n <= 1 << 30 and not n & (n - 1)


class BudgetMapFull(OSError):
    """A table of the map has no room: the charge is refused (fail closed)."""


#: a window rule with its namespaced key, that key's digest and the rule's bucket length (seconds)
_Prepared = tuple[WindowRule, str, tuple[int, int], float]


def _size(windows: int, sets: int, members: int, version: int = _VERSION) -> int:
    """Bytes of a file of these table sizes."""
    words = _HEADER + windows * _W_WORDS + 2 * (sets * _S_WORDS + members * _M_WORDS)
    return 8 * (words + (windows if version >= 2 else 0))


def _digest(data: str) -> tuple[int, int]:
    v = int.from_bytes(hashlib.blake2b(data.encode("utf-8", "surrogatepass"), digest_size=16,
                                       person=b"pivault-budgets").digest(), "little")
    return (v & _LOW) or 1, v >> 64  # an all-zero key marks an empty slot


class BudgetMap:
    """The mapped tables of one file; a caller holds the node's lock around :meth:`charge`.

    ``windows``, ``sets`` and ``members`` are the tables' slots (powers of
    two) for a new file; an existing file keeps its own sizes. ``members`` is
    the number of (set, record) pairs a day can hold: every principal's
    distinct-record budget, summed, should fit in three quarters of it.
    """

    def __init__(self, path: str | os.PathLike[str], *, windows: int = 1 << 15, sets: int = 1 << 14,
                 members: int = 1 << 21) -> None:
        for n in (windows, sets, members):
            if not is_table_size(n):
                raise ValueError("table sizes are powers of two from 8 to 2^30")
        self.path = os.fspath(path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                size = _size(windows, sets, members)
                os.ftruncate(fd, size)  # sparse: pages exist once a slot on them is used
                head = array("Q", [_MAGIC, _VERSION, windows, sets, members, 0, 0, 0, 0])
                os.pwrite(fd, head.tobytes(), 0)
            if size < 8 * _HEADER:
                raise ValueError("not a budget counters file")
            head = array("Q", os.pread(fd, 8 * (_H_MEMBERS + 1), 0))
            if head[_H_MAGIC] != _MAGIC or head[_H_VERSION] not in (_VERSION, _VERSION_NO_SUMS):
                raise ValueError("not a budget counters file of this version")
            nw, ns, nm = (int(v) for v in head[_H_WINDOWS:_H_MEMBERS + 1])
            if not all(is_table_size(n) for n in (nw, ns, nm)):
                raise ValueError("the budget counters file's header is damaged")
            if _size(nw, ns, nm, int(head[_H_VERSION])) > size:
                raise ValueError("the budget counters file is shorter than its tables")
            if head[_H_VERSION] == _VERSION_NO_SUMS and size < _size(nw, ns, nm):
                size = _size(nw, ns, nm)
                os.ftruncate(fd, size)  # room for the sums; the header says so once they are in
            self._mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        mv = self._mv = memoryview(self._mm).cast("Q")
        self._nw, self._ns, self._nm = nw, ns, nm
        self._w0 = _HEADER
        self._gen = [_HEADER + nw * _W_WORDS + g * (ns * _S_WORDS + nm * _M_WORDS) for g in (0, 1)]
        #: the windows' sums: the sum of the window slot ``i`` is the word ``_s0 + i``
        self._s0 = _HEADER + nw * _W_WORDS + 2 * (ns * _S_WORDS + nm * _M_WORDS)
        if mv[_H_VERSION] == _VERSION_NO_SUMS:
            self._upgrade()
        #: digests of window and set keys seen by this process, and where their windows were
        #: last found: they repeat on every charge of a caller
        self._keys: dict[str, tuple[int, int]] = {}
        self._where: dict[str, int] = {}
        #: per rules object of a caller (its rules are built once, see detect.budgets): the rules
        #: with their namespaced keys, digests and bucket lengths
        self._prepared: dict[int, tuple[Sequence[WindowRule], str, list[_Prepared]]] = {}

    def _upgrade(self) -> None:
        """Give a version-1 file its windows' sums (the caller holds the node's lock).

        Each live window's sum is the sum of its buckets; the version changes last, so a
        process stopped half-way leaves a file that the next one upgrades again.
        """
        mv = self._mv
        for i in range(self._nw):
            off = self._w0 + i * _W_WORDS
            mv[self._s0 + i] = sum(mv[off + 4:off + 4 + BUCKETS]) if mv[off] else 0
        mv[_H_VERSION] = _VERSION

    def close(self) -> None:
        self._mv.release()
        self._mm.close()

    # -- probing -------------------------------------------------------------------------
    def _window_slot(self, key: tuple[int, int], now_us: int, taken: set[int]) -> tuple[int, bool]:
        """(word offset of ``key``'s slot, whether it holds a live window).

        A new key gets the first expired slot on its probe, else the empty one that ends it;
        ``taken`` are the slots this charge gave to other new keys (not yet written).
        """
        mv, base, n = self._mv, self._w0, self._nw
        k0, k1 = key
        i = k1 & (n - 1)
        reuse = -1
        for _ in range(min(n, _MAX_PROBE)):
            off = base + i * _W_WORDS
            s0 = mv[off]
            if off not in taken:
                if s0 == k0 and mv[off + 1] == k1:
                    return off, mv[off + 3] > now_us
                if s0 == 0:
                    return (off if reuse < 0 else reuse), False
                if reuse < 0 and mv[off + 3] <= now_us:
                    reuse = off  # an expired window: a new key may take its place
            i = (i + 1) & (n - 1)
        if reuse >= 0:
            return reuse, False
        raise BudgetMapFull("the budget counters' window table is full")

    def _generation(self, day: int) -> int:
        """The word offset of ``day``'s generation, emptied first if it last held an older day."""
        g = day & 1
        mv = self._mv
        if mv[_H_DAY0 + g] < day:
            self._clear(8 * self._gen[g], 8 * (self._ns * _S_WORDS + self._nm * _M_WORDS))
            mv[_H_COUNT0 + g] = 0
            mv[_H_DAY0 + g] = day
        return self._gen[g]

    def _clear(self, start: int, length: int) -> None:
        page = mmap.PAGESIZE
        try:  # give the pages back (the file stays sparse) where the file system can
            if start % page == 0 and length % page == 0 and hasattr(mmap, "MADV_REMOVE"):
                self._mm.madvise(mmap.MADV_REMOVE, start, length)
                return
        except OSError:
            pass
        zero = bytes(1 << 20)
        for at in range(start, start + length, len(zero)):
            part = min(len(zero), start + length - at)
            self._mm[at:at + part] = zero[:part]

    def _find(self, base: int, n: int, words: int, key: tuple[int, int], taken: set[int],
              what: str) -> tuple[int, bool]:
        """(word offset of ``key``'s slot in a set or member table, whether it is there)."""
        mv = self._mv
        k0, k1 = key
        i = k1 & (n - 1)
        for _ in range(min(n, _MAX_PROBE)):
            off = base + i * words
            if off not in taken:
                s0 = mv[off]
                if s0 == 0:
                    return off, False
                if s0 == k0 and mv[off + 1] == k1:
                    return off, True
            i = (i + 1) & (n - 1)
        raise BudgetMapFull(f"the budget counters' {what} table is full")

    def _wkey(self, key: str) -> tuple[int, int]:
        k = self._keys.get(key)
        if k is None:
            k = _digest(key)
            if len(self._keys) > 100_000:
                self._keys.clear()
                self._where.clear()
            self._keys[key] = k
        return k

    def _rules(self, namespace: str, windows: Sequence[WindowRule]) -> list[_Prepared]:
        """``windows`` with each rule's namespaced key, its digest and its bucket length.

        A caller's rules are one object per amount charged (cached by the budgets), so they
        are prepared once; the object is kept with them, so its id is not taken by another.
        """
        found = self._prepared.get(id(windows))
        if found is not None and found[0] is windows and found[1] == namespace:
            return found[2]
        rules = [(rule, namespace + rule.key, self._wkey(namespace + rule.key), bucket_length(rule.window))
                 for rule in windows]
        if len(self._prepared) > 10_000:
            self._prepared.clear()
        self._prepared[id(windows)] = (windows, namespace, rules)
        return rules

    def _advance(self, off: int, soff: int, newest: int, b: int) -> None:
        """Make ``b`` the newest bucket of the live window at ``off``: the buckets that left it emptied.

        Each emptied bucket leaves the sum after it is zeroed, so a sum is never below its buckets'.
        """
        mv = self._mv
        if b - newest >= BUCKETS:
            mv[off + 4:off + 4 + BUCKETS] = _ZEROS
            mv[soff] = 0
        else:
            gone = 0
            for k in range(newest + 1, b + 1):
                j = off + 4 + k % BUCKETS
                gone += mv[j]
                mv[j] = 0
            mv[soff] -= min(gone, mv[soff])
        mv[off + 2] = b

    def _window(self, nskey: str, key: tuple[int, int], now_us: int, taken: set[int]) -> tuple[int, bool]:
        """(``nskey``'s window slot, whether it is live), from where it was last if it is still there."""
        mv = self._mv
        k0, k1 = key
        off = self._where.get(nskey, -1)
        if off < 0 or mv[off] != k0 or mv[off + 1] != k1 or off in taken:
            off, live = self._window_slot((k0, k1), now_us, taken)
            self._where[nskey] = off
            return off, live
        return off, mv[off + 3] > now_us

    # -- the charge ------------------------------------------------------------------------
    def charge(self, now: float, namespace: str, windows: Sequence[WindowRule],
               distinct: Sequence[DistinctRule]) -> Refusal | None:
        """Every rule checked, then every counter moved; nothing moves if one refuses.

        Checking may already drop a live window's buckets that have left it: that changes
        no sum, whatever the charge's outcome.
        """
        mv = self._mv
        floor = math.floor
        now_us = int(now * 1e6)
        w0, s0 = self._w0, self._s0
        #: per window key: [slot, live, bucket, amount to add, bucket length, digest, sum's word, sum]
        plan: dict[str, list[Any]] = {}
        taken: set[int] = set()
        for rule, nskey, key, g in self._rules(namespace, windows):
            p = plan.get(nskey)
            if p is None:
                off, live = self._window(nskey, key, now_us, taken)
                taken.add(off)
                b = floor(now / g)
                soff = s0 + (off - w0) // _W_WORDS
                used = 0
                if live:
                    newest = mv[off + 2]
                    if b > newest:
                        self._advance(off, soff, newest, b)
                    used = mv[soff]
                p = plan[nskey] = [off, live, b, 0, g, key, soff, used]
            amount = rule.amount
            if amount == 0:
                continue
            used = p[7] + p[3]
            need = abs(amount)  # a negative amount is a probe: room for it, nothing charged
            if used + need > rule.limit:
                off, live, b = p[0], p[1], p[2]
                counts = mv[off + 4:off + 4 + BUCKETS] if live else _ZEROS
                live_buckets = ((k, counts[k % BUCKETS]) for k in range(b - BUCKETS + 1, b + 1))
                return window_refusal(live_buckets, used, rule._replace(amount=need), now, g)
            if amount > 0:
                p[3] += amount
        day = floor(now / DAY)
        new_members: list[tuple[int, int, int]] = []
        sets: list[tuple[int, tuple[int, int], int]] = []
        if distinct:
            gen = self._generation(day)
            mbase = gen + self._ns * _S_WORDS
            claimed: set[int] = set()
            for d in distinct:
                skey = self._wkey(namespace + d.key)
                soff, there = self._find(gen, self._ns, _S_WORDS, skey, claimed, "set")
                n = int(mv[soff + 2]) if there else 0
                prefix = f"{namespace}{d.key}\x00"
                new: list[tuple[int, int, int]] = []
                for rid in dict.fromkeys(d.ids):
                    mkey = _digest(prefix + rid)
                    moff, known = self._find(mbase, self._nm, _M_WORDS, mkey, claimed, "distinct records")
                    if not known:
                        claimed.add(moff)
                        new.append((moff, *mkey))
                if new and n + len(new) > d.limit:
                    return Refusal(d.name, (day + 1) * DAY - now, n, d.limit, len(new))
                if new:
                    if not there:
                        claimed.add(soff)
                    new_members += new
                    sets.append((soff, skey, n + len(new)))
            if new_members and mv[_H_COUNT0 + (day & 1)] + len(new_members) > self._nm * 3 // 4:
                raise BudgetMapFull("the budget counters' table of distinct records is full")
        # every rule passed: now move the counters (a sum before its bucket, a new slot's key last)
        for off, live, b, amount, g, (k0, k1), soff, _ in plan.values():
            if not amount:
                continue
            if live:
                # a clock that stepped back charges its own, still live, bucket; the newest stays
                mv[soff] += amount
                mv[off + 4 + b % BUCKETS] += amount
                expires = int((mv[off + 2] + BUCKETS + 1) * g * 1e6)
                if mv[off + 3] < expires:
                    mv[off + 3] = expires
            else:
                mv[soff] = amount
                mv[off + 4:off + 4 + BUCKETS] = _ZEROS
                mv[off + 4 + b % BUCKETS] = amount
                mv[off + 2] = b
                mv[off + 3] = int((b + BUCKETS + 1) * g * 1e6)
                mv[off + 1] = k1
                mv[off] = k0
        for moff, k0, k1 in new_members:
            mv[moff + 1] = k1
            mv[moff] = k0
        if new_members:
            mv[_H_COUNT0 + (day & 1)] += len(new_members)
        for soff, (k0, k1), size in sets:
            mv[soff + 2] = size
            if mv[soff] == 0:
                mv[soff + 1] = k1
                mv[soff] = k0
        return None

    # -- inspection (tests, the operator) ---------------------------------------------------
    def member_count(self, day: int) -> int:
        """(set, record) pairs counted on ``day`` (0 for another day than the last two)."""
        g = day & 1
        return int(self._mv[_H_COUNT0 + g]) if self._mv[_H_DAY0 + g] == day else 0

    def set_size(self, namespace: str, key: str, day: int) -> int:
        """Distinct records counted today under ``key`` (0 for another day than the last two)."""
        g = day & 1
        if self._mv[_H_DAY0 + g] != day:
            return 0
        off, there = self._find(self._gen[g], self._ns, _S_WORDS, _digest(f"{namespace}{key}"), set(), "set")
        return int(self._mv[off + 2]) if there else 0
