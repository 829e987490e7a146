"""Storage for push (schema 008): rules, pushers, notifications, read positions, unread counts."""

from __future__ import annotations

import json
from typing import Any, Iterable, NamedTuple, Optional, Sequence

from twisted.internet.defer import Deferred

from fedserver.storage.database import Database, Txn, check_int, check_text, encode_stored_json, lookup_ids, lookup_text
from fedserver.storage.interface import InvalidDataError

#: The thread id of unthreaded read positions.
UNTHREADED = ""
#: The thread id of the main timeline.
MAIN = "main"


def _encode(value: Any, what: str) -> bytes:
    try:
        return encode_stored_json(value)
    except (TypeError, ValueError, UnicodeError, RecursionError) as e:
        raise InvalidDataError(f"{what} is not JSON-serialisable: {e}") from None


class Pusher(NamedTuple):
    """A stored pusher (``POST /pushers/set``)."""

    user_id: str
    app_id: str
    pushkey: str
    kind: str
    app_display_name: str
    device_display_name: str
    profile_tag: Optional[str]
    lang: str
    data: dict[str, Any]
    device_id: Optional[str]
    pushkey_ts: int


_PUSHER_COLUMNS = (
    "user_id, app_id, pushkey, kind, app_display_name, device_display_name, profile_tag, lang, data, device_id, pushkey_ts"
)


def _pusher(r: tuple) -> Pusher:
    return Pusher(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(bytes(r[8])), r[9], r[10])


class PushAction(NamedTuple):
    """An event that notified a user.

    :ivar thread_id: ``main`` or the thread root's event id.
    """

    user_id: str
    room_id: str
    event_nid: int
    event_id: str
    thread_id: str
    highlight: bool
    actions: list[Any]
    ts: int


class Counts(NamedTuple):
    """Unread notifications of one thread (or of the main timeline)."""

    notifications: int
    highlights: int


