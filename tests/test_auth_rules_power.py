"""Auth rules for ordinary events: sender in room (6), m.room.third_party_invite (7),
required power level (8), state_key ownership (9), m.room.power_levels (10) and v1-v2
redactions (11), in every room version."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from fedserver.room_versions import SPEC_ROOM_VERSIONS, V12
from tests.test_auth_fixtures import ALICE, BOB, CAROL, DAVE, AuthAssertions, Room, pick

SENDER_IN_ROOM = {"1-5": "6", "6-11": "5", "12": "6"}
TPI = {"1-5": "7.1", "6-11": "6.1", "12": "7.1"}
EVENT_POWER = {"1-5": "8", "6-11": "7", "12": "8"}
STATE_KEY = {"1-5": "9", "6-11": "8", "12": "9"}
PL = {"1-5": "10", "6-11": "9", "12": "10"}


def pl_rule(rv, name):
    """The number of a power levels sub-rule: v10+ insert two type checks before the
    users check, v12 one creators check after it."""
    order = ["users", "no_previous", "scalars", "maps_removed", "maps_added",
             "users_removed", "users_added"]
    if rv.privileged_creators:
        order.insert(1, "creators")
    if rv.integer_power_levels:
        order = ["scalar_types", "map_types"] + order
    return pick(rv, {k: f"{v}.{order.index(name) + 1}" for k, v in PL.items()})


def users(rv, mapping):
    """Power levels ``users`` without the v12 creator (who may not be listed)."""
    if rv.privileged_creators:
        return {u: v for u, v in mapping.items() if u != ALICE}
    return mapping


class SenderInRoomTests(SynchronousTestCase, AuthAssertions):
    """Rule 6: If the sender's current membership state is not join, reject."""

    def test_sender_must_be_joined(self):
        """Non-members, invitees, leavers and banned users cannot send events;
        joined members can."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard()
                label = pick(rv, SENDER_IN_ROOM)
                self.assertDenied(room.check(room.message(BOB)), label)
                room.add(room.member(BOB, "invite", sender=ALICE))
                self.assertDenied(room.check(room.message(BOB)), label)
                room.join(BOB)
                self.assertAllowed(room.check(room.message(BOB)))
                room.add(room.member(BOB, "leave"))
                self.assertDenied(room.check(room.message(BOB)), label)


class ThirdPartyInviteEventTests(SynchronousTestCase, AuthAssertions):
    """Rule 7: If type is m.room.third_party_invite: Allow if and only if sender's
    current power level is greater than or equal to the invite level."""

    def test_invite_level(self):
        """Below the invite level: rejected; at it: allowed, even though the state
        default (50) is above the sender's level (rule 8 is never reached)."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard(pl_users=users(rv, {ALICE: 100, BOB: 10}),
                                         pl_extra={"invite": 10})
                room.join(BOB)
                room.join(CAROL)
                content = {"display_name": "x", "public_key": "AAAA"}
                ok = room.event("m.room.third_party_invite", BOB, content, "t1")
                self.assertAllowed(room.check(ok))
                bad = room.event("m.room.third_party_invite", CAROL, content, "t2")
                self.assertDenied(room.check(bad), pick(rv, TPI))


