"""Tests for fedserver.http.federation.notary: the notary key query endpoints, via the service and over HTTP."""

from __future__ import annotations

import copy
import json

from signedjson.key import generate_signing_key, get_verify_key
from signedjson.sign import verify_signed_json
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fedserver.federation.keyring import DirectKeyFetcher, Keyring, NotaryKeyFetcher
from fedserver.errors import MatrixError
from fedserver.http.federation.notary import MAX_QUERY_SERVERS, NOTARY_PREFIX, NotaryResource, NotaryService
from fedserver.http.resource import build_tree
from tests.test_keyring import DAY_MS, NOW_MS, NOW_S, FakeKeyStore, FakeOrigins, b64key, key_id, make_key_doc


class NotaryTestBase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW_S)
        self.store = FakeKeyStore()
        self.origins = FakeOrigins()
        self.our_key = generate_signing_key("us")
        self.remote_key = generate_signing_key("r1")
        self.origins.docs["remote.example"] = make_key_doc("remote.example", [self.remote_key], NOW_MS + DAY_MS)
        self.keyring = Keyring(
            self.clock,
            self.store,
            [DirectKeyFetcher(self.origins.get_json)],
            "notary.example",
            {key_id(self.our_key): self.our_key.verify_key},
        )
        self.service = NotaryService(self.clock, self.keyring, self.store, "notary.example", self.our_key)

    def assertSignedByUsAndOrigin(self, doc, origin, origin_key):
        verify_signed_json(doc, "notary.example", get_verify_key(self.our_key))
        verify_signed_json(doc, origin, get_verify_key(origin_key))