class PushStore:
    """SQL for push; every method is one transaction and returns a Deferred.

    :param db: the :class:`fedserver.storage.database.Database`.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- rules ----------------------------------------------------------------------------

    def get_user_rules(self, user_id: str) -> "Deferred[Optional[dict[str, Any]]]":
        """What the user changed in their rules (the JSON given to :meth:`set_user_rules`),
        or ``None`` if nothing."""

        def txn(t: Txn) -> Optional[dict[str, Any]]:
            if not lookup_text(user_id, "user_id"):
                return None
            row = t.execute("SELECT rules FROM push_rules WHERE user_id = ?", (user_id,)).fetchone()
            return None if row is None else json.loads(bytes(row[0]))

        return self._db.run_read(txn)

    def get_user_rules_many(self, user_ids: Iterable[str]) -> "Deferred[dict[str, dict[str, Any]]]":
        """:meth:`get_user_rules` of many users in one transaction: ``{user_id: rules}``
        for those who changed something (the others are left out)."""
        wanted = list(user_ids)

        def txn(t: Txn) -> dict[str, dict[str, Any]]:
            rows = t.select_in("SELECT user_id, rules FROM push_rules WHERE user_id IN ({})", lookup_ids(wanted))
            return {user_id: json.loads(bytes(rules)) for user_id, rules in rows}

        return self._db.run_read(txn)

    def set_user_rules(self, user_id: str, rules: dict[str, Any]) -> "Deferred[int]":
        """Replace what the user changed in their rules.

        :returns: Deferred firing with the change's stream id.
        """

        def txn(t: Txn) -> int:
            check_text(user_id, "user_id")
            encoded = _encode(rules, "push rules")
            stream_id = t.allocate_ids("push_rules", 1)
            t.execute(
                "INSERT INTO push_rules (user_id, rules, stream_id) VALUES (?, ?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET rules = excluded.rules, stream_id = excluded.stream_id",
                (user_id, encoded, stream_id),
            )
            return stream_id

        return self._db.run_write(txn)

    def get_rules_stream_id(self, user_id: str) -> "Deferred[int]":
        """The stream id of the user's last change of rules (0 if never changed)."""

        def txn(t: Txn) -> int:
            if not lookup_text(user_id, "user_id"):
                return 0
            row = t.execute("SELECT stream_id FROM push_rules WHERE user_id = ?", (user_id,)).fetchone()
            return 0 if row is None else row[0]

        return self._db.run_read(txn)

    def get_max_stream_id(self, sequence: str) -> "Deferred[int]":
        """The newest position of ``push_rules`` or ``notification_counts``."""
        if sequence not in ("push_rules", "notification_counts"):
            raise ValueError(sequence)

        def txn(t: Txn) -> int:
            row = t.execute("SELECT last_value FROM sequences WHERE name = ?", (sequence,)).fetchone()
            return 0 if row is None else row[0]

        return self._db.run_read(txn)

    # -- pushers --------------------------------------------------------------------------

    def set_pusher(self, pusher: Pusher, *, append: bool) -> "Deferred[None]":
        """Create or update a pusher; without ``append``, pushers of OTHER users with the
        same app id and pushkey are deleted (spec ``POST /pushers/set``)."""

        def txn(t: Txn) -> None:
            for value, what in ((pusher.user_id, "user_id"), (pusher.app_id, "app_id"), (pusher.pushkey, "pushkey"),
                                (pusher.kind, "kind"), (pusher.app_display_name, "app_display_name"),
                                (pusher.device_display_name, "device_display_name"), (pusher.lang, "lang")):
                check_text(value, what)
            check_text(pusher.profile_tag, "profile_tag", nullable=True)
            check_text(pusher.device_id, "device_id", nullable=True)
            check_int(pusher.pushkey_ts, "pushkey_ts")
            data = _encode(pusher.data, "pusher data")
            if not append:
                t.execute(
                    "DELETE FROM pushers WHERE app_id = ? AND pushkey = ? AND user_id != ?",
                    (pusher.app_id, pusher.pushkey, pusher.user_id),
                )
            t.execute(
                f"INSERT INTO pushers ({_PUSHER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET kind = excluded.kind,"
                " app_display_name = excluded.app_display_name, device_display_name = excluded.device_display_name,"
                " profile_tag = excluded.profile_tag, lang = excluded.lang, data = excluded.data,"
                " device_id = excluded.device_id, pushkey_ts = excluded.pushkey_ts",
                (pusher.user_id, pusher.app_id, pusher.pushkey, pusher.kind, pusher.app_display_name,
                 pusher.device_display_name, pusher.profile_tag, pusher.lang, data, pusher.device_id, pusher.pushkey_ts),
            )

        return self._db.run_write(txn)

    def delete_pusher(self, user_id: str, app_id: str, pushkey: str) -> "Deferred[bool]":
        """Delete one of the user's pushers; ``False`` if there was none."""

        def txn(t: Txn) -> bool:
            if not all(lookup_text(v, "id") for v in (user_id, app_id, pushkey)):
                return False
            return t.execute(
                "DELETE FROM pushers WHERE user_id = ? AND app_id = ? AND pushkey = ?", (user_id, app_id, pushkey)
            ).rowcount > 0

        return self._db.run_write(txn)

    def delete_pushers_by_key(self, app_id: str, pushkey: str, user_ids: Iterable[str]) -> "Deferred[int]":
        """Delete the pushers of ``user_ids`` with this app id and pushkey (a gateway
        rejected the key)."""
        users = lookup_ids(user_ids)

        def txn(t: Txn) -> int:
            if not (lookup_text(app_id, "app_id") and lookup_text(pushkey, "pushkey")):
                return 0
            n = 0
            for user_id in users:
                n += t.execute(
                    "DELETE FROM pushers WHERE user_id = ? AND app_id = ? AND pushkey = ?", (user_id, app_id, pushkey)
                ).rowcount
            return n

        return self._db.run_write(txn)

    @staticmethod
    def on_devices_changed_txn(t: Txn, user_id: str, device_ids: list[str], deleted: bool) -> None:
        """``AccountStore.device_change_hooks``: the pushers set through a device that is
        deleted (logout, ``DELETE /devices``, a password change logging out the other
        devices) go with it, in the same transaction; a pusher of a device nobody can use
        would push notifications to a phone that is no longer logged in."""
        if deleted:
            for device_id in device_ids:
                t.execute("DELETE FROM pushers WHERE user_id = ? AND device_id = ?", (user_id, device_id))

    @staticmethod
    def on_deactivated_txn(t: Txn, user_id: str, erase: bool) -> None:
        """``DeactivationStore.hooks``: every pusher of the user goes (those set without a
        device too); with ``erase``, their push rules as well."""
        t.execute("DELETE FROM pushers WHERE user_id = ?", (user_id,))
        if erase:
            t.execute("DELETE FROM push_rules WHERE user_id = ?", (user_id,))

    def get_pushers(self, user_ids: Iterable[str]) -> "Deferred[list[Pusher]]":
        """The pushers of these users, by user then app id and pushkey."""
        ids = lookup_ids(user_ids)

        def txn(t: Txn) -> list[Pusher]:
            rows = t.select_in(f"SELECT {_PUSHER_COLUMNS} FROM pushers WHERE user_id IN ({{}})", ids)
            return sorted((_pusher(r) for r in rows), key=lambda p: (p.user_id, p.app_id, p.pushkey))

        return self._db.run_read(txn)

    # -- what notified whom ---------------------------------------------------------------

    def record_actions(
        self, actions: Sequence[PushAction], read_marks: Sequence[tuple[str, str, str, int]]
    ) -> "Deferred[None]":
        """Store the events that notified users and the read positions their own events
        imply, and mark their rooms' counts as changed, in ONE transaction.

        :param read_marks: ``(user_id, room_id, thread_id, event_nid)``.
        """

        def txn(t: Txn) -> None:
            rows = []
            changed: set[tuple[str, str]] = set()
            for a in actions:
                check_text(a.user_id, "user_id")
                check_text(a.room_id, "room_id")
                check_text(a.event_id, "event_id")
                check_text(a.thread_id, "thread_id")
                check_int(a.event_nid, "event_nid")
                rows.append((a.user_id, a.room_id, a.event_nid, a.event_id, a.thread_id, int(a.highlight),
                             _encode(a.actions, "actions"), a.ts))
                changed.add((a.user_id, a.room_id))
            t.executemany(
                "INSERT INTO event_push_actions (user_id, room_id, event_nid, event_id, thread_id, highlight, actions, ts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, event_nid) DO NOTHING",
                rows,
            )
            for user_id, room_id, thread_id, nid in read_marks:
                if self._advance_read_txn(t, user_id, room_id, thread_id, nid):
                    changed.add((user_id, room_id))
            self._mark_changed_txn(t, changed)

        return self._db.run_write(txn)

    @staticmethod
    def _advance_read_txn(t: Txn, user_id: str, room_id: str, thread_id: str, nid: int) -> bool:
        check_text(user_id, "user_id")
        check_text(room_id, "room_id")
        check_text(thread_id, "thread_id")
        check_int(nid, "event_nid")
        return t.execute(
            "INSERT INTO read_positions (user_id, room_id, thread_id, event_nid) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (user_id, room_id, thread_id) DO UPDATE SET event_nid = excluded.event_nid"
            " WHERE excluded.event_nid > read_positions.event_nid",
            (user_id, room_id, thread_id, nid),
        ).rowcount > 0

    @staticmethod
    def _mark_changed_txn(t: Txn, changed: set[tuple[str, str]]) -> None:
        if not changed:
            return
        first = t.allocate_ids("notification_counts", len(changed))
        t.executemany(
            "INSERT INTO notification_count_changes (user_id, room_id, stream_id) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id, room_id) DO UPDATE SET stream_id = excluded.stream_id",
            [(u, r, first + i) for i, (u, r) in enumerate(sorted(changed))],
        )

    def advance_read_position(self, user_id: str, room_id: str, thread_id: str, event_nid: int) -> "Deferred[bool]":
        """Move the user's read position forward (never back); ``True`` if it moved (the
        room's counts are then marked as changed)."""

        def txn(t: Txn) -> bool:
            moved = self._advance_read_txn(t, user_id, room_id, thread_id, event_nid)
            if moved:
                self._mark_changed_txn(t, {(user_id, room_id)})
            return moved

        return self._db.run_write(txn)

    def get_changed_rooms(self, user_id: str, since: int, upto: int) -> "Deferred[set[str]]":
        """Rooms whose counts for ``user_id`` changed in ``(since, upto]``."""
        check_int(since, "since")
        check_int(upto, "upto")

        def txn(t: Txn) -> set[str]:
            if not lookup_text(user_id, "user_id"):
                return set()
            rows = t.execute(
                "SELECT room_id FROM notification_count_changes WHERE user_id = ? AND stream_id > ? AND stream_id <= ?",
                (user_id, since, upto),
            ).fetchall()
            return {r[0] for r in rows}

        return self._db.run_read(txn)

    def get_unread_counts(self, user_id: str, room_ids: Iterable[str]) -> "Deferred[dict[str, dict[str, Counts]]]":
        """Unread notifications per room and thread (``main`` for the main timeline):
        events that notified the user after their read position, where a thread's
        position is the later of the unthreaded one and the thread's own (Client-Server
        "Receiving notifications", threaded receipts). Threads with none are left out."""
        ids = lookup_ids(room_ids)

        def txn(t: Txn) -> dict[str, dict[str, Counts]]:
            out: dict[str, dict[str, Counts]] = {}
            if not lookup_text(user_id, "user_id"):
                return out
            for room_id in ids:
                marks = dict(
                    t.execute(
                        "SELECT thread_id, event_nid FROM read_positions WHERE user_id = ? AND room_id = ?",
                        (user_id, room_id),
                    ).fetchall()
                )
                base = marks.pop(UNTHREADED, 0)
                counts: dict[str, Counts] = {}
                for thread_id, n, h in t.execute(
                    "SELECT thread_id, COUNT(*), SUM(highlight) FROM event_push_actions"
                    " WHERE user_id = ? AND room_id = ? AND event_nid > ? GROUP BY thread_id",
                    (user_id, room_id, base),
                ).fetchall():
                    counts[thread_id] = Counts(n, h or 0)
                for thread_id, pos in marks.items():
                    if pos <= base or thread_id not in counts:
                        continue
                    n, h = t.execute(
                        "SELECT COUNT(*), SUM(highlight) FROM event_push_actions"
                        " WHERE user_id = ? AND room_id = ? AND thread_id = ? AND event_nid > ?",
                        (user_id, room_id, thread_id, pos),
                    ).fetchone()
                    if n:
                        counts[thread_id] = Counts(n, h or 0)
                    else:
                        del counts[thread_id]
                if counts:
                    out[room_id] = counts
            return out

        return self._db.run_read(txn)

    def get_read_positions(self, user_id: str, room_ids: Iterable[str]) -> "Deferred[dict[str, dict[str, int]]]":
        """``{room_id: {thread_id: event_nid}}`` (``""`` for unthreaded)."""
        ids = lookup_ids(room_ids)

        def txn(t: Txn) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            if not lookup_text(user_id, "user_id"):
                return out
            for room_id, thread_id, nid in t.select_in(
                "SELECT room_id, thread_id, event_nid FROM read_positions WHERE user_id = ? AND room_id IN ({})",
                ids,
                (user_id,),
            ):
                out.setdefault(room_id, {})[thread_id] = nid
            return out

        return self._db.run_read(txn)

    def count_unread_notifications(self, user_id: str) -> "Deferred[int]":
        """All of the user's unread notifications, every room (for a push gateway's
        ``counts.unread``), with unthreaded read positions."""

        def txn(t: Txn) -> int:
            if not lookup_text(user_id, "user_id"):
                return 0
            (n,) = t.execute(
                "SELECT COUNT(*) FROM event_push_actions a WHERE a.user_id = ? AND a.event_nid > COALESCE("
                "(SELECT r.event_nid FROM read_positions r WHERE r.user_id = a.user_id AND r.room_id = a.room_id"
                " AND r.thread_id = ''), 0)",
                (user_id,),
            ).fetchone()
            return n

        return self._db.run_read(txn)

    def get_notifications(
        self, user_id: str, *, before_nid: Optional[int], limit: int, only_highlight: bool
    ) -> "Deferred[list[PushAction]]":
        """The user's notifications, newest first (``GET /notifications``)."""
        check_int(before_nid, "before_nid", nullable=True)
        check_int(limit, "limit")

        def txn(t: Txn) -> list[PushAction]:
            if not lookup_text(user_id, "user_id"):
                return []
            sql = (
                "SELECT user_id, room_id, event_nid, event_id, thread_id, highlight, actions, ts"
                " FROM event_push_actions WHERE user_id = ?"
            )
            params: list[Any] = [user_id]
            if before_nid is not None:
                sql += " AND event_nid < ?"
                params.append(before_nid)
            if only_highlight:
                sql += " AND highlight = 1"
            sql += " ORDER BY event_nid DESC LIMIT ?"
            params.append(limit)
            return [
                PushAction(r[0], r[1], r[2], r[3], r[4], bool(r[5]), json.loads(bytes(r[6])), r[7])
                for r in t.execute(sql, params).fetchall()
            ]

        return self._db.run_read(txn)

    def prune_actions(self, before_ts: int, *, only_read: bool = False) -> "Deferred[int]":
        """Forget notifications older than ``before_ts`` (ms): with ``only_read``, only
        those the user has read (at or before their read position in the room, unthreaded
        or in the notification's thread: unread ones make the unread counts). Fires with
        how many went."""
        check_int(before_ts, "before_ts")
        sql = "DELETE FROM event_push_actions WHERE ts < ?"
        if only_read:
            sql += (
                " AND event_nid <= (SELECT COALESCE(MAX(r.event_nid), -1) FROM read_positions r"
                " WHERE r.user_id = event_push_actions.user_id AND r.room_id = event_push_actions.room_id"
                " AND (r.thread_id = ? OR r.thread_id = event_push_actions.thread_id))"
            )
        params: tuple = (before_ts, UNTHREADED) if only_read else (before_ts,)
        return self._db.run_write(lambda t: t.execute(sql, params).rowcount)

    # -- rooms, as push evaluation needs them ---------------------------------------------

    def get_joined_members(self, room_id: str) -> "Deferred[list[tuple[str, str]]]":
        """``(user_id, member event id)`` of the room's joined members."""

        def txn(t: Txn) -> list[tuple[str, str]]:
            if not lookup_text(room_id, "room_id"):
                return []
            return [
                (r[0], r[1])
                for r in t.execute(
                    "SELECT c.state_key, e.event_id FROM current_state c JOIN events e ON e.event_nid = c.event_nid"
                    " WHERE c.room_id = ? AND c.type = 'm.room.member' AND c.membership = 'join'",
                    (room_id,),
                ).fetchall()
            ]

        return self._db.run_read(txn)

    def get_joined_members_of_server(self, room_id: str, server_name: str) -> "Deferred[tuple[int, list[tuple[str, str]]]]":
        """How many members the room has joined, and ``(user_id, member event id)`` of the
        joined members whose id ends with ``:server_name`` (the caller checks each id's
        grammar). One read, without carrying every member of a large room to Python (push
        evaluation runs for every /send transaction).
        """

        def txn(t: Txn) -> tuple[int, list[tuple[str, str]]]:
            if not lookup_text(room_id, "room_id") or not lookup_text(server_name, "server_name"):
                return 0, []
            count = t.execute(
                "SELECT COUNT(*) FROM current_state WHERE room_id = ? AND type = 'm.room.member' AND membership = 'join'",
                (room_id,),
            ).fetchone()[0]
            suffix = ":" + server_name
            rows = t.execute(
                "SELECT c.state_key, e.event_id FROM current_state c JOIN events e ON e.event_nid = c.event_nid"
                " WHERE c.room_id = ? AND c.type = 'm.room.member' AND c.membership = 'join'"
                " AND substr(c.state_key, length(c.state_key) - ? + 1) = ?",
                (room_id, len(suffix), suffix),
            ).fetchall()
            return count, [(r[0], r[1]) for r in rows]

        return self._db.run_read(txn)

    def get_event_nids(self, event_ids: Iterable[str]) -> "Deferred[dict[str, int]]":
        """Stream positions of stored events."""
        ids = lookup_ids(event_ids)

        def txn(t: Txn) -> dict[str, int]:
            return {r[0]: r[1] for r in t.select_in("SELECT event_id, event_nid FROM events WHERE event_id IN ({})", ids)}

        return self._db.run_read(txn)


__all__ = ["Counts", "MAIN", "PushAction", "PushStore", "Pusher", "UNTHREADED"]
