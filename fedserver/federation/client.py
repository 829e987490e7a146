"""The outbound federation client: X-Matrix-signed JSON requests to other servers over treq."""

from __future__ import annotations

import hashlib
import random
from http.cookiejar import CookiePolicy
from typing import Any, Mapping
from urllib.parse import quote

from OpenSSL import SSL
from service_identity import VerificationError
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet import defer
from twisted.internet.error import ConnectError, ConnectingCancelledError, DNSLookupError
from twisted.internet.interfaces import IConsumer, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, URI
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from fedserver import __version__
from fedserver.events.canonical import CanonicalJSONError, parse_json
from fedserver.federation.json_stream import StreamedJSONError, StreamedObjectParser
from fedserver.federation.discovery import ServerNameResolver, WellKnownResponse
from fedserver.federation.tls import AddressNotAllowed, FederationConnector, FederationTLSPolicy, first_error
from fedserver.federation.xmatrix import InvalidServerName, SigningKey, encode_request_body, sign_request_bytes

log = Logger()

#: Cap on a response body: large room state (a 20,000-member room's ``send_join``) runs to
#: tens of MiB.
DEFAULT_MAX_RESPONSE_SIZE = 50 * 1024 * 1024
#: Cap on a well-known response body.
WELL_KNOWN_MAX_SIZE = 64 * 1024

USER_AGENT = f"fedserver/{__version__}".encode("ascii")

#: Pseudo-scheme of the URLs handed from the client to :class:`MatrixFederationAgent`.
SCHEME = b"matrix-federation"


# -- errors -------------------------------------------------------------------------------------


class FederationClientError(Exception):
    """Base class of everything a federation request can fail with."""


class HttpResponseError(FederationClientError):
    """The server answered with a non-2xx status.

    :ivar code: the HTTP status.
    :ivar errcode: the Matrix ``errcode`` if the body was a Matrix error, else ``None``.
    :ivar error: the Matrix ``error`` message if any, else ``None``.
    :ivar body: the raw (size-capped) body.
    :ivar json: the parsed body if it was a JSON object, else ``None`` (e.g. ``room_version``
        of ``M_INCOMPATIBLE_ROOM_VERSION``).
    """

    def __init__(self, code: int, errcode: str | None, error: str | None, body: bytes, json: Any = None) -> None:
        super().__init__(f"HTTP {code} {errcode or ''}: {error or body[:200]!r}")
        self.code = code
        self.errcode = errcode
        self.error = error
        self.body = body
        self.json = json


class RequestTimedOut(FederationClientError):
    """The request (connecting, sending and reading the whole response) took too long."""


class FederationUnreachable(FederationClientError):
    """No response could be had: invalid server name, DNS, refused address, connection or TLS
    failure.

    :ivar reason: what went wrong, for logs.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TLSVerificationFailed(FederationUnreachable):
    """The server's certificate is not valid for the name it must be valid for."""


class InvalidResponse(FederationClientError):
    """A 2xx response whose body is not acceptable JSON."""


class ResponseTooLarge(FederationClientError):
    """The response body exceeded the size cap; the connection was dropped."""


class BodyConsumerError(FederationClientError):
    """The ``write`` or ``on_response`` callable of a streaming request raised; the
    connection was dropped.

    :ivar cause: the exception it raised.
    """

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"consumer refused the body: {cause!r:.200}")
        self.cause = cause


# -- bodies -------------------------------------------------------------------------------------


class _CappedReader(Protocol):
    def __init__(self, max_size: int, finished: defer.Deferred) -> None:
        self._max = max_size
        self._finished = finished
        self._chunks: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        if self._finished.called:
            return
        self._size += len(data)
        if self._size > self._max:
            self._chunks = []
            self._finished.errback(ResponseTooLarge(f"response body exceeds {self._max} bytes"))
            self.transport.stopProducing()
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._finished.called:
            return
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback(b"".join(self._chunks))
        else:
            self._finished.errback(reason)


def read_body(response: IResponse, max_size: int) -> defer.Deferred:
    """Read a response body, refusing it (and dropping the connection) past ``max_size``.

    :returns: Deferred firing with the body bytes; cancelling it drops the connection.
    :raises ResponseTooLarge: (through the Deferred) if the body is too large.
    """
    if response.length is not UNKNOWN_LENGTH and response.length > max_size:
        response.deliverBody(_Discard())
        return defer.fail(ResponseTooLarge(f"response body of {response.length} bytes exceeds {max_size}"))
    reader: _CappedReader

    def cancel(d: defer.Deferred) -> None:
        if reader.transport is not None:
            reader.transport.stopProducing()

    finished: defer.Deferred = defer.Deferred(cancel)
    reader = _CappedReader(max_size, finished)
    response.deliverBody(reader)
    return finished


