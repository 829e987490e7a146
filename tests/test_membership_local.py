"""Tests for local membership: join, leave, invite, kick, ban, unban, knock, forget, restricted joins."""

from __future__ import annotations

from fedserver.handlers.rooms.membership import MembershipHandler
from tests.test_rooms_support import HERE, RoomsTestCase, uid


class JoinLeaveTests(RoomsTestCase):
    async def test_join_public_room_by_id_and_alias(self):
        """Anyone may join a public room, by id or by alias; the join carries the
        profile; joining again changes nothing."""
        alice = await self.user("alice")
        bob = await self.user("bob", displayname="Bobby")
        room_id = await self.create(alice, preset="public_chat", room_alias_name="lobby")
        self.assertEqual(await self.membership.join(bob.user_id, f"#lobby:{HERE}"), room_id)
        content = await self.state_content(room_id, "m.room.member", bob.user_id)
        self.assertEqual(content, {"membership": "join", "displayname": "Bobby"})
        pos = await self.store.rooms.get_stream_position()
        self.assertEqual(await self.membership.join(bob.user_id, room_id), room_id)
        self.assertEqual(await self.store.rooms.get_stream_position(), pos)
        self.assertEqual(sorted(await self.store.get_room_members(room_id)), sorted([alice.user_id, bob.user_id]))

    async def test_invite_only_room(self):
        """An invite-only room refuses an uninvited join with 403 and the rule's reason;
        after an invite the join succeeds; an invitee may reject (leave)."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        carol = await self.user("carol")
        room_id = await self.create(alice)
        e = await self.assertMatrixError(self.membership.join(bob.user_id, room_id), 403, "M_FORBIDDEN")
        self.assertIn("invite", e.error)
        await self.membership.invite(alice.user_id, room_id, bob.user_id)
        await self.membership.join(bob.user_id, room_id)
        await self.membership.invite(alice.user_id, room_id, carol.user_id, reason="come")
        self.assertEqual((await self.state_content(room_id, "m.room.member", carol.user_id))["reason"], "come")
        await self.membership.leave(carol.user_id, room_id)
        self.assertEqual((await self.state_content(room_id, "m.room.member", carol.user_id))["membership"], "leave")

    async def test_invite_errors(self):
        """Invites of malformed ids are 400, of unknown local users 404, of joined users
        403 (auth rules), of remote users 400 without a remote path; a non-member cannot
        invite (403)."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create(alice)
        await self.assertMatrixError(self.membership.invite(alice.user_id, room_id, "bob"), 400, "M_INVALID_PARAM")
        await self.assertMatrixError(self.membership.invite(alice.user_id, room_id, uid("ghost")), 404, "M_NOT_FOUND")
        await self.assertMatrixError(self.membership.invite(alice.user_id, room_id, alice.user_id), 403, "M_FORBIDDEN")
        await self.assertMatrixError(self.membership.invite(alice.user_id, room_id, "@x:far.test"), 400, "M_UNKNOWN")
        await self.assertMatrixError(self.membership.invite(bob.user_id, room_id, alice.user_id), 403, "M_FORBIDDEN")
        await self.assertMatrixError(self.membership.invite(alice.user_id, "!unknown:here.test", bob.user_id), 404, "M_NOT_FOUND")

    async def test_leave_twice_and_unknown_room(self):
        """Leaving twice is a no-op the second time; leaving a room that is not here is
        404 without a remote path."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create(alice, preset="public_chat")
        await self.membership.join(bob.user_id, room_id)
        await self.membership.leave(bob.user_id, room_id)
        pos = await self.store.rooms.get_stream_position()
        await self.membership.leave(bob.user_id, room_id)
        self.assertEqual(await self.store.rooms.get_stream_position(), pos)
        await self.assertMatrixError(self.membership.leave(bob.user_id, "!elsewhere:far.test"), 404, "M_NOT_FOUND")
        await self.assertMatrixError(self.membership.join(bob.user_id, "!elsewhere:far.test"), 404, "M_NOT_FOUND")
        await self.assertMatrixError(self.membership.join(bob.user_id, "not-a-room"), 400, "M_INVALID_PARAM")
        await self.assertMatrixError(self.membership.join(bob.user_id, f"#nothing:{HERE}"), 404, "M_NOT_FOUND")


class ModerationTests(RoomsTestCase):
    async def _room(self):
        alice = await self.user("alice")
        bob = await self.user("bob")
        carol = await self.user("carol")
        room_id = await self.create(alice, preset="public_chat")
        for u in (bob, carol):
            await self.membership.join(u.user_id, room_id)
        return alice, bob, carol, room_id

    async def test_kick(self):
        """The creator kicks a member (leave with a reason); a member without the kick
        level cannot kick (403); kicking a user not in the room is 403."""
        alice, bob, carol, room_id = await self._room()
        await self.assertMatrixError(self.membership.kick(bob.user_id, room_id, carol.user_id), 403, "M_FORBIDDEN")
        await self.membership.kick(alice.user_id, room_id, carol.user_id, reason="bye")
        content = await self.state_content(room_id, "m.room.member", carol.user_id)
        self.assertEqual(content, {"membership": "leave", "reason": "bye"})
        await self.assertMatrixError(self.membership.kick(alice.user_id, room_id, carol.user_id), 403, "M_FORBIDDEN")
        # Kicked, not banned: carol may come back to the public room.
        await self.membership.join(carol.user_id, room_id)

    async def test_ban_blocks_rejoin_until_unban(self):
        """A banned user cannot rejoin (403) until unbanned; unbanning a user who is not
        banned is 403; a member without the ban level cannot ban."""
        alice, bob, carol, room_id = await self._room()
        await self.assertMatrixError(self.membership.ban(bob.user_id, room_id, carol.user_id), 403, "M_FORBIDDEN")
        await self.membership.ban(alice.user_id, room_id, carol.user_id, reason="spam")
        self.assertEqual((await self.state_content(room_id, "m.room.member", carol.user_id))["membership"], "ban")
        e = await self.assertMatrixError(self.membership.join(carol.user_id, room_id), 403, "M_FORBIDDEN")
        self.assertIn("ban", e.error)
        await self.assertMatrixError(self.send_text(carol, room_id, "let me in"), 403, "M_FORBIDDEN")
        await self.assertMatrixError(self.membership.unban(alice.user_id, room_id, bob.user_id), 403, "M_FORBIDDEN")
        await self.membership.unban(alice.user_id, room_id, carol.user_id)
        await self.membership.join(carol.user_id, room_id)
        # Banning a user who was never in the room is allowed (pre-emptive ban).
        await self.membership.ban(alice.user_id, room_id, uid("stranger"))

    async def test_forget(self):
        """Forgetting is refused while joined (400); after leaving it is recorded and a
        new membership brings the room back."""
        alice, bob, carol, room_id = await self._room()
        await self.assertMatrixError(self.membership.forget(bob.user_id, room_id), 400, "M_UNKNOWN")
        await self.membership.leave(bob.user_id, room_id)
        await self.membership.forget(bob.user_id, room_id)
        forgotten = await self.store.rooms.get_forgotten_rooms(bob.user_id)
        m = await self.store.rooms.get_membership(room_id, bob.user_id)
        self.assertEqual(forgotten, {room_id: m.event_nid})
        await self.membership.forget(bob.user_id, "!never:here.test")  # nothing to forget


class KnockTests(RoomsTestCase):
    async def test_knock_then_invite(self):
        """In a v7+ room with join rule knock, a user knocks (membership knock), cannot
        join uninvited, and joins once invited; knocking in a v6 room is refused."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        room_id = await self.create(
            alice, room_version="10",
            initial_state=[{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}],
        )
        await self.membership.knock(bob.user_id, room_id, reason="please")
        self.assertEqual(
            await self.state_content(room_id, "m.room.member", bob.user_id), {"membership": "knock", "reason": "please"}
        )
        await self.assertMatrixError(self.membership.join(bob.user_id, room_id), 403, "M_FORBIDDEN")
        await self.membership.invite(alice.user_id, room_id, bob.user_id)
        await self.membership.join(bob.user_id, room_id)
        old = await self.create(
            alice, room_version="6", initial_state=[{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]
        )
        await self.assertMatrixError(self.membership.knock(bob.user_id, old), 403, "M_FORBIDDEN")


class RestrictedJoinTests(RoomsTestCase):
    async def test_restricted_join(self):
        """A v10 restricted room admits members of an allowed room (the join names a local
        user who may invite, auth rule 5.2) and refuses others with 403."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        carol = await self.user("carol")
        space = await self.create(alice, preset="public_chat")
        await self.membership.join(bob.user_id, space)
        room_id = await self.create(
            alice, room_version="10",
            initial_state=[{
                "type": "m.room.join_rules",
                "content": {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]},
            }],
        )
        await self.membership.join(bob.user_id, room_id)
        content = await self.state_content(room_id, "m.room.member", bob.user_id)
        self.assertEqual(content["join_authorised_via_users_server"], alice.user_id)
        await self.assertMatrixError(self.membership.join(carol.user_id, room_id), 403, "M_FORBIDDEN")


class RemotePathTests(RoomsTestCase):
    async def test_rooms_not_here_go_to_remote(self):
        """Joins, leaves and knocks of rooms that are not here go to the remote path with
        the hints (alias servers, server_name) and the room id's domain as candidates."""
        calls = []

        class Remote:
            async def join(self, user_id, room_id, candidates, content):
                calls.append(("join", user_id, room_id, list(candidates)))

            async def leave(self, user_id, room_id, candidates, reason=None):
                calls.append(("leave", user_id, room_id, list(candidates)))

            async def knock(self, user_id, room_id, candidates, reason=None):
                calls.append(("knock", user_id, room_id, list(candidates)))
                return None, []

        bob = await self.user("bob")
        membership = MembershipHandler(self.events, self.directory, remote=Remote())
        await membership.join(bob.user_id, "!abc:far.test", server_names=["hint.test"])
        await membership.leave(bob.user_id, "!abc:far.test")
        await membership.knock(bob.user_id, "!abc:far.test", server_names=["hint.test"])
        self.assertEqual(
            calls,
            [
                ("join", bob.user_id, "!abc:far.test", ["hint.test", "far.test"]),
                ("leave", bob.user_id, "!abc:far.test", ["far.test"]),
                ("knock", bob.user_id, "!abc:far.test", ["hint.test", "far.test"]),
            ],
        )

    async def test_invite_sender_server_tried_first(self):
        """Accepting or rejecting an invite to a room that is not here tries the
        inviter's server first (seed 001: the invite's origin is the best candidate)."""
        calls = []

        class Remote:
            async def join(self, user_id, room_id, candidates, content):
                calls.append(("join", list(candidates)))

            async def leave(self, user_id, room_id, candidates, reason=None):
                calls.append(("leave", list(candidates)))

        alice = await self.user("alice")
        invite = await self.remote_member_event(alice.user_id, "invite", 3, room_id="!r:room.test")
        await self.store.federation_extras.set_remote_membership(
            alice.user_id, "!r:room.test", "invite", invite.event_id, "@bob:far.test", []
        )
        membership = MembershipHandler(self.events, self.directory, remote=Remote())
        await membership.join(alice.user_id, "!r:room.test", server_names=["hint.test"])
        await membership.leave(alice.user_id, "!r:room.test")
        self.assertEqual(
            calls, [("join", ["far.test", "hint.test", "room.test"]), ("leave", ["far.test", "room.test"])]
        )

    async def test_profile_refresh(self):
        """refresh_profile sends a new join with the current display name into each room
        the user is joined to."""
        alice = await self.user("alice", displayname="Old")
        r1 = await self.create(alice)
        r2 = await self.create(alice)
        await self.store.accounts.set_profile_field(alice.user_id, "displayname", "New")
        self.assertEqual(await self.membership.refresh_profile(alice.user_id), 2)
        for room_id in (r1, r2):
            self.assertEqual((await self.state_content(room_id, "m.room.member", alice.user_id))["displayname"], "New")
