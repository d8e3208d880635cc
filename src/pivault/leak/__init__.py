"""Leak response: read a dump, find its PI columns, match it against the vault, attribute it."""

from pivault.leak.columns import Column, detect_columns
from pivault.leak.readers import Batch, DumpError, Table, read_dump, read_stream

__all__ = ["Batch", "Column", "DumpError", "Table", "detect_columns", "read_dump", "read_stream"]
