"""Tests for the room pipeline (receipt checks 4-6, state, persistence) and the event creator."""

from __future__ import annotations

import json

from signedjson.key import generate_signing_key
from twisted.internet import defer, reactor
from twisted.trial import unittest

from fedserver import room_versions
from fedserver.auth.engine import AuthEngine
from fedserver.auth.hookspecs import hookimpl
from fedserver.auth.plugins import make_plugin_manager
from fedserver.auth.verdict import SoftFail
from fedserver.events.builder import build_event
from fedserver.events.hashing import compute_reference_hash, unpadded_base64
from fedserver.auth.rule_ids import rule_id
from fedserver.errors import MatrixError
from fedserver.handlers.federation.history import EventStatusHandler
from fedserver.handlers.rooms.creator import EventCreator
from fedserver.handlers.rooms.membership import check_outcome
from fedserver.handlers.rooms.pipeline import ACCEPTED, MISSING, REJECTED, SOFT_FAILED, RoomPipeline
from fedserver.room_versions import EventFormat, RoomVersionRegistry
from fedserver.storage.sqlite import open_store

HERE = "here.test"
THERE = "there.test"
ALICE = "@alice:here.test"
BOB = "@bob:there.test"
CAROL = "@carol:there.test"

#: Versions whose behaviour differs for what the pipeline does (formats V1, V3, V4;
#: state res v1, v2, v2.1; creators' power).
VERSIONS = [room_versions.V1, room_versions.V10, room_versions.V11, room_versions.V12]


class _Room:
    """A test room driven through a real pipeline, store and auth engine."""

    def __init__(self, test, rv, policies=(), server_name=None):
        self.test = test
        self.rv = rv
        self.policies = policies
        self.server_name = server_name
        self.here_key = generate_signing_key("1")
        self.there_key = generate_signing_key("1")

    async def setup(self):
        self.store = await open_store(self.test.mktemp(), reactor, registry=RoomVersionRegistry())
        self.test.addCleanup(self.store.close)
        pm = make_plugin_manager(load_entrypoints=False, extra_plugins=self.policies)
        self.pm = pm
        self.pipeline = RoomPipeline(self.store, AuthEngine(pm), pm, server_name=self.server_name)
        self.creator = EventCreator(reactor, self.store, self.pipeline, HERE, self.here_key)
        content = {"room_version": self.rv.identifier}
        if not self.rv.implicit_room_creator:
            content["creator"] = ALICE
        create, outcome = await self.creator.create_room_event(self.rv, sender=ALICE, content=content)
        assert outcome.status == ACCEPTED, outcome
        self.room_id = create.room_id
        self.create = create
        users = {} if self.rv.privileged_creators else {ALICE: 100}
        for args in [
            ("m.room.member", {"membership": "join"}, ALICE),
            ("m.room.power_levels", {"users": users, "users_default": 0, "ban": 50, "kick": 50}, ""),
            ("m.room.join_rules", {"join_rule": "public"}, ""),
        ]:
            _, outcome = await self.local(*args)
            assert outcome.status == ACCEPTED, (args, outcome)
        return self

    async def local(self, type, content, state_key=None, sender=ALICE):
        ev, outcome = await self.creator.send(
            self.room_id, self.rv, type=type, sender=sender, content=content, state_key=state_key
        )
        return ev, outcome

    async def state_after(self, event_id):
        groups = await self.store.get_state_ids_for_events([event_id], after=True)
        return await self.store.get_state_group(groups[event_id])

    async def remote_event(self, type, content, *, sender=BOB, state_key=None, prevs=None, auth=None, depth=None):
        """Build an event as the other server would, on the given prevs (default: the
        current extremities) with auth events chosen from the current state."""
        from fedserver.auth.selection import select_auth_events

        if prevs is None:
            state = await self.pipeline.current_state(self.room_id)
            prevs = sorted(await self.pipeline.forward_extremities(self.room_id))
        elif auth is None:
            state = await self.state_after(prevs[0])
        if auth is None:
            auth = select_auth_events(
                self.rv, {"type": type, "state_key": state_key, "sender": sender, "content": content}, state
            )
        metas = await self.store.get_event_meta(prevs)
        if depth is None:
            depth = max((m.depth for m in metas.values()), default=0) + 1
        edge_hashes = None
        if self.rv.event_format == EventFormat.V1:
            evs = await self.store.get_events(list(prevs) + list(auth))
            edge_hashes = {k: unpadded_base64(compute_reference_hash(v.pdu, self.rv)) for k, v in evs.items()}
            for k in list(prevs) + list(auth):
                edge_hashes.setdefault(k, "A" * 43)  # an event we do not have
        return build_event(
            self.rv, room_id=self.room_id, type=type, sender=sender, content=content, state_key=state_key,
            prev_event_ids=prevs, auth_event_ids=auth, depth=depth, origin_server_ts=1_700_000_000_000 + depth,
            server_name=THERE, signing_key=self.there_key, edge_hashes=edge_hashes,
        )

    async def receive(self, *events):
        return await self.pipeline.process(self.room_id, list(events))


