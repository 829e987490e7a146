"""Strict input at every entry point of a running server: JSON whose meaning depends on the
parser (duplicate keys, lone surrogates, NaN, absurd nesting) and ambiguous credentials
are refused, never guessed. Issue 12, "Strict input"."""

from __future__ import annotations

import ast
import json
import os
import re
from urllib.parse import quote

import treq
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

import fedserver
from fedserver.events.canonical import CanonicalJSONError, parse_json
from fedserver.http.resource import iter_routes
from fedserver.testing import loopback_config, start_server
from tests.test_federation_support import FED
from tests.test_hostile_federation import RunningServerCase

#: Bodies no parser may read differently from another (RFC 7493 I-JSON, the spec's
#: "Canonical JSON" appendix), each for an object-shaped body.
AMBIGUOUS_BODIES = (
    b'{"membership": "join", "membership": "leave"}',  # duplicate key
    b'{"a": {"x": 1, "x": 1}}',  # duplicate key, same value, nested
    b'{"body": "\\ud800"}',  # lone high surrogate, escaped
    b'{"\\udc00": 1}',  # lone low surrogate in a key
    b'{"body": "\\ud83d x"}',  # high surrogate not followed by a low one
    b'{"body": "\xed\xa0\x80"}',  # raw surrogate (invalid UTF-8)
    b'{"n": NaN}',
    b'{"n": -Infinity}',
    b'{"n": 1e999}',  # overflows to infinity
    b"\xef\xbb\xbf{}",  # byte order mark
    b'{"a":' * 70 + b"1" + b"}" * 70,  # nested beyond 64 levels
)


class ParserTests(TestCase):
    """The one strict parser, on plain data."""

    def test_refuses_ambiguous_json(self):
        """Every ambiguous body is CanonicalJSONError."""
        for body in AMBIGUOUS_BODIES:
            self.assertRaises(CanonicalJSONError, parse_json, body)

    def test_accepts_what_is_unambiguous(self):
        """Escaped surrogate pairs are one character; floats and big integers are parsed
        (which APIs refuse them is decided per API); 64 levels of nesting are fine."""
        self.assertEqual(parse_json(b'{"e": "\\ud83d\\ude00", "f": 0.5, "i": 9007199254740993}'),
                         {"e": "\U0001f600", "f": 0.5, "i": 9007199254740993})
        deepest: list = []
        for _ in range(63):
            deepest = [deepest]
        self.assertEqual(parse_json(b"[" * 64 + b"]" * 64), deepest)
        self.assertEqual(parse_json('{"a": "é"}'), {"a": "é"})

    def test_no_second_parser(self):
        """Every module outside storage parses received JSON with parse_json: no other
        json.loads / json.load call exists (storage reads back what we wrote ourselves)."""
        root = os.path.dirname(fedserver.__file__)
        offenders = []
        for dirpath, _, files in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            if rel.split(os.sep)[0] == "storage":
                continue
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(dirpath, name)
                if path.endswith(os.path.join("events", "canonical.py")):
                    continue
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                for node in ast.walk(tree):
                    if (isinstance(node, ast.Attribute) and node.attr in ("loads", "load")
                            and isinstance(node.value, ast.Name) and node.value.id == "json"):
                        offenders.append(f"{os.path.relpath(path, root)}:{node.lineno}")
        # The outbound queue decodes rows it encoded itself.
        offenders = [o for o in offenders if not o.startswith(os.path.join("federation", "sender.py"))]
        self.assertEqual(offenders, [])


def _fill(template: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: quote(values.get(m.group(1), "x"), safe=""), template)


