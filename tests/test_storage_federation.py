"""Tests for server keys, received transactions and the outbound queue on real SQLite files."""

from __future__ import annotations

import json

from fedserver.room_versions import V10
from fedserver.storage import (
    DestinationRetry,
    InvalidDataError,
    OutboundItem,
    PersistEntry,
    ReceivedTxn,
    UnknownEventsError,
)
from fedserver.testing import connect_test_database
from tests.test_storage_events import HOSTILE
from tests.test_storage_support import StoreTestCase, make_event


class ServerKeyTests(StoreTestCase):
    """Remote signing keys and the documents they came in."""

    async def test_store_and_get(self):
        """Keys are returned by id with their validity; the signed document is kept for
        notary serving; unknown ids and servers are absent."""
        store = await self.open()
        doc = b'{"server_name":"r.example","verify_keys":{}}'
        await store.store_server_keys("r.example", [("ed25519:a", "AAAA", 1000, None), ("ed25519:old", "BBBB", 500, 400)], doc, 10)
        got = await store.get_server_keys("r.example", ["ed25519:a", "ed25519:old", "ed25519:nope"])
        self.assertEqual(got, {
            "ed25519:a": {"verify_key": "AAAA", "valid_until_ts": 1000, "expired_ts": None},
            "ed25519:old": {"verify_key": "BBBB", "valid_until_ts": 500, "expired_ts": 400},
        })
        self.assertEqual(await store.get_server_key_json("r.example"), [doc])
        self.assertEqual(await store.get_server_keys("other.example", ["ed25519:a"]), {})
        self.assertEqual(await store.get_server_key_json("other.example"), [])

    async def test_newer_fetch_wins(self):
        """A later fetch replaces a key and its document; an older fetch arriving late does
        not; a fetch without a document keeps the stored one."""
        store = await self.open()
        await store.store_server_keys("r.example", [("ed25519:a", "AAAA", 1000, None)], b'{"v":1}', 10)
        await store.store_server_keys("r.example", [("ed25519:a", "AAAA", 2000, None)], b'{"v":2}', 20)
        await store.store_server_keys("r.example", [("ed25519:a", "AAAA", 1500, None)], b'{"v":"stale"}', 15)
        got = await store.get_server_keys("r.example", ["ed25519:a"])
        self.assertEqual(got["ed25519:a"]["valid_until_ts"], 2000)
        self.assertEqual(await store.get_server_key_json("r.example"), [b'{"v":2}'])
        await store.store_server_keys("r.example", [("ed25519:a", "AAAA", 3000, None)], None, 30)
        self.assertEqual((await store.get_server_keys("r.example", ["ed25519:a"]))["ed25519:a"]["valid_until_ts"], 3000)
        self.assertEqual(await store.get_server_key_json("r.example"), [b'{"v":2}'])

    async def test_bad_keys_refused(self):
        """Malformed key tuples are refused and nothing of the call is stored."""
        store = await self.open()
        for keys in ([("ed25519:a", "AAAA", "soon", None)], [("ed25519:a", "AAAA")], [("ed25519:a", None, 1, None)]):
            with self.assertRaises(InvalidDataError):
                await store.store_server_keys("r.example", [("ed25519:ok", "CCCC", 1, None)] + keys, None, 1)
        self.assertEqual(await store.get_server_keys("r.example", ["ed25519:ok"]), {})
        for h in HOSTILE:
            self.assertEqual(await store.get_server_keys(h, HOSTILE), {})


