"""Built-in rule for ``m.room.power_levels`` events (rule 10 in v1-v5 and v12, 9 in
v6-v11)."""

from __future__ import annotations

import json
from typing import Any

from fedserver.auth.auth_state import AuthState
from fedserver.auth.hookspecs import hookimpl
from fedserver.auth.power_levels import SCALAR_DEFAULTS, parse_level
from fedserver.auth.rule_ids import rule_id
from fedserver.auth.rules._ids import is_valid_user_id
from fedserver.auth.verdict import Deny
from fedserver.events.model import Event
from fedserver.room_versions import RoomVersion

_SCALARS = tuple(SCALAR_DEFAULTS)
_MAPS = ("events", "notifications")
_EVENTS_ONLY = ("events",)


def _levels(value: Any, rv: RoomVersion) -> dict[str, int] | None:
    """``{key: level}`` of a mapping property, or ``None`` if it is not an object of
    levels ``rv`` accepts."""
    if not isinstance(value, dict):
        return None
    out = {}
    for k, v in value.items():
        level = parse_level(v, rv)
        if level is None:
            return None
        out[k] = level
    return out


def _lenient_levels(value: Any, rv: RoomVersion) -> dict[str, int]:
    """Like :func:`_levels` for the previous event, skipping what cannot be read."""
    if not isinstance(value, dict):
        return {}
    out = {}
    for k, v in value.items():
        level = parse_level(v, rv)
        if level is not None:
            out[k] = level
    return out


@hookimpl(specname="fedserver_auth_power_levels")
def check_power_levels(
    event: Event, auth_state: AuthState, room_version: RoomVersion
) -> Deny | None:
    """If type is m.room.power_levels.

    The v12 numbering is quoted below (v10-v11 lack 10.4; before v10, 10.1, 10.2 and 10.4
    do not exist; before v6 only ``events`` is checked in 10.7 and 10.8).
    """
    rv = room_version
    content = event.content
    new_users = _check_content(content, auth_state, rv)
    if isinstance(new_users, Deny):
        return new_users
    # 10.5: If there is no previous m.room.power_levels event in the room, allow.
    previous = auth_state.power_levels_event
    if previous is None:
        return None
    old = previous.content
    sender_level = auth_state.checked_user_level(event.sender)

    # Before v10 a value may be a string or a float; "added, changed or removed" is about
    # the level it stands for ("50" -> 50 is no change).  A value that is not a power
    # level at all (possible in a room's first power levels event before v10) cannot be
    # compared with the sender's level: if it is altered the event is rejected under the
    # rule that compares it; if it is left as it was, no rule compares it.
    # 10.6-10.10 in order; 10.11: "Otherwise, allow." (each returns None when it allows).
    return (
        _check_scalar_changes(old, content, sender_level, rv)
        or _check_map_changes(old, content, sender_level, rv)
        or _check_user_changes(old, new_users, event.sender, sender_level, rv)
    )


def _rule(rv: RoomVersion, name: str) -> str:
    """The spec's number in ``rv`` of the power levels sub-rule ``name``."""
    return rule_id(rv, "power_levels", name)


def _check_content(
    content: dict[str, Any], auth_state: AuthState, rv: RoomVersion
) -> dict[str, int] | Deny:
    """v12 10.1-10.4, the new content on its own.

    10.1 (v10+): "If any of the properties users_default, events_default, state_default,
    ban, redact, kick, or invite in content are present and not an integer, reject."
    10.2 (v10+): "If either of the properties events or notifications in content are
    present and not an object with values that are integers, reject."
    10.3: "If the users property in content is not an object with keys that are valid user
    IDs with values that are integers, reject." (before v10, "or a string that is an
    integer"; absent is an empty object).
    10.4 (v12): "If the users property in content contains the sender of the m.room.create
    event or any of the additional_creators array (if present) from the content of the
    m.room.create event, reject."

    :returns: the new ``users`` levels, or the :class:`Deny`.
    """
    if rv.integer_power_levels:
        # 10.1
        for key in _SCALARS:
            if key in content and type(content[key]) is not int:
                return Deny(f"{key} is not an integer", _rule(rv, "scalar_types"))
        # 10.2
        for key in _MAPS:
            if key in content and _levels(content[key], rv) is None:
                return Deny(f"{key} is not an object of integers", _rule(rv, "map_types"))
    # 10.3
    new_users = _levels(content.get("users", {}), rv)
    if new_users is None or not all(is_valid_user_id(u) for u in new_users):
        return Deny("users is not an object of user ids to power levels", _rule(rv, "users"))
    # 10.4
    if rv.privileged_creators:
        creators = auth_state.creators
        if any(u in creators for u in new_users):
            return Deny("users lists a room creator", _rule(rv, "creators"))
    return new_users


