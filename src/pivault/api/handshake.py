"""The TLS handshake's deadline: a connection that never finishes its handshake is cut.

A request's head has a deadline (:mod:`pivault.api.connection`), but only once
its connection's TLS handshake is done: the app's protocol is only made
then. Before, the event loop's own handshake timeout holds (60 s, which
uvicorn does not expose), so a client that opens connections and never
completes a handshake held each one — a descriptor and a TLS object of the
worker — for a minute. ``pivault serve`` runs its workers on this event loop,
whose TLS servers give a handshake the head's deadline (``--head-timeout``):
a stalled handshake then costs what a stalled head costs.

It is uvicorn's own loop (uvloop, or asyncio's where uvloop is missing) with
one default changed, named to uvicorn as a custom loop factory.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

__all__ = ["HANDSHAKE_ENV", "deadline_loop"]

#: seconds a TLS handshake may take (set by ``pivault serve`` for its workers: ``--head-timeout``)
HANDSHAKE_ENV = "PIVAULT_HANDSHAKE_TIMEOUT"
DEFAULT_HANDSHAKE_TIMEOUT = 10.0


def _timeout() -> float:
    try:
        value = float(os.environ.get(HANDSHAKE_ENV, DEFAULT_HANDSHAKE_TIMEOUT))
    except ValueError:
        return DEFAULT_HANDSHAKE_TIMEOUT
    return value if 0 < value <= 300 else DEFAULT_HANDSHAKE_TIMEOUT


def _base() -> type[asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return asyncio.SelectorEventLoop
    return uvloop.Loop


class _DeadlineMixin:
    async def create_server(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("ssl") is not None and kwargs.get("ssl_handshake_timeout") is None:
            kwargs["ssl_handshake_timeout"] = _timeout()
        return await super().create_server(*args, **kwargs)  # type: ignore[misc]


_Loop: type[asyncio.AbstractEventLoop] | None = None


def deadline_loop() -> asyncio.AbstractEventLoop:
    """A new event loop whose TLS servers cut a handshake at the head's deadline.

    uvicorn's ``loop`` setting takes this as ``"pivault.api.handshake:deadline_loop"``.
    """
    global _Loop
    if _Loop is None:
        _Loop = type("DeadlineLoop", (_DeadlineMixin, _base()), {})
    return _Loop()
