"""History visibility over federation: which events /backfill, /get_missing_events and
/event serve whole and which as redacted copies, for each m.room.history_visibility value,
on real SQLite through X-Matrix signed loopback requests."""

from __future__ import annotations

from fedserver.room_versions import V10, V11
from tests.test_history import HistoryTestCase
from tests.test_history_support import ALICE, BOB, SCENARIO, FederationHarness, RoomBuilder, q, served_kinds

#: Events of the scenario never served by a walk (nothing references them).
REFUSED = {"rejected", "soft_failed"}


class VisibilityMatrixTests(HistoryTestCase):
    """The scenario room under each visibility value, seen by peer.test (bob: invited
    before m3, joined after it)."""

    async def check(self, visibility, redacted, rv=V10):
        await self.setup_room(rv, visibility)
        names = [n for n in SCENARIO if n in self.room.events and n not in REFUSED]
        resp = await self.get(f"/backfill/{q(self.room.room_id)}?v={q(self.eid('m7'))}&limit=100")
        self.assertEqual(resp.code, 200, resp)
        kinds = served_kinds(self.room, resp.body["pdus"])
        self.assertEqual(set(kinds), set(names))
        self.assertEqual({n for n, k in kinds.items() if k == "redacted"}, set(redacted), visibility)
        # /get_missing_events applies the same rule.
        resp = await self.fed.call(
            "POST", f"/get_missing_events/{q(self.room.room_id)}",
            body={"earliest_events": [self.eid("alice_join")], "latest_events": [self.eid("m4")], "limit": 20},
        )
        walked = served_kinds(self.room, resp.body["events"])
        self.assertEqual({n for n, k in walked.items() if k == "redacted"}, set(redacted) & set(walked), visibility)
        # ... and so does /event, one at a time.
        for name in names:
            resp = await self.get("/event/" + q(self.eid(name)))
            expected = "redacted" if name in redacted else "full"
            self.assertEqual(served_kinds(self.room, resp.body["pdus"]), {name: expected}, (visibility, name))

    async def test_shared(self):
        """shared: a server with a member now sees everything (rule 3)."""
        await self.check("shared", [])

    async def test_no_history_visibility_is_shared(self):
        """Without an m.room.history_visibility event the default is shared."""
        await self.check(None, [])

    async def test_world_readable(self):
        """world_readable: everything (rule 1)."""
        await self.check("world_readable", [])

    async def test_joined(self):
        """joined: the messages before bob joined and bob's invite (membership invite,
        not join, after it) are redacted copies; bob's join is visible (his membership
        after it is join), and so is everything after. The state events sent before the
        history_visibility event, and that event itself (the visibility before it was the
        default, shared), are visible."""
        await self.check("joined", ["m1", "m2", "bob_invite", "m3"])

    async def test_invited(self):
        """invited: only m1 and m2 are redacted; from bob's invite on (invite + invited,
        rule 4) everything is visible."""
        await self.check("invited", ["m1", "m2"])

    async def test_joined_v11_redaction_algorithm(self):
        """The redacted copies follow the event's room version (v11 here)."""
        await self.check("joined", ["m1", "m2", "bob_invite", "m3"], rv=V11)

    async def test_state_is_served_whole(self):
        """/state and /event_auth serve state and auth events whole even under joined:
        servers need them to authorise events."""
        await self.setup_room(visibility="joined")
        resp = await self.get(f"/state/{q(self.room.room_id)}?event_id={q(self.eid('m2'))}")
        self.assertEqual(set(served_kinds(self.room, resp.body["pdus"]).values()), {"full"})
        resp = await self.get(f"/event_auth/{q(self.room.room_id)}/{q(self.eid('m3'))}")
        self.assertEqual(set(served_kinds(self.room, resp.body["auth_chain"]).values()), {"full"})


class VisibilityChangeTests(HistoryTestCase):
    """A history visibility event is visible if the visibility before OR after it
    allows (client-server API, "Server behaviour")."""

    async def test_changes(self):
        """joined -> world_readable -> joined before bob (peer.test) joins: m1 and m3 are
        redacted; both later visibility events are visible (one allows after, the other
        before), m2 (world_readable) is visible; bob's join and m4 are visible."""
        path = self.db_path()
        store = await self.open(path)
        r = RoomBuilder(V10)
        r.add("create", "m.room.create", ALICE, {"creator": ALICE, "room_version": "10"}, "")
        r.add("alice_join", "m.room.member", ALICE, {"membership": "join"}, ALICE)
        r.add("power", "m.room.power_levels", ALICE, {"users": {ALICE: 100}}, "")
        r.add("join_rules", "m.room.join_rules", ALICE, {"join_rule": "public"}, "")
        r.add("hv_joined", "m.room.history_visibility", ALICE, {"history_visibility": "joined"}, "")
        r.add("m1", "m.room.message", ALICE, {"body": "1"})
        r.add("hv_open", "m.room.history_visibility", ALICE, {"history_visibility": "world_readable"}, "")
        r.add("m2", "m.room.message", ALICE, {"body": "2"})
        r.add("hv_closed", "m.room.history_visibility", ALICE, {"history_visibility": "joined"}, "")
        r.add("m3", "m.room.message", ALICE, {"body": "3"})
        r.add("bob_join", "m.room.member", BOB, {"membership": "join", "displayname": "Bob"}, BOB)
        r.add("m4", "m.room.message", ALICE, {"body": "4"})
        await store.persist_events(r.entries)
        fed = FederationHarness(self, store)
        resp = await fed.call("GET", f"/backfill/{q(r.room_id)}?v={q(r.events['m4'].event_id)}&limit=100")
        kinds = served_kinds(r, resp.body["pdus"])
        self.assertEqual({n for n, k in kinds.items() if k == "redacted"}, {"m1", "m3"})
        self.assertEqual(len(kinds), len(r.events))

