"""Blind-index sizing.

A blind index is a keyed PRF of the normalised value, truncated to ``L`` bits
so that several rows share each index value on purpose. CipherSweet's rule
for R expected rows keeps the expected coincidences ``C = R / 2**L`` within
``2 <= C <= sqrt(R)``: at least two rows per index value (the index alone
never singles out a row), at most ``sqrt(R)`` (a lookup stays cheap).

Within that range we aim low, at ``C ~ 4``: every lookup decrypts all C
candidates to keep the exact matches, so C is paid on every request (the
lookup target is p50 <= 50 us at 10^7 rows), while the privacy floor is the
rule's ``C >= 2``. Aiming at 4 rather than 2 leaves a factor of two: a vault
holding half the declared population still meets the floor; a larger one
only makes lookups a little slower. ``L`` is kept in bits (not rounded to bytes):
whole bytes leave no admissible length for some populations (10^5 has none)
and would waste most of the margin elsewhere.
"""

from __future__ import annotations

import math

__all__ = [
    "MIN_POPULATION",
    "expected_coincidences",
    "index_bits_for_population",
    "index_bytes",
    "last_byte_mask",
]

#: smallest population for which the rule admits an index length
MIN_POPULATION = 16
#: rows aimed for per index value: the cost of a lookup, twice the floor
TARGET_COINCIDENCES = 4


def _bounds(rows: int) -> tuple[int, int]:
    # C <= sqrt(R)  <=>  R <= 4**L ;  C >= 2  <=>  2**(L+1) <= R  (exact integers)
    low = 0
    while 4**low < rows:
        low += 1
    high = rows.bit_length() - 2  # largest L with 2**(L+1) <= R
    return low, high


def index_bits_for_population(expected_rows: int) -> int:
    """Blind-index length in bits for ``expected_rows`` rows (CipherSweet's rule)."""
    if type(expected_rows) is not int or expected_rows < MIN_POPULATION:
        raise ValueError(f"expected population must be an integer >= {MIN_POPULATION}")
    low, high = _bounds(expected_rows)
    # C = R / 2**L ~ 4  =>  L = floor(log2(R / 4))
    target = math.floor(math.log2(expected_rows / TARGET_COINCIDENCES))
    return min(max(target, low), high)


def index_bytes(bits: int) -> int:
    """Bytes that hold a ``bits``-bit index (the trailing bits are zero)."""
    return (bits + 7) // 8


def last_byte_mask(bits: int) -> int:
    """Mask that keeps the leading ``bits % 8`` bits of the last byte (0xFF if whole)."""
    rest = bits % 8
    return 0xFF if rest == 0 else (0xFF << (8 - rest)) & 0xFF


def expected_coincidences(expected_rows: int, bits: int) -> float:
    """``R / 2**L``: rows expected to share one index value."""
    return expected_rows / (1 << bits)
