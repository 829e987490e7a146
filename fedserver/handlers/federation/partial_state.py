"""The resync of rooms joined with partial state: the full state fetched in the background, checked, and the partial mark cleared."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from fedserver import background
from fedserver.background import log_background_failure
from fedserver.federation.client import FederationClientError, fed_path
from fedserver.handlers.federation.history import is_valid_id
from fedserver.handlers.federation.intake import IntakeError, OutlierIntake
from fedserver.handlers.rooms.pipeline import RoomPipeline
from fedserver.memory import release_free_memory
from fedserver.storage.interface import StateKey, StorageUnavailableError

log = Logger()

#: Above this many missing events the whole ``/state`` is fetched (streamed) rather than
#: each event through ``/event``.
EVENT_FETCH_LIMIT = 50
#: Concurrent ``/event`` requests.
EVENT_FETCH_CONCURRENCY = 5
#: Events checked and stored per step.
RESYNC_CHUNK = 2000
#: A resync of at least this many state events gives its memory back afterwards.
LARGE_STATE = 5000
#: Most ids a ``/state_ids`` answer may hold (state plus auth chain of the largest rooms).
MAX_STATE_IDS = 2_000_000


class ResyncFailed(Exception):
    """One server could not give the room's full state; another may."""


class PartialStateResync:
    """Completes rooms joined with partial state (MSC3902 "Resynchronisation"; send_join
    v2 ``omit_members`` in the spec): asks the resident, then the other
    ``servers_in_room``, for the state before our join (``/state_ids``; the events we lack
    through ``/event``, or the whole ``/state`` streamed when many are missing), checks
    and stores those events like any fetched state, and hands the full state to
    :meth:`RoomPipeline.complete_partial_state`, which re-checks what came in meanwhile and
    clears the mark. A server that fails is left for the next; after a round of failures
    the resync waits (doubling up to ``max_retry_s``) and tries again; through a database
    outage it logs nothing (the database does) and tries again after
    :data:`fedserver.background.STORAGE_RETRY_S`. After a restart, :meth:`resume` starts
    the resync of every room still marked.

    :param client: the federation client.
    :param keyring: verifies fetched events.
    :param pipeline: stores them and completes the room.
    :param store: the store (``partial_state``, ``have_events``).
    :param clock: for the waits.
    :param server_name: ours (never asked).
    :param max_response_size: the cap on a ``/state`` answer.
    """

    def __init__(
        self,
        *,
        client: Any,
        keyring: Any,
        pipeline: RoomPipeline,
        store: Any,
        clock: Any,
        server_name: str,
        max_response_size: int,
        retry_s: float = 2.0,
        max_retry_s: float = 300.0,
    ) -> None:
        self._client = client
        self._keyring = keyring
        self._pipeline = pipeline
        self._store = store
        self._clock = clock
        self._server_name = server_name
        self._max_size = max_response_size
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        self._running: dict[str, defer.Deferred] = {}
        self._timers: dict[str, Any] = {}
        self._stopped = False

    def start(self, room_id: str) -> None:
        """Start the resync of ``room_id`` in the background (once)."""
        if self._stopped or room_id in self._running:
            return
        d = defer.ensureDeferred(self._run(room_id))
        self._running[room_id] = d

        def done(result: Any) -> Any:
            self._running.pop(room_id, None)
            return result

        d.addBoth(done)
        d.addErrback(log_background_failure, "Resync of {room_id} failed", logger=log, room_id=room_id)

    async def resume(self) -> None:
        """Start the resync of every room still partial-state (after a restart)."""
        for room in await self._store.partial_state.get_rooms():
            log.info("Resuming the resync of partial-state room {room_id}", room_id=room.room_id)
            self.start(room.room_id)

    def running(self) -> defer.Deferred:
        """Fires when every resync started so far has ended (for tests)."""
        return defer.DeferredList(list(self._running.values()), consumeErrors=True)

    def stop(self) -> defer.Deferred:
        """Stop resyncing (what is done stays; a restart resumes the rest)."""
        self._stopped = True
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        running = list(self._running.values())
        for d in running:
            d.cancel()
        return defer.DeferredList(running, consumeErrors=True)

    async def _run(self, room_id: str) -> None:
        delay = self._retry_s
        while not self._stopped:
            try:
                if await self._round(room_id):
                    return
            except StorageUnavailableError:
                # The database is unavailable (it logs the episode): the same round again
                # once it may be back; what was stored stays, the mark too.
                await self._sleep(room_id, background.STORAGE_RETRY_S)
                continue
            await self._sleep(room_id, delay)
            delay = min(delay * 2, self._max_retry_s)

    async def _round(self, room_id: str) -> bool:
        """Ask each server in turn; whether the room is complete (or no longer marked)."""
        room = await self._store.partial_state.get_room(room_id)
        if room is None:
            return True
        servers = [room.resident] + [s for s in room.servers if s not in (room.resident, self._server_name)]
        for server in servers:
            try:
                await self._resync_from(server, room.room_id, room.join_event_id)
                log.info("Resync of {room_id} from {server} done: full state held", room_id=room_id, server=server)
                return True
            except (FederationClientError, ResyncFailed) as e:
                log.info("Resync of {room_id} from {server} failed: {e}", room_id=room_id, server=server, e=e)
        return False

    def _sleep(self, room_id: str, seconds: float) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._timers[room_id] = self._clock.callLater(seconds, d.callback, None)
        return d

    async def _resync_from(self, server: str, room_id: str, join_event_id: str) -> None:
        resp = await self._client.get_json(
            server, fed_path("/_matrix/federation/v1/state_ids/{}", room_id), args={"event_id": join_event_id}
        )
        pdu_ids = _id_list(resp, "pdu_ids")
        chain_ids = _id_list(resp, "auth_chain_ids")
        wanted = set(pdu_ids) | set(chain_ids)
        missing = wanted - await self._store.have_events(wanted)
        if missing:
            await self._fetch(server, room_id, join_event_id, missing)
        keys = await self._store.partial_state.get_state_keys(room_id, pdu_ids)
        state: dict[StateKey, str] = {}
        for event_id in pdu_ids:
            key = keys.get(event_id)
            if key is None:
                continue  # not stored (failed its checks) or rejected: not state
            if key in state and state[key] != event_id:
                raise ResyncFailed(f"{server}'s state holds two events for {key}")
            state[key] = event_id
        if ("m.room.create", "") not in state:
            raise ResyncFailed(f"{server}'s state has no create event")
        await self._pipeline.complete_partial_state(room_id, join_event_id, state)
        if len(pdu_ids) >= LARGE_STATE:
            release_free_memory()

    async def _fetch(self, server: str, room_id: str, join_event_id: str, missing: set[str]) -> None:
        rv = await self._store.get_room_version(room_id)
        create_id = (await self._pipeline.current_state(room_id)).get(("m.room.create", ""))
        create = await self._store.get_event(create_id) if create_id else None
        intake = OutlierIntake(self._keyring, self._pipeline, room_id, rv, create=create)
        if len(missing) > EVENT_FETCH_LIMIT:

            def on_batch(key: str, pdus: list) -> defer.Deferred:
                wanted = [p for p in pdus if isinstance(p, dict)]
                return intake.feed(wanted, state=key == "pdus")

            await self._client.request_json_stream(
                "GET", server, fed_path("/_matrix/federation/v1/state/{}", room_id), None, on_batch,
                stream_keys=("pdus", "auth_chain"), args={"event_id": join_event_id},
                batch_size=RESYNC_CHUNK, max_size=self._max_size,
            )
        else:
            sem = defer.DeferredSemaphore(EVENT_FETCH_CONCURRENCY)

            async def one(event_id: str) -> list:
                await sem.acquire()
                try:
                    got = await self._client.get_json(server, fed_path("/_matrix/federation/v1/event/{}", event_id))
                except FederationClientError as e:
                    log.info("Could not fetch {event_id} from {server}: {e}", event_id=event_id, server=server, e=e)
                    return []
                finally:
                    sem.release()
                pdus = got.get("pdus") if isinstance(got, dict) else None
                return [p for p in pdus if isinstance(p, dict)][:1] if isinstance(pdus, list) else []

            results = await defer.gatherResults(
                [defer.ensureDeferred(one(i)) for i in sorted(missing)], consumeErrors=True
            )
            await intake.feed([p for r in results for p in r], state=False)
        try:
            await intake.finish()
        except IntakeError as e:
            raise ResyncFailed(str(e)) from None



def _id_list(resp: Any, key: str) -> list[str]:
    value = resp.get(key) if isinstance(resp, dict) else None
    if type(value) is not list or len(value) > MAX_STATE_IDS or not all(is_valid_id(v, "$") for v in value):
        raise ResyncFailed(f"the /state_ids answer's {key} is not a list of event ids")
    return value

