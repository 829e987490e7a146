"""PDU validity per room version event format (receipt check 1: invalid PDUs are dropped),
from the PDU schemas, the client-server "Size limits" and the appendix identifier grammars."""

from __future__ import annotations

import hashlib
import re
from typing import Any, NamedTuple

from canonicaljson import encode_canonical_json as _encode_unchecked

from fedserver.events.canonical import MAX_DEPTH, MAX_SAFE_INTEGER, MIN_SAFE_INTEGER
from fedserver.events.hashing import decode_unpadded_base64, unpadded_base64, urlsafe_unpadded_base64
from fedserver.events.model import Event
from fedserver.events.redaction import redact
from fedserver.room_versions import EventFormat, RoomVersion

#: Client-server "Size limits": the complete PDU as canonical JSON, signatures included.
MAX_PDU_BYTES = 65536
#: Client-server "Size limits" / appendix identifiers: sender, room_id, state_key, type,
#: event_id.
MAX_FIELD_BYTES = 255
#: PDU schemas: "Must contain less than or equal to 20 events."
MAX_PREV_EVENTS = 20
#: PDU schemas: "Must contain less than or equal to 10 events."
MAX_AUTH_EVENTS = 10
#: PDU schemas: ``depth`` and ``origin_server_ts`` are int64; for v6+ canonical JSON
#: narrows them further to 2**53-1.
MAX_INT64 = 2**63 - 1
MIN_INT64 = -(2**63)

# Appendix "Server Name": hostname [":" port]; hostname is an IPv4 literal, a bracketed
# IPv6 literal or a dns-name of [A-Za-z0-9.-].
_SERVER_NAME = re.compile(r"(?:\[[0-9A-Fa-f:.]{2,45}\]|[0-9A-Za-z.\-]{1,255})(?::[0-9]{1,5})?", re.ASCII)
# Event ids from reference hashes: 32 bytes -> 43 unpadded base64 characters.
_EVENT_ID_V2 = re.compile(r"\$[A-Za-z0-9+/]{43}", re.ASCII)  # room v3: standard base64
_EVENT_ID_V3 = re.compile(r"\$[A-Za-z0-9_\-]{43}", re.ASCII)  # v4+: URL-safe base64
# Room v12: "!" + URL-safe unpadded base64 of the create event's reference hash.
_ROOM_ID_V12 = re.compile(r"![A-Za-z0-9_\-]{43}", re.ASCII)

# The members the content hash leaves out; see _content_hash_input.
_EXCLUDED_FROM_CONTENT_HASH = ("hashes", "signatures", "unsigned")


class InvalidEvent(ValueError):
    """The PDU does not have the shape its room version requires; drop it.

    :ivar reason: what is wrong, for logs and error responses.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class EventTooLarge(InvalidEvent):
    """The PDU, or one of its size-limited fields, is over the spec's limit (the client
    API's ``413 M_TOO_LARGE``)."""


class CheckedPdu(NamedTuple):
    """A valid PDU with what the signature and hash checks need.

    :ivar event: the :class:`Event` (its id computed from ``signed_bytes`` for V2+ formats).
    :ivar signed_bytes: canonical JSON of the redacted PDU without ``signatures`` /
        ``unsigned``: what every server's signature covers, and (formats V2+) the
        reference hash input.
    :ivar content_hash_ok: whether ``hashes.sha256`` matches the PDU (receipt check 3: if
        not, the event must be processed in its redacted form).
    """

    event: Event
    signed_bytes: bytes
    content_hash_ok: bool


# -- public API -----------------------------------------------------------------------


def validate_pdu(pdu: dict[str, Any], rv: RoomVersion) -> None:
    """Check that ``pdu`` is a well-formed event of room version ``rv``.

    Checks required keys and their JSON types for the version's event format, identifier
    grammars (sender, room_id, event ids), the 255-byte field limits, the 65536-byte PDU
    limit, the 20 ``prev_events`` / 10 ``auth_events`` limits and, from room v6,
    strict canonical JSON values (no floats, integers within [-(2**53)+1, 2**53-1]).

    :param pdu: the PDU as received (parsed JSON).
    :param rv: the room's version.
    :raises InvalidEvent: naming the first problem found; :class:`EventTooLarge` (a
        subclass) for the size limits.
    """
    _check_shape(pdu, rv)
    _content_hash_input(pdu, rv)