def each_version(f):
    """Run an async test body once per room version in VERSIONS."""

    async def run(self):
        for rv in VERSIONS:
            room = await _Room(self, rv).setup()
            try:
                await f(self, room)
            except Exception as e:
                raise AssertionError(f"room version {rv.identifier}: {e!r}") from e

    def wrapper(self):
        return defer.ensureDeferred(run(self))

    wrapper.__doc__ = f.__doc__
    wrapper.__name__ = f.__name__
    return wrapper


class PipelineTests(unittest.TestCase):
    @each_version
    async def test_local_room_creation(self, room):
        """A room built by the creator has its create, join, power levels and join rules as
        current state, stored state, and one forward extremity: the last event."""
        state = await room.store.get_current_state_ids(room.room_id)
        self.assertEqual(
            set(state), {("m.room.create", ""), ("m.room.member", ALICE), ("m.room.power_levels", ""), ("m.room.join_rules", "")}
        )
        self.assertEqual(dict(await room.pipeline.current_state(room.room_id)), state)
        ext = await room.store.get_forward_extremities(room.room_id)
        self.assertEqual(ext, [state[("m.room.join_rules", "")]])

    @each_version
    async def test_remote_join_and_message_accepted(self, room):
        """A remote user's join to a public room and their message pass checks 4-6 and
        update current state and extremities."""
        join = await room.remote_event("m.room.member", {"membership": "join"}, state_key=BOB)
        out = await room.receive(join)
        self.assertEqual(out[join.event_id].status, ACCEPTED)
        msg = await room.remote_event("m.room.message", {"body": "hi", "msgtype": "m.text"})
        out = await room.receive(msg)
        self.assertEqual(out[msg.event_id].status, ACCEPTED)
        state = await room.store.get_current_state_ids(room.room_id)
        self.assertEqual(state[("m.room.member", BOB)], join.event_id)
        self.assertEqual(await room.store.get_forward_extremities(room.room_id), [msg.event_id])
        # The stored state after the message includes Bob's join.
        groups = await room.store.get_state_ids_for_events([msg.event_id], after=True)
        after = await room.store.get_state_group(groups[msg.event_id])
        self.assertEqual(after[("m.room.member", BOB)], join.event_id)

    @each_version
    async def test_non_member_message_rejected_and_recorded(self, room):
        """Step 4: a message from a server whose user never joined is rejected, stored with
        the spec rule that denied it, and is neither state nor an extremity."""
        before_ext = await room.store.get_forward_extremities(room.room_id)
        msg = await room.remote_event("m.room.message", {"body": "spam"}, sender=CAROL)
        out = await room.receive(msg)
        self.assertEqual(out[msg.event_id].status, REJECTED)
        refusal = await room.store.get_rejection(msg.event_id)
        self.assertIsNotNone(refusal)
        # The spec's rule 6 ("If the sender's current membership state is not join,
        # reject"), numbered as in the room version, denied by the built-in plugin
        # registered as fedserver.auth.rules.power.
        self.assertEqual(refusal.rule, rule_id(room.rv, "sender_in_room"))
        self.assertEqual(refusal.plugin, "fedserver.auth.rules.power")
        self.assertEqual(refusal.plugin, out[msg.event_id].refusal.plugin)
        self.assertEqual(await room.store.get_forward_extremities(room.room_id), before_ext)
        # What an operator is shown (the admin endpoint and fedserver-refusals).
        status = await EventStatusHandler(room.store).get_status(msg.event_id)
        self.assertEqual(
            (status["status"], status["rule"], status["plugin"]),
            ("rejected", rule_id(room.rv, "sender_in_room"), "fedserver.auth.rules.power"),
        )

    @each_version
    async def test_soft_failure_against_current_state(self, room):
        """Step 6: an event that was allowed by the state before it (cited an old prev) but
        not by the current state (its sender is now banned) is soft-failed: stored, but not
        an extremity and not current state."""
        join = await room.remote_event("m.room.member", {"membership": "join"}, state_key=BOB)
        await room.receive(join)
        ban, out = await room.local("m.room.member", {"membership": "ban"}, state_key=BOB)
        self.assertEqual(out.status, ACCEPTED)
        topic = await room.remote_event("m.room.message", {"body": "sneaky"}, prevs=[join.event_id])
        out = await room.receive(topic)
        self.assertEqual(out[topic.event_id].status, SOFT_FAILED, out)
        self.assertEqual(await room.store.get_forward_extremities(room.room_id), [ban.event_id])
        meta = await room.store.get_event_meta([topic.event_id])
        self.assertTrue(meta[topic.event_id].soft_failed)

    @each_version
    async def test_fork_merged_with_state_resolution(self, room):
        """Two concurrent state events on the same prev form a fork: both are accepted, both
        are forward extremities, the current state is their resolution, and an event citing
        both gets the resolved state (topic from one branch, name from the other)."""
        join = await room.remote_event("m.room.member", {"membership": "join"}, state_key=BOB)
        await room.receive(join)
        users = {BOB: 50} if room.rv.privileged_creators else {ALICE: 100, BOB: 50}
        pl, out = await room.local("m.room.power_levels", {"users": users, "users_default": 0, "ban": 50, "kick": 50}, state_key="")
        self.assertEqual(out.status, ACCEPTED)
        a = await room.remote_event("m.room.topic", {"topic": "A"}, state_key="", prevs=[pl.event_id])
        b = await room.remote_event("m.room.name", {"name": "B"}, state_key="", prevs=[pl.event_id])
        out = await room.receive(a)
        self.assertEqual(out[a.event_id].status, ACCEPTED)
        out = await room.receive(b)
        self.assertEqual(out[b.event_id].status, ACCEPTED)
        self.assertEqual(set(await room.store.get_forward_extremities(room.room_id)), {a.event_id, b.event_id})
        current = await room.store.get_current_state_ids(room.room_id)
        self.assertEqual(current[("m.room.topic", "")], a.event_id)
        self.assertEqual(current[("m.room.name", "")], b.event_id)
        merge = await room.remote_event("m.room.message", {"body": "merge"}, prevs=sorted([a.event_id, b.event_id]))
        out = await room.receive(merge)
        self.assertEqual(out[merge.event_id].status, ACCEPTED)
        groups = await room.store.get_state_ids_for_events([merge.event_id])
        before = await room.store.get_state_group(groups[merge.event_id])
        self.assertEqual(before[("m.room.topic", "")], a.event_id)
        self.assertEqual(before[("m.room.name", "")], b.event_id)
        self.assertEqual(await room.store.get_forward_extremities(room.room_id), [merge.event_id])
        # A fresh pipeline on the same store (what a restart builds) loads the same current
        # state and extremities from storage.
        fresh = RoomPipeline(room.store, AuthEngine(room.pm), room.pm)
        self.assertEqual(dict(await fresh.current_state(room.room_id)), dict(await room.pipeline.current_state(room.room_id)))
        self.assertEqual(dict(await fresh.current_state(room.room_id))[("m.room.topic", "")], a.event_id)
        self.assertEqual(await fresh.forward_extremities(room.room_id), {merge.event_id})

    @each_version
    async def test_missing_prev_is_reported_not_stored(self, room):
        """An event whose prev event we do not have comes back ``missing`` naming it, and
        nothing is stored."""
        ghost = "$" + "A" * 43 if room.rv.event_format != EventFormat.V1 else "$ghost:there.test"
        join = await room.remote_event("m.room.member", {"membership": "join"}, state_key=BOB)
        await room.receive(join)
        ok = await room.remote_event("m.room.message", {"body": "ok"})
        ev = await room.remote_event("m.room.message", {"body": "?"}, prevs=[ghost], auth=list(ok.auth_event_ids), depth=50)
        out = await room.receive(ev)
        self.assertEqual(out[ev.event_id].status, MISSING)
        self.assertIn(ghost, out[ev.event_id].missing)
        self.assertEqual(await room.store.have_events([ev.event_id]), set())

    @each_version
    async def test_duplicates_and_batch(self, room):
        """A batch of three messages, each citing the one before, is taken in whole in DAG
        order even when given in reverse (the last one's prev is only in the batch);
        receiving an event again changes nothing and says so."""
        join = await room.remote_event("m.room.member", {"membership": "join"}, state_key=BOB)
        await room.receive(join)
        m1 = await room.remote_event("m.room.message", {"body": "1"}, prevs=[join.event_id])
        auth = list(m1.auth_event_ids)
        m2 = await room.remote_event("m.room.message", {"body": "2"}, prevs=[m1.event_id], auth=auth, depth=m1.depth + 1)
        m3 = await room.remote_event("m.room.message", {"body": "3"}, prevs=[m2.event_id], auth=auth, depth=m2.depth + 1)
        out = await room.receive(m3, m2, m1)
        self.assertEqual([out[e.event_id].status for e in (m1, m2, m3)], [ACCEPTED] * 3)
        self.assertEqual(await room.store.get_forward_extremities(room.room_id), [m3.event_id])
        metas = await room.store.get_event_meta([m1.event_id, m2.event_id, m3.event_id])
        nids = [metas[e.event_id].event_nid for e in (m1, m2, m3)]
        self.assertEqual(nids, sorted(nids), "stored in DAG order")
        again = await room.receive(join)
        self.assertTrue(again[join.event_id].duplicate)

    @each_version
    async def test_local_event_refused_is_not_stored(self, room):
        """A local event the auth rules refuse (a non-member speaking) is not stored, and
        the client's 403 names the rule and the plugin that refused it."""
        ev, out = await room.local("m.room.message", {"body": "x"}, sender="@nobody:here.test")
        self.assertEqual(out.status, REJECTED)
        self.assertFalse(out.stored)
        self.assertEqual(await room.store.have_events([ev.event_id]), set())
        with self.assertRaises(MatrixError) as cm:
            check_outcome(ev, out)
        self.assertEqual((cm.exception.code, cm.exception.errcode), (403, "M_FORBIDDEN"))
        body = cm.exception.to_json()
        self.assertEqual(body["org.fedserver.rule"], rule_id(room.rv, "sender_in_room"))
        self.assertEqual(body["org.fedserver.plugin"], "fedserver.auth.rules.power")
        self.assertEqual(body["error"], "sender is not joined to the room")


