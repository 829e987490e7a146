"""The part of storage that authorization plugins may read: a narrow, typed, read-only view.

Plugins get this view (through the ``fedserver_on_start`` hook), never the whole store: the
store can change with every release and can write, and a plugin that wrote events or state
behind the pipeline's back would break the guarantees the server gives ("a 200 means
committed", one writer per room). What a rule needs to look at, rooms' events, current
state and members, is here, with the same meaning as in the store.
"""

from __future__ import annotations

from typing import Iterable, Optional, Protocol

from twisted.internet.defer import Deferred

from fedserver.events.model import Event
from fedserver.room_versions import RoomVersion
from fedserver.storage.interface import StateKey


class RoomReader(Protocol):
    """What :class:`PluginStoreView` reads from (the store implements it)."""

    def get_event(self, event_id: str, *, allow_rejected: bool = True) -> "Deferred[Optional[Event]]": ...

    def get_events(self, event_ids: Iterable[str], *, allow_rejected: bool = True) -> "Deferred[dict[str, Event]]": ...

    def get_room_version(self, room_id: str) -> "Deferred[Optional[RoomVersion]]": ...

    def get_current_state_ids(self, room_id: str) -> "Deferred[dict[StateKey, str]]": ...

    def get_current_state_events(
        self, room_id: str, types: Optional[Iterable[str | tuple[str, Optional[str]]]] = None
    ) -> "Deferred[dict[StateKey, Event]]": ...

    def get_room_members(self, room_id: str, membership: str = "join") -> "Deferred[list[str]]": ...

    def get_joined_hosts(self, room_id: str) -> "Deferred[set[str]]": ...


class PluginStoreView:
    """Read-only access to rooms for plugins. Every method returns a Deferred, as the
    store's do; events are shared objects: do not mutate them.

    :param store: the server's store.
    """

    __slots__ = ("_store",)

    def __init__(self, store: RoomReader) -> None:
        self._store = store

    def get_event(self, event_id: str, *, allow_rejected: bool = True) -> "Deferred[Optional[Event]]":
        """One event by id, or ``None`` if we do not have it (``allow_rejected=False``:
        ``None`` for a rejected one too)."""
        return self._store.get_event(event_id, allow_rejected=allow_rejected)

    def get_events(self, event_ids: Iterable[str], *, allow_rejected: bool = True) -> "Deferred[dict[str, Event]]":
        """``{event_id: Event}`` for the ids we have."""
        return self._store.get_events(event_ids, allow_rejected=allow_rejected)

    def get_room_version(self, room_id: str) -> "Deferred[Optional[RoomVersion]]":
        """The room's version, or ``None`` for a room we do not know."""
        return self._store.get_room_version(room_id)

    def get_current_state_ids(self, room_id: str) -> "Deferred[dict[StateKey, str]]":
        """The room's current state, ``{(type, state_key): event_id}`` (a fresh dict)."""
        return self._store.get_current_state_ids(room_id)

    def get_current_state_events(
        self, room_id: str, types: Optional[Iterable[str | tuple[str, Optional[str]]]] = None
    ) -> "Deferred[dict[StateKey, Event]]":
        """Current state events, all or only ``types`` (type strings, ``(type, None)`` for
        every state key of a type, or ``(type, state_key)``)."""
        return self._store.get_current_state_events(room_id, types)

    def get_room_members(self, room_id: str, membership: str = "join") -> "Deferred[list[str]]":
        """User ids whose current membership is ``membership``."""
        return self._store.get_room_members(room_id, membership)

    def get_joined_hosts(self, room_id: str) -> "Deferred[set[str]]":
        """Server names with a joined member (for a room joined with partial state, the
        resident's ``servers_in_room`` too, until the full state is known)."""
        return self._store.get_joined_hosts(room_id)
