"""The shortcuts taken for the speed of state resolution give the answers of the general
code they stand for: the engine's direct call of a hook's single built-in implementation
against its general loop, the auth events selection looked up from a state against the
set of keys, the iterative auth checks' shared lookups and edge-read fallbacks against
plain lookups; and a plugin registered after start-up still vetoes."""

from __future__ import annotations

import random
import types
from typing import Any, Mapping

from twisted.trial.unittest import SynchronousTestCase

from fedserver.auth.engine import AUTH_HOOKS, AuthEngine
from fedserver.auth.hookspecs import hookimpl
from fedserver.auth.plugins import make_plugin_manager
from fedserver.auth.selection import auth_types_for_event, select_from_state
from fedserver.auth.verdict import Deny
from fedserver.events.model import Event
from fedserver.room_versions import V1, V2, V6, V8, V10, V11, V12
from fedserver.state import resolve_state
from fedserver.state.graph import AuthGraph
from fedserver.state.iterative import AuthStateView, auth_event_fallback
from tests.test_state_fixtures import ALICE, BOB, CHARLIE, MEMBER, PL, TOPIC, RoomBuilder
from tests.test_state_properties import USERS, random_room

VERSIONS = (V1, V2, V6, V8, V10, V11, V12)


def _listening_plugin() -> types.SimpleNamespace:
    """A plugin implementing every auth hook that takes the standard arguments, objecting
    to nothing: with it each hook has two implementations, so the engine runs its
    general loop instead of the direct call."""
    ns = types.SimpleNamespace()
    for name in AUTH_HOOKS:
        if name in ("fedserver_auth_auth_events", "fedserver_auth_join_rule_allows"):
            continue

        def impl(event, auth_state, room_version):
            return None

        impl.__name__ = name
        setattr(ns, name, hookimpl(specname=name)(impl))
    return ns


def _engines(*extra: tuple[object, str]) -> tuple[AuthEngine, AuthEngine]:
    """(the engine with the direct calls, one forced onto the general loop), both with
    ``extra`` plugins."""
    direct = AuthEngine(make_plugin_manager(load_entrypoints=False, extra_plugins=list(extra)))
    general = AuthEngine(make_plugin_manager(
        load_entrypoints=False, extra_plugins=[*extra, (_listening_plugin(), "listening")]))
    return direct, general


def _cases(rv, seed: int):
    """(room, fork head states, every event of the room): a random forked room."""
    rng = random.Random(seed)
    room, heads = random_room(rv, rng, 2, 14)
    return room, [room.state(h) for h in heads], list(room.events.values())


def _as_events(room: RoomBuilder, state: Mapping[tuple[str, str], str]) -> dict:
    return {k: room.get_event(v) for k, v in state.items()}


class DirectCallTests(SynchronousTestCase):
    def test_same_results_as_general_loop(self):
        """On random forked rooms of every algorithm's versions, each event judged against
        each fork's state gives an equal AuthResult (verdict, reasons, rules and plugin
        names) whether the built-in rules are called directly or through the general
        loop; and state resolution resolves the same."""
        direct, general = _engines()
        compared = denied = 0
        for rv in VERSIONS:
            for seed in range(5):
                room, sets, events = _cases(rv, seed)
                for state in sets:
                    by_event = _as_events(room, state)
                    for ev in events:
                        a = direct.check_against_state(ev, by_event)
                        b = general.check_against_state(ev, by_event)
                        self.assertEqual(a, b, (rv.identifier, seed, ev.event_id))
                        compared += 1
                        denied += not a.allowed
                    for ev in events:
                        auth = [room.get_event(x) for x in ev.auth_event_ids]
                        self.assertEqual(direct.check(ev, auth), general.check(ev, auth))
                for order in (None, room.auth_order):
                    self.assertEqual(
                        resolve_state(rv, sets, room.get_event,
                                      lambda e, s: direct.check_against_state(e, s).allowed,
                                      auth_order=order),
                        resolve_state(rv, sets, room.get_event,
                                      lambda e, s: general.check_against_state(e, s).allowed,
                                      auth_order=order),
                        (rv.identifier, seed),
                    )
        # The cases are not degenerate: both verdicts occur, many times.
        self.assertGreater(denied, 100)
        self.assertGreater(compared - denied, 100)

    def test_same_denial_for_unreadable_levels_and_raising_plugins(self):
        """The denial for a power level that cannot be read (a rule raising
        UnreadablePowerLevel) and for a plugin that raises or returns something else than
        a Deny is the same through the direct call as through the general loop."""

        @hookimpl(specname="fedserver_auth_event")
        def raising(event, auth_state, room_version):
            if event.type == TOPIC:
                raise ValueError("boom")
            if event.type == PL:
                return "not a Deny"
            return None

        room = RoomBuilder(V2)
        room.create()
        room.send("alice_join", MEMBER, ALICE, {"membership": "join"}, ALICE, after="create")
        # Before room v10 a level may be a string; one that is not a number is unreadable.
        room.send("pl0", PL, ALICE, {"users": {ALICE: 100}, "events_default": "lots"}, "",
                  after="alice_join")
        room.send("msg", "m.room.message", ALICE, {"body": "hi"}, after="pl0")
        room.send("topic", TOPIC, ALICE, {"topic": "t"}, "", after="pl0")
        state = _as_events(room, room.state("pl0"))
        direct, general = _engines((types.SimpleNamespace(fedserver_auth_event=raising), "raising"))
        results = []
        for name in ("msg", "topic", "pl0"):
            a = direct.check_against_state(room.ev(name), state)
            self.assertEqual(a, general.check_against_state(room.ev(name), state), name)
            results.append(a)
        self.assertFalse(results[0].allowed)
        self.assertIn("events_default", results[0].reason)
        self.assertEqual(results[1].rule, "raising error")
        self.assertIn("ValueError: boom", results[1].reason)
        self.assertEqual(results[2].rule, "raising error")
        self.assertIn("not None or Deny", results[2].reason)


