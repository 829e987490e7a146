"""Tests for fedserver.handlers.federation.transactions: inbound /send transactions on a real SQLite store
with real signed PDUs taken into a real room through the receiver (limits, replays,
per-origin serialisation, EDUs, ACLs)."""

from __future__ import annotations

import json
import os

from twisted.internet import defer, reactor

from fedserver.events.hashing import compute_event_id
from fedserver.federation.acl import ServerAcls
from fedserver.handlers.federation.ingest import Ingest
from fedserver.handlers.federation.transactions import MAX_EDUS, MAX_PDUS, TransactionHandler
from fedserver.errors import MatrixError
from fedserver.room_versions import V10
from tests.test_federation_support import Peer, PeerRoom, StoreTestCase, deferLater, make_receiver


class CountingIngest:
    """Delegates to a real Ingest, counting check_pdus calls; optionally holds each call
    until its gate Deferred fires."""

    def __init__(self, ingest):
        self.ingest = ingest
        self.calls = []
        self.gates: dict[int, defer.Deferred] = {}

    def room_versions(self, pdus):
        return self.ingest.room_versions(pdus)

    @defer.inlineCallbacks
    def check_pdus(self, origin, pdus, denied_rooms=(), *, room_versions=None):
        n = len(self.calls)
        self.calls.append(origin)
        if n in self.gates:
            yield self.gates[n]
        return (yield self.ingest.check_pdus(origin, pdus, denied_rooms, room_versions=room_versions))


class TransactionTestCase(StoreTestCase):
    async def setUp(self):
        self.peer = Peer("peer.test")
        self.other = Peer("other.test", "o1")
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "fedserver.db")
        self.store = await self.open_store(self.path)
        self.room = await PeerRoom(self.store, V10).build(self.peer, self.other)
        self.handler = self.make_handler(self.store)

    def make_handler(self, store, acls=None):
        keyring, _ = self.make_keyring(store, self.peer, self.other)
        self.ingest = CountingIngest(Ingest(store, keyring))
        return TransactionHandler(reactor, store, self.ingest, acls, receiver=make_receiver(store))

    def txn(self, pdus=(), edus=None, origin=None):
        body = {"origin": origin or self.peer.name, "origin_server_ts": 1, "pdus": list(pdus)}
        if edus is not None:
            body["edus"] = list(edus)
        return body

    async def assert_refused(self, body, code, errcode, txn_id="t1", origin=None):
        try:
            await self.handler.on_transaction(origin or self.peer.name, txn_id, body)
        except MatrixError as e:
            self.assertEqual((e.code, e.errcode), (code, errcode))
        else:
            self.fail(f"{body!r:.200} was accepted")


class LimitTests(TransactionTestCase):
    """Malformed transactions are refused whole, before anything is processed or stored."""

    async def test_too_many_pdus_or_edus(self):
        """HOSTILE row 9: 51 PDUs or 101 EDUs is 400 M_BAD_JSON; nothing processed or
        recorded. Exactly 50 and 100 are fine."""
        pdu = self.room.pdu(self.peer)
        await self.assert_refused(self.txn([pdu] * (MAX_PDUS + 1)), 400, "M_BAD_JSON")
        edu = {"edu_type": "m.typing", "content": {}}
        await self.assert_refused(self.txn(edus=[edu] * (MAX_EDUS + 1)), 400, "M_BAD_JSON")
        self.assertEqual(self.ingest.calls, [])
        self.assertIsNone(await self.store.get_received_txn(self.peer.name, "t1"))
        code, _ = await self.handler.on_transaction(self.peer.name, "t1", self.txn([pdu] * MAX_PDUS, [edu] * MAX_EDUS))
        self.assertEqual(code, 200)

    async def test_shapes(self):
        """HOSTILE row 6: a body that is not an object, pdus/edus that are not lists, an
        empty or over-long transaction id: 400 M_BAD_JSON; a body origin other than the
        signer: 403 M_FORBIDDEN."""
        for body in ([], "x", 5, None):
            await self.assert_refused(body, 400, "M_BAD_JSON")
        await self.assert_refused({"pdus": {}}, 400, "M_BAD_JSON")
        await self.assert_refused({"pdus": [], "edus": "x"}, 400, "M_BAD_JSON")
        await self.assert_refused(self.txn(), 400, "M_BAD_JSON", txn_id="")
        await self.assert_refused(self.txn(), 400, "M_BAD_JSON", txn_id="x" * 256)
        await self.assert_refused(self.txn(origin="other.test"), 403, "M_FORBIDDEN")
        self.assertEqual(self.ingest.calls, [])


