"""Redacted events leave the server redacted (issue 12, "Privacy: redactions"): every
federation answer that carries PDUs, on real SQLite and real X-Matrix requests."""

from __future__ import annotations

from urllib.parse import quote

from fedserver.events.hashing import compute_event_id
from fedserver.events.redaction import redact
from fedserver.room_versions import V1, V10, V11
from tests.test_federation_support import FED
from tests.test_history_support import ALICE, BOB, FederationHarness, build_scenario, q
from tests.test_hostile_federation import ALICE as RUNNING_ALICE, RunningServerCase
from tests.test_storage_support import StoreTestCase


class HistoryEndpointTests(StoreTestCase):
    """/event, /backfill, /get_missing_events, /state and /event_auth (and /state_ids,
    which serves ids only) after redactions."""

    async def setup(self, rv):
        room = build_scenario(rv)
        # Alice redacts her own message and her join (its displayname goes, the membership
        # stays); Bob (another server, power 0) redacts Alice's m2, which does not apply
        # from room v3 ("Handling redactions": neither the redact level nor the same
        # server), and his own m5, which does.
        room.add("redact_m4", "m.room.redaction", ALICE, {"reason": "oops"}, redacts=room.events["m4"].event_id)
        room.add("redact_join", "m.room.redaction", ALICE, {}, redacts=room.events["alice_join"].event_id)
        room.add("redact_m2", "m.room.redaction", BOB, {}, redacts=room.events["m2"].event_id)
        room.add("redact_m5", "m.room.redaction", BOB, {}, redacts=room.events["m5"].event_id)
        room.add("m8", "m.room.message", ALICE, {"msgtype": "m.text", "body": "eight"})
        self.store = await self.open()
        await self.store.persist_events(room.entries)
        await self.store.rooms.index_redactions()
        self.room = room
        self.fed = FederationHarness(self, self.store)
        return room

    def pdu(self, name):
        return self.room.events[name].pdu

    def redacted(self, name):
        return redact(self.pdu(name), self.room.rv)

    def by_id(self, pdus):
        return {compute_event_id(p, self.room.rv) if self.room.rv.event_format.name != "V1" else p["event_id"]: p
                for p in pdus}

    def expected(self, name):
        if name in ("m4", "alice_join", "m5"):
            return self.redacted(name)
        return self.pdu(name)  # m2: Bob's redaction does not apply (v3+); applies in v1-v2

    async def check_versions(self, check):
        for rv in (V10, V11, V1):
            await self.setup(rv)
            await check()

    async def test_event(self):
        """/event serves a redacted event in its redacted form (hashes and signatures
        kept), the redaction itself whole, and an event whose redaction does not apply
        whole."""
        async def check():
            room = self.room
            for name in ("m4", "alice_join", "m5", "m2", "redact_m4"):
                resp = await self.fed.call("GET", "/event/" + q(room.events[name].event_id))
                want = self.expected(name)
                if name == "m2" and room.rv == V1:
                    want = self.redacted("m2")  # rooms v1-v2: the auth rules let it through, so it applies
                self.assertEqual((resp.code, resp.body["pdus"]), (200, [want]), (room.rv.identifier, name))
            self.assertEqual(self.redacted("m4")["content"], {})
            self.assertEqual(self.redacted("alice_join")["content"], {"membership": "join"})
        await self.check_versions(check)

    async def test_backfill_and_missing_events(self):
        """/backfill and /get_missing_events serve the redacted form of redacted events."""
        async def check():
            room = self.room
            m8 = room.events["m8"].event_id
            resp = await self.fed.call("GET", f"/backfill/{q(room.room_id)}?v={q(m8)}&limit=100")
            got = self.by_id(resp.body["pdus"])
            body = {"earliest_events": [], "latest_events": [m8], "limit": 20}
            resp2 = await self.fed.call("POST", f"/get_missing_events/{q(room.room_id)}", body=body)
            got2 = self.by_id(resp2.body["events"])
            for name in ("m4", "m5", "alice_join"):
                eid = room.events[name].event_id
                self.assertEqual(got[eid], self.redacted(name), (room.rv.identifier, name))
                if eid in got2:
                    self.assertEqual(got2[eid], self.redacted(name), (room.rv.identifier, name))
            self.assertIn(room.events["m4"].event_id, got2)
            self.assertEqual(got[room.events["m7"].event_id], self.pdu("m7"))
        await self.check_versions(check)

    async def test_state_and_auth_chain(self):
        """/state and /event_auth serve the redacted join (membership kept); /state_ids
        lists the same ids as before."""
        async def check():
            room = self.room
            m8 = room.events["m8"].event_id
            join_id = room.events["alice_join"].event_id
            resp = await self.fed.call("GET", f"/state/{q(room.room_id)}?event_id={q(m8)}")
            self.assertEqual(self.by_id(resp.body["pdus"])[join_id], self.redacted("alice_join"))
            self.assertEqual(self.by_id(resp.body["auth_chain"])[join_id], self.redacted("alice_join"))
            resp = await self.fed.call("GET", f"/event_auth/{q(room.room_id)}/{q(m8)}")
            self.assertEqual(self.by_id(resp.body["auth_chain"])[join_id], self.redacted("alice_join"))
            resp = await self.fed.call("GET", f"/state_ids/{q(room.room_id)}?event_id={q(m8)}")
            self.assertIn(join_id, resp.body["pdu_ids"])
        await self.check_versions(check)