class EventPowerTests(SynchronousTestCase, AuthAssertions):
    """Rule 8: If the event type's required power level is greater than the sender's
    power level, reject."""

    def test_required_levels(self):
        """``events`` entries win; else state_default for state events and
        events_default for the others."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard(
                    pl_users=users(rv, {ALICE: 100, BOB: 20}),
                    pl_extra={"events_default": 10, "state_default": 30,
                              "events": {"m.room.topic": 20, "m.custom": 25}})
                room.join(BOB)
                label = pick(rv, EVENT_POWER)
                self.assertAllowed(room.check(room.event("m.room.topic", BOB, {"topic": "t"}, "")))
                self.assertDenied(room.check(room.event("m.room.name", BOB, {"name": "n"}, "")), label)
                self.assertAllowed(room.check(room.message(BOB)))
                self.assertDenied(room.check(room.event("m.custom", BOB, {})), label)
                room.join(CAROL)
                self.assertDenied(room.check(room.message(CAROL)), label)

    def test_defaults_without_power_levels(self):
        """With no power levels event "the room's creator has a power level of 100, and
        all other users have a power level of 0"; state_default is 50 and
        events_default 0."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv)
                room.join(ALICE)
                room.add(room.join_rules("public"))
                room.join(BOB)
                self.assertAllowed(room.check(room.message(BOB)))
                self.assertDenied(room.check(room.event("m.room.topic", BOB, {}, "")),
                                  pick(rv, EVENT_POWER))
                self.assertAllowed(room.check(room.event("m.room.topic", ALICE, {}, "")))

    def test_stringy_levels(self):
        """Before v10 power levels may be strings holding integers ("m.room.power_levels
        events accept values as strings"); they count as those integers."""
        for rv in SPEC_ROOM_VERSIONS[:9]:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard(pl_users={ALICE: "100", BOB: " +020 "},
                                         pl_extra={"events": {"m.room.topic": "020"}})
                room.join(BOB)
                self.assertAllowed(room.check(room.event("m.room.topic", BOB, {}, "")))
                room.join(CAROL)
                self.assertDenied(room.check(room.event("m.room.topic", CAROL, {}, "")),
                                  pick(rv, EVENT_POWER))


