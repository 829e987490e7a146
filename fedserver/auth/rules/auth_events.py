"""Built-in rule on the auth events an event cites (v1-v11 rule 2.1-2.3 and 2.5, v12 rule
3)."""

from __future__ import annotations

from typing import Sequence

from fedserver.auth.hookspecs import hookimpl
from fedserver.auth.rule_ids import rule_id
from fedserver.auth.selection import auth_types_for_event
from fedserver.auth.verdict import Deny
from fedserver.events.model import Event
from fedserver.room_versions import RoomVersion


@hookimpl(specname="fedserver_auth_auth_events")
def check_auth_events(
    event: Event, auth_events: Sequence[Event], room_version: RoomVersion
) -> Deny | None:
    """Considering the event's auth_events (rule 2 before v12, 3 in v12)."""
    rv = room_version
    expected = auth_types_for_event(rv, event.type, event.state_key, event.sender, event.content)
    seen: set[tuple[str, str]] = set()
    for ae in auth_events:
        key = ae.state_tuple
        # 1: If there are duplicate entries for a given type and state_key pair, reject.
        if key in seen:
            return Deny(
                f"duplicate auth events for {key!r}", rule_id(rv, "auth_events", "duplicates")
            )
        # 2: If there are entries whose type and state_key don't match those specified by
        # the auth events selection algorithm, reject.  (v12: the create event is never
        # selected.)
        if key is None or key not in expected:
            return Deny(
                f"unexpected auth event {ae.event_id} ({ae.type!r}, {ae.state_key!r})",
                rule_id(rv, "auth_events", "unexpected"),
            )
        seen.add(key)
        # 3: If there are entries which were themselves rejected under the checks
        # performed on receipt of a PDU, reject.
        if ae.rejected_reason is not None:
            return Deny(
                f"auth event {ae.event_id} was rejected", rule_id(rv, "auth_events", "rejected")
            )
        # 5 (2.5 in v1-v11, 3.5 in v12): If any event in auth_events has a room_id which
        # does not match that of the event being authorised, reject.  (MSC4307 wrote this
        # into the rules of every room version, v1 included, not only v12.)
        if ae.room_id != event.room_id:
            return Deny(
                f"auth event {ae.event_id} is in another room",
                rule_id(rv, "auth_events", "same_room"),
            )
    return None
