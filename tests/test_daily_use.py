"""Receipts, typing, presence, push rules and counts, pushers, tags, user directory and
.well-known, through the client API of whole fedservers started in-process (two of them
federating over loopback TLS where other servers matter)."""

from __future__ import annotations

import json
import os
from typing import Any, Optional
from urllib.parse import quote

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase
from twisted.web import resource, server
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from fedserver.testing import loopback_config, start_server
from tests.test_federation_support import deferLater


def q(value: str) -> str:
    return quote(value, safe="")


class _Bytes:
    """A request body producer (no cooperator)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> defer.Deferred:
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class Client:
    """A client of one running server's client API, over loopback HTTP."""

    def __init__(self, svc: Any) -> None:
        self.svc = svc
        self.name = svc.config.server_name
        self.base = f"http://127.0.0.1:{svc.client_listener.port.getHost().port}"
        self.agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))

    async def call(self, method: str, path: str, body: Any = None, token: Optional[str] = None) -> tuple[int, Any]:
        url = self.base + (path if path.startswith("/.well-known") or path.startswith("/_matrix") else "/_matrix/client/v3" + path)
        headers = Headers({b"Content-Type": [b"application/json"]})
        if token:
            headers.addRawHeader(b"Authorization", ("Bearer " + token).encode())
        producer = None if body is None else _Bytes(json.dumps(body).encode())
        response = await self.agent.request(method.encode(), url.encode(), headers, producer)
        raw = await readBody(response)
        return response.code, json.loads(raw) if raw else None

    async def ok(self, method: str, path: str, body: Any = None, token: Optional[str] = None) -> Any:
        code, answer = await self.call(method, path, body, token)
        assert code == 200, (method, path, code, answer)
        return answer

    async def register(self, localpart: str, displayname: Optional[str] = None) -> tuple[str, str]:
        answer = await self.ok("POST", "/register", {"username": localpart, "password": "pw-" + localpart,
                                                     "auth": {"type": "m.login.dummy"}})
        if displayname is not None:
            await self.ok("PUT", f"/profile/{q(answer['user_id'])}/displayname", {"displayname": displayname},
                          answer["access_token"])
        return answer["user_id"], answer["access_token"]

    async def sync(self, token: str, since: Optional[str] = None, flt: Optional[dict] = None) -> dict:
        path = "/sync?timeout=0"
        if since:
            path += "&since=" + q(since)
        if flt is not None:
            path += "&filter=" + q(json.dumps(flt))
        return await self.ok("GET", path, token=token)


class DailyUseTestCase(TestCase):
    timeout = 120

    async def server(self, **extra: Any) -> Client:
        config = loopback_config(os.path.abspath(self.mktemp()), federation_client_timeout=10,
                                 enable_registration=True, **extra)
        svc = await start_server(self, config)
        return Client(svc)

    async def until(self, predicate: Any, what: str) -> Any:
        for _ in range(1500):
            value = await predicate()
            if value:
                return value
            await deferLater(0.02)
        self.fail(f"timed out waiting for {what}")

    def assertError(self, result: tuple[int, Any], code: int, errcode: str) -> None:
        status, body = result
        self.assertEqual((status, (body or {}).get("errcode")), (code, errcode), body)
        self.assertIsInstance(body["error"], str)

    async def shared_room(self, a: Client, a_token: str, b: Client, b_token: str, alias: str) -> str:
        room_id = (await a.ok("POST", "/createRoom", {"preset": "public_chat", "room_alias_name": alias}, a_token))["room_id"]
        await b.ok("POST", f"/join/{q('#' + alias + ':' + a.name)}", {}, b_token)
        return room_id


def _ephemeral(sync: dict, room_id: str, event_type: str) -> list[dict]:
    room = sync["rooms"]["join"].get(room_id, {})
    return [e for e in room.get("ephemeral", {}).get("events", []) if e["type"] == event_type]


