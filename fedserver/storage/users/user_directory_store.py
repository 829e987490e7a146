"""Storage for the user directory (schema 007): who is in which room under which name, and search."""

from __future__ import annotations

import json
from typing import Any, NamedTuple, Optional, Sequence

from twisted.internet.defer import Deferred

from fedserver.storage.database import Database, Txn, check_int, lookup_text

#: The indexer's name in ``room_indexers``.
INDEXER = "user_directory"


class DirectoryEntry(NamedTuple):
    """A user found by a search."""

    user_id: str
    display_name: Optional[str]
    avatar_url: Optional[str]


def search_text(user_id: str, display_name: Optional[str]) -> str:
    """What searches match against: the casefolded user id and display name."""
    return (user_id + " " + (display_name or "")).casefold()


def like_pattern(word: str) -> str:
    """``%word%`` for ``LIKE ... ESCAPE '\\'``, with ``%``, ``_`` and ``\\`` escaped."""
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return "%" + escaped + "%"


def _profile_field(content: Any, key: str) -> Optional[str]:
    value = content.get(key) if isinstance(content, dict) else None
    return value if isinstance(value, str) and value else None


class UserDirectoryStore:
    """SQL for the user directory; every method is one transaction and returns a Deferred.

    :param db: the :class:`fedserver.storage.database.Database`.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def index(self, batch: int = 1000) -> "Deferred[int]":
        """Bring the directory up to date with the member events stored since the last
        call (at most ``batch`` events per transaction, looping until done): for each
        room and user they name, the row follows the room's CURRENT state (a joined
        member's name and avatar, or no row), so events that lost in state resolution
        change nothing.

        :returns: Deferred firing with how many member events were read.
        """
        check_int(batch, "batch")

        def txn(t: Txn) -> tuple[int, bool]:
            row = t.execute("SELECT position FROM room_indexers WHERE name = ?", (INDEXER,)).fetchone()
            pos = 0 if row is None else row[0]
            events = t.execute(
                "SELECT event_nid, room_id, state_key FROM events WHERE type = 'm.room.member' AND event_nid > ?"
                " ORDER BY event_nid LIMIT ?",
                (pos, batch),
            ).fetchall()
            if not events:
                return 0, False
            pairs = {(r[1], r[2]) for r in events if r[2] is not None}
            for room_id, user_id in pairs:
                self._refresh_txn(t, room_id, user_id)
            last = events[-1][0]
            t.execute(
                "INSERT INTO room_indexers (name, position) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                (INDEXER, last),
            )
            return len(events), len(events) == batch

        total = 0

        def step(result: tuple[int, bool]) -> Any:
            nonlocal total
            n, more = result
            total += n
            if more:
                return self._db.run_write(txn).addCallback(step)
            return total

        return self._db.run_write(txn).addCallback(step)

    def refresh_room(self, room_id: str) -> "Deferred[int]":
        """Make the room's rows follow its current state for every member it names, and
        drop the rows of users it no longer names: for a room whose current state changed
        without new member events (a partial-state room given its full state, whose member
        events were stored earlier, while they were not yet in the current state).

        :returns: Deferred firing with how many users were looked at.
        """
        if not lookup_text(room_id, "room id"):
            return self._db.run_read(lambda t: 0)

        def txn(t: Txn) -> int:
            users = {
                r[0] for r in t.execute(
                    "SELECT state_key FROM current_state WHERE room_id = ? AND type = 'm.room.member'", (room_id,)
                )
            }
            users |= {r[0] for r in t.execute("SELECT user_id FROM user_directory WHERE room_id = ?", (room_id,))}
            for user_id in users:
                self._refresh_txn(t, room_id, user_id)
            return len(users)

        return self._db.run_write(txn)

    @staticmethod
    def _refresh_txn(t: Txn, room_id: str, user_id: str) -> None:
        row = t.execute(
            "SELECT c.membership, e.json FROM current_state c JOIN events e ON e.event_nid = c.event_nid"
            " WHERE c.room_id = ? AND c.type = 'm.room.member' AND c.state_key = ?",
            (room_id, user_id),
        ).fetchone()
        if row is None or row[0] != "join":
            t.execute("DELETE FROM user_directory WHERE room_id = ? AND user_id = ?", (room_id, user_id))
            return
        try:
            content = json.loads(bytes(row[1])).get("content")
        except (ValueError, AttributeError):
            content = None
        name = _profile_field(content, "displayname")
        avatar = _profile_field(content, "avatar_url")
        t.execute(
            "INSERT INTO user_directory (room_id, user_id, display_name, avatar_url, search_text)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (room_id, user_id) DO UPDATE SET"
            " display_name = excluded.display_name, avatar_url = excluded.avatar_url,"
            " search_text = excluded.search_text",
            (room_id, user_id, name, avatar, search_text(user_id, name)),
        )

    @staticmethod
    def on_deactivated_txn(t: Txn, user_id: str, erase: bool) -> None:
        """``DeactivationStore.hooks``: a deactivated user is found by nobody."""
        t.execute("DELETE FROM user_directory WHERE user_id = ?", (user_id,))

    def search(
        self, searcher: str, words: Sequence[str], server_name: str, cap: int
    ) -> "Deferred[tuple[list[DirectoryEntry], list[DirectoryEntry]]]":
        """Users every one of whose ``words`` (casefolded) occurs in their user id or
        display name: local users of ``server_name`` (by their profile), and users joined
        to a room the searcher is joined to or to a room in the public directory (by their
        member event).

        :param cap: read at most this many of each kind.
        :returns: Deferred firing with ``(local, in_rooms)``.
        """
        check_int(cap, "cap")

        def txn(t: Txn) -> tuple[list[DirectoryEntry], list[DirectoryEntry]]:
            if not lookup_text(searcher, "searcher") or not all(lookup_text(w, "word") for w in words):
                return [], []
            patterns = [like_pattern(w) for w in words]
            local_where = " AND ".join(
                "LOWER(u.user_id || ' ' || COALESCE(p.displayname, '')) LIKE ? ESCAPE '\\'" for _ in patterns
            ) or "1 = 1"
            local = t.execute(
                "SELECT u.user_id, p.displayname, p.avatar_url FROM users u LEFT JOIN profiles p ON p.user_id = u.user_id"
                f" WHERE u.deactivated = 0 AND {local_where} ORDER BY u.user_id LIMIT ?",
                (*patterns, cap),
            ).fetchall()
            room_where = " AND ".join("d.search_text LIKE ? ESCAPE '\\'" for _ in patterns) or "1 = 1"
            rooms = t.execute(
                "SELECT d.user_id, d.display_name, d.avatar_url FROM user_directory d"
                f" WHERE {room_where} AND d.user_id NOT IN (SELECT user_id FROM users WHERE deactivated = 1)"
                " AND (d.room_id IN (SELECT room_id FROM current_state WHERE type = 'm.room.member'"
                " AND state_key = ? AND membership = 'join') OR d.room_id IN (SELECT room_id FROM rooms WHERE is_public = 1))"
                " ORDER BY d.user_id LIMIT ?",
                (*patterns, searcher, cap),
            ).fetchall()
            # Local users are found through their profile; leave out other servers' rows
            # only by what the caller merges (a local user's room rows add nothing new).
            suffix = ":" + server_name
            return (
                [DirectoryEntry(*r) for r in local if r[0].endswith(suffix)],
                [DirectoryEntry(*r) for r in rooms],
            )

        return self._db.run_read(txn)


__all__ = ["DirectoryEntry", "INDEXER", "UserDirectoryStore", "like_pattern", "search_text"]
