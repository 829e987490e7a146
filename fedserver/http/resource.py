"""Base twisted.web machinery: JSON routing resources, Matrix error rendering, body size caps."""

from __future__ import annotations

import contextvars
import inspect
import io
import ipaddress
import re
import time
from typing import Any, Awaitable, Callable, Iterable, Mapping

import canonicaljson
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from fedserver import __version__
from fedserver.events.canonical import CanonicalJSONError, parse_json
from fedserver.http.connections import ConnectionLimits, build_channel
from fedserver.logs import REQUEST_ID, new_request_id, valid_request_id
from fedserver.errors import (
    MatrixError,
    bad_json,
    invalid_param,
    missing_param,
    not_json,
    storage_unavailable,
    too_large,
    unknown,
    unrecognized,
)
from fedserver.http.streamed_responses import write_streamed
from fedserver.storage.interface import StorageUnavailableError
from fedserver.streamed import StreamedJSON

log = Logger()
#: The access log (one line per request) and the slow-request warnings.
access_log = Logger(namespace="fedserver.access")

#: What a handler may return (directly, as a Deferred or from a coroutine):
#: a JSON-able value (status 200), ``bytes`` that are already-encoded JSON (200),
#: ``None`` (200 ``{}``), a :class:`~fedserver.streamed.StreamedJSON` (written as it is
#: produced), or a ``(status, value_or_bytes)`` tuple.
HandlerResult = Any
Handler = Callable[..., "HandlerResult | Awaitable[HandlerResult] | defer.Deferred[HandlerResult]"]

#: Default cap on request bodies: 200 events of the spec's 65536-byte maximum (12.5 MiB).
#: A federation transaction holds at most 50 PDUs (<= 3.2 MiB) and 100 EDUs; nothing a peer
#: legitimately sends comes near this.
DEFAULT_MAX_REQUEST_BODY_SIZE = 200 * 65536

SERVER_HEADER = f"fedserver/{__version__}".encode()

#: Requests taking longer than this many seconds are logged as slow (at ``warn``).
DEFAULT_SLOW_REQUEST_THRESHOLD = 10.0

#: CORS headers for the client listener (client-server API "Web Browser Clients").
CORS_HEADERS = (
    (b"Access-Control-Allow-Origin", b"*"),
    (b"Access-Control-Allow-Methods", b"GET, HEAD, POST, PUT, DELETE, OPTIONS"),
    (b"Access-Control-Allow-Headers", b"X-Requested-With, Content-Type, Authorization"),
)

_JSON_BODY_ATTR = "_fedserver_json_body"


class _Missing:
    pass


_MISSING: Any = _Missing()


# -- rendering ------------------------------------------------------------------------------


def encode_json(value: Any) -> bytes:
    """Encode a response value as canonical JSON bytes (sorted keys, compact, UTF-8).

    Uses canonicaljson's C-accelerated encoder directly: responses are not signed here, so
    the slower pure-Python strictness walk of :func:`fedserver.events.canonical.
    encode_canonical_json` is not needed; NaN/Infinity are still refused.

    :raises ValueError: if ``value`` cannot be represented.
    :raises TypeError: if ``value`` holds a non-JSON type.
    """
    return canonicaljson.encode_canonical_json(value)


def respond_bytes(request: IRequest, code: int, body: bytes, content_type: bytes = b"application/json") -> None:
    """Write a complete response and finish ``request``, unless the client has gone away.

    :param request: the request to answer.
    :param code: HTTP status.
    :param body: the encoded body.
    :param content_type: the Content-Type header value.
    """
    if getattr(request, "_disconnected", False) or getattr(request, "finished", False):
        return
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    request.write(body)
    request.finish()


def respond_json(request: IRequest, code: int, value: Any) -> None:
    """Encode ``value`` as JSON and answer ``request`` with it (see :func:`respond_bytes`).

    A value that cannot be encoded becomes a logged 500 ``M_UNKNOWN``.
    """
    try:
        body = value if isinstance(value, bytes) else encode_json(value)
    except (ValueError, TypeError):
        log.failure("Cannot encode response to {method} {uri}", method=request.method, uri=request.uri)
        code, body = 500, encode_json(unknown().to_json())
    respond_bytes(request, code, body)