def _counts(sync: dict, room_id: str) -> Optional[dict]:
    return sync["rooms"]["join"].get(room_id, {}).get("unread_notifications")


class AcrossServersTests(DailyUseTestCase):
    async def test_receipts_typing_and_presence_both_ways(self):
        """Alice on server A and Bob on server B share a room. Bob's unread count for
        Alice's message is 1 and drops to 0 with his read receipt, which Alice sees in
        /sync (an m.receipt EDU); his private receipt reaches nobody else. Alice's typing
        reaches Bob's /sync and stops when she stops; Bob's typing reaches Alice. Alice's
        presence (online, with a status) reaches Bob through /sync and GET .../status."""
        a, b = await self.server(), await self.server()
        alice, at = await a.register("alice", "Alice")
        bob, bt = await b.register("bob")
        room = await self.shared_room(a, at, b, bt, "lobby")
        sent = (await a.ok("PUT", f"/rooms/{q(room)}/send/m.room.message/t1", {"msgtype": "m.text", "body": "hello"}, at))["event_id"]

        async def bob_sees_message():
            s = await b.sync(bt)
            events = s["rooms"]["join"].get(room, {}).get("timeline", {}).get("events", [])
            return s if any(e["event_id"] == sent for e in events) else None

        first = await self.until(bob_sees_message, "Bob to receive Alice's message")
        self.assertEqual(_counts(first, room), {"highlight_count": 0, "notification_count": 1})
        await b.ok("POST", f"/rooms/{q(room)}/receipt/m.read/{q(sent)}", {}, bt)
        after = await b.sync(bt, first["next_batch"])
        self.assertEqual(_counts(after, room), {"highlight_count": 0, "notification_count": 0})
        own = _ephemeral(after, room, "m.receipt")
        self.assertEqual(list(own[0]["content"][sent]["m.read"]), [bob])

        async def alice_sees_receipt():
            s = await a.sync(at)
            receipts = _ephemeral(s, room, "m.receipt")
            return receipts and bob in receipts[0]["content"].get(sent, {}).get("m.read", {})

        await self.until(alice_sees_receipt, "Bob's receipt to reach Alice")
        await b.ok("POST", f"/rooms/{q(room)}/receipt/m.read.private/{q(sent)}", {}, bt)
        mine = _ephemeral(await b.sync(bt), room, "m.receipt")[0]["content"][sent]
        self.assertIn(bob, mine["m.read.private"])
        theirs = _ephemeral(await a.sync(at), room, "m.receipt")[0]["content"][sent]
        self.assertNotIn("m.read.private", theirs)

        # Typing, both ways.
        base = (await b.sync(bt))["next_batch"]
        await a.ok("PUT", f"/rooms/{q(room)}/typing/{q(alice)}", {"typing": True, "timeout": 20000}, at)

        async def bob_sees_typing(expected):
            s = await b.sync(bt, base)
            typing = _ephemeral(s, room, "m.typing")
            return typing and typing[-1]["content"]["user_ids"] == expected

        await self.until(lambda: bob_sees_typing([alice]), "Alice's typing to reach Bob")
        await a.ok("PUT", f"/rooms/{q(room)}/typing/{q(alice)}", {"typing": False}, at)
        await self.until(lambda: bob_sees_typing([]), "Alice's typing to stop for Bob")
        await b.ok("PUT", f"/rooms/{q(room)}/typing/{q(bob)}", {"typing": True}, bt)

        async def alice_sees_typing():
            typing = _ephemeral(await a.sync(at), room, "m.typing")
            return typing and typing[0]["content"]["user_ids"] == [bob]

        await self.until(alice_sees_typing, "Bob's typing to reach Alice")

        # Presence.
        await a.ok("PUT", f"/presence/{q(alice)}/status", {"presence": "online", "status_msg": "at lunch"}, at)

        async def bob_sees_presence():
            status = await b.ok("GET", f"/presence/{q(alice)}/status", token=bt)
            return status if status.get("status_msg") == "at lunch" else None

        status = await self.until(bob_sees_presence, "Alice's presence to reach Bob")
        self.assertEqual(status["presence"], "online")
        events = (await b.sync(bt))["presence"]["events"]
        self.assertIn(alice, [e["sender"] for e in events])
        self.assertEqual(
            [e["content"]["status_msg"] for e in events if e["sender"] == alice], ["at lunch"]
        )
        loner, lt = await a.register("loner")
        self.assertError(await a.call("GET", f"/presence/{q(bob)}/status", token=lt), 403, "M_FORBIDDEN")

    async def test_presence_announced_on_joining_a_remote_room(self):
        """Alice sets her presence before she shares any room with Bob's server; when she
        joins Bob's room, Bob sees her presence at once (A announces it to the room's
        servers on her join), without her changing it again."""
        a, b = await self.server(), await self.server()
        alice, at = await a.register("alice", "Alice")
        bob, bt = await b.register("bob")
        await a.ok("PUT", f"/presence/{q(alice)}/status", {"presence": "online", "status_msg": "just arrived"}, at)
        await self.shared_room(b, bt, a, at, "porch")

        async def bob_sees_presence():
            status = await b.ok("GET", f"/presence/{q(alice)}/status", token=bt)
            return status if status.get("status_msg") == "just arrived" else None

        status = await self.until(bob_sees_presence, "Alice's presence to reach Bob after her join")
        self.assertEqual(status["presence"], "online")

    async def test_edus_about_users_of_other_servers_are_ignored(self):
        """m.receipt, m.typing and m.presence EDUs from server B about a user of server A
        (or of a third server) change nothing: Server-Server API, the sender's own users
        only (HOSTILE rows 35's rule for these EDUs); also a receipt of B's user who is not
        in the room is ignored."""
        a, b = await self.server(), await self.server()
        alice, at = await a.register("alice")
        bob, bt = await b.register("bob")
        room = await self.shared_room(a, at, b, bt, "edus")
        sent = (await a.ok("PUT", f"/rooms/{q(room)}/send/m.room.message/t1", {"msgtype": "m.text", "body": "x"}, at))["event_id"]
        eph = a.svc.ephemeral
        for user in (alice, "@mallory:elsewhere.example", f"@stranger:{b.name}"):
            await eph.receipts.on_edu(b.name, {room: {"m.read": {user: {"event_ids": [sent], "data": {"ts": 1}}}}})
            await eph.typing.on_edu(b.name, {"room_id": room, "user_id": user, "typing": True})
            await eph.presence.on_edu(b.name, {"push": [{"user_id": user, "presence": "unavailable", "status_msg": "hacked",
                                                         "last_active_ago": 1}]})
        self.assertEqual(await a.svc.store.receipts.get_user_receipts(room, alice), [])
        self.assertEqual(await a.svc.store.receipts.get_user_receipts(room, f"@stranger:{b.name}"), [])
        self.assertEqual(eph.typing.typing_users(room), [])
        presence = await a.svc.store.presence.get_presence([alice, "@mallory:elsewhere.example"])
        self.assertNotIn("@mallory:elsewhere.example", presence)
        self.assertNotEqual(presence.get(alice) and presence[alice].status_msg, "hacked")
        # The same EDUs about B's own joined user are taken.
        await eph.typing.on_edu(b.name, {"room_id": room, "user_id": bob, "typing": True})
        self.assertEqual(eph.typing.typing_users(room), [bob])
        await eph.receipts.on_edu(b.name, {room: {"m.read": {bob: {"event_ids": [sent], "data": {"ts": 5, "junk": "x" * 10}}}}})
        stored = await a.svc.store.receipts.get_user_receipts(room, bob)
        self.assertEqual([(r.event_id, r.data) for r in stored], [(sent, {"ts": 5})])

    async def test_user_directory_finds_local_and_room_sharing_remote_users(self):
        """/user_directory/search finds local users by id or display name, remote users
        who share a room with the searcher (by their member event), not remote users in
        no shared or public room; limited says whether the limit cut results; bad bodies
        get 400."""
        a, b = await self.server(), await self.server()
        alice, at = await a.register("alice", "Alice Liddell")
        await a.register("albert", "Bert")
        bob, bt = await b.register("bob", "Bobby Tables")
        carol, ct = await b.register("carol", "Bobby Carol")
        room = await self.shared_room(a, at, b, bt, "dir")
        await b.ok("POST", "/createRoom", {"preset": "private_chat"}, ct)

        async def search(term, limit=10):
            return await a.ok("POST", "/user_directory/search", {"search_term": term, "limit": limit}, at)

        async def found_bob():
            return [r["user_id"] for r in (await search("bobby"))["results"]] == [bob]

        await self.until(found_bob, "Bob to be in the directory")
        self.assertEqual((await search("bobby"))["results"][0]["display_name"], "Bobby Tables")
        self.assertEqual([r["user_id"] for r in (await search("LIDDELL"))["results"]], [alice])
        al = await search("al", limit=1)
        self.assertEqual((len(al["results"]), al["limited"]), (1, True))
        self.assertEqual({r["user_id"] for r in (await search("al"))["results"]}, {alice, f"@albert:{a.name}"})
        self.assertEqual((await search("carol"))["results"], [])
        self.assertError(await a.call("POST", "/user_directory/search", {"limit": 3}, at), 400, "M_MISSING_PARAM")
        self.assertError(await a.call("POST", "/user_directory/search", {"search_term": 3}, at), 400, "M_BAD_JSON")
        await b.ok("POST", f"/rooms/{q(room)}/leave", {}, bt)

        async def bob_gone():
            return (await search("bobby"))["results"] == []

        await self.until(bob_gone, "Bob to leave the directory of A once he left the shared room")


