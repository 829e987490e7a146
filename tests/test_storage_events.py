"""Tests for persisting and loading events, refusals, the DAG, rooms and current state."""

from __future__ import annotations


from fedserver.events.model import Event
from fedserver.events.status import OutcomeStatus
from fedserver.room_versions import SPEC_ROOM_VERSIONS, V1, V10, V11, V12, RoomVersionRegistry
from fedserver.storage import (
    InvalidDataError,
    PersistEntry,
    Refusal,
    UnknownEventsError,
)
from fedserver.testing import connect_test_database
from tests.test_storage_support import StoreTestCase, linear_entries, make_event, make_room

HOSTILE = [
    "'; DROP TABLE events; --",
    "$a\x00b",
    "../../etc/passwd",
    "$\ud800",
    "\" OR 1=1 --",
    "",
]


def _count(path: str, table: str) -> int:
    conn = connect_test_database(path)
    try:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def _json_sizes(path: str, event_ids: list[str]) -> dict[str, int]:
    conn = connect_test_database(path)
    try:
        rows = conn.execute(
            f"SELECT event_id, json FROM events WHERE event_id IN ({', '.join('?' * len(event_ids))})", event_ids
        ).fetchall()
        return {r[0]: len(r[1]) for r in rows}
    finally:
        conn.close()