class SelectionTests(SynchronousTestCase):
    def test_select_from_state_is_the_selection(self):
        """select_from_state gives exactly the state's entries at the keys of
        auth_types_for_event, absent ones left out, for every membership, third-party
        invites (well and badly formed), restricted joins, the sender as target, and
        non-member events, in every room version."""
        rng = random.Random(7)
        users = [ALICE, BOB, CHARLIE, *USERS]
        contents: list[dict[str, Any]] = [
            {"membership": m} for m in ("join", "invite", "leave", "ban", "knock", "bogus", 3)
        ] + [
            {"membership": "invite", "third_party_invite": {"signed": {"token": "tok"}}},
            {"membership": "invite", "third_party_invite": {"signed": {"token": 5}}},
            {"membership": "invite", "third_party_invite": {"signed": "x"}},
            {"membership": "invite", "third_party_invite": []},
            {"membership": "join", "join_authorised_via_users_server": CHARLIE},
            {"membership": "join", "join_authorised_via_users_server": BOB},
            {"membership": "join", "join_authorised_via_users_server": 1},
            {},
        ]
        keys = [("m.room.create", ""), (PL, ""), ("m.room.join_rules", ""),
                ("m.room.third_party_invite", "tok")] + [(MEMBER, u) for u in users]
        checked = 0
        for rv in VERSIONS:
            for _ in range(300):
                state = {k: f"${i}" for i, k in enumerate(keys) if rng.random() < 0.6}
                etype = rng.choice((MEMBER, MEMBER, TOPIC, PL, "m.room.message"))
                sender = rng.choice(users)
                content = rng.choice(contents) if etype == MEMBER else {"x": 1}
                state_key = rng.choice([sender, *users]) if etype == MEMBER else rng.choice(("", None))
                pdu = {"type": etype, "sender": sender, "content": content, "room_id": "!r:a.test",
                       "prev_events": [], "auth_events": [], "depth": 2, "origin_server_ts": 1}
                if state_key is not None:
                    pdu["state_key"] = state_key
                ev = Event.from_pdu(pdu, rv, event_id="$e:a.test")
                expected = {
                    k: state[k] for k in auth_types_for_event(rv, etype, state_key, sender, content)
                    if k in state
                }
                self.assertEqual(select_from_state(rv, ev, state), expected, (rv.identifier, pdu))
                checked += bool(expected)
        self.assertGreater(checked, 1000)


