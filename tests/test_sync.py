"""Tests for /sync: full and incremental syncs, invites, leaves, filters, visibility and long-polling."""

from __future__ import annotations

import json

from twisted.internet import defer

from fedserver.handlers.rooms.rooms import parse_stream_token, parse_topo_token
from tests.test_rooms_support import RoomsTestCase


def bodies(room: dict) -> list:
    return [e["content"].get("body") for e in room["timeline"]["events"] if e["type"] == "m.room.message"]


class FullSyncTests(RoomsTestCase):
    async def test_initial_sync_shape(self):
        """A full sync lists the joined room with its timeline (client events without
        room_id), the state before the timeline, a summary and the keys clients expect,
        and a next_batch token."""
        alice = await self.user("alice")
        room_id = await self.create(alice, name="Room")
        await self.send_text(alice, room_id, "hello")
        result = await self.sync(alice)
        self.assertIsNotNone(parse_stream_token(result["next_batch"]))
        for key in ("account_data", "presence", "to_device", "device_lists", "device_one_time_keys_count"):
            self.assertIn(key, result)
        room = result["rooms"]["join"][room_id]
        self.assertEqual(bodies(room), ["hello"])
        self.assertTrue(all("room_id" not in e for e in room["timeline"]["events"]))
        self.assertIsNotNone(parse_topo_token(room["timeline"]["prev_batch"]))
        self.assertEqual(room["summary"]["m.joined_member_count"], 1)
        self.assertEqual(room["unread_notifications"], {"highlight_count": 0, "notification_count": 0})
        # Timeline and state together hold the room's state.
        keys = {(e["type"], e.get("state_key")) for e in room["state"]["events"] + room["timeline"]["events"] if "state_key" in e}
        self.assertIn(("m.room.create", ""), keys)
        self.assertIn(("m.room.name", ""), keys)

    async def test_limited_timeline_and_prev_batch(self):
        """With timeline.limit 3 the timeline holds the newest 3 events, is limited, and
        its prev_batch pages back to the events before it."""
        alice = await self.user("alice")
        room_id = await self.create(alice)
        for i in range(6):
            await self.send_text(alice, room_id, f"m{i}")
        result = await self.sync(alice, filter_param=json.dumps({"room": {"timeline": {"limit": 3}}}))
        room = result["rooms"]["join"][room_id]
        self.assertEqual(bodies(room), ["m3", "m4", "m5"])
        self.assertTrue(room["timeline"]["limited"])
        self.assertIn(("m.room.create", ""), {(e["type"], e["state_key"]) for e in room["state"]["events"]})
        page = await self.timeline.messages(alice, room_id, from_token=room["timeline"]["prev_batch"], limit=2)
        self.assertEqual([e["content"]["body"] for e in page["chunk"]], ["m2", "m1"])


