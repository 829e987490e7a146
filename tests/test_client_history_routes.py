"""The relations, threads, upgrade and timeline endpoints through the real client resource
(StubTreq): routing, query parameters and Matrix errors."""

from __future__ import annotations

import json
from urllib.parse import quote

from tests.test_client_rooms import SERVER, ClientRoomsTestCase, q

V1 = "/_matrix/client/v1"


class HistoryRoutesTests(ClientRoomsTestCase):
    async def test_relations_threads_upgrade_over_http(self):
        """GET /v1/.../relations/{eventId}/{relType}/{eventType} and /v1/.../threads answer
        with the thread; /messages carries the bundle; bad parameters are 400
        M_INVALID_PARAM; POST /upgrade answers replacement_room, 400
        M_UNSUPPORTED_ROOM_VERSION and 403 M_FORBIDDEN; /members takes at= and the
        membership filters; lazy_load_members in a /messages filter adds ``state``."""
        alice = await self.register("alice")
        bob = await self.register("bob")
        _, body = await self.call("POST", "/createRoom", {"preset": "public_chat", "room_version": "11"}, token=alice)
        room = q(body["room_id"])
        await self.call("POST", f"/rooms/{room}/join", {}, token=bob)
        _, root = await self.call("PUT", f"/rooms/{room}/send/m.room.message/r", {"msgtype": "m.text", "body": "root"}, token=alice)
        root_id = root["event_id"]
        thread = {"msgtype": "m.text", "body": "reply", "m.relates_to": {"rel_type": "m.thread", "event_id": root_id}}
        _, reply = await self.call("PUT", f"/rooms/{room}/send/m.room.message/t", thread, token=bob)
        code, rel = await self.call("GET", f"{V1}/rooms/{room}/relations/{q(root_id)}/m.thread/m.room.message", token=alice)
        self.assertEqual((code, [e["event_id"] for e in rel["chunk"]]), (200, [reply["event_id"]]))
        code, rel = await self.call("GET", f"{V1}/rooms/{room}/relations/{q(root_id)}?recurse=true&dir=f", token=alice)
        self.assertEqual((code, rel["recursion_depth"]), (200, 3))
        self.assertError(await self.call("GET", f"{V1}/rooms/{room}/relations/{q(root_id)}?dir=x", token=alice), 400, "M_INVALID_PARAM")
        self.assertError(await self.call("GET", f"{V1}/rooms/{room}/relations/{q(root_id)}?recurse=maybe", token=alice), 400, "M_INVALID_PARAM")
        self.assertError(await self.call("GET", f"{V1}/rooms/{room}/relations/{q('$nope')}", token=alice), 404, "M_NOT_FOUND")
        code, threads = await self.call("GET", f"{V1}/rooms/{room}/threads?include=participated", token=bob)
        self.assertEqual((code, [e["event_id"] for e in threads["chunk"]]), (200, [root_id]))
        self.assertError(await self.call("GET", f"{V1}/rooms/{room}/threads?from=garbage", token=bob), 400, "M_INVALID_PARAM")
        lazy = quote(json.dumps({"lazy_load_members": True}))
        code, page = await self.call("GET", f"/rooms/{room}/messages?limit=2&filter={lazy}", token=alice)
        self.assertEqual(code, 200)
        served_root = next(e for e in page["chunk"] if e["event_id"] == root_id)
        self.assertEqual(served_root["unsigned"]["m.relations"]["m.thread"]["count"], 1)
        self.assertEqual(sorted(e["state_key"] for e in page["state"]), [f"@alice:{SERVER}", f"@bob:{SERVER}"])
        code, members = await self.call("GET", f"/rooms/{room}/members?membership=join&not_membership=leave", token=bob)
        self.assertEqual((code, len(members["chunk"])), (200, 2))
        self.assertError(await self.call("GET", f"/rooms/{room}/members?at=garbage", token=bob), 400, "M_INVALID_PARAM")
        self.assertError(await self.call("POST", f"/rooms/{room}/upgrade", {"new_version": "12"}, token=bob), 403, "M_FORBIDDEN")
        self.assertError(await self.call("POST", f"/rooms/{room}/upgrade", {"new_version": "x"}, token=alice), 400, "M_UNSUPPORTED_ROOM_VERSION")
        self.assertError(await self.call("POST", f"/rooms/{room}/upgrade", raw=b"[]", token=alice), 400, "M_BAD_JSON")
        code, up = await self.call("POST", f"/rooms/{room}/upgrade", {"new_version": "12"}, token=alice)
        self.assertEqual(code, 200, up)
        code, tomb = await self.call("GET", f"/rooms/{room}/state/m.room.tombstone", token=bob)
        self.assertEqual((code, tomb["replacement_room"]), (200, up["replacement_room"]))
