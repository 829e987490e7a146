"""Tests for the federation history endpoints (/event, /state, /state_ids, /event_auth,
/backfill, /get_missing_events): real SQLite, real events, real X-Matrix signed requests
over loopback HTTP; HOSTILE.md rows 27 and 28."""

from __future__ import annotations

import sqlite3

from fedserver.events.builder import build_event
from fedserver.room_versions import V1, V3, V10, V11, V12
from fedserver.storage import PersistEntry
from tests.test_history_support import (
    ALICE,
    GONE,
    PEER,
    SIGNING_KEYS,
    STRANGER,
    US,
    FederationHarness,
    RoomBuilder,
    pdu_ids,
    persist_scenario,
    q,
)
from tests.test_storage_support import StoreTestCase


def auth_chain(room: RoomBuilder, event_id: str) -> set[str]:
    """The auth chain of an event, computed from the events as built."""
    out: set[str] = set()
    todo = list(room.by_id[event_id].auth_event_ids)
    while todo:
        e = todo.pop()
        if e not in out:
            out.add(e)
            todo.extend(room.by_id[e].auth_event_ids)
    return out


def ids(room: RoomBuilder, *names: str) -> list[str]:
    return [room.events[n].event_id for n in names]


class HistoryTestCase(StoreTestCase):
    """Base: a stored scenario room and the history routes behind X-Matrix auth."""

    async def setup_room(self, rv=V10, visibility="shared", acl_check=None):
        self.path = self.db_path()
        self.store = await self.open(self.path)
        self.room = await persist_scenario(self.store, rv, visibility)
        self.fed = FederationHarness(self, self.store, acl_check=acl_check)
        return self.room

    def eid(self, name: str) -> str:
        return self.room.events[name].event_id

    def pdu(self, name: str) -> dict:
        return self.room.events[name].pdu

    async def get(self, path: str, **kw):
        return await self.fed.call("GET", path, **kw)

    async def persist_outliers(self, *specs):
        """Store events built after the scenario's last one as outliers."""
        out = []
        for i, (type, content, state_key) in enumerate(specs):
            e = build_event(
                self.room.rv, room_id=self.room.room_id, type=type, sender=ALICE, content=content,
                state_key=state_key, prev_event_ids=[self.eid("m7")],
                auth_event_ids=ids(self.room, "create", "power", "alice_join"), depth=100 + i,
                origin_server_ts=1_800_000_000_000 + i, server_name=US, signing_key=SIGNING_KEYS[US],
            )
            out.append(e)
        await self.store.persist_events([PersistEntry(e, outlier=True) for e in out])
        return out


class EventTests(HistoryTestCase):
    """GET /event/{eventId}."""

    async def test_event_as_single_pdu_transaction(self):
        """An event of the room is served to a server with a joined member as a
        transaction from us holding exactly its PDU, with the current time."""
        await self.setup_room()
        resp = await self.get("/event/" + q(self.eid("m4")))
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.body["origin"], US)
        self.assertIsInstance(resp.body["origin_server_ts"], int)
        self.assertGreater(resp.body["origin_server_ts"], 1_700_000_000_000)
        self.assertEqual(resp.body["pdus"], [self.pdu("m4")])

    async def test_soft_failed_and_outliers_served(self):
        """A soft-failed event is served (spec "Soft failure": returned by /event);
        outliers are too: a state outlier whole, a non-state outlier (state unknown) as
        its redacted copy."""
        await self.setup_room()
        resp = await self.get("/event/" + q(self.eid("soft_failed")))
        self.assertEqual((resp.code, resp.body["pdus"]), (200, [self.pdu("soft_failed")]))
        topic, message = await self.persist_outliers(
            ("m.room.topic", {"topic": "outlier topic"}, ""),
            ("m.room.message", {"body": "outlier message"}, None),
        )
        resp = await self.get("/event/" + q(topic.event_id))
        self.assertEqual((resp.code, resp.body["pdus"]), (200, [topic.pdu]))
        resp = await self.get("/event/" + q(message.event_id))
        self.assertEqual(resp.code, 200)
        self.assertEqual(resp.body["pdus"][0]["content"], {})
        self.assertEqual(resp.body["pdus"][0]["hashes"], message.pdu["hashes"])

    async def test_rejected_and_unknown_events_are_404(self):
        """A rejected event is never relayed (spec "Rejection") and an event we do not
        hold does not exist: both 404 M_NOT_FOUND."""
        await self.setup_room()
        for event_id in (self.eid("rejected"), "$" + "A" * 43, "$nope:peer.test"):
            resp = await self.get("/event/" + q(event_id))
            self.assertEqual((resp.code, resp.body["errcode"]), (404, "M_NOT_FOUND"), event_id)


