"""The admin API (/_synapse/admin users, rooms, destinations; the refusals view) over HTTP on whole servers."""

from __future__ import annotations

import os
from typing import Any, Optional
from urllib.parse import quote

import treq
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from fedserver.errors import MatrixError
from fedserver.testing import loopback_config, start_server
from tests.test_federation_support import deferLater

ADMIN = "/_synapse/admin"


def q(value: str) -> str:
    return quote(value, safe="")


class AdminApiTestCase(TestCase):
    """A whole server; requests over real HTTP on its client listener."""

    timeout = 60

    async def start(self, **extra: Any) -> Any:
        svc = await start_server(self, loopback_config(os.path.abspath(self.mktemp()), log_level="warn", **extra))
        self.svc = svc
        self.base = f"http://127.0.0.1:{svc.client_listener.port.getHost().port}"
        self.name = svc.config.server_name
        return svc

    def uid(self, localpart: str) -> str:
        return f"@{localpart}:{self.name}"

    async def user(self, localpart: str, *, admin: bool = False, password: Optional[str] = None) -> str:
        """Create a user (with a password if given) and return an access token."""
        accounts = self.svc.accounts.accounts
        await accounts.create_user(localpart, password, admin=admin, login=False)
        return (await accounts.issue_token(self.uid(localpart))).access_token

    async def call(self, method: str, path: str, body: Any = None, token: Optional[str] = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        kw: dict[str, Any] = {"headers": headers, "reactor": reactor, "persistent": False}
        if body is not None:
            kw["json"] = body
        resp = await treq.request(method, self.base + path, **kw)
        return resp.code, await resp.json()

    def assertError(self, result: tuple[int, Any], code: int, errcode: str) -> None:
        self.assertEqual((result[0], result[1].get("errcode")), (code, errcode), result[1])

    async def room(self, token_user: str, **body: Any) -> str:
        from fedserver.handlers.client.accounts import Requester

        result = await self.svc.rooms.rooms.create_room(Requester(token_user, "DEV", 1), body)
        return result["room_id"]

    async def membership(self, room_id: str, user_id: str) -> Optional[str]:
        m = await self.svc.store.rooms.get_membership(room_id, user_id)
        return None if m is None else m.membership

    async def until(self, predicate, what: str) -> Any:
        for _ in range(500):
            got = await predicate()
            if got:
                return got
            await deferLater(0.01)
        self.fail(f"timed out waiting for {what}")


class AuthTests(AdminApiTestCase):
    async def test_admins_only(self):
        """Every admin endpoint (and the refusals and failures views) needs a token (401
        M_MISSING_TOKEN), of an admin (403 M_FORBIDDEN); a deactivated admin is refused."""
        await self.start()
        admin = await self.user("root", admin=True)
        plain = await self.user("pleb")
        for path in (f"{ADMIN}/v2/users", f"{ADMIN}/v1/rooms", f"{ADMIN}/v1/federation/destinations",
                     "/_fedserver/admin/v1/refusals", "/_fedserver/admin/v1/failures"):
            self.assertError(await self.call("GET", path), 401, "M_MISSING_TOKEN")
            self.assertError(await self.call("GET", path, token=plain), 403, "M_FORBIDDEN")
            code, _ = await self.call("GET", path, token=admin)
            self.assertEqual(code, 200, path)
        self.assertError(await self.call("GET", f"{ADMIN}/v2/users", token="nonsense"), 401, "M_UNKNOWN_TOKEN")
        code, body = await self.call("GET", f"{ADMIN}/v1/server_version", token=admin)
        self.assertTrue(body["server_version"].startswith("fedserver "))


class UserTests(AdminApiTestCase):
    async def test_create_show_list_modify(self):
        """PUT creates (201) then modifies (200); GET shows Synapse's fields, never the
        hash; the list filters by name, pages with next_token and hides deactivated users
        unless asked."""
        await self.start()
        admin = await self.user("root", admin=True)
        path = f"{ADMIN}/v2/users/{q(self.uid('carol'))}"
        code, body = await self.call("PUT", path, {"password": "pw-carol-1", "displayname": "Carol"}, admin)
        self.assertEqual(code, 201, body)
        self.assertEqual((body["name"], body["displayname"], body["admin"], body["deactivated"]),
                         (self.uid("carol"), "Carol", False, False))
        self.assertNotIn("password_hash", body)
        code, body = await self.call("PUT", path, {"displayname": "Caroline", "admin": True}, admin)
        self.assertEqual((code, body["displayname"], body["admin"]), (200, "Caroline", True))
        code, body = await self.call("GET", path, token=admin)
        self.assertEqual((code, body["displayname"]), (200, "Caroline"))
        code, login = await self.call("POST", "/_matrix/client/v3/login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "carol"}, "password": "pw-carol-1"})
        self.assertEqual(code, 200, login)
        for n in range(3):
            await self.user(f"user{n}")
        code, page = await self.call("GET", f"{ADMIN}/v2/users?limit=2", token=admin)
        self.assertEqual((len(page["users"]), page["total"], page["next_token"]), (2, 5, "2"))
        code, rest = await self.call("GET", f"{ADMIN}/v2/users?limit=2&from=4", token=admin)
        self.assertEqual(([u["name"] for u in rest["users"]], rest.get("next_token")), ([self.uid("user2")], None))
        code, found = await self.call("GET", f"{ADMIN}/v2/users?name=CAROL", token=admin)
        self.assertEqual([u["name"] for u in found["users"]], [self.uid("carol")])
        self.assertError(await self.call("GET", f"{ADMIN}/v2/users/{q(self.uid('nobody'))}", token=admin), 404, "M_NOT_FOUND")
        self.assertError(await self.call("GET", f"{ADMIN}/v2/users/{q('@x:elsewhere.test')}", token=admin),
                         400, "M_INVALID_PARAM")
        self.assertError(await self.call("PUT", path, {"admin": "yes"}, admin), 400, "M_BAD_JSON")
        self.assertError(await self.call("PUT", path, {"threepids": [{"medium": "email"}]}, admin), 400, "M_UNRECOGNIZED")

    async def test_reset_password_and_devices(self):
        """reset_password sets a new password and logs every device out; devices are
        listed with Synapse's fields."""
        await self.start()
        admin = await self.user("root", admin=True)
        token = await self.user("dave", password="old-password")
        code, devices = await self.call("GET", f"{ADMIN}/v2/users/{q(self.uid('dave'))}/devices", token=admin)
        self.assertEqual((code, devices["total"]), (200, 1))
        self.assertLessEqual({"device_id", "display_name", "last_seen_ip", "last_seen_ts", "user_id"}, set(devices["devices"][0]))
        code, _ = await self.call("POST", f"{ADMIN}/v1/reset_password/{q(self.uid('dave'))}",
                                  {"new_password": "new-password"}, admin)
        self.assertEqual(code, 200)
        self.assertError(await self.call("GET", "/_matrix/client/v3/account/whoami", token=token), 401, "M_UNKNOWN_TOKEN")
        login = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "dave"}}
        self.assertError(await self.call("POST", "/_matrix/client/v3/login", {**login, "password": "old-password"}),
                         403, "M_FORBIDDEN")
        code, _ = await self.call("POST", "/_matrix/client/v3/login", {**login, "password": "new-password"})
        self.assertEqual(code, 200)
        self.assertError(await self.call("POST", f"{ADMIN}/v1/reset_password/{q(self.uid('dave'))}",
                                         {"new_password": ""}, admin), 400, "M_INVALID_PARAM")

    async def test_deactivate_leaves_rooms_and_invalidates_tokens(self):
        """Deactivation: tokens and devices go at once (401 M_UNKNOWN_TOKEN), the password
        too (login refused), the user leaves a room it was in and rejects an invite; with
        erase the display name and account data go. It is the routine of POST
        /account/deactivate: nothing is left pending. The user still shows, deactivated."""
        await self.start()
        admin = await self.user("root", admin=True)
        token = await self.user("eve", password="pw-eve")
        eve, bob = self.uid("eve"), self.uid("bob")
        await self.user("bob")
        joined = await self.room(bob, preset="public_chat")
        invited = await self.room(bob, preset="private_chat")
        await self.svc.rooms.membership.join(eve, joined)
        await self.svc.rooms.membership.invite(bob, invited, eve)
        self.assertEqual((await self.membership(joined, eve), await self.membership(invited, eve)), ("join", "invite"))
        await self.svc.store.accounts.set_profile_field(eve, "displayname", "Eve")
        await self.svc.store.accounts.set_account_data(eve, None, "m.test", {"a": 1})
        code, body = await self.call("POST", f"{ADMIN}/v1/deactivate/{q(eve)}", {"erase": True}, admin)
        self.assertEqual((code, body), (200, {"id_server_unbind_result": "success"}))
        self.assertError(await self.call("GET", "/_matrix/client/v3/account/whoami", token=token), 401, "M_UNKNOWN_TOKEN")
        self.assertEqual((await self.membership(joined, eve), await self.membership(invited, eve)), ("leave", "leave"))
        self.assertEqual(await self.svc.store.accounts.get_devices(eve), [])
        self.assertIsNone(await self.svc.store.accounts.get_account_data(eve, None, "m.test"))
        self.assertEqual(await self.svc.store.deactivation.get_pending(), [])
        code, login = await self.call("POST", "/_matrix/client/v3/login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "eve"}, "password": "pw-eve"})
        self.assertEqual(code, 403, login)
        code, shown = await self.call("GET", f"{ADMIN}/v2/users/{q(eve)}", token=admin)
        self.assertEqual((shown["deactivated"], shown["displayname"], shown["password_set"]), (True, None, False))
        code, listed = await self.call("GET", f"{ADMIN}/v2/users", token=admin)
        self.assertNotIn(eve, [u["name"] for u in listed["users"]])
        code, listed = await self.call("GET", f"{ADMIN}/v2/users?deactivated=true", token=admin)
        self.assertIn(eve, [u["name"] for u in listed["users"]])
        # Reactivating needs a password.
        self.assertError(await self.call("PUT", f"{ADMIN}/v2/users/{q(eve)}", {"deactivated": False}, admin),
                         400, "M_BAD_JSON")
        code, body = await self.call("PUT", f"{ADMIN}/v2/users/{q(eve)}", {"deactivated": False, "password": "pw2"}, admin)
        self.assertEqual((code, body["deactivated"]), (200, False))


class RoomTests(AdminApiTestCase):
    async def test_list_show_members_state(self):
        """The room list has name, alias, member counts, version, join rules; it sorts,
        searches and pages; a room shows its members and state in the client format."""
        await self.start()
        admin = await self.user("root", admin=True)
        alice = self.uid("alice")
        await self.user("alice")
        big = await self.room(alice, preset="public_chat", name="Big room", room_alias_name="big")
        small = await self.room(alice, preset="private_chat", name="Small room")
        await self.user("bob")
        await self.svc.rooms.membership.join(self.uid("bob"), big)
        code, page = await self.call("GET", f"{ADMIN}/v1/rooms?order_by=joined_members", token=admin)
        self.assertEqual(code, 200, page)
        self.assertEqual([r["room_id"] for r in page["rooms"]], [big, small])
        first = page["rooms"][0]
        self.assertEqual((first["name"], first["canonical_alias"], first["joined_members"], first["joined_local_members"],
                          first["join_rules"], first["version"], first["creator"], first["public"]),
                         ("Big room", f"#big:{self.name}", 2, 2, "public", "12", alice, False))
        self.assertEqual(page["total_rooms"], 2)
        code, page = await self.call("GET", f"{ADMIN}/v1/rooms?search_term=small", token=admin)
        self.assertEqual([r["room_id"] for r in page["rooms"]], [small])
        code, page = await self.call("GET", f"{ADMIN}/v1/rooms?limit=1&order_by=name", token=admin)
        self.assertEqual((len(page["rooms"]), page["next_batch"]), (1, 1))
        self.assertError(await self.call("GET", f"{ADMIN}/v1/rooms?order_by=nonsense", token=admin), 400, "M_INVALID_PARAM")
        code, members = await self.call("GET", f"{ADMIN}/v1/rooms/{q(big)}/members", token=admin)
        self.assertEqual(members, {"members": sorted([alice, self.uid("bob")]), "total": 2})
        code, state = await self.call("GET", f"{ADMIN}/v1/rooms/{q(big)}/state", token=admin)
        self.assertIn(("m.room.name", "", {"name": "Big room"}),
                      [(e["type"], e["state_key"], e["content"]) for e in state["state"]])
        code, room = await self.call("GET", f"{ADMIN}/v1/rooms/{q(big)}", token=admin)
        self.assertEqual((room["room_id"], room["blocked"]), (big, False))
        self.assertError(await self.call("GET", f"{ADMIN}/v1/rooms/{q('!nope:' + self.name)}", token=admin), 404, "M_NOT_FOUND")

    async def test_block_stops_local_and_federation_joins(self):
        """A blocked room refuses our users' joins and knocks (403) and other servers'
        make_join/send_join and invites of our users (403); unblocking lets them in."""
        await self.start()
        admin = await self.user("root", admin=True)
        alice = self.uid("alice")
        await self.user("alice")
        await self.user("bob")
        room = await self.room(alice, preset="public_chat")
        code, body = await self.call("PUT", f"{ADMIN}/v1/rooms/{q(room)}/block", {"block": True}, admin)
        self.assertEqual((code, body), (200, {"block": True}))
        code, body = await self.call("GET", f"{ADMIN}/v1/rooms/{q(room)}/block", token=admin)
        self.assertEqual(body, {"block": True, "user_id": self.uid("root")})
        with self.assertRaises(MatrixError) as cm:
            await self.svc.rooms.membership.join(self.uid("bob"), room)
        self.assertEqual((cm.exception.code, cm.exception.errcode), (403, "M_FORBIDDEN"))
        with self.assertRaises(MatrixError) as cm:
            await self.svc.handshakes.make_membership("far.test", room, "@x:far.test", "join", ["12"])
        self.assertEqual((cm.exception.code, cm.exception.errcode), (403, "M_FORBIDDEN"))
        # A blocked room of another server: invites of our users to it are refused.
        await self.call("PUT", f"{ADMIN}/v1/rooms/{q('!r:far.test')}/block", {"block": True}, admin)
        with self.assertRaises(MatrixError) as cm:
            # Well-formed for room version 10 (malformed invites are 400 before anything else).
            await self.svc.handshakes.on_invite("far.test", "!r:far.test", "$e", {
                "room_id": "!r:far.test", "type": "m.room.member", "state_key": alice, "sender": "@x:far.test",
                "content": {"membership": "invite"}, "depth": 3, "origin_server_ts": 1_700_000_000_000,
                "prev_events": ["$" + "p" * 43], "auth_events": ["$" + "a" * 43], "hashes": {"sha256": "A" * 43},
                "signatures": {"far.test": {"ed25519:k": "A" * 86}}}, "10", [])
        self.assertEqual((cm.exception.code, cm.exception.errcode), (403, "M_FORBIDDEN"))
        code, body = await self.call("PUT", f"{ADMIN}/v1/rooms/{q(room)}/block", {"block": False}, admin)
        self.assertEqual(body, {"block": False})
        await self.svc.rooms.membership.join(self.uid("bob"), room)
        self.assertEqual(await self.membership(room, self.uid("bob")), "join")
        self.assertError(await self.call("PUT", f"{ADMIN}/v1/rooms/{q(room)}/block", {"block": 1}, admin), 400, "M_BAD_JSON")

    async def test_purge_history_keeps_state_and_recent_events(self):
        """Purging up to an event deletes older messages of other servers' users only by
        default; with delete_local_events ours too. State events, the point itself and
        later events stay; the room still works."""
        await self.start()
        admin = await self.user("root", admin=True)
        alice = self.uid("alice")
        await self.user("alice")
        room = await self.room(alice, preset="public_chat", name="History")
        from fedserver.handlers.client.accounts import Requester

        req = Requester(alice, "DEV", 1)
        old = [await self.svc.rooms.rooms.send_event(req, room, "m.room.message", {"msgtype": "m.text", "body": f"old {i}"}, f"o{i}")
               for i in range(3)]
        point = await self.svc.rooms.rooms.send_event(req, room, "m.room.message", {"msgtype": "m.text", "body": "point"}, "p")
        later = await self.svc.rooms.rooms.send_event(req, room, "m.room.message", {"msgtype": "m.text", "body": "later"}, "l")

        async def purge(body: dict) -> dict:
            code, started = await self.call("POST", f"{ADMIN}/v1/purge_history/{q(room)}", body, admin)
            self.assertEqual(code, 200, started)

            async def done() -> Any:
                code, status = await self.call("GET", f"{ADMIN}/v1/purge_history_status/{started['purge_id']}", token=admin)
                return status if status["status"] != "active" else None

            return await self.until(done, "the purge")

        status = await purge({"purge_up_to_event_id": point})
        self.assertEqual((status["status"], status["deleted_events"]), ("complete", 0))
        self.assertIsNotNone(await self.svc.store.get_event(old[0]))
        status = await purge({"purge_up_to_event_id": point, "delete_local_events": True})
        self.assertEqual((status["status"], status["deleted_events"]), ("complete", 3))
        self.assertGreater(status["kept_state_events"], 3)
        for event_id in old:
            self.assertIsNone(await self.svc.store.get_event(event_id))
        for event_id in (point, later):
            self.assertIsNotNone(await self.svc.store.get_event(event_id))
        state = await self.svc.store.get_current_state_ids(room)
        self.assertIn(("m.room.name", ""), state)
        for event_id in state.values():
            self.assertIsNotNone(await self.svc.store.get_event(event_id))
        await self.svc.rooms.rooms.send_event(req, room, "m.room.message", {"msgtype": "m.text", "body": "after"}, "a")
        self.assertError(await self.call("POST", f"{ADMIN}/v1/purge_history/{q(room)}", {}, admin), 400, "M_BAD_JSON")
        self.assertError(await self.call("GET", f"{ADMIN}/v1/purge_history_status/nope", token=admin), 404, "M_NOT_FOUND")

    async def test_delete_room(self):
        """Deleting a room with block and purge: our users leave it (kicked_users), its
        aliases go, it is blocked and nothing of it is left; v2 runs the same as a job
        whose status ends complete."""
        await self.start()
        admin = await self.user("root", admin=True)
        alice, bob = self.uid("alice"), self.uid("bob")
        await self.user("alice")
        await self.user("bob")
        room = await self.room(alice, preset="public_chat", room_alias_name="doomed")
        await self.svc.rooms.membership.join(bob, room)
        code, body = await self.call("DELETE", f"{ADMIN}/v1/rooms/{q(room)}", {"block": True, "purge": True}, admin)
        self.assertEqual(code, 200, body)
        self.assertEqual((sorted(body["kicked_users"]), body["failed_to_kick_users"], body["local_aliases"], body["new_room_id"]),
                         (sorted([alice, bob]), [], [f"#doomed:{self.name}"], None))
        self.assertIsNone(await self.svc.store.get_room(room))
        self.assertIsNone(await self.svc.store.rooms.get_alias(f"#doomed:{self.name}"))
        code, listing = await self.call("GET", f"{ADMIN}/v1/rooms", token=admin)
        self.assertEqual(listing["rooms"], [])
        code, blocked = await self.call("GET", f"{ADMIN}/v1/rooms/{q(room)}/block", token=admin)
        self.assertTrue(blocked["block"])
        other = await self.room(alice, preset="public_chat")
        code, job = await self.call("DELETE", f"{ADMIN}/v2/rooms/{q(other)}", {}, admin)
        self.assertEqual(code, 200, job)

        async def done() -> Any:
            code, status = await self.call("GET", f"{ADMIN}/v2/rooms/delete_status/{job['delete_id']}", token=admin)
            return status if status["status"] == "complete" else None

        status = await self.until(done, "the deletion")
        self.assertEqual(status["shutdown_room"]["kicked_users"], [alice])
        self.assertIsNone(await self.svc.store.get_room(other))
        self.assertError(await self.call("DELETE", f"{ADMIN}/v1/rooms/{q(other)}", {}, admin), 404, "M_NOT_FOUND")
        self.assertError(await self.call("DELETE", f"{ADMIN}/v1/rooms/{q(room)}", {"new_room_user_id": alice}, admin),
                         400, "M_BAD_JSON")


class DestinationTests(AdminApiTestCase):
    async def test_list_and_reset(self):
        """Destinations show their backoff and queue; reset_connection clears the backoff;
        an unknown destination is 404."""
        await self.start()
        admin = await self.user("root", admin=True)
        store = self.svc.store
        await store.set_destination_retry("down.test", 1_700_000_000_000, 60_000)
        await store.enqueue_outbound(["down.test"], edus=[{"edu_type": "m.x", "content": {}}])
        code, body = await self.call("GET", f"{ADMIN}/v1/federation/destinations", token=admin)
        self.assertEqual(code, 200, body)
        (dest,) = [d for d in body["destinations"] if d["destination"] == "down.test"]
        self.assertEqual((dest["retry_interval"], dest["retry_last_ts"], dest["failure_ts"], dest["queued"]),
                         (60_000, 1_700_000_000_000, 1_700_000_000_000, 1))
        code, one = await self.call("GET", f"{ADMIN}/v1/federation/destinations/down.test", token=admin)
        self.assertEqual(one, dest)
        code, body = await self.call("POST", f"{ADMIN}/v1/federation/destinations/down.test/reset_connection", {}, admin)
        self.assertEqual((code, body), (200, {}))
        self.assertIsNone(await store.get_destination_retry("down.test"))
        code, one = await self.call("GET", f"{ADMIN}/v1/federation/destinations/down.test", token=admin)
        self.assertEqual((one["retry_interval"], one["failure_ts"]), (0, None))
        self.assertError(await self.call("GET", f"{ADMIN}/v1/federation/destinations/nowhere.test", token=admin),
                         404, "M_NOT_FOUND")
        self.assertError(await self.call("POST", f"{ADMIN}/v1/federation/destinations/nowhere.test/reset_connection",
                                         {}, admin), 404, "M_NOT_FOUND")
