"""The size of Arrow text columns, measured before any value becomes a Python string.

Both the import and the scanner read Parquet files from outside, where a
few kilobytes can expand into gigabytes (one long value repeated through a
dictionary column): they size each row from the arrays' lengths first.
"""

from __future__ import annotations

from typing import Any

__all__ = ["text_lengths"]


def text_lengths(col: Any) -> Any:
    """Bytes of each value of a text or binary Arrow array, without decoding one; None for other types."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = col.type
    if pa.types.is_dictionary(t):
        lengths = text_lengths(col.dictionary)
        return None if lengths is None else pc.take(lengths, col.indices)
    if (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t)):
        return pc.binary_length(col)
    return None  # numbers, dates, flags, nested values: short, whatever they hold
