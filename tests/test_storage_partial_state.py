"""Tests for the partial-state marks of fedserver.storage.rooms.partial_state_store on real
SQLite files: the sync view of rooms whose resync ends while an answer is built."""

from __future__ import annotations

from fedserver.room_versions import V10
from tests.test_storage_support import StoreTestCase, linear_entries, make_room

ALICE = "@alice:a.example"


class SyncViewTests(StoreTestCase):
    async def test_room_completed_after_the_answer_position_counts_as_partial(self):
        """get_sync_view: while marked, a room is partial; once its resync has ended it
        is still partial for an answer whose position was read before the end (so that
        answer leaves it out), and 'completed' exactly once, for the next answer whose
        token is older than the end and position newer; later answers see neither."""
        store = await self.open()
        room_id, events = make_room(V10, ALICE)
        state: dict = {}
        await store.persist_events(linear_entries(events, state))
        await store.run_write(
            lambda txn: store.partial_state.start_txn(txn, room_id, events[-1].event_id, "b.example", ["b.example"])
        )
        before = await store.partial_state.get_completion_position()
        self.assertEqual(await store.partial_state.get_sync_view([room_id], None, before), ({room_id}, set()))
        await store.partial_state.finish(room_id, [], state)
        after = await store.partial_state.get_completion_position()
        self.assertGreater(after, before)
        # The answer built with the position read before the end: still left out.
        self.assertEqual(await store.partial_state.get_sync_view([room_id], None, before), ({room_id}, set()))
        self.assertEqual(await store.partial_state.get_sync_view([room_id], before, before), ({room_id}, set()))
        # The next answer (token at ``before``): sent whole, once.
        self.assertEqual(await store.partial_state.get_sync_view([room_id], before, after), (set(), {room_id}))
        self.assertEqual(await store.partial_state.get_sync_view([room_id], after, after), (set(), set()))
        self.assertEqual(await store.partial_state.get_sync_view([room_id], None, after), (set(), set()))