class StateKeyTests(SynchronousTestCase, AuthAssertions):
    """Rule 9: If the event has a state_key that starts with an @ and does not match the
    sender, reject."""

    def test_user_state_keys(self):
        """A state key naming another user is rejected, the sender's own and non-@ keys
        are fine."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard()
                self.assertDenied(room.check(room.event("m.custom", ALICE, {}, BOB)),
                                  pick(rv, STATE_KEY))
                self.assertAllowed(room.check(room.event("m.custom", ALICE, {}, ALICE)))
                self.assertAllowed(room.check(room.event("m.custom", ALICE, {}, "bob")))


class PowerLevelsTests(SynchronousTestCase, AuthAssertions):
    """Rule 10 (v6-v11: 9): If type is m.room.power_levels."""

    def _room(self, rv, **pl):
        room = Room(rv).standard(pl_users=users(rv, {ALICE: 100, BOB: 50, CAROL: 50}),
                                 pl_extra=pl or None)
        room.join(BOB)
        room.join(CAROL)
        return room

    def _pl(self, room, sender=ALICE, **content):
        base = {"users": users(room.rv, {ALICE: 100, BOB: 50, CAROL: 50})}
        base.update(content)
        return room.power_levels(base, sender=sender)

    def test_v10_integers_only(self):
        """v10+ "If any of the properties users_default, events_default, state_default,
        ban, redact, kick, or invite in content are present and not an integer,
        reject." and "If either of the properties events or notifications in content are
        present and not an object with values that are integers, reject." Before v10,
        strings holding integers are accepted."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = self._room(rv)
                for content in ({"ban": "50"}, {"events": {"m.x": "50"}},
                                {"notifications": {"room": "50"}}):
                    result = room.check(self._pl(room, **content))
                    if rv.integer_power_levels:
                        name = "scalar_types" if "ban" in content else "map_types"
                        self.assertDenied(result, pl_rule(rv, name))
                    else:
                        self.assertAllowed(result)
                result = room.check(self._pl(room, ban=True))
                self.assertDenied(result, pl_rule(rv, "scalar_types" if rv.integer_power_levels else "scalars"))
                result = room.check(self._pl(room, events=[]))
                if rv.integer_power_levels:
                    self.assertDenied(result, pl_rule(rv, "map_types"))
                else:
                    # Before v10 the form of events is not checked: an array lists no
                    # entries, so nothing is added or changed.
                    self.assertAllowed(result)

    def test_non_object_maps_have_no_entries(self):
        """Before v10, an events property that is not an object lists no entries: the
        entries of the previous power levels are removed by it (rule "For each entry
        being changed in, or removed from, the events property: If the current value is
        greater than the sender's current power level, reject"), and event types fall
        back to the defaults when it is in force."""
        for rv in SPEC_ROOM_VERSIONS[:9]:
            with self.subTest(rv=rv.identifier):
                room = self._room(rv)
                room.add(self._pl(room, events={"m.x": 75}))
                # Bob (50) may not remove Alice's 75 by replacing events with a string...
                self.assertDenied(room.check(self._pl(room, sender=BOB, events="none")),
                                  pl_rule(rv, "maps_removed"))
                # ...Alice (100) may; then m.x needs events_default (0) again.
                room.add(self._pl(room, events="none"))
                self.assertAllowed(room.check(room.event("m.x", CAROL, {})))

    def test_non_integer_strings_rejected(self):
        """Before v10 a string value must hold "a single base 10 integer" (sign, leading
        zeroes and surrounding whitespace allowed); anything else cannot be compared with
        the sender's level and is rejected when it changes a previous power levels
        event.  The first power levels event is only checked for users ("If there is no
        previous m.room.power_levels event in the room, allow")."""
        for rv in SPEC_ROOM_VERSIONS[:9]:
            with self.subTest(rv=rv.identifier):
                room = self._room(rv)
                for bad in ("fifty", "5.0", "1_0", "", "\u0665"):
                    self.assertDenied(room.check(self._pl(room, kick=bad)), pl_rule(rv, "scalars"))
                self.assertDenied(room.check(self._pl(room, events={"m.x": "x"})),
                                  pl_rule(rv, "maps_added"))
                self.assertAllowed(room.check(self._pl(room, kick=" -0050 ")))
                first = Room(rv)
                first.join(ALICE)
                self.assertAllowed(first.check(first.power_levels({"kick": "fifty"})))

    def test_notifications_form_before_v6(self):
        """Before v6 notifications play no part in the auth rules, so their form is not
        checked either; from v6 a value that is no integer is rejected."""
        for rv in SPEC_ROOM_VERSIONS[:9]:
            with self.subTest(rv=rv.identifier):
                room = self._room(rv)
                result = room.check(self._pl(room, notifications={"room": "lots"}))
                if rv.limit_notifications_power_levels:
                    self.assertDenied(result, pl_rule(rv, "maps_added"))
                else:
                    self.assertAllowed(result)

    def test_floats_before_v6(self):
        """Before v6 (no strict canonical JSON) a float level is truncated: 50.7 counts
        as 50."""
        for rv in SPEC_ROOM_VERSIONS[:5]:
            with self.subTest(rv=rv.identifier):
                room = self._room(rv)
                self.assertAllowed(room.check(self._pl(room, sender=BOB, users={
                    ALICE: 100, BOB: 50, CAROL: 50, DAVE: 50.7})))

    def test_users_must_be_user_ids_to_integers(self):
        """"If the users property in content is not an object with keys that are valid
        user IDs with values that are integers (or a string that is an integer),
        reject.\""""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = self._room(rv)
                label = pl_rule(rv, "users")
                for bad in ({"bob": 50}, {"@bob": 50}, {BOB: None}, {BOB: [50]}, [BOB]):
                    self.assertDenied(room.check(self._pl(room, users=bad)), label)
                stringy = room.check(self._pl(room, users={BOB: "50"}))
                if rv.integer_power_levels:
                    self.assertDenied(stringy, label)
                else:
                    self.assertAllowed(stringy)

    def test_v12_creators_may_not_be_listed(self):
        """v12 "If the users property in content contains the sender of the
        m.room.create event or any of the additional_creators array (if present) from
        the content of the m.room.create event, reject.\""""
        room = Room(V12, create_content={"additional_creators": [BOB]}).standard(pl_users={})
        room.join(BOB)
        self.assertDenied(room.check(room.power_levels({"users": {ALICE: 100}})), "v12 10.4")
        self.assertDenied(room.check(room.power_levels({"users": {BOB: 100}})), "v12 10.4")
        self.assertAllowed(room.check(room.power_levels({"users": {CAROL: 100}})))

    def test_first_power_levels_allowed(self):
        """"If there is no previous m.room.power_levels event in the room, allow." even
        with levels above the sender's."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv)
                room.join(ALICE)
                pl = room.power_levels({"users": users(rv, {ALICE: 10, BOB: 2**40}), "ban": 9000})
                self.assertAllowed(room.check(pl))

    def test_scalar_changes(self):
        """"For the properties users_default, events_default, state_default, ban,
        redact, kick, invite check if they were added, changed or removed. For each
        found alteration: If the current value is higher than the sender's current
        power level, reject. If the new value is higher than the sender's current power
        level, reject.\""""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                label = pl_rule(rv, "scalars")
                room = self._room(rv, ban=50, redact=60)
                self.assertAllowed(room.check(self._pl(room, sender=BOB, ban=50, redact=60, kick=40)))
                self.assertDenied(room.check(self._pl(room, sender=BOB, ban=51, redact=60)), label)
                self.assertDenied(room.check(self._pl(room, sender=BOB, ban=50, redact=40)), label)
                self.assertDenied(room.check(self._pl(room, sender=BOB, ban=50)), label)
                self.assertAllowed(room.check(self._pl(room, sender=ALICE, ban=99)))

    def test_events_changes(self):
        """"For each entry being changed in, or removed from, the events property: If
        the current value is greater than the sender's current power level, reject."
        and "For each entry being added to, or changed in, the events property: If the
        new value is greater than the sender's current power level, reject.\""""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = self._room(rv, events={"m.high": 70, "m.low": 10})
                self.assertDenied(room.check(self._pl(room, sender=BOB, events={"m.low": 10})),
                                  pl_rule(rv, "maps_removed"))
                self.assertDenied(room.check(self._pl(room, sender=BOB, events={
                    "m.high": 70, "m.low": 51})), pl_rule(rv, "maps_added"))
                self.assertAllowed(room.check(self._pl(room, sender=BOB, events={
                    "m.high": 70, "m.low": 50, "m.new": 50})))

    def test_notifications_changes(self):
        """v6+ the events rules also apply to notifications ("the authorization rules
        for events of type m.room.power_levels now include a notifications property");
        before v6 notifications are not checked."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = self._room(rv, notifications={"room": 70})
                result = room.check(self._pl(room, sender=BOB, notifications={"room": 20}))
                if rv.limit_notifications_power_levels:
                    self.assertDenied(result, pl_rule(rv, "maps_removed"))
                else:
                    self.assertAllowed(result)
                room = self._room(rv)
                result = room.check(self._pl(room, sender=BOB, notifications={"room": 80}))
                if rv.limit_notifications_power_levels:
                    self.assertDenied(result, pl_rule(rv, "maps_added"))
                else:
                    self.assertAllowed(result)

    def test_users_changes(self):
        """"For each entry being changed in, or removed from, the users property, other
        than the sender's own entry: If the current value is greater than or equal to
        the sender's current power level, reject." and "For each entry being added to,
        or changed in, the users property: If the new value is greater than the sender's
        current power level, reject.\""""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = self._room(rv)
                u = lambda m: users(rv, m)  # noqa: E731
                # Demoting a peer at the same level: rejected.
                self.assertDenied(room.check(self._pl(room, sender=BOB, users=u(
                    {ALICE: 100, BOB: 50, CAROL: 0}))), pl_rule(rv, "users_removed"))
                # Demoting oneself: allowed.
                self.assertAllowed(room.check(self._pl(room, sender=BOB, users=u(
                    {ALICE: 100, BOB: 10, CAROL: 50}))))
                # Promoting someone to one's own level: allowed; above: rejected.
                self.assertAllowed(room.check(self._pl(room, sender=BOB, users=u(
                    {ALICE: 100, BOB: 50, CAROL: 50, DAVE: 50}))))
                self.assertDenied(room.check(self._pl(room, sender=BOB, users=u(
                    {ALICE: 100, BOB: 50, CAROL: 50, DAVE: 51}))), pl_rule(rv, "users_added"))
                # Raising oneself: rejected.
                self.assertDenied(room.check(self._pl(room, sender=BOB, users=u(
                    {ALICE: 100, BOB: 60, CAROL: 50}))), pl_rule(rv, "users_added"))
                # Changing only the value representation ("50" for 50) is no change.
                if not rv.integer_power_levels:
                    self.assertAllowed(room.check(self._pl(room, sender=BOB, users=u(
                        {ALICE: 100, BOB: 50, CAROL: "50"}))))

    def test_v12_creator_unbounded(self):
        """v12: a creator's infinite level lets it set any level."""
        room = Room(V12).standard(pl_users={BOB: 2**53 - 1})
        room.join(BOB)
        pl = room.power_levels({"users": {BOB: 0, CAROL: 2**53 - 1}, "ban": 2**53 - 1})
        self.assertAllowed(room.check(pl))


