"""The space hierarchy: ``GET /_matrix/client/v1/rooms/{roomId}/hierarchy`` (depth first,
the spec's child order, ``suggested_only``, ``limit``, ``max_depth``, ``from`` tokens,
who sees what, rooms we are not in asked over federation) and ``GET
/_matrix/federation/v1/hierarchy/{roomId}`` (accessible and inaccessible children, ACLs,
blocked rooms). Through the real resources (StubTreq) on a real SQLite store; the other
server is a recorded fake federation client."""

from __future__ import annotations

from typing import Any

from signedjson.key import generate_signing_key
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.trial import unittest

from fedserver.federation.acl import ServerAcls
from fedserver.federation.client import FederationUnreachable
from fedserver.handlers.rooms.hierarchy import SpaceHierarchy, order_children, valid_order
from fedserver.http.client.hierarchy import register_hierarchy_routes
from fedserver.http.federation.hierarchy import register_federation_hierarchy_routes
from fedserver.http.federation.keys import ServerKeyDocument, ServerKeyResource
from fedserver.http.federation.transport import FederationResource
from fedserver.http.site import build_federation_root
from tests.test_client_rooms import SERVER
from tests.test_public_rooms_federation import PEER, PublicRoomsTestCase, StubAuthenticator, q

V1 = "/_matrix/client/v1"
REMOTE = "remote.test"
REMOTE_SPACE = "!rspace:remote.test"
REMOTE_CHILD = "!rchild:remote.test"


class OrderTests(unittest.TestCase):
    def test_spec_order(self):
        """Children with a valid ``order`` first (by code point, ``" "`` before ``"a"``),
        then the rest by ``origin_server_ts``, ties by room id; an order over 50
        characters or with a character outside 0x20-0x7E counts as absent."""

        def ev(room: str, ts: int, order: Any = None) -> dict:
            content: dict = {"via": ["x"]}
            if order is not None:
                content["order"] = order
            return {"type": "m.space.child", "state_key": room, "origin_server_ts": ts, "content": content}

        children = [
            ev("!e", 5), ev("!d", 1, "a" * 51), ev("!c", 1), ev("!a", 9, "aaaa"), ev("!b", 10, " "),
            ev("!f", 3, "caf\u00e9"), ev("!g", 2, "aaaa"),
        ]
        self.assertEqual([c["state_key"] for c in order_children(children)], ["!b", "!g", "!a", "!c", "!d", "!f", "!e"])
        self.assertTrue(valid_order("~ "))
        self.assertFalse(valid_order("\x7f"))
        self.assertFalse(valid_order(5))


