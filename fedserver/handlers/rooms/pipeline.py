"""The one path by which events join a room's DAG: state before, the receipt auth checks, persistence."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Collection, Mapping, Optional, Sequence

from twisted.internet import defer
from twisted.logger import Logger

from fedserver.auth.policy import check_event_policy
from fedserver.auth.selection import auth_types_for_event
from fedserver.events.model import Event
from fedserver.events.status import OutcomeStatus
from fedserver.room_versions import RoomVersion
from fedserver.state.compute import state_before_event
from fedserver.keyed_lock import KeyedLock
from fedserver.storage.interface import Distribution, PersistEntry, Refusal, StateKey
from fedserver.storage.rooms.partial_state_store import StateRewrite
from fedserver.state.statemap import StateMap

log = Logger()

# Short names for the outcomes (the one enum, shared with transactions and storage).
ACCEPTED = OutcomeStatus.ACCEPTED
REJECTED = OutcomeStatus.REJECTED
SOFT_FAILED = OutcomeStatus.SOFT_FAILED
MISSING = OutcomeStatus.MISSING

#: How many rooms' current state the pipeline keeps in memory.
ROOM_CACHE_SIZE = 256


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one event given to :meth:`RoomPipeline.process`.

    :ivar status: an :class:`OutcomeStatus`: accepted, rejected, soft-failed, or missing
        (prev or auth events we do not have; nothing was stored for it).
    :ivar refusal: why it was rejected or soft-failed.
    :ivar missing: the prev/auth event ids we lack (status ``missing``).
    :ivar duplicate: the event was already in the room's DAG; nothing changed.
    :ivar stored: it was written by this call (rejected events are stored too, unless the
        caller asked not to).
    :ivar queued_for: the servers it was queued for, in the transaction that stored it.
    """

    status: OutcomeStatus
    refusal: Optional[Refusal] = None
    missing: frozenset[str] = frozenset()
    duplicate: bool = False
    stored: bool = False
    queued_for: frozenset[str] = frozenset()
    #: its stream position once committed (for the ``on_persisted`` callbacks; not part
    #: of the verdict, so outcomes compare equal with or without it)
    event_nid: Optional[int] = field(default=None, compare=False)

    @property
    def accepted(self) -> bool:
        return self.status == ACCEPTED


class _RoomState:
    """The pipeline's in-memory view of one room: current state and forward extremities.

    Only the pipeline writes a room's DAG (under the room's lock), so this stays true to
    the database; it is rebuilt from storage after any failed write.
    """

    __slots__ = ("current", "extremities", "create", "partial", "groups_after")

    def __init__(self, current: StateMap, extremities: set[str], create: Optional[Event], partial: bool = False):
        self.current = current
        self.extremities = extremities
        self.create = create
        #: joined with partial state, resync not finished (MSC3902)
        self.partial = partial
        #: state group after each forward extremity we committed (the next batch's prev
        #: events, usually): not read again from storage
        self.groups_after: dict[str, int] = {}


@dataclass(frozen=True)
class PartialJoin:
    """A join taken in on partial state: the resident answered ``send_join`` with
    ``members_omitted`` (server-server spec, send_join v2 ``omit_members``).

    :ivar join_event_id: our join.
    :ivar resident: the server that answered.
    :ivar servers_in_room: its ``servers_in_room`` (where our events go meanwhile).
    """

    join_event_id: str
    resident: str
    servers_in_room: tuple[str, ...]


class _Batch:
    """What one batch of one room works on while it is checked (see ``RoomPipeline._process``)."""

    def __init__(
        self,
        room_id: str,
        room: Optional[_RoomState],
        todo: list[Event],
        outcomes: dict[str, "Outcome"],
        send_never: Optional[frozenset[str]] = None,
        history: bool = False,
    ):
        self.room_id = room_id
        #: distribute the accepted events, never to these servers (``None``: do not)
        self.send_never = send_never
        #: events fetched as history (``RoomPipeline.process_history``)
        self.history = history
        self.room = room
        self.outcomes = outcomes
        self.batch_events: dict[str, Event] = {e.event_id: e for e in todo}
        #: prev events held in storage -> their state group after, and those groups' states
        self.groups: Mapping[str, int] = {}
        self.group_states: Mapping[int, StateMap] = {}
        #: events loaded from storage (auth events, state the rules consult)
        self.events_by_id: dict[str, Event] = {}
        self.create: Optional[Event] = room.create if room is not None else None
        self.current: Mapping[StateKey, str] = room.current if room is not None else StateMap.from_dict({})
        self.extremities: set[str] = set(room.extremities) if room is not None else set()
        self.current_changed = False
        self.partial = bool(room is not None and room.partial)
        #: state after each event of the batch taken in so far
        self.after: dict[str, Mapping[StateKey, str]] = {}
        self.entries: list[PersistEntry] = []
        self.accepted_in_order: list[tuple[Event, "Outcome"]] = []
        self.partial_ids: list[str] = []


class _EventState(Mapping[StateKey, Event]):
    """A state map (ids) seen as ``(type, state_key) -> Event`` through loaded events."""

    __slots__ = ("_ids", "_events")

    def __init__(self, ids: Mapping[StateKey, str], events: Mapping[str, Event]):
        self._ids = ids
        self._events = events

    def __getitem__(self, key: StateKey) -> Event:
        return self._events[self._ids[key]]

    def get(self, key: StateKey, default: Any = None) -> Any:
        event_id = self._ids.get(key)
        if event_id is None:
            return default
        return self._events.get(event_id, default)

    def __iter__(self):
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


def _refusal_from(result) -> Refusal:
    deny = result.denials[0]
    # The plugin is the name the denying hook implementation is registered under; the
    # spec's rules are registered as fedserver.auth.rules.<topic> (never empty: the
    # engine fills it in).
    return Refusal(deny.reason, deny.rule, deny.plugin)


