"""Tests for fedserver.state.v1: the room version 1 state resolution algorithm."""

from __future__ import annotations

import hashlib

from twisted.trial.unittest import SynchronousTestCase

from fedserver.room_versions import V1
from fedserver.state import resolve_state
from tests.test_state_fixtures import (
    ALICE, BOB, CHARLIE, DAVE, JR, MEMBER, PL, TOPIC, RoomBuilder, real_auth_check,
)


def sha1(eid: str) -> str:
    return hashlib.sha1(eid.encode()).hexdigest()


class V1Tests(SynchronousTestCase):
    def setUp(self):
        self.auth_check = real_auth_check()
        self.assertIsNotNone(self.auth_check, "the auth engine must be importable")
        self.room = RoomBuilder(V1)
        last = self.room.standard_room(users={BOB: 50})
        self.room.join("bob_join", BOB, after=last)

    def resolve(self, *names):
        sets = [self.room.state(n) for n in names]
        a = resolve_state(V1, sets, self.room.get_event, self.auth_check)
        b = resolve_state(V1, sets[::-1], self.room.get_event, self.auth_check)
        self.assertEqual(a, b)
        return a

    def test_missing_key_is_not_a_conflict(self):
        """A key only some states have is kept: R starts as the union without the
        conflicting keys."""
        room = self.room
        room.join("charlie", CHARLIE, after="bob_join")
        room.send("topic", TOPIC, ALICE, {"topic": "x"}, "", after="bob_join")
        out = self.resolve("charlie", "topic")
        self.assertEqual(out[(MEMBER, CHARLIE)], room.id("charlie"))
        self.assertEqual(out[(TOPIC, "")], room.id("topic"))

    def test_power_levels_in_depth_order(self):
        """Power levels are replayed by ascending depth: Alice's demotion of Bob (shallower)
        comes first, so Bob's deeper power levels change is not allowed."""
        room = self.room
        room.send("demote", PL, ALICE, room.power_levels({ALICE: 100}), "", after="bob_join")
        room.send("t", TOPIC, BOB, {"topic": "t"}, "", after="bob_join")
        room.send("bob_pl", PL, BOB, room.power_levels({ALICE: 100, BOB: 50, DAVE: 10}), "",
                  after="t")
        out = self.resolve("demote", "bob_pl")
        self.assertEqual(out[(PL, "")], room.id("demote"))

    def test_later_allowed_power_levels_win(self):
        """Of two allowed power levels changes the deeper one, replayed last, wins; at equal
        depth the one with the smaller sha1 (replayed last) wins."""
        room = self.room
        room.send("pl_a", PL, ALICE, room.power_levels({ALICE: 100, BOB: 50, DAVE: 1}), "",
                  after="bob_join")
        room.send("t", TOPIC, ALICE, {"topic": "t"}, "", after="bob_join")
        room.send("pl_b", PL, ALICE, room.power_levels({ALICE: 100, BOB: 50, DAVE: 2}), "",
                  after="t")
        self.assertEqual(self.resolve("pl_a", "pl_b")[(PL, "")], room.id("pl_b"))
        room.send("pl_c", PL, ALICE, room.power_levels({ALICE: 100, BOB: 50, DAVE: 3}), "",
                  after="bob_join")
        expected = min(("pl_a", "pl_c"), key=lambda n: sha1(room.id(n)))
        self.assertEqual(self.resolve("pl_a", "pl_c")[(PL, "")], room.id(expected))

    def test_join_rules_then_members(self):
        """Join rules are resolved before memberships, and memberships are checked against
        the resolved join rules: a join under the public rule fails once the invite-only
        rule is chosen."""
        room = self.room
        room.send("invite_only", JR, ALICE, {"join_rule": "invite"}, "", after="bob_join")
        room.join("dave", DAVE, after="bob_join")
        out = self.resolve("invite_only", "dave")
        self.assertEqual(out[(JR, "")], room.id("invite_only"))
        # Only one candidate for Dave's key: not a conflict, so kept by the union.
        self.assertEqual(out[(MEMBER, DAVE)], room.id("dave"))
        room.send("dave_leave", MEMBER, DAVE, {"membership": "leave"}, DAVE, after="dave")
        room.send("dave_join2", MEMBER, DAVE, {"membership": "join"}, DAVE, after="dave_leave")
        room.send("dave_leave_b", MEMBER, DAVE, {"membership": "leave"}, DAVE, after="dave")
        # Conflict between the deeper re-join and a leave: the re-join fails against the
        # invite-only rule, so the leave stays.
        sets = [room.state("dave_join2"), room.state("dave_leave_b")]
        sets[0][(JR, "")] = room.id("invite_only")
        sets[1][(JR, "")] = room.id("invite_only")
        out = resolve_state(V1, sets, room.get_event, self.auth_check)
        self.assertEqual(out[(MEMBER, DAVE)], room.id("dave_leave_b"))

    def test_other_events_deepest_allowed_wins(self):
        """For other keys the deepest event that passes against R wins; if the deepest
        fails, the next one."""
        room = self.room
        room.send("t_alice", TOPIC, ALICE, {"topic": "a"}, "", after="bob_join")
        room.send("x", TOPIC, BOB, {"topic": "x"}, "", after="bob_join")
        room.send("t_bob", TOPIC, BOB, {"topic": "b"}, "", after="x")
        self.assertEqual(self.resolve("t_alice", "t_bob")[(TOPIC, "")], room.id("t_bob"))
        room.send("demote", PL, ALICE, room.power_levels({ALICE: 100}), "", after="t_alice")
        out = self.resolve("demote", "t_bob")
        self.assertEqual(out[(PL, "")], room.id("demote"))
        self.assertEqual(out[(TOPIC, "")], room.id("t_alice"))

    def test_nothing_passes_takes_the_shallowest(self):
        """If no candidate passes, the last of the descending-depth order is kept."""
        room = self.room
        room.send("t1", TOPIC, ALICE, {"topic": "a"}, "", after="bob_join")
        room.send("x", TOPIC, ALICE, {"topic": "x"}, "", after="bob_join")
        room.send("t2", TOPIC, ALICE, {"topic": "b"}, "", after="x")
        sets = [room.state("t1"), room.state("t2")]
        out = resolve_state(V1, sets, room.get_event, lambda e, s: False)
        self.assertEqual(out[(TOPIC, "")], room.id("t1"))

    def test_rejected_and_missing_candidates_are_dropped(self):
        """Rejected and unknown candidates are never chosen."""
        room = self.room
        room.send("t1", TOPIC, ALICE, {"topic": "a"}, "", after="bob_join")
        room.send("x", TOPIC, ALICE, {"topic": "x"}, "", after="bob_join")
        room.send("t2", TOPIC, ALICE, {"topic": "b"}, "", after="x")
        room.ev("t2").rejected_reason = "auth"
        self.assertEqual(self.resolve("t1", "t2")[(TOPIC, "")], room.id("t1"))
        del room.events[room.id("t1")]
        self.assertNotIn((TOPIC, ""), self.resolve("t1", "t2"))
