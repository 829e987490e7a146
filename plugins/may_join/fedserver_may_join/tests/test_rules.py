"""The may_join rules on real signed events with fedserver's real auth engine."""

from __future__ import annotations

from dataclasses import fields

from signedjson.key import generate_signing_key
from twisted.trial.unittest import SynchronousTestCase

import fedserver_may_join
from fedserver.auth import AuthEngine, make_plugin_manager
from fedserver.auth.plugins import registered_room_versions
from fedserver.auth.selection import select_auth_events
from fedserver.events.builder import build_event
from fedserver.events.model import Event
from fedserver.events.redaction import redact
from fedserver.room_versions import SPEC_ROOM_VERSIONS, V10, V12, RoomVersion

ALICE = "@alice:a.test"
BOB = "@bob:b.test"
CAROL = "@carol:c.test"
MAY_JOIN = fedserver_may_join.MAY_JOIN_V12
KEYS = {server: generate_signing_key("k") for server in ("a.test", "b.test", "c.test")}


class Room:
    """A room built event by event, each signed by its sender's server, with the real
    auth events selection; ``state`` maps ``(type, state_key)`` to events."""

    def __init__(self, rv: RoomVersion, join_rules: dict):
        self.rv = rv
        self.state: dict[tuple[str, str], Event] = {}
        self.depth = 0
        self.last: list[str] = []
        content = {"room_version": rv.identifier}
        if not rv.implicit_room_creator:
            content["creator"] = ALICE
        self.room_id = None if rv.room_id_from_create_event else "!room:a.test"
        self.create = self.event("m.room.create", ALICE, content, "", room_id=self.room_id)
        self.room_id = self.create.room_id
        self.add(self.create)
        self.add(self.event("m.room.member", ALICE, {"membership": "join"}, ALICE))
        self.add(self.event("m.room.power_levels", ALICE, {"users": {} if rv.privileged_creators else {ALICE: 100}}, ""))
        self.add(self.event("m.room.join_rules", ALICE, join_rules, ""))

    def event(self, type: str, sender: str, content: dict, state_key=None, *, room_id="") -> Event:
        server = sender.split(":", 1)[1]
        self.depth += 1
        ids = {k: e.event_id for k, e in self.state.items()}
        auth = select_auth_events(self.rv, {"type": type, "state_key": state_key, "sender": sender, "content": content}, ids)
        return build_event(
            self.rv, room_id=self.room_id if room_id == "" else room_id, type=type, sender=sender, content=content,
            state_key=state_key, prev_event_ids=self.last, auth_event_ids=auth, depth=self.depth,
            origin_server_ts=self.depth, server_name=server, signing_key=KEYS[server],
        )

    def add(self, event: Event) -> Event:
        self.state[(event.type, event.state_key)] = event
        self.last = [event.event_id]
        return event

    def join(self, user: str) -> Event:
        return self.event("m.room.member", user, {"membership": "join"}, user)


