"""Building our own events in the room version's format: content hash, signature, validation."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any, Iterable, Mapping

from fedserver.events.canonical import CanonicalJSONError
from fedserver.events.hashing import add_content_hash, unpadded_base64, urlsafe_unpadded_base64
from fedserver.events.model import Event
from fedserver.events.signing import key_id, sign_bytes, signed_bytes_for_event
from fedserver.events.validation import InvalidEvent, validate_pdu
from fedserver.room_versions import EventFormat, RoomVersion

# Never copied from a make_join/make_leave/make_knock template: we compute or add them.
_TEMPLATE_DROPPED = frozenset({"event_id", "hashes", "signatures", "unsigned"})


def build_event(
    rv: RoomVersion,
    *,
    room_id: str | None,
    type: str,
    sender: str,
    content: Mapping[str, Any],
    state_key: str | None = None,
    prev_event_ids: Iterable[str],
    auth_event_ids: Iterable[str],
    depth: int,
    origin_server_ts: int,
    server_name: str,
    signing_key: Any,
    redacts: str | None = None,
    unsigned: Mapping[str, Any] | None = None,
    event_id_localpart: str | None = None,
    edge_hashes: Mapping[str, str] | None = None,
) -> Event:
    """Build, hash and sign a new event of room version ``rv``.

    :param room_id: the room; ``None`` only for a v12+ ``m.room.create`` event, whose room
        id is derived from its own event id (it carries no ``room_id``).
    :param content: copied, never mutated.
    :param redacts: for ``m.room.redaction``: put in ``content`` from v11, at top level
        before.
    :param unsigned: added after signing (not covered by hash or signature).
    :param event_id_localpart: format V1 only (rooms v1-2): the local part of
        ``$localpart:server_name``; random if omitted.  Ignored by later formats.
    :param edge_hashes: format V1 only: ``{event_id: sha256 reference hash (unpadded
        base64)}`` of referenced events, written as ``[event_id, {"sha256": hash}]``;
        an id without a known hash gets ``{}`` (as Synapse writes them too).
    :param signing_key: a signedjson ``SigningKey``; its id is ``ed25519:<version>``.
    :returns: the :class:`Event`, its PDU ready to send.
    :raises InvalidEvent: if the result would not be a valid event (bad ids, too large,
        floats in a v6+ room...).
    """
    content = dict(content)
    pdu: dict[str, Any] = {
        "type": type,
        "sender": sender,
        "depth": depth,
        "origin_server_ts": origin_server_ts,
    }
    if rv.room_id_from_create_event and type == "m.room.create":
        if room_id is not None:
            raise InvalidEvent("an m.room.create event has no room_id in this room version")
    else:
        if room_id is None:
            raise InvalidEvent("room_id is required")
        pdu["room_id"] = room_id
    if state_key is not None:
        pdu["state_key"] = state_key
    if redacts is not None:
        if rv.redacts_in_content:
            content["redacts"] = redacts
        else:
            pdu["redacts"] = redacts
    pdu["content"] = content
    if rv.event_format == EventFormat.V1:
        pdu["event_id"] = new_v1_event_id(server_name, event_id_localpart)
        hashes = edge_hashes or {}
        pdu["prev_events"] = [_v1_edge(e, hashes) for e in prev_event_ids]
        pdu["auth_events"] = [_v1_edge(e, hashes) for e in auth_event_ids]
    else:
        pdu["prev_events"] = list(prev_event_ids)
        pdu["auth_events"] = list(auth_event_ids)
    return _finish(pdu, rv, server_name, signing_key, unsigned)


def build_from_template(
    template_pdu: Mapping[str, Any],
    rv: RoomVersion,
    *,
    origin_server_ts: int,
    server_name: str,
    signing_key: Any,
    event_id_localpart: str | None = None,
) -> Event:
    """Complete an event template from ``make_join`` / ``make_leave`` / ``make_knock``.

    Keeps the template's fields, drops any ``event_id`` / ``hashes`` / ``signatures`` /
    ``unsigned`` it carries, sets ``origin_server_ts`` (and ``origin``, if the template has
    one) to ours, gives format V1 events a fresh ``$localpart:server_name`` id, then hashes
    and signs.  Whether the template is acceptable (our user, the membership asked for,
    the right room) is the caller's business.

    :raises InvalidEvent: if the completed event is not valid for ``rv``.
    """
    if not isinstance(template_pdu, Mapping):
        raise InvalidEvent("event template is not an object")
    pdu = {k: v for k, v in template_pdu.items() if k not in _TEMPLATE_DROPPED}
    if isinstance(pdu.get("content"), Mapping):
        pdu["content"] = dict(pdu["content"])
    pdu["origin_server_ts"] = origin_server_ts
    if "origin" in pdu:
        pdu["origin"] = server_name
    if rv.event_format == EventFormat.V1:
        pdu["event_id"] = new_v1_event_id(server_name, event_id_localpart)
    return _finish(pdu, rv, server_name, signing_key, None)


def new_v1_event_id(server_name: str, localpart: str | None = None) -> str:
    """A rooms v1-2 event id ``$localpart:server_name`` (random localpart by default)."""
    return f"${localpart if localpart is not None else secrets.token_urlsafe(12)}:{server_name}"


def _v1_edge(event_id: str, hashes: Mapping[str, str]) -> list[Any]:
    h = hashes.get(event_id)
    return [event_id, {"sha256": h} if h is not None else {}]


def _finish(
    pdu: dict[str, Any],
    rv: RoomVersion,
    server_name: str,
    signing_key: Any,
    unsigned: Mapping[str, Any] | None,
) -> Event:
    try:
        add_content_hash(pdu, strict=rv.strict_canonicaljson)
        # The signed bytes are also the reference hash input: one encoding for both.
        signed = signed_bytes_for_event(pdu, rv)
    except (CanonicalJSONError, UnicodeEncodeError) as e:
        raise InvalidEvent(str(e)) from None
    pdu["signatures"] = {server_name: {key_id(signing_key): sign_bytes(signed, signing_key)}}
    if unsigned is not None:
        pdu["unsigned"] = dict(unsigned)
    validate_pdu(pdu, rv)
    if rv.event_format == EventFormat.V1:
        event_id = pdu["event_id"]
    elif rv.event_format == EventFormat.V2:
        event_id = "$" + unpadded_base64(hashlib.sha256(signed).digest())
    else:
        event_id = "$" + urlsafe_unpadded_base64(hashlib.sha256(signed).digest())
    return Event.from_pdu(pdu, rv, event_id)
