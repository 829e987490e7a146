"""The backfill handler against servers that answer, lie, fail or never answer (HOSTILE row
38), on a real store, pipeline and keyring; and the pure backwards state derivation."""

from __future__ import annotations

from typing import Any, Optional

from signedjson.key import generate_signing_key
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from fedserver import room_versions
from fedserver.auth.engine import AuthEngine
from fedserver.auth.plugins import make_plugin_manager
from fedserver.events.builder import build_event
from fedserver.federation.client import HttpResponseError
from fedserver.handlers.federation.backfill import BackfillHandler
from fedserver.handlers.federation.gaps import GapFiller
from fedserver.handlers.federation.receipt import check_received
from fedserver.handlers.rooms.pipeline import RoomPipeline
from fedserver.state.backwards import derive_states_before, newest_first
from fedserver.storage import PersistEntry
from tests.test_federation_support import Peer, StoreTestCase, deferLater
from tests.test_history_support import ALICE, BOB, MALLORY, PEER, SIGNING_KEYS, US, RoomBuilder

ROOM_VERSIONS = (room_versions.V10, room_versions.V12)


def peer_of(name: str) -> Peer:
    p = Peer(name, "k1")
    p.key = SIGNING_KEYS[name]
    return p


class FakeClient:
    """A federation client whose servers answer from ``answers[server]``: a callable
    ``(path, args) -> response``, an exception to raise, or ``None`` (never answers)."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self.calls: list[tuple[str, str, Any]] = []

    def get_json(self, destination: str, path: str, args: Any = None, **kw: Any) -> defer.Deferred:
        self.calls.append((destination, path, args))
        answer = self.answers.get(destination)
        if answer is None:
            return defer.Deferred()
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.maybeDeferred(answer, path, args)


class PeerRoom:
    """A room of peer.test (bob created it) with ``n`` messages, that alice (us.test)
    then joined; our store holds its state (as the join stores it) and alice's join."""

    def __init__(self, rv: Any, n: int, visibility: str = "shared") -> None:
        self.room = r = RoomBuilder(rv)
        if r.room_id is not None:
            r.room_id = r.room_id.split(":", 1)[0] + ":" + PEER  # bob's server made it
        content: dict[str, Any] = {"room_version": rv.identifier}
        if not rv.updated_redaction_rules:
            content["creator"] = BOB
        r.add("create", "m.room.create", BOB, content, "")
        r.add("bob_join", "m.room.member", BOB, {"membership": "join"}, BOB)
        # From v12 the creator is not listed (and may not be).
        r.add("power", "m.room.power_levels", BOB, {"users": {} if rv.privileged_creators else {BOB: 100}}, "")
        r.add("join_rules", "m.room.join_rules", BOB, {"join_rule": "public"}, "")
        r.add("history", "m.room.history_visibility", BOB, {"history_visibility": visibility}, "")
        for i in range(n):
            r.add(f"m{i}", "m.room.message", BOB, {"msgtype": "m.text", "body": f"m{i}"})
        self.before_join = dict(r.state)
        r.add("alice_join", "m.room.member", ALICE, {"membership": "join"}, ALICE)
        self.ordered = [e.event_id for e in (entry.event for entry in r.entries)]

    def backfill(self, path: str, args: Any) -> dict:
        """An honest ``/backfill`` answer: ``v`` and the events before them."""
        v = args["v"]
        limit = int(args["limit"])
        index = {eid: i for i, eid in enumerate(self.ordered)}
        top = max((index[x] for x in v if x in index), default=-1)
        chosen = self.ordered[max(0, top - limit + 1): top + 1]
        return {"origin": PEER, "origin_server_ts": 1, "pdus": [self.room.by_id[e].pdu for e in reversed(chosen)]}

    async def store_joined(self, store: Any, pipeline: RoomPipeline) -> None:
        """What our server holds after the join: the state as outliers, the join with it."""
        r = self.room
        state_events = [r.by_id[e] for e in self.before_join.values()]
        await pipeline.process_outliers(r.room_id, state_events)
        join = r.events["alice_join"]
        outcome = await pipeline.process(r.room_id, [join], state_before={join.event_id: self.before_join})
        assert outcome[join.event_id].accepted, outcome


