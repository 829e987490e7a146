"""matrix-nio (a real client library) using rooms on a real loopback listener: the issue's scenario."""

from __future__ import annotations

import os
from typing import Any

from signedjson.key import generate_signing_key
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.protocols.policies import WrappingFactory
from twisted.trial import unittest

from fedserver.auth.engine import AuthEngine
from fedserver.auth.plugins import make_plugin_manager
from fedserver.handlers.client.accounts import PasswordHasher
from fedserver.handlers.rooms.creator import EventCreator
from fedserver.handlers.rooms.pipeline import RoomPipeline
from fedserver.http.client.api import build_account_services, build_client_api
from fedserver.http.client.rooms import build_room_services, register_room_routes
from fedserver.http.resource import MatrixSite
from fedserver.http.site import build_client_root
from fedserver.storage import open_store
from fedserver.testing import database_for_test
from tests.test_client_api_nio import run_asyncio_in_thread

SERVER = "nio-rooms.test"


def texts(sync_response: Any, room_id: str) -> list[str]:
    """The bodies of the text messages in a nio SyncResponse's timeline of ``room_id``."""
    import nio

    room = sync_response.rooms.join.get(room_id)
    if room is None:
        return []
    return [e.body for e in room.timeline.events if isinstance(e, nio.RoomMessageText)]


