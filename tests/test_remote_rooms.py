"""Memberships across two whole fedservers started in-process on loopback TLS: knocks,
restricted joins, invite rejections (also with the inviting server down) as the users'
/sync shows them."""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase, TestCase

from fedserver.handlers.client.accounts import Requester
from fedserver.testing import loopback_config, start_server
from fedserver.handlers.federation.handshakes import MAX_STRIPPED_STATE, strip_received_state
from fedserver.errors import MatrixError
from fedserver.http.resource import iter_routes
from fedserver.service import FedserverService
from tests.test_federation_support import deferLater



STRIPPED_KEYS = {"type", "state_key", "sender", "content"}


class StripReceivedStateTests(SynchronousTestCase):
    def test_full_pdus_and_stripped_events_become_stripped_events(self):
        """Received invite/knock room state, as full PDUs (Matrix 1.16) or stripped
        events, keeps only type, state_key, sender and content; entries that are not
        state events are dropped; at most MAX_STRIPPED_STATE are kept."""
        pdu = {"type": "m.room.create", "state_key": "", "sender": "@a:x.test", "content": {"room_version": "12"},
               "auth_events": [], "prev_events": [], "depth": 1, "hashes": {"sha256": "x"}, "signatures": {},
               "origin_server_ts": 1, "unsigned": {"age": 3}}
        stripped = {"type": "m.room.name", "state_key": "", "sender": "@a:x.test", "content": {"name": "N"}}
        bad = [None, 3, "x", {"type": "m.room.topic"}, {"type": 1, "state_key": "", "sender": "@a:x.test", "content": {}},
               {"type": "m.room.topic", "state_key": "", "sender": "@a:x.test", "content": []}]
        self.assertEqual(
            strip_received_state([pdu, *bad, stripped]),
            [{"type": "m.room.create", "state_key": "", "sender": "@a:x.test", "content": {"room_version": "12"}}, stripped],
        )
        self.assertEqual(strip_received_state({"not": "a list"}), [])
        self.assertEqual(len(strip_received_state([stripped] * (MAX_STRIPPED_STATE + 5))), MAX_STRIPPED_STATE)


class Server:
    """One running fedserver and its users, driven through its room handlers."""

    def __init__(self, svc: FedserverService) -> None:
        self.svc = svc
        self.name = svc.config.server_name
        self._tokens = 0

    @property
    def rooms(self) -> Any:
        return self.svc.rooms

    async def user(self, localpart: str) -> Requester:
        user_id = f"@{localpart}:{self.name}"
        await self.svc.store.accounts.create_user(user_id, None)
        self._tokens += 1
        return Requester(user_id, "DEV", self._tokens)

    async def create_room(self, requester: Requester, version: str, **body: Any) -> str:
        result = await self.rooms.rooms.create_room(requester, {"room_version": version, **body})
        return result["room_id"]

    async def membership(self, room_id: str, user_id: str) -> Any:
        m = await self.svc.store.rooms.get_membership(room_id, user_id)
        return None if m is None else m.membership

    async def sync(self, requester: Requester, since: Any = None) -> dict:
        return await self.rooms.sync.sync(requester, since=since)


