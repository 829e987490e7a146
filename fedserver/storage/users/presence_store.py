"""Storage for presence (schema 007): the latest state of local and remote users."""

from __future__ import annotations

from typing import Iterable, NamedTuple, Optional

from twisted.internet.defer import Deferred

from fedserver.storage.database import Database, Txn, check_int, check_text, lookup_ids, lookup_text

#: The rooms a user is joined to (one parameter: the user id).
_JOINED_ROOMS = (
    "SELECT room_id FROM current_state WHERE type = 'm.room.member' AND state_key = ? AND membership = 'join'"
)


class PresenceRow(NamedTuple):
    """A user's presence as stored."""

    user_id: str
    state: str
    status_msg: Optional[str]
    last_active_ts: int
    currently_active: bool
    stream_id: int


_COLUMNS = "user_id, state, status_msg, last_active_ts, currently_active, stream_id"


def _row(r: tuple) -> PresenceRow:
    return PresenceRow(r[0], r[1], r[2], r[3], bool(r[4]), r[5])


class PresenceStore:
    """SQL for presence; every method is one transaction and returns a Deferred.

    :param db: the :class:`fedserver.storage.database.Database`.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def set_presence(
        self, user_id: str, state: str, status_msg: Optional[str], last_active_ts: int, currently_active: bool
    ) -> "Deferred[PresenceRow]":
        """Store a user's presence with a new stream id.

        :returns: Deferred firing with the stored row.
        """

        def txn(t: Txn) -> PresenceRow:
            check_text(user_id, "user_id")
            check_text(state, "state")
            check_text(status_msg, "status_msg", nullable=True)
            check_int(last_active_ts, "last_active_ts")
            stream_id = t.allocate_ids("presence", 1)
            t.execute(
                f"INSERT INTO presence ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, status_msg = excluded.status_msg,"
                " last_active_ts = excluded.last_active_ts, currently_active = excluded.currently_active,"
                " stream_id = excluded.stream_id",
                (user_id, state, status_msg, last_active_ts, int(bool(currently_active)), stream_id),
            )
            return PresenceRow(user_id, state, status_msg, last_active_ts, bool(currently_active), stream_id)

        return self._db.run_write(txn)

    def get_presence(self, user_ids: Iterable[str]) -> "Deferred[dict[str, PresenceRow]]":
        """The stored presence of these users (users without a row are left out)."""
        ids = lookup_ids(user_ids)

        def txn(t: Txn) -> dict[str, PresenceRow]:
            rows = t.select_in(f"SELECT {_COLUMNS} FROM presence WHERE user_id IN ({{}})", ids)
            return {r[0]: _row(r) for r in rows}

        return self._db.run_read(txn)

    def get_changes_visible_to(self, viewer: str, since: Optional[int], upto: int) -> "Deferred[list[PresenceRow]]":
        """Presence rows with ``since < stream_id <= upto`` of the viewer and of users
        joined to a room the viewer is joined to (spec "Presence": shared with users who
        share a room)."""
        check_int(upto, "upto")
        check_int(since, "since", nullable=True)

        def txn(t: Txn) -> list[PresenceRow]:
            if not lookup_text(viewer, "viewer"):
                return []
            rows = t.execute(
                f"SELECT {_COLUMNS} FROM presence p WHERE p.stream_id > ? AND p.stream_id <= ? AND (p.user_id = ?"
                " OR EXISTS (SELECT 1 FROM current_state c WHERE c.type = 'm.room.member' AND c.state_key = p.user_id"
                f" AND c.membership = 'join' AND c.room_id IN ({_JOINED_ROOMS}))) ORDER BY p.stream_id",
                (since if since is not None else 0, upto, viewer, viewer),
            ).fetchall()
            return [_row(r) for r in rows]

        return self._db.run_read(txn)

    def shares_room(self, a: str, b: str) -> "Deferred[bool]":
        """Whether users ``a`` and ``b`` are joined to a common room."""

        def txn(t: Txn) -> bool:
            if not (lookup_text(a, "user_id") and lookup_text(b, "user_id")):
                return False
            row = t.execute(
                "SELECT 1 FROM current_state c WHERE c.type = 'm.room.member' AND c.state_key = ?"
                f" AND c.membership = 'join' AND c.room_id IN ({_JOINED_ROOMS}) LIMIT 1",
                (a, b),
            ).fetchone()
            return row is not None

        return self._db.run_read(txn)

    def get_joined_rooms(self, user_id: str) -> "Deferred[list[str]]":
        """The rooms ``user_id`` is joined to (local or remote user)."""

        def txn(t: Txn) -> list[str]:
            if not lookup_text(user_id, "user_id"):
                return []
            return [r[0] for r in t.execute(_JOINED_ROOMS, (user_id,)).fetchall()]

        return self._db.run_read(txn)

    def get_hosts_sharing_rooms(self, user_id: str) -> "Deferred[set[str]]":
        """The servers of every user joined to a room ``user_id`` is joined to (where
        that user's presence goes)."""

        def txn(t: Txn) -> set[str]:
            if not lookup_text(user_id, "user_id"):
                return set()
            rows = t.execute(
                "SELECT DISTINCT state_key FROM current_state WHERE type = 'm.room.member' AND membership = 'join'"
                f" AND room_id IN ({_JOINED_ROOMS})",
                (user_id,),
            ).fetchall()
            return {r[0].split(":", 1)[1] for r in rows if ":" in r[0]}

        return self._db.run_read(txn)

    def get_users_with_state(self, server_name: str, states: Iterable[str]) -> "Deferred[list[PresenceRow]]":
        """Our users (ids ending in ``:server_name``) whose state is one of ``states``
        (at start-up: who was online when the server stopped)."""
        wanted = lookup_ids(states)

        def txn(t: Txn) -> list[PresenceRow]:
            rows = t.select_in(f"SELECT {_COLUMNS} FROM presence WHERE state IN ({{}})", wanted)
            suffix = ":" + server_name
            return [_row(r) for r in rows if r[0].endswith(suffix) and r[0].split(":", 1)[1] == server_name]

        return self._db.run_read(txn)

    def get_max_stream_id(self) -> "Deferred[int]":
        """The newest presence stream position (0 before any change)."""

        def txn(t: Txn) -> int:
            row = t.execute("SELECT last_value FROM sequences WHERE name = 'presence'").fetchone()
            return 0 if row is None else row[0]

        return self._db.run_read(txn)


__all__ = ["PresenceRow", "PresenceStore"]