class ReplayTests(TransactionTestCase):
    """HOSTILE row 10: a repeated transaction id from the same origin."""

    async def test_replay_answered_identically_and_not_reprocessed(self):
        """The replay gets the first answer byte for byte and its PDUs are not checked
        again, even when its body differs; another origin's same id is a new transaction."""
        pdu = self.room.pdu(self.peer)
        eid = compute_event_id(pdu, V10)
        code, first = await self.handler.on_transaction(self.peer.name, "t1", self.txn([pdu]))
        self.assertEqual((code, first), (200, {"pdus": {eid: {}}}))
        code, again = await self.handler.on_transaction(self.peer.name, "t1", self.txn([]))
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(again), first)
        self.assertEqual(self.ingest.calls, [self.peer.name])
        await self.handler.on_transaction(self.other.name, "t1", self.txn([], origin=self.other.name))
        self.assertEqual(self.ingest.calls, [self.peer.name, self.other.name])

    async def test_replay_after_store_reopen(self):
        """The answer is durable: after closing and reopening the database, a new handler
        answers the replay from the store without processing it."""
        pdu = self.room.pdu(self.peer)
        _, first = await self.handler.on_transaction(self.peer.name, "t9", self.txn([pdu]))
        self.store.close()
        store = await self.open_store(self.path)
        handler = self.make_handler(store)
        code, again = await handler.on_transaction(self.peer.name, "t9", self.txn([pdu]))
        self.assertEqual((code, json.loads(again)), (200, first))
        self.assertEqual(self.ingest.calls, [])
        # What the 200 acknowledged is stored too.
        self.assertEqual(await store.have_events([compute_event_id(pdu, V10)]), {compute_event_id(pdu, V10)})


class SerialisationTests(TransactionTestCase):
    """One transaction per origin at a time; origins do not wait for each other."""

    async def test_per_origin(self):
        """While the peer's first transaction is being checked its second waits (its
        PDUs are not looked at), and another origin's transaction completes meanwhile;
        releasing the first lets the second run."""
        gate = self.ingest.gates[0] = defer.Deferred()
        first = self.handler.on_transaction(self.peer.name, "a", self.txn([self.room.pdu(self.peer, "1")]))
        second = self.handler.on_transaction(self.peer.name, "b", self.txn([self.room.pdu(self.peer, "2")]))
        finished = []
        first.addBoth(lambda r: finished.append("a") or r)
        second.addBoth(lambda r: finished.append("b") or r)
        for _ in range(200):
            if self.ingest.calls:
                break
            await self.wait_a_little()
        self.assertEqual(self.ingest.calls, [self.peer.name])
        code, _ = await self.handler.on_transaction(self.other.name, "c", self.txn([], origin=self.other.name))
        self.assertEqual(code, 200)
        self.assertEqual(finished, [])
        self.assertEqual(self.ingest.calls, [self.peer.name, self.other.name])
        gate.callback(None)
        self.assertEqual((await first)[0], 200)
        self.assertEqual((await second)[0], 200)
        self.assertEqual(finished, ["a", "b"])
        self.assertEqual(self.ingest.calls, [self.peer.name, self.other.name, self.peer.name])
        self.assertEqual(self.handler.busy_origins(), 0)

    async def wait_a_little(self):
        await deferLater(0.005)


