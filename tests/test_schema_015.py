"""Schema upgrade 015 (operators): client transaction ids gain their path; blocked rooms."""

from __future__ import annotations

import os
import shutil

from fedserver.storage.schema import DEFAULT_SCHEMA_DIR
from fedserver.testing import connect_test_database
from tests.test_storage_support import StoreTestCase


class Schema015Tests(StoreTestCase):
    """A database made before version 15 is upgraded with its client transactions kept."""

    def schema_before_015(self) -> str:
        path = self.mktemp()
        shutil.copytree(DEFAULT_SCHEMA_DIR, path)
        for name in os.listdir(path):
            if name[:3].isdigit() and int(name[:3]) >= 15:
                os.remove(os.path.join(path, name))
        return path

    async def test_upgrade_keeps_client_transactions(self):
        """Rows recorded before the upgrade survive it with path '' (they still give the
        sender's transaction_id), and the same txn id can then be used on a real path."""
        path = self.db_path()
        store = await self.open(path, schema_dir=self.schema_before_015())
        conn = connect_test_database(path)
        conn.execute(
            "INSERT INTO client_transactions (user_id, scope, txn_id, room_id, event_id, created_ts)"
            " VALUES ('@a:hs', 'DEV', 't1', '!r:hs', '$old', 5)"
        )
        conn.commit()
        conn.close()
        store.close()
        store = await self.open(path)
        self.assertEqual(await store.rooms.get_client_txn_ids("@a:hs", "DEV", ["$old"]), {"$old": "t1"})
        self.assertEqual(await store.rooms.get_client_txn("@a:hs", "DEV", "t1"), "$old")
        path_a = "/rooms/!r:hs/send/m.room.message"
        self.assertIsNone(await store.rooms.get_client_txn("@a:hs", "DEV", "t1", path=path_a))
        self.assertEqual(await store.rooms.store_client_txn("@a:hs", "DEV", "t1", "!r:hs", "$new", path=path_a), "$new")
        self.assertEqual(await store.rooms.store_client_txn("@a:hs", "DEV", "t1", "!r:hs", "$other", path=path_a), "$new")
        self.assertEqual(await store.rooms.prune_client_txns(10), 1)
        self.assertEqual(await store.rooms.get_client_txn("@a:hs", "DEV", "t1", path=path_a), "$new")
