"""The published room directory across servers: ``/_matrix/client/v3/publicRooms`` with
``server`` (another server's list asked over federation, its errors mapped), the filters
(``generic_search_term``, ``room_types``, ``third_party_instance_id``), and ours served on
``GET``/``POST /_matrix/federation/v1/publicRooms`` (ACL-denied and blocked rooms left
out). Everything through the real resources (StubTreq) on a real SQLite store."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from signedjson.key import generate_signing_key
from treq.testing import StubTreq
from twisted.internet import defer, reactor
from twisted.internet.task import Clock

from fedserver.auth.engine import AuthEngine
from fedserver.auth.plugins import make_plugin_manager
from fedserver.federation.acl import ServerAcls
from fedserver.federation.client import FederationUnreachable, HttpResponseError, RequestTimedOut
from fedserver.handlers.client.accounts import AccountHandler, PasswordHasher
from fedserver.handlers.client.profile import ProfileHandler
from fedserver.handlers.rooms.creator import EventCreator
from fedserver.handlers.rooms.pipeline import RoomPipeline
from fedserver.http.client.api import ClientAPI
from fedserver.http.client.rooms import build_room_services, register_room_routes
from fedserver.http.federation.keys import ServerKeyDocument, ServerKeyResource
from fedserver.http.federation.public_rooms import register_public_rooms_routes
from fedserver.http.federation.transport import FederationResource
from fedserver.http.site import build_client_root, build_federation_root
from fedserver.storage.sqlite import open_store
from fedserver.testing import database_for_test
from tests.test_client_rooms import SERVER, ClientRoomsTestCase
from tests.test_federation_support import FED, stub_request

REMOTE = "remote.test"
PEER = "peer.test"


def q(value: str) -> str:
    return quote(value, safe="")


class FakeFederation:
    """A federation client answering from a list (a value, or an exception to fail with),
    and recording each request as ``(method, destination, path, args or body)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, Any]] = []
        self.answers: list[Any] = []

    def _answer(self, call: tuple[str, str, str, Any]) -> defer.Deferred:
        self.calls.append(call)
        answer = self.answers.pop(0)
        return defer.fail(answer) if isinstance(answer, Exception) else defer.succeed(answer)

    def get_json(self, destination: str, path: str, args: Any = None, **kw: Any) -> defer.Deferred:
        return self._answer(("GET", destination, path, dict(args or {})))

    def post_json(self, destination: str, path: str, body: Any, args: Any = None, **kw: Any) -> defer.Deferred:
        return self._answer(("POST", destination, path, body))


class StubAuthenticator:
    """Every federation request comes from :data:`PEER` (X-Matrix itself is tested in
    test_federation_resource)."""

    async def authenticate(self, request: Any) -> str:
        return PEER


