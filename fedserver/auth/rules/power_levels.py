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
    """If type is m.room.power_levels."""
    rv = room_version
    content = event.content

    def rule(name: str) -> str:
        return rule_id(rv, "power_levels", name)

    maps = ("events", "notifications")
    if rv.integer_power_levels:
        # v10+ 1: If any of the properties users_default, events_default, state_default,
        # ban, redact, kick, or invite in content are present and not an integer, reject.
        for key in _SCALARS:
            if key in content and type(content[key]) is not int:
                return Deny(f"{key} is not an integer", rule("scalar_types"))
        # v10+ 2: If either of the properties events or notifications in content are
        # present and not an object with values that are integers, reject.
        for key in maps:
            if key in content and _levels(content[key], rv) is None:
                return Deny(f"{key} is not an object of integers", rule("map_types"))
    # users: If the users property in content is not an object with keys that are valid
    # user IDs with values that are integers (or, before v10, a string that is an
    # integer), reject.  (Absent is an empty object.)
    users_raw = content.get("users", {})
    new_users = _levels(users_raw, rv)
    if new_users is None or not all(is_valid_user_id(u) for u in new_users):
        return Deny("users is not an object of user ids to power levels", rule("users"))
    # v12 4: If the users property in content contains the sender of the m.room.create
    # event or any of the additional_creators array (if present) from the content of the
    # m.room.create event, reject.
    if rv.privileged_creators:
        creators = auth_state.creators
        if any(u in creators for u in new_users):
            return Deny("users lists a room creator", rule("creators"))
    # If there is no previous m.room.power_levels event in the room, allow.
    previous = auth_state.power_levels_event
    if previous is None:
        return None
    old = previous.content
    sender_level = auth_state.checked_user_level(event.sender)
    checked_maps = maps if rv.limit_notifications_power_levels else ("events",)

    # Before v10 a value may be a string or a float; "added, changed or removed" is about
    # the level it stands for ("50" -> 50 is no change).  A value that is not a power
    # level at all (possible in a room's first power levels event before v10) cannot be
    # compared with the sender's level: if it is altered the event is rejected under the
    # rule that compares it; if it is left as it was, no rule compares it.

    # For the properties users_default, events_default, state_default, ban, redact, kick,
    # invite check if they were added, changed or removed. For each found alteration:
    # if the current value is higher than the sender's current power level, reject; if the
    # new value is higher than the sender's current power level, reject.
    for key in _SCALARS:
        altered, old_v, new_v = _alteration(old, content, key, rv)
        if not altered:
            continue
        if old_v is _UNREADABLE or new_v is _UNREADABLE:
            return Deny(f"{key} is altered but is not a power level", rule("scalars"))
        if old_v is not None and old_v > sender_level:
            return Deny(f"sender may not change {key} from {old_v}", rule("scalars"))
        if new_v is not None and new_v > sender_level:
            return Deny(f"sender may not set {key} to {new_v}", rule("scalars"))

    changes = []
    for key in checked_maps:
        # A property that is not an object (possible before v10) has no entries.
        old_map, new_map = old.get(key), content.get(key)
        old_map = old_map if isinstance(old_map, dict) else {}
        new_map = new_map if isinstance(new_map, dict) else {}
        for name in old_map.keys() | new_map.keys():
            altered, old_v, new_v = _alteration(old_map, new_map, name, rv)
            if altered:
                changes.append((key, name, old_v, new_v))
    # For each entry being changed in, or removed from, the events (v6+: or notifications)
    # property: if the current value is greater than the sender's current power level,
    # reject.
    for key, name, old_v, _new_v in changes:
        if old_v is _UNREADABLE:
            return Deny(f"{key}[{name!r}] is altered but is not a power level", rule("maps_removed"))
        if old_v is not None and old_v > sender_level:
            return Deny(
                f"sender may not change {key}[{name!r}] from {old_v}", rule("maps_removed")
            )
    # For each entry being added to, or changed in, the events (v6+: or notifications)
    # property: if the new value is greater than the sender's current power level, reject.
    for key, name, _old_v, new_v in changes:
        if new_v is _UNREADABLE:
            return Deny(f"{key}[{name!r}] is not a power level", rule("maps_added"))
        if new_v is not None and new_v > sender_level:
            return Deny(f"sender may not set {key}[{name!r}] to {new_v}", rule("maps_added"))

    old_users = _lenient_levels(old.get("users"), rv)
    sender = event.sender
    # For each entry being changed in, or removed from, the users property, other than
    # the sender's own entry: if the current value is greater than or equal to the
    # sender's current power level, reject.
    for user, old_v in old_users.items():
        if user != sender and new_users.get(user) != old_v and old_v >= sender_level:
            return Deny(
                f"sender may not change the power level of {user}", rule("users_removed")
            )
    # For each entry being added to, or changed in, the users property: if the new value
    # is greater than the sender's current power level, reject.
    for user, new_v in new_users.items():
        if old_users.get(user) != new_v and new_v > sender_level:
            return Deny(
                f"sender may not give {user} power level {new_v}", rule("users_added")
            )
    # Otherwise, allow.
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
