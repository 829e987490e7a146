"""Whole fedservers in one process over loopback TLS with the small policy server: a room on
A names it; events B sends are signed on request or soft-failed by A, our events carry the
signature to B, and the room keeps working."""

from __future__ import annotations

import os

from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase

from fedserver.handlers.client.accounts import Requester
from fedserver.testing import loopback_config, start_server
from fedserver.service import FedserverService

from fedserver_policy_server.room_policy import POLICY_KEY_ID, has_valid_signature, policy_server_from_content
from fedserver_policy_server.tests.policy_server import start_policy_server

#: The plugin's entry point name, so its per-server checker's name.
CHECKER = "policy_server.checker"



class PolicyServerFederationTests(TestCase):
    """A (the room's server) honours the policy server; B has the plugin disabled, like
    a server that never asks a policy server, so its refused events reach A unsigned."""

    timeout = 120

    async def start(self, **extra) -> FedserverService:
        return await start_server(self, loopback_config(os.path.abspath(self.mktemp()), **extra))

    def start_plugin(self, svc: FedserverService, **options) -> None:
        """``fedserver_on_start`` with these options (a server that calls it at start gets
        a fresh checker here: the plugin replaces its own)."""
        svc.plugin_manager.hook.fedserver_on_start(
            reactor=reactor, server_name=svc.config.server_name, federation_client=svc.federation_client,
            store=svc.store, plugin_manager=svc.plugin_manager, plugin_config={"policy_server": options},
        )

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

    async def arrived(self, svc: FedserverService, event_id: str):
        async def stored():
            return (await svc.store.get_event_meta([event_id])).get(event_id)

        return await self.until(stored, f"{event_id} to reach {svc.config.server_name}")

    async def test_room_with_a_policy_server(self):
        """B's join and messages are signed on A's request and accepted; B's refused
        message is soft-failed on A (stored, not accepted, refused by the plugin) while
        B's next message is accepted; A's own messages reach B with the policy server's
        signature; every /sign request is X-Matrix signed by A."""
        a = await self.start()
        b = await self.start(disabled_plugins=["policy_server"])
        self.start_plugin(a)
        self.assertIsNotNone(a.plugin_manager.get_plugin(CHECKER))
        self.assertIsNone(b.plugin_manager.get_plugin("policy_server"))
        ps = await start_policy_server(reactor, os.path.abspath(self.mktemp()))
        self.addCleanup(ps.stop)
        a_name = a.config.server_name

        alice = await self.user(a, "alice")
        bob = await self.user(b, "bob")
        room_id = (await a.rooms.rooms.create_room(alice, {"preset": "public_chat"}))["room_id"]
        await a.rooms.rooms.set_state(alice, room_id, "m.room.policy", "", ps.policy_content())
        await ps.join(a_name, room_id)
        self.assertIn(ps.server_name, await a.store.get_joined_hosts(room_id))

        await b.rooms.membership.join(bob.user_id, room_id, server_names=[a_name])
        join_id = (await a.store.get_current_state_ids(room_id))[("m.room.member", bob.user_id)]
        self.assertEqual([r["answer"] for r in ps.requests_for(join_id)], ["sign_all"])

        hello = await b.rooms.rooms.send_event(bob, room_id, "m.room.message", {"msgtype": "m.text", "body": "hello"}, "1")
        spam = await b.rooms.rooms.send_event(bob, room_id, "m.room.message", {"msgtype": "m.text", "body": "SPAM!"}, "2")
        later = await b.rooms.rooms.send_event(bob, room_id, "m.room.message", {"msgtype": "m.text", "body": "later"}, "3")
        metas = {e: await self.arrived(a, e) for e in (hello, spam, later)}
        self.assertEqual({e: (m.soft_failed, m.rejected) for e, m in metas.items()},
                         {hello: (False, False), spam: (True, False), later: (False, False)})
        refused = {r.event_id: r for r in await a.store.get_refused_events(room_id, kind="soft_failed")}
        self.assertEqual((refused[spam].plugin, refused[spam].rule), (CHECKER, "policy"))
        server = policy_server_from_content(ps.policy_content())
        self.assertTrue(has_valid_signature(await a.store.get_event(hello), server))
        self.assertTrue(has_valid_signature(await a.store.get_event(later), server))
        visible = await a.rooms.timeline.messages(alice, room_id, direction="b", limit=50)
        bodies = [e["content"].get("body") for e in visible["chunk"] if e["type"] == "m.room.message"]
        self.assertEqual(bodies, ["later", "hello"])

        hi = await a.rooms.rooms.send_event(alice, room_id, "m.room.message", {"msgtype": "m.text", "body": "hi B"}, "4")
        await self.arrived(b, hi)
        on_b = await b.store.get_event(hi)
        self.assertIn(POLICY_KEY_ID, on_b.pdu["signatures"][ps.server_name])
        self.assertTrue(has_valid_signature(on_b, server))

        self.assertTrue(ps.sign_requests)
        self.assertEqual({(r["origin"], r["verified"]) for r in ps.sign_requests}, {(a_name, True)})
        self.assertEqual(len(ps.requests_for(spam)), 1)
