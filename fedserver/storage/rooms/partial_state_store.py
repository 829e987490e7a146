"""Rooms joined with partial state: the mark, the servers to use meanwhile, and the resync's rewrite of their state."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Sequence

from twisted.internet.defer import Deferred

from fedserver.storage.database import Txn, check_text, lookup_ids, lookup_text
from fedserver.storage.interface import Refusal, StateKey, UnknownEventsError


class PartialStateRoom(NamedTuple):
    """A room we joined with partial state (send_join ``members_omitted``).

    :ivar join_event_id: our join; the resync fetches the state before it.
    :ivar resident: the server that answered the send_join (asked first).
    :ivar servers: the resident's ``servers_in_room`` (sorted).
    """

    room_id: str
    join_event_id: str
    resident: str
    servers: tuple[str, ...]


class StateRewrite(NamedTuple):
    """The state of one event of a partial-state room, computed again on the full state.

    :ivar event_id: the event.
    :ivar state_before: its state before (a full map).
    :ivar rejection: set if the event fails the auth rules on that state (it was accepted
        on partial state): it becomes rejected.
    """

    event_id: str
    state_before: Mapping[StateKey, str]
    rejection: Optional[Refusal] = None


class PartialStateStore:
    """Storage of partial-state rooms (tables of schema 012).

    :param run_read: ``(func, *args) -> Deferred`` running ``func(txn, ...)`` in a read
        transaction.
    :param run_write: the same in a write transaction.
    :param events: the :class:`~fedserver.storage.rooms.events_store.EventStore` (current state,
        event cache).
    :param state_groups: the :class:`~fedserver.storage.rooms.state_groups.StateGroupStore`.
    :param clock_ms: the current time in milliseconds.
    """

    def __init__(
        self,
        run_read: Callable[..., Deferred],
        run_write: Callable[..., Deferred],
        events: Any,
        state_groups: Any,
        clock_ms: Callable[[], int],
    ) -> None:
        self._read = run_read
        self._write = run_write
        self._events = events
        self._state_groups = state_groups
        self._clock_ms = clock_ms

    # -- the mark ---------------------------------------------------------------------

    def start_txn(
        self, txn: Txn, room_id: str, join_event_id: str, resident: str, servers: Iterable[str]
    ) -> None:
        """Mark ``room_id`` as partial-state (in the transaction that stores our join)."""
        check_text(room_id, "room id")
        check_text(join_event_id, "join event id")
        check_text(resident, "resident")
        names = sorted({s for s in servers} | {resident})
        for s in names:
            check_text(s, "server name")
        txn.execute(
            "INSERT INTO partial_state_rooms (room_id, join_event_id, resident, joined_ts) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (room_id) DO UPDATE SET join_event_id = excluded.join_event_id,"
            " resident = excluded.resident, joined_ts = excluded.joined_ts",
            (room_id, join_event_id, resident, self._clock_ms()),
        )
        txn.execute("DELETE FROM partial_state_servers WHERE room_id = ?", (room_id,))
        self._events.membership_changed_txn(txn, room_id)
        txn.executemany(
            "INSERT INTO partial_state_servers (room_id, server_name) VALUES (?, ?) ON CONFLICT DO NOTHING",
            [(room_id, s) for s in names],
        )

    def mark_events_txn(self, txn: Txn, room_id: str, event_ids: Sequence[str]) -> None:
        """Record that ``event_ids`` (stored) were taken in on partial state."""
        if not event_ids:
            return
        rows = txn.select_in(
            "SELECT event_nid FROM events WHERE room_id = ? AND event_id IN ({})", lookup_ids(event_ids), (room_id,)
        )
        txn.executemany(
            "INSERT INTO partial_state_events (event_nid, room_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
            [(r[0], room_id) for r in rows],
        )

    # -- reading ----------------------------------------------------------------------

    def get_rooms(self) -> "Deferred[list[PartialStateRoom]]":
        """Every partial-state room (to resume their resyncs after a restart)."""
        return self._read(self._rooms_txn, None)

    def get_room(self, room_id: str) -> "Deferred[Optional[PartialStateRoom]]":
        """The room's partial-state record, or ``None`` if we hold its full state."""
        return self._read(self._rooms_txn, room_id).addCallback(lambda rooms: rooms[0] if rooms else None)

    @staticmethod
    def _rooms_txn(txn: Txn, room_id: Optional[str]) -> list[PartialStateRoom]:
        if room_id is None:
            rows = txn.execute("SELECT room_id, join_event_id, resident FROM partial_state_rooms ORDER BY joined_ts").fetchall()
        elif not lookup_text(room_id, "room id"):
            return []
        else:
            rows = txn.execute(
                "SELECT room_id, join_event_id, resident FROM partial_state_rooms WHERE room_id = ?", (room_id,)
            ).fetchall()
        out = []
        for rid, join_id, resident in rows:
            servers = txn.execute(
                "SELECT server_name FROM partial_state_servers WHERE room_id = ? ORDER BY server_name", (rid,)
            ).fetchall()
            out.append(PartialStateRoom(rid, join_id, resident, tuple(s[0] for s in servers)))
        return out

    @staticmethod
    def servers_txn(txn: Txn, room_id: str) -> set[str]:
        """The ``servers_in_room`` of a partial-state room (empty for other rooms)."""
        if not lookup_text(room_id, "room id"):
            return set()
        return {
            r[0] for r in txn.execute("SELECT server_name FROM partial_state_servers WHERE room_id = ?", (room_id,))
        }

    def get_events(self, room_id: str) -> "Deferred[list[str]]":
        """The events taken into the room on partial state, in the order they were stored
        (prev events first)."""

        def txn_func(txn: Txn) -> list[str]:
            if not lookup_text(room_id, "room id"):
                return []
            return [
                r[0]
                for r in txn.execute(
                    "SELECT e.event_id FROM partial_state_events p JOIN events e ON e.event_nid = p.event_nid"
                    " WHERE p.room_id = ? ORDER BY p.event_nid",
                    (room_id,),
                )
            ]

        return self._read(txn_func)

    def get_state_keys(self, room_id: str, event_ids: Iterable[str]) -> "Deferred[dict[str, StateKey]]":
        """``{event_id: (type, state_key)}`` of the stored, not rejected state events of the
        room among ``event_ids`` (to turn a ``/state_ids`` answer into a state map without
        loading 20,000 events)."""
        ids = lookup_ids(event_ids)

        def txn_func(txn: Txn) -> dict[str, StateKey]:
            rows = txn.select_in(
                "SELECT event_id, type, state_key FROM events WHERE room_id = ? AND rejected = 0"
                " AND state_key IS NOT NULL AND event_id IN ({})",
                ids,
                (room_id,),
            )
            return {r[0]: (r[1], r[2]) for r in rows}

        return self._read(txn_func)

    # -- for /sync --------------------------------------------------------------------

    def get_completion_position(self) -> "Deferred[int]":
        """The newest position of the completions stream (0 if none yet)."""

        def txn_func(txn: Txn) -> int:
            row = txn.execute("SELECT MAX(stream_id) FROM partial_state_completions").fetchone()
            return row[0] or 0

        return self._read(txn_func)

    def get_sync_view(
        self, room_ids: Iterable[str], since: Optional[int], now: int
    ) -> "Deferred[tuple[set[str], set[str]]]":
        """Among ``room_ids``: those still partial-state, and those that got their full
        state after position ``since`` (up to ``now``; none when ``since`` is ``None``).

        A room whose resync ended after ``now`` (while the caller was building its answer)
        counts as still partial: the next answer, whose token is past that end, sends it
        whole, and only that one."""
        ids = lookup_ids(room_ids)

        def txn_func(txn: Txn) -> tuple[set[str], set[str]]:
            partial = {r[0] for r in txn.select_in("SELECT room_id FROM partial_state_rooms WHERE room_id IN ({})", ids)}
            partial |= {
                r[0]
                for r in txn.select_in(
                    "SELECT room_id FROM partial_state_completions WHERE stream_id > ? AND room_id IN ({})", ids, (now,)
                )
            }
            completed: set[str] = set()
            if since is not None and since < now:
                completed = {
                    r[0]
                    for r in txn.select_in(
                        "SELECT room_id FROM partial_state_completions WHERE stream_id > ? AND stream_id <= ?"
                        " AND room_id IN ({})",
                        ids,
                        (since, now),
                    )
                }
            return partial, completed

        return self._read(txn_func)

    # -- the end of the resync --------------------------------------------------------

    def finish(
        self,
        room_id: str,
        rewrites: Sequence[StateRewrite],
        current_state: Mapping[StateKey, str],
    ) -> "Deferred[None]":
        """Store the state of the room's partial-state events as computed on the full
        state, the room's new current state, and clear the mark: one transaction.

        :param rewrites: in DAG order (prev events first).
        :param current_state: the full current state.
        :raises UnknownEventsError: if a state map names events that are not stored.
        """
        return self._write(self._finish_txn, room_id, list(rewrites), dict(current_state))

    def _finish_txn(
        self, txn: Txn, room_id: str, rewrites: list[StateRewrite], current: dict[StateKey, str]
    ) -> None:
        check_text(room_id, "room id")
        ids = [r.event_id for r in rewrites]
        rows = txn.select_in(
            "SELECT event_id, event_nid, type, state_key, rejected FROM events WHERE room_id = ? AND event_id IN ({})",
            lookup_ids(ids),
            (room_id,),
        )
        meta = {r[0]: r[1:] for r in rows}
        missing = [i for i in ids if i not in meta]
        if missing:
            raise UnknownEventsError(missing, "events of the room")
        sg = self._state_groups
        after_groups: dict[str, int] = {}
        now = self._clock_ms()
        state_rows = []
        rejected_nids = []
        for r in rewrites:
            nid, etype, state_key, was_rejected = meta[r.event_id]
            hint = None
            if after_groups:
                hint = next(reversed(after_groups.values()))
            before = sg.store_state_group_txn(txn, room_id, r.state_before, hint)
            rejected = bool(was_rejected) or r.rejection is not None
            if state_key is not None and not rejected:
                after = sg.store_state_group_txn(txn, room_id, None, before, {(etype, state_key): r.event_id})
            else:
                after = before
            after_groups[r.event_id] = after
            state_rows.append((before, after, nid))
            if r.rejection is not None and not was_rejected:
                rejected_nids.append((nid, r.rejection))
        txn.executemany(
            "UPDATE event_state SET state_group_before = ?, state_group_after = ? WHERE event_nid = ?", state_rows
        )
        if rejected_nids:
            txn.executemany(
                "UPDATE events SET rejected = 1, soft_failed = 0 WHERE event_nid = ?", [(n,) for n, _ in rejected_nids]
            )
            txn.executemany(
                "INSERT INTO event_refusals (event_nid, kind, reason, rule, plugin, refused_ts)"
                " VALUES (?, 'rejected', ?, ?, ?, ?) ON CONFLICT (event_nid) DO UPDATE SET kind = 'rejected',"
                " reason = excluded.reason, rule = excluded.rule, plugin = excluded.plugin,"
                " refused_ts = excluded.refused_ts",
                [(n, ref.reason, ref.rule, ref.plugin, now) for n, ref in rejected_nids],
            )
            txn.executemany(
                "DELETE FROM forward_extremities WHERE room_id = ? AND event_nid = ?",
                [(room_id, n) for n, _ in rejected_nids],
            )
            txn.call_after_commit(self._events.cache.invalidate, [i for i in ids])
        stored = self._events.get_current_state_ids_txn(txn, room_id)
        delta: dict[StateKey, Optional[str]] = {k: v for k, v in current.items() if stored.get(k) != v}
        delta.update({k: None for k in stored if k not in current})
        if delta:
            self._events.apply_current_state_delta_txn(txn, room_id, delta)
        stream_id = txn.allocate_ids("partial_state_completion", 1)
        txn.execute("INSERT INTO partial_state_completions (stream_id, room_id) VALUES (?, ?)", (stream_id, room_id))
        txn.execute("DELETE FROM partial_state_events WHERE room_id = ?", (room_id,))
        txn.execute("DELETE FROM partial_state_servers WHERE room_id = ?", (room_id,))
        self._events.membership_changed_txn(txn, room_id)
        txn.execute("DELETE FROM partial_state_rooms WHERE room_id = ?", (room_id,))

