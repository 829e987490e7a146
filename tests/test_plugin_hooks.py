"""The plugin hooks around local events and start-up: ``fedserver_sign_local_event`` as the
event creator calls it, and ``fedserver_on_start`` as declared."""

from __future__ import annotations

import inspect

from signedjson.key import generate_signing_key
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from fedserver.auth import hookimpl
from fedserver.auth import hookspecs
from fedserver.auth.engine import AuthEngine
from fedserver.auth.plugins import make_plugin_manager
from fedserver.handlers.rooms.creator import EventCreator
from fedserver.handlers.rooms.pipeline import RoomPipeline
from fedserver.room_versions import V12
from fedserver.storage.sqlite import open_store
from fedserver.testing import database_for_test

HERE = "here.test"
ALICE = f"@alice:{HERE}"


class Signer:
    """A plugin adding a fixed signature (optionally after a Deferred), recording calls."""

    def __init__(self, answer, *, deferred: bool = False):
        self.answer = answer
        self.deferred = deferred
        self.calls = []

    @hookimpl
    def fedserver_sign_local_event(self, event, room_version, state):
        self.calls.append((event.event_id, room_version.identifier, dict(state)))
        if self.deferred:
            return defer.succeed(self.answer)
        return self.answer


class Broken:
    @hookimpl
    def fedserver_sign_local_event(self, event):
        raise RuntimeError("signer exploded")


class SignLocalEventTests(unittest.TestCase):
    """The creator asks ``fedserver_sign_local_event`` for each event it sends and keeps
    what the plugins add: persisted with the event, our own signature untouched."""

    async def creator(self, *plugins):
        store = await open_store(database_for_test(self, self.mktemp()), reactor)
        self.addCleanup(store.close)
        pm = make_plugin_manager(
            load_entrypoints=False, extra_plugins=[(p, f"signer{i}") for i, p in enumerate(plugins)]
        )
        pipeline = RoomPipeline(store, AuthEngine(pm), pm)
        clock = Clock()
        clock.advance(1_700_000_000)
        self.key = generate_signing_key("k1")
        creator = EventCreator(clock, store, pipeline, HERE, self.key)
        create, outcome = await creator.create_room_event(V12, sender=ALICE, content={"room_version": "12"})
        self.assertTrue(outcome.accepted)
        return store, creator, create.room_id

    async def send_join(self, creator, room_id):
        return await creator.send(room_id, V12, type="m.room.member", sender=ALICE,
                                  content={"membership": "join"}, state_key=ALICE)

    async def test_signatures_added_and_persisted(self):
        """A plugin's signature (returned directly or through a Deferred) ends up in the
        PDU that is persisted; the plugin saw the current state the event was built on;
        our own signature is unchanged and the event id is the same."""
        direct = Signer({"policy.test": {"ed25519:policy_server": "c2lnbmF0dXJl"}})
        later = Signer({"other.test": {"ed25519:x": "b3RoZXI"}}, deferred=True)
        store, creator, room_id = await self.creator(direct, later)
        event, outcome = await self.send_join(creator, room_id)
        self.assertTrue(outcome.accepted)
        self.assertEqual(len(direct.calls), 1)
        event_id, version, state = direct.calls[0]
        self.assertEqual((event_id, version), (event.event_id, "12"))
        self.assertEqual(state, {("m.room.create", ""): "$" + room_id[1:]})
        stored = await store.get_event(event.event_id)
        sigs = stored.pdu["signatures"]
        self.assertEqual(sigs["policy.test"], {"ed25519:policy_server": "c2lnbmF0dXJl"})
        self.assertEqual(sigs["other.test"], {"ed25519:x": "b3RoZXI"})
        self.assertEqual(list(sigs[HERE]), ["ed25519:k1"])

    async def test_own_signature_and_malformed_answers_ignored(self):
        """A plugin cannot replace our own signature; non-string entries, non-mapping
        answers and an implementation that raises add nothing and do not stop the event."""
        greedy = Signer({HERE: {"ed25519:k1": "Zm9yZ2Vk"}, "x.test": {"ed25519:a": 5}, 7: {}})
        odd = Signer(["not", "a", "mapping"])
        store, creator, room_id = await self.creator(greedy, odd, Broken())
        event, outcome = await self.send_join(creator, room_id)
        self.assertTrue(outcome.accepted)
        stored = await store.get_event(event.event_id)
        self.assertEqual(set(stored.pdu["signatures"]), {HERE})
        self.assertNotEqual(stored.pdu["signatures"][HERE]["ed25519:k1"], "Zm9yZ2Vk")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_not_called_without_implementations(self):
        """Without an implementation the event carries our signature only."""
        store, creator, room_id = await self.creator()
        event, outcome = await self.send_join(creator, room_id)
        self.assertTrue(outcome.accepted)
        self.assertEqual(set((await store.get_event(event.event_id)).pdu["signatures"]), {HERE})


class OnStartSpecTests(unittest.SynchronousTestCase):
    """``fedserver_on_start`` is declared with named arguments a plugin can take a subset of."""

    def test_arguments(self):
        """The hook passes the reactor, server name, federation client, store, plugin
        manager and per-plugin options."""
        params = list(inspect.signature(hookspecs.fedserver_on_start).parameters)
        self.assertEqual(params, ["reactor", "server_name", "federation_client", "store",
                                  "plugin_manager", "plugin_config"])

    def test_plugin_registers_per_server_object(self):
        """An implementation can register an object of its own into the plugin manager it
        is given, whose hooks are then called like any other plugin's."""
        seen = []

        class PerServer:
            @hookimpl
            def fedserver_sign_local_event(self, event):
                return None

        class Starter:
            @hookimpl
            def fedserver_on_start(self, server_name, plugin_manager, plugin_config):
                seen.append((server_name, plugin_config.get("starter")))
                plugin_manager.register(PerServer(), name="starter.per_server")

        pm = make_plugin_manager(load_entrypoints=False, extra_plugins=[(Starter(), "starter")])
        pm.hook.fedserver_on_start(reactor=reactor, server_name=HERE, federation_client=None, store=None,
                                   plugin_manager=pm, plugin_config={"starter": {"x": 1}})
        self.assertEqual(seen, [(HERE, {"x": 1})])
        self.assertEqual([i.plugin_name for i in pm.hook.fedserver_sign_local_event.get_hookimpls()],
                         ["starter.per_server"])