class IterativeLookupTests(SynchronousTestCase):
    def _room(self):
        room = RoomBuilder(V11)
        last = room.standard_room(users={BOB: 50})
        room.join("bob_join", BOB, after=last)
        room.send("pl1", PL, ALICE, room.power_levels({ALICE: 100, BOB: 60}), "", after="bob_join")
        return room

    def test_fallback_keeps_the_last_listed_event_of_a_key(self):
        """When an event lists two auth events of one key, and one of them twice, the
        fallback uses the one listed last, whether read from the graph's edges or id by
        id (the edges drop the repetition, so they are not used then)."""
        room = self._room()
        for auth, expected in ((["pl0", "pl1", "pl0"], "pl0"), (["pl1", "pl0"], "pl0"),
                               (["pl0", "pl1"], "pl1")):
            name = "t_" + "_".join(auth)
            room.send(name, TOPIC, BOB, {"topic": name}, "", after="pl1",
                      auth=["create", "bob_join", *auth])
            graph = AuthGraph(room.get_event)
            ev = room.ev(name)
            for node in (graph.node(ev.event_id), None):
                fb = auth_event_fallback(V11, graph, ev, node)
                self.assertEqual(fb[(PL, "")].event_id, room.id(expected), (auth, node))

    def test_fallback_skips_rejected_and_missing_auth_events(self):
        """Rejected and missing auth events are never fallen back on, read either way."""
        room = self._room()
        room.send("t", TOPIC, BOB, {"topic": "t"}, "", after="pl1",
                  auth=["create", "bob_join", "pl0", "pl1"])
        room.ev("pl1").rejected_reason = "test"
        graph = AuthGraph(room.get_event)
        ev = room.ev("t")
        for node in (graph.node(ev.event_id), None):
            fb = auth_event_fallback(V11, graph, ev, node)
            self.assertEqual(fb[(PL, "")].event_id, room.id("pl0"))
        events = dict(room.events)
        del events[room.id("pl0")]
        graph = AuthGraph(events.__getitem__)
        for node in (graph.node(ev.event_id), None):
            self.assertNotIn((PL, ""), auth_event_fallback(V11, graph, ev, node))

    def test_admitted_events_are_seen_by_later_checks(self):
        """Within one run of the iterative auth checks, a check sees what earlier checks
        admitted even for a key an earlier check had already looked up: Bob's join is
        replayed and admitted, then his leave (which reads his membership), then his
        topic from the other fork, which must see him gone and is refused."""
        for rv in (V10, V11, V12):
            room = RoomBuilder(rv)
            last = room.standard_room(users={BOB: 50})  # Bob may set the topic
            room.join("bob_join", BOB, after=last)
            room.send("bob_leave", MEMBER, BOB, {"membership": "leave"}, BOB, after="bob_join")
            room.send("bob_topic", TOPIC, BOB, {"topic": "b"}, "", after="bob_join",
                      ts=room.ts + 10)
            sets = [room.state("bob_leave"), room.state("bob_topic")]
            engine = AuthEngine(make_plugin_manager(load_entrypoints=False))
            for order in (None, room.auth_order):
                out = resolve_state(rv, sets, room.get_event,
                                    lambda e, s: engine.check_against_state(e, s).allowed,
                                    auth_order=order)
                self.assertEqual(out[(MEMBER, BOB)], room.id("bob_leave"), rv.identifier)
                self.assertNotIn((TOPIC, ""), out, rv.identifier)

    def test_shared_lookups_follow_the_state(self):
        """Views sharing one lookup cache (and, from room v12, finding the create event
        without building the fallbacks) answer like views without either, as the partial
        state changes: rejected entries fall back to the event's own auth events; an
        event citing a create event falls back on it, and a rejected create event is never
        used."""
        for rv in (V11, V12):
            for cites_create, create_rejected in ((False, False), (True, False), (False, True)):
                room = RoomBuilder(rv)
                last = room.standard_room(users={BOB: 50})
                room.join("bob_join", BOB, after=last)
                room.send("pl1", PL, ALICE, room.power_levels({ALICE: 100, BOB: 60}), "",
                          after="bob_join")
                auth = ["bob_join", "pl1"] + (["create"] if cites_create else [])
                room.send("t", TOPIC, BOB, {"topic": "t"}, "", after="pl1", auth=auth)
                room.ev("pl1").rejected_reason = "test"
                if create_rejected:
                    room.ev("create").rejected_reason = "test"
                self._compare_views(rv, room, (rv.identifier, cites_create, create_rejected))

    def _compare_views(self, rv, room, label):
        graph = AuthGraph(room.get_event)
        ev = room.ev("t")
        n = graph.node(ev.event_id)
        partial = {k: v for k, v in room.state("jr0").items() if k[0] != "m.room.create"}
        shared: dict = {}
        keys = [(PL, ""), (MEMBER, BOB), (MEMBER, ALICE), ("m.room.create", ""), (TOPIC, "")]
        for step in (None, "pl1", "bob_join", "pl0"):
            if step is not None:
                e = room.ev(step)
                partial[(e.type, e.state_key)] = e.event_id
                shared.pop((e.type, e.state_key), None)  # as iterative_auth_checks updates it
                if e.rejected_reason is None:
                    shared[(e.type, e.state_key)] = e
            fresh = AuthStateView(partial, None, graph, rv, ev)
            cached = AuthStateView(partial, None, graph, rv, ev, n, shared)
            for k in keys:
                self.assertIs(cached.get(k), fresh.get(k), (label, step, k))
            self.assertEqual(dict(cached), dict(fresh), (label, step))
            create = fresh.get(("m.room.create", ""))
            if room.ev("create").rejected_reason is not None:
                self.assertIsNone(create, label)
            elif label[1] or rv.room_id_from_create_event:
                self.assertIs(create, room.ev("create"), label)


