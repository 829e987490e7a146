"""Tests for fedserver.http.federation.transport: the /_matrix/federation/v1 resource driven through
treq.testing.StubTreq with real X-Matrix signatures, a real keyring and a real SQLite store."""

from __future__ import annotations

import json
from urllib.parse import quote

from signedjson.key import generate_signing_key
from treq.testing import StubTreq
from twisted.internet import defer, reactor

from fedserver.events.hashing import compute_event_id
from fedserver.federation.acl import ServerAcls
from fedserver.handlers.federation.ingest import Ingest
from fedserver.handlers.federation.transactions import TransactionHandler
from fedserver.errors import not_found
from fedserver.http.federation.transport import FederationResource
from fedserver.http.federation.keys import ServerKeyDocument, ServerKeyResource
from fedserver.http.site import build_federation_root
from fedserver.http.federation.xmatrix_auth import XMatrixAuthenticator
from fedserver.room_versions import V10
from fedserver.storage import PersistEntry
from tests.test_federation_support import FED, US, Peer, PeerRoom, StoreTestCase, make_receiver, stub_request
from tests.test_storage_support import make_event

ROOM = "!room:peer.test"


class Profiles:
    """A profile handler knowing one user."""

    def __init__(self):
        self.calls = []

    def get_local_profile(self, user_id, field=None):
        self.calls.append((user_id, field))
        if user_id != f"@alice:{US}":
            return defer.fail(not_found("Profile was not found"))
        profile = {"displayname": "Alice", "avatar_url": "mxc://us.test/a"}
        return defer.succeed(profile if field is None else {field: profile[field]})


