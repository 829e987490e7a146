"""Base twisted.web machinery: JSON routing resources, Matrix error rendering, body size caps."""

from __future__ import annotations

import inspect
import io
from typing import Any, Awaitable, Callable, Iterable, Mapping

import canonicaljson
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from fedserver import __version__
from fedserver.events.canonical import CanonicalJSONError, parse_json
from fedserver.http.connections import ConnectionLimits, build_channel
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
from fedserver.storage.interface import StorageUnavailableError

log = Logger()

#: What a handler may return (directly, as a Deferred or from a coroutine):
#: a JSON-able value (status 200), ``bytes`` that are already-encoded JSON (200),
#: ``None`` (200 ``{}``), or a ``(status, value_or_bytes)`` tuple.
HandlerResult = Any
Handler = Callable[..., "HandlerResult | Awaitable[HandlerResult] | defer.Deferred[HandlerResult]"]

#: Default cap on request bodies: 200 events of the spec's 65536-byte maximum (12.5 MiB).
#: A federation transaction holds at most 50 PDUs (<= 3.2 MiB) and 100 EDUs; nothing a peer
#: legitimately sends comes near this.
DEFAULT_MAX_REQUEST_BODY_SIZE = 200 * 65536

SERVER_HEADER = f"fedserver/{__version__}".encode()

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


def _send_result(result: HandlerResult, request: IRequest) -> None:
    code = 200
    if type(result) is tuple:
        if len(result) != 2 or type(result[0]) is not int:
            raise TypeError(f"handler returned a bad (code, body) tuple: {result!r:.100}")
        code, result = result
    if result is None:
        result = b"{}"
    respond_json(request, code, result)


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
            if not route.raw_body and _has_body(request):
                read_json_body(request)  # cached for the handler
        except MatrixError as e:
            respond_error(request, e)
            return server.NOT_DONE_YET
        run_handler(route.handler, request, params)
        return server.NOT_DONE_YET


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

    def _site_option(self, name: str, default: Any) -> Any:
        site = getattr(self.channel, "site", None)
        return getattr(site, name, default)

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
        if self._site_option("cors", False):
            for k, v in CORS_HEADERS:
                self.setHeader(k, v)
            if self.method == b"OPTIONS":
                # CORS preflight: answer for any path, before routing.
                self.site = self.channel.site
                respond_bytes(self, 200, b"{}")
                return
        super().process()

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            self.setHeader(b"Server", SERVER_HEADER)
        super().write(data)

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

    def acceptableProtocols(self) -> list[bytes]:
        """HTTP/1.1 only, even where Twisted could speak HTTP/2: the deadlines of
        :class:`~fedserver.http.connections.MatrixChannel` are per HTTP/1.1 request."""
        return [b"http/1.1"]


def iter_routes(res: JsonResource) -> Iterable[tuple[str, str]]:
    """:returns: ``(method, template)`` of every route of ``res`` (for docs and tests)."""
    for bucket in res._routes.values():
        for r in bucket:
            yield r.method.decode(), r.template


__all__ = [
    "CORS_HEADERS",
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
