"""Reads and writes for fetching history from other servers: backward extremities, the held children of fetched events, servers in a room at an event."""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, NamedTuple, Optional, Sequence

from twisted.internet.defer import Deferred

from fedserver.storage.database import Txn, check_int, lookup_ids, lookup_text
from fedserver.storage.interface import PersistedEvent, PersistEntry


class Extremity(NamedTuple):
    """A backward extremity: an event we hold in the room's DAG with prev events we lack
    (or hold only as outliers).

    :ivar event_id: the event we hold.
    :ivar depth: its depth.
    :ivar missing: its prev events we lack.
    """

    event_id: str
    depth: int
    missing: tuple[str, ...]


class HeldChild(NamedTuple):
    """An event we hold in the DAG whose prev events include one being fetched.

    :ivar event_id: the child.
    :ivar prev_event_ids: all its prev events.
    :ivar state_group_before: the group of the state before it.
    """

    event_id: str
    prev_event_ids: tuple[str, ...]
    state_group_before: int


class BackfillStore:
    """SQL for :mod:`fedserver.handlers.federation.backfill`, each call one transaction.

    :param store: the :class:`fedserver.storage.sqlite.SQLiteStore`.
    """

    def __init__(self, store: Any) -> None:
        self._store = store

    @staticmethod
    def on_persisted_txn(txn: Txn, batch: Sequence[PersistEntry], persisted: dict[str, PersistedEvent]) -> None:
        """Index the redactions among history events in their own transaction: the
        redaction indexer of :class:`~fedserver.storage.rooms.rooms_store.RoomsStore` follows
        the stream, which history (negative event numbers) never enters."""
        rows = []
        for entry in batch:
            event = entry.event
            if not entry.history or entry.outlier or entry.rejection is not None or entry.soft_failed:
                continue
            if event.type != "m.room.redaction":
                continue
            done = persisted.get(event.event_id)
            redacts = event.redacts
            if done is not None and done.stored and redacts is not None and event.room_id is not None:
                rows.append((redacts, event.event_id, event.room_id))
        if rows:
            txn.executemany(
                "INSERT INTO redactions (redacts, redaction_id, room_id) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                rows,
            )

    def get_backward_extremities(
        self, room_id: str, max_depth: int, min_depth: Optional[int] = None, limit: int = 20
    ) -> "Deferred[list[Extremity]]":
        """The room's backward extremities with ``min_depth <= depth <= max_depth``,
        deepest first: events in the DAG (accepted, not soft-failed) with a prev event we
        do not hold in the DAG. One range read over the room's events by depth."""
        check_int(max_depth, "max_depth")
        check_int(min_depth, "min_depth", nullable=True)

        def txn_func(txn: Txn) -> list[Extremity]:
            if not lookup_text(room_id, "room id") or limit <= 0:
                return []
            sql = (
                "SELECT e.event_id, e.depth, ed.prev_event_id FROM events e"
                " JOIN event_edges ed ON ed.event_nid = e.event_nid"
                " LEFT JOIN events p ON p.event_id = ed.prev_event_id"
                " WHERE e.room_id = ? AND e.outlier = 0 AND e.rejected = 0 AND e.soft_failed = 0"
                " AND e.depth <= ? AND (p.event_nid IS NULL OR p.outlier = 1)"
            )
            params: list[Any] = [room_id, max_depth]
            if min_depth is not None:
                sql += " AND e.depth >= ?"
                params.append(min_depth)
            sql += " ORDER BY e.depth DESC, e.event_nid DESC"
            found: dict[str, tuple[int, list[str]]] = {}
            for event_id, depth, prev in txn.execute(sql, params):
                entry = found.get(event_id)
                if entry is None:
                    if len(found) >= limit:
                        break
                    entry = found[event_id] = (depth, [])
                entry[1].append(prev)
            return [Extremity(e, d, tuple(p)) for e, (d, p) in found.items()]

        return self._store.run_read(txn_func)

    def get_held_children(self, event_ids: Iterable[str]) -> "Deferred[dict[str, list[HeldChild]]]":
        """``{event_id: [children]}``: the events we hold with state whose prev events
        include one of ``event_ids``."""
        ids = lookup_ids(event_ids)

        def txn_func(txn: Txn) -> dict[str, list[HeldChild]]:
            children: dict[str, list[str]] = {}
            for prev, child in txn.select_in(
                "SELECT ed.prev_event_id, e.event_id FROM event_edges ed JOIN events e ON e.event_nid = ed.event_nid"
                " WHERE e.outlier = 0 AND ed.prev_event_id IN ({})",
                ids,
            ):
                children.setdefault(prev, []).append(child)
            all_children = sorted({c for cs in children.values() for c in cs})
            if not all_children:
                return {}
            groups = {
                r[0]: r[1]
                for r in txn.select_in(
                    "SELECT e.event_id, s.state_group_before FROM events e JOIN event_state s ON s.event_nid = e.event_nid"
                    " WHERE s.state_group_before IS NOT NULL AND e.event_id IN ({})",
                    all_children,
                )
            }
            prevs: dict[str, list[str]] = {}
            for child, prev in txn.select_in(
                "SELECT e.event_id, ed.prev_event_id FROM events e JOIN event_edges ed ON ed.event_nid = e.event_nid"
                " WHERE e.event_id IN ({})",
                all_children,
            ):
                prevs.setdefault(child, []).append(prev)
            out: dict[str, list[HeldChild]] = {}
            for prev, cs in children.items():
                for c in cs:
                    if c in groups:
                        out.setdefault(prev, []).append(HeldChild(c, tuple(prevs.get(c, ())), groups[c]))
            return out

        return self._store.run_read(txn_func)

    def get_servers_at(self, event_id: str) -> "Deferred[list[str]]":
        """The servers with a user joined to the room in the state before ``event_id``
        (spec "Backfilling": "a homeserver for some of the existing users in the room at
        the earliest point in history it has currently"), most members first."""

        def txn_func(txn: Txn) -> list[str]:
            if not lookup_text(event_id, "event id"):
                return []
            row = txn.execute(
                "SELECT s.state_group_before FROM events e JOIN event_state s ON s.event_nid = e.event_nid"
                " WHERE e.event_id = ?",
                (event_id,),
            ).fetchone()
            if row is None or row[0] is None:
                return []
            state = self._store.get_state_group_txn(txn, row[0])
            member_ids = [v for (t, _), v in state.items() if t == "m.room.member"]
            counts: Counter[str] = Counter()
            for state_key, membership in txn.select_in(
                "SELECT state_key, membership FROM events WHERE event_id IN ({})", member_ids
            ):
                if membership == "join" and isinstance(state_key, str) and ":" in state_key:
                    counts[state_key.split(":", 1)[1]] += 1
            return [server for server, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]

        return self._store.run_read(txn_func)
