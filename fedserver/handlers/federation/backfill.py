"""History fetched on demand from other servers (/backfill): when a client pages back past what we hold, before our join or across a gap."""

# Server-server API, "Backfilling and retrieving missing events": "To request more
# history, the requesting homeserver picks another homeserver that it thinks may have
# more (most likely this should be a homeserver for some of the existing users in the room
# at the earliest point in history it has currently), and makes a /backfill request."
#
# What is held: the room's DAG from our join (or the first events we saw) onwards, with
# *backward extremities* wherever an event we hold has prev events we do not: before our
# join, and in the middle where a gap was filled from /state_ids. /messages asks
# fill() when the page it reads crosses one; fill() asks the servers that were in the room
# at that extremity, one after another, for /backfill (the missing prev events and those
# before them), within a time budget.
#
# What comes back is checked like any received PDU (fedserver.handlers.federation.receipt,
# steps 1-3; then the pipeline's steps 4-5), keeping only the events that lead to what we
# asked for (a server cannot slip unrelated events in). Their state is carried backwards
# from the events we hold (fedserver.state.backwards), so a page costs one /backfill round
# trip; only where that cannot be done exactly (a non-auth state change such as a room
# name, or a merge of branches) is the state asked for with /state_ids. The events are
# stored as history (RoomPipeline.process_history): they change neither the current state
# nor the forward extremities and never enter /sync.

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from fedserver.background import log_background_failure
from fedserver.events.model import Event
from fedserver.federation.client import fed_path
from fedserver.handlers.federation.receipt import check_received
from fedserver.handlers.rooms.pipeline import ACCEPTED, MISSING, REJECTED
from fedserver.state.backwards import derive_states_before, newest_first
from fedserver.storage.interface import StateKey

log = Logger()

#: Events asked for per /backfill (Synapse serves at most 100).
BACKFILL_LIMIT = 100
#: Seconds a /messages request waits for history before answering with what it has.
DEFAULT_TIMEOUT = 10.0
#: Servers tried per round, at most.
MAX_SERVERS = 5
#: Backward extremities backfilled from in one request, and missing prev ids sent as ``v``.
MAX_EXTREMITIES = 5
MAX_V = 20
#: Rounds of /event fetches for auth events of fetched history we lack.
AUTH_FETCH_ROUNDS = 3
#: /state_ids requests per round, for history whose state cannot be derived.
STATE_FETCHES = 5
#: After a round placed nothing before an extremity, wait this long (doubling, up to the
#: maximum) before trying it again.
RETRY_MIN_S = 10.0
RETRY_MAX_S = 600.0
#: Extremities whose retry delay is remembered, at most (the oldest are forgotten).
MAX_RETRY_ENTRIES = 10_000


