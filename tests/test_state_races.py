"""Classic state resolution races on hand-built DAGs, judged by the real auth engine, in
room versions 2, 10, 11 and 12."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from fedserver.room_versions import V2, V10, V11, V12
from fedserver.state import resolve_state
from tests.test_state_fixtures import (
    ALICE, BOB, CHARLIE, DAVE, EVE, JR, MEMBER, PL, TOPIC, RoomBuilder, real_auth_check,
)

VERSIONS = (V2, V10, V11, V12)


class RaceTests(SynchronousTestCase):
    def setUp(self):
        self.auth_check = real_auth_check()
        self.assertIsNotNone(self.auth_check, "the auth engine must be importable")

    def resolve(self, room, *names):
        """Resolve the states after ``names`` in every order of the sets, with and without
        auth orders, and check all agree."""
        sets = [room.state(n) for n in names]
        results = []
        for order in (sets, sets[::-1]):
            for auth_order in (None, room.auth_order):
                results.append(resolve_state(room.rv, order, room.get_event, self.auth_check,
                                             auth_order=auth_order))
        for r in results[1:]:
            self.assertEqual(r, results[0], room.rv)
        return results[0]

    def membership(self, room, state, user):
        eid = state.get((MEMBER, user))
        return None if eid is None else room.get_event(eid).membership

    def test_demotion_beats_concurrent_ban(self):
        """Alice demotes Bob while Bob bans Charlie: the demotion (higher power) is applied
        first, so the ban is not allowed and Charlie stays joined."""
        for rv in VERSIONS:
            room = RoomBuilder(rv)
            last = room.standard_room(users={BOB: 50})
            room.join("bob_join", BOB, after=last)
            room.join("charlie_join", CHARLIE, after="bob_join")
            room.send("demote", PL, ALICE, room.power_levels({ALICE: 100}), "",
                      after="charlie_join")
            room.send("ban", MEMBER, BOB, {"membership": "ban"}, CHARLIE, after="charlie_join")
            out = self.resolve(room, "demote", "ban")
            self.assertEqual(out[(PL, "")], room.id("demote"), rv)
            self.assertEqual(out[(MEMBER, CHARLIE)], room.id("charlie_join"), rv)

    def test_ban_without_demotion_applies(self):
        """The control case: a moderator's ban concurrent with a topic change is
        applied."""
        for rv in VERSIONS:
            room = RoomBuilder(rv)
            last = room.standard_room(users={BOB: 50})
            room.join("bob_join", BOB, after=last)
            room.join("charlie_join", CHARLIE, after="bob_join")
            room.send("topic", TOPIC, ALICE, {"topic": "t"}, "", after="charlie_join")
            room.send("ban", MEMBER, BOB, {"membership": "ban"}, CHARLIE, after="charlie_join")
            out = self.resolve(room, "topic", "ban")
            self.assertEqual(self.membership(room, out, CHARLIE), "ban", rv)
            self.assertEqual(out[(TOPIC, "")], room.id("topic"), rv)

    def test_demotion_beats_later_promotion_chain(self):
        """Alice promotes Bob, who promotes Charlie; concurrently (and later) Alice sets
        power levels without Bob. Alice's events sort first, so Bob's promotion of Charlie
        is judged against her later levels and fails."""
        for rv in VERSIONS:
            room = RoomBuilder(rv)
            last = room.standard_room()
            room.join("bob_join", BOB, after=last)
            room.join("charlie_join", CHARLIE, after="bob_join")
            room.send("promote_bob", PL, ALICE, room.power_levels({ALICE: 100, BOB: 50}), "",
                      after="charlie_join", ts=2000)
            room.send("promote_charlie", PL, BOB,
                      room.power_levels({ALICE: 100, BOB: 50, CHARLIE: 50}), "",
                      after="promote_bob", ts=2001)
            room.send("alice_pl", PL, ALICE, room.power_levels({ALICE: 100, DAVE: 10}), "",
                      after="charlie_join", ts=3000)
            out = self.resolve(room, "promote_charlie", "alice_pl")
            self.assertEqual(out[(PL, "")], room.id("alice_pl"), rv)

    def test_join_rules_change_beats_concurrent_join(self):
        """Alice makes the room invite-only while Dave joins under the public rule: the
        join rules are a power event, applied first, so Dave's join fails."""
        for rv in VERSIONS:
            room = RoomBuilder(rv)
            last = room.standard_room(join_rule="public")
            room.send("invite_only", JR, ALICE, {"join_rule": "invite"}, "", after=last)
            room.join("dave_join", DAVE, after=last)
            out = self.resolve(room, "invite_only", "dave_join")
            self.assertEqual(out[(JR, "")], room.id("invite_only"), rv)
            self.assertNotIn((MEMBER, DAVE), out, rv)

    def test_invited_join_survives_join_rules_change(self):
        """A user invited before the room became invite-only still gets in."""
        for rv in VERSIONS:
            room = RoomBuilder(rv)
            last = room.standard_room(join_rule="public")
            room.send("invite", MEMBER, ALICE, {"membership": "invite"}, DAVE, after=last)
            room.send("invite_only", JR, ALICE, {"join_rule": "invite"}, "", after="invite")
            room.join("dave_join", DAVE, after="invite")
            out = self.resolve(room, "invite_only", "dave_join")
            self.assertEqual(out[(JR, "")], room.id("invite_only"), rv)
            self.assertEqual(out[(MEMBER, DAVE)], room.id("dave_join"), rv)

    def test_topic_conflict_latest_wins(self):
        """Two allowed concurrent topics on the same power levels: the later one is applied
        last and wins; on equal timestamps the greater event id wins."""
        for rv in VERSIONS:
            room = RoomBuilder(rv)
            last = room.standard_room(users={BOB: 50})
            room.join("bob_join", BOB, after=last)
            room.send("topic_a", TOPIC, ALICE, {"topic": "a"}, "", after="bob_join", ts=5000)
            room.send("topic_b", TOPIC, BOB, {"topic": "b"}, "", after="bob_join", ts=4000)
            out = self.resolve(room, "topic_a", "topic_b")
            self.assertEqual(out[(TOPIC, "")], room.id("topic_a"), rv)
            room.send("topic_x", TOPIC, ALICE, {"topic": "x"}, "", after="bob_join", ts=6000)
            room.send("topic_y", TOPIC, BOB, {"topic": "y"}, "", after="bob_join", ts=6000)
            out = self.resolve(room, "topic_x", "topic_y")
            self.assertEqual(out[(TOPIC, "")], room.id("topic_y"), rv)

    def test_topic_by_demoted_user_is_dropped(self):
        """Bob sets the topic while Alice demotes him: the topic, ordered after the
        demotion by the mainline, fails and the old topic stays."""
        for rv in VERSIONS:
            room = RoomBuilder(rv)
            last = room.standard_room(users={BOB: 50})
            room.join("bob_join", BOB, after=last)
            room.send("topic0", TOPIC, ALICE, {"topic": "old"}, "", after="bob_join")
            room.send("demote", PL, ALICE, room.power_levels({ALICE: 100}), "", after="topic0")
            room.send("topic_bob", TOPIC, BOB, {"topic": "bob"}, "", after="topic0")
            out = self.resolve(room, "demote", "topic_bob")
            self.assertEqual(out[(TOPIC, "")], room.id("topic0"), rv)
            self.assertEqual(out[(PL, "")], room.id("demote"), rv)

    def test_state_reset_attempt_by_withholding_ban(self):
        """Eve, banned by Alice, builds a fork from before the ban (withholding it) where
        she opens the room, sets the topic and invites a friend. The ban is a power event
        applied first; everything Eve did on her fork then fails."""
        for rv in VERSIONS:
            room = RoomBuilder(rv)
            last = room.standard_room(join_rule="invite", users={EVE: 50})
            room.send("invite_eve", MEMBER, ALICE, {"membership": "invite"}, EVE, after=last)
            room.join("eve_join", EVE, after="invite_eve")
            room.send("topic0", TOPIC, ALICE, {"topic": "calm"}, "", after="eve_join")
            room.send("ban_eve", MEMBER, ALICE, {"membership": "ban"}, EVE, after="topic0")
            # Eve's fork, citing state from before the ban
            room.send("eve_jr", JR, EVE, {"join_rule": "public"}, "", after="topic0")
            room.send("eve_topic", TOPIC, EVE, {"topic": "spam"}, "", after="eve_jr")
            room.send("eve_invite", MEMBER, EVE, {"membership": "invite"}, CHARLIE,
                      after="eve_topic")
            out = self.resolve(room, "ban_eve", "eve_invite")
            self.assertEqual(self.membership(room, out, EVE), "ban", rv)
            self.assertEqual(out[(JR, "")], room.id("jr0"), rv)
            self.assertEqual(out[(TOPIC, "")], room.id("topic0"), rv)
            self.assertNotIn((MEMBER, CHARLIE), out, rv)

    def test_three_way_merge(self):
        """Three forks resolve as one: the topic from the latest allowed fork, the join rule
        change and an extra member all land."""
        for rv in VERSIONS:
            room = RoomBuilder(rv)
            last = room.standard_room(users={BOB: 50})
            room.join("bob_join", BOB, after=last)
            room.send("f1", TOPIC, BOB, {"topic": "1"}, "", after="bob_join", ts=7000)
            room.send("f2", JR, ALICE, {"join_rule": "public"}, "", after="bob_join", ts=7001)
            room.join("f3", CHARLIE, after="bob_join")
            sets = [room.state(n) for n in ("f1", "f2", "f3")]
            outs = [resolve_state(rv, order, room.get_event, self.auth_check)
                    for order in (sets, sets[::-1], sets[1:] + sets[:1])]
            for o in outs[1:]:
                self.assertEqual(o, outs[0])
            out = outs[0]
            self.assertEqual(out[(TOPIC, "")], room.id("f1"), rv)
            self.assertEqual(out[(JR, "")], room.id("f2"), rv)
            self.assertEqual(out[(MEMBER, CHARLIE)], room.id("f3"), rv)