class _StreamingReader(Protocol):
    """Hands each chunk of a body to ``write``, refusing it past ``max_size``."""

    def __init__(self, write: Any, max_size: int, finished: defer.Deferred) -> None:
        self._write = write
        self._max = max_size
        self._finished = finished
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self._finished.called:
            return
        self.size += len(data)
        if self.size > self._max:
            self._finished.errback(ResponseTooLarge(f"response body exceeds {self._max} bytes"))
            self.transport.stopProducing()
            return
        try:
            self._write(data)
        except Exception as e:
            self._finished.errback(BodyConsumerError(e))
            self.transport.stopProducing()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._finished.called:
            return
        if reason is None or reason.check(ResponseDone):
            self._finished.callback(self.size)
        elif reason.check(PotentialDataLoss):
            # No Content-Length and the connection closed: the body may be cut short.
            self._finished.callback(self.size)
        else:
            self._finished.errback(reason)


def stream_body(response: IResponse, write: Any, max_size: int) -> defer.Deferred:
    """Deliver a response body chunk by chunk to ``write(bytes)``, refusing it (and
    dropping the connection) past ``max_size``.

    :returns: Deferred firing with the number of bytes delivered; cancelling it drops the
        connection.
    :raises ResponseTooLarge: (through the Deferred) past the cap; an exception raised by
        ``write`` fails the Deferred and drops the connection too.
    """
    if response.length is not UNKNOWN_LENGTH and response.length > max_size:
        response.deliverBody(_Discard())
        return defer.fail(ResponseTooLarge(f"response body of {response.length} bytes exceeds {max_size}"))
    reader: _StreamingReader

    def cancel(d: defer.Deferred) -> None:
        if reader.transport is not None:
            reader.transport.stopProducing()

    finished: defer.Deferred = defer.Deferred(cancel)
    reader = _StreamingReader(write, max_size, finished)
    response.deliverBody(reader)
    return finished


class StreamedResponse:
    """The head of a response whose body went to a ``write`` callable.

    :ivar code: the HTTP status.
    :ivar headers: the response's ``twisted.web.http_headers.Headers``.
    :ivar size: bytes of body delivered (0 for redirects, whose body is dropped).
    """

    def __init__(self, code: int, headers: Headers, size: int) -> None:
        self.code = code
        self.headers = headers
        self.size = size

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (latin-1 decoded), or ``None``."""
        values = self.headers.getRawHeaders(name.encode("ascii"))
        return values[0].decode("latin-1") if values else None


class _ConsumerFailed(Exception):
    """A streamed answer's consumer failed: its failure goes to the caller as it is."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.getErrorMessage())
        self.failure = failure


class _ItemStreamReader(Protocol):
    """Feeds a response body to a :class:`StreamedObjectParser` as it arrives and hands
    each batch of items to ``on_batch`` in order; while ``on_batch``'s Deferred has not
    fired, the connection is paused (so a slow consumer bounds what is held in memory)."""

    def __init__(
        self, parser: StreamedObjectParser, on_batch: Any, max_size: int, finished: defer.Deferred
    ) -> None:
        self._parser = parser
        self._on_batch = on_batch
        self._max = max_size
        self._finished = finished
        self._size = 0
        self._queue: list[tuple[str, list]] = []
        self._busy = False
        self._paused = False
        self._ended = False
        self._top: Any = None
        self.size = 0

    def _fail(self, failure: Any) -> None:
        if not self._finished.called:
            self._finished.errback(failure)
        self._queue = []
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._finished.called:
            return
        self._size += len(data)
        self.size = self._size
        if self._size > self._max:
            self._fail(Failure(ResponseTooLarge(f"response body exceeds {self._max} bytes")))
            return
        try:
            self._queue.extend(self._parser.feed(data))
        except StreamedJSONError as e:
            self._fail(Failure(InvalidResponse(f"invalid JSON in a streamed answer: {e}")))
            return
        self._pump()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._finished.called:
            return
        if reason is not None and not reason.check(ResponseDone, PotentialDataLoss):
            self._fail(reason)
            return
        try:
            last, self._top = self._parser.close()
        except StreamedJSONError as e:
            self._fail(Failure(InvalidResponse(f"invalid JSON in a streamed answer: {e}")))
            return
        self._queue.extend(last)
        self._ended = True
        self._pump()

    def _pump(self) -> None:
        while self._queue and not self._busy and not self._finished.called:
            key, items = self._queue.pop(0)
            try:
                result = self._on_batch(key, items)
            except Exception:
                self._fail(Failure(_ConsumerFailed(Failure())))
                return
            if isinstance(result, defer.Deferred) and not result.called:
                self._busy = True
                if not self._paused and not self._ended and self.transport is not None:
                    self._paused = True
                    self.transport.pauseProducing()
                result.addCallbacks(self._batch_done, lambda f: self._fail(Failure(_ConsumerFailed(f))))
                return
            if isinstance(result, defer.Deferred):
                failures: list = []
                result.addErrback(failures.append)
                if failures:
                    self._fail(Failure(_ConsumerFailed(failures[0])))
                    return
        if self._busy or self._finished.called:
            return
        if self._ended:
            self._finished.callback(self._top)
        elif self._paused and self.transport is not None:
            self._paused = False
            self.transport.resumeProducing()

    def _batch_done(self, _: Any) -> None:
        self._busy = False
        self._pump()