class StateTests(HistoryTestCase):
    """GET /state/{roomId} and /state_ids/{roomId}."""

    def expected_state(self, *names):
        return set(ids(self.room, *names))

    async def test_state_before_event_with_auth_chain(self):
        """/state?event_id=m7 answers the state before m7 (create, alice, power levels,
        join rules, history visibility, bob's and dave's memberships) as full PDUs and
        the auth chain of those events; no rejected or soft-failed message appears."""
        await self.setup_room()
        resp = await self.get(f"/state/{q(self.room.room_id)}?event_id={q(self.eid('m7'))}")
        self.assertEqual(resp.code, 200, resp)
        state = self.expected_state("create", "alice_join", "power", "join_rules", "history", "bob_join", "dave_leave")
        served = {p["hashes"]["sha256"]: p for p in resp.body["pdus"]}
        self.assertEqual(set(pdu_ids(self.room, resp.body["pdus"])), state)
        for event_id in state:
            self.assertEqual(served[self.room.by_id[event_id].pdu["hashes"]["sha256"]], self.room.by_id[event_id].pdu)
        chain = set().union(*(auth_chain(self.room, e) for e in state))
        self.assertEqual(set(pdu_ids(self.room, resp.body["auth_chain"])), chain)
        self.assertTrue(chain)

    async def test_state_ids_is_state_before_the_event(self):
        """/state_ids at bob's join is the state BEFORE it: it holds bob's invite, not
        the join; the auth chain ids are the recursive auth events of that state."""
        await self.setup_room()
        resp = await self.get(f"/state_ids/{q(self.room.room_id)}?event_id={q(self.eid('bob_join'))}")
        self.assertEqual(resp.code, 200, resp)
        state = self.expected_state("create", "alice_join", "power", "join_rules", "history", "bob_invite")
        self.assertEqual(set(resp.body["pdu_ids"]), state)
        self.assertEqual(len(resp.body["pdu_ids"]), len(state))
        chain = set().union(*(auth_chain(self.room, e) for e in state))
        self.assertEqual(set(resp.body["auth_chain_ids"]), chain)

    async def test_rejected_events_never_served_as_state(self):
        """Even when a state handed to storage names a rejected state event, /state and
        /state_ids at the next event leave it out (spec "Rejection"), and it is not in
        the auth chain either."""
        room = await self.setup_room()
        bad_topic = room.add(
            "bad_topic", "m.room.topic", "@mallory:peer.test", {"topic": "x"}, "",
            rejection=("not allowed", "7", None),
        )
        after = room.add("after", "m.room.message", ALICE, {"body": "after"})
        room.entries[-1].state_before = dict(room.state)
        room.entries[-1].state_before[("m.room.topic", "")] = bad_topic.event_id
        await self.store.persist_events(room.entries[-2:])
        resp = await self.get(f"/state_ids/{q(room.room_id)}?event_id={q(after.event_id)}")
        self.assertEqual(resp.code, 200, resp)
        self.assertNotIn(bad_topic.event_id, resp.body["pdu_ids"])
        self.assertNotIn(bad_topic.event_id, resp.body["auth_chain_ids"])
        self.assertEqual(set(resp.body["pdu_ids"]), set(room.state.values()))
        resp = await self.get(f"/state/{q(room.room_id)}?event_id={q(after.event_id)}")
        self.assertNotIn(bad_topic.event_id, pdu_ids(room, resp.body["pdus"]))
        self.assertEqual(len(resp.body["pdus"]), len(room.state))

    async def test_state_at_unusable_events_is_404(self):
        """The state at an outlier (unknown to us), at a rejected event, at an event of
        another room or at an unknown event is 404 M_NOT_FOUND; a missing event_id is 400
        M_MISSING_PARAM."""
        await self.setup_room()
        (topic,) = await self.persist_outliers(("m.room.topic", {"topic": "t"}, ""))
        other = await persist_scenario(self.store, V10)
        for event_id in (topic.event_id, self.eid("rejected"), other.events["m1"].event_id, "$" + "B" * 43):
            for endpoint in ("state", "state_ids"):
                resp = await self.get(f"/{endpoint}/{q(self.room.room_id)}?event_id={q(event_id)}")
                self.assertEqual((resp.code, resp.body["errcode"]), (404, "M_NOT_FOUND"), (endpoint, event_id))
        for endpoint in ("state", "state_ids"):
            resp = await self.get(f"/{endpoint}/{q(self.room.room_id)}")
            self.assertEqual((resp.code, resp.body["errcode"]), (400, "M_MISSING_PARAM"))

    async def test_room_versions(self):
        """In rooms v1 (event ids in the PDU), v3, v11 and v12 (room id from the create
        event, which has no room_id), /event serves the stored PDU exactly and
        /state_ids the state before the event."""
        for rv in (V1, V3, V11, V12):
            store = await self.open()
            room = await persist_scenario(store, rv)
            fed = FederationHarness(self, store)
            served = {}
            for name in ("create", "m5"):
                resp = await fed.call("GET", "/event/" + q(room.events[name].event_id))
                self.assertEqual((resp.code, resp.body["pdus"]), (200, [room.events[name].pdu]), (rv, name))
                served[name] = resp.body["pdus"][0]
            self.assertEqual("event_id" in served["m5"], rv is V1)
            self.assertEqual("room_id" in served["create"], rv is not V12)
            resp = await fed.call("GET", f"/state_ids/{q(room.room_id)}?event_id={q(room.events['m3'].event_id)}")
            self.assertEqual(resp.code, 200, (rv, resp))
            self.assertEqual(
                set(resp.body["pdu_ids"]),
                set(ids(room, "create", "alice_join", "power", "join_rules", "history", "bob_invite")),
                rv,
            )