class HierarchyTestCase(PublicRoomsTestCase):
    async def _set_up(self) -> None:
        await super()._set_up()
        acls = ServerAcls(self.store)
        self.hierarchy = SpaceHierarchy(
            self.store, SERVER, self.clock, federation_client=self.federation,
            is_room_blocked=self.blocked.__contains__, acl_allows=acls.is_allowed,
        )
        register_hierarchy_routes(self.api, self.hierarchy)
        # A federation resource with the hierarchy route (from PEER, see StubAuthenticator).
        fed_resource = FederationResource(StubAuthenticator(), acls=acls)
        register_federation_hierarchy_routes(fed_resource, self.hierarchy)
        keys = ServerKeyResource(ServerKeyDocument(SERVER, generate_signing_key("us"), reactor, 86_400_000))
        self.fed = StubTreq(build_federation_root(server_keys=keys, federation_v1=fed_resource))

    async def room(self, token: str, name: str, **extra: Any) -> str:
        code, body = await self.call("POST", "/createRoom", {"name": name, **extra}, token=token)
        self.assertEqual(code, 200, body)
        return body["room_id"]

    async def add_child(self, space: str, child: str, **content: Any) -> None:
        content.setdefault("via", [SERVER])
        code, body = await self.call("PUT", f"/rooms/{q(space)}/state/m.space.child/{q(child)}", content, token=self.alice)
        self.assertEqual(code, 200, body)

    async def build(self) -> dict[str, str]:
        """alice's public space: ``pub`` (public, order "b"), ``sub`` (a public sub-space,
        order "a", suggested) holding ``deep``; ``priv`` (invite only); ``restr``
        (restricted to the space's members, suggested); a remote space (via
        remote.test); and a child with no ``via`` (removed)."""
        self.alice = await self.register("alice")
        self.bob = await self.register("bob")
        space_kind = {"creation_content": {"type": "m.space"}, "preset": "public_chat"}
        r: dict[str, str] = {}
        r["space"] = await self.room(self.alice, "Space", **space_kind)
        r["sub"] = await self.room(self.alice, "Sub", **space_kind)
        r["pub"] = await self.room(self.alice, "Pub", preset="public_chat", topic="open")
        r["deep"] = await self.room(self.alice, "Deep", preset="public_chat")
        r["priv"] = await self.room(self.alice, "Priv", preset="private_chat")
        r["restr"] = await self.room(self.alice, "Restr", preset="private_chat", initial_state=[{
            "type": "m.room.join_rules", "state_key": "",
            "content": {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": r["space"]}]},
        }])
        r["gone"] = await self.room(self.alice, "Gone", preset="public_chat")
        await self.add_child(r["space"], r["pub"], order="b")
        await self.add_child(r["space"], r["sub"], order="a", suggested=True)
        await self.add_child(r["space"], r["priv"])
        await self.add_child(r["space"], r["restr"], suggested=True)
        await self.add_child(r["space"], REMOTE_SPACE, via=[REMOTE])
        await self.add_child(r["space"], r["gone"], via=[])
        await self.add_child(r["sub"], r["deep"])
        return r

    def remote_answer(self) -> dict:
        return {
            "room": {
                "room_id": REMOTE_SPACE, "num_joined_members": 4, "world_readable": False, "guest_can_join": False,
                "join_rule": "public", "room_type": "m.space", "name": "Remote space",
                "children_state": [{
                    "type": "m.space.child", "state_key": REMOTE_CHILD, "content": {"via": [REMOTE]},
                    "sender": "@x:remote.test", "origin_server_ts": 5,
                }],
            },
            "children": [{
                "room_id": REMOTE_CHILD, "num_joined_members": 2, "world_readable": True, "guest_can_join": False,
                "join_rule": "invite", "name": "Remote child",
            }],
            "inaccessible_children": [],
        }

    async def get(self, room_id: str, query: str = "", token: Any = None) -> tuple[int, Any]:
        return await self.call("GET", f"{V1}/rooms/{q(room_id)}/hierarchy{query}", token=token or self.bob)


class ClientHierarchyTests(HierarchyTestCase):
    async def test_walk(self):
        """bob (not in the space) sees the space, then depth first in the spec's order:
        sub, deep, pub, then the remote space and its child (asked once of remote.test,
        the child from the same answer); not the invite-only room, not the restricted
        one, not the removed child. Once bob joins the space, the restricted room shows.
        Each entry has the summary fields; only spaces carry children_state."""
        r = await self.build()
        self.federation.answers.append(self.remote_answer())
        code, body = await self.get(r["space"])
        self.assertEqual(code, 200, body)
        names = [room.get("name") for room in body["rooms"]]
        self.assertEqual(names, ["Space", "Sub", "Deep", "Pub", "Remote space", "Remote child"])
        self.assertNotIn("next_batch", body)
        self.assertEqual(
            self.federation.calls,
            [("GET", REMOTE, "/_matrix/federation/v1/hierarchy/%21rspace%3Aremote.test", {"suggested_only": "false"})],
        )
        space = body["rooms"][0]
        self.assertEqual((space["room_type"], space["join_rule"], space["num_joined_members"]), ("m.space", "public", 1))
        self.assertEqual(
            [c["state_key"] for c in space["children_state"]],
            [r["sub"], r["pub"], r["priv"], r["restr"], REMOTE_SPACE],
        )
        self.assertIsInstance(space["children_state"][0]["origin_server_ts"], int)
        pub = body["rooms"][3]
        self.assertEqual((pub["topic"], pub["children_state"], pub["room_version"]), ("open", [], "12"))
        code, _ = await self.call("POST", f"/rooms/{q(r['space'])}/join", {}, token=self.bob)
        self.assertEqual(code, 200)
        self.federation.answers.append(self.remote_answer())
        code, body = await self.get(r["space"])
        self.assertIn("Restr", [room.get("name") for room in body["rooms"]])
        restr = next(room for room in body["rooms"] if room.get("name") == "Restr")
        self.assertEqual((restr["join_rule"], restr["allowed_room_ids"]), ("restricted", [r["space"]]))

    async def test_depth_suggested_and_unreachable(self):
        """max_depth=1 stops below the space's children; max_depth=0 is the space
        alone; suggested_only keeps the suggested children; a remote space whose
        servers cannot be reached is left out (the rest still answers)."""
        r = await self.build()
        self.federation.answers.append(FederationUnreachable("down"))
        code, body = await self.get(r["space"], "?max_depth=1")
        self.assertEqual((code, [x.get("name") for x in body["rooms"]]), (200, ["Space", "Sub", "Pub"]))
        code, body = await self.get(r["space"], "?max_depth=0")
        self.assertEqual([x.get("name") for x in body["rooms"]], ["Space"])
        code, body = await self.get(r["space"], "?suggested_only=true", token=self.alice)
        self.assertEqual([x.get("name") for x in body["rooms"]], ["Space", "Sub", "Restr"])

    async def test_paging(self):
        """limit=2 pages through the same rooms as one request; a token asked again gives
        the same page; a token with another suggested_only or max_depth, an unknown
        token, limit=0, max_depth=-1 and suggested_only=yes are 400 M_INVALID_PARAM;
        tokens expire."""
        r = await self.build()
        self.federation.answers += [self.remote_answer()] * 2
        code, whole = await self.get(r["space"], token=self.alice)
        self.assertEqual(code, 200)
        pages, token, first_token, first_again = [], None, None, None
        for _ in range(10):
            code, page = await self.get(r["space"], "?limit=2" + (f"&from={q(token)}" if token else ""), token=self.alice)
            self.assertEqual(code, 200, page)
            self.assertLessEqual(len(page["rooms"]), 2)
            pages += page["rooms"]
            token = page.get("next_batch")
            if first_token is None:
                first_token = token
            if token is None:
                break
        self.assertEqual([x["room_id"] for x in pages], [x["room_id"] for x in whole["rooms"]])
        code, again = await self.get(r["space"], f"?limit=2&from={q(first_token)}", token=self.alice)
        self.assertEqual((code, [x["room_id"] for x in again["rooms"]]), (200, [x["room_id"] for x in pages[2:4]]))
        for query in (f"?from={q(first_token)}&suggested_only=true", f"?from={q(first_token)}&max_depth=1",
                      "?from=nonsense", "?limit=0", "?limit=-3", "?max_depth=-1", "?suggested_only=yes", "?limit=x"):
            self.assertError(await self.get(r["space"], query, token=self.alice), 400, "M_INVALID_PARAM")
        self.assertError(await self.get(r["space"], f"?from={q(first_token)}"), 400, "M_INVALID_PARAM")  # bob's is not
        self.clock.advance(3600)
        self.assertError(await self.get(r["space"], f"?limit=2&from={q(first_token)}", token=self.alice), 400, "M_INVALID_PARAM")

    async def test_remote_requests_per_page(self):
        """A space of 12 remote children on 12 unreachable servers: the first page stops
        after 10 requests with a next_batch, the next page asks the last 2 and ends;
        a server that failed is not asked again in the same walk."""
        self.alice = await self.register("alice")
        space = await self.room(self.alice, "Big", creation_content={"type": "m.space"}, preset="public_chat")
        for i in range(12):
            await self.add_child(space, f"!r{i}:s{i}.test", via=[f"s{i}.test"], order=f"{i:02d}")
        await self.add_child(space, "!again:s0.test", via=["s0.test"], order="99")
        self.federation.answers += [FederationUnreachable("down")] * 12
        code, page = await self.get(space, token=self.alice)
        self.assertEqual((code, [x["name"] for x in page["rooms"]], len(self.federation.calls)), (200, ["Big"], 10))
        code, rest = await self.get(space, f"?from={q(page['next_batch'])}", token=self.alice)
        self.assertEqual((code, rest["rooms"], len(self.federation.calls)), (200, [], 12))
        self.assertNotIn("next_batch", rest)
        self.assertEqual({c[1] for c in self.federation.calls}, {f"s{i}.test" for i in range(12)})

    async def test_forbidden(self):
        """A root the user may not see (invite only, not a member), an unknown room and
        a blocked one are 403 M_FORBIDDEN; no access token is 401 M_MISSING_TOKEN."""
        r = await self.build()
        self.assertError(await self.get(r["priv"]), 403, "M_FORBIDDEN")
        self.assertError(await self.get("!nowhere:" + SERVER), 403, "M_FORBIDDEN")
        self.blocked.add(r["pub"])
        self.assertError(await self.get(r["pub"]), 403, "M_FORBIDDEN")
        code, body = await self.get(r["priv"], token=self.alice)
        self.assertEqual((code, [x["name"] for x in body["rooms"]]), (200, ["Priv"]))
        self.assertError(
            await self.call("GET", f"{V1}/rooms/{q(r['space'])}/hierarchy"), 401, "M_MISSING_TOKEN"
        )


    async def test_remote_invite_shows_an_invite_only_room(self):
        """A remote room that is invite only and not world readable is not shown to bob,
        until bob holds an invite to it received over federation (kept apart from room
        memberships: we are not in that room)."""
        from signedjson.key import generate_signing_key as key_for

        from fedserver import room_versions
        from fedserver.events.builder import build_event
        from fedserver.storage.interface import PersistEntry

        r = await self.build()
        closed = self.remote_answer()
        closed["children"][0]["world_readable"] = False
        self.federation.answers.append(closed)
        code, body = await self.get(r["space"])
        self.assertEqual(code, 200, body)
        self.assertNotIn("Remote child", [room.get("name") for room in body["rooms"]])
        self.assertEqual(body["rooms"][-1]["name"], "Remote space")

        bob = f"@bob:{SERVER}"
        invite = build_event(
            room_versions.V10, room_id=REMOTE_CHILD, type="m.room.member", sender="@x:remote.test",
            content={"membership": "invite"}, state_key=bob, prev_event_ids=["$p" + "A" * 42],
            auth_event_ids=[], depth=5, origin_server_ts=1_700_000_000_005,
            server_name=REMOTE, signing_key=key_for("1"),
        )
        await self.store.persist_events([PersistEntry(event=invite, outlier=True)])
        await self.store.federation_extras.set_remote_membership(
            bob, REMOTE_CHILD, "invite", invite.event_id, "@x:remote.test", []
        )
        self.federation.answers.append(closed)
        code, body = await self.get(r["space"])
        self.assertEqual(code, 200, body)
        self.assertEqual(body["rooms"][-1]["name"], "Remote child")

class FederationHierarchyTests(HierarchyTestCase):
    async def test_serve(self):
        """The space with its children_state; children the asking server may see (pub,
        sub); the invite-only and restricted ones (no user of peer.test in them or in
        the space) in inaccessible_children; children we do not hold left out; a blocked
        child inaccessible; suggested_only honoured."""
        r = await self.build()
        code, body = await self.fed_call("GET", f"/hierarchy/{q(r['space'])}")
        self.assertEqual(code, 200, body)
        self.assertEqual(body["room"]["room_id"], r["space"])
        self.assertEqual(len(body["room"]["children_state"]), 5)
        self.assertEqual({c["room_id"] for c in body["children"]}, {r["pub"], r["sub"]})
        self.assertEqual(set(body["inaccessible_children"]), {r["priv"], r["restr"]})
        self.blocked.add(r["pub"])
        code, body = await self.fed_call("GET", f"/hierarchy/{q(r['space'])}?suggested_only=true")
        self.assertEqual(({c["room_id"] for c in body["children"]}, body["inaccessible_children"]), ({r["sub"]}, [r["restr"]]))
        code, body = await self.fed_call("GET", f"/hierarchy/{q(r['space'])}")
        self.assertIn(r["pub"], body["inaccessible_children"])

    async def test_refusals(self):
        """An unknown room, a room the asking server may not see, and a space whose
        server ACL denies it are 404 M_NOT_FOUND; suggested_only=1 is 400 M_INVALID_PARAM."""
        r = await self.build()
        for room in ("!unknown:" + SERVER, r["priv"]):
            code, body = await self.fed_call("GET", f"/hierarchy/{q(room)}")
            self.assertEqual((code, body["errcode"]), (404, "M_NOT_FOUND"), room)
        code, body = await self.fed_call("GET", f"/hierarchy/{q(r['space'])}?suggested_only=1")
        self.assertEqual((code, body["errcode"]), (400, "M_INVALID_PARAM"))
        code, _ = await self.call(
            "PUT", f"/rooms/{q(r['space'])}/state/m.room.server_acl",
            {"allow": ["*"], "deny": [PEER], "allow_ip_literals": False}, token=self.alice,
        )
        self.assertEqual(code, 200)
        code, body = await self.fed_call("GET", f"/hierarchy/{q(r['space'])}")
        self.assertEqual((code, body["errcode"]), (404, "M_NOT_FOUND"))
