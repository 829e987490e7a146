"""Outbound HTTP to push gateways (Push Gateway API ``POST /_matrix/push/v1/notify``)."""

# Pusher URLs come from users, so a request must not become a way into the operator's
# network: the host's addresses are checked like federation targets (private, loopback
# and link-local refused unless the operator allows them), certificates are verified for
# https, the answer is capped at 64 KiB and each request has a timeout.

from __future__ import annotations

import json
from typing import Any, Optional
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import Agent, HTTPConnectionPool, URI
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from fedserver.events.canonical import CanonicalJSONError, parse_json
from fedserver.federation.client import USER_AGENT, _BytesProducer, read_body
from fedserver.federation.tls import FederationConnector, FederationTLSPolicy

#: Largest gateway answer read.
MAX_RESPONSE = 65536


@implementer(IStreamClientEndpoint)
class _PlainEndpoint:
    """Plain TCP to ``host:port`` after the connector's address policy."""

    def __init__(self, reactor: Any, connector: FederationConnector, host: str, port: int, timeout: float) -> None:
        self._reactor = reactor
        self._connector = connector
        self._host = host
        self._port = port
        self._timeout = timeout

    def connect(self, protocolFactory: Any) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, factory: Any) -> Any:
        addresses = await self._connector.resolve_addresses(self._host)
        last: Optional[Exception] = None
        for address in addresses:
            cls = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
            try:
                return await cls(self._reactor, address, self._port, timeout=self._timeout).connect(factory)
            except defer.CancelledError:
                raise
            except Exception as e:
                last = e
        assert last is not None
        raise last


@implementer(IAgentEndpointFactory)
class _GatewayEndpoints:
    def __init__(self, reactor: Any, connector: FederationConnector, allow_http: bool, timeout: float) -> None:
        self._reactor = reactor
        self._connector = connector
        self._allow_http = allow_http
        self._timeout = timeout

    def endpointForURI(self, uri: URI) -> Any:
        host = uri.host.decode("ascii")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if uri.scheme == b"https":
            return self._connector.endpoint(host, uri.port, host)
        if uri.scheme == b"http" and self._allow_http:
            return _PlainEndpoint(self._reactor, self._connector, host, uri.port, self._timeout)
        raise ValueError(f"refusing push gateway URL scheme {uri.scheme!r}")


class PushGatewayClient:
    """Posts notifications to push gateways.

    :param reactor: the reactor.
    :param allow_http: allow ``http://`` gateways (``push_gateway_allow_http``).
    :param allow_private_addresses: allow gateways on private, loopback and link-local
        addresses (``push_gateway_allow_private_addresses``).
    :param timeout: seconds per request.
    :param tls_policy: certificate checks for https (verifying by default).
    """

    def __init__(
        self, reactor: Any, *, allow_http: bool = False, allow_private_addresses: bool = False,
        timeout: float = 30.0, tls_policy: Optional[FederationTLSPolicy] = None,
    ) -> None:
        self._reactor = reactor
        self._timeout = timeout
        connector = FederationConnector(
            reactor, tls_policy or FederationTLSPolicy(verify=True), allow_private_addresses=allow_private_addresses,
            connect_timeout=min(timeout, 10.0),
        )
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 4
        self._agent = Agent.usingEndpointFactory(
            reactor, _GatewayEndpoints(reactor, connector, allow_http, min(timeout, 10.0)), pool=self._pool
        )

    def post_json(self, url: str, body: dict[str, Any]) -> defer.Deferred:
        """POST ``body`` to ``url``.

        :returns: Deferred firing with ``(status, parsed JSON or None)``; failing on
            network errors, timeouts and refused addresses.
        """
        return defer.Deferred.fromCoroutine(self._post(url, body))

    async def _post(self, url: str, body: dict[str, Any]) -> tuple[int, Any]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError("not an http(s) URL")
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = Headers({b"User-Agent": [USER_AGENT], b"Content-Type": [b"application/json"]})
        d = self._agent.request(b"POST", url.encode("ascii"), headers, _BytesProducer(data))
        d.addTimeout(self._timeout, self._reactor)
        response = await d
        read = read_body(response, MAX_RESPONSE)
        read.addTimeout(self._timeout, self._reactor)
        raw = await read
        try:
            parsed = parse_json(raw) if raw else None
        except CanonicalJSONError:
            parsed = None
        return response.code, parsed

    def close(self) -> defer.Deferred:
        """Close pooled connections."""
        return self._pool.closeCachedConnections()


__all__ = ["PushGatewayClient"]
