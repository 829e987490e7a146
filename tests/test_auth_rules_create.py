"""Auth rules about the create event, the auth events themselves, m.federate and the
v1-v5 m.room.aliases rule, in every room version."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from fedserver.auth.engine import AuthEngine
from fedserver.auth.plugins import make_plugin_manager
from fedserver.room_versions import SPEC_ROOM_VERSIONS, V11, V12, RoomVersionRegistry
from tests.test_auth_fixtures import (
    ALICE, BOB, CAROL, AuthAssertions, Room, make_event, pick,
)

ENGINE = AuthEngine(make_plugin_manager(load_entrypoints=False))


def create_event(rv, *, content=None, sender=ALICE, prev=(), room_id="default", event_id=None):
    """A create event for ``rv``; ``room_id="default"`` picks the version's usual one."""
    content = dict(content if content is not None else {})
    if rv.room_id_from_create_event:
        rid = None if room_id == "default" else room_id
        eid = event_id or "$create0"
    else:
        rid = "!room:" + sender.split(":", 1)[1] if room_id == "default" else room_id
        eid = event_id or "$create0:" + sender.split(":", 1)[1]
        content.setdefault("creator", sender)
    return make_event(rv, eid, "m.room.create", sender, room_id=rid, content=content,
                      state_key="", prev=list(prev))


class CreateRuleTests(SynchronousTestCase, AuthAssertions):
    """Rule 1: If type is m.room.create."""

    def test_valid_create_allowed(self):
        """"1.5 Otherwise, allow": a create event with no prev_events, a matching room id
        and a known room_version is allowed in every version."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                ev = create_event(rv, content={"room_version": rv.identifier})
                self.assertAllowed(ENGINE.check(ev, []))
                self.assertAllowed(ENGINE.check_against_state(ev, {}))

    def test_prev_events_rejected(self):
        """"1.1 If it has any prev_events, reject."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                ev = create_event(rv, prev=["$other:a.example"])
                self.assertDenied(ENGINE.check(ev, []), f"v{rv.identifier} 1.1")

    def test_room_id_domain_must_match_sender(self):
        """v1-v11 "1.2 If the domain of the room_id does not match the domain of the
        sender, reject."""
        for rv in SPEC_ROOM_VERSIONS[:11]:
            with self.subTest(rv=rv.identifier):
                ev = create_event(rv, room_id="!room:elsewhere.example")
                self.assertDenied(ENGINE.check(ev, []), f"v{rv.identifier} 1.2")
                ev = create_event(rv, room_id="!room:a.example")
                self.assertAllowed(ENGINE.check(ev, []))

    def test_v12_room_id_present_rejected(self):
        """v12 "1.2 If the event has a room_id, reject." (the room id is derived from
        the create event's id)."""
        ev = create_event(V12, room_id="!create0")
        self.assertDenied(ENGINE.check(ev, []), "v12 1.2")
        self.assertAllowed(ENGINE.check(create_event(V12), []))

    def test_unknown_room_version_rejected(self):
        """"1.3 If content.room_version is present and is not a recognised version,
        reject." Non-string values are not versions either."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                for bad in ("999", 12, None):
                    ev = create_event(rv, content={"room_version": bad})
                    self.assertDenied(ENGINE.check(ev, []), f"v{rv.identifier} 1.3")

    def test_room_version_recognised_through_registry(self):
        """Rule 1.3 recognises what the server's registry recognises: a version a plugin
        registered is accepted by an engine built with that registry."""
        custom = V12.derive("org.example.custom")
        engine = AuthEngine(
            make_plugin_manager(load_entrypoints=False), RoomVersionRegistry([custom])
        )
        ev = create_event(V12, content={"room_version": "org.example.custom"})
        self.assertAllowed(engine.check(ev, []))
        self.assertDenied(ENGINE.check(ev, []), "v12 1.3")

    def test_creator_required_before_v11(self):
        """v1-v10 "1.4 If content has no creator property, reject."; v11 removed it."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                eid = "$create0" if rv.room_id_from_create_event else "$create0:a.example"
                rid = None if rv.room_id_from_create_event else "!room:a.example"
                ev = make_event(rv, eid, "m.room.create", ALICE, room_id=rid, content={},
                                state_key="")
                if rv.implicit_room_creator:
                    self.assertAllowed(ENGINE.check(ev, []))
                else:
                    self.assertDenied(ENGINE.check(ev, []), f"v{rv.identifier} 1.4")

    def test_v12_additional_creators_validated(self):
        """v12 "1.4 If additional_creators is present in content and is not an array of
        strings where each string passes the same user ID validation applied to sender,
        reject."; v11 does not look at it."""
        for bad in ("@bob:b.example", ["bob"], [1], ["@bob"], [None]):
            with self.subTest(bad=bad):
                ev = create_event(V12, content={"additional_creators": bad})
                self.assertDenied(ENGINE.check(ev, []), "v12 1.4")
                self.assertAllowed(ENGINE.check(create_event(V11, content={"additional_creators": bad}), []))
        ev = create_event(V12, content={"additional_creators": [BOB, CAROL]})
        self.assertAllowed(ENGINE.check(ev, []))
        self.assertAllowed(ENGINE.check(create_event(V12, content={"additional_creators": []}), []))