class IncrementalSyncTests(RoomsTestCase):
    async def test_two_users_see_each_others_messages(self):
        """After a first sync, each user's incremental sync returns exactly the new
        messages of both, and nothing when nothing happened; the sender's own device
        sees its transaction id."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create(alice, preset="public_chat")
        await self.membership.join(bob.user_id, room_id)
        a = await self.sync(alice)
        b = await self.sync(bob)
        await self.send_text(alice, room_id, "from alice", txn_id="t-a")
        await self.send_text(bob, room_id, "from bob")
        a2 = await self.sync(alice, since=a["next_batch"])
        b2 = await self.sync(bob, since=b["next_batch"])
        self.assertEqual(bodies(a2["rooms"]["join"][room_id]), ["from alice", "from bob"])
        self.assertEqual(bodies(b2["rooms"]["join"][room_id]), ["from alice", "from bob"])
        self.assertFalse(a2["rooms"]["join"][room_id]["timeline"]["limited"])
        self.assertEqual(a2["rooms"]["join"][room_id]["state"]["events"], [])
        own = a2["rooms"]["join"][room_id]["timeline"]["events"][0]
        self.assertEqual(own["unsigned"]["transaction_id"], "t-a")
        self.assertNotIn("transaction_id", b2["rooms"]["join"][room_id]["timeline"]["events"][0]["unsigned"])
        a3 = await self.sync(alice, since=a2["next_batch"])
        self.assertEqual(a3["rooms"]["join"], {})

    async def test_limited_incremental_sync_carries_gap_state(self):
        """An incremental sync whose timeline is limited carries the state that changed
        in the gap (a topic set before the timeline's start)."""
        alice = await self.user("alice")
        room_id = await self.create(alice)
        first = await self.sync(alice)
        await self.rooms.set_state(alice, room_id, "m.room.topic", "", {"topic": "gap"})
        for i in range(5):
            await self.send_text(alice, room_id, f"m{i}")
        result = await self.sync(alice, since=first["next_batch"], filter_param='{"room":{"timeline":{"limit":2}}}')
        room = result["rooms"]["join"][room_id]
        self.assertTrue(room["timeline"]["limited"])
        self.assertEqual([e["type"] for e in room["state"]["events"]], ["m.room.topic"])

    async def test_invite_join_and_leave_sections(self):
        """An invite arrives under rooms.invite with stripped state (including the invite
        itself and the inviter's membership); once joined the room arrives in full under join; after being kicked it
        arrives under leave with the kick; a forgotten room is not listed."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create(alice, name="Secret")
        s0 = await self.sync(bob)
        self.assertEqual(s0["rooms"]["join"], {})
        await self.membership.invite(alice.user_id, room_id, bob.user_id)
        s1 = await self.sync(bob, since=s0["next_batch"])
        invite_state = s1["rooms"]["invite"][room_id]["invite_state"]["events"]
        types = {(e["type"], e["state_key"]) for e in invite_state}
        self.assertIn(("m.room.name", ""), types)
        self.assertIn(("m.room.member", bob.user_id), types)
        # Who invites: the inviter's own membership (clients name the invite after it).
        inviter = [e for e in invite_state if (e["type"], e["state_key"]) == ("m.room.member", alice.user_id)]
        self.assertEqual([e["content"]["membership"] for e in inviter], ["join"])
        self.assertTrue(all(set(e) == {"content", "sender", "state_key", "type"} for e in invite_state))
        await self.membership.join(bob.user_id, room_id)
        s2 = await self.sync(bob, since=s1["next_batch"])
        self.assertEqual(s2["rooms"]["invite"], {})
        joined = s2["rooms"]["join"][room_id]
        keys = {(e["type"], e["state_key"]) for e in joined["state"]["events"] + joined["timeline"]["events"] if "state_key" in e}
        self.assertIn(("m.room.create", ""), keys)
        self.assertIn(("m.room.member", bob.user_id), keys)
        await self.membership.kick(alice.user_id, room_id, bob.user_id, reason="out")
        await self.send_text(alice, room_id, "after the kick")
        s3 = await self.sync(bob, since=s2["next_batch"])
        self.assertNotIn(room_id, s3["rooms"]["join"])
        left = s3["rooms"]["leave"][room_id]
        last = left["timeline"]["events"][-1]
        self.assertEqual((last["type"], last["state_key"], last["content"]["membership"]), ("m.room.member", bob.user_id, "leave"))
        self.assertNotIn("after the kick", bodies(left))
        await self.membership.forget(bob.user_id, room_id)
        full = await self.sync(bob, filter_param='{"room":{"include_leave":true}}')
        self.assertNotIn(room_id, full["rooms"]["leave"])

    async def test_rejected_invite_shows_under_leave(self):
        """A rejected invite moves the room from invite to leave, with the user's own
        leave event in the timeline (users always see their own membership) and none of
        the room's messages."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create(alice)
        await self.send_text(alice, room_id, "members only")
        await self.membership.invite(alice.user_id, room_id, bob.user_id)
        s1 = await self.sync(bob)
        self.assertIn(room_id, s1["rooms"]["invite"])
        await self.membership.leave(bob.user_id, room_id)
        s2 = await self.sync(bob, since=s1["next_batch"])
        self.assertEqual(s2["rooms"]["invite"], {})
        events = s2["rooms"]["leave"][room_id]["timeline"]["events"]
        self.assertEqual([(e["type"], e["content"]["membership"]) for e in events], [("m.room.member", "leave")])

    async def test_new_member_does_not_see_joined_only_history(self):
        """A user joining a room with history_visibility joined gets a timeline without
        the messages sent before their join."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create(
            alice, preset="public_chat",
            initial_state=[{"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}],
        )
        await self.send_text(alice, room_id, "private past")
        await self.membership.join(bob.user_id, room_id)
        await self.send_text(alice, room_id, "welcome")
        room = (await self.sync(bob))["rooms"]["join"][room_id]
        self.assertEqual(bodies(room), ["welcome"])

    async def test_filters(self):
        """Filters are honoured by id and inline: rooms, timeline types and account
        data; a bad filter or token is 400 M_INVALID_PARAM."""
        alice = await self.user("alice")
        r1 = await self.create(alice, name="one")
        r2 = await self.create(alice, name="two")
        await self.send_text(alice, r1, "hi")
        filter_id = await self.store.accounts.add_filter(alice.user_id, {"room": {"rooms": [r1], "timeline": {"types": ["m.room.message"]}}})
        result = await self.sync(alice, filter_param=str(filter_id))
        self.assertEqual(list(result["rooms"]["join"]), [r1])
        self.assertEqual([e["type"] for e in result["rooms"]["join"][r1]["timeline"]["events"]], ["m.room.message"])
        # The state events the timeline filter left out come as state instead.
        token = result["next_batch"]
        await self.rooms.set_state(alice, r1, "m.room.topic", "", {"topic": "t"})
        later = await self.sync(alice, since=token, filter_param=str(filter_id))
        self.assertEqual(later["rooms"]["join"][r1]["timeline"]["events"], [])
        self.assertEqual([e["type"] for e in later["rooms"]["join"][r1]["state"]["events"]], ["m.room.topic"])
        self.assertTrue(r2)
        await self.store.accounts.set_account_data(alice.user_id, None, "m.direct", {"a": 1})
        result = await self.sync(alice)
        self.assertIn({"type": "m.direct", "content": {"a": 1}}, result["account_data"]["events"])
        later = await self.sync(alice, since=result["next_batch"])
        self.assertEqual(later["account_data"]["events"], [])
        await self.assertMatrixError(self.sync(alice, filter_param="{nope"), 400, "M_INVALID_PARAM")
        await self.assertMatrixError(self.sync(alice, filter_param="999"), 400, "M_INVALID_PARAM")
        await self.assertMatrixError(self.sync(alice, filter_param='{"room": {"timeline": {"limit": -1}}}'), 400, "M_INVALID_PARAM")
        await self.assertMatrixError(self.sync(alice, since="x1"), 400, "M_INVALID_PARAM")


class LongPollTests(RoomsTestCase):
    async def test_long_poll_woken_by_message(self):
        """An incremental sync with a timeout waits while nothing is new and returns as
        soon as a message is sent into the room."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create(alice, preset="public_chat")
        await self.membership.join(bob.user_id, room_id)
        token = (await self.sync(bob))["next_batch"]
        d = defer.ensureDeferred(self.sync(bob, since=token, timeout_ms=30_000))
        for _ in range(50):  # let the sync reach its wait (database reads on the reactor)
            if self.notifier.waiting:
                break
            await self._tick()
        self.assertEqual(self.notifier.waiting, 1)
        self.assertFalse(d.called)
        await self.send_text(alice, room_id, "wake up")
        result = await d
        self.assertEqual(bodies(result["rooms"]["join"][room_id]), ["wake up"])
        self.assertEqual(self.notifier.waiting, 0)

    async def test_long_poll_times_out_empty(self):
        """With nothing new, a long-poll answers an empty sync once the timeout passes,
        with a next_batch that still works."""
        alice = await self.user("alice")
        await self.create(alice)
        token = (await self.sync(alice))["next_batch"]
        d = defer.ensureDeferred(self.sync(alice, since=token, timeout_ms=5_000))
        for _ in range(50):
            if self.notifier.waiting:
                break
            await self._tick()
        self.clock.advance(5)
        result = await d
        self.assertEqual(result["rooms"]["join"], {})
        self.assertEqual(parse_stream_token(result["next_batch"])[0], parse_stream_token(token)[0])

    async def test_invite_wakes_invitee(self):
        """A long-polling user with no rooms is woken by an invite to them."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create(alice)
        token = (await self.sync(bob))["next_batch"]
        d = defer.ensureDeferred(self.sync(bob, since=token, timeout_ms=30_000))
        for _ in range(50):
            if self.notifier.waiting:
                break
            await self._tick()
        await self.membership.invite(alice.user_id, room_id, bob.user_id)
        result = await d
        self.assertIn(room_id, result["rooms"]["invite"])

    async def _tick(self):
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        await deferLater(reactor, 0.001, lambda: None)


class RemoteMembershipTests(RoomsTestCase):
    async def test_invite_and_rejection_in_a_room_not_here(self):
        """An invite recorded for a room this server is not in shows under rooms.invite
        with its stripped state and the invite; its rejection shows under rooms.leave in
        the next incremental sync."""
        alice = await self.user("alice")
        first = await self.sync(alice)
        invite = await self.remote_member_event(alice.user_id, "invite", 5)
        await self.store.federation_extras.set_remote_membership(
            alice.user_id, "!remote:far.test", "invite", invite.event_id, "@bob:far.test",
            [{"type": "m.room.name", "state_key": "", "sender": "@bob:far.test", "content": {"name": "Far"}}],
        )
        s1 = await self.sync(alice, since=first["next_batch"])
        events = s1["rooms"]["invite"]["!remote:far.test"]["invite_state"]["events"]
        self.assertEqual([e["type"] for e in events], ["m.room.name", "m.room.member"])
        self.assertEqual(events[1]["content"], {"membership": "invite"})
        self.assertIn("!remote:far.test", (await self.sync(alice))["rooms"]["invite"])
        leave = await self.remote_member_event(alice.user_id, "leave", 6)
        await self.store.federation_extras.set_remote_membership(
            alice.user_id, "!remote:far.test", "leave", leave.event_id, alice.user_id, []
        )
        s2 = await self.sync(alice, since=s1["next_batch"])
        self.assertEqual(s2["rooms"]["invite"], {})
        timeline = s2["rooms"]["leave"]["!remote:far.test"]["timeline"]["events"]
        self.assertEqual([e["event_id"] for e in timeline], [leave.event_id])
        self.assertNotIn("!remote:far.test", (await self.sync(alice))["rooms"]["leave"])