class RoundTripTests(StoreTestCase):
    """Events come back exactly as they were stored, in every room version."""

    async def test_round_trip_all_room_versions(self):
        """For rooms v1-v12 (all four event formats), persisted events load back with the
        same PDU, id, room id (derived for v12 creates), type, state key, edges and room
        version, from the cache and after reopening the database."""
        path = self.db_path()
        store = await self.open(path)
        rooms = {}
        for rv in SPEC_ROOM_VERSIONS:
            room_id, events = make_room(rv)
            msg = make_event(rv, room_id, "m.room.message", content={"body": "hi ☃", "n": 1},
                             prev=[events[-1].event_id], auth=[events[1].event_id], depth=5)
            events.append(msg)
            await store.persist_events(linear_entries(events))
            rooms[rv.identifier] = (room_id, events)
        for attempt in ("cached", "reopened"):
            if attempt == "reopened":
                store.close()
                store = await self.open(path)
            for rv in SPEC_ROOM_VERSIONS:
                room_id, events = rooms[rv.identifier]
                got = await store.get_events([e.event_id for e in events])
                self.assertEqual(set(got), {e.event_id for e in events}, (attempt, rv.identifier))
                for e in events:
                    g = got[e.event_id]
                    self.assertEqual(g.pdu, e.pdu)
                    self.assertEqual(g.room_id, room_id)
                    self.assertIs(g.room_version, rv)
                    self.assertEqual((g.type, g.state_key, g.sender, g.depth), (e.type, e.state_key, e.sender, e.depth))
                    self.assertEqual(g.prev_event_ids, e.prev_event_ids)
                    self.assertEqual(g.auth_event_ids, e.auth_event_ids)
                    self.assertIsNone(g.rejected_reason)
                self.assertIs(await store.get_room_version(room_id), rv)
                self.assertEqual(await store.get_forward_extremities(room_id), [events[-1].event_id])
                room = await store.get_room(room_id)
                self.assertEqual(room.creator, events[0].sender)

    async def test_event_cache_bounded_by_json_size(self):
        """The event cache is bounded by the stored JSON length of its events, not their
        count: loaded events are cached up to the bound (oldest dropped first), an event
        larger than the whole bound is never cached, and every load still returns every
        event (from the database when not cached)."""
        path = self.db_path()
        store = await self.open(path, event_cache_bytes=4000)
        room_id, events = make_room(V10)
        big = make_event(V10, room_id, "m.room.message", content={"body": "x" * 5000},
                         prev=[events[-1].event_id], auth=[events[1].event_id], depth=9)
        await store.persist_events(linear_entries([*events, big]))
        # Reopened: nothing cached from persisting.
        store.close()
        store = await self.open(path, event_cache_bytes=4000)
        cache = store._events.cache
        ids = [e.event_id for e in events]
        got = await store.get_events([*ids, big.event_id])
        self.assertEqual(set(got), {*ids, big.event_id})
        self.assertEqual(got[big.event_id].content["body"], "x" * 5000)
        self.assertNotIn(big.event_id, cache)
        self.assertGreater(len(cache), 0)
        self.assertLessEqual(cache.weight, 4000)
        sizes = _json_sizes(path, [e.event_id for e in events])
        self.assertEqual(cache.weight, sum(sizes[i] for i in ids if i in cache))
        again = await store.get_events([*ids, big.event_id])
        self.assertEqual({k: v.pdu for k, v in again.items()}, {k: v.pdu for k, v in got.items()})

    async def test_plugin_room_version_uses_registry(self):
        """An event of a room version registered by a plugin is stored under its
        identifier and loaded back as that version via the injected registry."""
        custom = V11.derive("org.example.v11x")
        store = await self.open(registry=RoomVersionRegistry([custom]))
        room_id, events = make_room(custom)
        await store.persist_events(linear_entries(events))
        got = await store.get_event(events[2].event_id)
        self.assertIs(got.room_version, custom)

    async def test_unregistered_room_version_refused(self):
        """Persisting an event whose room version the store's registry does not know is
        refused (it could never be loaded back)."""
        custom = V11.derive("org.example.unknown")
        store = await self.open()
        room_id, events = make_room(custom)
        with self.assertRaises(InvalidDataError):
            await store.persist_events(linear_entries(events))
        self.assertEqual(await store.have_events([e.event_id for e in events]), set())

    async def test_batch_of_ten_thousand_in_one_call(self):
        """10,000 events persist in one call, get consecutive nids, a linear DAG leaves
        one forward extremity, and a 10,000 batch with one bad entry at the end stores
        nothing at all (one transaction)."""
        path = self.db_path()
        store = await self.open(path)
        room_id, room = make_room(V10)
        out = await store.persist_events(linear_entries(room))
        group = out[room[-1].event_id].state_group_after
        prev = room[-1].event_id
        batch = []
        for i in range(10_000):
            e = make_event(V10, room_id, "m.room.message", content={"body": str(i)}, prev=[prev],
                           auth=[room[0].event_id, room[1].event_id, room[2].event_id], depth=5 + i)
            batch.append(PersistEntry(e, state_group_before=group))
            prev = e.event_id
        out = await store.persist_events(batch)
        nids = [out[p.event.event_id].event_nid for p in batch]
        self.assertEqual(nids, list(range(nids[0], nids[0] + 10_000)))
        self.assertTrue(all(out[p.event.event_id].state_group_after == group for p in batch))
        self.assertEqual(await store.get_forward_extremities(room_id), [prev])
        self.assertEqual(_count(path, "events"), 10_004)

        bad = []
        for i in range(10_000):
            e = make_event(V10, room_id, "m.room.message", content={"body": f"b{i}"}, prev=[prev], depth=20_000 + i)
            bad.append(PersistEntry(e, state_group_before=group))
        stranger = make_event(V10, room_id, "m.room.topic", content={"topic": "x"}, state_key="", depth=1)
        bad.append(PersistEntry(stranger, state_before={("m.room.create", ""): "$not-stored"}))
        with self.assertRaises(UnknownEventsError) as cm:
            await store.persist_events(bad)
        self.assertEqual(cm.exception.event_ids, ["$not-stored"])
        self.assertEqual(_count(path, "events"), 10_004)
        self.assertEqual(await store.get_forward_extremities(room_id), [prev])

    async def test_persist_is_idempotent(self):
        """Persisting the same events again changes nothing and reports stored=False with
        the original nids and state groups; a duplicate inside one batch is stored once."""
        path = self.db_path()
        store = await self.open(path)
        room_id, events = make_room(V11)
        entries = linear_entries(events)
        first = await store.persist_events(entries + [entries[1]])
        again = await store.persist_events(linear_entries(events))
        for e in events:
            self.assertTrue(first[e.event_id].stored)
            self.assertFalse(again[e.event_id].stored)
            self.assertEqual(first[e.event_id]._replace(stored=False), again[e.event_id])
        self.assertEqual(_count(path, "events"), 4)
        self.assertEqual(_count(path, "event_edges"), 3)

    async def test_get_events_many_ids(self):
        """More than 500 ids (several chunks) are fetched, from the database after a
        reopen; unknown ids are simply missing."""
        path = self.db_path()
        store = await self.open(path)
        events = [make_event(V10, "!big:a.example", "m.room.message", content={"i": i}) for i in range(1_200)]
        await store.persist_events([PersistEntry(e, outlier=True) for e in events])
        store.close()
        store = await self.open(path)
        ids = [e.event_id for e in events] + ["$unknown"]
        got = await store.get_events(ids)
        self.assertEqual(set(got), set(ids[:-1]))
        self.assertEqual(await store.have_events(ids), set(ids[:-1]))
        meta = await store.get_event_meta(ids[:2])
        self.assertTrue(meta[ids[0]].outlier)

    async def test_hostile_ids(self):
        """Ids carrying SQL, NUL bytes, path traversal, lone surrogates or quotes are plain
        data: lookups find nothing and raise nothing, and an event whose id holds them is
        stored and found exactly (not by a prefix); on PostgreSQL, whose TEXT cannot hold
        NUL, an id with NUL is refused with InvalidDataError and nothing is stored."""
        path = self.db_path()
        store = await self.open(path)
        self.assertEqual(await store.have_events(HOSTILE), set())
        self.assertEqual(await store.get_events(HOSTILE), {})
        self.assertEqual(await store.get_state_ids_for_events(HOSTILE), {})
        self.assertEqual(await store.get_auth_chain_ids(HOSTILE), set())
        for h in HOSTILE:
            self.assertIsNone(await store.get_rejection(h))
            self.assertIsNone(await store.get_room(h))
            self.assertEqual(await store.get_current_state_ids(h), {})
            self.assertEqual(await store.get_forward_extremities(h), [])
            self.assertEqual(await store.get_backfill(h, HOSTILE, 10), [])
        room = "!'; DROP TABLE events; --:a.example"
        weird = [
            make_event(V1, room, "m.room.message", event_id="$'; DROP TABLE events; --:a.example"),
            make_event(V1, room, "m.room.message", event_id="$nul\x00tail:a.example"),
            make_event(V1, room, "m.room.message", event_id="$../../x:a.example"),
        ]
        if not store.database.dialect.text_allows_nul:
            # PostgreSQL's TEXT cannot hold U+0000: such an id is refused like a lone
            # surrogate, nothing of the batch is stored, and it is never found.
            with self.assertRaises(InvalidDataError):
                await store.persist_events([PersistEntry(e, outlier=True) for e in weird])
            self.assertEqual(_count(path, "events"), 0)
            self.assertEqual(await store.get_events([weird[1].event_id]), {})
            self.assertFalse(store.can_store_text(weird[1].event_id))
            del weird[1]
            await store.persist_events([PersistEntry(e, outlier=True) for e in weird])
            self.assertEqual(set(await store.get_events([e.event_id for e in weird])), {e.event_id for e in weird})
            self.assertEqual(_count(path, "events"), 2)
            return
        self.assertTrue(store.can_store_text(weird[1].event_id))
        await store.persist_events([PersistEntry(e, outlier=True) for e in weird])
        got = await store.get_events([e.event_id for e in weird] + ["$nul"])
        self.assertEqual(set(got), {e.event_id for e in weird})
        self.assertEqual(got["$nul\x00tail:a.example"].pdu, weird[1].pdu)
        self.assertEqual(_count(path, "events"), 3)

    async def test_invalid_entries_refused(self):
        """Malformed batches fail with InvalidDataError and store nothing: not a
        PersistEntry, a depth beyond 64 bits, a lone surrogate in content, a
        non-outlier without state, a state group of another room."""
        path = self.db_path()
        store = await self.open(path)
        room_a, events_a = make_room(V10)
        out = await store.persist_events(linear_entries(events_a))
        group_a = out[events_a[-1].event_id].state_group_after
        ok = make_event(V10, "!b:a.example", "m.room.message")
        surrogate = dict(make_event(V1, "!b:a.example", "m.room.message").pdu, content={"x": "\ud800"})
        cases = [
            ["not an entry"],
            [PersistEntry(make_event(V1, "!b:a.example", "m.room.message", depth=2**70), outlier=True)],
            [PersistEntry(Event.from_pdu(surrogate, V1), outlier=True)],
            [PersistEntry(ok)],
            [PersistEntry(ok, state_group_before=group_a)],
            [PersistEntry(ok, state_group_before=10**6)],
        ]
        for batch in cases:
            with self.assertRaises((InvalidDataError, KeyError)):
                await store.persist_events([PersistEntry(make_event(V10, "!b:a.example", "m.room.message"), outlier=True)] + batch)
        self.assertEqual(_count(path, "events"), 4)

    async def test_bad_argument_types_fail_the_deferred(self):
        """Arguments of the wrong type give a failed Deferred with InvalidDataError (never a
        synchronous exception or a raw sqlite error)."""
        store = await self.open()
        calls = [
            lambda: store.get_events([5]),
            lambda: store.get_event(None),
            lambda: store.have_events([b"$bytes"]),
            lambda: store.get_rejection(7),
            lambda: store.get_backfill("!r:a.example", ["$x"], "10"),
            lambda: store.set_room_public(None, True),
            lambda: store.get_current_state_ids(["!r"]),
            lambda: store.persist_events([None]),
        ]
        for call in calls:
            d = call()
            with self.assertRaises(InvalidDataError):
                await d

    async def test_cached_event_refreshed_when_deoutliered(self):
        """An event loaded (and cached) as an outlier, then persisted as a rejected
        non-outlier, loads with its rejection afterwards: the cache is invalidated on
        commit."""
        store = await self.open()
        room_id, events = make_room(V10)
        out = await store.persist_events(linear_entries(events))
        group = out[events[-1].event_id].state_group_after
        e = make_event(V10, room_id, "m.room.message", prev=[events[-1].event_id], depth=5)
        await store.persist_events([PersistEntry(e, outlier=True)])
        self.assertIsNone((await store.get_event(e.event_id)).rejected_reason)
        await store.persist_events([PersistEntry(e, state_group_before=group, rejection=("nope", "9", None))])
        self.assertEqual((await store.get_event(e.event_id)).rejected_reason, "nope")
        self.assertIsNone(await store.get_event(e.event_id, allow_rejected=False))

    async def test_room_version_mismatch_refused(self):
        """An event claiming another room version than its (known) room's is refused."""
        store = await self.open()
        room_id, events = make_room(V11)
        await store.persist_events(linear_entries(events))
        liar = make_event(V10, room_id, "m.room.message")
        with self.assertRaises(InvalidDataError):
            await store.persist_events([PersistEntry(liar, outlier=True)])


