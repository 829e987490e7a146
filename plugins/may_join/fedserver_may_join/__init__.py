"""fedserver_may_join: a room version whose join rules can list who may join."""

from fedserver.auth import Deny, hookimpl
from fedserver.events.validation import is_valid_user_id
from fedserver.room_versions import V12

#: Room v12 plus the join rule below.  Every server in such a room runs this plugin.
MAY_JOIN_V12 = V12.derive("org.fedserver.may_join.12")
#: Under this join rule the users listed in ``may_join`` may join without an invite.
JOIN_RULE = "org.fedserver.may_join"


def _ours(room_version):
    return room_version.identifier == MAY_JOIN_V12.identifier


@hookimpl
def fedserver_register_room_versions():
    return [MAY_JOIN_V12]


@hookimpl
def fedserver_auth_join_rule_allows(event, auth_state, room_version, join_rule):
    """Admit the users listed in ``may_join``, and (as the invite rule does) users
    already invited or joined; only in our room version."""
    if not _ours(room_version) or join_rule != JOIN_RULE:
        return None
    if auth_state.sender_membership in ("invite", "join"):
        return True
    may_join = auth_state.join_rules_event.content.get("may_join")
    if isinstance(may_join, list) and event.state_key in may_join:
        return True
    return None


@hookimpl
def fedserver_auth_event(event, auth_state, room_version):
    """In our room version, a may_join join rules event must list valid user ids."""
    if not _ours(room_version) or event.type != "m.room.join_rules" or event.state_key != "":
        return None
    if event.content.get("join_rule") != JOIN_RULE:
        return None
    may_join = event.content.get("may_join")
    if not isinstance(may_join, list) or not all(is_valid_user_id(u) for u in may_join):
        return Deny("may_join must be a list of user ids", "org.fedserver.may_join 1")
    return None
