"""Storage of history placed behind what we hold (PersistEntry.history, schema 006) and the
backward extremities, on real SQLite files."""

from __future__ import annotations

from fedserver import room_versions
from fedserver.storage import PersistEntry
from tests.test_federation_support import StoreTestCase
from tests.test_history_support import ALICE, RoomBuilder


class HistoryStorageTests(StoreTestCase):
    async def test_history_numbers_stream_and_extremities(self):
        """New history events get negative numbers (below every stream position), stay out
        of the /sync stream, never become forward extremities; an outlier placed as
        history is marked too; a held event whose prev events we lack is a backward
        extremity until they are placed."""
        store = await self.open_store()
        r = RoomBuilder(room_versions.V10)
        r.add("create", "m.room.create", ALICE, {"room_version": "10", "creator": ALICE}, "")
        r.add("join", "m.room.member", ALICE, {"membership": "join"}, ALICE)
        r.add("m1", "m.room.message", ALICE, {"body": "1"})
        r.add("m2", "m.room.message", ALICE, {"body": "2"})
        create, join, m1, m2 = (r.entries[i] for i in range(4))
        # We hold the state as outliers and m2 with it (as after a join); m1 is history.
        await store.persist_events([PersistEntry(create.event, outlier=True), PersistEntry(join.event, outlier=True)])
        await store.persist_events([PersistEntry(m2.event, state_before=m2.state_before,
                                                 update_current_state={})])
        extremities = await store.backfill.get_backward_extremities(r.room_id, 100)
        self.assertEqual([(x.event_id, x.missing) for x in extremities], [(m2.event.event_id, (m1.event.event_id,))])
        position = await store.rooms.get_stream_position()
        done = await store.persist_events([
            PersistEntry(create.event, state_before={}, history=True),
            PersistEntry(join.event, state_before=join.state_before, history=True),
            PersistEntry(m1.event, state_before=m1.state_before, history=True),
        ])
        self.assertLess(done[m1.event.event_id].event_nid, 0)
        for outlier in (create, join):  # de-outliered: they keep their numbers
            self.assertGreater(done[outlier.event.event_id].event_nid, 0)
        self.assertEqual(await store.rooms.get_stream_position(), position)
        timelines = await store.rooms.get_room_timelines({r.room_id: (0, 2**62)}, 10)
        self.assertEqual([e.event_id for _, e in timelines[r.room_id].events], [m2.event.event_id])
        self.assertEqual(await store.get_forward_extremities(r.room_id), [m2.event.event_id])
        self.assertEqual(await store.backfill.get_backward_extremities(r.room_id, 100), [])
        rows = await store.rooms.paginate(r.room_id, (2**62, 2**62), True, 10)
        self.assertEqual([e.event_id for _, e in rows], [e.event.event_id for e in (m2, m1, join, create)])

        def flags(txn):
            return dict(txn.execute("SELECT event_id, history FROM events").fetchall())

        self.assertEqual(await store.run_read(flags), {
            create.event.event_id: 1, join.event.event_id: 1, m1.event.event_id: 1, m2.event.event_id: 0})
