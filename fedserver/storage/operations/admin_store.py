"""What operators read and change: user and room listings, blocked rooms, purges, destinations, metrics figures."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from twisted.internet.defer import Deferred

from fedserver.storage.database import Database, Txn, check_int, check_text, lookup_text

#: State events whose content the room listing shows (state key "").
ROOM_SUMMARY_TYPES = (
    "m.room.name", "m.room.canonical_alias", "m.room.join_rules", "m.room.guest_access",
    "m.room.history_visibility", "m.room.encryption", "m.room.create", "m.room.avatar", "m.room.topic",
)

#: Tables keyed by ``event_nid`` whose rows go with a purged event. Areas that add such a
#: table add it here (deletes run in this order, before ``events``).
EVENT_NID_TABLES = ("event_refusals", "event_edges", "event_auth", "event_state")
#: Tables keyed by ``room_id`` emptied for a room when it is deleted with ``purge``, in
#: this order (dependants first), besides the event tables above and the state groups.
ROOM_ID_TABLES = (
    "current_state", "forward_extremities", "room_aliases", "client_transactions", "redactions",
    "forgotten_rooms", "remote_memberships",
)


def like_pattern(text: str) -> str:
    """``%text%`` for ``LIKE ? ESCAPE '\\'``, with ``%``, ``_`` and ``\\`` in ``text`` matched literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@dataclass(frozen=True, slots=True)
class UserRow:
    """One local user for the admin listing (never the password hash)."""

    user_id: str
    created_ts: int
    admin: bool
    deactivated: bool
    is_guest: bool
    user_type: Optional[str]
    displayname: Optional[str]
    avatar_url: Optional[str]
    has_password: bool


@dataclass(frozen=True, slots=True)
class RoomRow:
    """One room for the admin listing.

    :ivar state: ``{event type: content}`` of the :data:`ROOM_SUMMARY_TYPES` the room has.
    """

    room_id: str
    room_version: str
    creator: Optional[str]
    is_public: bool
    joined_members: int
    joined_local_members: int
    local_users_in_room: int
    state_events: int
    state: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DestinationRow:
    """One destination: back-off state and queue."""

    destination: str
    failure_ts: Optional[int]
    retry_interval_ms: Optional[int]
    queued: int


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """What a history purge removed.

    :ivar deleted_events: events deleted.
    :ivar kept_state_events: state events before the point, kept for the room's state.
    """

    deleted_events: int
    kept_state_events: int


def _content(blob: Any) -> dict[str, Any]:
    try:
        pdu = json.loads(blob)
    except (TypeError, ValueError):
        return {}
    content = pdu.get("content") if isinstance(pdu, dict) else None
    return content if isinstance(content, dict) else {}


