"""fedserver-port-db: a SQLite database with rooms, accounts, queues and media rows copied into an empty PostgreSQL schema, verified, and usable by the server; refusals leave the target empty. Needs FEDSERVER_TEST_POSTGRES (the PostgreSQL run of .ci/run)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from twisted.internet import reactor, threads

from fedserver.room_versions import V10, RoomVersionRegistry
from fedserver.scripts.port_db import PortError, port_database, run
from fedserver.storage import PersistEntry, open_store
from fedserver.storage.postgres import PostgresConfig
from fedserver.testing import connect_test_database, database_arg_for_test, database_for_test
from tests.test_storage_postgres import PostgresStoreCase
from tests.test_storage_support import linear_entries, make_event, make_room

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PortTests(PostgresStoreCase):
    """Copying a SQLite database into PostgreSQL."""

    async def sqlite_with_data(self) -> tuple[str, dict]:
        """A SQLite database a server could have written, and what it holds."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "fedserver.db")
        store = await open_store(path, reactor, registry=RoomVersionRegistry())
        room_id, events = make_room(V10)
        events.append(make_event(V10, room_id, "m.room.message", content={"body": "é ✓ 'quoted' %s"},
                                 prev=[events[-1].event_id], auth=[events[0].event_id], depth=5))
        await store.persist_events(linear_entries(events))
        outlier = make_event(V10, room_id, "m.room.member", "@bob:b.example", {"membership": "invite"}, "@bob:b.example")
        await store.persist_events([PersistEntry(outlier, outlier=True)])
        await store.accounts.create_user("@alice:a.example", "$scrypt$hash", admin=True, displayname="Alice",
                                         device_id="DEV", token_hash="ab" * 32)
        await store.accounts.set_account_data("@alice:a.example", None, "m.push_rules", {"a": 1})
        await store.enqueue_outbound(["b.example", "c.example"], [{"pdu": 1}], [{"edu": 2}])
        await store.next_txn_id("b.example")
        await store.federation_extras.add_failures("sent", [("b.example", "ERROR", 3001, "why", room_id, "$x", None)], 5)
        await store.rooms.create_alias("#a:a.example", room_id, "@alice:a.example")
        state = await store.get_current_state_ids(room_id)
        store.close()
        return path, {"room_id": room_id, "events": events, "outlier": outlier, "state": state}

    def target(self, **kw) -> PostgresConfig:
        path = os.path.abspath(self.mktemp())
        self.target_path = path
        return database_for_test(self, path)

    async def test_port_copies_everything_and_verifies(self):
        """Every table arrives with as many rows and the same checksum; the server then
        opens the PostgreSQL database and finds the same events (byte for byte), state,
        users, tokens, queues, transaction counters, failures and aliases."""
        path, data = await self.sqlite_with_data()
        target = self.target()
        lines: list[str] = []
        report = await threads.deferToThread(port_database, path, target, out=lines.append)
        self.assertEqual(report.table("events").rows, len(data["events"]) + 1)
        self.assertIn("done:", lines[-1])
        self.assertTrue(any(line.startswith("events: ") and "on both sides" in line for line in lines))
        conn = connect_test_database(self.target_path)
        try:
            for t in report.tables:
                self.assertEqual(conn.execute(f"SELECT COUNT(*) FROM {t.name}").fetchone()[0], t.rows, t.name)
        finally:
            conn.close()
        store = await open_store(target, reactor)
        self.addCleanup(store.close)
        ids = [e.event_id for e in data["events"]] + [data["outlier"].event_id]
        got = await store.get_events(ids)
        for e in data["events"] + [data["outlier"]]:
            self.assertEqual(got[e.event_id].pdu, e.pdu)
        self.assertEqual(await store.get_current_state_ids(data["room_id"]), data["state"])
        self.assertTrue((await store.get_event_meta([data["outlier"].event_id]))[data["outlier"].event_id].outlier)
        self.assertEqual((await store.accounts.get_token("ab" * 32)).user_id, "@alice:a.example")
        self.assertEqual((await store.accounts.get_profile("@alice:a.example"))["displayname"], "Alice")
        self.assertEqual(await store.accounts.get_account_data("@alice:a.example", None, "m.push_rules"), {"a": 1})
        self.assertEqual([i.json for i in await store.get_outbound_batch("c.example")], [b'{"pdu":1}', b'{"edu":2}'])
        self.assertTrue((await store.next_txn_id("b.example")).endswith("_2"))
        self.assertEqual((await store.rooms.get_alias("#a:a.example")).room_id, data["room_id"])
        self.assertEqual([f.reason for f in await store.federation_extras.list_failures("sent")], ["why"])
        # New ids continue after the copied ones.
        more = make_event(V10, data["room_id"], "m.room.message", prev=[data["events"][-1].event_id],
                          auth=[data["events"][0].event_id], depth=6)
        out = await store.persist_events(linear_entries([more], dict(data["state"])))
        self.assertEqual(out[more.event_id].event_nid, report.table("events").rows + 1)

    async def test_non_empty_target_refused(self):
        """A target that already has tables is refused, and left as it was."""
        path, _ = await self.sqlite_with_data()
        target = self.target()
        await threads.deferToThread(port_database, path, target)
        with self.assertRaises(PortError) as caught:
            await threads.deferToThread(port_database, path, target)
        self.assertIn("not empty", str(caught.exception))
        store = await open_store(target, reactor)
        self.addCleanup(store.close)
        self.assertEqual(len(await store.get_public_room_ids()), 0)

    async def test_unstorable_text_leaves_target_empty(self):
        """A row PostgreSQL cannot hold (text with U+0000, which SQLite stores) stops the
        port with a message naming the table and column; nothing is kept, so the target
        is still empty and the port can be run again once the row is dealt with."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "fedserver.db")
        store = await open_store(path, reactor)
        room_id, events = make_room(V10)
        await store.persist_events(linear_entries(events))
        weird = make_event(V10, room_id, "m.room.member", "@a\x00b:a.example", {"membership": "join"}, "@a\x00b:a.example")
        await store.persist_events([PersistEntry(weird, outlier=True)])
        store.close()
        target = self.target()
        with self.assertRaises(PortError) as caught:
            await threads.deferToThread(port_database, path, target)
        self.assertIn("U+0000", str(caught.exception))
        self.assertIn("events.", str(caught.exception))
        conn = connect_test_database(self.target_path)
        try:
            self.assertEqual(conn.tables(), set())
        finally:
            conn.close()

    async def test_command_line(self):
        """The console script: --sqlite and --postgres (a URL selecting the schema) copy
        and print the per-table lines and the events checksum, exit 0; a second run
        exits 1 (not empty); a missing file exits 1; no target exits 2."""
        path, _ = await self.sqlite_with_data()
        url = database_arg_for_test(self, os.path.abspath(self.mktemp()))
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        argv = [sys.executable, "-m", "fedserver.scripts.port_db", "--sqlite", path, "--postgres", url]
        proc = await threads.deferToThread(subprocess.run, argv, capture_output=True, text=True, env=env, timeout=120)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("events: 6 rows, checksum sha256:", proc.stdout)
        self.assertIn("copied and verified", proc.stdout)
        for args, status, message in (
            (["--sqlite", path, "--postgres", url], 1, "not empty"),
            (["--sqlite", path + ".missing", "--postgres", url], 1, "no database at"),
            (["--sqlite", path], 2, "give --sqlite PATH and --postgres URL"),
        ):
            out, err = io.StringIO(), io.StringIO()
            self.assertEqual(await run(reactor, args, out, err), status, err.getvalue())
            self.assertIn(message, err.getvalue())