def respond_error(request: IRequest, error: MatrixError) -> None:
    """Answer ``request`` with the Matrix JSON error body of ``error`` and its status."""
    respond_bytes(request, error.code, encode_json(error.to_json()))


def respond_failure(request: IRequest, failure: Failure) -> None:
    """Answer ``request`` for a failed handler.

    :class:`MatrixError` becomes its own status and body; a storage fault
    (:class:`~fedserver.storage.interface.StorageUnavailableError`) is 503 ``M_UNKNOWN``;
    anything else is logged with its traceback here and answered 500 ``M_UNKNOWN`` with no
    detail for the caller.
    """
    while failure.check(defer.FirstError):  # from a gatherResults in the handler
        failure = failure.value.subFailure
    if failure.check(MatrixError):
        respond_error(request, failure.value)
        return
    if failure.check(StorageUnavailableError):
        # The database logged the fault once for all requests (no traceback: it is not a
        # bug); the client is told to come back later and nothing was acknowledged.
        log.debug("{method} {uri}: 503, {error}", method=getattr(request, "method", b"?"),
                  uri=getattr(request, "uri", b"?"), error=failure.value)
        respond_error(request, storage_unavailable(failure.value.kind))
        return
    log.failure(
        "Unhandled error answering {method} {uri}",
        failure=failure,
        method=getattr(request, "method", b"?"),
        uri=getattr(request, "uri", b"?"),
    )
    respond_error(request, unknown())


def _send_result(result: HandlerResult, request: IRequest) -> Any:
    code = 200
    if type(result) is tuple:
        if len(result) != 2 or type(result[0]) is not int:
            raise TypeError(f"handler returned a bad (code, body) tuple: {result!r:.100}")
        code, result = result
    if result is None:
        result = b"{}"
    if isinstance(result, StreamedJSON):
        return defer.ensureDeferred(write_streamed(request, code, result))
    respond_json(request, code, result)
    return None


def _call_handler(handler: Handler, request: IRequest, params: Mapping[str, str]) -> Any:
    result = handler(request, **params)
    if inspect.iscoroutine(result):
        return defer.ensureDeferred(result)
    return result


def run_handler(handler: Handler, request: IRequest, params: Mapping[str, str] | None = None) -> defer.Deferred:
    """Call ``handler(request, **params)`` and answer ``request`` with its result or error.

    The handler may return a value, a Deferred, or be a coroutine function.

    :returns: a Deferred that fires (with ``None``) once the response is written; it never
        fails.
    """
    d = defer.maybeDeferred(_call_handler, handler, request, params or {})
    d.addCallback(_send_result, request)
    d.addErrback(lambda f: respond_failure(request, f))
    d.addErrback(log.failure, "Failed to write an error response")
    return d


# -- request helpers ----------------------------------------------------------------------------


def read_json_body(request: IRequest) -> Any:
    """Parse the request body as JSON (UTF-8, no NaN/Infinity, bounded depth); cached per request.

    :returns: the parsed value, of any JSON type.
    :raises MatrixError: 400 ``M_NOT_JSON`` if the body is empty or not acceptable JSON.
    """
    cached = getattr(request, _JSON_BODY_ATTR, _MISSING)
    if cached is not _MISSING:
        return cached
    content = request.content
    if content is None:
        raise not_json("Request has no body")
    content.seek(0)
    data = content.read()
    if not data:
        raise not_json("Request body is empty")
    try:
        value = parse_json(data)
    except CanonicalJSONError as e:
        raise not_json(f"Content not JSON: {e}") from None
    setattr(request, _JSON_BODY_ATTR, value)
    return value


def _has_body(request: IRequest) -> bool:
    content = getattr(request, "content", None)
    if content is None:
        return False
    content.seek(0)
    empty = not content.read(1)
    content.seek(0)
    return not empty


def read_json_object(request: IRequest) -> dict[str, Any]:
    """Parse the request body as a JSON object.

    :returns: the parsed dict.
    :raises MatrixError: 400 ``M_NOT_JSON`` for unparseable bodies, 400 ``M_BAD_JSON`` if the
        JSON is not an object.
    """
    value = read_json_body(request)
    if type(value) is not dict:
        raise bad_json("Request body must be a JSON object")
    return value



