"""Storage for the failures mechanism and for our users' memberships in rooms we are not in."""

from __future__ import annotations

import json
from typing import Any, Iterable, NamedTuple, Optional

from twisted.internet.defer import Deferred

from fedserver.storage.database import Database, Txn, check_int, check_text


class Failure(NamedTuple):
    """One failure report (seed 000), sent or received."""

    failure_id: int
    direction: str  # "sent" | "received"
    server_name: str
    severity: str  # "FATAL" | "ERROR" | "WARN"
    code: int
    reason: str
    room_id: Optional[str]
    affected: Optional[str]
    source: Optional[str]
    ts: int


class RemoteMembership(NamedTuple):
    """An invite, knock or withdrawal for one of our users in a room we are not in."""

    user_id: str
    room_id: str
    membership: str
    event_id: str
    sender: str
    stripped_state: list
    stream: int


class FederationExtrasStore:
    """Failures and remote memberships (schema 004). Every method returns a Deferred.

    :param db: the :class:`fedserver.storage.database.Database`.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- failures -----------------------------------------------------------------------

    def add_failures(self, direction: str, rows: Iterable[tuple], ts: int) -> "Deferred[int]":
        """Record failures; a report identical to one already recorded is kept once.

        :param direction: ``"sent"`` or ``"received"``.
        :param rows: ``(server_name, severity, code, reason, room_id, affected, source)``.
        :returns: Deferred firing with how many were new.
        """
        if direction not in ("sent", "received"):
            raise ValueError("direction must be 'sent' or 'received'")
        checked = []
        for server, severity, code, reason, room_id, affected, source in rows:
            check_text(server, "server_name")
            check_text(severity, "severity")
            check_int(code, "code")
            check_text(reason, "reason")
            for v, n in ((room_id, "room_id"), (affected, "affected"), (source, "source")):
                check_text(v, n, nullable=True)
            checked.append((direction, server, severity, code, reason[:1000], room_id, affected, source, ts))

        def txn(t: Txn) -> int:
            if not checked:
                return 0
            before = t.execute("SELECT COUNT(*) FROM federation_failures").fetchone()[0]
            # Ids come from the sequence (newest first = highest id), never from the
            # engine; the ids of reports already recorded are simply not used.
            first = t.allocate_ids("federation_failure", len(checked))
            t.executemany(
                "INSERT INTO federation_failures (failure_id, direction, server_name, severity, code, reason,"
                " room_id, affected, source, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(first + i, *row) for i, row in enumerate(checked)],
            )
            return t.execute("SELECT COUNT(*) FROM federation_failures").fetchone()[0] - before

        return self._db.run_write(txn)

    def list_failures(
        self,
        direction: Optional[str] = None,
        *,
        server_name: Optional[str] = None,
        limit: int = 100,
        before_id: Optional[int] = None,
    ) -> "Deferred[list[Failure]]":
        """Failures, newest first, optionally only one direction or one peer."""
        sql = (
            "SELECT failure_id, direction, server_name, severity, code, reason, room_id, affected, source, ts"
            " FROM federation_failures WHERE 1 = 1"
        )
        params: list[Any] = []
        if direction is not None:
            sql += " AND direction = ?"
            params.append(direction)
        if server_name is not None:
            sql += " AND server_name = ?"
            params.append(server_name)
        if before_id is not None:
            sql += " AND failure_id < ?"
            params.append(before_id)
        sql += " ORDER BY failure_id DESC LIMIT ?"
        params.append(max(1, min(limit, 1000)))

        def txn(t: Txn) -> list[Failure]:
            return [Failure(*row) for row in t.execute(sql, params).fetchall()]

        return self._db.run_read(txn)

    # -- remote memberships -----------------------------------------------------------------

    def set_remote_membership(
        self, user_id: str, room_id: str, membership: str, event_id: str, sender: str, stripped_state: list
    ) -> "Deferred[None]":
        """Record ``user_id``'s invite/knock/leave in a room we are not in; the event must be
        stored (its nid is the sync position)."""
        for v, n in ((user_id, "user_id"), (room_id, "room_id"), (membership, "membership"),
                     (event_id, "event_id"), (sender, "sender")):
            check_text(v, n)
        blob = json.dumps(stripped_state, ensure_ascii=False).encode("utf-8")

        def txn(t: Txn) -> None:
            row = t.execute("SELECT event_nid FROM events WHERE event_id = ?", (event_id,)).fetchone()
            if row is None:
                raise ValueError(f"event {event_id!r} is not stored")
            t.execute(
                "INSERT INTO remote_memberships (user_id, room_id, membership, event_id, sender,"
                " stripped_state, stream) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, room_id) DO UPDATE SET membership = excluded.membership,"
                " event_id = excluded.event_id, sender = excluded.sender,"
                " stripped_state = excluded.stripped_state, stream = excluded.stream",
                (user_id, room_id, membership, event_id, sender, blob, row[0]),
            )

        return self._db.run_write(txn)

    def get_remote_memberships(
        self, user_id: str, since_stream: int = 0
    ) -> "Deferred[list[RemoteMembership]]":
        """``user_id``'s remote memberships changed after ``since_stream``."""

        def txn(t: Txn) -> list[RemoteMembership]:
            rows = t.execute(
                "SELECT user_id, room_id, membership, event_id, sender, stripped_state, stream"
                " FROM remote_memberships WHERE user_id = ? AND stream > ? ORDER BY stream",
                (user_id, since_stream),
            ).fetchall()
            return [RemoteMembership(*r[:5], json.loads(r[5]), r[6]) for r in rows]

        return self._db.run_read(txn)

    def get_remote_membership(self, user_id: str, room_id: str) -> "Deferred[Optional[RemoteMembership]]":
        """``user_id``'s remote membership in ``room_id``, if any."""

        def txn(t: Txn) -> Optional[RemoteMembership]:
            r = t.execute(
                "SELECT user_id, room_id, membership, event_id, sender, stripped_state, stream"
                " FROM remote_memberships WHERE user_id = ? AND room_id = ?",
                (user_id, room_id),
            ).fetchone()
            return None if r is None else RemoteMembership(*r[:5], json.loads(r[5]), r[6])

        return self._db.run_read(txn)

    def delete_remote_membership(self, user_id: str, room_id: str) -> "Deferred[None]":
        """Forget it (the user joined the room: it is an ordinary room of ours now)."""

        def txn(t: Txn) -> None:
            t.execute("DELETE FROM remote_memberships WHERE user_id = ? AND room_id = ?", (user_id, room_id))

        return self._db.run_write(txn)