class FederationEntryPointTests(RunningServerCase):
    """Every federation and key endpoint that takes a body, spoken to over real TLS."""

    async def test_every_federation_body_is_parsed_strictly(self):
        """Every PUT/POST route of the federation API (v1 and v2) answers 400 M_NOT_JSON
        for every ambiguous body, even correctly signed over what it would mean for one
        parser; no transaction is recorded."""
        values = {"room_id": self.room, "event_id": "$abc", "txn_id": "strict"}
        routes = [(FED, m, t) for m, t in iter_routes(self.service.federation_resource)]
        routes += [("/_matrix/federation/v2", m, t) for m, t in iter_routes(self.service.federation_v2_resource)]
        checked = 0
        for prefix, method, template in routes:
            if method not in ("PUT", "POST"):
                continue
            uri = prefix + _fill(template, values)
            for body in AMBIGUOUS_BODIES:
                code, parsed, raw = await self.request(method, uri, body, sign_content={"membership": "join"})
                self.assertEqual((code, parsed and parsed.get("errcode")), (400, "M_NOT_JSON"), (uri, body[:40], raw[:200]))
            checked += 1
        self.assertGreaterEqual(checked, 9)  # send, send_join x2, send_leave x2, send_knock, invite x2, get_missing_events
        await self.nothing_recorded("strict")

    async def test_key_query_body_is_parsed_strictly(self):
        """POST /_matrix/key/v2/query (unauthenticated) refuses ambiguous bodies with 400
        M_NOT_JSON; a criteria value beyond canonical JSON's integer range is 400
        M_BAD_JSON."""
        for body in AMBIGUOUS_BODIES:
            code, parsed, raw = await self.request("POST", "/_matrix/key/v2/query", body, sign=False)
            self.assertEqual((code, parsed and parsed.get("errcode")), (400, "M_NOT_JSON"), (body[:40], raw[:200]))
        too_big = {"server_keys": {"x.test": {"ed25519:a": {"minimum_valid_until_ts": 2**53}}}}
        code, parsed, raw = await self.request("POST", "/_matrix/key/v2/query", too_big, sign=False)
        self.assertEqual((code, parsed and parsed.get("errcode")), (400, "M_BAD_JSON"), raw[:200])

    async def test_ambiguous_origin_refused_on_a_running_server(self):
        """Two X-Matrix headers naming two different origins, each validly signed by a
        server whose keys we hold, are 401 M_UNAUTHORIZED and the transaction is not
        processed; either header alone is accepted."""
        from tests.test_federation_support import Peer, now_ms
        from fedserver.events.hashing import unpadded_base64
        from fedserver.federation.xmatrix import sign_request

        other = Peer("127.0.0.1:11", "o1")
        doc = other.key_document()
        await self.service.store.store_server_keys(
            other.name, [(other.key_id, unpadded_base64(other.key.verify_key.encode()), doc["valid_until_ts"], None)],
            json.dumps(doc).encode(), now_ms(),
        )
        uri = FED + "/send/two-origins"
        body = {"origin_server_ts": now_ms(), "pdus": []}
        mine = sign_request(self.peer.name, self.peer.key, "us.test:8448", "PUT", uri, body).encode()
        theirs = sign_request(other.name, other.key, "us.test:8448", "PUT", uri, body).encode()
        for headers in ([mine, theirs], [theirs, mine]):
            result = await self.request("PUT", uri, body, sign=False, headers={b"Authorization": headers})
            await self.assertError(result, 401, "M_UNAUTHORIZED")
        await self.nothing_recorded("two-origins")
        code, _, raw = await self.request("PUT", uri, body, sign=False, headers={b"Authorization": [theirs]})
        self.assertEqual(code, 200, raw[:200])