class PublicRoomsTestCase(ClientRoomsTestCase):
    """The client API (with a fake federation client and a set of blocked rooms) and the
    federation resource of the same server."""

    async def _set_up(self) -> None:
        self.store = await open_store(database_for_test(self, self.mktemp()), reactor)
        self.addCleanup(self.store.close)
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        pm = make_plugin_manager(load_entrypoints=False)
        pipeline = RoomPipeline(self.store, AuthEngine(pm), pm)
        key = generate_signing_key("1")
        creator = EventCreator(self.clock, self.store, pipeline, SERVER, key)
        accounts = AccountHandler(self.store, SERVER, PasswordHasher(reactor, log_n=4), self.clock, enable_registration=True)
        self.api = ClientAPI(accounts=accounts, profiles=ProfileHandler(self.store, None, SERVER), default_room_version="12")
        self.federation = FakeFederation()
        self.blocked: set[str] = set()
        self.services = build_room_services(
            store=self.store, pipeline=pipeline, creator=creator, server_name=SERVER, signing_key=key,
            clock=self.clock, federation_client=self.federation, is_room_blocked=self.blocked.__contains__,
        )
        await self.services.startup()
        register_room_routes(self.api, self.services)
        self.stub = StubTreq(build_client_root(client=self.api))
        resource = FederationResource(StubAuthenticator(), acls=ServerAcls(self.store))
        register_public_rooms_routes(resource, self.services.directory, denied_rooms=ServerAcls(self.store).denied_rooms)
        keys = ServerKeyResource(ServerKeyDocument(SERVER, generate_signing_key("us"), reactor, 86_400_000))
        self.fed = StubTreq(build_federation_root(server_keys=keys, federation_v1=resource))

    async def fed_call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        code, parsed, _ = await stub_request(self.fed, method, FED + path, body, {})
        return code, parsed

    async def make_rooms(self) -> dict[str, str]:
        """Public rooms "big" (2 members), "small", a public space, and a private room."""
        self.alice = await self.register("alice")
        self.bob = await self.register("bob")
        rooms = {}
        for name, extra in (
            ("big", {}),
            ("small", {"topic": "a tiny room"}),
            ("space", {"creation_content": {"type": "m.space"}}),
        ):
            code, body = await self.call(
                "POST", "/createRoom", {"preset": "public_chat", "visibility": "public", "name": name, **extra},
                token=self.alice,
            )
            self.assertEqual(code, 200, body)
            rooms[name] = body["room_id"]
        code, body = await self.call("POST", "/createRoom", {"preset": "private_chat", "name": "hidden"}, token=self.alice)
        rooms["private"] = body["room_id"]
        code, _ = await self.call("POST", f"/rooms/{q(rooms['big'])}/join", {}, token=self.bob)
        self.assertEqual(code, 200)
        return rooms


