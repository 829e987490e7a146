"""Slow and abusive connections: deadlines per request phase, caps on open connections, eviction.

Both listeners (federation over TLS, client over HTTP) are protected the same way:

- :class:`MatrixChannel` (the HTTP/1.1 channel :class:`~fedserver.http.resource.MatrixSite`
  builds) gives each phase of a request its own clock: the request line and headers must
  arrive within ``header_timeout`` of the connection (TLS handshake included) or of the
  request's first byte, however they trickle in; the body must keep up a minimum rate after
  a grace period; an idle keep-alive connection is closed after ``idle_timeout``. A request
  being handled has no deadline, so a long-polling ``/sync`` waits as long as it asked to.
- :class:`GuardedFactory` (one per listener) and :class:`ConnectionRegistry` (shared by
  both) cap open connections in total and per remote address. At the cap a new connection
  takes the place of the connection that has waited longest for its request head or idles
  longest between requests; only when every connection is busy with a request is the new
  one refused (closed at once). So slow connections cannot lock out new clients, and the
  total stays below the process's file-descriptor limit (see :func:`auto_max_connections`).

What the registry counts (refused, evicted, deadlines missed) is logged as one summary
line per minute at most, never one line per connection.
"""

from __future__ import annotations

import ipaddress
import resource as _resource
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from zope.interface import implementer

log = Logger()

#: Defaults (see docs/operators.md, "What fedserver promises").
DEFAULT_HEADER_TIMEOUT = 20.0
DEFAULT_BODY_TIMEOUT = 20.0
DEFAULT_BODY_MIN_RATE = 500
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 100
#: Loopback addresses are exempt from the per-address cap by default: the client listener
#: listens on 127.0.0.1 behind a reverse proxy, through which every client arrives from
#: the proxy's address.
DEFAULT_EXEMPT_NETWORKS = ("127.0.0.0/8", "::1/128")

#: File descriptors kept out of the connection budget: the database (file, WAL, shared
#: memory, temporary files), log files, outbound federation connections, DNS, and the
#: connections accepted in one batch before the ones they evict are closed.
MIN_FD_RESERVE = 256
#: Fewest connections the automatic cap allows, however low the descriptor limit.
MIN_AUTO_CONNECTIONS = 16
#: How often the summary of refused/evicted/cut connections may be logged (seconds).
SUMMARY_INTERVAL_S = 60.0

#: Connection phases reported by the channel (see :meth:`MatrixChannel._phase_changed`).
HEAD, BODY, BUSY, IDLE = "head", "body", "busy", "idle"
_EVICTABLE = frozenset({HEAD, IDLE})


def fd_limit() -> int | None:
    """:returns: the soft RLIMIT_NOFILE of this process, ``None`` if unlimited/unknown."""
    try:
        soft, _ = _resource.getrlimit(_resource.RLIMIT_NOFILE)
    except (ValueError, OSError):
        return None
    return None if soft == _resource.RLIM_INFINITY else int(soft)


