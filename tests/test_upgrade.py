"""Room upgrades through the room handlers on a real store: the replacement room, what is
carried over, the tombstone, the old room quietened, errors, and following a tombstone."""

from __future__ import annotations

from fedserver.handlers.rooms.upgrade import RoomUpgradeHandler
from fedserver.room_versions import RoomVersionRegistry
from tests.test_rooms_support import RoomsTestCase


class UpgradeTests(RoomsTestCase):
    async def _set_up(self) -> None:
        await super()._set_up()
        self.upgrades = RoomUpgradeHandler(self.events, self.membership, RoomVersionRegistry())
        self.membership.on_joined.append(self.upgrades.on_joined)

    async def test_public_room_upgraded(self):
        """Upgrading a v10 public room to v11: a create event naming the predecessor (room
        and last event), the name, topic, join rules, history visibility and power levels
        (with the users' levels) copied, bans carried, the alias and canonical alias and
        the directory entry moved, a tombstone naming the new room, and the old room's
        events_default and invite raised to 50."""
        alice = await self.user("alice", admin=True)
        bob = await self.user("bob")
        dave = await self.user("dave")
        old = await self.create(alice, preset="public_chat", room_version="10", name="Old", topic="T",
                                room_alias_name="lobby", visibility="public",
                                power_level_content_override={"users": {alice.user_id: 100, bob.user_id: 50}})
        await self.membership.join(bob.user_id, old)
        await self.membership.ban(alice.user_id, old, dave.user_id, reason="spam")
        last = (await self.store.get_forward_extremities(old))[0]
        result = await self.upgrades.upgrade(alice, old, {"new_version": "11"})
        new = result["replacement_room"]
        self.assertNotEqual(new, old)
        create = await self.state_content(new, "m.room.create")
        self.assertEqual(create["room_version"], "11")
        self.assertEqual(create["predecessor"], {"room_id": old, "event_id": last})
        self.assertNotIn("creator", create)
        self.assertEqual(await self.state_content(new, "m.room.name"), {"name": "Old"})
        self.assertEqual((await self.state_content(new, "m.room.topic"))["topic"], "T")
        self.assertEqual(await self.state_content(new, "m.room.join_rules"), {"join_rule": "public"})
        self.assertEqual(await self.state_content(new, "m.room.history_visibility"), {"history_visibility": "shared"})
        pl = await self.state_content(new, "m.room.power_levels")
        self.assertEqual(pl["users"], {alice.user_id: 100, bob.user_id: 50})
        self.assertEqual((await self.state_content(new, "m.room.member", dave.user_id))["membership"], "ban")
        self.assertEqual((await self.directory.resolve_alias(f"#lobby:here.test"))["room_id"], new)
        self.assertEqual(await self.state_content(new, "m.room.canonical_alias"), {"alias": "#lobby:here.test"})
        self.assertNotIn("alias", await self.state_content(old, "m.room.canonical_alias"))
        self.assertEqual((await self.directory.get_visibility(new), await self.directory.get_visibility(old)), ("public", "private"))
        self.assertEqual(await self.state_content(old, "m.room.tombstone"),
                         {"body": "This room has been replaced", "replacement_room": new})
        old_pl = await self.state_content(old, "m.room.power_levels")
        self.assertEqual((old_pl["events_default"], old_pl["invite"]), (50, 50))
        # Bob follows: the new room is public.
        await self.membership.join(bob.user_id, new)
        self.assertEqual((await self.state_content(new, "m.room.member", bob.user_id))["membership"], "join")
        # The old room is quiet for bob (power 50 keeps him able to speak), and for others.
        erin = await self.user("erin")
        await self.membership.join(erin.user_id, old)
        await self.assertMatrixError(self.send_text(erin, old, "hello?"), 403, "M_FORBIDDEN")

    async def test_private_room_to_v12_invites_members(self):
        """A private v10 room upgraded to v12: the upgrader and the additional creators are
        creators (not in the power levels' users), m.room.tombstone is above state_default, and the
        joined and invited members are invited to the new room so they can follow; a
        member's room tags follow them when they join."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        carol = await self.user("carol")
        old = await self.create(alice, preset="private_chat", room_version="10", invite=[bob.user_id, carol.user_id])
        await self.membership.join(bob.user_id, old)
        await self.store.accounts.set_account_data(bob.user_id, old, "m.tag", {"tags": {"u.work": {}}})
        result = await self.upgrades.upgrade(alice, old, {"new_version": "12", "additional_creators": [bob.user_id]})
        new = result["replacement_room"]
        create = await self.state_content(new, "m.room.create")
        self.assertEqual(create["additional_creators"], [bob.user_id])
        self.assertEqual(create["predecessor"]["room_id"], old)
        pl = await self.state_content(new, "m.room.power_levels")
        self.assertNotIn(alice.user_id, pl["users"])
        self.assertNotIn(bob.user_id, pl["users"])
        self.assertGreater(pl["events"]["m.room.tombstone"], pl["state_default"])
        for who in (bob, carol):
            self.assertEqual((await self.state_content(new, "m.room.member", who.user_id))["membership"], "invite")
        await self.membership.join(bob.user_id, new)
        self.assertEqual(await self.store.accounts.get_account_data(bob.user_id, new, "m.tag"), {"tags": {"u.work": {}}})

    async def test_v12_room_downgraded_keeps_upgrader_in_charge(self):
        """From v12 (creators are not listed) to v11, the upgrader gets 100 in the new
        power levels, so they can act there."""
        alice = await self.user("alice")
        old = await self.create(alice, room_version="12")
        new = (await self.upgrades.upgrade(alice, old, {"new_version": "11"}))["replacement_room"]
        pl = await self.state_content(new, "m.room.power_levels")
        self.assertEqual(pl["users"][alice.user_id], 100)
        await self.rooms.set_state(alice, new, "m.room.name", "", {"name": "works"})

    async def test_errors(self):
        """403 M_FORBIDDEN for a non-member and for a member without the power to send
        m.room.tombstone (nothing is created); 400 M_UNSUPPORTED_ROOM_VERSION,
        M_MISSING_PARAM, M_BAD_JSON and M_INVALID_PARAM for bad requests."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        stranger = await self.user("zed")
        room = await self.create(alice, preset="public_chat", room_version="11")
        await self.membership.join(bob.user_id, room)
        rooms_before = len(await self.store.rooms.get_memberships_for_user(bob.user_id))
        await self.assertMatrixError(self.upgrades.upgrade(stranger, room, {"new_version": "12"}), 403, "M_FORBIDDEN")
        await self.assertMatrixError(self.upgrades.upgrade(bob, room, {"new_version": "12"}), 403, "M_FORBIDDEN")
        self.assertEqual(len(await self.store.rooms.get_memberships_for_user(bob.user_id)), rooms_before)
        self.assertIsNone(await self.state_content(room, "m.room.tombstone"))
        await self.assertMatrixError(self.upgrades.upgrade(alice, room, {"new_version": "99"}), 400, "M_UNSUPPORTED_ROOM_VERSION")
        await self.assertMatrixError(self.upgrades.upgrade(alice, room, {}), 400, "M_MISSING_PARAM")
        await self.assertMatrixError(self.upgrades.upgrade(alice, room, {"new_version": 12}), 400, "M_BAD_JSON")
        await self.assertMatrixError(
            self.upgrades.upgrade(alice, room, {"new_version": "12", "additional_creators": ["nope"]}), 400, "M_INVALID_PARAM")
        await self.assertMatrixError(self.upgrades.upgrade(alice, "!unknown:here.test", {"new_version": "12"}), 403, "M_FORBIDDEN")

    async def test_storage_fault_mid_replacement_leaves_old_room_untouched(self):
        """The replacement room's first events (create, join, power levels, transferred
        state) are taken in all at once: an I/O error while they are written fails the
        upgrade with the fault, stores nothing of a new room, and leaves the old room as
        it was (no tombstone, its power levels and aliases unchanged); once the fault is
        over the same request upgrades it."""
        from typing import Any

        from fedserver.storage.interface import StorageUnavailableError
        from fedserver.testing import io_fault

        alice = await self.user("alice", admin=True)
        old = await self.create(alice, preset="public_chat", room_version="10", name="Old", room_alias_name="hall")
        before_state = await self.store.get_current_state_ids(old)
        rooms_before = set(await self.store.presence.get_joined_rooms(alice.user_id))
        real = self.store.persist_events_txn
        faults = []

        def failing(txn: Any, batch: Any, received_txn: Any = None) -> Any:
            out = real(txn, batch, received_txn)
            if any(entry.event.type == "m.room.create" for entry in batch):
                faults.append([entry.event.type for entry in batch])
                raise io_fault(self.store.database)
            return out

        self.patch(self.store, "persist_events_txn", failing)
        with self.assertRaises(StorageUnavailableError):
            await self.upgrades.upgrade(alice, old, {"new_version": "11"})
        # One transaction held the create event, the join and the transferred state.
        self.assertEqual(len(faults), 1)
        self.assertEqual(faults[0][:2], ["m.room.create", "m.room.member"])
        self.assertIn("m.room.name", faults[0])
        self.assertEqual(await self.store.get_current_state_ids(old), before_state)
        self.assertEqual(set(await self.store.presence.get_joined_rooms(alice.user_id)), rooms_before)
        self.assertEqual((await self.directory.resolve_alias("#hall:here.test"))["room_id"], old)

        self.patch(self.store, "persist_events_txn", real)
        new = (await self.upgrades.upgrade(alice, old, {"new_version": "11"}))["replacement_room"]
        self.assertEqual(await self.state_content(new, "m.room.name"), {"name": "Old"})
        self.assertEqual((await self.state_content(old, "m.room.tombstone"))["replacement_room"], new)
