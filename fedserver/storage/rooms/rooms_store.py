"""Reads and writes for serving rooms to clients: aliases, client txn ids, streams, memberships, redactions."""

# Positions. An event's nid (events.event_nid) is its *stream* position: allocated in
# persist order, so "the events since a /sync token" are the events of nid > token. An
# outlier later de-outliered keeps its older nid, so it never shows up in an incremental
# /sync (it does in /messages and in full syncs); that is accepted for now.
# The *topological* position of an event is (depth, nid): /messages pages by it.

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Sequence

from twisted.internet.defer import Deferred

from fedserver.events.model import Event
from fedserver.storage.database import Txn, check_text, deferred_errors, lookup_ids, lookup_text
from fedserver.storage.interface import StateKey

#: ``(depth, event_nid)``: a place in a room's topological order.
TopoPos = tuple[int, int]

#: Larger than any depth or nid (depths are at most 2**53 - 1; nids fit in 63 bits).
POS_MAX = 2**63 - 1

#: Events a /sync or /messages page may ask for at most.
MAX_PAGE = 1000

# Events a client may see: neither outliers (no place in the DAG), nor rejected, nor
# soft-failed (spec "Soft failure": not served to clients).
_VISIBLE = "outlier = 0 AND rejected = 0 AND soft_failed = 0"
# Events in the /sync stream: visible, and not history placed behind what we held (a
# backfilled event, schema 006: /messages serves those, /sync never does).
_STREAM = _VISIBLE + " AND history = 0"

_REDACTION_INDEXER = "redactions"


class AliasInfo(NamedTuple):
    """One local room alias."""

    room_alias: str
    room_id: str
    creator: Optional[str]
    created_ts: int


class Membership(NamedTuple):
    """A user's current membership in a room (from the room's current state).

    :ivar event_nid: the membership event's stream position.
    """

    room_id: str
    membership: str
    event_id: str
    event_nid: int


class Timeline(NamedTuple):
    """The newest events of a room in a stream range, oldest first.

    :ivar events: ``(event_nid, Event)`` pairs.
    :ivar limited: more events of the range were left out (older than these).
    """

    events: list[tuple[int, Event]]
    limited: bool


class RoomMembers(NamedTuple):
    """Counts and the first members (by stream order) of a room, for /sync summaries.

    :ivar heroes: up to ``n`` joined or invited users, oldest membership first; if the
        room has none, left and banned users instead.
    """

    joined: int
    invited: int
    heroes: list[str]


