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
counted apart.

For speed the pairs are held in memory: one pass over the blind-index table
builds ``(value_a, value_b) -> record id`` for each pair of indexes, and each
dump row then costs two or three keyed hashes and dictionary lookups. Above
``pair_cache_limit`` records the matcher asks the store instead, batch by
batch (:meth:`RecordStore.candidate_ids`), in memory that does not grow
with the vault.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pivault.leak.columns import fast_id_number, fast_mobile, fast_name, parse_birth_date
from pivault.leak.exports import ExportRegistry
from pivault.store.db import Database

__all__ = ["KEY_PAIRS", "Compact", "Keys", "MatchResult", "Matcher", "PairIndex", "RowMatch"]

#: one row's outcome, small enough to send between processes: (keys given, region code of
#: the ID number or "", record id, "a+b" pair, export id of a canary, canary number,
#: exact canary keys, canary hit by ID number)
Compact = tuple[int, str, str | None, str | None, str | None, int, int, bool]

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
    addresses = [v.strip() if v else None for v in _column(rows, cols, "address")]
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
        k.address = row[i].strip()  # type: ignore[union-attr]
    if k.name and k.birth:
        k.name_birth = f"{k.name}|{k.birth}"
    return k


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
                   vault.store.candidate_ids, kr.blind_index_all if rotating else None)

    # -- export canaries: exact values of fictitious people -------------------------
    def _canary(self, k: Keys, m: RowMatch) -> None:
        c = self.registry.canaries
        if not any(c.values()):
            return
        hits: dict[tuple[str, int], int] = {}
        by_id: tuple[str, int] | None = None
        for kind, value in (("id_number", k.id_number), ("mobile", k.mobile),
                            ("name_birth", k.name_birth), ("address", k.address)):
            if value is None:
                continue
            e = c[kind].get(value)
            if e is not None:
                hits[e] = hits.get(e, 0) + 1
                if kind == "id_number":
                    by_id = e
        if hits:
            best = max(hits.items(), key=lambda kv: kv[1])
            m.export_canary = best[0]
            m.canary_keys = best[1]
            m.canary_by_id = by_id == best[0]

    # -- the vault: blind-index pairs --------------------------------------------------
    def match(self, rows: Sequence[Sequence[str | None]], cols: dict[str, int]) -> MatchResult:
        keys = batch_keys(rows, cols)
        out = [RowMatch() for _ in keys]
        if self.pairs is not None and self.blind_all is None:
            expected = self._match_cached(keys, out)
        else:
            expected = self._match_store(keys, out)
        if any(self.registry.canaries.values()):
            for k, m in zip(keys, out, strict=True):
                self._canary(k, m)
        return MatchResult(out, keys, expected)

    def match_compact(self, rows: Sequence[Sequence[str | None]],
                      cols: dict[str, int]) -> tuple[list[Compact], float]:
        """:meth:`match`, reduced to what the tally needs (cheap to pickle)."""
        r = self.match(rows, cols)
        out: list[Compact] = []
        for k, m in zip(r.keys, r.rows, strict=True):
            c = m.export_canary
            out.append((k.count(), k.id_number[:6] if k.id_number else "", m.record_id,
                        "+".join(m.pair) if m.pair else None, c[0] if c else None, c[1] if c else 0,
                        m.canary_keys, m.canary_by_id))
        return out, r.expected_false

    def _match_cached(self, keys: list[Keys], out: list[RowMatch]) -> float:
        """Try the pairs in order; the mobile's hash is computed only when the first pair
        does not settle the row. A key several records share is narrowed by the next pair."""
        assert self.pairs is not None
        blind = self.blind
        pair_in, pair_im, pair_mn = KEY_PAIRS
        p_in, p_im, p_mn = (self.pairs.pairs[p] for p in KEY_PAIRS)
        rate = self._rate
        r_in, r_im, r_mn = (rate.get(p, 0.0) for p in KEY_PAIRS)
        shared = self.pairs.shared
        expected = 0.0
        for k, m in zip(keys, out, strict=True):
            vi = blind("id_number", k.id_number) if k.id_number is not None else None
            nb = k.name_birth
            vn = blind("name_birth", nb) if nb is not None else None
            maybe: set[str] | None = None
            maybe_pair = pair_in
            if vi is not None and vn is not None:
                expected += r_in
                hit = p_in.get(vi + vn)
                if hit:
                    m.record_id, m.pair = hit, pair_in
                    continue
                if hit is not None:
                    maybe = set(shared[pair_in][vi + vn])
            if k.mobile is not None:
                vm = blind("mobile", k.mobile)
                for pair, d, va, vb, r in ((pair_im, p_im, vi, vm, r_im), (pair_mn, p_mn, vm, vn, r_mn)):
                    if va is None or vb is None:
                        continue
                    expected += r
                    hit = d.get(va + vb)
                    if hit is None:
                        continue
                    cands = {hit} if hit else set(shared[pair][va + vb])
                    if maybe is not None and cands & maybe:
                        maybe, maybe_pair = cands & maybe, pair
                        if len(maybe) == 1:
                            break
                    elif maybe is None:
                        maybe, maybe_pair = cands, pair
                        if len(cands) == 1:
                            break
            if maybe:
                # still several records: the row is a resident, which one the indexes cannot tell
                m.record_id, m.pair = min(maybe), maybe_pair
        return expected

    def _match_store(self, keys: list[Keys], out: list[RowMatch]) -> float:
        """Per index, the values under every key (several during a blind-index rotation);
        then, per row and pair, the records both indexes point at."""
        blind_all = self.blind_all or (lambda n, v: (self.blind(n, v),))
        vals: dict[str, list[tuple[bytes, ...]]] = {"id_number": [], "mobile": [], "name_birth": []}
        for k in keys:
            vals["id_number"].append(blind_all("id_number", k.id_number) if k.id_number else ())
            vals["mobile"].append(blind_all("mobile", k.mobile) if k.mobile else ())
            nb = k.name_birth
            vals["name_birth"].append(blind_all("name_birth", nb) if nb else ())
        cands = {name: self._lookup(name, [v for vs_ in vs for v in vs_])
                 for name, vs in vals.items() if name in self.bits}
        expected = 0.0
        for i, m in enumerate(out):
            for pair in KEY_PAIRS:
                a, b = pair
                va, vb = vals[a][i], vals[b][i]
                if not va or not vb or a not in cands or b not in cands:
                    continue
                expected += self._rate.get(pair, 0.0)
                ra = {r for v in va for r in cands[a].get(v, ())}
                common = ra & {r for v in vb for r in cands[b].get(v, ())}
                if common:
                    m.record_id, m.pair = min(common), pair
                    break
        return expected

    def _lookup(self, name: str, values: list[bytes]) -> dict[bytes, list[str]]:
        assert self.candidate_ids is not None
        return self.candidate_ids(name, values)
