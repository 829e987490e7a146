"""Tests for queueing events for other servers in the transaction that stores them, and the
one-time requeue of databases from before schema 005, on real SQLite files."""

from __future__ import annotations

import json
import os
import shutil

from fedserver.room_versions import V10
from fedserver.storage import Distribution, InvalidDataError, PersistEntry
from fedserver.storage.schema import DEFAULT_SCHEMA_DIR
from tests.test_storage_support import StoreTestCase, linear_entries, make_event, make_room

US = "a.example"
ALICE = "@alice:a.example"


def body_of(item) -> str:
    """The ``body`` of a queued message PDU."""
    return json.loads(item.json)["content"].get("body")


class QueueInEventTransactionTests(StoreTestCase):
    """PersistEntry.distribute: the queue rows are written by the transaction that stores
    the event (DESIGN.md, Durability)."""

    async def room_with_remote_member(self, store):
        room_id, events = make_room(V10, ALICE)
        state: dict = {}
        await store.persist_events(linear_entries(events, state))
        bob = make_event(V10, room_id, "m.room.member", "@bob:b.example", {"membership": "join"}, "@bob:b.example",
                         prev=[events[-1].event_id], depth=5)
        await store.persist_events(linear_entries([bob], state))
        return room_id, bob, state

    async def test_queued_for_joined_servers_plus_also_minus_never(self):
        """An accepted event with a Distribution is queued for every server with a joined
        member (after the batch), plus ``also``, minus ``never``; PersistedEvent says for
        whom; an entry without one is not queued."""
        store = await self.open()
        room_id, last, state = await self.room_with_remote_member(store)
        msg = make_event(V10, room_id, "m.room.message", ALICE, {"body": "hi"}, prev=[last.event_id], depth=6)
        plain = make_event(V10, room_id, "m.room.message", ALICE, {"body": "plain"}, prev=[msg.event_id], depth=7)
        entries = linear_entries([msg, plain], state)
        entries[0].distribute = Distribution(also=frozenset({"c.example"}), never=frozenset({US}))
        done = await store.persist_events(entries)
        self.assertEqual(done[msg.event_id].queued_for, {"b.example", "c.example"})
        self.assertEqual(done[plain.event_id].queued_for, frozenset())
        self.assertEqual([body_of(i) for i in await store.get_outbound_batch("b.example")], ["hi"])
        self.assertEqual([body_of(i) for i in await store.get_outbound_batch("c.example")], ["hi"])
        self.assertEqual(await store.get_outbound_batch(US), [])
        self.assertEqual(await store.destinations_with_pending(), ["b.example", "c.example"])

    async def test_hosts_after_the_batch(self):
        """The servers are those joined once the batch is stored: a join in the same batch
        counts, so the joining server gets the event after its join."""
        store = await self.open()
        room_id, events = make_room(V10, ALICE)
        state: dict = {}
        await store.persist_events(linear_entries(events, state))
        carl = make_event(V10, room_id, "m.room.member", "@carl:c.example", {"membership": "join"}, "@carl:c.example",
                          prev=[events[-1].event_id], depth=5)
        msg = make_event(V10, room_id, "m.room.message", ALICE, {"body": "welcome"}, prev=[carl.event_id], depth=6)
        entries = linear_entries([carl, msg], state)
        entries[1].distribute = Distribution(never=frozenset({US}))
        done = await store.persist_events(entries)
        self.assertEqual(done[msg.event_id].queued_for, {"c.example"})

    async def test_not_queued_unless_stored_and_accepted(self):
        """Rejected, soft-failed and outlier entries, and an event stored already, are never
        queued."""
        store = await self.open()
        room_id, last, state = await self.room_with_remote_member(store)
        everyone = Distribution(never=frozenset({US}))
        rejected = make_event(V10, room_id, "m.room.message", ALICE, {"body": "r"}, prev=[last.event_id], depth=6)
        soft = make_event(V10, room_id, "m.room.message", ALICE, {"body": "s"}, prev=[last.event_id], depth=6)
        outlier = make_event(V10, room_id, "m.room.message", ALICE, {"body": "o"}, prev=[last.event_id], depth=6)
        ok = make_event(V10, room_id, "m.room.message", ALICE, {"body": "ok"}, prev=[last.event_id], depth=6)
        done = await store.persist_events([
            PersistEntry(rejected, state_before=dict(state), rejection=("no", "4"), distribute=everyone),
            PersistEntry(soft, state_before=dict(state), soft_failed=True, distribute=everyone),
            PersistEntry(outlier, outlier=True, distribute=everyone),
            PersistEntry(ok, state_before=dict(state), distribute=everyone),
        ])
        self.assertEqual({e: d.queued_for for e, d in done.items() if d.queued_for}, {ok.event_id: {"b.example"}})
        again = await store.persist_events([PersistEntry(ok, state_before=dict(state), distribute=everyone)])
        self.assertEqual(again[ok.event_id].queued_for, frozenset())
        self.assertEqual([body_of(i) for i in await store.get_outbound_batch("b.example")], ["ok"])

    async def test_all_or_nothing(self):
        """A malformed Distribution fails the whole batch: neither the event nor any queue
        row is kept."""
        store = await self.open()
        room_id, last, state = await self.room_with_remote_member(store)
        good = make_event(V10, room_id, "m.room.message", ALICE, {"body": "g"}, prev=[last.event_id], depth=6)
        bad = make_event(V10, room_id, "m.room.message", ALICE, {"body": "b"}, prev=[good.event_id], depth=7)
        entries = linear_entries([good, bad], state)
        entries[0].distribute = Distribution(never=frozenset({US}))
        entries[1].distribute = Distribution(also="b.example")  # a string, not a collection
        with self.assertRaises(InvalidDataError):
            await store.persist_events(entries)
        self.assertEqual(await store.have_events([good.event_id, bad.event_id]), set())
        self.assertEqual(await store.destinations_with_pending(), [])


