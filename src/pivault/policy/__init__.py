"""Principals, roles, purposes, field masks and budgets."""

from pivault.policy.context import AccessContext, local_operator, new_request_id

__all__ = ["AccessContext", "local_operator", "new_request_id"]