class DistributionTests(unittest.TestCase):
    """Which events the pipeline queues for other servers, in the transaction storing them."""

    async def room(self, server_name=HERE):
        room = await _Room(self, room_versions.V10, server_name=server_name).setup()
        self.woken = []
        room.pipeline.on_queued.append(self.woken.append)
        join = await room.remote_event("m.room.member", {"membership": "join"}, state_key=BOB)
        out = await room.receive(join)
        self.assertEqual((out[join.event_id].status, out[join.event_id].queued_for), (ACCEPTED, frozenset()))
        return room

    async def queued_ids(self, room, destination=THERE):
        return [i.json for i in await room.store.get_outbound_batch(destination)]

    async def test_local_events_queued_and_sender_woken(self):
        """An event of ours is queued for every server with a joined member (never for
        us), committed with the event, and on_queued is told once it is; a kick also goes
        to the kicked user's server though none of its users is joined any more."""
        room = await self.room()
        msg, out = await room.local("m.room.message", {"body": "hello"})
        self.assertEqual(out.queued_for, {THERE})
        self.assertEqual(self.woken, [frozenset({THERE})])
        self.assertEqual([json.loads(q) for q in await self.queued_ids(room)], [msg.pdu])
        self.assertEqual(await room.store.get_outbound_batch(HERE), [])
        kick, out = await room.local("m.room.member", {"membership": "leave"}, state_key=BOB)
        self.assertEqual(out.status, ACCEPTED)
        self.assertEqual(out.queued_for, {THERE})
        self.assertEqual(len(await self.queued_ids(room)), 2)

    async def test_received_events_not_queued_unless_asked(self):
        """Events from other servers are not relayed; with ``distribute`` (a handshake we
        serve) they go to the room's servers except those named in ``distribute_except``."""
        room = await self.room()
        msg = await room.remote_event("m.room.message", {"body": "from there"})
        out = await room.receive(msg)
        self.assertEqual(out[msg.event_id].queued_for, frozenset())
        carol = await room.remote_event("m.room.member", {"membership": "join"}, sender="@carol:third.test",
                                        state_key="@carol:third.test")
        out = await room.pipeline.process(room.room_id, [carol], distribute=True, distribute_except=("third.test",))
        self.assertEqual(out[carol.event_id].queued_for, {THERE})
        self.assertEqual(await room.store.get_outbound_batch("third.test"), [])
        self.assertEqual(self.woken, [frozenset({THERE})])

    async def test_without_a_server_name_nothing_is_queued(self):
        """A pipeline that does not federate (no server name) queues nothing."""
        room = await self.room(server_name=None)
        _, out = await room.local("m.room.message", {"body": "quiet"})
        self.assertEqual(out.queued_for, frozenset())
        self.assertEqual(await room.store.destinations_with_pending(), [])
        self.assertEqual(self.woken, [])


