"""Auth rules for m.room.member events (rule 5 in v1-v5 and v12, rule 4 in v6-v11), in
every room version."""

from __future__ import annotations

from signedjson.key import generate_signing_key, get_verify_key
from signedjson.sign import sign_json
from twisted.trial.unittest import SynchronousTestCase

from fedserver.events.hashing import add_content_hash, unpadded_base64
from fedserver.events.signing import sign_event, verify_event_signature
from fedserver.room_versions import SPEC_ROOM_VERSIONS, V7, V12
from tests.test_auth_fixtures import (
    ALICE, BOB, CAROL, DAVE, AuthAssertions, Room, make_event, pick,
)

MEMBER = {"1-5": "5", "6-11": "4", "12": "5"}
JOIN = {"1-5": "5.2", "6-7": "4.2", "8-11": "4.3", "12": "5.3"}
INVITE = {"1-5": "5.3", "6-7": "4.3", "8-11": "4.4", "12": "5.4"}
LEAVE = {"1-5": "5.4", "6-7": "4.4", "8-11": "4.5", "12": "5.5"}
BAN = {"1-5": "5.5", "6-7": "4.5", "8-11": "4.6", "12": "5.6"}
KNOCK = {"7": "4.6", "8-11": "4.7", "12": "5.7"}
MOD = "@mod:m.example"


def sub(table: dict[str, str], suffix: str) -> dict[str, str]:
    return {span: number + suffix for span, number in table.items()}


def join_otherwise(rv):
    """The "Otherwise, reject" of the join rules: 6 before restricted rooms, 7 after."""
    return pick(rv, {"1-5": "5.2.6", "6-7": "4.2.6", "8-11": "4.3.7", "12": "5.3.7"})


class MemberCommonTests(SynchronousTestCase, AuthAssertions):
    """What every membership event must satisfy."""

    def test_missing_membership_rejected(self):
        """"If there is no state_key property, or no membership property in content,
        reject.\""""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard()
                ev = room.event("m.room.member", BOB, {"displayname": "Bob"}, BOB)
                self.assertDenied(room.check(ev), pick(rv, sub(MEMBER, ".1")))

    def test_unknown_membership_rejected(self):
        """"Otherwise, the membership is unknown. Reject." ``knock`` is unknown before
        v7."""
        unknown = {"1-5": "5.6", "6": "4.6", "7": "4.7", "8-11": "4.8", "12": "5.8"}
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard(join_rule="knock")
                self.assertDenied(room.check(room.member(BOB, "dance")), pick(rv, unknown))
                self.assertDenied(room.check(room.member(BOB, 5)), pick(rv, unknown))
                if not rv.knocking:
                    self.assertDenied(room.check(room.member(BOB, "knock")), pick(rv, unknown))

    def test_authorised_via_needs_signature(self):
        """v8+ "If content has a join_authorised_via_users_server key: If the event is not
        validly signed by the homeserver of the user ID denoted by the key, reject."
        Verification is the caller's: ``verified_servers`` when given, else a signature
        from that server must at least be present.  Before v8 the key means nothing."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard(join_rule="public")
                ev = room.member(BOB, "join", join_authorised_via_users_server=ALICE)
                if not rv.restricted_joins:
                    self.assertAllowed(room.check(ev))
                    continue
                label = pick(rv, sub(MEMBER, ".2"))
                self.assertDenied(room.check(ev), label)
                self.assertDenied(room.check(ev, verified_servers={"b.example"}), label)
                self.assertAllowed(
                    room.check(ev, verified_servers={"a.example", "b.example"})
                )
                signed = room.member(BOB, "join", join_authorised_via_users_server=ALICE)
                signed.pdu["signatures"]["a.example"] = {"ed25519:k": "sig"}
                self.assertAllowed(room.check(signed))
                bad = room.member(BOB, "join", join_authorised_via_users_server="nobody")
                self.assertDenied(room.check(bad), label)


class AuthorisedViaSignatureTests(SynchronousTestCase, AuthAssertions):
    """The join_authorised_via_users_server signature, verified the way the ingest path
    does it: the caller verifies, then tells the engine which servers verified."""

    def _verified(self, pdu, rv, keys):
        return {server for server, key in keys.items()
                if verify_event_signature(pdu, rv, server, get_verify_key(key))}

    def test_real_signatures(self):
        """A restricted join signed by the authorising user's server is allowed when the
        caller reports that server as verified; a forged signature (present but invalid)
        is caught by verification and the join is rejected under "If the event is not
        validly signed by the homeserver of the user ID denoted by the key, reject"."""
        keys = {"a.example": generate_signing_key("1"), "c.example": generate_signing_key("1")}
        for rv in SPEC_ROOM_VERSIONS[7:]:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard("restricted")
                ev = room.member(CAROL, "join", join_authorised_via_users_server=ALICE)
                pdu = ev.pdu
                pdu["signatures"] = {}
                add_content_hash(pdu, strict=rv.strict_canonicaljson)
                sign_event(pdu, rv, "c.example", keys["c.example"])
                sign_event(pdu, rv, "a.example", keys["a.example"])
                verified = self._verified(pdu, rv, keys)
                self.assertEqual(verified, {"a.example", "c.example"})
                self.assertAllowed(room.check(ev, verified_servers=verified))

                forged = room.member(CAROL, "join", join_authorised_via_users_server=ALICE)
                forged.pdu["signatures"] = {}
                add_content_hash(forged.pdu, strict=rv.strict_canonicaljson)
                sign_event(forged.pdu, rv, "c.example", keys["c.example"])
                forged.pdu["signatures"]["a.example"] = {"ed25519:1": unpadded_base64(b"x" * 64)}
                verified = self._verified(forged.pdu, rv, keys)
                self.assertEqual(verified, {"c.example"})
                self.assertDenied(room.check(forged, verified_servers=verified),
                                  pick(rv, sub(MEMBER, ".2")))