def _topo_order(events: Sequence[Event], edges: Callable[[Event], Sequence[str]], key) -> list[Event]:
    """``events`` ordered so each comes after the batch events its ``edges`` name; among
    the rest, by ``key`` (tie-breaks that need no trust in the events' fields)."""
    by_id = {e.event_id: e for e in events}
    out: list[Event] = []
    seen: set[str] = set()
    for root in sorted(events, key=key):
        stack = [(root, False)]
        while stack:
            ev, expanded = stack.pop()
            if ev.event_id in seen:
                continue
            if expanded:
                seen.add(ev.event_id)
                out.append(ev)
                continue
            stack.append((ev, True))
            for other in edges(ev):
                oe = by_id.get(other)
                if oe is not None and other not in seen:
                    stack.append((oe, False))
    return out


def _ordered(events: Sequence[Event]) -> list[Event]:
    """Prev events first (the DAG order a batch is taken in)."""
    return _topo_order(events, lambda e: e.prev_event_ids, lambda e: (e.depth, e.origin_server_ts, e.event_id))


def _auth_ordered(events: Sequence[Event]) -> list[Event]:
    """Auth events first (the order outliers are checked in)."""
    return _topo_order(events, lambda e: e.auth_event_ids, lambda e: (e.depth, e.event_id))