class RefusalTests(StoreTestCase):
    """Rejected and soft-failed events are kept with the rule and plugin that refused them."""

    async def test_rejections_and_soft_failures(self):
        """A rejected state event keeps its reason/rule/plugin, is listed, loads with
        rejected_reason, does not change the state after it and is not an extremity; a
        soft-failed state event is listed, changes the state after it, but is not an
        extremity either."""
        store = await self.open()
        room_id, events = make_room(V10)
        out = await store.persist_events(linear_entries(events))
        group = out[events[-1].event_id].state_group_after
        last = events[-1].event_id
        rejected = make_event(V10, room_id, "m.room.topic", content={"topic": "no"}, state_key="", prev=[last], depth=5)
        soft = make_event(V10, room_id, "m.room.name", content={"name": "meh"}, state_key="", prev=[last], depth=5)
        out = await store.persist_events([
            PersistEntry(rejected, state_group_before=group, rejection=("sender may not set topics", "10.3", "org.example.policy")),
            PersistEntry(soft, state_group_before=group, soft_failure=Refusal("banned by current state", "7.1")),
        ])
        self.assertEqual(out[rejected.event_id].state_group_after, group)
        soft_after = await store.get_state_group(out[soft.event_id].state_group_after)
        self.assertEqual(soft_after[("m.room.name", "")], soft.event_id)
        self.assertEqual(await store.get_forward_extremities(room_id), [last])
        self.assertEqual(
            await store.get_rejection(rejected.event_id),
            Refusal("sender may not set topics", "10.3", "org.example.policy"),
        )
        self.assertIsNone(await store.get_rejection(soft.event_id))
        self.assertIsNone(await store.get_rejection(last))
        got = await store.get_events([rejected.event_id, soft.event_id])
        self.assertEqual(got[rejected.event_id].rejected_reason, "sender may not set topics")
        self.assertIsNone(got[soft.event_id].rejected_reason)
        self.assertEqual(set(await store.get_events([rejected.event_id, soft.event_id], allow_rejected=False)), {soft.event_id})
        listed = await store.get_refused_events(room_id)
        self.assertEqual([(r.event_id, r.kind, r.rule, r.plugin) for r in listed], [
            (soft.event_id, "soft_failed", "7.1", None),
            (rejected.event_id, "rejected", "10.3", "org.example.policy"),
        ])
        self.assertEqual([r.event_id for r in await store.get_refused_events(kind="rejected")], [rejected.event_id])
        self.assertEqual(await store.get_refused_events("!other:a.example"), [])
        page = await store.get_refused_events(room_id, limit=1)
        self.assertEqual([r.event_id for r in await store.get_refused_events(room_id, before_nid=page[0].event_nid)], [rejected.event_id])
        meta = await store.get_event_meta([rejected.event_id, soft.event_id])
        self.assertTrue(meta[rejected.event_id].rejected and not meta[rejected.event_id].soft_failed)
        self.assertTrue(meta[soft.event_id].soft_failed and not meta[soft.event_id].rejected)

    async def test_refusal_kinds_stored_as_plain_strings(self):
        """The outcome enum leaves the database as it was: event_refusals.kind holds the
        plain strings 'rejected' and 'soft_failed', and the listing gives them back as
        OutcomeStatus members equal to those strings."""
        path = self.db_path()
        store = await self.open(path)
        room_id, events = make_room(V10)
        out = await store.persist_events(linear_entries(events))
        group = out[events[-1].event_id].state_group_after
        last = events[-1].event_id
        rejected = make_event(V10, room_id, "m.room.topic", content={"topic": "no"}, state_key="", prev=[last], depth=5)
        soft = make_event(V10, room_id, "m.room.name", content={"name": "meh"}, state_key="", prev=[last], depth=5)
        await store.persist_events([
            PersistEntry(rejected, state_group_before=group, rejection=("no", "10.3")),
            PersistEntry(soft, state_group_before=group, soft_failure=Refusal("meh", "7.1")),
        ])
        listed = {r.event_id: r.kind for r in await store.get_refused_events(room_id)}
        self.assertEqual(listed, {rejected.event_id: OutcomeStatus.REJECTED, soft.event_id: OutcomeStatus.SOFT_FAILED})
        self.assertIs(type(listed[rejected.event_id]), OutcomeStatus)
        db = connect_test_database(path)
        self.addCleanup(db.close)
        rows = db.execute(
            "SELECT e.event_id, r.kind FROM event_refusals r JOIN events e ON e.event_nid = r.event_nid"
        ).fetchall()
        # Plain text in the column, whichever engine: a str, not an enum or a number.
        self.assertEqual([type(kind) for _eid, kind in rows], [str, str])
        self.assertEqual(sorted(tuple(r) for r in rows),
                         sorted([(rejected.event_id, "rejected"), (soft.event_id, "soft_failed")]))

    async def test_bad_kind_refused(self):
        """Listing refusals of an unknown kind is an error, not an empty list."""
        store = await self.open()
        with self.assertRaises(InvalidDataError):
            await store.get_refused_events(kind="nope")


