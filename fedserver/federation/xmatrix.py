"""X-Matrix request authentication: the server-name grammar, signing requests, parsing the header."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Protocol

import canonicaljson

from fedserver.events.canonical import encode_canonical_json
from fedserver.events.hashing import unpadded_base64

#: Port used when a server name (or delegated name) gives none (server-server API,
#: "Resolving server names").
DEFAULT_FEDERATION_PORT = 8448

#: The longest X-Matrix header value we look at; real ones are ~200 bytes.
MAX_XMATRIX_HEADER_LENGTH = 4096

_DNS_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.")
_IPV6_CHARS = frozenset("0123456789abcdefABCDEF:.")
_DIGITS = frozenset("0123456789")

# RFC 7230 section 3.2.6: tchar.
_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Unquoted X-Matrix values: tokens, plus colons (server-server API, "Request Authentication":
# "the recipient should allow colons to be included in values without requiring the value
# to be enclosed in quotes").
_UNQUOTED_VALUE_CHARS = _TCHARS | {":"}


class InvalidServerName(ValueError):
    """A string that is not a server name by the appendix's "Server Name" grammar."""


@dataclass(frozen=True, slots=True)
class ServerName:
    """A parsed server name.

    :ivar host: the hostname as written, brackets removed from IPv6 literals.
    :ivar port: the explicit port, or ``None``.
    :ivar ip: the normalised IP address string when ``host`` is an IP literal, else ``None``.
    """

    host: str
    port: int | None
    ip: str | None

    @property
    def is_ip_literal(self) -> bool:
        """Whether the hostname is an IPv4 or IPv6 literal."""
        return self.ip is not None


def parse_server_name(server_name: str) -> ServerName:
    """Parse ``server_name = hostname [ ":" port ]`` (appendix "Server Name").

    The grammar is followed exactly, with three refinements that keep names connectable:
    ports must lie in 1-65535; IPv4 literals must be four numbers 0-255 (as the appendix
    says) and IPv6 literals valid RFC 3513 addresses without zone ids; and a DNS name whose
    last label is all digits is refused, since no top-level domain is numeric (RFC 3696
    section 2) and resolvers would read such a name as a short-form IPv4 address.

    :param server_name: the candidate server name.
    :returns: the parsed :class:`ServerName`.
    :raises InvalidServerName: if it does not match the grammar.
    """
    if type(server_name) is not str or not server_name or not server_name.isascii():
        raise InvalidServerName(f"not a server name: {server_name!r:.300}")
    port: int | None = None
    if server_name[0] == "[":
        end = server_name.find("]")
        if end < 0:
            raise InvalidServerName(f"unterminated IPv6 literal: {server_name!r:.300}")
        host = server_name[1:end]
        rest = server_name[end + 1 :]
        if rest:
            if rest[0] != ":":
                raise InvalidServerName(f"junk after IPv6 literal: {server_name!r:.300}")
            port = _parse_port(rest[1:], server_name)
        # IPv6address = 2*45IPv6char, and it must be an RFC 3513 address.
        if not 2 <= len(host) <= 45 or not _IPV6_CHARS.issuperset(host):
            raise InvalidServerName(f"invalid IPv6 literal: {server_name!r:.300}")
        try:
            ip = ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidServerName(f"invalid IPv6 literal: {server_name!r:.300}") from None
        return ServerName(host, port, str(ip))

    host, colon, port_text = server_name.partition(":")
    if colon:
        port = _parse_port(port_text, server_name)
    # dns-name = 1*255dns-char
    if not 1 <= len(host) <= 255 or not _DNS_CHARS.issuperset(host):
        raise InvalidServerName(f"invalid hostname: {server_name!r:.300}")
    labels = host.rstrip(".").split(".")
    if _DIGITS.issuperset(labels[-1]):
        # IPv4address = 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT, each 0-255.
        parts = host.split(".")
        if len(parts) != 4 or not all(1 <= len(p) <= 3 and _DIGITS.issuperset(p) for p in parts):
            raise InvalidServerName(f"invalid IPv4 literal: {server_name!r:.300}")
        numbers = [int(p) for p in parts]
        if any(n > 255 for n in numbers):
            raise InvalidServerName(f"invalid IPv4 literal: {server_name!r:.300}")
        return ServerName(host, port, ".".join(map(str, numbers)))
    return ServerName(host, port, None)


def _parse_port(text: str, whole: str) -> int:
    # port = 1*5DIGIT, and a port we can connect to.
    if not 1 <= len(text) <= 5 or not _DIGITS.issuperset(text):
        raise InvalidServerName(f"invalid port: {whole!r:.300}")
    port = int(text)
    if not 1 <= port <= 65535:
        raise InvalidServerName(f"port out of range: {whole!r:.300}")
    return port


def is_valid_server_name(server_name: Any) -> bool:
    """Whether ``server_name`` is a server name (appendix "Server Name"; see
    :func:`parse_server_name` for the exact rules)."""
    try:
        parse_server_name(server_name)
    except InvalidServerName:
        return False
    return True


