"""Tests for fedserver.federation.sender: the persisted per-destination outbound queue on a real
SQLite store, with a task.Clock for the sender's time and a peer whose answers we control."""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.internet.task import Clock

from fedserver.federation.client import FederationUnreachable, HttpResponseError
from fedserver.federation.sender import FederationSender
from tests.test_federation_support import StoreTestCase, deferLater

US = "us.test"
DEST = "dest.test"


class FakePeer:
    """The ``put_transaction`` callable: records each PUT and answers with a Deferred the
    test fires."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict, defer.Deferred]] = []

    def __call__(self, destination, txn_id, body):
        d: defer.Deferred = defer.Deferred()
        self.calls.append((destination, txn_id, body, d))
        return d

    def bodies(self):
        return [c[2] for c in self.calls]


def pdu(n: int) -> dict:
    return {"event_id": f"$e{n}", "type": "m.room.message", "content": {"n": n}}


class SenderTestCase(StoreTestCase):
    async def setUp(self):
        directory = self.mktemp()
        os.makedirs(directory)
        self.path = os.path.join(directory, "fedserver.db")
        self.store = await self.open_store(self.path)
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.peer = FakePeer()
        self.sender = self.make_sender(self.store, self.clock)
        await self.sender.start()

    def make_sender(self, store, clock, **kw):
        kw.setdefault("min_retry_ms", 2_000)
        kw.setdefault("max_retry_ms", 10_000)
        sender = FederationSender(clock, store, self.peer, US, **kw)
        self.addCleanup(sender.stop)
        return sender

    async def until(self, predicate, what="condition"):
        """Let the database thread and the reactor run until ``predicate()`` holds."""
        for _ in range(2000):
            if predicate():
                return
            await deferLater(0.002)
        self.fail(f"timed out waiting for {what}")

    async def puts(self, n):
        await self.until(lambda: len(self.peer.calls) >= n, f"{n} PUTs")
        self.assertEqual(len(self.peer.calls), n, "more PUTs than expected")

    async def queued(self, destination=DEST):
        return await self.store.get_outbound_batch(destination, 1000, 1000)

    async def fail_next(self, n, error):
        """Fail the ``n``-th PUT with ``error`` once it is made."""
        await self.puts(n)
        self.peer.calls[n - 1][3].errback(error)
        await self.until(lambda: not self.sender.sending(), "the failure to be handled")

    async def settle(self):
        """Give the sender a chance to do anything it would do now."""
        for _ in range(20):
            await deferLater(0.002)


class QueueTests(SenderTestCase):
    """Queueing, batching and one transaction in flight per destination."""

    async def test_persisted_before_sending(self):
        """send_pdus fires once the PDUs are in the database; the PUT carries them in a
        transaction from us, and only after it succeeds is the queue emptied."""
        await self.sender.send_pdus([pdu(1)], [DEST])
        self.assertEqual(len(await self.queued()), 1)
        await self.puts(1)
        dest, txn_id, body, d = self.peer.calls[0]
        self.assertEqual((dest, body["origin"], body["pdus"]), (DEST, US, [pdu(1)]))
        self.assertEqual(body["origin_server_ts"], 1_700_000_000_000)
        self.assertNotIn("edus", body)
        self.assertEqual(len(await self.queued()), 1)
        d.callback({"pdus": {}})
        await self.until(lambda: not self.sender.sending(), "the send to finish")
        self.assertEqual(await self.queued(), [])

    async def test_wake_sends_what_another_writer_queued(self):
        """Rows queued outside the sender (by the transaction storing an event) go out once
        ``wake`` names their destination; waking ourselves or a destination with nothing
        queued sends nothing."""
        await self.store.enqueue_outbound([DEST], pdus=[pdu(7)])
        await self.settle()
        self.assertEqual(self.peer.calls, [])
        self.sender.wake([US, "empty.test"])
        await self.settle()
        self.assertEqual(self.peer.calls, [])
        self.sender.wake([DEST])
        await self.puts(1)
        self.assertEqual(self.peer.calls[0][2]["pdus"], [pdu(7)])

    async def test_ourselves_and_nobody(self):
        """Nothing is queued for our own server name or for no destinations."""
        await self.sender.send_pdus([pdu(1)], [US])
        await self.sender.send_edu("m.typing", {}, [])
        await self.sender.send_pdus([], [DEST])
        self.assertEqual(await self.store.destinations_with_pending(), [])

    async def test_one_in_flight_then_batched(self):
        """While a transaction is in flight, newly queued PDUs and EDUs wait; they then
        go together in the next transaction, with a new transaction id."""
        await self.sender.send_pdus([pdu(1)], [DEST])
        await self.puts(1)
        await self.sender.send_pdus([pdu(2)], [DEST])
        await self.sender.send_edu("m.typing", {"typing": True}, [DEST])
        await self.sender.send_pdus([pdu(3)], [DEST, "other.test"])
        await self.until(lambda: len(self.peer.calls) == 2, "the other destination's PUT")
        self.assertEqual(self.peer.calls[1][0], "other.test")  # other destinations go on
        await self.settle()
        self.assertEqual(len(self.peer.calls), 2)
        self.peer.calls[0][3].callback({})
        await self.puts(3)
        dest, txn_id, body, d = self.peer.calls[2]
        self.assertEqual(dest, DEST)
        self.assertEqual(body["pdus"], [pdu(2), pdu(3)])
        self.assertEqual(body["edus"], [{"edu_type": "m.typing", "content": {"typing": True}}])
        self.assertNotEqual(txn_id, self.peer.calls[0][1])
        d.callback({})
        self.peer.calls[1][3].callback({})
        await self.until(lambda: not self.sender.sending(), "the sends to finish")
        self.assertEqual(await self.store.destinations_with_pending(), [])

    async def test_transactions_respect_spec_limits(self):
        """120 PDUs and 150 EDUs queued at once go in transactions of at most 50 PDUs and
        100 EDUs, in queue order, none lost."""
        await self.sender.send_pdus([pdu(i) for i in range(120)], [DEST])
        for i in range(150):
            await self.sender.send_edu("x", {"i": i}, [DEST])
        sent_pdus, sent_edus = [], []
        for n in range(1, 20):
            await self.until(lambda: len(self.peer.calls) >= n or not self.sender.sending(), "a PUT")
            if len(self.peer.calls) < n:
                break
            body = self.peer.calls[n - 1][2]
            self.assertLessEqual(len(body["pdus"]), 50)
            self.assertLessEqual(len(body.get("edus", [])), 100)
            sent_pdus += body["pdus"]
            sent_edus += body.get("edus", [])
            self.peer.calls[n - 1][3].callback({})
        self.assertEqual(sent_pdus, [pdu(i) for i in range(120)])
        self.assertEqual([e["content"]["i"] for e in sent_edus], list(range(150)))


class FailureTests(SenderTestCase):
    """Refusals, backoff, recovery."""

    async def test_4xx_dropped(self):
        """A 4xx other than 429 refuses the transaction itself: it is dropped (retrying
        the same content cannot help) and the next items go at once, without backoff."""
        await self.sender.send_pdus([pdu(1)], [DEST])
        await self.puts(1)
        await self.sender.send_pdus([pdu(2)], [DEST])
        self.peer.calls[0][3].errback(HttpResponseError(400, "M_BAD_JSON", "no", b"{}"))
        await self.puts(2)
        self.assertEqual(self.peer.calls[1][2]["pdus"], [pdu(2)])
        self.assertEqual(self.sender.backoff_ms(DEST), 0)
        self.assertIsNone(await self.store.get_destination_retry(DEST))

    async def test_backoff_doubles_up_to_the_cap(self):
        """Network errors, 5xx and 429 back off 2 s, 4 s, 8 s, then the 10 s cap; nothing
        is sent before the interval has passed; the state is persisted; the queue is kept."""
        await self.sender.send_pdus([pdu(1)], [DEST])
        errors = [
            FederationUnreachable("connection refused"),
            HttpResponseError(502, None, None, b""),
            HttpResponseError(429, "M_LIMIT_EXCEEDED", "slow", b"{}"),
            FederationUnreachable("timeout"),
            FederationUnreachable("still down"),
        ]
        expected = [2_000, 4_000, 8_000, 10_000, 10_000]
        for n, (error, interval) in enumerate(zip(errors, expected), start=1):
            await self.fail_next(n, error)
            self.assertEqual(self.sender.backoff_ms(DEST), interval)
            retry = await self.store.get_destination_retry(DEST)
            self.assertEqual((retry.failure_ts, retry.retry_interval_ms), (int(self.clock.seconds() * 1000), interval))
            self.clock.advance(interval / 1000 - 0.001)
            await self.settle()
            self.assertEqual(len(self.peer.calls), n)
            self.clock.advance(0.001)
        await self.puts(6)
        self.assertEqual(self.peer.calls[5][2]["pdus"], [pdu(1)])
        self.peer.calls[5][3].callback({})
        await self.until(lambda: not self.sender.sending(), "the send to finish")
        self.assertEqual(self.sender.backoff_ms(DEST), 0)
        self.assertIsNone(await self.store.get_destination_retry(DEST))

    async def test_catch_up_after_outage(self):
        """Everything queued while a destination was down goes out when it is back, in as
        few transactions as the limits allow."""
        await self.sender.send_pdus([pdu(0)], [DEST])
        await self.fail_next(1, FederationUnreachable("down"))
        for i in range(1, 6):
            await self.sender.send_pdus([pdu(i)], [DEST])
        await self.settle()
        self.assertEqual(len(self.peer.calls), 1)
        self.clock.advance(2)
        await self.puts(2)
        self.assertEqual(self.peer.calls[1][2]["pdus"], [pdu(i) for i in range(6)])

    async def test_on_server_seen_resets_backoff(self):
        """A valid signed request from the destination ends its backoff: the queue is sent
        at once, without waiting for the interval, and the stored retry state is cleared."""
        await self.sender.send_pdus([pdu(1)], [DEST])
        await self.fail_next(1, FederationUnreachable("down"))
        self.assertEqual(self.sender.backoff_ms(DEST), 2_000)
        self.sender.on_server_seen("someone-else.test")
        self.sender.on_server_seen(DEST)
        self.assertEqual(self.sender.backoff_ms(DEST), 0)
        await self.puts(2)
        self.peer.calls[1][3].callback({})
        await self.until(lambda: not self.sender.sending(), "the send to finish")
        self.assertIsNone(await self.store.get_destination_retry(DEST))
        self.assertEqual(await self.queued(), [])


class RestartTests(SenderTestCase):
    """Nothing queued is lost across a restart, and transaction ids never repeat."""

    async def test_restart_resumes_and_txn_ids_are_unique(self):
        """After a stop, a store reopen and a new sender, the queued items are sent, after
        the backoff recorded before the restart; every transaction id ever used for the
        destination differs."""
        await self.sender.send_pdus([pdu(1)], [DEST])
        await self.puts(1)
        self.peer.calls[0][3].callback({})
        await self.sender.send_pdus([pdu(2)], [DEST])
        await self.fail_next(2, FederationUnreachable("down"))
        await self.sender.stop()
        self.store.close()

        store = await self.open_store(self.path)
        clock = Clock()
        clock.advance(self.clock.seconds())
        sender = self.make_sender(store, clock)
        await sender.start()
        await self.settle()
        self.assertEqual(len(self.peer.calls), 2)  # still backing off
        clock.advance(2)
        await self.puts(3)
        self.assertEqual(self.peer.calls[2][2]["pdus"], [pdu(2)])
        self.peer.calls[2][3].callback({})
        await self.until(lambda: not sender.sending(), "the send to finish")
        await sender.send_pdus([pdu(3)], [DEST])
        await self.puts(4)
        ids = [c[1] for c in self.peer.calls]
        self.assertEqual(len(set(ids)), 4, ids)

    async def test_stop_cancels_in_flight_and_keeps_the_queue(self):
        """Stopping cancels the PUT in flight and fires; the items stay queued (no
        backoff recorded) and are sent by the next sender."""
        await self.sender.send_pdus([pdu(1)], [DEST])
        await self.puts(1)
        await self.sender.stop()
        self.assertTrue(self.peer.calls[0][3].called)
        self.assertEqual(len(await self.queued()), 1)
        self.assertIsNone(await self.store.get_destination_retry(DEST))
        sender = self.make_sender(self.store, self.clock)
        await sender.start()
        await self.puts(2)
        self.assertEqual(self.peer.calls[1][2]["pdus"], [pdu(1)])

    async def test_stop_while_reading_the_queue_sends_nothing(self):
        """A stop that lands while the sender is still reading the queue (before any PUT)
        completes, and no PUT is made afterwards."""
        await self.sender.send_pdus([pdu(1)], [DEST])
        self.assertEqual(self.peer.calls, [])
        await self.sender.stop()
        await self.settle()
        self.assertEqual(self.peer.calls, [])
        self.assertEqual(len(await self.queued()), 1)
