"""Taking in a stream of a room's state and auth events fetched from another server (send_join, /state): checked and stored in chunks."""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.logger import Logger

from fedserver.events.model import Event
from fedserver.handlers.federation.receipt import ReceivedEvents, check_received
from fedserver.handlers.rooms.pipeline import ACCEPTED, MISSING, RoomPipeline
from fedserver.room_versions import RoomVersion
from fedserver.storage.interface import StateKey

log = Logger()


class IntakeError(Exception):
    """The events fetched cannot make the room's state (e.g. a wrong create event)."""


class OutlierIntake:
    """Checks (receipt steps 1-3, signatures on the thread pool) and stores as outliers
    (step 4, through :meth:`RoomPipeline.process_outliers`) batches of events as they are
    read from the network. Checking one batch overlaps storing the one before; while both
    run, :meth:`feed`'s Deferred has not fired, so the reader is paused and memory holds
    about two batches, not the whole answer.

    Events whose auth events come in a later batch (a resident that lists ``state``
    before ``auth_chain``) are kept and checked again by :meth:`finish`. Nothing is stored
    before the room's create event has been seen and accepted by ``check_create``.

    :param keyring: verifies signatures.
    :param pipeline: stores the events.
    :param room_id: the room; events of other rooms are dropped.
    :param rv: its version.
    :param check_create: ``create -> None`` raising :class:`IntakeError` if the create event
        cannot be this room's; ``None`` when the create event is already stored.
    :param create: the stored create event, if known.
    """

    def __init__(
        self,
        keyring: Any,
        pipeline: RoomPipeline,
        room_id: str,
        rv: RoomVersion,
        *,
        check_create: Optional[Callable[[Event], None]] = None,
        create: Optional[Event] = None,
    ) -> None:
        self._keyring = keyring
        self._pipeline = pipeline
        self._room_id = room_id
        self._rv = rv
        self._check_create = check_create
        self.create = create
        self._held: list[tuple[bool, ReceivedEvents]] = []
        self._pending: Optional[tuple[bool, ReceivedEvents, defer.Deferred]] = None
        self._retry: list[tuple[bool, Event, frozenset]] = []
        #: ``{(type, state_key): event_id}`` of the accepted events fed as state
        self.state: dict[StateKey, str] = {}
        #: ids of every event taken in (accepted or rejected), for checking references
        self.taken: set[str] = set()
        self.received = 0
        self.dropped = 0

    def feed(self, pdus: list, *, state: bool) -> defer.Deferred:
        """Take in a batch: ``state`` events (part of the room's state) or auth chain
        events. :returns: a Deferred firing once the batch is checked and the batch before
        it stored."""
        return defer.ensureDeferred(self._feed(pdus, state))

    async def _feed(self, pdus: list, state: bool) -> None:
        self.received += len(pdus)
        part = await check_received(self._keyring, pdus, self._rv, room_id=self._room_id)
        self.dropped += len(part.errors)
        if self.create is None:
            create = next((e for e in part.events if e.type == "m.room.create" and e.state_key == ""), None)
            if create is None:
                self._held.append((state, part))
                return
            if self._check_create is not None:
                self._check_create(create)
            self.create = create
            held, self._held = self._held, []
            if held:
                # Everything held so far goes with the batch holding the create event, so
                # that it is stored first (auth order within one batch).
                for s, p in held:
                    await self._submit(s, p, with_create=create)
        await self._submit(state, part)

    async def _submit(self, state: bool, part: ReceivedEvents, with_create: Optional[Event] = None) -> None:
        if self._pending is not None:
            await self._collect()
        events = part.events
        if with_create is not None and with_create not in events:
            events = [with_create, *events]
        d = self._pipeline.process_outliers(self._room_id, events, verified_servers=part.verified)
        self._pending = (state, part, d)

    async def _collect(self) -> None:
        assert self._pending is not None
        state, part, d = self._pending
        self._pending = None
        outcomes = await d
        self._record(state, part.events, outcomes, part.verified)

    def _record(self, state: bool, events: list[Event], outcomes: dict, verified: dict) -> None:
        for e in events:
            o = outcomes.get(e.event_id)
            if o is None:
                continue
            if o.status == MISSING:
                self._retry.append((state, e, verified.get(e.event_id, frozenset())))
                continue
            self.taken.add(e.event_id)
            if state and o.status == ACCEPTED and e.state_key is not None:
                self.state[(e.type, e.state_key)] = e.event_id

    async def finish(self) -> None:
        """Store what is left, then check again the events whose auth events came later,
        until no more can be taken in (the rest are not stored).

        :raises IntakeError: if no create event came at all.
        """
        if self.create is None:
            raise IntakeError("the answer holds no create event")
        if self._pending is not None:
            await self._collect()
        while self._retry:
            retry, self._retry = self._retry, []
            events = [e for _, e, _ in retry]
            outcomes = await self._pipeline.process_outliers(
                self._room_id, events, verified_servers={e.event_id: v for _, e, v in retry}
            )
            before = len(retry)
            for state, e, v in retry:
                o = outcomes.get(e.event_id)
                if o is not None and o.status == MISSING:
                    self._retry.append((state, e, v))
                elif o is not None:
                    self.taken.add(e.event_id)
                    if state and o.status == ACCEPTED and e.state_key is not None:
                        self.state[(e.type, e.state_key)] = e.event_id
            if len(self._retry) == before:
                log.info("{n} events of {room_id} cite auth events nobody sent; not stored",
                         n=before, room_id=self._room_id)
                self.dropped += before
                self._retry = []
                break
