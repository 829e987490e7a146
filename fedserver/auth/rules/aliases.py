"""Built-in rule for ``m.room.aliases`` in room v1-v5 (rule 4)."""

from __future__ import annotations

from fedserver.auth.auth_state import AuthState
from fedserver.auth.hookspecs import hookimpl
from fedserver.auth.rule_ids import rule_id
from fedserver.auth.rules._ids import domain_of
from fedserver.auth.verdict import Deny
from fedserver.events.model import Event
from fedserver.room_versions import RoomVersion


@hookimpl(specname="fedserver_auth_aliases")
def check_aliases(event: Event, auth_state: AuthState, room_version: RoomVersion) -> Deny | None:
    """Rule 4 (v1-v5): If type is m.room.aliases."""
    rv = room_version
    # 4.1: If event has no state_key, reject.
    if event.state_key is None:
        return Deny("aliases event has no state_key", rule_id(rv, "aliases", "state_key"))
    # 4.2: If sender's domain doesn't match state_key, reject.
    if domain_of(event.sender) != event.state_key:
        return Deny(
            "aliases state_key is not the sender's domain", rule_id(rv, "aliases", "domain")
        )
    # 4.3: Otherwise, allow.
    return None