def read_json_object_or_empty(request: IRequest) -> dict[str, Any]:
    """:func:`read_json_object`, or ``{}`` when the body is empty (``POST /logout``,
    ``DELETE /devices/...``, admin deletions are often sent without one)."""
    return read_json_object(request) if _has_body(request) else {}

def query_string(request: IRequest, name: str, default: Any = _MISSING) -> str:
    """Return the single query parameter ``name`` decoded as UTF-8 (first one if repeated).

    :param default: returned when absent; without it the parameter is required.
    :raises MatrixError: 400 ``M_MISSING_PARAM`` if required and absent, 400
        ``M_INVALID_PARAM`` if not UTF-8.
    """
    values = (request.args or {}).get(name.encode("ascii"))
    if not values:
        if default is _MISSING:
            raise missing_param(name)
        return default
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise invalid_param(name, f"Query parameter {name} is not UTF-8") from None


def query_bool(request: IRequest, name: str) -> bool:
    """The boolean query parameter ``name``: ``true`` or ``false`` (absent: false).

    :raises MatrixError: 400 ``M_INVALID_PARAM`` for any other value.
    """
    value = query_string(request, name, None)
    if value is None:
        return False
    if value not in ("true", "false"):
        raise invalid_param(name, f"Query parameter {name} must be true or false")
    return value == "true"


def query_strings(request: IRequest, name: str) -> list[str]:
    """Return every value of a repeated query parameter (e.g. ``ver`` on make_join).

    :raises MatrixError: 400 ``M_INVALID_PARAM`` if a value is not UTF-8.
    """
    try:
        return [v.decode("utf-8") for v in (request.args or {}).get(name.encode("ascii"), ())]
    except UnicodeDecodeError:
        raise invalid_param(name, f"Query parameter {name} is not UTF-8") from None