# -- signing ------------------------------------------------------------------------------------


class SigningKey(Protocol):
    """What request signing needs of a key: signedjson's / PyNaCl's ed25519 signing key with
    ``alg`` and ``version`` set (``signedjson.key.generate_signing_key``)."""

    alg: str
    version: str

    def sign(self, message: bytes) -> Any: ...


def request_signing_bytes(
    method: str, uri: str, origin: str, destination: str, canonical_content: bytes | None
) -> bytes:
    """The canonical JSON the X-Matrix signature covers (server-server API, "Request
    Authentication", step 1), built around already-encoded content.

    ``content`` sorts before ``destination``, ``method``, ``origin`` and ``uri``, so the
    encoded body is spliced in first instead of being encoded a second time.

    :param canonical_content: canonical JSON of the request body (see
        :func:`encode_request_body`), or ``None`` if there is no body.
    """
    rest = encode_canonical_json(
        {"method": method, "uri": uri, "origin": origin, "destination": destination}, strict=False
    )
    if canonical_content is None:
        return rest
    return b'{"content":' + canonical_content + b"," + rest[1:]


def encode_request_body(content: Any) -> bytes:
    """Encode a request body as canonical JSON, leniently: floats and integers beyond 2**53
    pass (room v1-5 events carry them and must be relayed as their sender encoded them);
    NaN and infinities do not. This is the encoding the signature covers, and the bytes
    sent.

    :raises ValueError: if ``content`` cannot be encoded.
    """
    try:
        return canonicaljson.encode_canonical_json(content)
    except (TypeError, ValueError) as e:
        raise ValueError(f"request body is not JSON: {e}") from None


def sign_request_bytes(
    server_name: str,
    signing_key: SigningKey,
    destination: str,
    method: str,
    uri: str,
    canonical_content: bytes | None = None,
) -> str:
    """Like :func:`sign_request`, for a body that is already canonical JSON bytes.

    :returns: the ``Authorization`` header value.
    :raises InvalidServerName: if ``server_name`` or ``destination`` is not a server name.
    """
    parse_server_name(server_name)
    parse_server_name(destination)
    message = request_signing_bytes(method, uri, server_name, destination, canonical_content)
    sig = unpadded_base64(signing_key.sign(message).signature)
    key_id = f"{signing_key.alg}:{signing_key.version}"
    # The sender "should only include one space after X-Matrix, only use lower-case names,
    # and avoid using backslashes"; server names, key ids and base64 hold no quote or
    # backslash, so no escaping is needed.
    return f'X-Matrix origin="{server_name}",destination="{destination}",key="{key_id}",sig="{sig}"'


def sign_request(
    server_name: str,
    signing_key: SigningKey,
    destination: str,
    method: str,
    uri: str,
    content: Any = None,
) -> str:
    """Sign a federation request and build its ``Authorization: X-Matrix ...`` header value.

    :param server_name: our server name (the ``origin``).
    :param signing_key: our ed25519 signing key (see :class:`SigningKey`).
    :param destination: the server name of the receiving server, before delegation.
    :param method: the HTTP method, upper case.
    :param uri: the request target exactly as sent: path from ``/_matrix/...`` plus ``?`` and
        the query string if there is one.
    :param content: the parsed JSON body, or ``None`` if there is no body.
    :returns: the header value.
    :raises InvalidServerName: if ``server_name`` or ``destination`` is not a server name.
    """
    canonical = None if content is None else encode_request_body(content)
    return sign_request_bytes(server_name, signing_key, destination, method, uri, canonical)


def request_json_for_verify(
    method: str,
    uri: str,
    origin: str,
    destination: str | None,
    content: Any,
    key_id: str,
    sig: str,
) -> dict[str, Any]:
    """The signed JSON object of an inbound request, for a keyring to verify.

    :param destination: from the header; ``None`` if the header had none (servers before
        spec v1.3), in which case it is left out of the object: the sender signed without
        it.
    :param content: the parsed body, or ``None`` for no body.
    :returns: ``{"method", "uri", "origin", ["destination"], ["content"], "signatures":
        {origin: {key_id: sig}}}``.
    """
    obj: dict[str, Any] = {"method": method, "uri": uri, "origin": origin}
    if destination is not None:
        obj["destination"] = destination
    if content is not None:
        obj["content"] = content
    obj["signatures"] = {origin: {key_id: sig}}
    return obj


# -- parsing ------------------------------------------------------------------------------------


class XMatrixParseError(ValueError):
    """The ``Authorization`` header is not a well-formed X-Matrix header."""


@dataclass(frozen=True, slots=True)
class XMatrixAuth:
    """The parameters of an X-Matrix header.

    :ivar origin: the sending server's name (validated).
    :ivar destination: the receiving server's name (validated), ``None`` if absent.
    :ivar key_id: e.g. ``ed25519:abc``.
    :ivar sig: the unpadded base64 signature, as sent.
    """

    origin: str
    destination: str | None
    key_id: str
    sig: str


