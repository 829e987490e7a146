"""The auth engine's plumbing: auth events selection, power level parsing, rule
numbering per room version, the parsed power levels cache, and the two entry points."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from fedserver.auth.engine import AuthEngine
from fedserver.auth.plugins import make_plugin_manager
from fedserver.auth.power_levels import PowerLevels, parse_level
from fedserver.auth.rule_ids import rule_id
from fedserver.auth.selection import auth_types_for_event, select_auth_events
from fedserver.room_versions import SPEC_ROOM_VERSIONS, V1, V3, V5, V6, V7, V8, V9, V10, V11, V12
from tests.test_auth_fixtures import ALICE, BOB, CAROL, AuthAssertions, Room, make_event

CREATE = ("m.room.create", "")
PL = ("m.room.power_levels", "")
JR = ("m.room.join_rules", "")


def member(user):
    return ("m.room.member", user)


class SelectionTests(SynchronousTestCase):
    """Auth events selection (server-server API)."""

    def test_create_has_no_auth_events(self):
        """"The auth_events for the m.room.create event in a room is empty"."""
        for rv in SPEC_ROOM_VERSIONS:
            self.assertEqual(auth_types_for_event(rv, "m.room.create", "", ALICE, {}), set())

    def test_ordinary_event(self):
        """The create event (not from v12), the power levels and the sender's
        membership."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                expected = {PL, member(ALICE)}
                if not rv.room_id_from_create_event:
                    expected.add(CREATE)
                self.assertEqual(auth_types_for_event(rv, "m.room.message", None, ALICE, {}), expected)

    def test_membership_events(self):
        """Member events add the target's membership, the join rules for join, invite and
        knock, the third-party invite named by the token for invites, and the authorising
        user's membership for joins in versions with restricted rooms."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                base = {PL, member(ALICE), member(BOB)}
                if not rv.room_id_from_create_event:
                    base.add(CREATE)
                for membership in ("join", "invite", "knock"):
                    got = auth_types_for_event(rv, "m.room.member", BOB, ALICE, {"membership": membership})
                    self.assertEqual(got, base | {JR})
                for membership in ("leave", "ban", None):
                    got = auth_types_for_event(rv, "m.room.member", BOB, ALICE, {"membership": membership})
                    self.assertEqual(got, base)
                tpi = {"membership": "invite",
                       "third_party_invite": {"signed": {"token": "abc", "mxid": BOB}}}
                got = auth_types_for_event(rv, "m.room.member", BOB, ALICE, tpi)
                self.assertEqual(got, base | {JR, ("m.room.third_party_invite", "abc")})
                via = {"membership": "join", "join_authorised_via_users_server": CAROL}
                got = auth_types_for_event(rv, "m.room.member", BOB, BOB, via)
                expected = base - {member(ALICE)} | {member(BOB), JR}
                if rv.restricted_joins:
                    expected.add(member(CAROL))
                self.assertEqual(got, expected)
                # Only joins cite the authorising user.
                via_invite = dict(via, membership="invite")
                self.assertNotIn(member(CAROL), auth_types_for_event(
                    rv, "m.room.member", BOB, ALICE, via_invite))

    def test_malformed_content_tolerated(self):
        """Fields of the wrong type are ignored by the selection (the rules reject them)."""
        for content in ({"membership": "invite", "third_party_invite": "x"},
                        {"membership": "invite", "third_party_invite": {"signed": []}},
                        {"membership": "invite", "third_party_invite": {"signed": {"token": 5}}},
                        {"membership": "join", "join_authorised_via_users_server": 5}):
            got = auth_types_for_event(V12, "m.room.member", BOB, BOB, content)
            self.assertEqual(got, {PL, member(BOB), JR})

    def test_select_auth_events(self):
        """``select_auth_events`` lists the ids present in the state in a stable order
        (create, power levels, join rules, members), leaving out what does not exist."""
        room = Room(V11).standard()
        ids = select_auth_events(V11, {"type": "m.room.member", "state_key": BOB,
                                       "sender": BOB, "content": {"membership": "join"}},
                                 room.state)
        self.assertEqual(ids, [room.state[k].event_id for k in (CREATE, PL, JR)])
        as_ids = {k: v.event_id for k, v in room.state.items()}
        fields = {"type": "m.room.message", "sender": ALICE, "content": {}}
        self.assertEqual(select_auth_events(V11, fields, as_ids),
                         [as_ids[CREATE], as_ids[PL], as_ids[member(ALICE)]])


class ParseLevelTests(SynchronousTestCase):
    """Power level values per room version."""

    def test_integers(self):
        """JSON integers are levels in every version; booleans never are."""
        for rv in SPEC_ROOM_VERSIONS:
            self.assertEqual(parse_level(-5, rv), -5)
            self.assertIsNone(parse_level(True, rv))
            self.assertIsNone(parse_level(None, rv))

    def test_stringy(self):
        """v1-v9: "a single base 10 integer ... optionally with any number of leading
        zeroes", "optionally prefixed with a single - or +", "optionally with any number
        of leading or trailing whitespace characters". v10+: no strings."""
        good = {"100": 100, "000100": 100, "+100": 100, "-100": -100, " 100 ": 100,
                " 00100 ": 100, " +100 ": 100, "\t-1\n": -1}
        bad = ["", "1.5", "1e3", "1_000", "++1", "+-1", "0x10", "\u0661\u0662", "10 0", " "]
        for rv in (V1, V5, V9):
            for text, value in good.items():
                self.assertEqual(parse_level(text, rv), value, text)
            for text in bad:
                self.assertIsNone(parse_level(text, rv), text)
        for rv in (V10, V12):
            self.assertIsNone(parse_level("100", rv))

    def test_floats(self):
        """Floats are truncated where the version accepts non-integers; non-finite
        floats never count."""
        self.assertEqual(parse_level(50.9, V1), 50)
        self.assertEqual(parse_level(-50.9, V1), -50)
        self.assertIsNone(parse_level(float("inf"), V1))
        self.assertIsNone(parse_level(float("nan"), V1))
        self.assertIsNone(parse_level(50.0, V10))

    def test_defaults(self):
        """Defaults: users_default 0, events_default 0, state_default 50, ban, kick,
        redact 50, invite 0, notifications.room 50; unreadable values fall back."""
        pl = PowerLevels.from_content(None, V12)
        self.assertEqual(
            (pl.users_default, pl.events_default, pl.state_default, pl.ban, pl.kick,
             pl.redact, pl.invite, pl.notifications),
            (0, 0, 50, 50, 50, 50, 0, {"room": 50}))
        pl = PowerLevels.from_content({"ban": "x", "users": {BOB: "7", CAROL: "y"}}, V1)
        self.assertEqual((pl.ban, pl.users), (50, {BOB: 7}))