def query_int(
    request: IRequest, name: str, default: Any = _MISSING, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """Return the integer query parameter ``name``, clamped to [minimum, maximum].

    :raises MatrixError: 400 ``M_MISSING_PARAM`` / ``M_INVALID_PARAM``.
    """
    raw = query_string(request, name, None)
    if raw is None:
        if default is _MISSING:
            raise missing_param(name)
        return default
    if not raw or len(raw) > 20 or not (raw.isascii() and raw.lstrip("-").isdigit()):
        raise invalid_param(name, f"Query parameter {name} must be an integer")
    value = int(raw)
    if minimum is not None and value < minimum:
        value = minimum
    if maximum is not None and value > maximum:
        value = maximum
    return value


# -- routing resources --------------------------------------------------------------------------


class _Route:
    __slots__ = ("method", "segments", "handler", "template", "raw_body")

    def __init__(self, method: bytes, template: str, handler: Handler, raw_body: bool = False) -> None:
        self.method = method
        self.template = template
        self.handler = handler
        self.raw_body = raw_body
        parts = template.strip("/").split("/") if template.strip("/") else []
        segs: list[tuple[bool, str | bytes]] = []
        for p in parts:
            if p.startswith("{") and p.endswith("}"):
                segs.append((True, p[1:-1]))
            else:
                segs.append((False, p.encode("utf-8")))
        self.segments = tuple(segs)

    def match(self, postpath: list[bytes]) -> dict[str, str] | None:
        params: dict[str, str] = {}
        for (is_param, seg), got in zip(self.segments, postpath):
            if is_param:
                try:
                    params[seg] = got.decode("utf-8")  # type: ignore[index]
                except UnicodeDecodeError:
                    raise invalid_param(str(seg), f"Path parameter {seg} is not UTF-8") from None
            elif seg != got:
                return None
        return params


class JsonResource(resource.Resource):
    """A leaf resource routing ``(method, path below the mount point)`` to handler functions.

    Templates are relative to where the resource is mounted, with ``{name}`` for a path
    parameter (passed percent-decoded, as ``str``, by keyword)::

        r = JsonResource()
        r.add_route("PUT", "/send/{txn_id}", on_send)   # on_send(request, txn_id=...)
        r.add_route("GET", "", on_root)                 # the mount point itself

    Handlers take ``request`` first and return what :data:`HandlerResult` describes,
    possibly through a Deferred or as a coroutine function. ``HEAD`` falls back to ``GET``.
    Unknown paths answer 404 ``M_UNRECOGNIZED``, known paths with another method 405.

    A non-empty request body is parsed (strictly, :func:`read_json_body`) before the
    handler runs, even by handlers that would ignore it: a body no two parsers read alike
    is answered 400 ``M_NOT_JSON`` on every route, never acted on. Routes whose bodies are
    not JSON (uploads) opt out with ``raw_body=True``.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self._routes: dict[int, list[_Route]] = {}

    def add_route(self, method: str, template: str, handler: Handler, *, raw_body: bool = False) -> None:
        """Register ``handler`` for ``method`` on ``template``.

        :param raw_body: the body is not JSON; the handler reads it itself.
        :raises ValueError: if the same method and template are registered twice.
        """
        route = _Route(method.upper().encode("ascii"), template, handler, raw_body)
        bucket = self._routes.setdefault(len(route.segments), [])
        for other in bucket:
            if other.method == route.method and other.segments == route.segments:
                raise ValueError(f"route {method} {template} registered twice")
        bucket.append(route)

    def find_handler(self, method: bytes, postpath: list[bytes]) -> tuple[Handler, dict[str, str]]:
        """Find the handler for a request.

        :returns: ``(handler, path_params)``.
        :raises MatrixError: 404/405 ``M_UNRECOGNIZED``; 400 ``M_INVALID_PARAM`` for a path
            parameter that is not UTF-8.
        """
        route, params = self._find_route(method, postpath)
        return route.handler, params

    def _find_route(self, method: bytes, postpath: list[bytes]) -> tuple[_Route, dict[str, str]]:
        path_matched = False
        get_match = None
        for route in self._routes.get(len(postpath), ()):
            params = route.match(postpath)
            if params is None:
                continue
            path_matched = True
            if route.method == method:
                return route, params
            if method == b"HEAD" and route.method == b"GET":
                get_match = (route, params)
        if get_match is not None:
            return get_match
        if path_matched:
            raise unrecognized("Method not allowed", method_not_allowed=True)
        raise unrecognized()

    def render(self, request: IRequest) -> int:
        postpath = list(request.postpath or ())
        # A request for the mount point with a trailing slash arrives as [b""].
        if postpath == [b""]:
            postpath = []
        try:
            route, params = self._find_route(request.method, postpath)
            # The route's template (never the raw path, whose ids vary) for metrics and logs.
            set_route_label(request, _mount_point(request) + (route.template or ""))
            if not route.raw_body and _has_body(request):
                read_json_body(request)  # cached for the handler
        except MatrixError as e:
            if e.errcode == "M_UNRECOGNIZED":
                set_route_label(request, UNRECOGNIZED_ROUTE)
            respond_error(request, e)
            return server.NOT_DONE_YET
        run_handler(route.handler, request, params)
        return server.NOT_DONE_YET


#: Route label of requests no route matched.
UNRECOGNIZED_ROUTE = "unrecognized"


def _mount_point(request: IRequest) -> str:
    prepath = getattr(request, "prepath", None) or []
    return "/" + "/".join(p.decode("utf-8", "replace") for p in prepath)


def set_route_label(request: IRequest, label: str) -> None:
    """Name the endpoint ``request`` was routed to (a route template such as
    ``/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn_id}``), for metrics and the
    access log. Labels come from code, never from the request, so their number is bounded."""
    try:
        request.route_label = label  # type: ignore[attr-defined]
    except AttributeError:
        pass


class UnrecognizedResource(resource.Resource):
    """Answers every request below it with 404 ``M_UNRECOGNIZED`` as Matrix JSON."""

    isLeaf = True

    def render(self, request: IRequest) -> bytes:
        err = unrecognized()
        request.setResponseCode(err.code)
        request.setHeader(b"Content-Type", b"application/json")
        return encode_json(err.to_json())

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        return self


_UNRECOGNIZED = UnrecognizedResource()


class PathNode(resource.Resource):
    """An inner node of the URL tree: known children, 404 ``M_UNRECOGNIZED`` for the rest."""

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        return _UNRECOGNIZED

    def render(self, request: IRequest) -> bytes:
        return _UNRECOGNIZED.render(request)


def build_tree(mounts: Mapping[str, IResource]) -> PathNode:
    """Build a URL tree with each resource mounted at its absolute path.

    ``{"/_matrix/key/v2/server": keys, "/_matrix/federation/v1": fed}`` gives a root whose
    unknown paths (including ``/`` and unknown prefixes) answer 404 ``M_UNRECOGNIZED``.

    :raises ValueError: if a mount point lies under a leaf resource mounted elsewhere (it
        would be unreachable) or two resources share a path.
    """
    root = PathNode()
    paths = sorted(mounts)
    for i, path in enumerate(paths):
        segments = [s.encode("utf-8") for s in path.strip("/").split("/") if s]
        if not segments:
            raise ValueError("cannot mount a resource at the root; mount it under a prefix")
        for other in paths[:i]:
            o = other.strip("/") + "/"
            if (path.strip("/") + "/").startswith(o) and getattr(mounts[other], "isLeaf", False):
                raise ValueError(f"{path} would be hidden by the leaf resource at {other}")
        node: resource.Resource = root
        for seg in segments[:-1]:
            child = node.children.get(seg)
            if child is None:
                child = PathNode()
                node.putChild(seg, child)
            elif not isinstance(child, PathNode):
                raise ValueError(f"{path} would be hidden by the resource mounted above it")
            node = child
        if segments[-1] in node.children:
            raise ValueError(f"two resources mounted at {path}")
        node.putChild(segments[-1], mounts[path])
    return root


# -- the HTTP server side: requests with body caps, CORS and JSON errors --------------------------


class MatrixRequest(server.Request):
    """A request that caps its body size while reading, answers errors as Matrix JSON and
    adds CORS headers when its site asks for them.

    A body announced (Content-Length) or found (chunked) to exceed the site's
    ``max_request_body_size`` is answered 413 ``M_TOO_LARGE`` and the connection is closed
    without reading or buffering the rest.
    """

    _too_large = False
    _received = 0
    #: This request's id (``X-Request-Id``), set when it is processed.
    request_id: str | None = None
    #: The endpoint it was routed to (see :func:`set_route_label`).
    route_label: str = UNRECOGNIZED_ROUTE
    _started: float | None = None
    _client_address: Any = None
    _logged = False

    def _site_option(self, name: str, default: Any) -> Any:
        site = getattr(self.channel, "site", None)
        return getattr(site, name, default)

    # -- behind a reverse proxy --------------------------------------------------------

    def _peer_is_trusted_proxy(self) -> bool:
        proxies = self._site_option("trusted_proxies", ())
        if not proxies:
            return False
        return _in_networks(getattr(super().getClientAddress(), "host", None), proxies)

    def getClientAddress(self) -> Any:
        """The client's address: the TCP peer, or, when the peer is one of the site's
        ``trusted_proxies``, the address the proxies say the request came from
        (``X-Forwarded-For``, read from the right: the first address that is not a trusted
        proxy; anything unparseable ends the walk). The port of a forwarded address is 0."""
        if self._client_address is None:
            peer = super().getClientAddress()
            self._client_address = peer
            proxies = self._site_option("trusted_proxies", ())
            if proxies and _in_networks(getattr(peer, "host", None), proxies):
                forwarded = forwarded_client(self.requestHeaders.getRawHeaders(b"x-forwarded-for") or [], proxies)
                if forwarded is not None:
                    cls = IPv6Address if ":" in forwarded else IPv4Address
                    self._client_address = cls("TCP", forwarded, 0)
        return self._client_address

    def getClientIP(self) -> str | None:  # older Twisted API, used by some of its code
        host = getattr(self.getClientAddress(), "host", None)
        return host if isinstance(host, str) else None

    def isSecure(self) -> bool:
        """HTTPS to us, or, from a trusted proxy, ``X-Forwarded-Proto: https`` (the proxy
        terminated TLS)."""
        if self._peer_is_trusted_proxy():
            values = self.requestHeaders.getRawHeaders(b"x-forwarded-proto") or []
            if values:
                return values[-1].split(b",")[-1].strip().lower() == b"https"
        return bool(super().isSecure())

    # -- request ids, access log, metrics ----------------------------------------------------

    def _choose_request_id(self) -> str:
        if self._peer_is_trusted_proxy():
            given = self.requestHeaders.getRawHeaders(b"x-request-id") or []
            if len(given) == 1:
                try:
                    value = given[0].decode("ascii").strip()
                except UnicodeDecodeError:
                    value = ""
                if valid_request_id(value):
                    return value
        return new_request_id()

    def _now(self) -> float:
        reactor = getattr(getattr(self.channel, "site", None), "reactor", None)
        seconds = getattr(reactor, "seconds", None)
        return float(seconds()) if seconds is not None else time.time()

    def gotLength(self, length: int | None) -> None:
        limit = self._site_option("max_request_body_size", DEFAULT_MAX_REQUEST_BODY_SIZE)
        if length is not None and length > limit:
            self._reject_too_large(f"Content-Length {length} exceeds the limit of {limit} bytes")
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._too_large:
            return
        self._received += len(data)
        limit = self._site_option("max_request_body_size", DEFAULT_MAX_REQUEST_BODY_SIZE)
        if self._received > limit:
            self._reject_too_large(f"Request body exceeds the limit of {limit} bytes")
            return
        super().handleContentChunk(data)

    def _reject_too_large(self, why: str) -> None:
        """Answer 413 straight onto the transport and stop reading the connection."""
        self._too_large = True
        self.content = io.BytesIO()
        transport = self.channel.transport
        peer = transport.getPeer() if transport is not None else None
        log.warn("Refusing request from {peer}: {why}", peer=peer, why=why)
        body = encode_json(too_large(why).to_json())
        head = [
            b"HTTP/1.1 413 Payload Too Large",
            b"Content-Type: application/json",
            b"Content-Length: %d" % len(body),
            b"Connection: close",
            b"Server: " + SERVER_HEADER,
        ]
        if self._site_option("cors", False):
            head.extend(k + b": " + v for k, v in CORS_HEADERS)
        if transport is not None:
            transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.channel.persistent = False
        self.channel.loseConnection()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._too_large:
            # The rest of an oversized body arrived in the same read; it was never stored.
            return
        super().requestReceived(command, path, version)

    def process(self) -> None:
        """Give the request its id (``X-Request-Id`` response header; a trusted proxy's own
        id is kept) and handle it in a context where :data:`fedserver.logs.REQUEST_ID` is
        that id, so everything logged on its behalf carries it."""
        self._started = self._now()
        self.request_id = self._choose_request_id()
        self.setHeader(b"X-Request-Id", self.request_id.encode("ascii"))
        context = contextvars.copy_context()
        context.run(self._process_in_context)

    def _process_in_context(self) -> None:
        REQUEST_ID.set(self.request_id)
        if self._site_option("cors", False):
            for k, v in CORS_HEADERS:
                self.setHeader(k, v)
            if self.method == b"OPTIONS":
                # CORS preflight: answer for any path, before routing.
                self.site = self.channel.site
                respond_bytes(self, 200, b"{}")
                return
        super().process()

    def render(self, resrc: IResource) -> None:
        # A leaf resource's mount point names it (its prepath is fixed by the code); a
        # JsonResource refines this to its route's template while rendering.
        if isinstance(resrc, (UnrecognizedResource, PathNode)):
            set_route_label(self, UNRECOGNIZED_ROUTE)
        elif getattr(resrc, "isLeaf", False):
            set_route_label(self, _mount_point(self))
        else:
            set_route_label(self, "other")
        super().render(resrc)

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            self.setHeader(b"Server", SERVER_HEADER)
        super().write(data)

    def connectionLost(self, reason: Failure) -> None:
        # The client went away before its answer: logged and counted as status 499.
        if not self.finished and self._started is not None and not self._logged:
            site = getattr(self.channel, "site", None)
            record = getattr(site, "record_request", None)
            if record is not None:
                record(self, 499)
        super().connectionLost(reason)

    def processingFailed(self, reason: Failure) -> None:
        """Log the failure server-side; answer 500 ``M_UNKNOWN`` with no traceback (503
        for a storage fault, see :func:`respond_failure`)."""
        if self.startedWriting or self.finished or self._disconnected:
            log.failure("Unhandled error in resource for {uri}", failure=reason, uri=self.uri)
            if not self.finished and not self._disconnected:
                self.finish()
            return None
        respond_failure(self, reason)
        return None


class MatrixSite(server.Site):
    """A :class:`twisted.web.server.Site` serving :class:`MatrixRequest` over
    :class:`~fedserver.http.connections.MatrixChannel` (deadlines for slow requests).

    :param root: the root resource (see :func:`build_tree`).
    :param max_request_body_size: bodies larger than this many bytes get 413.
    :param cors: add the client-server API's CORS headers and answer OPTIONS preflights.
    :param log_name: a short name for this listener in logs.
    :param limits: the deadlines (a :class:`~fedserver.http.connections.ConnectionLimits`;
        the defaults if ``None``).
    """

    requestFactory = MatrixRequest
    displayTracebacks = False
    protocol = build_channel  # called as a method: build_channel(site)

    def __init__(
        self,
        root: IResource,
        *,
        max_request_body_size: int = DEFAULT_MAX_REQUEST_BODY_SIZE,
        cors: bool = False,
        log_name: str = "http",
        reactor: Any = None,
        limits: ConnectionLimits | None = None,
        trusted_proxies: Iterable[Any] = (),
        slow_request_threshold: float = DEFAULT_SLOW_REQUEST_THRESHOLD,
        access_log: bool = True,
        request_observers: Iterable[Callable[..., Any]] = (),
    ) -> None:
        kwargs = {} if reactor is None else {"reactor": reactor}
        # No TimeoutMixin idle timer (every byte would restart it): MatrixChannel keeps
        # its own deadlines.
        super().__init__(root, timeout=None, **kwargs)
        self.max_request_body_size = max_request_body_size
        self.cors = cors
        self.log_name = log_name
        self.limits = limits or ConnectionLimits()
        self.noisy = False
        self.trusted_proxies = tuple(ipaddress.ip_network(n, strict=False) if isinstance(n, str) else n for n in trusted_proxies)
        self.slow_request_threshold = slow_request_threshold
        self.access_log = access_log
        #: Called as ``observer(listener, method, route, status, seconds)`` once per
        #: answered (or abandoned: status 499) request, e.g. the Prometheus metrics.
        self.request_observers: list[Callable[..., Any]] = list(request_observers)

    def log(self, request: Any) -> None:
        """Called by Twisted when a response is finished: access log line and observers
        (Twisted's own combined-format line, which would show access tokens given as query
        parameters, is replaced)."""
        self.record_request(request, int(getattr(request, "code", 0) or 0))

    def record_request(self, request: Any, status: int) -> None:
        """Log and count one request once: an access log line at ``info`` (or ``warn``
        when it took longer than ``slow_request_threshold``, not counting the ``timeout``
        a long poll asked for), then the ``request_observers``."""
        if getattr(request, "_logged", False):
            return
        try:
            request._logged = True
        except AttributeError:
            pass
        started = getattr(request, "_started", None)
        duration = max(0.0, self.reactor.seconds() - started) if started is not None else 0.0
        method = _method_label(getattr(request, "method", b""))
        route = getattr(request, "route_label", UNRECOGNIZED_ROUTE)
        for observer in self.request_observers:
            try:
                observer(self.log_name, method, route, status, duration)
            except Exception:  # noqa: BLE001 - metrics must never break serving
                log.failure("Request observer failed")
        slow = duration >= self.slow_request_threshold + _long_poll_seconds(request)
        if not (self.access_log or slow):
            return
        client = getattr(request.getClientAddress(), "host", None) or "-"
        requester = getattr(request, "requester", None)
        fields = dict(
            listener=self.log_name, client=client, method=method, path=_loggable_path(request),
            route=route, status=status, duration_ms=round(duration * 1000, 1),
            bytes_sent=int(getattr(request, "sentLength", 0) or 0),
            user_id=getattr(requester, "user_id", None),
            user_agent=_header_text(request, b"user-agent"),
            request_id=getattr(request, "request_id", None),
        )
        if slow:
            access_log.warn(
                "Slow request: {client} {method} {path} {status} took {duration_ms:.0f} ms (threshold {threshold:.0f} s)",
                threshold=self.slow_request_threshold, slow=True, **fields,
            )
        else:
            access_log.info("{client} {method} {path} {status} {duration_ms:.0f} ms", **fields)

    def acceptableProtocols(self) -> list[bytes]:
        """HTTP/1.1 only, even where Twisted could speak HTTP/2: the deadlines of
        :class:`~fedserver.http.connections.MatrixChannel` are per HTTP/1.1 request."""
        return [b"http/1.1"]


_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
_TOKEN_PARAM = re.compile(rb"(?i)(access_token=)[^&]*")


def _method_label(method: Any) -> str:
    text = method.decode("ascii", "replace") if isinstance(method, bytes) else str(method)
    return text if text in _KNOWN_METHODS else "OTHER"


def _loggable_path(request: Any) -> str:
    """The request URI with ``access_token`` query values hidden, at most 1,000 characters."""
    uri = getattr(request, "uri", b"") or b""
    uri = _TOKEN_PARAM.sub(rb"\1<redacted>", uri)
    return uri.decode("utf-8", "replace")[:1000]


def _header_text(request: Any, name: bytes) -> str | None:
    values = request.requestHeaders.getRawHeaders(name) if getattr(request, "requestHeaders", None) else None
    if not values:
        return None
    return values[0].decode("utf-8", "replace")[:200]


def _long_poll_seconds(request: Any) -> float:
    """The ``timeout`` (ms) a long-polling request (``/sync``, ``/events``) asked to wait,
    in seconds (0 if none): the time it waits on purpose is not slowness."""
    values = (getattr(request, "args", None) or {}).get(b"timeout")
    if not values:
        return 0.0
    try:
        return max(0.0, min(float(int(values[0])) / 1000.0, 3600.0))
    except (ValueError, OverflowError):
        return 0.0


def _in_networks(host: Any, networks: Iterable[Any]) -> bool:
    if not isinstance(host, str):
        return False
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


def forwarded_client(values: Iterable[bytes], trusted: Iterable[Any]) -> str | None:
    """The client address of an ``X-Forwarded-For`` chain received from a trusted proxy:
    walking from the right (the hop nearest to us), the first address that is not itself a
    trusted proxy; if every hop is trusted, the leftmost. An entry that is not an IP
    address ends the walk at the last trusted hop (``None`` if that is the peer itself).

    :param values: the raw header values (several headers count as one list).
    :param trusted: the trusted proxies' networks.
    """
    trusted = tuple(trusted)
    hops: list[str] = []
    for value in values:
        for part in value.split(b","):
            hops.append(part.strip().decode("latin-1"))
    found: str | None = None
    for hop in reversed(hops):
        try:
            ip = ipaddress.ip_address(hop.split("%", 1)[0])
        except ValueError:
            break
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        found = str(ip)
        if not any(ip in net for net in trusted):
            break
    return found


def iter_routes(res: JsonResource) -> Iterable[tuple[str, str]]:
    """:returns: ``(method, template)`` of every route of ``res`` (for docs and tests)."""
    for bucket in res._routes.values():
        for r in bucket:
            yield r.method.decode(), r.template


__all__ = [
    "CORS_HEADERS",
    "DEFAULT_SLOW_REQUEST_THRESHOLD",
    "UNRECOGNIZED_ROUTE",
    "forwarded_client",
    "set_route_label",
    "DEFAULT_MAX_REQUEST_BODY_SIZE",
    "JsonResource",
    "MatrixRequest",
    "MatrixSite",
    "PathNode",
    "UnrecognizedResource",
    "build_tree",
    "encode_json",
    "iter_routes",
    "query_int",
    "query_string",
    "query_strings",
    "read_json_body",
    "read_json_object",
    "respond_bytes",
    "respond_error",
    "respond_failure",
    "respond_json",
    "run_handler",
]
