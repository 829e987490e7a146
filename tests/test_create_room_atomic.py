"""createRoom is all or nothing: a failure half-way leaves no half-made room (issue 18)."""

from __future__ import annotations

from typing import Any

from fedserver.events.status import OutcomeStatus
from fedserver.storage.interface import StorageUnavailableError
from fedserver.testing import io_fault
from tests.test_rooms_support import RoomsTestCase, uid


class CreateRoomAtomicTests(RoomsTestCase):
    async def _set_up(self) -> None:
        await super()._set_up()
        # The room ids createRoom hands to the pipeline (the client never gets them when
        # createRoom fails).
        self.batches: list[tuple[str, list[str]]] = []
        real = self.pipeline.process

        def spy(room_id: str, events: Any, **kw: Any):
            self.batches.append((room_id, [e.type for e in events]))
            return real(room_id, events, **kw)

        self.patch(self.pipeline, "process", spy)

    async def assertNoRoom(self, room_id: str, user_id: str, position_before: int) -> None:
        """Nothing of ``room_id`` is stored nor believed in memory."""
        self.assertIsNone(await self.store.get_room_version(room_id))
        self.assertEqual(dict(await self.store.get_current_state_ids(room_id)), {})
        self.assertEqual(set(await self.store.get_forward_extremities(room_id)), set())
        self.assertEqual(dict(await self.pipeline.current_state(room_id)), {})
        self.assertFalse(await self.events.is_here(room_id))
        self.assertEqual(await self.store.presence.get_joined_rooms(user_id), [])
        self.assertEqual(await self.store.rooms.get_stream_position(), position_before)

    async def test_refused_initial_state_leaves_no_room(self):
        """An event the request implies that the auth rules refuse (the creator gave its
        power away first, so the canonical alias is refused, the 4th event) answers 400
        M_INVALID_ROOM_STATE naming it, and NOTHING of the room is
        stored: no create event, no join, no power levels; the alias is free again and a
        correct request can take it."""
        alice = await self.user("alice")
        before = await self.store.rooms.get_stream_position()
        e = await self.assertMatrixError(
            self.create(
                alice, room_version="10", room_alias_name="atomic", name="Half",
                power_level_content_override={"users": {alice.user_id: 10}, "state_default": 50},
                initial_state=[{"type": "m.room.topic", "content": {"topic": "x"}}],
            ),
            400, "M_INVALID_ROOM_STATE",
        )
        self.assertIn("m.room.canonical_alias refused", e.error)
        self.assertEqual(len(self.batches), 1)
        room_id, types = self.batches[0]
        self.assertEqual(types[:3], ["m.room.create", "m.room.member", "m.room.power_levels"])
        await self.assertNoRoom(room_id, alice.user_id, before)
        self.assertIsNone(await self.store.rooms.get_alias(f"#atomic:{self.rooms.server_name}"))
        good = await self.create(alice, room_alias_name="atomic", name="Whole")
        alias = await self.store.rooms.get_alias(f"#atomic:{self.rooms.server_name}")
        self.assertEqual(alias.room_id, good)
        self.assertEqual(await self.store.presence.get_joined_rooms(alice.user_id), [good])

    async def test_storage_fault_mid_create_leaves_no_room(self):
        """A storage fault while the room's events are written (here an I/O error raised
        inside the transaction once the power levels are written, where the one-by-one
        way had already stored the create event and the join) fails createRoom with the
        fault, and nothing of the room stays, in storage or in the pipeline's memory; the
        alias is given back; once the fault is over the same request makes a whole room."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        before = await self.store.rooms.get_stream_position()
        real = self.store.persist_events_txn
        faults = []

        def failing(txn: Any, batch: Any, received_txn: Any = None) -> Any:
            out = real(txn, batch, received_txn)
            if any(entry.event.type == "m.room.power_levels" for entry in batch):
                faults.append(len(batch))
                raise io_fault(self.store.database)
            return out

        self.patch(self.store, "persist_events_txn", failing)
        body = {"room_alias_name": "faulty", "name": "N", "topic": "T", "invite": [bob.user_id]}
        with self.assertRaises(StorageUnavailableError):
            await self.rooms.create_room(alice, body)
        self.assertEqual(len(faults), 1)
        room_id = self.batches[0][0]
        await self.assertNoRoom(room_id, alice.user_id, before)
        self.assertIsNone(await self.store.rooms.get_alias(f"#faulty:{self.rooms.server_name}"))

        self.patch(self.store, "persist_events_txn", real)
        made = (await self.rooms.create_room(alice, body))["room_id"]
        state = await self.store.get_current_state_ids(made)
        for key in [("m.room.create", ""), ("m.room.member", alice.user_id), ("m.room.power_levels", ""),
                    ("m.room.canonical_alias", ""), ("m.room.join_rules", ""), ("m.room.name", ""),
                    ("m.room.topic", ""), ("m.room.member", bob.user_id)]:
            self.assertIn(key, state)
        self.assertEqual((await self.store.rooms.get_alias(f"#faulty:{self.rooms.server_name}")).room_id, made)

    async def test_atomic_batch_stores_nothing_if_one_event_is_refused(self):
        """RoomPipeline.process(atomic=True): when one event of the batch is refused, the
        accepted ones before it are not stored either, and no outcome says stored."""
        alice = await self.user("alice")
        from fedserver.handlers.rooms.new_room import RoomDraft
        from fedserver.room_versions import V10

        draft = await RoomDraft.start(self.events, V10, alice.user_id, {"room_version": "10", "creator": alice.user_id})
        await draft.add("m.room.member", alice.user_id, {"membership": "join"}, alice.user_id)
        # Bob's join is refused by the auth rules: he is no creator and the room has no
        # join rules (defaults to invite).
        bad = await draft.add("m.room.member", uid("bob"), {"membership": "join"}, uid("bob"))
        outcomes = await self.pipeline.process(
            draft.room_id, draft.events, local=True, persist_rejected=False, atomic=True
        )
        self.assertEqual(outcomes[bad.event_id].status, OutcomeStatus.REJECTED)
        self.assertEqual(
            [outcomes[e.event_id].status for e in draft.events[:2]], [OutcomeStatus.ACCEPTED, OutcomeStatus.ACCEPTED]
        )
        self.assertFalse(any(o.stored for o in outcomes.values()))
        self.assertEqual(await self.store.get_event_meta([e.event_id for e in draft.events]), {})
        self.assertEqual(dict(await self.pipeline.current_state(draft.room_id)), {})
