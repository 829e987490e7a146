"""Tests for the room endpoints of the Client-Server API, through StubTreq on the real resources."""

from __future__ import annotations

import json
from typing import Any, Optional
from urllib.parse import quote

from signedjson.key import generate_signing_key
from treq.testing import StubTreq
from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from fedserver.auth.engine import AuthEngine
from fedserver.auth.plugins import make_plugin_manager
from fedserver.handlers.client.accounts import AccountHandler, PasswordHasher
from fedserver.handlers.rooms.creator import EventCreator
from fedserver.handlers.rooms.pipeline import RoomPipeline
from fedserver.handlers.client.profile import ProfileHandler
from fedserver.http.client.api import ClientAPI
from fedserver.http.client.rooms import build_room_services, register_room_routes
from fedserver.http.site import build_client_root
from fedserver.storage.sqlite import open_store
from fedserver.testing import database_for_test

SERVER = "rooms.test"
V3 = "/_matrix/client/v3"


def q(value: str) -> str:
    """A path segment as clients percent-encode it."""
    return quote(value, safe="")


class ClientRoomsTestCase(unittest.TestCase):
    """The client listener's tree with the account and room endpoints, on a real store,
    pipeline and auth engine, driven through :class:`StubTreq`."""

    def setUp(self) -> defer.Deferred:
        return defer.ensureDeferred(self._set_up())

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
        self.services = build_room_services(
            store=self.store, pipeline=pipeline, creator=creator, server_name=SERVER, signing_key=key, clock=self.clock
        )
        await self.services.startup()
        register_room_routes(self.api, self.services)
        self.stub = StubTreq(build_client_root(client=self.api))

    async def _pump(self, d: defer.Deferred) -> Any:
        """Move bytes between the in-memory client and server (the database answers on
        its thread) until ``d`` has its result."""
        done: list[Any] = []

        def keep(result: Any) -> Any:
            done.append(result)
            return result

        d.addBoth(keep)
        for _ in range(20_000):
            self.stub.flush()
            if done:
                break
            await deferLater(reactor, 0.001, lambda: None)
        return await d

    async def call(self, method: str, path: str, body: Any = None, *, token: Optional[str] = None, raw: Optional[bytes] = None) -> tuple[int, Any]:
        """``method path`` (below ``/_matrix/client/v3`` unless it starts with ``/_matrix``)."""
        url = "http://" + SERVER + (path if path.startswith("/_matrix") else V3 + path)
        headers: dict[str, list[str]] = {}
        if token is not None:
            headers["Authorization"] = ["Bearer " + token]
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if data is not None:
            headers["Content-Type"] = ["application/json"]
        resp = await self._pump(self.stub.request(method, url, data=data, headers=headers))
        content = await self._pump(resp.content())
        return resp.code, json.loads(content) if content else None

    async def register(self, localpart: str) -> str:
        code, body = await self.call(
            "POST", "/register", {"username": localpart, "password": "pw-" + localpart, "auth": {"type": "m.login.dummy"}}
        )
        self.assertEqual(code, 200, body)
        return body["access_token"]

    def assertError(self, result: tuple[int, Any], code: int, errcode: str) -> dict:
        status, body = result
        self.assertEqual((status, body.get("errcode") if isinstance(body, dict) else None), (code, errcode), body)
        self.assertIsInstance(body["error"], str)
        return body


