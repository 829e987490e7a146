"""Storage for receipts, presence, push rules, pushers, notifications and read positions,
on real SQLite files."""

from __future__ import annotations

from fedserver.storage.interface import InvalidDataError
from fedserver.storage.users.push_store import PushAction, Pusher
from fedserver.storage.users.user_directory_store import like_pattern, search_text
from tests.test_federation_support import StoreTestCase

ROOM = "!room:us.test"


def action(user: str, nid: int, thread: str = "main", highlight: bool = False, room: str = ROOM) -> PushAction:
    return PushAction(user, room, nid, f"$e{nid}", thread, highlight, ["notify"], 1000 + nid)


class ReceiptsStoreTests(StoreTestCase):
    async def test_upsert_stream_and_private_visibility(self):
        """A receipt per (room, type, user, thread) is replaced by a newer one with a new
        stream id; the same event again changes nothing; reads by stream range show a
        user's private receipts only to that user; the stream position grows."""
        store = await self.open_store()
        r = store.receipts
        first = await r.add_receipt(ROOM, "m.read", "@a:us.test", "", "$one", {"ts": 1})
        self.assertEqual((first.stream_id, first.event_nid), (1, None))
        self.assertIsNone(await r.add_receipt(ROOM, "m.read", "@a:us.test", "", "$one", {"ts": 2}))
        await r.add_receipt(ROOM, "m.read", "@a:us.test", "main", "$two", {"ts": 3, "thread_id": "main"})
        await r.add_receipt(ROOM, "m.read.private", "@b:us.test", "", "$two", {"ts": 4})
        self.assertEqual(await r.get_max_stream_id(), 3)
        for_a = await r.get_receipts([ROOM], since=None, upto=3, viewer="@a:us.test")
        self.assertEqual([(x.receipt_type, x.thread_id, x.event_id) for x in for_a], [("m.read", "", "$one"), ("m.read", "main", "$two")])
        for_b = await r.get_receipts([ROOM], since=1, upto=3, viewer="@b:us.test")
        self.assertEqual([(x.user_id, x.receipt_type) for x in for_b], [("@a:us.test", "m.read"), ("@b:us.test", "m.read.private")])
        self.assertEqual(await r.get_receipts(["!other:us.test"], since=None, upto=3, viewer="@a:us.test"), [])
        with self.assertRaises(InvalidDataError):
            await r.add_receipt(ROOM, "m.read", "@a:us.test", "", "$x", {"ts": float("nan")})


class PushStoreTests(StoreTestCase):
    async def test_counts_follow_read_positions_per_thread(self):
        """Unread counts are the notifying events after the read position: an unthreaded
        position covers every thread, a thread's own position only that thread; read
        positions never move back; every change marks the room's counts as changed."""
        store = await self.open_store()
        p = store.push
        a = "@a:us.test"
        await p.record_actions([action(a, 10), action(a, 11, highlight=True), action(a, 12, "$root"), action(a, 13, "$root")], [])
        counts = await p.get_unread_counts(a, [ROOM])
        self.assertEqual({t: tuple(c) for t, c in counts[ROOM].items()}, {"main": (2, 1), "$root": (2, 0)})
        self.assertTrue(await p.advance_read_position(a, ROOM, "$root", 12))
        counts = await p.get_unread_counts(a, [ROOM])
        self.assertEqual({t: tuple(c) for t, c in counts[ROOM].items()}, {"main": (2, 1), "$root": (1, 0)})
        self.assertTrue(await p.advance_read_position(a, ROOM, "", 11))
        self.assertFalse(await p.advance_read_position(a, ROOM, "", 5))  # never backwards
        counts = await p.get_unread_counts(a, [ROOM])
        self.assertEqual({t: tuple(c) for t, c in counts[ROOM].items()}, {"$root": (1, 0)})
        self.assertEqual(await p.count_unread_notifications(a), 2)  # unthreaded position only
        await p.record_actions([], [(a, ROOM, "$root", 13)])
        self.assertEqual(await p.get_unread_counts(a, [ROOM]), {})
        top = await p.get_max_stream_id("notification_counts")
        self.assertEqual(await p.get_changed_rooms(a, 0, top), {ROOM})
        self.assertEqual(await p.get_changed_rooms(a, top, top), set())
        self.assertEqual(await p.get_changed_rooms("@b:us.test", 0, top), set())
        notes = await p.get_notifications(a, before_nid=13, limit=2, only_highlight=False)
        self.assertEqual([n.event_nid for n in notes], [12, 11])
        self.assertEqual([n.event_nid for n in await p.get_notifications(a, before_nid=None, limit=9, only_highlight=True)], [11])
        self.assertEqual(await p.prune_actions(1012), 2)

    async def test_pushers_and_rules(self):
        """Pushers are unique per user, app id and pushkey; without append another user's
        pusher with the same app id and pushkey is removed; push rules round-trip with a
        growing stream id."""
        store = await self.open_store()
        p = store.push

        def pusher(user: str, key: str = "k") -> Pusher:
            return Pusher(user, "app", key, "http", "App", "Phone", None, "en", {"url": "https://g/_matrix/push/v1/notify"}, None, 1)

        await p.set_pusher(pusher("@a:us.test"), append=False)
        await p.set_pusher(pusher("@b:us.test"), append=True)
        self.assertEqual([x.user_id for x in await p.get_pushers(["@a:us.test", "@b:us.test"])], ["@a:us.test", "@b:us.test"])
        await p.set_pusher(pusher("@b:us.test"), append=False)
        self.assertEqual([x.user_id for x in await p.get_pushers(["@a:us.test", "@b:us.test"])], ["@b:us.test"])
        self.assertTrue(await p.delete_pusher("@b:us.test", "app", "k"))
        self.assertFalse(await p.delete_pusher("@b:us.test", "app", "k"))
        self.assertIsNone(await p.get_user_rules("@a:us.test"))
        s1 = await p.set_user_rules("@a:us.test", {"own": {}, "defaults": {".m.rule.master": {"enabled": True}}})
        s2 = await p.set_user_rules("@a:us.test", {"own": {}, "defaults": {}})
        self.assertLess(s1, s2)
        self.assertEqual(await p.get_rules_stream_id("@a:us.test"), s2)
        self.assertEqual(await p.get_user_rules("@a:us.test"), {"own": {}, "defaults": {}})


class DirectoryTextTests(StoreTestCase):
    def test_search_text_and_like_escaping(self):
        """Searches match casefolded ids and names; LIKE wildcards in a search word are
        literal."""
        self.assertEqual(search_text("@Ann:x", "ÄNNE Straße"), "@ann:x änne strasse")
        self.assertEqual(like_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%")