class RequeueAfterUpgradeTests(StoreTestCase):
    """Schema 005: events committed by older code without their queue rows."""

    async def test_latest_local_events_queued_once(self):
        """A database made at schema 004 holding a room with a remote member: after the
        upgrade, the room's forward extremity made here is queued once for that member's
        server (never for us); an extremity another server made is not; the next call
        queues nothing."""
        old_schema = self.mktemp()
        shutil.copytree(DEFAULT_SCHEMA_DIR, old_schema)
        os.remove(os.path.join(old_schema, "005_outbound_requeue.sql"))
        path = self.db_path()
        store = await self.open(path, schema_dir=old_schema)
        room_id, events = make_room(V10, ALICE)
        state: dict = {}
        await store.persist_events(linear_entries(events, state))
        bob = make_event(V10, room_id, "m.room.member", "@bob:b.example", {"membership": "join"}, "@bob:b.example",
                         prev=[events[-1].event_id], depth=5)
        ours = make_event(V10, room_id, "m.room.message", ALICE, {"body": "lost?"}, prev=[bob.event_id], depth=6)
        await store.persist_events(linear_entries([bob, ours], state))
        other_room, other_events = make_room(V10, "@zed:z.example")
        await store.persist_events(linear_entries(other_events, {}))
        store.close()

        store = await self.open(path)
        self.assertEqual(await store.destinations_with_pending(), [])
        requeued = await store.requeue_unsent_local_events(US)
        self.assertEqual(requeued, {room_id: frozenset({"b.example"})})
        self.assertEqual([body_of(i) for i in await store.get_outbound_batch("b.example")], ["lost?"])
        self.assertEqual(await store.destinations_with_pending(), ["b.example"])
        self.assertEqual(await store.requeue_unsent_local_events(US), {})

    async def test_new_database_has_nothing_to_requeue(self):
        """A database created at schema 005 has nothing to send again."""
        store = await self.open()
        room_id, events = make_room(V10, ALICE)
        await store.persist_events(linear_entries(events, {}))
        self.assertEqual(await store.requeue_unsent_local_events(US), {})