class LocalListingTests(PublicRoomsTestCase):
    async def test_filters_and_paging(self):
        """Our list: published rooms only, most members first; room_types picks spaces
        (``m.space``) or rooms without a type (``null``); generic_search_term matches the
        topic; ``server`` naming us is our list; pages chain through next_batch."""
        rooms = await self.make_rooms()
        code, body = await self.call("GET", "/publicRooms")
        self.assertEqual(code, 200, body)
        self.assertEqual([c["room_id"] for c in body["chunk"]][0], rooms["big"])
        self.assertEqual({c["room_id"] for c in body["chunk"]}, {rooms["big"], rooms["small"], rooms["space"]})
        space = next(c for c in body["chunk"] if c["room_id"] == rooms["space"])
        self.assertEqual(space["room_type"], "m.space")
        code, body = await self.call("POST", "/publicRooms", {"filter": {"room_types": ["m.space"]}}, token=self.bob)
        self.assertEqual((code, [c["room_id"] for c in body["chunk"]]), (200, [rooms["space"]]))
        code, body = await self.call("POST", "/publicRooms", {"filter": {"room_types": [None]}}, token=self.bob)
        self.assertEqual({c["room_id"] for c in body["chunk"]}, {rooms["big"], rooms["small"]})
        code, body = await self.call("POST", f"/publicRooms?server={SERVER}", {"filter": {"generic_search_term": "TINY"}}, token=self.bob)
        self.assertEqual([c["room_id"] for c in body["chunk"]], [rooms["small"]])
        self.assertEqual(self.federation.calls, [])
        seen = []
        since = None
        for _ in range(5):
            code, body = await self.call("GET", "/publicRooms?limit=1" + (f"&since={q(since)}" if since else ""))
            self.assertEqual(code, 200, body)
            self.assertEqual(len(body["chunk"]), 1)
            seen.append(body["chunk"][0]["room_id"])
            since = body.get("next_batch")
            if since is None:
                break
        self.assertEqual(sorted(seen), sorted([rooms["big"], rooms["small"], rooms["space"]]))

    async def test_bad_requests(self):
        """Bad paging tokens are 400 M_INVALID_PARAM (GET and POST); fields of the wrong
        type 400 M_BAD_JSON; third_party_instance_id with include_all_networks 400
        M_INVALID_PARAM; a network of an application service (we have none) lists nothing."""
        await self.make_rooms()
        for since in ("zzz", "o-1", "o", "o99999999999", "o１"):
            self.assertError(await self.call("GET", f"/publicRooms?since={q(since)}"), 400, "M_INVALID_PARAM")
            self.assertError(await self.call("POST", "/publicRooms", {"since": since}, token=self.bob), 400, "M_INVALID_PARAM")
        for body in (
            {"limit": "3"}, {"limit": True}, {"since": 3}, {"filter": []}, {"filter": {"generic_search_term": 1}},
            {"filter": {"room_types": "m.space"}}, {"filter": {"room_types": [1]}}, {"include_all_networks": "yes"},
            {"third_party_instance_id": 5},
        ):
            self.assertError(await self.call("POST", "/publicRooms", body, token=self.bob), 400, "M_BAD_JSON")
        self.assertError(
            await self.call("POST", "/publicRooms", {"include_all_networks": True, "third_party_instance_id": "irc"}, token=self.bob),
            400, "M_INVALID_PARAM",
        )
        self.assertError(await self.call("GET", "/publicRooms?limit=x"), 400, "M_INVALID_PARAM")
        code, body = await self.call("POST", "/publicRooms", {"third_party_instance_id": "irc"}, token=self.bob)
        self.assertEqual((code, body["chunk"]), (200, []))
        self.assertError(await self.call("POST", "/publicRooms", {}), 401, "M_MISSING_TOKEN")

    async def test_blocked_room_not_listed(self):
        """A room an administrator blocked is left out of our list, to our clients and
        over federation."""
        rooms = await self.make_rooms()
        self.blocked.add(rooms["small"])
        code, body = await self.call("GET", "/publicRooms")
        self.assertEqual(code, 200)
        self.assertNotIn(rooms["small"], {c["room_id"] for c in body["chunk"]})
        self.assertEqual(body["total_room_count_estimate"], 2)
        code, body = await self.fed_call("GET", "/publicRooms")
        self.assertEqual(code, 200)
        self.assertEqual({c["room_id"] for c in body["chunk"]}, {rooms["big"], rooms["space"]})


