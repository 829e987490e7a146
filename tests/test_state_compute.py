"""Tests for fedserver.state.compute: the state before and after each event."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from fedserver.room_versions import V2, V10, V11, V12
from fedserver.state import resolve_state
from fedserver.state.compute import state_after, state_before_event
from tests.test_state_fixtures import (
    ALICE, BOB, TOPIC, RoomBuilder, real_auth_check,
)

VERSIONS = (V2, V10, V11, V12)


class StateAfterTests(SynchronousTestCase):
    def test_state_event_replaces_its_key(self):
        """A state event replaces its (type, state_key) entry; the input is not
        modified."""
        for rv in VERSIONS:
            room = RoomBuilder(rv)
            last = room.standard_room()
            ev = room.send("t", TOPIC, ALICE, {"topic": "x"}, "", after=last)
            before = room.state(last)
            after = state_after(ev, before)
            self.assertEqual(after[(TOPIC, "")], ev.event_id)
            self.assertNotIn((TOPIC, ""), before)
            self.assertEqual({k: v for k, v in after.items() if k != (TOPIC, "")}, before)

    def test_message_changes_nothing(self):
        """A message event leaves the state as it was (a new, equal dict)."""
        room = RoomBuilder(V11)
        last = room.standard_room()
        msg = room.send("m", "m.room.message", ALICE, {"body": "hi"}, after=last)
        before = room.state(last)
        after = state_after(msg, before)
        self.assertEqual(after, before)
        self.assertIsNot(after, before)

    def test_rejected_state_event_changes_nothing(self):
        """A rejected state event is not part of the state after it."""
        room = RoomBuilder(V11)
        last = room.standard_room()
        ev = room.send("t", TOPIC, BOB, {"topic": "x"}, "", after=last)
        ev.rejected_reason = "auth"
        self.assertEqual(state_after(ev, room.state(last)), room.state(last))


class StateBeforeTests(SynchronousTestCase):
    def setUp(self):
        self.auth_check = real_auth_check()
        self.assertIsNotNone(self.auth_check, "the auth engine must be importable")

    def test_no_prev_events(self):
        """The create event has no prev events: the state before it is empty."""
        self.assertEqual(state_before_event(V12, [], None, None), {})

    def test_one_prev_or_equal_prevs_need_no_resolution(self):
        """One prev state, or several equal ones, are returned as a copy without fetching
        any event or running an auth check."""
        room = RoomBuilder(V12)
        last = room.standard_room()
        s = room.state(last)

        def fail(*args):
            raise AssertionError("not needed")

        out = state_before_event(V12, [s], fail, fail)
        self.assertEqual(out, s)
        self.assertIsNot(out, s)
        self.assertEqual(state_before_event(V12, [s, dict(s), s], fail, fail), s)

    def test_merge_resolves(self):
        """Different prev states are resolved with the room version's algorithm (equal
        duplicates counted once)."""
        for rv in VERSIONS:
            room = RoomBuilder(rv)
            last = room.standard_room(users={BOB: 50})
            room.join("bob_join", BOB, after=last)
            room.send("t1", TOPIC, ALICE, {"topic": "1"}, "", after="bob_join", ts=5000)
            room.send("t2", TOPIC, BOB, {"topic": "2"}, "", after="bob_join", ts=4000)
            s1, s2 = room.state("t1"), room.state("t2")
            out = state_before_event(rv, [s1, s2, dict(s1)], room.get_event, self.auth_check)
            self.assertEqual(out, resolve_state(rv, [s1, s2], room.get_event, self.auth_check))
            self.assertEqual(out[(TOPIC, "")], room.id("t1"))

    def test_chain_of_events(self):
        """Walking a forked DAG event by event with state_after and state_before_event gives
        the merge event the resolution of its prevs' states."""
        rv = V12
        room = RoomBuilder(rv)
        last = room.standard_room(users={BOB: 50})
        room.join("bob_join", BOB, after=last)
        a = room.send("a", TOPIC, ALICE, {"topic": "a"}, "", after="bob_join", ts=5000)
        b = room.send("b", TOPIC, BOB, {"topic": "b"}, "", after="bob_join", ts=6000)
        base = room.state("bob_join")
        sa, sb = state_after(a, base), state_after(b, base)
        merged = state_before_event(rv, [sa, sb], room.get_event, self.auth_check)
        self.assertEqual(merged[(TOPIC, "")], b.event_id)
        self.assertEqual(merged[("m.room.member", BOB)], room.id("bob_join"))