class BackfillHandlerTests(StoreTestCase):
    """BackfillHandler.fill on a real SQLite store, pipeline and keyring, the servers faked."""

    async def setup(self, rv: Any, n: int = 30, **kw: Any) -> PeerRoom:
        self.store = await self.open_store()
        pm = make_plugin_manager(load_entrypoints=False)
        self.pipeline = RoomPipeline(self.store, AuthEngine(pm), pm)
        self.keyring, _ = self.make_keyring(self.store, peer_of(PEER), peer_of(US))
        self.client = FakeClient()
        self.clock = Clock()
        self.clock.advance(1_700_000_000)

        async def check(origin: str, pdus: list) -> list:
            return (await check_received(self.keyring, pdus, rv)).events

        self.gaps = GapFiller(self.client, check, self.store)
        self.handler = BackfillHandler(
            client=self.client, keyring=self.keyring, store=self.store, pipeline=self.pipeline, gaps=self.gaps,
            clock=self.clock, server_name=US, timeout=5.0, **kw,
        )
        room = PeerRoom(rv, n)
        await room.store_joined(self.store, self.pipeline)
        return room

    async def visible_ids(self, room_id: str) -> list[str]:
        rows = await self.store.rooms.paginate(room_id, (2**62, 2**62), True, 1000)
        return [e.event_id for _, e in reversed(rows)]

    async def test_history_is_placed_behind_the_join(self):
        """The extremity is the join; one /backfill to the server in the room brings the
        room's beginning: placed in order with its state, outside the /sync stream, the
        current state and forward extremities unchanged, no extremity left."""
        for rv in ROOM_VERSIONS:
            room = await self.setup(rv)
            r = room.room
            self.client.answers[PEER] = room.backfill
            current = await self.store.get_current_state_ids(r.room_id)
            forward = await self.store.get_forward_extremities(r.room_id)
            join = r.events["alice_join"]
            self.assertTrue(await self.handler.fill(r.room_id, max_depth=join.depth))
            self.assertEqual(await self.visible_ids(r.room_id), room.ordered, rv.identifier)
            self.assertEqual(await self.store.get_current_state_ids(r.room_id), current)
            self.assertEqual(await self.store.get_forward_extremities(r.room_id), forward)
            self.assertEqual(await self.store.backfill.get_backward_extremities(r.room_id, 2**62), [])
            timelines = await self.store.rooms.get_room_timelines({r.room_id: (0, 2**62)}, 100)
            self.assertEqual([e.event_id for _, e in timelines[r.room_id].events], [join.event_id])
            # The state at a backfilled message is the room's state there.
            groups = await self.store.get_state_ids_for_events([r.events["m3"].event_id])
            state = await self.store.get_state_group(groups[r.events["m3"].event_id])
            self.assertEqual(dict(state), room.before_join)
            [(destination, path, args)] = self.client.calls
            self.assertEqual(destination, PEER)
            self.assertIn("/backfill/", path)
            self.assertEqual(args["v"], [r.events[f"m{29}"].event_id])

    async def test_pages_carry_the_state_backwards(self):
        """With 10 events per /backfill, 35 events are placed in 4 requests, each page's
        state carried back from the one after it (no /state_ids needed for messages)."""
        room = await self.setup(room_versions.V11, n=30, limit=10)
        r = room.room
        self.client.answers[PEER] = room.backfill
        for _ in range(4):
            self.assertTrue(await self.handler.fill(r.room_id, max_depth=2**62))
        self.assertEqual(await self.visible_ids(r.room_id), room.ordered)
        self.assertEqual(self.handler.requests, 4)
        paths = [p for _, p, _ in self.client.calls]
        self.assertFalse([p for p in paths if "state_ids" in p])
        self.assertFalse(await self.handler.fill(r.room_id, max_depth=2**62))

    async def test_lies_are_rejected_like_any_bad_pdu(self):
        """HOSTILE row 38: an answer with a forged signature, an event of another room,
        an event that does not lead to what was asked for, and an event that fails the
        auth rules: the first three are never stored, the last is stored rejected and
        never shown; the honest events are placed."""
        room = await self.setup(room_versions.V10, n=5)
        r = room.room
        rv = r.rv
        honest = room.backfill
        last = r.events["m4"]
        forged = build_event(
            rv, room_id=r.room_id, type="m.room.message", sender=BOB, content={"body": "forged"},
            prev_event_ids=[last.event_id], auth_event_ids=list(last.auth_event_ids), depth=last.depth,
            origin_server_ts=5, server_name=PEER, signing_key=generate_signing_key("k1"),
        )
        other = RoomBuilder(rv)
        other.add("create", "m.room.create", BOB, {"room_version": rv.identifier, "creator": BOB}, "")
        unrelated = build_event(
            rv, room_id=r.room_id, type="m.room.message", sender=BOB, content={"body": "unrelated"},
            prev_event_ids=[r.events["m0"].event_id], auth_event_ids=list(last.auth_event_ids), depth=9,
            origin_server_ts=6, server_name=PEER, signing_key=SIGNING_KEYS[PEER],
        )
        mallory = build_event(
            rv, room_id=r.room_id, type="m.room.message", sender=MALLORY, content={"body": "spam"},
            prev_event_ids=[r.events["m3"].event_id], auth_event_ids=[r.events["create"].event_id,
                                                                      r.events["power"].event_id],
            depth=r.events["m4"].depth, origin_server_ts=7, server_name=PEER, signing_key=SIGNING_KEYS[PEER],
        )

        def lying(path: str, args: Any) -> dict:
            answer = honest(path, args)
            answer["pdus"] = [forged.pdu, other.events["create"].pdu, unrelated.pdu] + answer["pdus"]
            return answer

        # The join cites m4; mallory's message (a sibling of m4 under m3) is asked for too.
        self.client.answers[PEER] = lying
        join = r.events["alice_join"]
        self.assertTrue(await self.handler.fill(r.room_id, max_depth=join.depth))
        have = await self.store.have_events([forged.event_id, other.events["create"].event_id, unrelated.event_id])
        self.assertEqual(have, set())
        self.assertEqual(await self.visible_ids(r.room_id), room.ordered)
        # An auth failure is stored rejected, never shown.
        def with_mallory(path: str, args: Any) -> dict:
            return {"origin": PEER, "origin_server_ts": 1, "pdus": [mallory.pdu]}

        extra = r.events["m4"]
        self.client.answers[PEER] = with_mallory
        self.handler._retry.clear()
        # Make an event citing mallory's so that it is asked for.
        child = build_event(
            rv, room_id=r.room_id, type="m.room.message", sender=BOB, content={"body": "after spam"},
            prev_event_ids=[mallory.event_id], auth_event_ids=list(extra.auth_event_ids),
            depth=join.depth + 1, origin_server_ts=8, server_name=PEER, signing_key=SIGNING_KEYS[PEER],
        )
        state_after_join = dict(room.before_join)
        state_after_join[join.state_tuple] = join.event_id
        await self.pipeline.process(r.room_id, [child], state_before={child.event_id: state_after_join})
        self.assertTrue(await self.handler.fill(r.room_id, max_depth=child.depth))
        meta = (await self.store.get_event_meta([mallory.event_id]))[mallory.event_id]
        self.assertTrue(meta.rejected)
        self.assertNotIn(mallory.event_id, await self.visible_ids(r.room_id))

    async def test_gap_in_the_middle_is_filled(self):
        """Events we skipped while away (we hold an event whose prev events we lack,
        its state taken from /state_ids as the gap filler does): a page reaching it fills
        the gap, in order, the state of the gap's events carried back from it; the event
        before the gap is no longer a forward extremity (in storage and in the pipeline)."""
        room = await self.setup(room_versions.V11, n=3)
        r = room.room
        join = r.events["alice_join"]
        for i in range(10):
            r.add(f"g{i}", "m.room.message", BOB, {"msgtype": "m.text", "body": f"g{i}"})
        z = r.add("z", "m.room.message", BOB, {"msgtype": "m.text", "body": "z"})
        room.ordered = [entry.event.event_id for entry in r.entries]
        after_join = dict(room.before_join)
        after_join[join.state_tuple] = join.event_id
        outcome = await self.pipeline.process(r.room_id, [z], state_before={z.event_id: after_join})
        self.assertTrue(outcome[z.event_id].accepted)
        extremities = await self.store.backfill.get_backward_extremities(r.room_id, z.depth, join.depth + 1)
        self.assertEqual([x.event_id for x in extremities], [z.event_id])
        self.client.answers[PEER] = room.backfill
        self.assertTrue(await self.handler.fill(r.room_id, max_depth=z.depth, min_depth=join.depth + 1))
        held = await self.visible_ids(r.room_id)
        gap = [r.events[f"g{i}"].event_id for i in range(10)]
        self.assertEqual(held[held.index(join.event_id):], [join.event_id, *gap, z.event_id])
        groups = await self.store.get_state_ids_for_events([gap[0]])
        self.assertEqual(dict(await self.store.get_state_group(groups[gap[0]])), after_join)
        self.assertEqual(await self.store.get_forward_extremities(r.room_id), [z.event_id])
        self.assertEqual(await self.pipeline.forward_extremities(r.room_id), {z.event_id})

    async def test_server_that_never_answers_does_not_hold_the_client(self):
        """HOSTILE row 38: a server that never answers: fill gives up after its timeout
        (the clock's), and within the retry delay the same extremity is not asked again."""
        room = await self.setup(room_versions.V10)
        r = room.room
        self.client.answers[PEER] = None
        d = defer.ensureDeferred(self.handler.fill(r.room_id, max_depth=2**62, timeout=2.0))
        for _ in range(100):
            if self.client.calls:
                break
            await deferLater(0.01)
        self.assertFalse(d.called)
        self.clock.advance(2.0)
        self.assertFalse(await d)
        self.assertEqual(len(self.client.calls), 1)

    async def test_next_server_after_a_failure(self):
        """A server that errors is followed by the next one in the room at that point."""
        room = await self.setup(room_versions.V10)
        r = room.room
        # A second server had a member in the room (in the state before the join).
        self.client.answers[PEER] = HttpResponseError(500, "M_UNKNOWN", "broken", b"{}")
        self.client.answers["other.test"] = room.backfill
        self.handler._servers = self._servers(["peer.test", "other.test"])
        self.assertTrue(await self.handler.fill(r.room_id, max_depth=2**62))
        self.assertEqual([c[0] for c in self.client.calls], ["peer.test", "other.test"])
        self.assertEqual(await self.visible_ids(r.room_id), room.ordered)

    def _servers(self, names: list[str]):
        async def servers(room_id: str, extremities: Any) -> list[str]:
            return names

        return servers

    async def test_servers_in_the_room_at_the_extremity(self):
        """The servers asked are those with users joined at the extremity (not ours)."""
        room = await self.setup(room_versions.V10)
        r = room.room
        extremities = await self.store.backfill.get_backward_extremities(r.room_id, 2**62)
        self.assertEqual([x.event_id for x in extremities], [r.events["alice_join"].event_id])
        self.assertEqual(await self.store.backfill.get_servers_at(extremities[0].event_id), [PEER])
        self.assertEqual(await self.handler._servers(r.room_id, extremities), [PEER])


