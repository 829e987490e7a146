"""Private rooms look non-existent on every membership handshake endpoint (seed 004, issue
12): a whole fedserver on loopback TLS, spoken to by a peer as another server would."""

from __future__ import annotations

from urllib.parse import quote

from fedserver.events.hashing import compute_event_id
from fedserver.room_versions import V10
from tests.test_federation_support import FED
from tests.test_hostile_federation import ALICE, US, RunningServerCase

UNKNOWN = "!nowhere:" + US
V2 = "/_matrix/federation/v2"


class PrivateRoomTests(RunningServerCase):
    """A server whose user may not see a room gets exactly what a room we do not know
    gets (status, errcode, message), decided before anything else about the room, and
    nothing is stored or sent for it."""

    async def make_room(self):
        await super().make_room()
        self.private = await self.local_room({"join_rule": "invite"})
        self.knock = await self.local_room({"join_rule": "knock"})
        # Restricted to self.room, which we are in and the peer's @u has joined.
        allow_known = [{"type": "m.room_membership", "room_id": self.room}]
        self.restricted = await self.local_room({"join_rule": "restricted", "allow": allow_known})
        # Restricted to a room we are not in: we cannot tell who meets it.
        allow_unknown = [{"type": "m.room_membership", "room_id": "!elsewhere:far.test"}]
        self.restricted_elsewhere = await self.local_room({"join_rule": "restricted", "allow": allow_unknown})

    async def local_room(self, join_rules):
        creator = self.service.creator
        create, _ = await creator.create_room_event(V10, sender=ALICE, content={"creator": ALICE, "room_version": "10"})
        room = create.room_id
        for type_, content, key in (
            ("m.room.member", {"membership": "join"}, ALICE),
            ("m.room.power_levels", {"users": {ALICE: 100}}, ""),
            ("m.room.join_rules", join_rules, ""),
            ("m.room.message", {"msgtype": "m.text", "body": "secret"}, None),
        ):
            _, outcome = await creator.send(room, V10, type=type_, sender=ALICE, content=content, state_key=key)
            assert outcome.accepted, outcome
        return room

    def user(self, name):
        return f"@{name}:{self.peer.name}"

    async def make(self, kind, room, user, ver=("10",)):
        query = "" if ver is None else "?" + "&".join("ver=" + v for v in ver)
        return await self.request("GET", FED + f"/make_{kind}/{quote(room, safe='')}/{quote(user, safe='')}{query}")

    async def assertLikeUnknown(self, result, unknown, what):
        code, body, raw = result
        self.assertEqual((code, body), (unknown[0], unknown[1]), (what, raw[:300]))
        self.assertEqual((code, body["errcode"]), (404, "M_NOT_FOUND"), what)

    async def crafted(self, room, user, membership, room_id=None, **content):
        """A membership event of the peer's ``user`` in ``room``, built on its current
        state as a stranger who read nothing from us would have to guess it."""
        state = await self.service.pipeline.current_state(room)
        ext = sorted(await self.service.pipeline.forward_extremities(room))
        auth = [state[("m.room.create", "")], state[("m.room.power_levels", "")], state[("m.room.join_rules", "")]]
        return self.peer.pdu(
            V10, room_id or room, type="m.room.member", sender=user, state_key=user,
            content={"membership": membership, **content}, prev_event_ids=ext, auth_event_ids=auth, depth=10,
        )

    async def send(self, kind, room, pdu):
        eid = compute_event_id(pdu, V10)
        version = "/_matrix/federation/v1" if kind == "knock" else V2
        return await self.request("PUT", f"{version}/send_{kind}/{quote(room, safe='')}/{quote(eid, safe='')}", pdu)

    async def test_make_endpoints(self):
        """make_join (with our version, an unsupported one, or none), make_leave and
        make_knock for an invite-only room answer a stranger exactly as for an unknown
        room; knocking on a knock room is offered; an invited user gets a template."""
        stranger = self.user("stranger")
        for kind, ver in (("join", ("10",)), ("join", ("1", "2")), ("join", None), ("leave", None),
                          ("knock", ("10",)), ("knock", ("1",))):
            unknown = await self.make(kind, UNKNOWN, stranger, ver)
            await self.assertLikeUnknown(await self.make(kind, self.private, stranger, ver), unknown, (kind, ver))
        code, body, raw = await self.make("knock", self.knock, stranger)
        self.assertEqual((code, body["event"]["content"]["membership"]), (200, "knock"), raw)
        # An invited user may see the room: a template, and the version check applies.
        invitee = self.user("invitee")
        await self.service.creator.send(self.private, V10, type="m.room.member", sender=ALICE,
                                        content={"membership": "invite"}, state_key=invitee)
        code, body, raw = await self.make("join", self.private, invitee)
        self.assertEqual(code, 200, raw)
        code, body, _ = await self.make("join", self.private, invitee, ("1",))
        self.assertEqual((code, body["errcode"], body["room_version"]), (400, "M_INCOMPATIBLE_ROOM_VERSION", "10"))
        # A public room is visible to anyone: the auth rules speak (knocking is not allowed).
        code, body, _ = await self.make("knock", self.room, stranger)
        self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"))

    async def test_send_endpoints_store_nothing(self):
        """A crafted send_join, send_leave or send_knock for an invite-only room answers
        exactly as for an unknown room, and the stranger's event is neither stored nor
        sent anywhere."""
        stranger = self.user("stranger")
        stored = []
        for kind in ("join", "leave", "knock"):
            pdu = await self.crafted(self.private, stranger, kind)
            twin = await self.crafted(self.private, stranger, kind, room_id=UNKNOWN)
            unknown = await self.send(kind, UNKNOWN, twin)
            await self.assertLikeUnknown(await self.send(kind, self.private, pdu), unknown, kind)
            stored.append(compute_event_id(pdu, V10))
        self.assertEqual(await self.service.store.have_events(stored), set())
        members = await self.service.store.get_current_state_ids(self.private)
        self.assertNotIn(("m.room.member", stranger), members)

    async def test_restricted_rooms(self):
        """A restricted room is visible to a member of an allowed room we are in (a
        template naming our user as authoriser) and invisible to anyone else we can judge;
        when we are in none of the allowed rooms we cannot judge, and the spec's 400
        M_UNABLE_TO_AUTHORISE_JOIN lets the joining server try another resident."""
        member, stranger = "@u:" + self.peer.name, self.user("stranger")
        code, body, raw = await self.make("join", self.restricted, member)
        self.assertEqual(code, 200, raw)
        self.assertEqual(body["event"]["content"]["join_authorised_via_users_server"], ALICE)
        unknown = await self.make("join", UNKNOWN, stranger)
        await self.assertLikeUnknown(await self.make("join", self.restricted, stranger), unknown, "restricted")
        code, body, _ = await self.make("join", self.restricted_elsewhere, stranger)
        self.assertEqual((code, body["errcode"]), (400, "M_UNABLE_TO_AUTHORISE_JOIN"))

    async def test_no_countersignature_for_a_join_we_cannot_vouch_for(self):
        """A send_join naming our user as authoriser is countersigned only for a user who
        meets the room's conditions: a stranger's crafted join to a restricted room looks
        like an unknown room, and one to a room whose conditions we cannot check is
        refused with 403; neither is stored."""
        stranger = self.user("stranger")
        hidden = await self.crafted(self.restricted, stranger, "join", join_authorised_via_users_server=ALICE)
        twin = await self.crafted(self.restricted, stranger, "join", room_id=UNKNOWN, join_authorised_via_users_server=ALICE)
        await self.assertLikeUnknown(await self.send("join", self.restricted, hidden), await self.send("join", UNKNOWN, twin),
                                     "restricted send_join")
        unjudged = await self.crafted(self.restricted_elsewhere, stranger, "join", join_authorised_via_users_server=ALICE)
        code, body, raw = await self.send("join", self.restricted_elsewhere, unjudged)
        self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"), raw)
        ids = [compute_event_id(p, V10) for p in (hidden, unjudged)]
        self.assertEqual(await self.service.store.have_events(ids), set())

    async def test_server_acl_only_once_visible(self):
        """A server ACL denying the peer is not consulted before visibility: for a private
        room the peer gets 404 as for an unknown room, for the public room 403."""
        for room in (self.private, self.room):
            await self.service.creator.send(room, V10, type="m.room.server_acl", sender=ALICE, state_key="",
                                            content={"allow": ["*"], "deny": ["127.0.0.1"]})
        stranger = self.user("stranger")
        unknown = await self.make("join", UNKNOWN, stranger)
        await self.assertLikeUnknown(await self.make("join", self.private, stranger), unknown, "acl")
        code, body, _ = await self.make("join", self.room, stranger)
        self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"))