class AdminStore:
    """Storage for the admin API, the admin CLI and the metrics.

    :param db: the database.
    :param clock_ms: the current time in milliseconds.
    :param forget_events: ``(event_ids) -> None`` dropping purged events from the event
        cache (called after the purge commits).
    """

    def __init__(
        self,
        db: Database,
        clock_ms: Callable[[], int],
        *,
        forget_events: Optional[Callable[[list[str]], None]] = None,
    ) -> None:
        self._db = db
        self._clock_ms = clock_ms
        self._forget_events = forget_events

    # -- users ------------------------------------------------------------------------

    def list_users(
        self,
        *,
        offset: int = 0,
        limit: int = 100,
        name: Optional[str] = None,
        deactivated: bool = False,
        admins: Optional[bool] = None,
        guests: bool = True,
        order_by: str = "name",
        backwards: bool = False,
    ) -> "Deferred[tuple[list[UserRow], int]]":
        """A page of local users and how many match in all.

        :param name: only users whose id or display name contains this (case-insensitive).
        :param deactivated: include deactivated users.
        :param admins: only admins (``True``), only non-admins (``False``), or all.
        :param order_by: ``name`` (user id), ``creation_ts`` or ``displayname``.
        """
        columns = {"name": "u.user_id", "creation_ts": "u.created_ts", "displayname": "p.displayname"}
        column = columns.get(order_by, "u.user_id")
        direction = "DESC" if backwards else "ASC"
        where = ["1 = 1"]
        params: list[Any] = []
        if name:
            if not lookup_text(name, "name"):
                return _succeed(([], 0))
            where.append("(LOWER(u.user_id) LIKE ? ESCAPE '\\' OR LOWER(COALESCE(p.displayname, '')) LIKE ? ESCAPE '\\')")
            params += [like_pattern(name.lower())] * 2
        if not deactivated:
            where.append("u.deactivated = 0")
        if admins is not None:
            where.append("u.admin = ?")
            params.append(int(admins))
        if not guests:
            where.append("u.is_guest = 0")
        clause = " AND ".join(where)

        def txn_func(txn: Txn) -> tuple[list[UserRow], int]:
            total = txn.execute(
                f"SELECT COUNT(*) FROM users u LEFT JOIN profiles p ON p.user_id = u.user_id WHERE {clause}", params
            ).fetchone()[0]
            rows = txn.execute(
                "SELECT u.user_id, u.created_ts, u.admin, u.deactivated, u.is_guest, u.user_type,"
                " p.displayname, p.avatar_url, u.password_hash IS NOT NULL"
                f" FROM users u LEFT JOIN profiles p ON p.user_id = u.user_id WHERE {clause}"
                f" ORDER BY {column} {direction}, u.user_id {direction} LIMIT ? OFFSET ?",
                [*params, limit, offset],
            ).fetchall()
            return [_user_row(r) for r in rows], int(total)

        return self._db.run_read(txn_func)

    def get_user(self, user_id: str) -> "Deferred[Optional[UserRow]]":
        """One local user, or ``None``."""

        def txn_func(txn: Txn) -> Optional[UserRow]:
            if not lookup_text(user_id, "user_id"):
                return None
            row = txn.execute(
                "SELECT u.user_id, u.created_ts, u.admin, u.deactivated, u.is_guest, u.user_type,"
                " p.displayname, p.avatar_url, u.password_hash IS NOT NULL"
                " FROM users u LEFT JOIN profiles p ON p.user_id = u.user_id WHERE u.user_id = ?",
                (user_id,),
            ).fetchone()
            return None if row is None else _user_row(row)

        return self._db.run_read(txn_func)

    def reactivate_user(self, user_id: str) -> "Deferred[bool]":
        """Clear the deactivated flag (the user needs a new password to log in); rooms
        still to be left after the deactivation (schema 017) are no longer left at the
        next start."""
        check_text(user_id, "user_id")

        def txn_func(txn: Txn) -> bool:
            if not txn.execute("UPDATE users SET deactivated = 0 WHERE user_id = ?", (user_id,)).rowcount:
                return False
            txn.execute("DELETE FROM users_pending_deactivation WHERE user_id = ?", (user_id,))
            return True

        return self._db.run_write(txn_func)

    def get_local_memberships(self, user_id: str) -> "Deferred[list[tuple[str, str]]]":
        """``[(room_id, membership)]`` of the user in rooms here whose current membership is
        join, invite or knock."""

        def txn_func(txn: Txn) -> list[tuple[str, str]]:
            if not lookup_text(user_id, "user_id"):
                return []
            rows = txn.execute(
                "SELECT room_id, membership FROM current_state WHERE type = 'm.room.member' AND state_key = ?"
                " AND membership IN ('join', 'invite', 'knock') ORDER BY room_id",
                (user_id,),
            ).fetchall()
            return [(r[0], r[1]) for r in rows]

        return self._db.run_read(txn_func)

    # -- rooms ------------------------------------------------------------------------

    def list_rooms(self, server_name: str, room_ids: Optional[Sequence[str]] = None) -> "Deferred[list[RoomRow]]":
        """Every room this server knows (or those of ``room_ids``), with member counts and
        the summary state (:data:`ROOM_SUMMARY_TYPES`). Sorting, searching and paging are
        the caller's: a server has thousands of rooms, not millions."""
        local_suffix = ":" + server_name  # a local user's id ends with it (exactly)

        def txn_func(txn: Txn) -> list[RoomRow]:
            if room_ids is None:
                rooms = txn.execute("SELECT room_id, room_version, creator, is_public FROM rooms ORDER BY room_id").fetchall()
            else:
                ids = [r for r in room_ids if lookup_text(r, "room id")]
                rooms = txn.select_in(
                    "SELECT room_id, room_version, creator, is_public FROM rooms WHERE room_id IN ({})", ids
                ) if ids else []
            counts: dict[str, list[int]] = {r[0]: [0, 0, 0, 0] for r in rooms}
            for room_id, membership, local, n in txn.execute(
                "SELECT room_id, membership,"
                " CASE WHEN substr(state_key, length(state_key) - ? + 1) = ? THEN 1 ELSE 0 END, COUNT(*)"
                " FROM current_state WHERE type = 'm.room.member' GROUP BY 1, 2, 3",
                (len(local_suffix), local_suffix),
            ).fetchall():
                c = counts.get(room_id)
                if c is None:
                    continue
                if membership == "join":
                    c[0] += n
                    if local:
                        c[1] += n
                if local and membership in ("join", "invite", "knock"):
                    c[2] += n
            for room_id, n in txn.execute("SELECT room_id, COUNT(*) FROM current_state GROUP BY room_id").fetchall():
                if room_id in counts:
                    counts[room_id][3] = n
            state: dict[str, dict[str, Any]] = {r[0]: {} for r in rooms}
            rows = txn.select_in(
                "SELECT c.room_id, c.type, e.json FROM current_state c JOIN events e ON e.event_nid = c.event_nid"
                " WHERE c.state_key = '' AND c.type IN ({})",
                list(ROOM_SUMMARY_TYPES),
            )
            for room_id, event_type, blob in rows:
                if room_id in state:
                    state[room_id][event_type] = _content(blob)
            return [
                RoomRow(r[0], r[1], r[2], bool(r[3]), counts[r[0]][0], counts[r[0]][1], counts[r[0]][2],
                        counts[r[0]][3], state[r[0]])
                for r in rooms
            ]

        return self._db.run_read(txn_func)

    # -- blocked rooms ----------------------------------------------------------------

    def block_room(self, room_id: str, blocked_by: Optional[str]) -> "Deferred[None]":
        """Block ``room_id`` (again: the first block is kept)."""
        check_text(room_id, "room_id")
        check_text(blocked_by, "blocked_by", nullable=True)
        now = self._clock_ms()
        return self._db.run_write(
            lambda txn: txn.execute(
                "INSERT INTO blocked_rooms (room_id, blocked_by, blocked_ts) VALUES (?, ?, ?)"
                " ON CONFLICT (room_id) DO NOTHING",
                (room_id, blocked_by, now),
            ) and None
        )

    def unblock_room(self, room_id: str) -> "Deferred[bool]":
        """Unblock; ``False`` if it was not blocked."""
        check_text(room_id, "room_id")
        return self._db.run_write(
            lambda txn: txn.execute("DELETE FROM blocked_rooms WHERE room_id = ?", (room_id,)).rowcount > 0
        )

    def get_blocked_rooms(self) -> "Deferred[dict[str, tuple[Optional[str], int]]]":
        """``{room_id: (blocked_by, blocked_ts)}``."""
        return self._db.run_read(
            lambda txn: {
                r[0]: (r[1], r[2])
                for r in txn.execute("SELECT room_id, blocked_by, blocked_ts FROM blocked_rooms").fetchall()
            }
        )

    # -- purging ------------------------------------------------------------------------

    def purge_history(
        self,
        room_id: str,
        *,
        before_depth: Optional[int] = None,
        before_ts: Optional[int] = None,
        local_suffix: Optional[str] = None,
    ) -> "Deferred[PurgeResult]":
        """Delete the room's events older than a point: those with a depth below
        ``before_depth``, or sent (``origin_server_ts``) before ``before_ts``.

        Kept whatever their age, because the room needs them: state events (the room's
        state at any point, and every event's auth chain, is made of them), the forward
        extremities (new events cite them), and redactions (a kept event they redact must
        stay redacted). Events of local users are kept too when ``local_suffix``
        (``:server_name``) is given. One transaction; the event cache forgets what went.

        :raises ValueError: unless exactly one of ``before_depth`` / ``before_ts`` is given.
        """
        if (before_depth is None) == (before_ts is None):
            raise ValueError("give exactly one of before_depth and before_ts")
        check_text(room_id, "room_id")
        column, point = ("depth", before_depth) if before_depth is not None else ("origin_server_ts", before_ts)
        check_int(point, column)

        def txn_func(txn: Txn) -> tuple[PurgeResult, list[str]]:
            sql = (
                f"SELECT e.event_nid, e.event_id FROM events e WHERE e.room_id = ? AND e.{column} < ?"
                " AND e.state_key IS NULL AND e.type != 'm.room.redaction'"
                " AND NOT EXISTS (SELECT 1 FROM forward_extremities f WHERE f.event_nid = e.event_nid)"
            )
            params: list[Any] = [room_id, point]
            if local_suffix is not None:
                sql += " AND substr(e.sender, length(e.sender) - ? + 1) != ?"
                params += [len(local_suffix), local_suffix]
            doomed = txn.execute(sql, params).fetchall()
            kept = txn.execute(
                f"SELECT COUNT(*) FROM events WHERE room_id = ? AND {column} < ? AND state_key IS NOT NULL",
                (room_id, point),
            ).fetchone()[0]
            nids = [r[0] for r in doomed]
            ids = [r[1] for r in doomed]
            self._delete_events_txn(txn, nids, ids)
            return PurgeResult(len(nids), int(kept)), ids

        return self._db.run_write(txn_func).addCallback(self._forgot)

    def delete_room_data(self, room_id: str) -> "Deferred[int]":
        """Delete everything stored about a room: its events, state, aliases, memberships
        (the ``purge`` of a room deletion). The blocked-rooms entry is kept.

        :returns: Deferred firing with how many events went.
        """
        check_text(room_id, "room_id")

        def txn_func(txn: Txn) -> tuple[int, list[str]]:
            rows = txn.execute("SELECT event_nid, event_id FROM events WHERE room_id = ?", (room_id,)).fetchall()
            txn.execute(
                "DELETE FROM state_group_entries WHERE group_id IN (SELECT group_id FROM state_groups WHERE room_id = ?)",
                (room_id,),
            )
            for table in ROOM_ID_TABLES:
                txn.execute(f"DELETE FROM {table} WHERE room_id = ?", (room_id,))
            self._delete_events_txn(txn, [r[0] for r in rows], [r[1] for r in rows])
            txn.execute("DELETE FROM state_groups WHERE room_id = ?", (room_id,))
            txn.execute("DELETE FROM rooms WHERE room_id = ?", (room_id,))
            return len(rows), [r[1] for r in rows]

        return self._db.run_write(txn_func).addCallback(self._forgot)

    def _forgot(self, result: tuple[Any, list[str]]) -> Any:
        value, ids = result
        if ids and self._forget_events is not None:
            self._forget_events(ids)
        return value

    @staticmethod
    def _delete_events_txn(txn: Txn, nids: list[int], ids: list[str]) -> None:
        if not nids:
            return
        for table in EVENT_NID_TABLES:
            txn.select_in(f"DELETE FROM {table} WHERE event_nid IN ({{}})", nids)
        txn.select_in("DELETE FROM redactions WHERE redacts IN ({})", ids)
        txn.select_in("DELETE FROM client_transactions WHERE event_id IN ({})", ids)
        txn.select_in("DELETE FROM events WHERE event_nid IN ({})", nids)

    # -- destinations -------------------------------------------------------------------

    def list_destinations(self, name: Optional[str] = None) -> "Deferred[list[DestinationRow]]":
        """Every destination we have sent to or queued for (by name), with its back-off
        state and queued items; ``name``: only those containing it."""

        def txn_func(txn: Txn) -> list[DestinationRow]:
            queued = dict(txn.execute("SELECT destination, COUNT(*) FROM outbound_queue GROUP BY destination").fetchall())
            rows = {
                r[0]: (r[1], r[2])
                for r in txn.execute("SELECT destination, failure_ts, retry_interval_ms FROM destinations").fetchall()
            }
            names = sorted(set(queued) | set(rows))
            if name:
                names = [n for n in names if name.lower() in n.lower()]
            return [DestinationRow(n, *rows.get(n, (None, None)), int(queued.get(n, 0))) for n in names]

        return self._db.run_read(txn_func)

    # -- metrics --------------------------------------------------------------------------

    def metrics_figures(self, server_name: str) -> "Deferred[dict[str, Any]]":
        """The figures :class:`fedserver.metrics.Sample` holds, in one read transaction."""
        local_suffix = ":" + server_name

        def txn_func(txn: Txn) -> dict[str, Any]:
            users = dict(txn.execute("SELECT deactivated, COUNT(*) FROM users GROUP BY deactivated").fetchall())
            joined = txn.execute(
                "SELECT COUNT(DISTINCT room_id) FROM current_state WHERE type = 'm.room.member'"
                " AND membership = 'join' AND substr(state_key, length(state_key) - ? + 1) = ?",
                (len(local_suffix), local_suffix),
            ).fetchone()[0]
            queue = dict(txn.execute("SELECT destination, COUNT(*) FROM outbound_queue GROUP BY destination").fetchall())
            backoff = dict(txn.execute(
                "SELECT destination, retry_interval_ms FROM destinations"
                " WHERE failure_ts IS NOT NULL AND retry_interval_ms > 0"
            ).fetchall())
            return {
                "users_active": int(users.get(0, 0)),
                "users_deactivated": int(users.get(1, 0)),
                "joined_rooms": int(joined),
                "queue_depth": queue,
                "backoff_ms": backoff,
            }

        return self._db.run_read(txn_func)


def _user_row(r: Sequence[Any]) -> UserRow:
    return UserRow(r[0], r[1], bool(r[2]), bool(r[3]), bool(r[4]), r[5], r[6], r[7], bool(r[8]))


def _succeed(value: Any) -> Deferred:
    from twisted.internet.defer import succeed

    return succeed(value)


__all__ = [
    "AdminStore",
    "DestinationRow",
    "EVENT_NID_TABLES",
    "PurgeResult",
    "ROOM_ID_TABLES",
    "RoomRow",
    "UserRow",
    "like_pattern",
]
