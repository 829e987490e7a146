"""Upgrades: a database built at every earlier schema version, holding representative rows, is upgraded on start to the newest and keeps working, on the backend under test (SQLite, or PostgreSQL with FEDSERVER_TEST_POSTGRES)."""

from __future__ import annotations

import json
import os
import shutil
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from fedserver.room_versions import V10
from fedserver.storage import open_store
from fedserver.storage.schema import DEFAULT_SCHEMA_DIR, find_scripts
from fedserver.testing import connect_test_database, database_for_test

SCRIPTS = find_scripts(DEFAULT_SCHEMA_DIR)
VERSIONS = [s.version for s in SCRIPTS]
NEWEST = VERSIONS[-1]

ROOM = "!upgrade:old.example"
EVENT = "$upgrade-event"
USER = "@old:old.example"

#: Rows a server at each version could hold, added once the version that makes the
#: table exists (portable SQL, as storage writes it). A script that arrives later adds
#: its own rows here; the test then checks every older database upgrades past it.
FIXTURES: dict[int, list[tuple[str, tuple]]] = {
    1: [
        ("INSERT INTO sequences (name, last_value) VALUES (?, ?)", ("event_nid", 1)),
        ("INSERT INTO rooms (room_id, room_version, creator, is_public, created_ts) VALUES (?, ?, ?, ?, ?)",
         (ROOM, "10", USER, 1, 1_600_000_000_000)),
        ("INSERT INTO events (event_nid, event_id, room_id, type, state_key, sender, membership, depth,"
         " origin_server_ts, received_ts, room_version, outlier, rejected, soft_failed, json)"
         " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
         (1, EVENT, ROOM, "m.room.message", None, USER, None, 7, 1_600_000_000_000, 1_600_000_000_001, "10",
          0, 0, 0, json.dumps({"type": "m.room.message", "room_id": ROOM, "sender": USER, "depth": 7,
                               "content": {"body": "from an old version"}, "origin_server_ts": 1_600_000_000_000,
                               "prev_events": [], "auth_events": [], "hashes": {"sha256": "x"},
                               "signatures": {}}).encode())),
        ("INSERT INTO destinations (destination, txn_epoch, last_txn_seq) VALUES (?, ?, ?)",
         ("peer.example", 1_600_000_000_000, 41)),
        ("INSERT INTO received_transactions (origin, txn_id, response_code, response_json, received_ts)"
         " VALUES (?, ?, ?, ?, ?)", ("peer.example", "t1", 200, b'{"pdus":{}}', 1_600_000_000_000)),
    ],
    2: [
        ("INSERT INTO users (user_id, password_hash, created_ts, admin, deactivated, is_guest)"
         " VALUES (?, ?, ?, ?, ?, ?)", (USER, None, 1_600_000_000_000, 1, 0, 0)),
        ("INSERT INTO profiles (user_id, displayname) VALUES (?, ?)", (USER, "Old Timer")),
    ],
    3: [
        ("INSERT INTO room_aliases (room_alias, room_id, creator, created_ts) VALUES (?, ?, ?, ?)",
         ("#old:old.example", ROOM, USER, 1_600_000_000_000)),
    ],
    4: [
        # Before 011 these ids came from SQLite's rowid: 011 starts the sequence after them.
        ("INSERT INTO federation_failures (failure_id, direction, server_name, severity, code, reason, ts)"
         " VALUES (?, ?, ?, ?, ?, ?, ?)", (7, "received", "peer.example", "ERROR", 3001, "old", 1)),
    ],
    7: [
        ("INSERT INTO presence (user_id, state, status_msg, last_active_ts, currently_active, stream_id)"
         " VALUES (?, ?, ?, ?, ?, ?)", (USER, "unavailable", "away for years", 1_600_000_000_000, 0, 1)),
    ],
    8: [
        ("INSERT INTO pushers (user_id, app_id, pushkey, kind, app_display_name, device_display_name,"
         " profile_tag, lang, data, device_id, pushkey_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
         (USER, "org.example.app", "oldkey", "http", "App", "Phone", None, "en",
          b'{"url": "https://push.example/_matrix/push/v1/notify"}', None, 1_600_000_000_000)),
    ],
    9: [
        ("INSERT INTO e2e_device_keys (user_id, device_id, key_json, ts) VALUES (?, ?, ?, ?)",
         (USER, "OLDDEVICE", b'{"device_id": "OLDDEVICE", "user_id": "@old:old.example"}', 1_600_000_000_000)),
    ],
    10: [
        ("INSERT INTO local_media (media_id, user_id, created_ts, upload_ts, content_type, media_length,"
         " sha256, last_access_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
         ("oldmedia", USER, 1_600_000_000_000, 1_600_000_000_000, "text/plain", 3, "ab" * 32, 1_600_000_000_000)),
    ],
    11: [
        # From 011 on, failure ids are allocated from the sequence, so it has moved past 7.
        ("UPDATE sequences SET last_value = 7 WHERE name = 'federation_failure'", ()),
    ],
    17: [
        # A server stopped while this user was leaving their rooms.
        ("INSERT INTO users_pending_deactivation (user_id, erase) VALUES (?, ?)", ("@gone:old.example", 1)),
    ],
}