class RoomPipeline:
    """Takes events into rooms: computes the state before each, runs the checks on receipt
    of a PDU (server-server spec, "Checks performed on receipt of a PDU", steps 4-6 and the
    policy hook), and persists a whole batch in one database transaction.

    - Step 4: the auth rules against the event's own ``auth_events``: failing rejects.
    - Step 5: the auth rules against the state before the event (resolved over its
      ``prev_events`` where branches meet): failing rejects.
    - Step 6: the auth rules against the room's current state: failing soft-fails
      (events from other servers only, as a local event is built on the current state;
      and not for the first events of a room we did not know, such as our remote join).
    - The policy hook (``fedserver_check_event_policy``) may only soft-fail.

    Rejected events are stored with the rule and plugin that denied them (never as state,
    never as an extremity); soft-failed events are stored, and are state after themselves,
    but never extremities and never current state.

    Batches for one room run one at a time; different rooms run concurrently. State is
    kept as structure-sharing :class:`StateMap` overlays, so a chain of events in a
    20,000-member room costs a small dict per state event, and a linear event costs no
    state write at all.

    The pipeline also decides which events go to the other servers of the room (spec:
    "the event is sent to all the servers in the room"): the events this server makes
    (:meth:`create_local`, ``process(local=True)``) and those a caller asks for
    (``distribute``: our join through a remote handshake, joins, leaves and knocks we
    accept through the handshakes we serve). They are queued for every server with a
    member joined to the room after the event (in a partial-state room, also the
    resident's ``servers_in_room``), and for a membership event also the target's server
    (a kicked or banned user's server, no longer joined, must still learn it), in the SAME
    database transaction that stores the event (DESIGN.md, Durability: a 200 means
    committed and queued). Once committed, ``on_queued`` callbacks (the sender) are told
    which servers have something new.

    :param store: the :class:`fedserver.storage.interface.Store`.
    :param engine: the :class:`fedserver.auth.engine.AuthEngine`.
    :param plugin_manager: for the policy hook.
    :param server_name: ours; without it nothing is queued for other servers (a pipeline
        that does not federate, in tests).
    """

    def __init__(self, store, engine, plugin_manager, *, server_name: Optional[str] = None) -> None:
        self._store = store
        self._engine = engine
        self._pm = plugin_manager
        self._server_name = server_name
        self._locks: KeyedLock[str] = KeyedLock()
        self._rooms: dict[str, _RoomState] = {}
        self._full_state_waiters: dict[str, list[defer.Deferred]] = {}
        #: callables ``(room_id, [(event, outcome)])`` run after each committed batch.
        self.on_persisted: list[Callable[[str, list[tuple[Event, Outcome]]], Any]] = []
        #: callables ``(room_id)`` run once a partial-state room has its full state.
        self.on_full_state: list[Callable[[str], Any]] = []
        #: callables ``(room_version, seconds)`` told how long each resolution of
        #: conflicting states took (e.g. the metrics).
        self.on_state_resolved: list[Callable[[str, float], Any]] = []
        #: callables ``(servers)`` run after a committed batch queued events for ``servers``
        #: (e.g. :meth:`fedserver.federation.sender.FederationSender.wake`).
        self.on_queued: list[Callable[[frozenset[str]], Any]] = []

    # -- public API -------------------------------------------------------------------------

    def process(
        self,
        room_id: str,
        events: Sequence[Event],
        *,
        local: bool = False,
        persist_rejected: bool = True,
        state_before: Optional[Mapping[str, Mapping[StateKey, str]]] = None,
        verified_servers: Optional[Mapping[str, Collection[str]]] = None,
        partial_join: Optional[PartialJoin] = None,
        distribute: bool = False,
        distribute_except: Collection[str] = (),
        atomic: bool = False,
    ) -> "defer.Deferred[dict[str, Outcome]]":
        """Take ``events`` (all of ``room_id``) into the room.

        :param local: events made by this server for its users: no soft-failure check
            (they were built on the current state), the caller gets the verdict, and the
            accepted ones are queued for the room's other servers.
        :param persist_rejected: store rejected events (``True`` for events from other
            servers, whose refusal must be remembered; ``False`` for a local event the
            auth rules refuse, which must simply not exist).
        :param state_before: ``{event_id: state}`` for events whose prev events we hold
            without state (the join event of a remote join, the end of a gap filled from
            ``/state_ids``): their state before is given, not computed.
        :param verified_servers: ``{event_id: servers}`` whose signatures were verified.
        :param partial_join: our join on partial state (its state before is given, without
            the room's members): the room is marked partial-state in the same transaction.
        :param distribute: queue the accepted events for the room's other servers in the
            transaction that stores them (implied by ``local``).
        :param distribute_except: servers not to queue them for (the server that handed
            them to us through a handshake).
        :param atomic: all or nothing: unless every event is new and accepted, nothing is
            stored (the outcomes say why; none is ``stored``). For the events of a new
            room (``createRoom``), which must never be left half-made.
        :returns: Deferred firing with ``{event_id: Outcome}`` once the batch is committed.
        """
        send = self._distribution(local or distribute, distribute_except)
        return self._locked(
            room_id,
            lambda: self._process(
                room_id, list(events), local, persist_rejected, state_before or {}, verified_servers or {},
                partial_join, send, atomic=atomic,
            ),
        )

    def _distribution(self, distribute: bool, never: Collection[str] = ()) -> Optional[frozenset[str]]:
        """The servers never to send to, or ``None`` for "do not distribute"."""
        if not distribute or self._server_name is None:
            return None
        return frozenset(never) | {self._server_name}

    def process_history(
        self,
        room_id: str,
        events: Sequence[Event],
        *,
        state_before: Optional[Mapping[str, Mapping[StateKey, str]]] = None,
        verified_servers: Optional[Mapping[str, Collection[str]]] = None,
    ) -> "defer.Deferred[dict[str, Outcome]]":
        """Take in events fetched as history (``/backfill``): placed behind events we hold,
        they get the receipt checks of steps 4 and 5 like any PDU, and are stored with
        their state (rejected ones too), but they change neither the current state nor the
        forward extremities, are never soft-failed (step 6 is about the present) and never
        enter the /sync stream (``PersistEntry.history``). ``on_persisted`` is not called:
        nothing is new to the room.

        :param state_before: ``{event_id: state}`` for events whose prev events we do not
            hold with state (derived by :mod:`fedserver.state.backwards`, or fetched).
        :returns: Deferred firing with ``{event_id: Outcome}`` once committed.
        """
        return self._locked(
            room_id,
            lambda: self._process(
                room_id, list(events), False, True, state_before or {}, verified_servers or {}, history=True
            ),
        )

    def _locked(self, room_id: str, work: Callable[[], Any]) -> defer.Deferred:
        """Run the coroutine ``work()`` alone among the room's batches (rooms run
        concurrently)."""
        return self._locks.run(room_id, work)

    def create_local(
        self,
        room_id: str,
        build: Callable[[Mapping[StateKey, str], set[str]], Any],
    ) -> "defer.Deferred[tuple[Event, Outcome]]":
        """Build a local event on the room's current state and take it in, atomically with
        respect to other events of the room (so concurrent local events form a chain, not
        forks).

        :param build: ``build(current_state, forward_extremities)`` returning (a Deferred or
            coroutine of) the new :class:`Event`.
        :returns: Deferred firing with ``(event, outcome)``; a rejected event is not stored.
        """

        async def run():
            room = await self._room(room_id)
            current = room.current if room is not None else StateMap.from_dict({})
            extremities = set(room.extremities) if room is not None else set()
            event = await defer.maybeDeferred(build, current, extremities)
            outcomes = await self._process(room_id, [event], True, False, {}, {}, None, self._distribution(True))
            return event, outcomes[event.event_id]

        return self._locked(room_id, run)

    def process_outliers(
        self,
        room_id: str,
        events: Sequence[Event],
        *,
        verified_servers: Optional[Mapping[str, Collection[str]]] = None,
        history: bool = False,
    ) -> "defer.Deferred[dict[str, Outcome]]":
        """Take in events we hold without their place in the DAG (auth chains and state
        fetched for a join or a gap): each is checked against its own ``auth_events`` (step
        4; they come in auth order) and stored as an outlier, rejected or not.

        :param history: fetched for history (``PersistEntry.history``).
        :returns: Deferred firing with ``{event_id: Outcome}``; ``missing`` for events whose
            auth events are neither stored nor in ``events``.
        """
        return defer.ensureDeferred(self._process_outliers(room_id, list(events), verified_servers or {}, history))

    async def _process_outliers(
        self, room_id: str, events: list[Event], verified: Mapping[str, Collection[str]], history: bool = False
    ) -> dict[str, Outcome]:
        outcomes: dict[str, Outcome] = {}
        if not events:
            return outcomes
        store = self._store
        known = await store.get_event_meta([e.event_id for e in events])
        todo = {e.event_id: e for e in events if e.event_id not in known}
        for e in events:
            if e.event_id in known:
                m = known[e.event_id]
                outcomes[e.event_id] = Outcome(REJECTED if m.rejected else ACCEPTED, duplicate=True)
        wanted = {a for e in todo.values() for a in e.auth_event_ids if a not in todo}
        create_id = "$" + room_id[1:] if events[0].room_version.room_id_from_create_event else None
        if create_id and create_id not in todo:
            wanted.add(create_id)
        stored = await store.get_events(wanted) if wanted else {}
        lookup = _Overlay(stored, todo)
        create = lookup.get(create_id) if create_id else None
        entries: list[PersistEntry] = []
        for event in _auth_ordered(list(todo.values())):
            eid = event.event_id
            missing = [a for a in event.auth_event_ids if lookup.get(a) is None]
            if create_id and create is None and event.type != "m.room.create":
                missing.append(create_id)  # v12: judged against the create event, not known yet
            if missing:
                outcomes[eid] = Outcome(MISSING, missing=frozenset(missing))
                todo.pop(eid, None)  # nothing citing it can be checked either
                continue
            auth_list = [lookup[a] for a in event.auth_event_ids]
            if create is None and event.type == "m.room.create":
                create = event
            result = self._engine.check(event, auth_list, create_event=create, verified_servers=verified.get(eid))
            if result.allowed:
                outcomes[eid] = Outcome(ACCEPTED, stored=True)
                entries.append(PersistEntry(event=event, outlier=True, history=history))
            else:
                refusal = _refusal_from(result)
                event.rejected_reason = refusal.reason
                outcomes[eid] = Outcome(REJECTED, refusal, stored=True)
                entries.append(PersistEntry(event=event, outlier=True, rejection=refusal, history=history))
        if entries:
            await store.persist_events(entries)
        return outcomes

    def resolve(
        self, room_id: str, rv: RoomVersion, states: Sequence[Mapping[StateKey, str]]
    ) -> "defer.Deferred[dict[StateKey, str]]":
        """Resolve ``states`` of ``room_id`` (loading what resolution reads from storage)."""

        async def run():
            create = None
            if rv.room_id_from_create_event:
                create = await self._store.get_event("$" + room_id[1:])
            else:
                create_id = next((s.get(("m.room.create", "")) for s in states if s.get(("m.room.create", ""))), None)
                create = await self._store.get_event(create_id) if create_id else None
            return await self._resolve(room_id, rv, list(states), {}, {}, create)

        return defer.ensureDeferred(run())

    def current_state(self, room_id: str) -> "defer.Deferred[Mapping[StateKey, str]]":
        """The room's current state as the pipeline sees it (a read-only map)."""
        return defer.ensureDeferred(self._room(room_id)).addCallback(lambda r: r.current if r else {})

    def forward_extremities(self, room_id: str) -> "defer.Deferred[set[str]]":
        """The room's forward extremities (the events new local events cite)."""
        return defer.ensureDeferred(self._room(room_id)).addCallback(lambda r: set(r.extremities) if r else set())

    def invalidate(self, room_id: str) -> None:
        """Forget the cached view of ``room_id`` (after writing it outside the pipeline)."""
        self._rooms.pop(room_id, None)

    # -- the batch ----------------------------------------------------------------------

    async def _room(self, room_id: str) -> Optional[_RoomState]:
        room = self._rooms.get(room_id)
        if room is not None:
            return room
        current = await self._store.get_current_state_ids(room_id)
        extremities = await self._store.get_forward_extremities(room_id)
        create_id = current.get(("m.room.create", ""))
        create = (await self._store.get_event(create_id)) if create_id else None
        if create is None and not extremities:
            return None
        partial = await self._store.partial_state.get_room(room_id) is not None
        room = _RoomState(StateMap.from_dict(dict(current)), set(extremities), create, partial)
        if len(self._rooms) >= ROOM_CACHE_SIZE:
            self._rooms.pop(next(iter(self._rooms)))
        self._rooms[room_id] = room
        return room

    async def _process(
        self,
        room_id: str,
        events: list[Event],
        local: bool,
        persist_rejected: bool,
        given_state: Mapping[str, Mapping[StateKey, str]],
        verified: Mapping[str, Collection[str]],
        partial_join: Optional["PartialJoin"] = None,
        send_never: Optional[frozenset[str]] = None,
        history: bool = False,
        atomic: bool = False,
    ) -> dict[str, Outcome]:
        """One batch, in the order of the server-server spec's "Checks performed on
        receipt of a PDU": the batch's context is loaded, then each event in DAG order gets
        its state before (:meth:`_state_before`), the checks of steps 4-6 and the policy
        hook (:meth:`_receipt_checks`), and its outcome applied to the room's state
        (:meth:`_apply`); the batch is committed in one transaction (:meth:`_commit`).

        ``send_never``: distribute the accepted events, never to these servers (``None``:
        do not distribute). ``history``: events fetched as history
        (:meth:`process_history`), committed by :meth:`_commit_history`. ``atomic``: see
        :meth:`process`."""
        outcomes, todo, meta = await self._new_events(events)
        if not todo:
            return outcomes
        b = await self._load_context(room_id, todo, given_state, outcomes, meta, send_never, history)
        if partial_join is not None:
            b.partial = True
        for event in _ordered(todo):
            found = await self._state_before(b, event, given_state)
            if found is None:
                continue
            before, entry_kw = found
            checked = await self._receipt_checks(
                b, event, before, local=local, given=event.event_id in given_state,
                servers=verified.get(event.event_id),
            )
            if checked is None:
                continue
            refusal, soft = checked
            await self._apply(b, event, before, entry_kw, refusal, soft, persist_rejected)
        if history:
            await self._commit_history(b)
            return b.outcomes
        if atomic and any(o.status != ACCEPTED or o.duplicate for o in b.outcomes.values()):
            # All or nothing: nothing was written and the room's view was not touched.
            return {eid: replace(o, stored=False) for eid, o in b.outcomes.items()}
        await self._commit(b, partial_join)
        for callback in list(self.on_persisted):
            try:
                callback(room_id, b.accepted_in_order)
            except Exception:
                log.failure("on_persisted callback failed")
        return b.outcomes

    async def _new_events(self, events: list[Event]) -> tuple[dict[str, Outcome], list[Event], Mapping[str, Any]]:
        """Events already in the DAG get their stored outcome (``duplicate``); the rest are
        to do (outliers we hold are taken into the DAG now). Also returns the stored
        metadata of the events and of their prev events (read together)."""
        outcomes: dict[str, Outcome] = {}
        if not events:
            return outcomes, [], {}
        ids = {e.event_id for e in events} | {p for e in events for p in e.prev_event_ids}
        meta = await self._store.get_event_meta(list(ids))
        todo: list[Event] = []
        for e in events:
            m = meta.get(e.event_id)
            if m is not None and not m.outlier:
                status = REJECTED if m.rejected else SOFT_FAILED if m.soft_failed else ACCEPTED
                outcomes[e.event_id] = Outcome(status, duplicate=True)
            else:
                todo.append(e)
        return outcomes, todo, meta

    async def _load_context(
        self,
        room_id: str,
        todo: list[Event],
        given_state: Mapping[str, Mapping[StateKey, str]],
        outcomes: dict[str, Outcome],
        meta: Mapping[str, Any],
        send_never: Optional[frozenset[str]],
        history: bool,
    ) -> "_Batch":
        """Load in bulk what the batch needs: the room's view, the states after prev events
        held in storage (all their groups in one read), the cited auth events, and the
        state events the auth rules will consult."""
        store = self._store
        room = await self._room(room_id)
        b = _Batch(room_id, room, todo, outcomes, send_never, history)
        # A prev event of another room is no prev event of this one: it counts as missing
        # (HOSTILE row 16's rule for auth events, applied to the DAG).
        outside_prevs = {
            p for e in todo for p in e.prev_event_ids
            if p not in b.batch_events and (p not in meta or meta[p].room_id == room_id)
        }
        known = room.groups_after if room is not None else {}
        groups = {p: known[p] for p in outside_prevs if p in known}
        rest = [p for p in outside_prevs if p not in groups]
        if rest:
            groups.update(await store.get_state_ids_for_events(rest, after=True))
        b.groups = groups
        b.group_states = await store.get_state_groups(set(b.groups.values())) if b.groups else {}
        wanted = {a for e in todo for a in e.auth_event_ids if a not in b.batch_events}
        initial_states: list[Mapping[StateKey, str]] = list(b.group_states.values()) + list(given_state.values())
        if room is not None:
            initial_states.append(room.current)
        for e in todo:
            keys = auth_types_for_event(e.room_version, e.type, e.state_key, e.sender, e.content)
            for s in initial_states:
                for k in keys:
                    v = s.get(k)
                    if v is not None and v not in b.batch_events:
                        wanted.add(v)
        if wanted:
            b.events_by_id.update(await store.get_events(wanted))
        if b.create is None:
            b.create = next((e for e in todo if e.type == "m.room.create" and e.state_key == ""), None)
        if b.create is None and todo[0].room_version.room_id_from_create_event:
            b.create = await store.get_event("$" + room_id[1:])
        return b

    async def _state_before(
        self, b: "_Batch", event: Event, given_state: Mapping[str, Mapping[StateKey, str]]
    ) -> Optional[tuple[Mapping[StateKey, str], dict[str, Any]]]:
        """The state before ``event`` and how to store it (``PersistEntry`` keywords):
        given, the state after its one prev event, or its prev events' states resolved.
        ``None`` (outcome ``missing``) if a prev event has no known state."""
        eid = event.event_id
        if eid in given_state:
            before: Mapping[StateKey, str] = given_state[eid]
            if not isinstance(before, StateMap):
                before = StateMap.from_dict(dict(before))
            return before, {"state_before": before}
        if event.type == "m.room.create" and not event.prev_event_ids:
            before = StateMap.from_dict({})
            return before, {"state_before": before}
        prev_states: list[Mapping[StateKey, str]] = []
        prev_keys: list[Any] = []
        missing: set[str] = set()
        for p in event.prev_event_ids:
            if p in b.after:
                prev_states.append(b.after[p])
                prev_keys.append(("event", p))
            elif p in b.groups:
                prev_states.append(b.group_states[b.groups[p]])
                prev_keys.append(("group", b.groups[p]))
            else:
                missing.add(p)  # unknown, or a prev in this batch that could not be taken in
        if missing or not prev_states:
            b.outcomes[eid] = Outcome(MISSING, missing=frozenset(missing or event.prev_event_ids))
            return None
        before, entry_kw = await self._merge_prev_states(b, event, prev_states, prev_keys)
        if not b.history and len(b.extremities) == 1 and b.extremities == set(event.prev_event_ids):
            # The usual case: the event follows the room's only forward extremity, so the
            # state before it is the current state (already in memory).
            before = b.current
        return before, entry_kw

    async def _receipt_checks(
        self,
        b: "_Batch",
        event: Event,
        before: Mapping[StateKey, str],
        *,
        local: bool,
        given: bool,
        servers: Optional[Collection[str]],
    ) -> Optional[tuple[Optional[Refusal], Optional[Refusal]]]:
        """Steps 4-6 of the receipt checks and the policy hook.

        :returns: ``(refusal, soft failure)``, or ``None`` (outcome ``missing``) if an auth
            event is not known.
        """
        eid = event.event_id
        auth_list = []
        missing = set()
        for a in event.auth_event_ids:
            ae = b.batch_events.get(a) if a in b.after else b.events_by_id.get(a)
            if ae is None:
                missing.add(a)
            else:
                auth_list.append(ae)
        if missing:
            b.outcomes[eid] = Outcome(MISSING, missing=frozenset(missing))
            return None
        create, engine = b.create, self._engine
        # -- step 4: the auth rules against the cited auth events ---------------------------
        result = engine.check(event, auth_list, create_event=create, verified_servers=servers)
        if not result.allowed:
            return _refusal_from(result), None
        # -- step 5: the auth rules against the state before the event --------------------
        state = before
        if b.partial and not given:
            # A partial-state room (MSC3902): we do not know the state before the event (its
            # members are missing), so it is checked against that partial state resolved
            # with its own auth events.
            state = await self._partial_auth_state(b, event, before, auth_list)
        await self._ensure_loaded(event, state, b.events_by_id, b.batch_events)
        view = _EventState(state, _Overlay(b.events_by_id, b.batch_events))
        result = engine.check_against_state(event, view, create_event=create, verified_servers=servers)
        if not result.allowed:
            return _refusal_from(result), None
        soft: Optional[Refusal] = None
        if b.history:
            # History is never soft-failed and never given to the policy hook: step 6 and
            # the policies are about the present.
            return None, None
        if not local and not b.partial and b.room is not None and b.current is not before:
            # -- step 6: the current state (soft failure; never on partial state, MSC3902) --
            await self._ensure_loaded(event, b.current, b.events_by_id, b.batch_events)
            view = _EventState(b.current, _Overlay(b.events_by_id, b.batch_events))
            result = engine.check_against_state(event, view, create_event=create, verified_servers=servers)
            if not result.allowed:
                soft = _refusal_from(result)
        if soft is None and self._has_policies():
            view = _EventState(b.current, _Overlay(b.events_by_id, b.batch_events))
            policy = await check_event_policy(self._pm, event, event.room_version, view)
            if policy.soft_failed:
                sf = policy.soft_failures[0]
                soft = Refusal(sf.reason, "policy", sf.plugin or None)
        return None, soft

    async def _partial_auth_state(
        self, b: "_Batch", event: Event, before: Mapping[StateKey, str], auth_list: list[Event]
    ) -> Mapping[StateKey, str]:
        """The state to authorise ``event`` against in a partial-state room: the partial
        state before it, resolved with the state its auth events form. Where they only
        add entries (the members partial state lacks) the union is that resolution's
        result; a real conflict is resolved."""
        auth_state = {(a.type, a.state_key): a.event_id for a in auth_list if a.state_key is not None}
        if all(before.get(k) in (None, v) for k, v in auth_state.items()):
            extra = {k: v for k, v in auth_state.items() if k not in before}
            return _evolve(before, extra) if extra else before
        resolved = await self._resolve(
            b.room_id, event.room_version, [before, auth_state], b.events_by_id, b.batch_events, b.create
        )
        return StateMap.from_dict(resolved)

    async def _apply(
        self,
        b: "_Batch",
        event: Event,
        before: Mapping[StateKey, str],
        entry_kw: dict[str, Any],
        refusal: Optional[Refusal],
        soft: Optional[Refusal],
        persist_rejected: bool,
    ) -> None:
        """Record the event's outcome: rejected events are stored (if asked) and change
        nothing; others are state after themselves, and accepted ones move the room's
        current state and forward extremities."""
        eid, room_id = event.event_id, b.room_id
        if refusal is not None:
            event.rejected_reason = refusal.reason
            b.after[eid] = before
            b.outcomes[eid] = Outcome(REJECTED, refusal, stored=persist_rejected)
            if persist_rejected:
                b.entries.append(PersistEntry(event=event, rejection=refusal, history=b.history, **entry_kw))
            log.info("Rejected {event_id} in {room_id}: {reason} (rule {rule})",
                     event_id=eid, room_id=room_id, reason=refusal.reason, rule=refusal.rule)
            return
        state_after: Mapping[StateKey, str] = before
        if event.state_key is not None:
            state_after = _evolve(before, {(event.type, event.state_key): eid})
        b.after[eid] = state_after
        b.batch_events[eid] = event
        if b.history:
            # Behind what we hold: stored with its state, nothing present changes.
            b.outcomes[eid] = Outcome(ACCEPTED, stored=True)
            b.entries.append(PersistEntry(event=event, history=True, **entry_kw))
            return
        if soft is not None:
            outcome = Outcome(SOFT_FAILED, soft, stored=True)
            b.entries.append(PersistEntry(event=event, soft_failed=True, soft_failure=soft, **entry_kw))
            log.info("Soft-failed {event_id} in {room_id}: {reason}", event_id=eid, room_id=room_id, reason=soft.reason)
        else:
            outcome = Outcome(ACCEPTED, stored=True)
            current, extremities = b.current, b.extremities
            # The new current state: the state after this event if it descends from every
            # forward extremity (the usual linear case); otherwise resolve the two.
            prevs = set(event.prev_event_ids)
            if before is current:
                new_current = state_after
                delta = {} if state_after is before else {(event.type, event.state_key): eid}
            elif extremities <= prevs or not extremities:
                new_current = state_after
                delta = _diff(current, new_current)
            elif _same_state(before, current):
                # A branch whose state is the current state (concurrent senders): the
                # event changes at most its own key.
                new_current = state_after
                delta = {} if state_after is before else {(event.type, event.state_key): eid}
            else:
                new_current = await self._resolve(
                    room_id, event.room_version, [current, state_after], b.events_by_id, b.batch_events, b.create
                )
                delta = _diff(current, new_current)
            b.extremities = (extremities - prevs) | {eid}
            if delta:
                b.current_changed = True
            b.current = new_current if isinstance(new_current, StateMap) else StateMap.from_dict(dict(new_current))
            distribution = None
            if b.send_never is not None:
                distribution = Distribution(also=_target_server(event), never=b.send_never)
            b.entries.append(
                PersistEntry(event=event, update_current_state=delta or None, distribute=distribution, **entry_kw)
            )
            if event.type == "m.room.create" and event.state_key == "":
                b.create = event
        if b.partial:
            b.partial_ids.append(eid)
        b.outcomes[eid] = outcome
        b.accepted_in_order.append((event, outcome))

    async def _commit_history(self, b: "_Batch") -> None:
        """Persist a batch of history: nothing present changes, except that history filling
        a gap descends from events before it, which storage no longer counts as forward
        extremities (see ``PersistEntry.history``)."""
        if not b.entries:
            return
        await self._store.persist_events(b.entries)
        prevs = {p for x in b.entries if x.rejection is None for p in x.event.prev_event_ids}
        room = b.room
        if room is not None and room.extremities & prevs:
            room.extremities = room.extremities - prevs

    async def _commit(self, b: "_Batch", partial_join: Optional["PartialJoin"]) -> None:
        """Persist the batch in one transaction (with the partial-state marks, if any, and
        the outbound queue rows of the events to distribute) and update the in-memory view
        of the room; on failure the view is rebuilt later. The sender is woken after the
        commit."""
        if not b.entries:
            return
        room_id, store = b.room_id, self._store
        try:
            if b.partial:
                persisted = await store.run_write(
                    self._persist_partial_txn, room_id, b.entries, b.partial_ids, partial_join
                )
            else:
                persisted = await store.persist_events(b.entries)
        except Exception:
            self.invalidate(room_id)
            raise
        queued: set[str] = set()
        for eid, done in (persisted or {}).items():
            if eid in b.outcomes:
                if done.queued_for:
                    queued |= done.queued_for
                b.outcomes[eid] = replace(b.outcomes[eid], queued_for=done.queued_for, event_nid=done.event_nid)
        if persisted:
            b.accepted_in_order = [(e, b.outcomes[e.event_id]) for e, _ in b.accepted_in_order]
        if queued:
            self._wake(frozenset(queued))
        room = b.room
        if room is None:
            room = self._rooms[room_id] = _RoomState(b.current, b.extremities, b.create, partial=b.partial)
        else:
            room.extremities = b.extremities
            if b.current_changed:
                room.current = b.current
            if room.create is None:
                room.create = b.create
        groups: dict[str, int] = {}
        for eid in room.extremities:
            done = (persisted or {}).get(eid)
            group = done.state_group_after if done is not None else room.groups_after.get(eid)
            if group is not None:
                groups[eid] = group
        room.groups_after = groups
        if partial_join is not None:
            room.partial = True

    def _persist_partial_txn(
        self, txn: Any, room_id: str, entries: list[PersistEntry], partial_ids: list[str],
        partial_join: Optional["PartialJoin"],
    ) -> Any:
        store = self._store
        if partial_join is not None:
            # Marked first: the distribution below, in this transaction, reads the
            # resident's servers_in_room as the room's servers (we know no members yet).
            store.partial_state.start_txn(
                txn, room_id, partial_join.join_event_id, partial_join.resident, partial_join.servers_in_room
            )
        persisted = store.persist_events_txn(txn, entries)
        store.partial_state.mark_events_txn(txn, room_id, partial_ids)
        return persisted

    # -- partial state ---------------------------------------------------------------------

    def is_partial_state(self, room_id: str) -> "defer.Deferred[bool]":
        """Whether we hold only partial state of ``room_id`` (joined with
        ``members_omitted``, resync not finished)."""
        return defer.ensureDeferred(self._room(room_id)).addCallback(lambda r: bool(r is not None and r.partial))

    def wait_full_state(self, room_id: str) -> defer.Deferred:
        """A Deferred firing once the room's full state is held (at once for rooms that
        are not partial-state): what member lists wait for (MSC3902)."""

        def check(partial: bool) -> Any:
            if not partial:
                return None
            d: defer.Deferred = defer.Deferred()
            self._full_state_waiters.setdefault(room_id, []).append(d)
            return d

        return self.is_partial_state(room_id).addCallback(check)

    def complete_partial_state(
        self, room_id: str, join_event_id: str, state_before_join: Mapping[StateKey, str]
    ) -> "defer.Deferred[dict[str, Outcome]]":
        """End the partial state of ``room_id`` (MSC3902 "Resynchronisation"): with the full
        state before our join (fetched and checked by the caller), compute again the state
        before every event taken in on partial state, in DAG order, re-check each against
        it (step 5; one that fails now becomes rejected), resolve the new current state,
        store it all and clear the mark in one transaction. Runs under the room's lock.

        :returns: Deferred firing with ``{event_id: Outcome}`` of the events re-checked.
        """
        return self._locked(room_id, lambda: self._complete_partial(room_id, join_event_id, state_before_join))

    async def _complete_partial(
        self, room_id: str, join_event_id: str, state_before_join: Mapping[StateKey, str]
    ) -> dict[str, Outcome]:
        store = self._store
        room = await self._room(room_id)
        ids = await store.partial_state.get_events(room_id)
        loaded = await store.get_events(ids)
        ordered = [loaded[i] for i in ids if i in loaded]
        in_batch = {e.event_id for e in ordered}
        outside = {p for e in ordered for p in e.prev_event_ids if p not in in_batch}
        groups = await store.get_state_ids_for_events(outside, after=True) if outside else {}
        group_states = await store.get_state_groups(set(groups.values())) if groups else {}
        create = room.create if room is not None else None
        events_by_id: dict[str, Event] = {}
        after: dict[str, Mapping[StateKey, str]] = {}
        rewrites: list[StateRewrite] = []
        outcomes: dict[str, Outcome] = {}
        full_join_state = StateMap.from_dict(dict(state_before_join))
        for event in ordered:
            eid, rv = event.event_id, event.room_version
            prev_states = [after[p] if p in after else group_states[groups[p]]
                           for p in event.prev_event_ids if p in after or p in groups]
            if eid == join_event_id or not prev_states:
                before: Mapping[StateKey, str] = full_join_state
            elif len(prev_states) == 1 or all(s is prev_states[0] for s in prev_states):
                before = prev_states[0]
            else:
                before = StateMap.from_dict(await self._resolve(room_id, rv, prev_states, events_by_id, {}, create))
            rejection: Optional[Refusal] = None
            if event.rejected_reason is None:
                await self._ensure_loaded(event, before, events_by_id, {})
                result = self._engine.check_against_state(
                    event, _EventState(before, events_by_id), create_event=create
                )
                if not result.allowed:
                    rejection = _refusal_from(result)
                    log.warn("{event_id} in {room_id} fails the auth rules on the full state: {reason}",
                             event_id=eid, room_id=room_id, reason=rejection.reason)
            rewrites.append(StateRewrite(eid, before, rejection))
            if rejection is None and event.rejected_reason is None and event.state_key is not None:
                after[eid] = _evolve(before, {(event.type, event.state_key): eid})
            else:
                after[eid] = before
            outcomes[eid] = Outcome(REJECTED if rejection or event.rejected_reason else ACCEPTED, rejection)
        # The new current state: the states after the forward extremities, resolved.
        extremities = room.extremities if room is not None else set(await store.get_forward_extremities(room_id))
        ext_states = []
        missing_ext = [x for x in extremities if x not in after]
        ext_groups = await store.get_state_ids_for_events(missing_ext, after=True) if missing_ext else {}
        ext_group_states = await store.get_state_groups(set(ext_groups.values())) if ext_groups else {}
        for x in sorted(extremities):
            if x in after and outcomes.get(x) is not None and outcomes[x].accepted:
                ext_states.append(after[x])
            elif x in ext_groups:
                ext_states.append(ext_group_states[ext_groups[x]])
        if not ext_states:
            ext_states = [after[ordered[-1].event_id]] if ordered else [full_join_state]
        if len(ext_states) == 1:
            current: Mapping[StateKey, str] = ext_states[0]
        else:
            current = await self._resolve(room_id, ordered[0].room_version, ext_states, events_by_id, {}, create)
        try:
            await store.partial_state.finish(room_id, rewrites, current)
        finally:
            self.invalidate(room_id)
        waiters = self._full_state_waiters.pop(room_id, [])
        for d in waiters:
            d.callback(None)
        for callback in list(self.on_full_state):
            try:
                callback(room_id)
            except Exception:
                log.failure("on_full_state callback failed")
        return outcomes

    # -- helpers -----------------------------------------------------------------------------

    def _wake(self, servers: frozenset[str]) -> None:
        for callback in list(self.on_queued):
            try:
                callback(servers)
            except Exception:
                log.failure("on_queued callback failed")

    def _has_policies(self) -> bool:
        return bool(self._pm.hook.fedserver_check_event_policy.get_hookimpls())

    async def _ensure_loaded(
        self, event: Event, state: Mapping[StateKey, str], events_by_id: dict[str, Event], batch: Mapping[str, Event]
    ) -> None:
        keys = auth_types_for_event(event.room_version, event.type, event.state_key, event.sender, event.content)
        need = []
        for k in keys:
            v = state.get(k)
            if v is not None and v not in events_by_id and v not in batch:
                need.append(v)
        if need:
            events_by_id.update(await self._store.get_events(need))

    async def _merge_prev_states(
        self,
        b: "_Batch",
        event: Event,
        prev_states: list[Mapping[StateKey, str]],
        prev_keys: list[Any],
    ) -> tuple[Mapping[StateKey, str], dict[str, Any]]:
        """The state before an event with several prev events: the one state if they all
        share it, else their resolution (stored against a prev group as a hint)."""
        first = prev_states[0]
        if all(s is first or k == prev_keys[0] for s, k in zip(prev_states, prev_keys)):
            kind, value = prev_keys[0]
            if kind == "event":
                return first, {"state_before_event": value}
            return first, {"state_group_before": value}
        resolved = await self._resolve(b.room_id, event.room_version, prev_states, b.events_by_id, {}, b.create)
        hint = next((v for k, v in prev_keys if k == "group"), None)
        kw: dict[str, Any] = {"state_before": resolved}
        if hint is not None:
            kw["state_before_prev_group"] = hint
        return StateMap.from_dict(resolved), kw

    async def _resolve(
        self,
        room_id: str,
        rv: RoomVersion,
        states: list[Mapping[StateKey, str]],
        events_by_id: dict[str, Event],
        batch: Mapping[str, Event],
        create: Optional[Event],
    ) -> dict[StateKey, str]:
        """Resolve ``states`` after loading what state resolution will read: the conflicted
        events and their auth chains, and the auth-relevant unconflicted state."""
        keys: set[StateKey] = set()
        for s in states:
            keys.update(s.keys())
        conflicted: set[str] = set()
        for k in keys:
            values = {s.get(k) for s in states}
            if len(values) > 1:
                conflicted.update(v for v in values if v is not None)
        if not conflicted:
            merged: dict[StateKey, str] = {}
            for st in states:
                merged.update(st.items())
            return merged
        need = {c for c in conflicted if c not in events_by_id and c not in batch}
        if need:
            events_by_id.update(await self._store.get_events(need))
        chain = await self._store.get_auth_chain_ids([c for c in conflicted if c not in batch])
        for c in conflicted:
            ev = batch.get(c)
            if ev is not None:
                chain.update(ev.auth_event_ids)
        need = {c for c in chain if c not in events_by_id and c not in batch}
        if need:
            events_by_id.update(await self._store.get_events(need))
        # The unconflicted state the iterative auth checks will look at.
        relevant = set()
        lookup = _Overlay(events_by_id, batch)
        for c in conflicted | chain:
            ev = lookup.get(c)
            if ev is not None:
                relevant |= auth_types_for_event(ev.room_version, ev.type, ev.state_key, ev.sender, ev.content)
        need = set()
        for s in states:
            for k in relevant:
                v = s.get(k)
                if v is not None and v not in events_by_id and v not in batch:
                    need.add(v)
        if need:
            events_by_id.update(await self._store.get_events(need))
        engine = self._engine

        def auth_check(ev: Event, state: Mapping[StateKey, Event]) -> bool:
            return engine.check_against_state(ev, state, create_event=create).allowed

        def get_event(event_id: str) -> Event:
            ev = lookup.get(event_id)
            if ev is None:
                raise KeyError(event_id)
            return ev

        started = time.perf_counter()
        resolved = state_before_event(rv, states, get_event, auth_check, room_id=room_id)
        elapsed = time.perf_counter() - started
        for observe in self.on_state_resolved:
            observe(rv.identifier, elapsed)
        return resolved