class HandshakeTests(RunningServerCase):
    """send_join's state and auth chain, knock_room_state and invite_room_state."""

    async def redact(self, room, event_id):
        ev, out = await self.service.creator.send(room, V10, type="m.room.redaction", sender=RUNNING_ALICE,
                                                  content={}, redacts=event_id)
        self.assertTrue(out.accepted)
        await self.service.store.rooms.index_redactions()

    async def named_room(self, join_rule):
        creator = self.service.creator
        create, _ = await creator.create_room_event(V10, sender=RUNNING_ALICE,
                                                    content={"creator": RUNNING_ALICE, "room_version": "10"})
        room = create.room_id
        ids = {}
        for type_, content, key in (
            ("m.room.member", {"membership": "join", "displayname": "Alice A."}, RUNNING_ALICE),
            ("m.room.power_levels", {"users": {RUNNING_ALICE: 100}}, ""),
            ("m.room.join_rules", {"join_rule": join_rule}, ""),
            ("m.room.name", {"name": "Secret plans"}, ""),
        ):
            ev, _ = await creator.send(room, V10, type=type_, sender=RUNNING_ALICE, content=content, state_key=key)
            ids[type_] = ev.event_id
        await self.redact(room, ids["m.room.name"])
        await self.redact(room, ids["m.room.member"])
        return room, ids

    async def handshake(self, kind, room, user):
        version = "10"
        code, body, raw = await self.request(
            "GET", FED + f"/make_{kind}/{quote(room, safe='')}/{quote(user, safe='')}?ver={version}")
        self.assertEqual(code, 200, raw)
        t = body["event"]
        pdu = self.peer.pdu(V10, room, type=t["type"], sender=t["sender"], state_key=t["state_key"],
                            content=t["content"], prev_event_ids=t["prev_events"], auth_event_ids=t["auth_events"],
                            depth=t["depth"])
        eid = compute_event_id(pdu, V10)
        prefix = "/_matrix/federation/v1" if kind == "knock" else "/_matrix/federation/v2"
        code, body, raw = await self.request("PUT", f"{prefix}/send_{kind}/{quote(room, safe='')}/{quote(eid, safe='')}", pdu)
        self.assertEqual(code, 200, raw)
        return body

    def assertRedacted(self, pdus, ids):
        """The name and Alice's join in ``pdus`` are redacted; their content is nowhere."""
        by_type = {p["type"]: p for p in pdus}
        self.assertEqual(by_type["m.room.name"]["content"], {})
        if "m.room.member" in by_type:
            members = [p for p in pdus if p["type"] == "m.room.member" and p["state_key"] == RUNNING_ALICE]
            self.assertTrue(members)
            self.assertEqual({repr(m["content"]) for m in members}, {repr({"membership": "join"})})
        self.assertNotIn(b"Secret plans", repr(pdus).encode())
        self.assertNotIn(b"Alice A.", repr(pdus).encode())

    async def test_send_join_state_and_auth_chain(self):
        """The state and auth chain a joining server gets hold the redacted name and the
        redacted join of Alice (no display name)."""
        room, ids = await self.named_room("public")
        body = await self.handshake("join", room, "@joiner:" + self.peer.name)
        self.assertRedacted(body["state"], ids)
        self.assertRedacted(body["state"] + body["auth_chain"], ids)

    async def test_knock_room_state(self):
        """The knock_room_state a knocking server gets holds the redacted name."""
        room, ids = await self.named_room("knock")
        body = await self.handshake("knock", room, "@knocker:" + self.peer.name)
        self.assertRedacted(body["knock_room_state"], ids)

    async def test_invite_room_state(self):
        """The invite_room_state sent with an invite to another server's user holds the
        redacted name."""
        room, ids = await self.named_room("invite")
        state = await self.service.rooms.events.federation_room_state(room)
        self.assertRedacted(state, ids)
