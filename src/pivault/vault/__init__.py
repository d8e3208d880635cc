"""The Vault: the one door through which PI enters and leaves pivault.

``Vault`` (put, get, find, update, erase, import_files, rejects, stats), the
``Guard`` it consults at fixed points, the vault home (``init``, ``load``) and
the import machinery.
"""

from pivault.vault import meta as _meta  # noqa: F401 - registers the vault_meta schema step
from pivault.vault.facade import OUTPUT_FIELDS, DuplicateRecord, Vault
from pivault.vault.guard import AccessDenied, Guard, LocalGuard
from pivault.vault.home import VaultConfig, init, load, resolve_home
from pivault.vault.imports import FileSummary, ImportProgress, ImportSummary
from pivault.vault.meta import VaultMismatch

__all__ = [
    "OUTPUT_FIELDS",
    "AccessDenied",
    "DuplicateRecord",
    "FileSummary",
    "Guard",
    "ImportProgress",
    "ImportSummary",
    "LocalGuard",
    "Vault",
    "VaultConfig",
    "VaultMismatch",
    "init",
    "load",
    "resolve_home",
]
