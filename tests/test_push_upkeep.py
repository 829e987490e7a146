"""Upkeep of push: notifications pruned (read ones first), /notifications paged without gaps or
repeats, and push gateway failures that are given up or cut short by a stop are logged."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from fedserver.handlers.push.pushers import MAX_ATTEMPTS, PushersHandler
from fedserver.storage.users.push_store import Pusher
from tests.test_daily_use import DailyUseTestCase, q
from tests.test_ephemeral_storage import ROOM, action
from tests.test_federation_support import StoreTestCase


class PruneTests(StoreTestCase):
    async def test_prune_only_read(self):
        """With only_read, a notification older than the cut-off goes only if the user
        read past it (unthreaded, or in its own thread); without, every old one goes;
        newer ones always stay."""
        store = await self.open_store()
        p = store.push
        a, b = "@a:us.test", "@b:us.test"
        # ts = 1000 + nid.
        await p.record_actions([action(a, 10), action(a, 11), action(a, 12, "$root"), action(a, 13, "$root"),
                                action(a, 30), action(b, 10)], [])
        await p.advance_read_position(a, ROOM, "", 10)      # main and threads up to 10
        await p.advance_read_position(a, ROOM, "$root", 12)  # the thread up to 12
        self.assertEqual(await p.prune_actions(1020, only_read=True), 2)  # a's 10 and 12
        left = await p.get_notifications(a, before_nid=None, limit=10, only_highlight=False)
        self.assertEqual([n.event_nid for n in left], [30, 13, 11])
        self.assertEqual(len(await p.get_notifications(b, before_nid=None, limit=10, only_highlight=False)), 1)
        self.assertEqual(await p.prune_actions(1020), 3)  # a's 11 and 13, b's 10
        left = await p.get_notifications(a, before_nid=None, limit=10, only_highlight=False)
        self.assertEqual([n.event_nid for n in left], [30])


class ServicePruneTests(DailyUseTestCase):
    async def test_upkeep_pass_prunes_old_notifications(self):
        """The server's hourly upkeep pass (run at start, then every hour) removes an
        unread notification older than a year and keeps a recent one: the pass waits for
        the pruning (it is not left as an unawaited coroutine)."""
        a = await self.server()
        store = a.svc.store
        now = int(a.svc.reactor.seconds() * 1000)
        old = action("@a:us.test", 1)._replace(ts=1000)
        new = action("@a:us.test", 2)._replace(ts=now)
        await store.push.record_actions([old, new], [])
        await a.svc._prune_received_txns()
        left = await store.push.get_notifications("@a:us.test", before_nid=None, limit=10, only_highlight=False)
        self.assertEqual([n.event_nid for n in left], [2])


class NotificationPagingTests(DailyUseTestCase):
    async def test_paging_visits_every_notification_once(self):
        """45 notifications paged 20 at a time: 20, 20, 5, newest first, each event once,
        next_token on every page but the last."""
        a = await self.server()
        _, at = await a.register("alice")
        _, bt = await a.register("bob")
        room = (await a.ok("POST", "/createRoom", {"preset": "public_chat"}, bt))["room_id"]
        await a.ok("POST", f"/rooms/{q(room)}/join", {}, at)
        sent = []
        for i in range(45):
            sent.append((await a.ok("PUT", f"/rooms/{q(room)}/send/m.room.message/m{i}",
                                    {"msgtype": "m.text", "body": f"n{i}"}, bt))["event_id"])
        await a.svc.push.notifications.flush()
        seen: list[str] = []
        sizes = []
        token = None
        for _ in range(5):
            page = await a.ok("GET", "/notifications?limit=20" + (f"&from={token}" if token else ""), token=at)
            sizes.append(len(page["notifications"]))
            seen += [n["event"]["event_id"] for n in page["notifications"]]
            token = page.get("next_token")
            if token is None:
                break
        self.assertEqual(sizes, [20, 20, 5])
        self.assertEqual(seen, list(reversed(sent)))

    async def test_service_prune_loop_prunes_notifications(self):
        """The service's hourly prune pass really prunes notifications: read ones past 30
        days, unread ones past a year (both calls made, and awaited)."""
        a = await self.server()
        calls = []

        async def prune_actions(before_ms, only_read=False):
            calls.append((before_ms, only_read))
            return 0

        store = a.svc.store
        self.patch(store.push, "prune_actions", prune_actions)
        await a.svc._prune_received_txns()
        now = int(a.svc.reactor.seconds() * 1000)
        # (The pass made at start may be among the calls too: they come in pairs.)
        self.assertEqual([c[1] for c in calls[-2:]], [True, False])
        day = 24 * 3600 * 1000
        # (trial's assertAlmostEqual has no ``delta``: compare the distance itself)
        self.assertLess(abs((now - calls[-2][0]) / day - 30), 0.01)
        self.assertLess(abs((now - calls[-1][0]) / day - 365), 0.01)


    async def test_service_prune_loop_prunes_client_txn_ids(self):
        """The same pass forgets client transaction ids older than a week."""
        from fedserver.service import KEEP_CLIENT_TXNS_MS

        a = await self.server()
        calls = []

        def prune_client_txns(before_ms):  # the store's methods answer Deferreds
            calls.append(before_ms)
            return defer.succeed(0)

        self.patch(a.svc.store.rooms, "prune_client_txns", prune_client_txns)
        await a.svc._prune_received_txns()
        now = int(a.svc.reactor.seconds() * 1000)
        self.assertTrue(calls)
        self.assertLess(abs(now - KEEP_CLIENT_TXNS_MS - calls[-1]), 60_000)
        self.assertEqual(KEEP_CLIENT_TXNS_MS, 7 * 24 * 3600 * 1000)

class _Store:
    """Pushers and counts for PushersHandler (plain data)."""

    def __init__(self) -> None:
        self.push = self

    async def get_pushers(self, user_ids: Any) -> list[Pusher]:
        return [Pusher("@a:x", "app", "key", "http", "App", "Phone", None, "en",
                       {"url": "https://gw.example/_matrix/push/v1/notify", "format": "event_id_only"}, "D", 0)]

    async def count_unread_notifications(self, user_id: str) -> int:
        return 1

    async def get_current_state_events(self, room_id: str, keys: Any) -> dict:
        return {}


class _Event:
    event_id = "$e"
    type = "m.room.message"
    sender = "@b:x"
    content: dict = {}
    state_key = None


class GatewayLogTests(TestCase):
    def setUp(self) -> None:
        self.logged: list[dict] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def messages(self) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.logged if e.get("log_namespace", "").startswith("fedserver.handlers.push")]

    def test_given_up_is_logged(self):
        """A gateway that always fails is tried MAX_ATTEMPTS times with growing delays, then
        a warning names the event and user whose notification is dropped."""
        clock = Clock()
        calls = []

        def post(url, body):
            calls.append(clock.seconds())
            return defer.succeed((503, None))

        handler = PushersHandler(_Store(), clock, post)
        handler.on_notify("@a:x", _Event(), ["notify"], "!r:x")
        for _ in range(300):
            clock.advance(1)
        self.assertEqual(len(calls), MAX_ATTEMPTS)
        self.assertEqual([b - a for a, b in zip(calls, calls[1:])], [2.0 ** i for i in range(MAX_ATTEMPTS - 1)])
        dropped = [m for m in self.messages() if "dropped" in m]
        self.assertEqual(len(dropped), 1, self.messages())
        self.assertIn("$e", dropped[0])
        self.assertIn("@a:x", dropped[0])

    def test_stop_logs_what_is_dropped(self):
        """Stopping while a delivery waits for its retry cancels it and says how many
        notifications were not delivered."""
        clock = Clock()
        handler = PushersHandler(_Store(), clock, lambda url, body: defer.succeed((500, None)))
        handler.on_notify("@a:x", _Event(), ["notify"], "!r:x")
        handler.stop()
        self.assertTrue(any("1 notification(s) not delivered" in m for m in self.messages()), self.messages())
        self.assertEqual(clock.getDelayedCalls(), [])


class _CountingStore(_Store):
    """``_Store`` that records each pushers read (only ``@a:x`` has a pusher)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[list[str]] = []

    async def get_pushers(self, user_ids: Any) -> list[Pusher]:
        self.reads.append(list(user_ids))
        return [p for p in await super().get_pushers(user_ids) if p.user_id in self.reads[-1]]


class BatchDeliveryTests(TestCase):
    def test_batch_reads_pushers_once_and_delivers_each(self):
        """A batch of notifications for several users reads the pushers once (all the
        users together) and posts one notification per event of each user who has a
        pusher; users without pushers get nothing."""
        store = _CountingStore()
        posted: list[dict] = []

        def post(url, body):
            posted.append(body)
            return defer.succeed((200, {}))

        class _Event2(_Event):
            event_id = "$f"

        handler = PushersHandler(store, Clock(), post)
        handler.on_notify_many([
            ("@a:x", _Event(), ["notify"], "!r:x"),
            ("@c:x", _Event(), ["notify"], "!r:x"),
            ("@a:x", _Event2(), ["notify"], "!r:x"),
        ])
        self.assertEqual(store.reads, [["@a:x", "@c:x"]])
        self.assertEqual([b["notification"]["event_id"] for b in posted], ["$e", "$f"])
        self.assertEqual([b["notification"]["devices"][0]["pushkey"] for b in posted], ["key", "key"])
        self.assertEqual(handler._in_flight, set())
