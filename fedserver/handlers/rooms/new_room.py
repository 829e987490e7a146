"""A new room's first events, built in memory and taken in all at once (``createRoom``)."""

# Client-server API ``POST /createRoom`` sends a series of events (create, the creator's
# join, power levels, ...). Taken in one by one, a failure half-way (an initial_state
# event the auth rules refuse, a full disk) would leave a half-made room: created, maybe
# joined, without the power levels or join rules the client asked for. So the events are
# built here as a chain on the state they make, with nothing stored, and the pipeline
# takes the whole chain in one database transaction, all or nothing
# (``RoomPipeline.process(atomic=True)``).

from __future__ import annotations

from typing import Any, Mapping, Optional

from fedserver.errors import MatrixError, bad_json, too_large, unknown
from fedserver.events.model import Event
from fedserver.events.status import OutcomeStatus
from fedserver.events.validation import EventTooLarge, InvalidEvent
from fedserver.handlers.rooms.membership import RoomEvents, check_outcome
from fedserver.handlers.rooms.pipeline import Outcome
from fedserver.room_versions import RoomVersion
from fedserver.storage.interface import StateKey

M_INVALID_ROOM_STATE = "M_INVALID_ROOM_STATE"


class RoomDraft:
    """The events of a room not yet stored, each built on the state the previous ones
    make. Start one with :meth:`start`, :meth:`add` events, then :meth:`commit`.

    :ivar room_id: the new room's id (known once the create event is built).
    """

    def __init__(self, events: RoomEvents, rv: RoomVersion, create: Event) -> None:
        self._events = events
        self.rv = rv
        self.room_id: str = create.room_id
        self._chain: list[Event] = [create]
        self._known: dict[str, Event] = {create.event_id: create}
        self._state: dict[StateKey, str] = {("m.room.create", ""): create.event_id}

    @classmethod
    async def start(cls, events: RoomEvents, rv: RoomVersion, sender: str, content: Mapping[str, Any]) -> "RoomDraft":
        """A draft beginning with the room's ``m.room.create`` event.

        :raises MatrixError: as :meth:`RoomEvents.new_create_event`.
        """
        return cls(events, rv, await events.new_create_event(rv, sender, content))

    @property
    def events(self) -> list[Event]:
        """The events so far, in order."""
        return list(self._chain)

    async def add(self, type: str, sender: str, content: Mapping[str, Any], state_key: Optional[str] = None) -> Event:
        """Build the next event on the state the draft makes so far.

        :raises MatrixError: 413 ``M_TOO_LARGE``; 400 ``M_BAD_JSON`` for an event that
            cannot be built.
        """
        try:
            event = await self._events.creator.build_after(
                self.rv, self._state, self._chain[-1], self._known,
                type=type, sender=sender, content=content, state_key=state_key,
            )
        except EventTooLarge as e:
            raise too_large(f"Event too large: {e}") from None
        except InvalidEvent as e:
            raise bad_json(f"Invalid event: {e}") from None
        self._chain.append(event)
        self._known[event.event_id] = event
        if state_key is not None:
            self._state[(type, state_key)] = event.event_id
        return event

    async def commit(self) -> None:
        """Take the whole chain into the room in one transaction, or nothing of it.

        :raises MatrixError: 400 ``M_INVALID_ROOM_STATE`` naming the first event the auth
            rules (or a policy) refused; 500 ``M_UNKNOWN`` if the chain could not be taken
            in otherwise (the room id in use); a storage fault as it comes. In every case
            nothing of the room was stored.
        """
        outcomes: Mapping[str, Outcome] = await self._events.pipeline.process(
            self.room_id, self._chain, local=True, persist_rejected=False, atomic=True
        )
        for event in self._chain:
            outcome = outcomes.get(event.event_id)
            if outcome is None or outcome.duplicate:
                break
            if outcome.status in (OutcomeStatus.REJECTED, OutcomeStatus.SOFT_FAILED):
                try:
                    check_outcome(event, outcome)
                except MatrixError as e:
                    error = MatrixError(400, M_INVALID_ROOM_STATE, f"{event.type} refused: {e.error}")
                    error.extra.update(e.extra)
                    raise error from None
            if outcome.status != OutcomeStatus.ACCEPTED:
                break
        else:
            return
        raise unknown("The new room's events could not be taken in")
