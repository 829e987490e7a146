"""Tests for state maps, the LRU cache and state groups (delta chains, snapshots, caching)."""

from __future__ import annotations

import random

from twisted.trial import unittest

from fedserver.room_versions import V10
from fedserver.storage import (
    InvalidDataError,
    PersistEntry,
    StateMap,
    UnknownEventsError,
    UnknownStateGroupError,
)
from fedserver.state import statemap
from fedserver.storage.cache import LruCache
from fedserver.state.statemap import state_delta
from fedserver.testing import connect_test_database
from tests.test_storage_support import StoreTestCase, linear_entries, make_event, make_room


class StateMapTests(unittest.SynchronousTestCase):
    """The immutable, structure-sharing state map."""

    def test_evolve_leaves_parent_alone(self):
        """evolve returns a new map with the delta applied (None removes) and the parent
        unchanged; lengths follow."""
        base = StateMap.from_dict({("a", ""): "$1", ("b", ""): "$2"})
        child = base.evolve({("a", ""): "$3", ("b", ""): None, ("c", "x"): "$4"})
        self.assertEqual(dict(base), {("a", ""): "$1", ("b", ""): "$2"})
        self.assertEqual(dict(child), {("a", ""): "$3", ("c", "x"): "$4"})
        self.assertEqual(len(child), 2)
        self.assertNotIn(("b", ""), child)
        self.assertIn(("a", ""), child)
        self.assertEqual(child.get(("b", "")), None)
        with self.assertRaises(KeyError):
            child[("b", "")]
        self.assertIs(base.evolve({}), base)
        self.assertEqual(child.own_entries, 4)

    def test_deep_stacks_flatten(self):
        """Beyond MAX_OVERLAY_DEPTH overlays, a map is flattened, and stays correct."""
        m = StateMap.from_dict({})
        expected = {}
        for i in range(statemap.MAX_OVERLAY_DEPTH * 3):
            m = m.evolve({("k", str(i % 7)): f"${i}"})
            expected[("k", str(i % 7))] = f"${i}"
            self.assertLessEqual(m._depth, statemap.MAX_OVERLAY_DEPTH)
        self.assertEqual(m.to_dict(), expected)
        self.assertEqual(len(m), 7)

    def test_state_delta_randomised(self):
        """state_delta(old, new) applied to old gives new, for random maps."""
        rng = random.Random(7)
        for _ in range(200):
            old = {("t", str(rng.randrange(30))): f"${rng.randrange(5)}" for _ in range(rng.randrange(20))}
            new = dict(old)
            for _ in range(rng.randrange(10)):
                key = ("t", str(rng.randrange(30)))
                if rng.random() < 0.3:
                    new.pop(key, None)
                else:
                    new[key] = f"${rng.randrange(5)}"
            delta = state_delta(old, new)
            self.assertEqual(dict(StateMap.from_dict(dict(old)).evolve(delta)), new)
            self.assertTrue(all(old.get(k) != v for k, v in delta.items()))


class LruCacheTests(unittest.SynchronousTestCase):
    """The bounded cache."""

    def test_weight_bound_and_recency(self):
        """The least recently used values go first once the weight bound is passed; a
        value heavier than the bound is not cached."""
        cache = LruCache(10, weigher=len)
        cache.put("a", "xxxx")
        cache.put("b", "xxxx")
        self.assertEqual(cache.get("a"), "xxxx")  # a is now the most recent
        cache.put("c", "xxxx")
        self.assertNotIn("b", cache)
        self.assertEqual(set(cache.get_many(["a", "b", "c"])), {"a", "c"})
        self.assertEqual(cache.weight, 8)
        cache.put("huge", "x" * 11)
        self.assertNotIn("huge", cache)
        cache.invalidate(["a", "zzz"])
        self.assertEqual(cache.weight, 4)
        cache.put("c", "xx")
        self.assertEqual(cache.weight, 2)
        cache.clear()
        self.assertEqual(len(cache), 0)
        self.assertEqual(cache.get("c", "default"), "default")


