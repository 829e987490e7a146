"""Ignoring users (m.ignored_user_list): what a whole in-process fedserver stops sending a user
who ignores someone, through its client API and through matrix-nio."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import TestCase

from fedserver.handlers.client.ignored_users import parse_ignored_users
from tests.test_client_api_nio import run_asyncio_in_thread
from tests.test_daily_use import DailyUseTestCase, q


class ParseTests(TestCase):
    def test_parse(self):
        """The user ids of ignored_users are read; anything malformed ignores nobody."""
        self.assertEqual(parse_ignored_users({"ignored_users": {"@a:x": {}, "@b:y": {"k": 1}}}), {"@a:x", "@b:y"})
        for bad in (None, {}, {"ignored_users": []}, {"ignored_users": "@a:x"}, ["@a:x"]):
            self.assertEqual(parse_ignored_users(bad), frozenset(), bad)
        self.assertEqual(parse_ignored_users({"ignored_users": {"not-a-user": {}, "@c:z": {}}}), {"@c:z"})


def _texts(sync: dict, room_id: str) -> list[str]:
    room = sync["rooms"]["join"].get(room_id, {})
    return [e["content"].get("body") for e in room.get("timeline", {}).get("events", []) if e["type"] == "m.room.message"]


class IgnoreTests(DailyUseTestCase):
    async def _ignore(self, a: Any, token: str, user_id: str, users: list[str]) -> None:
        await a.ok("PUT", f"/user/{q(user_id)}/account_data/m.ignored_user_list",
                   {"ignored_users": {u: {} for u in users}}, token)

    async def test_sync_messages_context_invites_and_counts(self):
        """Once Alice ignores Carol: Carol's messages are not in Alice's next /sync,
        /messages, /context or /event (404) but her state events are; an invite from Carol
        is not shown; Carol's mention does not notify Alice. Bob is unaffected. After the
        list is emptied, Carol's new messages come again, the ones sent meanwhile do not
        (incremental sync), and an initial sync shows them."""
        a = await self.server()
        alice, at = await a.register("alice", "Alice")
        bob, bt = await a.register("bob")
        carol, ct = await a.register("carol")
        room = (await a.ok("POST", "/createRoom", {
            "preset": "public_chat", "power_level_content_override": {"events": {"m.room.topic": 0}},
        }, at))["room_id"]
        for token in (bt, ct):
            await a.ok("POST", f"/rooms/{q(room)}/join", {}, token)

        async def send(token, body, txn, **content):
            return (await a.ok("PUT", f"/rooms/{q(room)}/send/m.room.message/{txn}",
                               {"msgtype": "m.text", "body": body, **content}, token))["event_id"]

        before = await send(ct, "carol before", "c0")
        s0 = await a.sync(at)
        self.assertIn("carol before", _texts(s0, room))
        await self._ignore(a, at, alice, [carol])
        s1 = await a.sync(at, s0["next_batch"])
        ad = [e for e in s1["account_data"]["events"] if e["type"] == "m.ignored_user_list"]
        self.assertEqual(ad[0]["content"], {"ignored_users": {carol: {}}})
        hidden = await send(ct, "carol while ignored", "c1", **{"m.mentions": {"user_ids": [alice]}})
        await a.ok("PUT", f"/rooms/{q(room)}/state/m.room.topic", {"topic": "carol's topic"}, ct)
        await send(bt, "bob speaks", "b1")
        s2 = await a.sync(at, s1["next_batch"])
        self.assertEqual(_texts(s2, room), ["bob speaks"])
        timeline = s2["rooms"]["join"][room]["timeline"]["events"]
        self.assertIn(("m.room.topic", carol), [(e["type"], e["sender"]) for e in timeline])
        # Bob ignores nobody: he sees Carol.
        self.assertIn("carol while ignored", _texts(await a.sync(bt), room))
        # An initial sync leaves Carol's messages out too (even from before the ignore).
        self.assertEqual(_texts(await a.sync(at), room), ["bob speaks"])
        # /messages and /context.
        page = await a.ok("GET", f"/rooms/{q(room)}/messages?dir=b&limit=50", token=at)
        senders = {e["sender"] for e in page["chunk"] if e["type"] == "m.room.message"}
        self.assertEqual(senders, {bob})
        self.assertIn(carol, {e["sender"] for e in page["chunk"] if e["type"] == "m.room.topic"})
        self.assertError(await a.call("GET", f"/rooms/{q(room)}/context/{q(hidden)}", token=at), 404, "M_NOT_FOUND")
        self.assertError(await a.call("GET", f"/rooms/{q(room)}/event/{q(before)}", token=at), 404, "M_NOT_FOUND")
        bob_msg = page["chunk"][0]["event_id"]
        ctx = await a.ok("GET", f"/rooms/{q(room)}/context/{q(bob_msg)}?limit=20", token=at)
        self.assertNotIn(carol, {e["sender"] for e in ctx["events_before"] + ctx["events_after"]
                                 if e["type"] == "m.room.message"})
        self.assertEqual((await a.ok("GET", f"/rooms/{q(room)}/event/{q(before)}", token=bt))["sender"], carol)
        # Carol's mention did not notify Alice, and her notifications from before the
        # ignore are not listed any more.
        notes = await a.ok("GET", "/notifications", token=at)
        self.assertEqual({n["event"]["sender"] for n in notes["notifications"]}, {bob})
        self.assertNotIn(hidden, [n["event"]["event_id"] for n in notes["notifications"]])
        self.assertEqual(s2["rooms"]["join"][room]["unread_notifications"]["highlight_count"], 0)
        # Invites from Carol are not shown; Bob's are.
        other = (await a.ok("POST", "/createRoom", {"invite": [alice]}, ct))["room_id"]
        bobs = (await a.ok("POST", "/createRoom", {"invite": [alice]}, bt))["room_id"]
        s3 = await a.sync(at, s2["next_batch"])
        self.assertNotIn(other, s3["rooms"]["invite"])
        self.assertIn(bobs, s3["rooms"]["invite"])
        self.assertNotIn(other, (await a.sync(at))["rooms"]["invite"])
        # Un-ignore: the next sync is back to normal from now on.
        await self._ignore(a, at, alice, [])
        await send(ct, "carol after", "c2")
        s4 = await a.sync(at, s3["next_batch"])
        self.assertEqual(_texts(s4, room), ["carol after"])
        fresh = _texts(await a.sync(at), room)
        self.assertIn("carol while ignored", fresh)
        self.assertIn(other, (await a.sync(at))["rooms"]["invite"])

    async def test_aggregations_leave_out_ignored_children(self):
        """Thread summaries bundled for Alice count only the replies of users she does
        not ignore and name the newest of those as latest_event; references from Carol are
        not listed; /relations and /threads leave Carol's events out. Bob sees all."""
        a = await self.server()
        alice, at = await a.register("alice")
        bob, bt = await a.register("bob")
        carol, ct = await a.register("carol")
        room = (await a.ok("POST", "/createRoom", {"preset": "public_chat"}, at))["room_id"]
        for token in (bt, ct):
            await a.ok("POST", f"/rooms/{q(room)}/join", {}, token)
        n = 0

        async def send(token, body, **content):
            nonlocal n
            n += 1
            return (await a.ok("PUT", f"/rooms/{q(room)}/send/m.room.message/t{n}",
                               {"msgtype": "m.text", "body": body, **content}, token))["event_id"]

        root = await send(at, "root")
        thread = {"m.relates_to": {"rel_type": "m.thread", "event_id": root}}
        bob_reply = await send(bt, "bob in thread", **thread)
        await send(ct, "carol in thread 1", **thread)
        await send(ct, "carol in thread 2", **thread)
        await send(bt, "bob refers", **{"m.relates_to": {"rel_type": "m.reference", "event_id": root}})
        carol_ref = await send(ct, "carol refers", **{"m.relates_to": {"rel_type": "m.reference", "event_id": root}})
        carol_root = await send(ct, "carol's own thread root")
        await send(bt, "bob in carol's thread", **{"m.relates_to": {"rel_type": "m.thread", "event_id": carol_root}})
        await self._ignore(a, at, alice, [carol])

        seen_by_alice = (await a.ok("GET", f"/rooms/{q(room)}/event/{q(root)}", token=at))["unsigned"]["m.relations"]
        self.assertEqual(seen_by_alice["m.thread"]["count"], 1)
        self.assertEqual(seen_by_alice["m.thread"]["latest_event"]["event_id"], bob_reply)
        self.assertEqual(len(seen_by_alice["m.reference"]["chunk"]), 1)
        self.assertNotIn(carol_ref, [c["event_id"] for c in seen_by_alice["m.reference"]["chunk"]])
        seen_by_bob = (await a.ok("GET", f"/rooms/{q(room)}/event/{q(root)}", token=bt))["unsigned"]["m.relations"]
        self.assertEqual(seen_by_bob["m.thread"]["count"], 3)
        self.assertEqual(seen_by_bob["m.thread"]["latest_event"]["sender"], carol)
        self.assertEqual(len(seen_by_bob["m.reference"]["chunk"]), 2)

        rel = await a.ok("GET", f"/_matrix/client/v1/rooms/{q(room)}/relations/{q(root)}", token=at)
        self.assertEqual({e["sender"] for e in rel["chunk"]}, {bob})
        rel_b = await a.ok("GET", f"/_matrix/client/v1/rooms/{q(room)}/relations/{q(root)}", token=bt)
        self.assertEqual({e["sender"] for e in rel_b["chunk"]}, {bob, carol})
        threads = await a.ok("GET", f"/_matrix/client/v1/rooms/{q(room)}/threads", token=at)
        self.assertEqual([t["event_id"] for t in threads["chunk"]], [root])
        threads_b = await a.ok("GET", f"/_matrix/client/v1/rooms/{q(room)}/threads", token=bt)
        self.assertEqual(sorted(t["event_id"] for t in threads_b["chunk"]), sorted([root, carol_root]))

    async def test_nio_client_stops_seeing_ignored_user(self):
        """matrix-nio: after Alice's client stores m.ignored_user_list, its incremental
        /sync and /messages carry no text from Carol (Carol's topic change still arrives),
        Carol's invite never shows in nio's invited rooms, and after un-ignoring, Carol's
        next message arrives."""
        a = await self.server()
        await a.register("alice")
        bob, _ = await a.register("bob")
        await a.register("carol")
        url = a.base

        async def scenario() -> dict[str, Any]:
            import json

            import nio

            out: dict[str, Any] = {}
            clients = {name: nio.AsyncClient(url, f"@{name}:{a.name}") for name in ("alice", "bob", "carol")}
            try:
                for name, client in clients.items():
                    login = await client.login("pw-" + name)
                    assert isinstance(login, nio.LoginResponse), login
                al, bo, ca = clients["alice"], clients["bob"], clients["carol"]
                created = await al.room_create(
                    preset=nio.RoomPreset.public_chat, name="Ignore",
                    power_level_override={"events": {"m.room.topic": 0}},
                )
                room_id = created.room_id
                for c in (bo, ca):
                    assert isinstance(await c.join(room_id), nio.JoinResponse)
                first = await al.sync(full_state=True)

                async def put_ignore(users: list[str]) -> int:
                    # nio has no account data setter: the request as a client makes it.
                    path = nio.Api._build_path(
                        ["user", al.user_id, "account_data", "m.ignored_user_list"], {"access_token": al.access_token}
                    )
                    resp = await al.send("PUT", path, json.dumps({"ignored_users": {u: {} for u in users}}),
                                         headers={"Content-Type": "application/json"})
                    status = resp.status
                    resp.release()
                    return status

                out["put"] = await put_ignore([ca.user_id])
                await ca.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "from carol"})
                await ca.room_put_state(room_id, "m.room.topic", {"topic": "carol was here"})
                await bo.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "from bob"})
                invite_room = (await ca.room_create(invite=[al.user_id])).room_id
                second = await al.sync(since=first.next_batch)
                joined = second.rooms.join[room_id]
                out["texts"] = [e.body for e in joined.timeline.events if isinstance(e, nio.RoomMessageText)]
                out["topic"] = al.rooms[room_id].topic
                out["invited"] = invite_room in al.invited_rooms
                page = await al.room_messages(room_id, start=second.next_batch, limit=50)
                out["history_senders"] = sorted({e.sender for e in page.chunk if isinstance(e, nio.RoomMessageText)})
                out["put_again"] = await put_ignore([])
                await ca.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "carol again"})
                third = await al.sync(since=second.next_batch)
                out["after"] = [
                    e.body for e in third.rooms.join[room_id].timeline.events if isinstance(e, nio.RoomMessageText)
                ]
            finally:
                for c in clients.values():
                    await c.close()
            return out

        out = await run_asyncio_in_thread(scenario, timeout=60)
        self.assertEqual(out["put"], 200)
        self.assertEqual(out["texts"], ["from bob"])
        self.assertEqual(out["topic"], "carol was here")
        self.assertFalse(out["invited"])
        self.assertEqual(out["history_senders"], [bob])
        self.assertEqual(out["put_again"], 200)
        self.assertEqual(out["after"], ["carol again"])
