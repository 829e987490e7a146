"""Auth events selection (server-server API, "Auth events selection"): which state an
event's ``auth_events`` must cite."""

from __future__ import annotations

from typing import Any, Mapping

from fedserver.room_versions import RoomVersion

CREATE = "m.room.create"
MEMBER = "m.room.member"
POWER_LEVELS = "m.room.power_levels"
JOIN_RULES = "m.room.join_rules"
THIRD_PARTY_INVITE = "m.room.third_party_invite"

CREATE_KEY = (CREATE, "")
POWER_LEVELS_KEY = (POWER_LEVELS, "")
JOIN_RULES_KEY = (JOIN_RULES, "")


def auth_types_for_event(
    rv: RoomVersion,
    type: str,
    state_key: str | None,
    sender: str,
    content: Mapping[str, Any],
) -> set[tuple[str, str]]:
    """The ``(type, state_key)`` pairs an event's ``auth_events`` may cite.

    Per the spec's selection: nothing for ``m.room.create``; otherwise the create event
    (except from room v12, where the room id stands for it), the power levels, the
    sender's membership, and for ``m.room.member`` events the target's membership, the
    join rules (membership ``join``, ``invite`` or ``knock``), the third-party invite named
    by ``content.third_party_invite.signed.token`` (``invite``) and, for a ``join`` in a
    version with restricted rooms, the membership of
    ``content.join_authorised_via_users_server``.

    Malformed content is tolerated: fields of the wrong type are ignored here and left to
    the auth rules to reject.

    :param rv: the room version.
    :param type: the event's ``type``.
    :param state_key: its ``state_key`` (``None`` for non-state events).
    :param sender: its ``sender``.
    :param content: its ``content``.
    :returns: a new set of keys.
    """
    if type == CREATE:
        return set()
    keys = {POWER_LEVELS_KEY, (MEMBER, sender)}
    if not rv.room_id_from_create_event:
        keys.add(CREATE_KEY)
    if type == MEMBER and isinstance(state_key, str):
        keys.add((MEMBER, state_key))
        membership = content.get("membership")
        if membership in ("join", "invite", "knock"):
            keys.add(JOIN_RULES_KEY)
        if membership == "invite":
            tpi = content.get("third_party_invite")
            if isinstance(tpi, dict):
                signed = tpi.get("signed")
                if isinstance(signed, dict):
                    token = signed.get("token")
                    if isinstance(token, str):
                        keys.add((THIRD_PARTY_INVITE, token))
        elif membership == "join" and rv.restricted_joins:
            via = content.get("join_authorised_via_users_server")
            if isinstance(via, str):
                keys.add((MEMBER, via))
    return keys


def select_from_state(
    rv: RoomVersion, event: Any, state: Mapping[tuple[str, str], Any]
) -> dict[tuple[str, str], Any]:
    """The entries of ``state`` at the keys :func:`auth_types_for_event` gives for
    ``event`` (an :class:`~fedserver.events.model.Event` other than ``m.room.create``),
    absent ones left out: the auth events an event is judged against when judged
    against a state.

    The same selection, looked up as it is decided instead of through a set of keys:
    the auth engine does this once per check, and state resolution checks thousands of
    events. ``tests/test_auth_selection_state.py`` holds it equal to
    :func:`auth_types_for_event`.
    """
    get = state.get
    found: dict[tuple[str, str], Any] = {}
    value = get(POWER_LEVELS_KEY)
    if value is not None:
        found[POWER_LEVELS_KEY] = value
    key: tuple[str, str] = (MEMBER, event.sender)
    value = get(key)
    if value is not None:
        found[key] = value
    if not rv.room_id_from_create_event:
        value = get(CREATE_KEY)
        if value is not None:
            found[CREATE_KEY] = value
    state_key = event.state_key
    if event.type != MEMBER or not isinstance(state_key, str):
        return found
    key = (MEMBER, state_key)
    if key not in found:
        value = get(key)
        if value is not None:
            found[key] = value
    content = event.content
    membership = content.get("membership")
    if membership in ("join", "invite", "knock"):
        value = get(JOIN_RULES_KEY)
        if value is not None:
            found[JOIN_RULES_KEY] = value
    if membership == "invite":
        tpi = content.get("third_party_invite")
        if isinstance(tpi, dict):
            signed = tpi.get("signed")
            if isinstance(signed, dict):
                token = signed.get("token")
                if isinstance(token, str):
                    key = (THIRD_PARTY_INVITE, token)
                    value = get(key)
                    if value is not None:
                        found[key] = value
    elif membership == "join" and rv.restricted_joins:
        via = content.get("join_authorised_via_users_server")
        if isinstance(via, str):
            key = (MEMBER, via)
            if key not in found:
                value = get(key)
                if value is not None:
                    found[key] = value
    return found


#: The order auth event ids are listed in when we build an event.
_ORDER = {CREATE: 0, POWER_LEVELS: 1, JOIN_RULES: 2, MEMBER: 3, THIRD_PARTY_INVITE: 4}


def select_auth_events(
    rv: RoomVersion, event_fields: Mapping[str, Any], state: Mapping[tuple[str, str], Any]
) -> list[str]:
    """The event ids to put in ``auth_events`` of an event we are building.

    :param rv: the room version.
    :param event_fields: the new event's ``type``, ``state_key`` (optional), ``sender``
        and ``content`` (optional).
    :param state: the current state, ``(type, state_key)`` to an
        :class:`~fedserver.events.model.Event` or to an event id.
    :returns: event ids in a stable order (create, power levels, join rules, members,
        third-party invite); state that does not exist is left out.
    """
    content = event_fields.get("content")
    keys = auth_types_for_event(
        rv,
        event_fields["type"],
        event_fields.get("state_key"),
        event_fields["sender"],
        content if isinstance(content, dict) else {},
    )
    ids = []
    for key in sorted(keys, key=lambda k: (_ORDER.get(k[0], 9), k)):
        value = state.get(key)
        if value is None:
            continue
        ids.append(value if isinstance(value, str) else value.event_id)
    return ids