class _BlockWord:
    """A policy plugin soft-failing messages containing a word."""

    @hookimpl
    def fedserver_check_event_policy(self, event, room_version, state):
        if event.type == "m.room.message" and "forbidden" in str(event.content.get("body", "")):
            return SoftFail("contains a forbidden word")
        return None


class PolicyTests(unittest.TestCase):
    async def _policy_case(self):
        room = await _Room(self, room_versions.V11, policies=[(_BlockWord(), "blockword")]).setup()
        join = await room.remote_event("m.room.member", {"membership": "join"}, state_key=BOB)
        await room.receive(join)
        bad = await room.remote_event("m.room.message", {"body": "a forbidden thing"})
        out = await room.receive(bad)
        self.assertEqual(out[bad.event_id].status, SOFT_FAILED)
        self.assertEqual(out[bad.event_id].refusal.plugin, "blockword")
        refused = await room.store.get_refused_events(room.room_id)
        self.assertEqual([r.event_id for r in refused], [bad.event_id])
        self.assertEqual(refused[0].plugin, "blockword")

    def test_policy_hook_soft_fails(self):
        """A policy plugin's SoftFail soft-fails the event (never rejects it), and the
        refusal names the plugin."""
        return defer.ensureDeferred(self._policy_case())


class CheckOutcomeTests(unittest.SynchronousTestCase):
    def test_policy_soft_failure_of_a_local_event_is_403(self):
        """A local event a policy plugin soft-failed is answered 403 M_FORBIDDEN naming the
        policy's reason (not 500)."""
        from fedserver.handlers.rooms.membership import check_outcome
        from fedserver.handlers.rooms.pipeline import Outcome
        from fedserver.errors import MatrixError
        from fedserver.storage.interface import Refusal

        with self.assertRaises(MatrixError) as cm:
            check_outcome(None, Outcome(SOFT_FAILED, Refusal("spam", "policy", "policy_server")))
        self.assertEqual((cm.exception.code, cm.exception.errcode), (403, "M_FORBIDDEN"))
        self.assertIn("spam", cm.exception.error)
        self.assertEqual(cm.exception.to_json()["org.fedserver.plugin"], "policy_server")
        self.assertEqual(cm.exception.to_json()["org.fedserver.rule"], "policy")