class BackfillHandler:
    """Fetches history from other servers into our rooms.

    :param client: the :class:`fedserver.federation.client.FederationClient`.
    :param keyring: to verify signatures (receipt step 2).
    :param store: the store (``store.backfill``, events and state).
    :param pipeline: the :class:`fedserver.handlers.rooms.pipeline.RoomPipeline`.
    :param gaps: the :class:`fedserver.handlers.federation.gaps.GapFiller` (auth events
        and state we lack).
    :param clock: ``seconds()`` and ``callLater``.
    :param server_name: ours (never asked).
    :param timeout: seconds :meth:`fill` waits at most.
    :param limit: events asked for per ``/backfill``.
    """

    def __init__(
        self,
        *,
        client: Any,
        keyring: Any,
        store: Any,
        pipeline: Any,
        gaps: Any,
        clock: Any,
        server_name: str,
        timeout: float = DEFAULT_TIMEOUT,
        limit: int = BACKFILL_LIMIT,
    ) -> None:
        self._client = client
        self._keyring = keyring
        self._store = store
        self._pipeline = pipeline
        self._gaps = gaps
        self._clock = clock
        self._server_name = server_name
        self.timeout = timeout
        self.limit = limit
        self._inflight: dict[str, defer.Deferred] = {}
        self._retry: dict[tuple[str, str], tuple[float, float]] = {}
        #: ``/backfill`` and ``/state_ids`` requests made (for the bench and operators).
        self.requests = 0
        self.state_requests = 0

    # -- the entry point ---------------------------------------------------------------

    async def fill(
        self, room_id: str, *, max_depth: int, min_depth: Optional[int] = None, timeout: Optional[float] = None
    ) -> bool:
        """Fetch the history missing behind the room's backward extremities with
        ``min_depth <= depth <= max_depth`` (the part of the room a client page covers),
        waiting at most ``timeout`` seconds (default :attr:`timeout`); the fetch goes on in
        the background if it takes longer, and a later page finds what it brought.

        :returns: whether new events were placed in time (the caller reads again).
        """
        extremities = await self._store.backfill.get_backward_extremities(room_id, max_depth, min_depth)
        now = self._clock.seconds()
        due = [x for x in extremities if self._retry.get((room_id, x.event_id), (0.0, 0.0))[0] <= now]
        if not due:
            return False
        running = self._inflight.get(room_id)
        if running is None:
            running = defer.ensureDeferred(self._round(room_id, due[:MAX_EXTREMITIES]))
            self._inflight[room_id] = running

            def done(result: Any) -> Any:
                if self._inflight.get(room_id) is running:
                    del self._inflight[room_id]
                if isinstance(result, Failure):
                    log_background_failure(result, "Backfilling {room_id} failed", logger=log, room_id=room_id)
                    return 0
                return result

            running.addBoth(done)
        placed = await self._wait(running, self.timeout if timeout is None else min(timeout, self.timeout))
        return bool(placed)

    def _wait(self, d: defer.Deferred, seconds: float) -> defer.Deferred:
        """A Deferred firing with ``d``'s result, or with ``None`` after ``seconds`` (``d``
        goes on)."""
        out: defer.Deferred = defer.Deferred()

        def fire(result: Any) -> None:
            if not out.called:
                out.callback(result)

        timer = self._clock.callLater(seconds, fire, None)

        def observe(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            fire(None if isinstance(result, Failure) else result)
            return result

        d.addBoth(observe)
        return out

    def pending(self) -> defer.Deferred:
        """Fires once every fetch started so far is done (for tests and stopping)."""
        return defer.DeferredList(list(self._inflight.values()), consumeErrors=True)

    # -- one round ---------------------------------------------------------------------

    async def _round(self, room_id: str, extremities: Sequence[Any]) -> int:
        """Ask the servers in turn for the history behind ``extremities`` until one
        brings something; returns the number of events placed."""
        rv = await self._store.get_room_version(room_id)
        if rv is None:
            return 0
        deadline = self._clock.seconds() + max(self.timeout, 1.0) * 3
        v = sorted({m for x in extremities for m in x.missing})[:MAX_V]
        servers = await self._servers(room_id, extremities)
        placed = 0
        for server in servers[:MAX_SERVERS]:
            remaining = deadline - self._clock.seconds()
            if remaining <= 0:
                break
            try:
                placed = await self._from(server, room_id, rv, v, remaining)
            except Exception as e:  # noqa: BLE001 - a server that cannot help; try the next
                log.info("Backfill of {room_id} from {server} failed: {e}", room_id=room_id, server=server, e=e)
                continue
            if placed:
                break
        still = {x.event_id for x in await self._store.backfill.get_backward_extremities(
            room_id, max(x.depth for x in extremities), min(x.depth for x in extremities))}
        now = self._clock.seconds()
        for x in extremities:
            key = (room_id, x.event_id)
            if x.event_id in still and not placed:
                _, delay = self._retry.get(key, (0.0, RETRY_MIN_S / 2))
                delay = min(RETRY_MAX_S, delay * 2)
                self._retry.pop(key, None)
                self._retry[key] = (now + delay, delay)
                while len(self._retry) > MAX_RETRY_ENTRIES:
                    del self._retry[next(iter(self._retry))]
            else:
                self._retry.pop(key, None)
        return placed

    async def _servers(self, room_id: str, extremities: Sequence[Any]) -> list[str]:
        """Who to ask: the servers of the senders of the extremities, then those with
        users joined at them (most members first), then those joined now."""
        out: list[str] = []

        def add(names: Iterable[str]) -> None:
            for n in names:
                if n and n != self._server_name and n not in out:
                    out.append(n)

        held = await self._store.get_events([x.event_id for x in extremities])
        add(e.origin for e in held.values())
        for x in extremities:
            add(await self._store.backfill.get_servers_at(x.event_id))
        add(sorted(await self._store.get_joined_hosts(room_id)))
        return out

    async def _from(self, server: str, room_id: str, rv: Any, v: Sequence[str], timeout: float) -> int:
        """One ``/backfill`` from ``server``, checked and placed."""
        self.requests += 1
        resp = await self._client.get_json(
            server,
            fed_path("/_matrix/federation/v1/backfill/{}", room_id),
            args={"v": list(v), "limit": str(self.limit)},
            timeout=timeout,
        )
        pdus = resp.get("pdus") if isinstance(resp, dict) else None
        if not isinstance(pdus, list):
            raise ValueError("the answer has no pdus list")
        checked = await check_received(self._keyring, pdus[: self.limit * 2], rv, room_id=room_id)
        events = _leading_to(checked.events, v)
        if len(events) < len(checked.events):
            log.info("{server} sent {n} events that do not lead to what was asked for; ignored",
                     server=server, n=len(checked.events) - len(events))
        if not events:
            return 0
        meta = await self._store.get_event_meta([e.event_id for e in events])
        events = [e for e in events if e.event_id not in meta or meta[e.event_id].outlier]
        if not events:
            return 0
        verified = dict(checked.verified)
        await self._fetch_auth_events(server, room_id, events, verified)
        state_before = await self._states(server, room_id, events)
        outcomes = await self._pipeline.process_history(
            room_id, events, state_before=state_before, verified_servers=verified
        )
        accepted = sum(1 for o in outcomes.values() if o.status == ACCEPTED and not o.duplicate)
        rejected = sum(1 for o in outcomes.values() if o.status == REJECTED and not o.duplicate)
        missing = sum(1 for o in outcomes.values() if o.status == MISSING)
        log.info(
            "Backfilled {room_id} from {server}: {accepted} placed, {rejected} rejected, {missing} without state",
            room_id=room_id, server=server, accepted=accepted, rejected=rejected, missing=missing,
        )
        return accepted + rejected

    async def _fetch_auth_events(
        self, server: str, room_id: str, events: Sequence[Event], verified: dict[str, Any]
    ) -> None:
        """Fetch (``/event``) and store as outliers the auth events of ``events`` that we
        hold nowhere, a few rounds deep."""
        batch = {e.event_id for e in events}
        fetched: dict[str, Event] = {}
        wanted = {a for e in events for a in e.auth_event_ids if a not in batch}
        for _ in range(AUTH_FETCH_ROUNDS):
            wanted -= await self._store.have_events(wanted)
            wanted -= set(fetched)
            if not wanted:
                break
            got = [e for e in await self._gaps.get_events(server, sorted(wanted)) if e.room_id == room_id]
            if not got:
                break
            for e in got:
                fetched[e.event_id] = e
            wanted = {a for e in got for a in e.auth_event_ids if a not in batch}
        if fetched:
            await self._pipeline.process_outliers(room_id, list(fetched.values()), history=True)

    async def _states(self, server: str, room_id: str, events: Sequence[Event]) -> dict[str, Mapping[StateKey, str]]:
        """The state before the events of ``events`` that the pipeline cannot compute from
        their prev events (those at the far edge of the answer)."""
        store = self._store
        batch = {e.event_id: e for e in events}
        held = await store.backfill.get_held_children(batch)
        groups = {c.state_group_before for cs in held.values() for c in cs}
        group_states = {g: await store.get_state_group(g) for g in groups}
        held_children = {
            eid: [(c.prev_event_ids, group_states[c.state_group_before]) for c in cs] for eid, cs in held.items()
        }
        auth_ids = {a for e in events for a in e.auth_event_ids if a not in batch}
        auth_events = await store.get_events(auth_ids) if auth_ids else {}
        keys: dict[str, Optional[StateKey]] = {eid: e.state_tuple for eid, e in auth_events.items()}
        keys.update((eid, e.state_tuple) for eid, e in batch.items())
        # The pipeline computes the state of an event from its prev events when it holds
        # them (with state) or takes them in the same batch (down to the room's create
        # event, which has none); the others need the state carried backwards.
        outside = {p for e in events for p in e.prev_event_ids if p not in batch}
        with_state = set(await store.rooms.get_event_state_groups(outside)) if outside else set()
        forward: set[str] = set()
        for e in reversed(newest_first(events)):
            if all(p in with_state or p in forward for p in e.prev_event_ids):
                forward.add(e.event_id)
        given: dict[str, Mapping[StateKey, str]] = {}
        derived = derive_states_before(events, held_children, keys.get, given)
        for _ in range(STATE_FETCHES):
            needed = [eid for eid in derived.unknown if eid not in forward]
            if not needed:
                break
            target = needed[0]
            self.state_requests += 1
            answer = await self._gaps.get_state_before(server, room_id, target)
            if answer is None:
                break
            state, fetched = answer
            fetched = [e for e in fetched if e.room_id == room_id]
            if fetched:
                await self._pipeline.process_outliers(room_id, fetched, history=True)
            given[target] = state
            derived = derive_states_before(events, held_children, keys.get, given)
        placeable = set(forward)
        state_before: dict[str, Mapping[StateKey, str]] = {}
        for e in reversed(newest_first(events)):
            if e.event_id in placeable:
                continue
            if all(p in with_state or p in placeable for p in e.prev_event_ids):
                placeable.add(e.event_id)
            elif e.event_id in derived.before:
                state_before[e.event_id] = derived.before[e.event_id]
                placeable.add(e.event_id)
        return state_before


def _leading_to(events: Sequence[Event], wanted: Iterable[str]) -> list[Event]:
    """The events among ``events`` that are ``wanted`` or reached from them through
    ``prev_events`` within ``events`` (spec ``/backfill``: "the PDUs given in v and the
    PDUs that preceded them"); anything else was not asked for."""
    by_id = {e.event_id: e for e in events}
    frontier = [w for w in wanted if w in by_id]
    seen: set[str] = set(frontier)
    while frontier:
        nxt = []
        for eid in frontier:
            for p in by_id[eid].prev_event_ids:
                if p in by_id and p not in seen:
                    seen.add(p)
                    nxt.append(p)
        frontier = nxt
    return [e for e in events if e.event_id in seen]


__all__ = ["BackfillHandler", "BACKFILL_LIMIT", "DEFAULT_TIMEOUT"]