class NioRoomTests(unittest.TestCase):
    """Two matrix-nio clients against one fedserver: rooms, messages, /sync, power
    levels, kick, ban and leave, exactly as the library speaks the API."""

    async def _serve(self, default_room_version: str) -> str:
        path = self.mktemp()
        os.makedirs(path)
        store = await open_store(database_for_test(self, os.path.join(path, "fedserver.db")), reactor)
        self.addCleanup(store.close)
        accounts = build_account_services(
            reactor=reactor, store=store, server_name=SERVER, enable_registration=True,
            hasher=PasswordHasher(reactor, log_n=4),
        )
        api = build_client_api(services=accounts, default_room_version=default_room_version)
        pm = make_plugin_manager(load_entrypoints=False)
        pipeline = RoomPipeline(store, AuthEngine(pm), pm)
        key = generate_signing_key("1")
        creator = EventCreator(reactor, store, pipeline, SERVER, key)
        self.services = build_room_services(
            store=store, pipeline=pipeline, creator=creator, server_name=SERVER, signing_key=key, clock=reactor
        )
        await self.services.startup()
        register_room_routes(api, self.services)
        self.tracker = WrappingFactory(MatrixSite(build_client_root(client=api), cors=True, log_name="client", reactor=reactor))
        port = reactor.listenTCP(0, self.tracker, interface="127.0.0.1")
        self.addCleanup(self._close, port)
        return f"http://127.0.0.1:{port.getHost().port}"

    async def _close(self, port: Any) -> None:
        await port.stopListening()
        for p in list(self.tracker.protocols):
            p.transport.abortConnection()
        for _ in range(200):
            if not self.tracker.protocols:
                break
            await deferLater(reactor, 0.01, lambda: None)

    async def _scenario(self, default_room_version: str) -> dict[str, Any]:
        url = await self._serve(default_room_version)
        bob_id = f"@bob:{SERVER}"

        async def scenario() -> dict[str, Any]:
            import asyncio

            import nio

            out: dict[str, Any] = {}
            alice = nio.AsyncClient(url, "alice")
            bob = nio.AsyncClient(url, "bob")
            try:
                for client, name in ((alice, "alice"), (bob, "bob")):
                    reg = await client.register(name, "pw-" + name)
                    assert isinstance(reg, nio.RegisterResponse), reg
                # Log in again as nio users usually do (a second device for alice).
                login = await alice.login("pw-alice", device_name="laptop")
                assert isinstance(login, nio.LoginResponse), login

                created = await alice.room_create(
                    visibility=nio.RoomVisibility.public, preset=nio.RoomPreset.public_chat,
                    name="Scenario", topic="first", alias="scenario",
                )
                assert isinstance(created, nio.RoomCreateResponse), created
                room_id = created.room_id
                out["room_id"] = room_id

                # A second user joins (by alias).
                joined = await bob.join(f"#scenario:{SERVER}")
                assert isinstance(joined, nio.JoinResponse), joined
                assert joined.room_id == room_id, joined

                first_a = await alice.sync(full_state=True)
                first_b = await bob.sync(full_state=True)
                assert isinstance(first_a, nio.SyncResponse), first_a
                assert isinstance(first_b, nio.SyncResponse), first_b
                out["bob_sees_name"] = bob.rooms[room_id].name
                out["bob_sees_members"] = sorted(bob.rooms[room_id].users)

                # Bob long-polls while Alice speaks: his sync returns with her message.
                waiting = asyncio.ensure_future(bob.sync(timeout=30_000, since=first_b.next_batch))
                await asyncio.sleep(0.05)
                sent = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hello bob"})
                assert isinstance(sent, nio.RoomSendResponse), sent
                b2 = await waiting
                assert isinstance(b2, nio.SyncResponse), b2
                out["bob_got"] = texts(b2, room_id)
                sent = await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hello alice"})
                assert isinstance(sent, nio.RoomSendResponse), sent
                a2 = await alice.sync(since=first_a.next_batch)
                out["alice_got"] = texts(a2, room_id)

                # Power levels forbid, then allow, Bob setting the topic.
                denied = await bob.room_put_state(room_id, "m.room.topic", {"topic": "bob's"})
                out["topic_denied"] = (type(denied).__name__, getattr(denied, "status_code", None))
                pl = await alice.room_get_state_event(room_id, "m.room.power_levels")
                assert isinstance(pl, nio.RoomGetStateEventResponse), pl
                content = dict(pl.content)
                content["users"] = {**content.get("users", {}), bob_id: 50}
                raised = await alice.room_put_state(room_id, "m.room.power_levels", content)
                assert isinstance(raised, nio.RoomPutStateResponse), raised
                allowed = await bob.room_put_state(room_id, "m.room.topic", {"topic": "bob's"})
                out["topic_allowed"] = type(allowed).__name__
                a3 = await alice.sync(since=a2.next_batch)
                out["alice_topic"] = alice.rooms[room_id].topic

                # History pages back through /messages.
                page = await bob.room_messages(room_id, start=a2.next_batch, limit=20)
                assert isinstance(page, nio.RoomMessagesResponse), page
                out["history"] = [e.body for e in page.chunk if isinstance(e, nio.RoomMessageText)]

                # Kick: Bob is out, comes back (public room).
                kicked = await alice.room_kick(room_id, bob_id, reason="test kick")
                out["kick"] = type(kicked).__name__
                b3 = await bob.sync(since=b2.next_batch)
                out["bob_leave_section"] = room_id in b3.rooms.leave
                rejoin = await bob.join(room_id)
                out["rejoin_after_kick"] = type(rejoin).__name__

                # Ban: Bob cannot rejoin.
                banned = await alice.room_ban(room_id, bob_id, reason="test ban")
                out["ban"] = type(banned).__name__
                again = await bob.join(room_id)
                out["rejoin_after_ban"] = (type(again).__name__, getattr(again, "status_code", None))
                refused = await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "let me in"})
                out["banned_send"] = (type(refused).__name__, getattr(refused, "status_code", None))

                # Alice leaves.
                left = await alice.room_leave(room_id)
                out["leave"] = type(left).__name__
                a4 = await alice.sync(since=a3.next_batch)
                out["alice_leave_section"] = room_id in a4.rooms.leave
                rooms = await alice.joined_rooms()
                out["alice_joined_rooms"] = rooms.rooms
            finally:
                await alice.close()
                await bob.close()
            return out

        return await run_asyncio_in_thread(scenario, timeout=60)

    def _check(self, out: dict[str, Any]) -> None:
        self.assertEqual(out["bob_sees_name"], "Scenario")
        self.assertEqual(out["bob_sees_members"], sorted([f"@alice:{SERVER}", f"@bob:{SERVER}"]))
        self.assertEqual(out["bob_got"], ["hello bob"])
        self.assertEqual(out["alice_got"], ["hello bob", "hello alice"])
        self.assertEqual(out["topic_denied"], ("RoomPutStateError", "M_FORBIDDEN"))
        self.assertEqual(out["topic_allowed"], "RoomPutStateResponse")
        self.assertEqual(out["alice_topic"], "bob's")
        self.assertEqual(out["history"], ["hello alice", "hello bob"])
        self.assertEqual(out["kick"], "RoomKickResponse")
        self.assertTrue(out["bob_leave_section"])
        self.assertEqual(out["rejoin_after_kick"], "JoinResponse")
        self.assertEqual(out["ban"], "RoomBanResponse")
        self.assertEqual(out["rejoin_after_ban"], ("JoinError", "M_FORBIDDEN"))
        self.assertEqual(out["banned_send"], ("RoomSendError", "M_FORBIDDEN"))
        self.assertEqual(out["leave"], "RoomLeaveResponse")
        self.assertTrue(out["alice_leave_section"])
        self.assertEqual(out["alice_joined_rooms"], [])

    async def test_scenario_room_v12(self):
        """register, log in, create a room (v12: its id has no server part), a second
        user joins by alias, both send and /sync (a long-poll is woken by the other's
        message), power levels forbid then allow setting the topic, /messages pages
        history, kick, ban (the banned user cannot rejoin or speak), leave."""
        out = await self._scenario("12")
        self.assertNotIn(":", out["room_id"])
        self._check(out)

    async def test_scenario_room_v10(self):
        """The same scenario in a v10 room (ids with a server part, creator listed in the
        power levels)."""
        out = await self._scenario("10")
        self.assertTrue(out["room_id"].endswith(":" + SERVER))
        self._check(out)