class ReceivedTxnTests(StoreTestCase):
    """Inbound transaction answers, for replay."""

    async def test_replay_gets_first_answer(self):
        """The first answer recorded for (origin, txn_id) is kept and returned, even when
        a second is stored; other origins with the same id are separate; it survives a
        restart."""
        path = self.db_path()
        store = await self.open(path)
        self.assertIsNone(await store.get_received_txn("a.example", "t1"))
        first = await store.store_received_txn("a.example", "t1", 200, {"pdus": {"$e": {}}}, 100)
        self.assertEqual(first, (200, b'{"pdus":{"$e":{}}}'))
        second = await store.store_received_txn("a.example", "t1", 200, {"pdus": {}}, 200)
        self.assertEqual(second, first)
        await store.store_received_txn("b.example", "t1", 200, b'{"other":true}', 100)
        store.close()
        store = await self.open(path)
        self.assertEqual(await store.get_received_txn("a.example", "t1"), first)
        self.assertEqual(await store.get_received_txn("b.example", "t1"), (200, b'{"other":true}'))
        for h in HOSTILE:
            self.assertIsNone(await store.get_received_txn(h, h))
        self.assertEqual(await store.prune_received_txns(150), 2)
        self.assertIsNone(await store.get_received_txn("a.example", "t1"))

    async def test_answer_committed_with_events(self):
        """persist_events with received_txn records the answer in the same transaction:
        both are stored, or (when the batch is bad) neither."""
        store = await self.open()
        ok = make_event(V10, "!r:a.example", "m.room.message")
        await store.persist_events([PersistEntry(ok, outlier=True)], received_txn=ReceivedTxn("a.example", "t1", 200, {"pdus": {ok.event_id: {}}}, 1))
        self.assertEqual(await store.have_events([ok.event_id]), {ok.event_id})
        self.assertEqual((await store.get_received_txn("a.example", "t1"))[0], 200)
        ok2 = make_event(V10, "!r:a.example", "m.room.message")
        bad = make_event(V10, "!r:a.example", "m.room.message")
        with self.assertRaises(UnknownEventsError):
            await store.persist_events(
                [PersistEntry(ok2, outlier=True), PersistEntry(bad, state_before={("m.room.create", ""): "$missing"})],
                received_txn=ReceivedTxn("a.example", "t2", 200, {}, 2),
            )
        self.assertIsNone(await store.get_received_txn("a.example", "t2"))
        self.assertEqual(await store.have_events([ok2.event_id]), set())

    async def test_unserialisable_body_refused(self):
        """A response body that is not JSON is refused with InvalidDataError."""
        store = await self.open()
        with self.assertRaises(InvalidDataError):
            await store.store_received_txn("a.example", "t", 200, {"x": float("nan")}, 1)
        with self.assertRaises(InvalidDataError):
            await store.store_received_txn("a.example", "t", 200, {"x": object()}, 1)


