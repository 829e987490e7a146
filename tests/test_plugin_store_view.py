"""Plugins read rooms through a narrow, read-only view of storage, never the whole store."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from fedserver.handlers.client.accounts import Requester
from fedserver.storage.plugin_view import PluginStoreView
from fedserver.testing import free_port, loopback_config, start_server
from tests import plugin_store_probe


class PluginStoreViewTests(TestCase):
    async def test_on_start_gets_a_read_only_view_that_reads_rooms(self):
        """A plugin's ``fedserver_on_start`` gets a PluginStoreView: it reads a room's
        version, current state, members and events as the store has them, and has no way
        to write (no persist, no update, no access to the store behind it)."""
        port = free_port()
        config = loopback_config(self.mktemp(), port, plugins=["tests.plugin_store_probe"])
        svc = await start_server(self, config)
        view = plugin_store_probe.SEEN.pop(config.server_name)
        self.assertIsInstance(view, PluginStoreView)
        for writer in ("persist_events", "update_current_state", "store_server_keys", "rooms", "database", "_store_x"):
            self.assertFalse(hasattr(view, writer), writer)
        with self.assertRaises(AttributeError):
            view.anything = 1  # __slots__: nothing can be hung on it either

        user = f"@alice:{config.server_name}"
        await svc.store.accounts.create_user(user, None)
        created = await svc.rooms.rooms.create_room(Requester(user, "DEV", 1), {"preset": "private_chat", "name": "Probe"})
        room_id = created["room_id"]
        rv = await view.get_room_version(room_id)
        self.assertEqual(rv, await svc.store.get_room_version(room_id))
        state = await view.get_current_state_ids(room_id)
        self.assertEqual(state, await svc.store.get_current_state_ids(room_id))
        self.assertEqual(await view.get_room_members(room_id), [user])
        self.assertEqual(await view.get_joined_hosts(room_id), {config.server_name})
        name_id = state[("m.room.name", "")]
        event = await view.get_event(name_id)
        self.assertEqual(event.content, {"name": "Probe"})
        self.assertEqual(set(await view.get_events([name_id, "$nope"])), {name_id})
        events = await view.get_current_state_events(room_id, ["m.room.name"])
        self.assertEqual(list(events), [("m.room.name", "")])
        self.assertIsNone(await view.get_room_version("!unknown:example.org"))
