"""Reads for serving room history and refusals: state and auth chains at events, visibility inputs, event status."""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple, Optional

from twisted.internet.defer import Deferred

from fedserver.events.model import Event
from fedserver.events.status import OutcomeStatus
from fedserver.storage.database import Txn, lookup_ids, lookup_text
from fedserver.storage.rooms.events_store import _AUTH_CHAIN_SQL
from fedserver.storage.interface import InvalidDataError, StateKey

_HISTORY_VISIBILITY: StateKey = ("m.room.history_visibility", "")

# The auth chain of some events (their auth events, recursively), leaving out rejected
# events: they are never served as auth or state.
_ACCEPTED_AUTH_CHAIN_SQL = _AUTH_CHAIN_SQL.rstrip() + "\nWHERE e.rejected = 0\n"


class VisibilityInputs(NamedTuple):
    """What deciding history visibility for one server needs, read in one transaction.

    :ivar groups: ``{event_id: (state group before, state group after)}`` for the events
        that have state (outliers have none and are absent).
    :ivar states: ``{group: {(type, state_key): event_id}}``, each holding only the
        history visibility key and the server's users' membership keys.
    :ivar server_users: the server's users with a membership in the room's current state
        (everyone of that server who ever had one, barring state resets).
    :ivar events: the history visibility and membership events ``states`` points at.
    """

    groups: dict[str, tuple[int, int]]
    states: dict[int, dict[StateKey, str]]
    server_users: tuple[str, ...]
    events: dict[str, Event]


class EventStatus(NamedTuple):
    """Everything stored about an event's fate, for operators.

    ``kind`` is :attr:`OutcomeStatus.REJECTED`, :attr:`OutcomeStatus.SOFT_FAILED` or
    ``None``; ``reason``, ``rule``,
    ``plugin`` and ``refused_ts`` come with it.
    """

    event_id: str
    event_nid: int
    room_id: str
    outlier: bool
    rejected: bool
    soft_failed: bool
    kind: Optional[OutcomeStatus]
    reason: Optional[str]
    rule: Optional[str]
    plugin: Optional[str]
    refused_ts: Optional[int]