class FederationServingTests(PublicRoomsTestCase):
    async def test_get_and_post(self):
        """GET lists our published rooms with their summaries (never the private one);
        POST filters; limit pages with next_batch, and the token works on the next
        request; a room whose server ACL denies the asking server is left out."""
        rooms = await self.make_rooms()
        code, body = await self.fed_call("GET", "/publicRooms")
        self.assertEqual(code, 200, body)
        listed = {c["room_id"]: c for c in body["chunk"]}
        self.assertEqual(set(listed), {rooms["big"], rooms["small"], rooms["space"]})
        self.assertEqual((listed[rooms["big"]]["num_joined_members"], listed[rooms["big"]]["name"]), (2, "big"))
        self.assertEqual(listed[rooms["small"]]["join_rule"], "public")
        code, body = await self.fed_call("POST", "/publicRooms", {"filter": {"generic_search_term": "big"}, "limit": 5})
        self.assertEqual((code, [c["room_id"] for c in body["chunk"]]), (200, [rooms["big"]]))
        code, page = await self.fed_call("GET", "/publicRooms?limit=2&include_all_networks=false")
        self.assertEqual((code, len(page["chunk"])), (200, 2))
        code, rest = await self.fed_call("GET", "/publicRooms?limit=2&since=" + q(page["next_batch"]))
        self.assertEqual(code, 200)
        self.assertEqual({c["room_id"] for c in page["chunk"] + rest["chunk"]}, set(listed))
        self.assertNotIn("next_batch", rest)
        code, body = await self.call(
            "PUT", f"/rooms/{q(rooms['small'])}/state/m.room.server_acl",
            {"allow": ["*"], "deny": [PEER], "allow_ip_literals": False}, token=self.alice,
        )
        self.assertEqual(code, 200, body)
        code, body = await self.fed_call("GET", "/publicRooms")
        self.assertEqual({c["room_id"] for c in body["chunk"]}, {rooms["big"], rooms["space"]})
        code, body = await self.fed_call("POST", "/publicRooms", {})
        self.assertEqual({c["room_id"] for c in body["chunk"]}, {rooms["big"], rooms["space"]})

    async def test_bad_requests(self):
        """A bad since token, a non-boolean include_all_networks or a non-integer limit
        is 400 M_INVALID_PARAM; a body that is not an object or has a field of the wrong
        type is 400 M_BAD_JSON / M_NOT_JSON."""
        await self.make_rooms()
        for path in ("/publicRooms?since=nope", "/publicRooms?include_all_networks=1", "/publicRooms?limit=ten",
                     "/publicRooms?include_all_networks=true&third_party_instance_id=irc"):
            code, body = await self.fed_call("GET", path)
            self.assertEqual((code, body["errcode"]), (400, "M_INVALID_PARAM"), path)
        code, body = await self.fed_call("POST", "/publicRooms", {"since": "o12x"})
        self.assertEqual((code, body["errcode"]), (400, "M_INVALID_PARAM"))
        for bad in ([1], {"limit": 1.5}, {"filter": {"room_types": {}}}):
            code, body = await self.fed_call("POST", "/publicRooms", bad)
            self.assertEqual((code, body["errcode"]), (400, "M_BAD_JSON"), bad)
        code, body = await self.fed_call("POST", "/publicRooms", b"{nope")
        self.assertEqual((code, body["errcode"]), (400, "M_NOT_JSON"))


    async def test_switched_off(self):
        """With ``public_rooms_over_federation: false`` both forms answer 403 M_FORBIDDEN
        and list nothing; our own clients still see the directory."""
        rooms = await self.make_rooms()
        resource = FederationResource(StubAuthenticator(), acls=ServerAcls(self.store))
        register_public_rooms_routes(resource, self.services.directory, enabled=False)
        keys = ServerKeyResource(ServerKeyDocument(SERVER, generate_signing_key("us"), reactor, 86_400_000))
        closed = StubTreq(build_federation_root(server_keys=keys, federation_v1=resource))
        for method, body in (("GET", None), ("POST", {})):
            code, parsed, _ = await stub_request(closed, method, FED + "/publicRooms", body, {})
            self.assertEqual((code, parsed["errcode"]), (403, "M_FORBIDDEN"), method)
            self.assertNotIn("chunk", parsed)
        code, body = await self.call("GET", "/publicRooms")
        self.assertEqual(code, 200)
        self.assertIn(rooms["big"], {c["room_id"] for c in body["chunk"]})

