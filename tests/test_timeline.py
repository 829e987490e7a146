"""The timeline handler and /sync: /members with ``at`` and membership filters,
lazy-loaded members in /messages, /context and /sync (with and without redundant ones)."""

from __future__ import annotations

import json

from fedserver.handlers.rooms.rooms import EventFilter
from tests.test_rooms_support import RoomsTestCase


def member_keys(events: list) -> list[str]:
    return sorted(e["state_key"] for e in events if e["type"] == "m.room.member")


class MembersTests(RoomsTestCase):
    async def test_members_at_a_token_and_or_filters(self):
        """``at`` a /sync token gives the members as they were then; a later join is not
        in it. ``membership`` and ``not_membership`` together are an "or" (spec); values
        outside the spec's enum are refused."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        carol = await self.user("carol")
        room = await self.create(alice, preset="public_chat", invite=[carol.user_id])
        first = await self.sync(alice)
        await self.membership.join(bob.user_id, room)
        now = await self.timeline.members(alice, room)
        self.assertEqual(member_keys(now["chunk"]), sorted([alice.user_id, bob.user_id, carol.user_id]))
        then = await self.timeline.members(alice, room, at=first["next_batch"])
        self.assertEqual(member_keys(then["chunk"]), sorted([alice.user_id, carol.user_id]))
        prev_batch = first["rooms"]["join"][room]["timeline"]["prev_batch"]
        self.assertEqual(member_keys((await self.timeline.members(alice, room, at=prev_batch))["chunk"]), [])
        either = await self.timeline.members(alice, room, membership="invite", not_membership="join")
        self.assertEqual(member_keys(either["chunk"]), [carol.user_id])
        ors = await self.timeline.members(alice, room, membership="join", not_membership="invite")
        self.assertEqual(member_keys(ors["chunk"]), sorted([alice.user_id, bob.user_id]))
        await self.assertMatrixError(self.timeline.members(alice, room, membership="joined"), 400, "M_INVALID_PARAM")
        await self.assertMatrixError(self.timeline.members(alice, room, at="garbage"), 400, "M_INVALID_PARAM")

    async def test_members_at_never_after_a_leave(self):
        """A user who left gets the members as they were when they left, whatever ``at``
        says."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        carol = await self.user("carol")
        room = await self.create(alice, preset="public_chat")
        await self.membership.join(bob.user_id, room)
        await self.membership.leave(bob.user_id, room)
        await self.membership.join(carol.user_id, room)
        late = await self.sync(alice)
        seen = await self.timeline.members(bob, room, at=late["next_batch"])
        self.assertNotIn(carol.user_id, member_keys(seen["chunk"]))


class LazyLoadingTests(RoomsTestCase):
    async def room_with_talk(self):
        alice = await self.user("alice", displayname="Alice")
        users = [alice]
        room = await self.create(alice, preset="public_chat", name="Lazy")
        for name in ("bob", "carol", "dave", "erin"):
            u = await self.user(name)
            users.append(u)
            await self.membership.join(u.user_id, room)
        for i in range(12):
            await self.send_text(users[1 + i % 2], room, f"m{i}")  # only bob and carol speak
        return room, users

    async def test_sync_lazy_loads_senders_and_skips_redundant_members(self):
        """With lazy_load_members, a full sync's state has every non-member state event
        but only the members who sent timeline events (and the user); an incremental sync
        with new senders carries just their membership events, once (not again: redundant);
        with include_redundant_members they come every time; without lazy loading every
        member comes."""
        room, (alice, bob, carol, dave, erin) = await self.room_with_talk()
        lazy = json.dumps({"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 5}}})
        full = await self.sync(alice, filter_param=lazy)
        state = full["rooms"]["join"][room]["state"]["events"]
        self.assertEqual(member_keys(state), sorted([alice.user_id, bob.user_id, carol.user_id]))
        self.assertIn("m.room.name", [e["type"] for e in state])
        await self.send_text(dave, room, "hi from dave")
        inc = await self.sync(alice, since=full["next_batch"], filter_param=lazy)
        self.assertEqual(member_keys(inc["rooms"]["join"][room]["state"]["events"]), [dave.user_id])
        await self.send_text(dave, room, "again")
        inc2 = await self.sync(alice, since=inc["next_batch"], filter_param=lazy)
        self.assertEqual(member_keys(inc2["rooms"]["join"][room]["state"]["events"]), [])
        redundant = json.dumps({"room": {"state": {"lazy_load_members": True, "include_redundant_members": True}}})
        inc3 = await self.sync(alice, since=inc["next_batch"], filter_param=redundant)
        self.assertEqual(member_keys(inc3["rooms"]["join"][room]["state"]["events"]), sorted([alice.user_id, dave.user_id]))
        everyone = await self.sync(alice)
        self.assertEqual(len(member_keys(everyone["rooms"]["join"][room]["state"]["events"])), 5)

    async def test_messages_and_context_lazy_load_members(self):
        """/messages with lazy_load_members returns the chunk's senders' membership events
        in ``state`` (not again on the next page unless include_redundant_members);
        /context's state holds only the shown senders' members."""
        room, (alice, bob, carol, dave, erin) = await self.room_with_talk()
        flt = EventFilter({"lazy_load_members": True, "types": ["m.room.message"]})
        page = await self.timeline.messages(erin, room, limit=4, event_filter=flt)
        self.assertEqual(member_keys(page["state"]), sorted([bob.user_id, carol.user_id]))
        again = await self.timeline.messages(erin, room, from_token=page["end"], limit=4, event_filter=flt)
        self.assertNotIn("state", again)
        redundant = EventFilter({"lazy_load_members": True, "include_redundant_members": True, "types": ["m.room.message"]})
        third = await self.timeline.messages(erin, room, from_token=page["end"], limit=4, event_filter=redundant)
        self.assertEqual(member_keys(third["state"]), sorted([bob.user_id, carol.user_id]))
        plain = await self.timeline.messages(erin, room, limit=4)
        self.assertNotIn("state", plain)
        msg = page["chunk"][0]["event_id"]
        ctx = await self.timeline.context(dave, room, msg, limit=2, event_filter=EventFilter({"lazy_load_members": True}))
        self.assertEqual(member_keys(ctx["state"]), sorted([bob.user_id, carol.user_id]))
        self.assertIn("m.room.name", [e["type"] for e in ctx["state"]])
        full_ctx = await self.timeline.context(dave, room, msg, limit=2)
        self.assertEqual(len(member_keys(full_ctx["state"])), 5)

    async def test_new_room_is_not_limited_when_whole(self):
        """A local room whose whole history fits the timeline is not ``limited`` (it
        starts at the create event); a longer one is."""
        alice = await self.user("alice")
        room = await self.create(alice)
        small = await self.sync(alice)
        self.assertFalse(small["rooms"]["join"][room]["timeline"]["limited"])
        for i in range(12):
            await self.send_text(alice, room, f"m{i}")
        self.assertTrue((await self.sync(alice))["rooms"]["join"][room]["timeline"]["limited"])
