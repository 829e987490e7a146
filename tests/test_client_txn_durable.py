"""A client transaction id is recorded in the database transaction that stores its event
(client-server API "Transaction identifiers"; issue 18)."""

from __future__ import annotations

from typing import Any

from fedserver.handlers.rooms.rooms import RoomsHandler
from fedserver.storage.interface import StorageUnavailableError
from fedserver.testing import io_fault
from tests.test_rooms_support import RoomsTestCase


class ClientTxnDurabilityTests(RoomsTestCase):
    async def test_fault_recording_the_txn_id_stores_no_event(self):
        """A storage fault while the transaction id is written, after the event's rows in
        the same transaction, fails the request with the fault and leaves NO event (the
        one-transaction-after-the-other way left the event stored without its id, so the
        client's retry made it twice). The retry then makes the event once; a second
        retry gets the same event id and stores nothing."""
        alice = await self.user("alice")
        room_id = await self.create(alice)
        send_path = f"/rooms/{room_id}/send/m.room.message"
        extremities = set(await self.store.get_forward_extremities(room_id))
        position = await self.store.rooms.get_stream_position()
        real = self.store.rooms.store_client_txn_txn
        calls = []

        def failing(txn: Any, *args: Any, **kw: Any) -> Any:
            calls.append(args + (kw.get("path"),))
            # The event's own rows are written by now, in this transaction.
            (count,) = txn.execute("SELECT COUNT(*) FROM events WHERE event_id = ?", (args[4],)).fetchone()
            calls.append(count)
            raise io_fault(self.store.database)

        self.patch(self.store.rooms, "store_client_txn_txn", failing)
        with self.assertRaises(StorageUnavailableError):
            await self.send_text(alice, room_id, "once", txn_id="t1")
        self.assertEqual(calls[0][:4], (alice.user_id, "dDEV", "t1", room_id))
        self.assertEqual(calls[0][-1], send_path)
        self.assertEqual(calls[1], 1)
        self.assertEqual(set(await self.store.get_forward_extremities(room_id)), extremities)
        self.assertEqual(await self.store.rooms.get_stream_position(), position)
        self.assertIsNone(await self.store.rooms.get_client_txn(alice.user_id, "dDEV", "t1", path=send_path))

        self.patch(self.store.rooms, "store_client_txn_txn", real)
        first = await self.send_text(alice, room_id, "once", txn_id="t1")
        self.assertEqual(await self.store.rooms.get_client_txn(alice.user_id, "dDEV", "t1", path=send_path), first)
        after_first = await self.store.rooms.get_stream_position()
        self.assertGreater(after_first, position)
        self.assertEqual(await self.send_text(alice, room_id, "once", txn_id="t1"), first)
        self.assertEqual(await self.store.rooms.get_stream_position(), after_first)
        self.assertEqual(set(await self.store.get_forward_extremities(room_id)), {first})

    async def test_txn_id_needs_no_second_write(self):
        """The id is on record once the event is, for sends and redactions: the separate
        write that used to follow (RoomsStore.store_client_txn, its own transaction, where
        a crash could fall between) is not used, and a retry from a handler with no memory
        of the first request (as after a restart) gets the first event back."""
        alice = await self.user("alice")
        room_id = await self.create(alice)
        send_path = f"/rooms/{room_id}/send/m.room.message"

        def crash(*args: Any, **kw: Any) -> Any:
            raise AssertionError("the transaction id must be recorded with the event")

        self.patch(self.store.rooms, "store_client_txn", crash)
        first = await self.send_text(alice, room_id, "hello", txn_id="t2")
        redaction = await self.rooms.redact(alice, room_id, first, "t3")
        fresh = RoomsHandler(self.events, self.membership, self.directory, self.source)
        content = {"msgtype": "m.text", "body": "hello"}
        self.assertEqual(await fresh.send_event(alice, room_id, "m.room.message", content, "t2"), first)
        self.assertEqual(await fresh.redact(alice, room_id, first, "t3"), redaction)
        self.assertEqual(await self.store.rooms.get_client_txn(alice.user_id, "dDEV", "t2", path=send_path), first)
        self.assertEqual(await self.store.rooms.get_client_txn(alice.user_id, "dDEV", "t3", path=f"/rooms/{room_id}/redact/{first}"), redaction)