class RoomEndpointTests(ClientRoomsTestCase):
    async def test_create_send_sync_messages(self):
        """createRoom, a second user joins by alias, both send, each /sync sees the
        other's message, /messages pages them back, state and members read back."""
        alice = await self.register("alice")
        bob = await self.register("bob")
        code, body = await self.call("POST", "/createRoom", {"preset": "public_chat", "room_alias_name": "hall", "name": "Hall"}, token=alice)
        self.assertEqual(code, 200, body)
        room_id = body["room_id"]
        code, body = await self.call("POST", f"/join/{q('#hall:' + SERVER)}", {}, token=bob)
        self.assertEqual((code, body), (200, {"room_id": room_id}))
        code, sent = await self.call("PUT", f"/rooms/{q(room_id)}/send/m.room.message/t1", {"msgtype": "m.text", "body": "hi bob"}, token=alice)
        self.assertEqual(code, 200, sent)
        code, again = await self.call("PUT", f"/rooms/{q(room_id)}/send/m.room.message/t1", {"msgtype": "m.text", "body": "hi bob"}, token=alice)
        self.assertEqual(again, sent)
        await self.call("PUT", f"/rooms/{q(room_id)}/send/m.room.message/t1", {"msgtype": "m.text", "body": "hi alice"}, token=bob)
        for token, other in ((alice, "hi alice"), (bob, "hi bob")):
            code, result = await self.call("GET", "/sync", token=token)
            self.assertEqual(code, 200, result)
            texts = [e["content"].get("body") for e in result["rooms"]["join"][room_id]["timeline"]["events"]]
            self.assertIn(other, texts)
        code, page = await self.call("GET", f"/rooms/{q(room_id)}/messages?dir=b&limit=2", token=bob)
        self.assertEqual([e["content"]["body"] for e in page["chunk"]], ["hi alice", "hi bob"])
        code, name = await self.call("GET", f"/rooms/{q(room_id)}/state/m.room.name/", token=bob)
        self.assertEqual((code, name), (200, {"name": "Hall"}))
        code, name = await self.call("GET", f"/rooms/{q(room_id)}/state/m.room.name?format=event", token=bob)
        self.assertEqual(name["type"], "m.room.name")
        code, joined = await self.call("GET", f"/rooms/{q(room_id)}/joined_members", token=bob)
        self.assertEqual(sorted(joined["joined"]), [f"@alice:{SERVER}", f"@bob:{SERVER}"])
        code, rooms = await self.call("GET", "/joined_rooms", token=bob)
        self.assertEqual(rooms, {"joined_rooms": [room_id]})
        code, ev = await self.call("GET", f"/rooms/{q(room_id)}/event/{q(sent['event_id'])}", token=bob)
        self.assertEqual(ev["content"]["body"], "hi bob")
        # The same endpoints under /r0.
        code, rooms = await self.call("GET", "/_matrix/client/r0/joined_rooms", token=bob)
        self.assertEqual(code, 200)

    async def test_joined_members_read_in_chunks(self):
        """/joined_members reads member events a chunk at a time (bounded memory in large
        rooms): with a chunk of one event, every joined member is still listed with its
        display name, and a member who left is not."""
        from fedserver.handlers.rooms import timeline

        self.patch(timeline, "JOINED_MEMBERS_CHUNK", 1)
        alice = await self.register("alice")
        code, body = await self.call("POST", "/createRoom", {"preset": "public_chat"}, token=alice)
        self.assertEqual(code, 200, body)
        room_id = body["room_id"]
        for name in ("bob", "carol", "dave"):
            token = await self.register(name)
            code, _ = await self.call("PUT", f"/profile/@{name}:{SERVER}/displayname", {"displayname": name.title()}, token=token)
            self.assertEqual(code, 200)
            code, _ = await self.call("POST", f"/join/{q(room_id)}", {}, token=token)
            self.assertEqual(code, 200)
            if name == "carol":
                code, _ = await self.call("POST", f"/rooms/{q(room_id)}/leave", {}, token=token)
                self.assertEqual(code, 200)
        code, joined = await self.call("GET", f"/rooms/{q(room_id)}/joined_members", token=alice)
        self.assertEqual(code, 200, joined)
        self.assertEqual(sorted(joined["joined"]), [f"@alice:{SERVER}", f"@bob:{SERVER}", f"@dave:{SERVER}"])
        self.assertEqual(joined["joined"][f"@bob:{SERVER}"], {"display_name": "Bob"})
        self.assertEqual(joined["joined"][f"@dave:{SERVER}"], {"display_name": "Dave"})

    async def test_power_levels_kick_ban_leave(self):
        """Setting the topic is 403 for a plain member until the power levels allow it;
        kick and ban need power; a banned user cannot rejoin; leave works."""
        alice = await self.register("alice")
        bob = await self.register("bob")
        _, body = await self.call("POST", "/createRoom", {"preset": "public_chat"}, token=alice)
        room = q(body["room_id"])
        await self.call("POST", f"/rooms/{room}/join", None, token=bob)
        self.assertError(await self.call("PUT", f"/rooms/{room}/state/m.room.topic", {"topic": "x"}, token=bob), 403, "M_FORBIDDEN")
        _, pl = await self.call("GET", f"/rooms/{room}/state/m.room.power_levels", token=alice)
        pl["events"]["m.room.topic"] = 0
        code, _ = await self.call("PUT", f"/rooms/{room}/state/m.room.power_levels", pl, token=alice)
        self.assertEqual(code, 200)
        code, _ = await self.call("PUT", f"/rooms/{room}/state/m.room.topic", {"topic": "x"}, token=bob)
        self.assertEqual(code, 200)
        self.assertError(await self.call("POST", f"/rooms/{room}/kick", {"user_id": f"@alice:{SERVER}"}, token=bob), 403, "M_FORBIDDEN")
        code, _ = await self.call("POST", f"/rooms/{room}/kick", {"user_id": f"@bob:{SERVER}", "reason": "test"}, token=alice)
        self.assertEqual(code, 200)
        code, _ = await self.call("POST", f"/rooms/{room}/join", {}, token=bob)
        self.assertEqual(code, 200)
        code, _ = await self.call("POST", f"/rooms/{room}/ban", {"user_id": f"@bob:{SERVER}"}, token=alice)
        self.assertEqual(code, 200)
        self.assertError(await self.call("POST", f"/rooms/{room}/join", {}, token=bob), 403, "M_FORBIDDEN")
        code, _ = await self.call("POST", f"/rooms/{room}/unban", {"user_id": f"@bob:{SERVER}"}, token=alice)
        self.assertEqual(code, 200)
        code, _ = await self.call("POST", f"/rooms/{room}/join", {}, token=bob)
        self.assertEqual(code, 200)
        code, _ = await self.call("POST", f"/rooms/{room}/leave", None, token=bob)
        self.assertEqual(code, 200)
        code, _ = await self.call("POST", f"/rooms/{room}/forget", {}, token=bob)
        self.assertEqual(code, 200)
        self.assertError(await self.call("POST", f"/rooms/{room}/forget", {}, token=alice), 400, "M_UNKNOWN")

    async def test_redact_directory_and_misc(self):
        """Redaction through PUT /redact; aliases PUT/GET/DELETE; the room directory
        visibility; /publicRooms GET and POST."""
        alice = await self.register("alice")
        bob = await self.register("bob")
        _, body = await self.call("POST", "/createRoom", {"visibility": "public", "name": "Open"}, token=alice)
        room_id = body["room_id"]
        room = q(room_id)
        _, sent = await self.call("PUT", f"/rooms/{room}/send/m.room.message/a", {"body": "oops", "msgtype": "m.text"}, token=alice)
        code, red = await self.call("PUT", f"/rooms/{room}/redact/{q(sent['event_id'])}/r1", {"reason": "typo"}, token=alice)
        self.assertEqual(code, 200, red)
        _, ev = await self.call("GET", f"/rooms/{room}/event/{q(sent['event_id'])}", token=alice)
        self.assertEqual(ev["content"], {})
        self.assertEqual(ev["unsigned"]["redacted_because"]["event_id"], red["event_id"])
        alias = q(f"#open:{SERVER}")
        self.assertEqual((await self.call("PUT", f"/directory/room/{alias}", {"room_id": room_id}, token=alice))[0], 200)
        self.assertError(await self.call("PUT", f"/directory/room/{alias}", {"room_id": room_id}, token=alice), 409, "M_UNKNOWN")
        self.assertError(await self.call("PUT", f"/directory/room/{alias}", {}, token=alice), 400, "M_MISSING_PARAM")
        code, found = await self.call("GET", f"/directory/room/{alias}")
        self.assertEqual((code, found["room_id"]), (200, room_id))
        _, aliases = await self.call("GET", f"/rooms/{room}/aliases", token=alice)
        self.assertEqual(aliases, {"aliases": [f"#open:{SERVER}"]})
        self.assertError(await self.call("DELETE", f"/directory/room/{alias}", token=bob), 403, "M_FORBIDDEN")
        self.assertEqual((await self.call("DELETE", f"/directory/room/{alias}", token=alice))[0], 200)
        self.assertError(await self.call("GET", f"/directory/room/{alias}"), 404, "M_NOT_FOUND")
        self.assertEqual(await self.call("GET", f"/directory/list/room/{room}"), (200, {"visibility": "public"}))
        code, listing = await self.call("GET", "/publicRooms")
        self.assertEqual([c["room_id"] for c in listing["chunk"]], [room_id])
        code, listing = await self.call("POST", "/publicRooms", {"filter": {"generic_search_term": "nothing"}}, token=bob)
        self.assertEqual(listing["chunk"], [])
        self.assertEqual((await self.call("PUT", f"/directory/list/room/{room}", {"visibility": "private"}, token=alice))[0], 200)
        self.assertEqual((await self.call("GET", f"/directory/list/room/{room}"))[1], {"visibility": "private"})

    async def test_errors_are_matrix_json(self):
        """Bad input gets Matrix errors, never a 500: no token, bad JSON, non-object
        bodies, unknown rooms, bad parameters, oversized events, a member-less invite."""
        alice = await self.register("alice")
        _, body = await self.call("POST", "/createRoom", {}, token=alice)
        room = q(body["room_id"])
        self.assertError(await self.call("POST", "/createRoom", {}), 401, "M_MISSING_TOKEN")
        self.assertError(await self.call("POST", "/createRoom", raw=b"{nope", token=alice), 400, "M_NOT_JSON")
        self.assertError(await self.call("POST", "/createRoom", raw=b"[1]", token=alice), 400, "M_BAD_JSON")
        self.assertError(await self.call("POST", "/createRoom", {"room_version": "99"}, token=alice), 400, "M_UNSUPPORTED_ROOM_VERSION")
        self.assertError(await self.call("PUT", f"/rooms/{q('!x:' + SERVER)}/send/m.room.message/t", {}, token=alice), 404, "M_NOT_FOUND")
        self.assertError(await self.call("PUT", f"/rooms/{room}/send/m.room.message/t", raw=b"[]", token=alice), 400, "M_BAD_JSON")
        self.assertError(await self.call("PUT", f"/rooms/{room}/send/m.room.message/t", {"body": "x" * 70_000}, token=alice), 413, "M_TOO_LARGE")
        self.assertError(await self.call("GET", f"/rooms/{room}/messages?dir=sideways", token=alice), 400, "M_INVALID_PARAM")
        self.assertError(await self.call("GET", f"/rooms/{room}/messages?limit=abc", token=alice), 400, "M_INVALID_PARAM")
        self.assertError(await self.call("GET", f"/rooms/{room}/messages?filter=%7Bbad", token=alice), 400, "M_INVALID_PARAM")
        self.assertError(await self.call("GET", "/sync?since=garbage", token=alice), 400, "M_INVALID_PARAM")
        self.assertError(await self.call("GET", "/sync?full_state=maybe", token=alice), 400, "M_INVALID_PARAM")
        self.assertError(await self.call("POST", f"/rooms/{room}/invite", {}, token=alice), 400, "M_MISSING_PARAM")
        self.assertError(await self.call("POST", f"/rooms/{room}/invite", {"user_id": 5}, token=alice), 400, "M_BAD_JSON")
        self.assertError(await self.call("POST", f"/rooms/{room}/invite", {"user_id": "@x:far.away"}, token=alice), 400, "M_UNKNOWN")
        self.assertError(await self.call("GET", f"/rooms/{q('../../etc')}/state", token=alice), 403, "M_FORBIDDEN")
        self.assertError(await self.call("GET", f"/rooms/{room}/event/{q('$x')}", token=alice), 404, "M_NOT_FOUND")
        self.assertError(await self.call("GET", f"/rooms/{room}/state/m.room.topic", token=alice), 404, "M_NOT_FOUND")
        self.assertError(await self.call("GET", f"/rooms/{room}/nothing", token=alice), 404, "M_UNRECOGNIZED")
        self.assertError(await self.call("DELETE", f"/rooms/{room}/state", token=alice), 405, "M_UNRECOGNIZED")
        self.assertError(await self.call("POST", f"/join/{q('not an id')}", {}, token=alice), 400, "M_INVALID_PARAM")

    async def test_sync_long_poll_over_http(self):
        """A /sync with a timeout is answered when another user's message arrives."""
        alice = await self.register("alice")
        bob = await self.register("bob")
        _, body = await self.call("POST", "/createRoom", {"preset": "public_chat"}, token=alice)
        room_id = body["room_id"]
        await self.call("POST", f"/rooms/{q(room_id)}/join", {}, token=bob)
        _, first = await self.call("GET", "/sync", token=bob)
        pending = defer.ensureDeferred(self.call("GET", f"/sync?since={first['next_batch']}&timeout=30000", token=bob))
        for _ in range(200):
            if self.services.notifier.waiting:
                break
            await deferLater(reactor, 0.001, lambda: None)
        self.assertEqual(self.services.notifier.waiting, 1)
        await self.call("PUT", f"/rooms/{q(room_id)}/send/m.room.message/x", {"msgtype": "m.text", "body": "ping"}, token=alice)
        code, result = await pending
        self.assertEqual(code, 200)
        self.assertEqual(result["rooms"]["join"][room_id]["timeline"]["events"][-1]["content"]["body"], "ping")


