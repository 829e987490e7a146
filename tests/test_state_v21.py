"""State resolution v2.1 (room v12) against v2: the two state resets of MSC4297 that v2
produces and v2.1 avoids, judged by the real auth engine."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from fedserver.room_versions import V11, V12
from fedserver.state import resolve_state
from fedserver.state.v2 import resolve_state_v2
from tests.test_state_fixtures import (
    ALICE, BOB, CHARLIE, JR, MEMBER, PL, TOPIC, RoomBuilder, real_auth_check,
)


class StateResetTests(SynchronousTestCase):
    def setUp(self):
        self.auth_check = real_auth_check()
        self.assertIsNotNone(self.auth_check, "the auth engine must be importable")

    def both(self, room, sets):
        """Resolve with v2 and v2.1 (the room's version for the auth rules), in both set
        orders, with and without auth orders; return (v2, v2.1)."""
        out = []
        for v2_1 in (False, True):
            results = [
                resolve_state_v2(room.rv, order, room.get_event, self.auth_check, v2_1=v2_1,
                                 auth_order=auth_order)
                for order in (sets, sets[::-1]) for auth_order in (None, room.auth_order)
            ]
            for r in results[1:]:
                self.assertEqual(r, results[0])
            out.append(results[0])
        return out

    def problem_a(self, rv):
        """MSC4297 problem A: both forks agree Alice left after setting the join rules
        twice; one state set (from a faulty /state answer) names the older join rules."""
        room = RoomBuilder(rv)
        room.create()
        room.send("alice_join", MEMBER, ALICE, {"membership": "join"}, ALICE, after="create")
        room.send("pl0", PL, ALICE, room.power_levels({ALICE: 100}), "", after="alice_join")
        room.send("jr1", JR, ALICE, {"join_rule": "public"}, "", after="pl0")
        room.join("bob_join", BOB, after="jr1")
        room.send("jr2", JR, ALICE, {"join_rule": "invite"}, "", after="bob_join")
        room.send("alice_leave", MEMBER, ALICE, {"membership": "leave"}, ALICE, after="jr2")
        good = room.state("alice_leave")
        stale = dict(good)
        stale[(JR, "")] = room.id("jr1")
        return room, [good, stale]

    def test_problem_a_v2_resets_join_rules(self):
        """v2 starts from the unconflicted state, where Alice has left, so both join
        rules events fail and the room loses its join rules."""
        for rv in (V11, V12):
            room, sets = self.problem_a(rv)
            v2, v21 = self.both(room, sets)
            self.assertNotIn((JR, ""), v2, rv)
            self.assertEqual(v21[(JR, "")], room.id("jr2"), rv)
            self.assertEqual(v21[(MEMBER, ALICE)], room.id("alice_leave"), rv)

    def problem_b(self, rv):
        """MSC4297 problem B: Alice promotes Bob, who promotes Charlie, who sets the
        topic; one state set names the original power levels although its auth chain holds
        the later ones."""
        room = RoomBuilder(rv)
        last = room.standard_room()
        room.join("bob_join", BOB, after=last)
        room.join("charlie_join", CHARLIE, after="bob_join")
        room.send("pl1", PL, ALICE, room.power_levels({ALICE: 100, BOB: 50}), "",
                  after="charlie_join")
        room.send("pl2", PL, BOB, room.power_levels({ALICE: 100, BOB: 50, CHARLIE: 50}), "",
                  after="pl1")
        room.send("topic", TOPIC, CHARLIE, {"topic": "by charlie"}, "", after="pl2")
        good = room.state("topic")
        stale = dict(good)
        stale[(PL, "")] = room.id("pl0")
        return room, [good, stale]

    def test_problem_b_v2_resets_power_levels(self):
        """v2's full conflicted set misses Bob's promotion (in both auth chains), so
        Bob's promotion of Charlie fails and the power levels reset to the first ones;
        v2.1 adds it through the conflicted state subgraph."""
        for rv in (V11, V12):
            room, sets = self.problem_b(rv)
            v2, v21 = self.both(room, sets)
            self.assertEqual(v2[(PL, "")], room.id("pl0"), rv)
            self.assertEqual(v21[(PL, "")], room.id("pl2"), rv)

    def test_room_v12_dispatches_to_v2_1(self):
        """resolve_state uses v2.1 for room v12 and v2 for room v11."""
        room, sets = self.problem_b(V12)
        self.assertEqual(resolve_state(V12, sets, room.get_event, self.auth_check)[(PL, "")],
                         room.id("pl2"))
        room, sets = self.problem_b(V11)
        self.assertEqual(resolve_state(V11, sets, room.get_event, self.auth_check)[(PL, "")],
                         room.id("pl0"))

    def test_v2_1_empty_start_uses_auth_events(self):
        """In v2.1 the first replayed events are judged against their own auth events (the
        partial state starts empty): each check sees the event's cited power levels, not
        the unconflicted map's."""
        room, sets = self.problem_a(V12)
        seen = {}

        def check(event, state):
            m = state.get((MEMBER, ALICE))
            seen.setdefault(event.event_id, None if m is None else m.event_id)
            return self.auth_check(event, state)

        resolve_state_v2(V12, sets, room.get_event, check, v2_1=True)
        self.assertEqual(seen[room.id("jr1")], room.id("alice_join"))
        seen.clear()
        resolve_state_v2(V12, sets, room.get_event, check, v2_1=False)
        self.assertEqual(seen[room.id("jr1")], room.id("alice_leave"))