def parse_pdu(pdu: dict[str, Any], rv: RoomVersion) -> Event:
    """:func:`validate_pdu`, then wrap the PDU in an :class:`Event` (id computed for V2+).

    :raises InvalidEvent: if the PDU is not valid.
    """
    _check_shape(pdu, rv)
    _content_hash_input(pdu, rv)
    return Event.from_pdu(pdu, rv, _event_id(pdu, rv, _signed_bytes(pdu, rv)))


def check_pdu(pdu: dict[str, Any], rv: RoomVersion) -> CheckedPdu:
    """Validate ``pdu`` and prepare the signature and content hash checks in one pass.

    The PDU is encoded only twice: once whole (content hash input and size) and once
    redacted (signed bytes and event id).  Receipt steps 1 and 3 of the server-server spec, and the encoding step 2 needs: pass
    :attr:`CheckedPdu.signed_bytes` with each required server's signature to
    :func:`fedserver.events.signing.verify_signature_bytes` (or batch them).

    :raises InvalidEvent: if the PDU is not valid.
    """
    _check_shape(pdu, rv)
    content_input = _content_hash_input(pdu, rv)
    expected = _decode_b64(pdu["hashes"]["sha256"])
    content_hash_ok = expected is not None and hashlib.sha256(content_input).digest() == expected
    signed = _signed_bytes(pdu, rv)
    event = Event.from_pdu(pdu, rv, _event_id(pdu, rv, signed))
    return CheckedPdu(event, signed, content_hash_ok)


def check_membership_content(pdu: dict[str, Any], rv: RoomVersion) -> None:
    """Check what the auth rules read of an ``m.room.member`` event against the event's
    schema (client-server API ``m.room.member``): for the endpoints that take one event
    directly (``send_join``, ``send_leave``, ``send_knock``, ``invite``), where a
    malformed event is answered 400 and only an authorization failure 403.

    Not part of :func:`validate_pdu`: in a transaction such an event is well-formed for
    its room version (the PDU formats say nothing of content) and must be judged, and
    rejected, by the auth rules like everywhere else, not dropped.

    - ``state_key``: a user ID (the *target user*);
    - ``content.membership``: a string;
    - from v8 (restricted joins), ``content.join_authorised_via_users_server``, if
      present: a user ID (the auth rules need its server's signature);
    - ``content.third_party_invite``, if present: an object whose ``signed`` is an object
      with ``mxid`` (a user ID), ``token`` (a string) and ``signatures`` (an object of
      objects of strings).

    :param pdu: a PDU that passed :func:`validate_pdu` for ``rv``, of type
        ``m.room.member``.
    :raises InvalidEvent: naming the first problem found.
    """
    if not is_valid_user_id(pdu.get("state_key")):
        raise InvalidEvent("the state_key of a membership event must be a user id")
    content = pdu["content"]
    if type(content.get("membership")) is not str:
        raise InvalidEvent("'membership' must be a string")
    if rv.restricted_joins and "join_authorised_via_users_server" in content:
        if not is_valid_user_id(content["join_authorised_via_users_server"]):
            raise InvalidEvent("'join_authorised_via_users_server' must be a user id")
    if "third_party_invite" in content:
        tpi = content["third_party_invite"]
        if type(tpi) is not dict:
            raise InvalidEvent("'third_party_invite' must be an object")
        signed = tpi.get("signed")
        if type(signed) is not dict:
            raise InvalidEvent("'third_party_invite.signed' must be an object")
        if not is_valid_user_id(signed.get("mxid")):
            raise InvalidEvent("'third_party_invite.signed.mxid' must be a user id")
        if type(signed.get("token")) is not str:
            raise InvalidEvent("'third_party_invite.signed.token' must be a string")
        signatures = signed.get("signatures")
        if type(signatures) is not dict or not all(
            type(by_key) is dict and all(type(sig) is str for sig in by_key.values())
            for by_key in signatures.values()
        ):
            raise InvalidEvent("'third_party_invite.signed.signatures' must map servers to key ids to strings")