class RemoteListingTests(PublicRoomsTestCase):
    PAGE = {
        "chunk": [
            {"room_id": "!a:remote.test", "num_joined_members": 3, "world_readable": False, "guest_can_join": False,
             "name": "Alpha", "join_rule": "public"},
            {"room_id": "!b:remote.test", "num_joined_members": 1, "world_readable": True, "guest_can_join": False,
             "topic": "beta things", "join_rule": "public", "room_type": "m.space"},
            {"no_room_id": True},
            "junk",
        ],
        "next_batch": "their-token",
        "total_room_count_estimate": 9,
    }

    async def test_get_and_post_forwarded(self):
        """``server`` naming another server: GET is forwarded as the federation GET (with
        limit and since), POST with its filter as the federation POST; the answer comes
        back without malformed entries; GET needs an access token for this case (401
        M_MISSING_TOKEN without one, and nothing is asked)."""
        await self.make_rooms()
        self.assertError(await self.call("GET", f"/publicRooms?server={REMOTE}"), 401, "M_MISSING_TOKEN")
        self.assertEqual(self.federation.calls, [])
        self.federation.answers.append(self.PAGE)
        code, body = await self.call("GET", f"/publicRooms?server={REMOTE}&limit=2&since=abc", token=self.bob)
        self.assertEqual(code, 200, body)
        self.assertEqual([c["room_id"] for c in body["chunk"]], ["!a:remote.test", "!b:remote.test"])
        self.assertEqual((body["next_batch"], body["total_room_count_estimate"]), ("their-token", 9))
        self.assertEqual(
            self.federation.calls[-1],
            ("GET", REMOTE, "/_matrix/federation/v1/publicRooms", {"limit": "2", "since": "abc"}),
        )
        self.federation.answers.append({"chunk": [self.PAGE["chunk"][0]]})
        code, body = await self.call(
            "POST", f"/publicRooms?server={REMOTE}",
            {"limit": 5, "filter": {"generic_search_term": "alp", "room_types": [None]}}, token=self.bob,
        )
        self.assertEqual((code, [c["room_id"] for c in body["chunk"]]), (200, ["!a:remote.test"]))
        self.assertEqual(
            self.federation.calls[-1],
            ("POST", REMOTE, "/_matrix/federation/v1/publicRooms",
             {"limit": 5, "filter": {"generic_search_term": "alp", "room_types": [None]}}),
        )

    async def test_post_falls_back_to_get(self):
        """A server without the federation POST form (404 M_UNRECOGNIZED) is asked with
        GET, and its page is filtered here."""
        await self.make_rooms()
        self.federation.answers += [HttpResponseError(404, "M_UNRECOGNIZED", "Unrecognized", b""), self.PAGE]
        code, body = await self.call(
            "POST", f"/publicRooms?server={REMOTE}", {"filter": {"generic_search_term": "BETA"}}, token=self.bob
        )
        self.assertEqual((code, [c["room_id"] for c in body["chunk"]]), (200, ["!b:remote.test"]))
        self.assertEqual([c[0] for c in self.federation.calls], ["POST", "GET"])

    async def test_errors(self):
        """The other server's 403 comes back as its 403 with its errcode; its 500 and a
        malformed answer are 502 M_UNKNOWN; unreachable 502, timed out 504; an invalid
        server name or an oversized token is 400 M_INVALID_PARAM without any request."""
        await self.make_rooms()
        cases = [
            (HttpResponseError(403, "M_FORBIDDEN", "You are not allowed", b""), 403, "M_FORBIDDEN"),
            (HttpResponseError(500, None, None, b"oops"), 502, "M_UNKNOWN"),
            (HttpResponseError(401, "M_UNAUTHORIZED", "bad sig", b""), 502, "M_UNKNOWN"),
            (FederationUnreachable("refused"), 502, "M_UNKNOWN"),
            (RequestTimedOut("slow"), 504, "M_UNKNOWN"),
            ({"rooms": []}, 502, "M_UNKNOWN"),
            ([1, 2], 502, "M_UNKNOWN"),
        ]
        for answer, status, errcode in cases:
            self.federation.answers.append(answer)
            self.assertError(await self.call("GET", f"/publicRooms?server={REMOTE}", token=self.bob), status, errcode)
            self.federation.answers.append(answer)
            self.assertError(
                await self.call("POST", f"/publicRooms?server={REMOTE}", {"filter": {"generic_search_term": "x"}}, token=self.bob),
                status, errcode,
            )
        asked = len(self.federation.calls)
        self.assertError(await self.call("GET", "/publicRooms?server=" + q("bad server!"), token=self.bob), 400, "M_INVALID_PARAM")
        self.assertError(
            await self.call("POST", f"/publicRooms?server={REMOTE}", {"since": "x" * 2000}, token=self.bob), 400, "M_INVALID_PARAM"
        )
        self.assertEqual(len(self.federation.calls), asked)