class BackwardsStateTests(unittest.TestCase):
    """fedserver.state.backwards on plain events, every spec room version."""

    def test_state_is_carried_back_through_members_and_power_levels(self):
        """Messages take the state after them; a join and a power levels change get back
        the value their auth events name (none for a first join); a name change cannot be
        undone from its auth events and is reported unknown, and the events before it too."""
        for rv in room_versions.SPEC_ROOM_VERSIONS:
            r = RoomBuilder(rv)
            content: dict[str, Any] = {"room_version": rv.identifier}
            if not rv.updated_redaction_rules:
                content["creator"] = BOB
            r.add("create", "m.room.create", BOB, content, "")
            r.add("bob_join", "m.room.member", BOB, {"membership": "join"}, BOB)
            r.add("power", "m.room.power_levels", BOB, {"users": {BOB: 100}}, "")
            r.add("join_rules", "m.room.join_rules", BOB, {"join_rule": "public"}, "")
            r.add("name", "m.room.name", BOB, {"name": "N"}, "")
            s_name = dict(r.state)
            r.add("m1", "m.room.message", BOB, {"body": "1"})
            r.add("alice_join", "m.room.member", ALICE, {"membership": "join"}, ALICE)
            r.add("power2", "m.room.power_levels", BOB, {"users": {BOB: 100, ALICE: 50}}, "")
            r.add("m2", "m.room.message", ALICE, {"body": "2"})
            final = dict(r.state)
            names = ["name", "m1", "alice_join", "power2", "m2"]
            events = [r.events[n] for n in names]
            keys = {e.event_id: e.state_tuple for e in r.by_id.values()}
            derived = derive_states_before(events, {}, keys.get)
            self.assertEqual(derived.before, {})  # nothing held after them
            held = {r.events["m2"].event_id: [((r.events["m2"].event_id,), final)]}
            derived = derive_states_before(events, held, keys.get)
            by = {n: derived.before.get(r.events[n].event_id) for n in names}
            self.assertEqual(by["m2"], final, rv.identifier)
            after_alice = dict(final)
            after_alice[("m.room.power_levels", "")] = r.events["power"].event_id
            self.assertEqual(by["power2"], after_alice)
            self.assertEqual(by["alice_join"], s_name | {("m.room.power_levels", ""): r.events["power"].event_id})
            self.assertEqual(by["m1"], s_name)
            self.assertIsNone(by["name"])
            self.assertEqual(derived.unknown, [r.events["name"].event_id])
            # Given the state before the rename, everything is known.
            given = {r.events["name"].event_id: {k: v for k, v in s_name.items() if k != ("m.room.name", "")}}
            again = derive_states_before(events, held, keys.get, given)
            self.assertEqual(again.unknown, [])

    def test_newest_first_puts_children_before_parents(self):
        """newest_first orders a DAG so every event precedes its prev events."""
        r = RoomBuilder(room_versions.V10)
        r.add("create", "m.room.create", BOB, {"room_version": "10", "creator": BOB}, "")
        r.add("bob_join", "m.room.member", BOB, {"membership": "join"}, BOB)
        r.add("m1", "m.room.message", BOB, {"body": "1"})
        order = [e.event_id for e in newest_first(list(r.by_id.values()))]
        self.assertEqual(order, [r.events[n].event_id for n in ("m1", "bob_join", "create")])
