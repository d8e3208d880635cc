"""Match dump rows against the vault through the blind indexes, decrypting nothing.

The vault's blind indexes are truncated on purpose: each index value is shared
by several residents (``2 <= C <= sqrt(R)``), so one index value says nothing
about who a row is. Two independent indexes that point at the *same* record
do: for a row that is not that resident, the chance that some record agrees
on both is about ``R / 2**(La + Lb)`` (``C**2 / R``: 0.4 % at 10^6 residents,
0.006 % at 10^9). A row is therefore *confirmed* as a resident when two of its
keys — ID number, mobile, name + birth date — land on one record; the
expected number of chance confirmations is summed and reported beside the
count. A row with a single key cannot be confirmed without decrypting and is
counted apart, unless two of its exact values (name and mobile, name and
address, mobile and address) are those of a row an export wrote: each export
keeps their digests (:data:`pivault.leak.exports.ROW_KEYS`), which confirm a
copied row of an export without ID numbers as its resident.

For speed the pairs are held in memory: one pass over the blind-index table
builds ``(value_a, value_b) -> record id`` for each pair of indexes, and each
dump row then costs two or three keyed hashes and dictionary lookups. Above
``pair_cache_limit`` records the matcher asks the store instead, batch by
batch (:meth:`RecordStore.candidate_ids`), in memory that does not grow
with the vault.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from pivault.leak.columns import (
    fast_id_number,
    fast_id_numbers,
    fast_mobile,
    fast_mobiles,
    fast_name,
    fast_names,
    parse_birth_date,
    plain_address,
)
from pivault.leak.exports import ROW_KEYS, ExportRegistry, row_key
from pivault.model import is_record_id
from pivault.store.db import Database

__all__ = ["KEY_PAIRS", "MATCH_CELLS", "Keys", "MatchResult", "Matcher", "Outcome", "PairIndex", "RowMatch",
           "match_columns"]

#: the index pairs that confirm a resident, most specific first
KEY_PAIRS: tuple[tuple[str, str], ...] = (("id_number", "name_birth"), ("id_number", "mobile"),
                                          ("mobile", "name_birth"))
DEFAULT_PAIR_CACHE_LIMIT = 3_000_000


@dataclass(slots=True)
class Keys:
    """The normalised keys one dump row gives (``None`` where it gives none)."""

    id_number: str | None = None
    mobile: str | None = None
    name: str | None = None
    birth: str | None = None
    address: str | None = None
    #: ``name|YYYY-MM-DD``, the value of the ``name_birth`` index
    name_birth: str | None = None

    def __post_init__(self) -> None:
        if self.name_birth is None and self.name and self.birth:
            self.name_birth = f"{self.name}|{self.birth}"

    def count(self) -> int:
        return (self.id_number is not None) + (self.mobile is not None) + (self.name_birth is not None)


@dataclass(slots=True)
class RowMatch:
    """What one row matched: a confirmed record (and by which pair), export canaries."""

    record_id: str | None = None
    pair: tuple[str, str] | None = None
    #: export id of an export canary this row is, with how many exact keys agreed
    export_canary: tuple[str, int] | None = None
    canary_keys: int = 0
    #: whether the ID number was among the exact keys that hit the canary
    canary_by_id: bool = False


@dataclass
class MatchResult:
    rows: list[RowMatch]
    keys: list[Keys]
    #: expected chance confirmations among these rows
    expected_false: float = 0.0


class PairIndex:
    """``(blind value a, blind value b) -> record id`` for each pair in :data:`KEY_PAIRS`."""

    def __init__(self) -> None:
        #: pair -> key -> record id, or "" when several records share the key
        self.pairs: dict[tuple[str, str], dict[bytes, str]] = {p: {} for p in KEY_PAIRS}
        #: pair -> key -> the records sharing it (rare: about C**2 / R per record)
        self.shared: dict[tuple[str, str], dict[bytes, list[str]]] = {p: {} for p in KEY_PAIRS}
        self.records = 0
        self.collisions = 0

    @classmethod
    def load(cls, db: Database) -> PairIndex:
        """One ordered pass over the blind-index table (index entries only, no ciphertext)."""
        out = cls()
        cur_id: str | None = None
        cur: dict[str, bytes] = {}
        for rid, name, value in db.stream(
                "SELECT record_id, index_name, value FROM blind_index ORDER BY record_id", size=20000):
            if rid != cur_id:
                if cur_id is not None:
                    out._add(cur_id, cur)
                cur_id, cur = rid, {}
            cur[name] = bytes(value)
        if cur_id is not None:
            out._add(cur_id, cur)
        return out

    def _add(self, rid: str, index: dict[str, bytes]) -> None:
        self.records += 1
        for a, b in KEY_PAIRS:
            va, vb = index.get(a), index.get(b)
            if va is None or vb is None:
                continue
            d = self.pairs[(a, b)]
            key = va + vb
            first = d.get(key)
            if first is None:
                d[key] = rid
                continue
            self.collisions += 1
            shared = self.shared[(a, b)]
            if first:
                shared[key] = [first]
                d[key] = ""
            shared[key].append(rid)


def _column(rows: Sequence[Sequence[str | None]], cols: dict[str, int], kind: str) -> list[str | None]:
    i = cols.get(kind)
    if i is None:
        return [None] * len(rows)
    return [r[i] if i < len(r) else None for r in rows]


def batch_keys(rows: Sequence[Sequence[str | None]], cols: dict[str, int]) -> list[Keys]:
    """:func:`row_keys` for a batch, column by column (the same result, less overhead)."""
    ids = [fast_id_number(v.strip()) if v else None for v in _column(rows, cols, "id_number")]
    mobiles = [fast_mobile(v.strip()) if v else None for v in _column(rows, cols, "mobile")]
    names = [fast_name(v.strip()) if v else None for v in _column(rows, cols, "name")]
    births: list[str | None] = [f"{v[6:10]}-{v[10:12]}-{v[12:14]}" if v else None for v in ids]
    if "birth_date" in cols:
        written = _column(rows, cols, "birth_date")
        births = [b if b is not None else (parse_birth_date(w) if w else None)
                  for b, w in zip(births, written, strict=True)]
    addresses = [plain_address(v) if v else None for v in _column(rows, cols, "address")]
    return [Keys(i, m, n, b, a, f"{n}|{b}" if n and b else None)
            for i, m, n, b, a in zip(ids, mobiles, names, births, addresses, strict=True)]


def row_keys(row: Sequence[str | None], cols: dict[str, int]) -> Keys:
    """Normalise the PI cells of one row with the vault's own rules."""
    k = Keys()
    n = len(row)
    i = cols.get("id_number")
    if i is not None and i < n and row[i]:
        k.id_number = fast_id_number(row[i].strip())  # type: ignore[union-attr]
    i = cols.get("mobile")
    if i is not None and i < n and row[i]:
        k.mobile = fast_mobile(row[i].strip())  # type: ignore[union-attr]
    i = cols.get("name")
    if i is not None and i < n and row[i]:
        k.name = fast_name(row[i].strip())  # type: ignore[union-attr]
    if k.id_number is not None:
        v = k.id_number
        k.birth = f"{v[6:10]}-{v[10:12]}-{v[12:14]}"
    else:
        i = cols.get("birth_date")
        if i is not None and i < n and row[i]:
            k.birth = parse_birth_date(row[i])  # type: ignore[arg-type]
    i = cols.get("address")
    if i is not None and i < n and row[i]:
        k.address = plain_address(row[i])  # type: ignore[arg-type]
    if k.name and k.birth:
        k.name_birth = f"{k.name}|{k.birth}"
    return k


