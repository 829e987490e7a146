"""One server per database: a second fedserver on the same database refuses to start,
with a one-line reason, and the first goes on serving (SQLite and PostgreSQL)."""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from fedserver.service import FedserverService
from fedserver.storage.server_lock import ServerLockError, acquire_server_lock, lock_file_path
from fedserver.testing import free_port, loopback_config, start_server


class ServerLockTests(TestCase):
    async def test_sqlite_lock_is_exclusive_until_released(self):
        """The lock file names the holder's pid; a second taker is refused, naming it,
        and gets the lock once the first releases it."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "fedserver.db")
        first = await acquire_server_lock(path, reactor)
        with open(lock_file_path(path)) as f:
            self.assertEqual(f.read().strip(), str(os.getpid()))
        with self.assertRaises(ServerLockError) as caught:
            await acquire_server_lock(path, reactor)
        self.assertIn(f"pid {os.getpid()}", str(caught.exception))
        self.assertIn(path, str(caught.exception))
        first.release()
        first.release()  # twice is harmless
        second = await acquire_server_lock(path, reactor)
        second.release()

    async def test_second_server_on_the_same_database_refuses_to_start(self):
        """Two services configured with one database (either engine): the second fails
        to start with ServerLockError before touching the database; the first still
        answers; once the first stops, a new one starts on that database."""
        directory = self.mktemp()
        port = free_port()
        config = loopback_config(directory, port)
        first = await start_server(self, config)

        other_dir = self.mktemp()
        other = loopback_config(other_dir, free_port(), database_path=config.database_path,
                                **({"database": {"backend": "postgresql", "dsn": config.database.dsn,
                                                 "schema": config.database.schema}}
                                   if config.database.backend == "postgresql" else {}))
        second = FedserverService(other, reactor)
        second.privilegedStartService()
        second.startService()
        self.addCleanup(lambda: second.stopService() if second.running else None)
        with self.assertRaises(ServerLockError) as caught:
            await second.when_ready()
        self.assertIn("one server per database", str(caught.exception))
        self.assertIsNone(second.store)
        self.flushLoggedErrors(ServerLockError)

        user = f"@alice:{config.server_name}"
        await first.store.accounts.create_user(user, None)  # the first one still writes
        await second.stopService()
        await first.stopService()
        third = await start_server(self, config)
        self.assertIsNotNone(await third.store.accounts.get_user(user))
