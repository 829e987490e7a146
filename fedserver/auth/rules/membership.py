"""Built-in rules for ``m.room.member`` events (rule 5 in v1-v5 and v12, 4 in v6-v11):
what every membership event needs, then join, invite, leave/kick, ban and knock."""

from __future__ import annotations

from fedserver.auth.auth_state import AuthState
from fedserver.auth.hookspecs import hookimpl
from fedserver.auth.rule_ids import rule_id
from fedserver.auth.rules._ids import domain_of, is_valid_user_id
from fedserver.auth.selection import CREATE
from fedserver.auth.verdict import Deny
from fedserver.events.model import Event
from fedserver.room_versions import RoomVersion


_MEMBERSHIPS = frozenset(("join", "invite", "leave", "ban"))
_MEMBERSHIPS_KNOCKING = _MEMBERSHIPS | {"knock"}


def known_memberships(rv: RoomVersion) -> frozenset[str]:
    """The memberships ``rv``'s rules define."""
    return _MEMBERSHIPS_KNOCKING if rv.knocking else _MEMBERSHIPS


def known_join_rules(rv: RoomVersion) -> frozenset[str]:
    """The join rules ``rv``'s rules define (anything else admits nobody)."""
    rules = {"public", "invite"}
    if rv.knocking:
        rules.add("knock")
    if rv.restricted_joins:
        rules.add("restricted")
    if rv.knock_restricted:
        rules.add("knock_restricted")
    return frozenset(rules)


@hookimpl(specname="fedserver_auth_member")
def check_member(event: Event, auth_state: AuthState, room_version: RoomVersion) -> Deny | None:
    """5.1, 5.2 (v8+) and the closing "membership is unknown" rule."""
    rv = room_version
    # 5.1: If there is no state_key property, or no membership property in content, reject.
    if event.state_key is None or "membership" not in event.content:
        return Deny(
            "membership event without state_key or membership", rule_id(rv, "member", "fields")
        )
    # The rules below are about the *target user*, "the user given by the state_key"
    # (server-server API, "Definitions"): a state_key that is not a user ID names nobody,
    # so no rule can be applied to it.  The spec has no sentence for this; Synapse cannot
    # process such an event and ruma rejects it, so it is rejected here, under 5.1.
    if not is_valid_user_id(event.state_key):
        return Deny(
            "membership event whose state_key is not a user ID", rule_id(rv, "member", "fields")
        )
    # 5.2 (v8+): If content has a join_authorised_via_users_server key: if the event is
    # not validly signed by the homeserver of the user ID denoted by the key, reject.
    if rv.restricted_joins and "join_authorised_via_users_server" in event.content:
        via = event.content["join_authorised_via_users_server"]
        server = domain_of(via) if isinstance(via, str) else None
        if not server or not auth_state.signed_by_server(server):
            return Deny(
                "join_authorised_via_users_server's server has not signed the event",
                rule_id(rv, "member", "authorised_via"),
            )
    # Last: Otherwise, the membership is unknown. Reject.
    if event.membership not in known_memberships(rv):
        return Deny(
            f"unknown membership {event.content.get('membership')!r}",
            rule_id(rv, "member", "unknown"),
        )
    return None