class _Discard(Protocol):
    def connectionMade(self) -> None:
        self.transport.stopProducing()


@implementer(IBodyProducer)
class _BytesProducer:
    """Writes a request body in one go (no cooperator, hence no global reactor)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> defer.Deferred:
        consumer.write(self._data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _NoCookies(CookiePolicy):
    """Federation carries no cookies: none are stored, none are sent."""

    netscape = True
    rfc2965 = False
    hide_cookie2 = True

    def set_ok(self, cookie: Any, request: Any) -> bool:
        return False

    def return_ok(self, cookie: Any, request: Any) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: Any) -> bool:
        return False

    def path_return_ok(self, path: str, request: Any) -> bool:
        return False


# -- the agent ----------------------------------------------------------------------------------


@implementer(IAgent)
class MatrixFederationAgent:
    """An ``IAgent`` for ``matrix-federation://`` URLs made by :meth:`uri_for`.

    Each request's destination is resolved with server discovery; the ``Host`` header is
    set to what discovery says, and the connection goes to the discovered targets in turn
    over TLS valid for the discovered name (through the ``connector``). Connections are
    pooled per destination.

    The URL's host is a token standing for the destination, because server names (IPv6
    literals, names of up to 255 characters) do not survive URL handling as hosts; the
    agent keeps one token per destination it was ever asked for.

    :param reactor: the reactor.
    :param resolver: a :class:`ServerNameResolver` (anything with ``resolve(name)``).
    :param connector: a :class:`FederationConnector`.
    :param pool: an ``HTTPConnectionPool``; one is made if not given.
    """

    def __init__(
        self,
        reactor: Any,
        resolver: Any,
        connector: FederationConnector,
        *,
        pool: HTTPConnectionPool | None = None,
    ) -> None:
        self._resolver = resolver
        self._connector = connector
        if pool is None:
            pool = HTTPConnectionPool(reactor, persistent=True)
            pool.maxPersistentPerHost = 10
        self.pool = pool
        self._destinations: dict[bytes, str] = {}
        self._agent = Agent.usingEndpointFactory(reactor, _DestinationEndpointFactory(self), pool=pool)

    def uri_for(self, destination: str, path_and_query: str) -> bytes:
        """The URL to request ``path_and_query`` (as it goes on the wire) from ``destination``."""
        token = b"d" + hashlib.blake2b(destination.encode("utf-8"), digest_size=16).hexdigest().encode("ascii")
        self._destinations[token] = destination
        return SCHEME + b"://" + token + path_and_query.encode("ascii")

    def destination_for(self, token: bytes) -> str:
        """The destination behind a URL host made by :meth:`uri_for`.

        :raises ValueError: for a host this agent did not make.
        """
        try:
            return self._destinations[token]
        except KeyError:
            raise ValueError(f"not a URL made by uri_for: {token!r}") from None

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> defer.Deferred:
        """Send a request (``IAgent``).

        :returns: Deferred firing with the ``IResponse``.
        """
        return defer.Deferred.fromCoroutine(self._request(method, uri, headers, bodyProducer))

    async def _request(
        self, method: bytes, uri: bytes, headers: Headers | None, bodyProducer: IBodyProducer | None
    ) -> IResponse:
        parsed = URI.fromBytes(uri)
        if parsed.scheme != SCHEME:
            raise ValueError(f"not a {SCHEME.decode()} URL: {uri[:100]!r}")
        destination = self.destination_for(parsed.host)
        resolved = await self._resolver.resolve(destination)
        headers = headers.copy() if headers is not None else Headers()
        headers.setRawHeaders(b"Host", [resolved.host_header.encode("ascii")])
        return await self._agent.request(method, uri, headers, bodyProducer)

    def close(self) -> defer.Deferred:
        """Close pooled connections."""
        return self.pool.closeCachedConnections()


@implementer(IAgentEndpointFactory)
class _DestinationEndpointFactory:
    def __init__(self, agent: MatrixFederationAgent) -> None:
        self._agent = agent

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        destination = self._agent.destination_for(uri.host)
        return _DestinationEndpoint(self._agent._resolver, self._agent._connector, destination)


@implementer(IStreamClientEndpoint)
class _DestinationEndpoint:
    def __init__(self, resolver: Any, connector: FederationConnector, destination: str) -> None:
        self._resolver = resolver
        self._connector = connector
        self._destination = destination

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, protocolFactory: IProtocolFactory) -> Any:
        resolved = await self._resolver.resolve(self._destination)
        errors: list[Exception] = []
        for host, port in resolved.targets:
            try:
                return await self._connector.connect(host, port, resolved.tls_server_name, protocolFactory)
            except defer.CancelledError:
                raise
            except Exception as e:
                errors.append(e)
        raise first_error(errors) or ConnectError(string=f"no targets for {self._destination}")


@implementer(IAgentEndpointFactory)
class _HTTPSAgentEndpoints:
    """Endpoint factory for plain ``https://`` URLs (well-known), with the same address and
    TLS policy as federation connections."""

    def __init__(self, connector: FederationConnector) -> None:
        self._connector = connector

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        if uri.scheme != b"https":
            raise ValueError(f"refusing non-HTTPS URL {uri.toBytes()[:100]!r}")
        host = uri.host.decode("ascii")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return self._connector.endpoint(host, uri.port, host)


def make_https_agent(
    reactor: Any, connector: FederationConnector, *, pool: HTTPConnectionPool | None = None
) -> IAgent:
    """An ``IAgent`` for plain ``https://`` URLs (well-known fetches) connecting through
    ``connector``: same address refusal, certificate checked for the URL's host."""
    return Agent.usingEndpointFactory(reactor, _HTTPSAgentEndpoints(connector), pool=pool)