class EventAuthTests(HistoryTestCase):
    """GET /event_auth/{roomId}/{eventId}."""

    async def test_auth_chain_of_event(self):
        """The full auth chain of bob's message: his join, the invite and join rules
        behind it, alice's join, power levels and the create event, recursively."""
        await self.setup_room()
        resp = await self.get(f"/event_auth/{q(self.room.room_id)}/{q(self.eid('m5'))}")
        self.assertEqual(resp.code, 200, resp)
        expected = auth_chain(self.room, self.eid("m5"))
        self.assertEqual(set(pdu_ids(self.room, resp.body["auth_chain"])), expected)
        self.assertEqual(len(resp.body["auth_chain"]), len(expected))
        self.assertIn(self.eid("bob_invite"), expected)
        for p in resp.body["auth_chain"]:
            self.assertIn(p, [e.pdu for e in self.room.by_id.values()])

    async def test_event_auth_unknown_or_other_room(self):
        """An event of another room, a rejected one, or an unknown one: 404."""
        await self.setup_room()
        other = await persist_scenario(self.store, V10)
        for event_id in (other.events["m1"].event_id, self.eid("rejected"), "$" + "C" * 43):
            resp = await self.get(f"/event_auth/{q(self.room.room_id)}/{q(event_id)}")
            self.assertEqual((resp.code, resp.body["errcode"]), (404, "M_NOT_FOUND"))