class CreateEventLinkTests(SynchronousTestCase, AuthAssertions):
    """v12 rule 2 and v1-v11 rule 2.4: every event is governed by the room's create
    event."""

    def test_no_create_among_auth_events(self):
        """v1-v11 "2.4 If there is no m.room.create event among the entries, reject."
        The same holds when judging against a state with no create event."""
        for rv in SPEC_ROOM_VERSIONS[:11]:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard()
                ev = room.message(ALICE)
                cited = [e for e in room.auth_events_of(ev) if e.type != "m.room.create"]
                self.assertDenied(ENGINE.check(ev, cited), f"v{rv.identifier} 2.4")
                state = {k: v for k, v in room.state.items() if k[0] != "m.room.create"}
                self.assertDenied(ENGINE.check_against_state(ev, state), f"v{rv.identifier} 2.4")

    def test_v12_room_id_must_name_the_create_event(self):
        """v12 "2. If the event's room_id is not an event ID for an accepted (not
        rejected) m.room.create event, with the sigil ! instead of $, reject."""
        room = Room(V12).standard()
        ev = room.message(ALICE)
        cited = room.auth_events_of(ev)
        self.assertAllowed(ENGINE.check(ev, cited, create_event=room.create))
        # No create event supplied at all.
        self.assertDenied(ENGINE.check(ev, cited), "v12 2")
        # A create event whose id is not the room id.
        other = create_event(V12, event_id="$other")
        self.assertDenied(ENGINE.check(ev, cited, create_event=other), "v12 2")
        # The right create event, but it was rejected.
        rejected = create_event(V12)
        rejected.rejected_reason = "test"
        self.assertDenied(ENGINE.check(ev, cited, create_event=rejected), "v12 2")

    def test_v12_state_without_create_uses_given_create(self):
        """check_against_state finds the v12 create event in the state, or takes it from
        ``create_event`` when the state has none (v12 state resolution starts from an
        empty state)."""
        room = Room(V12).standard()
        ev = room.message(ALICE)
        state = {k: v for k, v in room.state.items() if k[0] != "m.room.create"}
        self.assertDenied(ENGINE.check_against_state(ev, state), "v12 2")
        self.assertAllowed(ENGINE.check_against_state(ev, state, create_event=room.create))
        self.assertAllowed(ENGINE.check_against_state(ev, room.state))


