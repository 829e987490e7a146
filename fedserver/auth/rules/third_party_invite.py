"""Built-in rules for third-party invites: an invite carrying ``third_party_invite``
(5.4.1 in v12 numbering) and the ``m.room.third_party_invite`` event itself (rule 7)."""

from __future__ import annotations

from typing import Any, Iterator

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from fedserver.auth.auth_state import AuthState
from fedserver.auth.hookspecs import hookimpl
from fedserver.auth.rule_ids import rule_id
from fedserver.auth.verdict import Deny
from fedserver.events.canonical import CanonicalJSONError, encode_canonical_json
from fedserver.events.hashing import decode_unpadded_base64
from fedserver.events.model import Event
from fedserver.room_versions import RoomVersion


def _public_keys(content: dict[str, Any]) -> Iterator[bytes]:
    """The ed25519 public keys of an ``m.room.third_party_invite``: ``public_key`` and
    each ``public_keys[].public_key`` (base64, standard or URL-safe)."""
    candidates = [content.get("public_key")]
    keys = content.get("public_keys")
    if isinstance(keys, list):
        candidates.extend(k.get("public_key") for k in keys if isinstance(k, dict))
    for candidate in candidates:
        if not isinstance(candidate, str):
            continue
        try:
            key = decode_unpadded_base64(candidate)
        except ValueError:
            continue
        if len(key) == 32:
            yield key


def signed_matches_keys(signed: dict[str, Any], tpi_content: dict[str, Any], strict: bool) -> bool:
    """Whether any ed25519 signature in ``signed`` verifies under any public key of the
    third-party invite event (rule 5.4.1.7).

    The signed bytes are the canonical JSON of ``signed`` without ``signatures`` and
    ``unsigned`` (appendix "Signing JSON").
    """
    signatures = signed.get("signatures")
    if not isinstance(signatures, dict):
        return False
    keys = list(_public_keys(tpi_content))
    if not keys:
        return False
    try:
        message = encode_canonical_json(
            {k: v for k, v in signed.items() if k not in ("signatures", "unsigned")},
            strict=strict,
        )
    except CanonicalJSONError:
        return False
    verify_keys = [VerifyKey(k) for k in keys]
    for server_sigs in signatures.values():
        if not isinstance(server_sigs, dict):
            continue
        for key_id, sig_b64 in server_sigs.items():
            if not (isinstance(key_id, str) and key_id.startswith("ed25519:")):
                continue
            if not isinstance(sig_b64, str):
                continue
            try:
                sig = decode_unpadded_base64(sig_b64)
            except ValueError:
                continue
            if len(sig) != 64:
                continue
            for vk in verify_keys:
                try:
                    vk.verify(message, sig)
                except BadSignatureError:
                    continue
                return True
    return False


@hookimpl(specname="fedserver_auth_member_third_party_invite")
def check_member_third_party_invite(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """If content has a third_party_invite property (5.4.1 in v12 numbering)."""
    rv = room_version

    def rule(name: str) -> str:
        return rule_id(rv, "member", "invite", "third_party", name)

    # 1: If target user is banned, reject.
    if auth_state.target_membership == "ban":
        return Deny("target user is banned", rule("banned"))
    # 2: If content.third_party_invite does not have a signed property, reject.
    tpi = event.content.get("third_party_invite")
    signed = tpi.get("signed") if isinstance(tpi, dict) else None
    if not isinstance(signed, dict):
        return Deny("third_party_invite has no signed object", rule("signed"))
    # 3: If signed does not have mxid and token properties, reject.
    mxid = signed.get("mxid")
    token = signed.get("token")
    if not isinstance(mxid, str) or not isinstance(token, str):
        return Deny("signed has no mxid and token", rule("mxid_token"))
    # 4: If mxid does not match state_key, reject.
    if mxid != event.state_key:
        return Deny("signed mxid is not the invited user", rule("mxid"))
    # 5: If there is no m.room.third_party_invite event in the current room state with
    # state_key matching token, reject.
    invite_event = auth_state.third_party_invite(token)
    if invite_event is None:
        return Deny("no m.room.third_party_invite for the token", rule("token_event"))
    # 6: If sender does not match sender of the m.room.third_party_invite, reject.
    if event.sender != invite_event.sender:
        return Deny("sender did not send the m.room.third_party_invite", rule("sender"))
    # 7: If any signature in signed matches any public key in the
    # m.room.third_party_invite event, allow.
    if signed_matches_keys(signed, invite_event.content, rv.strict_canonicaljson):
        return None
    # 8: Otherwise, reject.
    return Deny("no signature in signed matches the invite's public keys", rule("otherwise"))


@hookimpl(specname="fedserver_auth_third_party_invite_event")
def check_third_party_invite_event(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """Rule 7: allow if and only if sender's current power level is greater than or equal
    to the invite level."""
    if auth_state.checked_user_level(event.sender) >= auth_state.checked_level("invite"):
        return None
    return Deny(
        "sender's power level is below the invite level",
        rule_id(room_version, "third_party_invite", "level"),
    )
