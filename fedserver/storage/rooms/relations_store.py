"""Relations between events: the index of m.relates_to (kept in the persisting transaction) and the reads for /relations, /threads and bundled aggregations."""

# A row per accepted, non-outlier event whose content declares a relation (see
# fedserver.relations.aggregation.parse_relation), written in the same transaction as the
# event (so a crash never leaves an event without its row). Events stored before schema
# 006 are indexed once by catch_up(), from the newest event number the upgrade recorded
# down to the oldest, in batches that each commit with their progress.
#
# Positions are the topological (depth, event_nid) of the child, the order /messages
# pages in, so /relations accepts /messages and /sync tokens.

from __future__ import annotations

from typing import Any, Collection, Iterable, NamedTuple, Optional, Sequence

from twisted.internet.defer import Deferred

from fedserver.relations.aggregation import ANNOTATION, REFERENCE, REPLACE, THREAD, parse_relation
from fedserver.storage.database import Txn, check_int, lookup_ids, lookup_text
from fedserver.storage.interface import PersistedEvent, PersistEntry

#: ``(depth, event_nid)``: a place in a room's topological order.
TopoPos = tuple[int, int]

#: Events the catch-up indexes per transaction.
CATCH_UP_BATCH = 1000
#: Largest page of children or thread roots.
MAX_PAGE = 1000
#: Thread events read per root to find the latest one that is not redacted.
LATEST_CANDIDATES = 5

_CATCH_UP = "relations_catchup"


class AggregationRows(NamedTuple):
    """What bundling aggregations for some parents needs, read in one transaction.

    :ivar edits: ``{parent: [edit event ids]}`` (``m.replace`` children).
    :ivar threads: ``{root: (count, [newest thread event ids, newest first])}``.
    :ivar participated: the roots whose thread the user sent an event in.
    :ivar references: ``{parent: [ids of m.reference children, oldest first]}``.
    :ivar redacted: those of the children above with a redaction indexed (whether it
        applies is for the caller to decide).
    """

    edits: dict[str, list[str]]
    threads: dict[str, tuple[int, list[str]]]
    participated: set[str]
    references: dict[str, list[str]]
    redacted: set[str]


class ThreadRoot(NamedTuple):
    """A thread root and the position of its newest thread event (the /threads order)."""

    root_id: str
    latest: TopoPos


