"""Built-in rule on ``m.federate`` (rule 3; v12 rule 4)."""

from __future__ import annotations

from fedserver.auth.auth_state import AuthState
from fedserver.auth.hookspecs import hookimpl
from fedserver.auth.rule_ids import rule_id
from fedserver.auth.rules._ids import domain_of
from fedserver.auth.verdict import Deny
from fedserver.events.model import Event
from fedserver.room_versions import RoomVersion


@hookimpl(specname="fedserver_auth_federate")
def check_federate(event: Event, auth_state: AuthState, room_version: RoomVersion) -> Deny | None:
    """If the content of the m.room.create event in the room state has the property
    m.federate set to false, and the sender domain of the event does not match the sender
    domain of the create event, reject."""
    create = auth_state.create
    if create is None or create.content.get("m.federate", True) is not False:
        return None
    if domain_of(event.sender) != domain_of(create.sender):
        return Deny("the room does not federate", rule_id(room_version, "federate"))
    return None
