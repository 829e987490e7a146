"""Spec rule numbers ("v12 5.3.3") for named auth rules in any room version.

The spec renumbers its authorization rules between room versions (the ``m.room.aliases``
rule exists only in v1-v5, v12 inserts a rule 2, sub-rules appear with restricted joins...).
The built-in rules name what they check (``rule_id(rv, "member", "join", "banned")``) and
this module turns the name into the number the spec's text for ``rv`` uses.  The numbering
follows flags, so a plugin's room version derived from a spec version gets that version's
numbering.
"""

from __future__ import annotations

from functools import lru_cache

from fedserver.room_versions import EventFormat, RoomVersion


def redaction_is_auth_rule(rv: RoomVersion) -> bool:
    """Whether ``m.room.redaction`` has its own auth rule (v1 rule 11).

    Rooms v1 and v2 authorise a redaction when the redaction's event id has the same domain
    as the redacted event's id; that needs event ids carrying a domain, which only event
    format V1 has.  From v3 redactions are checked on use, not by the auth rules.
    """
    return rv.event_format == EventFormat.V1


def _numbered(names: list[str]) -> dict[str, int]:
    """``{name: number}``, numbering ``names`` from 1 in order."""
    return {n: i for i, n in enumerate(names, 1)}


def _children(rv: RoomVersion, path: tuple[str, ...]) -> dict[str, int]:
    """``{name: number}`` for the rules directly under ``path`` in ``rv``'s text."""
    if not path:
        return _top_level(rv)
    head = path[0]
    if head == "create":
        return _create_rules(rv)
    if head == "auth_events":
        if rv.room_id_from_create_event:
            # v12 removed 3.4 (no create event among the entries) and kept 3.5's number.
            return {"duplicates": 1, "unexpected": 2, "rejected": 3, "same_room": 5}
        return {"duplicates": 1, "unexpected": 2, "rejected": 3, "room_create": 4, "same_room": 5}
    if head == "aliases":
        return {"state_key": 1, "domain": 2, "allow": 3}
    if head == "third_party_invite":
        return {"level": 1}
    if head == "redaction":
        return {"level": 1, "domain": 2, "otherwise": 3}
    if head == "power_levels":
        return _power_levels_rules(rv)
    if head == "member":
        return _member_rules(rv, path)
    raise KeyError(path)


def _top_level(rv: RoomVersion) -> dict[str, int]:
    """The top-level rules: v12 "1. If type is m.room.create" ... "11. Otherwise, allow."
    (v12 adds 2, the room id naming the create event; v1-v5 have the m.room.aliases rule;
    v1-v2 the m.room.redaction one)."""
    names = ["create"]
    if rv.room_id_from_create_event:
        names.append("room_create")
    names += ["auth_events", "federate"]
    if rv.special_case_aliases_auth:
        names.append("aliases")
    names += [
        "member", "sender_in_room", "third_party_invite", "event_power", "state_key",
        "power_levels",
    ]
    if redaction_is_auth_rule(rv):
        names.append("redaction")
    names.append("allow")
    return _numbered(names)


def _create_rules(rv: RoomVersion) -> dict[str, int]:
    """Under "If type is m.room.create" (rule 1): prev_events, room_id (v12: "If the event
    has a room_id, reject"), room_version, creator (before v11), v12 additional_creators,
    "Otherwise, allow"."""
    names = ["prev_events", "room_id", "room_version"]
    if not rv.implicit_room_creator:
        names.append("creator")
    if rv.privileged_creators:
        names.append("additional_creators")
    names.append("allow")
    return _numbered(names)


def _power_levels_rules(rv: RoomVersion) -> dict[str, int]:
    """Under "If type is m.room.power_levels" (v12 10.1-10.11: v10+ the integer checks,
    users, v12 the creators, no previous event, then the alterations)."""
    names = []
    if rv.integer_power_levels:
        names += ["scalar_types", "map_types"]
    names.append("users")
    if rv.privileged_creators:
        names.append("creators")
    names += [
        "no_previous", "scalars", "maps_removed", "maps_added", "users_removed",
        "users_added", "allow",
    ]
    return _numbered(names)


def _member_rules(rv: RoomVersion, path: tuple[str, ...]) -> dict[str, int]:
    """Under "If type is m.room.member" (v12 5): the fields, v8+ the authorising server's
    signature, then one rule per membership (v7+ knock) and "the membership is unknown";
    and the sub-rules of join (with v8+ restricted), invite (with third_party_invite),
    leave, ban and knock."""
    if len(path) == 1:
        names = ["fields"]
        if rv.restricted_joins:
            names.append("authorised_via")
        names += ["join", "invite", "leave", "ban"]
        if rv.knocking:
            names.append("knock")
        names.append("unknown")
        return _numbered(names)
    sub = path[1]
    if sub == "join":
        if len(path) == 3 and path[2] == "restricted":
            return {"member": 1, "authoriser": 2, "allow": 3}
        names = ["creator", "sender_is_target", "banned", "invite"]
        if rv.restricted_joins:
            names.append("restricted")
        names += ["public", "otherwise"]
        return _numbered(names)
    if sub == "invite":
        if len(path) == 3 and path[2] == "third_party":
            return _numbered([
                "banned", "signed", "mxid_token", "mxid", "token_event", "sender",
                "signature", "otherwise",
            ])
        return _numbered(["third_party", "sender_joined", "target_state", "level", "otherwise"])
    if sub == "leave":
        return _numbered(["self", "sender_joined", "banned_target", "kick", "otherwise"])
    if sub == "ban":
        return {"sender_joined": 1, "level": 2, "otherwise": 3}
    if sub == "knock":
        return {"join_rule": 1, "sender_is_target": 2, "membership": 3, "otherwise": 4}
    raise KeyError(path)


def version_label(rv: RoomVersion) -> str:
    """``"v12"`` for numeric identifiers, else the identifier itself."""
    return "v" + rv.identifier if rv.identifier.isdigit() else rv.identifier


@lru_cache(maxsize=1024)
def rule_id(rv: RoomVersion, *names: str) -> str:
    """The label of the rule ``names`` in ``rv``: ``rule_id(V12, "member", "join",
    "banned") == "v12 5.3.3"``.

    :raises KeyError: if the rule does not exist in ``rv`` (a bug in the caller).
    """
    numbers = []
    for depth in range(len(names)):
        numbers.append(str(_children(rv, names[:depth])[names[depth]]))
    return f"{version_label(rv)} {'.'.join(numbers)}"
