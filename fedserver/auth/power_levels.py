"""Parsed ``m.room.power_levels`` content with the spec's defaults resolved."""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

from fedserver.room_versions import RoomVersion

#: The power level of room creators from room v12 ("infinitely high").
INFINITE_POWER = math.inf

#: The properties the auth rules compare one by one (rule 10.3 in v1), with their defaults
#: (client-server API, ``m.room.power_levels``).
SCALAR_DEFAULTS: dict[str, int] = {
    "users_default": 0,
    "events_default": 0,
    "state_default": 50,
    "ban": 50,
    "kick": 50,
    "redact": 50,
    "invite": 0,
}

#: ``notifications.room`` defaults to 50.
NOTIFICATIONS_DEFAULTS: dict[str, int] = {"room": 50}

# Room v1-v9 "stringy power levels": base 10, optional sign, leading zeroes and
# surrounding whitespace allowed; nothing else (no "1_000", no "٣", no "1.5").
_STRINGY = re.compile(r"[ \t\n\r\f\v]*[+-]?[0-9]+[ \t\n\r\f\v]*")


def parse_level(value: Any, rv: RoomVersion) -> int | None:
    """A power level value as an int, or ``None`` if ``rv`` does not accept it.

    From room v10 only JSON integers count.  Before, strings holding an integer are
    accepted ("m.room.power_levels events accept values as strings"), and floats (only
    possible before v6's strict canonical JSON) are truncated if finite.  Booleans are
    never integers.
    """
    t = type(value)
    if t is int:
        return value
    if rv.integer_power_levels:
        return None
    if t is str:
        if _STRINGY.fullmatch(value):
            return int(value.strip())
        return None
    if t is float and math.isfinite(value):
        return int(value)
    return None


def _parse_map(value: Any, rv: RoomVersion) -> dict[str, int]:
    if not isinstance(value, dict):
        return {}
    out = {}
    for k, v in value.items():
        level = parse_level(v, rv)
        if level is not None:
            out[k] = level
    return out


class PowerLevels:
    """Power levels with defaults resolved; values that cannot be read fall back to the
    default (the auth rules reject such power levels events when they are sent, so this
    only matters for events accepted before).

    :ivar users: ``{user_id: level}`` as listed.
    :ivar events: ``{event_type: level}``.
    :ivar notifications: ``{key: level}`` including the default for ``room``.
    :ivar users_default, events_default, state_default, ban, kick, redact, invite: ints.
    """

    __slots__ = (
        "users", "events", "notifications", "users_default", "events_default",
        "state_default", "ban", "kick", "redact", "invite",
    )

    users: dict[str, int]
    events: dict[str, int]
    notifications: dict[str, int]
    users_default: int
    events_default: int
    state_default: int
    ban: int
    kick: int
    redact: int
    invite: int

    @classmethod
    def from_content(cls, content: Mapping[str, Any] | None, rv: RoomVersion) -> "PowerLevels":
        """Parse ``content`` (``None``: the room has no power levels event)."""
        self = cls.__new__(cls)
        content = content if isinstance(content, dict) else {}
        for key, default in SCALAR_DEFAULTS.items():
            level = parse_level(content[key], rv) if key in content else None
            setattr(self, key, default if level is None else level)
        self.users = _parse_map(content.get("users"), rv)
        self.events = _parse_map(content.get("events"), rv)
        notifications = dict(NOTIFICATIONS_DEFAULTS)
        notifications.update(_parse_map(content.get("notifications"), rv))
        self.notifications = notifications
        return self

    def required_level(self, event_type: str, is_state: bool) -> int:
        """The *required power level* to send an event of ``event_type``: its entry in
        ``events``, else ``state_default`` or ``events_default``."""
        level = self.events.get(event_type)
        if level is not None:
            return level
        return self.state_default if is_state else self.events_default
