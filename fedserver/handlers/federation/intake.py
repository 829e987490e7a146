"""Taking in a stream of a room's state and auth events fetched from another server (send_join, /state): checked and stored in chunks."""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from fedserver.events.model import Event
from fedserver.handlers.federation.receipt import ReceivedEvents, check_received
from fedserver.handlers.rooms.pipeline import ACCEPTED, MISSING, RoomPipeline
from fedserver.room_versions import RoomVersion
from fedserver.storage.interface import StateKey

log = Logger()


class IntakeError(Exception):
    """The events fetched cannot make the room's state (e.g. a wrong create event)."""


#: Batches taken by :meth:`OutlierIntake.feed` whose storing has not finished before the
#: next ``feed`` is held back (reading from the network pauses).
BATCHES_IN_FLIGHT = 2


def _observed(d: defer.Deferred) -> defer.Deferred:
    """A Deferred firing (with ``None``, or the failure) when ``d`` does, leaving ``d``'s
    own result to its consumer (a Deferred awaited twice gives the second awaiter
    ``None``)."""
    out: defer.Deferred = defer.Deferred()

    def pass_on(result: Any) -> Any:
        if isinstance(result, Failure):
            out.errback(result)
        else:
            out.callback(None)
        return result

    d.addBoth(pass_on)
    return out


class OutlierIntake:
    """Checks (receipt steps 1-3, signatures on the thread pool) and stores as outliers
    (step 4, through :meth:`RoomPipeline.process_outliers`) batches of events as they are
    read from the network, as a pipeline of three stages: while one batch is stored (the
    database thread), the next has its signatures checked (the thread pool) and the one
    after it is read and checked on the reactor. :meth:`feed`'s Deferred fires once fewer
    than :data:`BATCHES_IN_FLIGHT` batches are waiting, so the reader is paused and memory
    holds a few batches, not the whole answer. Batches are stored in the order fed.

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
        #: the batches fed and not yet taken (checked and handed to storage), in order
        self._window: list[defer.Deferred] = []
        self._error: Optional[Exception] = None
        #: ``{(type, state_key): event_id}`` of the accepted events fed as state
        self.state: dict[StateKey, str] = {}
        #: ids of every event taken in (accepted or rejected), for checking references
        self.taken: set[str] = set()
        self.received = 0
        self.dropped = 0

    def feed(self, pdus: list, *, state: bool) -> defer.Deferred:
        """Take in a batch: ``state`` events (part of the room's state) or auth chain
        events. Its checks on the reactor run now; its signatures are then checked on the
        thread pool while the caller reads on.

        :returns: a Deferred firing once there is room for another batch (failing with
            the first error of any batch fed so far).
        """
        if self._error is not None:
            return defer.fail(self._error)
        self.received += len(pdus)
        checking = defer.ensureDeferred(check_received(self._keyring, pdus, self._rv, room_id=self._room_id))
        before = _observed(self._window[-1]) if self._window else None
        self._window.append(defer.ensureDeferred(self._take(checking, before, state)))
        return defer.ensureDeferred(self._room_for_more(BATCHES_IN_FLIGHT - 1))

    async def _take(self, checking: defer.Deferred, before: Optional[defer.Deferred], state: bool) -> None:
        if before is not None:
            try:
                await before  # in order: the batch fed before is taken first
            except BaseException:
                checking.addErrback(lambda _f: None)
                raise
        part = await checking
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

    async def _room_for_more(self, limit: int) -> None:
        """Wait until at most ``limit`` fed batches are not taken yet. The first failure
        of a batch is raised, now and by every later call (the batches fed after it fail
        with it too: they are let go)."""
        while True:
            if self._error is not None:
                raise self._error
            if len(self._window) <= limit:
                return
            first = self._window.pop(0)
            try:
                await first
            except Exception as e:
                self._error = e
                for d in self._window:
                    d.addErrback(lambda _f: None)
                self._window = []
                raise

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
        await self._room_for_more(0)
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
