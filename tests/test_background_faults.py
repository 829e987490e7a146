"""Background work while the database is unavailable (a real SQLite file made unwritable): the
outbound sender, the user directory indexer, the relations catch-up, presence and inbound
federation log nothing beyond the database's own line for the episode (no traceback), and
all of them recover by themselves once it is writable again."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

import fedserver.federation.sender as sender_module
import fedserver.handlers.client.user_directory as directory_module
import fedserver.http.client.rooms as room_services_module
from fedserver.federation.sender import FederationSender
from fedserver.storage.sqlite import open_store
from tests.test_daily_use import DailyUseTestCase, q
from tests.test_storage_faults import LogCapture


def read_only(on: bool):
    return lambda conn: conn.execute(f"PRAGMA query_only = {1 if on else 0}")


def wait(seconds: float) -> defer.Deferred:
    return deferLater(reactor, seconds, lambda: None)


class SenderTests(TestCase):
    async def test_sender_waits_out_an_unwritable_database(self):
        """An EDU queued for a peer cannot be sent while the database is unwritable (a
        transaction id must be persisted first): nothing but the database's one line is
        logged, the item stays queued, and the sender tries again by itself after
        STORAGE_RETRY_S; once writable, the transaction goes out and the queue empties."""
        store = await open_store(self.mktemp(), reactor)
        self.addCleanup(store.close)
        db = store.database
        log = LogCapture(self)
        clock = Clock()
        sent: list[tuple[str, dict]] = []

        def put(dest: str, txn_id: str, body: dict) -> defer.Deferred:
            sent.append((dest, body))
            return defer.succeed({})

        sender = FederationSender(clock, store, put, "us.test")
        await store.enqueue_outbound(["peer.test"], edus=[{"edu_type": "m.typing", "content": {"x": 1}}])
        await db.run_with_connection(read_only(True))
        await sender.start()
        await defer.DeferredList(list(sender._in_flight))
        self.assertEqual(sent, [])
        self.assertEqual(await store.destinations_with_pending(), ["peer.test"])
        serious = log.serious()
        self.assertEqual(len(serious), 1, log.formats(serious))
        self.assertIn("Database unavailable", serious[0]["log_format"])
        self.assertEqual([round(c.getTime() - clock.seconds(), 3) for c in clock.getDelayedCalls()],
                         [sender_module.STORAGE_RETRY_S])
        await db.run_with_connection(read_only(False))
        clock.advance(sender_module.STORAGE_RETRY_S)
        await defer.DeferredList(list(sender._in_flight))
        self.assertEqual([d for d, _ in sent], ["peer.test"])
        self.assertEqual(sent[0][1]["edus"][0]["content"], {"x": 1})
        self.assertEqual(await store.destinations_with_pending(), [])
        self.assertEqual(len(log.serious()), 1, log.formats(log.serious()))
        await sender.stop()


class RunningServerTests(DailyUseTestCase):
    async def test_server_quiet_and_recovering(self):
        """Servers A and B share a room; A's database becomes unwritable. A's user types
        (A's sender needs the database), B's user speaks (A answers 503 and B retries), A's
        user tries to speak (503), A's user directory and relations catch-up are asked to
        index: A logs the database's line and no traceback. Once A's database is writable
        again, without any restart: B's message reaches A, A's user speaks and B hears it,
        the directory and the relations are indexed."""
        for module in (sender_module, directory_module, room_services_module):
            self.patch(module, "STORAGE_RETRY_S", 0.2)
        a = await self.server(outbound_max_retry_interval=1)
        b = await self.server(outbound_max_retry_interval=1)
        alice, at = await a.register("alice", "Alice")
        bob, bt = await b.register("bob")
        room = await self.shared_room(a, at, b, bt, "outage")
        svc = a.svc
        db = svc.store.database
        # Work for the indexers to redo: the directory from the start, a relations catch-up.
        await db.run_write(lambda txn: txn.execute("UPDATE room_indexers SET position = 0 WHERE name = 'user_directory'"))
        await db.run_write(lambda txn: txn.execute("DELETE FROM user_directory"))
        await db.run_write(lambda txn: txn.execute(
            "INSERT INTO room_indexers (name, position) VALUES ('relations_catchup', 1000000000)"))
        log = LogCapture(self)
        await db.run_with_connection(read_only(True))

        code, _ = await a.call("PUT", f"/rooms/{q(room)}/typing/{q(alice)}", {"typing": True, "timeout": 5000}, at)
        self.assertIn(code, (200, 503))
        await b.ok("PUT", f"/rooms/{q(room)}/send/m.room.message/b1", {"msgtype": "m.text", "body": "from bob"}, bt)
        code, answer = await a.call("PUT", f"/rooms/{q(room)}/send/m.room.message/a1",
                                    {"msgtype": "m.text", "body": "from alice"}, at)
        self.assertEqual((code, answer.get("errcode")), (503, "M_UNKNOWN"))
        svc.user_directory.index()
        catch_up = defer.ensureDeferred(svc.rooms._catch_up_relations(svc.store.relations))
        await wait(1.0)
        self.assertFalse(catch_up.called)
        serious = [e for e in log.serious() if "Database unavailable" not in e.get("log_format", "")]
        self.assertEqual(serious, [], log.formats(serious))

        await db.run_with_connection(read_only(False))
        self.assertIsInstance(await catch_up, int)

        async def alice_has_bobs_message():
            page = await a.ok("GET", f"/rooms/{q(room)}/messages?dir=b&limit=20", token=at)
            return "from bob" in [e["content"].get("body") for e in page["chunk"]]

        await self.until(alice_has_bobs_message, "B's message to reach A after the outage")
        await a.ok("PUT", f"/rooms/{q(room)}/send/m.room.message/a1", {"msgtype": "m.text", "body": "from alice"}, at)

        async def bob_has_alices_message():
            page = await b.ok("GET", f"/rooms/{q(room)}/messages?dir=b&limit=20", token=bt)
            return "from alice" in [e["content"].get("body") for e in page["chunk"]]

        await self.until(bob_has_alices_message, "A's message to reach B after the outage")

        async def directory_indexed():
            found = await a.ok("POST", "/user_directory/search", {"search_term": "bob"}, at)
            return [r["user_id"] for r in found["results"]] == [bob]

        await self.until(directory_indexed, "A's user directory to be indexed again")
        left = await db.run_read(lambda txn: txn.execute(
            "SELECT COUNT(*) FROM room_indexers WHERE name = 'relations_catchup'").fetchone()[0])
        self.assertEqual(left, 0)
        serious = [e for e in log.serious() if "Database unavailable" not in e.get("log_format", "")]
        self.assertEqual(serious, [], log.formats(serious))
        self.assertIsNone(db.faults.failing)


class _Notifier:
    def notify_user(self, *a: object) -> None:
        pass

    def notify_room(self, *a: object) -> None:
        pass

    def notify(self, *a: object, **kw: object) -> None:
        pass


class PresenceLoopTests(TestCase):
    async def test_timeout_loop_survives_an_unwritable_database(self):
        """A local user stops syncing while the database is unwritable: the timeout pass
        that would mark them offline fails quietly (the database's line only) and the loop
        keeps running; once writable, the next pass stores them offline."""
        from fedserver.handlers.ephemeral.presence import CHECK_EVERY_S, OFFLINE_AFTER_MS, PresenceHandler

        store = await open_store(self.mktemp(), reactor)
        self.addCleanup(store.close)
        db = store.database
        await store.presence.set_presence("@a:us.test", "online", None, 0, True)
        clock = Clock()
        handler = PresenceHandler(clock, store, "us.test", _Notifier(), lambda *a, **kw: None)
        await handler.start()
        self.addCleanup(handler.stop)
        log = LogCapture(self)
        await db.run_with_connection(read_only(True))

        async def settle() -> None:
            for _ in range(50):
                await wait(0.01)

        clock.advance(OFFLINE_AFTER_MS / 1000 + CHECK_EVERY_S)
        await settle()
        serious = log.serious()
        self.assertEqual(len(serious), 1, log.formats(serious))
        self.assertIn("Database unavailable", serious[0]["log_format"])
        self.assertTrue(handler._loop.running)
        self.assertEqual((await store.presence.get_presence(["@a:us.test"]))["@a:us.test"].state, "online")
        await db.run_with_connection(read_only(False))
        clock.advance(CHECK_EVERY_S)
        await settle()
        self.assertEqual((await store.presence.get_presence(["@a:us.test"]))["@a:us.test"].state, "offline")
        self.assertEqual(len(log.serious()), 1, log.formats(log.serious()))
