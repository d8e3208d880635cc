"""Storage: ciphertext, blind indexes and non-PI metadata, on SQLite or PostgreSQL."""

from pivault.store.db import Database, StoreError, StoreURL, connect, parse_url
from pivault.store.migrations import Migration, migrate, register

__all__ = ["Database", "Migration", "StoreError", "StoreURL", "connect", "migrate", "parse_url",
           "register"]