class DagTests(StoreTestCase):
    """Forward extremities, outliers, the auth chain and DAG walks."""

    async def setup_room(self, rv=V10):
        self.store = await self.open()
        self.room_id, self.room = make_room(rv)
        out = await self.store.persist_events(linear_entries(self.room))
        self.group = out[self.room[-1].event_id].state_group_after
        return self.store

    def msg(self, prev, depth, **kw):
        return make_event(V10, self.room_id, "m.room.message", content={"d": depth}, prev=prev,
                          auth=[self.room[0].event_id, self.room[1].event_id], depth=depth, **kw)

    async def test_fork_and_merge(self):
        """Two children of one event are both extremities; an event merging them replaces
        both."""
        store = await self.setup_room()
        top = self.room[-1].event_id
        b, c = self.msg([top], 5), self.msg([top], 5)
        await store.persist_events([PersistEntry(b, state_group_before=self.group), PersistEntry(c, state_group_before=self.group)])
        self.assertEqual(set(await store.get_forward_extremities(self.room_id)), {b.event_id, c.event_id})
        d = self.msg([b.event_id, c.event_id], 6)
        await store.persist_events([PersistEntry(d, state_group_before=self.group)])
        self.assertEqual(await store.get_forward_extremities(self.room_id), [d.event_id])
        self.assertEqual(await store.get_max_depth([b.event_id, d.event_id, "$nope"]), 6)
        self.assertEqual(await store.get_max_depth(["$nope"]), 0)

    async def test_prev_event_ids(self):
        """get_prev_event_ids returns the stored prev edges of each known event."""
        store = await self.setup_room()
        top = self.room[-1].event_id
        b, c = self.msg([top], 5), self.msg([top], 5)
        d = self.msg([b.event_id, c.event_id], 6)
        await store.persist_events([PersistEntry(e, state_group_before=self.group) for e in (b, c, d)])
        got = await store.get_prev_event_ids([d.event_id, b.event_id, "$nope"])
        self.assertEqual({k: sorted(v) for k, v in got.items()}, {d.event_id: sorted([b.event_id, c.event_id]), b.event_id: [top]})

    async def test_child_stored_before_parent(self):
        """If a child arrives before its parent, the parent does not become an extremity
        when it is stored later (and the parent's own prev event stops being one)."""
        store = await self.setup_room()
        top = self.room[-1].event_id
        parent = self.msg([top], 5)
        child = self.msg([parent.event_id], 6)
        await store.persist_events([PersistEntry(child, state_group_before=self.group)])
        self.assertEqual(set(await store.get_forward_extremities(self.room_id)), {top, child.event_id})
        await store.persist_events([PersistEntry(parent, state_group_before=self.group)])
        self.assertEqual(await store.get_forward_extremities(self.room_id), [child.event_id])

    async def test_accepted_child_of_soft_failed_event(self):
        """An accepted event whose prev event was soft-failed also retires the soft-failed
        event's own prev events as extremities (spec: soft-failed events are otherwise
        handled as usual), so extremities do not pile up."""
        store = await self.setup_room()
        top = self.room[-1].event_id
        soft = self.msg([top], 5)
        await store.persist_events([PersistEntry(soft, state_group_before=self.group, soft_failed=True)])
        self.assertEqual(await store.get_forward_extremities(self.room_id), [top])
        child = self.msg([soft.event_id], 6)
        await store.persist_events([PersistEntry(child, state_group_before=self.group)])
        self.assertEqual(await store.get_forward_extremities(self.room_id), [child.event_id])

    async def test_outlier_then_deoutliered(self):
        """An outlier has no state and is no extremity; persisted again as a non-outlier it
        gains state, becomes the extremity and updates current state."""
        store = await self.setup_room()
        top = self.room[-1].event_id
        topic = make_event(V10, self.room_id, "m.room.topic", content={"topic": "t"}, state_key="", prev=[top], depth=5)
        out = await store.persist_events([PersistEntry(topic, outlier=True)])
        self.assertEqual(out[topic.event_id].state_group_before, None)
        self.assertEqual(await store.get_state_ids_for_events([topic.event_id]), {})
        self.assertEqual(await store.get_forward_extremities(self.room_id), [top])
        self.assertTrue((await store.get_event_meta([topic.event_id]))[topic.event_id].outlier)
        out2 = await store.persist_events([
            PersistEntry(topic, state_group_before=self.group, update_current_state={("m.room.topic", ""): topic.event_id})
        ])
        self.assertTrue(out2[topic.event_id].stored)
        self.assertEqual(out2[topic.event_id].event_nid, out[topic.event_id].event_nid)
        self.assertEqual(await store.get_state_ids_for_events([topic.event_id]), {topic.event_id: self.group})
        after = await store.get_state_ids_for_events([topic.event_id], after=True)
        self.assertEqual((await store.get_state_group(after[topic.event_id]))[("m.room.topic", "")], topic.event_id)
        self.assertEqual(await store.get_forward_extremities(self.room_id), [topic.event_id])
        self.assertEqual((await store.get_current_state_ids(self.room_id))[("m.room.topic", "")], topic.event_id)
        self.assertFalse((await store.get_event_meta([topic.event_id]))[topic.event_id].outlier)

    async def test_auth_chain(self):
        """The auth chain is every stored event reachable through auth_events, not the
        starting events themselves, and works for more than 500 starting events."""
        store = await self.setup_room()
        create, join, pl, jr = (e.event_id for e in self.room)
        self.assertEqual(await store.get_auth_chain_ids([jr]), {create, join, pl})
        self.assertEqual(await store.get_auth_chain_ids([join]), {create})
        self.assertEqual(await store.get_auth_chain_ids([create]), set())
        self.assertEqual(await store.get_auth_chain_ids([jr, pl]), {create, join, pl})
        members = []
        for i in range(700):
            user = f"@u{i}:b.example"
            members.append(make_event(V10, self.room_id, "m.room.member", user, {"membership": "join"}, user,
                                      prev=[jr], auth=[create, pl, jr], depth=5))
        await store.persist_events([PersistEntry(m, outlier=True) for m in members])
        second = [make_event(V10, self.room_id, "m.room.member", m.sender, {"membership": "leave"}, m.sender,
                             auth=[create, pl, m.event_id], depth=6) for m in members]
        await store.persist_events([PersistEntry(m, outlier=True) for m in second])
        chain = await store.get_auth_chain_ids([m.event_id for m in second])
        self.assertEqual(chain, {create, join, pl, jr} | {m.event_id for m in members})

    async def test_backfill(self):
        """Backfill returns the given events and the ones before them, deepest first, at
        most limit, staying in the room."""
        store = await self.setup_room()
        prev = self.room[-1].event_id
        chain = []
        for i in range(30):
            e = self.msg([prev], 5 + i)
            chain.append(e)
            prev = e.event_id
        await store.persist_events([PersistEntry(e, state_group_before=self.group) for e in chain])
        got = await store.get_backfill(self.room_id, [chain[-1].event_id], 10)
        self.assertEqual([e.event_id for e in got], [e.event_id for e in reversed(chain[-10:])])
        everything = await store.get_backfill(self.room_id, [chain[-1].event_id, chain[3].event_id], 1000)
        self.assertEqual(len(everything), 34)
        self.assertEqual(everything[0].event_id, chain[-1].event_id)
        self.assertEqual(everything[1].event_id, chain[3].event_id)
        self.assertEqual(await store.get_backfill("!other:a.example", [chain[-1].event_id], 10), [])
        self.assertEqual(await store.get_backfill(self.room_id, [chain[-1].event_id], 0), [])

    async def test_get_missing_events(self):
        """get_missing_events walks back from latest_events, excluding them and never
        entering earliest_events, respects min_depth and limit, and returns oldest first."""
        store = await self.setup_room()
        prev = self.room[-1].event_id
        chain = []
        for i in range(10):
            e = self.msg([prev], 5 + i)
            chain.append(e)
            prev = e.event_id
        await store.persist_events([PersistEntry(e, state_group_before=self.group) for e in chain])
        ids = [e.event_id for e in chain]
        got = await store.get_missing_events(self.room_id, [ids[2]], [ids[9]], limit=20)
        self.assertEqual([e.event_id for e in got], ids[3:9])
        got = await store.get_missing_events(self.room_id, [ids[2]], [ids[9]], limit=3)
        self.assertEqual([e.event_id for e in got], ids[6:9])
        got = await store.get_missing_events(self.room_id, [], [ids[9]], limit=100, min_depth=10)
        self.assertEqual([e.depth for e in got], [10, 11, 12, 13])
        self.assertEqual(await store.get_missing_events("!other:a.example", [], [ids[9]]), [])


