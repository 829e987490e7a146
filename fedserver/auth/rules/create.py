"""Built-in rules about the create event: rule 1 (the create event itself) and the rule
that every other event is governed by an accepted create event (v12 rule 2, v1-v11 2.4)."""

from __future__ import annotations

from fedserver.auth.auth_state import AuthState
from fedserver.auth.hookspecs import hookimpl
from fedserver.auth.rule_ids import rule_id
from fedserver.auth.rules._ids import domain_of, is_valid_user_id
from fedserver.auth.selection import CREATE
from fedserver.auth.verdict import Deny
from fedserver.events.model import Event
from fedserver.room_versions import RoomVersion


@hookimpl(specname="fedserver_auth_create")
def check_create(event: Event, auth_state: AuthState, room_version: RoomVersion) -> Deny | None:
    """Rule 1: the ``m.room.create`` event."""
    rv = room_version
    # 1.1: If it has any prev_events, reject.
    if event.pdu.get("prev_events"):
        return Deny("create event has prev_events", rule_id(rv, "create", "prev_events"))
    if rv.room_id_from_create_event:
        # v12 1.2: If the event has a room_id, reject.
        if "room_id" in event.pdu:
            return Deny("create event has a room_id", rule_id(rv, "create", "room_id"))
    else:
        # 1.2: If the domain of the room_id does not match the domain of the sender, reject.
        room_id = event.pdu.get("room_id")
        room_domain = domain_of(room_id) if isinstance(room_id, str) else None
        if room_domain is None or room_domain != domain_of(event.sender):
            return Deny(
                "room_id domain does not match the sender's domain",
                rule_id(rv, "create", "room_id"),
            )
    # 1.3: If content.room_version is present and is not a recognised version, reject.
    content = event.content
    if "room_version" in content and not auth_state.is_known_room_version(content["room_version"]):
        return Deny(
            f"unknown room version {content['room_version']!r}",
            rule_id(rv, "create", "room_version"),
        )
    # v1-v10 1.4: If content has no creator property, reject.
    if not rv.implicit_room_creator and "creator" not in content:
        return Deny("create event has no creator", rule_id(rv, "create", "creator"))
    # v12 1.4: If additional_creators is present in content and is not an array of
    # strings where each string passes the same user ID validation applied to sender,
    # reject.
    if rv.privileged_creators and "additional_creators" in content:
        extra = content["additional_creators"]
        if not isinstance(extra, list) or not all(is_valid_user_id(u) for u in extra):
            return Deny(
                "additional_creators is not a list of valid user ids",
                rule_id(rv, "create", "additional_creators"),
            )
    # 1.5: Otherwise, allow.
    return None


@hookimpl(specname="fedserver_auth_room_create_event")
def check_room_create_event(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """v12 rule 2 / v1-v11 rule 2.4: the event is governed by an accepted create event."""
    rv = room_version
    create = auth_state.create
    if rv.room_id_from_create_event:
        # v12 2: If the event's room_id is not an event ID for an accepted (not rejected)
        # m.room.create event, with the sigil ! instead of $, reject.
        if create is None:
            return Deny("the room's create event is not known", rule_id(rv, "room_create"))
        room_id = event.room_id
        if (
            create.type != CREATE
            or not isinstance(room_id, str)
            or not room_id.startswith("!")
            or create.event_id != "$" + room_id[1:]
        ):
            return Deny("room_id does not name the create event", rule_id(rv, "room_create"))
        if create.rejected_reason is not None:
            return Deny("the room's create event was rejected", rule_id(rv, "room_create"))
        return None
    # 2.4: If there is no m.room.create event among the entries, reject.
    if create is None:
        return Deny("no create event among the auth events",
                    rule_id(rv, "auth_events", "room_create"))
    return None