class TwoServersRoomsTests(TestCase):
    """Two fedservers named by loopback IP literals federating over real TLS."""

    timeout = 60

    async def start(self) -> Server:
        config = loopback_config(os.path.abspath(self.mktemp()), federation_client_timeout=10)
        return Server(await start_server(self, config))

    async def until(self, predicate, what: str) -> Any:
        for _ in range(2000):
            value = await predicate()
            if value:
                return value
            await deferLater(0.01)
        self.fail(f"timed out waiting for {what}")

    async def test_knock_is_sent_with_v1_send_knock_and_shown_in_sync(self):
        """A user of server A knocks on a knock room of server B: send_knock exists only as
        v1 (B serves no v2 route, so the knock arriving proves A used v1), B takes the knock
        in, and A's user sees the room under ``rooms.knock`` in /sync with B's stripped
        state; once invited and joined, the knock is gone."""
        a, b = await self.start(), await self.start()
        knock_route = ("PUT", "/send_knock/{room_id}/{event_id}")
        self.assertNotIn(knock_route, set(iter_routes(b.svc.federation_v2_resource)))
        self.assertIn(knock_route, set(iter_routes(b.svc.federation_resource)))
        alice, bob = await a.user("alice"), await b.user("bob")
        room = await b.create_room(bob, "12", preset="private_chat", name="Knock here", initial_state=[
            {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}},
        ])
        await a.rooms.membership.knock(alice.user_id, room, server_names=[b.name], reason="hello")
        self.assertEqual(await b.membership(room, alice.user_id), "knock")
        knocks = (await a.sync(alice))["rooms"]["knock"]
        self.assertIn(room, knocks)
        events = knocks[room]["knock_state"]["events"]
        self.assertIn({"type": "m.room.name", "state_key": "", "sender": bob.user_id, "content": {"name": "Knock here"}},
                      events)
        own = [e for e in events if e["type"] == "m.room.member" and e["state_key"] == alice.user_id]
        self.assertEqual([e["content"]["membership"] for e in own], ["knock"])
        self.assertIn("m.room.create", {e["type"] for e in events})
        for e in events:
            self.assertEqual(set(e), STRIPPED_KEYS)
        await b.rooms.membership.invite(bob.user_id, room, alice.user_id)
        invite_state = await self.until(lambda: self._invited(a, alice, room), "the invite to reach A")
        self.assertIn("m.room.create", {e["type"] for e in invite_state})
        for e in invite_state:
            self.assertEqual(set(e), STRIPPED_KEYS)
        await a.rooms.membership.join(alice.user_id, room)
        self.assertEqual(await b.membership(room, alice.user_id), "join")
        # A joined with partial state: /sync shows the room once A holds its full state.
        await a.svc.pipeline.wait_full_state(room)
        rooms = (await a.sync(alice))["rooms"]
        self.assertNotIn(room, rooms["knock"])
        self.assertNotIn(room, rooms["invite"])
        self.assertIn(room, rooms["join"])

    async def test_partial_send_join_answer_refused(self):
        """A resident that answers send_join with ``members_omitted: true`` although we did
        not ask for a partial state is not believed: nothing is stored from it and the next
        candidate is tried, whose full state gives the joining server every member."""
        b, c = await self.start(), await self.start()
        # A joins with the full state only (partial_state_joins off): omit_members unasked.
        config = loopback_config(
            os.path.abspath(self.mktemp()), federation_client_timeout=10, partial_state_joins=False
        )
        a = Server(await start_server(self, config))
        bob, carl, alice = await b.user("bob"), await c.user("carl"), await a.user("alice")
        room = await b.create_room(bob, "12", preset="public_chat")
        for i in range(3):
            member = await b.user(f"m{i}")
            await b.rooms.membership.join(member.user_id, room)
        await c.rooms.membership.join(carl.user_id, room, server_names=[b.name])
        # C joined with partial state (the default) and serves no make_join until its
        # resync is done (it answers 404 meanwhile): wait for that.
        await c.svc.pipeline.wait_full_state(room)
        honest = c.svc.handshakes._join_response

        async def partial(room_id, event, pdu, hosts, hosts_before):
            # A resident leaving the members out of the state (as for a partial join).
            answer = await (await honest(room_id, event, pdu, hosts, hosts_before)).collect()
            answer["state"] = [p for p in answer["state"] if p["type"] != "m.room.member"]
            answer["members_omitted"] = True
            return answer

        c.svc.handshakes._join_response = partial
        with self.assertRaises(MatrixError) as cm:
            await a.rooms.membership.join(alice.user_id, room, server_names=[c.name])
        self.assertEqual(cm.exception.code, 502)
        self.assertIn("members_omitted", cm.exception.error)
        self.assertIsNone(await a.svc.store.get_room_version(room))
        self.assertEqual(await a.svc.store.get_current_state_ids(room), {})
        # The liar first, then an honest resident: the join goes through the second.
        await a.rooms.membership.join(alice.user_id, room, server_names=[c.name, b.name])
        members = await a.svc.store.get_room_members(room, "join")
        self.assertEqual(set(members), set(await b.svc.store.get_room_members(room, "join")))
        self.assertEqual(len(members), 6)  # bob, m0-m2, carl, alice

    async def _invited(self, server: Server, requester: Requester, room: str) -> Any:
        entry = (await server.sync(requester))["rooms"]["invite"].get(room)
        return entry["invite_state"]["events"] if entry else None

    async def test_restricted_join_through_the_residents_countersignature(self):
        """A user of A who is in the room a restricted room of B allows gets a make_join
        template naming B's user as authoriser (B checks it as countersigned by itself,
        not as the unsigned template it is), and joins; before joining the allowed room
        (which B is in, so B can tell) the room looks non-existent to them (404, seed 004)."""
        a, b = await self.start(), await self.start()
        alice, bob = await a.user("alice"), await b.user("bob")
        allowed = await b.create_room(bob, "10", preset="public_chat")
        room = await b.create_room(bob, "10", preset="private_chat", initial_state=[{
            "type": "m.room.join_rules", "state_key": "",
            "content": {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": allowed}]},
        }])
        with self.assertRaises(MatrixError) as cm:
            await a.rooms.membership.join(alice.user_id, room, server_names=[b.name])
        self.assertEqual((cm.exception.code, cm.exception.errcode), (404, "M_NOT_FOUND"))
        await a.rooms.membership.join(alice.user_id, allowed, server_names=[b.name])
        await a.rooms.membership.join(alice.user_id, room, server_names=[b.name])
        self.assertEqual(await b.membership(room, alice.user_id), "join")
        self.assertEqual(await a.membership(room, alice.user_id), "join")
        state = await b.svc.store.get_current_state_events(room, [("m.room.member", alice.user_id)])
        join = state[("m.room.member", alice.user_id)]
        self.assertEqual(join.content["join_authorised_via_users_server"], bob.user_id)
        self.assertIn(b.name, join.signatures)

    async def test_rejected_invite_leaves_sync(self):
        """A user of A invited to a room of B rejects it through make_leave/send_leave: B
        sees the leave, and A's /sync no longer lists the invite (an incremental sync
        lists the room under ``leave``)."""
        a, b = await self.start(), await self.start()
        alice, bob = await a.user("alice"), await b.user("bob")
        room = await b.create_room(bob, "11", preset="private_chat")
        await b.rooms.membership.invite(bob.user_id, room, alice.user_id)
        first = await a.sync(alice)
        self.assertIn(room, first["rooms"]["invite"])
        await a.rooms.membership.leave(alice.user_id, room, reason="no")
        self.assertEqual(await b.membership(room, alice.user_id), "leave")
        self.assertNotIn(room, (await a.sync(alice))["rooms"]["invite"])
        later = await a.sync(alice, since=first["next_batch"])
        self.assertIn(room, later["rooms"]["leave"])
        [leave] = later["rooms"]["leave"][room]["timeline"]["events"]
        self.assertEqual((leave["sender"], leave["content"]["membership"]), (alice.user_id, "leave"))

    async def test_invite_rejected_while_the_inviting_server_is_down(self):
        """When no server of the room can be reached, rejecting a remote invite still
        answers (no error) and records an out-of-band leave here: the invite leaves the
        user's /sync, an incremental sync shows the leave. Without an invite there is
        nothing to reject locally: the error reaches the client."""
        a, b = await self.start(), await self.start()
        alice, bob = await a.user("alice"), await b.user("bob")
        room = await b.create_room(bob, "12", preset="private_chat")
        await b.rooms.membership.invite(bob.user_id, room, alice.user_id)
        first = await a.sync(alice)
        self.assertIn(room, first["rooms"]["invite"])
        await b.svc.stopService()
        await a.rooms.membership.leave(alice.user_id, room)
        self.assertNotIn(room, (await a.sync(alice))["rooms"]["invite"])
        later = await a.sync(alice, since=first["next_batch"])
        [leave] = later["rooms"]["leave"][room]["timeline"]["events"]
        self.assertEqual((leave["sender"], leave["content"]["membership"]), (alice.user_id, "leave"))
        carol = await a.user("carol")
        with self.assertRaises(MatrixError) as cm:
            await a.rooms.membership.leave(carol.user_id, "!unknown:" + b.name)
        self.assertEqual(cm.exception.code, 502)