def is_valid_user_id(user_id: Any) -> bool:
    """Whether ``user_id`` is a user id a server must accept in an event.

    Appendix "User Identifiers" with "Historical User IDs": ``@localpart:server_name``,
    at most 255 bytes; the localpart may be any UTF-8 except ``:`` and NUL, even empty.
    """
    if type(user_id) is not str or not user_id.startswith("@"):
        return False
    return _valid_id_with_domain(user_id)


def is_valid_server_name(name: Any) -> bool:
    """Whether ``name`` matches the appendix "Server Name" grammar."""
    return type(name) is str and _SERVER_NAME.fullmatch(name) is not None


# -- shape ----------------------------------------------------------------------------


def _check_shape(pdu: Any, rv: RoomVersion) -> None:
    if type(pdu) is not dict:
        raise InvalidEvent("PDU is not a JSON object")
    fmt = rv.event_format

    event_type = pdu.get("type")
    if type(event_type) is not str:
        raise InvalidEvent("'type' must be a string")
    _check_bytes(event_type, "type")

    sender = pdu.get("sender")
    if type(sender) is str:
        _check_bytes(sender, "sender")
    if not is_valid_user_id(sender):
        raise InvalidEvent("'sender' must be a valid user id of at most 255 bytes")

    if "state_key" in pdu:
        state_key = pdu["state_key"]
        if type(state_key) is not str:
            raise InvalidEvent("'state_key' must be a string")
        _check_bytes(state_key, "state_key")

    if type(pdu.get("content")) is not dict:
        raise InvalidEvent("'content' must be an object")

    _check_room_id(pdu, rv, event_type)

    # event_id: carried by format V1 only; later formats derive it from the reference
    # hash, and a stray event_id would change that hash (Synapse refuses these too).
    if fmt == EventFormat.V1:
        event_id = pdu.get("event_id")
        if type(event_id) is str:
            _check_bytes(event_id, "event_id")
        if type(event_id) is not str or not event_id.startswith("$") or not _valid_id_with_domain(event_id):
            raise InvalidEvent("'event_id' must be '$opaque_id:server_name' of at most 255 bytes")
    elif "event_id" in pdu:
        raise InvalidEvent("'event_id' is not part of events in this room version")

    depth = pdu.get("depth")
    if type(depth) is not int:
        raise InvalidEvent("'depth' must be an integer")
    if depth < 0 or depth > MAX_INT64:
        raise InvalidEvent("'depth' out of range")

    ts = pdu.get("origin_server_ts")
    if type(ts) is not int:
        raise InvalidEvent("'origin_server_ts' must be an integer")
    if ts < MIN_INT64 or ts > MAX_INT64:
        raise InvalidEvent("'origin_server_ts' out of range")

    _check_edges(pdu.get("prev_events"), "prev_events", MAX_PREV_EVENTS, fmt)
    _check_edges(pdu.get("auth_events"), "auth_events", MAX_AUTH_EVENTS, fmt)

    hashes = pdu.get("hashes")
    if type(hashes) is not dict or type(hashes.get("sha256")) is not str:
        raise InvalidEvent("'hashes' must be an object with a string 'sha256'")

    signatures = pdu.get("signatures")
    if type(signatures) is not dict:
        raise InvalidEvent("'signatures' must be an object")
    for server_sigs in signatures.values():
        if type(server_sigs) is not dict:
            raise InvalidEvent("'signatures' must map server names to objects")
        for sig in server_sigs.values():
            if type(sig) is not str:
                raise InvalidEvent("signatures must be strings")

    if "unsigned" in pdu and type(pdu["unsigned"]) is not dict:
        raise InvalidEvent("'unsigned' must be an object")
    # PDU schemas v1-v10: "redacts: string".  From v11 redacts lives in content and a
    # top-level one is not part of the format (an unknown key, ignored like others).
    if not rv.redacts_in_content and "redacts" in pdu and type(pdu["redacts"]) is not str:
        raise InvalidEvent("'redacts' must be a string")


