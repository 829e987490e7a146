"""Event and JSON signatures: signing, verifying, and which servers must have signed
(server-server "Signing Events", appendix "Signing JSON"); key ids are ``ed25519:<version>``."""

from __future__ import annotations

from typing import Any

import nacl.exceptions
import signedjson.sign
from canonicaljson import encode_canonical_json as _encode_unchecked

from fedserver.events.canonical import CanonicalJSONError, encode_canonical_json
from fedserver.events.hashing import decode_unpadded_base64, unpadded_base64
from fedserver.events.redaction import redact
from fedserver.room_versions import EventFormat, RoomVersion


class SignatureServersError(ValueError):
    """The event names a server whose signature is required but cannot be determined
    (e.g. a malformed ``join_authorised_via_users_server``); treat the event as invalid."""


def key_id(key: Any) -> str:
    """The signing key identifier of a signedjson key: ``<alg>:<version>``, e.g.
    ``ed25519:a_AbCd``."""
    return f"{key.alg}:{key.version}"


def signed_bytes_for_event(pdu: dict[str, Any], rv: RoomVersion) -> bytes:
    """The bytes every server's signature on ``pdu`` covers.

    The event is redacted (the room version's algorithm), then ``signatures`` and
    ``unsigned`` are removed and the rest is encoded as canonical JSON ("Checking for a
    Signature" steps 5-6).  For formats V2+ this is also the reference hash input, so
    ``sha256(signed_bytes)`` gives the event id.  Encoding is strict from room v6.

    :raises CanonicalJSONError: if the event holds values canonical JSON cannot carry.
    """
    redacted = redact(pdu, rv)
    redacted.pop("signatures", None)
    redacted.pop("unsigned", None)
    redacted.pop("age_ts", None)
    return encode_canonical_json(redacted, strict=rv.strict_canonicaljson)


def sign_event(pdu: dict[str, Any], rv: RoomVersion, server_name: str, signing_key: Any) -> dict[str, Any]:
    """Add ``server_name``'s signature to ``pdu`` (in place) and return ``pdu``.

    The PDU must already carry its content hash (``hashes.sha256``): the signature covers
    the redacted event, and the hash is what ties the unredacted content to it.

    :param signing_key: a signedjson ``SigningKey``.
    :raises ValueError: if the PDU has no ``hashes``.
    :raises CanonicalJSONError: if the event cannot be encoded.
    """
    if not isinstance(pdu.get("hashes"), dict) or "sha256" not in pdu["hashes"]:
        raise ValueError("add the content hash before signing an event")
    signature = sign_bytes(signed_bytes_for_event(pdu, rv), signing_key)
    signatures = pdu.get("signatures")
    if not isinstance(signatures, dict):
        signatures = pdu["signatures"] = {}
    signatures.setdefault(server_name, {})[key_id(signing_key)] = signature
    return pdu


def sign_bytes(data: bytes, signing_key: Any) -> str:
    """Sign ``data`` and return the signature as unpadded base64."""
    return unpadded_base64(signing_key.sign(data).signature)


def verify_signature_bytes(signed_bytes: bytes, signature: Any, verify_key: Any) -> bool:
    """Whether ``signature`` (unpadded base64) is ``verify_key``'s signature of
    ``signed_bytes``.  Never raises on bad input."""
    if type(signature) is not str:
        return False
    try:
        raw = decode_unpadded_base64(signature)
    except ValueError:
        return False
    if len(raw) != 64:
        return False
    try:
        verify_key.verify(signed_bytes, raw)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        return False
    return True


def verify_event_signature(
    pdu: dict[str, Any],
    rv: RoomVersion,
    server_name: str,
    verify_key: Any,
    *,
    signed_bytes: bytes | None = None,
) -> bool:
    """Whether ``pdu`` carries a valid signature by ``server_name`` with ``verify_key``.

    Works on the full event or a redacted copy alike.  Never raises on bad input.

    :param verify_key: a signedjson ``VerifyKey`` (``alg``, ``version`` set); the signature
        looked up is ``signatures[server_name]["<alg>:<version>"]``.
    :param signed_bytes: :func:`signed_bytes_for_event` of ``pdu`` if already computed
        (e.g. :attr:`fedserver.events.validation.CheckedPdu.signed_bytes`).
    """
    signatures = pdu.get("signatures") if isinstance(pdu, dict) else None
    if not isinstance(signatures, dict):
        return False
    server_sigs = signatures.get(server_name)
    if not isinstance(server_sigs, dict):
        return False
    signature = server_sigs.get(key_id(verify_key))
    if signature is None:
        return False
    if signed_bytes is None:
        try:
            signed_bytes = signed_bytes_for_event(pdu, rv)
        except (CanonicalJSONError, ValueError, TypeError):
            return False
    return verify_signature_bytes(signed_bytes, signature, verify_key)


def _domain(user_or_event_id: Any) -> str | None:
    if type(user_or_event_id) is not str:
        return None
    _, sep, domain = user_or_event_id.partition(":")
    return domain if sep and domain else None