#: the cells matching reads (the address only for export canaries)
MATCH_CELLS: tuple[str, ...] = ("id_number", "mobile", "name", "birth_date", "address")
#: how a row was confirmed: by a pair of blind indexes, or by a pair of an exported row's exact
#: values (:data:`pivault.leak.exports.ROW_KEYS`, numbered after the index pairs)
_PAIR_NAMES = tuple("+".join(p) for p in (*KEY_PAIRS, *ROW_KEYS))


def match_columns(rows: Sequence[Sequence[str | None]], cols: dict[str, int],
                  kinds: Sequence[str] = MATCH_CELLS) -> dict[str, list[str | None]]:
    """The raw cells of ``kinds`` (those ``cols`` has), column by column: what
    :meth:`Matcher.outcome` needs of a batch, and all a worker process is sent."""
    out: dict[str, list[str | None]] = {}
    shortest = min(map(len, rows), default=0)
    for kind in kinds:
        i = cols.get(kind)
        if i is None:
            continue
        if i < shortest:
            out[kind] = list(map(itemgetter(i), rows))
        else:
            out[kind] = [r[i] if i < len(r) else None for r in rows]
    return out


@dataclass(slots=True)
class Outcome:
    """What a batch of rows came to, reduced where it was matched (small to send back).

    Rows that are export canaries are not counted as matched (they are fictitious).
    """

    rows: int = 0
    #: rows giving at least one key, and exactly one
    with_keys: int = 0
    single_key: int = 0
    #: matched rows by the pair that confirmed them (``"a+b"``)
    matched_by: dict[str, int] = field(default_factory=dict)
    #: expected chance confirmations among these rows
    expected_false: float = 0.0
    #: each record matched in the batch, once: (record id, its first row's index, the region
    #: code of that row's ID number or "")
    firsts: list[tuple[str, int, str]] = field(default_factory=list)
    #: rows that are export canaries: (export id, canary number, exact keys, hit by ID number)
    canaries: list[tuple[str, int, int, bool]] = field(default_factory=list)
    #: rows nothing above confirmed that carry an id of the vault's form: (row index, record id),
    #: for the caller to look up in the store (a worker never touches it)
    record_ids: list[tuple[int, str]] = field(default_factory=list)

    @property
    def rows_matched(self) -> int:
        return sum(self.matched_by.values())