def _check_room_id(pdu: dict[str, Any], rv: RoomVersion, event_type: str) -> None:
    if rv.room_id_from_create_event:
        if event_type == "m.room.create":
            # v12 auth rule 1.2 refuses a create event with a room_id; its room id is
            # derived from its own event id, so it is flagged here as a shape error.
            if "room_id" in pdu:
                raise InvalidEvent("an m.room.create event must not have a 'room_id' in this room version")
            return
        room_id = pdu.get("room_id")
        if type(room_id) is not str or _ROOM_ID_V12.fullmatch(room_id) is None:
            raise InvalidEvent("'room_id' must be '!' and a 43-character URL-safe base64 hash")
        return
    room_id = pdu.get("room_id")
    if type(room_id) is str:
        _check_bytes(room_id, "room_id")
    if type(room_id) is not str or not room_id.startswith("!") or not _valid_id_with_domain(room_id):
        raise InvalidEvent("'room_id' must be '!opaque_id:server_name' of at most 255 bytes")


def _check_edges(edges: Any, name: str, limit: int, fmt: EventFormat) -> None:
    if type(edges) is not list:
        raise InvalidEvent(f"'{name}' must be an array")
    if len(edges) > limit:
        raise InvalidEvent(f"'{name}' has more than {limit} entries")
    if fmt == EventFormat.V1:
        # [[event_id, {"sha256": ...}], ...]; Synapse sends {} for some hashes, so the
        # hash object is only required to be an object whose sha256 (if any) is a string.
        for edge in edges:
            if type(edge) is not list or len(edge) != 2:
                raise InvalidEvent(f"'{name}' entries must be [event_id, hashes] pairs")
            event_id, hashes = edge
            if type(event_id) is not str or not event_id.startswith("$") or not _valid_id_with_domain(event_id):
                raise InvalidEvent(f"'{name}' holds an invalid event id")
            if type(hashes) is not dict or ("sha256" in hashes and type(hashes["sha256"]) is not str):
                raise InvalidEvent(f"'{name}' holds an invalid hash object")
        return
    pattern = _EVENT_ID_V2 if fmt == EventFormat.V2 else _EVENT_ID_V3
    for event_id in edges:
        if type(event_id) is not str or pattern.fullmatch(event_id) is None:
            raise InvalidEvent(f"'{name}' holds an invalid event id")


def _check_bytes(value: str, name: str) -> None:
    # Cheap path: at most 4 bytes per code point.
    if len(value) * 4 <= MAX_FIELD_BYTES:
        return
    try:
        n = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidEvent(f"'{name}' is not valid UTF-8") from None
    if n > MAX_FIELD_BYTES:
        raise EventTooLarge(f"'{name}' is longer than {MAX_FIELD_BYTES} bytes")


def _valid_id_with_domain(value: str) -> bool:
    """``<sigil>opaque:server_name`` within 255 bytes, opaque without NUL (sigil checked by
    the caller)."""
    colon = value.find(":")
    if colon < 0 or "\x00" in value:
        return False
    if _SERVER_NAME.fullmatch(value, colon + 1) is None:
        return False
    if value.isascii():  # one byte per character: no need to encode
        return len(value) <= MAX_FIELD_BYTES
    try:
        return len(value.encode("utf-8")) <= MAX_FIELD_BYTES  # also refuses lone surrogates
    except UnicodeEncodeError:
        return False


# -- values and sizes -----------------------------------------------------------------


