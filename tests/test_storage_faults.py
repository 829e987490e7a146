"""Storage faults on real SQLite files: a full disk (PRAGMA max_page_count), an unwritable
database (PRAGMA query_only), I/O errors and locks held beyond the busy timeout answer 503
M_UNKNOWN with one log line, never 200 or 500, commit nothing, and the server recovers by
itself. Issue 12, "Storage faults"."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from urllib.parse import quote

import treq
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from fedserver.storage.database import FAULT_LOG_INTERVAL_S, fault_kind
from fedserver.storage.interface import StorageUnavailableError
from fedserver.storage.sqlite import open_store
from fedserver.testing import loopback_config, start_server
from tests.test_federation_support import FED
from tests.test_hostile_federation import RunningServerCase

BIG = "x" * 60_000  # needs new pages whatever the free list holds


def _cap_pages(conn) -> int:
    """Let the database grow no more, and use up its free pages: the next write that
    needs a page fails with SQLITE_FULL, as on a full disk."""
    (count,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {count}")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS test_filler (x BLOB)")
        while True:
            conn.execute("INSERT INTO test_filler VALUES (zeroblob(512))")
    except sqlite3.OperationalError as e:
        assert fault_kind(e) == "full", e
    return count


def _uncap_pages(conn) -> None:
    conn.execute("PRAGMA max_page_count = 1073741823")
    conn.execute("DROP TABLE IF EXISTS test_filler")


class LogCapture:
    """Every log event while installed: ``errors`` (level error and above, or carrying a
    traceback) and ``texts``."""

    def __init__(self, test: TestCase) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def serious(self) -> list[dict]:
        return [
            e for e in self.events
            if "log_failure" in e or (e.get("log_level") is not None and e["log_level"].name in ("error", "critical"))
        ]

    def formats(self, events=None) -> list[str]:
        return [e.get("log_format", "") for e in (self.events if events is None else events)]


class ClassificationTests(TestCase):
    """fault_kind on real sqlite3 errors."""

    def test_real_errors(self):
        """SQLITE_FULL, SQLITE_READONLY and SQLITE_BUSY raised by a real SQLite file are
        classified; a constraint violation or a syntax error (bugs) is not."""
        path = self.mktemp()
        conn = sqlite3.connect(path, isolation_level=None, timeout=0.05)
        conn.execute("CREATE TABLE t (x BLOB PRIMARY KEY)")
        errors = {}
        _cap_pages(conn)
        try:
            conn.execute("INSERT INTO t VALUES (?)", (b"x" * 100_000,))
        except sqlite3.Error as e:
            errors["full"] = e
        _uncap_pages(conn)
        conn.execute("INSERT INTO t VALUES (?)", (b"y",))
        try:
            conn.execute("INSERT INTO t VALUES (?)", (b"y",))
        except sqlite3.Error as e:
            errors[None] = e
        other = sqlite3.connect(path, isolation_level=None, timeout=0.05)
        other.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            errors["locked"] = e
        other.execute("ROLLBACK")
        conn.execute("PRAGMA query_only = 1")
        try:
            conn.execute("INSERT INTO t VALUES (?)", (b"z",))
        except sqlite3.Error as e:
            errors["read-only"] = e
        self.assertEqual(set(errors), {"full", None, "locked", "read-only"})
        for kind, error in errors.items():
            self.assertEqual(fault_kind(error), kind, error)
        self.assertIsNone(fault_kind(sqlite3.OperationalError("near \"SELEC\": syntax error")))
        io = sqlite3.OperationalError("disk I/O error")
        io.sqlite_errorcode = 778  # SQLITE_IOERR_WRITE
        self.assertEqual(fault_kind(io), "io")
        conn.close()
        other.close()


class DatabaseFaultTests(TestCase):
    """The Database on a real file: faults become StorageUnavailableError, nothing is
    committed, one log line per episode."""

    async def setUp(self):
        self.clock = Clock()
        self.store = await open_store(self.mktemp(), reactor, busy_timeout_ms=50)
        self.addCleanup(self.store.close)
        self.db = self.store.database
        self.db.faults._clock = self.clock
        self.log = LogCapture(self)

    def _insert(self, txn, value):
        txn.execute("INSERT INTO sequences (name, last_value) VALUES (?, 0)", (value,))

    async def _count(self, prefix):
        rows = await self.db.run_read(lambda txn: txn.execute(
            "SELECT COUNT(*) FROM sequences WHERE name LIKE ?", (prefix + "%",)).fetchone())
        return rows[0]

    async def test_full_disk_one_line_and_recovery(self):
        """While the database cannot grow, every write fails with StorageUnavailableError
        ("full") and commits nothing; one error line is logged for the whole episode, a
        reminder after FAULT_LOG_INTERVAL_S, and one line once a write works again."""
        await self.db.run_with_connection(_cap_pages)
        for i in range(5):
            e = await self.assertFailure(self.db.run_write(self._insert, f"big{i}-" + BIG), StorageUnavailableError)
            self.assertEqual(e.kind, "full")
        self.assertEqual(await self._count("big"), 0)
        self.assertEqual(self.db.faults.failing, "full")
        errors = self.log.serious()
        self.assertEqual(len(errors), 1, self.log.formats(errors))
        self.assertIn("Database unavailable", errors[0]["log_format"])
        self.assertNotIn("log_failure", errors[0])
        # A read that works does not end a write fault.
        await self._count("big")
        self.assertEqual(self.db.faults.failing, "full")
        self.clock.advance(FAULT_LOG_INTERVAL_S)
        await self.assertFailure(self.db.run_write(self._insert, "big-again-" + BIG), StorageUnavailableError)
        errors = self.log.serious()
        self.assertEqual(len(errors), 2)
        self.assertIn("still unavailable", errors[1]["log_format"])
        self.assertEqual(errors[1]["n"], 5)  # four more failures before, this one
        await self.db.run_with_connection(_uncap_pages)
        await self.db.run_write(self._insert, "big-ok-" + BIG)
        self.assertEqual(await self._count("big"), 1)
        self.assertIsNone(self.db.faults.failing)
        self.assertTrue(any("works again" in f for f in self.log.formats()))

    async def test_read_only_database(self):
        """An unwritable database (query_only, as a read-only file or filesystem would be)
        fails writes with kind "read-only"; reads keep working."""
        await self.db.run_with_connection(lambda conn: conn.execute("PRAGMA query_only = 1"))
        e = await self.assertFailure(self.db.run_write(self._insert, "ro"), StorageUnavailableError)
        self.assertEqual(e.kind, "read-only")
        self.assertEqual(await self._count("ro"), 0)
        await self.db.run_with_connection(lambda conn: conn.execute("PRAGMA query_only = 0"))
        await self.db.run_write(self._insert, "ro")
        self.assertEqual(await self._count("ro"), 1)

    async def test_locked_beyond_busy_timeout(self):
        """A lock held by another process beyond the busy timeout fails the write with kind
        "locked"; once released, the same write works."""
        path = self.store.database._pool.connargs[0]
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        try:
            e = await self.assertFailure(self.db.run_write(self._insert, "lk"), StorageUnavailableError)
            self.assertEqual(e.kind, "locked")
        finally:
            other.execute("ROLLBACK")
            other.close()
        await self.db.run_write(self._insert, "lk")
        self.assertEqual(await self._count("lk"), 1)

    async def test_io_error_and_bugs(self):
        """An I/O error raised inside a transaction is kind "io" and rolls back what the
        transaction wrote; an error that is not a storage fault (a bug) passes through
        unchanged and is not logged as a fault."""

        def write_then_fail(txn, error):
            self._insert(txn, "io")
            raise error

        io = sqlite3.OperationalError("disk I/O error")
        io.sqlite_errorcode = 10
        e = await self.assertFailure(self.db.run_write(write_then_fail, io), StorageUnavailableError)
        self.assertEqual(e.kind, "io")
        self.assertEqual(await self._count("io"), 0)
        await self.db.run_write(self._insert, "fine")  # ends the episode
        await self.assertFailure(self.db.run_write(write_then_fail, sqlite3.IntegrityError("UNIQUE constraint failed")),
                                 sqlite3.IntegrityError)
        self.assertIsNone(self.db.faults.failing)
        self.assertEqual(await self._count("io"), 0)

    async def test_closed_database(self):
        """Once closed (the server stopping), calls fail with StorageUnavailableError
        ("closed"), which the HTTP layer answers 503, not 500."""
        self.store.close()
        self.assertRaises(StorageUnavailableError, self.db.run_read, lambda txn: None)


class ClientApiFaultTests(TestCase):
    """A running server's client API while its database is full or unwritable."""

    async def setUp(self):
        self.service = await start_server(self, loopback_config(os.path.abspath(self.mktemp()), enable_registration=True, database={"backend": "sqlite"}))
        self.base = f"http://127.0.0.1:{self.service.client_listener.port.getHost().port}/_matrix/client/v3"
        self.http = treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        code, body = await self.call("POST", "/register", {"username": "alice", "password": "pw", "auth": {"type": "m.login.dummy"}})
        assert code == 200, body
        self.token = body["access_token"]
        code, body = await self.call("POST", "/createRoom", {}, token=self.token)
        self.room = quote(body["room_id"], safe="")
        self.db = self.service.store.database

    async def call(self, method, path, body=None, *, token=None):
        headers = {b"Authorization": [b"Bearer " + token.encode()]} if token else {}
        data = None if body is None else json.dumps(body).encode()
        resp = await self.http.request(method, self.base + path, data=data, headers=headers)
        return resp.code, json.loads(await resp.content())

    async def _messages(self):
        code, body = await self.call("GET", f"/rooms/{self.room}/messages?dir=b&limit=50", token=self.token)
        assert code == 200, body
        return [e["content"].get("body") for e in body["chunk"] if e["type"] == "m.room.message"]

    async def test_full_disk(self):
        """With the database full (no page left for the data): sending a message, setting
        account data and a state event answer 503 M_UNKNOWN (never 200 or 500), nothing of them is stored, reads (/sync,
        /messages) still answer 200, one error line is logged and no traceback. Once space
        returns, the very same requests (same transaction id) succeed."""
        log = LogCapture(self)
        await self.db.run_with_connection(_cap_pages)
        writes = [
            ("PUT", f"/rooms/{self.room}/send/m.room.message/t1", {"msgtype": "m.text", "body": BIG}, self.token),
            ("PUT", f"/user/{quote('@alice:' + self.service.config.server_name)}/account_data/big", {"x": BIG}, self.token),
            ("PUT", f"/rooms/{self.room}/state/m.room.topic", {"topic": BIG}, self.token),
        ]
        for method, path, body, token in writes:
            code, answer = await self.call(method, path, body, token=token)
            self.assertEqual((code, answer.get("errcode")), (503, "M_UNKNOWN"), (path, answer))
            self.assertIn("disk is full", answer["error"])
        code, _ = await self.call("GET", "/sync?timeout=0", token=self.token)
        self.assertEqual(code, 200)
        self.assertEqual(await self._messages(), [])
        code, body = await self.call("GET", f"/rooms/{self.room}/state/m.room.topic", token=self.token)
        self.assertEqual(code, 404, body)
        serious = log.serious()
        self.assertEqual(len(serious), 1, log.formats(serious))
        self.assertIn("Database unavailable (full)", serious[0]["log_format"].replace("{kind}", "full"))
        await self.db.run_with_connection(_uncap_pages)
        for method, path, body, token in writes:
            code, answer = await self.call(method, path, body, token=token)
            self.assertEqual(code, 200, (path, answer))
        self.assertEqual(await self._messages(), [BIG])
        self.assertIsNone(self.db.faults.failing)

    async def test_unwritable_database(self):
        """With the database unwritable, a message is 503 M_UNKNOWN saying so, and works
        once the database is writable again."""
        await self.db.run_with_connection(lambda conn: conn.execute("PRAGMA query_only = 1"))
        path = f"/rooms/{self.room}/send/m.room.message/ro"
        code, answer = await self.call("PUT", path, {"msgtype": "m.text", "body": "hi"}, token=self.token)
        self.assertEqual((code, answer.get("errcode")), (503, "M_UNKNOWN"))
        self.assertIn("read-only", answer["error"])
        await self.db.run_with_connection(lambda conn: conn.execute("PRAGMA query_only = 0"))
        code, answer = await self.call("PUT", path, {"msgtype": "m.text", "body": "hi"}, token=self.token)
        self.assertEqual(code, 200, answer)
        self.assertEqual(await self._messages(), ["hi"])