def make_well_known_getter(
    agent: IAgent, *, max_size: int = WELL_KNOWN_MAX_SIZE
) -> Any:
    """A :data:`fedserver.federation.discovery.WellKnownGetter` over ``agent`` (which must
    verify TLS for the URL's host and refuse private addresses as policy says).

    :param max_size: cap on the body; a larger body fails the fetch.
    """

    async def get(url: str) -> WellKnownResponse:
        headers = Headers({b"User-Agent": [USER_AGENT]})
        response = await agent.request(b"GET", url.encode("ascii"), headers, None)
        body = await read_body(response, max_size)
        flat = {
            name.decode("latin-1").lower(): values[0].decode("latin-1")
            for name, values in response.headers.getAllRawHeaders()
            if values
        }
        return WellKnownResponse(response.code, flat, body)

    return lambda url: defer.Deferred.fromCoroutine(get(url))


# -- paths --------------------------------------------------------------------------------------


def fed_path(template: str, *segments: str) -> str:
    """Build a request path, percent-encoding each segment completely.

    ``fed_path("/_matrix/federation/v1/make_join/{}/{}", room_id, user_id)``

    :param template: the path with ``{}`` for each segment.
    """
    return template.format(*(quote(s, safe="") for s in segments))


def _query_string(args: Mapping[str, Any]) -> str:
    parts = []
    for key, value in args.items():
        values = value if isinstance(value, (list, tuple)) else (value,)
        for v in values:
            if isinstance(v, bool):
                v = "true" if v else "false"
            parts.append(f"{quote(str(key), safe='')}={quote(str(v), safe='')}")
    return "&".join(parts)


_PATH_FORBIDDEN = frozenset(" ?#\"<>\\^`{|}")


def _check_path(path: str) -> None:
    if not path.startswith("/") or not path.isascii() or not path.isprintable() or _PATH_FORBIDDEN & set(path):
        raise ValueError(f"request path must be percent-encoded and start with '/': {path[:200]!r}")


# -- the client ---------------------------------------------------------------------------------


