"""Who counts as powerful in state resolution: power events and senders' power levels."""

from __future__ import annotations

from typing import Any

from fedserver.events.model import Event
from fedserver.room_versions import RoomVersion
from fedserver.state.graph import CREATE, AuthGraph

POWER_LEVELS = "m.room.power_levels"
JOIN_RULES = "m.room.join_rules"
MEMBER = "m.room.member"

#: The power of a room v12 creator: above every integer.
INFINITE_POWER = float("inf")


def is_power_event(event: Event) -> bool:
    """Spec "Power events": power levels, join rules, or a membership ``leave``/``ban``
    whose sender is not its target.

    Like Synapse, the power levels and join rules count only with state key ``""`` (the
    only ones the auth rules read), and the create event counts too; the spec's wording
    differs only for events that carry no authority (a non-empty state key) and for a
    create event in the full conflicted set, which cannot happen between two states of one
    room.
    """
    t = event.type
    sk = event.state_key
    if sk == "" and (t == POWER_LEVELS or t == JOIN_RULES or t == CREATE):
        return True
    if t == MEMBER and sk is not None:
        m = event.content.get("membership")
        return (m == "leave" or m == "ban") and event.sender != sk
    return False


def power_value(value: Any, default: int = 0) -> int:
    """A power level value as the auth rules read it: an integer, or (before room v10) a
    string of one; anything else is ``default``."""
    if type(value) is int:
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return default
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return default


class SenderPower:
    """Spec "Reverse topological power ordering", comparison 1: the power level of an event's
    sender "when looking at their respective auth_events".

    That is the ``users`` entry (else ``users_default``) of the power levels event among the
    event's auth events; without one, 100 for the room creator and 0 for anyone else. From
    room v12 the creators (create ``sender`` and ``additional_creators``) have infinite power
    whatever the power levels say. Each power levels and create event is parsed once.

    :param rv: the room version.
    :param graph: the resolution's auth graph.
    """

    def __init__(self, rv: RoomVersion, graph: AuthGraph):
        self._rv = rv
        self._graph = graph
        self._levels: dict[int, tuple[dict[str, Any], int]] = {}
        self._creators: dict[str, frozenset[str]] = {}

    def __call__(self, n: int) -> float:
        """The power of node ``n``'s sender."""
        graph = self._graph
        ev = graph.events[n]
        assert ev is not None
        sender = ev.sender
        rv = self._rv
        if rv.privileged_creators and sender in self._room_creators(ev.room_id):
            return INFINITE_POWER
        pl = graph.power_levels_parent(n)
        if pl is None:
            create = self._create_for(n)
            if create is None:
                return 0
            if rv.implicit_room_creator:
                creator = create.sender
            else:
                creator = create.content.get("creator")
            return 100 if creator == sender else 0
        users, users_default = self._parse(pl)
        if sender in users:
            return power_value(users[sender], users_default)
        return users_default

    def _parse(self, pl: int) -> tuple[dict[str, Any], int]:
        parsed = self._levels.get(pl)
        if parsed is None:
            content = self._graph.events[pl].content  # type: ignore[union-attr]
            users = content.get("users")
            if not isinstance(users, dict):
                users = {}
            parsed = (users, power_value(content.get("users_default", 0)))
            self._levels[pl] = parsed
        return parsed

    def _create_for(self, n: int) -> Event | None:
        graph = self._graph
        ev = graph.events[n]
        if self._rv.room_id_from_create_event:
            return create_event_of_room(graph, ev.room_id)  # type: ignore[union-attr]
        for p in graph.parents(n):
            pev = graph.events[p]
            if pev.type == CREATE and pev.state_key == "":  # type: ignore[union-attr]
                return pev
        return None

    def _room_creators(self, room_id: str) -> frozenset[str]:
        creators = self._creators.get(room_id)
        if creators is None:
            create = create_event_of_room(self._graph, room_id)
            if create is None:
                creators = frozenset()
            else:
                found = {create.sender}
                extra = create.content.get("additional_creators")
                if isinstance(extra, list):
                    found.update(u for u in extra if isinstance(u, str))
                creators = frozenset(found)
            self._creators[room_id] = creators
        return creators


def create_event_id_of_room(room_id: str) -> str | None:
    """Room v12: the create event's id, read from the room id (``!x`` -> ``$x``)."""
    if isinstance(room_id, str) and room_id.startswith("!") and len(room_id) > 1:
        return "$" + room_id[1:]
    return None


def create_event_of_room(graph: AuthGraph, room_id: str) -> Event | None:
    """Room v12: the room's create event, named by the room id; ``None`` if missing.

    Remembered in ``graph`` (every check of a v12 resolution asks for it)."""
    if not isinstance(room_id, str):
        return None
    memo = graph.room_creates
    if room_id in memo:
        return memo[room_id]
    eid = create_event_id_of_room(room_id)
    ev = None if eid is None else graph.event(eid)
    if ev is not None and (ev.type != CREATE or ev.state_key != ""):
        ev = None
    memo[room_id] = ev
    return ev