class RuleIdTests(SynchronousTestCase):
    """Rule labels follow each version's own numbering."""

    def test_numbering(self):
        """Spot checks against the spec's text for each group of versions."""
        cases = [
            (V1, ("member", "join", "banned"), "v1 5.2.3"),
            (V6, ("member", "join", "banned"), "v6 4.2.3"),
            (V7, ("member", "knock", "join_rule"), "v7 4.6.1"),
            (V8, ("member", "join", "restricted", "authoriser"), "v8 4.3.5.2"),
            (V12, ("member", "join", "restricted", "authoriser"), "v12 5.3.5.2"),
            (V1, ("redaction", "otherwise"), "v1 11.3"),
            (V5, ("power_levels", "users_added"), "v5 10.7"),
            (V10, ("power_levels", "users_added"), "v10 9.9"),
            (V12, ("power_levels", "creators"), "v12 10.4"),
            (V12, ("power_levels", "users_added"), "v12 10.10"),
            (V11, ("create", "room_version"), "v11 1.3"),
            (V12, ("create", "additional_creators"), "v12 1.4"),
            (V11, ("auth_events", "room_create"), "v11 2.4"),
            (V12, ("room_create",), "v12 2"),
            (V12, ("auth_events", "same_room"), "v12 3.5"),
            (V1, ("auth_events", "same_room"), "v1 2.5"),
            (V11, ("auth_events", "same_room"), "v11 2.5"),
            (V12, ("state_key",), "v12 9"),
        ]
        for rv, names, label in cases:
            self.assertEqual(rule_id(rv, *names), label)

    def test_custom_version_label(self):
        """A plugin's version keeps its base version's numbering under its identifier."""
        self.assertEqual(rule_id(V12.derive("org.example.x"), "member", "join", "banned"),
                         "org.example.x 5.3.3")

    def test_rules_missing_from_a_version(self):
        """Asking for a rule a version does not have is a programming error."""
        self.assertRaises(KeyError, rule_id, V6, "aliases")
        self.assertRaises(KeyError, rule_id, V3, "redaction")
        self.assertRaises(KeyError, rule_id, V11, "power_levels", "creators")


