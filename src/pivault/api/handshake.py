"""The TLS handshake's deadline and each client address's share of it.

A request's head has a deadline (:mod:`pivault.api.connection`), but only once
its connection's TLS handshake is done: the app's protocol is only made
then. Before, the event loop's own handshake timeout holds (60 s, which
uvicorn does not expose), so a client that opens connections and never
completes a handshake held each one — a descriptor and a TLS object of the
worker — for a minute. ``pivault serve`` runs its workers on this event loop,
whose TLS servers give a handshake the head's deadline (``--head-timeout``):
a stalled handshake then costs what a stalled head costs.

Its TLS servers also count each connection against its client address from
the accept, before the handshake (:mod:`pivault.api.admission`): an address
over its share of connections (``--max-client-connections``) or of new
handshakes a second (``--max-client-handshake-rate``) is closed before any
TLS work is done for it.

It is uvicorn's own loop (uvloop, or asyncio's where uvloop is missing) with
those defaults changed, named to uvicorn as a custom loop factory.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from pivault.api.admission import Admission, AdmissionLimits, TLSGate

__all__ = ["ADMISSION_ENV", "HANDSHAKE_ENV", "admission_env", "deadline_loop"]

#: seconds a TLS handshake may take (set by ``pivault serve`` for its workers: ``--head-timeout``)
HANDSHAKE_ENV = "PIVAULT_HANDSHAKE_TIMEOUT"
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: one client address's share of a worker before its handshake, JSON (set by ``pivault serve``)
ADMISSION_ENV = "PIVAULT_TLS_ADMISSION"


def _timeout() -> float:
    try:
        value = float(os.environ.get(HANDSHAKE_ENV, DEFAULT_HANDSHAKE_TIMEOUT))
    except ValueError:
        return DEFAULT_HANDSHAKE_TIMEOUT
    return value if 0 < value <= 300 else DEFAULT_HANDSHAKE_TIMEOUT


def admission_env(limits: AdmissionLimits) -> str:
    """The value of :data:`ADMISSION_ENV` that gives the workers ``limits``."""
    return json.dumps({"per_client": limits.per_client, "rate": limits.rate})


def _limits() -> AdmissionLimits:
    """The limits ``pivault serve`` gave its workers; the defaults for anything missing or not sane
    (``serve`` checks them before it starts, so this only guards against a hand-set variable)."""
    default = AdmissionLimits()
    try:
        raw = json.loads(os.environ.get(ADMISSION_ENV, "{}"))
        per_client = int(raw.get("per_client", default.per_client))
        rate = float(raw.get("rate", default.rate))
    except (ValueError, TypeError, AttributeError):
        return default
    if per_client < 1 or not 0 < rate < float("inf"):
        return default
    return AdmissionLimits(per_client=per_client, rate=rate)


def _base() -> tuple[type[asyncio.AbstractEventLoop], type]:
    """The loop class and the SSL protocol class its own TLS servers use."""
    try:
        import uvloop
        import uvloop.loop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        from asyncio.sslproto import SSLProtocol

        return asyncio.SelectorEventLoop, SSLProtocol
    # the Cython SSL layer uvloop's own TLS servers put over a connection; uvloop's type hints do
    # not declare it, so it is read from the module's namespace
    ssl_protocol: type = vars(uvloop.loop)["SSLProtocol"]
    return uvloop.Loop, ssl_protocol


class _DeadlineMixin:
    #: the SSL protocol class of the loop this is mixed into
    _ssl_protocol: type

    async def create_server(self, protocol_factory: Any, *args: Any, **kwargs: Any) -> Any:
        ssl = kwargs.get("ssl")
        if ssl is not None:
            # accepted in clear; the gate puts the TLS layer on once the address is admitted
            timeout = kwargs.pop("ssl_handshake_timeout", None) or _timeout()
            kwargs["ssl"] = None
            loop: Any = self
            admission = Admission(_limits(), loop)
            app_factory, ssl_protocol = protocol_factory, self._ssl_protocol

            def gate() -> TLSGate:
                return TLSGate(admission, app_factory, ssl, ssl_protocol, timeout, loop)

            return await super().create_server(gate, *args, **kwargs)  # type: ignore[misc]
        return await super().create_server(protocol_factory, *args, **kwargs)  # type: ignore[misc]


_Loop: type[asyncio.AbstractEventLoop] | None = None


def deadline_loop() -> asyncio.AbstractEventLoop:
    """A new event loop whose TLS servers cut a handshake at the head's deadline, and give each client
    address its share of handshakes.

    uvicorn's ``loop`` setting takes this as ``"pivault.api.handshake:deadline_loop"``.
    """
    global _Loop
    if _Loop is None:
        base, ssl_protocol = _base()
        _Loop = type("DeadlineLoop", (_DeadlineMixin, base), {"_ssl_protocol": ssl_protocol})
    return _Loop()
