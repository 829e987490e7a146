"""Content hashes, reference hashes and event ids (spec: "Calculating the content hash",
"Calculating the reference hash", and each event format's "Event IDs")."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from fedserver.events.canonical import encode_canonical_json
from fedserver.events.redaction import redact
from fedserver.room_versions import EventFormat, RoomVersion


def unpadded_base64(data: bytes) -> str:
    """Standard base64 without ``=`` padding (appendix "Unpadded Base64")."""
    return base64.b64encode(data).rstrip(b"=").decode("ascii")


def urlsafe_unpadded_base64(data: bytes) -> str:
    """URL-safe base64 without padding, as used for event ids from room v4."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode_unpadded_base64(text: str) -> bytes:
    """Decode standard or URL-safe base64 with or without padding.

    :raises ValueError: if it is not base64.
    """
    text = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def compute_content_hash(pdu: dict[str, Any], *, strict: bool = True) -> bytes:
    """SHA-256 over the canonical JSON of the event without ``unsigned``, ``signatures`` and
    ``hashes``."""
    stripped = {k: v for k, v in pdu.items() if k not in ("unsigned", "signatures", "hashes")}
    return hashlib.sha256(encode_canonical_json(stripped, strict=strict)).digest()


def add_content_hash(pdu: dict[str, Any], *, strict: bool = True) -> dict[str, Any]:
    """Set ``pdu["hashes"]["sha256"]`` in place and return ``pdu``."""
    pdu["hashes"] = {"sha256": unpadded_base64(compute_content_hash(pdu, strict=strict))}
    return pdu


def check_content_hash(pdu: dict[str, Any], rv: RoomVersion) -> bool:
    """Whether the event's ``hashes.sha256`` matches its content."""
    hashes = pdu.get("hashes")
    if not isinstance(hashes, dict) or not isinstance(hashes.get("sha256"), str):
        return False
    try:
        expected = decode_unpadded_base64(hashes["sha256"])
    except ValueError:
        return False
    return compute_content_hash(pdu, strict=rv.strict_canonicaljson) == expected


def compute_reference_hash(pdu: dict[str, Any], rv: RoomVersion) -> bytes:
    """SHA-256 over the canonical JSON of the redacted event without ``signatures``,
    ``unsigned`` and ``age_ts``."""
    redacted = redact(pdu, rv)
    redacted.pop("signatures", None)
    redacted.pop("unsigned", None)
    redacted.pop("age_ts", None)
    return hashlib.sha256(encode_canonical_json(redacted, strict=rv.strict_canonicaljson)).digest()


def compute_event_id(pdu: dict[str, Any], rv: RoomVersion) -> str:
    """The event id of a PDU in a room version whose ids are reference hashes (v3+).

    :raises ValueError: for format V1, whose ids are chosen by the origin, not computed.
    """
    if rv.event_format == EventFormat.V1:
        raise ValueError("room versions 1 and 2 do not derive event ids from hashes")
    digest = compute_reference_hash(pdu, rv)
    if rv.event_format == EventFormat.V2:
        return "$" + unpadded_base64(digest)
    return "$" + urlsafe_unpadded_base64(digest)


def room_id_from_create_event_id(event_id: str) -> str:
    """Room v12: the room id is the create event's id with the sigil ``!`` for ``$``."""
    return "!" + event_id[1:]