class CurrentStateTests(StoreTestCase):
    """The current state of rooms, maintained from the deltas callers supply."""

    async def test_current_state_deltas(self):
        """Deltas apply in batch order, None removes a key, and the members / joined hosts
        views follow membership changes."""
        store = await self.open()
        room_id, events = make_room(V12)
        out = await store.persist_events(linear_entries(events))
        group = out[events[-1].event_id].state_group_after
        create_id = events[0].event_id
        bob_join = make_event(V12, room_id, "m.room.member", "@bob:b.example", {"membership": "join"}, "@bob:b.example", depth=5)
        carol_join = make_event(V12, room_id, "m.room.member", "@carol:c.example", {"membership": "join"}, "@carol:c.example", depth=5)
        bob_leave = make_event(V12, room_id, "m.room.member", "@bob:b.example", {"membership": "leave"}, "@bob:b.example", depth=6)
        await store.persist_events([
            PersistEntry(bob_join, state_group_before=group, update_current_state={("m.room.member", "@bob:b.example"): bob_join.event_id}),
            PersistEntry(carol_join, state_group_before=group, update_current_state={("m.room.member", "@carol:c.example"): carol_join.event_id}),
            PersistEntry(bob_leave, state_group_before=group, update_current_state={("m.room.member", "@bob:b.example"): bob_leave.event_id}),
        ])
        state = await store.get_current_state_ids(room_id)
        self.assertEqual(state[("m.room.member", "@bob:b.example")], bob_leave.event_id)
        self.assertEqual(state[("m.room.create", "")], create_id)
        self.assertEqual(len(state), 6)
        self.assertEqual(sorted(await store.get_room_members(room_id)), ["@alice:a.example", "@carol:c.example"])
        self.assertEqual(await store.get_room_members(room_id, "leave"), ["@bob:b.example"])
        self.assertEqual(await store.get_joined_hosts(room_id), {"a.example", "c.example"})
        only = await store.get_current_state_events(room_id, ["m.room.create", ("m.room.member", "@carol:c.example"), ("m.room.topic", None)])
        self.assertEqual(set(only), {("m.room.create", ""), ("m.room.member", "@carol:c.example")})
        self.assertEqual(only[("m.room.create", "")].pdu, events[0].pdu)
        everything = await store.get_current_state_events(room_id)
        self.assertEqual(len(everything), 6)
        await store.update_current_state(room_id, {("m.room.join_rules", ""): None})
        self.assertNotIn(("m.room.join_rules", ""), await store.get_current_state_ids(room_id))

    async def test_joined_hosts_are_kept_until_the_members_change(self):
        """A room's joined servers are read once and then answered from memory, until a
        committed change of its members (a join, a removal from the current state, a
        partial-state join's servers_in_room) makes the next call read them again."""
        store = await self.open()
        room_id, events = make_room(V12)
        out = await store.persist_events(linear_entries(events))
        group = out[events[-1].event_id].state_group_after
        self.assertEqual(await store.get_joined_hosts(room_id), {"a.example"})
        reads = []
        real = store._distribution.joined_servers_txn
        store._distribution.joined_servers_txn = lambda txn, r: reads.append(r) or real(txn, r)
        hosts = await store.get_joined_hosts(room_id)
        self.assertEqual((hosts, reads), ({"a.example"}, []))
        hosts.add("mutated.example")  # the caller's copy: the kept value is not touched
        self.assertEqual(await store.get_joined_hosts(room_id), {"a.example"})
        carol = make_event(V12, room_id, "m.room.member", "@carol:c.example", {"membership": "join"}, "@carol:c.example", depth=5)
        await store.persist_events([PersistEntry(
            carol, state_group_before=group, update_current_state={("m.room.member", "@carol:c.example"): carol.event_id}
        )])
        self.assertEqual(await store.get_joined_hosts(room_id), {"a.example", "c.example"})
        self.assertEqual(reads, [room_id])
        await store.update_current_state(room_id, {("m.room.topic", ""): None})  # not a member: kept
        self.assertEqual(await store.get_joined_hosts(room_id), {"a.example", "c.example"})
        self.assertEqual(reads, [room_id])
        await store.update_current_state(room_id, {("m.room.member", "@carol:c.example"): None})
        self.assertEqual(await store.get_joined_hosts(room_id), {"a.example"})
        self.assertEqual(reads, [room_id, room_id])

    async def test_current_state_must_name_stored_events_of_the_room(self):
        """A current state delta naming an unknown event or an event of another room is
        refused and changes nothing."""
        store = await self.open()
        room_a, events_a = make_room(V10)
        room_b, events_b = make_room(V10)
        await store.persist_events(linear_entries(events_a) + linear_entries(events_b))
        before = await store.get_current_state_ids(room_a)
        with self.assertRaises(UnknownEventsError):
            await store.update_current_state(room_a, {("m.room.topic", ""): "$nope"})
        with self.assertRaises(InvalidDataError):
            await store.update_current_state(room_a, {("m.room.create", ""): events_b[0].event_id})
        self.assertEqual(await store.get_current_state_ids(room_a), before)


class RoomTests(StoreTestCase):
    """The rooms table."""

    async def test_rooms(self):
        """Rooms are stored with version, creator and public flag; the version of a known
        room cannot change; unknown rooms are None."""
        store = await self.open()
        await store.store_room("!pub:a.example", V10, creator="@a:a.example", is_public=True, created_ts=5)
        await store.store_room("!priv:a.example", V11)
        info = await store.get_room("!pub:a.example")
        self.assertEqual((info.room_version, info.creator, info.is_public, info.created_ts), (V10, "@a:a.example", True, 5))
        self.assertEqual(await store.get_public_room_ids(), ["!pub:a.example"])
        self.assertTrue(await store.set_room_public("!priv:a.example", True))
        self.assertFalse(await store.set_room_public("!unknown:a.example", True))
        self.assertEqual(await store.get_public_room_ids(), ["!priv:a.example", "!pub:a.example"])
        with self.assertRaises(InvalidDataError):
            await store.store_room("!pub:a.example", V11)
        self.assertIsNone(await store.get_room_version("!unknown:a.example"))
        self.assertIsNone(await store.get_room("'; DROP TABLE rooms; --"))