class HostileInputTests(ClientRoomsTestCase):
    async def test_lone_surrogates_and_odd_ids_never_500(self):
        """Lone surrogates (as JSON escapes or raw percent-encoded bytes) and odd ids in
        bodies, paths and queries get 4xx Matrix errors or are ignored, never a 500."""
        token = await self.register("alice")
        _, body = await self.call("POST", "/createRoom", {}, token=token)
        room = q(body["room_id"])
        s = '"\\ud800"'
        cases = [
            ("POST", "/createRoom", '{"name": %s}' % s),
            ("POST", "/createRoom", '{"room_alias_name": %s}' % s),
            ("POST", "/createRoom", '{"invite": [%s]}' % s),
            ("POST", "/createRoom", '{"room_version": %s}' % s),
            ("POST", "/createRoom", '{"initial_state": [{"type": %s, "content": {}}]}' % s),
            ("POST", "/createRoom", '{"creation_content": {"x": %s}}' % s),
            ("PUT", f"/rooms/{room}/send/m.room.message/t1", '{"body": %s}' % s),
            ("PUT", f"/rooms/{room}/state/m.room.topic", '{"topic": %s}' % s),
            ("PUT", f"/directory/room/{q('#a:' + SERVER)}", '{"room_id": "!\\ud800"}'),
            ("POST", f"/rooms/{room}/invite", '{"user_id": "@\\ud800:x"}'),
            ("POST", f"/rooms/{room}/ban", '{"user_id": "@\\ud800:%s"}' % SERVER),
            ("POST", f"/rooms/{room}/leave", '{"reason": %s}' % s),
            ("PUT", f"/rooms/{room}/redact/{q('$x')}/t9", '{"reason": %s}' % s),
            ("PUT", f"/directory/list/room/{room}", '{"visibility": %s}' % s),
            ("POST", "/publicRooms", '{"filter": {"generic_search_term": %s}}' % s),
            ("POST", "/publicRooms", '{"since": %s}' % s),
            ("GET", "/sync?filter=%7B%22room%22%3A%7B%22rooms%22%3A%5B%22%5Cud800%22%5D%7D%7D", None),
            ("GET", f"/rooms/{room}/messages?from=%ED%A0%80", None),
            ("GET", "/rooms/%ED%A0%80/state", None),
            ("GET", f"/rooms/{q(chr(0) + '!x')}/messages", None),
            ("POST", "/join/%23%ED%A0%80:x", "{}"),
            ("POST", f"/join/{q('!x' + chr(0))}", "{}"),
            ("PUT", f"/rooms/{room}/send/{q('x' * 256)}/t2", "{}"),
            ("GET", f"/rooms/{room}/messages?limit=99999999999999999999999", None),
        ]
        for method, path, raw in cases:
            code, answer = await self.call(method, path, token=token, raw=raw.encode() if raw else None)
            self.assertLess(code, 500, (method, path, raw, answer))
            if code >= 400:
                self.assertIsInstance(answer.get("errcode"), str, (method, path, raw))
