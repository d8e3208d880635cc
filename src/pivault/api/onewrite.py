"""One write per small response: the head held back until the body joins it.

uvicorn writes a response's head (status line and headers) to the transport
as soon as the app sends ``http.response.start``, and the body when it sends
``http.response.body``. Over TLS each write is a record of its own, encrypted
and sent with a system call of its own, so every response costs two of each.
:class:`OneWriteProtocol` is uvicorn's httptools protocol with its transport
wrapped: a head is held until the next write, which carries both, or until
the event loop's next turn, if the body is slow to come. Nothing else
changes: every other call goes to the real transport.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["OneWriteProtocol"]


class _OneWriteTransport:
    """A transport that holds a response head until the next write (or the loop's next turn)."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + bytes(data))
        elif isinstance(data, bytes) and data.startswith(b"HTTP/") and data.endswith(b"\r\n\r\n"):
            self._held = data
            self._loop.call_soon(self._release)
        else:
            self._transport.write(data)

    def _release(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._release()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing each small response in one TLS record."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_OneWriteTransport(transport, self.loop))  # type: ignore[arg-type]