class OutboundQueueTests(StoreTestCase):
    """The persisted per-destination outbound queue."""

    async def test_fifo_ack_and_restart(self):
        """Items come out per destination in the order queued, in batches that respect
        the PDU / EDU limits and form a prefix of the queue; acknowledging removes
        exactly the batch; a restart loses nothing."""
        path = self.db_path()
        store = await self.open(path)
        pdus = [{"n": i, "type": "m.room.message"} for i in range(60)]
        added = await store.enqueue_outbound(["b.example", "c.example"], pdus=pdus[:30], edus=[{"edu_type": "m.typing", "n": 0}])
        self.assertEqual(added, 62)
        await store.enqueue_outbound(["b.example"], pdus=pdus[30:], edus=[{"edu_type": "m.typing", "n": 1}])
        self.assertEqual(await store.destinations_with_pending(), ["b.example", "c.example"])

        batch = await store.get_outbound_batch("b.example", max_pdus=50, max_edus=100)
        self.assertEqual([json.loads(i.json)["n"] for i in batch if i.kind == "pdu"], list(range(30)) + list(range(30, 50))[:20])
        self.assertEqual([i.kind for i in batch].count("edu"), 1)
        self.assertEqual(len(batch), 51)
        self.assertEqual([i.queue_id for i in batch], sorted(i.queue_id for i in batch))
        self.assertIsInstance(batch[0], OutboundItem)
        # Limit on EDUs stops the prefix at the first EDU that does not fit.
        small = await store.get_outbound_batch("b.example", max_pdus=50, max_edus=0)
        self.assertEqual(len(small), 30)
        self.assertEqual(await store.ack_outbound("b.example", batch[-1].queue_id), 51)

        store.close()
        store = await self.open(path)
        rest = await store.get_outbound_batch("b.example")
        self.assertEqual([json.loads(i.json)["n"] for i in rest], list(range(50, 60)) + [1])
        c_items = await store.get_outbound_batch("c.example")
        self.assertEqual(len(c_items), 31)
        await store.ack_outbound("b.example", rest[-1].queue_id)
        self.assertEqual(await store.get_outbound_batch("b.example"), [])
        self.assertEqual(await store.destinations_with_pending(), ["c.example"])
        await store.ack_outbound("c.example", c_items[-1].queue_id)
        self.assertEqual(await store.destinations_with_pending(), [])

    async def test_payloads_stored_once_and_collected(self):
        """A PDU queued for many destinations is stored once, and deleted when the last
        destination acknowledges it; queue ids are never reused after the queue empties."""
        path = self.db_path()
        store = await self.open(path)
        dests = [f"s{i}.example" for i in range(100)]
        await store.enqueue_outbound(dests, pdus=[b'{"big":"pdu"}'])
        conn = connect_test_database(path)
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("SELECT COUNT(*) FROM outbound_payloads").fetchone()[0], 1)
        last_id = 0
        for d in dests:
            (item,) = await store.get_outbound_batch(d)
            self.assertEqual(item.json, b'{"big":"pdu"}')
            last_id = max(last_id, item.queue_id)
            await store.ack_outbound(d, item.queue_id)
        self.assertEqual(conn.execute("SELECT COUNT(*) FROM outbound_payloads").fetchone()[0], 0)
        await store.enqueue_outbound(["s0.example"], edus=[{"edu_type": "x"}])
        (item,) = await store.get_outbound_batch("s0.example")
        self.assertGreater(item.queue_id, last_id)

    async def test_txn_ids_unique_across_restarts(self):
        """Transaction ids per destination keep increasing across a restart and differ
        between calls."""
        path = self.db_path()
        store = await self.open(path)
        ids = [await store.next_txn_id("b.example") for _ in range(3)]
        store.close()
        store = await self.open(path)
        ids += [await store.next_txn_id("b.example") for _ in range(2)]
        self.assertEqual(len(set(ids)), 5)
        epochs = {i.rsplit("_", 1)[0] for i in ids}
        self.assertEqual(len(epochs), 1)
        self.assertEqual([int(i.rsplit("_", 1)[1]) for i in ids], [1, 2, 3, 4, 5])
        self.assertTrue((await store.next_txn_id("c.example")).endswith("_1"))

    async def test_destination_retry(self):
        """Back-off state is stored, survives a restart, and is cleared; unknown or
        hostile destinations have none."""
        path = self.db_path()
        store = await self.open(path)
        self.assertIsNone(await store.get_destination_retry("b.example"))
        await store.set_destination_retry("b.example", 1000, 60_000)
        await store.set_destination_retry("b.example", 2000, 120_000)
        store.close()
        store = await self.open(path)
        self.assertEqual(await store.get_destination_retry("b.example"), DestinationRetry(2000, 120_000))
        await store.clear_destination_retry("b.example")
        self.assertIsNone(await store.get_destination_retry("b.example"))
        await store.clear_destination_retry("never-seen.example")
        for h in HOSTILE:
            self.assertIsNone(await store.get_destination_retry(h))
            self.assertEqual(await store.get_outbound_batch(h), [])

    async def test_bad_queue_input_refused(self):
        """A bare string of destinations, a non-JSON payload or a non-integer ack are
        refused with InvalidDataError, and nothing is queued."""
        store = await self.open()
        with self.assertRaises(InvalidDataError):
            await store.enqueue_outbound("b.example", pdus=[{}])
        with self.assertRaises(InvalidDataError):
            await store.enqueue_outbound(["b.example"], pdus=[{}, {"x": {1, 2}}])
        with self.assertRaises(InvalidDataError):
            await store.ack_outbound("b.example", "5")
        self.assertEqual(await store.destinations_with_pending(), [])
