"""``/preview_url``: Open Graph data of a web page, fetched only where the operator allows.

Off unless ``url_preview_enabled``. Fetching a URL a user names makes the server a proxy
into its own network, so every connection (the first and each redirect) goes to an
address checked against ``url_preview_ip_blocklist`` (loopback, private, link-local and
reserved ranges by default) unless ``url_preview_ip_allowlist`` names it, and the
connection is made to that checked address (no second DNS answer can swap it). Pages
are read up to ``url_preview_max_size`` within ``url_preview_timeout`` seconds and parsed
with the standard library's HTML parser. ``og:image`` is not fetched: the spec wants an
``mxc://`` there, so image fields are left out.
"""

from __future__ import annotations

import ipaddress
from html.parser import HTMLParser
from typing import Any, Optional
from urllib.parse import urljoin, urlsplit

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IResolutionReceiver
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.web.client import Agent, URI
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from fedserver.errors import MatrixError, M_TOO_LARGE, M_UNKNOWN, forbidden, invalid_param
from fedserver.federation.client import USER_AGENT, ResponseTooLarge, read_body

log = Logger()

#: Redirects followed (each to a checked address).
MAX_REDIRECTS = 3
#: Longest URL accepted.
MAX_URL_LENGTH = 2048
#: Previews kept in memory, and for how long.
CACHE_ENTRIES = 1000
CACHE_SECONDS = 3600
#: Longest value kept of a property.
MAX_VALUE_LENGTH = 1000


class BlockedAddress(Exception):
    """The URL's host resolves to an address previews may not reach."""


def is_allowed(address: str, blocklist: list, allowlist: list) -> bool:
    """Whether previews may connect to ``address``: in the allowlist, or in no blocked
    network (IPv4-mapped IPv6 addresses are checked as IPv4)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    candidates = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates.append(ip.ipv4_mapped)
    if any(c in net for c in candidates for net in allowlist if c.version == net.version):
        return True
    return not any(c in net for c in candidates for net in blocklist if c.version == net.version)


class OpenGraphParser(HTMLParser):
    """Collects ``og:*`` meta properties, the ``<title>`` and the description meta."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.og: dict[str, str] = {}
        self.title: Optional[str] = None
        self.description: Optional[str] = None
        self._in_title = False
        self._title_parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        if tag == "meta":
            a = {k.lower(): (v or "") for k, v in attrs}
            key = a.get("property") or a.get("name") or ""
            content = a.get("content")
            if content is None:
                return
            key = key.lower()
            if key.startswith("og:") and key not in self.og:
                self.og[key] = content[:MAX_VALUE_LENGTH]
            elif key == "description" and self.description is None:
                self.description = content[:MAX_VALUE_LENGTH]
        elif tag == "title" and self.title is None:
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self._in_title:
            self._in_title = False
            self.title = " ".join("".join(self._title_parts).split())[:MAX_VALUE_LENGTH]

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self._title_parts.append(data)


def parse_open_graph(html: bytes, charset: Optional[str] = None) -> dict[str, Any]:
    """The preview of an HTML page: its ``og:*`` properties, with ``og:title`` and
    ``og:description`` from ``<title>`` and the description meta when missing. Image
    properties are dropped (see the module docstring)."""
    try:
        text = html.decode(charset or "utf-8", errors="replace")
    except LookupError:
        text = html.decode("utf-8", errors="replace")
    parser = OpenGraphParser()
    try:
        parser.feed(text)
        parser.close()
    except Exception:  # the parser is lenient; anything it still raises means "no data"
        pass
    result: dict[str, Any] = {k: v for k, v in parser.og.items() if not k.startswith("og:image")}
    if "og:title" not in result and parser.title:
        result["og:title"] = parser.title
    if "og:description" not in result and parser.description:
        result["og:description"] = parser.description
    return result


@implementer(IResolutionReceiver)
class _Addresses:
    def __init__(self) -> None:
        self.found: list[str] = []
        self.done: defer.Deferred = defer.Deferred()

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        if isinstance(address, (IPv4Address, IPv6Address)):
            self.found.append(address.host)

    def resolutionComplete(self) -> None:
        self.done.callback(self.found)


@implementer(IAgentEndpointFactory)
class _CheckedEndpoints:
    """Endpoints that resolve the URL's host, refuse blocked addresses and connect to the
    first allowed one."""

    def __init__(self, reactor: Any, blocklist: list, allowlist: list, connect_timeout: float) -> None:
        self._reactor = reactor
        self._blocklist = blocklist
        self._allowlist = allowlist
        self._timeout = connect_timeout

    def endpointForURI(self, uri: URI) -> Any:
        return _CheckedEndpoint(self, uri)

    async def connect(self, uri: URI, factory: Any) -> Any:
        host = uri.host.decode("ascii").strip("[]")
        try:
            ipaddress.ip_address(host)
            addresses = [host]
        except ValueError:
            collector = _Addresses()
            self._reactor.nameResolver.resolveHostName(collector, host, 0)
            addresses = await collector.done
        if not addresses:
            raise DNSLookupError(host)
        for address in addresses:
            if not is_allowed(address, self._blocklist, self._allowlist):
                # One blocked address refuses the name: it could be made to pick that one.
                raise BlockedAddress(f"{host} resolves to a blocked address")
        address = addresses[0]
        cls = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
        endpoint: Any = cls(self._reactor, address, uri.port, timeout=self._timeout)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
        return await endpoint.connect(factory)


