"""pivault: a privacy vault for personal information at population scale."""

from pivault.errors import ConfigError, NotFoundError, PivaultError, ValidationError

__version__ = "0.1.0"

__all__ = ["ConfigError", "NotFoundError", "PivaultError", "ValidationError", "__version__"]