class UpgradeTests(TestCase):
    """Every shipped schema version upgrades to the newest."""

    def schema_upto(self, version: int) -> str:
        """A schema directory holding the shipped scripts up to ``version``."""
        path = self.mktemp()
        os.makedirs(path)
        for script in SCRIPTS:
            if script.version <= version:
                shutil.copy(script.path, path)
        return path

    async def build_at(self, version: int) -> str:
        """A database created at ``version`` with the fixtures of every version up to it."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "fedserver.db")
        store = await open_store(database_for_test(self, path), reactor, schema_dir=self.schema_upto(version))
        store.close()
        conn = connect_test_database(path)
        try:
            self.assertEqual(conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0], version)
            for v, rows in FIXTURES.items():
                if v <= version:
                    for sql, params in rows:
                        conn.execute(sql, params)
            conn.commit()
        finally:
            conn.close()
        return path

    async def test_every_version_upgrades_to_the_newest(self):
        """For each shipped version k: a database built with scripts 001..k and holding
        rows of that time opens with today's scripts, is recorded at the newest version
        with every script applied, keeps its rows, and works: events load, users and
        aliases are found, ids continue after the old ones (transaction ids, failure ids
        after 011), presence, pushers, device keys, media rows and users still leaving
        their rooms after a deactivation (017) are read."""
        for version in VERSIONS:
            path = await self.build_at(version)
            store = await open_store(database_for_test(self, path), reactor)
            self.addCleanup(store.close)
            conn = connect_test_database(path)
            try:
                applied = [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version")]
            finally:
                conn.close()
            self.assertEqual(applied, VERSIONS, f"from version {version}")
            event = await store.get_event(EVENT)
            self.assertEqual(event.content, {"body": "from an old version"}, version)
            self.assertEqual((await store.get_room(ROOM)).room_version, V10)
            self.assertEqual(await store.get_public_room_ids(), [ROOM])
            self.assertEqual(await store.get_received_txn("peer.example", "t1"), (200, b'{"pdus":{}}'))
            self.assertEqual(await store.next_txn_id("peer.example"), "1600000000000_42")
            if version >= 2:
                user = await store.accounts.get_user(USER)
                self.assertTrue(user.admin, version)
                self.assertEqual((await store.accounts.get_profile(USER))["displayname"], "Old Timer")
            if version >= 3:
                alias = await store.rooms.get_alias("#old:old.example")
                self.assertEqual(alias.room_id, ROOM)
            if version >= 4:
                await store.federation_extras.add_failures(
                    "received", [("peer.example", "WARN", 3002, "new", None, None, None)], 2
                )
                failures = await store.federation_extras.list_failures("received")
                self.assertEqual([(f.failure_id, f.reason) for f in failures], [(8, "new"), (7, "old")], version)
            if version >= 7:
                presence = (await store.presence.get_presence([USER]))[USER]
                self.assertEqual((presence.state, presence.status_msg), ("unavailable", "away for years"), version)
            if version >= 8:
                pushers = await store.push.get_pushers([USER])
                self.assertEqual([(p.pushkey, p.data["url"]) for p in pushers],
                                 [("oldkey", "https://push.example/_matrix/push/v1/notify")], version)
            if version >= 9:
                keys = await store.devices.get_device_keys(USER, "OLDDEVICE")
                self.assertEqual(keys, {"device_id": "OLDDEVICE", "user_id": USER}, version)
            if version >= 10:
                media = await store.media.get_local("oldmedia")
                self.assertEqual((media.user_id, media.media_length), (USER, 3))
            self.assertEqual(await store.deactivation.get_pending(), ["@gone:old.example"] if version >= 17 else [],
                             version)
            store.close()