class BackfillTests(HistoryTestCase):
    """GET /backfill/{roomId}?v=&limit=."""

    async def test_backfill_from_latest(self):
        """From m7 with limit 5: m7 and the four events before it, deepest first, as
        full PDUs, in a transaction from us."""
        await self.setup_room()
        resp = await self.get(f"/backfill/{q(self.room.room_id)}?v={q(self.eid('m7'))}&limit=5")
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.body["origin"], US)
        self.assertIsInstance(resp.body["origin_server_ts"], int)
        names = ("m7", "dave_leave", "m6", "dave_join", "m5")
        self.assertEqual(resp.body["pdus"], [self.pdu(n) for n in names])

    async def test_refused_events_left_out(self):
        """Walking back over the whole room never yields the rejected or soft-failed
        event (nothing references them); naming the soft-failed event in v serves it
        (spec: returned when the request includes it), naming the rejected one does
        not."""
        await self.setup_room()
        resp = await self.get(f"/backfill/{q(self.room.room_id)}?v={q(self.eid('m7'))}&limit=100")
        served = pdu_ids(self.room, resp.body["pdus"])
        self.assertEqual(len(served), len(self.room.events) - 2)
        self.assertNotIn(self.eid("rejected"), served)
        self.assertNotIn(self.eid("soft_failed"), served)
        v = f"v={q(self.eid('soft_failed'))}&v={q(self.eid('rejected'))}"
        resp = await self.get(f"/backfill/{q(self.room.room_id)}?{v}&limit=1")
        self.assertEqual(pdu_ids(self.room, resp.body["pdus"]), [self.eid("soft_failed")])
        resp = await self.get(f"/backfill/{q(self.room.room_id)}?v={q(self.eid('rejected'))}&limit=1")
        self.assertEqual(resp.body["pdus"], [])

    async def test_v_comma_separated_or_repeated(self):
        """v may be repeated (as Synapse sends it) or comma-separated (the spec's form
        style); both start from both events."""
        await self.setup_room()
        a, b = self.eid("m2"), self.eid("m4")
        for query in (f"v={q(a)}&v={q(b)}", f"v={q(a + ',' + b)}", f"v={q(a)},{q(b)}"):
            resp = await self.get(f"/backfill/{q(self.room.room_id)}?{query}&limit=2")
            self.assertEqual(resp.code, 200, (query, resp))
            self.assertEqual(pdu_ids(self.room, resp.body["pdus"]), [b, a], query)

    async def test_limit_clamped_to_100(self):
        """limit=100000 serves 100 events (the clamp), limit=-5 and limit=0 serve none."""
        room = await self.setup_room()
        for i in range(120):
            room.add(f"x{i}", "m.room.message", ALICE, {"body": str(i)})
        await self.store.persist_events(room.entries[-120:])
        last = room.events["x119"].event_id
        resp = await self.get(f"/backfill/{q(room.room_id)}?v={q(last)}&limit=100000")
        self.assertEqual((resp.code, len(resp.body["pdus"])), (200, 100))
        self.assertEqual(resp.body["pdus"][0], room.events["x119"].pdu)
        for limit in ("-5", "0"):
            resp = await self.get(f"/backfill/{q(room.room_id)}?v={q(last)}&limit={limit}")
            self.assertEqual((resp.code, resp.body["pdus"]), (200, []), limit)

    async def test_bad_parameters(self):
        """Missing v or limit: 400 M_MISSING_PARAM; a non-integer limit or a v without
        any event id: 400 M_INVALID_PARAM; more than 100 start events: 400."""
        await self.setup_room()
        room = q(self.room.room_id)
        v = q(self.eid("m7"))
        cases = [
            (f"/backfill/{room}?limit=5", "M_MISSING_PARAM"),
            (f"/backfill/{room}?v={v}", "M_MISSING_PARAM"),
            (f"/backfill/{room}?v={v}&limit=ten", "M_INVALID_PARAM"),
            (f"/backfill/{room}?v={v}&limit=1e3", "M_INVALID_PARAM"),
            (f"/backfill/{room}?v=nope&limit=5", "M_INVALID_PARAM"),
            (f"/backfill/{room}?" + "&".join(f"v=%24e{i}" for i in range(101)) + "&limit=5", "M_INVALID_PARAM"),
        ]
        for path, errcode in cases:
            resp = await self.get(path)
            self.assertEqual((resp.code, resp.body["errcode"]), (400, errcode), path)


