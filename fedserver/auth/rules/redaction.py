"""Built-in rule for ``m.room.redaction`` in room v1-v2 (rule 11)."""

from __future__ import annotations

from fedserver.auth.auth_state import AuthState
from fedserver.auth.hookspecs import hookimpl
from fedserver.auth.rule_ids import rule_id
from fedserver.auth.rules._ids import domain_of
from fedserver.auth.verdict import Deny
from fedserver.events.model import Event
from fedserver.room_versions import RoomVersion


@hookimpl(specname="fedserver_auth_redaction")
def check_redaction(event: Event, auth_state: AuthState, room_version: RoomVersion) -> Deny | None:
    """Rule 11 (v1-v2): If type is m.room.redaction."""
    rv = room_version
    # 11.1: If the sender's power level is greater than or equal to the redact level, allow.
    if auth_state.checked_user_level(event.sender) >= auth_state.checked_level("redact"):
        return None
    # 11.2: If the domain of the event_id of the event being redacted is the same as the
    # domain of the event_id of the m.room.redaction, allow.
    redacts = event.redacts
    if redacts is not None:
        target_domain = domain_of(redacts)
        if target_domain is not None and target_domain == domain_of(event.event_id):
            return None
    # 11.3: Otherwise, reject.
    return Deny(
        "sender may not redact events of another server", rule_id(rv, "redaction", "otherwise")
    )
