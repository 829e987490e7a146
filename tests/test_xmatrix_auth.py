"""Tests for fedserver.http.federation.xmatrix_auth: X-Matrix authentication of inbound requests
(HOSTILE.md rows 1-5), through real twisted.web resources driven by treq.testing.StubTreq."""

from __future__ import annotations

import json
from urllib.parse import quote

from signedjson.key import generate_signing_key, get_verify_key
from signedjson.sign import SignatureVerifyException, verify_signed_json
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from fedserver.federation.keyring import KeyVerificationError
from fedserver.federation.xmatrix import sign_request
from fedserver.http.resource import JsonResource, build_tree, read_json_body
from fedserver.http.federation.xmatrix_auth import XMatrixAuthenticator

US = "us.test:8448"
PEER = "peer.test"
BASE = "/_matrix/federation/v1"


class FakeKeyring:
    """Verifies with a fixed table ``{server: {key_id: (verify_key, valid_until_ms)}}`` the
    way the keyring's ``verify_json_for_server`` is specified to."""

    def __init__(self, keys):
        self.keys = keys
        self.calls = []

    def verify_json_for_server(self, server_name, json_obj, minimum_valid_until_ts):
        self.calls.append((server_name, json_obj, minimum_valid_until_ts))
        sigs = json_obj.get("signatures", {}).get(server_name, {})
        for key_id in sigs:
            known = self.keys.get(server_name, {}).get(key_id)
            if known is None:
                continue
            verify_key, valid_until = known
            if valid_until < minimum_valid_until_ts:
                return defer.fail(KeyVerificationError(f"key {key_id} expired"))
            try:
                verify_signed_json(json_obj, server_name, verify_key)
            except SignatureVerifyException as e:
                return defer.fail(KeyVerificationError(str(e)))
            return defer.succeed(None)
        return defer.fail(KeyVerificationError(f"no known key of {server_name}"))


class BrokenKeyring:
    """A keyring whose lookups fail with something unexpected."""

    def verify_json_for_server(self, server_name, json_obj, minimum_valid_until_ts):
        return defer.fail(RuntimeError("database on fire"))