class EngineTests(SynchronousTestCase, AuthAssertions):
    """Entry points and caching."""

    def test_power_levels_parsed_once(self):
        """Power levels are parsed once per power levels event, however many checks use
        them (the engine keeps them by event id)."""
        engine = AuthEngine(make_plugin_manager(load_entrypoints=False))
        room = Room(V12, engine=engine).standard()
        room.join(BOB)
        calls = []
        original = PowerLevels.from_content.__func__

        def counting(cls, content, rv):
            calls.append(content)
            return original(cls, content, rv)

        self.patch(PowerLevels, "from_content", classmethod(counting))
        events = [room.message(BOB) for _ in range(50)]
        for ev in events:
            self.assertAllowed(room.check(ev))
        self.assertEqual(len(calls), 1)

    def test_power_levels_cache_keyed_by_content_too(self):
        """Two power levels events may share an event id (it hashes the redacted event)
        while differing in what redaction drops: before v11 the invite level.  One
        engine judges an invite under each by its own content, not the first it saw."""
        engine = AuthEngine(make_plugin_manager(load_entrypoints=False))
        verdicts = []
        for invite in (0, 100):
            room = Room(V10, engine=engine)
            room.join(ALICE)
            pl = room.power_levels({"users": {ALICE: 100, BOB: 50}, "invite": invite})
            pl = make_event(V10, "$same-id:a.example", pl.type, pl.sender, room_id=room.room_id,
                            content=pl.content, state_key="")
            room.add(pl)
            room.add(room.join_rules("public"))
            room.join(BOB)
            verdicts.append(room.check(room.member(CAROL, "invite", sender=BOB)).allowed)
        self.assertEqual(verdicts, [True, False])

    def test_state_check_selects_from_state(self):
        """``check_against_state`` judges against the state, whatever the event cites:
        an event citing nothing passes if the state allows it, and a ban in the state
        applies even if the event cites the older join."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard()
                room.join(BOB)
                ev = room.message(BOB)
                ev.pdu["auth_events"] = []
                self.assertAllowed(room.engine.check_against_state(ev, room.state))
                cited = room.auth_events_of(room.message(BOB))
                room.add(room.member(BOB, "ban", sender=ALICE))
                msg = room.message(BOB)
                self.assertAllowed(room.engine.check(msg, cited, create_event=room.create))
                self.assertDenied(room.engine.check_against_state(msg, room.state))

    def test_room_version_argument(self):
        """The room version to judge under may be given explicitly; by default it is the
        event's."""
        room = Room(V11).standard()
        room.join(BOB)
        ev = room.member(CAROL, "knock")
        self.assertDenied(room.engine.check_against_state(ev, room.state))
        self.assertDenied(room.engine.check_against_state(ev, room.state, V6), "v6 4.6")
