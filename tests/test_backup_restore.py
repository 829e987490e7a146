"""The backup and restore procedures of docs/operators.md, run for real: SQLite's online backup while the store is open, and pg_dump / pg_restore into a new PostgreSQL database."""

from __future__ import annotations

import os
import sqlite3
import subprocess

import psycopg
from twisted.internet import reactor, threads
from twisted.trial.unittest import SkipTest, TestCase

from fedserver.room_versions import V10
from fedserver.storage import open_store
from fedserver.storage.postgres import PostgresConfig
from fedserver.testing import database_for_test, postgres_url_for_tests
from fedserver.testing_postgres import PostgresNotFound, find_bindir
from tests.test_storage_support import linear_entries, make_room


class BackupRestoreTests(TestCase):
    """A restored backup opens and holds what the server had written."""

    async def fill(self, store) -> tuple[str, list]:
        room_id, events = make_room(V10)
        await store.persist_events(linear_entries(events))
        await store.accounts.create_user("@kept:a.example", "$scrypt$h", device_id="D", token_hash="cd" * 32)
        await store.enqueue_outbound(["b.example"], [{"queued": True}])
        return room_id, events

    async def check(self, store, room_id: str, events: list) -> None:
        got = await store.get_events([e.event_id for e in events])
        self.assertEqual({k: v.pdu for k, v in got.items()}, {e.event_id: e.pdu for e in events})
        self.assertEqual(len(await store.get_current_state_ids(room_id)), 4)
        self.assertEqual((await store.accounts.get_token("cd" * 32)).user_id, "@kept:a.example")
        self.assertEqual([i.json for i in await store.get_outbound_batch("b.example")], [b'{"queued":true}'])

    async def test_sqlite_online_backup(self):
        """Python's sqlite3 backup of the file while a store has it open (and has just
        written) gives a copy that passes integrity_check and opens with everything."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "fedserver.db")
        store = await open_store(path, reactor)
        self.addCleanup(store.close)
        room_id, events = await self.fill(store)
        backup = os.path.join(directory, "fedserver-backup.db")

        def copy() -> str:
            src, dst = sqlite3.connect(path), sqlite3.connect(backup)
            try:
                src.backup(dst)
            finally:
                dst.close()
                src.close()
            check = sqlite3.connect(backup)
            try:
                return check.execute("PRAGMA integrity_check").fetchone()[0]
            finally:
                check.close()

        self.assertEqual(await threads.deferToThread(copy), "ok")
        restored = await open_store(backup, reactor)
        self.addCleanup(restored.close)
        await self.check(restored, room_id, events)

    async def test_pg_dump_and_restore(self):
        """pg_dump --format=custom while the store is open, then pg_restore into a new
        UTF8 / C database: the server opens the restored database with everything."""
        url = postgres_url_for_tests()
        if url is None:
            raise SkipTest("FEDSERVER_TEST_POSTGRES is not set")
        try:
            bindir = find_bindir()
        except PostgresNotFound as e:
            raise SkipTest(str(e))
        target = database_for_test(self, os.path.abspath(self.mktemp()))
        store = await open_store(target, reactor)
        self.addCleanup(store.close)
        room_id, events = await self.fill(store)
        dump = os.path.abspath(self.mktemp())
        name = f"restored_{os.getpid()}_{abs(hash(dump)) % 10**8}"
        restored_url = psycopg.conninfo.make_conninfo(url, dbname=name)

        def dump_and_restore() -> None:
            subprocess.run([os.path.join(bindir, "pg_dump"), "--format=custom", f"--schema={target.schema}",
                            f"--file={dump}", url], check=True, capture_output=True)
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute(f"CREATE DATABASE {name} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
            subprocess.run([os.path.join(bindir, "pg_restore"), f"--dbname={restored_url}", "--no-owner",
                            "--exit-on-error", dump], check=True, capture_output=True)

        def drop() -> None:
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

        self.addCleanup(threads.deferToThread, drop)
        await threads.deferToThread(dump_and_restore)
        restored = await open_store(PostgresConfig(restored_url, schema=target.schema, readers=1), reactor)
        self.addCleanup(restored.close)
        await self.check(restored, room_id, events)
