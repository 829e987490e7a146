"""Storage for read receipts (schema 007): one row per room, type, user and thread."""

from __future__ import annotations

import json
from typing import Any, Iterable, NamedTuple, Optional

from twisted.internet.defer import Deferred

from fedserver.storage.database import Database, Txn, check_int, check_text, encode_stored_json, lookup_ids, lookup_text
from fedserver.storage.interface import InvalidDataError

#: The receipt type only the user who sent it may see (Client-Server "Private read receipts").
PRIVATE_READ = "m.read.private"


class Receipt(NamedTuple):
    """One stored receipt.

    :ivar thread_id: ``""`` for an unthreaded receipt.
    :ivar event_nid: the receipted event's stream position if we hold it.
    :ivar data: the receipt's JSON (``ts``, and ``thread_id`` for a threaded one).
    """

    room_id: str
    receipt_type: str
    user_id: str
    thread_id: str
    event_id: str
    event_nid: Optional[int]
    data: dict[str, Any]
    stream_id: int


def _encode(data: Any) -> bytes:
    if type(data) is not dict:
        raise InvalidDataError("receipt data must be an object")
    try:
        return encode_stored_json(data)
    except (TypeError, ValueError, UnicodeError, RecursionError) as e:
        raise InvalidDataError(f"receipt data is not JSON-serialisable: {e}") from None


_COLUMNS = "room_id, receipt_type, user_id, thread_id, event_id, event_nid, data, stream_id"


def _row(r: tuple) -> Receipt:
    return Receipt(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(bytes(r[6])), r[7])


class ReceiptsStore:
    """SQL for receipts; every method is one transaction and returns a Deferred.

    :param db: the :class:`fedserver.storage.database.Database`.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def add_receipt(
        self,
        room_id: str,
        receipt_type: str,
        user_id: str,
        thread_id: str,
        event_id: str,
        data: dict[str, Any],
    ) -> "Deferred[Optional[Receipt]]":
        """Store a receipt unless it would move the user's receipt of that type and thread
        backwards (both events held here and the new one older) or changes nothing.

        :param thread_id: ``""`` for unthreaded.
        :returns: Deferred firing with the stored :class:`Receipt` (with its new stream
            id), or ``None`` if it was ignored.
        """
        return self._db.run_write(self._add_receipt_txn, room_id, receipt_type, user_id, thread_id, event_id, data)

    def _add_receipt_txn(
        self, txn: Txn, room_id: str, receipt_type: str, user_id: str, thread_id: str, event_id: str, data: dict
    ) -> Optional[Receipt]:
        for value, what in ((room_id, "room_id"), (receipt_type, "receipt_type"), (user_id, "user_id"),
                            (thread_id, "thread_id"), (event_id, "event_id")):
            check_text(value, what)
        encoded = _encode(data)
        row = txn.execute("SELECT event_nid FROM events WHERE event_id = ? AND room_id = ?", (event_id, room_id)).fetchone()
        nid = None if row is None else row[0]
        old = txn.execute(
            "SELECT event_id, event_nid FROM receipts WHERE room_id = ? AND receipt_type = ? AND user_id = ? AND thread_id = ?",
            (room_id, receipt_type, user_id, thread_id),
        ).fetchone()
        if old is not None:
            if old[0] == event_id:
                return None
            if nid is not None and old[1] is not None and nid < old[1]:
                return None
        stream_id = txn.allocate_ids("receipts", 1)
        txn.execute(
            f"INSERT INTO receipts ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (room_id, receipt_type, user_id, thread_id) DO UPDATE SET event_id = excluded.event_id,"
            " event_nid = excluded.event_nid, data = excluded.data, stream_id = excluded.stream_id",
            (room_id, receipt_type, user_id, thread_id, event_id, nid, encoded, stream_id),
        )
        return Receipt(room_id, receipt_type, user_id, thread_id, event_id, nid, json.loads(encoded), stream_id)

    def get_receipts(
        self, room_ids: Iterable[str], *, since: Optional[int], upto: int, viewer: str
    ) -> "Deferred[list[Receipt]]":
        """The receipts of ``room_ids`` with ``since < stream_id <= upto`` (all up to
        ``upto`` when ``since`` is ``None``) that ``viewer`` may see: everyone's public
        receipts and the viewer's own private ones. Ordered by stream id."""
        ids = lookup_ids(room_ids)
        check_int(upto, "upto")
        check_int(since, "since", nullable=True)

        def txn(t: Txn) -> list[Receipt]:
            if not ids or not lookup_text(viewer, "viewer"):
                return []
            rows = t.select_in(
                f"SELECT {_COLUMNS} FROM receipts WHERE stream_id > ? AND stream_id <= ?"
                " AND (receipt_type != ? OR user_id = ?) AND room_id IN ({})",
                ids,
                (since if since is not None else 0, upto, PRIVATE_READ, viewer),
            )
            return sorted((_row(r) for r in rows), key=lambda r: r.stream_id)

        return self._db.run_read(txn)

    def get_user_receipts(self, room_id: str, user_id: str) -> "Deferred[list[Receipt]]":
        """Every receipt of one user in one room."""

        def txn(t: Txn) -> list[Receipt]:
            if not (lookup_text(room_id, "room_id") and lookup_text(user_id, "user_id")):
                return []
            rows = t.execute(
                f"SELECT {_COLUMNS} FROM receipts WHERE room_id = ? AND user_id = ? ORDER BY stream_id",
                (room_id, user_id),
            ).fetchall()
            return [_row(r) for r in rows]

        return self._db.run_read(txn)

    def get_max_stream_id(self) -> "Deferred[int]":
        """The newest receipt stream position (0 before any receipt)."""

        def txn(t: Txn) -> int:
            row = t.execute("SELECT last_value FROM sequences WHERE name = 'receipts'").fetchone()
            return 0 if row is None else row[0]

        return self._db.run_read(txn)


__all__ = ["PRIVATE_READ", "Receipt", "ReceiptsStore"]
