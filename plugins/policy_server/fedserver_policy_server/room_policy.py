"""The policy server a room names in ``m.room.policy``, and its signature on events (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from signedjson.key import decode_verify_key_bytes

from fedserver.events.canonical import CanonicalJSONError
from fedserver.events.hashing import decode_unpadded_base64
from fedserver.events.model import Event
from fedserver.events.signing import signed_bytes_for_event, verify_signature_bytes
from fedserver.events.validation import is_valid_server_name

#: The state event naming a room's policy server (empty state key).
POLICY_EVENT_TYPE = "m.room.policy"
POLICY_STATE_KEY = (POLICY_EVENT_TYPE, "")
#: The key id of every policy server signature ("``ed25519:policy_server`` is *always* used
#: for Ed25519 signatures", server-server API ``POST /_matrix/policy/v1/sign``).
POLICY_KEY_ID = "ed25519:policy_server"
#: The endpoint a policy server signs events at.
SIGN_PATH = "/_matrix/policy/v1/sign"


@dataclass(frozen=True)
class PolicyServer:
    """A room's policy server as its ``m.room.policy`` event names it.

    :ivar via: the policy server's server name.
    :ivar public_key: its ed25519 public key, unpadded base64, as in the event.
    :ivar verify_key: that key as a signedjson ``VerifyKey`` (id ``ed25519:policy_server``).
    """

    via: str
    public_key: str
    verify_key: Any


def policy_server_from_content(content: Any) -> PolicyServer | None:
    """The policy server an ``m.room.policy`` event's content names, or ``None``.

    Event schema ``m.room.policy`` (spec v1.18): ``via``, the server name, and
    ``public_keys``, which "MUST contain at least ``ed25519``".  "If the state event is not
    set in the room or is missing required fields, the room does *not* use a Policy
    Server": anything malformed gives ``None``.
    """
    if not isinstance(content, Mapping):
        return None
    via = content.get("via")
    keys = content.get("public_keys")
    if not isinstance(via, str) or not is_valid_server_name(via) or not isinstance(keys, Mapping):
        return None
    public_key = keys.get("ed25519")
    if not isinstance(public_key, str):
        return None
    try:
        raw = decode_unpadded_base64(public_key)
    except ValueError:
        return None
    if len(raw) != 32:
        return None
    verify_key = decode_verify_key_bytes(POLICY_KEY_ID, raw)
    return PolicyServer(via, public_key, verify_key)


def is_exempt(event: Event) -> bool:
    """Whether ``event`` is never checked by the policy server: "all events except for the
    ``m.room.policy`` state event itself" (so a room can always remove an obstructive
    policy server)."""
    return event.type == POLICY_EVENT_TYPE and event.state_key == ""


def event_signed_bytes(event: Event) -> bytes | None:
    """The bytes every signature on ``event`` covers (its redacted form without
    ``signatures`` and ``unsigned``), or ``None`` if they cannot be computed."""
    try:
        return signed_bytes_for_event(event.pdu, event.room_version)
    except (CanonicalJSONError, ValueError, TypeError):
        return None


def policy_signature(event: Event, server: PolicyServer) -> Any:
    """The signature ``event`` carries from ``server`` (``None`` if none)."""
    sigs = event.signatures.get(server.via)
    return sigs.get(POLICY_KEY_ID) if isinstance(sigs, dict) else None


def is_valid_signature(event: Event, server: PolicyServer, signature: Any, signed: bytes | None = None) -> bool:
    """Whether ``signature`` is ``server``'s signature of ``event`` with the public key of
    the room's ``m.room.policy`` event.  Never raises on bad input."""
    if signature is None:
        return False
    if signed is None:
        signed = event_signed_bytes(event)
        if signed is None:
            return False
    return verify_signature_bytes(signed, signature, server.verify_key)


def has_valid_signature(event: Event, server: PolicyServer) -> bool:
    """Whether ``event`` carries a valid signature of the room's policy server."""
    return is_valid_signature(event, server, policy_signature(event, server))


def signature_from_response(body: Any, event: Event, server: PolicyServer) -> tuple[str | None, str]:
    """Read the answer to ``POST /_matrix/policy/v1/sign``: ``{via: {"ed25519:policy_server":
    signature}}`` (only the policy server's own signature is taken).

    :returns: ``(signature, "")`` if it holds a valid signature of ``event`` by the key the
        room names, else ``(None, why not)``: ``{}`` is the policy server's way to refuse
        without saying why.
    """
    if not isinstance(body, Mapping):
        return None, "the answer is not a JSON object"
    sigs = body.get(server.via)
    signature = sigs.get(POLICY_KEY_ID) if isinstance(sigs, Mapping) else None
    if signature is None:
        return None, "no signature in the answer"
    if not is_valid_signature(event, server, signature):
        return None, "the signature does not verify with the room's public key"
    return signature, ""
