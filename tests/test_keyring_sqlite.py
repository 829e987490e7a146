"""The keyring and notary against the real SQLite store on a real database file."""

from __future__ import annotations

from signedjson.key import generate_signing_key, get_verify_key
from signedjson.sign import verify_signed_json
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from fedserver.federation.keyring import DirectKeyFetcher, Keyring, signed_bytes
from fedserver.http.federation.notary import NotaryService
from fedserver.room_versions import RoomVersionRegistry
from fedserver.storage.sqlite import open_store
from fedserver.testing import database_for_test
from tests.test_keyring import DAY_MS, NOW_MS, NOW_S, FakeOrigins, key_id, make_key_doc, signed_object


class RealStoreTests(TestCase):
    """Keys fetched once survive in SQLite and serve a fresh keyring and the notary."""

    async def setUp(self):
        self.path = self.mktemp()
        self.store = await open_store(database_for_test(self, self.path), reactor, registry=RoomVersionRegistry())
        self.addCleanup(self.store.close)
        self.clock = Clock()
        self.clock.advance(NOW_S)
        self.origins = FakeOrigins()
        self.remote_key = generate_signing_key("r1")
        self.old_key = generate_signing_key("old")
        self.origins.docs["remote.example"] = make_key_doc(
            "remote.example", [self.remote_key], NOW_MS + 30 * DAY_MS, old=[(self.old_key, NOW_MS - DAY_MS)]
        )

    def keyring(self):
        return Keyring(self.clock, self.store, [DirectKeyFetcher(self.origins.get_json)], "own.example", {})

    async def test_keys_persist_across_keyrings(self):
        """Keys (current, capped at 7 days, and old with expired_ts) fetched by one keyring
        are found by a new keyring on the same database without fetching again."""
        first = self.keyring()
        got = await first.get_verify_keys("remote.example", [key_id(self.remote_key)], NOW_MS)
        self.assertEqual(list(got), [key_id(self.remote_key)])
        self.assertEqual(len(self.origins.calls), 1)

        rows = await self.store.get_server_keys("remote.example", [key_id(self.remote_key), key_id(self.old_key)])
        self.assertEqual(rows[key_id(self.remote_key)]["valid_until_ts"], NOW_MS + 7 * DAY_MS)
        self.assertEqual(rows[key_id(self.old_key)]["expired_ts"], NOW_MS - DAY_MS)

        second = self.keyring()
        obj = signed_object("remote.example", self.remote_key)
        await second.verify_json_for_server("remote.example", obj, NOW_MS)
        old_obj = signed_object("remote.example", self.old_key)
        [ok] = await second.verify_signatures([("remote.example", *_parts(old_obj, "remote.example"), NOW_MS - 2 * DAY_MS)])
        self.assertIs(ok, True)
        self.assertEqual(len(self.origins.calls), 1)
        # Too new for the old key: one refetch (in case it changed), still refused.
        [refused] = await second.verify_signatures([("remote.example", *_parts(old_obj, "remote.example"), NOW_MS)])
        self.assertIsInstance(refused, str)
        self.assertEqual(len(self.origins.calls), 2)

    async def test_notary_serves_stored_document(self):
        """The notary serves the document stored in SQLite, signed by the origin and by us."""
        keyring = self.keyring()
        our_key = generate_signing_key("us")
        service = NotaryService(self.clock, keyring, self.store, "own.example", our_key)
        result = await service.query({"server_keys": {"remote.example": {}}})
        [doc] = result["server_keys"]
        verify_signed_json(doc, "remote.example", get_verify_key(self.remote_key))
        verify_signed_json(doc, "own.example", get_verify_key(our_key))
        blobs = await self.store.get_server_key_json("remote.example")
        self.assertEqual(len(blobs), 1)


def _parts(obj, server_name):
    return signed_bytes(obj), obj["signatures"][server_name]