def required_signature_servers(pdu: dict[str, Any], rv: RoomVersion) -> set[str]:
    """The servers whose signatures ``pdu`` must carry.

    Per "Validating hashes and signatures on received events":

    - the ``sender``'s server, unless the event is an invite made from a third-party
      invite (``m.room.member``, ``membership: invite``, ``content.third_party_invite``
      present): its sender matches the 3pid invite and another server may send it;
    - rooms v1-2 (format V1): the server that created the ``event_id``;
    - from room v8 (auth rule "If content has a join_authorised_via_users_server key: if
      the event is not validly signed by the homeserver of the user ID denoted by the
      key, reject"): for joins carrying that key, that user's server.

    Call it on a PDU that passed :func:`~fedserver.events.validation.validate_pdu`.

    :raises SignatureServersError: if ``join_authorised_via_users_server`` is present but
        is not a user id, so no server could validly sign for it.
    """
    servers: set[str] = set()
    content = pdu.get("content")
    if not isinstance(content, dict):
        content = {}
    is_member = pdu.get("type") == "m.room.member"
    membership = content.get("membership") if is_member else None

    if not (membership == "invite" and "third_party_invite" in content):
        sender_domain = _domain(pdu.get("sender"))
        if sender_domain is None:
            raise SignatureServersError("sender is not a user id")
        servers.add(sender_domain)

    if rv.event_format == EventFormat.V1:
        event_domain = _domain(pdu.get("event_id"))
        if event_domain is None:
            raise SignatureServersError("event_id has no server name")
        servers.add(event_domain)

    if rv.restricted_joins and membership == "join" and "join_authorised_via_users_server" in content:
        authoriser = content["join_authorised_via_users_server"]
        if type(authoriser) is not str or not authoriser.startswith("@"):
            raise SignatureServersError("join_authorised_via_users_server is not a user id")
        domain = _domain(authoriser)
        if domain is None:
            raise SignatureServersError("join_authorised_via_users_server is not a user id")
        servers.add(domain)
    return servers


def optional_signature_servers(pdu: dict[str, Any], rv: RoomVersion) -> set[str]:
    """Servers whose signatures ``pdu`` may carry and the auth rules may need, beyond the
    required ones: from room v8, the server of ``join_authorised_via_users_server`` on a
    membership other than ``join`` (auth rule 5.2 of v12, 4.2 of v8-v11, "If content has
    a join_authorised_via_users_server key: If the event is not validly signed by the
    homeserver of the user ID denoted by the key, reject" applies to every membership;
    for joins that server's signature is required, see
    :func:`required_signature_servers`).

    Verify these signatures when present: a valid one goes into the verified servers the
    auth engine is given; a missing or bad one does not drop the event (the spec's
    signature check needs only the originating server), the auth rule rejects it.

    :returns: an empty set, or the one server (never one already required).
    """
    content = pdu.get("content")
    if not rv.restricted_joins or pdu.get("type") != "m.room.member" or not isinstance(content, dict):
        return set()
    if content.get("membership") == "join" or "join_authorised_via_users_server" not in content:
        return set()
    authoriser = content["join_authorised_via_users_server"]
    if type(authoriser) is not str or not authoriser.startswith("@"):
        return set()
    domain = _domain(authoriser)
    if domain is None:
        return set()
    try:
        required = required_signature_servers(pdu, rv)
    except SignatureServersError:
        return set()
    return set() if domain in required else {domain}


# -- non-event JSON (key documents, X-Matrix request JSON) -----------------------------


def sign_json(obj: dict[str, Any], server_name: str, signing_key: Any) -> dict[str, Any]:
    """Sign a JSON object (appendix "Signing JSON"), in place; returns ``obj``.

    ``signatures`` and ``unsigned`` are left out of the signed bytes and kept.

    :raises CanonicalJSONError: if ``obj`` cannot be encoded as canonical JSON.
    """
    try:
        return signedjson.sign.sign_json(obj, server_name, signing_key)
    except (ValueError, TypeError) as e:  # NaN, lone surrogates, non-JSON types
        raise CanonicalJSONError(f"cannot sign: {e}") from None


def verify_json(obj: Any, server_name: str, verify_key: Any) -> bool:
    """Whether ``obj`` carries a valid signature of ``server_name`` by ``verify_key``
    (appendix "Checking for a Signature").  Never raises on bad input.

    Not strict about floats or big integers: request JSON may carry events of rooms v1-5,
    which "MUST NOT strictly enforce" canonical JSON.
    """
    if not isinstance(obj, dict):
        return False
    signatures = obj.get("signatures")
    if not isinstance(signatures, dict):
        return False
    server_sigs = signatures.get(server_name)
    if not isinstance(server_sigs, dict):
        return False
    signature = server_sigs.get(key_id(verify_key))
    if signature is None:
        return False
    stripped = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    try:
        data = _encode_unchecked(stripped)
    except (ValueError, TypeError):  # NaN, lone surrogates, non-JSON types
        return False
    return verify_signature_bytes(data, signature, verify_key)