class FederationClient:
    """Makes JSON requests to other homeservers, signed with X-Matrix.

    Every request is signed over method, URI (path and query as sent), origin, destination
    and body (server-server API, "Request Authentication"), has a timeout covering connect,
    send and the whole response, and a response size cap. It is logged with its status and
    duration.

    :param reactor: the reactor (TCP, ``callLater``, ``seconds``).
    :param server_name: our server name, the ``origin``.
    :param signing_key: our ed25519 signing key (see :class:`fedserver.federation.xmatrix.SigningKey`).
    :param resolver: a :class:`ServerNameResolver`.
    :param verify_tls: verify certificates (default). ``False`` is for loopback test peers.
    :param allow_private_addresses: permit private/loopback/link-local targets (tests).
    :param timeout: default seconds per request.
    :param tls_policy: a :class:`FederationTLSPolicy`, overriding ``verify_tls``.
    :param agent: a :class:`MatrixFederationAgent`-like ``IAgent`` with ``uri_for``; built
        from the above if not given.
    :param max_response_size: default cap on response bodies, bytes.
    :param name_resolver: ``IHostnameResolver`` for AAAA/A lookups (default: the reactor's).
    :param connect_timeout: seconds per TCP connection attempt.
    :param max_concurrent_per_destination: requests in flight to one destination at once
        (each needs a connection); more wait their turn, within their timeout.
    """

    def __init__(
        self,
        reactor: Any,
        server_name: str,
        signing_key: SigningKey,
        resolver: Any,
        *,
        verify_tls: bool = True,
        allow_private_addresses: bool = False,
        timeout: float = 60.0,
        tls_policy: FederationTLSPolicy | None = None,
        agent: Any = None,
        max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE,
        name_resolver: Any = None,
        connect_timeout: float = 10.0,
        max_concurrent_per_destination: int = 10,
        https_agent: Any = None,
    ) -> None:
        self._reactor = reactor
        self.server_name = server_name
        self._max_concurrent = max_concurrent_per_destination
        self._limits: dict[str, defer.DeferredSemaphore] = {}
        self._signing_key = signing_key
        self.resolver = resolver
        self._timeout = timeout
        self._max_size = max_response_size
        if agent is None:
            connector = FederationConnector(
                reactor,
                tls_policy or FederationTLSPolicy(verify=verify_tls),
                allow_private_addresses=allow_private_addresses,
                name_resolver=name_resolver,
                connect_timeout=connect_timeout,
            )
            pool = HTTPConnectionPool(reactor, persistent=True)
            pool.maxPersistentPerHost = max_concurrent_per_destination
            agent = MatrixFederationAgent(reactor, resolver, connector, pool=pool)
            if https_agent is None:
                https_agent = make_https_agent(reactor, connector, pool=pool)
        self.agent = agent
        #: plain ``https://`` URLs under the same address and TLS policy (media redirects).
        self.https_agent = https_agent
        self._http = HTTPClient(
            agent, cookiejar=IndexableCookieJar(policy=_NoCookies()), data_to_body_producer=_BytesProducer
        )

    def get_json(
        self,
        destination: str,
        path: str,
        args: Mapping[str, Any] | None = None,
        *,
        sign: bool = True,
        timeout: float | None = None,
        max_size: int | None = None,
    ) -> defer.Deferred:
        """GET ``path`` from ``destination``.

        :param destination: the server name.
        :param path: the percent-encoded path from ``/_matrix/...`` (see :func:`fed_path`).
        :param args: query parameters; a list or tuple value repeats the parameter.
        :param sign: add the X-Matrix header (not needed for key fetches).
        :param timeout: seconds, overriding the default.
        :param max_size: response cap in bytes, overriding the default.
        :returns: Deferred firing with the parsed JSON response.
        :raises FederationClientError: (through the Deferred) :class:`HttpResponseError`,
            :class:`RequestTimedOut`, :class:`FederationUnreachable`,
            :class:`InvalidResponse` or :class:`ResponseTooLarge`.
        """
        return self.request_json("GET", destination, path, args, None, sign=sign, timeout=timeout, max_size=max_size)

    def put_json(
        self,
        destination: str,
        path: str,
        body: Any,
        args: Mapping[str, Any] | None = None,
        *,
        sign: bool = True,
        timeout: float | None = None,
        max_size: int | None = None,
    ) -> defer.Deferred:
        """PUT the JSON ``body`` to ``path`` on ``destination``; see :meth:`get_json`."""
        return self.request_json("PUT", destination, path, args, body, sign=sign, timeout=timeout, max_size=max_size)

    def post_json(
        self,
        destination: str,
        path: str,
        body: Any,
        args: Mapping[str, Any] | None = None,
        *,
        sign: bool = True,
        timeout: float | None = None,
        max_size: int | None = None,
    ) -> defer.Deferred:
        """POST the JSON ``body`` to ``path`` on ``destination``; see :meth:`get_json`."""
        return self.request_json("POST", destination, path, args, body, sign=sign, timeout=timeout, max_size=max_size)

    def request_json_stream(
        self,
        method: str,
        destination: str,
        path: str,
        body: Any,
        on_batch: Any,
        *,
        stream_keys: Any,
        args: Mapping[str, Any] | None = None,
        batch_size: int = 1000,
        timeout: float | None = None,
        max_size: int | None = None,
    ) -> defer.Deferred:
        """A request whose (2xx) answer is a JSON object with large arrays, read as it
        arrives: the items of the top-level arrays ``stream_keys`` go to
        ``on_batch(key, items)`` in batches of ``batch_size`` (a returned Deferred pauses
        reading until it fires), and the rest of the object is the result. The whole body
        is never held (see :class:`~fedserver.federation.json_stream.StreamedObjectParser`).

        :returns: Deferred firing with the object's other members (streamed ones map to
            ``None``).
        :raises FederationClientError: as :meth:`get_json`; :class:`ResponseTooLarge` past
            ``max_size`` bytes, :class:`InvalidResponse` for a body that is not such an
            object; a failure of ``on_batch`` is passed on as it is.
        """
        stream = (frozenset(stream_keys), on_batch, batch_size)
        d = self.request_json(method, destination, path, args, body, timeout=timeout, max_size=max_size,
                              _stream=stream)
        return d.addErrback(lambda f: f.value.failure if f.check(_ConsumerFailed) else f)

    def request_json(
        self,
        method: str,
        destination: str,
        path: str,
        args: Mapping[str, Any] | None = None,
        body: Any = None,
        *,
        sign: bool = True,
        timeout: float | None = None,
        max_size: int | None = None,
        _stream: Any = None,
    ) -> defer.Deferred:
        """Make a request with an optional JSON ``body`` (``None``: no body); see
        :meth:`get_json`.

        :raises ValueError: (through the Deferred) for a path that is not percent-encoded
            or a body that is not JSON.
        """
        try:
            _check_path(path)
            target = path + ("?" + _query_string(args) if args else "")
            canonical = None if body is None else encode_request_body(body)
        except (ValueError, TypeError) as e:
            return defer.fail(ValueError(str(e)))
        timeout = self._timeout if timeout is None else timeout
        max_size = self._max_size if max_size is None else max_size
        start = self._reactor.seconds()
        d = defer.Deferred.fromCoroutine(
            self._send(method, destination, path, target, canonical, sign, max_size, start, _stream)
        )
        # Our own timer rather than addTimeout: cancelling deep in twisted.web surfaces as
        # ResponseNeverReceived / ResponseFailed wrapping the CancelledError.
        timed_out: list[bool] = []

        def on_timeout() -> None:
            timed_out.append(True)
            d.cancel()

        timer = self._reactor.callLater(timeout, on_timeout)

        def stop_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(stop_timer)
        d.addErrback(self._translate_failure, destination, timeout, timed_out)
        d.addErrback(self._log_failure, method, destination, path, start)
        return d

    async def _send(
        self,
        method: str,
        destination: str,
        path: str,
        target: str,
        canonical: bytes | None,
        sign: bool,
        max_size: int,
        start: float,
        stream: Any = None,
    ) -> Any:
        headers = Headers({b"User-Agent": [USER_AGENT]})
        if canonical is not None:
            headers.setRawHeaders(b"Content-Type", [b"application/json"])
        if sign:
            auth = sign_request_bytes(self.server_name, self._signing_key, destination, method, target, canonical)
            headers.setRawHeaders(b"Authorization", [auth.encode("ascii")])
        limit = self._limits.get(destination)
        if limit is None:
            limit = self._limits[destination] = defer.DeferredSemaphore(self._max_concurrent)
        await limit.acquire()
        try:
            response = await self._http.request(
                method,
                self.agent.uri_for(destination, target),
                headers=headers,
                data=canonical,
                allow_redirects=False,
                unbuffered=True,
                reactor=self._reactor,
            )
            if stream is not None and 200 <= response.code < 300:
                keys, on_batch, batch_size = stream
                finished: defer.Deferred = defer.Deferred(lambda d: reader.transport and reader.transport.stopProducing())
                reader = _ItemStreamReader(StreamedObjectParser(keys, batch_size), on_batch, max_size, finished)
                response.deliverBody(reader)
                top = await finished
                log.info(
                    "{method} {destination} {path} -> {code} ({size} bytes, streamed) in {ms:.0f}ms",
                    method=method, destination=destination, path=path, code=response.code, size=reader.size,
                    ms=(self._reactor.seconds() - start) * 1000,
                )
                return top
            body = await read_body(response, max_size)
        finally:
            limit.release()
            if limit.tokens == limit.limit and self._limits.get(destination) is limit:
                del self._limits[destination]
        code = response.code
        log.info(
            "{method} {destination} {path} -> {code} ({size} bytes) in {ms:.0f}ms",
            method=method,
            destination=destination,
            path=path,
            code=code,
            size=len(body),
            ms=(self._reactor.seconds() - start) * 1000,
        )
        if 200 <= code < 300:
            try:
                return parse_json(body)
            except CanonicalJSONError as e:
                raise InvalidResponse(f"{destination} answered {code} with invalid JSON: {e}") from None
        parsed = None
        try:
            parsed = parse_json(body) if body else None
        except CanonicalJSONError:
            pass
        if type(parsed) is dict:
            errcode, error = parsed.get("errcode"), parsed.get("error")
            raise HttpResponseError(
                code,
                errcode if type(errcode) is str else None,
                error if type(error) is str else None,
                body,
                parsed,
            )
        raise HttpResponseError(code, None, None, body)

    def get_streaming(
        self,
        destination: str,
        path: str,
        args: Mapping[str, Any] | None = None,
        *,
        write: Any,
        max_size: int,
        sign: bool = True,
        timeout: float | None = None,
        on_response: Any = None,
    ) -> defer.Deferred:
        """GET ``path`` from ``destination`` and hand a 2xx body to ``write(bytes)`` as it
        arrives (media: multipart or raw bytes, never buffered whole).

        A redirect (3xx) is returned with its headers, its body dropped. Any other status
        is read (capped at 64 KiB) and raised as :class:`HttpResponseError`.

        :param write: called with each chunk of a 2xx body; an exception from it aborts.
        :param on_response: called with ``(code, headers)`` of a 2xx response before its
            body (e.g. to read a multipart boundary); an exception from it aborts.
        :param max_size: the body is cut off past this many bytes (:class:`ResponseTooLarge`).
        :param timeout: seconds for the whole exchange, body included.
        :returns: Deferred firing with a :class:`StreamedResponse` once the body is over.
        :raises FederationClientError: (through the Deferred) as :meth:`get_json`.
        """
        try:
            _check_path(path)
            target = path + ("?" + _query_string(args) if args else "")
        except (ValueError, TypeError) as e:
            return defer.fail(ValueError(str(e)))

        async def send() -> StreamedResponse:
            headers = Headers({b"User-Agent": [USER_AGENT]})
            if sign:
                auth = sign_request_bytes(self.server_name, self._signing_key, destination, "GET", target, None)
                headers.setRawHeaders(b"Authorization", [auth.encode("ascii")])
            limit = self._limits.get(destination)
            if limit is None:
                limit = self._limits[destination] = defer.DeferredSemaphore(self._max_concurrent)
            await limit.acquire()
            try:
                response = await self.agent.request(b"GET", self.agent.uri_for(destination, target), headers, None)
                return await self._stream_response(response, write, max_size, destination, on_response)
            finally:
                limit.release()
                if limit.tokens == limit.limit and self._limits.get(destination) is limit:
                    del self._limits[destination]

        return self._timed(send(), "GET", destination, path, timeout)

    def get_url_streaming(
        self, url: str, *, write: Any, max_size: int, timeout: float | None = None, on_response: Any = None
    ) -> defer.Deferred:
        """GET a plain ``https://`` URL (a media ``Location``), unsigned, through the same
        address and TLS policy as federation; see :meth:`get_streaming`.

        :raises ValueError: (through the Deferred) for a URL that is not ``https://``.
        """
        if self.https_agent is None:
            return defer.fail(FederationUnreachable("no HTTPS agent to follow media redirects"))
        try:
            raw = url.encode("ascii")
        except UnicodeEncodeError:
            return defer.fail(ValueError("redirect URL is not ASCII"))
        if not raw.lower().startswith(b"https://") or len(raw) > 2048:
            return defer.fail(ValueError(f"refusing redirect to {url[:100]!r}: only https URLs are followed"))
        host = URI.fromBytes(raw).host.decode("ascii", "replace")

        async def send() -> StreamedResponse:
            headers = Headers({b"User-Agent": [USER_AGENT]})
            response = await self.https_agent.request(b"GET", raw, headers, None)
            return await self._stream_response(response, write, max_size, host, on_response)

        return self._timed(send(), "GET", host, url[:200], timeout)

    async def _stream_response(
        self, response: IResponse, write: Any, max_size: int, destination: str, on_response: Any = None
    ) -> StreamedResponse:
        code = response.code
        if 200 <= code < 300:
            if on_response is not None:
                try:
                    on_response(code, response.headers)
                except Exception as e:
                    response.deliverBody(_Discard())
                    raise BodyConsumerError(e) from e
            size = await stream_body(response, write, max_size)
            return StreamedResponse(code, response.headers, size)
        if 300 <= code < 400:
            response.deliverBody(_Discard())
            return StreamedResponse(code, response.headers, 0)
        body = await read_body(response, 65536)
        parsed = None
        try:
            parsed = parse_json(body) if body else None
        except CanonicalJSONError:
            pass
        if type(parsed) is dict:
            errcode, error = parsed.get("errcode"), parsed.get("error")
            raise HttpResponseError(
                code, errcode if type(errcode) is str else None, error if type(error) is str else None, body, parsed
            )
        raise HttpResponseError(code, None, None, body)

    def _timed(self, coro: Any, method: str, destination: str, path: str, timeout: float | None) -> defer.Deferred:
        timeout = self._timeout if timeout is None else timeout
        start = self._reactor.seconds()
        d = defer.Deferred.fromCoroutine(coro)
        timed_out: list[bool] = []

        def on_timeout() -> None:
            timed_out.append(True)
            d.cancel()

        timer = self._reactor.callLater(timeout, on_timeout)

        def stop_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        def log_ok(result: Any) -> Any:
            log.info(
                "{method} {destination} {path} -> {code} ({size} bytes, streamed) in {ms:.0f}ms",
                method=method, destination=destination, path=path, code=result.code, size=result.size,
                ms=(self._reactor.seconds() - start) * 1000,
            )
            return result

        d.addBoth(stop_timer)
        d.addCallback(log_ok)
        d.addErrback(self._translate_failure, destination, timeout, timed_out)
        d.addErrback(self._log_failure, method, destination, path, start)
        return d

    def _translate_failure(self, failure: Failure, destination: str, timeout: float, timed_out: list[bool]) -> Failure:
        if failure.check(_ConsumerFailed):
            return failure
        if timed_out:
            raise RequestTimedOut(f"request to {destination} timed out after {timeout}s")
        if failure.check(FederationClientError):
            return failure
        if failure.check(InvalidServerName):
            raise FederationUnreachable(f"invalid server name {destination!r:.300}")
        if failure.check(ValueError):
            return failure
        reasons = _unwrap(failure)
        for reason in reasons:
            if reason.check(SSL.Error, VerificationError):
                raise TLSVerificationFailed(f"TLS with {destination} failed: {_describe(reason)}")
        for reason in reasons:
            if reason.check(AddressNotAllowed):
                raise FederationUnreachable(reason.getErrorMessage())
        if not failure.check(ConnectError, DNSLookupError, ConnectingCancelledError) and not reasons:
            log.failure("Unexpected error from request to {destination}", failure, destination=destination)
        raise FederationUnreachable(f"cannot reach {destination}: {_describe(reasons[0] if reasons else failure)}")

    def _log_failure(self, failure: Failure, method: str, destination: str, path: str, start: float) -> Failure:
        if not failure.check(HttpResponseError, InvalidResponse, _ConsumerFailed):  # logged with their status
            log.info(
                "{method} {destination} {path} -> {error} in {ms:.0f}ms",
                method=method,
                destination=destination,
                path=path,
                error=failure.getErrorMessage()[:300],
                ms=(self._reactor.seconds() - start) * 1000,
            )
        return failure

    def close(self) -> defer.Deferred:
        """Close pooled connections.

        :returns: Deferred firing once they are closed.
        """
        close = getattr(self.agent, "close", None)
        return close() if close is not None else defer.succeed(None)