@dataclass
class Matcher:
    """Matches batches of rows; holds the keyring's PRFs, the pair index and the export canaries."""

    blind: Callable[[str, str], bytes]
    bits: dict[str, int]
    population: int
    registry: ExportRegistry
    pairs: PairIndex | None = None
    candidate_ids: Callable[[str, Sequence[bytes]], dict[bytes, list[str]]] | None = None
    #: every key's value of an index (the primary's first), while a rotation is rebuilding it
    blind_all: Callable[[str, str], tuple[bytes, ...]] | None = None
    #: ``blind`` and ``blind_all`` of many values at once (else one by one)
    blind_many: Callable[[str, Sequence[str]], list[bytes]] | None = None
    blind_all_many: Callable[[str, Sequence[str]], list[tuple[bytes, ...]]] | None = None
    _rate: dict[tuple[str, str], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for a, b in KEY_PAIRS:
            if a in self.bits and b in self.bits:
                self._rate[(a, b)] = self.population / 2.0 ** (self.bits[a] + self.bits[b])

    @classmethod
    def for_vault(cls, vault: Any, registry: ExportRegistry, *,
                  pair_cache_limit: int = DEFAULT_PAIR_CACHE_LIMIT) -> Matcher:
        kr = vault.keyring
        population = vault.store.count()
        bits = {n: kr.index_bits(n) for n in kr.index_names}
        rotating = any(getattr(kr, "index_versions", lambda n: 1)(n) > 1 for n in kr.index_names)
        pairs = PairIndex.load(vault.db) if population <= pair_cache_limit and not rotating else None
        return cls(kr.blind_index, bits, max(population, 1), registry, pairs,
                   vault.store.candidate_ids, kr.blind_index_all if rotating else None,
                   getattr(kr, "blind_index_many", None),
                   getattr(kr, "blind_index_all_many", None) if rotating else None)

    @property
    def cells(self) -> tuple[str, ...]:
        """The cells :meth:`outcome` reads (see :func:`match_columns`)."""
        if any(self.registry.canaries.values()):
            return (*MATCH_CELLS, "record_id")
        return (*MATCH_CELLS[:-1], "record_id")

    # -- one batch -----------------------------------------------------------------------
    def match(self, rows: Sequence[Sequence[str | None]], cols: dict[str, int]) -> MatchResult:
        """Each row's keys and outcome (the record it confirms, export canaries)."""
        keys = batch_keys(rows, cols)
        ids = [k.id_number for k in keys]
        mobiles = [k.mobile for k in keys]
        nbs = [k.name_birth for k in keys]
        rids, via, expected, _ = self._confirm(ids, mobiles, nbs)
        out = [RowMatch(r, KEY_PAIRS[v] if v is not None else None) for r, v in zip(rids, via, strict=True)]
        addresses = [k.address for k in keys]
        names = [k.name for k in keys]
        exported = self._exported_rows(names, mobiles, addresses, rids)
        for j, (rid, k) in exported.items():
            out[j] = RowMatch(rid, ROW_KEYS[k])
        for j, (eid, keys_, by_id) in self._canaries(ids, mobiles, nbs, addresses, names).items():
            if j not in exported:
                out[j].export_canary, out[j].canary_keys, out[j].canary_by_id = eid, keys_, by_id
        return MatchResult(out, keys, expected)

    def outcome(self, columns: dict[str, list[str | None]], rows: int) -> Outcome:
        """Match a batch given column by column (:func:`match_columns`) and reduce it to
        counts, the records it confirms (each once) and its export canaries."""
        none: list[str | None] = [None] * rows
        raw = columns.get("id_number")
        ids = fast_id_numbers(raw) if raw is not None else none
        canaries = any(self.registry.canaries.values())
        raw_mobiles = columns.get("mobile")
        mobiles: list[str | None] | None = none
        if raw_mobiles is not None:
            # with the pair index, a row the first pair settles needs no mobile: normalised later,
            # for the other rows only (it is then ``None`` for the settled rows, which give two keys
            # without it, so the counts of keys below stay right)
            lazy = not canaries and self.pairs is not None and self.blind_all is None
            mobiles = None if lazy else fast_mobiles(raw_mobiles)
        raw = columns.get("name")
        names: list[str | None] = none
        if raw is None:
            nbs = none
        else:
            names = fast_names(raw)
            written = columns.get("birth_date")
            if written is None:
                nbs = [f"{n}|{i[6:10]}-{i[10:12]}-{i[12:14]}" if n and i else None
                       for n, i in zip(names, ids, strict=True)]
            else:
                births = [f"{i[6:10]}-{i[10:12]}-{i[12:14]}" if i else (parse_birth_date(w) if w else None)
                          for i, w in zip(ids, written, strict=True)]
                nbs = [f"{n}|{b}" if n and b else None for n, b in zip(names, births, strict=True)]
        rids, via, expected, mobiles = self._confirm(ids, mobiles, nbs, raw_mobiles)
        res = Outcome(rows, expected_false=expected)
        # keys per row: 0..3
        given = [(i is not None) + (m is not None) + (nb is not None)
                 for i, m, nb in zip(ids, mobiles, nbs, strict=True)]
        exported: dict[int, tuple[str, int]] = {}
        canary_rows: set[int] = set()
        if canaries:
            raw = columns.get("address")
            addresses = [plain_address(v) if v else None for v in raw] if raw is not None else none
            # rows too thin for two blind indexes (no ID number, no birth date) that are an
            # exported row: two exact values of it agree
            exported = self._exported_rows(names, mobiles, addresses, rids)
            for j, (rid, k) in exported.items():
                rids[j], via[j] = rid, len(KEY_PAIRS) + k
                given[j] = max(given[j], 2)
            hits = self._canaries(ids, mobiles, nbs, addresses, names)
            for j, (eid, keys_, by_id) in hits.items():
                if j in exported:
                    # two values agree with a real exported row: a resident (a canary never shares
                    # an exported row's pair by design; should one, the resident wins, not the blame)
                    continue
                if keys_ < 2 and rids[j] is not None:
                    # a resident two keys confirm who shares one value with a canary (a mobile
                    # number reissued, a common name and birthday): a resident, not evidence
                    continue
                res.canaries.append((eid[0], eid[1], keys_, by_id))
                canary_rows.add(j)
                rids[j] = None  # a canary row is not a resident
                via[j] = None
        raw = columns.get("record_id")
        if raw is not None:
            # a masked copy of what the door served (an API response, a screen) keeps no value the
            # blind indexes can use, but each record's id: the store says whether it issued it
            for j, v in enumerate(raw):
                if v and rids[j] is None and j not in canary_rows:
                    v = v.strip()
                    if len(v) == 28 and is_record_id(v):
                        res.record_ids.append((j, v))
        res.single_key = given.count(1)
        res.with_keys = rows - given.count(0)
        counts = Counter(via)
        res.matched_by = {name: counts[k] for k, name in enumerate(_PAIR_NAMES) if counts[k]}
        # first row of each record: walking backwards, the earliest row is written last
        first = dict(zip(reversed(rids), range(rows - 1, -1, -1), strict=True))
        res.firsts = [(rid, j, ids[j][:6] if ids[j] else "")  # type: ignore[index]
                      for rid, j in first.items() if rid is not None]
        return res

    # -- export canaries: exact values of fictitious people -------------------------
    def _canaries(self, ids: list[str | None], mobiles: list[str | None], nbs: list[str | None],
                  addresses: list[str | None], names: list[str | None] | None = None
                  ) -> dict[int, tuple[tuple[str, int], int, bool]]:
        """Row -> (export canary, exact keys that agree, whether the ID number was one).

        ``name_mobile`` and ``name_address`` agree only where the mobile or the address does
        too: a row agreeing with a canary on its name and its mobile counts two keys."""
        c = self.registry.canaries
        if not any(c.values()):
            return {}
        names = names if names is not None else [None] * len(ids)
        name_mobiles = [f"{n}|{m}" if n and m else None for n, m in zip(names, mobiles, strict=True)]
        name_addresses = [f"{n}|{a}" if n and a else None for n, a in zip(names, addresses, strict=True)]
        found: dict[int, list[tuple[str, tuple[str, int]]]] = {}
        for kind, values in (("id_number", ids), ("mobile", mobiles), ("name_birth", nbs),
                             ("address", addresses), ("name_mobile", name_mobiles),
                             ("name_address", name_addresses)):
            d = c.get(kind)
            if not d:
                continue
            for j, v in enumerate(values):
                if v is not None:
                    e = d.get(v)
                    if e is not None:
                        found.setdefault(j, []).append((kind, e))
        out: dict[int, tuple[tuple[str, int], int, bool]] = {}
        for j in sorted(found):
            hits: dict[tuple[str, int], int] = {}
            by_id: tuple[str, int] | None = None
            for kind, e in found[j]:
                hits[e] = hits.get(e, 0) + 1
                if kind == "id_number":
                    by_id = e
            best = max(hits.items(), key=lambda kv: kv[1])
            out[j] = (best[0], best[1], by_id == best[0])
        return out

    # -- exported rows: two exact values of a row some export holds -------------------------
    def _exported_rows(self, names: list[str | None], mobiles: list[str | None],
                       addresses: list[str | None], rids: list[str | None]) -> dict[int, tuple[str, int]]:
        """Row -> (record id, pair of :data:`ROW_KEYS`) for the rows the blind indexes left
        unconfirmed whose two exact values are those of an exported resident's row.

        A 64-bit digest of two exact values: a row that is not that resident agrees by
        chance with about ``rows exported / 2**64`` probability; two residents sharing both
        values (a family's mobile and address) make it one of them, counted once.
        """
        rows = self.registry.rows
        if not any(rows.values()):
            return {}
        values = {"name": names, "mobile": mobiles, "address": addresses}
        out: dict[int, tuple[str, int]] = {}
        for j, rid in enumerate(rids):
            if rid is not None:
                continue
            for k, (a, b) in enumerate(ROW_KEYS):
                va, vb = values[a][j], values[b][j]
                if va and vb:
                    hit = rows[(a, b)].get(row_key(va, vb))
                    if hit is not None:
                        out[j] = (hit, k)
                        break
        return out

    # -- the vault: blind-index pairs --------------------------------------------------
    def _many(self, name: str, values: list[str]) -> list[bytes]:
        if self.blind_many is not None:
            return self.blind_many(name, values)
        return [self.blind(name, v) for v in values]

    def _hashes(self, name: str, values: list[str | None]) -> list[bytes | None]:
        """The index values of a column (``None`` stays ``None``), hashed in one batch."""
        given = [v for v in values if v is not None]
        if not given:
            return [None] * len(values)
        if len(given) == len(values):
            return self._many(name, given)  # type: ignore[return-value]
        it = iter(self._many(name, given))
        return [next(it) if v is not None else None for v in values]

    def _confirm(self, ids: list[str | None], mobiles: list[str | None] | None, nbs: list[str | None],
                 raw_mobiles: list[str | None] | None = None
                 ) -> tuple[list[str | None], list[int | None], float, list[str | None]]:
        """Per row: the record two of its keys confirm (or ``None``), the pair (an index into
        :data:`KEY_PAIRS`) that did, and the expected chance confirmations of the batch.

        ``mobiles`` ``None``: normalised from ``raw_mobiles`` only for the rows that need
        them (returned last, ``None`` for the others).
        """
        if self.pairs is not None and self.blind_all is None:
            return self._confirm_cached(ids, mobiles, nbs, raw_mobiles)
        if mobiles is None:
            assert raw_mobiles is not None
            mobiles = fast_mobiles(raw_mobiles)
        return (*self._confirm_store(ids, mobiles, nbs), mobiles)

    def _confirm_cached(self, ids: list[str | None], mobiles: list[str | None] | None,
                        nbs: list[str | None], raw_mobiles: list[str | None] | None
                        ) -> tuple[list[str | None], list[int | None], float, list[str | None]]:
        """Try the pairs in order; the mobile's hash is computed only for rows the first pair
        does not settle. A key several records share is narrowed by the next pair."""
        assert self.pairs is not None
        pair_in, pair_im, pair_mn = KEY_PAIRS
        p_in, p_im, p_mn = (self.pairs.pairs[p] for p in KEY_PAIRS)
        r_in, r_im, r_mn = (self._rate.get(p, 0.0) for p in KEY_PAIRS)
        shared = self.pairs.shared
        vi = self._hashes("id_number", ids)
        vn = self._hashes("name_birth", nbs)
        both = [a + b if a is not None and b is not None else None for a, b in zip(vi, vn, strict=True)]
        n_in = len(both) - both.count(None)
        hits: list[str | None] = list(map(p_in.get, both))  # type: ignore[arg-type]
        rids: list[str | None] = [h or None for h in hits]
        via: list[int | None] = [0 if h else None for h in hits]
        if mobiles is None:
            assert raw_mobiles is not None
            need = [j for j, h in enumerate(hits) if not h]
            mobiles = [None] * len(hits)
            for j, v in zip(need, fast_mobiles([raw_mobiles[j] for j in need]), strict=True):
                mobiles[j] = v
        # rows left: shared by several records on the first pair, or with a mobile to try
        rest = [j for j, (h, m) in enumerate(zip(hits, mobiles, strict=True))
                if not h and (h is not None or (m is not None and (vi[j] is not None or vn[j] is not None)))]
        todo = [j for j in rest if mobiles[j] is not None]
        vms = dict(zip(todo, self._many("mobile", [mobiles[j] for j in todo]), strict=True))  # type: ignore[misc]
        n_im = n_mn = 0
        for j in rest:
            a_i, a_n = vi[j], vn[j]
            maybe: set[str] | None = None
            maybe_pair = 0
            if hits[j] is not None:
                maybe = set(shared[pair_in][both[j]])  # type: ignore[index]
            vm = vms.get(j)
            if vm is not None:
                for k, pair, d, va, vb in ((1, pair_im, p_im, a_i, vm), (2, pair_mn, p_mn, vm, a_n)):
                    if va is None or vb is None:
                        continue
                    if k == 1:
                        n_im += 1
                    else:
                        n_mn += 1
                    hit = d.get(va + vb)
                    if hit is None:
                        continue
                    cands = {hit} if hit else set(shared[pair][va + vb])
                    if maybe is not None and cands & maybe:
                        maybe, maybe_pair = cands & maybe, k
                        if len(maybe) == 1:
                            break
                    elif maybe is None:
                        maybe, maybe_pair = cands, k
                        if len(cands) == 1:
                            break
            if maybe:
                # still several records: the row is a resident, which one the indexes cannot tell
                rids[j], via[j] = min(maybe), maybe_pair
        return rids, via, n_in * r_in + n_im * r_im + n_mn * r_mn, mobiles

    def _confirm_store(self, ids: list[str | None], mobiles: list[str | None],
                       nbs: list[str | None]) -> tuple[list[str | None], list[int | None], float]:
        """Per index, the values under every key (several during a blind-index rotation);
        then, per row and pair, the records both indexes point at."""
        vals: dict[str, list[tuple[bytes, ...]]] = {}
        for name, column in (("id_number", ids), ("mobile", mobiles), ("name_birth", nbs)):
            given = [v for v in column if v]
            if self.blind_all_many is not None:
                every = self.blind_all_many(name, given)
            elif self.blind_all is not None:
                every = [self.blind_all(name, v) for v in given]
            else:
                every = [(h,) for h in self._many(name, given)]
            it = iter(every)
            vals[name] = [next(it) if v else () for v in column]
        cands = {name: self._lookup(name, [v for vs_ in vs for v in vs_])
                 for name, vs in vals.items() if name in self.bits}
        rids: list[str | None] = [None] * len(ids)
        via: list[int | None] = [None] * len(ids)
        n_pair = [0, 0, 0]
        for i in range(len(ids)):
            for k, pair in enumerate(KEY_PAIRS):
                a, b = pair
                va, vb = vals[a][i], vals[b][i]
                if not va or not vb or a not in cands or b not in cands:
                    continue
                n_pair[k] += 1
                ra = {r for v in va for r in cands[a].get(v, ())}
                common = ra & {r for v in vb for r in cands[b].get(v, ())}
                if common:
                    rids[i], via[i] = min(common), k
                    break
        return rids, via, sum(n * self._rate.get(p, 0.0) for n, p in zip(n_pair, KEY_PAIRS, strict=True))

    def _lookup(self, name: str, values: list[bytes]) -> dict[bytes, list[str]]:
        assert self.candidate_ids is not None
        return self.candidate_ids(name, values)