class NotaryServiceTests(NotaryTestBase):
    """NotaryService.query / query_one."""

    def test_query_fetches_and_signs(self):
        """A POST query for an unknown server fetches its keys from the origin and returns the
        document signed by both the origin and us."""
        body = {"server_keys": {"remote.example": {key_id(self.remote_key): {"minimum_valid_until_ts": NOW_MS}}}}
        result = self.successResultOf(self.service.query(body))
        [doc] = result["server_keys"]
        self.assertEqual(doc["server_name"], "remote.example")
        self.assertSignedByUsAndOrigin(doc, "remote.example", self.remote_key)
        self.assertEqual(len(self.origins.calls), 1)

    def test_cached_answer_without_refetch(self):
        """A second query satisfied by what we hold does not contact the origin again."""
        body = {"server_keys": {"remote.example": {}}}
        self.successResultOf(self.service.query(body))
        result = self.successResultOf(self.service.query(body))
        self.assertEqual(len(result["server_keys"]), 1)
        self.assertEqual(len(self.origins.calls), 1)

    def test_refetch_for_later_minimum(self):
        """A minimum_valid_until_ts beyond the cached document's validity refreshes from the
        origin; the newer document comes first."""
        self.successResultOf(self.service.query_one("remote.example"))
        self.origins.docs["remote.example"] = make_key_doc("remote.example", [self.remote_key], NOW_MS + 3 * DAY_MS)
        result = self.successResultOf(self.service.query_one("remote.example", None, NOW_MS + 2 * DAY_MS))
        self.assertEqual(len(self.origins.calls), 2)
        self.assertEqual(result["server_keys"][0]["valid_until_ts"], NOW_MS + 3 * DAY_MS)
        for doc in result["server_keys"]:
            self.assertSignedByUsAndOrigin(doc, "remote.example", self.remote_key)

    def test_unreachable_server_absent(self):
        """A server that cannot be reached and for which nothing is cached is absent."""
        result = self.successResultOf(
            self.service.query({"server_keys": {"dead.example": {}, "remote.example": {}}})
        )
        self.assertEqual([d["server_name"] for d in result["server_keys"]], ["remote.example"])

    def test_cached_response_served_when_origin_goes_offline(self):
        """Once the origin is offline, the last document we got is still served (keys_server
        "notary servers should continue to return the last response")."""
        self.successResultOf(self.service.query_one("remote.example"))
        del self.origins.docs["remote.example"]
        self.clock.advance(2 * 24 * 3600)
        result = self.successResultOf(self.service.query_one("remote.example"))
        self.assertEqual(len(result["server_keys"]), 1)

    def test_own_keys_served_from_own_document(self):
        """Asking about our own server returns our own key document, signed by us, with no fetch."""
        result = self.successResultOf(self.service.query_one("notary.example"))
        [doc] = result["server_keys"]
        self.assertEqual(doc["verify_keys"], {key_id(self.our_key): {"key": b64key(self.our_key)}})
        verify_signed_json(doc, "notary.example", get_verify_key(self.our_key))
        self.assertEqual(self.origins.calls, [])

    def test_own_document_provider_used(self):
        """An injected own-key-document provider is what we serve for ourselves."""
        marker = {"server_name": "notary.example", "marker": True}
        service = NotaryService(self.clock, self.keyring, self.store, "notary.example", self.our_key, lambda: marker)
        result = self.successResultOf(service.query({"server_keys": {"notary.example": {}}}))
        self.assertEqual(result["server_keys"], [marker])

    def test_empty_query(self):
        """No servers asked gives an empty server_keys list."""
        self.assertEqual(self.successResultOf(self.service.query({"server_keys": {}})), {"server_keys": []})

    def test_round_trip_through_notary_fetcher(self):
        """Our notary answers are accepted by a NotaryKeyFetcher configured with our key."""
        other_store = FakeKeyStore()

        def post_json(notary, path, body):
            self.assertEqual((notary, path), ("notary.example", "/_matrix/key/v2/query"))
            return self.service.query(copy.deepcopy(body))

        fetcher = NotaryKeyFetcher(post_json, [("notary.example", {key_id(self.our_key): b64key(self.our_key)})])
        client = Keyring(Clock(), other_store, [fetcher], "client.example", {})
        client._clock.advance(NOW_S)
        got = self.successResultOf(client.get_verify_keys("remote.example", [key_id(self.remote_key)], NOW_MS))
        self.assertEqual(list(got), [key_id(self.remote_key)])

    def test_bad_bodies(self):
        """Malformed query bodies raise 400 M_BAD_JSON rather than crashing."""
        bad = [
            None, [], "x",
            {},
            {"server_keys": []},
            {"server_keys": {"bad name!": {}}},
            {"server_keys": {"../etc": {}}},
            {"server_keys": {"remote.example": []}},
            {"server_keys": {"remote.example": {"ed25519:a": 5}}},
            {"server_keys": {"remote.example": {"ed25519:a": {"minimum_valid_until_ts": "soon"}}}},
            {"server_keys": {"remote.example": {"ed25519:a": {"minimum_valid_until_ts": 1.5}}}},
            {"server_keys": {"remote.example": {"ed25519:a": {"minimum_valid_until_ts": -1}}}},
            {"server_keys": {"remote.example": {"ed25519:a": {"minimum_valid_until_ts": True}}}},
            {"server_keys": {"remote.example": {"": {}}}},
            {"server_keys": {"remote.example": {"ed25519:" + "a" * 300: {}}}},
            {"server_keys": {"remote.example": {f"ed25519:k{i}": {} for i in range(100)}}},
            {"server_keys": {f"s{i}.example": {} for i in range(MAX_QUERY_SERVERS + 1)}},
        ]
        for body in bad:
            f = self.failureResultOf(self.service.query(body), MatrixError)
            self.assertEqual((f.value.code, f.value.errcode), (400, "M_BAD_JSON"), body if not isinstance(body, dict) else list(body))
        self.assertEqual(self.origins.calls, [])

    def test_bad_get_params(self):
        """query_one refuses invalid server names and timestamps with 400 M_INVALID_PARAM."""
        for name, minimum in (("a b", None), ("", None), ("x/y", None), ("remote.example", -5), ("remote.example", 1.5)):
            f = self.failureResultOf(self.service.query_one(name, None, minimum), MatrixError)
            self.assertEqual((f.value.code, f.value.errcode), (400, "M_INVALID_PARAM"))

    def test_corrupt_stored_documents_skipped(self):
        """Stored blobs that are not JSON, not objects or about another server are skipped."""
        self.successResultOf(self.service.query_one("remote.example"))
        self.store.json["remote.example"].extend([b"{not json", b"[]", b'{"server_name":"other.example"}'])
        result = self.successResultOf(self.service.query_one("remote.example"))
        self.assertEqual(len(result["server_keys"]), 1)


