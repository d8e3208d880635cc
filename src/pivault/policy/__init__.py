"""Principals, roles, purposes, field masks and budgets.

``Policy`` answers "may this caller do this, and what will it see?";
``PolicyGuard`` puts those answers at the Vault's door;
``TokenStore`` turns a bearer token into a principal with a role;
``AccessContext`` carries the answer through the Vault door.
"""

from pivault.policy.context import AccessContext, local_operator, new_request_id
from pivault.policy.guard import PolicyGuard
from pivault.policy.policy import (
    MASK_NAMES,
    OPERATIONS,
    PI_OPERATIONS,
    RECORD_FIELDS,
    WRITABLE_FIELDS,
    AccessDenied,
    Decision,
    Policy,
    PolicyError,
    Role,
)

__all__ = [
    "MASK_NAMES",
    "OPERATIONS",
    "PI_OPERATIONS",
    "RECORD_FIELDS",
    "WRITABLE_FIELDS",
    "AccessContext",
    "AccessDenied",
    "Decision",
    "Policy",
    "PolicyError",
    "PolicyGuard",
    "Role",
    "local_operator",
    "new_request_id",
]
