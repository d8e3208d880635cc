"""Backups: signed, consistent, online copies of the data store, and their restore.

``create_backup`` / ``verify_backup`` / ``restore`` for the data store
(ciphertext, indexes, audit trail, keyring envelope); ``backup_record_keys``
/ ``restore_record_keys`` for the record keys kept beside the keyring. See
docs/backup.md for what each copy holds, where it lives and what a restore
needs.
"""

from pivault.backup.backup import BackupResult, backup_record_keys, create_backup
from pivault.backup.manifest import Container
from pivault.backup.newhome import NewHomeReport, restore_new_home
from pivault.backup.restore import (
    RecordKeysReport,
    RestoreReport,
    erased_on_record,
    restore,
    restore_record_keys,
    salvage_audit_trail,
    salvage_quarantined,
    verify_backup,
)
from pivault.backup.signing import (
    BackupError,
    VerifyKey,
    load_or_create_signing_key,
    load_trusted_verify_key,
    load_verify_key,
)

__all__ = [
    "BackupError",
    "BackupResult",
    "Container",
    "NewHomeReport",
    "RecordKeysReport",
    "RestoreReport",
    "VerifyKey",
    "backup_record_keys",
    "create_backup",
    "erased_on_record",
    "load_or_create_signing_key",
    "load_trusted_verify_key",
    "load_verify_key",
    "restore",
    "restore_new_home",
    "restore_record_keys",
    "salvage_audit_trail",
    "salvage_quarantined",
    "verify_backup",
]
