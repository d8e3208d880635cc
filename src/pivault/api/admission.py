"""Which TLS connections get a handshake: a client address's share, counted from the accept.

:class:`~pivault.api.connection.GuardedProtocol` counts each client address's
connections to a worker and refuses one over its share, but over TLS it only
sees a connection once the handshake is done. Until then nothing counted it:
one address could hold any number of connections in an unfinished handshake
(each a descriptor and a TLS object of the worker until ``--head-timeout``),
or complete handshakes as fast as it could (each a key exchange and a
signature on the worker's core) and crowd out every other address.

The event loop of ``pivault serve`` (:mod:`pivault.api.handshake`) therefore
accepts a TLS server's connections in clear and hands each to a
:class:`TLSGate`, which decides from the client's address alone, before any
TLS work:

- an address holds at most ``per_client`` connections to a worker, counted
  from the accept to the close, so that handshakes in progress count with the
  connections they become;
- an address starts at most ``rate`` handshakes a second at a worker, and at
  most as many at once (a token bucket), so that handshakes completed and
  dropped in a loop cost the worker a bounded share of its core.

A refused connection is closed at once: no TLS object is made and nothing of
it is read, so a refusal costs an accept and a close. It cannot be told why
in HTTP (that would need the handshake it is refused); the worker counts
refusals by reason and logs them, at most once every :data:`LOG_EVERY`
seconds, naming the client's network (``/24``, ``/48``) rather than its
address. Each worker counts for itself, as the protocol's own share does: with
``--workers N`` an address may hold ``N`` shares, one per worker.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from ssl import SSLContext
from typing import Any

__all__ = ["LOG_EVERY", "REASONS", "Admission", "AdmissionLimits", "TLSGate", "network_of"]

log = logging.getLogger("pivault.api")

#: seconds between two log lines on refused connections (one worker)
LOG_EVERY = 5.0
#: distinct networks one log line tallies; the rest are counted together
_NETWORKS = 64
#: addresses whose token bucket is tracked before the full ones are forgotten
_PRUNE_AT = 1024

#: why a connection is refused, and the ``serve`` option that sets the limit
REASONS: dict[str, str] = {
    "connection.limit": "--max-client-connections",
    "handshake.rate": "--max-client-handshake-rate",
}


@dataclass(frozen=True)
class AdmissionLimits:
    """One client address's share of a worker, before its TLS handshake."""

    #: connections one address may hold open to a worker, handshakes in progress included
    per_client: int = 256
    #: TLS handshakes one address may start at a worker each second, and at once
    rate: float = 256.0


#: the IPv6 prefix counted as one client: what a single subscriber or host is handed
IPV6_CLIENT_PREFIX = 64


def client_key(host: str) -> str:
    """What a client's share is counted under: an IPv4 address, or an IPv6 address's /64.

    One IPv6 host holds a whole /64 (SLAAC, privacy addresses) and can pick a
    new source address for every connection: counted per address, its share
    would have no bound. A dual-stack socket's IPv4 client (``::ffff:a.b.c.d``)
    counts as that IPv4 address.
    """
    if ":" not in host:  # IPv4: as it is, without parsing (every connection passes here)
        return host
    try:
        addr = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    shift = 128 - IPV6_CLIENT_PREFIX
    return str(ipaddress.IPv6Network((int(addr) >> shift << shift, IPV6_CLIENT_PREFIX)))


