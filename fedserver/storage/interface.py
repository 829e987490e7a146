"""What the rest of fedserver may rely on from storage: value types, errors and the store API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, NamedTuple, Optional, Protocol, Sequence

from fedserver.events.model import Event
from fedserver.room_versions import RoomVersion

#: ``(event type, state_key)``
StateKey = tuple[str, str]


class StorageError(Exception):
    """Base class of the errors storage raises on purpose."""


class SchemaError(StorageError):
    """The database is not one this code can use (not ours, or damaged)."""


class SchemaTooNewError(SchemaError):
    """The database was written by a newer fedserver: its schema version is unknown here."""


class StorageUnavailableError(StorageError):
    """The database cannot do its work right now: the disk is full, the file is not
    writable, an I/O error, or a lock held elsewhere beyond the busy timeout. Nothing of the
    failed transaction was committed; the same call may succeed later. The HTTP layer
    answers 503 ``M_UNKNOWN`` for it.

    :ivar kind: ``"full"``, ``"read-only"``, ``"io"``, ``"locked"`` or ``"unavailable"``.
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"database {kind}: {detail}")
        self.kind = kind
        self.detail = detail


class InvalidDataError(StorageError, ValueError):
    """The caller asked to store something that cannot be stored (wrong type, an integer
    beyond 64 bits, a string that is not valid Unicode, a state group of another room...)."""


class UnknownEventsError(InvalidDataError):
    """A write referenced events that are not stored (e.g. in a state map).

    :ivar event_ids: the missing ids.
    """

    def __init__(self, event_ids: Iterable[str], what: str = "events"):
        self.event_ids = sorted(event_ids)
        shown = ", ".join(repr(e) for e in self.event_ids[:5])
        more = "" if len(self.event_ids) <= 5 else f" and {len(self.event_ids) - 5} more"
        super().__init__(f"{what} not stored: {shown}{more}")


class UnknownStateGroupError(StorageError, KeyError):
    """A state group id that does not exist."""

    def __str__(self) -> str:
        return f"unknown state group {self.args[0]!r}"


class Refusal(NamedTuple):
    """Why an event was rejected or soft-failed: the reason shown to operators, the spec
    rule (e.g. ``"4.2"`` or ``"auth_events"``) and the plugin that objected (``None`` for
    the built-in spec rules). A plain ``(reason, rule, plugin)`` tuple is accepted wherever a
    Refusal is."""

    reason: str
    rule: Optional[str] = None
    plugin: Optional[str] = None


class RefusedEvent(NamedTuple):
    """One row of the refusals listing (see :meth:`Store.get_refused_events`)."""

    event_nid: int
    event_id: str
    room_id: str
    kind: str  # "rejected" | "soft_failed"
    reason: str
    rule: Optional[str]
    plugin: Optional[str]
    refused_ts: int


@dataclass(frozen=True, slots=True)
class Distribution:
    """Queue a persisted event for other servers in the SAME database transaction that
    stores it (so "committed" implies "queued": DESIGN.md, Durability): for every server
    with a member joined to the event's room once the batch is stored, plus ``also``,
    minus ``never``.

    :ivar also: servers to send to even if no member of theirs is joined (the target of
        a kick, ban or invite).
    :ivar never: servers never to send to (ourselves; the server that handed us the
        event through a handshake and has it already).
    """

    also: frozenset[str] = frozenset()
    never: frozenset[str] = frozenset()


