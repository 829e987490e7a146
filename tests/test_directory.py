"""Tests for local room aliases and the published room directory."""

from __future__ import annotations

from fedserver.handlers.rooms.directory import split_alias
from tests.test_rooms_support import HERE, RoomsTestCase


class AliasTests(RoomsTestCase):
    async def test_create_resolve_list_delete(self):
        """An alias maps to a room, resolves with our server first, is listed for the
        room's members, and is deleted by its creator; then it is 404."""
        alice = await self.user("alice")
        room_id = await self.create(alice)
        alias = f"#cats:{HERE}"
        await self.directory.create_alias(alice.user_id, alias, room_id)
        self.assertEqual(await self.directory.resolve_alias(alias), {"room_id": room_id, "servers": [HERE]})
        self.assertEqual(await self.directory.room_aliases(alice.user_id, room_id), [alias])
        await self.directory.delete_alias(alice.user_id, alias)
        await self.assertMatrixError(self.directory.resolve_alias(alias), 404, "M_NOT_FOUND")
        await self.assertMatrixError(self.directory.delete_alias(alice.user_id, alias), 404, "M_NOT_FOUND")

    async def test_create_errors(self):
        """Taken aliases are 409 M_UNKNOWN; malformed or foreign aliases 400
        M_INVALID_PARAM; unknown rooms 404."""
        alice = await self.user("alice")
        room_id = await self.create(alice)
        await self.directory.create_alias(alice.user_id, f"#a:{HERE}", room_id)
        await self.assertMatrixError(self.directory.create_alias(alice.user_id, f"#a:{HERE}", room_id), 409, "M_UNKNOWN")
        for bad in ("a:here.test", "#:here.test", "#a", "#a b:here.test", "#x:other.test", "#" + "x" * 300 + ":here.test"):
            await self.assertMatrixError(self.directory.create_alias(alice.user_id, bad, room_id), 400, "M_INVALID_PARAM")
        await self.assertMatrixError(self.directory.create_alias(alice.user_id, f"#b:{HERE}", "!no:here.test"), 404, "M_NOT_FOUND")
        await self.assertMatrixError(self.directory.resolve_alias("#x:other.test"), 404, "M_NOT_FOUND")
        await self.assertMatrixError(self.directory.resolve_alias("junk"), 400, "M_INVALID_PARAM")

    async def test_delete_permissions(self):
        """Another member without the canonical alias level cannot delete an alias (403);
        a member with it, or a server admin, can."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        admin = await self.user("root", admin=True)
        room_id = await self.create(alice, preset="public_chat", room_version="10")
        await self.membership.join(bob.user_id, room_id)
        await self.directory.create_alias(alice.user_id, f"#one:{HERE}", room_id)
        await self.directory.create_alias(alice.user_id, f"#two:{HERE}", room_id)
        await self.assertMatrixError(self.directory.delete_alias(bob.user_id, f"#one:{HERE}"), 403, "M_FORBIDDEN")
        await self.directory.delete_alias(admin.user_id, f"#one:{HERE}")
        await self.directory.create_alias(bob.user_id, f"#three:{HERE}", room_id)
        await self.directory.delete_alias(alice.user_id, f"#three:{HERE}")  # power over the room
        self.assertEqual(await self.directory.room_aliases(bob.user_id, room_id), [f"#two:{HERE}"])

    async def test_room_aliases_needs_membership(self):
        """GET /rooms/{roomId}/aliases is 403 for non-members of a room that is not
        world-readable."""
        alice = await self.user("alice")
        stranger = await self.user("zed")
        room_id = await self.create(alice, room_alias_name="hidden")
        await self.assertMatrixError(self.directory.room_aliases(stranger.user_id, room_id), 403, "M_FORBIDDEN")

    def test_split_alias(self):
        """Aliases split at the first colon; the server part may carry a port."""
        self.assertEqual(split_alias("#a:b.test:8448"), ("a", "b.test:8448"))
        self.assertIsNone(split_alias("#a"))
        self.assertIsNone(split_alias("!a:b"))
        self.assertIsNone(split_alias(None))
        self.assertIsNone(split_alias("#a\x00:b"))


class PublicRoomsTests(RoomsTestCase):
    async def test_visibility_and_listing(self):
        """Public rooms are listed with name, topic, alias, member counts and flags,
        most members first; searching filters; pages carry next/prev tokens; a member
        without power cannot change visibility, the creator can."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        big = await self.create(alice, visibility="public", name="Big room", topic="everything", room_alias_name="big")
        small = await self.create(alice, visibility="public", name="Small", room_version="10")
        hidden = await self.create(alice, name="Hidden")
        await self.membership.join(bob.user_id, big)
        listing = await self.directory.public_rooms()
        self.assertEqual([c["room_id"] for c in listing["chunk"]], [big, small])
        self.assertEqual(listing["total_room_count_estimate"], 2)
        chunk = listing["chunk"][0]
        self.assertEqual(
            chunk,
            {
                "room_id": big, "name": "Big room", "topic": "everything", "canonical_alias": f"#big:{HERE}",
                "num_joined_members": 2, "world_readable": False, "guest_can_join": False, "join_rule": "public",
            },
        )
        found = await self.directory.public_rooms(search_term="SMALL")
        self.assertEqual([c["room_id"] for c in found["chunk"]], [small])
        page = await self.directory.public_rooms(limit=1)
        self.assertEqual(len(page["chunk"]), 1)
        nxt = await self.directory.public_rooms(limit=1, since=page["next_batch"])
        self.assertEqual([c["room_id"] for c in nxt["chunk"]], [small])
        self.assertEqual(nxt["prev_batch"], "o0")
        await self.assertMatrixError(self.directory.public_rooms(since="zzz"), 400, "M_INVALID_PARAM")
        await self.assertMatrixError(self.directory.set_visibility(bob.user_id, big, "private"), 403, "M_FORBIDDEN")
        await self.directory.set_visibility(alice.user_id, hidden, "public")
        self.assertEqual(await self.directory.get_visibility(hidden), "public")
        await self.assertMatrixError(self.directory.set_visibility(alice.user_id, hidden, "open"), 400, "M_INVALID_PARAM")
        await self.assertMatrixError(self.directory.get_visibility("!none:here.test"), 404, "M_NOT_FOUND")