class NotaryHttpTests(NotaryTestBase):
    """The endpoints through a real twisted.web site (treq.testing.StubTreq)."""

    def setUp(self):
        super().setUp()
        self.treq = StubTreq(build_tree({NOTARY_PREFIX: NotaryResource(self.service)}))

    def request(self, method, path, data=None):
        d = self.treq.request(method, "https://notary.example" + path, data=data)
        self.treq.flush()
        resp = self.successResultOf(d)
        body = self.successResultOf(resp.content())
        return resp.code, json.loads(body)

    def test_post_query(self):
        """POST /_matrix/key/v2/query answers 200 with documents signed by us."""
        body = json.dumps({"server_keys": {"remote.example": {key_id(self.remote_key): {}}}}).encode()
        code, result = self.request("POST", "/_matrix/key/v2/query", body)
        self.assertEqual(code, 200)
        [doc] = result["server_keys"]
        self.assertSignedByUsAndOrigin(doc, "remote.example", self.remote_key)

    def test_get_query(self):
        """GET /_matrix/key/v2/query/{serverName} with minimum_valid_until_ts answers 200."""
        code, result = self.request("GET", f"/_matrix/key/v2/query/remote.example?minimum_valid_until_ts={NOW_MS}")
        self.assertEqual(code, 200)
        self.assertSignedByUsAndOrigin(result["server_keys"][0], "remote.example", self.remote_key)
        code, result = self.request("GET", "/_matrix/key/v2/query/dead.example")
        self.assertEqual((code, result), (200, {"server_keys": []}))

    def test_hostile_http_input(self):
        """Non-JSON bodies are 400 M_NOT_JSON; wrong shapes 400 M_BAD_JSON; bad path or query
        parameters 400 M_INVALID_PARAM; unknown paths 404 and wrong methods 405 — never 500."""
        cases = [
            ("POST", "/_matrix/key/v2/query", b"", 400, "M_NOT_JSON"),
            ("POST", "/_matrix/key/v2/query", b"{", 400, "M_NOT_JSON"),
            ("POST", "/_matrix/key/v2/query", b'{"server_keys": NaN}', 400, "M_NOT_JSON"),
            ("POST", "/_matrix/key/v2/query", b"[" * 5000 + b"]" * 5000, 400, "M_NOT_JSON"),
            ("POST", "/_matrix/key/v2/query", b"[]", 400, "M_BAD_JSON"),
            ("POST", "/_matrix/key/v2/query", b'{"server_keys": 1}', 400, "M_BAD_JSON"),
            ("POST", "/_matrix/key/v2/query", b'{"server_keys": {"a\\u0000b": {}}}', 400, "M_BAD_JSON"),
            ("POST", "/_matrix/key/v2/query", b'{"server_keys": {"x.org": {"ed25519:a": {"minimum_valid_until_ts": 1e400}}}}', 400, "M_NOT_JSON"),  # overflows to infinity: refused by the parser
            ("POST", "/_matrix/key/v2/query", b'{"server_keys": {"x.org": {"ed25519:a": {"minimum_valid_until_ts": 99999999999999999999}}}}', 400, "M_BAD_JSON"),
            ("GET", "/_matrix/key/v2/query/bad%20name", None, 400, "M_INVALID_PARAM"),
            ("GET", "/_matrix/key/v2/query/%2E%2E%2Fetc", None, 400, "M_INVALID_PARAM"),
            ("GET", "/_matrix/key/v2/query/%FF", None, 400, "M_INVALID_PARAM"),
            ("GET", "/_matrix/key/v2/query/remote.example?minimum_valid_until_ts=soon", None, 400, "M_INVALID_PARAM"),
            ("GET", "/_matrix/key/v2/query/remote.example/ed25519:a", None, 404, "M_UNRECOGNIZED"),
            ("PUT", "/_matrix/key/v2/query", b"{}", 405, "M_UNRECOGNIZED"),
            ("GET", "/_matrix/key/v2/query", None, 405, "M_UNRECOGNIZED"),
        ]
        for method, path, data, code, errcode in cases:
            got_code, body = self.request(method, path, data)
            self.assertEqual((got_code, body.get("errcode")), (code, errcode), (method, path, data and data[:60]))
        self.assertEqual(self.origins.calls, [])
