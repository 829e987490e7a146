"""Authenticating inbound federation requests by their X-Matrix signature."""

from __future__ import annotations

from typing import Any, Callable, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from fedserver.events.canonical import CanonicalJSONError, parse_json
from fedserver.federation.xmatrix import (
    XMatrixParseError,
    is_xmatrix_header,
    parse_xmatrix_header,
    request_json_for_verify,
)
from fedserver.errors import MatrixError, not_json, unauthorized
from fedserver.http.resource import read_json_body
from fedserver.storage.interface import StorageUnavailableError

log = Logger()


class Keyring(Protocol):
    """What authentication needs from ``fedserver.federation.keyring``."""

    def verify_json_for_server(
        self, server_name: str, json_object: dict[str, Any], minimum_valid_until_ts: int
    ) -> defer.Deferred:
        """Fire with anything once ``server_name``'s signature on ``json_object`` verifies
        with a key valid until at least ``minimum_valid_until_ts`` (ms); fail with
        ``KeyVerificationError`` otherwise."""
        ...


_NO_CONTENT: Any = object()

#: Most X-Matrix headers looked at in one request (one per signing key of the origin).
MAX_XMATRIX_HEADERS = 4


class XMatrixAuthenticator:
    """Checks the ``Authorization: X-Matrix`` header of inbound federation requests.

    Follows the server-server API's "Request Authentication" and rows 1-4 of HOSTILE.md:
    every failure is 401 ``M_UNAUTHORIZED`` (a body that is not JSON is 400 ``M_NOT_JSON``).

    :param keyring: verifies signatures with the origin's published keys (see
        :class:`Keyring`).
    :param our_server_name: our server name; a ``destination`` naming anything else is
        refused.
    :param clock: gives the current time (``seconds()``); the signing key must be valid now.

    :ivar on_authenticated: callables ``(origin) -> None`` run after every successful
        authentication (e.g. the outbound sender resets its backoff for that server). Their
        exceptions are logged, never raised to the request.
    """

    def __init__(self, keyring: Keyring, our_server_name: str, clock: IReactorTime) -> None:
        self._keyring = keyring
        self._server_name = our_server_name
        self._clock = clock
        self.on_authenticated: list[Callable[[str], Any]] = []

    def authenticate(self, request: IRequest, content: Any = _NO_CONTENT) -> defer.Deferred:
        """Authenticate ``request``.

        :param request: the twisted.web request; its method, raw URI (``request.uri``, path
            and query exactly as sent) and ``Authorization`` headers are used.
        :param content: the body: raw ``bytes`` (empty means no body), the already-parsed
            JSON value, or ``None`` for no body. If not given, ``request.content`` is parsed
            with :func:`fedserver.http.resource.read_json_body` (cached for the handler).
        :returns: Deferred firing with the origin server name.
        :raises MatrixError: (through the Deferred) 401 ``M_UNAUTHORIZED`` for a missing,
            malformed, misaddressed or unverifiable signature; 400 ``M_NOT_JSON`` for a
            body that is not JSON.
        """
        d = defer.maybeDeferred(self._prepare, request, content)
        d.addCallback(self._verify)
        return d

    def _verify(self, prepared: tuple[str, list[dict[str, Any]]]) -> defer.Deferred:
        origin, signed_objects = prepared
        now_ms = int(self._clock.seconds() * 1000)
        d: defer.Deferred = defer.succeed(None)
        # Every header must verify (one after the other: the first failure decides).
        for signed in signed_objects:
            d.addCallback(
                lambda _, signed=signed: defer.maybeDeferred(
                    self._keyring.verify_json_for_server, origin, signed, now_ms
                )
            )
        d.addCallbacks(lambda _: self._authenticated(origin), lambda f: self._failed(f, origin))
        return d

    def _prepare(self, request: IRequest, content: Any) -> tuple[str, list[dict[str, Any]]]:
        headers = request.requestHeaders.getRawHeaders(b"Authorization") or []
        xmatrix = [h for h in headers if is_xmatrix_header(h)]
        if not xmatrix:
            # HOSTILE row 1.
            raise unauthorized("Missing X-Matrix Authorization header")
        if len(xmatrix) != len(headers):
            # Which scheme would apply is a guess: refuse rather than pick one.
            raise unauthorized("X-Matrix and other Authorization schemes in one request")
        if len(xmatrix) > MAX_XMATRIX_HEADERS:
            raise unauthorized(f"More than {MAX_XMATRIX_HEADERS} X-Matrix Authorization headers")
        # Server-server API, "Request Authentication": a server may send one header per
        # signing key (the spec's example builds one per key). Several headers are
        # accepted only if they all parse, all name the same origin and the same
        # destination, and every one of them verifies: the request must never be taken as
        # coming from one origin while another header names a different one.
        try:
            auths = [parse_xmatrix_header(h) for h in xmatrix]
        except XMatrixParseError as e:
            # HOSTILE row 2.
            raise unauthorized(f"Invalid X-Matrix Authorization header: {e}") from None
        origin, destination = auths[0].origin, auths[0].destination
        if any(a.origin != origin for a in auths):
            raise unauthorized("X-Matrix Authorization headers name different origins")
        if any(a.destination != destination for a in auths):
            raise unauthorized("X-Matrix Authorization headers name different destinations")
        # "destination" (added in v1.3): accept requests without it; if present it must
        # name us, else 401 (HOSTILE row 3).
        if destination is not None and destination != self._server_name:
            raise unauthorized("X-Matrix destination is not this server")
        try:
            method = request.method.decode("ascii")
            uri = request.uri.decode("ascii")
        except UnicodeDecodeError:
            raise unauthorized("Request target is not ASCII") from None
        body = self._body(request, content)
        signed = [
            request_json_for_verify(method, uri, origin, destination, body, a.key_id, a.sig) for a in auths
        ]
        return origin, signed

    @staticmethod
    def _body(request: IRequest, content: Any) -> Any:
        if content is _NO_CONTENT:
            stream = request.content
            if stream is None:
                return None
            stream.seek(0)
            empty = not stream.read(1)
            stream.seek(0)
            # Parsed once and cached on the request for the handler (HOSTILE row 5).
            return None if empty else read_json_body(request)
        if isinstance(content, (bytes, bytearray)):
            if not content:
                return None
            try:
                return parse_json(bytes(content))
            except CanonicalJSONError as e:
                raise not_json(f"Content not JSON: {e}") from None
        return content

    def _authenticated(self, origin: str) -> str:
        for callback in list(self.on_authenticated):
            try:
                callback(origin)
            except Exception:
                log.failure("on_authenticated callback failed for {origin}", origin=origin)
        return origin

    def _failed(self, failure: Any, origin: str) -> None:
        if failure.check(MatrixError, StorageUnavailableError):
            # A database fault while looking up keys is ours, not the peer's: 503.
            failure.raiseException()
        # KeyVerificationError for a bad signature or an unknown / expired key (HOSTILE
        # row 4). Anything else (keys unreachable, a bug) must still be a clean 401, never
        # a 500 and never an accepted request.
        log.info("X-Matrix signature from {origin} not accepted: {error}", origin=origin, error=failure.value)
        raise unauthorized(f"Invalid X-Matrix signature from {origin}: {failure.getErrorMessage():.200}")
