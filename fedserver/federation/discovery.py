"""Server discovery: turning a server name into where to connect, Host header and TLS name."""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Mapping
from urllib.parse import urljoin, urlsplit

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.error import DNSNameError, DomainError
from twisted.python.failure import Failure

from fedserver.events.canonical import CanonicalJSONError, parse_json
from fedserver.federation.xmatrix import (
    DEFAULT_FEDERATION_PORT,
    InvalidServerName,
    parse_server_name,
)

log = Logger()

#: Well-known caching (server-server API, "Resolving server names", step 3): the default
#: when the response carries no cache headers, and the maximum.
WELL_KNOWN_DEFAULT_CACHE = 24 * 3600.0
WELL_KNOWN_MAX_CACHE = 48 * 3600.0
#: Our floor under a successful response's cache time, so ``no-cache`` or a tiny max-age
#: does not cost a well-known fetch before every federation request.
WELL_KNOWN_MIN_CACHE = 300.0
#: Errors are cached "for up to an hour", with exponential back-off for repeated failures:
#: 5 min, 10, 20, 40, then 60.
WELL_KNOWN_ERROR_CACHE_FIRST = 300.0
WELL_KNOWN_ERROR_CACHE_MAX = 3600.0
#: "30x redirects should be followed, however redirection loops should be avoided."
WELL_KNOWN_MAX_REDIRECTS = 5
_REDIRECT_CODES = frozenset((301, 302, 303, 307, 308))

#: SRV answers are cached for their TTL within these bounds; no answer is remembered for
#: ``SRV_NEGATIVE_CACHE`` seconds, a failed lookup for ``SRV_ERROR_CACHE``.
SRV_MIN_CACHE = 60.0
SRV_MAX_CACHE = 3600.0
SRV_NEGATIVE_CACHE = 600.0
SRV_ERROR_CACHE = 60.0

#: SRV services, preferred first (step 3.3 and 4: ``_matrix-fed._tcp``; the deprecated
#: ``_matrix._tcp`` only if there is none).
SRV_SERVICES = ("_matrix-fed._tcp.", "_matrix._tcp.")

_INFINITY = float("inf")


@dataclass(frozen=True, slots=True)
class ResolvedServer:
    """Where and how to reach a server.

    :ivar host_header: the ``Host`` header to send.
    :ivar tls_server_name: the name the certificate must be valid for: a DNS name (also the
        SNI), or an IP address without brackets (no SNI).
    :ivar targets: ``(host, port)`` pairs to try in order; ``host`` is a DNS name still to be
        resolved with AAAA/A records, or an IP address without brackets.
    """

    host_header: str
    tls_server_name: str
    targets: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class WellKnownResponse:
    """One HTTP response to a ``/.well-known/matrix/server`` request.

    :ivar code: the HTTP status.
    :ivar headers: lower-case header name -> first value.
    :ivar body: the (size-capped) body.
    """

    code: int
    headers: Mapping[str, str]
    body: bytes


#: ``getter(url) -> Deferred[WellKnownResponse]``: one HTTPS GET with normal X.509
#: validation for the URL's host, no redirect following, a size cap and a timeout; it
#: fails for anything that is not a response. See
#: :func:`fedserver.federation.client.make_well_known_getter`.
WellKnownGetter = Callable[[str], "defer.Deferred[WellKnownResponse]"]


class _WellKnownEntry:
    __slots__ = ("delegated", "expires_at", "failures")

    def __init__(self, delegated: str | None, expires_at: float, failures: int) -> None:
        self.delegated = delegated
        self.expires_at = expires_at
        self.failures = failures


