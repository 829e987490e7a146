"""The redaction algorithm, per room version (spec: "Redactions" in each room version page)."""

from __future__ import annotations

from typing import Any

from fedserver.room_versions import RoomVersion

# Top-level keys kept by redaction, rooms v1-v10.
_KEEP_TOP_LEVEL_V1 = frozenset(
    {
        "event_id", "type", "room_id", "sender", "state_key", "content", "hashes",
        "signatures", "depth", "prev_events", "prev_state", "auth_events", "origin",
        "origin_server_ts", "membership",
    }
)
# v11 stops protecting origin, membership and prev_state.
_KEEP_TOP_LEVEL_V11 = _KEEP_TOP_LEVEL_V1 - {"origin", "membership", "prev_state"}


def _kept_content_keys(event_type: str, rv: RoomVersion) -> frozenset[str] | None:
    """The content keys an event type keeps, or ``None`` for "all of them"."""
    if event_type == "m.room.member":
        keys = {"membership"}
        if rv.redaction_keeps_authorising_user:
            keys.add("join_authorised_via_users_server")
        if rv.updated_redaction_rules:
            keys.add("third_party_invite")  # only its "signed" part, see redact()
        return frozenset(keys)
    if event_type == "m.room.create":
        return None if rv.updated_redaction_rules else frozenset({"creator"})
    if event_type == "m.room.join_rules":
        if rv.redaction_keeps_join_rule_allow:
            return frozenset({"join_rule", "allow"})
        return frozenset({"join_rule"})
    if event_type == "m.room.power_levels":
        keys = {
            "ban", "events", "events_default", "kick", "redact", "state_default", "users",
            "users_default",
        }
        if rv.updated_redaction_rules:
            keys.add("invite")
        return frozenset(keys)
    if event_type == "m.room.aliases" and rv.special_case_aliases_auth:
        return frozenset({"aliases"})
    if event_type == "m.room.history_visibility":
        return frozenset({"history_visibility"})
    if event_type == "m.room.redaction" and rv.updated_redaction_rules:
        return frozenset({"redacts"})
    return frozenset()


def redact(pdu: dict[str, Any], rv: RoomVersion) -> dict[str, Any]:
    """Return the redacted form of ``pdu`` (a new dict; ``pdu`` is untouched).

    Follows the spec's algorithm: keep only the protected top-level keys, and in
    ``content`` only the keys the event type protects in this room version.
    """
    keep_top = _KEEP_TOP_LEVEL_V11 if rv.updated_redaction_rules else _KEEP_TOP_LEVEL_V1
    out = {k: v for k, v in pdu.items() if k in keep_top}
    content = pdu.get("content")
    if not isinstance(content, dict):
        out["content"] = {}
        return out
    kept = _kept_content_keys(pdu.get("type"), rv) if isinstance(pdu.get("type"), str) else frozenset()
    if kept is None:
        out["content"] = dict(content)
        return out
    new_content = {k: v for k, v in content.items() if k in kept}
    tpi = new_content.get("third_party_invite")
    if tpi is not None:
        # v11: m.room.member keeps the third_party_invite key, stripped of everything but
        # its "signed" key: an object without "signed" stays as {} (Synapse agrees, and the
        # difference changes reference hashes); a non-object value is dropped.
        if isinstance(tpi, dict):
            new_content["third_party_invite"] = {"signed": tpi["signed"]} if "signed" in tpi else {}
        else:
            del new_content["third_party_invite"]
    out["content"] = new_content
    return out