@dataclass(slots=True)
class PersistEntry:
    """One event to persist and what the caller decided about it.

    :ivar event: the event.
    :ivar outlier: stored without state or a place in the room's DAG (auth events fetched
        for a join, an invite for a room we are not in...). An outlier persisted again later
        with ``outlier=False`` is "de-outliered": it gains state, may become a forward
        extremity and may update current state.
    :ivar rejection: set if the event failed authorization (spec "Rejection"): it is kept,
        but never a forward extremity and never part of the state after it.
    :ivar soft_failed: the event failed auth against current state (spec "Soft failure"):
        kept and part of the state after it, but not a forward extremity.
    :ivar soft_failure: why it soft-failed (implies ``soft_failed``).
    :ivar state_group_before: the state group holding the state before the event.
    :ivar state_before: alternatively, the state before the event as a map; storage stores
        a group for it (as a delta against ``state_before_prev_group`` if given, which should
        be a group close to it, e.g. the state after one of its prev events).
    :ivar state_before_event: alternatively, the id of an event (stored with state, or earlier
        in this batch) whose state AFTER is this event's state before: the linear case (one
        prev event), where no map is copied and no group is written.
    :ivar state_group_after: the state group after the event; if ``None`` storage derives
        it: the same group as before for non-state or rejected events, else a new group
        replacing the event's ``(type, state_key)``.
    :ivar update_current_state: a delta to apply to the room's current state once this
        event is stored: ``{(type, state_key): event_id or None to remove}``. Applied in
        batch order; ignored if the event was already stored (re-persisting is a no-op).
    :ivar distribute: queue the event for other servers in the same transaction (see
        :class:`Distribution`); only done if this call stores it and it is neither an
        outlier, rejected nor soft-failed.
    :ivar history: the event takes its place behind what we held (fetched with
        ``/backfill``): it never becomes a forward extremity (the extremities it descends
        from, where it fills a gap, stop being ones) nor enters the /sync stream (a new
        event gets a negative ``event_nid``; a de-outliered one is marked). Outliers
        fetched for history are stored with it too, so that their number is negative.

    Non-outlier events need ``state_group_before``, ``state_before`` or
    ``state_before_event``.
    """

    event: Event
    outlier: bool = False
    rejection: Optional[Refusal | tuple] = None
    soft_failed: bool = False
    soft_failure: Optional[Refusal | tuple] = None
    state_group_before: Optional[int] = None
    state_before: Optional[Mapping[StateKey, str]] = None
    state_before_prev_group: Optional[int] = None
    state_before_event: Optional[str] = None
    state_group_after: Optional[int] = None
    update_current_state: Optional[Mapping[StateKey, Optional[str]]] = None
    distribute: Optional[Distribution] = None
    history: bool = False


class PersistedEvent(NamedTuple):
    """What :meth:`Store.persist_events` did with one event.

    :ivar event_nid: the event's numeric id, also its stream ordering.
    :ivar stored: ``False`` if the event was already stored and nothing changed.
    :ivar state_group_before: ``None`` for outliers without state.
    :ivar state_group_after: ``None`` for outliers without state.
    :ivar queued_for: the servers the event was queued for in the same transaction (see
        :attr:`PersistEntry.distribute`).
    """

    event_nid: int
    stored: bool
    state_group_before: Optional[int]
    state_group_after: Optional[int]
    queued_for: frozenset[str] = frozenset()


class EventMeta(NamedTuple):
    """Cheap facts about a stored event, without loading its JSON."""

    event_nid: int
    room_id: str
    depth: int
    outlier: bool
    rejected: bool
    soft_failed: bool


class ReceivedTxn(NamedTuple):
    """A federation transaction we answered: stored so a replay gets the same answer.

    ``body`` is the response body, as JSON-encoded bytes or a JSON-serialisable dict.
    """

    origin: str
    txn_id: str
    code: int
    body: Any
    ts: int


class RoomInfo(NamedTuple):
    """A row of the rooms table."""

    room_id: str
    room_version: RoomVersion
    creator: Optional[str]
    is_public: bool
    created_ts: int


class DestinationRetry(NamedTuple):
    """Back-off state of a destination: when sending last failed and how long to wait."""

    failure_ts: int
    retry_interval_ms: int


class OutboundItem(NamedTuple):
    """One queued PDU or EDU for a destination, in queue order."""

    queue_id: int
    kind: str  # "pdu" | "edu"
    json: bytes


