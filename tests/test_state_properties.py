"""Property tests for state resolution: on random forked rooms, the result does not depend
on the order of the state sets, the order of their entries, or the walk strategy."""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from fedserver.room_versions import V1, V2, V10, V11, V12
from fedserver.state import resolve_state
from tests.test_state_fixtures import (
    ALICE, BOB, CHARLIE, DAVE, EVE, JR, MEMBER, PL, TOPIC, RoomBuilder, real_auth_check,
)

USERS = (BOB, CHARLIE, DAVE, EVE)


def random_room(rv, rng: random.Random, forks: int, steps: int):
    """A room with a common opening and ``forks`` branches of ``steps`` random state
    events each (joins, leaves, kicks, bans, invites, topics, join rules, power levels,
    sent by random members, allowed or not).

    :returns: (room, names of the fork heads).
    """
    room = RoomBuilder(rv)
    last = room.standard_room(users={BOB: 50})
    for u in (BOB, CHARLIE):
        ev = room.join(f"base_{u[1:4]}", u, after=last)
        last = f"base_{u[1:4]}"
    del ev
    heads = []
    counter = 0
    for f in range(forks):
        head = last
        for _ in range(steps):
            counter += 1
            name = f"f{f}_{counter}"
            sender = rng.choice((ALICE,) + USERS)
            kind = rng.randrange(8)
            ts = 2000 + rng.randrange(50)  # collisions on purpose: the id tie-break
            target = rng.choice(USERS)
            if kind == 0:
                room.join(name, sender, after=head)
            elif kind == 1:
                room.send(name, MEMBER, sender, {"membership": "leave"}, target, after=head, ts=ts)
            elif kind == 2:
                room.send(name, MEMBER, sender, {"membership": "ban"}, target, after=head, ts=ts)
            elif kind == 3:
                room.send(name, MEMBER, sender, {"membership": "invite"}, target, after=head,
                          ts=ts)
            elif kind == 4:
                room.send(name, TOPIC, sender, {"topic": name}, "", after=head, ts=ts)
            elif kind == 5:
                rule = rng.choice(("public", "invite"))
                room.send(name, JR, sender, {"join_rule": rule}, "", after=head, ts=ts)
            else:
                levels = {ALICE: 100}
                for u in USERS:
                    if rng.random() < 0.4:
                        levels[u] = rng.choice((0, 25, 50, 75))
                room.send(name, PL, sender, room.power_levels(levels), "", after=head, ts=ts)
            head = name
        heads.append(head)
    return room, heads


def shuffled(mapping: dict, rng: random.Random) -> dict:
    items = list(mapping.items())
    rng.shuffle(items)
    return dict(items)


class OrderIndependenceTests(SynchronousTestCase):
    def setUp(self):
        self.auth_check = real_auth_check()
        self.assertIsNotNone(self.auth_check, "the auth engine must be importable")

    def check_room(self, rv, seed, forks, steps):
        rng = random.Random(seed)
        room, heads = random_room(rv, rng, forks, steps)
        sets = [room.state(h) for h in heads]
        expected = resolve_state(rv, sets, room.get_event, self.auth_check)
        for trial in range(4):
            order = list(sets)
            rng.shuffle(order)
            order = [shuffled(s, rng) for s in order]
            got = resolve_state(rv, order, room.get_event, self.auth_check,
                                auth_order=room.auth_order if trial % 2 else None)
            self.assertEqual(got, expected, (rv.identifier, seed, trial))
        # Every resolved entry is a state event of its key (from a set or an auth chain).
        for (etype, skey), eid in expected.items():
            ev = room.get_event(eid)
            self.assertEqual((ev.type, ev.state_key), (etype, skey))
        return expected

    def test_two_forks(self):
        """Two random forks: the same answer whatever the order of sets and entries, with
        or without auth orders (room versions 2, 10, 11, 12)."""
        for rv in (V2, V10, V11, V12):
            for seed in range(12):
                self.check_room(rv, seed, 2, 12)

    def test_three_forks(self):
        """Three random forks: the same answer in every order."""
        for rv in (V10, V12):
            for seed in range(6):
                self.check_room(rv, 100 + seed, 3, 8)

    def test_v1_order_independence(self):
        """Room v1 resolution does not depend on the order of sets or entries either."""
        for seed in range(10):
            self.check_room(V1, 200 + seed, 2, 10)

    def test_results_differ_between_seeds(self):
        """The random rooms are not degenerate: different seeds give different
        resolved states, and some resolutions reject events offered by a fork."""
        results = {frozenset(self.check_room(V11, s, 2, 12).items()) for s in range(6)}
        self.assertGreater(len(results), 1)
        dropped = 0
        for seed in range(6):
            rng = random.Random(seed)
            room, heads = random_room(V11, rng, 2, 12)
            sets = [room.state(h) for h in heads]
            out = resolve_state(V11, sets, room.get_event, self.auth_check)
            for s in sets:
                dropped += sum(1 for k, v in s.items() if out.get(k) != v)
        self.assertGreater(dropped, 0)