class StateGroupTests(StoreTestCase):
    """State groups on a real database."""

    async def make_state_events(self, store, n, rv=V10):
        room_id, room = make_room(rv)
        await store.persist_events(linear_entries(room))
        events = [
            make_event(rv, room_id, "m.room.member", f"@u{i}:b.example", {"membership": "join"}, f"@u{i}:b.example")
            for i in range(n)
        ]
        await store.persist_events([PersistEntry(e, outlier=True) for e in events])
        return room_id, room, events

    def group_rows(self, path, group=None):
        conn = connect_test_database(path)
        try:
            if group is None:
                return conn.execute("SELECT MAX(chain_length), COUNT(*) FROM state_groups").fetchone()
            return conn.execute("SELECT COUNT(*) FROM state_group_entries WHERE group_id = ?", (group,)).fetchone()[0]
        finally:
            conn.close()

    async def test_randomised_round_trip(self):
        """Random states built as deltas on random earlier groups (passing either the full
        state or the delta) read back exactly, from the cache, after reopening, and with
        a tiny state cache; delta chains never exceed the bound."""
        for seed, max_chain in ((1, 4), (2, 64), (3, 0)):
            path = self.db_path()
            store = await self.open(path, max_state_chain=max_chain)
            room_id, room, events = await self.make_state_events(store, 120)
            ids = [e.event_id for e in events] + [e.event_id for e in room]
            keys = [("m.room.member", f"@u{i}:b.example") for i in range(40)] + [("m.room.topic", ""), ("x.custom", "k")]
            rng = random.Random(seed)
            expected = {}
            first = {keys[i]: ids[i] for i in range(10)}
            g = await store.store_state_group(room_id, first)
            expected[g] = first
            for _ in range(150):
                parent = rng.choice(list(expected))
                state = dict(expected[parent])
                for _ in range(rng.randrange(1, 6)):
                    key = rng.choice(keys)
                    if key in state and rng.random() < 0.3:
                        del state[key]
                    else:
                        state[key] = rng.choice(ids)
                if rng.random() < 0.5:
                    g = await store.store_state_group(room_id, state, prev_group=parent)
                else:
                    delta = state_delta(expected[parent], state)
                    g = await store.store_state_group(room_id, None, prev_group=parent, delta=delta)
                if state == expected[parent]:
                    self.assertEqual(g, parent)
                expected[g] = state
            for group, state in expected.items():
                self.assertEqual(dict(await store.get_state_group(group)), state, (seed, group))
            max_len, count = self.group_rows(path)
            self.assertLessEqual(max_len, max_chain)
            store.close()
            for cache_weight in (300_000, 5):
                store = await self.open(path, state_cache_weight=cache_weight, max_state_chain=max_chain)
                for group in rng.sample(list(expected), len(expected)):
                    self.assertEqual(dict(await store.get_state_group(group)), expected[group], (seed, group))
                store.close()

    async def test_large_state_is_stored_once(self):
        """A 20,000-entry state is one snapshot; a one-member change on top of it is a
        one-row delta whose map shares the snapshot in memory, and reads back exactly
        after a reopen."""
        path = self.db_path()
        store = await self.open(path)
        room_id, room, events = await self.make_state_events(store, 20_000)
        state = {e.state_tuple: e.event_id for e in events}
        state.update({e.state_tuple: e.event_id for e in room})
        base = await store.store_state_group(room_id, state)
        self.assertEqual(self.group_rows(path, base), 20_004)
        leave = make_event(V10, room_id, "m.room.member", "@u7:b.example", {"membership": "leave"}, "@u7:b.example")
        out = await store.persist_events([PersistEntry(leave, state_group_before=base)])
        after = out[leave.event_id].state_group_after
        self.assertEqual(self.group_rows(path, after), 1)
        child = await store.get_state_group(after)
        self.assertEqual(len(child), 20_004)
        self.assertLess(child.own_entries, 10)
        self.assertEqual(child[("m.room.member", "@u7:b.example")], leave.event_id)
        self.assertIs(await store.get_state_group(after), child)
        store.close()
        store = await self.open(path)
        expected = dict(state)
        expected[("m.room.member", "@u7:b.example")] = leave.event_id
        self.assertEqual(dict(await store.get_state_group(after)), expected)

    async def test_full_chain_stores_changes_since_snapshot(self):
        """When a delta chain is full, a one-entry change on a large state is stored as the
        (small) changes since the chain's snapshot rather than a new full snapshot, until
        those changes grow past the bound; every state still reads back exactly."""
        path = self.db_path()
        store = await self.open(path, max_state_chain=4)
        room_id, room, events = await self.make_state_events(store, 460)
        state = {e.state_tuple: e.event_id for e in events[:400]}
        base = await store.store_state_group(room_id, state)
        groups = {base: dict(state)}
        prev = base
        for e in events[400:460]:
            state[e.state_tuple] = e.event_id
            prev = await store.store_state_group(room_id, None, prev_group=prev, delta={e.state_tuple: e.event_id})
            groups[prev] = dict(state)
        conn = connect_test_database(path)
        self.addCleanup(conn.close)
        rows = conn.execute(
            "SELECT g.group_id, g.chain_length, g.prev_group, COUNT(e.group_id) FROM state_groups g"
            " JOIN state_group_entries e ON e.group_id = g.group_id"
            " WHERE g.group_id > ? GROUP BY g.group_id ORDER BY g.group_id",
            (base,),
        ).fetchall()
        self.assertEqual(len(rows), 60)
        self.assertTrue(all(r[1] <= 4 for r in rows))
        # sqrt(2 * 4 * size) is about 58 rows: changes since the snapshot are stored
        # instead of a snapshot of 400+ entries until they exceed that.
        cumulative = [r for r in rows if r[1] == 1 and r[2] == base]
        self.assertTrue(any(r[3] > 1 for r in cumulative))
        snapshots = [r for r in rows if r[1] == 0]
        self.assertLessEqual(len(snapshots), 1)
        self.assertTrue(all(r[3] > 400 for r in snapshots))
        self.assertLess(sum(r[3] for r in rows), 60 * 30)
        store.close()
        store = await self.open(path, max_state_chain=4)
        for group, expected in groups.items():
            self.assertEqual(dict(await store.get_state_group(group)), expected)

    async def test_state_before_with_prev_group_hint(self):
        """A state_before map given with a nearby group is stored as a small delta."""
        path = self.db_path()
        store = await self.open(path)
        room_id, room, events = await self.make_state_events(store, 200)
        state = {e.state_tuple: e.event_id for e in events[:150]}
        base = await store.store_state_group(room_id, state)
        state2 = dict(state)
        state2[events[160].state_tuple] = events[160].event_id
        msg = make_event(V10, room_id, "m.room.message")
        out = await store.persist_events([PersistEntry(msg, state_before=state2, state_before_prev_group=base)])
        before = out[msg.event_id].state_group_before
        self.assertEqual(out[msg.event_id].state_group_after, before)
        self.assertEqual(self.group_rows(path, before), 1)
        self.assertEqual(await store.get_state_ids_for_events([msg.event_id]), {msg.event_id: before})
        self.assertEqual(await store.get_state_ids_for_events([msg.event_id], after=True), {msg.event_id: before})
        self.assertEqual(dict(await store.get_state_group(before)), state2)

    async def test_bad_state_groups_refused(self):
        """Unknown events, events or groups of another room, unknown groups and malformed
        maps are refused with clear errors, and nothing is written."""
        path = self.db_path()
        store = await self.open(path)
        room_a, room, events = await self.make_state_events(store, 3)
        room_b, other = make_room(V10)
        await store.persist_events(linear_entries(other))
        good = await store.store_state_group(room_a, {events[0].state_tuple: events[0].event_id})
        _, count_before = self.group_rows(path)
        with self.assertRaises(UnknownEventsError):
            await store.store_state_group(room_a, {("m.room.topic", ""): "$nope"})
        with self.assertRaises(InvalidDataError):
            await store.store_state_group(room_a, {("m.room.create", ""): other[0].event_id})
        with self.assertRaises(InvalidDataError):
            await store.store_state_group(room_b, {("m.room.create", ""): other[0].event_id}, prev_group=good)
        with self.assertRaises(UnknownStateGroupError):
            await store.store_state_group(room_a, {}, prev_group=987654)
        with self.assertRaises(UnknownStateGroupError):
            await store.get_state_group(987654)
        with self.assertRaises(InvalidDataError):
            await store.get_state_group("1; DROP TABLE state_groups")
        for bad in ({"m.room.create": "$x"}, {("a", "b", "c"): "$x"}, {("a", 1): "$x"}, {("a", ""): 5}, ["not", "a", "map"]):
            with self.assertRaises(InvalidDataError):
                await store.store_state_group(room_a, bad)
        with self.assertRaises(InvalidDataError):
            await store.store_state_group(room_a, None)
        self.assertEqual(self.group_rows(path)[1], count_before)