class JoinTests(SynchronousTestCase, AuthAssertions):
    """If membership is join."""

    def test_creator_first_join(self):
        """"If the only previous event is an m.room.create and the state_key is the
        creator, allow." The creator is content.creator before v11 and the create
        event's sender from v11, so a join by someone else right after the create event
        is judged by the join rules (none yet: rejected)."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv, create_content={"creator": BOB})
                alice = room.member(ALICE, "join")
                bob = room.member(BOB, "join")
                if rv.implicit_room_creator:
                    self.assertAllowed(room.check(alice))
                    self.assertDenied(room.check(bob), join_otherwise(rv))
                else:
                    self.assertAllowed(room.check(bob))
                    self.assertDenied(room.check(alice), join_otherwise(rv))

    def test_creator_join_needs_create_as_only_prev_event(self):
        """The creator's free join needs the create event as the only prev event: not
        two prev events, not one other event."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv)
                ev = room.event("m.room.member", ALICE, {"membership": "join"}, ALICE,
                                prev=[room.create.event_id, "$other:a.example"])
                self.assertDenied(room.check(ev), join_otherwise(rv))
                ev = room.event("m.room.member", ALICE, {"membership": "join"}, ALICE,
                                prev=["$other:a.example"])
                self.assertDenied(room.check(ev), join_otherwise(rv))

    def test_sender_must_be_target(self):
        """"If the sender does not match state_key, reject.\""""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard()
                ev = room.member(BOB, "join", sender=ALICE)
                self.assertDenied(room.check(ev), pick(rv, sub(JOIN, ".2")))

    def test_banned_sender_rejected(self):
        """"If the sender is banned, reject." even in a public room."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard()
                room.add(room.member(BOB, "ban", sender=ALICE))
                self.assertDenied(room.check(room.member(BOB, "join")), pick(rv, sub(JOIN, ".3")))

    def test_public(self):
        """"If the join_rule is public, allow.\""""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard("public")
                self.assertAllowed(room.check(room.member(BOB, "join")))

    def test_invite_rule(self):
        """"If the join_rule is invite then allow if membership state is invite or
        join." Others are rejected."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard("invite")
                self.assertDenied(room.check(room.member(BOB, "join")), join_otherwise(rv))
                room.add(room.member(BOB, "invite", sender=ALICE))
                self.assertAllowed(room.send(room.member(BOB, "join")))
                self.assertAllowed(room.check(room.member(BOB, "join", displayname="B")))

    def test_knock_rule(self):
        """v7+ "If the join_rule is invite or knock then allow if membership state is
        invite or join."; before v7 ``knock`` is no join rule and admits nobody."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard("knock")
                self.assertDenied(room.check(room.member(BOB, "join")), join_otherwise(rv))
                room.add(room.member(BOB, "invite", sender=ALICE))
                result = room.check(room.member(BOB, "join"))
                if rv.knocking:
                    self.assertAllowed(result)
                else:
                    self.assertDenied(result, join_otherwise(rv))

    def test_no_join_rules_rejected(self):
        """Without a join rules event nobody but the creator joins ("Otherwise, reject")."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv)
                room.join(ALICE)
                self.assertDenied(room.check(room.member(BOB, "join")), join_otherwise(rv))

    def test_unknown_join_rule_rejected(self):
        """A join rule the spec does not define ("private") admits nobody."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard("private")
                self.assertDenied(room.check(room.member(BOB, "join")), join_otherwise(rv))

    def _restricted_join(self, room, authoriser):
        ev = room.member(CAROL, "join", join_authorised_via_users_server=authoriser)
        ev.pdu["signatures"][authoriser.split(":", 1)[1]] = {"ed25519:k": "sig"}
        return ev

    def test_restricted(self):
        """v8+ "If the join_rule is restricted: If membership state is join or invite,
        allow. If the join_authorised_via_users_server key in content is not a user with
        sufficient permission to invite other users, reject. Otherwise, allow."
        Permission to invite needs membership join and the invite level.  Before v8 ``restricted`` admits nobody."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard("restricted", pl_extra={"invite": 50},
                                         pl_users={ALICE: 100, MOD: 100})
                room.join(BOB)  # joined, power level 0 < invite level 50
                # MOD has the power to invite but is not joined, so cannot invite.
                if not rv.restricted_joins:
                    ev = room.member(CAROL, "join")
                    self.assertDenied(room.check(ev), join_otherwise(rv))
                    continue
                authoriser_rule = pick(rv, sub(JOIN, ".5.2"))
                self.assertAllowed(room.check(self._restricted_join(room, ALICE)))
                self.assertDenied(room.check(self._restricted_join(room, BOB)), authoriser_rule)
                self.assertDenied(room.check(self._restricted_join(room, DAVE)), authoriser_rule)
                self.assertDenied(room.check(self._restricted_join(room, MOD)), authoriser_rule)
                self.assertDenied(room.check(room.member(CAROL, "join")), authoriser_rule)
                room.add(room.member(CAROL, "invite", sender=ALICE))
                self.assertAllowed(room.check(room.member(CAROL, "join")))

    def test_knock_restricted(self):
        """v10+ "If the join_rule is restricted or knock_restricted": knock_restricted
        admits like restricted; before v10 it admits nobody."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard("knock_restricted")
                ev = self._restricted_join(room, ALICE) if rv.restricted_joins else room.member(CAROL, "join")
                if rv.knock_restricted:
                    self.assertAllowed(room.check(ev))
                else:
                    self.assertDenied(room.check(ev), join_otherwise(rv))