def is_xmatrix_header(value: str | bytes) -> bool:
    """Whether an ``Authorization`` header value uses the X-Matrix scheme (case-insensitive,
    RFC 7235 section 2.1)."""
    if isinstance(value, bytes):
        return value[:9].lower() == b"x-matrix " or value[:9].lower() == b"x-matrix\t"
    return value[:9].lower() in ("x-matrix ", "x-matrix\t")


def parse_xmatrix_header(value: str | bytes) -> XMatrixAuth:
    """Parse an ``Authorization: X-Matrix ...`` header value (server-server API, "Request
    Authentication"; RFC 7235 section 2.1 / RFC 7230 section 3.2.6).

    The scheme is case-insensitive and followed by one or more spaces; parameters are
    comma-separated ``name=value`` pairs with optional whitespace around commas and ``=``;
    names are case-insensitive; values are tokens (colons allowed, for older servers) or
    quoted strings with backslash escapes. Unknown parameters are ignored; a repeated
    parameter is refused as ambiguous. ``origin``, ``key`` and ``sig`` are required,
    ``destination`` optional; ``origin`` and ``destination`` must be valid server names.

    :param value: the header value (bytes are decoded as ASCII).
    :returns: the :class:`XMatrixAuth`.
    :raises XMatrixParseError: for anything malformed.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise XMatrixParseError("Authorization header is not ASCII") from None
    elif not value.isascii():
        raise XMatrixParseError("Authorization header is not ASCII")
    if len(value) > MAX_XMATRIX_HEADER_LENGTH:
        raise XMatrixParseError("Authorization header too long")
    if not is_xmatrix_header(value):
        raise XMatrixParseError("Authorization scheme is not X-Matrix")
    params = _parse_auth_params(value, 9)

    origin = params.get("origin")
    key_id = params.get("key")
    sig = params.get("sig")
    destination = params.get("destination")
    if origin is None:
        raise XMatrixParseError("X-Matrix header has no origin")
    if key_id is None:
        raise XMatrixParseError("X-Matrix header has no key")
    if sig is None:
        raise XMatrixParseError("X-Matrix header has no sig")
    if not is_valid_server_name(origin):
        raise XMatrixParseError(f"X-Matrix origin is not a valid server name: {origin!r:.300}")
    if destination is not None and not is_valid_server_name(destination):
        raise XMatrixParseError(f"X-Matrix destination is not a valid server name: {destination!r:.300}")
    alg, colon, version = key_id.partition(":")
    if not colon or not alg or not version:
        raise XMatrixParseError(f"X-Matrix key is not a key id: {key_id!r:.300}")
    if not sig:
        raise XMatrixParseError("X-Matrix sig is empty")
    return XMatrixAuth(origin, destination, key_id, sig)


def _parse_auth_params(text: str, pos: int) -> dict[str, str]:
    params: dict[str, str] = {}
    n = len(text)
    while True:
        # OWS and empty list elements ("#rule", RFC 7230 section 7).
        while pos < n and text[pos] in " \t,":
            pos += 1
        if pos >= n:
            break
        start = pos
        while pos < n and text[pos] in _TCHARS:
            pos += 1
        name = text[start:pos].lower()
        if not name:
            raise XMatrixParseError(f"X-Matrix: expected a parameter name at offset {pos}")
        while pos < n and text[pos] in " \t":
            pos += 1
        if pos >= n or text[pos] != "=":
            raise XMatrixParseError(f"X-Matrix: parameter {name!r:.50} has no value")
        pos += 1
        while pos < n and text[pos] in " \t":
            pos += 1
        if pos < n and text[pos] == '"':
            pos += 1
            chars: list[str] = []
            while True:
                if pos >= n:
                    raise XMatrixParseError(f"X-Matrix: unterminated quoted value for {name!r:.50}")
                c = text[pos]
                if c == '"':
                    pos += 1
                    break
                if c == "\\":
                    # quoted-pair: the backslash is dropped, the next character kept.
                    if pos + 1 >= n:
                        raise XMatrixParseError(f"X-Matrix: dangling backslash in {name!r:.50}")
                    c = text[pos + 1]
                    pos += 1
                if c < " " and c != "\t" or c == "\x7f":
                    raise XMatrixParseError(f"X-Matrix: control character in {name!r:.50}")
                chars.append(c)
                pos += 1
            val = "".join(chars)
        else:
            start = pos
            while pos < n and text[pos] in _UNQUOTED_VALUE_CHARS:
                pos += 1
            val = text[start:pos]
            if not val:
                raise XMatrixParseError(f"X-Matrix: parameter {name!r:.50} has an empty or invalid value")
        while pos < n and text[pos] in " \t":
            pos += 1
        if pos < n and text[pos] != ",":
            raise XMatrixParseError(f"X-Matrix: unexpected {text[pos]!r} after parameter {name!r:.50}")
        if name in params:
            raise XMatrixParseError(f"X-Matrix: parameter {name!r:.50} given twice")
        params[name] = val
    return params
