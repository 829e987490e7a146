"""Opening outbound federation connections: address policy, TLS for the expected name."""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from typing import Any, Iterable

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import (
    IHostnameResolver,
    IOpenSSLClientConnectionCreator,
    IProtocolFactory,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.internet.ssl import Certificate, CertificateOptions, optionsForClientTLS, platformTrust
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

# Ranges the ipaddress module (3.11) does not already count as non-global, whose addresses
# embed an IPv4 address that must be checked in its turn.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


class AddressNotAllowed(ConnectError):
    """The target resolves to an address federation must not reach (private, loopback,
    link-local, multicast, reserved...)."""


def is_private_address(ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``ip`` is not a public unicast address: private, loopback, link-local,
    unspecified, multicast, shared (100.64/10), documentation, reserved, deprecated IPv6
    site-local, and IPv6 forms that embed one of those (IPv4-mapped, 6to4, NAT64).

    :param ip: an address string or object; an unparseable string counts as private.
    """
    try:
        addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    except ValueError:
        return True
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = addr.ipv4_mapped or addr.sixtofour
        if embedded is None and addr in _NAT64:
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if embedded is not None:
            return is_private_address(embedded)
        if addr in _NAT64_LOCAL or addr.is_site_local:
            return True
    return not addr.is_global or addr.is_multicast


class FederationTLSPolicy:
    """Builds TLS client connection creators for the name a certificate must be valid for.

    With ``verify`` (the default) the certificate must chain to ``trust_root`` (the
    platform's trust store unless given) and be valid for the expected name: a DNS name
    (sent as SNI), or an IP address (checked against IP SANs, no SNI sent; server-server API,
    "TLS"). Without ``verify`` nothing is checked (SNI is still sent): an explicit option for
    loopback test peers only.

    :param verify: verify certificates.
    :param trust_root: a :class:`twisted.internet.ssl.Certificate` (or any
        ``IOpenSSLTrustRoot``) to trust instead of the platform's store.
    """

    _MAX_CACHED = 1024

    def __init__(self, *, verify: bool = True, trust_root: Any = None) -> None:
        self.verify = verify
        self._trust_root = trust_root
        self._creators: OrderedDict[str, IOpenSSLClientConnectionCreator] = OrderedDict()
        self._unverified_options = None if verify else CertificateOptions(verify=False)

    def creator_for(self, server_name: str) -> IOpenSSLClientConnectionCreator:
        """The connection creator for a peer whose certificate must be valid for
        ``server_name`` (hostname or IP address, no brackets, no port).

        :returns: an ``IOpenSSLClientConnectionCreator``, cached per name.
        """
        creator = self._creators.get(server_name)
        if creator is not None:
            self._creators.move_to_end(server_name)
            return creator
        if self.verify:
            trust = self._trust_root if self._trust_root is not None else platformTrust()
            creator = optionsForClientTLS(server_name, trustRoot=trust)
        else:
            creator = _UnverifiedCreator(self._unverified_options, server_name)
        self._creators[server_name] = creator
        if len(self._creators) > self._MAX_CACHED:
            self._creators.popitem(last=False)
        return creator

    @classmethod
    def trusting_pem(cls, pem: bytes) -> "FederationTLSPolicy":
        """A verifying policy that trusts only the CA certificate ``pem`` (tests, private
        federations)."""
        return cls(verify=True, trust_root=Certificate.loadPEM(pem))


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedCreator:
    """TLS without certificate checks, still sending SNI for DNS names."""

    def __init__(self, options: Any, server_name: str) -> None:
        self._options = options
        self._sni = None if _is_ip(server_name) else server_name.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self._options.getContext(), None)
        conn.set_app_data(tlsProtocol)
        if self._sni is not None:
            conn.set_tlsext_host_name(self._sni)
        conn.set_connect_state()
        return conn


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@implementer(IResolutionReceiver)
class _Collector:
    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.done: defer.Deferred = defer.Deferred()

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        if isinstance(address, (IPv4Address, IPv6Address)) and address.host not in self.addresses:
            self.addresses.append(address.host)

    def resolutionComplete(self) -> None:
        self.done.callback(self.addresses)


class FederationConnector:
    """Opens TLS connections to federation targets (hosts from server discovery).

    A hostname is resolved with AAAA/A records through ``name_resolver``; if *any* resolved
    address is private (see :func:`is_private_address`) the target is refused, so a name
    cannot mix a public and an internal address, unless ``allow_private_addresses`` (for
    loopback tests). The addresses are tried in turn, each with ``connect_timeout``.

    :param reactor: provides TCP connections and ``callLater``.
    :param tls_policy: a :class:`FederationTLSPolicy`.
    :param allow_private_addresses: permit private, loopback and link-local targets.
    :param name_resolver: an ``IHostnameResolver``; defaults to ``reactor.nameResolver``.
    :param connect_timeout: seconds allowed for each TCP connection attempt.
    """

    def __init__(
        self,
        reactor: Any,
        tls_policy: FederationTLSPolicy,
        *,
        allow_private_addresses: bool = False,
        name_resolver: IHostnameResolver | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self._reactor = reactor
        self.tls_policy = tls_policy
        self.allow_private_addresses = allow_private_addresses
        self._name_resolver = name_resolver
        self._connect_timeout = connect_timeout

    def resolve_addresses(self, host: str) -> defer.Deferred:
        """Resolve ``host`` (a hostname or IP literal) to the addresses we may connect to.

        :returns: Deferred firing with a non-empty list of IP address strings.
        :raises AddressNotAllowed: (through the Deferred) if an address is not allowed.
        :raises DNSLookupError: (through the Deferred) if the name has no addresses.
        """
        if _is_ip(host):
            d = defer.succeed([host])
        else:
            resolver = self._name_resolver or self._reactor.nameResolver
            collector = _Collector()
            resolver.resolveHostName(collector, host, 0)
            d = collector.done
        return d.addCallback(self._check_addresses, host)

    def _check_addresses(self, addresses: list[str], host: str) -> list[str]:
        if not addresses:
            raise DNSLookupError(f"{host} has no AAAA or A records")
        if not self.allow_private_addresses:
            bad = [a for a in addresses if is_private_address(a)]
            if bad:
                raise AddressNotAllowed(string=f"refusing to connect to {host}: private address {bad[0]}")
        return addresses

    def endpoint(self, host: str, port: int, tls_server_name: str) -> IStreamClientEndpoint:
        """An endpoint connecting to ``host:port`` with TLS for ``tls_server_name``."""
        return _TargetEndpoint(self, host, port, tls_server_name)

    def connect(
        self, host: str, port: int, tls_server_name: str, factory: IProtocolFactory
    ) -> defer.Deferred:
        """Connect ``factory`` to ``host:port`` over TLS valid for ``tls_server_name``.

        :returns: Deferred firing with the connected protocol once TCP is up (the TLS
            handshake, and with it verification, completes before any request bytes are
            sent).
        """
        return defer.Deferred.fromCoroutine(self._connect(host, port, tls_server_name, factory))

    async def _connect(self, host: str, port: int, tls_server_name: str, factory: IProtocolFactory) -> Any:
        addresses = await self.resolve_addresses(host)
        creator = self.tls_policy.creator_for(tls_server_name)
        last: Exception | None = None
        for address in addresses:
            tcp_class = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
            tcp = tcp_class(self._reactor, address, port, timeout=self._connect_timeout)
            try:
                return await wrapClientTLS(creator, tcp).connect(factory)
            except defer.CancelledError:
                raise
            except Exception as e:
                log.debug(
                    "Connecting to {host} ({address}) port {port} failed: {error!r}",
                    host=host,
                    address=address,
                    port=port,
                    error=e,
                )
                last = e
        assert last is not None
        raise last


@implementer(IStreamClientEndpoint)
class _TargetEndpoint:
    def __init__(self, connector: FederationConnector, host: str, port: int, tls_server_name: str) -> None:
        self._connector = connector
        self._host = host
        self._port = port
        self._tls_server_name = tls_server_name

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred:
        return self._connector.connect(self._host, self._port, self._tls_server_name, protocolFactory)


def first_error(errors: Iterable[Exception]) -> Exception | None:
    """The most telling of several connection errors: a refused address beats anything else,
    else the first one."""
    errors = list(errors)
    for e in errors:
        if isinstance(e, AddressNotAllowed):
            return e
    return errors[0] if errors else None
