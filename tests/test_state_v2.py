"""Tests for fedserver.state.v2 and fedserver.state.graph: the building blocks of state
resolution v2 on hand-built DAGs."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from fedserver.room_versions import V2, V10, V11, V12
from fedserver.state import resolve_state
from fedserver.state.graph import AuthGraph
from fedserver.state.power import SenderPower, is_power_event, power_value
from fedserver.state.v2 import (
    mainline_sort,
    resolve_state_v2,
    reverse_topological_power_sort,
    split_conflicted,
)
from tests.test_state_fixtures import (
    ALICE, BOB, CHARLIE, JR, MEMBER, PL, TOPIC, RoomBuilder, simple_auth_check,
)

VERSIONS = (V2, V10, V11, V12)


class SplitConflictedTests(SynchronousTestCase):
    def test_same_value_everywhere_is_unconflicted(self):
        """A key with the same event in every set is unconflicted; differing values and
        keys missing from a set are conflicted."""
        s1 = {("a", ""): "$1", ("b", ""): "$2", ("c", ""): "$4"}
        s2 = {("a", ""): "$1", ("b", ""): "$3"}
        unconflicted, conflicted = split_conflicted([s1, s2])
        self.assertEqual(unconflicted, {("a", ""): "$1"})
        self.assertEqual(conflicted, {"$2", "$3", "$4"})

    def test_identical_sets(self):
        """Identical sets have no conflicts."""
        s = {("a", ""): "$1"}
        self.assertEqual(split_conflicted([s, dict(s), dict(s)]), (s, set()))


class PowerEventTests(SynchronousTestCase):
    def test_power_events(self):
        """Power levels, join rules and kicks/bans by another user are power events; a
        self-leave, a join and a topic are not."""
        for rv in VERSIONS:
            room = RoomBuilder(rv)
            last = room.standard_room(users={BOB: 50})
            room.join("bob_join", BOB, after=last)
            room.join("charlie_join", CHARLIE, after="bob_join")
            room.send("kick", MEMBER, BOB, {"membership": "leave"}, CHARLIE, after="charlie_join")
            room.send("ban", MEMBER, BOB, {"membership": "ban"}, CHARLIE, after="kick")
            room.send("leave", MEMBER, BOB, {"membership": "leave"}, BOB, after="ban")
            room.send("topic", TOPIC, ALICE, {"topic": "x"}, "", after="leave")
            power = {n for n in ("pl0", "jr0", "kick", "ban")}
            for name in ("pl0", "jr0", "kick", "ban", "leave", "bob_join", "topic"):
                self.assertEqual(is_power_event(room.ev(name)), name in power, (rv, name))

    def test_power_value(self):
        """Power values are integers or (old rooms) integer strings; anything else is the
        default."""
        self.assertEqual(power_value(50), 50)
        self.assertEqual(power_value("50"), 50)
        self.assertEqual(power_value(" -3 "), -3)
        self.assertEqual(power_value("x", 7), 7)
        self.assertEqual(power_value(None, 7), 7)
        self.assertEqual(power_value([1], 7), 7)


class AuthDifferenceTests(SynchronousTestCase):
    def _forked(self, rv):
        room = RoomBuilder(rv)
        last = room.standard_room(users={BOB: 50})
        room.join("bob_join", BOB, after=last)
        room.send("pl_common", PL, ALICE, room.power_levels({ALICE: 100, BOB: 55}), "",
                  after="bob_join")
        # fork A: Alice changes PL then topic; fork B: Bob sets the topic
        room.send("pl_a", PL, ALICE, room.power_levels({ALICE: 100, BOB: 60}), "", after="pl_common")
        room.send("topic_a", TOPIC, ALICE, {"topic": "a"}, "", after="pl_a")
        room.send("topic_b", TOPIC, BOB, {"topic": "b"}, "", after="pl_common")
        return room

    def test_difference(self):
        """The auth difference holds what is reachable (events included) from some but not
        all state sets, and nothing all sets share; with and without auth orders."""
        for rv in VERSIONS:
            room = self._forked(rv)
            for auth_order in (None, room.auth_order):
                graph = AuthGraph(room.get_event, auth_order=auth_order)
                diff = graph.auth_difference([room.state("topic_a"), room.state("topic_b")])
                names = {graph.ids[n] for n in diff}
                self.assertEqual(
                    names, {room.id("pl_a"), room.id("topic_a"), room.id("topic_b")})

    def test_auth_order_stops_early(self):
        """With auth orders the walk does not fetch the history all sets share (here the
        first power levels event, superseded before the fork); without, it does."""
        room = self._forked(V11)
        fetched = []

        def get_event(eid):
            fetched.append(eid)
            return room.get_event(eid)

        graph = AuthGraph(get_event, auth_order=room.auth_order)
        graph.auth_difference([room.state("topic_a"), room.state("topic_b")])
        self.assertNotIn(room.id("pl0"), fetched)
        graph = AuthGraph(get_event)
        graph.auth_difference([room.state("topic_a"), room.state("topic_b")])
        self.assertIn(room.id("pl0"), fetched)

    def test_lying_auth_order_falls_back(self):
        """When the given auth orders do not decrease along an auth edge, the full walk
        is used and the answer is unchanged."""
        for rv in VERSIONS:
            room = self._forked(rv)
            room.auth_orders[room.id("pl0")] = 1000
            graph = AuthGraph(room.get_event, auth_order=room.auth_order)
            diff = graph.auth_difference([room.state("topic_a"), room.state("topic_b")])
            names = {graph.ids[n] for n in diff}
            self.assertEqual(names, {room.id("pl_a"), room.id("topic_a"), room.id("topic_b")})

    def test_lying_auth_order_cannot_stop_the_walk_early(self):
        """Auth orders that claim a cited event is deeper than its citer would let the
        early stop leave an old event marked as not shared; the edge check notices and the
        answer is the true one."""
        room = RoomBuilder(V10)
        last = room.standard_room()
        room.send("pl1", PL, ALICE, room.power_levels({ALICE: 100, BOB: 1}), "", after=last)
        room.send("pl2", PL, ALICE, room.power_levels({ALICE: 100, BOB: 2}), "", after="pl1")
        room.auth_orders[room.id("pl1")] = 1000
        room.auth_orders[room.id("pl0")] = 999
        graph = AuthGraph(room.get_event, auth_order=room.auth_order)
        diff = graph.auth_difference([room.state("pl1"), room.state("pl2")])
        self.assertEqual({graph.ids[n] for n in diff}, {room.id("pl2")})

    def test_unknown_auth_order_falls_back(self):
        """An auth_order that does not know an event (KeyError) means the full walk."""
        room = self._forked(V10)

        def auth_order(eid):
            raise KeyError(eid)

        graph = AuthGraph(room.get_event, auth_order=auth_order)
        diff = graph.auth_difference([room.state("topic_a"), room.state("topic_b")])
        self.assertEqual({graph.ids[n] for n in diff},
                         {room.id("pl_a"), room.id("topic_a"), room.id("topic_b")})

    def test_both_walks_agree(self):
        """The auth-depth walk and the plain walks find the same partial nodes, on random
        forked rooms."""
        import random

        from tests.test_state_properties import random_room

        for seed in range(5):
            room, heads = random_room(V11, random.Random(seed), 3, 10)
            graph = AuthGraph(room.get_event, auth_order=room.auth_order)
            starts = [[graph.node(e) for e in room.state(h).values()] for h in heads]
            fast = graph.partial_nodes(starts)
            plain = graph._partial_by_walks(_start_masks(starts), 7)
            self.assertEqual(fast, plain)
            self.assertTrue(fast)

    def test_missing_events_are_ignored(self):
        """Events get_event cannot supply are left out of the difference and do not
        break the walk."""
        room = self._forked(V11)
        del room.events[room.id("pl0")]
        graph = AuthGraph(room.get_event)
        diff = graph.auth_difference([room.state("topic_a"), room.state("topic_b")])
        self.assertNotIn(room.id("pl0"), {graph.ids[n] for n in diff})
        self.assertIn(room.id("pl_a"), {graph.ids[n] for n in diff})


def _start_masks(starts):
    out = {}
    for i, nodes in enumerate(starts):
        for n in nodes:
            out[n] = out.get(n, 0) | (1 << i)
    return out


class ConflictedSubgraphTests(SynchronousTestCase):
    def test_events_between_conflicted_events(self):
        """The subgraph holds every event on an auth path between two conflicted events,
        but not events only below or above them."""
        for rv in VERSIONS:
            room = RoomBuilder(rv)
            last = room.standard_room()
            room.join("bob_join", BOB, after=last)
            room.send("pl1", PL, ALICE, room.power_levels({ALICE: 100, BOB: 50}), "", after="bob_join")
            room.send("pl2", PL, ALICE, room.power_levels({ALICE: 100, BOB: 60}), "", after="pl1")
            room.send("pl3", PL, ALICE, room.power_levels({ALICE: 100, BOB: 70}), "", after="pl2")
            room.send("pl4", PL, ALICE, room.power_levels({ALICE: 100, BOB: 80}), "", after="pl3")
            for auth_order in (None, room.auth_order):
                graph = AuthGraph(room.get_event, auth_order=auth_order)
                conflicted = {graph.node(room.id("pl1")), graph.node(room.id("pl3"))}
                sub = {graph.ids[n] for n in graph.conflicted_subgraph(conflicted)}
                self.assertEqual(sub, {room.id(n) for n in ("pl1", "pl2", "pl3")}, rv)

    def test_auth_order_bounds_the_walk(self):
        """With auth orders, nothing below the shallowest conflicted event is fetched."""
        room = RoomBuilder(V12)
        last = room.standard_room()
        room.send("pl1", PL, ALICE, room.power_levels({ALICE: 100, BOB: 50}), "", after=last)
        room.send("pl2", PL, ALICE, room.power_levels({ALICE: 100, BOB: 60}), "", after="pl1")
        fetched = []

        def get_event(eid):
            fetched.append(eid)
            return room.get_event(eid)

        graph = AuthGraph(get_event, auth_order=room.auth_order)
        graph.conflicted_subgraph({graph.node(room.id("pl1")), graph.node(room.id("pl2"))})
        self.assertNotIn(room.id("pl0"), fetched)
        graph = AuthGraph(get_event)
        graph.conflicted_subgraph({graph.node(room.id("pl1")), graph.node(room.id("pl2"))})
        self.assertIn(room.id("pl0"), fetched)

    def test_event_depth_is_not_trusted(self):
        """A forged ``depth`` field changes nothing: the subgraph is still found."""
        room = RoomBuilder(V12)
        last = room.standard_room()
        room.send("pl1", PL, ALICE, room.power_levels({ALICE: 100, BOB: 50}), "", after=last)
        room.send("pl2", PL, ALICE, room.power_levels({ALICE: 100, BOB: 60}), "", after="pl1")
        room.send("pl3", PL, ALICE, room.power_levels({ALICE: 100, BOB: 70}), "", after="pl2")
        room.ev("pl2").depth = 1
        room.ev("pl1").depth = 100
        graph = AuthGraph(room.get_event)
        conflicted = {graph.node(room.id("pl1")), graph.node(room.id("pl3"))}
        sub = {graph.ids[n] for n in graph.conflicted_subgraph(conflicted)}
        self.assertEqual(sub, {room.id(n) for n in ("pl1", "pl2", "pl3")})


class OrderingTests(SynchronousTestCase):
    def test_power_sort_prefers_power_then_ts_then_id(self):
        """Among unrelated events the one whose sender has more power comes first, then
        the earlier, then the smaller event id; ancestors always precede descendants."""
        for rv in VERSIONS:
            room = RoomBuilder(rv)
            last = room.standard_room(users={BOB: 50, CHARLIE: 50})
            room.join("bob_join", BOB, after=last)
            room.join("charlie_join", CHARLIE, after="bob_join")
            base = "charlie_join"
            room.send("jr_bob", JR, BOB, {"join_rule": "invite"}, "", after=base, ts=5000)
            room.send("jr_charlie_b", JR, CHARLIE, {"join_rule": "invite"}, "", after=base, ts=4000)
            room.send("jr_charlie_a", JR, CHARLIE, {"join_rule": "invite"}, "", after=base, ts=4000)
            room.send("jr_alice", JR, ALICE, {"join_rule": "invite"}, "", after=base, ts=9000)
            graph = AuthGraph(room.get_event)
            names = ["jr_bob", "jr_charlie_b", "jr_charlie_a", "jr_alice", "pl0"]
            nodes = {graph.node(room.id(n)) for n in names}
            order = [graph.ids[n] for n in
                     reverse_topological_power_sort(graph, nodes, SenderPower(rv, graph))]
            self.assertEqual(order, [room.id(n) for n in (
                "pl0", "jr_alice", "jr_charlie_a", "jr_charlie_b", "jr_bob")], rv)

    def test_sender_power_without_power_levels(self):
        """Without power levels among its auth events, the creator has 100 and others 0;
        from v12 the creators have infinite power."""
        for rv in VERSIONS:
            room = RoomBuilder(rv)
            room.create()
            room.send("alice_join", MEMBER, ALICE, {"membership": "join"}, ALICE, after="create")
            room.join("bob_join", BOB, after="alice_join")
            graph = AuthGraph(room.get_event)
            power = SenderPower(rv, graph)
            expected = float("inf") if rv.privileged_creators else 100
            self.assertEqual(power(graph.node(room.id("alice_join"))), expected)
            self.assertEqual(power(graph.node(room.id("bob_join"))), 0)

    def test_mainline_sort(self):
        """Events based on an older mainline power levels event come first, then by
        origin_server_ts, then by event id; events reaching no mainline event come first
        of all."""
        for rv in VERSIONS:
            room = RoomBuilder(rv)
            last = room.standard_room(users={BOB: 50})
            room.join("bob_join", BOB, after=last)
            room.send("t_old", TOPIC, ALICE, {"topic": "1"}, "", after="bob_join", ts=9000)
            room.send("pl1", PL, ALICE, room.power_levels({ALICE: 100, BOB: 60}), "", after="t_old")
            room.send("t_new_b", TOPIC, BOB, {"topic": "2"}, "", after="pl1", ts=100)
            room.send("t_new_a", TOPIC, BOB, {"topic": "3"}, "", after="pl1", ts=100)
            room.send("t_newer", TOPIC, BOB, {"topic": "4"}, "", after="pl1", ts=50)
            graph = AuthGraph(room.get_event)
            names = ["t_new_b", "t_old", "t_new_a", "t_newer", "alice_join"]
            order = mainline_sort(graph, {graph.node(room.id(n)) for n in names},
                                  room.id("pl1"))
            self.assertEqual([graph.ids[n] for n in order], [room.id(n) for n in (
                "alice_join", "t_old", "t_newer", "t_new_a", "t_new_b")], rv)


class ResolveBasicsTests(SynchronousTestCase):
    def test_trivial_inputs(self):
        """No sets give an empty state, one set is returned as a copy, identical sets
        need no events at all."""
        s = {("a", ""): "$x"}

        def no_events(eid):
            raise AssertionError("no event should be fetched")

        for rv in VERSIONS:
            self.assertEqual(resolve_state(rv, [], no_events, simple_auth_check), {})
            out = resolve_state(rv, [s], no_events, simple_auth_check)
            self.assertEqual(out, s)
            self.assertIsNot(out, s)
            self.assertEqual(resolve_state(rv, [s, dict(s)], no_events, simple_auth_check), s)

    def test_unconflicted_state_wins(self):
        """Step 5: the unconflicted entries are in the result even if they would fail
        the iterative checks."""
        for rv in VERSIONS:
            room = RoomBuilder(rv)
            last = room.standard_room()
            room.send("t1", TOPIC, ALICE, {"topic": "a"}, "", after=last)
            room.send("t2", TOPIC, ALICE, {"topic": "b"}, "", after=last)
            s1, s2 = room.state("t1"), room.state("t2")
            out = resolve_state(rv, [s1, s2], room.get_event, lambda e, s: False)
            for key, eid in s1.items():
                if key != (TOPIC, ""):
                    self.assertEqual(out[key], eid)
            self.assertNotIn((TOPIC, ""), out)

    def test_rejected_events_are_not_admitted(self):
        """A conflicted event that was rejected never enters the resolved state."""
        for rv in VERSIONS:
            room = RoomBuilder(rv)
            last = room.standard_room()
            room.send("t1", TOPIC, ALICE, {"topic": "a"}, "", after=last, ts=10)
            room.send("t2", TOPIC, ALICE, {"topic": "b"}, "", after=last, ts=20)
            room.ev("t2").rejected_reason = "auth"
            out = resolve_state(rv, [room.state("t1"), room.state("t2")], room.get_event,
                                simple_auth_check)
            self.assertEqual(out[(TOPIC, "")], room.id("t1"))

    def test_missing_conflicted_event_is_skipped(self):
        """A conflicted event get_event cannot supply is left out."""
        for rv in VERSIONS:
            room = RoomBuilder(rv)
            last = room.standard_room()
            room.send("t1", TOPIC, ALICE, {"topic": "a"}, "", after=last, ts=10)
            room.send("t2", TOPIC, ALICE, {"topic": "b"}, "", after=last, ts=20)
            del room.events[room.id("t2")]
            out = resolve_state(rv, [room.state("t1"), room.state("t2")], room.get_event,
                                simple_auth_check)
            self.assertEqual(out[(TOPIC, "")], room.id("t1"))

    def test_auth_check_exception_is_a_denial(self):
        """An auth check that raises counts as a denial instead of aborting."""
        for rv in VERSIONS:
            room = RoomBuilder(rv)
            last = room.standard_room()
            room.send("t1", TOPIC, ALICE, {"topic": "a"}, "", after=last, ts=10)
            room.send("t2", TOPIC, ALICE, {"topic": "b"}, "", after=last, ts=20)

            def check(event, state):
                if event.event_id == room.id("t2"):
                    raise ValueError("boom")
                return simple_auth_check(event, state)

            out = resolve_state(rv, [room.state("t1"), room.state("t2")], room.get_event, check)
            self.assertEqual(out[(TOPIC, "")], room.id("t1"))

    def test_auth_state_falls_back_to_auth_events(self):
        """A key the partial state lacks is read from the event's own auth events, and a
        rejected auth event is not used."""
        rv = V12
        room = RoomBuilder(rv)
        last = room.standard_room()
        room.send("t1", TOPIC, ALICE, {"topic": "a"}, "", after=last, ts=10)
        room.send("t2", TOPIC, ALICE, {"topic": "b"}, "", after=last, ts=20)
        seen = {}

        def check(event, state):
            seen[event.event_id] = {
                k: (state.get(k).event_id if state.get(k) is not None else None)
                for k in [("m.room.create", ""), (PL, ""), (MEMBER, ALICE)]}
            return True

        resolve_state_v2(rv, [room.state("t1"), room.state("t2")], room.get_event, check,
                         v2_1=True)
        self.assertEqual(seen[room.id("t1")], {
            ("m.room.create", ""): room.id("create"), (PL, ""): room.id("pl0"),
            (MEMBER, ALICE): room.id("alice_join")})
        room.ev("pl0").rejected_reason = "test"
        resolve_state_v2(rv, [room.state("t1"), room.state("t2")], room.get_event, check,
                         v2_1=True)
        self.assertIsNone(seen[room.id("t1")][(PL, "")])