class ContentTests(TransactionTestCase):
    """What happens to the PDUs and EDUs of an accepted transaction."""

    async def test_bad_pdus_and_unknown_rooms(self):
        """HOSTILE rows 11-12: bad PDUs get per-PDU errors, unknown-room PDUs are left
        out, the good ones are stored; the transaction is still 200."""
        good = self.room.pdu(self.peer, "good")
        forged = self.room.pdu(Peer("peer.test"), "forged")
        bad = self.room.pdu(self.peer, "float")
        bad["content"]["x"] = 0.5
        elsewhere = self.peer.pdu(V10, "!nowhere:peer.test")
        code, resp = await self.handler.on_transaction(self.peer.name, "t", self.txn([good, forged, bad, elsewhere]))
        self.assertEqual(code, 200)
        ids = [compute_event_id(p, V10) for p in (good, forged, bad, elsewhere)]
        self.assertEqual(resp["pdus"][ids[0]], {})
        self.assertIn("error", resp["pdus"][ids[1]])
        self.assertIn("error", resp["pdus"][ids[2]])
        self.assertNotIn(ids[3], resp["pdus"])
        self.assertEqual(await self.store.have_events(ids), {ids[0]})

    async def test_edus_never_fail_the_transaction(self):
        """EDUs go to their handlers after the commit; a handler raising or failing, a
        malformed EDU, a known type without handler or an unknown type never fail the
        transaction."""
        got = []
        self.handler.register_edu_handler("m.typing", lambda origin, content: got.append((origin, content)))
        self.handler.register_edu_handler("m.receipt", lambda origin, content: 1 / 0)
        self.handler.register_edu_handler("m.presence", lambda origin, content: defer.fail(RuntimeError("down")))
        edus = [
            {"edu_type": "m.typing", "content": {"room_id": self.room.room_id, "user_id": "@u:peer.test", "typing": True}},
            {"edu_type": "m.receipt", "content": {}},
            {"edu_type": "m.presence", "content": {"push": []}},
            {"edu_type": "m.device_list_update", "content": {}},
            {"edu_type": "org.example.unknown", "content": {}},
            {"edu_type": 5, "content": {}},
            {"edu_type": "m.typing", "content": "not an object"},
            "junk",
        ]
        code, resp = await self.handler.on_transaction(self.peer.name, "e", self.txn([], edus))
        self.assertEqual((code, resp), (200, {"pdus": {}}))
        self.assertEqual(got, [(self.peer.name, edus[0]["content"])])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError, RuntimeError)), 2)

    async def test_acl_denies_pdus_and_room_edus(self):
        """Server ACLs are applied per PDU (denied rooms' PDUs get an error and are not
        stored) and to EDUs tied to a room (typing dropped; receipts lose that room)."""
        room = self.room.room_id
        await self.room.add_state("m.room.server_acl", {"allow": ["*"], "deny": ["peer.test"]})
        open_room = await PeerRoom(self.store, V10).build(self.peer, self.other)
        handler = self.make_handler(self.store, ServerAcls(self.store))
        typing, receipts = [], []
        handler.register_edu_handler("m.typing", lambda o, c: typing.append(c))
        handler.register_edu_handler("m.receipt", lambda o, c: receipts.append(c))
        denied_pdu, open_pdu = self.room.pdu(self.peer), open_room.pdu(self.peer)
        edus = [
            {"edu_type": "m.typing", "content": {"room_id": room, "user_id": "@u:peer.test", "typing": True}},
            {"edu_type": "m.receipt", "content": {room: {}, open_room.room_id: {"m.read": {}}}},
        ]
        code, resp = await handler.on_transaction(self.peer.name, "acl", self.txn([denied_pdu, open_pdu], edus))
        self.assertEqual(code, 200)
        self.assertIn("ACL", resp["pdus"][compute_event_id(denied_pdu, V10)]["error"])
        self.assertEqual(resp["pdus"][compute_event_id(open_pdu, V10)], {})
        self.assertEqual(await self.store.have_events([compute_event_id(denied_pdu, V10)]), set())
        self.assertEqual((typing, receipts), ([], [{open_room.room_id: {"m.read": {}}}]))
        # Another server is not affected by that ACL.
        code, resp = await handler.on_transaction(
            self.other.name, "acl", self.txn([self.room.pdu(self.other)], edus[:1], origin=self.other.name)
        )
        self.assertEqual(list(resp["pdus"].values()), [{}])
        self.assertEqual(len(typing), 1)

    async def test_pdus_go_into_their_room(self):
        """Accepted PDUs are taken into the room (not outliers: the forward extremity);
        one the auth rules refuse (a user who never joined) gets a per-PDU error and is
        kept as rejected; one citing a prev event nobody can give us gets an error and is
        not stored; the transaction is still 200 and its answer recorded."""
        good = self.room.pdu(self.peer, "into the room")
        stranger = self.peer.pdu(V10, self.room.room_id, "not a member", sender="@mallory:peer.test",
                                 prev_event_ids=[self.room.last], depth=self.room.depth + 1,
                                 auth_event_ids=self.room.auth_ids())
        orphan = self.peer.pdu(V10, self.room.room_id, "orphan", prev_event_ids=["$" + "A" * 43],
                               depth=self.room.depth + 1, auth_event_ids=self.room.auth_ids(("m.room.member", "@u:peer.test")))
        ids = [compute_event_id(p, V10) for p in (good, stranger, orphan)]
        code, resp = await self.handler.on_transaction(self.peer.name, "room", self.txn([good, stranger, orphan]))
        self.assertEqual(code, 200)
        self.assertEqual(resp["pdus"][ids[0]], {})
        self.assertIn("Rejected", resp["pdus"][ids[1]]["error"])
        self.assertIn("Missing", resp["pdus"][ids[2]]["error"])
        meta = await self.store.get_event_meta(ids)
        self.assertEqual((meta[ids[0]].outlier, meta[ids[0]].rejected), (False, False))
        self.assertTrue(meta[ids[1]].rejected)
        self.assertNotIn(ids[2], meta)
        self.assertEqual(await self.store.get_forward_extremities(self.room.room_id), [ids[0]])
        _, stored = await self.store.get_received_txn(self.peer.name, "room")
        self.assertEqual(json.loads(stored), resp)