class FederationResourceTests(StoreTestCase):
    async def setUp(self):
        self.peer = Peer("peer.test")
        self.store = await self.open_store()
        await self.store.store_room(ROOM, V10)
        self.room = await PeerRoom(self.store, V10).build(self.peer)
        keyring, self.fetcher = self.make_keyring(self.store, self.peer)
        self.auth = XMatrixAuthenticator(keyring, US, reactor)
        self.seen = []
        self.auth.on_authenticated.append(self.seen.append)
        self.acls = ServerAcls(self.store)
        self.transactions = TransactionHandler(
            reactor, self.store, Ingest(self.store, keyring), self.acls, receiver=make_receiver(self.store)
        )
        self.profiles = Profiles()
        self.resource = FederationResource(
            self.auth, acls=self.acls, transactions=self.transactions, profiles=self.profiles
        )
        self.treq = StubTreq(build_federation_root(server_keys=self.key_resource(), federation_v1=self.resource))

    @staticmethod
    def key_resource():
        return ServerKeyResource(ServerKeyDocument(US, generate_signing_key("us"), reactor, 86_400_000))

    async def request(self, method, uri, body=None, signed=True, headers=None):
        if signed and headers is None:
            headers = self.peer.auth_header(method, uri, body)
        code, parsed, raw = await stub_request(self.treq, method, uri, body, headers)
        return code, parsed, raw

    async def test_version_needs_no_signature(self):
        """GET /version answers the server's name and version without authentication."""
        code, body, _ = await self.request("GET", FED + "/version", signed=False)
        self.assertEqual(code, 200)
        self.assertEqual(body["server"]["name"], "fedserver")
        self.assertEqual(self.seen, [])

    async def test_send_signed_transaction(self):
        """A signed PUT /send is processed: per-PDU results, the event stored, and
        on_authenticated told of the origin; the replay returns the same bytes."""
        pdu = self.room.pdu(self.peer)
        eid = compute_event_id(pdu, V10)
        uri = FED + "/send/txn1"
        body = {"origin": self.peer.name, "origin_server_ts": 1, "pdus": [pdu], "edus": []}
        code, resp, raw = await self.request("PUT", uri, body)
        self.assertEqual((code, resp), (200, {"pdus": {eid: {}}}))
        self.assertEqual(await self.store.have_events([eid]), {eid})
        self.assertEqual(self.seen, [self.peer.name])
        code, _, raw2 = await self.request("PUT", uri, dict(body, pdus=[]))
        self.assertEqual((code, raw2), (200, raw))

    async def test_send_txn_id_is_percent_decoded(self):
        """A transaction id with reserved characters arrives decoded and is stored by it."""
        txn_id = "a/b c?d"
        uri = FED + "/send/" + quote(txn_id, safe="")
        body = {"origin": self.peer.name, "origin_server_ts": 1, "pdus": []}
        code, _, _ = await self.request("PUT", uri, body)
        self.assertEqual(code, 200)
        self.assertIsNotNone(await self.store.get_received_txn(self.peer.name, txn_id))

    async def test_send_refusals(self):
        """Unsigned: 401; signed over another body: 401; signed but not JSON: 400
        M_NOT_JSON; JSON but not an object: 400 M_BAD_JSON; wrong method: 405."""
        uri = FED + "/send/t"
        body = {"origin": self.peer.name, "origin_server_ts": 1, "pdus": []}
        code, resp, _ = await self.request("PUT", uri, body, signed=False)
        self.assertEqual((code, resp["errcode"]), (401, "M_UNAUTHORIZED"))
        code, resp, _ = await self.request("PUT", uri, dict(body, pdus=[{}]), headers=self.peer.auth_header("PUT", uri, body))
        self.assertEqual((code, resp["errcode"]), (401, "M_UNAUTHORIZED"))
        code, resp, _ = await self.request("PUT", uri, b"{nope", headers=self.peer.auth_header("PUT", uri, body))
        self.assertEqual((code, resp["errcode"]), (400, "M_NOT_JSON"))
        code, resp, _ = await self.request("PUT", uri, [1, 2])
        self.assertEqual((code, resp["errcode"]), (400, "M_BAD_JSON"))
        code, resp, _ = await self.request("GET", uri)
        self.assertEqual((code, resp["errcode"]), (405, "M_UNRECOGNIZED"))
        self.assertIsNone(await self.store.get_received_txn(self.peer.name, "t"))

    async def test_query_profile(self):
        """GET /query/profile passes user_id and field to the profile handler and relays
        its answer or its 404; a missing user_id is 400 M_MISSING_PARAM."""
        user = quote(f"@alice:{US}", safe="")
        code, resp, _ = await self.request("GET", FED + f"/query/profile?user_id={user}")
        self.assertEqual((code, resp["displayname"]), (200, "Alice"))
        code, resp, _ = await self.request("GET", FED + f"/query/profile?user_id={user}&field=displayname")
        self.assertEqual((code, resp), (200, {"displayname": "Alice"}))
        code, resp, _ = await self.request("GET", FED + "/query/profile?user_id=%40bob%3Aus.test%3A8448")
        self.assertEqual((code, resp["errcode"]), (404, "M_NOT_FOUND"))
        code, resp, _ = await self.request("GET", FED + "/query/profile")
        self.assertEqual((code, resp["errcode"]), (400, "M_MISSING_PARAM"))
        code, resp, _ = await self.request("GET", FED + f"/query/profile?user_id={user}&field=")
        self.assertEqual((code, resp["errcode"]), (400, "M_INVALID_PARAM"))
        self.assertEqual(
            self.profiles.calls,
            [(f"@alice:{US}", None), (f"@alice:{US}", "displayname"), (f"@bob:{US}", None)],
        )

    async def test_unrouted(self):
        """Endpoints without a handler and unknown paths answer 404 M_UNRECOGNIZED."""
        bare = StubTreq(build_federation_root(server_keys=self.key_resource(), federation_v1=FederationResource(self.auth)))
        code, resp, _ = await stub_request(bare, "PUT", FED + "/send/x", {"pdus": []})
        self.assertEqual((code, resp["errcode"]), (404, "M_UNRECOGNIZED"))
        code, resp, _ = await self.request("GET", FED + "/no/such/thing", signed=False)
        self.assertEqual((code, resp["errcode"]), (404, "M_UNRECOGNIZED"))
        code, resp, _ = await self.request("GET", "/_matrix/federation/v2/anything", signed=False)
        self.assertEqual((code, resp["errcode"]), (404, "M_UNRECOGNIZED"))

    async def test_check_acl_for_room_endpoints(self):
        """An endpoint built with authenticated() and check_acl() answers 403 M_FORBIDDEN
        to a server the room's ACL denies, and runs for an allowed one."""
        acl = make_event(V10, ROOM, "m.room.server_acl", content={"allow": ["*"], "deny": ["peer.test"]}, state_key="")
        await self.store.persist_events(
            [PersistEntry(event=acl, state_before={}, update_current_state={("m.room.server_acl", ""): acl.event_id})]
        )

        async def state_ids(request, origin, room_id):
            await self.resource.check_acl(origin, room_id)
            return {"origin": origin}

        self.resource.add_route("GET", "/state_ids/{room_id}", self.resource.authenticated(state_ids))
        uri = FED + "/state_ids/" + quote(ROOM, safe="")
        code, resp, _ = await self.request("GET", uri)
        self.assertEqual((code, resp["errcode"]), (403, "M_FORBIDDEN"))
        friend = Peer("friend.test", "f1")
        self.fetcher.peers[friend.name] = friend
        code, resp, _ = await self.request("GET", uri, headers=friend.auth_header("GET", uri))
        self.assertEqual((code, resp), (200, {"origin": "friend.test"}))
        self.assertEqual(json.loads(json.dumps(self.seen)), ["peer.test", "friend.test"])
