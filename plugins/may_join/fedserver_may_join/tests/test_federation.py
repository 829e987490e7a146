"""Whole fedservers in one process, federating over loopback TLS: two with the plugin agree
on a may_join room; one without it is answered M_INCOMPATIBLE_ROOM_VERSION."""

from __future__ import annotations

import os

from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase

from fedserver.federation.client import HttpResponseError, fed_path
from fedserver.handlers.client.accounts import Requester
from fedserver.testing import loopback_config, start_server
from fedserver.errors import MatrixError
from fedserver.service import FedserverService

VERSION = "org.fedserver.may_join.12"



class MayJoinFederationTests(TestCase):
    """Servers named by loopback IP literals; every server loads the installed plugin
    through its entry point unless its configuration disables it."""

    timeout = 120

    async def start(self, **extra) -> FedserverService:
        return await start_server(self, loopback_config(os.path.abspath(self.mktemp()), **extra))

    async def user(self, svc: FedserverService, localpart: str) -> Requester:
        user_id = f"@{localpart}:{svc.config.server_name}"
        await svc.store.accounts.create_user(user_id, None)
        return Requester(user_id, "DEV", 1)

    async def until(self, predicate, what: str):
        for _ in range(2000):
            value = await predicate()
            if value:
                return value
            await task.deferLater(reactor, 0.01, lambda: None)
        self.fail(f"timed out waiting for {what}")

    async def may_join_room(self, a: FedserverService, listed: list[str]) -> tuple[Requester, str]:
        alice = await self.user(a, "alice")
        created = await a.rooms.rooms.create_room(alice, {
            "room_version": VERSION,
            "initial_state": [{"type": "m.room.join_rules", "state_key": "",
                               "content": {"join_rule": "org.fedserver.may_join", "may_join": listed}}],
        })
        return alice, created["room_id"]

    async def test_two_servers_agree_on_a_may_join_room(self):
        """A listed user of B joins A's room over federation (make_join / send_join in
        the plugin's version); an unlisted user of B is refused and never becomes a
        member; B's message reaches A; both servers end with the same current state."""
        a = await self.start()
        b = await self.start()
        self.assertIn(VERSION, a.room_versions)
        bob = await self.user(b, "bob")
        carol = await self.user(b, "carol")
        alice, room_id = await self.may_join_room(a, [bob.user_id])

        await b.rooms.membership.join(bob.user_id, room_id, server_names=[a.config.server_name])
        self.assertEqual((await b.store.get_room_version(room_id)).identifier, VERSION)

        async def a_sees_bob():
            return bob.user_id in await a.store.get_room_members(room_id)

        await self.until(a_sees_bob, "A to hold Bob's join")
        with self.assertRaises(MatrixError) as cm:
            await b.rooms.membership.join(carol.user_id, room_id, server_names=[a.config.server_name])
        self.assertEqual(cm.exception.code, 403, cm.exception.error)
        self.assertNotIn(carol.user_id, await a.store.get_room_members(room_id, "join"))

        event_id = await b.rooms.rooms.send_event(
            bob, room_id, "m.room.message", {"msgtype": "m.text", "body": "hello from B"}, "t1")

        async def delivered():
            return await a.store.get_event(event_id)

        await self.until(delivered, "B's message to reach A")
        await a.rooms.rooms.send_event(alice, room_id, "m.room.message", {"msgtype": "m.text", "body": "hi"}, "t2")

        async def agreed():
            sa, sb = await a.store.get_current_state_ids(room_id), await b.store.get_current_state_ids(room_id)
            return sa == sb and (sa, sb)

        state, _ = await self.until(agreed, "both servers to agree on the room's state")
        self.assertEqual(state[("m.room.member", bob.user_id)],
                         (await a.store.get_current_state_ids(room_id))[("m.room.member", bob.user_id)])
        self.assertNotIn(("m.room.member", carol.user_id), state)

    async def test_server_without_the_plugin_cannot_join(self):
        """A server with the plugin disabled does not offer the version: the resident
        answers its make_join with 400 M_INCOMPATIBLE_ROOM_VERSION naming the room's
        version, and its user's join fails without any event in the room."""
        a = await self.start()
        c = await self.start(disabled_plugins=["may_join"])
        self.assertNotIn(VERSION, c.room_versions)
        dave = await self.user(c, "dave")
        _, room_id = await self.may_join_room(a, [dave.user_id])
        before = await a.store.get_current_state_ids(room_id)

        path = fed_path("/_matrix/federation/v1/make_join/{}/{}", room_id, dave.user_id)
        with self.assertRaises(HttpResponseError) as cm:
            await c.federation_client.get_json(a.config.server_name, path, {"ver": c.room_versions.identifiers()})
        e = cm.exception
        self.assertEqual((e.code, e.errcode, e.json.get("room_version")), (400, "M_INCOMPATIBLE_ROOM_VERSION", VERSION))

        with self.assertRaises(MatrixError):
            await c.rooms.membership.join(dave.user_id, room_id, server_names=[a.config.server_name])
        self.assertEqual(await a.store.get_current_state_ids(room_id), before)
        self.assertIsNone(await c.store.get_room_version(room_id))