class RoomsStore:
    """SQL for the client side of rooms, with a Deferred API (each call one transaction).

    It reads events and state through the public ``*_txn`` API of the store it is given.

    :param store: the :class:`fedserver.storage.sqlite.SQLiteStore`.
    :param clock_ms: the current time in milliseconds.
    """

    def __init__(self, store: Any, clock_ms: Callable[[], int]) -> None:
        self._store = store
        self._clock_ms = clock_ms

    # -- aliases ------------------------------------------------------------------------

    @deferred_errors
    def create_alias(self, room_alias: str, room_id: str, creator: Optional[str]) -> "Deferred[bool]":
        """Map ``room_alias`` to ``room_id``.

        :returns: Deferred firing with ``False`` if the alias is already taken (nothing
            changed), ``True`` once stored.
        """
        check_text(room_alias, "room alias")
        check_text(room_id, "room id")
        check_text(creator, "creator", nullable=True)
        now = self._clock_ms()

        def txn_func(txn: Txn) -> bool:
            cur = txn.execute(
                "INSERT INTO room_aliases (room_alias, room_id, creator, created_ts) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (room_alias) DO NOTHING",
                (room_alias, room_id, creator, now),
            )
            return cur.rowcount > 0

        return self._store.run_write(txn_func)

    @deferred_errors
    def get_alias(self, room_alias: str) -> "Deferred[Optional[AliasInfo]]":
        """The alias's row, or ``None``."""

        def txn_func(txn: Txn) -> Optional[AliasInfo]:
            if not lookup_text(room_alias, "room alias"):
                return None
            row = txn.execute(
                "SELECT room_alias, room_id, creator, created_ts FROM room_aliases WHERE room_alias = ?",
                (room_alias,),
            ).fetchone()
            return None if row is None else AliasInfo(*row)

        return self._store.run_read(txn_func)

    @deferred_errors
    def delete_alias(self, room_alias: str) -> "Deferred[bool]":
        """Remove the alias; ``False`` if there was none."""

        def txn_func(txn: Txn) -> bool:
            if not lookup_text(room_alias, "room alias"):
                return False
            return txn.execute("DELETE FROM room_aliases WHERE room_alias = ?", (room_alias,)).rowcount > 0

        return self._store.run_write(txn_func)

    @deferred_errors
    def get_aliases_for_room(self, room_id: str) -> "Deferred[list[str]]":
        """The local aliases of ``room_id``, oldest first."""

        def txn_func(txn: Txn) -> list[str]:
            if not lookup_text(room_id, "room id"):
                return []
            rows = txn.execute(
                "SELECT room_alias FROM room_aliases WHERE room_id = ? ORDER BY created_ts, room_alias",
                (room_id,),
            ).fetchall()
            return [r[0] for r in rows]

        return self._store.run_read(txn_func)

    # -- client transaction ids ---------------------------------------------------------

    @deferred_errors
    def get_client_txn(self, user_id: str, scope: str, txn_id: str, *, path: str = "") -> "Deferred[Optional[str]]":
        """The event id a client transaction produced, or ``None``.

        :param path: the request path the transaction id was used on (client-server API
            "Transaction identifiers": a retransmission has the same transaction id *and*
            the same path), e.g. ``/rooms/!r:hs/send/m.room.message``.
        """

        def txn_func(txn: Txn) -> Optional[str]:
            if not all(lookup_text(v, "id") for v in (user_id, scope, txn_id)) or not lookup_text(path, "path"):
                return None
            row = txn.execute(
                "SELECT event_id FROM client_transactions"
                " WHERE user_id = ? AND scope = ? AND path = ? AND txn_id = ?",
                (user_id, scope, path, txn_id),
            ).fetchone()
            return None if row is None else row[0]

        return self._store.run_read(txn_func)

    @deferred_errors
    def store_client_txn(
        self, user_id: str, scope: str, txn_id: str, room_id: str, event_id: str, *, path: str = ""
    ) -> "Deferred[str]":
        """Record that a client transaction on ``path`` produced ``event_id``; the first
        record wins.

        :returns: Deferred firing with the event id on record.
        """
        return self._store.run_write(self.store_client_txn_txn, user_id, scope, txn_id, room_id, event_id, path=path)

    def store_client_txn_txn(
        self, txn: Txn, user_id: str, scope: str, txn_id: str, room_id: str, event_id: str, *, path: str = ""
    ) -> str:
        """:meth:`store_client_txn` inside the caller's transaction (the one storing the
        event: ``SQLiteStore.persist_events_txn`` for events with ``client_txn``)."""
        for value, what in ((user_id, "user id"), (scope, "scope"), (txn_id, "txn id"), (room_id, "room id"), (event_id, "event id")):
            check_text(value, what)
        check_text(path, "path")
        txn.execute(
            "INSERT INTO client_transactions (user_id, scope, path, txn_id, room_id, event_id, created_ts)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (user_id, scope, path, txn_id, room_id, event_id, self._clock_ms()),
        )
        return txn.execute(
            "SELECT event_id FROM client_transactions"
            " WHERE user_id = ? AND scope = ? AND path = ? AND txn_id = ?",
            (user_id, scope, path, txn_id),
        ).fetchone()[0]

    @deferred_errors
    def get_client_txn_ids(
        self, user_id: str, scope: str, event_ids: Iterable[str]
    ) -> "Deferred[dict[str, str]]":
        """``{event_id: txn_id}`` for those of ``event_ids`` that this user's ``scope``
        (device or token) sent with a transaction id."""
        ids = lookup_ids(event_ids)

        def txn_func(txn: Txn) -> dict[str, str]:
            if not ids or not (lookup_text(user_id, "user id") and lookup_text(scope, "scope")):
                return {}
            rows = txn.select_in(
                "SELECT event_id, txn_id FROM client_transactions"
                " WHERE user_id = ? AND scope = ? AND event_id IN ({})",
                ids,
                (user_id, scope),
            )
            return {r[0]: r[1] for r in rows}

        return self._store.run_read(txn_func)

    @deferred_errors
    def prune_client_txns(self, before_ts: int) -> "Deferred[int]":
        """Forget client transaction ids recorded before ``before_ts``; fires with how
        many."""

        def txn_func(txn: Txn) -> int:
            return txn.execute("DELETE FROM client_transactions WHERE created_ts < ?", (before_ts,)).rowcount

        return self._store.run_write(txn_func)

    # -- streams ------------------------------------------------------------------------

    @deferred_errors
    def get_stream_position(self) -> "Deferred[int]":
        """The newest event nid (0 for an empty database)."""

        def txn_func(txn: Txn) -> int:
            row = txn.execute("SELECT MAX(event_nid) FROM events").fetchone()
            return row[0] or 0

        return self._store.run_read(txn_func)

    @deferred_errors
    def get_rooms_changed(self, room_ids: Iterable[str], from_nid: int, to_nid: int) -> "Deferred[set[str]]":
        """Which of ``room_ids`` have events a client may see with ``from_nid < nid <=
        to_nid`` (one range read of the events table)."""
        wanted = set(lookup_ids(room_ids))

        def txn_func(txn: Txn) -> set[str]:
            if not wanted or to_nid <= from_nid:
                return set()
            if len(wanted) <= 50:
                # Few rooms: one indexed probe each beats scanning a long range.
                found = set()
                for room_id in wanted:
                    row = txn.execute(
                        f"SELECT 1 FROM events WHERE room_id = ? AND event_nid > ? AND event_nid <= ? AND {_STREAM} LIMIT 1",
                        (room_id, from_nid, to_nid),
                    ).fetchone()
                    if row is not None:
                        found.add(room_id)
                return found
            rows = txn.execute(
                f"SELECT DISTINCT room_id FROM events WHERE event_nid > ? AND event_nid <= ? AND {_STREAM}",
                (from_nid, to_nid),
            ).fetchall()
            return {r[0] for r in rows} & wanted

        return self._store.run_read(txn_func)

    @deferred_errors
    def get_room_timelines(
        self, ranges: Mapping[str, tuple[int, int]], limit: int
    ) -> "Deferred[dict[str, Timeline]]":
        """For each room, its newest ``limit`` events with ``from_nid < nid <= to_nid``,
        all in one read transaction.

        :param ranges: ``{room_id: (from_nid, to_nid)}``.
        :returns: Deferred firing with ``{room_id: Timeline}`` (oldest event first).
        """
        items = [(r, int(a), int(b)) for r, (a, b) in ranges.items() if lookup_text(r, "room id")]
        limit = max(0, min(int(limit), MAX_PAGE))

        def txn_func(txn: Txn) -> dict[str, Timeline]:
            picked: dict[str, list[tuple[int, str]]] = {}
            limited: dict[str, bool] = {}
            for room_id, lo, hi in items:
                rows = txn.execute(
                    f"SELECT event_nid, event_id FROM events WHERE room_id = ? AND event_nid > ?"
                    f" AND event_nid <= ? AND {_STREAM} ORDER BY event_nid DESC LIMIT ?",
                    (room_id, lo, hi, limit + 1),
                ).fetchall()
                limited[room_id] = len(rows) > limit
                picked[room_id] = rows[:limit][::-1]
            events = self._store.get_events_txn(txn, [eid for rows in picked.values() for _, eid in rows])
            return {
                room_id: Timeline([(nid, events[eid]) for nid, eid in rows if eid in events], limited[room_id])
                for room_id, rows in picked.items()
            }

        return self._store.run_read(txn_func)

    @deferred_errors
    def get_state_keys_changed(self, room_id: str, from_nid: int, to_nid: int) -> "Deferred[set[StateKey]]":
        """The ``(type, state_key)`` of the room's accepted state events with ``from_nid <
        nid <= to_nid`` (what changed in a /sync gap)."""

        def txn_func(txn: Txn) -> set[StateKey]:
            if not lookup_text(room_id, "room id") or to_nid <= from_nid:
                return set()
            rows = txn.execute(
                f"SELECT DISTINCT type, state_key FROM events WHERE room_id = ? AND event_nid > ?"
                f" AND event_nid <= ? AND state_key IS NOT NULL AND {_STREAM}",
                (room_id, from_nid, to_nid),
            ).fetchall()
            return {(r[0], r[1]) for r in rows}

        return self._store.run_read(txn_func)

    @deferred_errors
    def get_event_state_groups(self, event_ids: Iterable[str]) -> "Deferred[dict[str, tuple[int, int]]]":
        """``{event_id: (state group before, state group after)}`` for the events that
        have state recorded (outliers have none)."""
        ids = lookup_ids(event_ids)

        def txn_func(txn: Txn) -> dict[str, tuple[int, int]]:
            rows = txn.select_in(
                "SELECT e.event_id, s.state_group_before, s.state_group_after FROM events e"
                " JOIN event_state s ON s.event_nid = e.event_nid WHERE e.event_id IN ({})",
                ids,
            )
            return {r[0]: (r[1], r[2] if r[2] is not None else r[1]) for r in rows if r[1] is not None}

        return self._store.run_read(txn_func)

    # -- topological order --------------------------------------------------------------

    @deferred_errors
    def paginate(
        self,
        room_id: str,
        from_pos: TopoPos,
        backwards: bool,
        limit: int,
        to_pos: Optional[TopoPos] = None,
    ) -> "Deferred[list[tuple[TopoPos, Event]]]":
        """Events of the room a client may see, in topological order from a boundary.

        A position ``p`` is a boundary between events: backwards, the events at or
        before ``p`` newest first; forwards, the events after ``p`` oldest first. The
        next page starts from the last event's position (backwards: minus one nid).

        :param to_pos: stop at this boundary (backwards: events after it; forwards:
            events at or before it).
        :returns: Deferred firing with ``[((depth, nid), Event)]`` in page order.
        """
        limit = max(0, min(int(limit), MAX_PAGE))
        d, n = int(from_pos[0]), int(from_pos[1])

        def txn_func(txn: Txn) -> list[tuple[TopoPos, Event]]:
            if not lookup_text(room_id, "room id") or limit == 0:
                return []
            if backwards:
                sql = (
                    f"SELECT depth, event_nid, event_id FROM events WHERE room_id = ? AND {_VISIBLE}"
                    " AND (depth < ? OR (depth = ? AND event_nid <= ?))"
                )
                params: list[Any] = [room_id, d, d, n]
                if to_pos is not None:
                    sql += " AND (depth > ? OR (depth = ? AND event_nid > ?))"
                    params += [to_pos[0], to_pos[0], to_pos[1]]
                sql += " ORDER BY depth DESC, event_nid DESC LIMIT ?"
            else:
                sql = (
                    f"SELECT depth, event_nid, event_id FROM events WHERE room_id = ? AND {_VISIBLE}"
                    " AND (depth > ? OR (depth = ? AND event_nid > ?))"
                )
                params = [room_id, d, d, n]
                if to_pos is not None:
                    sql += " AND (depth < ? OR (depth = ? AND event_nid <= ?))"
                    params += [to_pos[0], to_pos[0], to_pos[1]]
                sql += " ORDER BY depth, event_nid LIMIT ?"
            params.append(limit)
            rows = txn.execute(sql, params).fetchall()
            events = self._store.get_events_txn(txn, [r[2] for r in rows])
            return [((r[0], r[1]), events[r[2]]) for r in rows if r[2] in events]

        return self._store.run_read(txn_func)

    @deferred_errors
    def get_topological_position_at(self, room_id: str, stream_nid: int) -> "Deferred[Optional[TopoPos]]":
        """The topological position of the room's newest client-visible event with
        ``nid <= stream_nid`` (to turn a /sync token into a /messages boundary), or
        ``None`` if there is none."""

        def txn_func(txn: Txn) -> Optional[TopoPos]:
            if not lookup_text(room_id, "room id"):
                return None
            row = txn.execute(
                f"SELECT depth, event_nid FROM events WHERE room_id = ? AND event_nid <= ? AND {_STREAM}"
                " ORDER BY event_nid DESC LIMIT 1",
                (room_id, stream_nid),
            ).fetchone()
            return None if row is None else (row[0], row[1])

        return self._store.run_read(txn_func)

    # -- memberships --------------------------------------------------------------------

    @deferred_errors
    def get_memberships_for_user(self, user_id: str) -> "Deferred[list[Membership]]":
        """The user's membership in every room whose current state has one."""

        def txn_func(txn: Txn) -> list[Membership]:
            if not lookup_text(user_id, "user id"):
                return []
            rows = txn.execute(
                "SELECT c.room_id, c.membership, e.event_id, c.event_nid FROM current_state c"
                " JOIN events e ON e.event_nid = c.event_nid"
                " WHERE c.state_key = ? AND c.type = 'm.room.member'",
                (user_id,),
            ).fetchall()
            return [Membership(r[0], r[1] or "", r[2], r[3]) for r in rows]

        return self._store.run_read(txn_func)

    @deferred_errors
    def get_membership(self, room_id: str, user_id: str) -> "Deferred[Optional[Membership]]":
        """The user's current membership in one room, or ``None``."""

        def txn_func(txn: Txn) -> Optional[Membership]:
            if not (lookup_text(room_id, "room id") and lookup_text(user_id, "user id")):
                return None
            row = txn.execute(
                "SELECT c.room_id, c.membership, e.event_id, c.event_nid FROM current_state c"
                " JOIN events e ON e.event_nid = c.event_nid"
                " WHERE c.room_id = ? AND c.type = 'm.room.member' AND c.state_key = ?",
                (room_id, user_id),
            ).fetchone()
            return None if row is None else Membership(row[0], row[1] or "", row[2], row[3])

        return self._store.run_read(txn_func)

    @deferred_errors
    def get_joined_presence(self, room_id: str, server_name: str) -> "Deferred[tuple[bool, bool]]":
        """Whether anyone is joined to the room, and whether a user of ``server_name`` is,
        reading only as far as the first match (not every member of a big room)."""

        def txn_func(txn: Txn) -> tuple[bool, bool]:
            if not (lookup_text(room_id, "room id") and lookup_text(server_name, "server name")):
                return False, False
            base = "SELECT state_key FROM current_state WHERE room_id = ? AND type = 'm.room.member' AND membership = 'join'"
            if txn.execute(base + " LIMIT 1", (room_id,)).fetchone() is None:
                return False, False
            suffix = ":" + server_name
            for (state_key,) in txn.execute(base + " AND substr(state_key, length(state_key) - ? + 1) = ?", (room_id, len(suffix), suffix)):
                if state_key.partition(":")[2] == server_name:
                    return True, True
            return True, False

        return self._store.run_read(txn_func)

    @deferred_errors
    def get_room_members_summary(self, room_ids: Iterable[str], heroes: int = 6) -> "Deferred[dict[str, RoomMembers]]":
        """Joined and invited counts and the first ``heroes`` members of each room."""
        ids = lookup_ids(room_ids)

        def txn_func(txn: Txn) -> dict[str, RoomMembers]:
            out: dict[str, RoomMembers] = {}
            counts: dict[str, dict[str, int]] = {r: {} for r in ids}
            for room_id, membership, n in txn.select_in(
                "SELECT room_id, membership, COUNT(*) FROM current_state"
                " WHERE type = 'm.room.member' AND room_id IN ({}) GROUP BY room_id, membership",
                ids,
            ):
                counts[room_id][membership] = n
            for room_id in ids:
                c = counts[room_id]
                if heroes <= 0:
                    out[room_id] = RoomMembers(c.get("join", 0), c.get("invite", 0), [])
                    continue
                rows = txn.execute(
                    "SELECT state_key FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
                    " AND membership IN ('join', 'invite') ORDER BY event_nid LIMIT ?",
                    (room_id, heroes),
                ).fetchall()
                if not rows:
                    rows = txn.execute(
                        "SELECT state_key FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
                        " AND membership IN ('leave', 'ban') ORDER BY event_nid LIMIT ?",
                        (room_id, heroes),
                    ).fetchall()
                out[room_id] = RoomMembers(c.get("join", 0), c.get("invite", 0), [r[0] for r in rows])
            return out

        return self._store.run_read(txn_func)

    @deferred_errors
    def get_current_state_for_rooms(
        self, room_ids: Iterable[str], types: Sequence[str]
    ) -> "Deferred[dict[str, dict[str, Event]]]":
        """The current state events ``(type, "")`` of each room for the given types, in
        one read: ``{room_id: {type: Event}}`` (for the public room list)."""
        ids = lookup_ids(room_ids)
        type_list = lookup_ids(types)

        def txn_func(txn: Txn) -> dict[str, dict[str, Event]]:
            out: dict[str, dict[str, Event]] = {r: {} for r in ids}
            if not ids or not type_list:
                return out
            marks = ", ".join("?" * len(type_list))
            rows = txn.select_in(
                "SELECT c.room_id, c.type, e.event_id FROM current_state c"
                " JOIN events e ON e.event_nid = c.event_nid"
                f" WHERE c.state_key = '' AND c.type IN ({marks}) AND c.room_id IN ({{}})",
                ids,
                type_list,
            )
            events = self._store.get_events_txn(txn, [r[2] for r in rows])
            for room_id, event_type, event_id in rows:
                ev = events.get(event_id)
                if ev is not None:
                    out[room_id][event_type] = ev
            return out

        return self._store.run_read(txn_func)

    # -- forgotten rooms ----------------------------------------------------------------

    @deferred_errors
    def forget_room(self, user_id: str, room_id: str, membership_nid: int) -> "Deferred[None]":
        """Record that the user forgot the room while their membership event was
        ``membership_nid``."""
        check_text(user_id, "user id")
        check_text(room_id, "room id")

        def txn_func(txn: Txn) -> None:
            txn.execute(
                "INSERT INTO forgotten_rooms (user_id, room_id, membership_nid) VALUES (?, ?, ?)"
                " ON CONFLICT (user_id, room_id) DO UPDATE SET membership_nid = excluded.membership_nid",
                (user_id, room_id, int(membership_nid)),
            )

        return self._store.run_write(txn_func)

    @deferred_errors
    def get_forgotten_rooms(self, user_id: str) -> "Deferred[dict[str, int]]":
        """``{room_id: membership_nid}`` of the rooms the user forgot."""

        def txn_func(txn: Txn) -> dict[str, int]:
            if not lookup_text(user_id, "user id"):
                return {}
            rows = txn.execute(
                "SELECT room_id, membership_nid FROM forgotten_rooms WHERE user_id = ?", (user_id,)
            ).fetchall()
            return {r[0]: r[1] for r in rows}

        return self._store.run_read(txn_func)

    # -- redactions ---------------------------------------------------------------------

    @deferred_errors
    def index_redactions(self, batch: int = 1000) -> "Deferred[int]":
        """Index the accepted ``m.room.redaction`` events persisted since the last call
        (by the event they redact), in batches of ``batch`` events, all in one write.

        Crash-safe: the position reached is stored with the rows, so the next call (e.g.
        at start) carries on.

        :returns: Deferred firing with the number of redactions indexed.
        """

        def txn_func(txn: Txn) -> int:
            row = txn.execute("SELECT position FROM room_indexers WHERE name = ?", (_REDACTION_INDEXER,)).fetchone()
            position = 0 if row is None else row[0]
            (top,) = txn.execute("SELECT MAX(event_nid) FROM events").fetchone()
            top = top or 0
            total = 0
            while position < top:
                rows = txn.execute(
                    f"SELECT event_nid, event_id FROM events WHERE event_nid > ? AND type = 'm.room.redaction'"
                    f" AND {_VISIBLE} ORDER BY event_nid LIMIT ?",
                    (position, batch),
                ).fetchall()
                if len(rows) < batch:
                    position = top
                else:
                    position = rows[-1][0]
                if not rows:
                    break
                events = self._store.get_events_txn(txn, [r[1] for r in rows])
                entries = [
                    (ev.redacts, ev.event_id, ev.room_id)
                    for ev in events.values()
                    if ev.redacts is not None and ev.room_id is not None
                ]
                txn.executemany(
                    "INSERT INTO redactions (redacts, redaction_id, room_id) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    entries,
                )
                total += len(entries)
            txn.execute(
                "INSERT INTO room_indexers (name, position) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                (_REDACTION_INDEXER, position),
            )
            return total

        return self._store.run_write(txn_func)

    @deferred_errors
    def get_redactions(self, event_ids: Iterable[str]) -> "Deferred[dict[str, list[str]]]":
        """``{event_id: [redaction event ids]}`` for those of ``event_ids`` that have
        indexed redactions (of the same room)."""
        ids = lookup_ids(event_ids)

        def txn_func(txn: Txn) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for redacts, redaction_id in txn.select_in(
                "SELECT r.redacts, r.redaction_id FROM redactions r"
                " JOIN events e ON e.event_id = r.redacts AND e.room_id = r.room_id"
                " WHERE r.redacts IN ({}) ORDER BY r.redaction_id",
                ids,
            ):
                out.setdefault(redacts, []).append(redaction_id)
            return out

        return self._store.run_read(txn_func)

