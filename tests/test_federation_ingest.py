"""Tests for fedserver.handlers.federation.ingest: receipt checks 1-3 on real signed PDUs, a real keyring
and a real SQLite store."""

from __future__ import annotations

import copy

from fedserver.events.hashing import compute_event_id
from fedserver.events.signing import sign_event
from fedserver.handlers.federation.ingest import Ingest
from fedserver.room_versions import V1, V10, V11
from tests.test_federation_support import Peer, StoreTestCase

ROOM = "!room:peer.test"


class IngestTests(StoreTestCase):
    """Ingest.check_pdus decides, per PDU, what to persist and what to answer."""

    async def setUp(self):
        self.peer = Peer("peer.test")
        self.store = await self.open_store()
        await self.store.store_room(ROOM, V10)
        self.keyring, self.fetcher = self.make_keyring(self.store, self.peer)
        self.ingest = Ingest(self.store, self.keyring)

    async def test_good_pdu_persisted_as_outlier(self):
        """A valid, signed PDU is answered {} and persisted as an outlier with its content."""
        pdu = self.peer.pdu(V10, ROOM, "hello")
        eid = compute_event_id(pdu, V10)
        batch = await self.ingest.check_pdus(self.peer.name, [pdu])
        self.assertEqual(batch.results, {eid: {}})
        await self.store.persist_events(batch.entries)
        meta = await self.store.get_event_meta([eid])
        self.assertTrue(meta[eid].outlier)
        stored = await self.store.get_event(eid)
        self.assertEqual(stored.content["body"], "hello")

    async def test_bad_signature_is_a_per_pdu_error(self):
        """HOSTILE row 12: a PDU signed with a key that is not the sender server's gets a
        per-PDU error and is not persisted; a good PDU next to it is accepted."""
        forger = Peer("peer.test", "p1")  # same name and key id, different key
        bad = forger.pdu(V10, ROOM, "forged")
        good = self.peer.pdu(V10, ROOM, "real")
        batch = await self.ingest.check_pdus(self.peer.name, [bad, good])
        bad_id, good_id = compute_event_id(bad, V10), compute_event_id(good, V10)
        self.assertIn("Signature check failed", batch.results[bad_id]["error"])
        self.assertEqual(batch.results[good_id], {})
        self.assertEqual([e.event.event_id for e in batch.entries], [good_id])

    async def test_unsigned_pdu_is_a_per_pdu_error(self):
        """A PDU without the sender server's signature is dropped with an error."""
        pdu = self.peer.pdu(V10, ROOM)
        pdu["signatures"] = {}
        batch = await self.ingest.check_pdus(self.peer.name, [pdu])
        self.assertIn("error", batch.results[compute_event_id(pdu, V10)])
        self.assertEqual(batch.entries, [])

    async def test_content_hash_mismatch_stored_redacted(self):
        """HOSTILE row 13: a PDU whose content no longer matches its hash (but whose
        signature, over the redacted form, is good) is kept in its redacted form."""
        pdu = self.peer.pdu(V10, ROOM, "original")
        pdu["content"]["body"] = "tampered"
        eid = compute_event_id(pdu, V10)
        batch = await self.ingest.check_pdus(self.peer.name, [pdu])
        self.assertEqual(batch.results, {eid: {}})
        await self.store.persist_events(batch.entries)
        stored = await self.store.get_event(eid)
        self.assertEqual(stored.content, {})
        self.assertEqual(stored.type, "m.room.message")

    async def test_invalid_pdus_get_errors_by_event_id(self):
        """HOSTILE row 11: a float, an integer beyond 2**53-1 or a missing field makes only
        that PDU fail, with an error under its event id when one can be computed."""
        good = self.peer.pdu(V10, ROOM, "fine")
        with_float = self.peer.pdu(V10, ROOM, "float")
        with_float["content"]["n"] = 1.5
        big_int = self.peer.pdu(V10, ROOM, "big")
        big_int["content"]["n"] = 2**53
        no_sender = self.peer.pdu(V10, ROOM, "anon")
        del no_sender["sender"]
        batch = await self.ingest.check_pdus(self.peer.name, [with_float, big_int, no_sender, good, "junk", 7])
        for bad in (with_float, big_int):
            self.assertIn("Invalid event", batch.results[compute_event_id(bad, V10)]["error"])
        self.assertEqual(batch.results[compute_event_id(good, V10)], {})
        self.assertEqual([e.event.event_id for e in batch.entries], [compute_event_id(good, V10)])

    async def test_authoriser_signature_on_a_leave_is_checked_not_required(self):
        """A leave carrying join_authorised_via_users_server (v8+): the authoriser's
        server's signature is not needed to pass the signature check, but a valid one is
        reported verified (auth rule 5.2 needs it), and a bad or missing one is not, so the
        rule, not the signature check, decides."""
        other = Peer("resident.test")
        self.keyring, _ = self.make_keyring(self.store, self.peer, other)
        self.ingest = Ingest(self.store, self.keyring)
        content = {"membership": "leave", "join_authorised_via_users_server": "@mod:resident.test"}
        fields = dict(type="m.room.member", state_key="@u:peer.test", content=content)
        signed = self.peer.pdu(V10, ROOM, **fields)
        signed = sign_event(signed, V10, other.name, other.key)
        unsigned = self.peer.pdu(V10, ROOM, depth=6, **fields)
        forged = sign_event(self.peer.pdu(V10, ROOM, depth=7, **fields), V10, other.name, Peer("x").key)
        batch = await self.ingest.check_pdus(self.peer.name, [signed, unsigned, forged])
        ids = [compute_event_id(p, V10) for p in (signed, unsigned, forged)]
        self.assertEqual(batch.results, {i: {} for i in ids})
        self.assertEqual(batch.verified[ids[0]], {"peer.test", "resident.test"})
        self.assertEqual(batch.verified[ids[1]], {"peer.test"})
        self.assertEqual(batch.verified[ids[2]], {"peer.test"})

    async def test_unknown_room_ignored(self):
        """PDUs for rooms we do not know (or without a room id) are left out of the result
        map and not persisted, without fetching any key."""
        pdu = self.peer.pdu(V10, "!other:peer.test")
        no_room = self.peer.pdu(V10, ROOM)
        del no_room["room_id"]
        batch = await self.ingest.check_pdus(self.peer.name, [pdu, no_room, {"room_id": 5}])
        self.assertEqual((batch.results, batch.entries), ({}, []))
        self.assertEqual(self.fetcher.calls, 0)

    async def test_acl_denied_room(self):
        """PDUs of a room whose ACL denies the origin get a per-PDU error, unchecked."""
        pdu = self.peer.pdu(V10, ROOM)
        batch = await self.ingest.check_pdus(self.peer.name, [pdu], {ROOM})
        self.assertIn("ACL", batch.results[compute_event_id(pdu, V10)]["error"])
        self.assertEqual((batch.entries, self.fetcher.calls), ([], 0))

    async def test_one_key_fetch_per_transaction(self):
        """Fifty PDUs of one server cost one key fetch; later transactions none."""
        pdus = [self.peer.pdu(V10, ROOM, str(i)) for i in range(50)]
        batch = await self.ingest.check_pdus(self.peer.name, pdus)
        self.assertEqual(len(batch.entries), 50)
        batch = await self.ingest.check_pdus(self.peer.name, [self.peer.pdu(V10, ROOM, "more")])
        self.assertEqual((len(batch.entries), self.fetcher.calls), (1, 1))

    async def test_fifty_pdus_each_verdict_on_its_own_pdu(self):
        """A full transaction is checked in parts (the signatures of one part verified while
        the next is checked): an invalid PDU in the first part, a forged one and one whose
        content was altered in the second each get their own verdict, and the rest are
        kept in the order received."""
        forger = Peer("peer.test", "p1")
        pdus = [self.peer.pdu(V10, ROOM, str(i)) for i in range(50)]
        pdus[3]["content"]["n"] = 1.5
        pdus[40] = forger.pdu(V10, ROOM, "forged")
        pdus[30]["content"]["body"] = "tampered"
        ids = [compute_event_id(p, V10) for p in pdus]
        batch = await self.ingest.check_pdus(self.peer.name, pdus)
        self.assertIn("Invalid event", batch.results[ids[3]]["error"])
        self.assertIn("Signature check failed", batch.results[ids[40]]["error"])
        self.assertEqual({i for i, eid in enumerate(ids) if batch.results[eid] != {}}, {3, 40})
        kept = [eid for i, eid in enumerate(ids) if i not in (3, 40)]
        self.assertEqual([e.event.event_id for e in batch.entries], kept)
        self.assertEqual(batch.entries[29].event.content, {})  # pdus[30], redacted
        self.assertEqual(batch.entries[30].event.content["body"], "31")
        self.assertEqual(set(batch.verified), set(kept))
        self.assertTrue(all(batch.verified[eid] == {"peer.test"} for eid in kept))

    async def test_room_versions_v1_and_v11(self):
        """Format V1 rooms take the PDU's own event_id (which the origin must sign too);
        other rooms compute it. A v1 PDU claiming another server's event id is refused."""
        await self.store.store_room("!v1:peer.test", V1)
        await self.store.store_room("!v11:peer.test", V11)
        v1 = self.peer.pdu(V1, "!v1:peer.test", "old")
        v11 = self.peer.pdu(V11, "!v11:peer.test", "new")
        stolen = copy.deepcopy(self.peer.pdu(V1, "!v1:peer.test", "stolen"))
        stolen["event_id"] = "$x:elsewhere.test"
        batch = await self.ingest.check_pdus(self.peer.name, [v1, v11, stolen])
        self.assertEqual(batch.results[v1["event_id"]], {})
        self.assertEqual(batch.results[compute_event_id(v11, V11)], {})
        self.assertIn("error", batch.results["$x:elsewhere.test"])
        self.assertEqual(len(batch.entries), 2)