class MayJoinRulesTests(SynchronousTestCase):
    """Who may join a room of ``org.fedserver.may_join.12`` under join rule
    ``org.fedserver.may_join``, and what the rule leaves alone."""

    def setUp(self):
        self.pm = make_plugin_manager(load_entrypoints=False, module_paths=["fedserver_may_join"])
        self.engine = AuthEngine(self.pm)

    def check(self, room: Room, event: Event):
        """The verdict both ways the server judges an event: against its cited auth
        events (receipt check 4) and against the room state (checks 5 and 6)."""
        by_id = {e.event_id: e for e in room.state.values()}
        cited = [by_id[a] for a in event.auth_event_ids]
        first = self.engine.check(event, cited, create_event=room.create)
        second = self.engine.check_against_state(event, room.state, create_event=room.create)
        self.assertEqual((first.allowed, first.rule), (second.allowed, second.rule))
        return second

    def test_listed_user_joins_uninvited(self):
        """A user listed in ``may_join`` joins without an invite; the join is then
        theirs to keep (a later profile change is a join too)."""
        room = Room(MAY_JOIN, {"join_rule": "org.fedserver.may_join", "may_join": [BOB]})
        join = room.join(BOB)
        self.assertTrue(self.check(room, join).allowed)
        room.add(join)
        rename = room.event("m.room.member", BOB, {"membership": "join", "displayname": "Bob"}, BOB)
        self.assertTrue(self.check(room, rename).allowed)

    def test_unlisted_user_refused(self):
        """Users not in the list are refused by the spec's final "Otherwise, reject" of
        the join rules (rule 5.3.7 of the v12 text), naming no plugin."""
        room = Room(MAY_JOIN, {"join_rule": "org.fedserver.may_join", "may_join": [BOB]})
        result = self.check(room, room.join(CAROL))
        self.assertFalse(result.allowed)
        self.assertEqual(result.rule, "org.fedserver.may_join.12 5.3.7")

    def test_invited_user_joins_and_removal_from_list_keeps_members(self):
        """As under the invite rule, an invited user may join although unlisted, and a
        member taken off the list stays joined and may update their membership."""
        room = Room(MAY_JOIN, {"join_rule": "org.fedserver.may_join", "may_join": [BOB]})
        room.add(room.event("m.room.member", ALICE, {"membership": "invite"}, CAROL))
        carol = room.join(CAROL)
        self.assertTrue(self.check(room, carol).allowed)
        room.add(carol)
        room.add(room.join(BOB))
        room.add(room.event("m.room.join_rules", ALICE, {"join_rule": "org.fedserver.may_join", "may_join": []}, ""))
        rename = room.event("m.room.member", BOB, {"membership": "join", "displayname": "still here"}, BOB)
        self.assertTrue(self.check(room, rename).allowed)

    def test_banned_listed_user_refused(self):
        """A ban still wins: the spec's "sender is banned" comes before the join rule."""
        room = Room(MAY_JOIN, {"join_rule": "org.fedserver.may_join", "may_join": [BOB]})
        room.add(room.event("m.room.member", ALICE, {"membership": "ban"}, BOB))
        result = self.check(room, room.join(BOB))
        self.assertFalse(result.allowed)
        self.assertEqual(result.rule, "org.fedserver.may_join.12 5.3.3")

    def test_join_for_someone_else_refused(self):
        """Being listed does not let anyone join on the listed user's behalf (the spec's
        "sender does not match state_key" comes first)."""
        room = Room(MAY_JOIN, {"join_rule": "org.fedserver.may_join", "may_join": [BOB, CAROL]})
        forged = room.event("m.room.member", CAROL, {"membership": "join"}, BOB)
        self.assertFalse(self.check(room, forged).allowed)

    def test_spec_versions_unaffected(self):
        """In spec room versions the same join rules admit nobody uninvited, plugin
        loaded or not, and a malformed list there is nobody's business but the spec's."""
        for rv in (V12, V10):
            room = Room(rv, {"join_rule": "org.fedserver.may_join", "may_join": [BOB]})
            self.assertFalse(self.check(room, room.join(BOB)).allowed, rv.identifier)
            odd = room.event("m.room.join_rules", ALICE, {"join_rule": "org.fedserver.may_join", "may_join": "all"}, "")
            self.assertTrue(self.check(room, odd).allowed, rv.identifier)

    def test_malformed_list_rejected(self):
        """In the plugin's version a may_join join rules event must list valid user ids
        (the denial names the plugin); other join rules need no list."""
        room = Room(MAY_JOIN, {"join_rule": "invite"})
        for bad in ("everyone", [BOB, "carol"], [BOB, 5], None):
            content = {"join_rule": "org.fedserver.may_join"}
            if bad is not None:
                content["may_join"] = bad
            result = self.check(room, room.event("m.room.join_rules", ALICE, content, ""))
            self.assertEqual([(d.rule, d.plugin) for d in result.denials],
                             [("org.fedserver.may_join 1", "fedserver_may_join")], repr(bad))
        good = room.event("m.room.join_rules", ALICE, {"join_rule": "org.fedserver.may_join", "may_join": []}, "")
        self.assertTrue(self.check(room, good).allowed)
        self.assertTrue(self.check(room, room.event("m.room.join_rules", ALICE, {"join_rule": "public"}, "")).allowed)

    def test_redacted_join_rules_list_nobody(self):
        """Redaction keeps ``join_rule`` but strips ``may_join`` (same on every server):
        after it only invited users may join."""
        room = Room(MAY_JOIN, {"join_rule": "org.fedserver.may_join", "may_join": [BOB]})
        key = ("m.room.join_rules", "")
        rules = room.state[key]
        room.state[key] = Event.from_pdu(redact(rules.pdu, MAY_JOIN), MAY_JOIN, rules.event_id)
        self.assertEqual(room.state[key].content, {"join_rule": "org.fedserver.may_join"})
        self.assertFalse(self.check(room, room.join(BOB)).allowed)

    def test_without_the_plugin_nobody_joins(self):
        """A server whose engine knows the version but not the plugin's rule refuses the
        listed user: the rule lives in the plugin, so rooms of this version need it on
        every server (which the version ensures)."""
        pm = make_plugin_manager(load_entrypoints=False)
        engine = AuthEngine(pm, registry_with(MAY_JOIN))
        room = Room(MAY_JOIN, {"join_rule": "org.fedserver.may_join", "may_join": [BOB]})
        self.assertFalse(engine.check_against_state(room.join(BOB), room.state, create_event=room.create).allowed)


class RoomVersionTests(SynchronousTestCase):
    """The version the plugin registers."""

    def test_registered_and_namespaced(self):
        """Loading the plugin adds exactly ``org.fedserver.may_join.12``: unstable, and
        room v12 in every flag but the identifier."""
        pm = make_plugin_manager(load_entrypoints=False, module_paths=["fedserver_may_join"])
        (rv,) = registered_room_versions(pm)
        self.assertEqual(rv.identifier, "org.fedserver.may_join.12")
        self.assertFalse(rv.stable)
        self.assertNotIn(rv.identifier, {v.identifier for v in SPEC_ROOM_VERSIONS})
        for f in fields(RoomVersion):
            if f.name not in ("identifier", "stable"):
                self.assertEqual(getattr(rv, f.name), getattr(V12, f.name), f.name)

    def test_installed_entry_point(self):
        """The installed distribution advertises the plugin as entry point ``may_join`` in
        group ``fedserver``, which the server loads by default."""
        pm = make_plugin_manager(load_entrypoints=True)
        self.assertIs(pm.get_plugin("may_join"), fedserver_may_join_module())
        self.assertIn(MAY_JOIN, registered_room_versions(pm))


def fedserver_may_join_module():
    import importlib

    return importlib.import_module("fedserver_may_join")


def registry_with(rv: RoomVersion):
    from fedserver.room_versions import RoomVersionRegistry

    return RoomVersionRegistry([rv])
