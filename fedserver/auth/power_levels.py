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

# Room v1-v9 "stringy power levels": "a single base 10 integer" with optional leading
# zeroes, an optional single sign, and any leading or trailing whitespace.  Digits are
# ASCII (no "1_000", no "\u0663"); whitespace is whatever str.isspace() calls whitespace.
_STRINGY = re.compile(r"[+-]?[0-9]+", re.ASCII)


class UnreadablePowerLevel(Exception):
    """A power level the auth rules need is present in the power levels event but is not
    a power level in this room version (e.g. ``"abc"``, ``true``, or ``"50"`` from v10).

    The spec's rules compare levels as integers and say nothing of values that are not
    one; a rule that needs such a value cannot be shown to pass, so the built-in rules
    reject the event (Synapse cannot process such an event either, and ruma rejects it).
    Raised only by the ``checked_*`` accessors, which only the built-in rules use.

    :ivar name: what could not be read: ``"ban"``, ``"users_default"``,
        ``"users[@a:b]"``, ``"events[m.room.message]"``.
    """

    def __init__(self, name: str):
        super().__init__(f"power level {name} is not a power level of this room version")
        self.name = name


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
        text = value.strip()
        if _STRINGY.fullmatch(text):
            return int(text)
        return None
    if t is float and math.isfinite(value):
        return int(value)
    return None


def _parse_map(value: Any, rv: RoomVersion, name: str, bad: set[str]) -> dict[str, int]:
    # A property that is not an object lists nothing: every entry takes its default.
    if not isinstance(value, dict):
        return {}
    out = {}
    for k, v in value.items():
        if v is None:
            continue
        level = parse_level(v, rv)
        if level is None:
            bad.add(f"{name}[{k}]")
        else:
            out[k] = level
    return out


class PowerLevels:
    """Power levels with defaults resolved.

    The attributes give every value that can be read, and the default for what is absent
    (``null`` counts as absent: "Power levels are inferred from defaults when not
    explicitly supplied") *or cannot be read* (the auth rules reject power levels events holding such values
    when the values are compared, but a room's first power levels event before v10 may
    hold them).  Handlers and plugins read the attributes; the built-in auth rules use the
    ``checked_*`` methods, which raise :class:`UnreadablePowerLevel` instead of falling
    back to a default.

    :ivar users: ``{user_id: level}`` as listed.
    :ivar events: ``{event_type: level}``.
    :ivar notifications: ``{key: level}`` including the default for ``room``.
    :ivar users_default, events_default, state_default, ban, kick, redact, invite: ints.
    :ivar unreadable: names of the values present but not readable (see
        :attr:`UnreadablePowerLevel.name`).
    """

    __slots__ = (
        "users", "events", "notifications", "users_default", "events_default",
        "state_default", "ban", "kick", "redact", "invite", "unreadable",
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
    unreadable: frozenset[str]

    @classmethod
    def from_content(cls, content: Mapping[str, Any] | None, rv: RoomVersion) -> "PowerLevels":
        """Parse ``content`` (``None``: the room has no power levels event)."""
        self = cls.__new__(cls)
        content = content if isinstance(content, dict) else {}
        bad: set[str] = set()
        for key, default in SCALAR_DEFAULTS.items():
            value = content.get(key)
            level = None if value is None else parse_level(value, rv)
            if level is None and value is not None:
                bad.add(key)
            setattr(self, key, default if level is None else level)
        self.users = _parse_map(content.get("users"), rv, "users", bad)
        self.events = _parse_map(content.get("events"), rv, "events", bad)
        notifications = dict(NOTIFICATIONS_DEFAULTS)
        notifications.update(_parse_map(content.get("notifications"), rv, "notifications", bad))
        self.notifications = notifications
        self.unreadable = frozenset(bad)
        return self

    def required_level(self, event_type: str, is_state: bool) -> int:
        """The *required power level* to send an event of ``event_type``: its entry in
        ``events``, else ``state_default`` or ``events_default``."""
        level = self.events.get(event_type)
        if level is not None:
            return level
        return self.state_default if is_state else self.events_default

    # -- strict reads, for the auth rules ------------------------------------------------

    def checked(self, name: str) -> int:
        """One of :data:`SCALAR_DEFAULTS` (``"invite"``, ``"ban"``...), its default when
        absent.

        :raises UnreadablePowerLevel: if it is present but not a power level.
        """
        if name in self.unreadable:
            raise UnreadablePowerLevel(name)
        return getattr(self, name)

    def checked_user_level(self, user_id: str) -> int:
        """``users[user_id]``, else ``users_default``.

        :raises UnreadablePowerLevel: if the value used is present but unreadable.
        """
        level = self.users.get(user_id)
        if level is not None:
            return level
        if f"users[{user_id}]" in self.unreadable:
            raise UnreadablePowerLevel(f"users[{user_id}]")
        return self.checked("users_default")

    def checked_required_level(self, event_type: str, is_state: bool) -> int:
        """:meth:`required_level`, for the auth rules.

        :raises UnreadablePowerLevel: if the value used is present but unreadable.
        """
        level = self.events.get(event_type)
        if level is not None:
            return level
        if f"events[{event_type}]" in self.unreadable:
            raise UnreadablePowerLevel(f"events[{event_type}]")
        return self.checked("state_default" if is_state else "events_default")