class _CheckedEndpoint:
    def __init__(self, factory: _CheckedEndpoints, uri: URI) -> None:
        self._factory = factory
        self._uri = uri

    def connect(self, protocol_factory: Any) -> defer.Deferred:
        return defer.ensureDeferred(self._factory.connect(self._uri, protocol_factory))


class UrlPreviewer:
    """Answers ``/preview_url``.

    :param reactor: clock, name resolution, TCP.
    :param blocklist: networks never connected to.
    :param allowlist: networks allowed even if blocked.
    :param max_size: largest page read, in bytes.
    :param timeout: seconds for one preview (redirects included).
    """

    def __init__(self, reactor: Any, *, blocklist: list, allowlist: list, max_size: int, timeout: float) -> None:
        self._reactor = reactor
        self._max_size = max_size
        self._timeout = timeout
        endpoints = _CheckedEndpoints(reactor, blocklist, allowlist, timeout)
        self._agent = Agent.usingEndpointFactory(reactor, endpoints)
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}

    async def preview(self, url: str, ts: Optional[int] = None) -> dict[str, Any]:
        """The Open Graph data of ``url`` (``ts`` is accepted and ignored: we keep no
        history of pages).

        :raises MatrixError: 400 for a URL that is not http(s), 403 ``M_FORBIDDEN`` for a
            blocked address, 502 when the page cannot be had or is too large.
        """
        if len(url) > MAX_URL_LENGTH or not url.isascii():
            raise invalid_param("url", "URL too long or not ASCII")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise invalid_param("url", "Only http and https URLs can be previewed")
        now = self._reactor.seconds()
        cached = self._cache.get(url)
        if cached is not None and cached[0] > now:
            return cached[1]
        d = defer.ensureDeferred(self._fetch(url))
        d.addTimeout(self._timeout, self._reactor)
        try:
            result = await d
        except BlockedAddress as e:
            raise forbidden(f"Cannot preview this URL: {e}") from None
        except ResponseTooLarge:
            raise MatrixError(502, M_TOO_LARGE, "The page is too large to preview") from None
        except MatrixError:
            raise
        except Exception as e:
            log.info("Preview of {url} failed: {e!r}", url=url[:200], e=e)
            raise MatrixError(502, M_UNKNOWN, "Could not fetch the page to preview") from None
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache.clear()
        self._cache[url] = (now + CACHE_SECONDS, result)
        return result

    async def _fetch(self, url: str) -> dict[str, Any]:
        for _ in range(MAX_REDIRECTS + 1):
            headers = Headers({b"User-Agent": [USER_AGENT], b"Accept": [b"text/html, */*;q=0.5"]})
            response = await self._agent.request(b"GET", url.encode("ascii"), headers)
            if response.code in (301, 302, 303, 307, 308):
                location = (response.headers.getRawHeaders(b"Location") or [b""])[0].decode("latin-1")
                response.deliverBody(_Drop())
                url = urljoin(url, location)
                if urlsplit(url).scheme not in ("http", "https") or not url.isascii():
                    raise MatrixError(502, M_UNKNOWN, "The page redirects somewhere we do not follow")
                continue
            if not 200 <= response.code < 300:
                response.deliverBody(_Drop())
                raise MatrixError(502, M_UNKNOWN, f"The page answered {response.code}")
            ctype = (response.headers.getRawHeaders(b"Content-Type") or [b""])[0].decode("latin-1").lower()
            if "html" not in ctype:
                response.deliverBody(_Drop())
                return {}
            body = await read_body(response, self._max_size)
            charset = None
            if "charset=" in ctype:
                charset = ctype.split("charset=", 1)[1].split(";", 1)[0].strip().strip('"') or None
            return parse_open_graph(body, charset)
        raise MatrixError(502, M_UNKNOWN, "Too many redirects")


class _Drop:
    def makeConnection(self, transport: Any) -> None:
        transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        pass


def build_url_previewer(reactor: Any, uploader: Any, config: Any) -> UrlPreviewer:
    """A :class:`UrlPreviewer` from the ``url_preview_*`` options."""
    block = [ipaddress.ip_network(n, strict=False) for n in config.url_preview_ip_blocklist]
    allow = [ipaddress.ip_network(n, strict=False) for n in config.url_preview_ip_allowlist]
    return UrlPreviewer(reactor, blocklist=block, allowlist=allow, max_size=config.url_preview_max_size,
                        timeout=config.url_preview_timeout)


__all__ = ["BlockedAddress", "UrlPreviewer", "build_url_previewer", "is_allowed", "parse_open_graph"]

