"""/sync: of a user's membership in a room's state here and one recorded over federation
(invites, knocks, rejections in rooms this server is not in), the newer one is shown."""

from __future__ import annotations

from tests.test_rooms_support import RoomsTestCase


class RemoteVersusLocalMembershipTests(RoomsTestCase):
    async def sync(self, requester, since=None):
        return await self.sync_handler.sync(requester, since=since)

    async def test_new_remote_invite_after_leaving_is_shown(self):
        """A user who left a room (this server then holds no joined member) and is
        invited to it again over federation sees the invite under rooms.invite, in full
        and incremental syncs, and the room no longer under rooms.leave."""
        alice = await self.user("alice")
        room = await self.create(alice, preset="public_chat", room_version="10")
        await self.membership.leave(alice.user_id, room)
        first = await self.sync(alice)
        invite = await self.remote_member_event(alice.user_id, "invite", 50, room_id=room)
        await self.store.federation_extras.set_remote_membership(
            alice.user_id, room, "invite", invite.event_id, "@bob:far.test", []
        )
        self.assertIn(room, (await self.sync(alice))["rooms"]["invite"])
        later = await self.sync(alice, since=first["next_batch"])
        self.assertIn(room, later["rooms"]["invite"])
        self.assertNotIn(room, later["rooms"]["leave"])

    async def test_older_remote_invite_is_hidden_by_a_newer_membership_here(self):
        """An invite recorded over federation before the user joined the room here is
        not shown: the join, newer, wins."""
        bob = await self.user("bob")
        alice = await self.user("alice")
        room = await self.create(bob, preset="public_chat", room_version="10")
        invite = await self.remote_member_event(alice.user_id, "invite", 50, room_id=room)
        await self.store.federation_extras.set_remote_membership(
            alice.user_id, room, "invite", invite.event_id, "@bob:far.test", []
        )
        self.assertIn(room, (await self.sync(alice))["rooms"]["invite"])
        await self.membership.join(alice.user_id, room)
        rooms = (await self.sync(alice))["rooms"]
        self.assertNotIn(room, rooms["invite"])
        self.assertIn(room, rooms["join"])
