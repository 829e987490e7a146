"""The store: opens the database (SQLite or PostgreSQL) and exposes the storage API as Deferreds."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, TypeVar


from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from fedserver.events.model import Event
from fedserver.room_versions import RoomVersion, RoomVersionRegistry
from fedserver.storage.operations.admin_store import AdminStore
from fedserver.storage.users.accounts_store import AccountStore
from fedserver.storage.rooms.backfill_store import BackfillStore
from fedserver.storage.users.deactivation_store import DeactivationStore
from fedserver.storage.users.devices_store import DevicesStore
from fedserver.storage.users.key_backup_store import KeyBackupStore
from fedserver.storage.users.to_device_store import ToDeviceStore
from fedserver.storage.database import Database, Txn, check_text, connect_pool, deferred_errors, lookup_ids, storable_text
from fedserver.storage.rooms.distribution_store import DistributionStore
from fedserver.storage.dialect import POSTGRESQL
from fedserver.storage.postgres import PostgresConfig, check_server, connect_pools
from fedserver.storage.rooms.events_store import DEFAULT_EVENT_CACHE_BYTES, EventStore
from fedserver.storage.federation.federation_extras_store import FederationExtrasStore
from fedserver.storage.operations.media_store import MediaStore
from fedserver.storage.federation.federation_store import FederationStore
from fedserver.storage.rooms.history_store import HistoryStore
from fedserver.storage.interface import (
    DestinationRetry,
    EventMeta,
    OutboundItem,
    PersistedEvent,
    PersistEntry,
    ReceivedTxn,
    Refusal,
    RefusedEvent,
    RoomInfo,
    StateKey,
    StorageError,
    StorageUnavailableError,
)
from fedserver.storage.nids import StateKeyInterner
from fedserver.storage.rooms.partial_state_store import PartialStateStore
from fedserver.storage.rooms.relations_store import RelationsStore
from fedserver.storage.users.presence_store import PresenceStore
from fedserver.storage.users.push_store import PushStore
from fedserver.storage.users.receipts_store import ReceiptsStore
from fedserver.storage.rooms.rooms_store import RoomsStore
from fedserver.storage.schema import DEFAULT_SCHEMA_DIR, prepare_database
from fedserver.storage.rooms.state_groups import DEFAULT_MAX_CHAIN, StateGroupStore
from fedserver.storage.users.user_directory_store import UserDirectoryStore
from fedserver.state.statemap import StateMap

T = TypeVar("T")


def open_store(
    path: "str | PostgresConfig",
    reactor: Any,
    *,
    registry: Optional[RoomVersionRegistry] = None,
    schema_dir: str = DEFAULT_SCHEMA_DIR,
    synchronous: str = "NORMAL",
    busy_timeout_ms: int = 10_000,
    event_cache_bytes: int = DEFAULT_EVENT_CACHE_BYTES,
    state_cache_weight: int = 100_000,
    max_state_chain: int = DEFAULT_MAX_CHAIN,
) -> "Deferred[SQLiteStore]":
    """Open (creating or upgrading as needed) the SQLite database at ``path``, or the
    PostgreSQL database ``path`` describes.

    :param path: a file path (SQLite), or a
        :class:`~fedserver.storage.postgres.PostgresConfig`.
    :param reactor: provides the thread the single connection runs in, and the clock.
    :param registry: the room versions this server supports (spec versions by default).
    :param schema_dir: the ``NNN_*.sql`` scripts (tests point this elsewhere).
    :param synchronous: ``PRAGMA synchronous``; ``NORMAL`` by default (see
        :mod:`fedserver.storage.database` for the trade-off), ``FULL`` to survive power
        loss with no committed transaction lost.
    :param busy_timeout_ms: how long to wait for a lock held by another process (SQLite;
        PostgreSQL has ``lock_timeout_ms`` in its config).
    :param event_cache_bytes: how many loaded events to keep in memory, as the total
        length of their stored JSON (a small member event of 670 bytes takes about 3 KB
        as an Event).
    :param state_cache_weight: how many state entries the state group cache may hold
        (about 250 bytes each).
    :param max_state_chain: the longest delta chain before a state snapshot.
    :returns: Deferred firing with the store.
    :raises SchemaTooNewError: (in the Deferred) if the database is newer than the code.
    :raises SchemaError: (in the Deferred) if it is not a fedserver database, or a script
        is broken.
    """
    if isinstance(path, PostgresConfig):
        writer, readers = connect_pools(path, reactor)
        db = Database(writer, reactor, dialect=POSTGRESQL, read_pool=readers)
    else:
        pool = connect_pool(path, reactor, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms)
        db = Database(pool, reactor)

    def now_ms() -> int:
        return int(reactor.seconds() * 1000)

    def opened(_: int) -> SQLiteStore:
        return SQLiteStore(
            db,
            registry if registry is not None else RoomVersionRegistry(),
            now_ms,
            event_cache_bytes=event_cache_bytes,
            state_cache_weight=state_cache_weight,
            max_state_chain=max_state_chain,
        )

    def failed(failure: Any) -> Any:
        db.close()
        error = failure.value
        kind = None if isinstance(error, StorageError) else db.dialect.fault_kind(error)
        if kind is not None:
            return Failure(StorageUnavailableError(kind, str(error).strip() or type(error).__name__))
        return failure

    if isinstance(path, PostgresConfig):
        d = db.run_with_connection(check_server, path)
        d.addCallback(lambda _: db.run_with_connection(prepare_database, schema_dir, now_ms(), POSTGRESQL))
    else:
        d = db.run_with_connection(prepare_database, schema_dir, now_ms())
    d.addCallbacks(opened, failed)
    return d


class SQLiteStore:
    """fedserver's storage (see :class:`fedserver.storage.interface.Store`), on SQLite or
    PostgreSQL alike despite its name (kept: every area's store hangs off it).

    Every method runs in one transaction and returns a Deferred. Methods ending in ``_txn`` take a :class:`~fedserver.storage.database.Txn`
    instead and run inside a transaction the caller opened with :meth:`run_write`, so
    several writes can commit together.

    :param db: the database.
    :param registry: maps stored room version identifiers back to versions.
    :param clock_ms: the current time in milliseconds.
    """

    def __init__(
        self,
        db: Database,
        registry: RoomVersionRegistry,
        clock_ms: Callable[[], int],
        *,
        event_cache_bytes: int = DEFAULT_EVENT_CACHE_BYTES,
        state_cache_weight: int = 100_000,
        max_state_chain: int = DEFAULT_MAX_CHAIN,
    ):
        self._db = db
        self._registry = registry
        self._clock_ms = clock_ms
        self._state_groups = StateGroupStore(
            StateKeyInterner(), max_chain=max_state_chain, cache_weight=state_cache_weight
        )
        self._events = EventStore(registry, self._state_groups, clock_ms, cache_bytes=event_cache_bytes)
        self._federation = FederationStore()
        self._distribution = DistributionStore(self._events, self._federation, clock_ms)
        self.history = HistoryStore(self)  # reads for serving history and refusals
        self.rooms = RoomsStore(self, clock_ms)  # aliases, client txn ids, streams, memberships for clients
        self.accounts = AccountStore(db, clock_ms)
        self.federation_extras = FederationExtrasStore(db)  # failures, remote memberships
        self.media = MediaStore(db)  # content repository metadata (files: handlers/media/files.py)
        # rooms joined with partial state, until their resync
        self.partial_state = PartialStateStore(db.run_read, db.run_write, self._events, self._state_groups, clock_ms)
        self.admin = AdminStore(  # listings, blocked rooms, purges, destinations, metrics figures
            db, clock_ms, forget_events=self._events.cache.invalidate,
        )
        self.relations = RelationsStore(self)  # m.relates_to index, /relations, /threads, aggregations
        self.backfill = BackfillStore(self)  # backward extremities, history fetched from other servers
        self.devices = DevicesStore(db, clock_ms)  # encryption keys, device lists
        self.to_device = ToDeviceStore(db, clock_ms)  # to-device inboxes
        self.key_backups = KeyBackupStore(db)  # server-side key backups
        self.receipts = ReceiptsStore(db)  # read receipts
        self.presence = PresenceStore(db)  # presence of local and remote users
        self.push = PushStore(db)  # push rules, pushers, notifications, unread counts
        self.user_directory = UserDirectoryStore(db)  # who is in which room, for user search
        self.deactivation = DeactivationStore(db, self.accounts)  # shutting accounts
        # What hangs on a device or an account goes with it, in the same transaction.
        self.accounts.device_change_hooks.append(self.push.on_devices_changed_txn)
        self.deactivation.hooks.extend([
            self.push.on_deactivated_txn, self.user_directory.on_deactivated_txn, self.key_backups.on_deactivated_txn,
        ])

    # -- transactions -----------------------------------------------------------------

    def run_write(self, func: Callable[..., T], *args: Any, **kw: Any) -> "Deferred[T]":
        """Run ``func(txn, *args, **kw)`` in one write transaction, e.g. to combine
        :meth:`persist_events_txn` and :meth:`store_received_txn_txn`.

        :returns: Deferred firing with ``func``'s result once committed; if ``func``
            raises, nothing it wrote is kept.
        """
        return self._db.run_write(func, *args, **kw)

    def run_read(self, func: Callable[..., T], *args: Any, **kw: Any) -> "Deferred[T]":
        """Run ``func(txn, *args, **kw)`` in one read transaction."""
        return self._db.run_read(func, *args, **kw)

    @property
    def database(self) -> Database:
        """The :class:`~fedserver.storage.database.Database` (its ``faults`` says whether
        the database is failing right now)."""
        return self._db

    def close(self) -> None:
        """Finish queued work and close the database."""
        self._db.close()

    def can_store_text(self, value: str) -> bool:
        """Whether ``value`` can be stored as TEXT in this database (not a lone surrogate;
        on PostgreSQL, no U+0000), e.g. to refuse an id up front rather than fail later."""
        return storable_text(value) and (self._db.dialect.text_allows_nul or "\x00" not in value)

    # -- events -----------------------------------------------------------------------

    @deferred_errors
    def persist_events(
        self, batch: Sequence[PersistEntry], *, received_txn: Optional[ReceivedTxn] = None
    ) -> "Deferred[dict[str, PersistedEvent]]":
        """Store a batch of events in ONE transaction.

        For each :class:`~fedserver.storage.interface.PersistEntry`: the event row, its
        prev and auth edges, its rejection or soft failure (with rule and plugin), the
        state before and after it, the room's current state delta, and the forward
        extremities (its prev events stop being extremities; it becomes one unless it is
        an outlier, rejected, soft-failed or already referenced). Events already stored
        are left as they are, except that an outlier persisted as a non-outlier is
        de-outliered. The same id twice in a batch is stored once.

        Entries with a :attr:`~fedserver.storage.interface.PersistEntry.distribute` are
        queued for other servers in the same transaction (the servers with a member joined
        to the room once the batch is stored): "committed" implies "queued".

        :param received_txn: also record the answer to the federation transaction that
            carried the events, in the same transaction: "200 means committed".
        :returns: Deferred firing with ``{event_id: PersistedEvent}`` (``queued_for``
            names the servers each event was queued for).
        :raises InvalidDataError: (in the Deferred) for a malformed entry; nothing is
            stored.
        :raises UnknownEventsError: if a state map names events that are not stored and
            not in the batch.
        """
        return self._db.run_write(self.persist_events_txn, batch, received_txn)

    def persist_events_txn(
        self, txn: Txn, batch: Sequence[PersistEntry], received_txn: Optional[ReceivedTxn] = None
    ) -> dict[str, PersistedEvent]:
        """:meth:`persist_events` inside the caller's transaction."""
        outcome = self._events.persist_events_txn(txn, batch)
        for entry in batch:
            # A local event made for a client request with a transaction id: the id is
            # recorded with the event (a 200 means both are committed; a retry after a
            # crash finds the event). Refused events are not recorded: a retry tries again.
            made_for = entry.event.client_txn
            if made_for is not None and entry.rejection is None and entry.soft_failure is None and not entry.soft_failed:
                user_id, scope, txn_id, path = made_for
                self.rooms.store_client_txn_txn(
                    txn, user_id, scope, txn_id, entry.event.room_id, entry.event.event_id, path=path
                )
        if any(entry.distribute is not None for entry in batch):
            outcome = self._distribution.queue_persisted_txn(txn, batch, outcome)
        # Indexes kept in the same transaction as the events they describe.
        self.relations.on_persisted_txn(txn, batch, outcome)
        self.backfill.on_persisted_txn(txn, batch, outcome)
        if received_txn is not None:
            self.store_received_txn_txn(txn, *received_txn)
        return outcome

    @deferred_errors
    def get_events(
        self, event_ids: Iterable[str], *, allow_rejected: bool = True
    ) -> "Deferred[dict[str, Event]]":
        """Load events by id (missing ones are left out). Recently loaded events come from
        memory; the rest are read in chunks of 500 ids.

        :param allow_rejected: if false, rejected events are left out too.
        :returns: Deferred firing with ``{event_id: Event}``; ``Event.rejected_reason`` is
            set for rejected events. The Event objects are shared: do not mutate them.
        """
        ids = lookup_ids(event_ids)
        found = self._events.cache.get_many(ids)
        missing = [i for i in ids if i not in found]

        def done(loaded: dict[str, Event]) -> dict[str, Event]:
            found.update(loaded)
            if not allow_rejected:
                return {k: v for k, v in found.items() if v.rejected_reason is None}
            return found

        if not missing:
            return succeed(done({}))
        return self._db.run_read(self._events.get_events_txn, missing).addCallback(done)

    @deferred_errors
    def get_event(self, event_id: str, *, allow_rejected: bool = True) -> "Deferred[Optional[Event]]":
        """One event, or ``None``."""
        check_text(event_id, "event id")
        d = self.get_events([event_id], allow_rejected=allow_rejected)
        return d.addCallback(lambda found: found.get(event_id))

    def get_events_txn(self, txn: Txn, event_ids: Iterable[str]) -> dict[str, Event]:
        """:meth:`get_events` inside the caller's transaction (no rejected filtering)."""
        ids = lookup_ids(event_ids)
        found = self._events.cache.get_many(ids)
        found.update(self._events.get_events_txn(txn, [i for i in ids if i not in found]))
        return found

    @deferred_errors
    def have_events(self, event_ids: Iterable[str]) -> "Deferred[set[str]]":
        """The ids among ``event_ids`` that are stored (outliers and rejected included)."""
        return self._db.run_read(self._events.have_events_txn, list(event_ids))

    @deferred_errors
    def get_event_meta(self, event_ids: Iterable[str]) -> "Deferred[dict[str, EventMeta]]":
        """Nid, room, depth and outlier / rejected / soft-failed flags of stored events."""
        return self._db.run_read(self._events.get_event_meta_txn, list(event_ids))

    @deferred_errors
    def get_rejection(self, event_id: str) -> "Deferred[Optional[Refusal]]":
        """Why ``event_id`` was rejected (reason, rule, plugin), or ``None`` if it was not
        (or is not stored)."""
        return self._db.run_read(self._events.get_rejection_txn, event_id)

    @deferred_errors
    def get_refused_events(
        self,
        room_id: Optional[str] = None,
        *,
        kind: Optional[str] = None,
        limit: int = 100,
        before_nid: Optional[int] = None,
    ) -> "Deferred[list[RefusedEvent]]":
        """Rejected and soft-failed events, newest first, for operators asking why.

        :param room_id: only this room.
        :param kind: ``"rejected"`` or ``"soft_failed"`` only.
        :param before_nid: for paging: only events older than this ``event_nid``.
        """
        return self._db.run_read(
            self._events.get_refused_events_txn, room_id, kind, limit, before_nid
        )

    @deferred_errors
    def get_auth_chain_ids(self, event_ids: Iterable[str]) -> "Deferred[set[str]]":
        """The auth chain of ``event_ids`` (one recursive query per 500 ids): every stored
        event reachable through ``auth_events``."""
        return self._db.run_read(self._events.get_auth_chain_ids_txn, list(event_ids))

    @deferred_errors
    def get_forward_extremities(self, room_id: str) -> "Deferred[list[str]]":
        """The room's forward extremities (events with no accepted child), deepest first."""
        return self._db.run_read(self._events.get_forward_extremities_txn, room_id)

    @deferred_errors
    def get_max_depth(self, event_ids: Iterable[str]) -> "Deferred[int]":
        """The greatest depth among stored ``event_ids`` (0 if none), e.g. of the
        forward extremities when building an event."""
        return self._db.run_read(self._events.get_max_depth_txn, list(event_ids))

    @deferred_errors
    def get_prev_event_ids(self, event_ids: Iterable[str]) -> "Deferred[dict[str, list[str]]]":
        """``{event_id: prev event ids}`` for the stored ``event_ids``."""
        return self._db.run_read(self._events.get_prev_event_ids_txn, list(event_ids))

    @deferred_errors
    def get_backfill(
        self, room_id: str, from_event_ids: Iterable[str], limit: int
    ) -> "Deferred[list[Event]]":
        """Spec ``GET /backfill``: the given events (those stored in the room) and the
        events before them, walking ``prev_events``, at most ``limit`` in all, deepest
        first."""
        return self._db.run_read(self._events.get_backfill_txn, room_id, list(from_event_ids), limit)

    @deferred_errors
    def get_missing_events(
        self,
        room_id: str,
        earliest_events: Iterable[str],
        latest_events: Iterable[str],
        limit: int = 10,
        min_depth: int = 0,
    ) -> "Deferred[list[Event]]":
        """Spec ``POST /get_missing_events``: a breadth-first walk of the ``prev_events`` of
        ``latest_events`` that does not enter ``earliest_events``, skips events below
        ``min_depth`` and stops at ``limit``; oldest first."""
        return self._db.run_read(
            self._events.get_missing_events_txn,
            room_id,
            list(earliest_events),
            list(latest_events),
            limit,
            min_depth,
        )

    # -- rooms ------------------------------------------------------------------------

    @deferred_errors
    def store_room(
        self,
        room_id: str,
        room_version: RoomVersion,
        *,
        creator: Optional[str] = None,
        is_public: bool = False,
        created_ts: Optional[int] = None,
    ) -> "Deferred[None]":
        """Create the room row, or update its creator / public flag (persisting a
        non-outlier event creates the row too).

        :raises InvalidDataError: (in the Deferred) if the room exists with another version.
        """
        ts = self._clock_ms() if created_ts is None else created_ts
        return self._db.run_write(
            self._events.store_room_txn, room_id, room_version, creator, is_public, ts
        )

    @deferred_errors
    def get_room(self, room_id: str) -> "Deferred[Optional[RoomInfo]]":
        """The room's row, or ``None`` if we do not know the room."""
        return self._db.run_read(self._events.get_room_txn, room_id)

    @deferred_errors
    def get_room_version(self, room_id: str) -> "Deferred[Optional[RoomVersion]]":
        """The room's version, or ``None`` if we do not know the room.

        :raises UnknownRoomVersion: (in the Deferred) if the version is no longer
            registered.
        """
        d = self.get_room(room_id)
        return d.addCallback(lambda info: None if info is None else info.room_version)

    @deferred_errors
    def set_room_public(self, room_id: str, is_public: bool) -> "Deferred[bool]":
        """Show or hide the room in the public directory; ``False`` if the room is unknown."""
        check_text(room_id, "room id")

        def txn_func(txn: Txn) -> bool:
            return txn.execute(
                "UPDATE rooms SET is_public = ? WHERE room_id = ?", (int(bool(is_public)), room_id)
            ).rowcount > 0

        return self._db.run_write(txn_func)

    @deferred_errors
    def get_public_room_ids(self) -> "Deferred[list[str]]":
        """Rooms shown in the public directory."""

        def txn_func(txn: Txn) -> list[str]:
            rows = txn.execute("SELECT room_id FROM rooms WHERE is_public = 1 ORDER BY room_id")
            return [r[0] for r in rows.fetchall()]

        return self._db.run_read(txn_func)

    # -- state ------------------------------------------------------------------------

    @deferred_errors
    def store_state_group(
        self,
        room_id: str,
        state: Optional[Mapping[StateKey, str]],
        prev_group: Optional[int] = None,
        delta: Optional[Mapping[StateKey, Optional[str]]] = None,
    ) -> "Deferred[int]":
        """Store a room state and return its group id.

        With ``prev_group`` (a group of the same room) only the delta is stored (computed
        from ``state`` unless ``delta`` is given; ``None`` values in a delta remove a
        key), or a full snapshot when the delta chain would grow past its bound or the
        delta is more than half the state (see
        :class:`~fedserver.storage.rooms.state_groups.StateGroupStore`). If the state equals
        ``prev_group``'s, that id is returned and nothing is written.

        :returns: Deferred firing with the group id.
        :raises UnknownEventsError: if the state names events that are not stored.
        :raises InvalidDataError: for a malformed map or another room's events or group.
        :raises UnknownStateGroupError: if ``prev_group`` does not exist.
        """
        return self._db.run_write(
            self._state_groups.store_state_group_txn, room_id, state, prev_group, delta
        )

    def store_state_group_txn(
        self,
        txn: Txn,
        room_id: str,
        state: Optional[Mapping[StateKey, str]],
        prev_group: Optional[int] = None,
        delta: Optional[Mapping[StateKey, Optional[str]]] = None,
    ) -> int:
        """:meth:`store_state_group` inside the caller's transaction."""
        return self._state_groups.store_state_group_txn(txn, room_id, state, prev_group, delta)

    @deferred_errors
    def get_state_group(self, group: int) -> "Deferred[StateMap]":
        """The full state of a group: a read-only mapping ``{(type, state_key): event_id}``
        (call ``dict()`` on it for a mutable copy). Shared and cached: reading the state
        of a 20,000-member room again costs nothing.

        :raises UnknownStateGroupError: (in the Deferred) if there is no such group.
        """
        if type(group) is int:
            cached = self._state_groups.get_cached(group)
            if cached is not None:
                return succeed(cached)
        return self._db.run_read(self._state_groups.get_state_group_txn, group)

    @deferred_errors
    def get_state_groups(self, groups: Iterable[int]) -> "Deferred[dict[int, StateMap]]":
        """:meth:`get_state_group` for several groups at once: the cached ones from memory,
        the rest in one read transaction.

        :raises UnknownStateGroupError: (in the Deferred) if a group does not exist.
        """
        wanted = list(dict.fromkeys(groups))
        found: dict[int, StateMap] = {}
        rest = []
        for g in wanted:
            cached = self._state_groups.get_cached(g) if type(g) is int else None
            if cached is not None:
                found[g] = cached
            else:
                rest.append(g)
        if not rest:
            return succeed(found)

        def txn_func(txn: Txn) -> dict[int, StateMap]:
            for g in rest:
                found[g] = self._state_groups.get_state_group_txn(txn, g)
            return found

        return self._db.run_read(txn_func)

    def get_state_group_txn(self, txn: Txn, group: int) -> StateMap:
        """:meth:`get_state_group` inside the caller's transaction."""
        return self._state_groups.get_state_group_txn(txn, group)

    @deferred_errors
    def get_state_ids_for_events(
        self, event_ids: Iterable[str], *, after: bool = False
    ) -> "Deferred[dict[str, int]]":
        """The state GROUP before (or with ``after``, after) each event:
        ``{event_id: group id}`` for events that have state recorded; read the state with
        :meth:`get_state_group`."""
        column = "state_group_after" if after else "state_group_before"

        def txn_func(txn: Txn) -> dict[str, int]:
            rows = txn.select_in(
                f"SELECT e.event_id, s.{column} FROM events e"
                " JOIN event_state s ON s.event_nid = e.event_nid"
                " WHERE e.event_id IN ({})",
                lookup_ids(event_ids),
            )
            return {r[0]: r[1] for r in rows if r[1] is not None}

        return self._db.run_read(txn_func)

    @deferred_errors
    def get_current_state_ids(self, room_id: str) -> "Deferred[dict[StateKey, str]]":
        """The room's current state ``{(type, state_key): event_id}`` (a fresh dict)."""
        return self._db.run_read(self._events.get_current_state_ids_txn, room_id)

    @deferred_errors
    def get_current_state_events(
        self, room_id: str, types: Optional[Iterable[str | tuple[str, Optional[str]]]] = None
    ) -> "Deferred[dict[StateKey, Event]]":
        """Current state events of the room, optionally only some: ``types`` holds type
        strings or ``(type, None)`` (every state key of the type) or ``(type, state_key)``.
        """
        types_list = None if types is None else list(types)

        def got_ids(ids: dict[StateKey, str]) -> Deferred:
            d = self.get_events(ids.values())
            return d.addCallback(lambda events: {k: events[v] for k, v in ids.items() if v in events})

        d = self._db.run_read(self._events.get_current_state_ids_txn, room_id, types_list)
        return d.addCallback(got_ids)

    @deferred_errors
    def update_current_state(
        self, room_id: str, delta: Mapping[StateKey, Optional[str]]
    ) -> "Deferred[None]":
        """Apply a delta to the room's current state outside of persisting events (e.g.
        after state resolution); ``None`` values remove keys."""
        return self._db.run_write(self._events.apply_current_state_delta_txn, room_id, delta)

    @deferred_errors
    def get_room_members(self, room_id: str, membership: str = "join") -> "Deferred[list[str]]":
        """User ids whose current membership in the room is ``membership``."""
        return self._db.run_read(self._events.get_room_members_txn, room_id, membership)

    @deferred_errors
    def get_earliest_members(
        self, room_id: str, memberships: Sequence[str], limit: int
    ) -> "Deferred[list[tuple[str, str]]]":
        """``(user_id, event_id)`` of current members with one of ``memberships``, in the
        order their member events were stored, at most ``limit``."""
        return self._db.run_read(self._events.get_earliest_members_txn, room_id, memberships, limit)

    @deferred_errors
    def get_joined_hosts(self, room_id: str) -> "Deferred[set[str]]":
        """Server names of the room's currently joined members (where to send events).

        For a room joined with partial state (we do not know its members yet) the
        resident's ``servers_in_room`` are added (MSC3706: used "to send outgoing
        federation transactions while it synchronises the full state").
        """

        # The same computation as where events are queued in the storing transaction
        # (which reads the table itself: it may be changing the members).
        return self._distribution.cached_joined_servers(self._db.run_read, room_id)

    # -- server keys ------------------------------------------------------------------

    @deferred_errors
    def store_server_keys(
        self,
        server_name: str,
        keys: list[tuple[str, str, int, Optional[int]]],
        key_json: Optional[bytes],
        fetched_ts: int,
    ) -> "Deferred[None]":
        """Store verify keys of ``server_name``.

        :param keys: ``(key_id, verify_key_b64, valid_until_ts, expired_ts_or_None)``.
        :param key_json: the signed key document they came in (kept for serving
            ``/_matrix/key/v2/query`` as a notary); ``None`` keeps what is stored.
        :param fetched_ts: when they were fetched; an older fetch never overwrites a
            newer one.
        """
        return self._db.run_write(
            self._federation.store_server_keys_txn, server_name, list(keys), key_json, fetched_ts
        )

    @deferred_errors
    def get_server_keys(
        self, server_name: str, key_ids: Iterable[str]
    ) -> "Deferred[dict[str, dict[str, Any]]]":
        """``{key_id: {"verify_key": b64, "valid_until_ts": int, "expired_ts": int|None}}``
        for the stored ones among ``key_ids``."""
        return self._db.run_read(self._federation.get_server_keys_txn, server_name, list(key_ids))

    @deferred_errors
    def get_server_key_json(self, server_name: str) -> "Deferred[list[bytes]]":
        """The stored signed key documents of ``server_name``, newest fetch first."""
        return self._db.run_read(self._federation.get_server_key_json_txn, server_name)

    # -- received transactions --------------------------------------------------------

    def get_received_txn(self, origin: str, txn_id: str) -> "Deferred[Optional[tuple[int, bytes]]]":
        """The answer already given to ``origin``'s transaction ``txn_id``: ``(code,
        JSON body bytes)``, or ``None``."""
        return self._db.run_read(self._federation.get_received_txn_txn, origin, txn_id)

    def store_received_txn(
        self, origin: str, txn_id: str, code: int, body_json: Any, ts: int
    ) -> "Deferred[tuple[int, bytes]]":
        """Record the answer to a transaction; the first answer recorded wins.

        :param body_json: the response body: JSON bytes, or a JSON-serialisable value.
        :returns: Deferred firing with the answer on record ``(code, body bytes)``.
        """
        return self._db.run_write(
            self._federation.store_received_txn_txn, origin, txn_id, code, body_json, ts
        )

    def store_received_txn_txn(
        self, txn: Txn, origin: str, txn_id: str, code: int, body_json: Any, ts: int
    ) -> tuple[int, bytes]:
        """:meth:`store_received_txn` inside the caller's transaction."""
        return self._federation.store_received_txn_txn(txn, origin, txn_id, code, body_json, ts)

    @deferred_errors
    def prune_received_txns(self, before_ts: int) -> "Deferred[int]":
        """Forget transaction answers recorded before ``before_ts``; fires with how many."""
        return self._db.run_write(self._federation.prune_received_txns_txn, before_ts)

    # -- outbound ---------------------------------------------------------------------

    @deferred_errors
    def enqueue_outbound(
        self, destinations: Iterable[str], pdus: Iterable[Any] = (), edus: Iterable[Any] = ()
    ) -> "Deferred[int]":
        """Queue PDUs and EDUs (dicts or JSON bytes) for each destination, persistently.

        :returns: Deferred firing with the number of queue rows added.
        """
        return self._db.run_write(
            self._federation.enqueue_outbound_txn,
            list(destinations) if not isinstance(destinations, str) else destinations,
            list(pdus),
            list(edus),
            self._clock_ms(),
        )

    def enqueue_outbound_txn(
        self, txn: Txn, destinations: Iterable[str], pdus: Iterable[Any] = (), edus: Iterable[Any] = ()
    ) -> int:
        """:meth:`enqueue_outbound` inside the caller's transaction (e.g. with the events
        it sends)."""
        return self._federation.enqueue_outbound_txn(txn, destinations, pdus, edus, self._clock_ms())

    @deferred_errors
    def get_outbound_batch(
        self, destination: str, max_pdus: int = 50, max_edus: int = 100
    ) -> "Deferred[list[OutboundItem]]":
        """The next items to send: the oldest queued for ``destination``, in order, at most
        ``max_pdus`` PDUs and ``max_edus`` EDUs, as ``(queue_id, kind, json bytes)``.
        Acknowledge them with :meth:`ack_outbound` up to the last ``queue_id``."""
        return self._db.run_read(self._federation.get_outbound_batch_txn, destination, max_pdus, max_edus)

    @deferred_errors
    def ack_outbound(self, destination: str, up_to_queue_id: int) -> "Deferred[int]":
        """Drop what was sent to ``destination``, up to and including ``up_to_queue_id``;
        fires with how many items went."""
        return self._db.run_write(self._federation.ack_outbound_txn, destination, up_to_queue_id)

    @deferred_errors
    def next_txn_id(self, destination: str) -> "Deferred[str]":
        """A transaction id for ``destination``, unique across restarts."""
        return self._db.run_write(self._federation.next_txn_id_txn, destination, self._clock_ms())

    @deferred_errors
    def get_destination_retry(self, destination: str) -> "Deferred[Optional[DestinationRetry]]":
        """The destination's back-off state, or ``None`` if it is not backing off."""
        return self._db.run_read(self._federation.get_destination_retry_txn, destination)

    @deferred_errors
    def set_destination_retry(
        self, destination: str, failure_ts: int, retry_interval_ms: int
    ) -> "Deferred[None]":
        """Record a failure to send and how long to wait before the next try."""
        return self._db.run_write(
            self._federation.set_destination_retry_txn,
            destination,
            failure_ts,
            retry_interval_ms,
            self._clock_ms(),
        )

    @deferred_errors
    def clear_destination_retry(self, destination: str) -> "Deferred[None]":
        """The destination is reachable again."""
        return self._db.run_write(self._federation.clear_destination_retry_txn, destination)

    @deferred_errors
    def requeue_unsent_local_events(self, server_name: str) -> "Deferred[dict[str, frozenset[str]]]":
        """Once after the upgrade to schema 005: queue again the forward extremities this
        server made in each room, for the room's other servers (see
        :meth:`fedserver.storage.rooms.distribution_store.DistributionStore.requeue_unsent_local_events_txn`).
        Later calls find nothing to do.

        :returns: Deferred firing with ``{room_id: servers}`` for what was queued.
        """
        return self._db.run_write(self._distribution.requeue_unsent_local_events_txn, server_name)

    @deferred_errors
    def destinations_with_pending(self) -> "Deferred[list[str]]":
        """Destinations with queued items (to restart their senders after a restart)."""
        return self._db.run_read(self._federation.destinations_with_pending_txn)