@hookimpl(specname="fedserver_auth_member_join")
def check_member_join(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """If membership is join (5.3 in v12 numbering)."""
    rv = room_version
    sender = event.sender
    # 1: If the only previous event is an m.room.create and the state_key is the creator
    # (v11+: the sender of the m.room.create), allow.
    prev = event.prev_event_ids
    create = auth_state.create
    if (
        len(prev) == 1
        and create is not None
        and create.type == CREATE
        and prev[0] == create.event_id
        and event.state_key == auth_state.first_join_creator
    ):
        return None
    # 2: If the sender does not match state_key, reject.
    if sender != event.state_key:
        return Deny(
            "sender may not join on behalf of another user",
            rule_id(rv, "member", "join", "sender_is_target"),
        )
    membership = auth_state.sender_membership
    # 3: If the sender is banned, reject.
    if membership == "ban":
        return Deny("sender is banned", rule_id(rv, "member", "join", "banned"))
    join_rule = auth_state.join_rule
    # 4: If the join_rule is invite (or, v7+, knock) then allow if membership state is
    # invite or join.
    if join_rule == "invite" or (join_rule == "knock" and rv.knocking):
        if membership in ("invite", "join"):
            return None
        return Deny(
            f"join rule is {join_rule} and the sender is not invited",
            rule_id(rv, "member", "join", "otherwise"),
        )
    # 5 (v8+): If the join_rule is restricted (or, v10+, knock_restricted):
    if (join_rule == "restricted" and rv.restricted_joins) or (
        join_rule == "knock_restricted" and rv.knock_restricted
    ):
        # 5.1: If membership state is join or invite, allow.
        if membership in ("join", "invite"):
            return None
        # 5.2: If the join_authorised_via_users_server key in content is not a user with
        # sufficient permission to invite other users, reject.
        via = event.content.get("join_authorised_via_users_server")
        if not isinstance(via, str) or not _can_invite(auth_state, via):
            return Deny(
                "join_authorised_via_users_server is not a user who may invite",
                rule_id(rv, "member", "join", "restricted", "authoriser"),
            )
        # 5.3: Otherwise, allow.
        return None
    # 6: If the join_rule is public, allow.
    if join_rule == "public":
        return None
    # Beyond the spec, and only in room versions that are not spec versions: a plugin
    # may admit joins under a join rule of its own version.
    if (
        join_rule is not None
        and join_rule not in known_join_rules(rv)
        and auth_state.join_rule_allows(join_rule)
    ):
        return None
    # 7: Otherwise, reject.
    return Deny(
        f"join rule {join_rule!r} does not admit the sender",
        rule_id(rv, "member", "join", "otherwise"),
    )


def _can_invite(auth_state: AuthState, user_id: str) -> bool:
    """Whether ``user_id`` could invite: joined (5.4.2) with the invite level (5.4.4)."""
    return (
        auth_state.membership(user_id) == "join"
        and auth_state.checked_user_level(user_id) >= auth_state.checked_level("invite")
    )


@hookimpl(specname="fedserver_auth_member_invite")
def check_member_invite(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """If membership is invite, without third_party_invite (5.4.2-5.4.5 in v12)."""
    rv = room_version
    # 2: If the sender's current membership state is not join, reject.
    if auth_state.sender_membership != "join":
        return Deny("sender is not joined", rule_id(rv, "member", "invite", "sender_joined"))
    # 3: If target user's current membership state is join or ban, reject.
    target = auth_state.target_membership
    if target in ("join", "ban"):
        return Deny(
            f"target user is already {'joined' if target == 'join' else 'banned'}",
            rule_id(rv, "member", "invite", "target_state"),
        )
    # 4: If the sender's power level is greater than or equal to the invite level, allow.
    if auth_state.checked_user_level(event.sender) >= auth_state.checked_level("invite"):
        return None
    # 5: Otherwise, reject.
    return Deny(
        "sender's power level is below the invite level",
        rule_id(rv, "member", "invite", "otherwise"),
    )


@hookimpl(specname="fedserver_auth_member_leave")
def check_member_leave(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """If membership is leave: leaving, kicking, unbanning (5.5 in v12)."""
    rv = room_version
    sender_membership = auth_state.sender_membership
    # 1: If the sender matches state_key, allow if and only if that user's current
    # membership state is invite, join, or (v7+) knock.
    if event.sender == event.state_key:
        allowed = ("invite", "join", "knock") if rv.knocking else ("invite", "join")
        if sender_membership in allowed:
            return None
        return Deny(
            f"cannot leave from membership {sender_membership!r}",
            rule_id(rv, "member", "leave", "self"),
        )
    # 2: If the sender's current membership state is not join, reject.
    if sender_membership != "join":
        return Deny("sender is not joined", rule_id(rv, "member", "leave", "sender_joined"))
    sender_level = auth_state.checked_user_level(event.sender)
    # 3: If the target user's current membership state is ban, and the sender's power
    # level is less than the ban level, reject.
    if auth_state.target_membership == "ban" and sender_level < auth_state.checked_level("ban"):
        return Deny(
            "sender's power level is below the ban level needed to unban",
            rule_id(rv, "member", "leave", "banned_target"),
        )
    # 4: If the sender's power level is greater than or equal to the kick level, and the
    # target user's power level is less than the sender's power level, allow.
    if (
        sender_level >= auth_state.checked_level("kick")
        and auth_state.checked_user_level(event.state_key) < sender_level
    ):
        return None
    # 5: Otherwise, reject.
    return Deny(
        "sender may not kick the target user", rule_id(rv, "member", "leave", "otherwise")
    )


@hookimpl(specname="fedserver_auth_member_ban")
def check_member_ban(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """If membership is ban (5.6 in v12)."""
    rv = room_version
    # 1: If the sender's current membership state is not join, reject.
    if auth_state.sender_membership != "join":
        return Deny("sender is not joined", rule_id(rv, "member", "ban", "sender_joined"))
    # 2: If the sender's power level is greater than or equal to the ban level, and the
    # target user's power level is less than the sender's power level, allow.
    sender_level = auth_state.checked_user_level(event.sender)
    if (
        sender_level >= auth_state.checked_level("ban")
        and auth_state.checked_user_level(event.state_key) < sender_level
    ):
        return None
    # 3: Otherwise, reject.
    return Deny("sender may not ban the target user", rule_id(rv, "member", "ban", "otherwise"))


@hookimpl(specname="fedserver_auth_member_knock")
def check_member_knock(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """If membership is knock (v7+; 5.7 in v12)."""
    rv = room_version
    # 1: If the join_rule is anything other than knock (or, v10+, knock_restricted), reject.
    join_rule = auth_state.join_rule
    if not (join_rule == "knock" or (join_rule == "knock_restricted" and rv.knock_restricted)):
        return Deny(
            f"join rule {join_rule!r} does not allow knocking",
            rule_id(rv, "member", "knock", "join_rule"),
        )
    # 2: If sender does not match state_key, reject.
    if event.sender != event.state_key:
        return Deny(
            "sender may not knock on behalf of another user",
            rule_id(rv, "member", "knock", "sender_is_target"),
        )
    # 3: If the sender's current membership is not ban, invite, or join, allow.
    membership = auth_state.sender_membership
    if membership not in ("ban", "invite", "join"):
        return None
    # 4: Otherwise, reject.
    return Deny(
        f"cannot knock from membership {membership!r}",
        rule_id(rv, "member", "knock", "otherwise"),
    )
