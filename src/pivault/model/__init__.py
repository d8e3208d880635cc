"""The resident record, its validators and normalisers, and the display masks.

Every validator raises :class:`pivault.errors.ValidationError` with a
machine-readable ``code`` and a message that names the rule, never the value.
"""

from pivault.errors import ValidationError
from pivault.model import address, divisions, masks, mobile, name, resident_id
from pivault.model.masks import mask_field
from pivault.model.record import (
    PI_FIELDS,
    REQUIRED_FIELDS,
    Resident,
    is_record_id,
    new_record_id,
)

__all__ = [
    "PI_FIELDS",
    "REQUIRED_FIELDS",
    "Resident",
    "ValidationError",
    "address",
    "divisions",
    "is_record_id",
    "mask_field",
    "masks",
    "mobile",
    "name",
    "new_record_id",
    "resident_id",
]