class GetMissingEventsTests(HistoryTestCase):
    """POST /get_missing_events/{roomId}."""

    async def post(self, body, **kw):
        return await self.fed.call("POST", f"/get_missing_events/{q(self.room.room_id)}", body=body, **kw)

    async def test_walk_between_earliest_and_latest(self):
        """The prev_events of m7 back to (not into) m3, oldest first, full PDUs; with
        limit 3 the three nearest to m7; min_depth leaves out shallower events."""
        await self.setup_room()
        resp = await self.post({"earliest_events": [self.eid("m3")], "latest_events": [self.eid("m7")]})
        self.assertEqual(resp.code, 200, resp)
        names = ("bob_join", "m4", "m5", "dave_join", "m6", "dave_leave")
        self.assertEqual(resp.body["events"], [self.pdu(n) for n in names])
        resp = await self.post({"earliest_events": [self.eid("m3")], "latest_events": [self.eid("m7")], "limit": 3})
        self.assertEqual(resp.body["events"], [self.pdu(n) for n in ("dave_join", "m6", "dave_leave")])
        depth = self.room.events["m5"].depth
        resp = await self.post(
            {"earliest_events": [], "latest_events": [self.eid("m7")], "limit": 20, "min_depth": depth}
        )
        self.assertEqual(resp.body["events"], [self.pdu(n) for n in ("m5", "dave_join", "m6", "dave_leave")])

    async def test_default_limit_10_and_clamp_20(self):
        """Without limit at most 10 events come back; limit 500 is clamped to 20."""
        room = await self.setup_room()
        for i in range(40):
            room.add(f"x{i}", "m.room.message", ALICE, {"body": str(i)})
        await self.store.persist_events(room.entries[-40:])
        body = {"earliest_events": [], "latest_events": [room.events["x39"].event_id]}
        resp = await self.post(body)
        self.assertEqual(pdu_ids(room, resp.body["events"]), ids(room, *(f"x{i}" for i in range(29, 39))))
        resp = await self.post(dict(body, limit=500))
        self.assertEqual(pdu_ids(room, resp.body["events"]), ids(room, *(f"x{i}" for i in range(19, 39))))
        resp = await self.post(dict(body, limit=-1))
        self.assertEqual((resp.code, resp.body["events"]), (200, []))

    async def test_bad_bodies(self):
        """Wrong shapes are 400 with a Matrix error, never a 500: not JSON (M_NOT_JSON),
        not an object, lists of the wrong type, ids with NUL or no sigil, non-integer
        limit or min_depth (M_BAD_JSON), missing lists (M_MISSING_PARAM)."""
        await self.setup_room()
        ok = {"earliest_events": [], "latest_events": [self.eid("m7")]}
        cases = [
            ([1, 2], "M_BAD_JSON"),
            ({"latest_events": [self.eid("m7")]}, "M_MISSING_PARAM"),
            ({"earliest_events": []}, "M_MISSING_PARAM"),
            (dict(ok, latest_events=self.eid("m7")), "M_BAD_JSON"),
            (dict(ok, earliest_events=[1]), "M_BAD_JSON"),
            (dict(ok, latest_events=["$a\x00b"]), "M_BAD_JSON"),
            (dict(ok, latest_events=["../../etc/passwd"]), "M_BAD_JSON"),
            (dict(ok, limit="10"), "M_BAD_JSON"),
            (dict(ok, limit=True), "M_BAD_JSON"),
            (dict(ok, limit=2.5), "M_BAD_JSON"),
            (dict(ok, min_depth=None), "M_BAD_JSON"),
            (dict(ok, latest_events=["$x"] * 1001), "M_BAD_JSON"),
        ]
        for body, errcode in cases:
            resp = await self.post(body)
            self.assertEqual((resp.code, resp.body["errcode"]), (400, errcode), str(body)[:80])
        uri = f"/get_missing_events/{q(self.room.room_id)}"
        # Signed as if it had no body: the body is parsed (and refused) before the
        # signature is checked.
        resp = await self.fed.call("POST", uri, raw_body=b"{not json")
        self.assertEqual(resp.code, 400)
        self.assertEqual(resp.body["errcode"], "M_NOT_JSON")