class XMatrixAuthenticatorTests(SynchronousTestCase):
    """A resource that answers ``{"origin": ...}`` only for authenticated requests."""

    def setUp(self):
        self.key = generate_signing_key("k1")
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        valid_until = int(self.clock.seconds() * 1000) + 3_600_000
        self.keyring = FakeKeyring({PEER: {"ed25519:k1": (get_verify_key(self.key), valid_until)}})
        self.auth = XMatrixAuthenticator(self.keyring, US, self.clock)
        self.seen = []
        self.auth.on_authenticated.append(self.seen.append)
        self.treq = StubTreq(self._app(self.auth))

    @staticmethod
    def _app(auth):
        async def echo(request, **params):
            origin = await auth.authenticate(request)
            body = read_json_body(request) if request.method == b"PUT" else None
            return {"origin": origin, "body": body}

        res = JsonResource()
        res.add_route("GET", "/query/{thing}", echo)
        res.add_route("PUT", "/send/{txn}", echo)
        return build_tree({BASE: res})

    def _do(self, method, uri, body=None, headers=None):
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        d = self.treq.request(method, "https://" + US + uri, headers=headers or {}, data=data)
        self.treq.flush()
        response = self.successResultOf(d)
        d = response.content()
        self.treq.flush()
        return response.code, json.loads(self.successResultOf(d))

    def _signed(self, method, uri, content=None, *, origin=PEER, destination=US, key=None):
        return {b"Authorization": [sign_request(origin, key or self.key, destination, method, uri, content).encode()]}

    def test_get_with_valid_signature(self):
        """A correctly signed GET with a query string authenticates as its origin, the
        key must be valid now, and on_authenticated hears of it."""
        uri = BASE + "/query/profile?user_id=" + quote("@a:us.test:8448", safe="") + "&field=displayname"
        code, body = self._do("GET", uri, headers=self._signed("GET", uri))
        self.assertEqual((code, body["origin"]), (200, PEER))
        self.assertEqual(self.seen, [PEER])
        self.assertEqual(self.keyring.calls[0][2], int(self.clock.seconds() * 1000))
        self.assertEqual(self.keyring.calls[0][1]["uri"], uri)

    def test_put_with_valid_signature(self):
        """A signed PUT verifies over its JSON body, which the handler then gets parsed."""
        uri = BASE + "/send/txn1"
        content = {"origin": PEER, "pdus": [], "edus": [{"edu_type": "m.x", "content": {"ü": 1}}]}
        code, body = self._do("PUT", uri, content, headers=self._signed("PUT", uri, content))
        self.assertEqual((code, body["origin"], body["body"]), (200, PEER, content))

    def test_missing_header(self):
        """HOSTILE row 1: no Authorization header, or only a non-X-Matrix one, is 401
        M_UNAUTHORIZED."""
        for headers in ({}, {b"Authorization": [b"Bearer abc"]}):
            code, body = self._do("GET", BASE + "/query/x", headers=headers)
            self.assertEqual((code, body["errcode"]), (401, "M_UNAUTHORIZED"))
        self.assertEqual(self.seen, [])

    def test_unparseable_header_or_bad_origin(self):
        """HOSTILE row 2: an unparseable header or an invalid origin server name is 401."""
        for value in (
            b"X-Matrix garbage",
            b'X-Matrix origin="bad name",key="ed25519:k1",sig="abc"',
            b'X-Matrix origin="peer.test",key="ed25519:k1"',
            b'X-Matrix origin="\xff",key="ed25519:k1",sig="abc"',
        ):
            code, body = self._do("GET", BASE + "/query/x", headers={b"Authorization": [value]})
            self.assertEqual((code, body["errcode"]), (401, "M_UNAUTHORIZED"), value)
        self.assertEqual(self.keyring.calls, [])

    def test_wrong_destination(self):
        """HOSTILE row 3: a destination other than our server name is 401, before any key
        lookup; our name without the port is another name."""
        uri = BASE + "/query/x"
        for destination in ("other.test", "us.test"):
            code, body = self._do("GET", uri, headers=self._signed("GET", uri, destination=destination))
            self.assertEqual((code, body["errcode"]), (401, "M_UNAUTHORIZED"))
        self.assertEqual(self.keyring.calls, [])

    def test_missing_destination_is_accepted(self):
        """A header without destination (servers before v1.3) is accepted if the signature,
        made without destination, verifies."""
        from fedserver.events.canonical import encode_canonical_json
        from fedserver.events.hashing import unpadded_base64

        uri = BASE + "/query/x"
        message = encode_canonical_json({"method": "GET", "uri": uri, "origin": PEER})
        sig = unpadded_base64(self.key.sign(message).signature)
        header = f'X-Matrix origin="{PEER}",key="ed25519:k1",sig="{sig}"'.encode()
        code, body = self._do("GET", uri, headers={b"Authorization": [header]})
        self.assertEqual((code, body.get("origin")), (200, PEER))

    def test_tampered_requests(self):
        """HOSTILE row 4: a signature over another method, path, query or body is 401."""
        uri = BASE + "/send/t1"
        content = {"pdus": []}
        cases = [
            # (sent method, sent uri, sent body, signed method, signed uri, signed body)
            ("PUT", uri, content, "POST", uri, content),
            ("PUT", uri, content, "PUT", BASE + "/send/t2", content),
            ("PUT", uri, {"pdus": [], "x": 1}, "PUT", uri, content),
            ("GET", BASE + "/query/p?user_id=b", None, "GET", BASE + "/query/p?user_id=a", None),
            ("GET", BASE + "/query/p?user_id=a&x=1", None, "GET", BASE + "/query/p?user_id=a", None),
            ("GET", BASE + "/query/p", None, "GET", BASE + "/query/p?user_id=a", None),
        ]
        for method, sent_uri, sent_body, s_method, s_uri, s_body in cases:
            headers = self._signed(s_method, s_uri, s_body)
            code, body = self._do(method, sent_uri, sent_body, headers=headers)
            self.assertEqual((code, body["errcode"]), (401, "M_UNAUTHORIZED"), (method, sent_uri))
        self.assertEqual(self.seen, [])

    def test_unknown_or_expired_key(self):
        """HOSTILE row 4: a signature by a key the origin never published, by another
        server's key, or by a key no longer valid is 401."""
        uri = BASE + "/query/x"
        other = generate_signing_key("k2")
        code, body = self._do("GET", uri, headers=self._signed("GET", uri, key=other))
        self.assertEqual((code, body["errcode"]), (401, "M_UNAUTHORIZED"))
        impostor = generate_signing_key("k1")  # same key id, different key
        code, body = self._do("GET", uri, headers=self._signed("GET", uri, key=impostor))
        self.assertEqual((code, body["errcode"]), (401, "M_UNAUTHORIZED"))
        self.clock.advance(7200)
        code, body = self._do("GET", uri, headers=self._signed("GET", uri))
        self.assertEqual((code, body["errcode"]), (401, "M_UNAUTHORIZED"))
        self.assertEqual(self.seen, [])

    def test_several_headers_same_origin(self):
        """Request Authentication allows one X-Matrix header per signing key of the
        origin: two headers by two published keys of the same origin authenticate, and
        both signatures are checked."""
        key2 = generate_signing_key("k2")
        self.keyring.keys[PEER]["ed25519:k2"] = (get_verify_key(key2), self.keyring.keys[PEER]["ed25519:k1"][1])
        uri = BASE + "/query/x"
        headers = {b"Authorization": self._signed("GET", uri)[b"Authorization"] + self._signed("GET", uri, key=key2)[b"Authorization"]}
        code, body = self._do("GET", uri, headers=headers)
        self.assertEqual((code, body["origin"]), (200, PEER))
        self.assertEqual([sorted(c[1]["signatures"][PEER]) for c in self.keyring.calls], [["ed25519:k1"], ["ed25519:k2"]])

    def test_several_headers_one_bad_signature(self):
        """Two headers of the same origin where the second signature does not verify: 401,
        whichever header comes first."""
        uri = BASE + "/query/x"
        good = self._signed("GET", uri)[b"Authorization"]
        bad = self._signed("GET", uri, key=generate_signing_key("k1"))[b"Authorization"]
        for values in (good + bad, bad + good):
            code, body = self._do("GET", uri, headers={b"Authorization": values})
            self.assertEqual((code, body["errcode"]), (401, "M_UNAUTHORIZED"))
        self.assertEqual(self.seen, [])

    def test_headers_naming_different_origins(self):
        """Never act as one origin while another header names a different one: two valid
        signatures by two different servers in one request are 401 M_UNAUTHORIZED, before
        any key lookup; so are headers that disagree on the destination, a header that does
        not parse next to a valid one, and an X-Matrix header next to another scheme."""
        other = "other.test"
        other_key = generate_signing_key("k1")
        valid_until = self.keyring.keys[PEER]["ed25519:k1"][1]
        self.keyring.keys[other] = {"ed25519:k1": (get_verify_key(other_key), valid_until)}
        uri = BASE + "/query/x"
        mine = self._signed("GET", uri)[b"Authorization"]
        theirs = self._signed("GET", uri, origin=other, key=other_key)[b"Authorization"]
        # Each alone is fine.
        for values, origin in ((mine, PEER), (theirs, other)):
            code, body = self._do("GET", uri, headers={b"Authorization": values})
            self.assertEqual((code, body["origin"]), (200, origin))
        self.keyring.calls.clear()
        self.seen.clear()
        no_destination = [b'X-Matrix origin="peer.test",key="ed25519:k1",sig="abc"']
        for values in (
            mine + theirs,
            theirs + mine,
            mine + self._signed("GET", uri, destination="elsewhere.test")[b"Authorization"],
            mine + no_destination,
            mine + [b"X-Matrix garbage"],
            mine + [b"Bearer abc"],
            [b"Bearer abc"] + mine,
            mine * 5,
        ):
            code, body = self._do("GET", uri, headers={b"Authorization": values})
            self.assertEqual((code, body["errcode"]), (401, "M_UNAUTHORIZED"), values)
        self.assertEqual(self.keyring.calls, [])
        self.assertEqual(self.seen, [])

    def test_storage_fault_during_key_lookup_is_503(self):
        """A database fault while looking up the origin's keys is our problem, not the
        peer's: 503 M_UNKNOWN, not 401 (which would make it drop the request)."""
        from fedserver.storage.interface import StorageUnavailableError

        class FullKeyring:
            def verify_json_for_server(self, server_name, json_obj, minimum_valid_until_ts):
                return defer.fail(StorageUnavailableError("full", "database or disk is full"))

        treq = StubTreq(self._app(XMatrixAuthenticator(FullKeyring(), US, self.clock)))
        uri = BASE + "/query/x"
        d = treq.request("GET", "https://" + US + uri, headers=self._signed("GET", uri))
        treq.flush()
        response = self.successResultOf(d)
        d = response.content()
        treq.flush()
        self.assertEqual((response.code, json.loads(self.successResultOf(d))["errcode"]), (503, "M_UNKNOWN"))

    def test_body_not_json(self):
        """HOSTILE row 5: a body that is not JSON is 400 M_NOT_JSON, not a 500."""
        uri = BASE + "/send/t"
        for raw in (b"{", b"\xff\xfe", b'{"a": NaN}', b"[" * 100 + b"]" * 100, b'{"a": 1, "a": 2}', b'{"a": "\\udc00"}'):
            code, body = self._do("PUT", uri, raw, headers=self._signed("PUT", uri, {}))
            self.assertEqual((code, body["errcode"]), (400, "M_NOT_JSON"), raw[:10])

    def test_keyring_failure_is_401(self):
        """A keyring failing unexpectedly still gives 401, never 500 or acceptance."""
        treq = StubTreq(self._app(XMatrixAuthenticator(BrokenKeyring(), US, self.clock)))
        uri = BASE + "/query/x"
        d = treq.request("GET", "https://" + US + uri, headers=self._signed("GET", uri))
        treq.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 401)

    def test_callback_errors_do_not_break_requests(self):
        """An on_authenticated callback that raises is logged; the request still succeeds
        and later callbacks still run."""

        def boom(origin):
            raise ValueError("boom")

        self.auth.on_authenticated.insert(0, boom)
        uri = BASE + "/query/x"
        code, body = self._do("GET", uri, headers=self._signed("GET", uri))
        self.assertEqual((code, body["origin"]), (200, PEER))
        self.assertEqual(self.seen, [PEER])
        self.flushLoggedErrors(ValueError)

    def test_explicit_content_argument(self):
        """authenticate() takes the body as bytes or as parsed JSON instead of reading the
        request."""
        uri = BASE + "/send/t"
        content = {"a": [1, 2]}
        header = sign_request(PEER, self.key, US, "PUT", uri, content).encode()

        class Req:
            method = b"PUT"

            def __init__(self):
                from twisted.web.http_headers import Headers

                self.uri = uri.encode()
                self.requestHeaders = Headers({b"Authorization": [header]})
                self.content = None

        for given in (json.dumps(content).encode(), content):
            self.assertEqual(self.successResultOf(self.auth.authenticate(Req(), given)), PEER)
        failure = self.failureResultOf(self.auth.authenticate(Req(), b""))
        self.assertEqual(failure.value.code, 401)