class InviteTests(SynchronousTestCase, AuthAssertions):
    """If membership is invite (without third_party_invite)."""

    def test_invite_allowed(self):
        """"If the sender's power level is greater than or equal to the invite level,
        allow." (invite defaults to 0)."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard()
                room.join(BOB)
                self.assertAllowed(room.check(room.member(CAROL, "invite", sender=BOB)))

    def test_sender_not_joined_rejected(self):
        """"If the sender's current membership state is not join, reject.\""""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard()
                ev = room.member(CAROL, "invite", sender=BOB)
                self.assertDenied(room.check(ev), pick(rv, sub(INVITE, ".2")))

    def test_target_joined_or_banned_rejected(self):
        """"If target user's current membership state is join or ban, reject.\""""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard()
                room.join(BOB)
                ev = room.member(BOB, "invite", sender=ALICE)
                self.assertDenied(room.check(ev), pick(rv, sub(INVITE, ".3")))
                room.add(room.member(CAROL, "ban", sender=ALICE))
                ev = room.member(CAROL, "invite", sender=ALICE)
                self.assertDenied(room.check(ev), pick(rv, sub(INVITE, ".3")))

    def test_below_invite_level_rejected(self):
        """"Otherwise, reject." when the sender is below the invite level."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard(pl_extra={"invite": 50})
                room.join(BOB)
                ev = room.member(CAROL, "invite", sender=BOB)
                self.assertDenied(room.check(ev), pick(rv, sub(INVITE, ".5")))
                self.assertAllowed(room.check(room.member(CAROL, "invite", sender=ALICE)))


class ThirdPartyInviteTests(SynchronousTestCase, AuthAssertions):
    """If content has a third_party_invite property (signatures really verified)."""

    def setUp(self):
        self.key = generate_signing_key("1")
        self.public_key = unpadded_base64(self.key.verify_key.encode())

    def _room(self, rv, keys=None):
        room = Room(rv).standard()
        content = {"display_name": "b...@example.org",
                   "key_validity_url": "https://id.example/isvalid"}
        content.update(keys if keys is not None else {"public_key": self.public_key})
        room.add(room.event("m.room.third_party_invite", ALICE, content, "tok"))
        return room

    def _invite(self, room, *, mxid=BOB, token="tok", sender=ALICE, key=None, signed=None):
        if signed is None:
            signed = sign_json({"mxid": mxid, "token": token}, "id.example", key or self.key)
        return room.member(BOB, "invite", sender=sender,
                           third_party_invite={"display_name": "b...", "signed": signed})

    def test_valid_signature_allowed(self):
        """"If any signature in signed matches any public key in the
        m.room.third_party_invite event, allow." (a single public_key, or one of
        public_keys)."""
        other = unpadded_base64(generate_signing_key("2").verify_key.encode())
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                self.assertAllowed(self._room(rv).check(self._invite(self._room(rv))))
                room = self._room(rv, {"public_keys": [{"public_key": other},
                                                       {"public_key": self.public_key}]})
                self.assertAllowed(room.check(self._invite(room)))

    def test_wrong_signature_rejected(self):
        """"Otherwise, reject." when no signature verifies: another key, or signed
        content altered after signing."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = self._room(rv)
                label = pick(rv, sub(INVITE, ".1.8"))
                ev = self._invite(room, key=generate_signing_key("x"))
                self.assertDenied(room.check(ev), label)
                signed = sign_json({"mxid": BOB, "token": "tok"}, "id.example", self.key)
                signed["extra"] = "tampered"
                self.assertDenied(room.check(self._invite(room, signed=signed)), label)
                self.assertDenied(
                    room.check(self._invite(room, signed={"mxid": BOB, "token": "tok"})), label
                )

    def test_structure_checks(self):
        """Rules 1.1-1.6: target banned; no signed; no mxid/token; mxid is not the
        state_key; no m.room.third_party_invite for the token; sender differs from the
        third-party invite's sender."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = self._room(rv)
                room.join(CAROL)
                ev = room.member(BOB, "invite", sender=ALICE, third_party_invite={})
                self.assertDenied(room.check(ev), pick(rv, sub(INVITE, ".1.2")))
                ev = self._invite(room, signed={"mxid": BOB})
                self.assertDenied(room.check(ev), pick(rv, sub(INVITE, ".1.3")))
                self.assertDenied(room.check(self._invite(room, mxid=CAROL)),
                                  pick(rv, sub(INVITE, ".1.4")))
                self.assertDenied(room.check(self._invite(room, token="nope")),
                                  pick(rv, sub(INVITE, ".1.5")))
                self.assertDenied(room.check(self._invite(room, sender=CAROL)),
                                  pick(rv, sub(INVITE, ".1.6")))
                room.add(room.member(BOB, "ban", sender=ALICE))
                self.assertDenied(room.check(self._invite(room)), pick(rv, sub(INVITE, ".1.1")))


class LeaveTests(SynchronousTestCase, AuthAssertions):
    """If membership is leave: leaving, kicking, unbanning."""

    def test_leave_self(self):
        """"If the sender matches state_key, allow if and only if that user's current
        membership state is invite or join" (v7+: "invite, join, or knock")."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard()
                label = pick(rv, sub(LEAVE, ".1"))
                self.assertDenied(room.check(room.member(BOB, "leave")), label)
                room.add(room.member(BOB, "invite", sender=ALICE))
                self.assertAllowed(room.check(room.member(BOB, "leave")))
                room.join(BOB)
                self.assertAllowed(room.check(room.member(BOB, "leave")))
                room.add(room.member(BOB, "leave"))
                self.assertDenied(room.check(room.member(BOB, "leave")), label)
                room.add(room.member(BOB, "ban", sender=ALICE))
                self.assertDenied(room.check(room.member(BOB, "leave")), label)
                # A knock in the state (only valid from v7) may be withdrawn from v7.
                room.add(room.member(CAROL, "knock"))
                result = room.check(room.member(CAROL, "leave"))
                if rv.knocking:
                    self.assertAllowed(result)
                else:
                    self.assertDenied(result, label)

    def test_kick(self):
        """"If the sender's power level is greater than or equal to the kick level, and
        the target user's power level is less than the sender's power level, allow."
        Otherwise reject; a sender who is not joined is rejected first."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard(pl_users={ALICE: 100, BOB: 50, CAROL: 50})
                for u in (BOB, CAROL, DAVE):
                    room.join(u)
                self.assertAllowed(room.check(room.member(DAVE, "leave", sender=BOB)))
                self.assertDenied(room.check(room.member(CAROL, "leave", sender=BOB)),
                                  pick(rv, sub(LEAVE, ".5")))
                self.assertDenied(room.check(room.member(BOB, "leave", sender=DAVE)),
                                  pick(rv, sub(LEAVE, ".5")))
                self.assertDenied(room.check(room.member(DAVE, "leave", sender="@eve:e.example")),
                                  pick(rv, sub(LEAVE, ".2")))

    def test_unban_needs_ban_level(self):
        """"If the target user's current membership state is ban, and the sender's
        power level is less than the ban level, reject.\""""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard(pl_users={ALICE: 100, BOB: 60},
                                         pl_extra={"kick": 50, "ban": 75})
                room.join(BOB)
                room.add(room.member(DAVE, "ban", sender=ALICE))
                self.assertDenied(room.check(room.member(DAVE, "leave", sender=BOB)),
                                  pick(rv, sub(LEAVE, ".3")))
                self.assertAllowed(room.check(room.member(DAVE, "leave", sender=ALICE)))


class BanTests(SynchronousTestCase, AuthAssertions):
    """If membership is ban."""

    def test_ban(self):
        """"If the sender's power level is greater than or equal to the ban level, and
        the target user's power level is less than the sender's power level, allow."
        Otherwise reject; "If the sender's current membership state is not join,
        reject.\""""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard(pl_users={ALICE: 100, BOB: 50, CAROL: 50})
                for u in (BOB, CAROL):
                    room.join(u)
                self.assertAllowed(room.check(room.member(DAVE, "ban", sender=BOB)))
                self.assertDenied(room.check(room.member(CAROL, "ban", sender=BOB)),
                                  pick(rv, sub(BAN, ".3")))
                self.assertDenied(room.check(room.member(DAVE, "ban", sender="@eve:e.example")),
                                  pick(rv, sub(BAN, ".1")))

    def test_v12_creators_are_infinitely_powerful(self):
        """v12: "The power level of room creators is infinitely high": a creator may ban
        a user at any level, even the highest integer; nobody, not even a creator, may
        ban a creator (the target's level must be less than the sender's)."""
        room = Room(V12, create_content={"additional_creators": [BOB]}).standard(
            pl_users={CAROL: 2**53 - 1})
        room.join(BOB)
        room.join(CAROL)
        self.assertAllowed(room.check(room.member(CAROL, "ban", sender=ALICE)))
        self.assertDenied(room.check(room.member(BOB, "ban", sender=ALICE)), "v12 5.6.3")
        self.assertDenied(room.check(room.member(ALICE, "ban", sender=CAROL)), "v12 5.6.3")


class KnockTests(SynchronousTestCase, AuthAssertions):
    """v7+: If membership is knock."""

    def test_knock(self):
        """"If the join_rule is anything other than knock [v10+: or knock_restricted],
        reject. If sender does not match state_key, reject. If the sender's current
        membership is not ban, invite, or join, allow. Otherwise, reject.\""""
        for rv in SPEC_ROOM_VERSIONS[6:]:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard("knock")
                self.assertAllowed(room.check(room.member(BOB, "knock")))
                self.assertDenied(room.check(room.member(BOB, "knock", sender=ALICE)),
                                  pick(rv, sub(KNOCK, ".2")))
                self.assertDenied(room.check(room.member(ALICE, "knock")),
                                  pick(rv, sub(KNOCK, ".4")))
                room.add(room.member(CAROL, "ban", sender=ALICE))
                self.assertDenied(room.check(room.member(CAROL, "knock")),
                                  pick(rv, sub(KNOCK, ".4")))
                room.add(room.member(DAVE, "invite", sender=ALICE))
                self.assertDenied(room.check(room.member(DAVE, "knock")),
                                  pick(rv, sub(KNOCK, ".4")))
                room.add(room.member(BOB, "leave"))
                self.assertAllowed(room.check(room.member(BOB, "knock")))

    def test_knock_join_rules(self):
        """Knocking needs join rule knock, or from v10 knock_restricted; public,
        invite and (v8-v9) knock_restricted rooms reject knocks."""
        for rv in SPEC_ROOM_VERSIONS[6:]:
            for join_rule in ("public", "invite", "restricted", "knock_restricted"):
                with self.subTest(rv=rv.identifier, join_rule=join_rule):
                    room = Room(rv).standard(join_rule)
                    result = room.check(room.member(BOB, "knock"))
                    if join_rule == "knock_restricted" and rv.knock_restricted:
                        self.assertAllowed(result)
                    else:
                        self.assertDenied(result, pick(rv, sub(KNOCK, ".1")))

    def test_knock_event_shape(self):
        """A knock made with make_event directly (no builder) is judged the same."""
        room = Room(V7).standard("knock")
        ev = make_event(V7, "$k:b.example", "m.room.member", BOB, room_id=room.room_id,
                        content={"membership": "knock"}, state_key=BOB, prev=[room.last],
                        auth=[e.event_id for e in room.state.values()
                              if e.type in ("m.room.create", "m.room.power_levels",
                                            "m.room.join_rules")])
        self.assertAllowed(room.check(ev))


class AbsentStateTests(SynchronousTestCase, AuthAssertions):
    """How the membership rules read state that is absent or malformed (the spec names no
    default; Synapse and ruma read a missing join rule as ``invite``)."""

    def test_no_join_rules_is_invite(self):
        """Without an m.room.join_rules event, or with one without join_rule, an invited
        user may join, a stranger may not, and nobody may knock."""
        for rv in SPEC_ROOM_VERSIONS:
            for content in (None, {}):
                with self.subTest(rv=rv.identifier, content=content):
                    room = Room(rv)
                    room.join(ALICE)
                    room.add(room.power_levels({"users": {} if rv.privileged_creators else {ALICE: 100}}))
                    if content is not None:
                        room.add(room.event("m.room.join_rules", ALICE, content, ""))
                    self.assertDenied(room.check(room.member(CAROL, "join")), join_otherwise(rv))
                    room.add(room.member(BOB, "invite", sender=ALICE))
                    self.assertAllowed(room.check(room.member(BOB, "join")))
                    if rv.knocking:
                        self.assertDenied(room.check(room.member(CAROL, "knock")), pick(rv, sub(KNOCK, ".1")))

    def test_join_rule_not_a_string_admits_nobody(self):
        """A join_rule that is not a string is no join rule: even an invited user may not
        join."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard()
                room.add(room.event("m.room.join_rules", ALICE, {"join_rule": 5}, ""))
                room.add(room.member(BOB, "invite", sender=ALICE))
                self.assertDenied(room.check(room.member(BOB, "join")), join_otherwise(rv))

    def test_state_key_must_be_a_user_id(self):
        """The target user is "the user given by the state_key": a membership event whose
        state_key is not a user ID is rejected under 5.1 (4.1 in v6-v11)."""
        for rv in SPEC_ROOM_VERSIONS:
            with self.subTest(rv=rv.identifier):
                room = Room(rv).standard()
                for sk in ("", "bob", "bob:b.example", "@bob:b:c", "@bob:bad domain"):
                    ev = room.event("m.room.member", ALICE, {"membership": "invite"}, sk)
                    self.assertDenied(room.check(ev), pick(rv, sub(MEMBER, ".1")))
                self.assertAllowed(room.check(room.member(BOB, "invite", sender=ALICE)))