_DENY_BOB_TOPICS = '''
from fedserver.auth.hookspecs import hookimpl
from fedserver.auth.verdict import Deny

@hookimpl
def fedserver_auth_event(event, auth_state, room_version):
    if event.type == "m.room.topic" and event.sender == "@bob:b.test":
        return Deny("no topics from bob", "test/no-bob-topics")
    return None
'''


class LateVetoTests(SynchronousTestCase):
    def test_plugin_registered_after_start_vetoes_in_state_resolution(self):
        """A plugin registered on the running server's plugin manager after the engine was
        built and used (as a plugin's fedserver_on_start does; the service then calls
        reload_hooks) takes part in state resolution: the event it vetoes is no longer
        resolved in, and the direct calls of the built-in rules do not bypass it."""
        room = RoomBuilder(V12)
        last = room.standard_room(users={BOB: 50})
        room.join("bob_join", BOB, after=last)
        room.send("topic_a", TOPIC, ALICE, {"topic": "a"}, "", after="bob_join")
        room.send("topic_b", TOPIC, BOB, {"topic": "b"}, "", after="bob_join", ts=room.ts + 50)
        sets = [room.state("topic_a"), room.state("topic_b")]
        pm = make_plugin_manager(load_entrypoints=False)
        engine = AuthEngine(pm)

        def check(e, s):
            return engine.check_against_state(e, s).allowed

        for order in (None, room.auth_order):
            before = resolve_state(V12, sets, room.get_event, check, auth_order=order)
            self.assertEqual(before[(TOPIC, "")], room.id("topic_b"))
        module = types.ModuleType("late_veto")
        exec(_DENY_BOB_TOPICS, module.__dict__)
        pm.register(module, name="late_veto")
        engine.reload_hooks()
        self.assertEqual(
            engine.check_against_state(room.ev("topic_b"), _as_events(room, sets[1])).denials,
            (Deny("no topics from bob", "test/no-bob-topics", "late_veto"),),
        )
        for order in (None, room.auth_order):
            after = resolve_state(V12, sets, room.get_event, check, auth_order=order)
            self.assertEqual(after[(TOPIC, "")], room.id("topic_a"))


class VerdictTests(SynchronousTestCase):
    def test_deny_and_result_are_still_frozen_dataclasses(self):
        """Deny and AuthResult, built through their slots, keep what their dataclass
        promised: defaults, equality, hashing, repr, dataclasses.replace and
        immutability."""
        import dataclasses

        from fedserver.auth.verdict import ALLOWED, AuthResult

        d = Deny("r", "v12 5.3.7")
        self.assertEqual(d.plugin, "")
        self.assertEqual(d, Deny("r", "v12 5.3.7", ""))
        self.assertNotEqual(d, Deny("r", "v12 5.3.7", "p"))
        self.assertEqual(hash(d), hash(Deny("r", "v12 5.3.7")))
        self.assertEqual(repr(d), "Deny(reason='r', rule='v12 5.3.7', plugin='')")
        self.assertEqual(dataclasses.replace(d, plugin="p"), Deny("r", "v12 5.3.7", "p"))
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, d, "reason", "x")
        result = AuthResult(False, (d,))
        self.assertEqual((result.allowed, result.rule, result.reason), (False, "v12 5.3.7", "r"))
        self.assertEqual(result, AuthResult.deny(d))
        self.assertEqual(AuthResult(True), ALLOWED)
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, result, "allowed", True)


class AuthDifferenceByOrderTests(SynchronousTestCase):
    def test_same_difference_as_the_walks(self):
        """The auth difference computed with auth orders (events every set holds fetched
        only when the walk reaches them) equals the one computed by full walks, on random
        rooms of two and three forks, also with events missing."""
        compared = 0
        for rv in (V10, V11, V12):
            for seed in range(8):
                for forks in (2, 3):
                    rng = random.Random(1000 + seed)
                    room, heads = random_room(rv, rng, forks, 10)
                    sets = [room.state(h) for h in heads]
                    events = dict(room.events)
                    if seed % 2:
                        for eid in rng.sample(sorted(events), 3):
                            del events[eid]
                    walked = AuthGraph(events.__getitem__)
                    ordered = AuthGraph(events.__getitem__, auth_order=room.auth_order)
                    expected = {walked.ids[n] for n in walked.auth_difference(sets)}
                    got = {ordered.ids[n] for n in ordered.auth_difference(sets)}
                    self.assertEqual(got, expected, (rv.identifier, seed, forks))
                    compared += bool(expected)
        self.assertGreater(compared, 30)