def network_of(host: str) -> str:
    """The network an address (or a client's /64) is logged as: IPv4 /24, IPv6 /48 (an address
    could name a person)."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        try:
            net = ipaddress.ip_network(host, strict=False)
        except ValueError:
            return "-"
        return str(net.supernet(new_prefix=48)) if net.version == 6 and net.prefixlen > 48 else "-"
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # a dual-stack socket's IPv4 client
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


class Admission:
    """One server's counts: open connections and handshake buckets by address, refusals by reason."""

    def __init__(self, limits: AdmissionLimits, loop: asyncio.AbstractEventLoop | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.loop = loop
        self.clock = clock
        self._interval = 1.0 / limits.rate
        #: how far ahead of now an address's bucket may run: a burst of ``rate`` handshakes
        self._window = max(1.0, limits.rate) * self._interval
        #: open connections (in handshake or past it) by client address
        self.open: dict[str, int] = {}
        #: when each address's bucket is next full again (GCRA: its theoretical arrival time)
        self._tat: dict[str, float] = {}
        self._prune_at = _PRUNE_AT
        #: refusals since the worker started, by reason
        self.refused: Counter[str] = Counter()
        self.admitted = 0
        self._pending: Counter[str] = Counter()
        self._networks: Counter[str] = Counter()
        self._logged_at = -LOG_EVERY
        self._flush: asyncio.TimerHandle | None = None

    def admit(self, host: str | None) -> str | None:
        """Count a new connection from ``host``: None if it may have its handshake, else the reason.

        Counted under :func:`client_key` (an IPv6 client's /64), as :meth:`release` is.
        """
        if host is None:  # not an IP connection: nothing to count it under
            self.admitted += 1
            return None
        host = client_key(host)
        n = self.open.get(host, 0)
        if n >= self.limits.per_client:
            return self._refuse(host, "connection.limit")
        now = self.clock()
        tat = self._tat.get(host, now)
        if tat - now > self._window - self._interval:
            return self._refuse(host, "handshake.rate")
        self._tat[host] = max(tat, now) + self._interval
        if len(self._tat) > self._prune_at:
            self._prune(now)
        self.open[host] = n + 1
        self.admitted += 1
        return None

    def release(self, host: str | None) -> None:
        """A connection counted by :meth:`admit` is closed."""
        if host is None:
            return
        host = client_key(host)
        n = self.open.get(host, 1) - 1
        if n > 0:
            self.open[host] = n
        else:
            self.open.pop(host, None)

    def _prune(self, now: float) -> None:
        """Forget the addresses whose bucket is full again: they are as good as new."""
        self._tat = {h: t for h, t in self._tat.items() if t > now}
        self._prune_at = max(_PRUNE_AT, 2 * len(self._tat))

    # -- counting and logging refusals ------------------------------------------------------
    def _refuse(self, host: str, reason: str) -> str:
        self.refused[reason] += 1
        self._pending[reason] += 1
        net = network_of(host)
        if net in self._networks or len(self._networks) < _NETWORKS:
            self._networks[net] += 1
        else:
            self._networks["other networks"] += 1
        now = self.clock()
        if now - self._logged_at >= LOG_EVERY:
            self.log_refusals()
        elif self._flush is None and self.loop is not None:
            self._flush = self.loop.call_later(self._logged_at + LOG_EVERY - now, self.log_refusals)
        return reason

    def log_refusals(self) -> None:
        """One line on the refusals since the last: how many, why (and the option), from where."""
        self._flush = None
        if not self._pending:
            return
        self._logged_at = self.clock()
        total = sum(self._pending.values())
        why = []
        if self._pending["connection.limit"]:
            why.append(f"{self._pending['connection.limit']} over an address's share of "
                       f"{self.limits.per_client} connections to this worker (--max-client-connections)")
        if self._pending["handshake.rate"]:
            why.append(f"{self._pending['handshake.rate']} over an address's {self.limits.rate:g} "
                       "handshakes a second at this worker (--max-client-handshake-rate)")
        sources = ", ".join(f"{net} {n}" for net, n in self._networks.most_common(3))
        log.warning("refused %d connection%s before their TLS handshake: %s; from %s; %d refused since "
                    "the worker started", total, "" if total == 1 else "s", "; ".join(why), sources,
                    sum(self.refused.values()))
        self._pending.clear()
        self._networks.clear()


class _Counted:
    """Mixed into the loop's SSL protocol: releases its connection's count when the connection ends,
    whether its handshake failed, timed out, or the connection served and closed."""

    _admission: Admission | None = None
    _host: str | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        admission = self._admission
        if admission is not None:
            self._admission = None
            admission.release(self._host)
        super().connection_lost(exc)  # type: ignore[misc]


_COUNTED: dict[type, type] = {}


def _counted(base: type) -> type:
    cls = _COUNTED.get(base)
    if cls is None:
        cls = _COUNTED[base] = type(f"Counted{base.__name__}", (_Counted, base), {})
    return cls


def _handshake_done(transport: asyncio.Transport, waiter: asyncio.Future[None]) -> None:
    """A failed handshake closes its connection (as the loop's own TLS servers do)."""
    if not waiter.cancelled() and waiter.exception() is not None and not transport.is_closing():
        transport.abort()


class TLSGate(asyncio.Protocol):
    """A TLS server's protocol until the client's address is admitted; then the TLS layer's.

    Admitted, it puts the loop's own SSL protocol (uvloop's or asyncio's, as the
    loop's TLS servers use) over the accepted transport, with the app's protocol
    above it, exactly as the loop would have; refused, it closes the transport.
    """

    def __init__(self, admission: Admission, app_factory: Callable[[], asyncio.BaseProtocol],
                 sslcontext: SSLContext, ssl_protocol: type, handshake_timeout: float | None,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.admission = admission
        self.app_factory = app_factory
        self.sslcontext = sslcontext
        self.ssl_protocol = _counted(ssl_protocol)
        self.handshake_timeout = handshake_timeout
        self.loop = loop

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) and peer and isinstance(peer[0], str) else None
        if self.admission.admit(host) is not None:
            transport.abort()  # before anything is read: no TLS object, no key exchange
            return
        waiter: asyncio.Future[None] = self.loop.create_future()
        tls: Any = self.ssl_protocol(self.loop, self.app_factory(), self.sslcontext, waiter,
                                     server_side=True, ssl_handshake_timeout=self.handshake_timeout)
        tls._admission = self.admission
        tls._host = host
        waiter.add_done_callback(partial(_handshake_done, transport))
        transport.set_protocol(tls)
        tls.connection_made(transport)