class AccessTests(HistoryTestCase):
    """Who may read a room's history (issue 12: rooms a server may not see look
    non-existent), unknown rooms, authentication and server ACLs."""

    def requests(self):
        room = q(self.room.room_id)
        m7 = q(self.eid("m7"))
        return [
            ("GET", f"/event/{m7}", None),
            ("GET", f"/state/{room}?event_id={m7}", None),
            ("GET", f"/state_ids/{room}?event_id={m7}", None),
            ("GET", f"/event_auth/{room}/{m7}", None),
            ("GET", f"/backfill/{room}?v={m7}&limit=10", None),
            ("POST", f"/get_missing_events/{room}", {"earliest_events": [], "latest_events": [self.eid("m7")]}),
        ]

    def unknown_twin(self, path: str, body):
        """``(path, body)`` with the room id and event ids swapped for ones we do not know."""
        swaps = {q(self.room.room_id): q("!unknown:" + US), q(self.eid("m7")): q("$" + "U" * 43),
                 self.eid("m7"): "$" + "U" * 43}
        for old, new in swaps.items():
            path = path.replace(old, new)
        if body is not None:
            body = {k: [swaps.get(x, x) for x in v] if isinstance(v, list) else v for k, v in body.items()}
        return path, body

    async def test_servers_without_a_member_see_no_room(self):
        """Issue 12 / seed 004 (replacing HOSTILE row 27's 403): a server that never had a
        member (stranger.test) and one whose only member left (gone.test) get from all six
        endpoints exactly what a room (or event) we do not know gets: 404 M_NOT_FOUND with
        the same message, naming only what they asked for; no event content."""
        await self.setup_room(visibility="shared")
        for origin in (STRANGER, GONE):
            for method, path, body in self.requests():
                resp = await self.fed.call(method, path, origin=origin, body=body)
                twin_path, twin_body = self.unknown_twin(path, body)
                twin = await self.fed.call(method, twin_path, origin=origin, body=twin_body)
                self.assertEqual((resp.code, resp.body["errcode"]), (404, "M_NOT_FOUND"), (origin, path))
                expected = twin.body["error"].replace("!unknown:" + US, self.room.room_id).replace("$" + "U" * 43, self.eid("m7"))
                self.assertEqual((twin.code, resp.body["error"]), (404, expected), (origin, path))
                self.assertNotIn(b"seven", resp.raw)

    async def test_world_readable_room_served_to_any_server(self):
        """A world_readable room may be read by any server (its history is public): a
        server without a member gets 200 from all six endpoints, with the content of
        events sent while the room was world_readable."""
        await self.setup_room(visibility="world_readable")
        for origin in (STRANGER, GONE):
            for method, path, body in self.requests():
                resp = await self.fed.call(method, path, origin=origin, body=body)
                self.assertEqual(resp.code, 200, (origin, path, resp))
            resp = await self.get("/event/" + q(self.eid("m7")), origin=origin)
            self.assertEqual(resp.body["pdus"], [self.pdu("m7")])

    async def test_unknown_room_is_404(self):
        """A room we do not know at all looks non-existent: 404 M_NOT_FOUND."""
        await self.setup_room()
        unknown = q("!unknown:" + US)
        m7 = q(self.eid("m7"))
        for method, path, body in [
            ("GET", f"/state/{unknown}?event_id={m7}", None),
            ("GET", f"/state_ids/{unknown}?event_id={m7}", None),
            ("GET", f"/event_auth/{unknown}/{m7}", None),
            ("GET", f"/backfill/{unknown}?v={m7}&limit=10", None),
            ("POST", f"/get_missing_events/{unknown}", {"earliest_events": [], "latest_events": [self.eid("m7")]}),
        ]:
            resp = await self.fed.call(method, path, body=body)
            self.assertEqual((resp.code, resp.body["errcode"]), (404, "M_NOT_FOUND"), path)

    async def test_unsigned_requests_get_401(self):
        """HOSTILE row 1: every endpoint needs an X-Matrix signature."""
        await self.setup_room()
        for method, path, body in self.requests():
            resp = await self.fed.call(method, path, origin=None, body=body)
            self.assertEqual((resp.code, resp.body["errcode"]), (401, "M_UNAUTHORIZED"), path)

    async def test_acl_denied_server_gets_403(self):
        """With an ACL hook wired, a denied server gets 403 M_FORBIDDEN from every
        endpoint (spec "Server Access Control Lists"), /event included; the hook is asked
        about (origin, room id); an allowed server is served."""
        asked = []

        async def acl_check(origin, room_id):
            asked.append((origin, room_id))
            return origin != PEER

        await self.setup_room(acl_check=acl_check)
        for method, path, body in self.requests():
            resp = await self.fed.call(method, path, body=body)
            self.assertEqual((resp.code, resp.body["errcode"]), (403, "M_FORBIDDEN"), path)
        self.assertEqual(asked, [(PEER, self.room.room_id)] * 6)
        # Once the hook allows, the same requests succeed.
        asked.clear()
        self.fed = FederationHarness(self, self.store, acl_check=lambda o, r: _succeed(True))
        for method, path, body in self.requests():
            resp = await self.fed.call(method, path, body=body)
            self.assertEqual(resp.code, 200, path)

    async def test_acl_only_once_the_room_is_visible(self):
        """Visibility is decided before the ACL: a server the ACL denies that may not see
        the room gets 404 (as for an unknown room), not the 403 that would reveal it, and
        the ACL is never consulted for it."""
        asked = []

        async def acl_check(origin, room_id):
            asked.append(origin)
            return False

        await self.setup_room(acl_check=acl_check)
        for method, path, body in self.requests():
            resp = await self.fed.call(method, path, origin=STRANGER, body=body)
            self.assertEqual((resp.code, resp.body["errcode"]), (404, "M_NOT_FOUND"), path)
        self.assertEqual(asked, [])


