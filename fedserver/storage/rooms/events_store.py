"""Events: batch persistence, loading, refusals, DAG edges, extremities, rooms and current state."""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from fedserver.events.model import Event
from fedserver.events.status import REFUSAL_KINDS, OutcomeStatus
from fedserver.room_versions import RoomVersion, RoomVersionRegistry
from fedserver.storage.cache import LruCache
from fedserver.storage.database import Txn, check_int, check_text, check_texts, encode_stored_json, lookup_ids, lookup_text
from fedserver.storage.interface import (
    EventMeta,
    InvalidDataError,
    PersistedEvent,
    PersistEntry,
    Refusal,
    RefusedEvent,
    RoomInfo,
    StateKey,
    UnknownEventsError,
)
from fedserver.storage.nids import EventRef, check_state_key, resolve_event_nids_txn
from fedserver.storage.rooms.state_groups import StateGroupStore

#: How far persisting walks back through soft-failed / rejected prev events to drop the
#: forward extremities they descend from.
MAX_EXTREMITY_WALK = 20
#: The event cache's bound, in bytes of stored JSON: about 4,700 small member events (670
#: bytes each; about 15 MB as Event objects) or 3,000 events of 1 KB. Weighing by size
#: keeps 5,000 large events (up to 64 KiB each) from taking a gigabyte.
DEFAULT_EVENT_CACHE_BYTES = 3 * 1024 * 1024

_EVENT_COLUMNS = (
    "event_nid, event_id, room_id, type, state_key, sender, membership, depth,"
    " origin_server_ts, received_ts, room_version, outlier, rejected, soft_failed, json, history"
)

#: The auth chain of some events: their auth events, recursively (shared with the history store).
_AUTH_CHAIN_SQL = """
WITH RECURSIVE chain (event_nid) AS (
    SELECT a.event_nid FROM events e
    JOIN event_auth ea ON ea.event_nid = e.event_nid
    JOIN events a ON a.event_id = ea.auth_event_id
    WHERE e.event_id IN ({})
    UNION
    SELECT a.event_nid FROM chain c
    JOIN event_auth ea ON ea.event_nid = c.event_nid
    JOIN events a ON a.event_id = ea.auth_event_id
)
SELECT e.event_id FROM chain c JOIN events e ON e.event_nid = c.event_nid
"""


class _Work:
    """One validated batch entry on its way into the database."""

    __slots__ = (
        "entry", "event", "event_id", "room_id", "json", "refusal", "refusal_kind",
        "nid", "stored",
    )

    def __init__(self, entry: PersistEntry, encoded: bytes, refusal: Optional[Refusal], kind: Optional[OutcomeStatus]):
        self.entry = entry
        self.event = entry.event
        self.event_id = entry.event.event_id
        self.room_id = entry.event.room_id
        self.json = encoded
        self.refusal = refusal
        self.refusal_kind = kind
        self.nid = 0
        self.stored = False

    @property
    def accepted(self) -> bool:
        return not self.entry.outlier and self.refusal is None

    @property
    def live(self) -> bool:
        """Accepted and part of the room's present (not history): may be an extremity."""
        return self.accepted and not self.entry.history


def _encode_pdu(pdu: dict[str, Any]) -> bytes:
    # Canonical JSON (appendix "Canonical JSON": sorted keys, no insignificant whitespace,
    # UTF-8). The PDU was validated before it got here, so the number checks of
    # fedserver.events.canonical are not repeated: they cost more than the encoding.
    return encode_stored_json(pdu)


def _refusal(value: Any, what: str) -> Optional[Refusal]:
    if value is None:
        return None
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, tuple) or not 1 <= len(value) <= 3:
        raise InvalidDataError(f"{what} must be a Refusal or (reason, rule, plugin) tuple")
    r = Refusal(*value)
    check_text(r.reason, f"{what} reason")
    check_text(r.rule, f"{what} rule", nullable=True)
    check_text(r.plugin, f"{what} plugin", nullable=True)
    return r