class RelationsStore:
    """SQL for relations, with a Deferred API (each call one transaction).

    :param store: the :class:`fedserver.storage.sqlite.SQLiteStore`.
    """

    def __init__(self, store: Any) -> None:
        self._store = store

    # -- writing ---------------------------------------------------------------------------

    @staticmethod
    def on_persisted_txn(txn: Txn, batch: Sequence[PersistEntry], persisted: dict[str, PersistedEvent]) -> None:
        """Index the relations of the accepted events a persist just stored (inside its
        transaction)."""
        rows = []
        for entry in batch:
            if entry.outlier or entry.rejection is not None or entry.soft_failed or entry.soft_failure is not None:
                continue
            done = persisted.get(entry.event.event_id)
            if done is None or not done.stored:
                continue
            row = _row(done.event_nid, entry.event)
            if row is not None:
                rows.append(row)
        if rows:
            _insert(txn, rows)

    def catch_up(self, batch: int = CATCH_UP_BATCH) -> "Deferred[int]":
        """Index the events stored before relations were indexed (schema 006 recorded
        where to start), one transaction per ``batch`` events, until none is left.

        :returns: Deferred firing with the number of relations indexed.
        """
        from twisted.internet import defer

        async def run() -> int:
            total = 0
            while True:
                done, found = await self._store.run_write(self._catch_up_txn, batch)
                total += found
                if done:
                    return total

        return defer.ensureDeferred(run())

    def _catch_up_txn(self, txn: Txn, batch: int) -> tuple[bool, int]:
        row = txn.execute("SELECT position FROM room_indexers WHERE name = ?", (_CATCH_UP,)).fetchone()
        if row is None:
            return True, 0
        position = row[0]
        nids = txn.execute(
            "SELECT event_nid, event_id FROM events WHERE event_nid <= ?"
            " AND outlier = 0 AND rejected = 0 AND soft_failed = 0 ORDER BY event_nid DESC LIMIT ?",
            (position, batch),
        ).fetchall()
        if not nids:
            txn.execute("DELETE FROM room_indexers WHERE name = ?", (_CATCH_UP,))
            return True, 0
        events = self._store.get_events_txn(txn, [r[1] for r in nids])
        rows = []
        for nid, event_id in nids:
            event = events.get(event_id)
            row = _row(nid, event) if event is not None else None
            if row is not None:
                rows.append(row)
        if rows:
            _insert(txn, rows)
        txn.execute("UPDATE room_indexers SET position = ? WHERE name = ?", (nids[-1][0] - 1, _CATCH_UP))
        return False, len(rows)

    # -- children ----------------------------------------------------------------------------

    def get_children(
        self,
        room_id: str,
        parent_ids: Iterable[str],
        *,
        rel_type: Optional[str] = None,
        event_type: Optional[str] = None,
        from_pos: Optional[TopoPos] = None,
        to_pos: Optional[TopoPos] = None,
        backwards: bool = True,
        limit: int = 50,
    ) -> "Deferred[list[tuple[TopoPos, str, str]]]":
        """Children of ``parent_ids`` in topological order from a boundary (as
        :meth:`fedserver.storage.rooms.rooms_store.RoomsStore.paginate`: backwards, the
        children at or before ``from_pos``, newest first; forwards, those after it).

        :returns: Deferred firing with ``[((depth, nid), child id, parent id)]``.
        """
        parents = lookup_ids(parent_ids)
        limit = max(0, min(int(limit), MAX_PAGE))

        def txn_func(txn: Txn) -> list[tuple[TopoPos, str, str]]:
            if not parents or limit == 0 or not lookup_text(room_id, "room id"):
                return []
            sql = "SELECT depth, event_nid, event_id, relates_to FROM event_relations WHERE room_id = ?"
            params: list[Any] = [room_id]
            for column, value in (("rel_type", rel_type), ("event_type", event_type)):
                if value is not None:
                    if not lookup_text(value, column):
                        return []
                    sql += f" AND {column} = ?"
                    params.append(value)
            later = " AND (depth > ? OR (depth = ? AND event_nid > ?))"
            no_later = " AND (depth < ? OR (depth = ? AND event_nid <= ?))"
            if from_pos is not None:
                sql += no_later if backwards else later
                params += [from_pos[0], from_pos[0], from_pos[1]]
            if to_pos is not None:
                sql += later if backwards else no_later
                params += [to_pos[0], to_pos[0], to_pos[1]]
            order = "depth DESC, event_nid DESC" if backwards else "depth, event_nid"
            rows: list[tuple] = []
            for chunk in _chunks(parents, 500):
                marks = ", ".join("?" * len(chunk))
                rows.extend(txn.execute(
                    f"{sql} AND relates_to IN ({marks}) ORDER BY {order} LIMIT ?", [*params, *chunk, limit]
                ).fetchall())
            rows.sort(key=lambda r: (r[0], r[1]), reverse=backwards)
            return [((r[0], r[1]), r[2], r[3]) for r in rows[:limit]]

        return self._store.run_read(txn_func)

    # -- aggregations ----------------------------------------------------------------------

    def get_aggregation_rows(
        self, room_id: str, parent_ids: Iterable[str], user_id: Optional[str],
        exclude_senders: Collection[str] = frozenset(),
    ) -> "Deferred[AggregationRows]":
        """Everything :class:`AggregationRows` lists for ``parent_ids`` (of ``room_id``),
        in one read transaction.

        :param exclude_senders: children sent by these users are left out: not listed,
            not counted in threads, never a thread's latest event (the users the reader
            ignores: spec "Aggregations of child events").
        """
        parents = lookup_ids(parent_ids)
        excluded = frozenset(exclude_senders)

        def txn_func(txn: Txn) -> AggregationRows:
            out = AggregationRows({}, {}, set(), {}, set())
            if not parents or not lookup_text(room_id, "room id"):
                return out
            children: list[str] = []
            for parent, rel_type, child, sender in txn.select_in(
                "SELECT relates_to, rel_type, event_id, sender FROM event_relations"
                " WHERE room_id = ? AND rel_type IN (?, ?) AND relates_to IN ({})"
                " ORDER BY depth, event_nid",
                parents,
                (room_id, REPLACE, REFERENCE),
            ):
                if sender in excluded:
                    continue
                target = out.edits if rel_type == REPLACE else out.references
                target.setdefault(parent, []).append(child)
                children.append(child)
            counts: dict[str, int] = {}
            skipped: dict[str, int] = {}  # thread events of excluded senders, per root
            for root, sender, n in txn.select_in(
                "SELECT relates_to, sender, COUNT(*) FROM event_relations"
                " WHERE room_id = ? AND rel_type = ? AND relates_to IN ({}) GROUP BY relates_to, sender",
                parents,
                (room_id, THREAD),
            ):
                if sender in excluded:
                    skipped[root] = skipped.get(root, 0) + n
                else:
                    counts[root] = counts.get(root, 0) + n
            for root, count in counts.items():
                # Enough rows that LATEST_CANDIDATES of them are not excluded.
                rows = txn.execute(
                    "SELECT event_id, sender FROM event_relations WHERE relates_to = ? AND room_id = ? AND rel_type = ?"
                    " ORDER BY depth DESC, event_nid DESC LIMIT ?",
                    (root, room_id, THREAD, LATEST_CANDIDATES + skipped.get(root, 0)),
                ).fetchall()
                latest = [r[0] for r in rows if r[1] not in excluded][:LATEST_CANDIDATES]
                out.threads[root] = (count, latest)
                children.extend(latest)
            if counts and user_id is not None and lookup_text(user_id, "user id"):
                out.participated.update(
                    r[0]
                    for r in txn.select_in(
                        "SELECT DISTINCT relates_to FROM event_relations"
                        " WHERE room_id = ? AND rel_type = ? AND sender = ? AND relates_to IN ({})",
                        list(counts),
                        (room_id, THREAD, user_id),
                    )
                )
            # Redactions of thread events count against the thread too: all of them.
            thread_redacted = txn.select_in(
                "SELECT DISTINCT er.event_id FROM event_relations er JOIN redactions r ON r.redacts = er.event_id"
                " WHERE er.room_id = ? AND er.rel_type = ? AND er.relates_to IN ({})",
                list(counts),
                (room_id, THREAD),
            ) if counts else []
            out.redacted.update(r[0] for r in thread_redacted)
            if children:
                out.redacted.update(
                    r[0] for r in txn.select_in("SELECT DISTINCT redacts FROM redactions WHERE redacts IN ({})", children)
                )
            return out

        return self._store.run_read(txn_func)

    def get_redacted_thread_events(
        self, room_id: str, root_id: str, exclude_senders: Collection[str] = frozenset()
    ) -> "Deferred[list[str]]":
        """The thread events of ``root_id`` that have an indexed redaction (those sent by
        ``exclude_senders`` left out)."""
        excluded = frozenset(exclude_senders)

        def txn_func(txn: Txn) -> list[str]:
            if not (lookup_text(room_id, "room id") and lookup_text(root_id, "event id")):
                return []
            rows = txn.execute(
                "SELECT DISTINCT er.event_id, er.sender FROM event_relations er JOIN redactions r ON r.redacts = er.event_id"
                " WHERE er.relates_to = ? AND er.room_id = ? AND er.rel_type = ?",
                (root_id, room_id, THREAD),
            ).fetchall()
            return [r[0] for r in rows if r[1] not in excluded]

        return self._store.run_read(txn_func)

    # -- threads -----------------------------------------------------------------------------

    def get_thread_roots(
        self,
        room_id: str,
        *,
        participant: Optional[str] = None,
        before: Optional[TopoPos] = None,
        limit: int = 50,
    ) -> "Deferred[list[ThreadRoot]]":
        """The room's thread roots, the one with the newest thread event first (spec
        ``GET /threads``: "ordered by the latest_event in each event's aggregated
        children").

        :param participant: only threads this user sent the root of or an event in.
        :param before: only roots whose newest thread event is before this position.
        """
        limit = max(0, min(int(limit), MAX_PAGE))
        if before is not None:
            check_int(before[0], "depth")
            check_int(before[1], "event_nid")

        def txn_func(txn: Txn) -> list[ThreadRoot]:
            if limit == 0 or not lookup_text(room_id, "room id"):
                return []
            sql = "SELECT er.relates_to, MAX(er.depth), MAX(er.event_nid) FROM event_relations er WHERE er.room_id = ? AND er.rel_type = ?"
            params: list[Any] = [room_id, THREAD]
            if participant is not None:
                if not lookup_text(participant, "user id"):
                    return []
                sql += (
                    " AND (EXISTS (SELECT 1 FROM events e WHERE e.event_id = er.relates_to AND e.sender = ?)"
                    " OR EXISTS (SELECT 1 FROM event_relations x WHERE x.relates_to = er.relates_to"
                    " AND x.room_id = er.room_id AND x.rel_type = ? AND x.sender = ?))"
                )
                params += [participant, THREAD, participant]
            sql += " GROUP BY er.relates_to"
            if before is not None:
                sql += " HAVING MAX(er.depth) < ? OR (MAX(er.depth) = ? AND MAX(er.event_nid) < ?)"
                params += [before[0], before[0], before[1]]
            sql += " ORDER BY MAX(er.depth) DESC, MAX(er.event_nid) DESC LIMIT ?"
            params.append(limit)
            return [ThreadRoot(r[0], (r[1], r[2])) for r in txn.execute(sql, params).fetchall()]

        return self._store.run_read(txn_func)

    def has_annotation(self, room_id: str, parent_id: str, sender: str, event_type: str, key: str) -> "Deferred[list[str]]":
        """The events of ``sender`` annotating ``parent_id`` with ``key`` (spec "Avoiding
        duplicate annotations")."""

        def txn_func(txn: Txn) -> list[str]:
            if not all(lookup_text(v, "id") for v in (room_id, parent_id, sender, event_type)):
                return []
            rows = txn.execute(
                "SELECT er.event_id FROM event_relations er"
                " WHERE er.relates_to = ? AND er.room_id = ? AND er.rel_type = ? AND er.sender = ? AND er.event_type = ?",
                (parent_id, room_id, ANNOTATION, sender, event_type),
            ).fetchall()
            ids = [r[0] for r in rows]
            events = self._store.get_events_txn(txn, ids)
            out = []
            for event_id in ids:
                ev = events.get(event_id)
                rel = parse_relation(ev.content) if ev is not None else None
                if rel is not None and rel.key == key:
                    out.append(event_id)
            return out

        return self._store.run_read(txn_func)


def _row(nid: int, event: Any) -> Optional[tuple]:
    rel = parse_relation(event.content)
    if rel is None or event.room_id is None:
        return None
    return (nid, event.event_id, event.room_id, rel.event_id, rel.rel_type, event.type, event.sender,
            event.depth, event.origin_server_ts)


def _insert(txn: Txn, rows: list[tuple]) -> None:
    txn.executemany(
        "INSERT INTO event_relations (event_nid, event_id, room_id, relates_to, rel_type, event_type, sender,"
        " depth, origin_server_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_nid) DO NOTHING",
        rows,
    )


def _chunks(items: Sequence[str], size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]