class RedactionTests(SynchronousTestCase, AuthAssertions):
    """v1-v2 rule 11: If type is m.room.redaction."""

    def _redaction(self, room, sender, redacts):
        if room.rv.redacts_in_content:
            return room.event("m.room.redaction", sender, {"redacts": redacts})
        return room.event("m.room.redaction", sender, {}, extra={"redacts": redacts})

    def test_redaction_rule(self):
        """v1-v2: "If the sender's power level is greater than or equal to the redact
        level, allow. If the domain of the event_id of the event being redacted is the
        same as the domain of the event_id of the m.room.redaction, allow. Otherwise,
        reject." From v3 redactions have no auth rule of their own: authorised on use."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard()
                room.join(BOB)
                mine = self._redaction(room, BOB, "$x:b.example")
                theirs = self._redaction(room, BOB, "$x:a.example")
                admin = self._redaction(room, ALICE, "$x:b.example")
                self.assertAllowed(room.check(mine))
                self.assertAllowed(room.check(admin))
                if rv.identifier in ("1", "2"):
                    self.assertDenied(room.check(theirs), f"v{rv.identifier} 11.3")
                else:
                    self.assertAllowed(room.check(theirs))


class UnreadableLevelsTests(SynchronousTestCase, AuthAssertions):
    """Power levels that are absent (null) or not levels at all, as a room's first power
    levels event before v10 may hold them."""

    def _room(self, rv, **levels):
        room = Room(rv)
        room.join(ALICE)
        room.add(room.power_levels({"users": users(rv, {ALICE: 100, BOB: 0}), **levels}))
        room.add(room.join_rules("public"))
        room.join(BOB)
        return room

    def test_null_is_the_default(self):
        """null is "not explicitly supplied": the default applies (invite 0, kick 50,
        events_default 0)."""
        for rv in SPEC_ROOM_VERSIONS[:9]:
            with self.subTest(rv=rv.identifier):
                room = self._room(rv, invite=None, kick=None, events_default=None)
                self.assertAllowed(room.check(room.member(CAROL, "invite", sender=BOB)))
                self.assertAllowed(room.check(room.message(BOB)))
                self.assertDenied(room.check(room.member(ALICE, "leave", sender=BOB)),
                                  pick(rv, {"1-5": "5.4.5", "6-9": "4.4.5" if not rv.restricted_joins else "4.5.5"}))

    def test_unreadable_level_rejects_only_where_read(self):
        """A level that is no power level rejects the events whose rule reads it (under
        that rule's number), and nothing else: an unreadable ban level stops bans, not
        invites or messages."""
        ban = {"1-5": "5.5", "6-7": "4.5", "8-9": "4.6"}
        for rv in SPEC_ROOM_VERSIONS[:9]:
            for junk in ("abc", True, "1.5", [50]):
                with self.subTest(rv=rv.identifier, junk=junk):
                    room = self._room(rv, ban=junk)
                    self.assertDenied(room.check(room.member(BOB, "ban", sender=ALICE)), pick(rv, ban))
                    self.assertAllowed(room.check(room.member(CAROL, "invite", sender=ALICE)))
                    self.assertAllowed(room.check(room.message(BOB)))
                    room = self._room(rv, events_default=junk)
                    self.assertDenied(room.check(room.message(BOB)), pick(rv, EVENT_POWER))

    def test_unchanged_unreadable_values_are_not_compared(self):
        """A power levels change that leaves an unreadable value as it was is judged on
        what it changes; one that alters it is rejected (it cannot be compared)."""
        for rv in SPEC_ROOM_VERSIONS[:9]:
            with self.subTest(rv=rv.identifier):
                room = self._room(rv, ban="abc", events={"m.x": "abc"})
                same = {"users": users(rv, {ALICE: 100, BOB: 10}), "ban": "abc", "events": {"m.x": "abc"}}
                self.assertAllowed(room.check(room.power_levels(same)))
                self.assertDenied(room.check(room.power_levels(dict(same, ban=60))), pl_rule(rv, "scalars"))
                self.assertDenied(room.check(room.power_levels(dict(same, events={}))), pl_rule(rv, "maps_removed"))