class EventStore:
    """Everything about events except state groups (which it calls for the state at each
    event).

    :param registry: maps the stored room version identifiers back to versions.
    :param state_groups: the state group store.
    :param clock_ms: the current time in milliseconds.
    :param cache_bytes: how many loaded events to keep, as the total length of their
        stored JSON (an event in memory takes about 4-5 times its JSON length): bounded by
        size, not count, so that large events cannot make the cache large.
    """

    def __init__(
        self,
        registry: RoomVersionRegistry,
        state_groups: StateGroupStore,
        clock_ms: Callable[[], int],
        *,
        cache_bytes: int = DEFAULT_EVENT_CACHE_BYTES,
    ):
        self._registry = registry
        self._state_groups = state_groups
        self._clock_ms = clock_ms
        self.cache: LruCache[str, Event] = LruCache(cache_bytes)
        #: ``{room_id: n}``: bumped after each commit that changed who is joined to the
        #: room (its member state, or its partial-state servers): caches of what follows
        #: from the members (the room's servers) keep a value only while it is unchanged.
        self._membership_generation: dict[str, int] = {}

    # -- persisting -------------------------------------------------------------------

    def _validate(self, batch: Sequence[PersistEntry]) -> list[_Work]:
        chosen: dict[str, _Work] = {}
        known_versions: set[RoomVersion] = set()
        for entry in batch:
            if not isinstance(entry, PersistEntry):
                raise InvalidDataError(f"expected PersistEntry, got {type(entry).__name__}")
            event = entry.event
            if not isinstance(event, Event):
                raise InvalidDataError(f"PersistEntry.event must be an Event, not {type(event).__name__}")
            check_text(event.event_id, "event_id")
            check_text(event.room_id, "room_id")
            check_text(event.type, "type")
            check_text(event.state_key, "state_key", nullable=True)
            check_text(event.sender, "sender")
            check_int(event.depth, "depth")
            check_int(event.origin_server_ts, "origin_server_ts")
            check_texts(event.prev_event_ids, "prev event id")
            check_texts(event.auth_event_ids, "auth event id")
            rv = event.room_version
            if rv not in known_versions:
                if rv.identifier not in self._registry or self._registry.get(rv.identifier) != rv:
                    raise InvalidDataError(f"room version {rv.identifier!r} is not registered here")
                known_versions.add(rv)
            check_int(entry.state_group_before, "state_group_before", nullable=True)
            check_int(entry.state_group_after, "state_group_after", nullable=True)
            check_int(entry.state_before_prev_group, "state_before_prev_group", nullable=True)
            if entry.update_current_state is not None:
                if not isinstance(entry.update_current_state, Mapping):
                    raise InvalidDataError("update_current_state must be a mapping")
                for key, value in entry.update_current_state.items():
                    check_state_key(key)
                    check_text(value, "current state event id", nullable=True)
            rejection = _refusal(entry.rejection, "rejection")
            soft = _refusal(entry.soft_failure, "soft_failure")
            if rejection is not None:
                refusal, kind = rejection, OutcomeStatus.REJECTED
            elif soft is not None or entry.soft_failed:
                refusal, kind = soft or Refusal("soft-failed"), OutcomeStatus.SOFT_FAILED
            else:
                refusal, kind = None, None
            previous = chosen.get(event.event_id)
            if previous is not None and not (previous.entry.outlier and not entry.outlier):
                continue  # a duplicate adds nothing; a non-outlier copy replaces an outlier
            try:
                encoded = _encode_pdu(event.pdu)
            except (UnicodeError, TypeError, ValueError, RecursionError) as e:
                raise InvalidDataError(f"event {event.event_id!r} cannot be stored as JSON: {e}") from None
            chosen[event.event_id] = _Work(entry, encoded, refusal, kind)
        return list(chosen.values())

    def persist_events_txn(self, txn: Txn, batch: Sequence[PersistEntry]) -> dict[str, PersistedEvent]:
        """Store a batch of events in the current transaction (see
        :meth:`fedserver.storage.sqlite.SQLiteStore.persist_events`)."""
        works = self._validate(batch)
        if not works:
            return {}
        now = self._clock_ms()
        existing = {
            r[0]: (r[1], bool(r[2]))
            for r in txn.select_in(
                "SELECT event_id, event_nid, outlier FROM events WHERE event_id IN ({})",
                [w.event_id for w in works],
            )
        }
        self._check_room_versions_txn(txn, works)

        new = [w for w in works if w.event_id not in existing]
        deoutliered = []
        for w in works:
            old = existing.get(w.event_id)
            if old is not None:
                w.nid = old[0]
                if old[1] and not w.entry.outlier:
                    deoutliered.append(w)
        if new:
            live = [w for w in new if not w.entry.history]
            if live:
                first = txn.allocate_ids("event_nid", len(live))
                for i, w in enumerate(live):
                    w.nid = first + i
            history = [w for w in new if w.entry.history]
            if history:
                # History counts down from -1: below every stream position (schema 006).
                first = txn.allocate_ids("history_nid", len(history))
                for i, w in enumerate(history):
                    w.nid = -(first + i)
            self._insert_events_txn(txn, new, now)
        if deoutliered:
            txn.executemany(
                "UPDATE events SET outlier = 0, rejected = ?, soft_failed = ?,"
                " history = CASE WHEN ? = 1 THEN 1 ELSE history END WHERE event_nid = ?",
                [
                    (int(w.refusal_kind == OutcomeStatus.REJECTED), int(w.refusal_kind == OutcomeStatus.SOFT_FAILED),
                     int(w.entry.history), w.nid)
                    for w in deoutliered
                ],
            )
            txn.executemany(
                "DELETE FROM event_refusals WHERE event_nid = ?", [(w.nid,) for w in deoutliered]
            )
        deoutliered_ids = {w.event_id for w in deoutliered}
        stored = [w for w in works if w.event_id not in existing or w.event_id in deoutliered_ids]
        for w in stored:
            w.stored = True
        refused = [w for w in stored if w.refusal is not None]
        if refused:
            txn.executemany(
                "INSERT INTO event_refusals (event_nid, kind, reason, rule, plugin, refused_ts)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (w.nid, w.refusal_kind.value, w.refusal.reason, w.refusal.rule, w.refusal.plugin, now)
                    for w in refused
                ],
            )
        known = {w.event_id: EventRef(w.nid, w.room_id, w.event.membership) for w in works}
        groups = self._persist_state_txn(txn, stored, known)
        self._store_rooms_txn(txn, works)
        self._update_current_state_txn(txn, stored, known)
        self._update_extremities_txn(txn, [w for w in stored if w.live])
        self._history_extremities_txn(txn, [w for w in stored if w.accepted and w.entry.history])

        outcome: dict[str, PersistedEvent] = {}
        unchanged = [w for w in works if not w.stored]
        if unchanged:
            rows = txn.select_in(
                "SELECT event_nid, state_group_before, state_group_after FROM event_state"
                " WHERE event_nid IN ({})",
                [w.nid for w in unchanged],
            )
            groups.update({r[0]: (r[1], r[2]) for r in rows})
        for w in works:
            before, after = groups.get(w.nid, (None, None))
            outcome[w.event_id] = PersistedEvent(w.nid, w.stored, before, after)
        txn.call_after_commit(self.cache.invalidate, [w.event_id for w in stored])
        return outcome

    def _check_room_versions_txn(self, txn: Txn, works: list[_Work]) -> None:
        versions = {r[0]: r[1] for r in txn.select_in(
            "SELECT room_id, room_version FROM rooms WHERE room_id IN ({})",
            list({w.room_id for w in works}),
        )}
        for w in works:
            stored = versions.get(w.room_id)
            if stored is not None and stored != w.event.room_version.identifier:
                raise InvalidDataError(
                    f"event {w.event_id!r} claims room version {w.event.room_version.identifier!r}"
                    f" but room {w.room_id!r} is version {stored!r}"
                )

    def _insert_events_txn(self, txn: Txn, new: list[_Work], now: int) -> None:
        txn.executemany(
            f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (event_id) DO NOTHING",
            [
                (
                    w.nid, w.event_id, w.room_id, w.event.type, w.event.state_key, w.event.sender,
                    w.event.membership, w.event.depth, w.event.origin_server_ts, now,
                    w.event.room_version.identifier, int(w.entry.outlier),
                    int(w.refusal_kind == OutcomeStatus.REJECTED), int(w.refusal_kind == OutcomeStatus.SOFT_FAILED), w.json,
                    int(w.entry.history),
                )
                for w in new
            ],
        )
        txn.executemany(
            "INSERT INTO event_edges (event_nid, prev_event_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
            [(w.nid, p) for w in new for p in w.event.prev_event_ids],
        )
        txn.executemany(
            "INSERT INTO event_auth (event_nid, auth_event_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
            [(w.nid, a) for w in new for a in w.event.auth_event_ids],
        )

    def _persist_state_txn(
        self, txn: Txn, stored: list[_Work], known: Mapping[str, EventRef]
    ) -> dict[int, tuple[Optional[int], Optional[int]]]:
        sg = self._state_groups
        rows = []
        checked: set[int] = set()

        def check_group(group: int, room_id: str) -> None:
            if group in checked:
                return
            meta = sg.group_meta_txn(txn, group)
            if meta.room_id != room_id:
                raise InvalidDataError(f"state group {group} belongs to {meta.room_id!r}, not {room_id!r}")
            checked.add(group)

        groups: dict[int, tuple[Optional[int], Optional[int]]] = {}
        after_by_id: dict[str, int] = {}
        for w in stored:
            entry = w.entry
            before = entry.state_group_before
            if before is not None:
                check_group(before, w.room_id)
            elif entry.state_before_event is not None:
                before = after_by_id.get(entry.state_before_event)
                if before is None:
                    before = self._state_group_after_txn(txn, entry.state_before_event)
                check_group(before, w.room_id)
            elif entry.state_before is not None:
                before = sg.store_state_group_txn(
                    txn, w.room_id, entry.state_before, entry.state_before_prev_group, known=known
                )
            elif not entry.outlier:
                raise InvalidDataError(
                    f"event {w.event_id!r} is not an outlier: it needs state_group_before or state_before"
                )
            after = entry.state_group_after
            if after is not None:
                check_group(after, w.room_id)
            elif before is not None:
                if w.event.state_key is not None and w.refusal_kind != OutcomeStatus.REJECTED:
                    # Spec "Rejection": a rejected state event does not update the state.
                    after = sg.store_state_group_txn(
                        txn, w.room_id, None, before, {w.event.state_tuple: w.event_id}, known=known
                    )
                else:
                    after = before
            if before is not None or after is not None:
                rows.append((w.nid, before, after))
                groups[w.nid] = (before, after)
            if after is not None:
                after_by_id[w.event_id] = after
        if rows:
            txn.executemany(
                "INSERT INTO event_state (event_nid, state_group_before, state_group_after)"
                " VALUES (?, ?, ?) ON CONFLICT (event_nid) DO UPDATE SET"
                " state_group_before = excluded.state_group_before,"
                " state_group_after = excluded.state_group_after",
                rows,
            )
        return groups

    @staticmethod
    def _state_group_after_txn(txn: Txn, event_id: str) -> int:
        row = txn.execute(
            "SELECT s.state_group_after FROM events e JOIN event_state s ON s.event_nid = e.event_nid"
            " WHERE e.event_id = ?",
            (event_id,),
        ).fetchone()
        if row is None or row[0] is None:
            raise UnknownEventsError([event_id], "events with state")
        return row[0]

    def _store_rooms_txn(self, txn: Txn, works: list[_Work]) -> None:
        creators = {
            w.room_id: w.event.sender
            for w in works
            if w.event.type == "m.room.create" and w.event.state_key == ""
        }
        rooms: dict[str, tuple] = {}
        for w in works:
            if w.stored and not w.entry.outlier and w.room_id not in rooms:
                rooms[w.room_id] = (
                    w.room_id, w.event.room_version.identifier, creators.get(w.room_id),
                    w.event.origin_server_ts,
                )
        if rooms:
            txn.executemany(
                "INSERT INTO rooms (room_id, room_version, creator, is_public, created_ts)"
                " VALUES (?, ?, ?, 0, ?) ON CONFLICT (room_id) DO UPDATE SET"
                " creator = COALESCE(rooms.creator, excluded.creator)",
                list(rooms.values()),
            )

    def _update_current_state_txn(
        self, txn: Txn, stored: list[_Work], known: Mapping[str, EventRef]
    ) -> None:
        per_room: dict[str, dict[StateKey, Optional[str]]] = {}
        for w in stored:
            if w.entry.update_current_state:
                per_room.setdefault(w.room_id, {}).update(w.entry.update_current_state)
        for room_id, delta in per_room.items():
            self.apply_current_state_delta_txn(txn, room_id, delta, known)

    def membership_generation(self, room_id: str) -> int:
        """How many committed changes of ``room_id``'s members this process has seen (see
        :meth:`membership_changed_txn`)."""
        return self._membership_generation.get(room_id, 0)

    def membership_changed_txn(self, txn: Txn, room_id: str) -> None:
        """Record that ``txn`` changes who is joined to ``room_id``: its generation moves
        once the transaction commits (a cache filled from a read that began before then
        sees the move and does not keep what it read)."""
        txn.call_after_commit(self._bump_membership, room_id)

    def _bump_membership(self, room_id: str) -> None:
        self._membership_generation[room_id] = self._membership_generation.get(room_id, 0) + 1

    def apply_current_state_delta_txn(
        self,
        txn: Txn,
        room_id: str,
        delta: Mapping[StateKey, Optional[str]],
        known: Optional[Mapping[str, EventRef]] = None,
    ) -> None:
        """Set (or with ``None`` remove) entries of the room's current state.

        :raises UnknownEventsError: if an event is not stored.
        :raises InvalidDataError: if an event is in another room.
        """
        refs = resolve_event_nids_txn(
            txn, room_id, {v for v in delta.values() if v is not None}, known, "current state events"
        )
        upserts = [
            (room_id, k[0], k[1], refs[v].event_nid, refs[v].membership)
            for k, v in delta.items()
            if v is not None
        ]
        deletes = [(room_id, k[0], k[1]) for k, v in delta.items() if v is None]
        if any(k[0] == "m.room.member" for k in delta):
            self.membership_changed_txn(txn, room_id)
        if upserts:
            txn.executemany(
                "INSERT INTO current_state (room_id, type, state_key, event_nid, membership)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (room_id, type, state_key) DO UPDATE SET"
                " event_nid = excluded.event_nid, membership = excluded.membership",
                upserts,
            )
        if deletes:
            txn.executemany(
                "DELETE FROM current_state WHERE room_id = ? AND type = ? AND state_key = ?", deletes
            )

    def _update_extremities_txn(self, txn: Txn, accepted: list[_Work]) -> None:
        # Spec "Rejection" and "Soft failure": rejected, soft-failed (and outlier) events
        # are never forward extremities. Everything else that is accepted replaces its
        # prev events.
        if not accepted:
            return
        removed: set[str] = set()
        for w in accepted:
            removed.update(w.event.prev_event_ids)
        # An accepted event that descends from a soft-failed or rejected one also
        # descends from that event's prev events: they must stop being extremities too,
        # or extremities pile up.
        frontier = list(removed)
        for _ in range(MAX_EXTREMITY_WALK):
            if not frontier:
                break
            rows = txn.select_in(
                "SELECT ed.prev_event_id FROM events e"
                " JOIN event_edges ed ON ed.event_nid = e.event_nid"
                " WHERE e.outlier = 0 AND (e.rejected = 1 OR e.soft_failed = 1)"
                " AND e.event_id IN ({})",
                frontier,
            )
            frontier = [r[0] for r in rows if r[0] not in removed]
            removed.update(frontier)
        added = {w.event_id for w in accepted} - removed
        if added:
            referenced = txn.select_in(
                "SELECT DISTINCT ed.prev_event_id FROM event_edges ed"
                " JOIN events e ON e.event_nid = ed.event_nid"
                " WHERE e.outlier = 0 AND e.rejected = 0 AND e.soft_failed = 0"
                " AND ed.prev_event_id IN ({})",
                list(added),
            )
            added -= {r[0] for r in referenced}
        rooms = {w.room_id for w in accepted}
        if removed:
            rows = txn.select_in(
                "SELECT room_id, event_nid FROM events WHERE event_id IN ({})", list(removed)
            )
            txn.executemany(
                "DELETE FROM forward_extremities WHERE room_id = ? AND event_nid = ?",
                [r for r in rows if r[0] in rooms],
            )
        if added:
            txn.executemany(
                "INSERT INTO forward_extremities (room_id, event_nid) VALUES (?, ?)"
                " ON CONFLICT DO NOTHING",
                [(w.room_id, w.nid) for w in accepted if w.event_id in added],
            )

    @staticmethod
    def _history_extremities_txn(txn: Txn, history: list[_Work]) -> None:
        # History placed in a gap in the middle of the DAG descends from events before the
        # gap: an extremity it cites has a child now and stops being one. History never
        # becomes an extremity itself.
        prevs = {p for w in history for p in w.event.prev_event_ids}
        if not prevs:
            return
        rooms = {w.room_id for w in history}
        rows = txn.select_in("SELECT room_id, event_nid FROM events WHERE event_id IN ({})", sorted(prevs))
        txn.executemany(
            "DELETE FROM forward_extremities WHERE room_id = ? AND event_nid = ?", [r for r in rows if r[0] in rooms]
        )

    # -- loading ----------------------------------------------------------------------

    def get_events_txn(self, txn: Txn, event_ids: Iterable[str]) -> dict[str, Event]:
        """Load events (no cache lookup; loaded events are cached)."""
        ids = lookup_ids(event_ids)
        rows = txn.select_in(
            "SELECT e.event_id, e.room_version, e.json, r.reason FROM events e"
            " LEFT JOIN event_refusals r ON r.event_nid = e.event_nid AND r.kind = ?"
            " WHERE e.event_id IN ({})",
            ids,
            params_before=[OutcomeStatus.REJECTED.value],
        )
        found: dict[str, Event] = {}
        sizes: dict[str, int] = {}
        for event_id, version_id, data, reason in rows:
            event = Event.from_pdu(json.loads(data), self._registry.get(version_id), event_id=event_id)
            event.rejected_reason = reason
            found[event_id] = event
            sizes[event_id] = len(data)
        for event_id, event in found.items():
            self.cache.put(event_id, event, sizes[event_id])
        return found

    def have_events_txn(self, txn: Txn, event_ids: Iterable[str]) -> set[str]:
        """The stored ids among ``event_ids``."""
        return {
            r[0]
            for r in txn.select_in(
                "SELECT event_id FROM events WHERE event_id IN ({})", lookup_ids(event_ids)
            )
        }

    def get_event_meta_txn(self, txn: Txn, event_ids: Iterable[str]) -> dict[str, EventMeta]:
        """Facts about stored events without their JSON."""
        rows = txn.select_in(
            "SELECT event_id, event_nid, room_id, depth, outlier, rejected, soft_failed"
            " FROM events WHERE event_id IN ({})",
            lookup_ids(event_ids),
        )
        return {
            r[0]: EventMeta(r[1], r[2], r[3], bool(r[4]), bool(r[5]), bool(r[6])) for r in rows
        }

    def get_rejection_txn(self, txn: Txn, event_id: str) -> Optional[Refusal]:
        """Why ``event_id`` was rejected, or ``None``."""
        if not lookup_text(event_id, "event id"):
            return None
        row = txn.execute(
            "SELECT r.reason, r.rule, r.plugin FROM events e"
            " JOIN event_refusals r ON r.event_nid = e.event_nid"
            " WHERE e.event_id = ? AND r.kind = ?",
            (event_id, OutcomeStatus.REJECTED.value),
        ).fetchone()
        return None if row is None else Refusal(*row)

    def get_refused_events_txn(
        self,
        txn: Txn,
        room_id: Optional[str],
        kind: Optional[str],
        limit: int,
        before_nid: Optional[int],
    ) -> list[RefusedEvent]:
        """Rejected and soft-failed events, newest first."""
        check_text(room_id, "room id", nullable=True)
        if kind is not None and (not isinstance(kind, str) or kind not in REFUSAL_KINDS):
            raise InvalidDataError("kind must be None, 'rejected' or 'soft_failed'")
        check_int(limit, "limit")
        check_int(before_nid, "before_nid", nullable=True)
        sql = (
            "SELECT r.event_nid, e.event_id, e.room_id, r.kind, r.reason, r.rule, r.plugin,"
            " r.refused_ts FROM event_refusals r JOIN events e ON e.event_nid = r.event_nid"
            " WHERE 1 = 1"
        )
        params: list[Any] = []
        if room_id is not None:
            sql += " AND e.room_id = ?"
            params.append(room_id)
        if kind is not None:
            sql += " AND r.kind = ?"
            params.append(OutcomeStatus(kind).value)
        if before_nid is not None:
            sql += " AND r.event_nid < ?"
            params.append(before_nid)
        sql += " ORDER BY r.event_nid DESC LIMIT ?"
        params.append(max(0, limit))
        return [RefusedEvent(r[0], r[1], r[2], OutcomeStatus(r[3]), *r[4:]) for r in txn.execute(sql, params).fetchall()]

    # -- the DAG ----------------------------------------------------------------------

    def get_auth_chain_ids_txn(self, txn: Txn, event_ids: Iterable[str]) -> set[str]:
        """The ids of the stored auth chain of ``event_ids`` (their auth events,
        recursively; the given events themselves only if in another's chain)."""
        return {r[0] for r in txn.select_in(_AUTH_CHAIN_SQL, lookup_ids(event_ids))}

    def get_forward_extremities_txn(self, txn: Txn, room_id: str) -> list[str]:
        """The room's forward extremities, deepest first."""
        if not lookup_text(room_id, "room id"):
            return []
        rows = txn.execute(
            "SELECT e.event_id FROM forward_extremities f JOIN events e ON e.event_nid = f.event_nid"
            " WHERE f.room_id = ? ORDER BY e.depth DESC, e.event_nid DESC",
            (room_id,),
        ).fetchall()
        return [r[0] for r in rows]

    def get_max_depth_txn(self, txn: Txn, event_ids: Iterable[str]) -> int:
        """The greatest depth among the stored ``event_ids`` (0 if none is stored)."""
        rows = txn.select_in(
            "SELECT MAX(depth) FROM events WHERE event_id IN ({})", lookup_ids(event_ids)
        )
        depths = [r[0] for r in rows if r[0] is not None]
        return max(depths, default=0)

    def get_prev_event_ids_txn(self, txn: Txn, event_ids: Iterable[str]) -> dict[str, list[str]]:
        """``{event_id: [prev event ids]}`` for the stored ``event_ids``."""
        ids = lookup_ids(event_ids)
        out: dict[str, list[str]] = {
            r[0]: [] for r in txn.select_in("SELECT event_id FROM events WHERE event_id IN ({})", ids)
        }
        for event_id, prev in txn.select_in(
            "SELECT e.event_id, ed.prev_event_id FROM events e"
            " JOIN event_edges ed ON ed.event_nid = e.event_nid WHERE e.event_id IN ({})",
            ids,
        ):
            out[event_id].append(prev)
        return out

    def _in_room_txn(self, txn: Txn, room_id: str, event_ids: Iterable[str]) -> dict[str, int]:
        return {
            r[0]: r[1]
            for r in txn.select_in(
                "SELECT event_id, depth FROM events WHERE room_id = ? AND event_id IN ({})",
                lookup_ids(event_ids),
                (room_id,),
            )
        }

    def _prev_step_txn(self, txn: Txn, room_id: str, event_ids: list[str]) -> list[tuple[str, int]]:
        rows = txn.select_in(
            "SELECT DISTINCT ed.prev_event_id, p.depth FROM events e"
            " JOIN event_edges ed ON ed.event_nid = e.event_nid"
            " JOIN events p ON p.event_id = ed.prev_event_id"
            " WHERE p.room_id = ? AND e.event_id IN ({})",
            event_ids,
            (room_id,),
        )
        rows.sort(key=lambda r: (-r[1], r[0]))
        return rows

    def get_backfill_txn(self, txn: Txn, room_id: str, from_ids: Iterable[str], limit: int) -> list[Event]:
        """Spec ``/backfill``: the given events and those before them, up to ``limit``,
        walking ``prev_events`` breadth first and keeping the deepest."""
        check_int(limit, "limit")
        if not lookup_text(room_id, "room id") or limit <= 0:
            return []
        start = self._in_room_txn(txn, room_id, from_ids)
        visited = dict(start)
        frontier = list(start)
        while frontier and len(visited) < limit:
            step = self._prev_step_txn(txn, room_id, frontier)
            frontier = []
            for event_id, depth in step:
                if event_id not in visited:
                    visited[event_id] = depth
                    frontier.append(event_id)
        starts = sorted(start, key=lambda e: (-start[e], e))
        rest = sorted((e for e in visited if e not in start), key=lambda e: (-visited[e], e))
        chosen = (starts + rest)[:limit]
        events = self.get_events_txn(txn, chosen)
        return [events[e] for e in chosen if e in events]

    def get_missing_events_txn(
        self,
        txn: Txn,
        room_id: str,
        earliest: Iterable[str],
        latest: Iterable[str],
        limit: int,
        min_depth: int,
    ) -> list[Event]:
        """Spec ``/get_missing_events``: a breadth-first walk of the ``prev_events`` of
        ``latest``, not entering ``earliest``, skipping events below ``min_depth``, up to
        ``limit`` events; returned oldest (lowest depth) first."""
        check_int(limit, "limit")
        check_int(min_depth, "min_depth")
        if not lookup_text(room_id, "room id"):
            return []
        earliest_ids = lookup_ids(earliest)
        latest_ids = lookup_ids(latest)
        visited = set(earliest_ids) | set(latest_ids)
        frontier = list(self._in_room_txn(txn, room_id, latest_ids))
        found: list[tuple[str, int]] = []
        while frontier and len(found) < limit:
            nxt = []
            for event_id, depth in self._prev_step_txn(txn, room_id, frontier):
                if event_id in visited:
                    continue
                visited.add(event_id)
                if depth < min_depth:
                    continue
                found.append((event_id, depth))
                nxt.append(event_id)
                if len(found) >= limit:
                    break
            frontier = nxt
        found.sort(key=lambda r: (r[1], r[0]))
        events = self.get_events_txn(txn, [e for e, _ in found])
        return [events[e] for e, _ in found if e in events]

    # -- rooms ------------------------------------------------------------------------

    def store_room_txn(
        self,
        txn: Txn,
        room_id: str,
        room_version: RoomVersion,
        creator: Optional[str],
        is_public: bool,
        created_ts: int,
    ) -> None:
        """Create or update a room row (the version of an existing room never changes).

        :raises InvalidDataError: if the room exists with another version.
        """
        check_text(room_id, "room id")
        check_text(creator, "creator", nullable=True)
        check_int(created_ts, "created_ts")
        if not isinstance(room_version, RoomVersion) or room_version.identifier not in self._registry:
            raise InvalidDataError("room_version must be a registered RoomVersion")
        row = txn.execute("SELECT room_version FROM rooms WHERE room_id = ?", (room_id,)).fetchone()
        if row is not None and row[0] != room_version.identifier:
            raise InvalidDataError(f"room {room_id!r} already has version {row[0]!r}")
        txn.execute(
            "INSERT INTO rooms (room_id, room_version, creator, is_public, created_ts)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (room_id) DO UPDATE SET"
            " creator = COALESCE(excluded.creator, rooms.creator), is_public = excluded.is_public",
            (room_id, room_version.identifier, creator, int(bool(is_public)), created_ts),
        )

    def get_room_txn(self, txn: Txn, room_id: str) -> Optional[RoomInfo]:
        """The room row, or ``None``.

        :raises UnknownRoomVersion: if its version is no longer registered.
        """
        if not lookup_text(room_id, "room id"):
            return None
        row = txn.execute(
            "SELECT room_id, room_version, creator, is_public, created_ts FROM rooms WHERE room_id = ?",
            (room_id,),
        ).fetchone()
        if row is None:
            return None
        return RoomInfo(row[0], self._registry.get(row[1]), row[2], bool(row[3]), row[4])

    # -- current state ----------------------------------------------------------------

    def get_current_state_ids_txn(
        self, txn: Txn, room_id: str, types: Optional[Iterable[Any]] = None
    ) -> dict[StateKey, str]:
        """The room's current state ``{(type, state_key): event_id}``, optionally only
        the given types (a type string or ``(type, None)``: every state key; ``(type,
        state_key)``: that one)."""
        if not lookup_text(room_id, "room id"):
            return {}
        sql = (
            "SELECT c.type, c.state_key, e.event_id FROM current_state c"
            " JOIN events e ON e.event_nid = c.event_nid WHERE c.room_id = ?"
        )
        if types is None:
            rows = txn.execute(sql, (room_id,)).fetchall()
        else:
            clauses: list[tuple[str, tuple]] = []
            for t in types:
                if isinstance(t, str):
                    t = (t, None)
                if not isinstance(t, tuple) or len(t) != 2:
                    raise InvalidDataError("types must be strings or (type, state_key) pairs")
                check_text(t[0], "type")
                check_text(t[1], "state_key", nullable=True)
                if t[1] is None:
                    clauses.append(("c.type = ?", (t[0],)))
                else:
                    clauses.append(("(c.type = ? AND c.state_key = ?)", t))
            rows = []
            for i in range(0, len(clauses), 100):
                part = clauses[i : i + 100]
                where = " OR ".join(c for c, _ in part)
                params = [room_id] + [p for _, ps in part for p in ps]
                rows.extend(txn.execute(f"{sql} AND ({where})", params).fetchall())
        return {(t, sk): e for t, sk, e in rows}

    def get_earliest_members_txn(
        self, txn: Txn, room_id: str, memberships: Sequence[str], limit: int
    ) -> list[tuple[str, str]]:
        """``(user_id, event_id)`` of the room's current members whose membership is one of
        ``memberships``, in the order their member events were stored, at most ``limit``."""
        if not lookup_text(room_id, "room id"):
            return []
        check_int(limit, "limit")
        wanted = [m for m in memberships if lookup_text(m, "membership")]
        if not wanted:
            return []
        rows = txn.execute(
            "SELECT c.state_key, e.event_id FROM current_state c JOIN events e ON e.event_nid = c.event_nid"
            " WHERE c.room_id = ? AND c.type = 'm.room.member' AND c.membership IN ({})"
            " ORDER BY c.event_nid LIMIT ?".format(", ".join("?" * len(wanted))),
            (room_id, *wanted, limit),
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def get_room_members_txn(self, txn: Txn, room_id: str, membership: str) -> list[str]:
        """User ids whose current membership in the room is ``membership``."""
        if not (lookup_text(room_id, "room id") and lookup_text(membership, "membership")):
            return []
        rows = txn.execute(
            "SELECT state_key FROM current_state"
            " WHERE room_id = ? AND type = 'm.room.member' AND membership = ?",
            (room_id, membership),
        ).fetchall()
        return [r[0] for r in rows]