class FederationFaultTests(RunningServerCase):
    """A running server's federation API while its database is full."""

    sqlite_only = True  # the faults are made with SQLite pragmas

    async def test_send_not_acknowledged_while_full(self):
        """PUT /send with a valid PDU while the database is full answers 503 M_UNKNOWN: the
        transaction is not recorded and the event not stored, so the sender retries; the
        retry of the same transaction after space returns is 200 and the event is in."""
        from fedserver.events.hashing import compute_event_id
        from fedserver.room_versions import V10

        pdu = self.msg(BIG)
        event_id = compute_event_id(pdu, V10)
        uri = FED + "/send/full-1"
        db = self.service.store.database
        log = LogCapture(self)
        await db.run_with_connection(_cap_pages)
        code, body, raw = await self.request("PUT", uri, self.txn([pdu]))
        self.assertEqual((code, body and body.get("errcode")), (503, "M_UNKNOWN"), raw[:300])
        await self.nothing_recorded("full-1")
        self.assertEqual(await self.service.store.get_events([event_id]), {})
        self.assertEqual(len(log.serious()), 1, log.formats(log.serious()))
        await db.run_with_connection(_uncap_pages)
        code, body, raw = await self.request("PUT", uri, self.txn([pdu]))
        self.assertEqual((code, body["pdus"].get(event_id)), (200, {}), raw[:300])
        self.assertIn(event_id, await self.service.store.get_events([event_id]))
        self.assertIsNotNone(await self.service.store.get_received_txn(self.peer.name, "full-1"))