class Store(Protocol):
    """The storage API handlers code against.

    :class:`fedserver.storage.sqlite.SQLiteStore` implements it and documents each method.
    Every method returns a Deferred and runs its SQL in one database transaction; callers
    never see SQL or a cursor, except through the explicit ``*_txn`` variants run inside
    :meth:`run_write` to put several writes in one transaction.
    """

    # events
    def persist_events(self, batch: Sequence[PersistEntry], *, received_txn: ReceivedTxn | None = None): ...
    def get_events(self, event_ids: Iterable[str], *, allow_rejected: bool = True): ...
    def get_event(self, event_id: str, *, allow_rejected: bool = True): ...
    def have_events(self, event_ids: Iterable[str]): ...
    def get_event_meta(self, event_ids: Iterable[str]): ...
    def get_rejection(self, event_id: str): ...
    def get_refused_events(self, room_id: str | None = None, *, kind: str | None = None, limit: int = 100, before_nid: int | None = None): ...
    def get_auth_chain_ids(self, event_ids: Iterable[str]): ...
    def get_forward_extremities(self, room_id: str): ...
    def get_max_depth(self, event_ids: Iterable[str]): ...
    def get_backfill(self, room_id: str, from_event_ids: Iterable[str], limit: int): ...
    def get_missing_events(self, room_id: str, earliest_events: Iterable[str], latest_events: Iterable[str], limit: int = 10, min_depth: int = 0): ...
    def get_prev_event_ids(self, event_ids: Iterable[str]): ...
    # rooms
    def store_room(self, room_id: str, room_version: RoomVersion, *, creator: str | None = None, is_public: bool = False, created_ts: int | None = None): ...
    def get_room(self, room_id: str): ...
    def get_room_version(self, room_id: str): ...
    def set_room_public(self, room_id: str, is_public: bool): ...
    def get_public_room_ids(self): ...
    # state
    def store_state_group(self, room_id: str, state: Mapping[StateKey, str] | None, prev_group: int | None = None, delta: Mapping[StateKey, str | None] | None = None): ...
    def get_state_group(self, group: int): ...
    def get_state_ids_for_events(self, event_ids: Iterable[str], *, after: bool = False): ...
    def get_current_state_ids(self, room_id: str): ...
    def get_current_state_events(self, room_id: str, types: Iterable[str | tuple[str, str | None]] | None = None): ...
    def update_current_state(self, room_id: str, delta: Mapping[StateKey, str | None]): ...
    def get_room_members(self, room_id: str, membership: str = "join"): ...
    def get_joined_hosts(self, room_id: str): ...
    # keys
    def store_server_keys(self, server_name: str, keys: list[tuple[str, str, int, int | None]], key_json: bytes | None, fetched_ts: int): ...
    def get_server_keys(self, server_name: str, key_ids: Iterable[str]): ...
    def get_server_key_json(self, server_name: str): ...
    # received transactions
    def get_received_txn(self, origin: str, txn_id: str): ...
    def store_received_txn(self, origin: str, txn_id: str, code: int, body_json: Any, ts: int): ...
    def prune_received_txns(self, before_ts: int): ...
    # outbound
    def enqueue_outbound(self, destinations: Iterable[str], pdus: Iterable[Any] = (), edus: Iterable[Any] = ()): ...
    def get_outbound_batch(self, destination: str, max_pdus: int = 50, max_edus: int = 100): ...
    def ack_outbound(self, destination: str, up_to_queue_id: int): ...
    def next_txn_id(self, destination: str): ...
    def get_destination_retry(self, destination: str): ...
    def set_destination_retry(self, destination: str, failure_ts: int, retry_interval_ms: int): ...
    def clear_destination_retry(self, destination: str): ...
    def destinations_with_pending(self): ...
    def requeue_unsent_local_events(self, server_name: str): ...
    # several writes in one transaction: run_write(f) calls f(txn); use the *_txn methods
    def run_write(self, func: Any, *args: Any, **kw: Any): ...
    def run_read(self, func: Any, *args: Any, **kw: Any): ...
    def close(self) -> None: ...
