"""Storage for to-device messages: each device's inbox until the device has received them, and the ids that make sending idempotent."""

# Client-Server "Send-to-Device messaging", "Server behaviour": "Servers should store
# pending messages for local users until they are successfully delivered to the
# destination device"; a message is delivered once the device syncs with the
# ``next_batch`` of the answer that carried it, and "the server should limit the number
# sent in each /sync response" (100 recommended). An answer that held some back records,
# in device_inbox_acks, how far its token acknowledges, so that the next sync from it
# deletes only what was sent.

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from twisted.internet.defer import Deferred

from fedserver.storage.database import Database, Txn, check_int, check_text, lookup_text
from fedserver.storage.users.devices_store import decode_json, encode_json

#: The sequence of inbox positions.
TO_DEVICE_SEQUENCE = "to_device"


@dataclass(frozen=True, slots=True)
class Delivery:
    """What one /sync hands a device.

    :ivar messages: the messages, oldest first.
    :ivar more: whether more wait after them (up to the position the sync reads to).
    """

    messages: list[dict[str, Any]]
    more: bool


class ToDeviceStore:
    """SQL for to-device messages (schema 009).

    :param db: the database.
    :param clock_ms: the current time in milliseconds.
    """

    def __init__(self, db: Database, clock_ms: Callable[[], int]) -> None:
        self._db = db
        self._clock_ms = clock_ms

    def get_position_txn(self, txn: Txn) -> int:
        row = txn.execute("SELECT last_value FROM sequences WHERE name = ?", (TO_DEVICE_SEQUENCE,)).fetchone()
        return 0 if row is None else row[0]

    def get_position(self) -> "Deferred[int]":
        """The newest inbox position (0 before any message)."""
        return self._db.run_read(self.get_position_txn)

    # -- queueing ----------------------------------------------------------------------

    def pending_counts_txn(self, txn: Txn, targets: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """How many messages wait for each ``(user_id, device_id)``."""
        out = {}
        for user_id, device_id in set(targets):
            if not (lookup_text(user_id, "user_id") and lookup_text(device_id, "device_id")):
                continue
            out[(user_id, device_id)] = txn.execute(
                "SELECT COUNT(*) FROM device_inbox WHERE user_id = ? AND device_id = ?", (user_id, device_id)
            ).fetchone()[0]
        return out

    def add_messages_txn(self, txn: Txn, messages: Iterable[tuple[str, str, dict[str, Any]]]) -> int:
        """Queue ``(user_id, device_id, message)`` in order.

        :returns: the position of the last one (the current position if none).
        """
        rows = list(messages)
        if not rows:
            return self.get_position_txn(txn)
        first = txn.allocate_ids(TO_DEVICE_SEQUENCE, len(rows))
        for offset, (user_id, device_id, message) in enumerate(rows):
            check_text(user_id, "user_id")
            check_text(device_id, "device_id")
            txn.execute(
                "INSERT INTO device_inbox (user_id, device_id, stream_id, message_json) VALUES (?, ?, ?, ?)",
                (user_id, device_id, first + offset, encode_json(message)),
            )
        return first + len(rows) - 1

    def claim_txn_id_txn(self, txn: Txn, user_id: str, scope: str, txn_id: str) -> bool:
        """Record a client transaction id of ``PUT /sendToDevice``.

        :returns: ``False`` if it was seen before (the request is a retry: do nothing).
        """
        check_text(user_id, "user_id")
        check_text(scope, "scope")
        check_text(txn_id, "txn_id")
        return txn.execute(
            "INSERT INTO to_device_txns (user_id, scope, txn_id, ts) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (user_id, scope, txn_id) DO NOTHING",
            (user_id, scope, txn_id, self._clock_ms()),
        ).rowcount > 0

    def claim_message_id_txn(self, txn: Txn, origin: str, message_id: str) -> bool:
        """Record the ``message_id`` of an ``m.direct_to_device`` EDU from ``origin``.

        :returns: ``False`` if it was seen before (a repeat: do nothing).
        """
        check_text(origin, "origin")
        check_text(message_id, "message_id")
        return txn.execute(
            "INSERT INTO received_to_device (origin, message_id, ts) VALUES (?, ?, ?)"
            " ON CONFLICT (origin, message_id) DO NOTHING",
            (origin, message_id, self._clock_ms()),
        ).rowcount > 0

    def prune(self, before_ts: int) -> "Deferred[int]":
        """Forget transaction and message ids recorded before ``before_ts``."""
        check_int(before_ts, "before_ts")

        def txn_func(txn: Txn) -> int:
            n = txn.execute("DELETE FROM to_device_txns WHERE ts < ?", (before_ts,)).rowcount
            return n + txn.execute("DELETE FROM received_to_device WHERE ts < ?", (before_ts,)).rowcount

        return self._db.run_write(txn_func)

    # -- delivering --------------------------------------------------------------------

    def has_pending_txn(self, txn: Txn, user_id: str, device_id: str) -> bool:
        """Whether any message (or acknowledgement record) waits for the device: if not,
        a /sync has nothing to deliver or delete and needs no write."""
        if not (lookup_text(user_id, "user_id") and lookup_text(device_id, "device_id")):
            return False
        params = (user_id, device_id)
        return (
            txn.execute("SELECT 1 FROM device_inbox WHERE user_id = ? AND device_id = ? LIMIT 1", params).fetchone()
            is not None
            or txn.execute("SELECT 1 FROM device_inbox_acks WHERE user_id = ? AND device_id = ? LIMIT 1", params).fetchone()
            is not None
        )

    def deliver_txn(
        self, txn: Txn, user_id: str, device_id: str, since: Optional[int], now: int, limit: int
    ) -> Delivery:
        """The messages of one /sync answer for a device whose client gave the position
        ``since`` (``None``: none) and is answered up to ``now``.

        What ``since`` acknowledges is deleted first (everything up to it, or up to what
        the answer that gave it out really sent). At most ``limit`` messages are
        returned; if more wait up to ``now``, the answer's position ``now`` is recorded
        as acknowledging only the last one sent, and the stream moves on so that the
        next answer gets another position.
        """
        check_int(now, "now")
        check_int(since, "since", nullable=True)
        if not (lookup_text(user_id, "user_id") and lookup_text(device_id, "device_id")):
            return Delivery([], False)
        upto = 0
        if since is not None:
            row = txn.execute(
                "SELECT delivered_upto FROM device_inbox_acks WHERE user_id = ? AND device_id = ? AND token_pos = ?",
                (user_id, device_id, since),
            ).fetchone()
            upto = since if row is None else min(row[0], since)
            txn.execute(
                "DELETE FROM device_inbox WHERE user_id = ? AND device_id = ? AND stream_id <= ?",
                (user_id, device_id, upto),
            )
            # Tokens older than the one the client uses now are done with (its own row stays:
            # a retry of this sync, whose answer was lost, must find it again).
            txn.execute(
                "DELETE FROM device_inbox_acks WHERE user_id = ? AND device_id = ? AND token_pos < ?",
                (user_id, device_id, since),
            )
        rows = txn.execute(
            "SELECT stream_id, message_json FROM device_inbox WHERE user_id = ? AND device_id = ?"
            " AND stream_id > ? AND stream_id <= ? ORDER BY stream_id LIMIT ?",
            (user_id, device_id, upto, now, limit + 1),
        ).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        if more:
            # The next answer's position must differ from this one's, or a sync from it
            # could not tell "received" from "retrying": move the stream on.
            txn.allocate_ids(TO_DEVICE_SEQUENCE, 1)
            txn.execute(
                "INSERT INTO device_inbox_acks (user_id, device_id, token_pos, delivered_upto) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (user_id, device_id, token_pos) DO UPDATE SET delivered_upto = excluded.delivered_upto",
                (user_id, device_id, now, rows[-1][0]),
            )
        return Delivery([decode_json(r[1]) for r in rows], more)

    def deliver(
        self, user_id: str, device_id: str, since: Optional[int], now: int, limit: int
    ) -> "Deferred[Delivery]":
        """:meth:`deliver_txn` in its own write transaction."""
        return self._db.run_write(self.deliver_txn, user_id, device_id, since, now, limit)


__all__ = ["Delivery", "TO_DEVICE_SEQUENCE", "ToDeviceStore"]