class HistoryStore:
    """The reads of :mod:`fedserver.handlers.federation.history`, each in ONE read transaction.

    It uses only the public ``*_txn`` API of the store it is given.

    :param store: the :class:`fedserver.storage.sqlite.SQLiteStore`.
    """

    def __init__(self, store: Any) -> None:
        self._store = store

    # -- state and auth chains ----------------------------------------------------------

    def get_state_ids_at(self, event_id: str) -> "Deferred[Optional[tuple[list[str], list[str]]]]":
        """The state before ``event_id`` and its auth chain, as event ids, without
        rejected events (spec "Rejection": they are never part of the state).

        :returns: Deferred firing with ``(state ids, auth chain ids)``, or ``None`` if the
            event is not stored or has no state (an outlier).
        """
        return self._store.run_read(self._state_ids_at_txn, event_id)

    def _state_ids_at_txn(self, txn: Txn, event_id: str) -> Optional[tuple[list[str], list[str]]]:
        if not lookup_text(event_id, "event id"):
            return None
        row = txn.execute(
            "SELECT s.state_group_before, e.room_id FROM events e"
            " JOIN event_state s ON s.event_nid = e.event_nid WHERE e.event_id = ?",
            (event_id,),
        ).fetchone()
        if row is None or row[0] is None:
            return None
        state = self._store.get_state_group_txn(txn, row[0])
        ids = list(state.values())
        # Storage never puts a rejected event into a state it derives, but a state handed
        # in whole could hold one. The room's rejected events come from the (small)
        # refusals table: 20,000 state ids are not looked up one by one.
        rejected = {
            r[0]
            for r in txn.execute(
                "SELECT e.event_id FROM event_refusals r JOIN events e ON e.event_nid = r.event_nid"
                " WHERE r.kind = ? AND e.room_id = ?",
                (OutcomeStatus.REJECTED.value, row[1]),
            ).fetchall()
        }
        if rejected:
            ids = [i for i in ids if i not in rejected]
        return ids, self._auth_chain_txn(txn, ids)

    def get_auth_chain_ids(self, event_ids: Iterable[str]) -> "Deferred[list[str]]":
        """The auth chain of ``event_ids`` (auth events, recursively), without rejected
        events; the given events themselves only if one is in another's chain."""
        return self._store.run_read(self._auth_chain_txn, list(event_ids))

    @staticmethod
    def _auth_chain_txn(txn: Txn, event_ids: list[str]) -> list[str]:
        ids = lookup_ids(event_ids)
        if not ids:
            return []
        # One recursive query per 500 ids; the CTE's UNION walks a shared chain once per
        # query, and the dict keeps each id once across queries, in first-seen order.
        found: dict[str, None] = {}
        for r in txn.select_in(_ACCEPTED_AUTH_CHAIN_SQL, ids):
            found[r[0]] = None
        return list(found)

    # -- access -------------------------------------------------------------------------

    def get_room_access(self, room_id: str, server_name: str) -> "Deferred[tuple[bool, bool]]":
        """Whether we know ``room_id`` at all, and whether ``server_name`` has a user
        joined to it in its current state.

        :returns: Deferred firing with ``(room known, server joined)``.
        """
        return self._store.run_read(self._room_access_txn, room_id, server_name)

    @staticmethod
    def _room_access_txn(txn: Txn, room_id: str, server_name: str) -> tuple[bool, bool]:
        if not (lookup_text(room_id, "room id") and lookup_text(server_name, "server name")):
            return False, False
        known = txn.execute("SELECT 1 FROM rooms WHERE room_id = ?", (room_id,)).fetchone() is not None
        if not known:
            return False, False
        suffix = ":" + server_name
        rows = txn.execute(
            "SELECT state_key FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
            " AND membership = 'join' AND substr(state_key, length(state_key) - ? + 1) = ?",
            (room_id, len(suffix), suffix),
        ).fetchall()
        return True, any(r[0].partition(":")[2] == server_name for r in rows)

    # -- visibility ---------------------------------------------------------------------

    def get_visibility_inputs(
        self, room_id: str, event_ids: Iterable[str], server_name: str
    ) -> "Deferred[VisibilityInputs]":
        """Read what deciding whether ``server_name`` may see ``event_ids`` needs (see
        :class:`VisibilityInputs`), batched: one query for the groups, one for the
        server's users, one state read per distinct group (cached), one event load."""
        return self._store.run_read(self._visibility_inputs_txn, room_id, list(event_ids), server_name)

    def _visibility_inputs_txn(
        self, txn: Txn, room_id: str, event_ids: list[str], server_name: str
    ) -> VisibilityInputs:
        if not (lookup_text(room_id, "room id") and lookup_text(server_name, "server name")):
            return VisibilityInputs({}, {}, (), {})
        groups: dict[str, tuple[int, int]] = {}
        for event_id, before, after in txn.select_in(
            "SELECT e.event_id, s.state_group_before, s.state_group_after FROM events e"
            " JOIN event_state s ON s.event_nid = e.event_nid"
            " WHERE e.room_id = ? AND e.event_id IN ({})",
            lookup_ids(event_ids),
            (room_id,),
        ):
            if before is not None:
                groups[event_id] = (before, after if after is not None else before)
        suffix = ":" + server_name
        # current_state's key (room_id, type, state_key) makes this a range scan over the
        # room's members only; the exact domain test is done here, in Python.
        users = tuple(
            r[0]
            for r in txn.execute(
                "SELECT state_key FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
                " AND substr(state_key, length(state_key) - ? + 1) = ?",
                (room_id, len(suffix), suffix),
            ).fetchall()
            if r[0].partition(":")[2] == server_name
        )
        member_keys = [("m.room.member", u) for u in users]
        states: dict[int, dict[StateKey, str]] = {}
        wanted: set[str] = set()
        for group in {g for pair in groups.values() for g in pair}:
            full = self._store.get_state_group_txn(txn, group)
            small: dict[StateKey, str] = {}
            hv = full.get(_HISTORY_VISIBILITY)
            if hv is not None:
                small[_HISTORY_VISIBILITY] = hv
            for key in member_keys:
                event_id = full.get(key)
                if event_id is not None:
                    small[key] = event_id
            states[group] = small
            wanted.update(small.values())
        events = self._store.get_events_txn(txn, wanted) if wanted else {}
        return VisibilityInputs(groups, states, users, events)

    # -- refusals -----------------------------------------------------------------------

    def get_event_status(self, event_id: str) -> "Deferred[Optional[EventStatus]]":
        """Whether ``event_id`` is stored and how it fared: flags and, if it was rejected
        or soft-failed, why (reason, rule, plugin, when).

        :returns: Deferred firing with an :class:`EventStatus`, or ``None`` if the event
            is not stored.
        """
        return self._store.run_read(self._event_status_txn, event_id)

    @staticmethod
    def _event_status_txn(txn: Txn, event_id: str) -> Optional[EventStatus]:
        if type(event_id) is not str:
            raise InvalidDataError("event id must be a string")
        if not lookup_text(event_id, "event id"):
            return None
        row = txn.execute(
            "SELECT e.event_id, e.event_nid, e.room_id, e.outlier, e.rejected, e.soft_failed,"
            " r.kind, r.reason, r.rule, r.plugin, r.refused_ts FROM events e"
            " LEFT JOIN event_refusals r ON r.event_nid = e.event_nid WHERE e.event_id = ?",
            (event_id,),
        ).fetchone()
        if row is None:
            return None
        kind = None if row[6] is None else OutcomeStatus(row[6])
        return EventStatus(
            row[0], row[1], row[2], bool(row[3]), bool(row[4]), bool(row[5]), kind, *row[7:]
        )