def _unwrap(failure: Failure) -> list[Failure]:
    """The underlying failures of twisted.web's wrapper exceptions (ResponseNeverReceived,
    ResponseFailed, RequestTransmissionFailed...)."""
    reasons = getattr(failure.value, "reasons", None)
    if reasons:
        out: list[Failure] = []
        for r in reasons:
            out.extend(_unwrap(r) if isinstance(r, Failure) else [])
        return out
    return [failure]


def _describe(failure: Failure) -> str:
    return f"{type(failure.value).__name__}: {failure.getErrorMessage()}"[:300]


def system_dns_resolver(reactor: Any) -> Any:
    """A caching ``twisted.names`` resolver using the system's ``/etc/resolv.conf``, built
    on ``reactor`` (``createResolver`` would use the global reactor).

    :returns: an ``IResolver``.
    """
    from twisted.names import cache, resolve
    from twisted.names.client import Resolver

    return resolve.ResolverChain(
        [cache.CacheResolver(reactor=reactor), Resolver(resolv=b"/etc/resolv.conf", reactor=reactor)]
    )


def build_federation_client(
    reactor: Any,
    server_name: str,
    signing_key: SigningKey,
    *,
    verify_tls: bool = True,
    allow_private_addresses: bool = False,
    tls_policy: FederationTLSPolicy | None = None,
    srv_resolver: Any = None,
    name_resolver: Any = None,
    timeout: float = 60.0,
    max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE,
    connect_timeout: float = 10.0,
    rng: random.Random | None = None,
    max_concurrent_per_destination: int = 10,
) -> FederationClient:
    """Wire a :class:`FederationClient` with server discovery, the well-known fetcher and
    one connection pool, all under the same TLS and address policy.

    :param srv_resolver: ``IResolver`` for SRV records; default
        :func:`system_dns_resolver`.
    :param name_resolver: ``IHostnameResolver`` for AAAA/A records; default the reactor's.
    :returns: the client; its ``resolver`` attribute is the :class:`ServerNameResolver`.
    """
    if srv_resolver is None:
        srv_resolver = system_dns_resolver(reactor)
    connector = FederationConnector(
        reactor,
        tls_policy or FederationTLSPolicy(verify=verify_tls),
        allow_private_addresses=allow_private_addresses,
        name_resolver=name_resolver,
        connect_timeout=connect_timeout,
    )
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = max_concurrent_per_destination
    https_agent = make_https_agent(reactor, connector, pool=pool)
    resolver = ServerNameResolver(reactor, make_well_known_getter(https_agent), srv_resolver, rng=rng)
    agent = MatrixFederationAgent(reactor, resolver, connector, pool=pool)
    return FederationClient(
        reactor,
        server_name,
        signing_key,
        resolver,
        timeout=timeout,
        agent=agent,
        https_agent=https_agent,
        max_response_size=max_response_size,
        max_concurrent_per_destination=max_concurrent_per_destination,
    )