def auto_max_connections(limit: int | None) -> int:
    """The default total cap for a soft descriptor limit ``limit``: the limit minus a
    reserve of a quarter of it (at least :data:`MIN_FD_RESERVE`), e.g. 768 for 1,024;
    10,000 when there is no limit."""
    if limit is None:
        return 10_000
    reserve = max(MIN_FD_RESERVE, limit // 4)
    return max(MIN_AUTO_CONNECTIONS, min(10_000, limit - reserve))


@dataclass(frozen=True)
class ConnectionLimits:
    """Deadlines and caps of both listeners.

    :ivar header_timeout: seconds for the request line and headers, from the connection
        (TLS handshake included) or from the first byte of a later request.
    :ivar body_timeout: seconds of grace for a request body, after which it must have
        arrived at ``body_min_rate`` bytes per second on average.
    :ivar body_min_rate: bytes per second (see ``body_timeout``).
    :ivar idle_timeout: seconds a keep-alive connection may wait for its next request
        (and a response may make no progress towards a client that does not read).
    :ivar max_connections: open connections over both listeners.
    :ivar max_connections_per_address: open connections from one IPv4 address or IPv6 /64.
    :ivar exempt: networks not subject to ``max_connections_per_address``.
    """

    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    body_min_rate: int = DEFAULT_BODY_MIN_RATE
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int = 10_000
    max_connections_per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS
    exempt: tuple[Any, ...] = field(
        default_factory=lambda: tuple(ipaddress.ip_network(n) for n in DEFAULT_EXEMPT_NETWORKS)
    )


def address_key(addr: Any) -> str | None:
    """What the per-address cap counts by: the IPv4 address, the IPv6 /64 (one host
    usually holds a whole /64), or ``None`` (UNIX sockets: not capped per address)."""
    host = getattr(addr, "host", None)
    if not isinstance(host, str):
        return None
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6:
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


# -- the HTTP channel ----------------------------------------------------------------------------


class MatrixChannel(HTTPChannel):
    """An HTTP/1.1 channel with a deadline per phase of each request (see the module
    docstring). Its limits come from ``site.limits`` (a :class:`ConnectionLimits`); its
    timers run on ``callLater`` (the site's reactor).

    The channel tells its transport about phase changes if the transport has
    ``http_phase(phase)`` (a :class:`GuardedProtocol`), and about a missed deadline through
    ``http_deadline(reason)``.
    """

    _phase = HEAD
    _timer: Any = None
    _body_started = 0.0
    _body_received = 0
    _resumes = 0
    _resumes_seen = 0

    def _limits(self) -> ConnectionLimits:
        return getattr(getattr(self, "site", None), "limits", None) or _DEFAULT_LIMITS

    def _now(self) -> float:
        clock = getattr(getattr(self, "site", None), "reactor", None)
        if clock is not None:
            return clock.seconds()
        import time

        return time.time()

    # -- phases ----------------------------------------------------------------------

    def _set_timer(self, delay: float, func: Callable[[], None]) -> None:
        self._cancel_timer()
        self._timer = self.callLater(max(0.0, delay), func)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _enter(self, phase: str) -> None:
        self._phase = phase
        notify = getattr(self.transport, "http_phase", None)
        if notify is not None:
            notify(phase)

    def _start_head(self) -> None:
        self._enter(HEAD)
        self._set_timer(self._limits().header_timeout, lambda: self._missed("header deadline"))

    def connectionMade(self) -> None:
        super().connectionMade()
        self._start_head()

    def dataReceived(self, data: bytes) -> None:
        if self._phase == IDLE and data:
            # The first byte of the next request: its head has header_timeout from now.
            self._start_head()
        elif self._phase == BODY:
            self._body_received += len(data)
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        if self._phase != HEAD:  # closed while the headers were checked (413)
            return
        self._enter(BODY)
        self._body_started = self._now()
        self._body_received = 0
        self._set_timer(self._limits().body_timeout, self._check_body_rate)

    def _check_body_rate(self) -> None:
        limits = self._limits()
        deadline = self._body_started + limits.body_timeout + self._body_received / max(1, limits.body_min_rate)
        now = self._now()
        if now >= deadline:
            self._missed("body too slow")
        else:
            self._set_timer(deadline - now, self._check_body_rate)

    def allContentReceived(self) -> None:
        # Handled from here on: no deadline while the server works on it (long polls).
        self._cancel_timer()
        self._enter(BUSY)
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        if self.persistent and self._phase == BUSY:
            # Idle from now; data the client pipelined, replayed by super(), starts the
            # next request's head (dataReceived above).
            self._enter(IDLE)
            self._resumes_seen = self._resumes
            self._set_timer(self._limits().idle_timeout, self._check_idle)
        super().requestDone(request)

    def _check_idle(self) -> None:
        if self._phase != IDLE:
            return
        if self._waitingForTransport and self._resumes != self._resumes_seen:
            # Still delivering a response to a client that reads it, slowly: give it
            # another period, as long as it makes progress.
            self._resumes_seen = self._resumes
            self._set_timer(self._limits().idle_timeout, self._check_idle)
            return
        self._timer = None
        self._close("idle")

    def resumeProducing(self) -> None:
        self._resumes += 1
        super().resumeProducing()

    def _missed(self, reason: str) -> None:
        self._timer = None
        self._close(reason)

    def _close(self, reason: str) -> None:
        notify = getattr(self.transport, "http_deadline", None)
        if notify is not None:
            notify(reason)
        log.debug("Closing connection from {peer}: {reason}", peer=self._peer(), reason=reason)
        self._phase = "closed"
        if self.transport is not None:
            self.transport.abortConnection()

    def _peer(self) -> Any:
        transport: Any = self.transport
        try:
            return transport.getPeer()
        except Exception:
            return None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timer()
        self._phase = "closed"
        super().connectionLost(reason)


_DEFAULT_LIMITS = ConnectionLimits()


def build_channel(site: Any) -> Any:
    """``MatrixSite.protocol``: a :class:`MatrixChannel` behind Twisted's generic channel
    protocol (which gives it the site's reactor)."""
    from twisted.web.http import _GenericHTTPChannelProtocol

    return _GenericHTTPChannelProtocol(MatrixChannel())


# -- counting and capping connections ---------------------------------------------------------


class ConnectionRegistry:
    """The open connections of every listener: caps, eviction and the summary log.

    :param reactor: for the summary log's timer.
    :param limits: the caps (``max_connections``, ``max_connections_per_address``,
        ``exempt``).
    """

    def __init__(self, reactor: Any, limits: ConnectionLimits) -> None:
        self._reactor = reactor
        self.limits = limits
        self.total = 0
        self._per_key: dict[str, int] = {}
        #: Evictable connections, the longest waiting first (insertion order).
        self._evictable: OrderedDict[Any, None] = OrderedDict()
        self._evictable_by_key: dict[str, OrderedDict[Any, None]] = {}
        self.counts: dict[str, int] = {}
        self._summary: Any = None

    def _exempt(self, key: str | None, addr: Any) -> bool:
        if key is None:
            return True
        try:
            ip = ipaddress.ip_address(addr.host.split("%", 1)[0])
        except (ValueError, AttributeError):
            return True
        return any(ip in net for net in self.limits.exempt)

    def admit(self, addr: Any) -> tuple[bool, str | None]:
        """Make room for a new connection from ``addr`` if needed.

        :returns: ``(admitted, key)``; when not admitted the connection must be closed.
        """
        key = address_key(addr)
        limits = self.limits
        if not self._exempt(key, addr) and self._per_key.get(key, 0) >= limits.max_connections_per_address:  # type: ignore[arg-type]
            if not self._evict_oldest(self._evictable_by_key.get(key)):  # type: ignore[arg-type]
                self._count("refused (per-address cap)")
                return False, key
        if self.total >= limits.max_connections:
            if not self._evict_oldest(self._evictable):
                self._count("refused (total cap)")
                return False, key
        return True, key

    def _evict_oldest(self, candidates: OrderedDict[Any, None] | None) -> bool:
        if not candidates:
            return False
        proto = next(iter(candidates))
        self._count("evicted for a new connection")
        proto.evict()
        return True

    def added(self, proto: Any) -> None:
        self.total += 1
        if proto.key is not None:
            self._per_key[proto.key] = self._per_key.get(proto.key, 0) + 1

    def removed(self, proto: Any) -> None:
        self.set_evictable(proto, False)
        self.total -= 1
        if proto.key is not None:
            n = self._per_key.get(proto.key, 0) - 1
            if n > 0:
                self._per_key[proto.key] = n
            else:
                self._per_key.pop(proto.key, None)

    def set_evictable(self, proto: Any, evictable: bool) -> None:
        """Move ``proto`` to the end of the eviction order (it starts waiting now), or
        out of it."""
        self._evictable.pop(proto, None)
        per = self._evictable_by_key.get(proto.key) if proto.key is not None else None
        if per is not None:
            per.pop(proto, None)
            if not per and not evictable:
                del self._evictable_by_key[proto.key]
        if evictable:
            self._evictable[proto] = None
            if proto.key is not None:
                self._evictable_by_key.setdefault(proto.key, OrderedDict())[proto] = None

    def per_address(self, key: str) -> int:
        """:returns: open connections counted for ``key`` (see :func:`address_key`)."""
        return self._per_key.get(key, 0)

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
        if self._summary is None:
            self._summary = self._reactor.callLater(SUMMARY_INTERVAL_S, self._log_summary)

    def deadline_missed(self, reason: str) -> None:
        """A channel closed its connection for ``reason`` (idle closes are not counted)."""
        if reason != "idle":
            self._count(f"closed: {reason}")

    def _log_summary(self) -> None:
        self._summary = None
        counts, self.counts = self.counts, {}
        if counts:
            log.warn(
                "Connections in the last {s:.0f} s: {what} ({total} open now, cap {cap})",
                s=SUMMARY_INTERVAL_S, what=", ".join(f"{n} {k}" for k, n in sorted(counts.items())),
                total=self.total, cap=self.limits.max_connections,
            )

    def stop(self) -> None:
        """Log what is pending and cancel the summary timer."""
        if self._summary is not None and self._summary.active():
            self._summary.cancel()
            self._log_summary()
        self._summary = None


class _Refused(Protocol):
    """Closes a connection beyond the caps as soon as it is made."""

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.abortConnection()


class GuardedProtocol(policies.ProtocolWrapper):
    """Wraps one connection's protocol: counted in the registry, evictable while the
    channel waits for a request head or idles (it calls :meth:`http_phase`)."""

    key: str | None = None
    _counted = False

    def connectionMade(self) -> None:
        self.factory.registry.added(self)
        self._counted = True
        super().connectionMade()

    def http_phase(self, phase: str) -> None:
        """The channel entered ``phase`` (HEAD, BODY, BUSY or IDLE)."""
        if self._counted:
            self.factory.registry.set_evictable(self, phase in _EVICTABLE)

    def http_deadline(self, reason: str) -> None:
        """The channel is closing the connection for ``reason``."""
        self.factory.registry.deadline_missed(reason)

    def evict(self) -> None:
        """Close at once to make room for a new connection (uncounted now: its
        descriptor is released within this reactor iteration)."""
        self._uncount()
        if self.transport is not None:
            self.transport.abortConnection()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.factory.registry.removed(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._uncount()
        super().connectionLost(reason)


@implementer(IProtocolNegotiationFactory)
class GuardedFactory(policies.WrappingFactory):
    """Wraps a listener's factory (a :class:`~fedserver.http.resource.MatrixSite`):
    admits connections through ``registry`` and knows its open ones, so that stopping
    can close them.

    It passes the wrapped Site's ALPN protocols through: without them Twisted's TLS layer
    answers any client offering ALPN (curl, browsers, Synapse) with an internal-error
    alert.

    :param wrapped: the factory of the connections' protocols.
    :param reactor: for the grace timer of :meth:`close_all`.
    :param registry: the :class:`ConnectionRegistry` shared by all listeners.
    """

    noisy = False
    protocol = GuardedProtocol

    def __init__(self, wrapped: Any, reactor: Any, registry: ConnectionRegistry) -> None:
        super().__init__(wrapped)
        self._reactor = reactor
        self.registry = registry
        self._waiters: list[defer.Deferred] = []

    def acceptableProtocols(self) -> list[bytes]:
        inner: Any = IProtocolNegotiationFactory(self.wrappedFactory, None)
        return list(inner.acceptableProtocols()) if inner is not None else [b"http/1.1"]

    def logPrefix(self) -> str:
        return self.wrappedFactory.logPrefix() if hasattr(self.wrappedFactory, "logPrefix") else "fedserver"

    def buildProtocol(self, addr: Any) -> Any:
        admitted, key = self.registry.admit(addr)
        if not admitted:
            return _Refused()
        proto: Any = super().buildProtocol(addr)
        proto.key = key
        return proto

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def close_all(self, grace: float = 1.0) -> defer.Deferred:
        """Close every open connection, aborting those still open after ``grace`` seconds.

        The grace lets written responses flush. It is short because over TLS a graceful
        close also waits for the peer's close_notify, which other servers' idle connection
        pools (Twisted's among them) do not send.

        :returns: a Deferred firing once none is left.
        """
        if not self.protocols:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiters.append(d)
        for p in list(self.protocols):
            p.transport.loseConnection()
        abort = self._reactor.callLater(grace, self._abort_all)

        def cancel_abort(result: Any) -> Any:
            if abort.active():
                abort.cancel()
            return result

        return d.addBoth(cancel_abort)

    def _abort_all(self) -> None:
        for p in list(self.protocols):
            p.transport.abortConnection()


__all__ = [
    "BODY",
    "BUSY",
    "ConnectionLimits",
    "ConnectionRegistry",
    "GuardedFactory",
    "GuardedProtocol",
    "HEAD",
    "IDLE",
    "MatrixChannel",
    "address_key",
    "auto_max_connections",
    "build_channel",
    "fd_limit",
]