class OneServerTests(DailyUseTestCase):
    async def test_push_rules_api(self):
        """GET /pushrules/ gives the spec's default rules; a rule is added, placed with
        before/after, read back, disabled, given actions and deleted; bad requests get
        the spec's errors; a change reaches /sync as m.push_rules account data."""
        a = await self.server()
        alice, at = await a.register("alice")
        rules = await a.ok("GET", "/pushrules/", token=at)
        self.assertIn(".m.rule.is_user_mention", [r["rule_id"] for r in rules["global"]["override"]])
        self.assertEqual(rules["global"]["content"][0]["pattern"], "alice")
        first = await a.sync(at)
        pushed = [e for e in first["account_data"]["events"] if e["type"] == "m.push_rules"]
        self.assertEqual(pushed[0]["content"], rules)
        await a.ok("PUT", "/pushrules/global/override/one", {"actions": ["notify"], "conditions": [
            {"kind": "event_match", "key": "content.body", "pattern": "cake"}]}, at)
        await a.ok("PUT", "/pushrules/global/override/two?before=one", {"actions": []}, at)
        order = [r["rule_id"] for r in (await a.ok("GET", "/pushrules/global/", token=at))["override"]]
        self.assertEqual(order[:3], [".m.rule.master", "two", "one"])
        self.assertEqual((await a.ok("GET", "/pushrules/global/override/one", token=at))["conditions"][0]["pattern"], "cake")
        await a.ok("PUT", "/pushrules/global/override/one/enabled", {"enabled": False}, at)
        self.assertEqual(await a.ok("GET", "/pushrules/global/override/one/enabled", token=at), {"enabled": False})
        await a.ok("PUT", "/pushrules/global/underride/.m.rule.message/actions", {"actions": ["dont_notify"]}, at)
        self.assertEqual(await a.ok("GET", "/pushrules/global/underride/.m.rule.message/actions", token=at), {"actions": []})
        after = await a.sync(at, first["next_batch"])
        pushed = [e for e in after["account_data"]["events"] if e["type"] == "m.push_rules"]
        self.assertEqual([r["rule_id"] for r in pushed[0]["content"]["global"]["override"]][:3], [".m.rule.master", "two", "one"])
        await a.ok("DELETE", "/pushrules/global/override/two", token=at)
        self.assertError(await a.call("GET", "/pushrules/global/override/two", token=at), 404, "M_NOT_FOUND")
        self.assertError(await a.call("DELETE", "/pushrules/global/override/two", token=at), 404, "M_NOT_FOUND")
        self.assertError(await a.call("PUT", "/pushrules/global/override/.mine", {"actions": []}, at), 400, "M_INVALID_PARAM")
        self.assertError(await a.call("PUT", "/pushrules/global/override/x?after=nope", {"actions": []}, at), 400, "M_UNKNOWN")
        self.assertError(await a.call("PUT", "/pushrules/global/bogus/x", {"actions": []}, at), 400, "M_INVALID_PARAM")
        self.assertError(await a.call("PUT", "/pushrules/global/content/x", {"actions": []}, at), 400, "M_MISSING_PARAM")
        self.assertError(await a.call("PUT", "/pushrules/global/override/one/enabled", {"enabled": "no"}, at), 400, "M_INVALID_PARAM")
        self.assertError(await a.call("GET", "/pushrules/device/override/one", token=at), 404, "M_NOT_FOUND")
        self.assertError(await a.call("GET", "/pushrules/"), 401, "M_MISSING_TOKEN")

    async def test_push_rules_follow_a_room_upgrade(self):
        """A room's push rules follow its upgrade: the upgrader's at once, a member's when
        they join the replacement room (client-server spec, "Room Upgrades": the user's
        personalized settings are transferred), and /sync says the rules changed."""
        a = await self.server()
        alice, at = await a.register("alice")
        bob, bt = await a.register("bob")
        old = (await a.ok("POST", "/createRoom", {"preset": "public_chat", "room_version": "10"}, at))["room_id"]
        await a.ok("POST", f"/rooms/{old}/join", {}, bt)
        await a.ok("PUT", f"/pushrules/global/room/{old}", {"actions": []}, at)
        def q(rule_id):
            return quote(rule_id, safe="")

        await a.ok("PUT", f"/pushrules/global/override/{q('quiet ' + old)}", {"actions": [], "conditions": [
            {"kind": "event_match", "key": "room_id", "pattern": old}]}, bt)
        bob_sync = await a.sync(bt)
        new = (await a.ok("POST", f"/rooms/{old}/upgrade", {"new_version": "11"}, at))["replacement_room"]
        self.assertEqual((await a.ok("GET", f"/pushrules/global/room/{new}", token=at))["rule_id"], new)
        self.assertError(await a.call("GET", f"/pushrules/global/override/{q('quiet ' + new)}", token=bt), 404, "M_NOT_FOUND")
        await a.ok("POST", f"/rooms/{new}/join", {}, bt)
        copied = await a.ok("GET", f"/pushrules/global/override/{q('quiet ' + new)}", token=bt)
        self.assertEqual(copied["conditions"], [{"kind": "event_match", "key": "room_id", "pattern": new}])
        after = await a.sync(bt, bob_sync["next_batch"])
        pushed = [e for e in after["account_data"]["events"] if e["type"] == "m.push_rules"]
        self.assertIn(f"quiet {new}", [r["rule_id"] for r in pushed[0]["content"]["global"]["override"]])

    async def test_counts_threads_receipts_and_notifications(self):
        """Bob's messages notify Alice: a mention highlights, a thread reply counts in its
        thread when the filter asks for unread_thread_notifications (else in the room's
        total); a threaded receipt clears only its thread, an unthreaded one everything,
        and her own message clears the main timeline; /notifications lists them newest
        first with read flags, only=highlight and paging."""
        a = await self.server()
        alice, at = await a.register("alice", "Alice")
        bob, bt = await a.register("bob")
        carol, ct = await a.register("carol")
        room = (await a.ok("POST", "/createRoom", {"preset": "public_chat"}, bt))["room_id"]
        for token in (at, ct):
            await a.ok("POST", f"/rooms/{q(room)}/join", {}, token)

        async def send(body, txn, **content):
            return (await a.ok("PUT", f"/rooms/{q(room)}/send/m.room.message/{txn}",
                               {"msgtype": "m.text", "body": body, **content}, bt))["event_id"]

        root = await send("root", "1")
        mention = await send("hey you", "2", **{"m.mentions": {"user_ids": [alice]}})
        reply = await send("in thread", "3", **{"m.relates_to": {"rel_type": "m.thread", "event_id": root}})
        flt = {"room": {"timeline": {"unread_thread_notifications": True}}}
        s = await a.sync(at, flt=flt)
        joined = s["rooms"]["join"][room]
        self.assertEqual(joined["unread_notifications"], {"highlight_count": 1, "notification_count": 2})
        self.assertEqual(joined["unread_thread_notifications"], {root: {"highlight_count": 0, "notification_count": 1}})
        self.assertEqual(_counts(await a.sync(at), room), {"highlight_count": 1, "notification_count": 3})
        await a.ok("POST", f"/rooms/{q(room)}/receipt/m.read/{q(reply)}", {"thread_id": root}, at)
        s2 = await a.sync(at, s["next_batch"], flt=flt)
        self.assertEqual(s2["rooms"]["join"][room]["unread_notifications"]["notification_count"], 2)
        self.assertNotIn("unread_thread_notifications", s2["rooms"]["join"][room])
        self.assertError(await a.call("POST", f"/rooms/{q(room)}/receipt/m.read/{q(reply)}", {"thread_id": "main"}, at),
                         400, "M_INVALID_PARAM")
        self.assertError(await a.call("POST", f"/rooms/{q(room)}/receipt/m.fully_read/{q(reply)}", {"thread_id": root}, at),
                         400, "M_INVALID_PARAM")
        page = await a.ok("GET", "/notifications?limit=2", token=at)
        self.assertEqual([n["event"]["event_id"] for n in page["notifications"]], [reply, mention])
        self.assertEqual([n["read"] for n in page["notifications"]], [True, False])
        rest = await a.ok("GET", f"/notifications?from={page['next_token']}", token=at)
        self.assertEqual([n["event"]["event_id"] for n in rest["notifications"]], [root])
        self.assertNotIn("next_token", rest)
        high = await a.ok("GET", "/notifications?only=highlight", token=at)
        self.assertEqual([n["event"]["event_id"] for n in high["notifications"]], [mention])
        self.assertError(await a.call("GET", "/notifications?from=abc", token=at), 400, "M_INVALID_PARAM")
        # Her own message marks the main timeline read.
        me = (await a.ok("PUT", f"/rooms/{q(room)}/send/m.room.message/a1", {"msgtype": "m.text", "body": "me"}, at))["event_id"]
        self.assertEqual(_counts(await a.sync(at), room), {"highlight_count": 0, "notification_count": 0})
        # Carol reads with an unthreaded private receipt; nobody else sees it.
        await a.ok("POST", f"/rooms/{q(room)}/read_markers", {"m.fully_read": reply, "m.read.private": me}, ct)
        cs = await a.sync(ct)
        self.assertEqual(_counts(cs, room), {"highlight_count": 0, "notification_count": 0})
        fully = [e for e in cs["rooms"]["join"][room]["account_data"]["events"] if e["type"] == "m.fully_read"]
        self.assertEqual(fully[0]["content"], {"event_id": reply})
        receipts = _ephemeral(await a.sync(bt), room, "m.receipt")
        self.assertNotIn(carol, json.dumps(receipts))
        self.assertError(await a.call("POST", f"/rooms/{q(room)}/receipt/m.read/{q('$nope')}", {}, at), 404, "M_NOT_FOUND")
        self.assertError(await a.call("POST", f"/rooms/{q(room)}/receipt/m.bogus/{q(reply)}", {}, at), 400, "M_INVALID_PARAM")
        self.assertError(await a.call("PUT", f"/rooms/{q(room)}/typing/{q(bob)}", {"typing": True}, at), 403, "M_FORBIDDEN")
        self.assertError(await a.call("PUT", f"/rooms/{q(room)}/typing/{q(alice)}", {"typing": "yes"}, at), 400, "M_BAD_JSON")
        self.assertError(await a.call("PUT", f"/presence/{q(alice)}/status", {"presence": "away"}, at), 400, "M_INVALID_PARAM")

    async def test_typing_times_out(self):
        """A typing notification with a short timeout disappears from /sync by itself."""
        a = await self.server()
        alice, at = await a.register("alice")
        bob, bt = await a.register("bob")
        room = (await a.ok("POST", "/createRoom", {"preset": "public_chat"}, at))["room_id"]
        await a.ok("POST", f"/rooms/{q(room)}/join", {}, bt)
        base = (await a.sync(bt))["next_batch"]
        await a.ok("PUT", f"/rooms/{q(room)}/typing/{q(alice)}", {"typing": True, "timeout": 300}, at)
        typing = _ephemeral(await a.sync(bt, base), room, "m.typing")
        self.assertEqual(typing[0]["content"]["user_ids"], [alice])

        async def stopped():
            t = _ephemeral(await a.sync(bt, base), room, "m.typing")
            return t and t[0]["content"]["user_ids"] == []

        await self.until(stopped, "the typing notification to time out")

    async def test_pushers_and_gateway_delivery(self):
        """A pusher set with /pushers/set is listed; a message to its user is POSTed to the
        (loopback) push gateway with the event, counts and the device; a pushkey the
        gateway rejects loses its pusher; kind null deletes; bad pushers get 400."""
        received: list[dict] = []
        answers = [{"rejected": []}, {"rejected": ["key1"]}]

        class Gateway(resource.Resource):
            isLeaf = True

            def render_POST(self, request):
                received.append(json.loads(request.content.read()))
                return json.dumps(answers[min(len(received) - 1, 1)]).encode()

        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(server.Site(Gateway()))
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/_matrix/push/v1/notify"
        a = await self.server(push_gateway_allow_http=True, push_gateway_allow_private_addresses=True)
        alice, at = await a.register("alice")
        bob, bt = await a.register("bob")
        pusher = {"kind": "http", "app_id": "org.example.app", "pushkey": "key1", "app_display_name": "App",
                  "device_display_name": "Phone", "lang": "en", "data": {"url": url, "format": "event_id_only"}}
        await a.ok("POST", "/pushers/set", pusher, at)
        listed = (await a.ok("GET", "/pushers", token=at))["pushers"]
        self.assertEqual([(p["pushkey"], p["data"]["url"]) for p in listed], [("key1", url)])
        room = (await a.ok("POST", "/createRoom", {"preset": "public_chat", "name": "Chat"}, bt))["room_id"]
        await a.ok("POST", f"/rooms/{q(room)}/join", {}, at)
        sent = (await a.ok("PUT", f"/rooms/{q(room)}/send/m.room.message/1", {"msgtype": "m.text", "body": "ping"}, bt))["event_id"]
        await self.until(lambda: defer.succeed(received), "the gateway to be called")
        note = received[0]["notification"]
        self.assertEqual((note["event_id"], note["room_id"], note["counts"]), (sent, room, {"unread": 1}))
        self.assertNotIn("content", note)  # event_id_only
        self.assertEqual(note["devices"][0]["pushkey"], "key1")
        self.assertEqual(note["devices"][0]["data"], {"format": "event_id_only"})
        self.assertEqual(note["devices"][0]["tweaks"], {"sound": "default"})
        await a.ok("PUT", f"/rooms/{q(room)}/send/m.room.message/2", {"msgtype": "m.text", "body": "again"}, bt)
        await self.until(lambda: defer.succeed(len(received) == 2), "the second notification")

        async def pusher_gone():
            return (await a.ok("GET", "/pushers", token=at))["pushers"] == []

        await self.until(pusher_gone, "the rejected pushkey's pusher to be removed")
        await a.ok("POST", "/pushers/set", {**pusher, "pushkey": "key2"}, at)
        await a.ok("POST", "/pushers/set", {"kind": None, "app_id": "org.example.app", "pushkey": "key2"}, at)
        self.assertEqual((await a.ok("GET", "/pushers", token=at))["pushers"], [])
        bad_url = {**pusher, "data": {"url": url.replace("/notify", "/other")}}
        self.assertError(await a.call("POST", "/pushers/set", bad_url, at), 400, "M_INVALID_PARAM")
        self.assertError(await a.call("POST", "/pushers/set", {"kind": "http", "app_id": "x", "pushkey": "y"}, at),
                         400, "M_MISSING_PARAM")
        self.assertError(await a.call("POST", "/pushers/set", {**pusher, "kind": "email"}, at), 400, "M_INVALID_PARAM")
        strict = await self.server()
        _, st = await strict.register("sam")
        self.assertError(await strict.call("POST", "/pushers/set", pusher, st), 400, "M_INVALID_PARAM")

    async def test_tags(self):
        """Tags are added, listed, reach /sync as the room's m.tag account data, and are
        removed; another user's tags are refused; an overlong tag name gets 400."""
        a = await self.server()
        alice, at = await a.register("alice")
        bob, bt = await a.register("bob")
        room = (await a.ok("POST", "/createRoom", {}, at))["room_id"]
        base = (await a.sync(at))["next_batch"]
        path = f"/user/{q(alice)}/rooms/{q(room)}/tags"
        await a.ok("PUT", f"{path}/m.favourite", {"order": 0.25}, at)
        await a.ok("PUT", f"{path}/u.work", {}, at)
        self.assertEqual(await a.ok("GET", path, token=at), {"tags": {"m.favourite": {"order": 0.25}, "u.work": {}}})
        s = await a.sync(at, base)
        tags = [e for e in s["rooms"]["join"][room]["account_data"]["events"] if e["type"] == "m.tag"]
        self.assertEqual(tags[0]["content"]["tags"]["m.favourite"], {"order": 0.25})
        await a.ok("DELETE", f"{path}/u.work", token=at)
        self.assertEqual(await a.ok("GET", path, token=at), {"tags": {"m.favourite": {"order": 0.25}}})
        self.assertError(await a.call("GET", path, token=bt), 403, "M_FORBIDDEN")
        self.assertError(await a.call("PUT", f"{path}/{'x' * 256}", {}, at), 400, "M_INVALID_PARAM")
        self.assertError(await a.call("PUT", f"{path}/u.x", {"order": "first"}, at), 400, "M_BAD_JSON")

    async def test_well_known(self):
        """With serve_well_known, /.well-known/matrix/server and /client answer on the
        client listener (defaults: the server name's host on 443, https base URL), with
        CORS headers; without it they are 404 M_UNRECOGNIZED."""
        plain = await self.server()
        self.assertError(await plain.call("GET", "/.well-known/matrix/server"), 404, "M_UNRECOGNIZED")
        served = await self.server(serve_well_known=True)
        host = served.name.split(":")[0]
        self.assertEqual(await served.ok("GET", "/.well-known/matrix/server"), {"m.server": f"{host}:443"})
        self.assertEqual(await served.ok("GET", "/.well-known/matrix/client"), {"m.homeserver": {"base_url": f"https://{host}"}})
        custom = await self.server(serve_well_known=True, well_known_server="matrix.example.org:8448",
                                   public_baseurl="https://matrix.example.org/")
        self.assertEqual(await custom.ok("GET", "/.well-known/matrix/server"), {"m.server": "matrix.example.org:8448"})
        self.assertEqual(await custom.ok("GET", "/.well-known/matrix/client"),
                         {"m.homeserver": {"base_url": "https://matrix.example.org"}})
