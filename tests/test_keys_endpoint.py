"""Tests for GET /_matrix/key/v2/server (fedserver.http.federation.keys)."""

from __future__ import annotations

import json

from signedjson.key import decode_verify_key_bytes, generate_signing_key, get_verify_key
from signedjson.sign import SignatureVerifyException, verify_signed_json
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fedserver.config import OldVerifyKey
from fedserver.events.hashing import decode_unpadded_base64
from fedserver.http.federation.keys import SERVER_KEY_PATH, ServerKeyDocument, ServerKeyResource
from fedserver.http.site import build_federation_root

DAY_MS = 86400000


class ServerKeyEndpointTests(SynchronousTestCase):
    """The key document has the spec's fields, verifies against its own key, and is cached."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.key = generate_signing_key("k1")
        other = generate_signing_key("old")
        from signedjson.key import encode_verify_key_base64

        self.old_b64 = encode_verify_key_base64(get_verify_key(other))
        self.doc = ServerKeyDocument(
            "example.org:8448", self.key, self.clock, DAY_MS, [OldVerifyKey("ed25519:old", self.old_b64, 1_600_000_000_000)]
        )
        self.treq = StubTreq(build_federation_root(server_keys=ServerKeyResource(self.doc)))

    def get(self, path=SERVER_KEY_PATH, method="GET"):
        resp = self.successResultOf(self.treq.request(method, "https://example.org:8448" + path))
        body = self.successResultOf(resp.content())
        return resp, body

    def test_fields(self):
        """server_name, verify_keys, old_verify_keys with expired_ts and valid_until_ts = now + validity."""
        resp, body = self.get()
        self.assertEqual(resp.code, 200)
        self.assertEqual(resp.headers.getRawHeaders(b"Content-Type"), [b"application/json"])
        doc = json.loads(body)
        self.assertEqual(set(doc), {"server_name", "verify_keys", "old_verify_keys", "valid_until_ts", "signatures"})
        self.assertEqual(doc["server_name"], "example.org:8448")
        self.assertEqual(list(doc["verify_keys"]), ["ed25519:k1"])
        self.assertEqual(doc["old_verify_keys"], {"ed25519:old": {"key": self.old_b64, "expired_ts": 1_600_000_000_000}})
        self.assertEqual(doc["valid_until_ts"], 1_700_000_000_000 + DAY_MS)
        self.assertEqual(list(doc["signatures"]), ["example.org:8448"])

    def test_verifies_against_its_own_key(self):
        """The published verify key checks the document's signature (signedjson)."""
        doc = json.loads(self.get()[1])
        raw = decode_unpadded_base64(doc["verify_keys"]["ed25519:k1"]["key"])
        verify_key = decode_verify_key_bytes("ed25519:k1", raw)
        verify_signed_json(doc, "example.org:8448", verify_key)
        self.assertEqual(raw, get_verify_key(self.key).encode())

    def test_tampering_is_detected(self):
        """Changing any field breaks the signature (the test can fail)."""
        doc = json.loads(self.get()[1])
        doc["valid_until_ts"] += 1
        self.assertRaises(SignatureVerifyException, verify_signed_json, doc, "example.org:8448", get_verify_key(self.key))

    def test_cached_then_resigned(self):
        """The signed bytes are reused briefly, and re-signed before valid_until_ts nears."""
        first = self.get()[1]
        self.clock.advance(60)
        self.assertEqual(self.get()[1], first)
        self.clock.advance(3600)
        later = json.loads(self.get()[1])
        self.assertEqual(later["valid_until_ts"], int(self.clock.seconds() * 1000) + DAY_MS)
        verify_signed_json(later, "example.org:8448", get_verify_key(self.key))

    def test_served_document_never_near_expiry(self):
        """Whenever fetched, the document stays valid for at least half the validity period."""
        for _ in range(100):
            self.clock.advance(977)
            doc = json.loads(self.get()[1])
            self.assertGreaterEqual(doc["valid_until_ts"] - self.clock.seconds() * 1000, DAY_MS / 2)

    def test_clock_going_backwards(self):
        """If the clock steps back, the document is re-signed rather than served from the future."""
        self.get()
        self.clock.rightNow -= 7200
        doc = json.loads(self.get()[1])
        self.assertEqual(doc["valid_until_ts"], int(self.clock.seconds() * 1000) + DAY_MS)

    def test_deprecated_key_id_path(self):
        """The old /server/{keyId} form answers the same document."""
        self.assertEqual(self.get(SERVER_KEY_PATH + "/ed25519:k1")[1], self.get()[1])

    def test_other_methods_and_paths(self):
        """POST is 405 M_UNRECOGNIZED; neighbouring unknown paths are 404 M_UNRECOGNIZED."""
        resp, body = self.get(method="POST")
        self.assertEqual((resp.code, json.loads(body)["errcode"]), (405, "M_UNRECOGNIZED"))
        for path in ("/_matrix/key/v2", "/_matrix/key/v2/query", "/_matrix/key/v1/server", SERVER_KEY_PATH + "/a/b"):
            resp, body = self.get(path)
            self.assertEqual((resp.code, json.loads(body)["errcode"]), (404, "M_UNRECOGNIZED"), path)

    def test_current_is_the_served_document(self):
        """current() returns the served document as a dict; mutating it changes nothing served."""
        served = json.loads(self.get()[1])
        mine = self.doc.current()
        self.assertEqual(mine, served)
        mine["signatures"]["notary.example"] = {"ed25519:n": "x"}
        self.assertEqual(json.loads(self.get()[1]), served)
        self.assertEqual(self.doc.current(), served)

    def test_current_key_not_listed_as_old(self):
        """A configured old key with our current key id is not published as old."""
        doc = ServerKeyDocument("s", self.key, self.clock, DAY_MS, [OldVerifyKey("ed25519:k1", self.old_b64, 1)])
        self.assertEqual(doc.build()["old_verify_keys"], {})
