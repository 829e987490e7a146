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

    def _verify(self, prepared: tuple[str, dict[str, Any]]) -> defer.Deferred:
        origin, signed = prepared
        d = defer.maybeDeferred(
            self._keyring.verify_json_for_server, origin, signed, int(self._clock.seconds() * 1000)
        )
        d.addCallbacks(lambda _: self._authenticated(origin), lambda f: self._failed(f, origin))
        return d

    def _prepare(self, request: IRequest, content: Any) -> tuple[str, dict[str, Any]]:
        headers = request.requestHeaders.getRawHeaders(b"Authorization") or []
        xmatrix = [h for h in headers if is_xmatrix_header(h)]
        if not xmatrix:
            # HOSTILE row 1.
            raise unauthorized("Missing X-Matrix Authorization header")
        # Old servers could send one header per signing key; the first one decides.
        try:
            auth = parse_xmatrix_header(xmatrix[0])
        except XMatrixParseError as e:
            # HOSTILE row 2.
            raise unauthorized(f"Invalid X-Matrix Authorization header: {e}") from None
        # "destination" (added in v1.3): accept requests without it; if present it must
        # name us, else 401 (HOSTILE row 3).
        if auth.destination is not None and auth.destination != self._server_name:
            raise unauthorized("X-Matrix destination is not this server")
        try:
            method = request.method.decode("ascii")
            uri = request.uri.decode("ascii")
        except UnicodeDecodeError:
            raise unauthorized("Request target is not ASCII") from None
        body = self._body(request, content)
        signed = request_json_for_verify(method, uri, auth.origin, auth.destination, body, auth.key_id, auth.sig)
        return auth.origin, signed

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
        if failure.check(MatrixError):
            failure.raiseException()
        # KeyVerificationError for a bad signature or an unknown / expired key (HOSTILE
        # row 4). Anything else (keys unreachable, a bug) must still be a clean 401, never
        # a 500 and never an accepted request.
        log.info("X-Matrix signature from {origin} not accepted: {error}", origin=origin, error=failure.value)
        raise unauthorized(f"Invalid X-Matrix signature from {origin}: {failure.getErrorMessage():.200}")
