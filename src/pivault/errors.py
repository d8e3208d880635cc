"""Errors every layer raises.

Each error carries a stable machine-readable ``code`` (``id.checksum``,
``crypto.integrity`` …) so that callers, reject files and HTTP problem bodies
can act on it, and a message written for an operator. Messages never contain
personal information: they name the field and the rule, never the value.
"""

from __future__ import annotations


class PivaultError(Exception):
    """Base of every error pivault raises on purpose."""

    code: str = "pivault.error"
    #: a short hint at what the operator can do about it
    hint: str = ""

    def __init__(self, message: str, *, code: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if hint is not None:
            self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class ValidationError(PivaultError, ValueError):
    """A value failed a validator of :mod:`pivault.model`."""

    code = "invalid"

    def __init__(self, code: str, message: str, *, field: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, code=code, hint=hint)
        self.field = field


class ConfigError(PivaultError):
    code = "config"


class NotFoundError(PivaultError, LookupError):
    code = "not_found"