def _check_scalar_changes(
    old: dict[str, Any], content: dict[str, Any], sender_level: int | float, rv: RoomVersion
) -> Deny | None:
    """v12 10.6: "For the properties users_default, events_default, state_default, ban,
    redact, kick, invite check if they were added, changed or removed. For each found
    alteration: 1. If the current value is higher than the sender's current power level,
    reject. 2. If the new value is higher than the sender's current power level, reject."
    """
    for key in _SCALARS:
        altered, old_v, new_v = _alteration(old, content, key, rv)
        if not altered:
            continue
        if old_v is _UNREADABLE or new_v is _UNREADABLE:
            return Deny(f"{key} is altered but is not a power level", _rule(rv, "scalars"))
        # 10.6.1
        if old_v is not None and old_v > sender_level:
            return Deny(f"sender may not change {key} from {old_v}", _rule(rv, "scalars"))
        # 10.6.2
        if new_v is not None and new_v > sender_level:
            return Deny(f"sender may not set {key} to {new_v}", _rule(rv, "scalars"))
    return None


def _check_map_changes(
    old: dict[str, Any], content: dict[str, Any], sender_level: int | float, rv: RoomVersion
) -> Deny | None:
    """v12 10.7 and 10.8 (before v6, ``events`` only).

    10.7: "For each entry being changed in, or removed from, the events or notifications
    properties: 1. If the current value is greater than the sender's current power level,
    reject."
    10.8: "For each entry being added to, or changed in, the events or notifications
    properties: 1. If the new value is greater than the sender's current power level,
    reject."

    Every 10.7 denial comes before any 10.8 one.
    """
    changes = []
    for key in _MAPS if rv.limit_notifications_power_levels else _EVENTS_ONLY:
        # A property that is not an object (possible before v10) has no entries.
        old_map, new_map = old.get(key), content.get(key)
        old_map = old_map if isinstance(old_map, dict) else {}
        new_map = new_map if isinstance(new_map, dict) else {}
        for name in old_map.keys() | new_map.keys():
            altered, old_v, new_v = _alteration(old_map, new_map, name, rv)
            if altered:
                changes.append((key, name, old_v, new_v))
    # 10.7
    for key, name, old_v, _new_v in changes:
        if old_v is _UNREADABLE:
            return Deny(
                f"{key}[{name!r}] is altered but is not a power level", _rule(rv, "maps_removed")
            )
        if old_v is not None and old_v > sender_level:
            return Deny(
                f"sender may not change {key}[{name!r}] from {old_v}", _rule(rv, "maps_removed")
            )
    # 10.8
    for key, name, _old_v, new_v in changes:
        if new_v is _UNREADABLE:
            return Deny(f"{key}[{name!r}] is not a power level", _rule(rv, "maps_added"))
        if new_v is not None and new_v > sender_level:
            return Deny(
                f"sender may not set {key}[{name!r}] to {new_v}", _rule(rv, "maps_added")
            )
    return None


def _check_user_changes(
    old: dict[str, Any], new_users: dict[str, int], sender: str, sender_level: int | float,
    rv: RoomVersion,
) -> Deny | None:
    """v12 10.9 and 10.10.

    10.9: "For each entry being changed in, or removed from, the users property, other than
    the sender's own entry: 1. If the current value is greater than or equal to the
    sender's current power level, reject."
    10.10: "For each entry being added to, or changed in, the users property: 1. If the new
    value is greater than the sender's current power level, reject."
    """
    old_users = _lenient_levels(old.get("users"), rv)
    # 10.9
    for user, old_v in old_users.items():
        if user != sender and new_users.get(user) != old_v and old_v >= sender_level:
            return Deny(
                f"sender may not change the power level of {user}", _rule(rv, "users_removed")
            )
    # 10.10
    for user, new_v in new_users.items():
        if old_users.get(user) != new_v and new_v > sender_level:
            return Deny(
                f"sender may not give {user} power level {new_v}", _rule(rv, "users_added")
            )
    return None


#: A value present but not a power level of the room version.
_UNREADABLE = object()


def _alteration(old: dict[str, Any], new: dict[str, Any], key: str, rv: RoomVersion) -> tuple[bool, Any, Any]:
    """Whether ``key`` was added, changed or removed between ``old`` and ``new``, and its
    old and new levels (``None`` if absent or ``null``, ``_UNREADABLE`` if not a power
    level)."""
    in_old = old.get(key) is not None
    in_new = new.get(key) is not None
    if not in_old and not in_new:
        return False, None, None
    if in_old and in_new and _same(old[key], new[key]):
        return False, None, None
    old_v = _read(old[key], rv) if in_old else None
    new_v = _read(new[key], rv) if in_new else None
    if in_old and in_new and old_v is not _UNREADABLE and old_v == new_v:
        return False, old_v, new_v
    return True, old_v, new_v


def _same(a: Any, b: Any) -> bool:
    """JSON equality (``1`` is not ``true``, ``1`` is not ``1.0``)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _read(value: Any, rv: RoomVersion) -> Any:
    level = parse_level(value, rv)
    return _UNREADABLE if level is None else level