def _check_values(value: Any, strict: bool) -> None:
    """Refuse what canonical JSON cannot carry: non-JSON types, NaN/infinities, deep
    nesting; with ``strict`` (v6+, "Servers MUST strictly enforce the JSON format") also
    floats and integers outside [-(2**53)+1, 2**53-1].  Rooms v1-5 "MUST NOT strictly
    enforce" it, so floats and big integers pass there.

    Iterative: this walks every inbound PDU.
    """
    stack = [(value, 0)]
    pop = stack.pop
    push = stack.append
    while stack:
        v, depth = pop()
        t = type(v)
        if t is str or t is bool or v is None:
            continue
        if t is int:
            if strict and not (MIN_SAFE_INTEGER <= v <= MAX_SAFE_INTEGER):
                raise InvalidEvent("integer out of canonical JSON range")
            continue
        if t is dict:
            if depth >= MAX_DEPTH:
                raise InvalidEvent("JSON nested too deeply")
            for k, item in v.items():
                if type(k) is not str:
                    raise InvalidEvent("object keys must be strings")
                ti = type(item)
                if ti is str or ti is bool:
                    continue
                push((item, depth + 1))
            continue
        if t is list or t is tuple:  # tuples encode as arrays, as in canonical.py
            if depth >= MAX_DEPTH:
                raise InvalidEvent("JSON nested too deeply")
            for item in v:
                ti = type(item)
                if ti is str or ti is bool:
                    continue
                push((item, depth + 1))
            continue
        if t is float:
            if strict:
                raise InvalidEvent("floats are not allowed in events of this room version")
            if v != v or v in (float("inf"), float("-inf")):
                raise InvalidEvent("NaN and infinities are not JSON")
            continue
        raise InvalidEvent(f"{t.__name__} is not a JSON type")


def _encode(value: Any) -> bytes:
    """Canonical JSON of a value already checked by :func:`_check_values`."""
    try:
        return _encode_unchecked(value)
    except (UnicodeEncodeError, ValueError, TypeError) as e:  # lone surrogates etc.
        raise InvalidEvent(f"not encodable as canonical JSON: {e}") from None


def _content_hash_input(pdu: dict[str, Any], rv: RoomVersion) -> bytes:
    """Check values and the 65536-byte limit; return the content hash input.

    The content hash input is the canonical PDU without ``hashes``, ``signatures`` and
    ``unsigned``. The canonical encoding of the whole PDU differs from it only by those
    three members (keys are sorted, separators fixed), so its size is that input's size
    plus ``len('"key":' + value + ',')`` for each of them: the big part is encoded once.
    """
    _check_values(pdu, rv.strict_canonicaljson)
    stripped = {k: v for k, v in pdu.items() if k not in _EXCLUDED_FROM_CONTENT_HASH}
    data = _encode(stripped)
    size = len(data)
    if size > MAX_PDU_BYTES:
        raise EventTooLarge(f"event is larger than {MAX_PDU_BYTES} bytes")
    excluded = {k: pdu[k] for k in _EXCLUDED_FROM_CONTENT_HASH if k in pdu}
    if excluded:
        # '{' + a + '}' and '{' + b + '}' merge into '{' + a + ',' + b + '}' (the merged
        # members sort among each other however they interleave).
        size += len(_encode(excluded)) - 1
    if size > MAX_PDU_BYTES:
        raise EventTooLarge(f"event is larger than {MAX_PDU_BYTES} bytes")
    return data


def _signed_bytes(pdu: dict[str, Any], rv: RoomVersion) -> bytes:
    """Canonical JSON of the redacted PDU without signatures/unsigned (values checked)."""
    redacted = redact(pdu, rv)
    redacted.pop("signatures", None)
    redacted.pop("unsigned", None)
    redacted.pop("age_ts", None)
    return _encode(redacted)


def _event_id(pdu: dict[str, Any], rv: RoomVersion, signed_bytes: bytes) -> str:
    """The event id; for V2+ the reference hash, whose input equals the signed bytes (both
    are the redacted event without ``signatures``, ``unsigned`` and ``age_ts``)."""
    fmt = rv.event_format
    if fmt == EventFormat.V1:
        return pdu["event_id"]
    digest = hashlib.sha256(signed_bytes).digest()
    if fmt == EventFormat.V2:
        return "$" + unpadded_base64(digest)
    return "$" + urlsafe_unpadded_base64(digest)


def _decode_b64(text: str) -> bytes | None:
    try:
        return decode_unpadded_base64(text)
    except ValueError:
        return None