class _Overlay(Mapping[str, Event]):
    """Two event dicts read as one (batch events first)."""

    __slots__ = ("_a", "_b")

    def __init__(self, a: Mapping[str, Event], b: Mapping[str, Event]):
        self._a = a
        self._b = b

    def __getitem__(self, key: str) -> Event:
        ev = self._b.get(key)
        if ev is None:
            return self._a[key]
        return ev

    def get(self, key: str, default: Any = None) -> Any:
        ev = self._b.get(key)
        if ev is None:
            return self._a.get(key, default)
        return ev

    def __iter__(self):
        yield from self._b
        yield from (k for k in self._a if k not in self._b)

    def __len__(self) -> int:
        return len(set(self._a) | set(self._b))


def _target_server(event: Event) -> frozenset[str]:
    """The server of a membership event's target (``frozenset()`` for other events)."""
    if event.type != "m.room.member" or not event.state_key:
        return frozenset()
    _, sep, server = event.state_key.partition(":")
    return frozenset({server}) if sep and server else frozenset()


def _evolve(state: Mapping[StateKey, str], delta: dict[StateKey, str]) -> Mapping[StateKey, str]:
    if isinstance(state, StateMap):
        return state.evolve(delta)
    return StateMap.from_dict({**state, **delta})


def _same_state(a: Mapping[StateKey, str], b: Mapping[StateKey, str]) -> bool:
    """Whether two state maps hold the same entries (identity first: the common case)."""
    if a is b:
        return True
    if len(a) != len(b):
        return False
    get = b.get
    return all(get(k) == v for k, v in a.items())


def _diff(old: Mapping[StateKey, str], new: Mapping[StateKey, str]) -> dict[StateKey, Optional[str]]:
    """``{key: new id or None}`` turning ``old`` into ``new``."""
    if old is new:
        return {}
    delta: dict[StateKey, Optional[str]] = {}
    for k, v in new.items():
        if old.get(k) != v:
            delta[k] = v
    for k in old:
        if k not in new:
            delta[k] = None
    return delta
