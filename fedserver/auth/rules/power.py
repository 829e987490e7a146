"""Built-in rules every ordinary event passes: the sender is joined (rule 6), has the
required power level (rule 8), and owns ``@``-state keys (rule 9)."""

from __future__ import annotations

from fedserver.auth.auth_state import AuthState
from fedserver.auth.hookspecs import hookimpl
from fedserver.auth.rule_ids import rule_id
from fedserver.auth.verdict import Deny
from fedserver.events.model import Event
from fedserver.room_versions import RoomVersion


@hookimpl(specname="fedserver_auth_sender_in_room")
def check_sender_in_room(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """Rule 6: If the sender's current membership state is not join, reject."""
    if auth_state.sender_membership != "join":
        return Deny("sender is not joined to the room", rule_id(room_version, "sender_in_room"))
    return None


@hookimpl(specname="fedserver_auth_event_power")
def check_event_power(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """Rule 8: If the event type's required power level is greater than the sender's
    power level, reject."""
    required = auth_state.checked_required_level()
    level = auth_state.checked_user_level(event.sender)
    if required > level:
        return Deny(
            f"sender's power level {level} is below {required} required for {event.type}",
            rule_id(room_version, "event_power"),
        )
    return None


@hookimpl(specname="fedserver_auth_state_key_ownership")
def check_state_key_ownership(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """Rule 9: If the event has a state_key that starts with an @ and does not match the
    sender, reject."""
    sk = event.state_key
    if sk is not None and sk.startswith("@") and sk != event.sender:
        return Deny(
            "state_key is another user's id", rule_id(room_version, "state_key")
        )
    return None