class ClientEntryPointTests(TestCase):
    """Every client API endpoint that takes a body, and the filters given in query
    parameters, over loopback HTTP against a running server."""

    async def setUp(self):
        directory = os.path.abspath(self.mktemp())
        self.service = await start_server(self, loopback_config(directory, enable_registration=True))
        self.base = f"http://127.0.0.1:{self.service.client_listener.port.getHost().port}"
        self.http = treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        code, body = await self.call("POST", "/_matrix/client/v3/register",
                                     {"username": "alice", "password": "pw", "auth": {"type": "m.login.dummy"}})
        assert code == 200, body
        self.token, self.user_id = body["access_token"], body["user_id"]
        code, body = await self.call("POST", "/_matrix/client/v3/createRoom", {}, token=self.token)
        assert code == 200, body
        self.room_id = body["room_id"]

    async def call(self, method, path, body=None, *, token=None, headers=None):
        hdrs = dict(headers or {})
        if token is not None:
            hdrs.setdefault(b"Authorization", [b"Bearer " + token.encode()])
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        resp = await self.http.request(method, self.base + path, data=data, headers=hdrs)
        raw = await resp.content()
        try:
            return resp.code, json.loads(raw)
        except ValueError:
            return resp.code, raw

    async def test_every_client_body_is_parsed_strictly(self):
        """Every PUT/POST route (v3 and r0) answers 400 M_NOT_JSON for every ambiguous
        body, authenticated or not (login and register too), and nothing changes: the
        display name, the room's state and the account stay as they were."""
        values = {
            "room_id": self.room_id, "room_id_or_alias": self.room_id, "user_id": self.user_id,
            "event_type": "m.room.message", "txn_id": "t1", "event_id": "$x", "key": "displayname",
            "device_id": "DEV", "data_type": "t", "room_alias": "#strict:" + self.service.config.server_name,
            "receipt_type": "m.read",
        }
        checked = 0
        for method, template in iter_routes(self.service.client_api):
            if method not in ("PUT", "POST"):
                continue
            path = "/_matrix/client" + _fill(template, values)
            for body in AMBIGUOUS_BODIES:
                code, parsed = await self.call(method, path, body, token=self.token)
                self.assertEqual((code, isinstance(parsed, dict) and parsed.get("errcode")), (400, "M_NOT_JSON"),
                                 (method, path, body[:40], parsed))
            checked += 1
        self.assertGreater(checked, 40)
        code, body = await self.call("GET", f"/_matrix/client/v3/profile/{quote(self.user_id)}/displayname")
        self.assertEqual(body.get("displayname"), "alice")
        code, body = await self.call("GET", f"/_matrix/client/v3/rooms/{quote(self.room_id)}/joined_members", token=self.token)
        self.assertEqual((code, list(body["joined"])), (200, [self.user_id]))

    async def test_filters_in_query_parameters(self):
        """A filter given inline to /sync or /messages goes through the same parser:
        duplicate keys or a lone surrogate are 400 M_INVALID_PARAM (it is a query
        parameter), never read one way or another."""
        for raw in ('{"room":{"timeline":{"limit":1,"limit":50}}}', '{"room":{"rooms":["\\ud800"]}}'):
            f = quote(raw, safe="")
            for path in (f"/_matrix/client/v3/sync?filter={f}",
                         f"/_matrix/client/v3/rooms/{quote(self.room_id)}/messages?dir=b&filter={f}"):
                code, body = await self.call("GET", path, token=self.token)
                self.assertEqual((code, body.get("errcode")), (400, "M_INVALID_PARAM"), (path, body))
        code, _ = await self.call("GET", "/_matrix/client/v3/sync?filter=" + quote('{"room":{"timeline":{"limit":1}}}'), token=self.token)
        self.assertEqual(code, 200)

    async def test_ambiguous_access_tokens(self):
        """Several Authorization headers, or a header and an access_token parameter,
        carrying different tokens are 401 M_MISSING_TOKEN, even if one of them is valid;
        the same token twice is fine."""
        code, body = await self.call("POST", "/_matrix/client/v3/login",
                                     {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
                                      "password": "pw"})
        other = body["access_token"]
        whoami = "/_matrix/client/v3/account/whoami"
        mine = b"Bearer " + self.token.encode()
        theirs = b"Bearer " + other.encode()
        for path, headers in (
            (whoami, {b"Authorization": [mine, theirs]}),
            (whoami, {b"Authorization": [mine, b"Bearer nonsense"]}),
            (whoami + "?access_token=" + other, {b"Authorization": [mine]}),
            (whoami + "?access_token=" + self.token + "&access_token=" + other, {}),
            (whoami, {b"Authorization": [mine, b'X-Matrix origin="a.test",key="ed25519:a",sig="x"']}),
        ):
            code, body = await self.call("GET", path, headers=headers)
            self.assertEqual((code, body.get("errcode")), (401, "M_MISSING_TOKEN"), (path, headers, body))
        for path, headers in (
            (whoami, {b"Authorization": [mine, mine]}),
            (whoami + "?access_token=" + self.token, {b"Authorization": [mine]}),
            (whoami + "?access_token=" + self.token, {}),
        ):
            code, body = await self.call("GET", path, headers=headers)
            self.assertEqual((code, body.get("user_id")), (200, self.user_id), (path, headers, body))