class AuthEventsRuleTests(SynchronousTestCase, AuthAssertions):
    """Rule 2 (v12: 3): Considering the event's auth_events."""

    def test_duplicates_rejected(self):
        """"If there are duplicate entries for a given type and state_key pair, reject."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard()
                old_pl = room.state[("m.room.power_levels", "")]
                room.add(room.power_levels({"users": {} if rv.privileged_creators else {ALICE: 100}}))
                ev = room.message(ALICE)
                cited = room.auth_events_of(ev) + [old_pl]
                label = pick(rv, {"1-11": "2.1", "12": "3.1"})
                self.assertDenied(ENGINE.check(ev, cited, create_event=room.create), label)
                self.assertDenied(ENGINE.check_auth_events(ev, cited), label)

    def test_unexpected_entries_rejected(self):
        """"If there are entries whose type and state_key don't match those specified by
        the auth events selection algorithm, reject." A message may not cite the join
        rules or another user's membership; from v12 not even the create event."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard()
                room.join(BOB)
                ev = room.message(ALICE)
                label = pick(rv, {"1-11": "2.2", "12": "3.2"})
                for extra in (room.state[("m.room.join_rules", "")],
                              room.state[("m.room.member", BOB)]):
                    cited = room.auth_events_of(ev) + [extra]
                    self.assertDenied(ENGINE.check(ev, cited, create_event=room.create), label)
                if rv.room_id_from_create_event:
                    cited = room.auth_events_of(ev) + [room.create]
                    self.assertDenied(ENGINE.check(ev, cited, create_event=room.create), label)

    def test_rejected_auth_event_rejected(self):
        """"If there are entries which were themselves rejected under the checks
        performed on receipt of a PDU, reject." (Event.rejected_reason is set.)"""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard()
                ev = room.message(ALICE)
                cited = room.auth_events_of(ev)
                pl = room.state[("m.room.power_levels", "")]
                pl.rejected_reason = "test"
                try:
                    label = pick(rv, {"1-11": "2.3", "12": "3.3"})
                    self.assertDenied(ENGINE.check(ev, cited, create_event=room.create), label)
                finally:
                    pl.rejected_reason = None
                self.assertAllowed(ENGINE.check(ev, cited, create_event=room.create))

    def test_auth_events_from_another_room_rejected(self):
        """"If any event in auth_events has a room_id which does not match that of the
        event being authorised, reject." (2.5 in v1-v11, 3.5 in v12): MSC4307 put the
        rule into every room version, not only v12."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard()
                ev = room.message(ALICE)
                alien_member = make_event(
                    rv, "$alien:a.example", "m.room.member", ALICE, room_id="!other:a.example",
                    content={"membership": "join"}, state_key=ALICE,
                )
                cited = [e for e in room.auth_events_of(ev) if e.type != "m.room.member"]
                cited.append(alien_member)
                result = ENGINE.check(ev, cited, create_event=room.create)
                self.assertDenied(result, pick(rv, {"1-11": "2.5", "12": "3.5"}))
                # The same member event from the right room is accepted.
                cited[-1] = room.state[("m.room.member", ALICE)]
                self.assertAllowed(ENGINE.check(ev, cited, create_event=room.create))

    def test_check_accepts_a_mapping(self):
        """``check`` takes the cited auth events as a list or as a mapping of them."""
        room = Room(V11).standard()
        ev = room.message(ALICE)
        as_map = {(e.type, e.state_key): e for e in room.auth_events_of(ev)}
        self.assertAllowed(ENGINE.check(ev, as_map))


class FederateRuleTests(SynchronousTestCase, AuthAssertions):
    """Rule 3 (v12: 4): m.federate."""

    def test_non_federating_room(self):
        """"If the content of the m.room.create event in the room state has the property
        m.federate set to false, and the sender domain of the event does not match the
        sender domain of the create event, reject.\""""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv, create_content={"m.federate": False}).standard()
                label = pick(rv, {"1-11": "3", "12": "4"})
                self.assertDenied(room.check(room.member(BOB, "join")), label)
                self.assertAllowed(room.check(room.member("@alice2:a.example", "join")))

    def test_federating_room(self):
        """m.federate true or absent does not restrict anyone."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv, create_content={"m.federate": True}).standard()
                self.assertAllowed(room.check(room.member(BOB, "join")))


class AliasesRuleTests(SynchronousTestCase, AuthAssertions):
    """v1-v5 rule 4: If type is m.room.aliases."""

    def test_aliases_by_non_member_for_own_domain(self):
        """v1-v5 "4.3 Otherwise, allow": the aliases rule comes before the membership
        checks, so a server's user may set its domain's aliases without being joined.
        From v6 ("Rule 4 ... is removed") aliases events are ordinary state events."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard()
                ev = room.event("m.room.aliases", BOB, {"aliases": ["#x:b.example"]}, "b.example")
                if rv.special_case_aliases_auth:
                    self.assertAllowed(room.check(ev))
                else:
                    self.assertDenied(room.check(ev), pick(rv, {"6-11": "5", "12": "6"}))

    def test_aliases_for_another_domain_rejected(self):
        """v1-v5 "4.2 If sender's domain doesn't match state_key, reject." """
        for rv in SPEC_ROOM_VERSIONS[:5]:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard()
                ev = room.event("m.room.aliases", ALICE, {"aliases": []}, "b.example")
                self.assertDenied(room.check(ev), f"v{rv.identifier} 4.2")

    def test_aliases_without_state_key_rejected(self):
        """v1-v5 "4.1 If event has no state_key, reject." """
        for rv in SPEC_ROOM_VERSIONS[:5]:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard()
                ev = room.event("m.room.aliases", ALICE, {"aliases": []})
                self.assertDenied(room.check(ev), f"v{rv.identifier} 4.1")
