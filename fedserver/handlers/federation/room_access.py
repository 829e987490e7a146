"""Whether another server's user may know that one of our rooms exists (seed 004)."""

# Seed 004 ("Private and Non-Existent Rooms"): "If a user requests to join a room but the
# room is either unknown by the home server receiving the request, or is known but the
# join mode is "invite" and the user has not been invited, the server must respond that
# the room does not exist. This is to prevent leaking information about the existence
# and identity of private rooms." Issue 12 extends it to every federation endpoint that
# names a room: a server that may not see a room gets exactly the answer a room that does
# not exist gets, decided before anything else about the room, and nothing is stored.
#
# For the membership handshakes (make_/send_ join, leave, knock) a user may see a room if:
#   - they have a membership in its current state (invited, joined, knocking, left or
#     banned: they were told of the room), or
#   - its join rule lets strangers in or to the door: public, knock, knock_restricted
#     (knocking is how one asks), or
#   - it is restricted (v8+) and either they are joined to an allowed room this server
#     is in, or one of the allowed rooms is one this server is not in. In that last case
#     the server cannot tell, and the spec requires the answer M_UNABLE_TO_AUTHORISE_JOIN
#     so that the joining server asks another resident (server-server API, make_join
#     400: "If the room is restricted and none of the conditions can be validated by the
#     server then the errcode M_UNABLE_TO_AUTHORISE_JOIN must be used").
# Anything else (invite, private, no m.room.join_rules at all: treated as invite, as
# Synapse and ruma do) is invisible to them, except that a join rule a plugin defines
# shows the room to the users the auth rules (with the plugin's hooks) would let join:
# the handshake handler asks the auth engine about a join template for those.

from __future__ import annotations

from typing import Any, Mapping, Optional

from fedserver.events.model import Event
from fedserver.storage.interface import StateKey

JOIN_RULES_KEY: StateKey = ("m.room.join_rules", "")

#: Join rules that let anyone find the room: to join, or to knock.
OPEN_RULES = frozenset({"public", "knock", "knock_restricted"})
RESTRICTED_RULES = frozenset({"restricted", "knock_restricted"})


def join_rule(event: Optional[Event]) -> str:
    """The room's join rule; ``invite`` when the room has no ``m.room.join_rules`` or its
    value is not a string."""
    if event is None:
        return "invite"
    value = event.content.get("join_rule")
    return value if isinstance(value, str) else "invite"


def allowed_rooms(join_rules: Optional[Event]) -> list[str]:
    """The room ids of the ``m.room_membership`` conditions of a restricted room's
    ``allow`` list (client-server spec "Restricted rooms")."""
    if join_rules is None:
        return []
    allow = join_rules.content.get("allow")
    out = []
    for entry in allow if isinstance(allow, list) else []:
        if isinstance(entry, dict) and entry.get("type") == "m.room_membership" and isinstance(entry.get("room_id"), str):
            out.append(entry["room_id"])
    return out


class RoomAccess:
    """Answers "may this user of another server know this room exists?" (see the module
    comment) and "does this user meet a restricted room's conditions?".

    :param store: the store (events, room members, joined hosts).
    :param server_name: ours.
    """

    def __init__(self, store: Any, server_name: str) -> None:
        self._store = store
        self._server_name = server_name

    async def user_may_see(self, state: Mapping[StateKey, str], user_id: str) -> bool:
        """Whether ``user_id`` may see the room whose current state is ``state``."""
        wanted = [v for v in (state.get(("m.room.member", user_id)), state.get(JOIN_RULES_KEY)) if v is not None]
        events = await self._store.get_events(wanted) if wanted else {}
        member_id = state.get(("m.room.member", user_id))
        member = events.get(member_id) if member_id is not None else None
        if member is not None and member.membership is not None:
            return True
        jr_id = state.get(JOIN_RULES_KEY)
        jr = events.get(jr_id) if jr_id is not None else None
        rule = join_rule(jr)
        if rule in OPEN_RULES:
            return True
        if rule in RESTRICTED_RULES:
            verdict = await self.meets_conditions(jr, user_id)
            return verdict is not False
        return False

    async def meets_conditions(self, join_rules: Optional[Event], user_id: str) -> Optional[bool]:
        """Whether ``user_id`` meets one of a restricted room's ``allow`` conditions:
        ``True`` if joined to an allowed room this server is in; ``False`` if not and this
        server is in every allowed room; ``None`` if it cannot tell (an allowed room this
        server is not in)."""
        unknown = False
        for room_id in allowed_rooms(join_rules):
            members = await self._store.get_room_members(room_id, "join")
            if not any(m.partition(":")[2] == self._server_name for m in members):
                unknown = True  # not in that room: its membership is not ours to judge
                continue
            if user_id in members:
                return True
        return None if unknown else False