def _succeed(value):
    from twisted.internet import defer

    return defer.succeed(value)


class HostileIdTests(HistoryTestCase):
    """HOSTILE.md row 28: ids carrying ../, NUL, quotes or SQL fragments."""

    async def test_hostile_ids(self):
        """Ids without their sigil, with NUL or control characters, or over 255 bytes
        are 400 M_INVALID_PARAM; sigilled ids with ../, quotes or SQL are looked up as
        plain parameters and not found (404). The database is unharmed afterwards."""
        await self.setup_room()
        room = q(self.room.room_id)
        m7 = q(self.eid("m7"))
        bad = ["../../etc/passwd", "$a\x00b", "$a\nb", "$" + "x" * 300, "", "x"]
        odd = ["$../../etc/passwd", "$' OR '1'='1", '$"; DROP TABLE events; --', "$%00", "$a/../b"]
        for event_id in bad:
            for path in (f"/event/{q(event_id)}", f"/state_ids/{room}?event_id={q(event_id)}",
                         f"/event_auth/{room}/{q(event_id)}"):
                resp = await self.get(path)
                self.assertEqual((resp.code, resp.body["errcode"]), (400, "M_INVALID_PARAM"), path)
        for event_id in odd:
            for path in (f"/event/{q(event_id)}", f"/state_ids/{room}?event_id={q(event_id)}",
                         f"/event_auth/{room}/{q(event_id)}"):
                resp = await self.get(path)
                self.assertEqual((resp.code, resp.body["errcode"]), (404, "M_NOT_FOUND"), path)
        for room_id in ["../x", "!a\x00b", "!" + "r" * 300]:
            resp = await self.get(f"/state_ids/{q(room_id)}?event_id={m7}")
            self.assertEqual((resp.code, resp.body["errcode"]), (400, "M_INVALID_PARAM"), room_id)
        for room_id in ["!../../etc", "!' OR 1=1 --", '!"; DROP TABLE rooms; --']:
            for path in (f"/state_ids/{q(room_id)}?event_id={m7}", f"/backfill/{q(room_id)}?v={m7}&limit=5"):
                resp = await self.get(path)
                self.assertEqual((resp.code, resp.body["errcode"]), (404, "M_NOT_FOUND"), path)
        conn = sqlite3.connect(self.path)
        try:
            count = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        finally:
            conn.close()
        self.assertEqual(count, len(self.room.events))
        resp = await self.get(f"/event/{m7}")
        self.assertEqual(resp.code, 200)