class ServerNameResolver:
    """Resolves server names as the server-server API's "Resolving server names" says.

    Results are cached: well-known responses per the spec's caching rules, SRV answers by
    TTL, and the combined result until the earliest of those expires. Concurrent requests
    for one name share one lookup.

    :param reactor: provides ``callLater`` for lookup timeouts.
    :param well_known_getter: fetches well-known URLs (see :data:`WellKnownGetter`).
    :param srv_resolver: an ``IResolver`` (``twisted.names.client.createResolver()``);
        only ``lookupService`` is used.
    :param clock: provides ``seconds()`` for cache expiry; defaults to ``reactor``.
    :param rng: randomness for SRV weights (RFC 2782); a ``random.Random``.
    :param lookup_timeout: seconds allowed for one well-known fetch (including redirects)
        or one SRV lookup.
    :param max_cache_entries: bound on each cache.
    """

    def __init__(
        self,
        reactor: Any,
        well_known_getter: WellKnownGetter,
        srv_resolver: Any,
        clock: Any = None,
        *,
        rng: random.Random | None = None,
        lookup_timeout: float = 15.0,
        max_cache_entries: int = 50_000,
    ) -> None:
        self._reactor = reactor
        self._get = well_known_getter
        self._srv = srv_resolver
        self._clock = clock if clock is not None else reactor
        self._rng = rng if rng is not None else random.Random()
        self._timeout = lookup_timeout
        self._max_entries = max_cache_entries
        self._resolved: dict[str, tuple[ResolvedServer, float]] = {}
        self._well_known: dict[str, _WellKnownEntry] = {}
        self._srv_cache: dict[str, tuple[tuple[tuple[str, int], ...] | None, float]] = {}
        self._waiting: dict[str, list[defer.Deferred]] = {}

    # -- public -----------------------------------------------------------------------------

    def resolve(self, server_name: str) -> defer.Deferred:
        """Find how to reach ``server_name``.

        :returns: Deferred firing with a :class:`ResolvedServer`.
        :raises InvalidServerName: (through the Deferred) if ``server_name`` is not a server
            name.
        """
        cached = self._resolved.get(server_name)
        if cached is not None and cached[1] > self._clock.seconds():
            return defer.succeed(cached[0])
        d: defer.Deferred = defer.Deferred()
        waiters = self._waiting.get(server_name)
        if waiters is not None:
            waiters.append(d)
            return d
        self._waiting[server_name] = [d]
        work = defer.Deferred.fromCoroutine(self._resolve(server_name))
        work.addBoth(self._deliver, server_name)
        return d

    def well_known(self, hostname: str) -> defer.Deferred:
        """The delegated server name from ``https://<hostname>/.well-known/matrix/server``
        (cached as step 3 says).

        :returns: Deferred firing with the ``m.server`` value, or ``None`` if the well-known
            response was missing or invalid.
        """
        return defer.Deferred.fromCoroutine(self._lookup_well_known(hostname)).addCallback(lambda r: r[0])

    def forget(self, server_name: str) -> None:
        """Drop the cached result for ``server_name`` (e.g. after it failed persistently);
        well-known and SRV caches keep their own expiry."""
        self._resolved.pop(server_name, None)

    # -- the algorithm ------------------------------------------------------------------------

    def _deliver(self, result: Any, server_name: str) -> None:
        waiters = self._waiting.pop(server_name, [])
        if isinstance(result, Failure):
            for d in waiters:
                if not d.called:
                    d.errback(result)
            return None
        resolved, expires_at = result
        self._remember(self._resolved, server_name, (resolved, expires_at))
        for d in waiters:
            if not d.called:
                d.callback(resolved)
        return None

    async def _resolve(self, server_name: str) -> tuple[ResolvedServer, float]:
        name = parse_server_name(server_name)
        port = name.port
        # Step 1: an IP literal, with its port or 8448; Host is the server name as given,
        # the certificate must be valid for the IP address.
        if name.ip is not None:
            return ResolvedServer(server_name, name.ip, ((name.ip, port or DEFAULT_FEDERATION_PORT),)), _INFINITY
        # Step 2: a hostname with an explicit port: AAAA/A records of the hostname, Host is
        # the server name with port, the certificate must be valid for the hostname.
        if port is not None:
            return ResolvedServer(server_name, name.host, ((name.host, port),)), _INFINITY
        # Step 3: https://<hostname>/.well-known/matrix/server.
        delegated, expires_at = await self._lookup_well_known(name.host)
        if delegated is not None:
            dname = parse_server_name(delegated)
            # 3.1: delegated IP literal: that address with the delegated port or 8448; Host
            # is the IP address (with the port if given); certificate for the IP address.
            if dname.ip is not None:
                targets = ((dname.ip, dname.port or DEFAULT_FEDERATION_PORT),)
                return ResolvedServer(delegated, dname.ip, targets), expires_at
            # 3.2: delegated hostname with port: AAAA/A records, Host
            # <delegated_hostname>:<delegated_port>, certificate for the delegated hostname.
            if dname.port is not None:
                return ResolvedServer(delegated, dname.host, ((dname.host, dname.port),)), expires_at
            # 3.3 / 3.4 (deprecated _matrix._tcp) / 3.5: SRV for the delegated hostname, else
            # its AAAA/A records on 8448; Host and certificate are the delegated hostname.
            targets, srv_expires = await self._srv_targets(dname.host)
            if targets is None:
                targets = ((dname.host, DEFAULT_FEDERATION_PORT),)
            return ResolvedServer(dname.host, dname.host, targets), min(expires_at, srv_expires)
        # Steps 4 / 5 (deprecated _matrix._tcp) / 6: SRV for the hostname, else its AAAA/A
        # records on 8448; Host and certificate are the hostname (not the SRV target).
        targets, srv_expires = await self._srv_targets(name.host)
        if targets is None:
            targets = ((name.host, DEFAULT_FEDERATION_PORT),)
        return ResolvedServer(name.host, name.host, targets), min(expires_at, srv_expires)

    # -- well-known -----------------------------------------------------------------------------

    async def _lookup_well_known(self, hostname: str) -> tuple[str | None, float]:
        now = self._clock.seconds()
        entry = self._well_known.get(hostname)
        if entry is not None and entry.expires_at > now:
            return entry.delegated, entry.expires_at
        failures = entry.failures if entry is not None else 0
        try:
            delegated, period = await self._with_timeout(self._fetch_well_known(hostname))
        except Exception as e:
            failures += 1
            period = min(WELL_KNOWN_ERROR_CACHE_MAX, WELL_KNOWN_ERROR_CACHE_FIRST * 2 ** (failures - 1))
            log.info(
                "No valid .well-known for {hostname} ({error}); not asking again for {period:.0f}s",
                hostname=hostname,
                error=e,
                period=period,
            )
            delegated = None
        else:
            failures = 0
        expires_at = self._clock.seconds() + period
        self._remember(self._well_known, hostname, _WellKnownEntry(delegated, expires_at, failures))
        return delegated, expires_at

    async def _fetch_well_known(self, hostname: str) -> tuple[str, float]:
        url = f"https://{hostname}/.well-known/matrix/server"
        seen = {url}
        for _ in range(WELL_KNOWN_MAX_REDIRECTS + 1):
            response: WellKnownResponse = await self._get(url)
            if response.code not in _REDIRECT_CODES:
                break
            location = response.headers.get("location")
            if not location:
                raise _WellKnownError(f"redirect {response.code} without Location")
            url = urljoin(url, location.strip())
            if urlsplit(url).scheme != "https":
                raise _WellKnownError(f"redirect to non-HTTPS URL {url!r:.200}")
            if url in seen:
                raise _WellKnownError(f"redirect loop at {url!r:.200}")
            seen.add(url)
        else:
            raise _WellKnownError("too many redirects")
        if response.code != 200:
            raise _WellKnownError(f"HTTP {response.code}")
        # "servers parsing the response should assume that the body is JSON regardless of
        # type"
        try:
            body = parse_json(response.body)
        except CanonicalJSONError as e:
            raise _WellKnownError(f"body is not JSON: {e}") from None
        if type(body) is not dict:
            raise _WellKnownError("body is not a JSON object")
        delegated = body.get("m.server")
        if type(delegated) is not str:
            raise _WellKnownError("no m.server string")
        try:
            parse_server_name(delegated)
        except InvalidServerName as e:
            raise _WellKnownError(f"m.server is not a server name: {e}") from None
        return delegated, self._cache_period(response.headers)

    def _cache_period(self, headers: Mapping[str, str]) -> float:
        period = _header_cache_period(headers, self._clock.seconds())
        if period is None:
            period = WELL_KNOWN_DEFAULT_CACHE
        return max(WELL_KNOWN_MIN_CACHE, min(WELL_KNOWN_MAX_CACHE, period))

    # -- SRV ------------------------------------------------------------------------------------

    async def _srv_targets(self, hostname: str) -> tuple[tuple[tuple[str, int], ...] | None, float]:
        expires_at = _INFINITY
        for service in SRV_SERVICES:
            targets, service_expires = await self._lookup_srv(service + hostname)
            expires_at = min(expires_at, service_expires)
            if targets:
                return targets, expires_at
        return None, expires_at

    async def _lookup_srv(self, name: str) -> tuple[tuple[tuple[str, int], ...] | None, float]:
        now = self._clock.seconds()
        cached = self._srv_cache.get(name)
        if cached is not None and cached[1] > now:
            return cached
        try:
            answers, _authority, _additional = await self._with_timeout(self._srv.lookupService(name))
        except Exception as e:
            # NXDOMAIN and friends mean "no SRV record"; other failures (timeouts, SERVFAIL)
            # are treated alike but remembered for less time.
            negative = isinstance(e, (DNSNameError, DomainError))
            if not negative:
                log.info("SRV lookup for {name} failed: {error!r}", name=name, error=e)
            period = SRV_NEGATIVE_CACHE if negative else SRV_ERROR_CACHE
            result: tuple[Any, float] = (None, self._clock.seconds() + period)
        else:
            records = [a for a in answers if a.type == dns.SRV]
            targets = self._order_srv(records)
            if targets:
                ttl = min(a.ttl for a in records)
                period = max(SRV_MIN_CACHE, min(SRV_MAX_CACHE, float(ttl)))
            else:
                period = SRV_NEGATIVE_CACHE
            result = (targets or None, self._clock.seconds() + period)
        self._remember(self._srv_cache, name, result)
        return result

    def _order_srv(self, records: list[Any]) -> tuple[tuple[str, int], ...]:
        """Order SRV records as RFC 2782 says: by priority, then weighted random."""
        by_priority: dict[int, list[Any]] = {}
        for rr in records:
            payload = rr.payload
            target = payload.target.name.decode("ascii", "replace").rstrip(".")
            # A lone "." target means the service is decidedly not available here; we
            # treat it as no record.
            if not target or payload.port == 0:
                continue
            by_priority.setdefault(payload.priority, []).append((payload.weight, target, payload.port))
        ordered: list[tuple[str, int]] = []
        for priority in sorted(by_priority):
            group = sorted(by_priority[priority], key=lambda r: r[0])  # zero weights first
            while group:
                total = sum(w for w, _, _ in group)
                pick = self._rng.randint(0, total)
                running = 0
                for i, (w, target, port) in enumerate(group):
                    running += w
                    if running >= pick:
                        ordered.append((target, port))
                        del group[i]
                        break
        return tuple(ordered)

    # -- helpers --------------------------------------------------------------------------------

    def _with_timeout(self, d: Any) -> defer.Deferred:
        if not isinstance(d, defer.Deferred):
            d = defer.Deferred.fromCoroutine(d)
        return d.addTimeout(self._timeout, self._reactor)

    def _remember(self, cache: dict, key: str, value: Any) -> None:
        cache.pop(key, None)
        cache[key] = value
        if len(cache) > self._max_entries:
            now = self._clock.seconds()
            for k in [k for k, v in cache.items() if _expiry(v) <= now]:
                del cache[k]
            while len(cache) > self._max_entries:
                del cache[next(iter(cache))]


def _expiry(value: Any) -> float:
    if isinstance(value, _WellKnownEntry):
        # Keep failure counts around for back-off unless we are out of room.
        return value.expires_at if not value.failures else _INFINITY
    return value[1]


class _WellKnownError(Exception):
    """The well-known response is missing or invalid (skip to step 4)."""


def _header_cache_period(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds a response may be cached per ``Cache-Control`` (preferred) or ``Expires``;
    ``None`` when neither says."""
    cache_control = headers.get("cache-control")
    if cache_control:
        for directive in cache_control.split(","):
            directive = directive.strip().lower()
            if directive in ("no-store", "no-cache"):
                return 0.0
            if directive.startswith("max-age="):
                value = directive[8:].strip().strip('"')
                if value.isdigit():
                    return float(value)
    expires = headers.get("expires")
    if expires:
        try:
            when = parsedate_to_datetime(expires)
        except (TypeError, ValueError, IndexError):
            return 0.0  # an invalid Expires means "already expired" (RFC 7234 5.3)
        if when.tzinfo is None:
            return 0.0
        return max(0.0, when.timestamp() - now)
    return None
