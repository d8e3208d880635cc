"""The authenticated HTTP service (``pivault serve``).

``create_app(vault, policy)`` builds the ASGI application; ``pivault.api.server``
runs it under uvicorn with the fail-closed checks (TLS off loopback, at least
one principal, no anonymous grant).
"""

from pivault.api.app import OPEN_PATHS, ROUTES, PolicyHolder, ServiceConfig, create_app
from pivault.api.problems import Problem

__all__ = ["OPEN_PATHS", "ROUTES", "PolicyHolder", "Problem", "ServiceConfig", "create_app"]
